//! Database backup and restore, measured side by side in one run against
//! the baselines DESIGN.md and issue 15 name, as ratios (the machine is
//! shared and noisy, so every round runs each side back to back):
//!
//! - backup: bare `pg_dump > /dev/null`; the old way `pg_dump | gzip |
//!   openssl enc -aes-256-cbc`; the agent's backup with its default gzip
//!   and with zstd; output size against `gzip -6`; the agent's peak RSS;
//!   CPU-seconds per GiB of SQL of the agent and of pg_dump + the server
//!   (the database container's cgroup), so the ratios can be read for a
//!   server with more cores;
//! - restore: the agent's whole restore (authentication, safety backup,
//!   load into a new database, row checks, swap) against the old way
//!   `openssl -d | gunzip | psql` into an empty database, and the downtime
//!   of a writer container (`restore.stop_containers`) during it.
//!
//! Both servers, one after the other: PostgreSQL 15 (the bulk rows in a
//! partitioned table) and the plant's TimescaleDB on PostgreSQL 17 (the bulk
//! rows in a hypertable; its baseline restore follows Timescale's procedure,
//! `timescaledb_pre_restore()` / `... | psql` / `timescaledb_post_restore()`).
//!
//! `cargo bench -p mesbak-tests --bench database`; `MESBAK_BENCH_MIB`
//! sets the size of the dump (default 300), `MESBAK_BENCH_ROUNDS` the
//! rounds (default 3; each round is printed, the summary gives medians),
//! `MESBAK_BENCH_SERVERS` which servers (`postgres15,timescaledb`, the
//! default). `MESBAK_BENCH_LEVELS=1,2,4,6,zstd:1,zstd:3` first compares
//! compression levels (gzip unless prefixed `zstd:`).
//! `MESBAK_BENCH_AGENT_LOG=<dir>` keeps a copy of the agent's log of each
//! round (the restore's stages, timed). `MESBAK_BENCH_LOAD_SESSIONS=N`
//! restores in N psql sessions (`restore.load_sessions`; default: the
//! agent's, 0, one per core; 1 loads in one session).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesbak_interface::RestoreOptions;
use mesbak_tests::measure::*;
use mesbak_tests::*;

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

