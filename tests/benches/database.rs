//! Database backup and restore, measured side by side in one run against
//! the baselines DESIGN.md names, as ratios (the machine is shared and noisy):
//!
//! - backup: bare `pg_dump > /dev/null`; the old way `pg_dump | gzip |
//!   openssl enc -aes-256-cbc`; output size against `gzip -6`; the agent's
//!   peak RSS;
//! - restore: `gunzip | psql` of the same dump into an empty database.
//!
//! Both servers, one after the other: PostgreSQL 15 (the bulk rows in a
//! partitioned table) and the plant's TimescaleDB on PostgreSQL 17 (the bulk
//! rows in a hypertable; its baseline restore follows Timescale's procedure,
//! `timescaledb_pre_restore()` / `gunzip | psql` / `timescaledb_post_restore()`).
//!
//! `cargo bench -p mesbak-tests --bench database`; `MESBAK_BENCH_MIB`
//! sets the size of the dump (default 300), `MESBAK_BENCH_ROUNDS` the
//! rounds (best of, default 2), `MESBAK_BENCH_SERVERS` which servers
//! (`postgres15,timescaledb`, the default).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesbak_interface::RestoreOptions;
use mesbak_tests::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn shell(script: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail; {script}")])
        .stdin(Stdio::null())
        .status()
        .expect("run bash");
    assert!(status.success(), "benchmark step failed: {script}");
    started.elapsed()
}

fn best(rounds: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..rounds)
        .map(|_| run())
        .min()
        .expect("at least one round")
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let size_mib = env_u64("MESBAK_BENCH_MIB", 300);
    let rounds = env_u64("MESBAK_BENCH_ROUNDS", 2).max(1);
    let servers =
        std::env::var("MESBAK_BENCH_SERVERS").unwrap_or_else(|_| "postgres15,timescaledb".into());
    for server in servers.split(',').map(str::trim) {
        let flavor = match server {
            "postgres15" => Flavor::Postgres15,
            "timescaledb" => Flavor::TimescaleDb,
            other => {
                panic!("MESBAK_BENCH_SERVERS: unknown server {other:?} (postgres15, timescaledb)")
            }
        };
        bench(flavor, size_mib, rounds).await;
    }
}

