//! How the agent reaches the database server. The standard stack gives it
//! nothing but Docker (every other suite's servers have `--network none`,
//! no published port, no shared socket); here: a socket that asks for a
//! password, and host mode (`database.container = ""`, the host's own
//! pg_dump and psql over TCP).

use std::process::Command;

use mesbak_tests::*;

/// Files in the container's /tmp whose name marks them as mesbak's.
fn password_files_in(pg: &Postgres) -> String {
    let out = Command::new("docker")
        .args(["exec", pg.name(), "sh", "-c", "ls -a /tmp"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|name| name.starts_with(".pgpass-"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn state_files(config: &AgentConfig) -> Vec<String> {
    std::fs::read_dir(config.state_dir())
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_asks_for_a_password_gets_it_from_a_private_file() {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(Flavor::TimescaleDb);
    // The socket now wants the password, as a hardened server would.
    let status = Command::new("docker")
        .args([
            "exec",
            pg.name(),
            "sh",
            "-c",
            "sed -i 's/^local\\(.*\\)trust$/local\\1scram-sha-256/' \"$PGDATA/pg_hba.conf\"",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    pg.psql("postgres", "SELECT pg_reload_conf();");
    let probe = Command::new("docker")
        .args([
            "exec",
            pg.name(),
            "psql",
            "-w",
            "-U",
            ADMIN,
            "-d",
            "mes",
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(!probe.status.success(), "the socket still trusts");

    // Without the password: one sentence naming the setting.
    let mut config = AgentConfig::for_postgres(&pg);
    config.unset("database.password_file");
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Config", "{}", outcome.message);
    assert!(
        outcome.message.contains("database.password_file"),
        "{}",
        outcome.message
    );
    drop(agent);

    // With it: backup and test restore work, and the file is gone afterwards.
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    for operation in ["backup", "test-restore"] {
        let proxy = agent.proxy().await;
        let job = match operation {
            "backup" => proxy.backup("database").await.unwrap(),
            _ => proxy.test_restore("").await.unwrap(),
        };
        let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
        assert!(outcome.success, "{}", outcome.message);
        assert_eq!(
            password_files_in(&pg),
            "",
            "a password file was left behind"
        );
    }
    let log = std::fs::read_to_string(config.dir().join("agent.log")).unwrap_or_default();
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(pg.password())).collect();
    assert!(
        leaks.is_empty(),
        "the password appears in the agent's log: {leaks:?}"
    );
}

/// Host mode: PostgreSQL 15 on the host's network (the host has Debian's
/// PostgreSQL 15 client programs; a TimescaleDB/PG17 server needs
/// version-17 programs, which Debian 12 does not ship, so host mode is
/// tested on PostgreSQL 15).
#[tokio::test(flavor = "multi_thread")]
async fn host_mode_backs_up_restores_and_tests_over_tcp() {
    let bus = Bus::start();
    let pg = Postgres::start_reachable(Flavor::Postgres15);
    pg.load_fixture("mes");
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    let original = pg.fingerprint("mes");
    let backup_id = agent.backup_database().await;

    pg.psql("mes", "DELETE FROM mes_audit.change_log;");
    let out = mesbakctl(&bus)
        .args(["restore", &backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.fingerprint("mes")
        .assert_same(&original, "host-mode restore");

    let out = mesbakctl(&bus).arg("test-restore").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // TCP wants the password: it went through a 0600 file in the state
    // folder, removed when each job ended.
    let leftovers: Vec<String> = state_files(&config)
        .into_iter()
        .filter(|name| name.starts_with(".pgpass-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
