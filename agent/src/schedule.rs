//! `SCHEDULE` (or `schedule.backup` / `schedule.test_restore`) becomes the
//! timers' `OnCalendar=` through drop-ins the agent writes at start. The seed
//! stack's `SCHEDULE` is a cron line; systemd calendar expressions are taken
//! as they are.

use std::fs;
use std::path::Path;

use crate::config::Config;
use crate::persist::write_atomic;

const BACKUP_TIMER: &str = "mesbak-backup.timer";
const TEST_RESTORE_TIMER: &str = "mesbak-test-restore.timer";
const DROPIN: &str = "schedule.conf";

/// The `OnCalendar=` value for a schedule: a five-field cron line is
/// converted, anything else is passed to systemd as written.
pub fn on_calendar(spec: &str) -> Result<String, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec.contains(['\n', '\r']) {
        return Err(format!("'{}' is not a schedule", spec.escape_debug()));
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let cron_like = fields.len() == 5
        && fields
            .iter()
            .all(|f| f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c)));
    if !cron_like {
        return Ok(spec.to_owned());
    }
    let minute = cron_field(fields[0], 0, 59, "minute")?;
    let hour = cron_field(fields[1], 0, 23, "hour")?;
    let day = cron_field(fields[2], 1, 31, "day of month")?;
    let month = cron_field(fields[3], 1, 12, "month")?;
    let weekday = if fields[4] == "*" {
        String::new()
    } else {
        format!("{} ", weekdays(fields[4])?)
    };
    Ok(format!("{weekday}*-{month}-{day} {hour}:{minute}:00"))
}

/// One cron field in systemd's syntax: `*`, lists, `a-b` → `a..b`, `*/n` → `lo/n`.
fn cron_field(field: &str, lo: u32, hi: u32, what: &str) -> Result<String, String> {
    let bad = || format!("the cron {what} field '{field}' is not understood");
    let mut parts = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step.parse::<u32>().map_err(|_| bad())?)),
            None => (item, None),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        } else {
            let n: u32 = range.parse().map_err(|_| bad())?;
            (n, if step.is_some() { hi } else { n })
        };
        if from < lo || to > hi || from > to || step == Some(0) {
            return Err(bad());
        }
        parts.push(match (range, step) {
            ("*", None) => "*".to_owned(),
            (_, Some(step)) if to == hi => format!("{from:02}/{step}"),
            (_, Some(step)) => (from..=to)
                .step_by(step as usize)
                .map(|n| format!("{n:02}"))
                .collect::<Vec<_>>()
                .join(","),
            _ if from == to => format!("{from:02}"),
            _ => format!("{from:02}..{to:02}"),
        });
    }
    Ok(parts.join(","))
}

