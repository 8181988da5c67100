//! The Ignition gateway's volume: snapshot through the Docker archive API
//! from a never-started helper container, and restore.
//!
//! **Backup.** Check the volume, the gateway containers and the helper
//! image; create the helper (the volume mounted read-only at `/volume`, no
//! network, never started) and start the writer (its key derivation) while
//! the gateway still runs; stop the gateways (each recorded in the journal
//! first); stream `/volume/.` as tar into parallel gzip and encryption;
//! restart the gateways the moment the tar stream is complete, while
//! compression finishes; commit the file; remove the helper. The tar stream
//! is followed as it passes (header checksums, end-of-archive marker), so a
//! stream that broke off never becomes a backup.
//!
//! **Restore, exact and without a window where data can be lost.**
//! 1. Authenticate the whole file (`verify::check`); check the volume, the
//!    gateways and the helper image; refuse while a container outside
//!    `ignition.stop_containers` runs on the volume.
//! 2. Stop the gateways; take a safety snapshot of the volume as it is.
//! 3. Create a hidden staging folder `.mesbak-restore-<id>` in the volume (a
//!    short-lived container of the helper image, which proves it has a
//!    shell) and extract the backup into it through the archive API. Docker
//!    extracts as root and keeps owners, modes (setuid too), times, symlinks
//!    and hard links. The file is authenticated again chunk by chunk and the
//!    tar checked as it streams; an error aborts the upload.
//! 4. Only when everything is in: swap by renames in one short-lived
//!    container — every old entry into `.mesbak-old-<id>`, every staged
//!    entry to the top, delete the old ones, give the volume root the
//!    backup's owner, mode and time.
//!
//! Up to step 4 the live entries are never touched: a failure removes the
//! staging folder and the volume is as it was. The swap is renames within
//! one file system, so it needs no space; a failure while moving aside puts
//! back what was moved. A restore cut short leaves a record in the state
//! folder; [`recover`] removes its staging folder and every helper container
//! of this agent before the next Ignition job (and at start-up, when the
//! daemon calls it).
//!
//! Layout: this file holds the entry points and what both directions share
//! (the checked [`Source`], the [`Copy`] a job works through, stopping and
//! starting the gateways); `helper` the helper containers; `snapshot` the
//! backup path; `restore` staging and swap; `recovery` the record of a
//! restore in progress and the cleanup after one cut short; `spool` the
//! relay and spool between Docker and the compressor; `tar` the tar stream
//! checker and the one-entry archive that sets the volume's top folder.

mod helper;
mod recovery;
mod restore;
mod snapshot;
mod spool;
pub mod tar;

use std::sync::Arc;

use mesbak_format::Key;
use mesbak_interface::{BackupInfo, BackupKind, Error, RestoreOptions};

use crate::app::App;
use crate::commit::check_space;
use crate::docker::Docker;
use crate::jobs::Job;
use crate::recovery::{Touched, put_back_after};
use crate::storage::{BackupRef, human_bytes};
use crate::verify;

use helper::{create_helper, remove_helper, run_script};
use recovery::recover_with;
pub use tar::{EntrySpan, RootAttrs, TarWalker};

/// Where helper containers mount the volume.
const MOUNT: &str = "/volume";

/// Label on every helper container; its value names the agent (state folder).
const HELPER_LABEL: &str = "org.mesbak.helper";

/// Blocks handed to the compressor.
const BLOCK: usize = 256 * 1024;

/// What a job works on, checked before anything changes.
struct Source {
    volume: String,
    /// `ignition.stop_containers`, all existing.
    gateways: Vec<String>,
    /// Image of the helper containers.
    image: String,
    /// Running containers that use the volume but are not stopped.
    others_running: Vec<String>,
}

