//! Copying to the targets: what is missing is uploaded, read back and
//! compared with the local SHA-256 before it counts; its metadata follows
//! (and is checked too), so a target only ever shows a backup whose data was
//! verified. A failure leaves the backup queued with a backoff; retention
//! there runs only after a successful copy.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use mesbak_interface::{BackupInfo, Error};
use time::OffsetDateTime;

use super::config::TargetConfig;
use super::queue::{CopyRecord, TargetState};
use super::store::{Entry, Target};
use super::{data_key, metadata_key, pitr};
use crate::app::App;
use crate::config::ProcessEnv;
use crate::jobs::{Job, now_rfc3339};
use crate::storage::{human_bytes, open_backup};

/// Which queued copies a sync attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Everything missing (a sync on request or after a backup).
    All,
    /// Only what is past its backoff (the retry timer).
    PastBackoff,
}

/// Copies what is missing to every target. Ok when every target is
/// complete; the error names each target that is not.
pub async fn run(app: &App, job: &Job, due: Due) -> Result<String, Error> {
    let _running = app.offsite.lock_sync().await;
    let mut done = Vec::new();
    let mut failed: Vec<Error> = Vec::new();
    let mut due = due;
    loop {
        app.offsite.again.store(false, Ordering::Release);
        let local = app.storage.list()?;
        let pitr_local = pitr::Local::read(app);
        for config in &app.config.offsite {
            app.offsite.queue.update(&config.name, |state| {
                state.forget_missing(&local);
                state.pitr.forget_settled(&pitr_local);
            })?;
            match sync_target(app, job, config, &local, &pitr_local, due).await {
                Ok(summary) => done.push(summary),
                Err(err) => {
                    tracing::error!(job = job.id, target_name = %config.name, error = %err.message(), "off-site copy failed");
                    failed.push(err);
                }
            }
        }
        // Asked again while this ran: what was asked for may be newer than
        // what this listed. Failed copies wait for their retry.
        if !failed.is_empty() || !app.offsite.again.load(Ordering::Acquire) {
            break;
        }
        due = Due::All;
    }
    match failed.first() {
        None => Ok(if done.is_empty() {
            "no off-site target is configured ([[offsite]] in the configuration)".into()
        } else {
            done.join("; ")
        }),
        Some(first) => {
            let mut message = failed
                .iter()
                .map(Error::message)
                .collect::<Vec<_>>()
                .join("; ");
            if !done.is_empty() {
                message.push_str(&format!(" (done: {})", done.join("; ")));
            }
            Err(Error::from_kind(first.kind(), message))
        }
    }
}

/// Whether the retry timer has something to do.
pub fn anything_due(app: &App, now: OffsetDateTime) -> bool {
    let Ok(local) = app.storage.list() else {
        return false;
    };
    let pitr_local = pitr::Local::read(app);
    app.config.offsite.iter().any(|config| {
        let state = app.offsite.queue.get(&config.name);
        state.queue(&local).iter().any(|b| state.due(&b.id, now))
            || state.pitr.anything_due(&pitr_local, now)
    })
}

