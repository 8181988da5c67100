//! The PITR files off-site: every base backup (with its metadata) and every
//! shipped WAL file goes to each target as `pitr/base/<id>`,
//! `pitr/base/<id>.json` and `pitr/wal/<file>` (the backup folder's own
//! layout), uploaded, read back and compared before it counts, like any
//! backup.
//!
//! WAL comes a file a minute, so one sync copies everything queued in
//! batches: a few uploads at once, the state saved once per batch, one
//! backoff for all of them. What a target holds is remembered as ranges of
//! segment numbers (a month of segments is one range, not 43,000 entries),
//! so `offsite.json` stays small whatever the chain's length.
//!
//! Retention there is the local PITR retention ([`crate::pitr::plan_retention`])
//! over what the target holds, run when a base backup has been copied (the
//! moment the local one runs too): base backups past `retention.days` except
//! the one that starts the window, and every WAL file older than the oldest
//! kept base backup's start. Never a segment a kept base needs.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use mesbak_interface::Error;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::queue::{FailedCopy, next_failure};
use super::read::Spool;
use super::store::Target;
use crate::app::App;
use crate::jobs::Job;
use crate::pitr::PitrStore;
use crate::pitr::chain::{
    BaseInfo, RecoveryPlan, WalFile, WalKind, Window, parse_wal_file, start_number,
};
use crate::storage::{create_private_file, human_bytes, open_backup, write_error};
use crate::trust::parse_time;

pub const BASE_FOLDER: &str = "pitr/base";
pub const WAL_FOLDER: &str = "pitr/wal";
/// The key the WAL files' one failure is remembered under.
const WAL_FAILURE: &str = "WAL";
/// WAL files copied at once, and per saved batch.
const PARALLEL_WAL: usize = 4;
const WAL_BATCH: usize = 64;

fn base_key(id: &str) -> String {
    format!("{BASE_FOLDER}/{id}")
}

fn base_metadata_key(id: &str) -> String {
    format!("{BASE_FOLDER}/{id}.json")
}

fn wal_key(file: &WalFile) -> String {
    format!("{WAL_FOLDER}/{}", file.file_name)
}

/// What one target holds of the PITR files (verified copies only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PitrCopies {
    /// Base backups there, with their metadata (retention plans on it).
    pub bases: BTreeMap<String, BaseInfo>,
    /// Segments there: per timeline, inclusive ranges of segment numbers.
    pub segments: BTreeMap<u32, Vec<[u64; 2]>>,
    /// History files and backup labels there (a few per base backup).
    pub others: BTreeSet<String>,
    /// Failed copies waiting for their retry: by base backup id, and one
    /// entry for all WAL files.
    pub failed: BTreeMap<String, FailedCopy>,
}

impl PitrCopies {
    pub fn holds(&self, file: &WalFile) -> bool {
        match file.kind {
            WalKind::Segment { timeline, number } => self
                .segments
                .get(&timeline)
                .is_some_and(|ranges| ranges.iter().any(|[a, b]| *a <= number && number <= *b)),
            _ => self.others.contains(&file.file_name),
        }
    }

    pub fn add(&mut self, file: &WalFile) {
        match file.kind {
            WalKind::Segment { timeline, number } => {
                let ranges = self.segments.entry(timeline).or_default();
                ranges.push([number, number]);
                ranges.sort_unstable();
                let mut merged: Vec<[u64; 2]> = Vec::with_capacity(ranges.len());
                for range in ranges.drain(..) {
                    match merged.last_mut() {
                        Some(last) if range[0] <= last[1].saturating_add(1) => {
                            last[1] = last[1].max(range[1]);
                        }
                        _ => merged.push(range),
                    }
                }
                *ranges = merged;
            }
            _ => {
                self.others.insert(file.file_name.clone());
            }
        }
    }

    pub fn remove(&mut self, file: &WalFile) {
        match file.kind {
            WalKind::Segment { timeline, number } => {
                if let Some(ranges) = self.segments.get_mut(&timeline) {
                    let mut split = Vec::with_capacity(ranges.len() + 1);
                    for [a, b] in ranges.drain(..) {
                        if number < a || number > b {
                            split.push([a, b]);
                            continue;
                        }
                        if a < number {
                            split.push([a, number - 1]);
                        }
                        if number < b {
                            split.push([number + 1, b]);
                        }
                    }
                    *ranges = split;
                    if ranges.is_empty() {
                        self.segments.remove(&timeline);
                    }
                }
            }
            _ => {
                self.others.remove(&file.file_name);
            }
        }
    }

