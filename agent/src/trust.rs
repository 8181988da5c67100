//! What can be believed about a backup: whether its date fits the clock,
//! and whether it is *good*, i.e. one that protects the plant.
//!
//! **Dates.** Times are compared as times, never as strings. A backup dated
//! more than [`FUTURE_TOLERANCE`] after the clock's now was made while the
//! clock was ahead, or the clock is behind now: it is flagged, never counts
//! as fresh and never drives retention (nor is deleted by it).
//!
//! **Good.** A backup is good when its file and metadata agree (the
//! metadata exists, names this file and its size), a database backup holds
//! every schema of `database.schemas`, it is not a safety backup taken
//! before a restore (`_pre-restore`), and neither a verification nor its
//! test restore found it damaged.

use mesbak_interface::{BackupInfo, BackupKind};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::state::AgentState;
use crate::storage::Listed;

/// How far ahead of the clock a date may be before it counts as "in the
/// future" (clocks of two machines, a backup started a moment ago).
pub const FUTURE_TOLERANCE: Duration = Duration::minutes(10);

/// The tag in the name of the safety backup a restore takes first:
/// `mes_<time>_pre-restore.sql.gz.enc`.
pub const SAFETY_TAG: &str = "pre-restore";

pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Whether `time` lies beyond the clock's `now` (more than the tolerance).
pub fn is_future(time: OffsetDateTime, now: OffsetDateTime) -> bool {
    time > now + FUTURE_TOLERANCE
}

