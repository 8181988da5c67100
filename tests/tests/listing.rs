//! `mesbakctl list` and `ListBackupsPage` with more backups than one page:
//! people see the newest 50 and how many there are, `--all` and `--json`
//! every backup (the JSON as before), `--limit N` the newest N; the bus
//! method slices the listing newest first and says the total.
//!
//! The backups are faked (a small file and its metadata each): listing
//! reads only those.

use std::process::Output;

use mesbak_interface::BackupInfo;
use mesbak_tests::*;
use serde_json::Value;
use time::OffsetDateTime;

const BACKUPS: usize = 60;

/// An agent without database or volume and `count` database backups, one
/// an hour back from now; their ids, newest first.
async fn agent_with_backups(bus: &Bus, count: usize) -> (Agent, Vec<String>) {
    let config = AgentConfig::new()
        .with("ignition.volume", "")
        .with("retention.days", 36500);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let ids: Vec<String> = (0..count)
        .map(|n| {
            let created = now - time::Duration::hours(n as i64 + 1);
            let id = format!(
                "mes_{}.sql.gz.enc",
                created
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day]_[hour][minute][second]"
                    ))
                    .unwrap()
            );
            write_backup(&config, "database", &id, created, 64, 100);
            id
        })
        .collect();
    (Agent::spawn(bus, &config).await, ids)
}

fn ctl(bus: &Bus, args: &[&str]) -> String {
    let out: Output = mesbakctl(bus).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mesbakctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The ids in a text listing's table, in order.
fn listed_ids(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("mes_"))
        .map(|line| line.split_whitespace().next().unwrap())
        .collect()
}

fn json_ids(json: &str) -> Vec<String> {
    let backups: Vec<Value> = serde_json::from_str(json).unwrap();
    backups
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn people_see_the_newest_50_and_scripts_every_backup() {
    let bus = Bus::start();
    let (agent, ids) = agent_with_backups(&bus, BACKUPS).await;

    let text = ctl(&bus, &["list"]);
    assert_eq!(listed_ids(&text), ids[..50], "{text}");
    assert!(
        text.contains(
            "showing the newest 50 of 60 backups; `mesbakctl list --all` shows every one"
        ),
        "{text}"
    );

    let text = ctl(&bus, &["list", "--all"]);
    assert_eq!(listed_ids(&text), ids, "{text}");
    assert!(!text.contains("showing the newest"), "{text}");

    let text = ctl(&bus, &["list", "--limit", "2"]);
    assert_eq!(listed_ids(&text), ids[..2], "{text}");
    assert!(
        text.contains("showing the newest 2 of 60 backups"),
        "{text}"
    );

    // --json: every backup, exactly what ListBackups says, as before.
    let json = ctl(&bus, &["list", "--json"]);
    let all: Vec<BackupInfo> = agent.proxy().await.list_backups().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        serde_json::to_value(&all).unwrap()
    );
    assert_eq!(json_ids(&json), ids);
    let json = ctl(&bus, &["list", "--limit", "2", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        serde_json::to_value(&all[..2]).unwrap()
    );

    // --ids (shell completion): every id.
    let text = ctl(&bus, &["list", "--ids"]);
    assert_eq!(text.lines().collect::<Vec<_>>(), ids);
    let text = ctl(&bus, &["list", "--ids", "--limit", "3"]);
    assert_eq!(text.lines().collect::<Vec<_>>(), ids[..3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_listing_has_no_showing_line() {
    let bus = Bus::start();
    let (_agent, ids) = agent_with_backups(&bus, 3).await;
    let text = ctl(&bus, &["list"]);
    assert_eq!(listed_ids(&text), ids, "{text}");
    assert!(!text.contains("showing the newest"), "{text}");
    let text = ctl(&bus, &["list", "--limit", "3"]);
    assert!(!text.contains("showing the newest"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_slice_the_listing_newest_first_and_say_the_total() {
    let bus = Bus::start();
    let (agent, ids) = agent_with_backups(&bus, BACKUPS).await;
    let proxy = agent.proxy().await;
    let page = |first: u32, count: u32| {
        let proxy = proxy.clone();
        async move {
            let (total, page) = proxy.list_backups_page(first, count).await.unwrap();
            (total, page.into_iter().map(|b| b.id).collect::<Vec<_>>())
        }
    };
    let all = proxy.list_backups().await.unwrap();

    // The same records as ListBackups, a slice of them.
    let (total, first) = proxy.list_backups_page(0, 50).await.unwrap();
    assert_eq!(total, 60);
    assert_eq!(first, all[..50]);
    assert_eq!(
        page(50, 50).await,
        (60, ids[50..].to_vec()),
        "a short last page"
    );
    assert_eq!(page(10, 5).await, (60, ids[10..15].to_vec()));

    // At or past the end: empty, with the total.
    assert_eq!(page(60, 10).await, (60, vec![]));
    assert_eq!(page(u32::MAX, 10).await, (60, vec![]));
    // Count 0: only the total. An absurd count is clamped (to MAX_PAGE).
    assert_eq!(page(0, 0).await, (60, vec![]));
    assert_eq!(page(0, u32::MAX).await, (60, ids.clone()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_past_one_page_is_asked_for_page_by_page() {
    let bus = Bus::start();
    let count = mesbak_interface::MAX_PAGE as usize + 2;
    let (agent, ids) = agent_with_backups(&bus, count).await;
    // The agent clamps a page to MAX_PAGE...
    let (total, page) = agent
        .proxy()
        .await
        .list_backups_page(0, u32::MAX)
        .await
        .unwrap();
    assert_eq!(total as usize, count);
    assert_eq!(page.len(), mesbak_interface::MAX_PAGE as usize);
    // ...and mesbakctl asks again from where it ended.
    let limit = count - 1;
    let json = ctl(&bus, &["list", "--json", "--limit", &limit.to_string()]);
    assert_eq!(json_ids(&json), ids[..limit]);
}