async fn sync_target(
    app: &App,
    job: &Job,
    config: &TargetConfig,
    local: &[BackupInfo],
    pitr_local: &pitr::Local,
    due: Due,
) -> Result<String, Error> {
    let name = &config.name;
    let now = OffsetDateTime::now_utc();
    let state = app.offsite.queue.get(name);
    let queued: Vec<&BackupInfo> = state
        .queue(local)
        .into_iter()
        .filter(|b| due == Due::All || state.due(&b.id, now))
        .collect();
    job.set_stage(format!("checking off-site target '{name}'"));
    let target = match Target::open(config, &ProcessEnv) {
        Ok(target) => target,
        Err(err) => return Err(fail_all(app, name, &queued, pitr_local, err)),
    };
    for partial in target.remove_partials() {
        tracing::warn!(target_name = %name, file = %partial, "removed an unfinished copy left by an interrupted upload");
    }
    let held = match list_all(&target).await {
        Ok(held) => held,
        Err(err) => return Err(fail_all(app, name, &queued, pitr_local, err)),
    };
    reconcile(app, &target, local, &held).await?;

    let state = app.offsite.queue.get(name);
    let queued: Vec<&BackupInfo> = state
        .queue(local)
        .into_iter()
        .filter(|b| due == Due::All || state.due(&b.id, now))
        .collect();
    let mut copied = Vec::new();
    let mut bytes = 0u64;
    for (index, backup) in queued.iter().enumerate() {
        job.set_stage(format!(
            "copying {} to off-site target '{name}' ({}/{})",
            backup.id,
            index + 1,
            queued.len()
        ));
        match copy_one(app, job, &target, backup).await {
            Ok(()) => {
                copied.push(backup.id.clone());
                bytes += backup.size_bytes;
                job.add_file(format!("{name}:{}", backup.id));
            }
            Err(Failure::ThisBackup(err)) => {
                // This backup cannot go (damaged or gone here); the others can.
                record_failure(app, name, &backup.id, &err)?;
                job.warn(err.message());
            }
            Err(Failure::Target(err)) => {
                return Err(fail_all(app, name, &queued[index..], pitr_local, err));
            }
        }
    }
    let mut summary = match copied.len() {
        0 => format!("off-site target '{name}' is up to date"),
        n => format!(
            "copied {n} backup(s) ({}) to off-site target '{name}', each verified there",
            human_bytes(bytes)
        ),
    };
    if !copied.is_empty() {
        let expired = super::expire::run(app, job, &target).await?;
        if !expired.is_empty() {
            summary.push_str(&format!(
                "; retention deleted {} older copy(ies) there: {}",
                expired.len(),
                expired.join(", ")
            ));
        }
    }
    if let Some(pitr_summary) =
        pitr::sync(app, job, &target, pitr_local, due == Due::PastBackoff).await?
    {
        summary.push_str(&format!("; {pitr_summary}"));
    }
    let state = app.offsite.queue.get(name);
    let left = state.queue(local).len() + state.pitr.queue_length(pitr_local);
    if left > 0 && due == Due::All {
        return Err(Error::Failed(format!(
            "off-site target '{name}' still lacks {left} backup(s); see `mesbakctl status`"
        )));
    }
    Ok(summary)
}

/// Records `err` against every queued backup and PITR file (so the timer
/// backs off from all of them) and returns it.
fn fail_all(
    app: &App,
    name: &str,
    queued: &[&BackupInfo],
    pitr_local: &pitr::Local,
    err: Error,
) -> Error {
    let now = OffsetDateTime::now_utc();
    if let Err(save) = app.offsite.queue.update(name, |state| {
        for backup in queued {
            state.failed(&backup.id, &err.message(), now);
        }
        state.pitr.failed_all(pitr_local, &err.message(), now);
    }) {
        tracing::error!(error = %save.message(), "cannot record the off-site failure");
    }
    err
}

fn record_failure(app: &App, name: &str, id: &str, err: &Error) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    app.offsite
        .queue
        .update(name, |state| state.failed(id, &err.message(), now))
}

/// Everything the target holds, by key.
pub async fn list_all(target: &Target) -> Result<BTreeMap<String, Entry>, Error> {
    let mut held = BTreeMap::new();
    for folder in ["database", "ignition"] {
        for entry in target.list(folder).await? {
            held.insert(entry.key.clone(), entry);
        }
    }
    Ok(held)
}

/// Brings the remembered copies in line with what the target holds: a copy
/// that vanished there is queued again; a complete copy the agent does not
/// remember (its state was lost) is adopted when its metadata matches.
async fn reconcile(
    app: &App,
    target: &Target,
    local: &[BackupInfo],
    held: &BTreeMap<String, Entry>,
) -> Result<(), Error> {
    let name = &target.name;
    let state = app.offsite.queue.get(name);
    let complete = |id: &str, kind| {
        held.contains_key(&data_key(kind, id)) && held.contains_key(&metadata_key(kind, id))
    };
    let vanished: Vec<String> = state
        .copied
        .iter()
        .filter(|(id, record)| !complete(id, record.kind))
        .map(|(id, _)| id.clone())
        .collect();
    let mut adopt: Vec<(String, CopyRecord)> = Vec::new();
    for backup in local {
        if state.copied.contains_key(&backup.id) || !complete(&backup.id, backup.kind) {
            continue;
        }
        let size_there = held.get(&data_key(backup.kind, &backup.id)).map(|e| e.size);
        if size_there != Some(backup.size_bytes) {
            continue;
        }
        let Ok(bytes) = target
            .get_bytes(&metadata_key(backup.kind, &backup.id))
            .await
        else {
            continue;
        };
        match serde_json::from_slice::<BackupInfo>(&bytes) {
            Ok(there) if there.sha256 == backup.sha256 => adopt.push((
                backup.id.clone(),
                CopyRecord {
                    kind: backup.kind,
                    created: backup.created.clone(),
                    sha256: backup.sha256.clone(),
                    size: backup.size_bytes,
                    copied_at: now_rfc3339(),
                },
            )),
            _ => {}
        }
    }
    for id in &vanished {
        tracing::warn!(target_name = %name, backup = %id, "a copy is no longer on the off-site target; it is copied again");
    }
    for (id, _) in &adopt {
        tracing::info!(target_name = %name, backup = %id, "found a complete copy on the off-site target");
    }
    if vanished.is_empty() && adopt.is_empty() {
        return Ok(());
    }
    app.offsite.queue.update(name, |state: &mut TargetState| {
        for id in &vanished {
            state.copied.remove(id);
        }
        state.copied.extend(adopt);
    })
}

