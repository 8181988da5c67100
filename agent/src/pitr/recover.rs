//! Point-in-time recovery into a scratch cluster: a throwaway container of
//! the database container's own image, on its own volume, with no network,
//! gets the base backup and the WAL segments up to the target (through the
//! archive API, the container created but not yet started), recovers to
//! `recovery_target_time` and promotes. Its database is then restored
//! through the ordinary verified restore (or test restore), its dump
//! streamed straight into the load: no file in between, the dump and the
//! load at once. The live server is not touched until that restore's swap;
//! the scratch container and volume are always removed (a crash leaves a
//! record in the agent's state; the next start removes them).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mesbak_format::Key;
use mesbak_interface::{Compression, Error};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

use super::chain::RecoveryPlan;
use super::store::PitrStore;
use crate::app::App;
use crate::docker::Docker;
use crate::jobs::Job;
use crate::pipeline::BackupReader;
use crate::postgres::{MAINTENANCE_DB, Server};
use crate::process::Runner;
use crate::storage::open_backup;

/// Label on scratch containers and volumes: the owning agent's state folder.
pub const SCRATCH_LABEL: &str = "org.mesbak.pitr-scratch";
/// Where the recovery reads WAL segments from, inside the data directory.
const RESTORE_WAL: &str = "mesbak_restore_wal";
/// How long recovery may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often the scratch cluster is asked whether it has promoted.
const PROMOTION_POLL: Duration = Duration::from_millis(200);

/// A scratch container and its volume, recorded before they are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scratch {
    pub container: String,
    pub volume: String,
}

/// Reads every chunk of the base backup and the segments: a damaged or
/// missing file is found before anything is made. Decryption alone
/// authenticates every chunk (the gzip inside is checked as it is
/// recovered); `key`'s cache keeps each file's derived key for that pass.
pub async fn authenticate(
    key: &Key,
    job: &Job,
    store: &PitrStore,
    plan: &RecoveryPlan,
) -> Result<(), Error> {
    let mut paths = vec![(plan.base.id.clone(), store.base_path(&plan.base))];
    paths.extend(
        plan.segments
            .iter()
            .map(|s| (s.name.clone(), store.wal_path(s))),
    );
    let total: u64 = paths
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    job.reset_bytes(total);
    job.set_stage(format!(
        "authenticating the base backup {} and {} WAL segments",
        plan.base.id,
        plan.segments.len()
    ));
    // Each file has its own salt, so each costs a PBKDF2 derivation (a
    // quarter of a CPU-second): as many files at once as there are cores.
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut checks = futures_util::stream::iter(paths)
        .map(|(id, path)| {
            let progress = job.bytes_done.clone();
            async move {
                let file = open_backup(&path)?;
                BackupReader::start(id, file, key.clone(), None, progress)
                    .drain()
                    .await
            }
        })
        .buffer_unordered(parallel);
    while let Some(checked) = checks.next().await {
        checked?;
    }
    Ok(())
}

/// A scratch cluster recovered to the target time, up and out of recovery.
pub struct Recovered {
    /// Its server, for the restore that moves its database over.
    pub server: Server,
    docker: Docker,
    scratch: Scratch,
}

impl Recovered {
    /// Removes the scratch cluster (its container and volume) and its record.
    pub async fn remove(self, app: &App) {
        self.server.release().await;
        remove(&self.docker, &self.scratch).await;
        let _ = app.state.update(|state| state.pitr_scratch = None);
    }
}

