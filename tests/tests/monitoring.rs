//! What the packages ship for the fleet's monitoring
//! (`packaging/monitoring/`, installed under /usr/share/mesbak/): the
//! Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, Debian's `prometheus` package), and the rules and
//! the Grafana dashboard use only metric names a live agent exports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mesbak_tests::util::free_port;
use mesbak_tests::*;

fn workspace() -> PathBuf {
    mesbak_tests::util::workspace_root()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace().join("tests/monitoring"))
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run promtool (Debian package prometheus; dev/test installs it): {err}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let text = promtool(&[
        "check",
        "rules",
        "../../packaging/monitoring/mesbak.rules.yml",
    ]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", "mesbak.rules.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    // The alerts the fleet needs are all there.
    let rules =
        std::fs::read_to_string(workspace().join("packaging/monitoring/mesbak.rules.yml")).unwrap();
    for alert in [
        "MesbakNoFreshBackup",
        "MesbakTestRestoreFailed",
        "MesbakOffsiteBehind",
        "MesbakAgentDown",
        "MesbakDiskLow",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
        assert!(
            std::fs::read_to_string(workspace().join("tests/monitoring/mesbak.rules.test.yml"))
                .unwrap()
                .contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

/// `mesbak_*` names used in a file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("mesbak_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn get_metrics(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's /metrics never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_rules_use_only_metrics_the_agent_exports() {
    let dashboard_path = workspace().join("packaging/monitoring/mesbak-dashboard.json");
    let dashboard_text = std::fs::read_to_string(&dashboard_path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("mesbak_")),
                "{target}"
            );
        }
    }
    let mut used = metric_names(&dashboard_text);
    used.extend(metric_names(
        &std::fs::read_to_string(workspace().join("packaging/monitoring/mesbak.rules.yml"))
            .unwrap(),
    ));
    for wanted in [
        "mesbak_last_success_age_seconds",
        "mesbak_last_backup_size_bytes",
        "mesbak_last_backup_duration_seconds",
        "mesbak_last_ignition_downtime_seconds",
        "mesbak_offsite_last_copy_age_seconds",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }

    // A live agent with an off-site target (a folder) exports every family,
    // announced with `# TYPE` even before its first sample.
    let port = free_port();
    let mut config = AgentConfig::new();
    let target = config.dir().join("offsite");
    std::fs::create_dir_all(&target).unwrap();
    let mut offsite = toml::Table::new();
    offsite.insert("name".into(), "nas".into());
    offsite.insert("url".into(), target.to_str().unwrap().into());
    config
        .set("health.listen", format!("127.0.0.1:{port}"))
        .set(
            "offsite",
            toml::Value::Array(vec![toml::Value::Table(offsite)]),
        );
    let bus = Bus::start();
    let _agent = Agent::spawn(&bus, &config).await;
    let metrics = tokio::task::spawn_blocking(move || get_metrics(port))
        .await
        .unwrap();
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the rules but not exported: {missing:?}\nexported: {exported:?}"
    );
}
