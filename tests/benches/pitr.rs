//! Point-in-time recovery under load, on the TimescaleDB server (or
//! `MESBAK_BENCH_SERVERS=postgres15`):
//!
//! - WAL shipping against a write load of at least 20 MiB/s of WAL
//!   (`MESBAK_BENCH_SECONDS` of INSERTs into the hypertable, default 60):
//!   WAL written and shipped per second, what is left behind at the end,
//!   the agent's peak RSS;
//! - RPO: for marker commits during the load, the time from the commit to
//!   its segment lying encrypted in the backup folder (target:
//!   `ship_interval_secs` + 10 s);
//! - a point-in-time restore against a plain restore of a dump of the same
//!   database (target: 1.5x).
//!
//! `cargo bench -p mesbak-tests --bench pitr`

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesbak_interface::RestoreOptions;
use mesbak_tests::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SHIP_INTERVAL: u64 = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ctl(bus: &Bus, args: &[&str]) -> String {
    let out = mesbakctl(bus).args(args).output().expect("run mesbakctl");
    assert!(
        out.status.success(),
        "mesbakctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wal_lsn_bytes(pg: &Postgres) -> u64 {
    pg.psql(
        "postgres",
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint;",
    )
    .parse()
    .unwrap()
}

/// Files in the backup folder's WAL folder whose name starts with `segment`.
fn shipped(config: &AgentConfig, segment: &str) -> bool {
    std::fs::read_dir(config.backup_dir().join("pitr/wal"))
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(segment))
        })
        .unwrap_or(false)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_u64("MESBAK_BENCH_SECONDS", 60);
    let servers = std::env::var("MESBAK_BENCH_SERVERS").unwrap_or_else(|_| "timescaledb".into());
    for server in servers.split(',').map(str::trim) {
        let flavor = match server {
            "postgres15" => Flavor::Postgres15,
            "timescaledb" => Flavor::TimescaleDb,
            other => panic!("MESBAK_BENCH_SERVERS: unknown server {other:?}"),
        };
        bench(flavor, seconds).await;
    }
}

