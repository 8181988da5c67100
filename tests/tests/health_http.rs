//! The loopback health endpoint of the real agent (`health.listen`): JSON
//! health with 200/503, Prometheus metrics, 404/405, off when empty, and a
//! taken port reported as a problem instead of killing the agent.
//!
//! Times are injected, never waited for: health is judged from the backups'
//! metadata sidecars (`<id>.json` next to each `.enc` file) and from
//! `state_dir/state.json`, so the tests write those with the `created` and
//! test-restore times they need, relative to the clock of the moment.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesbak_tests::util::free_port;
use mesbak_tests::*;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration as TimeDuration, OffsetDateTime};

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

/// `method path` on 127.0.0.1:`port` with hyper's HTTP/1.1 client.
async fn request(port: u16, method: &str, path: &str) -> Answer {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|err| panic!("cannot connect to 127.0.0.1:{port}: {err}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read the body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on port {port} got no answer within 20 s"))
}

/// The agent owns its bus name a moment before the endpoint listens.
async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} 10 s after the agent started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TCP sockets `pid` listens on, as `address:port` (IPv4) or
/// `[ipv6-hex]:port`, from its file descriptors and the kernel's tables.
fn listening_sockets(pid: u32) -> BTreeSet<String> {
    let mut inodes = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("read the agent's fds") {
        let Ok(target) = fs::read_link(entry.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut listening = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(fields[9]) {
                continue;
            }
            let (addr, port) = fields[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            let addr = if table == "tcp" {
                let raw = u32::from_str_radix(addr, 16).unwrap();
                std::net::Ipv4Addr::from(raw.to_le_bytes()).to_string()
            } else {
                format!("[{addr}]")
            };
            listening.insert(format!("{addr}:{port}"));
        }
    }
    listening
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap()
}

/// `state_dir/state.json`: a passed test restore at `test_time` and some
/// failed database backups in the past.
fn write_state(config: &AgentConfig, test_time: OffsetDateTime, database_failures: u64) {
    let dir = config.state_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .unwrap();
    let state = json!({
        "last_test_restore": {
            "time": rfc3339(test_time),
            "backup": "mes_test.sql.gz.enc",
            "ok": true,
            "message": "row counts match",
        },
        "last_failure": {},
        "failures_total": { "database": database_failures },
        "previous_database": null,
    });
    write_private(
        &dir.join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap().as_slice(),
    )
    .unwrap();
}

/// The value of one series (`name{labels}`) on a metrics page.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
}

