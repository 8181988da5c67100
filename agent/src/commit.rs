//! Saving a finished backup, shared by the database dump and the volume
//! snapshot: the free-space check before writing, the size-change warning,
//! and the commit (final name, metadata, journal line).

use mesbak_interface::{BackupInfo, BackupKind, Error};

use crate::app::App;
use crate::jobs::Job;
use crate::storage::{PendingBackup, human_bytes};

/// What a cancelled backup leaves: nothing.
pub const CANCELLED_BACKUP: &str =
    "the partial backup file was removed and nothing else was changed";

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

/// About what the next backup needs on disk: the newest backup of the
/// largest kind.
pub fn next_backup_size(backups: &[BackupInfo]) -> u64 {
    BackupKind::ALL
        .iter()
        .filter_map(|kind| backups.iter().find(|b| b.kind == *kind))
        .map(|b| b.size_bytes)
        .max()
        .unwrap_or(0)
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
    // The last safe point: after it the backup exists.
    job.check_cancel(CANCELLED_BACKUP)?;
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
