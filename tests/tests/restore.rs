//! Restores that cannot lose data: every failure before the swap leaves the
//! live database exactly as it was and the writers as they were found.

use std::process::Command;
use std::time::{Duration, Instant};

use mesbak_interface::RestoreOptions;
use mesbak_tests::*;

/// The fixture, a writer, an agent that stops the writer on restore, and
/// one database backup.
struct Setup {
    bus: Bus,
    pg: Postgres,
    writer: Writer,
    config: AgentConfig,
    agent: Agent,
    backup_id: String,
}

async fn setup(flavor: Flavor, bulk_mib: u64) -> Setup {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    if bulk_mib > 0 {
        pg.load_bulk("mes", bulk_mib);
    }
    let writer = Writer::start();
    let config =
        AgentConfig::for_postgres(&pg).with("restore.stop_containers", vec![writer.name.clone()]);
    let agent = Agent::spawn(&bus, &config).await;
    let backup_id = agent.backup_database().await;
    Setup {
        bus,
        pg,
        writer,
        config,
        agent,
        backup_id,
    }
}

/// Starts a restore of the setup's backup (no safety backup) and waits
/// until 8 MiB are loaded, to interrupt it there.
async fn restore_until_loading(s: &Setup) -> zbus::zvariant::OwnedObjectPath {
    let job = s
        .agent
        .proxy()
        .await
        .restore(
            &s.backup_id,
            RestoreOptions {
                skip_safety_backup: Some(true),
            },
        )
        .await
        .unwrap();
    wait_for_progress(s.agent.connection(), &job, "restoring ", 8 << 20).await;
    job
}

/// Changes rows, a sequence and a role after the backup.
fn change_data(pg: &Postgres) {
    pg.psql(
        "mes",
        "UPDATE mes_core.asset_definition SET notes = 'changed after the backup';
         DELETE FROM mes_audit.change_log WHERE true;
         CREATE TABLE mes_custom.added_later (id int);
         CREATE ROLE added_later_role;",
    );
}

fn restore_databases(pg: &Postgres) -> Vec<String> {
    pg.databases()
        .into_iter()
        .filter(|db| db.contains("_restore_") || db.contains("_testrestore_"))
        .collect()
}

