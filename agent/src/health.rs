//! Health judges freshness, not only the last exit: a pure function of the
//! configuration, the backups on disk, the remembered results and the time,
//! so tests inject times instead of sleeping.

use mesbak_interface::{BackupInfo, BackupKind, Health, StatusReport};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::state::AgentState;

pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Whether a backup counts toward freshness: its metadata exists and
/// matches the file (storage clears the checksum otherwise), and it is a
/// scheduled or requested backup, not a restore's safety copy.
pub fn counts(backup: &BackupInfo) -> bool {
    !backup.sha256.is_empty() && !backup.id.contains("_pre-restore")
}

fn newest(backups: &[BackupInfo], kind: BackupKind) -> Option<&BackupInfo> {
    backups
        .iter()
        .filter(|b| b.kind == kind && counts(b))
        .max_by(|a, b| a.created.cmp(&b.created))
}

/// Whether the configuration asks for backups of `kind`.
pub fn kind_configured(config: &Config, kind: BackupKind) -> bool {
    match kind {
        BackupKind::Database => true,
        BackupKind::Ignition => !config.ignition.volume.is_empty(),
    }
}

pub fn assess(
    config: &Config,
    backups: &[BackupInfo],
    state: &AgentState,
    extra_problems: &[String],
    now: OffsetDateTime,
) -> StatusReport {
    let mut unhealthy = Vec::new();
    let mut degraded: Vec<String> = extra_problems.to_vec();
    let max_age = Duration::hours(config.health.max_backup_age_hours.into());

    let mut last = |kind: BackupKind| -> Option<String> {
        let newest = newest(backups, kind);
        if kind_configured(config, kind) {
            match newest.and_then(|b| parse_time(&b.created).map(|t| (b, t))) {
                None => unhealthy.push(format!("there is no {kind} backup yet")),
                Some((backup, created)) if now - created > max_age => unhealthy.push(format!(
                    "the newest {kind} backup ({}) is older than {} hours",
                    backup.id, config.health.max_backup_age_hours
                )),
                Some(_) => {}
            }
        }
        newest.map(|b| b.created.clone())
    };
    let last_database = last(BackupKind::Database);
    let last_ignition = last(BackupKind::Ignition);

    if let Some(backup) = newest(backups, BackupKind::Database) {
        let missing: Vec<&str> = config
            .database
            .schemas
            .iter()
            .filter(|schema| !backup.schemas.contains(schema))
            .map(String::as_str)
            .collect();
        if backup.table_rows.is_empty() {
            unhealthy.push(format!(
                "the newest database backup ({}) holds no tables: the dump is empty; check database.name and what pg_dump sees",
                backup.id
            ));
        } else if !missing.is_empty() {
            unhealthy.push(format!(
                "the newest database backup ({}) lacks the schema(s) {} (database.schemas)",
                backup.id,
                missing.join(", ")
            ));
        }
    }
    for (kind, failure) in &state.last_failure {
        degraded.push(format!(
            "the last {kind} backup failed at {}: {}",
            failure.time, failure.message
        ));
    }
    let max_test_age = Duration::hours(config.health.max_test_restore_age_hours.into());
    match &state.last_test_restore {
        Some(record) if !record.ok => degraded.push(format!(
            "the last test restore ({}, of {}) failed: {}",
            record.time, record.backup, record.message
        )),
        Some(record) if parse_time(&record.time).is_none_or(|t| now - t > max_test_age) => degraded
            .push(format!(
                "the last test restore ({}) is older than {} hours",
                record.time, config.health.max_test_restore_age_hours
            )),
        Some(_) => {}
        None if last_database.is_some() => {
            degraded.push("no test restore has been run yet (`mesbakctl test-restore`)".into())
        }
        None => {}
    }

    let status = if !unhealthy.is_empty() {
        Health::Unhealthy
    } else if !degraded.is_empty() {
        Health::Degraded
    } else {
        Health::Healthy
    };
    let last_backup = [&last_database, &last_ignition]
        .into_iter()
        .flatten()
        .max()
        .cloned();
    unhealthy.extend(degraded);
    StatusReport {
        status,
        last_backup,
        last_database_backup: last_database,
        last_ignition_backup: last_ignition,
        last_test_restore: state.last_test_restore.as_ref().map(|r| r.time.clone()),
        last_test_restore_ok: state.last_test_restore.as_ref().map(|r| r.ok),
        problems: unhealthy,
        running_jobs: Vec::new(),
        previous_databases: Vec::new(),
        offsite: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FailureRecord, TestRestoreRecord};

    fn backup(kind: BackupKind, created: &str, schemas: &[&str]) -> BackupInfo {
        BackupInfo {
            id: format!("{kind}-{created}"),
            kind,
            path: String::new(),
            created: created.into(),
            size_bytes: 1,
            sha256: "ab".into(),
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: schemas.iter().map(|s| s.to_string()).collect(),
            table_rows: schemas.iter().map(|s| (format!("{s}.t"), 1)).collect(),
            downtime_ms: 0,
            warnings: vec![],
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        parse_time(text).unwrap()
    }

    const ALL: &[&str] = &["mes_core", "mes_audit", "mes_custom"];

    #[test]
    fn freshness_decides() {
        let config = Config::default();
        let backups = vec![
            backup(BackupKind::Database, "2026-11-24T00:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T00:00:01Z", &[]),
        ];
        let state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                time: "2026-11-24T01:00:00Z".into(),
                backup: "x".into(),
                ok: true,
                message: String::new(),
            }),
            ..Default::default()
        };
        let fresh = assess(&config, &backups, &state, &[], at("2026-11-24T12:00:00Z"));
        assert_eq!(fresh.status, Health::Healthy, "{:?}", fresh.problems);
        assert_eq!(fresh.last_backup.as_deref(), Some("2026-11-24T00:00:01Z"));

        let stale = assess(&config, &backups, &state, &[], at("2026-11-25T03:00:00Z"));
        assert_eq!(stale.status, Health::Unhealthy);
        assert_eq!(stale.problems.len(), 2, "{:?}", stale.problems);

        let none = assess(
            &config,
            &[],
            &AgentState::default(),
            &[],
            at("2026-11-24T12:00:00Z"),
        );
        assert_eq!(none.status, Health::Unhealthy);
        assert_eq!(none.last_backup, None);
    }

    #[test]
    fn only_verified_backups_count() {
        let config = Config::default();
        let now = at("2026-11-24T12:00:00Z");
        let mut damaged = backup(BackupKind::Database, "2026-11-24T11:00:00Z", ALL);
        damaged.sha256.clear();
        let mut safety = backup(BackupKind::Database, "2026-11-24T11:30:00Z", ALL);
        safety.id = "mes_2026-11-24_113000_pre-restore.sql.gz.enc".into();
        let old = backup(BackupKind::Database, "2026-11-20T00:00:00Z", ALL);
        let ignition = backup(BackupKind::Ignition, "2026-11-24T11:00:00Z", &[]);
        let report = assess(
            &config,
            &[damaged, safety, old, ignition],
            &AgentState::default(),
            &[],
            now,
        );
        assert_eq!(report.status, Health::Unhealthy, "{:?}", report.problems);
        assert_eq!(
            report.last_database_backup.as_deref(),
            Some("2026-11-20T00:00:00Z")
        );
        assert!(
            report.problems[0].contains("older than 26 hours"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn an_empty_dump_or_a_missing_schema_is_unhealthy() {
        let config = Config::default();
        let now = at("2026-11-24T12:00:00Z");
        let ignition = backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]);
        let empty = backup(BackupKind::Database, "2026-11-24T00:00:00Z", &[]);
        let report = assess(
            &config,
            &[empty, ignition.clone()],
            &AgentState::default(),
            &[],
            now,
        );
        assert_eq!(report.status, Health::Unhealthy);
        assert!(
            report.problems[0].contains("holds no tables"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn missing_schema_failures_and_test_restores_degrade() {
        let config = Config::default();
        let now = at("2026-11-24T12:00:00Z");
        let good_test = Some(TestRestoreRecord {
            time: "2026-11-24T01:00:00Z".into(),
            backup: "x".into(),
            ok: true,
            message: String::new(),
        });
        let backups = vec![
            backup(BackupKind::Database, "2026-11-24T00:00:00Z", &["mes_core"]),
            backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]),
        ];
        let state = AgentState {
            last_test_restore: good_test.clone(),
            ..Default::default()
        };
        let report = assess(&config, &backups, &state, &[], now);
        assert_eq!(report.status, Health::Unhealthy);
        assert!(
            report.problems[0].contains("mes_audit, mes_custom"),
            "{:?}",
            report.problems
        );

        let backups = vec![
            backup(BackupKind::Database, "2026-11-24T00:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]),
        ];
        let mut state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                ok: false,
                message: "row counts differ".into(),
                ..good_test.clone().unwrap()
            }),
            ..Default::default()
        };
        assert_eq!(
            assess(&config, &backups, &state, &[], now).status,
            Health::Degraded
        );
        state.last_test_restore = good_test;
        assert_eq!(
            assess(&config, &backups, &state, &[], now).status,
            Health::Healthy
        );
        let later = at("2026-12-03T00:00:00Z");
        let old_backups = vec![
            backup(BackupKind::Database, "2026-12-02T23:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-12-02T23:00:00Z", &[]),
        ];
        let report = assess(&config, &old_backups, &state, &[], later);
        assert_eq!(report.status, Health::Degraded, "{:?}", report.problems);
        state.last_failure.insert(
            "ignition".into(),
            FailureRecord {
                time: "2026-11-24T00:00:00Z".into(),
                message: "volume missing".into(),
            },
        );
        state.last_test_restore.as_mut().unwrap().time = "2026-11-24T11:00:00Z".into();
        let report = assess(&config, &backups, &state, &[], now);
        assert_eq!(report.status, Health::Degraded);
        assert!(report.problems[0].contains("volume missing"));
    }
}