fn weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let bad = || format!("the cron day-of-week field '{field}' is not understood");
    let name = |n: &str| -> Result<&str, String> {
        n.parse::<usize>()
            .ok()
            .and_then(|n| NAMES.get(n).copied())
            .ok_or_else(bad)
    };
    field
        .split(',')
        .map(|item| match item.split_once('-') {
            Some((a, b)) => Ok(format!("{}..{}", name(a)?, name(b)?)),
            None if item.contains(['*', '/']) => Err(bad()),
            None => Ok(name(item)?.to_owned()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|days| days.join(","))
}

/// Writes `<dir>/<timer>.d/schedule.conf` when its content changes.
/// Returns whether it changed.
fn write_dropin(dir: &Path, timer: &str, on_calendar: &str) -> std::io::Result<bool> {
    let folder = dir.join(format!("{timer}.d"));
    let path = folder.join(DROPIN);
    let content = format!(
        "# Written by mesbak-agent from its schedule configuration; edits are replaced.\n[Timer]\nOnCalendar=\nOnCalendar={on_calendar}\n"
    );
    if fs::read_to_string(&path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    fs::create_dir_all(&folder)?;
    // systemd units and drop-ins are world-readable by convention.
    write_atomic(&path, content.as_bytes(), 0o644)?;
    Ok(true)
}

/// Brings the timers' drop-ins in line with the configuration and asks
/// systemd to pick them up. Problems are returned as sentences for health.
pub async fn apply(config: &Config) -> Vec<String> {
    let dir = config.schedule.dropin_dir.as_path();
    if dir.as_os_str().is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let mut changed = Vec::new();
    for (timer, key, spec) in [
        (
            BACKUP_TIMER,
            "schedule.backup (or SCHEDULE)",
            &config.schedule.backup,
        ),
        (
            TEST_RESTORE_TIMER,
            "schedule.test_restore",
            &config.schedule.test_restore,
        ),
    ] {
        match on_calendar(spec) {
            Ok(calendar) => match write_dropin(dir, timer, &calendar) {
                Ok(true) => {
                    tracing::info!(timer, on_calendar = %calendar, "timer schedule updated");
                    changed.push(timer);
                }
                Ok(false) => {}
                Err(err) => problems.push(format!(
                    "cannot write the schedule of {timer} into {}: {err}",
                    dir.display()
                )),
            },
            Err(err) => problems.push(format!("{key}: {err}; the timer keeps its schedule")),
        }
    }
    if !changed.is_empty() {
        if let Err(err) = reload_systemd(&changed).await {
            tracing::info!(error = %err, "systemd was not told about the new schedule (not running under systemd?)");
        }
    }
    problems
}

/// `systemctl daemon-reload` and a restart of the changed timers, over D-Bus.
async fn reload_systemd(timers: &[&str]) -> zbus::Result<()> {
    let conn = zbus::Connection::system().await?;
    let manager = zbus::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .await?;
    manager.call_method("Reload", &()).await?;
    for timer in timers {
        manager
            .call_method("RestartUnit", &(*timer, "replace"))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_lines_become_calendar_expressions() {
        assert_eq!(on_calendar("0 0 * * *").unwrap(), "*-*-* 00:00:00");
        assert_eq!(on_calendar("30 2 * * *").unwrap(), "*-*-* 02:30:00");
        assert_eq!(on_calendar("*/15 * * * *").unwrap(), "*-*-* *:00/15:00");
        assert_eq!(
            on_calendar("0 1-5 * * 1-5").unwrap(),
            "Mon..Fri *-*-* 01..05:00:00"
        );
        assert_eq!(
            on_calendar("0 3 1 */2 0,6").unwrap(),
            "Sun,Sat *-01/2-01 03:00:00"
        );
        assert_eq!(on_calendar("0 22 * * 7").unwrap(), "Sun *-*-* 22:00:00");
        assert_eq!(on_calendar("0 6,18 * * *").unwrap(), "*-*-* 06,18:00:00");
    }

    #[test]
    fn calendar_expressions_pass_and_nonsense_is_refused() {
        assert_eq!(on_calendar("daily").unwrap(), "daily");
        assert_eq!(
            on_calendar("Mon *-*-* 04:00:00").unwrap(),
            "Mon *-*-* 04:00:00"
        );
        assert!(on_calendar("61 * * * *").is_err());
        assert!(on_calendar("0 25 * * *").is_err());
        assert!(on_calendar("0 0 * * 9").is_err());
        assert!(on_calendar("").is_err());
        assert!(on_calendar("daily\nExecStart=/bin/sh").is_err());
    }

    #[test]
    fn dropins_are_written_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_dropin(dir.path(), BACKUP_TIMER, "*-*-* 02:00:00").unwrap());
        assert!(!write_dropin(dir.path(), BACKUP_TIMER, "*-*-* 02:00:00").unwrap());
        let text =
            fs::read_to_string(dir.path().join("mesbak-backup.timer.d/schedule.conf")).unwrap();
        assert!(
            text.ends_with("[Timer]\nOnCalendar=\nOnCalendar=*-*-* 02:00:00\n"),
            "{text}"
        );
        assert!(write_dropin(dir.path(), BACKUP_TIMER, "daily").unwrap());
    }
}