fn docker_text(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// CPU seconds the processes of a container used so far (the server, and
/// pg_dump / psql run in it through `docker exec`), from its cgroup: v1
/// (cpuacct) or v2 (cgroupfs or systemd driver).
struct ContainerCpu {
    path: std::path::PathBuf,
    v2: bool,
}

impl ContainerCpu {
    fn of(container: &str) -> ContainerCpu {
        let id = docker_text(&["inspect", "-f", "{{.Id}}", container]);
        let candidates = [
            (
                format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"),
                false,
            ),
            (
                format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
                false,
            ),
            (format!("/sys/fs/cgroup/docker/{id}/cpu.stat"), true),
            (
                format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
                true,
            ),
        ];
        candidates
            .into_iter()
            .find(|(path, _)| Path::new(path).exists())
            .map(|(path, v2)| ContainerCpu {
                path: path.into(),
                v2,
            })
            .unwrap_or_else(|| {
                panic!("cannot find the cgroup CPU counter of container {container}")
            })
    }

    fn seconds(&self) -> f64 {
        let text = std::fs::read_to_string(&self.path).expect("read the cgroup CPU counter");
        if self.v2 {
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("usage_usec in cpu.stat")
                / 1e6
        } else {
            text.trim().parse::<f64>().expect("cpuacct.usage") / 1e9
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// What one of the agent's backups cost.
struct AgentBackup {
    wall: f64,
    agent_cpu: f64,
    server_cpu: f64,
    size: u64,
    id: String,
}

async fn agent_backup(agent: &Agent, config: &AgentConfig, server: &ContainerCpu) -> AgentBackup {
    let proxy = agent.proxy().await;
    let (agent_before, server_before) = (cpu_seconds(agent.pid()), server.seconds());
    let started = Instant::now();
    let job = proxy.backup("database").await.expect("start a backup");
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    let wall = started.elapsed().as_secs_f64();
    assert!(outcome.success, "{}", outcome.message);
    let id = outcome.files[0].clone();
    AgentBackup {
        wall,
        agent_cpu: cpu_seconds(agent.pid()) - agent_before,
        server_cpu: server.seconds() - server_before,
        size: std::fs::metadata(config.backup_dir().join("database").join(&id))
            .expect("backup file")
            .len(),
        id,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let size_mib = env_u64("MESBAK_BENCH_MIB", 300);
    let rounds = env_u64("MESBAK_BENCH_ROUNDS", 3).max(1);
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

/// One round's figures, in seconds, bytes and KiB.
#[derive(Default)]
struct Round {
    bare: f64,
    bare_server_cpu: f64,
    old_way: f64,
    gzip: f64,
    gzip_agent_cpu: f64,
    gzip_server_cpu: f64,
    gzip_size: u64,
    zstd: f64,
    zstd_agent_cpu: f64,
    zstd_size: u64,
    rss_backup_kib: u64,
    rss_zstd_kib: u64,
    rss_restore_kib: u64,
    baseline_restore: f64,
    restore: f64,
    downtime: f64,
}

async fn bench(flavor: Flavor, size_mib: u64, rounds: u64) {
    let work = tempfile::tempdir().expect("temporary folder");
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    eprintln!("loading about {size_mib} MiB of time-series rows...");
    pg.load_bulk("mes", size_mib);
    let dump_bytes = pg.pg_dump_size("mes");
    let gib = dump_bytes as f64 / f64::from(1u32 << 30);
    let c = pg.name().to_owned();
    let server = ContainerCpu::of(&c);
    let sql_gz = work.path().join("dump.sql.gz");
    let old = work.path().join("old.sql.gz.enc");
    let server_name = match flavor {
        Flavor::Postgres15 => "PostgreSQL 15",
        Flavor::TimescaleDb => "TimescaleDB 2.19 / PostgreSQL 17 (bulk rows in a hypertable)",
    };
    shell(&format!(
        "docker exec {c} pg_dump -U admin mes | gzip -6 > {}",
        sql_gz.display()
    ));
    let gzip6_bytes = std::fs::metadata(&sql_gz).expect("gzip output").len();

    if let Ok(levels) = std::env::var("MESBAK_BENCH_LEVELS") {
        compare_levels(&bus, &pg, &server, &levels, gzip6_bytes, gib).await;
    }

    let writer = Writer::start();
    let config = {
        let mut config = AgentConfig::for_postgres(&pg)
            .with("restore.stop_containers", vec![writer.name.clone()]);
        config.unset("backup.compression_level");
        load_sessions_from_env(&mut config);
        config
    };
    let zstd_config = {
        let mut config = AgentConfig::for_postgres(&pg).with("backup.compression", "zstd");
        config.unset("backup.compression_level");
        config
    };
    println!(
        "database on {server_name}: {:.0} MiB of SQL, {rounds} rounds; load average at the start {}",
        mib(dump_bytes),
        load_average()
    );
    let mut all = Vec::new();
    for round in 1..=rounds {
        let mut r = Round::default();
        let before = server.seconds();
        r.bare = shell(&format!("docker exec {c} pg_dump -U admin mes > /dev/null")).as_secs_f64();
        r.bare_server_cpu = server.seconds() - before;
        r.old_way = shell(&format!(
            "docker exec {c} pg_dump -U admin mes | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass pass:bench -out {}",
            old.display()
        ))
        .as_secs_f64();

        // The agent with its defaults: a gzip backup, then a restore of it
        // with its safety backup, the writer stopped by the agent.
        let agent = Agent::spawn(&bus, &config).await;
        let made = agent_backup(&agent, &config, &server).await;
        r.rss_backup_kib = peak_rss_kib(agent.pid());
        (r.gzip, r.gzip_agent_cpu, r.gzip_server_cpu, r.gzip_size) =
            (made.wall, made.agent_cpu, made.server_cpu, made.size);

        let db = format!("bench_plain_{round}");
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
        r.baseline_restore = shell(&format!(
            "{pre}openssl enc -d -aes-256-cbc -pbkdf2 -pass pass:bench -in {} | gunzip | docker exec -i {c} psql -X -q -v ON_ERROR_STOP=1 -U admin -d {db} > /dev/null{post}",
            old.display()
        ))
        .as_secs_f64();
        pg.drop_database(&db);

        let proxy = agent.proxy().await;
        let started = Instant::now();
        let job = proxy
            .restore(&made.id, RestoreOptions::default())
            .await
            .expect("start a restore");
        let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
        r.restore = started.elapsed().as_secs_f64();
        assert!(outcome.success, "{}", outcome.message);
        r.downtime = writer.last_downtime();
        r.rss_restore_kib = peak_rss_kib(agent.pid());
        keep_agent_log(
            agent.log_path(),
            &format!("database-{flavor:?}-{round}.log"),
        );
        let drop = proxy
            .drop_previous("")
            .await
            .expect("drop the kept database");
        let (ok, message) = wait_job(agent.connection(), &drop).await;
        assert!(ok, "{message}");
        // Only the round's backup is kept: the disk stays flat.
        for entry in std::fs::read_dir(config.backup_dir().join("database")).expect("backups") {
            let _ = std::fs::remove_file(entry.expect("entry").path());
        }
        drop_agent(agent);

        let agent = Agent::spawn(&bus, &zstd_config).await;
        let made = agent_backup(&agent, &zstd_config, &server).await;
        r.rss_zstd_kib = peak_rss_kib(agent.pid());
        (r.zstd, r.zstd_agent_cpu, r.zstd_size) = (made.wall, made.agent_cpu, made.size);
        let _ = std::fs::remove_file(zstd_config.backup_dir().join("database").join(&made.id));
        drop_agent(agent);

        println!(
            "  round {round}: pg_dump {:.2} s | old {:.2} s | mesbak gzip {:.2} s ({:.2}x pg_dump, {:.2}x faster than old, agent {:.2} CPU-s, RSS {:.1} MiB) | zstd {:.2} s ({:.2}x) | restore {:.2} s vs openssl|gunzip|psql {:.2} s = {:.2}x, writer down {:.2} s | load {}",
            r.bare,
            r.old_way,
            r.gzip,
            r.gzip / r.bare,
            r.old_way / r.gzip,
            r.gzip_agent_cpu,
            r.rss_backup_kib as f64 / 1024.0,
            r.zstd,
            r.zstd / r.bare,
            r.restore,
            r.baseline_restore,
            r.restore / r.baseline_restore,
            r.downtime,
            load_average()
        );
        all.push(r);
    }
    drop(writer);

    let m = |f: &dyn Fn(&Round) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
    let each = |f: &dyn Fn(&Round) -> f64| {
        all.iter()
            .map(|r| format!("{:.2}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("database on {server_name}: summary (median; each round in brackets)");
    println!(
        "  bare pg_dump > /dev/null          {:7.2} s  {:6.1} MiB/s  [{}]",
        m(&|r| r.bare),
        mib(dump_bytes) / m(&|r| r.bare),
        each(&|r| r.bare)
    );
    println!(
        "  pg_dump | gzip | openssl (old)    {:7.2} s  [{}]",
        m(&|r| r.old_way),
        each(&|r| r.old_way)
    );
    println!(
        "  mesbak backup, gzip (default)     {:7.2} s  [{}]",
        m(&|r| r.gzip),
        each(&|r| r.gzip)
    );
    println!(
        "  ratio mesbak / bare pg_dump       {:7.2}   [{}]  (target <= 1.10)",
        m(&|r| r.gzip / r.bare),
        each(&|r| r.gzip / r.bare)
    );
    println!(
        "  speed-up over the old pipeline    {:7.2}x  [{}]  (target >= 2.50)",
        m(&|r| r.old_way / r.gzip),
        each(&|r| r.old_way / r.gzip)
    );
    println!(
        "  size mesbak gzip / gzip -6        {:7.3}   ({:.1} MiB vs {:.1} MiB; target <= 1.00)",
        all[0].gzip_size as f64 / gzip6_bytes as f64,
        mib(all[0].gzip_size),
        mib(gzip6_bytes)
    );
    println!(
        "  mesbak backup, zstd               {:7.2} s  = {:.2}x pg_dump [{}], size {:.3}x gzip -6",
        m(&|r| r.zstd),
        m(&|r| r.zstd / r.bare),
        each(&|r| r.zstd / r.bare),
        all[0].zstd_size as f64 / gzip6_bytes as f64
    );
    println!(
        "  CPU-s per GiB of SQL: agent gzip {:.2} [{}], agent zstd {:.2}; pg_dump + server {:.2} under mesbak [{}], {:.2} bare",
        m(&|r| r.gzip_agent_cpu / gib),
        each(&|r| r.gzip_agent_cpu / gib),
        m(&|r| r.zstd_agent_cpu / gib),
        m(&|r| r.gzip_server_cpu / gib),
        each(&|r| r.gzip_server_cpu / gib),
        m(&|r| r.bare_server_cpu / gib)
    );
    println!(
        "  agent peak RSS (MiB)              {:7.1}   after backup [{}], zstd [{}], after restore [{}] (target < 64)",
        m(&|r| r.rss_restore_kib as f64 / 1024.0),
        each(&|r| r.rss_backup_kib as f64 / 1024.0),
        each(&|r| r.rss_zstd_kib as f64 / 1024.0),
        each(&|r| r.rss_restore_kib as f64 / 1024.0)
    );
    println!(
        "  openssl -d | gunzip | psql        {:7.2} s  [{}]  (TimescaleDB: with pre/post_restore)",
        m(&|r| r.baseline_restore),
        each(&|r| r.baseline_restore)
    );
    println!(
        "  mesbak restore with safety backup {:7.2} s  [{}]",
        m(&|r| r.restore),
        each(&|r| r.restore)
    );
    println!(
        "  ratio restore / openssl|gunzip|psql {:5.2}   [{}]  (target <= 1.20)",
        m(&|r| r.restore / r.baseline_restore),
        each(&|r| r.restore / r.baseline_restore)
    );
    println!(
        "  writer downtime during restore    {:7.2} s  [{}] ({:.0} % of the restore)",
        m(&|r| r.downtime),
        each(&|r| r.downtime),
        100.0 * m(&|r| r.downtime / r.restore)
    );
    println!("  load average at the end {}", load_average());
}

/// Stops an agent and waits until its bus name is free for the next one.
fn drop_agent(agent: Agent) {
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
}

/// One backup per level: time, size against `gzip -6`, the agent's CPU.
async fn compare_levels(
    bus: &Bus,
    pg: &Postgres,
    server: &ContainerCpu,
    levels: &str,
    gzip6_bytes: u64,
    gib: f64,
) {
    let bare = shell(&format!(
        "docker exec {} pg_dump -U admin mes > /dev/null",
        pg.name()
    ))
    .as_secs_f64();
    println!("  levels: bare pg_dump {bare:.2} s");
    for item in levels.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let (compression, level) = item.split_once(':').unwrap_or(("gzip", item));
        let level: i64 = level.parse().expect("MESBAK_BENCH_LEVELS: numbers");
        let config = AgentConfig::for_postgres(pg)
            .with("backup.compression", compression)
            .with("backup.compression_level", level);
        let agent = Agent::spawn(bus, &config).await;
        let made = agent_backup(&agent, &config, server).await;
        println!(
            "  {compression} level {level}: {:.2} s = {:.2}x bare pg_dump, size {:.3}x gzip -6, agent {:.2} CPU-s per GiB, peak RSS {:.1} MiB",
            made.wall,
            made.wall / bare,
            made.size as f64 / gzip6_bytes as f64,
            made.agent_cpu / gib,
            peak_rss_kib(agent.pid()) as f64 / 1024.0
        );
        drop_agent(agent);
    }
}
