//! The catalog at scale: a backup folder of 100,000 files (3,000 database
//! backups with their metadata and 97,000 shipped WAL files, a year of a
//! minute-by-minute chain), polled by 20 clients at once.
//!
//! Measured: latency of the `Health` property (the whole status judgement:
//! every backup listed, health assessed), of `ListBackups` (every record),
//! of `ListBackupsPage(0, 50)` (the first page, as `mesbakctl list` asks
//! for it), and of GET /metrics (backups, PITR chain and window), each by
//! 20 concurrent clients; median and p99 against the 50 ms target of issue
//! 16, and the first (cold) call, which reads the folders, beside them as
//! a ratio.
//!
//! `cargo bench -p mesbak-tests --bench catalog`; `MESBAK_BENCH_BACKUPS` and
//! `MESBAK_BENCH_WAL` set the counts (default 3000 and 97000).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mesbak_tests::*;

const CLIENTS: usize = 20;
const CALLS_PER_CLIENT: usize = 10;
const TARGET: Duration = Duration::from_millis(50);
/// The page `mesbakctl list` shows people.
const PAGE: u32 = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `count` small database backups (one a day back from 2026-11-30) with
/// metadata that matches them: all good backups as far as listing goes.
fn make_backups(dir: &Path, count: usize) {
    let dir = dir.join("database");
    std::fs::create_dir_all(&dir).unwrap();
    let start = time::macros::datetime!(2026-11-30 00:00:00 UTC);
    let payload = vec![7u8; 256];
    for n in 0..count {
        let at = start - time::Duration::hours(n as i64 * 3);
        let id = format!(
            "mes_{}.sql.gz.enc",
            at.format(time::macros::format_description!(
                "[year]-[month]-[day]_[hour][minute][second]"
            ))
            .unwrap()
        );
        std::fs::write(dir.join(&id), &payload).unwrap();
        let meta = serde_json::json!({
            "id": id,
            "kind": "database",
            "path": "",
            "created": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "size_bytes": payload.len(),
            "sha256": "0".repeat(64),
            "duration_ms": 1000,
            "restore_point": "",
            "source": "bench",
            "server_version": "17.6",
            "timescaledb_version": "2.19.3",
            "schemas": ["mes_core", "mes_audit", "mes_custom"],
            "table_rows": {"mes_core.work_orders": 1000},
            "downtime_ms": 0,
            "warnings": [],
        });
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
    }
}

/// `count` WAL files of one timeline, one a minute up to 2026-11-30.
fn make_wal(dir: &Path, count: usize) {
    let dir = dir.join("pitr").join("wal");
    std::fs::create_dir_all(&dir).unwrap();
    let end = time::macros::datetime!(2026-11-30 00:00:00 UTC);
    for n in 0..count {
        let at = end - time::Duration::minutes((count - n) as i64);
        let name = format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256);
        let stamp = at
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap();
        std::fs::write(dir.join(format!("{name}_{stamp}.gz.enc")), b"wal").unwrap();
    }
}

fn get_metrics(port: u16) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("health endpoint");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    page.len()
}

struct Figures {
    cold: Duration,
    median: Duration,
    p99: Duration,
}

fn figures(cold: Duration, mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figures {
        cold,
        median: at(0.5),
        p99: at(0.99),
    }
}

fn report(what: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<22} cold {:>8.1} ms   median {:>6.1} ms   p99 {:>6.1} ms   target {} ms: {}   (cold/median {:.0}x)",
        ms(f.cold),
        ms(f.median),
        ms(f.p99),
        TARGET.as_millis(),
        if f.p99 <= TARGET { "met" } else { "MISSED" },
        f.cold.as_secs_f64() / f.median.as_secs_f64().max(1e-6)
    );
}

/// Runs `call` from CLIENTS tasks at once, CALLS_PER_CLIENT times each.
async fn poll<F, Fut>(call: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for _ in 0..CALLS_PER_CLIENT {
                let started = Instant::now();
                call().await;
                samples.push(started.elapsed());
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let backups = env_usize("MESBAK_BENCH_BACKUPS", 3000);
    let wal = env_usize("MESBAK_BENCH_WAL", 97_000);
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.set("retention.days", 36500);
    config.set("ignition.volume", "");
    let port = mesbak_tests::util::free_port();
    config.set("health.listen", format!("127.0.0.1:{port}"));
    eprintln!("writing {backups} backups and {wal} WAL files...");
    make_backups(&config.backup_dir(), backups);
    make_wal(&config.backup_dir(), wal);
    let agent = Agent::spawn(&bus, &config).await;
    println!(
        "catalog: {} files ({backups} backups with metadata, {wal} WAL files), {CLIENTS} clients x {CALLS_PER_CLIENT} calls",
        backups * 2 + wal
    );

    let proxy = agent.proxy().await;
    let started = Instant::now();
    let health = proxy.health().await.unwrap();
    let cold = started.elapsed();
    assert!(!health.is_empty());
    let connection = agent.connection().clone();
    let samples = poll(move || {
        let connection = connection.clone();
        async move {
            agent_proxy(&connection).await.health().await.unwrap();
        }
    })
    .await;
    report("Health property", &figures(cold, samples));

    let started = Instant::now();
    let listed = proxy.list_backups().await.unwrap();
    let cold = started.elapsed();
    assert_eq!(listed.len(), backups);
    let connection = agent.connection().clone();
    let samples = poll(move || {
        let connection = connection.clone();
        async move {
            let listed = agent_proxy(&connection).await.list_backups().await.unwrap();
            assert!(!listed.is_empty());
        }
    })
    .await;
    report("ListBackups", &figures(cold, samples));

    // The first page as `mesbakctl list` asks for it: 50 records, not all.
    let started = Instant::now();
    let (total, page) = proxy.list_backups_page(0, PAGE).await.unwrap();
    let cold = started.elapsed();
    assert_eq!(total as usize, backups);
    assert_eq!(page.len(), backups.min(PAGE as usize));
    let connection = agent.connection().clone();
    let samples = poll(move || {
        let connection = connection.clone();
        async move {
            let (_, page) = agent_proxy(&connection)
                .await
                .list_backups_page(0, PAGE)
                .await
                .unwrap();
            assert!(!page.is_empty());
        }
    })
    .await;
    report("ListBackupsPage(0, 50)", &figures(cold, samples));

    // The metrics page: its first call lists the WAL chain.
    let started = Instant::now();
    assert!(get_metrics(port) > 0);
    let cold = started.elapsed();
    let samples = poll(move || async move {
        tokio::task::spawn_blocking(move || get_metrics(port))
            .await
            .unwrap();
    })
    .await;
    report("GET /metrics", &figures(cold, samples));
    drop(agent);
}
