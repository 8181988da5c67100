//! Alerts (`[notify] urls`) against real receivers on loopback: an HTTP
//! server for the generic JSON webhook, healthchecks pings and ntfy, and
//! aiosmtpd with STARTTLS for mail. Sending never blocks a job, retries,
//! and never logs a URL's secrets; health is judged on the agent's own
//! timer, so a backup that never ran alerts; `--notify-failure` works
//! without the agent.

use std::process::Command;
use std::time::{Duration, Instant};

use mesbak_tests::util::{free_port, random_hex};
use mesbak_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// An agent with nothing to back up from (its database container does not
/// exist), alerting to `urls`.
fn config_with(urls: &[String], check_interval_secs: i64) -> AgentConfig {
    let mut config = AgentConfig::new();
    config
        .set("notify.urls", urls.to_vec())
        .set("notify.check_interval_secs", check_interval_secs)
        .set("ignition.volume", "");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_backup_reaches_every_kind_of_receiver_without_delaying_the_job() {
    let http = HttpReceiver::start().await;
    let smtp = SmtpServer::start();
    let secret = random_hex(8);
    let dead = free_port();
    let urls = vec![
        format!("generic+{}/hook?token={secret}", http.base()),
        format!("hc+{}/ping/{secret}", http.base()),
        format!(
            "ntfy://{}/plant7?scheme=http",
            http.base().trim_start_matches("http://")
        ),
        format!(
            "smtp://127.0.0.1:{}/?from=mesbak@plant.invalid&to=ops@plant.invalid",
            smtp.port()
        ),
        // Nobody listens here: retried in the background, delaying nothing.
        format!("generic+http://127.0.0.1:{dead}/down"),
    ];
    // The first delivery fails: it must be retried.
    http.answer_with(&[500]);
    let mut config = config_with(&urls, 3600);
    config.env("SSL_CERT_FILE", smtp.cert().to_str().unwrap());
    let bus = Bus::start();
    let agent = Agent::spawn(&bus, &config).await;

    let started = Instant::now();
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "alerting delayed the job: {:?}",
        started.elapsed()
    );

    // The generic webhook: JSON with what an operator needs, after a retry.
    let hook = |r: &Received| r.path.starts_with("/hook") && r.text().contains("backup-failed");
    let webhook = http.wait_for(WAIT, "the backup-failed webhook", hook).await;
    let json = webhook.json();
    assert_eq!(json["event"], "backup-failed", "{json}");
    assert_eq!(json["status"], "failure", "{json}");
    for key in ["host", "message", "time", "reason", "action"] {
        assert!(
            json[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}: {json}"
        );
    }
    assert!(json.get("backup").is_some(), "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains(json["host"].as_str().unwrap()),
        "{message}"
    );
    assert!(message.contains("does not exist"), "the reason: {message}");
    assert!(
        message.contains("mesbakctl backup"),
        "what to do: {message}"
    );
    assert_eq!(webhook.header("content-type"), Some("application/json"));
    // The first request of all was answered 500: it comes again.
    let first = http.received()[0].clone();
    let deadline = Instant::now() + WAIT;
    while http
        .received()
        .iter()
        .filter(|r| r.path == first.path)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the failed delivery to {} was not retried",
            first.path
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Healthchecks: start, then fail.
    let ping = format!("/ping/{secret}");
    http.wait_for(WAIT, "the hc start ping", |r| {
        r.path == format!("{ping}/start")
    })
    .await;
    let fail = http
        .wait_for(WAIT, "the hc fail ping", |r| {
            r.path == format!("{ping}/fail")
        })
        .await;
    assert!(fail.text().contains("backup"), "{}", fail.text());

    // ntfy.
    let ntfy = http
        .wait_for(WAIT, "the ntfy message", |r| r.path == "/plant7")
        .await;
    assert_eq!(ntfy.method, "POST");
    assert!(
        ntfy.header("title").is_some_and(|t| t.contains("backup")),
        "{ntfy:?}"
    );
    assert_eq!(ntfy.header("priority"), Some("high"));

    // Mail, through STARTTLS (the server refuses anything else).
    let deadline = Instant::now() + WAIT;
    let mail = loop {
        if let Some(mail) = smtp.mails().into_iter().next() {
            break mail;
        }
        assert!(
            Instant::now() < deadline,
            "no mail arrived; server log:\n{}",
            smtp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(mail.contains("To: ops@plant.invalid"), "{mail}");
    assert!(mail.contains("Subject: [mesbak]"), "{mail}");
    assert!(mail.contains("backup"), "{mail}");

    // A healthy receiver is not held up by the dead one; the secrets of
    // the URLs never reach the log.
    let log = agent.log();
    assert!(!log.contains(&secret), "a URL secret was logged:\n{log}");
    assert!(log.contains("alert not delivered"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_that_never_ran_alerts_from_the_timer_once() {
    let http = HttpReceiver::start().await;
    let config = config_with(&[format!("generic+{}/hook", http.base())], 1);
    let bus = Bus::start();
    let mut agent = Agent::spawn(&bus, &config).await;
    let unhealthy = |r: &Received| r.text().contains("health-unhealthy");
    let alert = http.wait_for(WAIT, "health-unhealthy", unhealthy).await;
    assert!(
        alert.text().contains("no database backup yet"),
        "{}",
        alert.text()
    );
    // The alert is remembered: neither the next rounds nor a restart repeat it.
    agent.terminate().await;
    let _agent = Agent::spawn(&bus, &config).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        http.received().iter().filter(|r| unhealthy(r)).count(),
        1,
        "{:?}",
        http.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn low_disk_and_a_container_left_stopped_alert() {
    let http = HttpReceiver::start().await;
    // A container that cannot start again: the agent stopped it (journal)
    // and cannot put it back.
    let name = format!("mesbak-test-stuck-{}", random_hex(4));
    let created = Command::new("docker")
        .args([
            "create",
            "--network",
            "none",
            "--name",
            &name,
            "mesbak-test/busybox",
            "/no/such/program",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let mut config = config_with(&[format!("generic+{}/hook", http.base())], 1);
    // More room than any disk has must stay free.
    config.set("backup.min_free_bytes", 1i64 << 60);
    std::fs::create_dir_all(config.state_dir()).unwrap();
    write_private(
        &config.state_dir().join("containers.json"),
        format!(r#"[{{"container": "{name}", "was_running": true}}]"#).as_bytes(),
    )
    .unwrap();
    let bus = Bus::start();
    let _agent = Agent::spawn(&bus, &config).await;
    let disk = http
        .wait_for(WAIT, "disk-low", |r| r.text().contains("\"disk-low\""))
        .await;
    assert!(
        disk.text().contains("backup.min_free_bytes"),
        "{}",
        disk.text()
    );
    let stuck = http
        .wait_for(WAIT, "container-left-stopped", |r| {
            r.text().contains("container-left-stopped")
        })
        .await;
    assert!(stuck.text().contains(&name), "{}", stuck.text());
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_on_failure_notifier_works_without_the_agent() {
    let http = HttpReceiver::start().await;
    let config = config_with(&[format!("generic+{}/hook", http.base())], 60);
    let path = config.write();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary("mesbak-agent"))
            .arg("--config")
            .arg(&path)
            .args(["--notify-failure", "mesbak-backup.service"])
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alert = http
        .wait_for(WAIT, "unit-failed", |r| r.text().contains("unit-failed"))
        .await;
    let json = alert.json();
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("mesbak-backup.service"),
        "{json}"
    );
    assert!(
        json["action"]
            .as_str()
            .unwrap()
            .contains("journalctl -u mesbak-backup.service"),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_notify_url_stops_the_agent_without_showing_its_secret() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.set(
        "notify.urls",
        vec!["smtp://alerts:hunter2@mail.invalid/?to=a@plant.invalid"],
    );
    let (status, log) = Agent::run_to_exit(&bus, &config, STARTUP_TIMEOUT).await;
    assert!(!status.success());
    assert!(
        log.contains("notify.urls[0]") && log.contains("no sender"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}