/// Recovers `plan` to `target` in a scratch cluster, left running for the
/// restore that follows ([`Recovered::remove`] afterwards; on failure it is
/// removed here).
pub async fn recover(
    app: &App,
    job: &Job,
    key: &Key,
    store: &PitrStore,
    plan: &RecoveryPlan,
    target: OffsetDateTime,
) -> Result<Recovered, Error> {
    let docker = app.docker().await?;
    let live = &app.config.database.container;
    let image = docker.image_of(live).await?;
    let data_dir = docker
        .image_env(&image)
        .await?
        .iter()
        .find_map(|line| line.strip_prefix("PGDATA=").map(str::to_owned))
        .unwrap_or_else(|| "/var/lib/postgresql/data".to_owned());
    // The server's read-only mounts (configuration files, or a stand-in
    // image's programs) come along; its data does not.
    let readonly = docker.readonly_binds(live).await?;
    let id = super::random_id()?;
    let scratch = Scratch {
        container: format!("mesbak-pitr-{id}"),
        volume: format!("mesbak-pitr-{id}"),
    };
    app.state
        .update(|state| state.pitr_scratch = Some(scratch.clone()))?;
    let result = async {
        let labels: HashMap<String, String> = [(
            SCRATCH_LABEL.to_owned(),
            app.config.state_dir.display().to_string(),
        )]
        .into();
        docker.create_volume(&scratch.volume, labels.clone()).await?;
        let target_text = target.format(&Rfc3339).expect("formatting a time");
        // PostgreSQL's own form, to the microsecond it keeps.
        let target_pg = target
            .to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
            ))
            .expect("formatting a time");
        let create = |with_target: bool| {
            let mut cmd = vec![
                "postgres".to_owned(),
                "-c".to_owned(),
                format!("restore_command=cp {data_dir}/{RESTORE_WAL}/%f %p"),
                "-c".to_owned(),
                "archive_mode=off".to_owned(),
                "-c".to_owned(),
                "recovery_target_action=promote".to_owned(),
            ];
            if with_target {
                cmd.extend(["-c".to_owned(), format!("recovery_target_time={target_pg}")]);
            }
            bollard::models::ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(cmd),
                labels: Some(labels.clone()),
                network_disabled: Some(true),
                host_config: Some(bollard::models::HostConfig {
                    binds: Some(
                        std::iter::once(format!("{}:{data_dir}", scratch.volume))
                            .chain(readonly.iter().cloned())
                            .collect(),
                    ),
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        docker.create_container(&scratch.container, create(true)).await?;
        job.set_stage(format!("restoring the base backup {} into a scratch cluster", plan.base.id));
        upload_base(key, job, &docker, &scratch.container, &data_dir, store, plan).await?;
        job.set_stage(format!(
            "recovering the scratch cluster to {target_text} ({} WAL segments)",
            plan.segments.len()
        ));
        upload_wal(key, &docker, &scratch.container, &data_dir, store, plan).await?;
        let server = Server::new(
            &app.config,
            Runner::Container {
                docker: docker.clone(),
                container: scratch.container.clone(),
            },
            None,
        );
        docker.start(&scratch.container).await?;
        let reached = match wait_promoted(&docker, &server, &scratch.container).await {
            Ok(reached) => reached,
            // Recovery ran out of WAL before a commit after the target: the
            // segments reach past the target (their archive times say so),
            // so their end is the state at the target. Recover to it.
            Err(Outcome::EndedBeforeTarget) => {
                docker.remove_container(&scratch.container).await?;
                docker.create_container(&scratch.container, create(false)).await?;
                docker.start(&scratch.container).await?;
                wait_promoted(&docker, &server, &scratch.container)
                    .await
                    .map_err(|outcome| outcome.into_error(&plan.base.id))?;
                format!("no commit between {target_text} and the end of the shipped WAL: recovered to its end")
            }
            Err(other) => return Err(other.into_error(&plan.base.id)),
        };
        tracing::info!(job = job.id, target = %target_text, base = %plan.base.id, reached = %reached, "scratch cluster recovered");
        Ok(server)
    }
    .await;
    match result {
        Ok(server) => Ok(Recovered {
            server,
            docker,
            scratch,
        }),
        Err(err) => {
            remove(&docker, &scratch).await;
            let _ = app.state.update(|state| state.pitr_scratch = None);
            Err(err)
        }
    }
}

/// How waiting for the scratch cluster ended, when it did not promote.
enum Outcome {
    EndedBeforeTarget,
    Stopped(String),
    TimedOut(String),
}

impl Outcome {
    fn into_error(self, base: &str) -> Error {
        match self {
            Outcome::EndedBeforeTarget => Error::Integrity(format!(
                "recovery from {base} ran out of WAL before the target time; a segment is missing"
            )),
            Outcome::Stopped(log) => Error::Database(format!(
                "the scratch cluster stopped during recovery from {base}: {log}"
            )),
            Outcome::TimedOut(log) => Error::Database(format!(
                "the scratch cluster did not finish recovering from {base} within an hour: {log}"
            )),
        }
    }
}

/// Waits until the scratch cluster accepts connections out of recovery.
/// Returns what its log says of where recovery stopped.
async fn wait_promoted(
    docker: &Docker,
    server: &Server,
    container: &str,
) -> Result<String, Outcome> {
    let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let running = docker.is_running(container).await.unwrap_or(false);
        if !running {
            let log = docker.logs_tail(container, 30).await;
            return Err(
                if log.contains("recovery ended before configured recovery target was reached") {
                    Outcome::EndedBeforeTarget
                } else {
                    Outcome::Stopped(crate::process::last_lines(&log, 3))
                },
            );
        }
        let promoted: Result<bool, Error> = server
            .query_value(MAINTENANCE_DB, "SELECT NOT pg_catalog.pg_is_in_recovery()")
            .await;
        if matches!(promoted, Ok(true)) {
            let log = docker.logs_tail(container, 200).await;
            let reached = log
                .lines()
                .find(|l| l.contains("recovery stopping"))
                .or_else(|| {
                    log.lines()
                        .find(|l| l.contains("archive recovery complete"))
                })
                .map(|l| l.split_once("LOG:").map_or(l, |(_, m)| m).trim().to_owned())
                .unwrap_or_else(|| "recovery complete".to_owned());
            return Ok(reached);
        }
        if tokio::time::Instant::now() >= deadline {
            let log = docker.logs_tail(container, 30).await;
            return Err(Outcome::TimedOut(crate::process::last_lines(&log, 3)));
        }
        tokio::time::sleep(PROMOTION_POLL).await;
    }
}