async fn restore_brings_back_the_backup_and_keeps_the_previous_database(flavor: Flavor) {
    let s = setup(flavor, 0).await;
    let original = s.pg.fingerprint("mes");
    change_data(&s.pg);
    let changed = s.pg.fingerprint("mes");
    assert_ne!(original, changed);
    let writer_started = s.writer.started_at();

    let out = mesbakctl(&s.bus)
        .args(["restore", &s.backup_id, "--yes"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("--rollback") && stdout.contains("--drop-previous"),
        "{stdout}"
    );

    // Data, sequences, owners and grants as backed up; roles the backup did
    // not know are left alone (restores never drop roles).
    let mut restored = s.pg.fingerprint("mes");
    restored.roles.remove("added_later_role");
    restored.assert_same(&original, "after restore");
    // The writer was stopped and started again.
    assert!(s.writer.is_running());
    assert_ne!(
        s.writer.started_at(),
        writer_started,
        "the writer was not stopped"
    );
    // The old database is kept under a dated name; a safety backup exists.
    let kept: Vec<String> =
        s.pg.databases()
            .into_iter()
            .filter(|d| d.starts_with("mes_previous_"))
            .collect();
    assert_eq!(kept.len(), 1, "{:?}", s.pg.databases());
    s.pg.fingerprint(&kept[0])
        .assert_same(&changed, "the kept previous database");
    let backups = s.agent.proxy().await.list_backups().await.unwrap();
    assert!(
        backups.iter().any(|b| b.id.contains("pre-restore")),
        "{backups:?}"
    );
    assert!(restore_databases(&s.pg).is_empty());

    // Rollback puts the changed database back, once; drop-previous removes
    // the restored one.
    let out = mesbakctl(&s.bus)
        .args(["restore", "--rollback", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.pg.fingerprint("mes")
        .assert_same(&changed, "after rollback");
    let out = mesbakctl(&s.bus)
        .args(["restore", "--rollback", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second rollback was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already rolled back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.pg.fingerprint("mes")
        .assert_same(&changed, "after a refused second rollback");
    let out = mesbakctl(&s.bus)
        .args(["restore", "--drop-previous", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<String> =
        s.pg.databases()
            .into_iter()
            .filter(|d| d.starts_with("mes_"))
            .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = mesbakctl(&s.bus)
        .args(["restore", "--drop-previous", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database kept"));
}

async fn a_damaged_backup_or_a_wrong_key_changes_nothing(flavor: Flavor) {
    let s = setup(flavor, 0).await;
    change_data(&s.pg);
    let live = s.pg.fingerprint("mes");
    let databases = s.pg.databases();
    let writer_started = s.writer.started_at();
    let file = s.config.backup_dir().join("database").join(&s.backup_id);
    let good = std::fs::read(&file).unwrap();

    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&file, &damaged).unwrap();
    let job = s
        .agent
        .proxy()
        .await
        .restore(&s.backup_id, RestoreOptions::default())
        .await
        .unwrap();
    let outcome = wait_job_outcome(s.agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Integrity", "{}", outcome.message);
    assert!(outcome.message.contains("damaged"), "{}", outcome.message);

    // Truncated.
    std::fs::write(&file, &good[..good.len() - 100]).unwrap();
    let job = s
        .agent
        .proxy()
        .await
        .restore(&s.backup_id, RestoreOptions::default())
        .await
        .unwrap();
    let outcome = wait_job_outcome(s.agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert_eq!(outcome.error_name, "Integrity", "{}", outcome.message);

    // The right file, the wrong key.
    std::fs::write(&file, &good).unwrap();
    write_private(&s.config.key_file(), b"another key entirely\n").unwrap();
    let out = mesbakctl(&s.bus)
        .args(["restore", &s.backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key does not match"), "{stderr}");

    s.pg.fingerprint("mes")
        .assert_same(&live, "refused restores");
    assert_eq!(s.pg.databases(), databases);
    assert_eq!(
        s.writer.started_at(),
        writer_started,
        "the writer was touched"
    );
    let backups = s.agent.proxy().await.list_backups().await.unwrap();
    assert_eq!(
        backups.len(),
        1,
        "no safety backup before authentication: {backups:?}"
    );
}

async fn psql_failing_half_way_leaves_the_live_database_untouched(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let writer = Writer::start();
    // A table in a tablespace that will be gone at restore time.
    let status = Command::new("docker")
        .args([
            "exec",
            pg.name(),
            "sh",
            "-c",
            "mkdir -p /var/lib/postgresql/ts1 && chown postgres /var/lib/postgresql/ts1",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    pg.psql(
        "postgres",
        "CREATE TABLESPACE ts1 LOCATION '/var/lib/postgresql/ts1';",
    );
    pg.psql("mes", "CREATE TABLE mes_custom.zz_late (id int) TABLESPACE ts1; INSERT INTO mes_custom.zz_late SELECT generate_series(1, 10);");
    let config =
        AgentConfig::for_postgres(&pg).with("restore.stop_containers", vec![writer.name.clone()]);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    pg.psql(
        "mes",
        "ALTER TABLE mes_custom.zz_late SET TABLESPACE pg_default;",
    );
    pg.psql("postgres", "DROP TABLESPACE ts1;");
    change_data(&pg);
    let live = pg.fingerprint("mes");

    let job = agent
        .proxy()
        .await
        .restore(&outcome.files[0], RestoreOptions::default())
        .await
        .unwrap();
    let failed = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!failed.success);
    assert_eq!(failed.error_name, "Database", "{}", failed.message);
    assert!(failed.message.contains("ts1"), "{}", failed.message);
    assert!(failed.message.contains("psql"), "{}", failed.message);
    pg.fingerprint("mes")
        .assert_same(&live, "after a failed restore");
    assert!(restore_databases(&pg).is_empty(), "{:?}", pg.databases());
    assert!(writer.is_running(), "the writer was left stopped");
    assert!(!config.state_dir().join("restore.json").exists());
}

async fn an_agent_killed_mid_restore_is_repaired_at_its_next_start(flavor: Flavor) {
    let mut s = setup(flavor, 120).await;
    change_data(&s.pg);
    let live = s.pg.fingerprint("mes");
    restore_until_loading(&s).await;
    s.agent.kill9();
    assert!(
        !s.writer.is_running(),
        "the writer should be stopped mid-restore"
    );
    s.pg.fingerprint("mes")
        .assert_same(&live, "right after the kill");

    let _agent = Agent::spawn(&s.bus, &s.config).await;
    assert!(
        s.writer.is_running(),
        "the next start did not restart the writer"
    );
    // The half-restored database goes once psql has let go of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !restore_databases(&s.pg).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left over: {:?}",
            restore_databases(&s.pg)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !s.config.state_dir().join("restore.json").exists() {
            break;
        }
    }
    assert!(
        restore_databases(&s.pg).is_empty(),
        "{:?}",
        s.pg.databases()
    );
    s.pg.fingerprint("mes")
        .assert_same(&live, "after the repair");
}

async fn the_database_server_stopping_mid_restore_leaves_the_live_database(flavor: Flavor) {
    let s = setup(flavor, 120).await;
    change_data(&s.pg);
    let live = s.pg.fingerprint("mes");
    let job = restore_until_loading(&s).await;
    s.pg.stop();
    let outcome = wait_job_outcome(s.agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert!(s.writer.is_running(), "the writer was left stopped");
    s.pg.start_again();
    s.pg.fingerprint("mes")
        .assert_same(&live, "after the server came back");
    // The next job cleans up the half-restored database.
    let job = s.agent.proxy().await.test_restore("").await.unwrap();
    let (ok, message) = wait_job(s.agent.connection(), &job).await;
    assert!(ok, "{message}");
    assert!(
        restore_databases(&s.pg).is_empty(),
        "{:?}",
        s.pg.databases()
    );
}

async fn disaster_recovery_onto_an_empty_server(flavor: Flavor) {
    let s = setup(flavor, 0).await;
    let original = s.pg.fingerprint("mes");
    // A new server: no `mes`, none of the roles; only the backup folder and the key.
    let empty = Postgres::start_on(flavor);
    empty.drop_database("mes");
    let config = AgentConfig::for_postgres(&empty)
        .with("backup_dir", s.config.backup_dir().to_str().unwrap())
        .with("encryption.key_file", s.config.key_file().to_str().unwrap());
    let bus = Bus::start();
    let _agent = Agent::spawn(&bus, &config).await;
    let out = mesbakctl(&bus)
        .args(["restore", &s.backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    empty
        .fingerprint("mes")
        .assert_same(&original, "restore onto an empty server");
}

async fn test_restore_passes_and_fails_and_is_recorded(flavor: Flavor) {
    let s = setup(flavor, 0).await;
    let databases = s.pg.databases();
    let out = mesbakctl(&s.bus).arg("test-restore").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("passed") && stdout.contains("asset_definition"),
        "{stdout}"
    );
    assert_eq!(
        s.pg.databases(),
        databases,
        "the scratch database was not dropped"
    );
    let status = mesbakctl(&s.bus)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["last_test_restore"].is_string(), "{status}");
    assert_eq!(status["last_test_restore_ok"], true, "{status}");

    // A backup whose metadata does not match its contents.
    let sidecar = s
        .config
        .backup_dir()
        .join("database")
        .join(format!("{}.json", s.backup_id));
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    let rows = meta["table_rows"]["mes_core.asset_definition"]
        .as_u64()
        .unwrap();
    meta["table_rows"]["mes_core.asset_definition"] = (rows + 1).into();
    std::fs::write(&sidecar, serde_json::to_vec(&meta).unwrap()).unwrap();
    let out = mesbakctl(&s.bus)
        .args(["test-restore", &s.backup_id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mes_core.asset_definition"), "{stderr}");
    let status = mesbakctl(&s.bus)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["last_test_restore_ok"], false, "{status}");
    assert_ne!(status["status"], "healthy");
    assert!(
        status["problems"].to_string().contains("test restore"),
        "{status}"
    );
    assert_eq!(s.pg.databases(), databases);
}

async fn a_restore_without_room_for_a_second_copy_is_refused(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::start_on_small_disk(flavor, 400);
    pg.load_fixture("mes");
    let writer = Writer::start();
    let config =
        AgentConfig::for_postgres(&pg).with("restore.stop_containers", vec![writer.name.clone()]);
    let agent = Agent::spawn(&bus, &config).await;
    let backup_id = agent.backup_database().await;
    // A first restore has room; it keeps the replaced database.
    let out = mesbakctl(&bus)
        .args(["restore", &backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    pg.fill_data_disk(20);
    let live = pg.fingerprint("mes");
    let databases = pg.databases();
    let backups = agent.proxy().await.list_backups().await.unwrap().len();
    let writer_started = writer.started_at();
    let out = mesbakctl(&bus)
        .args(["restore", &backup_id, "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("free where it keeps its data") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mes_previous_"),
        "the kept database is named: {stderr}"
    );
    let out = mesbakctl(&bus)
        .args(["test-restore", &backup_id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("free where it keeps its data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    pg.fingerprint("mes")
        .assert_same(&live, "refused for lack of room");
    assert_eq!(pg.databases(), databases);
    assert_eq!(
        writer.started_at(),
        writer_started,
        "the writer was touched"
    );
    assert_eq!(
        agent.proxy().await.list_backups().await.unwrap().len(),
        backups,
        "no safety backup before the room check"
    );
}

on_both_servers!(
    restore_brings_back_the_backup_and_keeps_the_previous_database,
    a_damaged_backup_or_a_wrong_key_changes_nothing,
    psql_failing_half_way_leaves_the_live_database_untouched,
    an_agent_killed_mid_restore_is_repaired_at_its_next_start,
    the_database_server_stopping_mid_restore_leaves_the_live_database,
    disaster_recovery_onto_an_empty_server,
    test_restore_passes_and_fails_and_is_recorded,
    a_restore_without_room_for_a_second_copy_is_refused,
);

/// Every database a restore keeps is tracked, shown, measured and droppable
/// by name; the rollback prompt names the database that becomes live.
#[tokio::test(flavor = "multi_thread")]
async fn every_kept_database_is_tracked_shown_and_droppable_by_name() {
    let s = setup(Flavor::Postgres15, 0).await;
    for round in 0..2 {
        s.pg.psql(
            "mes",
            &format!("UPDATE mes_core.asset_definition SET notes = 'round {round}';"),
        );
        let out = mesbakctl(&s.bus)
            .args(["restore", &s.backup_id, "--yes", "--skip-safety-backup"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Distinct names: the stamp has a one-second resolution.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let on_server: Vec<String> =
        s.pg.databases()
            .into_iter()
            .filter(|d| d.starts_with("mes_previous_"))
            .collect();
    assert_eq!(on_server.len(), 2, "{on_server:?}");
    let out = mesbakctl(&s.bus)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = status["previous_databases"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{status}");
    for db in kept {
        assert!(
            on_server.contains(&db["name"].as_str().unwrap().to_owned()),
            "{status}"
        );
        assert!(db["size_bytes"].as_u64().unwrap() > 0, "{status}");
    }
    // The newest is the rollback target; the older one only droppable.
    let newest = kept[0]["name"].as_str().unwrap().to_owned();
    let older = kept[1]["name"].as_str().unwrap().to_owned();
    assert_eq!(kept[0]["rollback_target"], true, "{status}");
    assert_eq!(kept[1]["rollback_target"], false, "{status}");
    let out = mesbakctl(&s.bus).arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&newest) && listed.contains(&older),
        "{listed}"
    );

    // Drop the older one by name; the newest stays the rollback target.
    let out = mesbakctl(&s.bus)
        .args(["restore", "--drop-previous", &older, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.pg.databases().contains(&older));
    assert!(s.pg.databases().contains(&newest));
    // The live database is never dropped that way.
    let out = mesbakctl(&s.bus)
        .args(["restore", "--drop-previous", "mes", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(s.pg.databases().contains(&"mes".to_owned()));

    // The rollback prompt says which database becomes live.
    let mut cmd = mesbakctl(&s.bus);
    cmd.args(["restore", "--rollback"]).env("TERM", "dumb");
    let mut session = rexpect::session::spawn_command(cmd, Some(60_000)).unwrap();
    session
        .exp_string(&format!("Made live again: '{newest}'"))
        .unwrap();
    session.exp_string("Type 'yes' to continue:").unwrap();
    session.send_line("no").unwrap();
    session.exp_string("nothing was changed").unwrap();
    assert!(s.pg.databases().contains(&newest));
}

/// A restore cancelled before the swap drops its new database and puts the
/// writers back; the live database is untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_cancelled_before_the_swap_changes_nothing() {
    let s = setup(Flavor::Postgres15, 120).await;
    change_data(&s.pg);
    let live = s.pg.fingerprint("mes");
    let writer_started = s.writer.started_at();
    let job = restore_until_loading(&s).await;
    assert!(
        !s.writer.is_running(),
        "the writer should be stopped mid-restore"
    );
    let proxy = job_proxy(s.agent.connection(), job.as_str()).await;
    assert!(proxy.cancellable().await.unwrap());
    proxy.cancel().await.unwrap();
    let outcome = wait_job_outcome(s.agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Cancelled", "{}", outcome.message);
    assert!(
        outcome.message.contains("live database was not changed"),
        "{}",
        outcome.message
    );
    assert!(
        restore_databases(&s.pg).is_empty(),
        "{:?}",
        s.pg.databases()
    );
    assert!(s.writer.is_running(), "the writer was left stopped");
    assert_ne!(s.writer.started_at(), writer_started);
    s.pg.fingerprint("mes")
        .assert_same(&live, "after a cancelled restore");
    assert!(!s.config.state_dir().join("restore.json").exists());
    // An ended job cannot be cancelled again.
    assert!(proxy.cancel().await.is_err());
}
