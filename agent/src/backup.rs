//! The backup job: the database through pg_dump (with its roles), the
//! Ignition volume (see `ignition`), one timestamp for both, then the
//! size check and retention.

use std::sync::Arc;

use mesbak_interface::{BackupInfo, BackupKind, BackupTarget, Error};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::commit::{CANCELLED_BACKUP, check_space, commit};
use crate::health::kind_configured;
use crate::ignition;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::BackupWriter;
use crate::postgres::payload::{self, Payload, Piece};
use crate::postgres::{DumpReader, Server};
use crate::retention;
use crate::state::FailureRecord;
use crate::storage::Storage;

/// Runs a `Backup` job.
pub async fn run(app: Arc<App>, job: Arc<Job>, target: BackupTarget) -> Result<String, Error> {
    let point = Storage::restore_point(OffsetDateTime::now_utc());
    let mut made: Vec<BackupInfo> = Vec::new();
    let mut failures: Vec<(BackupKind, Error)> = Vec::new();
    for &kind in target.kinds() {
        if job.is_cancelled() {
            return Err(undo_cancelled(&app, &job, &made));
        }
        if !kind_configured(&app.config, kind) {
            if target == BackupTarget::All {
                job.warn(format!("no {kind} source is configured; skipped"));
                continue;
            }
            return Err(Error::Config(format!(
                "no {kind} source is configured in {}",
                app.config.origin.display()
            )));
        }
        let key = kind.as_str().to_owned();
        app.state.update(|state| {
            state.last_attempt.insert(key.clone(), now_rfc3339());
        })?;
        let result = match kind {
            BackupKind::Database => database(&app, &job, &point, None).await,
            BackupKind::Ignition => ignition::backup(&app, &job, &point).await,
        };
        if matches!(result, Err(Error::Cancelled(_))) || job.is_cancelled() {
            if let Ok(info) = result {
                made.push(info);
            }
            return Err(undo_cancelled(&app, &job, &made));
        }
        match result {
            Ok(info) => {
                app.state.update(|state| {
                    state.last_failure.remove(&key);
                })?;
                made.push(info);
            }
            Err(err) => {
                tracing::error!(job = job.id, kind = %kind, error = %err.message(), "backup failed");
                app.state.update(|state| {
                    state.last_failure.insert(
                        key.clone(),
                        FailureRecord {
                            time: now_rfc3339(),
                            message: err.message(),
                        },
                    );
                    *state.failures_total.entry(key.clone()).or_default() += 1;
                })?;
                failures.push((kind, err));
            }
        }
    }
    if !made.is_empty() {
        apply_retention(&app, &job, &made);
    }
    let ids: Vec<&str> = made.iter().map(|info| info.id.as_str()).collect();
    match failures.len() {
        0 => Ok(format!("Backup completed successfully: {}", ids.join(", "))),
        _ => {
            let (first_kind, first) = &failures[0];
            let mut message = failures
                .iter()
                .map(|(kind, err)| format!("{kind} backup failed: {}", err.message()))
                .collect::<Vec<_>>()
                .join("; ");
            if !ids.is_empty() {
                message.push_str(&format!(" (saved: {})", ids.join(", ")));
            }
            tracing::debug!(kind = %first_kind, "first failure");
            Err(Error::from_kind(first.kind(), message))
        }
    }
}

/// A cancelled backup leaves nothing behind: the halves of this restore
/// point already written go too.
fn undo_cancelled(app: &App, job: &Job, made: &[BackupInfo]) -> Error {
    for info in made {
        match app.storage.delete(info) {
            Ok(()) => {
                tracing::info!(job = job.id, file = %info.id, "removed the half of a cancelled backup")
            }
            Err(err) => job.warn(format!(
                "could not remove {} of the cancelled backup: {}",
                info.id,
                err.message()
            )),
        }
    }
    job.cancelled_error(CANCELLED_BACKUP)
}

/// Deletes what retention allows, for the kinds just backed up; problems
/// become the job's warnings (the backups themselves succeeded).
fn apply_retention(app: &App, job: &Job, made: &[BackupInfo]) {
    let mut kinds: Vec<BackupKind> = made.iter().map(|info| info.kind).collect();
    kinds.dedup();
    match retention::apply(app, job, &kinds, retention::Run::Automatic) {
        Ok(applied) => {
            for warning in applied.failed {
                job.warn(format!("retention: {warning}"));
            }
            for (_, why) in applied.held_back {
                job.warn(why);
            }
        }
        Err(err) => job.warn(format!("retention skipped: {}", err.message())),
    }
}

