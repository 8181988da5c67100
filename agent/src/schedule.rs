//! `SCHEDULE` (or `schedule.backup` / `schedule.test_restore`) becomes the
//! timers' `OnCalendar=` through drop-ins the agent writes at start.
//!
//! The seed stack's `SCHEDULE` is a cron line, read with cron's own rules
//! (Vixie cron / cronie): five fields, `*`, lists, ranges, steps (`*/15`,
//! `1-5/2`, `5/10`), month and weekday names (`JAN`, `MON-FRI`), 0 and 7
//! for Sunday, the nicknames `@yearly`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`; and when both day of month and day of week are
//! restricted (neither starts with `*`), a day matching *either* runs, which
//! takes two `OnCalendar=` lines. Anything else is taken as a systemd
//! calendar expression. Every expression is checked with `systemd-analyze
//! calendar` before it is written; a bad one, or one that never comes, is
//! reported with what to write instead and the timer keeps its schedule.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::persist::write_atomic;

const BACKUP_TIMER: &str = "mesbak-backup.timer";
const TEST_RESTORE_TIMER: &str = "mesbak-test-restore.timer";
const PITR_BASE_TIMER: &str = "mesbak-pitr-base-backup.timer";
const DROPIN: &str = "schedule.conf";

/// What to write instead, appended to every schedule error.
const EXAMPLES: &str = "write a cron line such as '30 2 * * *' (02:30 every day) or '@daily', or a systemd calendar expression such as '*-*-* 02:30:00' or 'Mon..Fri *-*-* 02:30:00'";

/// The `OnCalendar=` values for a schedule: a cron line is converted (one
/// expression, or two when day of month and day of week are both
/// restricted), anything else is passed on as written.
pub fn on_calendar(spec: &str) -> Result<Vec<String>, String> {
    let spec = spec.trim();
    // Tabs separate cron fields; any other control character (a newline
    // above all) must never reach the drop-in.
    if spec.is_empty() || spec.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "'{}' is not a schedule; {EXAMPLES}",
            spec.escape_debug()
        ));
    }
    if let Some(nickname) = spec.strip_prefix('@') {
        let line = match nickname.to_ascii_lowercase().as_str() {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            "reboot" => {
                return Err(format!(
                    "'@reboot' has no time of day for a timer (a run missed while the server was off is made up at boot anyway); {EXAMPLES}"
                ));
            }
            _ => {
                return Err(format!(
                    "'{spec}' is not a cron nickname (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly); {EXAMPLES}"
                ));
            }
        };
        return cron(line);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    // Calendar expressions have a time with ':' (or are words like
    // "daily"); cron fields never do.
    let looks_cron = fields.len() >= 5 && !spec.contains(':') && !spec.contains("..");
    match (looks_cron, fields.len()) {
        (true, 5) => cron(spec),
        (true, n) => Err(format!(
            "'{spec}' has {n} fields but a cron schedule has five (minute hour day-of-month month day-of-week, no command, no seconds); {EXAMPLES}"
        )),
        (false, _) => Ok(vec![spec.to_owned()]),
    }
}

/// A cron field's values, and whether it was written starting with `*`
/// (cron's rule for combining day of month and day of week).
struct Field {
    values: Vec<u32>,
    star: bool,
}

struct Spec {
    what: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
    /// The first name's value (`JAN` = 1, `SUN` = 0).
    first_name: u32,
}

const MINUTE: Spec = Spec {
    what: "minute",
    lo: 0,
    hi: 59,
    names: &[],
    first_name: 0,
};
const HOUR: Spec = Spec {
    what: "hour",
    lo: 0,
    hi: 23,
    names: &[],
    first_name: 0,
};
const DAY: Spec = Spec {
    what: "day-of-month",
    lo: 1,
    hi: 31,
    names: &[],
    first_name: 0,
};
const MONTH: Spec = Spec {
    what: "month",
    lo: 1,
    hi: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    first_name: 1,
};
const WEEKDAY: Spec = Spec {
    what: "day-of-week",
    lo: 0,
    hi: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    first_name: 0,
};

const WEEKDAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