/// Extracts the base backup (a tar of the data directory) into the
/// scratch container's data directory.
async fn upload_base(
    key: &Key,
    job: &Job,
    docker: &Docker,
    container: &str,
    data_dir: &str,
    store: &PitrStore,
    plan: &RecoveryPlan,
) -> Result<(), Error> {
    let path = store.base_path(&plan.base);
    let file = open_backup(&path)?;
    job.reset_bytes(file.metadata().map(|m| m.len()).unwrap_or(0));
    let mut reader = BackupReader::start(
        plan.base.id.clone(),
        file,
        key.clone(),
        Some(Compression::Gzip),
        job.bytes_done.clone(),
    );
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let forward = tokio::spawn(async move {
        while let Some(block) = reader.blocks.recv().await {
            if sender.send(Ok(block)).await.is_err() {
                break;
            }
        }
        let read = reader.finish().await;
        if let Err(err) = &read {
            let _ = sender.send(Err(io::Error::other(err.message()))).await;
        }
        read
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let uploaded = docker.upload(container, data_dir, body).await;
    forward
        .await
        .map_err(|err| Error::Failed(format!("internal error while restoring: {err}")))??;
    uploaded
}

/// Puts the WAL segments (decrypted) into `<data>/mesbak_restore_wal/` and
/// a `recovery.signal`, as one tar stream.
async fn upload_wal(
    key: &Key,
    docker: &Docker,
    container: &str,
    data_dir: &str,
    store: &PitrStore,
    plan: &RecoveryPlan,
) -> Result<(), Error> {
    let key = key.clone();
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let segments: Vec<_> = plan
        .segments
        .iter()
        .map(|s| (s.name.clone(), store.wal_path(s)))
        .collect();
    let size = plan.base.wal_segment_size;
    let produce = tokio::spawn(async move {
        let result = async {
            let directory = tar_header(&format!("{RESTORE_WAL}/"), 0, tar::EntryType::Directory)?;
            let _ = sender.send(Ok(directory)).await;
            for (name, path) in segments {
                let header = tar_header(
                    &format!("{RESTORE_WAL}/{name}"),
                    size,
                    tar::EntryType::Regular,
                )?;
                if sender.send(Ok(header)).await.is_err() {
                    return Ok(());
                }
                let mut reader = BackupReader::start(
                    name.clone(),
                    open_backup(&path)?,
                    key.clone(),
                    Some(Compression::Gzip),
                    Arc::new(Default::default()),
                );
                let mut sent = 0u64;
                while let Some(block) = reader.blocks.recv().await {
                    sent += block.len() as u64;
                    if sender.send(Ok(block)).await.is_err() {
                        return Ok(());
                    }
                }
                reader.finish().await?;
                let padding = tar_padding(sent);
                if padding > 0 {
                    let _ = sender.send(Ok(Bytes::from(vec![0u8; padding]))).await;
                }
                if sent != size {
                    return Err(Error::Integrity(format!(
                        "WAL segment {name} holds {sent} bytes, not {size}"
                    )));
                }
            }
            let signal = tar_header("recovery.signal", 0, tar::EntryType::Regular)?;
            let _ = sender.send(Ok(signal)).await;
            let _ = sender.send(Ok(Bytes::from(vec![0u8; 1024]))).await;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = &result {
            let _ = sender.send(Err(io::Error::other(err.message()))).await;
        }
        result
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let uploaded = docker.upload(container, data_dir, body).await;
    produce
        .await
        .map_err(|err| Error::Failed(format!("internal error while restoring: {err}")))??;
    uploaded
}

/// A ustar header for `name` of `size` bytes, owned by root (the image's
/// entry point gives the data directory to its server's user).
fn tar_header(name: &str, size: u64, kind: tar::EntryType) -> Result<Bytes, Error> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(name)
        .map_err(|err| Error::Failed(format!("cannot name {name} in a tar stream: {err}")))?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o700
    } else {
        0o600
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok(Bytes::copy_from_slice(header.as_bytes()))
}

/// Removes a scratch container and its volume (errors are logged: the next
/// start retries from the state's record).
pub async fn remove(docker: &Docker, scratch: &Scratch) {
    if let Err(err) = docker.remove_container(&scratch.container).await {
        tracing::warn!(container = %scratch.container, error = %err.message(), "could not remove the scratch container");
    }
    if let Err(err) = docker.remove_volume(&scratch.volume).await {
        tracing::warn!(volume = %scratch.volume, error = %err.message(), "could not remove the scratch volume");
    }
}

/// Padding after a file's data in a tar stream.
pub fn tar_padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}
