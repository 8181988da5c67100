//! Health judges freshness, not only the last exit: a pure function of the
//! configuration, the backups on disk, the remembered results and the time,
//! so tests inject times instead of sleeping.
//!
//! Times are compared as times. A backup dated beyond the clock never
//! counts as fresh (a clock that was ahead cannot keep health green) and is
//! reported as a clock problem; the newest backup dated before now decides
//! freshness, so one made after the clock was set back counts at once.

use mesbak_interface::{BackupInfo, BackupKind, Health, StatusReport};
use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::state::AgentState;
pub use crate::trust::parse_time;
use crate::trust::{future_problem, is_future, newest_dated};

/// Whether a backup counts toward freshness: its metadata exists and
/// matches the file (storage clears the checksum otherwise), and it is a
/// scheduled or requested backup, not a restore's safety copy nor one
/// imported from the old stack (which says nothing about mesbak running).
pub fn counts(backup: &BackupInfo) -> bool {
    !backup.sha256.is_empty() && !backup.id.contains("_pre-restore") && !backup.is_imported()
}

/// The newest backup of `kind` that counts (see `counts`), dated and not in
/// the future.
pub fn newest_counted(
    backups: &[BackupInfo],
    kind: BackupKind,
    now: OffsetDateTime,
) -> Option<(&BackupInfo, OffsetDateTime)> {
    newest_dated(backups.iter().filter(|b| counts(b)), kind, now)
}