fn cron(line: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let minute = parse_field(fields[0], &MINUTE)?;
    let hour = parse_field(fields[1], &HOUR)?;
    let day = parse_field(fields[2], &DAY)?;
    let month = parse_field(fields[3], &MONTH)?;
    let mut weekday = parse_field(fields[4], &WEEKDAY)?;
    // 7 is Sunday too.
    if weekday.values.contains(&7) {
        weekday.values.retain(|&d| d != 7);
        if !weekday.values.contains(&0) {
            weekday.values.insert(0, 0);
        }
    }
    let time = format!(
        "{}:{}:00",
        render(&hour.values, &HOUR),
        render(&minute.values, &MINUTE)
    );
    let month_text = render(&month.values, &MONTH);
    let weekdays = render_weekdays(&weekday.values);
    let date = |day_text: &str| format!("*-{month_text}-{day_text} {time}");
    if day.star || weekday.star {
        // Cron ANDs the two when either starts with `*`.
        let day_text = render(&day.values, &DAY);
        Ok(vec![match weekdays {
            Some(weekdays) => format!("{weekdays} {}", date(&day_text)),
            None => date(&day_text),
        }])
    } else {
        // Both restricted: either matches.
        Ok(vec![
            date(&render(&day.values, &DAY)),
            match weekdays {
                Some(weekdays) => format!("{weekdays} {}", date("*")),
                None => date("*"),
            },
        ])
    }
}

fn parse_field(field: &str, spec: &Spec) -> Result<Field, String> {
    let bad = |why: String| {
        let range = if spec.names.is_empty() {
            format!("{}-{}", spec.lo, spec.hi)
        } else {
            format!(
                "{}-{} or {}-{}",
                spec.lo,
                spec.hi,
                spec.names[0],
                spec.names[spec.names.len() - 1]
            )
        };
        format!(
            "the cron {} field '{field}' {why} (allowed: {range}, '*', lists 'a,b', ranges 'a-b', steps '*/n' or 'a-b/n'); {EXAMPLES}",
            spec.what
        )
    };
    let value = |text: &str| -> Result<u32, String> {
        let upper = text.to_ascii_uppercase();
        if let Some(at) = spec.names.iter().position(|name| *name == upper) {
            return Ok(spec.first_name + at as u32);
        }
        let n: u32 = text
            .parse()
            .map_err(|_| bad(format!("has '{text}', which is not a number or name")))?;
        if n < spec.lo || n > spec.hi {
            return Err(bad(format!("has {n}, out of range")));
        }
        Ok(n)
    };
    let mut values = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        bad(format!("has the step '{step}', not a positive number"))
                    })?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (from, to) = if range == "*" {
            (spec.lo, spec.hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let n = value(range)?;
            // `5/10` (cronie): from 5 to the end, every 10.
            (n, if step.is_some() { spec.hi } else { n })
        };
        if from > to {
            return Err(bad(format!(
                "has the range {from}-{to}, which runs backwards"
            )));
        }
        values.extend((from..=to).step_by(step.unwrap_or(1) as usize));
    }
    values.sort_unstable();
    values.dedup();
    Ok(Field {
        values,
        star: field.starts_with('*'),
    })
}

