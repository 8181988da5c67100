//! What is particular to the plant's TimescaleDB server: the extension's
//! version, its background workers, hypertables after a restore. (Every
//! database suite also runs on it: `timescaledb::*` in the other files.)

use std::time::{Duration, Instant};

use mesbak_tests::*;

/// A TimescaleDB server with the fixture, an agent and one backup.
struct Setup {
    bus: Bus,
    pg: Postgres,
    config: AgentConfig,
    agent: Agent,
    backup_id: String,
}

async fn setup() -> Setup {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(Flavor::TimescaleDb);
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    Setup {
        bus,
        pg,
        config,
        agent,
        backup_id: outcome.files[0].clone(),
    }
}

/// TimescaleDB's scheduler sessions connected to `db`.
fn schedulers(pg: &Postgres, db: &str) -> usize {
    pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = {} \
             AND backend_type = 'TimescaleDB Background Worker Scheduler';",
            quote_literal(db)
        ),
    )
    .parse()
    .unwrap()
}

fn wait_for_scheduler(pg: &Postgres, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while schedulers(pg, db) == 0 {
        assert!(
            Instant::now() < deadline,
            "no TimescaleDB scheduler on {db} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_the_server_cannot_provide_is_refused_before_anything_is_touched() {
    let s = setup().await;
    let version = s.pg.psql(
        "mes",
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb';",
    );
    let sidecar = s
        .config
        .backup_dir()
        .join("database")
        .join(format!("{}.json", s.backup_id));
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(meta["timescaledb_version"], version.as_str());
    meta["timescaledb_version"] = "2.99.0".into();
    std::fs::write(&sidecar, serde_json::to_vec(&meta).unwrap()).unwrap();

    let live = s.pg.fingerprint("mes");
    let databases = s.pg.databases();
    for args in [
        vec!["restore", s.backup_id.as_str(), "--yes"],
        vec!["test-restore", s.backup_id.as_str()],
    ] {
        let out = mesbakctl(&s.bus).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("TimescaleDB 2.99.0") && stderr.contains(&version),
            "both versions named: {stderr}"
        );
        assert!(stderr.contains("nothing was changed"), "{stderr}");
    }
    s.pg.fingerprint("mes")
        .assert_same(&live, "after the refusals");
    assert_eq!(s.pg.databases(), databases);
    let backups = s.agent.proxy().await.list_backups().await.unwrap();
    assert_eq!(backups.len(), 1, "no safety backup: {backups:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timescaledb_backup_onto_a_server_without_timescaledb_is_refused() {
    let s = setup().await;
    let plain = Postgres::start_on(Flavor::Postgres15);
    plain.drop_database("mes");
    let config = AgentConfig::for_postgres(&plain)
        .with("backup_dir", s.config.backup_dir().to_str().unwrap())
        .with("encryption.key_file", s.config.key_file().to_str().unwrap());
    let bus = Bus::start();
    let _agent = Agent::spawn(&bus, &config).await;
    let out = mesbakctl(&bus)
        .args(["restore", &s.backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no TimescaleDB"), "{stderr}");
    assert!(!plain.has_database("mes"));
    assert!(
        !plain.databases().iter().any(|d| d.starts_with("mes_")),
        "{:?}",
        plain.databases()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn background_workers_neither_block_the_swap_nor_stay_stopped() {
    let s = setup().await;
    // The scheduler holds a session on the live database: PostgreSQL would
    // refuse to rename it.
    wait_for_scheduler(&s.pg, "mes");
    let original = s.pg.fingerprint("mes");
    s.pg.psql(
        "mes",
        "DELETE FROM mes_core.machine_metric WHERE time < '2026-03-10';",
    );
    let out = mesbakctl(&s.bus)
        .args(["restore", &s.backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.pg.fingerprint("mes")
        .assert_same(&original, "hypertables restored");
    // The workers run again on the restored database, and it takes new
    // chunks as a live historian does.
    wait_for_scheduler(&s.pg, "mes");
    let chunks = |pg: &Postgres| -> u64 {
        pg.psql(
            "mes",
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'machine_metric';",
        )
        .parse()
        .unwrap()
    };
    let before = chunks(&s.pg);
    s.pg.psql(
        "mes",
        "INSERT INTO mes_core.machine_metric (time, asset_id, metric, value) \
         SELECT '2027-01-01 00:00:00+00', min(asset_id), 'after restore', 1 FROM mes_core.asset_definition;",
    );
    assert_eq!(chunks(&s.pg), before + 1);
    assert_eq!(
        s.pg.psql("mes", "SHOW timescaledb.restoring;"),
        "off",
        "the restored database was left in restoring mode"
    );
}