async fn bench(flavor: Flavor, size_mib: u64, rounds: u64) {
    let work = tempfile::tempdir().expect("temporary folder");
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    eprintln!("loading about {size_mib} MiB of time-series rows...");
    pg.load_bulk("mes", size_mib);
    let dump_bytes = pg.pg_dump_size("mes");
    let c = pg.name().to_owned();
    let sql_gz = work.path().join("dump.sql.gz");
    let old = work.path().join("old.sql.gz.enc");

    let bare = best(rounds, || {
        shell(&format!("docker exec {c} pg_dump -U admin mes > /dev/null"))
    });
    let old_way = best(rounds, || {
        shell(&format!(
            "docker exec {c} pg_dump -U admin mes | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass pass:bench -out {}",
            old.display()
        ))
    });
    shell(&format!(
        "docker exec {c} pg_dump -U admin mes | gzip -6 > {}",
        sql_gz.display()
    ));
    let gzip6_bytes = std::fs::metadata(&sql_gz).expect("gzip output").len();

    // MESBAK_BENCH_LEVELS=1,3,6 compares compression levels first.
    if let Ok(levels) = std::env::var("MESBAK_BENCH_LEVELS") {
        for level in levels
            .split(',')
            .filter_map(|l| l.trim().parse::<i64>().ok())
        {
            let config = AgentConfig::for_postgres(&pg).with("backup.compression_level", level);
            let agent = Agent::spawn(&bus, &config).await;
            let cpu_before = cpu_seconds(agent.pid());
            let started = Instant::now();
            let job = agent
                .proxy()
                .await
                .backup("database")
                .await
                .expect("start a backup");
            let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
            let took = started.elapsed();
            assert!(outcome.success, "{}", outcome.message);
            let size =
                std::fs::metadata(config.backup_dir().join("database").join(&outcome.files[0]))
                    .expect("backup file")
                    .len();
            println!(
                "  level {level}: {:.2} s = {:.2}x bare pg_dump, size {:.3}x gzip -6, agent CPU {:.2} s",
                took.as_secs_f64(),
                took.as_secs_f64() / bare.as_secs_f64(),
                size as f64 / gzip6_bytes as f64,
                cpu_seconds(agent.pid()) - cpu_before
            );
        }
    }

    let mut config = AgentConfig::for_postgres(&pg);
    config.unset("backup.compression_level");
    let agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    let mut ours = Duration::MAX;
    let mut backup_id = String::new();
    let mut backup_bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let job = proxy.backup("database").await.expect("start a backup");
        let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
        let elapsed = started.elapsed();
        assert!(outcome.success, "{}", outcome.message);
        if elapsed < ours {
            ours = elapsed;
        }
        backup_id = outcome.files[0].clone();
        backup_bytes = std::fs::metadata(config.backup_dir().join("database").join(&backup_id))
            .expect("backup file")
            .len();
    }
    let rss_after_backup = peak_rss_kib(agent.pid());

    // Restore: the same dump through gunzip | psql, against the agent's job.
    let mut n = 0;
    let baseline_restore = best(rounds, || {
        n += 1;
        let db = format!("bench_plain_{n}");
        pg.create_database(&db);
        let (pre, post) = if flavor.timescaledb() {
            (
                format!(
                    "docker exec {c} psql -X -q -U admin -d {db} -c 'SELECT timescaledb_pre_restore()' > /dev/null; "
                ),
                format!(
                    "; docker exec {c} psql -X -q -U admin -d {db} -c 'SELECT timescaledb_post_restore()' > /dev/null"
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let took = shell(&format!(
            "{pre}gunzip -c {} | docker exec -i {c} psql -X -q -v ON_ERROR_STOP=1 -U admin -d {db} > /dev/null{post}",
            sql_gz.display()
        ));
        pg.drop_database(&db);
        took
    });
    let mut our_restore = Duration::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let job = proxy
            .restore(
                &backup_id,
                RestoreOptions {
                    skip_safety_backup: Some(true),
                },
            )
            .await
            .expect("start a restore");
        let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
        our_restore = our_restore.min(started.elapsed());
        assert!(outcome.success, "{}", outcome.message);
        let drop = proxy
            .drop_previous("")
            .await
            .expect("drop the kept database");
        let (ok, message) = wait_job(agent.connection(), &drop).await;
        assert!(ok, "{message}");
    }
    let rss = peak_rss_kib(agent.pid());

    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "database on {}: {:.0} MiB of SQL ({} rounds, best of)",
        match flavor {
            Flavor::Postgres15 => "PostgreSQL 15",
            Flavor::TimescaleDb => "TimescaleDB 2.19 / PostgreSQL 17 (bulk rows in a hypertable)",
        },
        mib(dump_bytes),
        rounds
    );
    println!(
        "  bare pg_dump > /dev/null          {:7.2} s  {:6.1} MiB/s",
        secs(bare),
        mib(dump_bytes) / secs(bare)
    );
    println!(
        "  pg_dump | gzip | openssl (old)    {:7.2} s  {:6.1} MiB/s",
        secs(old_way),
        mib(dump_bytes) / secs(old_way)
    );
    println!(
        "  mesbak backup                     {:7.2} s  {:6.1} MiB/s",
        secs(ours),
        mib(dump_bytes) / secs(ours)
    );
    println!(
        "  ratio mesbak / bare pg_dump       {:7.2}   (target <= 1.20)",
        secs(ours) / secs(bare)
    );
    println!(
        "  speed-up over the old pipeline    {:7.2}x  (target >= 2.00)",
        secs(old_way) / secs(ours)
    );
    println!(
        "  size mesbak / gzip -6             {:7.3}   ({:.1} MiB vs {:.1} MiB; target <= 1.10)",
        backup_bytes as f64 / gzip6_bytes as f64,
        mib(backup_bytes),
        mib(gzip6_bytes)
    );
    println!(
        "  agent peak RSS                    {:7.1} MiB after backup, {:.1} MiB after restore (target < 64)",
        rss_after_backup as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!(
        "  gunzip | psql (baseline restore)  {:7.2} s  (TimescaleDB: with pre/post_restore)",
        secs(baseline_restore)
    );
    println!(
        "  mesbak restore (no safety backup) {:7.2} s  (authenticate, load, check rows, swap)",
        secs(our_restore)
    );
    println!(
        "  ratio restore / gunzip | psql     {:7.2}   (target <= 1.20)",
        secs(our_restore) / secs(baseline_restore)
    );
}