/// A set of values in systemd's syntax: `*`, `start/step` when it is every
/// step-th value from start to the end, else a list of values and `a..b`
/// runs.
fn render(values: &[u32], spec: &Spec) -> String {
    let all: Vec<u32> = (spec.lo..=spec.hi).collect();
    if values == all.as_slice() {
        return "*".into();
    }
    if let [first, second, _, ..] = values {
        let step = second - first;
        let progression: Vec<u32> = (*first..=spec.hi).step_by(step as usize).collect();
        if step > 1 && values == progression.as_slice() {
            return format!("{first:02}/{step}");
        }
    }
    runs(values)
        .into_iter()
        .map(|(a, b)| match b - a {
            0 => format!("{a:02}"),
            1 => format!("{a:02},{b:02}"),
            _ => format!("{a:02}..{b:02}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Weekdays (0 = Sunday) as `Mon..Fri,Sun`; `None` for every day.
fn render_weekdays(values: &[u32]) -> Option<String> {
    if values.len() == 7 {
        return None;
    }
    Some(
        runs(values)
            .into_iter()
            .map(|(a, b)| {
                let (name_a, name_b) = (WEEKDAY_NAMES[a as usize], WEEKDAY_NAMES[b as usize]);
                match b - a {
                    0 => name_a.to_owned(),
                    1 => format!("{name_a},{name_b}"),
                    _ => format!("{name_a}..{name_b}"),
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Sorted values as runs of consecutive ones.
fn runs(values: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => runs.push((v, v)),
        }
    }
    runs
}

/// Checks calendar expressions as systemd will read them, with
/// `systemd-analyze calendar`: each must parse and come again. `spec` is
/// what the configuration said, for the message.
pub async fn validate(spec: &str, expressions: &[String]) -> Result<(), String> {
    let mut command = tokio::process::Command::new("systemd-analyze");
    command
        .args(["calendar", "--iterations=1", "--"])
        .args(expressions)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(10), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Err(format!(
                "'{spec}' could not be checked: systemd-analyze cannot run ({err}); install systemd's tools"
            ));
        }
        Err(_) => {
            return Err(format!(
                "'{spec}' could not be checked: systemd-analyze did not answer within 10 s"
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .find(|line| line.contains("Failed to parse"))
            .unwrap_or(stderr.trim())
            .trim();
        let converted = if expressions.len() == 1 && expressions[0] == spec.trim() {
            String::new()
        } else {
            format!(" (converted to '{}')", expressions.join("' and '"))
        };
        return Err(format!(
            "'{spec}'{converted} is neither a cron line nor a calendar expression systemd accepts ({reason}); {EXAMPLES}"
        ));
    }
    let elapses: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Next elapse:"))
        .map(str::trim)
        .collect();
    if !elapses.is_empty() && elapses.iter().all(|next| *next == "never") {
        return Err(format!(
            "'{spec}' never comes (no such date, e.g. February 30), so the timer would never run; {EXAMPLES}"
        ));
    }
    Ok(())
}

/// Writes `<dir>/<timer>.d/schedule.conf` when its content changes.
/// Returns whether it changed.
fn write_dropin(dir: &Path, timer: &str, on_calendar: &[String]) -> std::io::Result<bool> {
    let folder = dir.join(format!("{timer}.d"));
    let path = folder.join(DROPIN);
    let mut content = String::from(
        "# Written by mesbak-agent from its schedule configuration; edits are replaced.\n[Timer]\nOnCalendar=\n",
    );
    for expression in on_calendar {
        content.push_str(&format!("OnCalendar={expression}\n"));
    }
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
        (
            PITR_BASE_TIMER,
            "pitr.base_backup",
            &config.pitr.base_backup,
        ),
    ] {
        let checked = match on_calendar(spec) {
            Ok(calendar) => validate(spec, &calendar).await.map(|()| calendar),
            Err(err) => Err(err),
        };
        match checked {
            Ok(calendar) => match write_dropin(dir, timer, &calendar) {
                Ok(true) => {
                    tracing::info!(timer, on_calendar = %calendar.join(" | "), "timer schedule updated");
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

    fn one(spec: &str) -> String {
        let mut all = on_calendar(spec).unwrap_or_else(|err| panic!("{spec}: {err}"));
        assert_eq!(all.len(), 1, "{spec}: {all:?}");
        all.remove(0)
    }

    #[test]
    fn cron_lines_become_calendar_expressions() {
        assert_eq!(one("0 0 * * *"), "*-*-* 00:00:00");
        assert_eq!(one("30 2 * * *"), "*-*-* 02:30:00");
        assert_eq!(one("*/15 * * * *"), "*-*-* *:00/15:00");
        assert_eq!(one("0 1-5 * * 1-5"), "Mon..Fri *-*-* 01..05:00:00");
        assert_eq!(one("0 22 * * 7"), "Sun *-*-* 22:00:00");
        assert_eq!(one("0 6,18 * * *"), "*-*-* 06,18:00:00");
        // Ranges with steps, and cronie's `start/step`.
        assert_eq!(one("0-30/10 * * * *"), "*-*-* *:00,10,20,30:00");
        assert_eq!(one("5/20 * * * *"), "*-*-* *:05/20:00");
        assert_eq!(one("0 */6 * * *"), "*-*-* 00/6:00:00");
        assert_eq!(one("0 3 */2 * *"), "*-*-01/2 03:00:00");
        assert_eq!(one("0 0 1-7,15 * *"), "*-*-01..07,15 00:00:00");
        // Sunday is 0 and 7; a range through 7 wraps to it.
        assert_eq!(one("0 0 * * 5-7"), "Sun,Fri,Sat *-*-* 00:00:00");
        assert_eq!(one("0 0 * * 0,7"), "Sun *-*-* 00:00:00");
        assert_eq!(one("0 0 * * 0-7"), "*-*-* 00:00:00");
    }

    #[test]
    fn month_and_weekday_names_in_any_case() {
        assert_eq!(one("30 2 * * MON-FRI"), "Mon..Fri *-*-* 02:30:00");
        assert_eq!(one("30 2 * * mon,wed,Fri"), "Mon,Wed,Fri *-*-* 02:30:00");
        assert_eq!(one("0 0 * JAN,JUL *"), "*-01,07-* 00:00:00");
        assert_eq!(one("0 0 * jun-aug sat"), "Sat *-06..08-* 00:00:00");
        assert_eq!(one("0 0 * */3 *"), "*-01/3-* 00:00:00");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // Cron runs on the 1st and 15th AND on every Monday.
        assert_eq!(
            on_calendar("0 2 1,15 * MON").unwrap(),
            vec!["*-*-01,15 02:00:00", "Mon *-*-* 02:00:00"]
        );
        assert_eq!(
            on_calendar("0 3 1 */2 0,6").unwrap(),
            vec!["*-01/2-01 03:00:00", "Sun,Sat *-01/2-* 03:00:00"]
        );
        // A field starting with `*` makes cron AND them: odd days that are
        // Mondays.
        assert_eq!(
            on_calendar("0 2 */2 * 1").unwrap(),
            vec!["Mon *-*-01/2 02:00:00"]
        );
        assert_eq!(
            on_calendar("0 2 1 * */2").unwrap(),
            vec!["Sun,Tue,Thu,Sat *-*-01 02:00:00"]
        );
    }

    #[test]
    fn nicknames() {
        assert_eq!(one("@daily"), "*-*-* 00:00:00");
        assert_eq!(one("@midnight"), "*-*-* 00:00:00");
        assert_eq!(one("@hourly"), "*-*-* *:00:00");
        assert_eq!(one("@weekly"), "Sun *-*-* 00:00:00");
        assert_eq!(one("@monthly"), "*-*-01 00:00:00");
        assert_eq!(one("@yearly"), "*-01-01 00:00:00");
        assert_eq!(one("@ANNUALLY"), "*-01-01 00:00:00");
        let err = on_calendar("@reboot").unwrap_err();
        assert!(err.contains("'30 2 * * *'"), "{err}");
        assert!(on_calendar("@fortnightly").unwrap_err().contains("@daily"));
    }

    #[test]
    fn calendar_expressions_pass_and_bad_cron_says_what_to_write() {
        assert_eq!(one("daily"), "daily");
        assert_eq!(one("Mon *-*-* 04:00:00"), "Mon *-*-* 04:00:00");
        assert_eq!(
            one("Sat,Sun *-*-* 04:00:00 Europe/Berlin"),
            "Sat,Sun *-*-* 04:00:00 Europe/Berlin"
        );
        for (bad, says) in [
            ("61 * * * *", "minute field '61' has 61, out of range"),
            ("0 25 * * *", "hour field '25'"),
            ("0 0 * * 9", "day-of-week field '9'"),
            ("0 0 * * MOM", "'MOM', which is not a number or name"),
            ("0 0 32 * *", "day-of-month"),
            ("0 0 * 13 *", "month field '13'"),
            ("0 0 * * 5-1", "runs backwards"),
            ("*/0 * * * *", "step '0'"),
            ("0 2 * * * /usr/bin/backup", "has 6 fields"),
        ] {
            let err = on_calendar(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains("'30 2 * * *'"), "{bad}: {err}");
        }
        assert!(on_calendar("").is_err());
        assert!(on_calendar("daily\nExecStart=/bin/sh").is_err());
        assert!(on_calendar("daily\0").is_err());
        assert_eq!(one("30\t2 * *\t*"), "*-*-* 02:30:00");
    }

    /// Every conversion above is an expression systemd accepts and that
    /// comes again (checked by systemd itself).
    #[tokio::test]
    async fn every_converted_expression_is_valid_for_systemd() {
        for spec in [
            "0 0 * * *",
            "*/15 * * * *",
            "0 1-5 * * 1-5",
            "0-30/10 * * * *",
            "5/20 * * * *",
            "0 */6 * * *",
            "0 3 */2 * *",
            "0 0 1-7,15 * *",
            "0 0 * * 5-7",
            "30 2 * * MON-FRI",
            "0 0 * jun-aug sat",
            "0 2 1,15 * MON",
            "0 3 1 */2 0,6",
            "0 2 */2 * 1",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "daily",
            "Mon *-*-* 04:00:00",
        ] {
            let calendar = on_calendar(spec).unwrap();
            validate(spec, &calendar)
                .await
                .unwrap_or_else(|err| panic!("{spec} -> {calendar:?}: {err}"));
        }
        let err = validate("dialy", &on_calendar("dialy").unwrap())
            .await
            .unwrap_err();
        assert!(
            err.contains("'dialy' is neither") && err.contains("Failed to parse"),
            "{err}"
        );
        // Cron accepts the 30th of February; it never comes.
        let never = on_calendar("0 0 30 2 *").unwrap();
        let err = validate("0 0 30 2 *", &never).await.unwrap_err();
        assert!(err.contains("never comes"), "{err}");
    }

    #[test]
    fn dropins_are_written_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let at_two = vec!["*-*-* 02:00:00".to_owned()];
        assert!(write_dropin(dir.path(), BACKUP_TIMER, &at_two).unwrap());
        assert!(!write_dropin(dir.path(), BACKUP_TIMER, &at_two).unwrap());
        let path = dir.path().join("mesbak-backup.timer.d/schedule.conf");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("[Timer]\nOnCalendar=\nOnCalendar=*-*-* 02:00:00\n"),
            "{text}"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let both = on_calendar("0 2 1 * MON").unwrap();
        assert!(write_dropin(dir.path(), BACKUP_TIMER, &both).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(
                "OnCalendar=\nOnCalendar=*-*-01 02:00:00\nOnCalendar=Mon *-*-* 02:00:00\n"
            ),
            "{text}"
        );
    }
}
