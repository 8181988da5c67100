//! The seed stack's `SCHEDULE` (a cron line) becomes the backup timer's
//! `OnCalendar=` through a drop-in the agent writes at start; every
//! expression is checked by systemd-analyze first.

use mesbak_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn schedule_becomes_timer_dropins() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.env("SCHEDULE", "30 2 * * 1-5");
    config.set("schedule.test_restore", "Sun *-*-* 04:00:00");
    config.set("pitr.base_backup", "0 3 * * 6");
    let agent = Agent::spawn(&bus, &config).await;
    let dir = config.dir().join("systemd");
    let backup = std::fs::read_to_string(dir.join("mesbak-backup.timer.d/schedule.conf")).unwrap();
    assert!(
        backup.contains("[Timer]\nOnCalendar=\nOnCalendar=Mon..Fri *-*-* 02:30:00\n"),
        "{backup}"
    );
    let test =
        std::fs::read_to_string(dir.join("mesbak-test-restore.timer.d/schedule.conf")).unwrap();
    assert!(test.contains("OnCalendar=Sun *-*-* 04:00:00\n"), "{test}");
    let base =
        std::fs::read_to_string(dir.join("mesbak-pitr-base-backup.timer.d/schedule.conf")).unwrap();
    assert!(base.contains("OnCalendar=Sat *-*-* 03:00:00\n"), "{base}");
    drop(agent);

    // A schedule that makes no sense leaves the timer alone and says so.
    let mut config = config.clone();
    config.env("SCHEDULE", "0 25 * * *");
    let agent = Agent::spawn(&bus, &config).await;
    let backup_after =
        std::fs::read_to_string(dir.join("mesbak-backup.timer.d/schedule.conf")).unwrap();
    assert_eq!(backup_after, backup);
    let problems = agent.proxy().await.problems().await.unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("SCHEDULE") && p.contains("hour")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_semantics_nicknames_and_checked_calendar_expressions() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    // Cron runs this on the 1st and the 15th, and on every Monday.
    config.env("SCHEDULE", "0 2 1,15 * MON");
    config.set("schedule.test_restore", "@weekly");
    let agent = Agent::spawn(&bus, &config).await;
    let dir = config.dir().join("systemd");
    let backup_path = dir.join("mesbak-backup.timer.d/schedule.conf");
    let test_path = dir.join("mesbak-test-restore.timer.d/schedule.conf");
    let backup = std::fs::read_to_string(&backup_path).unwrap();
    assert!(
        backup.ends_with(
            "[Timer]\nOnCalendar=\nOnCalendar=*-*-01,15 02:00:00\nOnCalendar=Mon *-*-* 02:00:00\n"
        ),
        "{backup}"
    );
    let test = std::fs::read_to_string(&test_path).unwrap();
    assert!(
        test.ends_with("OnCalendar=\nOnCalendar=Sun *-*-* 00:00:00\n"),
        "{test}"
    );
    let problems = agent.proxy().await.problems().await.unwrap();
    assert!(
        !problems.iter().any(|p| p.contains("schedule")),
        "{problems:?}"
    );
    drop(agent);

    // A calendar expression systemd does not accept, and a date that never
    // comes: each is reported with what to write; the timers keep theirs.
    let mut config = config.clone();
    config.env("SCHEDULE", "dialy");
    config.set("schedule.test_restore", "0 0 30 2 *");
    let agent = Agent::spawn(&bus, &config).await;
    assert_eq!(std::fs::read_to_string(&backup_path).unwrap(), backup);
    assert_eq!(std::fs::read_to_string(&test_path).unwrap(), test);
    let problems = agent.proxy().await.problems().await.unwrap();
    let backup_problem = problems
        .iter()
        .find(|p| p.starts_with("schedule.backup (or SCHEDULE)"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(
        backup_problem.contains("'dialy' is neither a cron line nor a calendar expression")
            && backup_problem.contains("'30 2 * * *'")
            && backup_problem.contains("the timer keeps its schedule"),
        "{backup_problem}"
    );
    let test_problem = problems
        .iter()
        .find(|p| p.starts_with("schedule.test_restore"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(test_problem.contains("never comes"), "{test_problem}");
}