/// Backs up the configured database as `<name>_<point>[_<tag>].sql.gz.enc`
/// (`.sql.zst.enc` with zstd).
/// Starts the database container if it is stopped, and stops it again.
pub async fn database(
    app: &App,
    job: &Job,
    point: &str,
    tag: Option<&str>,
) -> Result<BackupInfo, Error> {
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(job).await?;
        dump(app, job, &session.server, point, tag, Shown::AsTheJob).await
    }
    .await;
    session
        .end(result, |info| format!("backup {} was saved", info.id))
        .await
}

/// How a dump shows on its job: as the job's work (its stage and bytes), or
/// beside other work (a restore's safety backup, taken while the load
/// runs), which leaves the job's stage and bytes to that work and stops
/// when the given token is cancelled (make it a child of the job's).
#[derive(Clone, Copy)]
pub enum Shown<'a> {
    AsTheJob,
    Beside(&'a CancellationToken),
}

/// A database backup: the payload ([`postgres::payload`]) of the
/// configured database, compressed and encrypted into a new file.
pub async fn dump(
    app: &App,
    job: &Job,
    server: &Server,
    point: &str,
    tag: Option<&str>,
    shown: Shown<'_>,
) -> Result<BackupInfo, Error> {
    let key = app.key()?;
    for repair in app.storage.prepare()? {
        tracing::warn!(repair = %repair, "backup folder repaired");
    }
    check_space(app, BackupKind::Database)?;
    let database = &app.config.database.name;
    let started = std::time::Instant::now();
    let created = now_rfc3339();

    let previous = app
        .storage
        .list()?
        .into_iter()
        .find(|b| b.kind == BackupKind::Database);
    let codec = app.config.codec();
    let (pending, file) = app.storage.create(
        BackupKind::Database,
        codec.compression,
        database,
        point,
        tag,
    )?;
    let (progress, stop) = match shown {
        Shown::AsTheJob => {
            job.set_stage(format!("Creating backup: {}", pending.id));
            job.reset_bytes(0);
            (job.bytes_done.clone(), job.cancel_token())
        }
        Shown::Beside(stop) => (Arc::default(), stop.clone()),
    };
    // The writer derives the file's key (PBKDF2 on the agent's first file,
    // HKDF from then on) while the roles, versions and database facts are
    // read.
    let writer = BackupWriter::start(file, key, codec, progress);
    let described = payload::describe(server, database).await?;
    for warning in &described.warnings {
        job.warn(warning.clone());
    }
    let mut payload = Payload::start(server, database, &described, None).await?;
    let mut reader = DumpReader::default();
    loop {
        match payload.next(&stop).await {
            Piece::Block(block) => {
                reader.feed(&block);
                if !writer.write(block).await {
                    break;
                }
            }
            Piece::Cancelled => {
                // The partial file goes with `pending`.
                let _ = writer.finish().await;
                return Err(job.cancelled_error(CANCELLED_BACKUP));
            }
            Piece::End => break,
        }
    }
    let dumped = payload.finish(server, database).await;
    // A writer failure (disk full) explains a broken pipe better than pg_dump does.
    let written = writer.finish().await?;
    dumped?;

    let mut warnings = Vec::new();
    let missing: Vec<&str> = app
        .config
        .database
        .schemas
        .iter()
        .filter(|schema| !reader.schemas.contains(schema))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        warnings.push(format!(
            "the dump lacks the configured schema(s) {}",
            missing.join(", ")
        ));
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let info = BackupInfo {
        id: pending.id.clone(),
        kind: BackupKind::Database,
        path: pending.path().display().to_string(),
        created,
        size_bytes: written.size,
        sha256: written.sha256.clone(),
        duration_ms,
        restore_point: point.to_owned(),
        source: database.clone(),
        server_version: described.server_version,
        timescaledb_version: described.timescaledb.map(|t| t.version).unwrap_or_default(),
        schemas: reader.schemas,
        table_rows: reader.table_rows,
        downtime_ms: 0,
        warnings,
    };
    commit(job, pending, info, previous.as_ref(), written.plain_bytes)
}