    /// Local base backups (with metadata) not there yet, oldest first.
    pub fn queued_bases<'a>(&self, local: &'a Local) -> Vec<&'a BaseInfo> {
        local
            .bases
            .iter()
            .filter(|b| !b.sha256.is_empty() && !self.bases.contains_key(&b.id))
            .collect()
    }

    /// Local WAL files not there yet, in the chain's order.
    pub fn queued_wal<'a>(&self, local: &'a Local) -> Vec<&'a WalFile> {
        local.wal.iter().filter(|f| !self.holds(f)).collect()
    }

    pub fn queue_length(&self, local: &Local) -> usize {
        self.queued_bases(local).len() + self.queued_wal(local).len()
    }

    /// Whether the retry timer should try `key` (a base id or the WAL) now.
    pub fn due(&self, key: &str, now: OffsetDateTime) -> bool {
        self.failed
            .get(key)
            .and_then(|f| parse_time(&f.next_attempt))
            .is_none_or(|next| next <= now)
    }

    /// Whether anything queued is past its backoff.
    pub fn anything_due(&self, local: &Local, now: OffsetDateTime) -> bool {
        self.queued_bases(local)
            .iter()
            .any(|b| self.due(&b.id, now))
            || (!self.queued_wal(local).is_empty() && self.due(WAL_FAILURE, now))
    }

    /// Records one failure against everything queued (the timer backs off).
    pub fn failed_all(&mut self, local: &Local, message: &str, now: OffsetDateTime) {
        let mut keys: Vec<String> = self
            .queued_bases(local)
            .iter()
            .map(|b| b.id.clone())
            .collect();
        if !self.queued_wal(local).is_empty() {
            keys.push(WAL_FAILURE.to_owned());
        }
        for key in keys {
            let failure = next_failure(self.failed.get(&key), message, now);
            self.failed.insert(key, failure);
        }
    }

    /// Forgets failures of what is no longer queued (copied, or deleted by
    /// the local retention).
    pub fn forget_settled(&mut self, local: &Local) {
        let bases: BTreeSet<String> = self
            .queued_bases(local)
            .iter()
            .map(|b| b.id.clone())
            .collect();
        let wal_queued = !self.queued_wal(local).is_empty();
        self.failed
            .retain(|key, _| bases.contains(key) || (key == WAL_FAILURE && wal_queued));
    }

    /// The failure to report: the most recent one.
    pub fn last_failure(&self) -> Option<(&String, &FailedCopy)> {
        self.failed
            .iter()
            .max_by(|a, b| a.1.last_failed.cmp(&b.1.last_failed))
    }
}

/// The PITR files in the backup folder.
pub struct Local {
    pub bases: Vec<BaseInfo>,
    pub wal: Arc<Vec<WalFile>>,
    pub store: PitrStore,
}

impl Local {
    /// Read through the catalog's kept listings (cheap while nothing changes).
    pub fn read(app: &App) -> Local {
        let store = PitrStore::new(&app.config.backup_dir);
        let bases = store.bases();
        // Files shipped while PITR was on stay after `pitr disable`.
        let segment_size = app
            .state
            .get()
            .pitr
            .map(|a| a.wal_segment_size)
            .or_else(|| bases.first().map(|b| b.wal_segment_size))
            .unwrap_or(16 << 20);
        let wal = store.wal(segment_size);
        Local { bases, wal, store }
    }

    pub fn is_empty(&self) -> bool {
        self.bases.is_empty() && self.wal.is_empty()
    }
}