/// One clock problem per kind with backups dated beyond `now`.
fn future_backups(backups: &[BackupInfo], kind: BackupKind, now: OffsetDateTime) -> Option<String> {
    let future: Vec<(&BackupInfo, OffsetDateTime)> = backups
        .iter()
        .filter(|b| b.kind == kind)
        .filter_map(|b| parse_time(&b.created).map(|t| (b, t)))
        .filter(|(_, t)| is_future(*t, now))
        .collect();
    let (latest, time) = future.iter().max_by_key(|(_, t)| *t)?;
    let what = match future.len() {
        1 => format!("{kind} backup {}", latest.id),
        n => format!("{n} {kind} backups, the latest {},", latest.id),
    };
    Some(future_problem(&what, *time, now))
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

    let mut last = |kind: BackupKind| -> Option<(String, OffsetDateTime)> {
        let newest = newest_counted(backups, kind, now);
        let future = future_backups(backups, kind, now);
        if kind_configured(config, kind) {
            match newest {
                None if future.is_some() => {
                    unhealthy.push(format!("there is no {kind} backup dated before now"))
                }
                None => unhealthy.push(format!("there is no {kind} backup yet")),
                Some((backup, created)) if now - created > max_age => unhealthy.push(format!(
                    "the newest {kind} backup ({}) is older than {} hours",
                    backup.id, config.health.max_backup_age_hours
                )),
                Some(_) => {}
            }
        }
        degraded.extend(future);
        newest.map(|(b, t)| (b.created.clone(), t))
    };
    let last_database = last(BackupKind::Database);
    let last_ignition = last(BackupKind::Ignition);

    if let Some((backup, _)) = newest_counted(backups, BackupKind::Database, now) {
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
    for held in state.retention_held.values() {
        degraded.push(format!("at {}, {}", held.time, held.message));
    }
    let max_test_age = Duration::hours(config.health.max_test_restore_age_hours.into());
    match &state.last_test_restore {
        Some(record) if !record.ok => degraded.push(format!(
            "the last test restore ({}, of {}) failed: {}",
            record.time, record.backup, record.message
        )),
        Some(record) if parse_time(&record.time).is_some_and(|t| is_future(t, now)) => degraded
            .push(future_problem(
                "the last test restore",
                parse_time(&record.time).expect("parsed above"),
                now,
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
        .max_by_key(|(_, time)| *time)
        .map(|(text, _)| text.clone());
    unhealthy.extend(degraded);
    StatusReport {
        status,
        last_backup,
        last_database_backup: last_database.map(|(text, _)| text),
        last_ignition_backup: last_ignition.map(|(text, _)| text),
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

    #[test]
    fn a_backup_dated_in_the_future_is_a_clock_problem_not_freshness() {
        let config = Config::default();
        let state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                time: "2026-11-24T01:00:00Z".into(),
                backup: "x".into(),
                ok: true,
                message: String::new(),
            }),
            ..Default::default()
        };
        let now = at("2026-11-24T12:00:00Z");
        // The clock was 400 days ahead for one backup, then set right: the
        // "future" backup must not keep health green.
        let backups = vec![
            backup(BackupKind::Database, "2027-12-29T00:00:00Z", ALL),
            backup(BackupKind::Database, "2026-11-20T00:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]),
        ];
        let report = assess(&config, &backups, &state, &[], now);
        assert_eq!(report.status, Health::Unhealthy, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("newest database backup")
                && report.problems[0].contains("older than 26 hours"),
            "{:?}",
            report.problems
        );
        assert!(
            report.problems.iter().any(|p| p.contains("2027-12-29")
                && p.contains("399 days ahead")
                && p.contains("timedatectl")),
            "{:?}",
            report.problems
        );
        assert_eq!(
            report.last_database_backup.as_deref(),
            Some("2026-11-20T00:00:00Z")
        );
        assert_eq!(report.last_backup.as_deref(), Some("2026-11-24T00:00:00Z"));

        // A backup made after the clock was set back counts as fresh at
        // once; the future one stays flagged (degraded), not stale.
        let mut fresh = backups.clone();
        fresh.push(backup(BackupKind::Database, "2026-11-24T11:00:00Z", ALL));
        let report = assess(&config, &fresh, &state, &[], now);
        assert_eq!(report.status, Health::Degraded, "{:?}", report.problems);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(
            report.last_database_backup.as_deref(),
            Some("2026-11-24T11:00:00Z")
        );

        // Only future backups: nothing dated before now.
        let only = vec![
            backup(BackupKind::Database, "2027-12-29T00:00:00Z", ALL),
            backup(BackupKind::Database, "2027-12-30T00:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]),
        ];
        let report = assess(&config, &only, &state, &[], now);
        assert_eq!(report.status, Health::Unhealthy);
        assert!(
            report.problems[0].contains("dated before now"),
            "{:?}",
            report.problems
        );
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("2 database backups, the latest")),
            "{:?}",
            report.problems
        );
        assert_eq!(report.last_database_backup, None);
    }

    #[test]
    fn times_are_compared_as_times_not_text() {
        let config = Config::default();
        let now = at("2026-11-24T12:00:00Z");
        // As text "2026-11-24T09:00:00+05:00" sorts after the newer UTC one.
        let backups = vec![
            backup(BackupKind::Database, "2026-11-24T09:00:00+05:00", ALL),
            backup(BackupKind::Database, "2026-11-24T05:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T05:00:00Z", &[]),
        ];
        let report = assess(&config, &backups, &AgentState::default(), &[], now);
        assert_eq!(
            report.last_database_backup.as_deref(),
            Some("2026-11-24T05:00:00Z")
        );
    }

    #[test]
    fn a_held_back_retention_run_and_a_future_test_restore_degrade() {
        let config = Config::default();
        let now = at("2026-11-24T12:00:00Z");
        let backups = vec![
            backup(BackupKind::Database, "2026-11-24T00:00:00Z", ALL),
            backup(BackupKind::Ignition, "2026-11-24T00:00:00Z", &[]),
        ];
        let mut state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                time: "2027-01-01T00:00:00Z".into(),
                backup: "x".into(),
                ok: true,
                message: String::new(),
            }),
            ..Default::default()
        };
        let report = assess(&config, &backups, &state, &[], now);
        assert_eq!(report.status, Health::Degraded);
        assert!(
            report.problems[0].starts_with("the last test restore is dated 2027-01-01"),
            "{:?}",
            report.problems
        );
        state.last_test_restore.as_mut().unwrap().time = "2026-11-24T01:00:00Z".into();
        state.retention_held.insert(
            "database".into(),
            FailureRecord {
                time: "2026-11-24T00:01:00Z".into(),
                message:
                    "automatic retention held back: it would delete 5 of the 8 database backups"
                        .into(),
            },
        );
        let report = assess(&config, &backups, &state, &[], now);
        assert_eq!(report.status, Health::Degraded);
        assert!(
            report.problems[0].contains("held back"),
            "{:?}",
            report.problems
        );
    }
}
