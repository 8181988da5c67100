//! Point-in-time recovery under load, on the TimescaleDB server (or
//! `MESBAK_BENCH_SERVERS=postgres15`):
//!
//! - WAL shipping against a write load of at least 20 MiB/s of WAL
//!   (`MESBAK_BENCH_SECONDS` of INSERTs, default 60, paced at
//!   `MESBAK_BENCH_WAL_MIBS`, default 24, 0 for as fast as the server goes;
//!   the bench fails if the load did not reach 20 MiB/s):
//!   WAL written and shipped per second, what is left behind at the end,
//!   the agent's peak RSS;
//! - RPO: for marker commits during the load, the time from the commit to
//!   its segment lying encrypted in the backup folder (target:
//!   `ship_interval_secs` + 10 s), overall and for the markers committed
//!   while a base backup runs (one is started `MESBAK_BENCH_BASE_AT`
//!   seconds into the load, default half-way, 0 for none: the plant's
//!   weekly base backup runs while the plant writes);
//! - a point-in-time restore against a plain restore of a dump of the same
//!   database, grown to `MESBAK_BENCH_RESTORE_MIB` (default 150) first
//!   (target: 1.5x), in turn `MESBAK_BENCH_RESTORE_ROUNDS` times (default
//!   3), each without and with its safety backup (as an operator runs
//!   it), with the downtime of a writer container (`restore.stop_containers`);
//!   the shipper ships no restore's WAL while it is timed.
//!
//! `cargo bench -p mesbak-tests --bench pitr`; `MESBAK_BENCH_AGENT_LOG=<dir>`
//! keeps a copy of the agent's log (per-segment shipping times at debug);
//! `MESBAK_BENCH_LOAD_SESSIONS=N` has both restores load in N psql
//! sessions (default: the agent's, one per core; 1 for one session).
//!
//! The load is PostgreSQL-bound, not agent-bound, so the debug profile
//! measures it too: `cargo build --benches -p mesbak-tests`, then run
//! `<target>/debug/deps/pitr-* --bench`.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesbak_interface::RestoreOptions;
use mesbak_tests::measure::*;
use mesbak_tests::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SHIP_INTERVAL: u64 = 10;
/// Load statements sent ahead of the one psql is running.
const IN_FLIGHT: u64 = 3;
/// A marker whose segment is not shipped within this counts as this.
const RPO_GIVE_UP: Duration = Duration::from_secs(SHIP_INTERVAL * 6);

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