/// Copies the queued PITR files to `target`, then applies retention there
/// when a base backup went. Returns what was done, for the job's summary.
pub async fn sync(
    app: &App,
    job: &Job,
    target: &Target,
    local: &Local,
    due_only: bool,
) -> Result<Option<String>, Error> {
    let name = &target.name;
    let now = OffsetDateTime::now_utc();
    let state = app.offsite.queue.get(name).pitr;
    let bases: Vec<&BaseInfo> = state
        .queued_bases(local)
        .into_iter()
        .filter(|b| !due_only || state.due(&b.id, now))
        .collect();
    let wal: Vec<&WalFile> = if !due_only || state.due(WAL_FAILURE, now) {
        state.queued_wal(local)
    } else {
        Vec::new()
    };
    if bases.is_empty() && wal.is_empty() {
        return Ok(None);
    }
    let mut bytes = 0u64;
    for (index, base) in bases.iter().enumerate() {
        job.set_stage(format!(
            "copying base backup {} to off-site target '{name}' ({}/{})",
            base.id,
            index + 1,
            bases.len()
        ));
        match copy_base(job, target, &local.store, base).await {
            Ok(size) => {
                bytes += size;
                app.offsite.queue.update(name, |state| {
                    state.pitr.failed.remove(&base.id);
                    state.pitr.bases.insert(base.id.clone(), (*base).clone());
                    state.record_copy(size);
                })?;
                job.add_file(format!("{name}:pitr/base/{}", base.id));
            }
            Err(err) => {
                app.offsite.queue.update(name, |state| {
                    state.pitr.failed_all(local, &err.message(), now)
                })?;
                return Err(err);
            }
        }
    }
    let mut copied_wal = 0usize;
    for batch in wal.chunks(WAL_BATCH) {
        job.set_stage(format!(
            "copying WAL to off-site target '{name}' ({}/{} files)",
            copied_wal,
            wal.len()
        ));
        let mut results: Vec<(&WalFile, Result<Option<u64>, Error>)> = Vec::new();
        for group in batch.chunks(PARALLEL_WAL) {
            let copies: Vec<_> = group
                .iter()
                .map(|file| copy_wal(target, &local.store, file))
                .collect();
            let done = futures_util::future::join_all(copies).await;
            results.extend(group.iter().copied().zip(done));
        }
        let mut failure = None;
        app.offsite.queue.update(name, |state| {
            for (file, result) in &results {
                match result {
                    Ok(Some(size)) => {
                        state.pitr.add(file);
                        state.record_copy(*size);
                        bytes += size;
                        copied_wal += 1;
                    }
                    // Deleted here meanwhile (local retention): nothing to copy.
                    Ok(None) => {}
                    Err(err) => {
                        failure.get_or_insert_with(|| Error::from_kind(err.kind(), err.message()));
                    }
                }
            }
            match &failure {
                Some(err) => state.pitr.failed_all(local, &err.message(), now),
                None => {
                    state.pitr.failed.remove(WAL_FAILURE);
                }
            }
        })?;
        if let Some(err) = failure {
            return Err(err);
        }
    }
    tracing::info!(job = job.id, target_name = %name, base_backups = bases.len(), wal_files = copied_wal, bytes, "PITR files copied off-site and verified");
    let mut summary = format!(
        "{} base backup(s) and {copied_wal} WAL file(s) ({}) of point-in-time recovery copied to '{name}', each verified there",
        bases.len(),
        human_bytes(bytes)
    );
    if !bases.is_empty() {
        let expired = expire(app, job, target).await?;
        if !expired.is_empty() {
            summary.push_str(&format!(
                "; PITR retention there deleted {}",
                expired.join(", ")
            ));
        }
    }
    Ok(Some(summary))
}

/// The base backups (from their metadata) and WAL files target `name`
/// holds; a base backup whose metadata cannot be read is not used.
async fn chain_held(target: &Target, name: &str) -> Result<(Vec<BaseInfo>, Vec<WalFile>), Error> {
    let listed = target.list(BASE_FOLDER).await?;
    let keys: BTreeSet<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    let mut bases = Vec::new();
    for entry in &listed {
        let Some(id) = entry
            .key
            .strip_prefix(&format!("{BASE_FOLDER}/"))
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if !keys.contains(base_key(id).as_str()) {
            continue;
        }
        let bytes = target.get_bytes(&entry.key).await?;
        match serde_json::from_slice::<BaseInfo>(&bytes) {
            Ok(base) => bases.push(base),
            Err(err) => {
                tracing::warn!(target_name = %name, file = %entry.key, error = %err, "unreadable base backup metadata off-site; that base backup is not used")
            }
        }
    }
    let segment_size = bases.first().map_or(16 << 20, |b| b.wal_segment_size);
    let wal: Vec<WalFile> = target
        .list(WAL_FOLDER)
        .await?
        .iter()
        .filter_map(|entry| parse_wal_file(entry.key.rsplit_once('/')?.1, segment_size))
        .collect();
    Ok((bases, wal))
}

