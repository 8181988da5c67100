//! The agent under a wrong clock, moved by libfaketime: a clock that jumps
//! ahead cannot empty the backup folder, a backup dated in the future is
//! flagged and never counts, and once the clock is right again a backup
//! made then counts as fresh at once.

use std::time::Duration;

use mesbak_interface::PruneDecision;
use mesbak_tests::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

async fn backup(agent: &Agent) -> JobOutcome {
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    outcome
}

async fn ids(agent: &Agent) -> Vec<String> {
    let mut ids: Vec<String> = agent
        .proxy()
        .await
        .list_backups()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    ids.sort();
    ids
}

fn decision<'p>(plan: &'p [PruneDecision], id: &str) -> &'p PruneDecision {
    plan.iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the plan: {plan:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_that_jumps_ahead_and_back_loses_nothing_and_is_reported() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    // Database only, and keep_last 1 so the second guard is what holds.
    let mut config = AgentConfig::for_postgres(&pg)
        .with("ignition.volume", "")
        .with("retention.keep_last", 1);

    // Two good backups on the right clock.
    let agent = Agent::spawn(&bus, &config).await;
    let mut good = Vec::new();
    for _ in 0..2 {
        good.push(backup(&agent).await.files[0].clone());
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    drop(agent);

    // One more with the clock 400 days ahead (as `faketime -f +400d`
    // gives it): retention would delete both good backups at once, so the
    // automatic run holds back and says why.
    config.fake_clock("+400d");
    let agent = Agent::spawn(&bus, &config).await;
    let outcome = backup(&agent).await;
    let ahead = outcome.files[0].clone();
    assert!(
        outcome
            .warnings
            .iter()
            .any(|w| w.contains("held back") && w.contains("timedatectl")),
        "{:?}",
        outcome.warnings
    );
    let mut expected = vec![good[0].clone(), good[1].clone(), ahead.clone()];
    expected.sort();
    assert_eq!(ids(&agent).await, expected, "the clock emptied the folder");
    let created = agent.proxy().await.list_backups().await.unwrap();
    let ahead_created = created
        .iter()
        .find(|b| b.id == ahead)
        .unwrap()
        .created
        .clone();
    let ahead_time = OffsetDateTime::parse(&ahead_created, &Rfc3339).unwrap();
    assert!(
        ahead_time - OffsetDateTime::now_utc() > time::Duration::days(399),
        "the agent did not run 400 days ahead: {ahead_created}"
    );
    drop(agent);

    // keep_last (default 7) alone keeps them too: nothing is even planned.
    let mut defaults = config.clone();
    defaults.unset("retention.keep_last");
    let agent = Agent::spawn(&bus, &defaults).await;
    let plan = agent.proxy().await.plan_prune().await.unwrap();
    assert!(plan.iter().all(|d| d.keep), "{plan:?}");
    assert!(
        decision(&plan, &good[0])
            .reasons
            .iter()
            .any(|r| r.contains("newest 7 good backups (keep_last)")),
        "{plan:?}"
    );
    drop(agent);

    // Back on the right clock: the backup dated 400 days ahead is a clock
    // problem, never the freshest backup, and retention neither counts it
    // nor deletes it.
    config.real_clock();
    let agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    let problems = proxy.problems().await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains(&ahead)
            && p.contains("ahead of the system clock")
            && p.contains("timedatectl")),
        "{problems:?}"
    );
    assert_ne!(proxy.health().await.unwrap(), "healthy");
    let last = proxy.last_database_backup().await.unwrap();
    assert_ne!(last, ahead_created, "a future backup counted as the newest");
    let plan = proxy.plan_prune().await.unwrap();
    let future = decision(&plan, &ahead);
    assert!(future.keep, "{plan:?}");
    assert!(
        future
            .reasons
            .iter()
            .any(|r| r.contains("ahead of the clock")),
        "{plan:?}"
    );
    assert!(
        decision(&plan, &good[1])
            .reasons
            .contains(&"the newest good backup".to_owned()),
        "{plan:?}"
    );

    // A backup made now counts as fresh at once: the clock that went back
    // does not make it look stale. The future one stays flagged.
    let fresh = backup(&agent).await;
    assert!(
        !fresh.warnings.iter().any(|w| w.contains("held back")),
        "{:?}",
        fresh.warnings
    );
    let listed = proxy.list_backups().await.unwrap();
    let fresh_created = listed
        .iter()
        .find(|b| b.id == fresh.files[0])
        .unwrap()
        .created
        .clone();
    assert_eq!(proxy.last_database_backup().await.unwrap(), fresh_created);
    assert_eq!(proxy.last_backup().await.unwrap(), fresh_created);
    assert_eq!(proxy.health().await.unwrap(), "degraded");
    let problems = proxy.problems().await.unwrap();
    assert!(
        !problems
            .iter()
            .any(|p| p.contains("older than") || p.contains("no database backup")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains(&ahead)), "{problems:?}");
    assert!(
        !problems.iter().any(|p| p.contains("held back")),
        "{problems:?}"
    );
    assert_eq!(listed.len(), 4, "{listed:?}");
}