/// A span for people: `400 days`, `5 hours`, `12 minutes`.
pub fn human_span(span: Duration) -> String {
    let span = span.abs();
    let (n, unit) = if span.whole_days() >= 2 {
        (span.whole_days(), "day")
    } else if span.whole_hours() >= 2 {
        (span.whole_hours(), "hour")
    } else {
        (span.whole_minutes(), "minute")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The sentence for a date beyond the clock; `what` names the thing
/// ("database backup mes_...").
pub fn future_problem(what: &str, time: OffsetDateTime, now: OffsetDateTime) -> String {
    format!(
        "{what} is dated {}, {} ahead of the system clock ({}): the clock was ahead when it was made, or is behind now; check the clock (`timedatectl`). Until the clock passes that date it does not count as fresh and retention neither counts nor deletes it",
        format_time(time),
        human_span(time - now),
        format_time(now)
    )
}

pub fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// The newest backup of `kind` whose date is known and not in the future.
pub fn newest_dated<'b>(
    backups: impl IntoIterator<Item = &'b BackupInfo>,
    kind: BackupKind,
    now: OffsetDateTime,
) -> Option<(&'b BackupInfo, OffsetDateTime)> {
    backups
        .into_iter()
        .filter(|b| b.kind == kind)
        .filter_map(|b| parse_time(&b.created).map(|t| (b, t)))
        .filter(|(_, t)| !is_future(*t, now))
        .max_by(|(a, at), (b, bt)| at.cmp(bt).then(a.id.cmp(&b.id)))
}

/// Whether `id` names a safety backup a restore took of the data it replaced.
pub fn is_safety_backup(id: &str) -> bool {
    let stem = [".sql.gz.enc", ".tar.gz.enc"]
        .iter()
        .find_map(|suffix| id.strip_suffix(suffix))
        .unwrap_or(id);
    // A second one in the same second is `_pre-restore-1`.
    let stem = stem
        .rsplit_once('-')
        .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(stem, |(stem, _)| stem);
    stem.ends_with(&format!("_{SAFETY_TAG}"))
}

/// Why a backup is not good, or `None` when it is.
pub fn flaw(listed: &Listed, config: &Config, state: &AgentState) -> Option<String> {
    let info = &listed.info;
    if let Some(problem) = &listed.metadata_problem {
        return Some(problem.clone());
    }
    if is_safety_backup(&info.id) {
        return Some("it is a safety backup taken before a restore".into());
    }
    if let Some(damage) = state.damaged.get(&info.id) {
        return Some(format!(
            "verification found it damaged at {}: {}",
            damage.time, damage.message
        ));
    }
    if let Some(test) = state
        .last_test_restore
        .as_ref()
        .filter(|test| !test.ok && test.backup == info.id)
    {
        return Some(format!(
            "its test restore failed at {}: {}",
            test.time, test.message
        ));
    }
    if info.kind == BackupKind::Database {
        let missing: Vec<&str> = config
            .database
            .schemas
            .iter()
            .filter(|schema| !info.schemas.contains(schema))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some(format!("it lacks the schema(s) {}", missing.join(", ")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FailureRecord, TestRestoreRecord};

    fn info(id: &str, kind: BackupKind, schemas: &[&str]) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            kind,
            path: String::new(),
            created: "2026-11-24T00:00:00Z".into(),
            size_bytes: 10,
            sha256: "ab".into(),
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: schemas.iter().map(|s| s.to_string()).collect(),
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec![],
        }
    }

    const ALL: &[&str] = &["mes_core", "mes_audit", "mes_custom"];

    #[test]
    fn safety_backups_are_known_by_name() {
        for id in [
            "mes_2026-11-24_000000_pre-restore.sql.gz.enc",
            "mes_2026-11-24_000000_pre-restore-1.sql.gz.enc",
            "ignition_2026-11-24_000000_pre-restore.tar.gz.enc",
        ] {
            assert!(is_safety_backup(id), "{id}");
        }
        for id in [
            "mes_2026-11-24_000000.sql.gz.enc",
            "mes_2026-11-24_000000-1.sql.gz.enc",
            "pre-restore_2026-11-24_000000.sql.gz.enc",
        ] {
            assert!(!is_safety_backup(id), "{id}");
        }
    }

    #[test]
    fn good_means_agreeing_complete_and_undamaged() {
        let config = Config::default();
        let mut state = AgentState::default();
        let good = Listed {
            info: info("mes_a.sql.gz.enc", BackupKind::Database, ALL),
            metadata_problem: None,
        };
        assert_eq!(flaw(&good, &config, &state), None);
        let ignition = Listed {
            info: info("ignition_a.tar.gz.enc", BackupKind::Ignition, &[]),
            metadata_problem: None,
        };
        assert_eq!(flaw(&ignition, &config, &state), None);

        let partial = Listed {
            info: info("mes_b.sql.gz.enc", BackupKind::Database, &["mes_core"]),
            metadata_problem: None,
        };
        assert!(
            flaw(&partial, &config, &state)
                .unwrap()
                .contains("mes_audit, mes_custom")
        );
        let disagreeing = Listed {
            metadata_problem: Some("its metadata says 5 bytes".into()),
            ..good.clone()
        };
        assert!(
            flaw(&disagreeing, &config, &state)
                .unwrap()
                .contains("5 bytes")
        );
        let safety = Listed {
            info: info("mes_a_pre-restore.sql.gz.enc", BackupKind::Database, ALL),
            metadata_problem: None,
        };
        assert!(flaw(&safety, &config, &state).unwrap().contains("safety"));

        state.last_test_restore = Some(TestRestoreRecord {
            time: "2026-11-24T01:00:00Z".into(),
            backup: "mes_a.sql.gz.enc".into(),
            ok: false,
            message: "row counts differ".into(),
        });
        assert!(flaw(&good, &config, &state).unwrap().contains("row counts"));
        state.last_test_restore = None;
        state.damaged.insert(
            "mes_a.sql.gz.enc".into(),
            FailureRecord {
                time: "2026-11-24T02:00:00Z".into(),
                message: "chunk 3 failed authentication".into(),
            },
        );
        assert!(flaw(&good, &config, &state).unwrap().contains("chunk 3"));
    }

    #[test]
    fn dates_beyond_the_clock_are_future_and_never_newest() {
        let now = parse_time("2026-11-24T12:00:00Z").unwrap();
        assert!(!is_future(now + Duration::minutes(5), now));
        assert!(is_future(now + Duration::minutes(11), now));
        let mut ahead = info("mes_ahead.sql.gz.enc", BackupKind::Database, ALL);
        ahead.created = "2028-01-01T00:00:00Z".into();
        let today = info("mes_today.sql.gz.enc", BackupKind::Database, ALL);
        let mut garbled = info("mes_garbled.sql.gz.enc", BackupKind::Database, ALL);
        garbled.created = "yesterday".into();
        let backups = vec![ahead, garbled, today];
        let (newest, _) = newest_dated(&backups, BackupKind::Database, now).unwrap();
        assert_eq!(newest.id, "mes_today.sql.gz.enc");
        assert!(newest_dated(&backups, BackupKind::Ignition, now).is_none());
        let problem = future_problem(
            "database backup mes_ahead.sql.gz.enc",
            parse_time("2028-01-01T00:00:00Z").unwrap(),
            now,
        );
        assert!(problem.contains("402 days ahead"), "{problem}");
        assert!(problem.contains("timedatectl"), "{problem}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(human_span(Duration::days(400)), "400 days");
        assert_eq!(human_span(Duration::hours(-5)), "5 hours");
        assert_eq!(human_span(Duration::minutes(1)), "1 minute");
        assert_eq!(human_span(Duration::hours(30)), "30 hours");
    }
}