/// The restorable window target `name` holds.
pub async fn window(app: &App, name: &str) -> Result<Window, Error> {
    let target = super::read::open(app, name)?;
    let (bases, wal) = chain_held(&target, name).await?;
    Ok(crate::pitr::chain::window(&bases, &wal))
}

/// An off-site target's later WAL segments, fetched into the spool only if
/// the recovery reaches them.
pub struct LaterWal {
    target: Target,
    store: PitrStore,
}

impl LaterWal {
    pub async fn fetch(&self, files: &[WalFile]) -> Result<(), Error> {
        let progress = AtomicU64::new(0);
        for file in files {
            download(
                &self.target,
                &wal_key(file),
                &self.store.wal_path(file),
                &progress,
            )
            .await?;
        }
        Ok(())
    }
}

/// Fetches what a recovery to `target_time` needs from target `name` into
/// a spool laid out as the backup folder's `pitr/`: the base backup
/// (checked against the SHA-256 of its metadata) and its WAL segments; the
/// rest of the chain on demand ([`LaterWal`]). The caller authenticates
/// every file before it is used.
pub async fn fetch(
    app: &App,
    job: &Job,
    name: &str,
    target_time: OffsetDateTime,
) -> Result<(Spool, PitrStore, RecoveryPlan, LaterWal), Error> {
    let target = super::read::open(app, name)?;
    job.set_stage(format!(
        "reading what off-site target '{name}' holds for point-in-time recovery"
    ));
    let (bases, wal) = chain_held(&target, name).await?;
    let plan = crate::pitr::plan_or_refuse(
        &bases,
        &wal,
        target_time,
        &format!(" on off-site target '{name}'"),
    )?;
    let spool = Spool::create(app, job)?;
    let store = PitrStore::new(&spool.dir);
    store.prepare()?;
    let needed = plan.base.size_bytes
        + plan.segments.len() as u64 * plan.base.wal_segment_size / 2
        + app.config.backup.min_free_bytes;
    let free = app.storage.free_bytes()?;
    if free < needed {
        return Err(Error::NoSpace(format!(
            "only {} free in {}: fetching base backup {} and {} WAL segments from '{name}' needs about {} and mesbak keeps {} free (backup.min_free_bytes); free space, then retry",
            human_bytes(free),
            app.storage.root().display(),
            plan.base.id,
            plan.segments.len(),
            human_bytes(needed - app.config.backup.min_free_bytes),
            human_bytes(app.config.backup.min_free_bytes)
        )));
    }
    job.set_stage(format!(
        "fetching base backup {} from off-site target '{name}'",
        plan.base.id
    ));
    job.reset_bytes(plan.base.size_bytes);
    let digest = download(
        &target,
        &base_key(&plan.base.id),
        &store.base_path(&plan.base),
        &job.bytes_done,
    )
    .await?;
    if digest.sha256 != plan.base.sha256 || digest.size != plan.base.size_bytes {
        return Err(Error::Integrity(format!(
            "the copy of base backup {} on off-site target '{name}' is damaged: it has {} bytes with SHA-256 {}, the base backup had {} bytes with {}; nothing was changed",
            plan.base.id, digest.size, digest.sha256, plan.base.size_bytes, plan.base.sha256
        )));
    }
    job.set_stage(format!(
        "fetching {} WAL segments from off-site target '{name}'",
        plan.segments.len()
    ));
    for file in &plan.segments {
        download(
            &target,
            &wal_key(file),
            &store.wal_path(file),
            &job.bytes_done,
        )
        .await?;
    }
    tracing::info!(job = job.id, target_name = %name, base = %plan.base.id, segments = plan.segments.len(), "fetched the PITR files from off-site");
    let later = LaterWal {
        target,
        store: store.clone(),
    };
    Ok((spool, store, plan, later))
}

/// Reads `key` into a new private file at `path`, synced.
async fn download(
    target: &Target,
    key: &str,
    path: &std::path::Path,
    progress: &AtomicU64,
) -> Result<super::store::Digest, Error> {
    let mut file = create_private_file(path).map_err(|err| write_error(path, err))?;
    let digest = target
        .read(key, progress, |block| {
            std::io::Write::write_all(&mut file, block).map_err(|err| write_error(path, err))
        })
        .await?;
    file.sync_all().map_err(|err| write_error(path, err))?;
    Ok(digest)
}

