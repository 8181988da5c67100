//! The backup job: the database through pg_dump (with its roles), the
//! Ignition volume (see `ignition`), one timestamp for both, then the
//! size check and retention.

use std::sync::Arc;

use bytes::Bytes;
use mesbak_interface::{BackupInfo, BackupKind, BackupTarget, Error};
use time::OffsetDateTime;

use crate::app::App;
use crate::health::kind_configured;
use crate::ignition;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::BackupWriter;
use crate::postgres::{self, DumpReader, Server};
use crate::process;
use crate::recovery::put_back_after;
use crate::retention;
use crate::state::FailureRecord;
use crate::storage::{PendingBackup, Storage, human_bytes};

/// Runs a `Backup` job.
pub async fn run(app: Arc<App>, job: Arc<Job>, target: BackupTarget) -> Result<String, Error> {
    let point = Storage::restore_point(OffsetDateTime::now_utc());
    let mut made: Vec<BackupInfo> = Vec::new();
    let mut failures: Vec<(BackupKind, Error)> = Vec::new();
    for &kind in target.kinds() {
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
        let result = match kind {
            BackupKind::Database => database(&app, &job, &point, None).await,
            BackupKind::Ignition => ignition::backup(&app, &job, &point).await,
        };
        let key = kind.as_str().to_owned();
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

/// Deletes what retention allows, for the kinds just backed up.
fn apply_retention(app: &App, job: &Job, made: &[BackupInfo]) {
    let backups = match app.storage.list() {
        Ok(backups) => backups,
        Err(err) => {
            job.warn(format!("retention skipped: {}", err.message()));
            return;
        }
    };
    let expired = retention::plan(
        &backups,
        app.config.retention.days,
        OffsetDateTime::now_utc(),
    );
    for backup in expired
        .iter()
        .filter(|b| made.iter().any(|m| m.kind == b.kind))
    {
        match app.storage.delete(backup) {
            Ok(()) => {
                tracing::info!(job = job.id, file = %backup.id, "retention deleted an old backup")
            }
            Err(err) => job.warn(format!(
                "retention could not delete {}: {}",
                backup.id,
                err.message()
            )),
        }
    }
}

/// Refuses to start when the disk could not hold another backup like the
/// last one and still keep the configured floor free.
pub fn check_space(app: &App, kind: BackupKind) -> Result<(), Error> {
    let free = app.storage.free_bytes()?;
    let previous = app
        .storage
        .list()?
        .into_iter()
        .find(|b| b.kind == kind)
        .map_or(0, |b| b.size_bytes);
    let floor = app.config.backup.min_free_bytes;
    if free < previous.saturating_add(floor) {
        return Err(Error::NoSpace(format!(
            "only {} free in {}: a {kind} backup needs about {} (the size of the last one) and mesbak keeps {} free (backup.min_free_bytes); free space or move backup_dir, then retry",
            human_bytes(free),
            app.storage.root().display(),
            human_bytes(previous),
            human_bytes(floor),
        )));
    }
    Ok(())
}

/// Warns when a backup's size changed by more than half since the last one.
pub fn size_change_warning(previous: Option<&BackupInfo>, size: u64) -> Option<String> {
    let previous = previous.filter(|p| p.size_bytes > 0)?;
    let ratio = size as f64 / previous.size_bytes as f64;
    (!(0.5..=1.5).contains(&ratio)).then(|| {
        format!(
            "this backup is {} where the previous one ({}) was {}: a change of {:+.0}%; check that the data is what you expect",
            human_bytes(size),
            previous.id,
            human_bytes(previous.size_bytes),
            (ratio - 1.0) * 100.0
        )
    })
}

/// Backs up the configured database as `<name>_<point>[_<tag>].sql.gz.enc`.
/// Starts the database container if it is stopped, and stops it again.
pub async fn database(
    app: &App,
    job: &Job,
    point: &str,
    tag: Option<&str>,
) -> Result<BackupInfo, Error> {
    let key = app.key()?;
    for repair in app.storage.prepare()? {
        tracing::warn!(repair = %repair, "backup folder repaired");
    }
    check_space(app, BackupKind::Database)?;
    let server = app.database().await?;
    let mut touched = server.touched(&app.journal);
    let result = async {
        server.ensure_up(job, touched.as_mut()).await?;
        dump(app, job, &server, key, point, tag).await
    }
    .await;
    put_back_after(touched, result, |info| {
        format!("backup {} was saved", info.id)
    })
    .await
}

async fn dump(
    app: &App,
    job: &Job,
    server: &Server,
    key: mesbak_format::Key,
    point: &str,
    tag: Option<&str>,
) -> Result<BackupInfo, Error> {
    let database = &app.config.database.name;
    let started = std::time::Instant::now();
    let created = now_rfc3339();

    let previous = app
        .storage
        .list()?
        .into_iter()
        .find(|b| b.kind == BackupKind::Database);
    let (pending, file) = app
        .storage
        .create(BackupKind::Database, database, point, tag)?;
    job.set_stage(format!("Creating backup: {}", pending.id));
    job.reset_bytes(0);
    // The writer derives the file's key (PBKDF2) while the roles and
    // versions are read.
    let writer = BackupWriter::start(
        file,
        key,
        app.config.backup.compression_level,
        job.bytes_done.clone(),
    );
    let roles_argv = server.argv("pg_dumpall", &["--roles-only", "-l", database]);
    let roles = async {
        let (roles, outcome) = server
            .runner
            .spawn(&roles_argv, &server.env(), false)
            .await?
            .collect()
            .await?;
        outcome.check(|detail| {
            Error::Database(format!(
                "pg_dumpall --roles-only failed in {}: {detail}",
                server.runner.describe()
            ))
        })?;
        Ok::<_, Error>(roles)
    };
    let (roles, versions) = tokio::join!(roles, postgres::versions(server, database));
    let prelude = postgres::roles_prelude(&String::from_utf8_lossy(&roles?));
    let (server_version, timescaledb_version) = versions?;
    writer.write(Bytes::from(prelude.into_bytes())).await;

    let argv = server.argv("pg_dump", &["-d", database]);
    let mut spawned = server.runner.spawn(&argv, &server.env(), false).await?;
    let mut reader = DumpReader::default();
    while let Some(block) = spawned.stdout.recv().await {
        reader.feed(&block);
        if !writer.write(block).await {
            break;
        }
    }
    drop(spawned.stdout);
    let outcome = process::join(spawned.done).await;
    // A writer failure (disk full) explains a broken pipe better than pg_dump does.
    let written = writer.finish().await?;
    outcome?.check(|detail| {
        Error::Database(format!(
            "pg_dump of database '{database}' failed in {}: {detail}",
            server.runner.describe()
        ))
    })?;

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
        server_version,
        timescaledb_version,
        schemas: reader.schemas,
        table_rows: reader.table_rows,
        downtime_ms: 0,
        warnings,
    };
    commit(job, pending, info, previous.as_ref(), written.plain_bytes)
}

/// Commits a written backup (its final name and metadata), adds the
/// size-change warning against `previous`, records the file and warnings on
/// the job and logs it; `plain_bytes` is the size before compression.
pub fn commit(
    job: &Job,
    pending: PendingBackup,
    mut info: BackupInfo,
    previous: Option<&BackupInfo>,
    plain_bytes: u64,
) -> Result<BackupInfo, Error> {
    info.warnings
        .extend(size_change_warning(previous, info.size_bytes));
    for warning in &info.warnings {
        job.warn(warning.clone());
    }
    pending.commit(&info)?;
    job.add_file(info.id.clone());
    tracing::info!(
        job = job.id,
        kind = info.kind.as_str(),
        file = %info.id,
        bytes = info.size_bytes,
        plain_bytes,
        duration_ms = info.duration_ms,
        downtime_ms = info.downtime_ms,
        sha256 = %info.sha256,
        "{} backup written",
        info.kind.as_str()
    );
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_changes_over_half_are_flagged() {
        let previous = BackupInfo {
            id: "mes_a.sql.gz.enc".into(),
            kind: BackupKind::Database,
            path: String::new(),
            created: String::new(),
            size_bytes: 1000,
            sha256: String::new(),
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: vec![],
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec![],
        };
        assert!(size_change_warning(Some(&previous), 1400).is_none());
        assert!(size_change_warning(Some(&previous), 600).is_none());
        assert!(
            size_change_warning(Some(&previous), 1600)
                .unwrap()
                .contains("+60%")
        );
        assert!(
            size_change_warning(Some(&previous), 400)
                .unwrap()
                .contains("-60%")
        );
        assert!(size_change_warning(None, 400).is_none());
    }
}
