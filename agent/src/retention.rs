//! Retention: backups older than `retention.days` go, but never the newest
//! good backup of a kind, and only after a successful backup (or on an
//! explicit prune).

use mesbak_interface::{BackupInfo, BackupKind};
use time::{Duration, OffsetDateTime};

use crate::health::parse_time;

/// A backup with metadata (written completely by the agent) counts as good.
fn is_good(backup: &BackupInfo) -> bool {
    !backup.sha256.is_empty()
}

/// The backups retention would delete at `now`.
pub fn plan(backups: &[BackupInfo], days: u32, now: OffsetDateTime) -> Vec<BackupInfo> {
    let cutoff = now - Duration::days(days.into());
    let keep: Vec<&str> = BackupKind::ALL
        .iter()
        .filter_map(|kind| {
            backups
                .iter()
                .filter(|b| b.kind == *kind && is_good(b))
                .max_by(|a, b| a.created.cmp(&b.created))
                .map(|b| b.id.as_str())
        })
        .collect();
    backups
        .iter()
        .filter(|b| !keep.contains(&b.id.as_str()))
        .filter(|b| parse_time(&b.created).is_some_and(|created| created < cutoff))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(kind: BackupKind, id: &str, created: &str, good: bool) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            kind,
            path: String::new(),
            created: created.into(),
            size_bytes: 1,
            sha256: if good { "ab".into() } else { String::new() },
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: vec![],
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec![],
        }
    }

    #[test]
    fn old_backups_go_but_the_newest_good_one_stays() {
        let now = parse_time("2026-11-24T00:00:00Z").unwrap();
        let backups = vec![
            backup(BackupKind::Database, "d-new", "2026-11-23T00:00:00Z", true),
            backup(BackupKind::Database, "d-old", "2026-09-01T00:00:00Z", true),
            backup(
                BackupKind::Ignition,
                "i-broken",
                "2026-10-02T00:00:00Z",
                false,
            ),
            backup(
                BackupKind::Ignition,
                "i-only-good",
                "2026-10-01T00:00:00Z",
                true,
            ),
            backup(
                BackupKind::Ignition,
                "i-older",
                "2026-09-01T00:00:00Z",
                true,
            ),
        ];
        let ids: Vec<String> = plan(&backups, 30, now).into_iter().map(|b| b.id).collect();
        assert_eq!(ids, vec!["d-old", "i-broken", "i-older"]);
        assert!(plan(&backups, 365, now).is_empty());
    }
}