fn unix(time: OffsetDateTime) -> f64 {
    time.unix_timestamp_nanos() as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_age_of_the_backups() {
    let bus = Bus::start();
    let port = free_port();
    let mut config = AgentConfig::new();
    config.set("health.listen", format!("127.0.0.1:{port}"));

    // Fresh: both kinds backed up an hour ago (and the day before), a test
    // restore passed two hours ago, two database backups failed long ago.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let fresh = now - TimeDuration::hours(1);
    let older = now - TimeDuration::hours(25);
    let db_new = "mes_fresh.sql.gz.enc";
    let ign_new = "ignition_fresh.tar.gz.enc";
    write_backup(
        &config,
        "database",
        "mes_older.sql.gz.enc",
        older,
        1000,
        800,
    );
    write_backup(&config, "database", db_new, fresh, 4321, 1500);
    write_backup(&config, "ignition", ign_new, fresh, 2048, 250);
    write_state(&config, now - TimeDuration::hours(2), 2);

    let agent = Agent::spawn(&bus, &config).await;
    wait_listening(port).await;

    // Only the configured address, nothing else (no default 8888 as well).
    assert_eq!(
        listening_sockets(agent.pid()),
        BTreeSet::from([format!("127.0.0.1:{port}")])
    );

    let health = request(port, "GET", "/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.header(header::CONTENT_TYPE), "application/json");
    assert_eq!(health.header(header::CACHE_CONTROL), "no-store");
    let report = health.json();
    assert_eq!(report["status"], "healthy", "{report:#}");
    assert_eq!(report["last_backup"], rfc3339(fresh));
    assert_eq!(report["last_database_backup"], rfc3339(fresh));
    assert_eq!(report["last_ignition_backup"], rfc3339(fresh));
    assert_eq!(
        report["last_test_restore"],
        rfc3339(now - TimeDuration::hours(2))
    );
    assert_eq!(report["last_test_restore_ok"], true);
    assert_eq!(report["problems"], json!([]));

    // The bus says the same.
    let proxy = agent.proxy().await;
    assert_eq!(proxy.health().await.unwrap(), "healthy");
    assert_eq!(proxy.last_backup().await.unwrap(), rfc3339(fresh));

    let root = request(port, "GET", "/").await;
    assert_eq!(root.status, health.status);
    assert_eq!(root.json(), report, "/ and /health differ");

    let head = request(port, "HEAD", "/health").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body, "", "HEAD has no body");

    let metrics = request(port, "GET", "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .header(header::CONTENT_TYPE)
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    assert_eq!(metrics.header(header::CACHE_CONTROL), "no-store");
    let text = &metrics.body;
    let expected = [
        ("mesbak_up", 1.0),
        ("mesbak_health{status=\"healthy\"}", 1.0),
        ("mesbak_health{status=\"degraded\"}", 0.0),
        ("mesbak_health{status=\"unhealthy\"}", 0.0),
        (
            "mesbak_last_success_timestamp_seconds{kind=\"database\"}",
            unix(fresh),
        ),
        (
            "mesbak_last_success_timestamp_seconds{kind=\"ignition\"}",
            unix(fresh),
        ),
        (
            "mesbak_last_backup_duration_seconds{kind=\"database\"}",
            1.5,
        ),
        (
            "mesbak_last_backup_duration_seconds{kind=\"ignition\"}",
            0.25,
        ),
        ("mesbak_last_backup_size_bytes{kind=\"database\"}", 4321.0),
        ("mesbak_last_backup_size_bytes{kind=\"ignition\"}", 2048.0),
        ("mesbak_backups{kind=\"database\"}", 2.0),
        ("mesbak_backups{kind=\"ignition\"}", 1.0),
        ("mesbak_backup_failures_total{kind=\"database\"}", 2.0),
        ("mesbak_backup_failures_total{kind=\"ignition\"}", 0.0),
        (
            "mesbak_last_test_restore_timestamp_seconds",
            unix(now - TimeDuration::hours(2)),
        ),
        ("mesbak_last_test_restore_success", 1.0),
    ];
    for (series, value) in expected {
        assert_eq!(metric(text, series), Some(value), "{series} in\n{text}");
    }
    for family in [
        "mesbak_last_success_timestamp_seconds gauge",
        "mesbak_backup_failures_total counter",
        "mesbak_health gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{text}");
    }
    let age = metric(text, "mesbak_last_success_age_seconds{kind=\"database\"}")
        .expect("an age for the database backup");
    assert!((3600.0..3600.0 + 600.0).contains(&age), "age {age}");

    let missing = request(port, "GET", "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let post = request(port, "POST", "/health").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header(header::ALLOW), "GET, HEAD");

    // 30 hours on, the same backups are stale: rewrite their `created`
    // times as if the day had passed without a new backup.
    let stale = now - TimeDuration::hours(30);
    let database_dir = config.backup_dir().join("database");
    let ignition_dir = config.backup_dir().join("ignition");
    write_sidecar(&database_dir, db_new, "database", stale, 4321, 1500);
    write_sidecar(
        &database_dir,
        "mes_older.sql.gz.enc",
        "database",
        stale - TimeDuration::hours(24),
        1000,
        800,
    );
    write_sidecar(&ignition_dir, ign_new, "ignition", stale, 2048, 250);

    // Metadata rewritten in place by hand (not by the agent, whose writes
    // rename) shows within the catalog's recheck time of one second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut health = request(port, "GET", "/health").await;
    while health.status != StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        health = request(port, "GET", "/health").await;
    }
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.body
    );
    let report = health.json();
    assert_eq!(report["status"], "unhealthy", "{report:#}");
    assert_eq!(report["last_backup"], rfc3339(stale));
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for id in [db_new, ign_new] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(id) && p.contains("older than 26 hours")),
            "{problems:?}"
        );
    }
    let root = request(port, "GET", "/").await;
    assert_eq!(root.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(root.json(), report);
    assert_eq!(proxy.health().await.unwrap(), "unhealthy");

    let text = request(port, "GET", "/metrics").await.body;
    assert_eq!(
        metric(&text, "mesbak_health{status=\"unhealthy\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mesbak_health{status=\"healthy\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "mesbak_last_success_timestamp_seconds{kind=\"database\"}"
        ),
        Some(unix(stale))
    );

    // A new backup makes it healthy again.
    write_backup(&config, "database", "mes_new.sql.gz.enc", now, 5000, 900);
    write_backup(
        &config,
        "ignition",
        "ignition_new.tar.gz.enc",
        now,
        3000,
        100,
    );
    let health = request(port, "GET", "/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.json()["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_backup_yet_is_unhealthy() {
    let bus = Bus::start();
    let port = free_port();
    let config = AgentConfig::new().with("health.listen", format!("127.0.0.1:{port}"));
    let _agent = Agent::spawn(&bus, &config).await;
    wait_listening(port).await;

    let health = request(port, "GET", "/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    let report = health.json();
    assert_eq!(report["status"], "unhealthy");
    assert!(report["last_backup"].is_null(), "{report:#}");
    assert!(report["last_test_restore"].is_null(), "{report:#}");

    let text = request(port, "GET", "/metrics").await.body;
    assert_eq!(metric(&text, "mesbak_up"), Some(1.0));
    assert_eq!(
        metric(&text, "mesbak_backups{kind=\"database\"}"),
        Some(0.0)
    );
    for absent in [
        "mesbak_last_success_timestamp_seconds{kind=\"database\"}",
        "mesbak_last_test_restore_success",
        "mesbak_last_test_restore_timestamp_seconds",
    ] {
        assert_eq!(metric(&text, absent), None, "{absent} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_listen_means_no_endpoint() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.set("health.listen", "");
    let agent = Agent::spawn(&bus, &config).await;
    // Start-up has passed the point where the endpoint would have bound
    // once the agent says it is off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("the health endpoint is off") {
        assert!(
            Instant::now() < deadline,
            "the agent did not say the endpoint is off:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        listening_sockets(agent.pid()),
        BTreeSet::new(),
        "the agent listens although health.listen is empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn taken_port_is_a_problem_not_a_crash() {
    let bus = Bus::start();
    let port = free_port();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let config = AgentConfig::new().with("health.listen", format!("127.0.0.1:{port}"));
    let mut agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    let wanted = format!("the health endpoint cannot listen on 127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let problems = proxy.problems().await.unwrap();
        if problems.iter().any(|p| p.contains(&wanted)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no problem about the taken port: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(agent.is_running(), "the agent died of a taken port");
    assert!(listening_sockets(agent.pid()).is_empty());
}