/// Backs up `ignition.volume` as `ignition/ignition_<point>.tar.gz.enc`.
pub async fn backup(app: &App, job: &Job, point: &str) -> Result<BackupInfo, Error> {
    let key = output_ready(app)?;
    let docker = app.docker().await?;
    let source = settle(app, &docker).await?;
    for warning in recover_with(app, &docker).await {
        job.warn(warning);
    }
    let warnings: Vec<String> = source
        .others_running
        .iter()
        .map(|other| {
            format!(
                "container '{other}' uses volume '{}' and kept running during the copy (it is not in ignition.stop_containers): the copy may be inconsistent",
                source.volume
            )
        })
        .collect();
    let mut touched = Touched::new(docker.clone(), app.journal.clone());
    let helper = create_helper(app, &docker, &source, true).await?;
    let copy = Copy {
        app,
        job,
        docker: &docker,
        helper: &helper,
        source: &source,
    };
    let result = copy
        .snapshot(key, point, None, Some(&mut touched), warnings)
        .await;
    remove_helper(&docker, &helper).await;
    put_back_after(Some(touched), result, |info| {
        format!("backup {} was saved", info.id)
    })
    .await
}

/// Restores an Ignition backup over `ignition.volume` (see the module
/// documentation for the order of the steps).
pub async fn restore(
    app: Arc<App>,
    job: Arc<Job>,
    backup: BackupRef,
    options: RestoreOptions,
) -> Result<String, Error> {
    if backup.kind != BackupKind::Ignition {
        return Err(Error::InvalidArgument(format!(
            "{} is not an Ignition volume backup",
            backup.id
        )));
    }
    let tar_bytes = verify::check(&app, &job, &backup).await?;
    let key = app.key()?;
    let docker = app.docker().await?;
    let source = settle(&app, &docker).await?;
    for warning in recover_with(&app, &docker).await {
        job.warn(warning);
    }
    check_room(&app, &job, &docker, &source, tar_bytes).await?;
    if !source.others_running.is_empty() {
        return Err(Error::Failed(format!(
            "container(s) {} use volume '{}' and are not in ignition.stop_containers; stop them or add them there, then retry (nothing was changed)",
            quoted(&source.others_running),
            source.volume
        )));
    }
    let mut touched = Touched::new(docker.clone(), app.journal.clone());
    let helper = create_helper(&app, &docker, &source, false).await?;
    let copy = Copy {
        app: &app,
        job: &job,
        docker: &docker,
        helper: &helper,
        source: &source,
    };
    let result = copy.replace(key, &backup, &options, &mut touched).await;
    remove_helper(&docker, &helper).await;
    put_back_after(Some(touched), result, String::clone).await
}

/// Refuses when the volume's file system cannot take the staged copy (the
/// backup's files, about the size of its tar stream) plus a margin: the
/// restore extracts beside the current files before swapping them.
async fn check_room(
    app: &App,
    job: &Job,
    docker: &Docker,
    source: &Source,
    tar_bytes: u64,
) -> Result<(), Error> {
    const MARGIN_MIN: u64 = 64 << 20;
    let needed = tar_bytes + (tar_bytes / 10).max(MARGIN_MIN);
    let outcome = run_script(app, docker, source, DF_SCRIPT, &[]).await?;
    let free = (outcome.exit_code == 0)
        .then(|| {
            outcome
                .stderr
                .lines()
                .find_map(|line| line.trim().parse::<u64>().ok())
        })
        .flatten();
    let Some(free_kib) = free else {
        job.warn(format!(
            "the free space of volume '{}' cannot be told (no `df` in image '{}'); the restore needs about {}",
            source.volume,
            source.image,
            human_bytes(needed)
        ));
        return Ok(());
    };
    let free = free_kib * 1024;
    if free < needed {
        return Err(Error::NoSpace(format!(
            "volume '{}' has {} free, and the restore needs about {} to extract the backup beside the current files before swapping them; nothing was changed: free space on Docker's disk, then retry",
            source.volume,
            human_bytes(free),
            human_bytes(needed)
        )));
    }
    Ok(())
}

/// Prints the free KiB of the volume's file system (on the output the
/// helper's log gives back).
/// (Shell alone: a gateway image need not have awk.)
const DF_SCRIPT: &str = r#"df -Pk /volume | { read -r _; read -r _ _ _ avail _; echo "$avail"; }"#;

/// Cleans up after an Ignition job that was cut short (the agent killed or
/// the host down): removes this agent's helper containers and the staging
/// folder of an interrupted restore. Returns what could not be cleaned up,
/// one sentence each. Call only while no job runs (at start-up).
pub async fn recover(app: &App) -> Vec<String> {
    match app.docker().await {
        Ok(docker) => recover_with(app, &docker).await,
        Err(err) => vec![format!(
            "helpers of an interrupted Ignition job could not be checked: {}",
            err.message()
        )],
    }
}