/// Files in the backup folder's WAL folder.
fn wal_files(config: &AgentConfig) -> u64 {
    std::fs::read_dir(config.backup_dir().join("pitr/wal"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count() as u64
        })
        .unwrap_or(0)
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
    let stopped_writer = Writer::start();
    let mut config = AgentConfig::for_postgres(&pg)
        .with("pitr.ship_interval_secs", SHIP_INTERVAL as i64)
        .with("restore.stop_containers", vec![stopped_writer.name.clone()]);
    load_sessions_from_env(&mut config);
    let agent = Agent::spawn(&bus, &config).await;
    ctl(&bus, &["pitr", "enable", "--yes"]);
    let c = pg.name().to_owned();
    pg.psql(
        "mes",
        "CREATE TABLE IF NOT EXISTS public.rpo_marker (n int, at timestamptz DEFAULT clock_timestamp());",
    );

    // The write load: one long-lived psql session in its own database
    // (WAL is the cluster's; the dump of `mes` compared below stays the
    // fixture), fed INSERTs over stdin at a steady pace. Each copies the
    // 1,000 rows of `wal_pad` (1,888 random hex characters each: below the
    // TOAST threshold, so every byte lands in the WAL uncompressed, about
    // as compressible as real rows), about 2 MiB of WAL for almost no CPU;
    // a TRUNCATE now and then keeps the table small. A plain table on both
    // servers: one INSERT into hundreds of hypertable chunks runs
    // TimescaleDB out of lock slots.
    pg.create_database("walload");
    pg.psql(
        "walload",
        "CREATE TABLE wal_pad (pad text); \
         INSERT INTO wal_pad SELECT string_agg(md5(random()::text), '') \
           FROM generate_series(1, 1000) AS i, generate_series(1, 59) GROUP BY i; \
         CREATE TABLE wal_load (n bigint, pad text);",
    );
    const LOAD_SQL: &str = "INSERT INTO wal_load SELECT 0, pad FROM wal_pad;\n";
    // One statement measured: the pace follows from its WAL.
    let before = wal_lsn_bytes(&pg);
    pg.psql("walload", LOAD_SQL);
    let per_statement = (wal_lsn_bytes(&pg) - before).max(1);
    let rate = env_u64("MESBAK_BENCH_WAL_MIBS", 24);
    let stop = Arc::new(AtomicBool::new(false));
    let mut psql = pg
        .engine()
        .docker()
        .args(["exec", "-i", &c, "psql", "-U", "admin", "-d", "walload"])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the load's psql");
    // psql echoes each statement's number once it ran: the writer keeps at
    // most a few ahead, so that stopping stops the load (pipes and docker
    // would otherwise hold gigabytes of WAL to be).
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let done = done.clone();
        let stdout = psql.stdout.take().expect("psql's stdout");
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if let Ok(n) = line.trim().parse() {
                    done.store(n, Ordering::Relaxed);
                }
            }
        })
    };
    let writer = {
        let stop = stop.clone();
        let done = done.clone();
        let mut stdin = psql.stdin.take().expect("psql's stdin");
        std::thread::spawn(move || {
            // Statement k goes at start + k * pace (0: as fast as psql takes
            // them); a full pipe holds the writer back when the server lags.
            let pace = match rate {
                0 => Duration::ZERO,
                _ => Duration::from_secs_f64(per_statement as f64 / (rate << 20) as f64),
            };
            // The table stays under about 256 MiB.
            let truncate_every = (256 << 20) / per_statement + 1;
            let start = Instant::now();
            let mut statements = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + pace * statements as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                while statements > done.load(Ordering::Relaxed) + IN_FLIGHT {
                    if stop.load(Ordering::Relaxed) {
                        return statements;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                statements += 1;
                let sql = if statements % truncate_every == 0 {
                    "TRUNCATE wal_load;\n"
                } else {
                    LOAD_SQL
                };
                let sql = format!("{sql}\\echo {statements}\n");
                if stdin.write_all(sql.as_bytes()).is_err() {
                    break; // psql is gone: its exit status tells why
                }
            }
            statements
        })
    };
    let wal_start = wal_lsn_bytes(&pg);
    let wal_files_start = wal_files(&config);
    let cpu_start = cpu_seconds(agent.pid());
    let started = Instant::now();
    let mut rpo = Vec::new();
    // Marker commits every 2 s; each one's RPO is the time until its
    // segment appears in the backup folder (measured from before the
    // commit: an upper bound).
    // (segment, commit time, committed while the base backup ran)
    let mut pending: Vec<(String, Instant, bool)> = Vec::new();
    let mut rpo_during_base = Vec::new();
    let mut marker = 0;
    let mut rss = 0;
    let markers = |pending: &mut Vec<(String, Instant, bool)>,
                   rpo: &mut Vec<Duration>,
                   rpo_during_base: &mut Vec<Duration>| {
        pending.retain(|(segment, committed, during_base)| {
            let waited = committed.elapsed();
            let done = shipped(&config, segment) || waited > RPO_GIVE_UP;
            if done {
                rpo.push(waited);
                if *during_base {
                    rpo_during_base.push(waited);
                }
            }
            !done
        });
    };
    let base_at = env_u64("MESBAK_BENCH_BASE_AT", seconds / 2);
    // The base backup's job, its start and (once over) its length.
    let mut base: Option<(zbus::zvariant::OwnedObjectPath, Instant)> = None;
    let mut base_took: Option<Duration> = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        if base_at > 0 && base.is_none() && started.elapsed() >= Duration::from_secs(base_at) {
            let job = agent.proxy().await.pitr_base_backup().await.unwrap();
            base = Some((job, Instant::now()));
        }
        if let (Some((job, since)), None) = (&base, base_took) {
            let state = job_proxy(agent.connection(), job.as_str())
                .await
                .state()
                .await
                .unwrap_or_default();
            if state != "running" {
                base_took = Some(since.elapsed());
            }
        }
        if started.elapsed() >= Duration::from_secs(2 * marker) {
            marker += 1;
            let committed = Instant::now();
            let during_base = base.is_some() && base_took.is_none();
            let segment = pg.psql(
                "mes",
                &format!(
                    "INSERT INTO public.rpo_marker (n) VALUES ({marker}); \
                     SELECT pg_walfile_name(pg_current_wal_insert_lsn());"
                ),
            );
            pending.push((segment, committed, during_base));
        }
        markers(&mut pending, &mut rpo, &mut rpo_during_base);
        rss = rss.max(peak_rss_kib(agent.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let statements = writer.join().expect("the writer");
    // Closed stdin: psql runs what the pipe still holds and ends.
    let out = psql.wait_with_output().expect("wait for the load's psql");
    reader.join().expect("the load's reader");
    assert!(
        out.status.success(),
        "the write load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elapsed = started.elapsed();
    let load_end = Instant::now();
    let wal_bytes = wal_lsn_bytes(&pg) - wal_start;
    let shipped_during = wal_files(&config).saturating_sub(wal_files_start);
    let cpu = cpu_seconds(agent.pid()) - cpu_start;
    // The backlog at the end of the load: the agent's count at its last
    // round, and the server's archive folder counted now.
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&bus, &["pitr", "status", "--json"])).unwrap();
    let waiting = status["waiting"].as_u64().unwrap_or(0);
    let archive = status["archive_directory"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let backlog: u64 = pg
        .engine()
        .docker()
        .args([
            "exec",
            &c,
            "sh",
            "-c",
            "ls -- \"$1\" | grep -cE '^[0-9A-F]{24}$'; true",
        ])
        .args(["mesbak", &archive])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    // The markers still waiting are waited for (the load is over: their
    // segments are in the backlog counted above).
    while !pending.is_empty() {
        markers(&mut pending, &mut rpo, &mut rpo_during_base);
        rss = rss.max(peak_rss_kib(agent.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A base backup still running ends first (it must succeed).
    if let Some((job, since)) = base.take() {
        let took = finished(&agent, job, since).await;
        base_took.get_or_insert(Duration::from_secs_f64(took));
    }
    // What is left is shipped by a sync.
    ctl(&bus, &["pitr", "sync"]);
    let drained = load_end.elapsed();
    rss = rss.max(peak_rss_kib(agent.pid()));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    rpo.sort();
    rpo_during_base.sort();
    let worst = rpo.last().copied().unwrap_or_default();
    let median = rpo.get(rpo.len() / 2).copied().unwrap_or_default();
    let wal_rate = mib(wal_bytes) / elapsed.as_secs_f64();
    let segment = 16u64 << 20;
    let rpo_target = Duration::from_secs(SHIP_INTERVAL + 10);
    // Keeping up: what is left drains within the RPO target at the load's
    // pace, and no marker waited longer than that.
    let keeps_up =
        mib(backlog * segment) <= rpo_target.as_secs_f64() * wal_rate && worst <= rpo_target;
    println!(
        "pitr on {}: {:.0} s of load ({statements} statements of ~{:.1} MiB of WAL, paced at {}; load average {})",
        match flavor {
            Flavor::Postgres15 => "PostgreSQL 15",
            Flavor::TimescaleDb => "TimescaleDB 2.19 / PostgreSQL 17",
        },
        elapsed.as_secs_f64(),
        mib(per_statement),
        match rate {
            0 => "no pace".to_owned(),
            _ => format!("{rate} MiB/s"),
        },
        load_average()
    );
    println!(
        "  WAL written                      {:8.1} MiB  {wal_rate:6.1} MiB/s (target >= 20)",
        mib(wal_bytes),
    );
    println!(
        "  WAL shipped during the load      {:8.1} MiB  {:6.1} MiB/s ({shipped_during} segments)",
        mib(shipped_during * segment),
        mib(shipped_during * segment) / elapsed.as_secs_f64()
    );
    println!(
        "  agent CPU during the load        {:8.1} s     {:6.0} ms per segment shipped ({:.0}% of one core)",
        cpu,
        cpu * 1000.0 / shipped_during.max(1) as f64,
        cpu * 100.0 / elapsed.as_secs_f64()
    );
    println!(
        "  left in the server's archive     {backlog:8} file(s) at the end of the load \
         ({waiting} at the agent's last round; all shipped {:.1} s after the load)",
        drained.as_secs_f64()
    );
    println!(
        "  RPO (commit -> encrypted segment) median {:.1} s, worst {:.1} s over {} markers (target <= {} s)",
        median.as_secs_f64(),
        worst.as_secs_f64(),
        rpo.len(),
        rpo_target.as_secs()
    );
    if let Some(took) = base_took {
        println!(
            "  RPO while a base backup ran      median {:.1} s, worst {:.1} s over {} markers (base backup started {base_at} s into the load, took {:.1} s)",
            rpo_during_base
                .get(rpo_during_base.len() / 2)
                .copied()
                .unwrap_or_default()
                .as_secs_f64(),
            rpo_during_base
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64(),
            rpo_during_base.len(),
            took.as_secs_f64()
        );
    }
    println!(
        "  agent peak RSS during the load   {:8.1} MiB (target < 64)",
        rss as f64 / 1024.0
    );
    println!(
        "  keeps up                         {}",
        if keeps_up { "yes" } else { "NO" }
    );
    // A figure below 20 MiB/s says nothing about the target: fail loudly.
    assert!(
        wal_rate >= 20.0,
        "the load generator wrote only {wal_rate:.1} MiB/s of WAL: shipping at 20 MiB/s is unproven"
    );

    // Point-in-time restore against a plain restore of a dump of the same
    // data. The load's database goes, and a fresh base backup is taken so
    // that the comparison does not hinge on how much WAL the load wrote:
    // the recovery replays from that base backup to the target.
    // `mes` is grown to MESBAK_BENCH_RESTORE_MIB first (default 150): on
    // the fixture's few MiB, the scratch cluster's start-up alone would
    // be the ratio.
    pg.drop_database("walload");
    let restore_mib = env_u64("MESBAK_BENCH_RESTORE_MIB", 150);
    if restore_mib > 0 {
        pg.load_bulk("mes", restore_mib);
    }
    let base_lsn = wal_lsn_bytes(&pg);
    ctl(&bus, &["pitr", "base-backup"]);
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&bus, &["pitr", "status", "--json"])).unwrap();
    let base = status["base_backups"]
        .as_array()
        .and_then(|bases| bases.last())
        .and_then(|base| base["id"].as_str())
        .unwrap_or("?")
        .to_owned();
    pg.psql("mes", "INSERT INTO public.rpo_marker (n) VALUES (0);");
    let target = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    let replayed = wal_lsn_bytes(&pg) - base_lsn;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&bus, &["pitr", "sync"]);
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    let dump_id = outcome.files[0].clone();
    // Plain and point-in-time restores in turn, MESBAK_BENCH_RESTORE_ROUNDS
    // times (default 3): the machine is shared, single pairs scatter. Each
    // pair without its safety backup (the restores alone), then with it.
    let rounds = env_u64("MESBAK_BENCH_RESTORE_ROUNDS", 3).max(1);
    let mut runs: [Vec<Restored>; 4] = Default::default();
    // Each restore writes its database's size in WAL. The shipper's timer
    // (every 10 s) would ship it during one restore and after another, by
    // phase alone (up to 3 s of CPU on these cores, which fell on four of
    // five point-in-time restores and one of five plain ones in a run):
    // the server's archive folder stays closed while a restore is timed,
    // its WAL waits in pg_wal, and is shipped after, out of both.
    let folder = pg.psql(
        "postgres",
        "SELECT current_setting('data_directory') || '/mesbak_wal';",
    );
    let close = || pg.exec(&format!("chmod 000 '{folder}'"), "close the archive folder");
    let open_and_ship = || {
        pg.exec(&format!("chmod 700 '{folder}'"), "open the archive folder");
        ctl(&bus, &["restore", "--drop-previous", "--yes"]);
        ctl(&bus, &["pitr", "sync"]);
    };
    for _ in 0..rounds {
        for (run, (to_time, safety)) in [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
        {
            let options = RestoreOptions {
                skip_safety_backup: Some(!safety),
            };
            close();
            let t = Instant::now();
            let job = match to_time {
                false => agent.proxy().await.restore(&dump_id, options).await,
                true => agent.proxy().await.restore_to_time(&target, options).await,
            };
            let seconds = finished(&agent, job.unwrap(), t).await;
            runs[run].push(Restored {
                seconds,
                downtime: stopped_writer.last_downtime(),
            });
            open_and_ship();
        }
    }
    let [plain, pitr, plain_safe, pitr_safe] = runs;
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let each = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rss = rss.max(peak_rss_kib(agent.pid()));
    let size = pg.database_size("mes");
    keep_agent_log(agent.log_path(), &format!("pitr-{flavor:?}.log"));

    println!(
        "  point-in-time target             {target}: from base backup {base}, \
         at most {:.1} MiB of WAL to replay",
        mib(replayed)
    );
    println!(
        "  agent peak RSS with the restores {:8.1} MiB (target < 64)",
        rss as f64 / 1024.0
    );
    // One line per kind of restore: seconds and the writer's downtime,
    // the median and each round.
    let report = |label: &str, restored: &[Restored]| {
        let seconds: Vec<f64> = restored.iter().map(|r| r.seconds).collect();
        let downtime: Vec<f64> = restored.iter().map(|r| r.downtime).collect();
        println!(
            "    {label:<31}{:8.2} s  [{}], writer down {:.2} s [{}]",
            median(&seconds),
            each(&seconds),
            median(&downtime),
            each(&downtime),
        );
    };
    for (what, plain, pitr) in [
        ("without safety backups", &plain, &pitr),
        (
            "with safety backups (as an operator runs them)",
            &plain_safe,
            &pitr_safe,
        ),
    ] {
        println!("  restores {what} ({:.0} MiB database):", mib(size));
        report("plain restore of a dump", plain);
        report("point-in-time restore", pitr);
        let ratios: Vec<f64> = pitr
            .iter()
            .zip(plain.iter())
            .map(|(p, q)| p.seconds / q.seconds)
            .collect();
        println!(
            "    ratio pitr / plain             {:8.2}   [{}] (median of the rounds; target <= 1.5)",
            median(&ratios),
            each(&ratios)
        );
    }
}

/// One timed restore.
struct Restored {
    seconds: f64,
    /// The writer's downtime during it.
    downtime: f64,
}

/// Seconds from `started` until `job` succeeded.
async fn finished(agent: &Agent, job: zbus::zvariant::OwnedObjectPath, started: Instant) -> f64 {
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    started.elapsed().as_secs_f64()
}