/// Why a copy failed: something about this one backup (the others may
/// still go), or the target.
enum Failure {
    ThisBackup(Error),
    Target(Error),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure::Target(err)
    }
}

/// Uploads one backup and its metadata and verifies both there.
async fn copy_one(
    app: &App,
    job: &Job,
    target: &Target,
    backup: &BackupInfo,
) -> Result<(), Failure> {
    let name = &target.name;
    let found = app
        .storage
        .resolve(&backup.id, false)
        .map_err(Failure::ThisBackup)?;
    let metadata = app.storage.metadata(&found).ok_or_else(|| {
        Failure::ThisBackup(Error::Integrity(format!(
            "the local backup {} has no readable metadata, so it cannot be checked; it was not copied",
            backup.id
        )))
    })?;
    let file = open_backup(&found.path).map_err(Failure::ThisBackup)?;
    let size = file
        .metadata()
        .map_err(|err| {
            Failure::ThisBackup(Error::Failed(format!(
                "cannot read {}: {err}",
                found.path.display()
            )))
        })?
        .len();
    let key = data_key(backup.kind, &backup.id);
    let meta_key = metadata_key(backup.kind, &backup.id);
    let started = Instant::now();
    job.reset_bytes(size);
    let sent = target
        .upload_file(&key, file, size, &job.bytes_done)
        .await?;
    if sent.sha256 != metadata.sha256 || sent.size != size {
        let _ = target.delete(&key).await;
        return Err(Failure::ThisBackup(Error::Integrity(format!(
            "the local backup {} does not match its recorded SHA-256 (it changed or is damaged on this disk); it was not copied to '{name}': run `mesbakctl verify {}`",
            backup.id, backup.id
        ))));
    }
    job.set_stage(format!(
        "verifying {} on off-site target '{name}'",
        backup.id
    ));
    job.reset_bytes(size);
    let verify_started = Instant::now();
    let there = target.read(&key, &job.bytes_done, |_| Ok(())).await?;
    let verify_ms = verify_started.elapsed().as_millis() as u64;
    if there != sent {
        let _ = target.delete(&key).await;
        return Err(Failure::Target(Error::Integrity(format!(
            "the copy of {} on off-site target '{name}' read back differently ({} bytes, SHA-256 {}; sent {} bytes, {}); it was deleted there and stays queued",
            backup.id, there.size, there.sha256, sent.size, sent.sha256
        ))));
    }
    let json = Bytes::from(serde_json::to_vec_pretty(&metadata).expect("metadata serialises"));
    target.put_bytes(&meta_key, json.clone()).await?;
    let json_there = target.get_bytes(&meta_key).await?;
    if json_there != json {
        let _ = target.delete(&meta_key).await;
        return Err(Failure::Target(Error::Integrity(format!(
            "the metadata of {} on off-site target '{name}' read back differently; it was deleted there and stays queued",
            backup.id
        ))));
    }
    job.bytes_done.store(size, Ordering::Relaxed);
    let copy_ms = started.elapsed().as_millis() as u64;
    app.offsite
        .queue
        .update(name, |state| state.copied(backup, size, copy_ms, verify_ms))?;
    tracing::info!(
        job = job.id,
        target_name = %name,
        file = %backup.id,
        bytes = size,
        copy_ms,
        verify_ms,
        location = %target.display_key(&key),
        "off-site copy verified"
    );
    Ok(())
}