/// The key, a ready backup folder and enough space for another Ignition backup.
fn output_ready(app: &App) -> Result<Key, Error> {
    let key = app.key()?;
    for repair in app.storage.prepare()? {
        tracing::warn!(repair = %repair, "backup folder repaired");
    }
    check_space(app, BackupKind::Ignition)?;
    Ok(key)
}

/// Checks the volume, the gateways and the helper image, and finds who else
/// uses the volume.
async fn settle(app: &App, docker: &Docker) -> Result<Source, Error> {
    let config = &app.config.ignition;
    let origin = app.config.origin.display();
    let volume = config.volume.clone();
    if volume.is_empty() {
        return Err(Error::Config(format!(
            "no Ignition volume is configured; set ignition.volume in {origin}"
        )));
    }
    if !docker.volume_exists(&volume).await? {
        return Err(Error::NotFound(format!(
            "volume '{volume}' does not exist; check `docker volume ls` and ignition.volume in {origin}"
        )));
    }
    for gateway in &config.stop_containers {
        match docker.is_running(gateway).await {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "container '{gateway}' (ignition.stop_containers) does not exist; check `docker ps -a` and ignition.stop_containers in {origin}"
                )));
            }
            Err(err) => return Err(err),
        }
    }
    let image = if !config.helper_image.is_empty() {
        if !docker.image_exists(&config.helper_image).await? {
            return Err(Error::NotFound(format!(
                "image '{}' (ignition.helper_image) is not on this host; load it (`docker load`, `docker pull`) or set ignition.helper_image in {origin} to an image that is (\"\" uses the gateway's own)",
                config.helper_image
            )));
        }
        config.helper_image.clone()
    } else if let Some(gateway) = config.stop_containers.first() {
        let image = docker.image_of(gateway).await?;
        if !docker.image_exists(&image).await? {
            return Err(Error::NotFound(format!(
                "the image of container '{gateway}' ({image}) is no longer on this host; set ignition.helper_image in {origin} to an image that is (any image with a shell, e.g. busybox)"
            )));
        }
        image
    } else {
        return Err(Error::Config(format!(
            "no image for the helper container: set ignition.helper_image in {origin} to an image on this host, or list the gateway in ignition.stop_containers"
        )));
    };
    let others_running = docker
        .containers_using_volume(&volume)
        .await?
        .into_iter()
        .filter(|user| {
            user.running
                && !user.labels.contains_key(HELPER_LABEL)
                && !config.stop_containers.contains(&user.name)
        })
        .map(|user| user.name)
        .collect();
    Ok(Source {
        volume,
        gateways: config.stop_containers.clone(),
        image,
        others_running,
    })
}

/// `'a', 'b'`: names for a sentence.
pub(crate) fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One job's view of the volume and its helper.
struct Copy<'a> {
    app: &'a App,
    job: &'a Job,
    docker: &'a Docker,
    /// The never-started archive helper.
    helper: &'a str,
    source: &'a Source,
}

impl Copy<'_> {
    /// Stops the gateways that run, each recorded in the journal first;
    /// returns those it stopped.
    async fn stop_gateways(&self, touched: &mut Touched) -> Result<Vec<String>, Error> {
        let mut stopped = Vec::new();
        for gateway in &self.source.gateways {
            self.job
                .set_stage(format!("stopping '{gateway}' (ignition.stop_containers)"));
            let timeout = self.app.config.ignition.stop_timeout_secs;
            if touched.ensure_stopped(gateway, timeout).await? {
                stopped.push(gateway.clone());
            }
        }
        Ok(stopped)
    }
}

/// Starts the `stopped` gateways again, newest first; one sentence per
/// failure (the journal keeps those for the next start).
async fn start_gateways(touched: &mut Touched, stopped: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for gateway in stopped.iter().rev() {
        if let Err(err) = touched.restore_one(gateway).await {
            failures.push(format!(
                "container '{gateway}' could not be started again: {}; the agent retries at its next start",
                err.message()
            ));
        }
    }
    failures
}
