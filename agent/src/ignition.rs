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

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use mesbak_format::Key;
use mesbak_interface::{BackupInfo, BackupKind, Error, RestoreOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::app::App;
use crate::backup::{check_space, size_change_warning};
use crate::docker::Docker;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::{BackupReader, BackupWriter};
use crate::process::{Outcome, last_lines};
use crate::recovery::{Touched, put_back_after};
use crate::storage::{BackupRef, Storage, open_backup};
use crate::verify;

/// Where helper containers mount the volume.
const MOUNT: &str = "/volume";
/// Label on every helper container; its value names the agent (state folder).
const HELPER_LABEL: &str = "org.mesbak.helper";
/// Blocks handed to the compressor.
const BLOCK: usize = 256 * 1024;
/// The record of a restore in progress, in the state folder.
const RECORD: &str = "ignition-restore.json";
/// How long recovery waits for a helper that still runs.
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// Largest extended tar header (PAX, GNU long name) the stream may carry.
const MAX_EXTENDED_HEADER: u64 = 1 << 20;

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
    verify::check(&app, &job, &backup).await?;
    let key = app.key()?;
    let docker = app.docker().await?;
    let source = settle(&app, &docker).await?;
    for warning in recover_with(&app, &docker).await {
        job.warn(warning);
    }
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

async fn recover_with(app: &App, docker: &Docker) -> Vec<String> {
    let mut problems = Vec::new();
    match docker
        .containers_with_label(&format!("{HELPER_LABEL}={}", helper_owner(app)))
        .await
    {
        Ok(helpers) => {
            for helper in helpers {
                // A swap still running finishes first: cut short, it would
                // leave the volume half-swapped.
                if helper.running {
                    let _ = tokio::time::timeout(HELPER_WAIT, docker.wait_exit(&helper.name)).await;
                }
                match docker.remove_container(&helper.name).await {
                    Ok(()) => {
                        tracing::warn!(container = %helper.name, "removed a helper container left by an interrupted job")
                    }
                    Err(err) => problems.push(format!(
                        "helper container '{}' could not be removed: {}",
                        helper.name,
                        err.message()
                    )),
                }
            }
        }
        Err(err) => problems.push(format!(
            "helper containers could not be listed: {}",
            err.message()
        )),
    }
    let Some(record) = read_record(app) else {
        return problems;
    };
    match clean_staging(app, docker, &record).await {
        Ok(restored) => {
            if restored {
                tracing::warn!(volume = %record.volume, backup = %record.backup, "finished the swap of an interrupted Ignition restore: the volume holds the restored files");
            } else {
                tracing::warn!(volume = %record.volume, backup = %record.backup, "removed the staging folder of an interrupted Ignition restore; the volume was not changed");
            }
            if let Err(err) = save_record(app, None) {
                problems.push(err.message());
            }
        }
        Err(err) => problems.push(err.message()),
    }
    problems
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

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who owns a helper container: the agent with this state folder (tests run
/// several agents beside each other).
fn helper_owner(app: &App) -> String {
    app.config.state_dir.display().to_string()
}

fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 6];
    openssl::rand::rand_bytes(&mut bytes)
        .map_err(|err| Error::Failed(format!("no random numbers for a helper's name: {err}")))?;
    Ok(hex::encode(bytes))
}

/// A container of the helper image with the volume at `/volume`, no network,
/// running as root, labelled as this agent's helper. `run` is what it runs
/// when started (archive helpers are never started).
fn helper_config(
    app: &App,
    source: &Source,
    read_only: bool,
    run: Option<(&str, &[&str])>,
) -> bollard::models::ContainerCreateBody {
    let bind = format!(
        "{}:{MOUNT}{}",
        source.volume,
        if read_only { ":ro" } else { "" }
    );
    let (entrypoint, cmd) = match run {
        Some((script, args)) => (
            Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                script.to_owned(),
                "mesbak".to_owned(),
            ]),
            args.iter().map(|arg| (*arg).to_owned()).collect(),
        ),
        // Never started; images without a command need one to be created.
        None => (None, vec!["true".to_owned()]),
    };
    bollard::models::ContainerCreateBody {
        image: Some(source.image.clone()),
        entrypoint,
        cmd: Some(cmd),
        user: Some("0:0".into()),
        working_dir: Some(MOUNT.into()),
        network_disabled: Some(true),
        labels: Some([(HELPER_LABEL.to_owned(), helper_owner(app))].into()),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(vec![bind]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the never-started archive helper; returns its name.
async fn create_helper(
    app: &App,
    docker: &Docker,
    source: &Source,
    read_only: bool,
) -> Result<String, Error> {
    let name = format!("mesbak-helper-{}", random_id()?);
    docker
        .create_container(&name, helper_config(app, source, read_only, None))
        .await?;
    tracing::debug!(container = %name, image = %source.image, volume = %source.volume, "helper container created");
    Ok(name)
}

/// Removes a helper; a failure is logged (the next job or start retries).
async fn remove_helper(docker: &Docker, name: &str) {
    if let Err(err) = docker.remove_container(name).await {
        tracing::warn!(container = name, error = %err.message(), "could not remove a helper container; the next Ignition job retries");
    }
}

/// Runs `script` with `sh` in a short-lived helper container on the volume.
async fn run_script(
    app: &App,
    docker: &Docker,
    source: &Source,
    script: &str,
    args: &[&str],
) -> Result<Outcome, Error> {
    let name = format!("mesbak-helper-{}", random_id()?);
    docker
        .create_container(
            &name,
            helper_config(app, source, false, Some((script, args))),
        )
        .await?;
    let outcome = docker.run_to_exit(&name).await;
    remove_helper(docker, &name).await;
    outcome.map_err(|err| {
        Error::Docker(format!(
            "cannot run a shell in a helper container of image '{}' ({}); set ignition.helper_image to an image with a POSIX shell, e.g. busybox",
            source.image,
            err.message()
        ))
    })
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

    /// Streams the volume into a new backup. With `touched`, stops the
    /// gateways first and restarts them as soon as the tar stream is
    /// complete; without, they are already stopped.
    async fn snapshot(
        &self,
        key: Key,
        point: &str,
        tag: Option<&str>,
        mut touched: Option<&mut Touched>,
        mut warnings: Vec<String>,
    ) -> Result<BackupInfo, Error> {
        let app = self.app;
        let job = self.job;
        let volume = &self.source.volume;
        let started = Instant::now();
        let created = now_rfc3339();
        let previous = app
            .storage
            .list()?
            .into_iter()
            .find(|b| b.kind == BackupKind::Ignition);
        let (pending, file) = app
            .storage
            .create(BackupKind::Ignition, "ignition", point, tag)?;
        job.set_stage(format!("Creating backup: {}", pending.id));
        job.reset_bytes(0);
        let writer = BackupWriter::start(
            file,
            key,
            app.config.backup.compression_level,
            job.bytes_done.clone(),
        );
        let (to_writer, mut relayed) = mpsc::channel::<Bytes>(4);
        let feeder = tokio::spawn(async move {
            let mut writer_ok = true;
            while let Some(block) = relayed.recv().await {
                if !writer.write(block).await {
                    writer_ok = false;
                    break;
                }
            }
            drop(relayed);
            (writer_ok, writer.finish().await)
        });
        // What the spool may take: the space left after the floor and a
        // backup the size of the last one.
        let spool_limit = app
            .storage
            .free_bytes()
            .unwrap_or(0)
            .saturating_sub(app.config.backup.min_free_bytes)
            .saturating_sub(previous.as_ref().map_or(0, |p| p.size_bytes));
        let spool = match Spool::create(&app.storage.dir(BackupKind::Ignition)) {
            Ok(spool) => Some(spool),
            Err(err) => {
                tracing::warn!(error = %err, "no spool for the volume copy; the gateway waits for compression");
                None
            }
        };
        let relay = Relay::start(spool, spool_limit, to_writer);

        let down_since = Instant::now();
        let stopped = match touched.as_deref_mut() {
            Some(touched) => self.stop_gateways(touched).await?,
            None => Vec::new(),
        };
        job.set_stage(format!("copying volume '{volume}' into {}", pending.id));
        let mut walker = TarWalker::default();
        let mut stream = Box::pin(self.docker.download(self.helper, &format!("{MOUNT}/.")));
        let mut block = BytesMut::with_capacity(BLOCK);
        let mut failed = None;
        let mut relay_ok = true;
        while let Some(item) = stream.next().await {
            let data = match item {
                Ok(data) => data,
                Err(err) => {
                    failed = Some(Error::Docker(format!(
                        "the copy of volume '{volume}' broke off: {}",
                        err.message()
                    )));
                    break;
                }
            };
            if let Err(damage) = walker.feed(&data) {
                failed = Some(Error::Docker(format!(
                    "Docker sent a damaged tar stream of volume '{volume}' ({damage}); retry the backup"
                )));
                break;
            }
            block.extend_from_slice(&data);
            if block.len() >= BLOCK {
                relay_ok = relay.send(block.split().freeze()).await;
                if !relay_ok {
                    break;
                }
            }
        }
        drop(stream);
        if failed.is_none() && relay_ok {
            if !block.is_empty() {
                relay_ok = relay.send(block.freeze()).await;
            }
            if !walker.complete() {
                failed = Some(Error::Docker(format!(
                    "the tar stream of volume '{volume}' ended before its end; retry the backup"
                )));
            }
        }

        // Docker has sent the last byte: the gateways need not wait for
        // compression.
        let restart_failures = match touched {
            Some(touched) => start_gateways(touched, &stopped).await,
            None => Vec::new(),
        };
        let downtime_ms = if stopped.is_empty() {
            0
        } else {
            down_since.elapsed().as_millis() as u64
        };
        if !stopped.is_empty() && failed.is_none() && relay_ok {
            job.set_stage(format!(
                "{} running again after {:.1} s; compressing the rest of {}",
                quoted(&stopped),
                downtime_ms as f64 / 1000.0,
                pending.id
            ));
        }

        let spooled = if failed.is_none() {
            relay.finish().await
        } else {
            relay.abort();
            Ok(0)
        };
        let (writer_ok, written) = feeder
            .await
            .map_err(|err| Error::Failed(format!("internal error in the backup writer: {err}")))?;
        // A writer failure (disk full) explains a broken stream best.
        let (written, spooled) = match (failed, written) {
            (_, Err(err)) if !writer_ok => return Err(err),
            (Some(err), _) => return Err(err),
            (None, written) => {
                let spooled = spooled?;
                if !relay_ok {
                    return Err(Error::Failed(format!(
                        "the copy of volume '{volume}' stopped before its end; retry the backup"
                    )));
                }
                (written?, spooled)
            }
        };
        warnings.extend(size_change_warning(previous.as_ref(), written.size));
        for warning in &warnings {
            job.warn(warning.clone());
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let info = BackupInfo {
            id: pending.id.clone(),
            kind: BackupKind::Ignition,
            path: pending.path().display().to_string(),
            created,
            size_bytes: written.size,
            sha256: written.sha256.clone(),
            duration_ms,
            restore_point: point.to_owned(),
            source: volume.clone(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: Vec::new(),
            table_rows: Default::default(),
            downtime_ms,
            warnings,
        };
        pending.commit(&info)?;
        job.add_file(info.id.clone());
        tracing::info!(
            job = job.id,
            kind = "ignition",
            file = %info.id,
            volume = %volume,
            bytes = info.size_bytes,
            plain_bytes = written.plain_bytes,
            entries = walker.entries,
            spooled_bytes = spooled,
            duration_ms,
            downtime_ms,
            sha256 = %info.sha256,
            "ignition volume backup written"
        );
        if !restart_failures.is_empty() {
            return Err(Error::Docker(format!(
                "backup {} was saved, but {}",
                info.id,
                restart_failures.join("; ")
            )));
        }
        Ok(info)
    }

    /// Stops the gateways, takes the safety snapshot, stages the backup in
    /// the volume and swaps it in; the gateways are restarted at the end.
    async fn replace(
        &self,
        key: Key,
        backup: &BackupRef,
        options: &RestoreOptions,
        touched: &mut Touched,
    ) -> Result<String, Error> {
        let app = self.app;
        let job = self.job;
        let volume = &self.source.volume;
        let down_since = Instant::now();
        let stopped = self.stop_gateways(touched).await?;
        let mut safety = None;
        if options.skip_safety_backup != Some(true) {
            let key = output_ready(app)?;
            let point = Storage::restore_point(OffsetDateTime::now_utc());
            job.set_stage(format!("taking a safety backup of volume '{volume}'"));
            let info = self
                .snapshot(key, &point, Some("pre-restore"), None, Vec::new())
                .await
                .map_err(|err| {
                    Error::from_kind(
                        err.kind(),
                        format!(
                            "the safety backup of volume '{volume}' failed, so nothing was restored: {}",
                            err.message()
                        ),
                    )
                })?;
            job.warn(format!("safety backup of the current volume: {}", info.id));
            safety = Some(info.id);
        }

        let id = random_id()?;
        let mut record = Record {
            volume: volume.clone(),
            image: self.source.image.clone(),
            staging: format!(".mesbak-restore-{id}"),
            old: format!(".mesbak-old-{id}"),
            backup: backup.id.clone(),
            root: None,
            restored_root: None,
        };
        save_record(app, Some(&record))?;
        job.set_stage(format!("preparing a staging folder in volume '{volume}'"));
        let staged = async {
            let made = run_script(
                app,
                self.docker,
                self.source,
                MKDIR_SCRIPT,
                &[&record.staging],
            )
            .await?
            .check(|detail| {
                Error::Docker(format!(
                    "cannot create a staging folder in volume '{volume}': {detail}"
                ))
            })?;
            // The root as found, to give its time back if the restore fails.
            record.root = parse_stat(&made);
            save_record(app, Some(&record))?;
            self.upload(key, backup, &record.staging).await
        }
        .await;
        let walked = match staged {
            Ok(walked) => walked,
            Err(err) => return Err(self.abandon(&record, err).await),
        };

        job.set_stage(format!(
            "swapping the restored files into volume '{volume}'"
        ));
        record.restored_root = walked.root;
        save_record(app, Some(&record))?;
        let swapped = run_script(
            app,
            self.docker,
            self.source,
            SWAP_SCRIPT,
            &[&record.staging, &record.old],
        )
        .await;
        let outcome = match swapped {
            Ok(outcome) => outcome,
            Err(err) => return Err(self.abandon(&record, err).await),
        };
        match outcome.exit_code {
            0 => {}
            // The script put back what it had moved: nothing changed.
            10..=19 => {
                let err = Error::Docker(format!(
                    "cannot swap the restored files into volume '{volume}': {}",
                    last_lines(&outcome.stderr, 3)
                ));
                return Err(self.abandon(&record, err).await);
            }
            // Restored; the record stays so the next job deletes the rest.
            25 => job.warn(format!(
                "volume '{volume}' holds the restored files, but {}; the next Ignition job retries",
                last_lines(&outcome.stderr, 3)
            )),
            // Failed half-way: settle it now (finish, or undo).
            _ => {
                let failure = last_lines(&outcome.stderr, 3);
                match clean_staging(app, self.docker, &record).await {
                    Ok(true) => job.warn(format!(
                        "the swap into volume '{volume}' needed a second attempt ({failure})"
                    )),
                    Ok(false) => {
                        let _ = save_record(app, None);
                        return Err(Error::Docker(format!(
                            "cannot swap the restored files into volume '{volume}' ({failure}); volume '{volume}' was not changed"
                        )));
                    }
                    Err(err) => {
                        return Err(Error::Docker(format!(
                            "the swap of the restored files into volume '{volume}' failed half-way ({failure}; {}); the previous files are in {} inside the volume{}, and the agent finishes or undoes the swap before the next Ignition job",
                            err.message(),
                            record.old,
                            safety
                                .as_ref()
                                .map(|id| format!(" and in the safety backup {id}"))
                                .unwrap_or_default()
                        )));
                    }
                }
            }
        }
        // The root's owner, mode and time: the backup's, else as found.
        if let Some(root) = walked.root.or(record.root) {
            if let Err(err) = set_root(self.docker, self.helper, &root).await {
                job.warn(format!(
                    "volume '{volume}' holds the restored files, but its top folder's owner, mode or time could not be set: {}",
                    err.message()
                ));
            }
        }
        if outcome.exit_code != 25 {
            save_record(app, None)?;
        }

        let restart_failures = start_gateways(touched, &stopped).await;
        let downtime_ms = down_since.elapsed().as_millis() as u64;
        tracing::info!(
            job = job.id,
            kind = "ignition",
            file = %backup.id,
            volume = %volume,
            entries = walked.entries,
            downtime_ms,
            safety_backup = safety.as_deref().unwrap_or(""),
            "ignition volume restored"
        );
        let mut message = format!(
            "restored {} into volume '{volume}' ({} entries)",
            backup.id, walked.entries
        );
        if !stopped.is_empty() {
            message.push_str(&format!(
                "; {} stopped for {:.1} s",
                quoted(&stopped),
                downtime_ms as f64 / 1000.0
            ));
        }
        if let Some(safety) = &safety {
            message.push_str(&format!(
                "; the previous contents are in the safety backup {safety}"
            ));
        }
        if !restart_failures.is_empty() {
            return Err(Error::Docker(format!(
                "{message}, but {}",
                restart_failures.join("; ")
            )));
        }
        Ok(message)
    }

    /// Extracts the backup into `staging` in the volume: decrypted and
    /// decompressed on the fly, checked as it passes.
    async fn upload(
        &self,
        key: Key,
        backup: &BackupRef,
        staging: &str,
    ) -> Result<TarWalker, Error> {
        let file = open_backup(&backup.path)?;
        self.job
            .reset_bytes(file.metadata().map(|m| m.len()).unwrap_or(0));
        self.job.set_stage(format!(
            "extracting {} next to the current files",
            backup.id
        ));
        let mut reader = BackupReader::start(
            backup.id.clone(),
            file,
            key,
            true,
            self.job.bytes_done.clone(),
        );
        let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(8);
        let id = backup.id.clone();
        let forward = tokio::spawn(async move {
            let mut walker = TarWalker::default();
            let mut damage = None;
            while let Some(block) = reader.blocks.recv().await {
                if let Err(err) = walker.feed(&block) {
                    damage = Some(Error::Integrity(format!(
                        "backup {id} does not hold a valid tar archive ({err}); use another backup"
                    )));
                    break;
                }
                if sender.send(Ok(block)).await.is_err() {
                    // Docker stopped reading; its answer says why.
                    break;
                }
            }
            let read = match damage {
                Some(err) => Err(err),
                None => reader.finish().await.map(|_| ()),
            };
            if let Err(err) = &read {
                let _ = sender.send(Err(io::Error::other(err.message()))).await;
            }
            (walker, read)
        });
        let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let uploaded = self
            .docker
            .upload(self.helper, &format!("{MOUNT}/{staging}"), body)
            .await;
        let (walker, read) = forward
            .await
            .map_err(|err| Error::Failed(format!("internal error while restoring: {err}")))?;
        read?;
        uploaded.map_err(|err| {
            Error::Docker(format!(
                "Docker could not extract {} into volume '{}': {}",
                backup.id,
                self.source.volume,
                err.message()
            ))
        })?;
        if !walker.complete() {
            return Err(Error::Integrity(format!(
                "backup {} holds an incomplete tar archive; use another backup",
                backup.id
            )));
        }
        Ok(walker)
    }

    /// After a failure before the swap: removes the staging folder so the
    /// volume is as it was, and says so.
    async fn abandon(&self, record: &Record, err: Error) -> Error {
        self.job.set_stage("removing the staged files");
        match clean_staging(self.app, self.docker, record).await {
            Ok(_) => {
                let _ = save_record(self.app, None);
                Error::from_kind(
                    err.kind(),
                    format!(
                        "{}; volume '{}' was not changed",
                        err.message(),
                        record.volume
                    ),
                )
            }
            Err(cleanup) => Error::from_kind(
                err.kind(),
                format!(
                    "{}; the live files of volume '{}' were not changed, but {} (the agent retries before the next Ignition job)",
                    err.message(),
                    record.volume,
                    cleanup.message()
                ),
            ),
        }
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

/// Removes a restore's staging (and old) folder from the volume, settling a
/// swap that was cut short; returns whether the volume holds the restored
/// files.
async fn clean_staging(app: &App, docker: &Docker, record: &Record) -> Result<bool, Error> {
    if !docker.volume_exists(&record.volume).await? {
        return Ok(false);
    }
    let source = Source {
        volume: record.volume.clone(),
        gateways: Vec::new(),
        image: record.image.clone(),
        others_running: Vec::new(),
    };
    let outcome = run_script(
        app,
        docker,
        &source,
        CLEAN_SCRIPT,
        &[&record.staging, &record.old],
    )
    .await?;
    let said = outcome.check(|detail| {
        Error::Docker(format!(
            "the staging folder {} of an interrupted restore of {} could not be removed from volume '{}': {detail}",
            record.staging, record.backup, record.volume
        ))
    })?;
    // Making and removing folders changed the top folder's time: give it
    // the backup's attributes if the swap went (or was finished) through,
    // else those it was found with.
    let restored = said.contains("restored");
    let root = if restored {
        record.restored_root
    } else {
        record.root
    };
    if let Some(root) = &root {
        let helper = create_helper(app, docker, &source, false).await?;
        let set = set_root(docker, &helper, root).await;
        remove_helper(docker, &helper).await;
        set?;
    }
    Ok(restored)
}

/// Gives the volume's top folder `root`'s owner, mode and time (to the
/// nanosecond): a one-entry archive `volume/` extracted at `/` of a helper,
/// which Docker applies to the mount point, i.e. the volume itself.
async fn set_root(docker: &Docker, helper: &str, root: &RootAttrs) -> Result<(), Error> {
    let tar = Bytes::from(root_archive(MOUNT.trim_start_matches('/'), root));
    docker
        .upload(helper, "/", futures_util::stream::iter([Ok(tar)]))
        .await
}

/// A tar archive holding one folder entry `name/` with `root`'s attributes.
fn root_archive(name: &str, root: &RootAttrs) -> Vec<u8> {
    let mut records = String::new();
    if root.nanos != 0 {
        records.push_str(&pax_record(
            "mtime",
            &format!("{}.{:09}", root.mtime, root.nanos),
        ));
    }
    for (key, id) in [("uid", root.uid), ("gid", root.gid)] {
        if id > 0o7777777 {
            records.push_str(&pax_record(key, &id.to_string()));
        }
    }
    let mut tar = Vec::new();
    if !records.is_empty() {
        tar.extend(tar_header(
            "PaxHeader",
            b'x',
            0o644,
            0,
            0,
            records.len() as u64,
            0,
        ));
        tar.extend_from_slice(records.as_bytes());
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend(tar_header(
        &format!("{name}/"),
        b'5',
        root.mode,
        root.uid.min(0o7777777),
        root.gid.min(0o7777777),
        0,
        root.mtime.max(0) as u64,
    ));
    tar.extend([0u8; 1024]);
    tar
}

/// One PAX record, `<length> <key>=<value>\n`, its length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while format!("{length}{body}").len() != length {
        length += 1;
    }
    format!("{length}{body}")
}

/// A ustar header block (the name must fit its 100 bytes).
fn tar_header(
    name: &str,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
) -> [u8; 512] {
    let mut block = [0u8; 512];
    let name = &name.as_bytes()[..name.len().min(100)];
    block[..name.len()].copy_from_slice(name);
    let mut put = |at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}\0", w = width - 1);
        block[at..at + width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    };
    put(100, 8, u64::from(mode & 0o7777));
    put(108, 8, uid);
    put(116, 8, gid);
    put(124, 12, size);
    put(136, 12, mtime);
    block[156] = typeflag;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block
}

/// The top folder's attributes from `stat -c '%a %u %g %Y %y' .` (busybox
/// and GNU agree on this format; `%y` carries the nanoseconds).
fn parse_stat(output: &str) -> Option<RootAttrs> {
    let line = output.lines().find(|line| !line.trim().is_empty())?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [mode, uid, gid, mtime, _date, time, ..] = fields.as_slice() else {
        return None;
    };
    let nanos = time
        .split_once('.')
        .map(|(_, fraction)| {
            let digits: String = fraction.chars().take(9).collect();
            format!("{digits:0<9}").parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some(RootAttrs {
        mode: u32::from_str_radix(mode, 8).ok()?,
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        mtime: mtime.parse().ok()?,
        nanos,
    })
}

/// A restore in progress: what to clean up if it is cut short.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    volume: String,
    image: String,
    staging: String,
    old: String,
    backup: String,
    /// The volume's top folder as found, once known.
    root: Option<RootAttrs>,
    /// The backup's top folder, once the swap is about to start.
    #[serde(default)]
    restored_root: Option<RootAttrs>,
}

fn read_record(app: &App) -> Option<Record> {
    let path = app.config.state_dir.join(RECORD);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "ignoring an unreadable Ignition restore record");
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

fn save_record(app: &App, record: Option<&Record>) -> Result<(), Error> {
    let dir = &app.config.state_dir;
    let path = dir.join(RECORD);
    let result = match record {
        None => match std::fs::remove_file(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Some(record) => {
            let tmp = dir.join(format!(".{RECORD}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            crate::storage::create_private_file(&tmp)
                .and_then(|mut file| {
                    io::Write::write_all(
                        &mut file,
                        &serde_json::to_vec_pretty(record).unwrap_or_default(),
                    )?;
                    file.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| crate::storage::sync_dir(dir))
        }
    };
    result.map_err(|err| {
        Error::Failed(format!(
            "cannot record the Ignition restore in {}: {err}; check the state folder",
            path.display()
        ))
    })
}

/// Creates the staging folder (and proves the image has a shell).
const MKDIR_SCRIPT: &str = r#"cd /volume && stat -c '%a %u %g %Y %y' . && mkdir -m 0700 -- "$1""#;

/// Removes what a restore left in the volume. A swap cut short is settled
/// first: with the marker in the old folder every old file is already aside,
/// so the restored files are moved in ("restored"); without it the old files
/// are moved back. Exits non-zero if a move fails.
const CLEAN_SCRIPT: &str = r#"
S=$1 O=$2
move_all() {
    cd "$1" || exit 1
    for e in * .[!.]* ..?*; do
        if [ -e "$e" ] || [ -L "$e" ]; then mv -f -- "$e" /volume/ || exit 1; fi
    done
    cd /volume || exit 1
}
cd /volume || exit 1
if [ -d "$O" ]; then
    if [ -e "$O/.mesbak-moved-aside" ] || [ ! -d "$S" ]; then
        [ -d "$S" ] && move_all "/volume/$S"
        echo restored
    else
        move_all "/volume/$O"
        echo unchanged
    fi
fi
rm -rf -- "$S" "$O"
"#;

/// Swaps the staged files in by renames. Exit 10-19: failed, nothing
/// changed; 25: restored, tidying failed; other: failed half-way.
const SWAP_SCRIPT: &str = r#"
S=$1 O=$2
cd /volume || exit 10
[ -d "$S" ] || { echo "the staged copy $S is missing" >&2; exit 11; }
mkdir -m 0700 -- "$O" || exit 12
put_back() {
    cd "/volume/$O" || return 1
    for e in * .[!.]* ..?*; do
        if [ -e "$e" ] || [ -L "$e" ]; then mv -f -- "$e" /volume/ || return 1; fi
    done
    cd /volume && rmdir -- "$O"
}
for e in * .[!.]* ..?*; do
    if [ "$e" = "$S" ] || [ "$e" = "$O" ]; then continue; fi
    if [ -e "$e" ] || [ -L "$e" ]; then
        if ! mv -f -- "$e" "$O/"; then
            echo "cannot move $e aside" >&2
            if put_back; then exit 13; else exit 24; fi
        fi
    fi
done
: > "$O/.mesbak-moved-aside" || { echo "cannot mark $O" >&2; if put_back; then exit 14; else exit 24; fi; }
cd "/volume/$S" || exit 21
for e in * .[!.]* ..?*; do
    if [ -e "$e" ] || [ -L "$e" ]; then
        mv -f -- "$e" /volume/ || { echo "cannot move $e into place" >&2; exit 22; }
    fi
done
cd /volume || exit 23
rmdir -- "$S" || exit 23
rm -rf -- "$O" || { echo "the previous files could not all be deleted from $O" >&2; exit 25; }
"#;

/// Carries the tar stream to the compressor without holding the copy back:
/// when compression falls behind, blocks wait in a [`Spool`], so the
/// gateways restart when Docker has sent the last byte rather than when the
/// compressor has taken it. The spool grows to `limit` bytes at most; beyond
/// that (or without a spool) the copy waits for the compressor.
struct Relay {
    input: mpsc::Sender<Bytes>,
    worker: tokio::task::JoinHandle<Result<u64, Error>>,
}

impl Relay {
    fn start(spool: Option<Spool>, limit: u64, output: mpsc::Sender<Bytes>) -> Relay {
        let (input, receiver) = mpsc::channel(4);
        let worker = tokio::spawn(relay(receiver, output, spool, limit));
        Relay { input, worker }
    }

    /// Hands a block on; false when the relay stopped (see `finish`).
    async fn send(&self, block: Bytes) -> bool {
        self.input.send(block).await.is_ok()
    }

    /// Waits until every block is handed to the compressor; returns how
    /// many bytes went through the spool.
    async fn finish(self) -> Result<u64, Error> {
        drop(self.input);
        self.worker
            .await
            .map_err(|err| Error::Failed(format!("internal error in the copy relay: {err}")))?
    }

    fn abort(self) {
        self.worker.abort();
    }
}

async fn relay(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    mut spool: Option<Spool>,
    limit: u64,
) -> Result<u64, Error> {
    let compressor_gone =
        || Error::Failed("the compressor stopped taking the volume's data".into());
    let spool_error = |err: io::Error| {
        Error::Failed(format!(
            "cannot read back the spooled copy of the volume: {err}"
        ))
    };
    let mut spooled_total = 0u64;
    // A block that must wait until the spool is empty (spool full or broken).
    let mut held: Option<Bytes> = None;
    let mut broken = false;
    let mut input_open = true;
    loop {
        let waiting = spool.as_ref().map_or(0, Spool::len);
        if waiting == 0 {
            if let Some(block) = held.take() {
                output.send(block).await.map_err(|_| compressor_gone())?;
                continue;
            }
            if !input_open {
                return Ok(spooled_total);
            }
        }
        let room = !broken && waiting < limit && spool.is_some();
        let take = input_open && held.is_none() && (waiting == 0 || room);
        tokio::select! {
            // While Docker still sends, the spool is drained only when it is
            // full: the compressor's threads then leave the CPU to the copy.
            permit = output.reserve(), if waiting > 0 && (!input_open || !room) => {
                let permit = permit.map_err(|_| compressor_gone())?;
                if let Some(spool) = spool.as_mut() {
                    permit.send(spool.pop(BLOCK).await.map_err(spool_error)?);
                }
            }
            next = input.recv(), if take => {
                let Some(block) = next else {
                    input_open = false;
                    continue;
                };
                let block = if waiting == 0 {
                    match output.try_send(block) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(block)) => block,
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(compressor_gone()),
                    }
                } else {
                    block
                };
                match spool.as_mut() {
                    Some(spool) if room => match spool.push(&block).await {
                        Ok(()) => spooled_total += block.len() as u64,
                        Err(err) => {
                            tracing::warn!(error = %err, "the spool of the volume copy failed; the gateway waits for compression");
                            broken = true;
                            held = Some(block);
                        }
                    },
                    _ => held = Some(block),
                }
            }
            else => {
                return Err(Error::Failed("internal error: the copy relay stalled".into()));
            }
        }
    }
}

/// A first-in first-out byte queue in a file of the backup folder, unlinked
/// as soon as it is open (nothing is left after a crash) and encrypted with
/// a key that only lives in memory: the volume's plain files never rest on
/// the backup disk.
struct Spool {
    file: Arc<std::fs::File>,
    key: [u8; 32],
    seal: openssl::symm::Crypter,
    open: openssl::symm::Crypter,
    write_at: u64,
    read_at: u64,
}

impl Spool {
    fn create(dir: &std::path::Path) -> io::Result<Spool> {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).map_err(io::Error::other)?;
        let mut name = [0u8; 6];
        openssl::rand::rand_bytes(&mut name).map_err(io::Error::other)?;
        let path = dir.join(format!(".spool-{}.partial", hex::encode(name)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let _ = std::fs::remove_file(&path);
        let (seal, open) = Spool::crypters(&key)?;
        Ok(Spool {
            file: Arc::new(file?),
            key,
            seal,
            open,
            write_at: 0,
            read_at: 0,
        })
    }

    /// A fresh AES-256-CTR stream for writing and its twin for reading.
    fn crypters(key: &[u8; 32]) -> io::Result<(openssl::symm::Crypter, openssl::symm::Crypter)> {
        use openssl::symm::{Cipher, Crypter, Mode};
        let mut iv = [0u8; 16];
        openssl::rand::rand_bytes(&mut iv).map_err(io::Error::other)?;
        let seal = Crypter::new(Cipher::aes_256_ctr(), Mode::Encrypt, key, Some(&iv))
            .map_err(io::Error::other)?;
        let open = Crypter::new(Cipher::aes_256_ctr(), Mode::Decrypt, key, Some(&iv))
            .map_err(io::Error::other)?;
        Ok((seal, open))
    }

    /// Bytes waiting.
    fn len(&self) -> u64 {
        self.write_at - self.read_at
    }

    async fn push(&mut self, block: &[u8]) -> io::Result<()> {
        let mut sealed = vec![0u8; block.len() + 16];
        let n = self
            .seal
            .update(block, &mut sealed)
            .map_err(io::Error::other)?;
        sealed.truncate(n);
        let file = self.file.clone();
        let at = self.write_at;
        tokio::task::spawn_blocking(move || {
            std::os::unix::fs::FileExt::write_all_at(&*file, &sealed, at)
        })
        .await
        .map_err(io::Error::other)??;
        self.write_at += n as u64;
        Ok(())
    }

    /// Takes up to `max` of the oldest bytes; an emptied spool starts over.
    async fn pop(&mut self, max: usize) -> io::Result<Bytes> {
        let n = (max as u64).min(self.len()) as usize;
        let file = self.file.clone();
        let at = self.read_at;
        let sealed = tokio::task::spawn_blocking(move || {
            let mut sealed = vec![0u8; n];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut sealed, at).map(|()| sealed)
        })
        .await
        .map_err(io::Error::other)??;
        let mut plain = vec![0u8; n + 16];
        let got = self
            .open
            .update(&sealed, &mut plain)
            .map_err(io::Error::other)?;
        plain.truncate(got);
        self.read_at += n as u64;
        if self.len() == 0 {
            self.file.set_len(0)?;
            self.write_at = 0;
            self.read_at = 0;
            (self.seal, self.open) = Spool::crypters(&self.key)?;
        }
        Ok(Bytes::from(plain))
    }
}

/// Owner, mode and time of the archive's root entry (`./`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootAttrs {
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch, and nanoseconds.
    pub mtime: i64,
    pub nanos: u32,
}

/// Follows a tar stream without keeping it: checks every header's checksum,
/// honours PAX and GNU extended headers, counts entries, reads the root
/// entry's attributes and notices the end-of-archive marker.
#[derive(Debug, Default)]
pub struct TarWalker {
    /// A header block being assembled.
    block: Vec<u8>,
    /// Data bytes (with padding) still to pass over.
    skip: u64,
    /// An extended header's data being collected: (type, size, bytes).
    extended: Option<(u8, u64, Vec<u8>)>,
    /// PAX records for the next entry.
    pax: Vec<(String, String)>,
    /// A GNU long name for the next entry.
    long_name: Option<String>,
    zero_blocks: u8,
    ended: bool,
    /// Entries (files, folders, links...) seen.
    pub entries: u64,
    /// The root entry's attributes, when the archive starts with `./`.
    pub root: Option<RootAttrs>,
}

impl TarWalker {
    /// Takes the next bytes of the stream; an error describes the damage.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (512 - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() < 512 {
                break;
            }
            let block = std::mem::take(&mut self.block);
            self.next_block(&block)?;
        }
        Ok(())
    }

    /// Whether the end-of-archive marker was seen.
    pub fn complete(&self) -> bool {
        self.ended
    }

    fn next_block(&mut self, block: &[u8]) -> Result<(), String> {
        if let Some((kind, size, mut data)) = self.extended.take() {
            data.extend_from_slice(block);
            if (data.len() as u64) < size {
                self.extended = Some((kind, size, data));
            } else {
                data.truncate(size as usize);
                self.extended_header(kind, &data)?;
            }
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            self.ended = self.zero_blocks == 2;
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(format!(
                "a header follows a single empty block after {} entries",
                self.entries
            ));
        }
        self.header(block)
    }

    fn header(&mut self, block: &[u8]) -> Result<(), String> {
        let stored = octal(&block[148..156])
            .ok_or_else(|| format!("unreadable header checksum after {} entries", self.entries))?;
        // Summed with the checksum field as spaces; old writers summed signed bytes.
        let (unsigned, signed) =
            block
                .iter()
                .enumerate()
                .fold((0u64, 0i64), |(unsigned, signed), (i, &b)| {
                    let b = if (148..156).contains(&i) { b' ' } else { b };
                    (unsigned + u64::from(b), signed + i64::from(b as i8))
                });
        if stored != unsigned && stored as i64 != signed {
            return Err(format!(
                "header checksum mismatch after {} entries",
                self.entries
            ));
        }
        let typeflag = block[156];
        let pax_size = self.pax_value("size").and_then(|v| v.parse::<u64>().ok());
        let size = match pax_size {
            Some(size) => size,
            None => numeric(&block[124..136])
                .ok_or_else(|| format!("unreadable size field after {} entries", self.entries))?,
        };
        match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_EXTENDED_HEADER {
                    return Err(format!("an extended header of {size} bytes"));
                }
                if size == 0 {
                    self.extended_header(typeflag, &[])?;
                } else {
                    self.extended = Some((typeflag, size, Vec::with_capacity(size as usize)));
                }
                return Ok(());
            }
            _ => {}
        }
        let name = match (self.pax_value("path"), &self.long_name) {
            (Some(path), _) => path.to_owned(),
            (None, Some(long)) => long.clone(),
            (None, None) => {
                let name = field_str(&block[0..100]);
                let prefix = if &block[257..262] == b"ustar" {
                    field_str(&block[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }
            }
        };
        if self.entries == 0 && typeflag == b'5' && is_root(&name) {
            let number = |key: &str, range: std::ops::Range<usize>| -> Option<u64> {
                match self.pax_value(key) {
                    Some(value) => value.split('.').next()?.parse().ok(),
                    None => numeric(&block[range]),
                }
            };
            self.root = Some(RootAttrs {
                mode: (octal(&block[100..108]).unwrap_or(0o755) & 0o7777) as u32,
                uid: number("uid", 108..116).unwrap_or(0),
                gid: number("gid", 116..124).unwrap_or(0),
                mtime: number("mtime", 136..148).unwrap_or(0) as i64,
                nanos: self
                    .pax_value("mtime")
                    .and_then(|value| value.split_once('.'))
                    .and_then(|(_, fraction)| {
                        let digits: String = fraction.chars().take(9).collect();
                        format!("{digits:0<9}").parse().ok()
                    })
                    .unwrap_or(0),
            });
        }
        self.entries += 1;
        self.pax.clear();
        self.long_name = None;
        // Links, devices, folders and FIFOs carry no data.
        let has_data = !matches!(typeflag, b'1'..=b'6');
        if has_data {
            self.skip = size.div_ceil(512) * 512;
        }
        Ok(())
    }

    fn extended_header(&mut self, kind: u8, data: &[u8]) -> Result<(), String> {
        match kind {
            b'x' => self.pax = parse_pax(data)?,
            b'L' => {
                self.long_name = Some(
                    String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_owned(),
                )
            }
            // Global PAX records and GNU long link names change no path.
            _ => {}
        }
        Ok(())
    }

    fn pax_value(&self, key: &str) -> Option<&str> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn is_root(name: &str) -> bool {
    matches!(name.trim_end_matches('/'), "." | "")
}

fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A numeric header field: octal, or GNU base-256 for large values.
fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        Some(value)
    } else {
        octal(field)
    }
}

/// PAX records: `<length> <key>=<value>\n`.
fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err("a PAX record with a bad length".into());
        }
        let record = &data[space + 1..length - 1];
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without a value")?;
        records.push((
            String::from_utf8_lossy(&record[..equals]).into_owned(),
            String::from_utf8_lossy(&record[equals + 1..]).into_owned(),
        ));
        data = &data[length..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typeflag: u8, mode: u32, size: u64, uid: u64, mtime: u64) -> Vec<u8> {
        tar_header(name, typeflag, mode, uid, uid, size, mtime).to_vec()
    }

    fn entry(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, 0o644, data.len() as u64, 0, 1);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            let mut length = body.len() + 1;
            while format!("{length}{body}").len() != length {
                length += 1;
            }
            data.extend_from_slice(format!("{length}{body}").as_bytes());
        }
        entry("PaxHeader", b'x', &data)
    }

    fn walk(bytes: &[u8], piece: usize) -> Result<TarWalker, String> {
        let mut walker = TarWalker::default();
        for chunk in bytes.chunks(piece) {
            walker.feed(chunk)?;
        }
        Ok(walker)
    }

    fn archive() -> Vec<u8> {
        let mut tar = header("./", b'5', 0o4751, 0, 1000, 1_600_000_000);
        tar.extend(entry("./a b/", b'5', b""));
        tar.extend(entry("./a b/file", b'0', &vec![7u8; 1300]));
        tar.extend(pax(&[("path", "./ünï/ long name"), ("size", "3")]));
        tar.extend(entry("ignored", b'0', b"abc"));
        tar.extend(entry("./link", b'2', b""));
        tar.extend(entry("././@LongLink", b'L', b"./very/long/name\0"));
        tar.extend(entry("./very/long/na", b'0', b"xy"));
        tar.extend(vec![0u8; 1024]);
        tar
    }

    #[test]
    fn walks_a_complete_archive_in_any_pieces() {
        let tar = archive();
        for piece in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let walker = walk(&tar, piece).unwrap();
            assert!(walker.complete(), "piece {piece}");
            assert_eq!(walker.entries, 6, "piece {piece}");
            assert_eq!(
                walker.root,
                Some(RootAttrs {
                    mode: 0o4751,
                    uid: 1000,
                    gid: 1000,
                    mtime: 1_600_000_000,
                    nanos: 0
                })
            );
        }
    }

    #[test]
    fn pax_overrides_the_root_attributes() {
        let mut tar = pax(&[("uid", "3000000"), ("mtime", "1700000000.25")]);
        tar.extend(header(".", b'5', 0o700, 0, 5, 5));
        tar.extend(vec![0u8; 1024]);
        let walker = walk(&tar, 100).unwrap();
        let root = walker.root.unwrap();
        assert_eq!(
            (root.uid, root.gid, root.mtime),
            (3_000_000, 5, 1_700_000_000)
        );
        assert_eq!(root.mode, 0o700);
    }

    #[test]
    fn truncation_and_damage_are_noticed() {
        let tar = archive();
        // Cut at a block boundary before the end marker: no error, but incomplete.
        let walker = walk(&tar[..tar.len() - 1024], 512).unwrap();
        assert!(!walker.complete());
        // A flipped byte in a header.
        let mut damaged = tar.clone();
        damaged[512 + 10] ^= 1;
        assert!(walk(&damaged, 512).unwrap_err().contains("checksum"));
        // A header after a single empty block.
        let mut odd = header("./", b'5', 0o755, 0, 0, 0);
        odd.extend(vec![0u8; 512]);
        odd.extend(entry("x", b'0', b"1"));
        assert!(walk(&odd, 512).is_err());
        // No root entry: no root attributes.
        let mut plain = entry("x", b'0', b"1");
        plain.extend(vec![0u8; 1024]);
        let walker = walk(&plain, 512).unwrap();
        assert!(walker.complete() && walker.root.is_none());
    }

    #[test]
    fn root_archives_carry_owner_mode_and_nanoseconds() {
        let root = RootAttrs {
            mode: 0o4751,
            uid: 1000,
            gid: 5_000_000,
            mtime: 1_700_000_000,
            nanos: 123_456_789,
        };
        let tar = root_archive("volume", &root);
        let walker = walk(&tar, 512).unwrap();
        assert!(walker.complete());
        assert_eq!(walker.entries, 1);
        // The walker takes `volume/` for a plain folder, not the root.
        assert_eq!(walker.root, None);
        let listed = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar)?;
                child.wait_with_output()
            })
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(text.starts_with("drwsr-x--x 1000/5000000"), "{text}");
        assert!(text.contains("volume/"), "{text}");
    }

    #[test]
    fn stat_output_is_parsed_with_nanoseconds() {
        assert_eq!(
            parse_stat("4750 1234 4321 1600000000 2020-09-13 12:26:40.1234567 +0000\n"),
            Some(RootAttrs {
                mode: 0o4750,
                uid: 1234,
                gid: 4321,
                mtime: 1_600_000_000,
                nanos: 123_456_700
            })
        );
        assert_eq!(
            parse_stat("755 0 0 5 2020-09-13 12:26:40 +0000").map(|r| r.nanos),
            Some(0)
        );
        assert_eq!(parse_stat("mkdir: can't create"), None);
    }

    /// Sends `blocks` through a relay to a consumer that sleeps `pause`
    /// per block; returns what came out and the bytes spooled.
    async fn relayed(blocks: &[Bytes], limit: u64, pause: u64) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (to_consumer, mut from_relay) = mpsc::channel::<Bytes>(2);
        let consumer = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(block) = from_relay.recv().await {
                out.extend_from_slice(&block);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            out
        });
        let relay = Relay::start(Some(Spool::create(dir.path()).unwrap()), limit, to_consumer);
        for block in blocks {
            assert!(relay.send(block.clone()).await);
        }
        let spooled = relay.finish().await.unwrap();
        // The spool file was unlinked at once.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        (consumer.await.unwrap(), spooled)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_relay_keeps_order_through_the_spool() {
        let blocks: Vec<Bytes> = (0..200u32)
            .map(|i| {
                let size = 1 + (i as usize * 7919) % 70_000;
                Bytes::from(
                    (0..size)
                        .map(|j| (i as usize * 31 + j) as u8)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let expected: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
        // A slow consumer: most of it goes through the spool.
        let (out, spooled) = relayed(&blocks, u64::MAX, 1).await;
        assert!(out == expected, "the bytes differ");
        assert!(spooled > expected.len() as u64 / 2, "{spooled}");
        // A spool that fills up: the rest waits for the consumer.
        let (out, spooled) = relayed(&blocks, 300_000, 1).await;
        assert!(out == expected, "the bytes differ with a full spool");
        assert!(spooled > 0);
        // No spool room at all: plain back-pressure.
        let (out, spooled) = relayed(&blocks, 0, 0).await;
        assert!(out == expected);
        assert_eq!(spooled, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_spool_holds_no_plain_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        let plain = b"Motor 1 setpoint 42 ".repeat(1000);
        spool.push(&plain).await.unwrap();
        let mut on_disk = vec![0u8; plain.len()];
        std::os::unix::fs::FileExt::read_exact_at(&*spool.file, &mut on_disk, 0).unwrap();
        assert!(!on_disk.windows(8).any(|w| w == b"Motor 1 "));
        assert_eq!(spool.pop(usize::MAX).await.unwrap(), Bytes::from(plain));
        assert_eq!(spool.len(), 0);
    }

    #[test]
    fn base_256_sizes_are_read() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[7] = 0x02; // 2 << 32 = 8 GiB
        assert_eq!(numeric(&field), Some(8 << 30));
        assert_eq!(numeric(b"00000001750\0"), Some(1000));
    }

    #[test]
    fn gnu_tar_archives_are_walked() {
        // What a real tar program writes, PAX and GNU formats, long and
        // non-ASCII names included.
        let dir = tempfile::tempdir().unwrap();
        let long = "d".repeat(120);
        std::fs::create_dir_all(dir.path().join(&long).join("ünïcødé dir")).unwrap();
        std::fs::write(
            dir.path().join(&long).join("ünïcødé dir/f"),
            vec![1u8; 5000],
        )
        .unwrap();
        std::os::unix::fs::symlink("../x", dir.path().join("link")).unwrap();
        for format in ["pax", "gnu", "ustar"] {
            let out = std::process::Command::new("tar")
                .args(["--format", format, "-C"])
                .arg(dir.path())
                .args(["-cf", "-", "."])
                .output()
                .unwrap();
            if format == "ustar" {
                // ustar cannot hold the long name: tar says so.
                continue;
            }
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let walker = walk(&out.stdout, 1000).unwrap();
            assert!(walker.complete(), "{format}");
            assert_eq!(walker.entries, 5, "{format}");
            assert!(walker.root.is_some(), "{format}");
        }
    }
}