async fn bench(flavor: Flavor, seconds: u64) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config =
        AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", SHIP_INTERVAL as i64);
    let agent = Agent::spawn(&bus, &config).await;
    ctl(&bus, &["pitr", "enable", "--yes"]);
    let c = pg.name().to_owned();
    let table = if flavor.timescaledb() {
        "mes_core.machine_metric"
    } else {
        "mes_core.production_event"
    };
    pg.psql(
        "mes",
        "CREATE TABLE IF NOT EXISTS public.rpo_marker (n int, at timestamptz DEFAULT clock_timestamp());",
    );

    // The write load: one psql session looping INSERT batches.
    let stop = Arc::new(AtomicBool::new(false));
    // Times within one week: spread over years, every batch touches
    // hundreds of the hypertable's 7-day chunks and runs TimescaleDB out of
    // lock slots ("out of shared memory", max_locks_per_transaction).
    let load_sql = if flavor.timescaledb() {
        "INSERT INTO mes_core.machine_metric (time, asset_id, metric, value, attributes) \
         SELECT timestamptz '2024-01-01' + (random() * 604800) * interval '1 second' + g * interval '1 microsecond', \
                (SELECT min(asset_id) FROM mes_core.asset_definition), 'load ' || g, random(), \
                jsonb_build_object('pad', repeat(md5(g::text), 4)) \
         FROM generate_series(1, 20000) AS g;"
            .to_owned()
    } else {
        "INSERT INTO mes_core.production_event (event_id, event_time, asset_id, event_type, good_count, scrap_count, payload) \
         SELECT nextval('mes_core.production_event_id_seq') + 100000000, timestamptz '2026-01-02' + g * interval '1 ms', \
                (SELECT min(asset_id) FROM mes_core.asset_definition), 'count', 1, 0, \
                jsonb_build_object('pad', repeat(md5(g::text), 4)) \
         FROM generate_series(1, 20000) AS g;"
            .to_owned()
    };
    let writer = {
        let stop = stop.clone();
        let c = c.clone();
        std::thread::spawn(move || {
            let mut batches = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let status = Command::new("docker")
                    .args([
                        "exec", &c, "psql", "-U", "admin", "-d", "mes", "-X", "-q", "-c", &load_sql,
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .expect("run the load");
                assert!(status.success(), "the write load failed");
                batches += 1;
            }
            batches
        })
    };
    let wal_start = wal_lsn_bytes(&pg);
    let started = Instant::now();
    let mut rpo = Vec::new();
    let mut marker = 0;
    let mut rss = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        // A marker commit; its segment must appear in the backup folder.
        marker += 1;
        let segment = pg.psql(
            "mes",
            &format!(
                "INSERT INTO public.rpo_marker (n) VALUES ({marker}); \
                 SELECT pg_walfile_name(pg_current_wal_insert_lsn());"
            ),
        );
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(SHIP_INTERVAL * 6);
        while !shipped(&config, &segment) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rpo.push(committed.elapsed());
        rss = rss.max(peak_rss_kib(agent.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().expect("the writer");
    let elapsed = started.elapsed();
    let wal_bytes = wal_lsn_bytes(&pg) - wal_start;
    // What is left is shipped by a sync; the backlog at the end is measured.
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&bus, &["pitr", "status", "--json"])).unwrap();
    let waiting = status["waiting"].as_u64().unwrap_or(0);
    ctl(&bus, &["pitr", "sync"]);
    rss = rss.max(peak_rss_kib(agent.pid()));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    rpo.sort();
    let worst = rpo.last().copied().unwrap_or_default();
    let median = rpo.get(rpo.len() / 2).copied().unwrap_or_default();

    // Point-in-time restore against a plain restore of a dump of the same data.
    let target = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&bus, &["pitr", "sync"]);
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    let dump_id = outcome.files[0].clone();
    let t = Instant::now();
    let job = agent
        .proxy()
        .await
        .restore(
            &dump_id,
            RestoreOptions {
                skip_safety_backup: Some(true),
            },
        )
        .await
        .unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    let plain = t.elapsed();
    ctl(&bus, &["restore", "--drop-previous", "--yes"]);
    let t = Instant::now();
    let job = agent
        .proxy()
        .await
        .restore_to_time(
            &target,
            RestoreOptions {
                skip_safety_backup: Some(true),
            },
        )
        .await
        .unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    let pitr = t.elapsed();
    rss = rss.max(peak_rss_kib(agent.pid()));
    let size = pg.database_size("mes");

    println!(
        "pitr on {}: {seconds} s of load ({batches} batches of 20,000 rows into {table})",
        match flavor {
            Flavor::Postgres15 => "PostgreSQL 15",
            Flavor::TimescaleDb => "TimescaleDB 2.19 / PostgreSQL 17",
        }
    );
    println!(
        "  WAL written                      {:8.1} MiB  {:6.1} MiB/s (target >= 20)",
        mib(wal_bytes),
        mib(wal_bytes) / elapsed.as_secs_f64()
    );
    println!("  left in the server's archive     {waiting:8} file(s) at the end of the load");
    println!(
        "  RPO (commit -> encrypted segment) median {:.1} s, worst {:.1} s over {} markers (target <= {} s)",
        median.as_secs_f64(),
        worst.as_secs_f64(),
        rpo.len(),
        SHIP_INTERVAL + 10
    );
    println!(
        "  agent peak RSS                   {:8.1} MiB (target < 64)",
        rss as f64 / 1024.0
    );
    println!(
        "  plain restore of a dump          {:8.2} s  ({:.0} MiB database)",
        plain.as_secs_f64(),
        mib(size)
    );
    println!(
        "  point-in-time restore            {:8.2} s  (scratch recovery, dump, verified restore)",
        pitr.as_secs_f64()
    );
    println!(
        "  ratio pitr / plain               {:8.2}   (target <= 1.5)",
        pitr.as_secs_f64() / plain.as_secs_f64()
    );
}