/// Uploads a base backup and its metadata and verifies both there; returns
/// its size.
async fn copy_base(
    job: &Job,
    target: &Target,
    store: &PitrStore,
    base: &BaseInfo,
) -> Result<u64, Error> {
    let name = &target.name;
    let path = store.base_path(base);
    let file = open_backup(&path)?;
    let size = file
        .metadata()
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", path.display())))?
        .len();
    let key = base_key(&base.id);
    job.reset_bytes(size);
    let sent = target
        .upload_file(&key, file, size, &job.bytes_done)
        .await?;
    if sent.sha256 != base.sha256 || sent.size != size {
        let _ = target.delete(&key).await;
        return Err(Error::Integrity(format!(
            "the local base backup {} does not match its recorded SHA-256 (it changed or is damaged on this disk); it was not copied to '{name}': take a new one with `mesbakctl pitr base-backup`",
            base.id
        )));
    }
    let there = target.read(&key, &AtomicU64::new(0), |_| Ok(())).await?;
    if there != sent {
        let _ = target.delete(&key).await;
        return Err(Error::Integrity(format!(
            "the copy of {} on off-site target '{name}' read back differently; it was deleted there and stays queued",
            base.id
        )));
    }
    let json = Bytes::from(serde_json::to_vec_pretty(base).expect("metadata serialises"));
    let meta_key = base_metadata_key(&base.id);
    target.put_bytes(&meta_key, json.clone()).await?;
    if target.get_bytes(&meta_key).await? != json {
        let _ = target.delete(&meta_key).await;
        return Err(Error::Integrity(format!(
            "the metadata of {} on off-site target '{name}' read back differently; it was deleted there and stays queued",
            base.id
        )));
    }
    Ok(size)
}

/// Uploads one WAL file and verifies it there; None when it is no longer
/// here (retention deleted it meanwhile).
async fn copy_wal(
    target: &Target,
    store: &PitrStore,
    file: &WalFile,
) -> Result<Option<u64>, Error> {
    let path = store.wal_path(file);
    let handle = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(handle) => handle,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Error::Failed(format!(
                "cannot open {}: {err}",
                path.display()
            )));
        }
    };
    let size = handle
        .metadata()
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", path.display())))?
        .len();
    let key = wal_key(file);
    let progress = AtomicU64::new(0);
    let sent = target.upload_file(&key, handle, size, &progress).await?;
    let there = target.read(&key, &progress, |_| Ok(())).await?;
    if there != sent || sent.size != size {
        let _ = target.delete(&key).await;
        return Err(Error::Integrity(format!(
            "the copy of {} on off-site target '{}' read back differently; it was deleted there and stays queued",
            file.file_name, target.name
        )));
    }
    Ok(Some(size))
}

