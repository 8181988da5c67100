//! The seed stack's `SCHEDULE` (a cron line) becomes the backup timer's
//! `OnCalendar=` through a drop-in the agent writes at start.

use mesbak_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn schedule_becomes_timer_dropins() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.env("SCHEDULE", "30 2 * * 1-5");
    config.set("schedule.test_restore", "Sun *-*-* 04:00:00");
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