/// PITR retention on `target`; returns what went.
async fn expire(app: &App, job: &Job, target: &Target) -> Result<Vec<String>, Error> {
    let _retention = app.pitr.offsite_retention_guard(job).await;
    let name = &target.name;
    let copies = app.offsite.queue.get(name).pitr;
    let bases: Vec<BaseInfo> = copies.bases.values().cloned().collect();
    let (bases_gone, _) = crate::pitr::plan_retention(app, &bases, &[], OffsetDateTime::now_utc());
    let gone: BTreeSet<&str> = bases_gone.iter().map(|b| b.id.as_str()).collect();
    let Some(oldest_kept) = bases
        .iter()
        .filter(|b| !gone.contains(b.id.as_str()))
        .min_by(|a, b| a.finished.cmp(&b.finished))
    else {
        return Ok(Vec::new());
    };
    let mut deleted = Vec::new();
    for base in &bases_gone {
        job.set_stage(format!(
            "PITR retention: deleting base backup {} on off-site target '{name}'",
            base.id
        ));
        target.delete(&base_metadata_key(&base.id)).await?;
        app.offsite.queue.update(name, |state| {
            state.pitr.bases.remove(&base.id);
        })?;
        target.delete(&base_key(&base.id)).await?;
        tracing::info!(job = job.id, target_name = %name, file = %base.id, "PITR retention deleted an off-site base backup");
        deleted.push(base.id.clone());
    }
    // WAL older than the oldest kept base backup's start: only when the
    // target holds some (a listing of the WAL folder, once a base went).
    let start = (oldest_kept.timeline, start_number(oldest_kept));
    let older_held = copies.segments.iter().any(|(timeline, ranges)| {
        *timeline < start.0 || ranges.iter().any(|[a, _]| start.1.is_some_and(|s| *a < s))
    }) || !copies.others.is_empty();
    if !older_held || start.1.is_none() {
        return Ok(deleted);
    }
    let listed: Vec<WalFile> = target
        .list(WAL_FOLDER)
        .await?
        .iter()
        .filter_map(|entry| {
            let file_name = entry.key.rsplit_once('/')?.1;
            parse_wal_file(file_name, oldest_kept.wal_segment_size)
        })
        .collect();
    let kept = [oldest_kept.clone()];
    let (_, wal_gone) = crate::pitr::plan_retention(app, &kept, &listed, OffsetDateTime::now_utc());
    if wal_gone.is_empty() {
        return Ok(deleted);
    }
    job.set_stage(format!(
        "PITR retention: deleting {} WAL files on off-site target '{name}'",
        wal_gone.len()
    ));
    let mut results: Vec<(WalFile, Result<(), Error>)> = Vec::new();
    for group in wal_gone.chunks(PARALLEL_WAL * 2) {
        let keys: Vec<String> = group.iter().map(wal_key).collect();
        let deletions: Vec<_> = keys.iter().map(|key| target.delete(key)).collect();
        let done = futures_util::future::join_all(deletions).await;
        results.extend(group.iter().cloned().zip(done));
    }
    let mut first_error = None;
    let mut count = 0;
    app.offsite.queue.update(name, |state| {
        for (file, result) in &results {
            match result {
                Ok(()) => {
                    state.pitr.remove(file);
                    count += 1;
                }
                Err(err) => {
                    first_error.get_or_insert_with(|| Error::from_kind(err.kind(), err.message()));
                }
            }
        }
    })?;
    tracing::info!(job = job.id, target_name = %name, wal_files = count, "PITR retention deleted off-site WAL files");
    if count > 0 {
        deleted.push(format!("{count} WAL files"));
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(deleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::chain::{segment_name, wal_file_name};

    const SEG: u64 = 16 << 20;

    fn wal(number: u64) -> WalFile {
        let at = parse_time("2026-12-01T10:00:00Z").unwrap();
        parse_wal_file(&wal_file_name(&segment_name(1, number, SEG), at), SEG).unwrap()
    }

    #[test]
    fn a_long_chain_is_a_few_ranges() {
        let mut copies = PitrCopies::default();
        // 50,000 segments (a month at one a minute), one missing.
        for number in 1..=50_000u64 {
            if number != 25_000 {
                copies.add(&wal(number));
            }
        }
        assert_eq!(copies.segments[&1], vec![[1, 24_999], [25_001, 50_000]]);
        assert!(copies.holds(&wal(1)) && copies.holds(&wal(50_000)));
        assert!(!copies.holds(&wal(25_000)) && !copies.holds(&wal(50_001)));
        let json = serde_json::to_string(&copies).unwrap();
        assert!(json.len() < 200, "{json}");
        let back: PitrCopies = serde_json::from_str(&json).unwrap();
        assert_eq!(back, copies);
        copies.add(&wal(25_000));
        assert_eq!(copies.segments[&1], vec![[1, 50_000]]);
        copies.remove(&wal(1));
        copies.remove(&wal(30_000));
        assert_eq!(copies.segments[&1], vec![[2, 29_999], [30_001, 50_000]]);
    }

    #[test]
    fn one_backoff_for_all_wal_files() {
        let files: Vec<WalFile> = (1..=3).map(wal).collect();
        let local = Local {
            bases: Vec::new(),
            wal: Arc::new(files),
            store: PitrStore::new(std::path::Path::new("/nonexistent")),
        };
        let mut copies = PitrCopies::default();
        let now = parse_time("2026-12-01T11:00:00Z").unwrap();
        assert_eq!(copies.queue_length(&local), 3);
        copies.failed_all(&local, "store down", now);
        assert_eq!(copies.failed.len(), 1);
        assert!(!copies.anything_due(&local, now));
        assert!(copies.anything_due(&local, now + time::Duration::minutes(1)));
        for number in 1..=3 {
            copies.add(&wal(number));
        }
        copies.forget_settled(&local);
        assert!(copies.failed.is_empty());
        assert_eq!(copies.queue_length(&local), 0);
    }
}
