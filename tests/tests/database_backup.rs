//! Database backups end to end: real PostgreSQL in a container, the real
//! agent on a private bus, restored with nothing but standard tools.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesbak_interface::{BackupInfo, RestoreOptions};
use mesbak_tests::*;

/// `mesbakctl decrypt FILE | gunzip | psql -v ON_ERROR_STOP=1` into the new
/// database `db` on `pg`: what a plant does without the agent. `decompress`
/// is the standard tool for the file's payload (`gunzip`, `zstd -d`).
fn restore_with_standard_tools(
    pg: &Postgres,
    file: &Path,
    key_file: &Path,
    decompress: &str,
    db: &str,
) {
    pg.create_database(db);
    let script = format!(
        "set -o pipefail; '{}' decrypt '{}' --key-file '{}' | {decompress} | docker exec -i {} psql -X -q -v ON_ERROR_STOP=1 -U admin -d {db} >/dev/null",
        binary("mesbakctl").display(),
        file.display(),
        key_file.display(),
        pg.name()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "decrypt | {decompress} | psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SHA-256 of what a shell pipeline prints.
fn sha256_of_output(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script} | sha256sum")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The payload read three independent ways gives the same SQL: mesbakctl
/// with `zcat`, and the Python decrypter (tests/tools/decrypt.py, written
/// from FORMAT.md) with Python's own `gzip` module.
fn payload_reads_alike_with_zcat_and_python(file: &Path, key_file: &Path) {
    let zcat = sha256_of_output(&format!(
        "'{}' decrypt '{}' --key-file '{}' | zcat",
        binary("mesbakctl").display(),
        file.display(),
        key_file.display()
    ));
    let python = sha256_of_output(&format!(
        "/usr/bin/python3 '{}' --key-file '{}' '{}' - | /usr/bin/python3 -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.GzipFile(fileobj=sys.stdin.buffer), sys.stdout.buffer)'",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tools/decrypt.py")
            .display(),
        key_file.display(),
        file.display()
    ));
    assert_eq!(zcat, python, "zcat and Python's gzip read different SQL");
}

fn list(bus: &Bus) -> Vec<BackupInfo> {
    let out = mesbakctl(bus).args(["list", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn backup_file(config: &AgentConfig, info: &BackupInfo) -> PathBuf {
    config.backup_dir().join("database").join(&info.id)
}

async fn backup_restores_identically_with_standard_tools_with_and_without_roles(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg);
    let _agent = Agent::spawn(&bus, &config).await;
    let original = pg.fingerprint("mes");

    // The lines a timer's log shows, without a terminal.
    let out = mesbakctl(&bus)
        .args(["backup", "database"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"Backup started..."), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Creating backup: mes_") && l.ends_with(".sql.gz.enc")),
        "{stdout}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Backup completed successfully"),
        "{stdout}"
    );

    let backups = list(&bus);
    assert_eq!(backups.len(), 1);
    let info = &backups[0];
    let file = backup_file(&config, info);
    // Name, modes and metadata.
    let name_ok = info.id.len() == "mes_2026-01-01_000000.sql.gz.enc".len()
        && info.id.starts_with("mes_20")
        && info.id.ends_with(".sql.gz.enc");
    assert!(name_ok, "{}", info.id);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for dir in [config.backup_dir(), config.backup_dir().join("database")] {
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(info.size_bytes, bytes.len() as u64);
    assert_eq!(info.sha256, hex_sha256(&bytes));
    match flavor {
        Flavor::Postgres15 => {
            assert!(
                info.server_version.starts_with("15."),
                "{}",
                info.server_version
            );
            assert_eq!(info.timescaledb_version, "");
        }
        Flavor::TimescaleDb => {
            assert!(
                info.server_version.starts_with("17."),
                "{}",
                info.server_version
            );
            assert!(
                info.timescaledb_version.starts_with("2."),
                "{}",
                info.timescaledb_version
            );
            // Hypertable rows are counted where they are: in the chunks.
            let chunks: u64 = info
                .table_rows
                .iter()
                .filter(|(table, _)| table.starts_with("_timescaledb_internal._hyper_"))
                .map(|(_, rows)| rows)
                .sum();
            let hypertable_rows = pg.count("mes", "mes_core.machine_metric")
                + pg.count("mes", "mes_core.quality_measurement");
            assert_eq!(chunks, hypertable_rows);
            assert!(
                original.hypertables.len() == 2,
                "{:?}",
                original.hypertables
            );
        }
    }
    // The database's own settings, grants and comment are in the fixture.
    assert!(
        original.database.contains_key("settings"),
        "{:?}",
        original.database
    );
    assert!(
        original.database["comment"].contains("Werk Süd"),
        "{:?}",
        original.database
    );
    for schema in ["mes_core", "mes_audit", "mes_custom"] {
        assert!(
            info.schemas.iter().any(|s| s == schema),
            "{:?}",
            info.schemas
        );
    }
    // Row counts per table as the dump carries them; on TimescaleDB the
    // dump also fills the extension's own catalog (not user tables).
    let user_tables: std::collections::BTreeMap<String, u64> = info
        .table_rows
        .iter()
        .filter(|(table, _)| {
            !table.starts_with("_timescaledb_catalog.")
                && !table.starts_with("_timescaledb_config.")
        })
        .map(|(table, rows)| (table.clone(), *rows))
        .collect();
    assert_eq!(
        user_tables,
        original.table_rows(),
        "row counts in the metadata"
    );
    // TimescaleDB's catalog makes pg_dump warn about circular foreign keys
    // (exit status 0): not a failure, not a warning of the backup.
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);

    payload_reads_alike_with_zcat_and_python(&file, &config.key_file());

    // Same server: the roles exist.
    restore_with_standard_tools(&pg, &file, &config.key_file(), "gunzip", "mes_copy");
    pg.fingerprint("mes_copy")
        .assert_same(&original, "restore next to the roles");

    // A brand-new server that has none of the roles.
    let empty = Postgres::start_on(flavor);
    assert!(!empty.roles().iter().any(|r| r == "mes_app"));
    empty.drop_database("mes");
    restore_with_standard_tools(&empty, &file, &config.key_file(), "gunzip", "mes");
    empty
        .fingerprint("mes")
        .assert_same(&original, "restore onto a server without the roles");
}

/// `backup.compression = "zstd"`: `.sql.zst.enc` files that `zstd -d`
/// reads, verified, test-restored and restored by the agent like gzip ones
/// (the restore's safety backup is zstd too).
async fn zstd_backups_restore_with_zstd_and_through_the_agent(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("backup.compression", "zstd");
    let agent = Agent::spawn(&bus, &config).await;
    let original = pg.fingerprint("mes");
    let out = mesbakctl(&bus)
        .args(["backup", "database"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let backups = list(&bus);
    assert_eq!(backups.len(), 1);
    let info = &backups[0];
    assert!(
        info.id.starts_with("mes_20") && info.id.ends_with(".sql.zst.enc"),
        "{}",
        info.id
    );
    assert!(!info.table_rows.is_empty());
    let file = backup_file(&config, info);

    // Standard tools only: decrypt | zstd -d | psql, and `zstd -t` accepts
    // the payload (frame checksums included).
    restore_with_standard_tools(&pg, &file, &config.key_file(), "zstd -d", "mes_copy");
    pg.fingerprint("mes_copy")
        .assert_same(&original, "decrypt | zstd -d | psql");
    sha256_of_output(&format!(
        "'{}' decrypt '{}' --key-file '{}' | zstd -t -q",
        binary("mesbakctl").display(),
        file.display(),
        config.key_file().display()
    ));
    pg.drop_database("mes_copy");

    for command in [vec!["verify", &info.id], vec!["test-restore", &info.id]] {
        let out = mesbakctl(&bus).args(&command).output().unwrap();
        assert!(
            out.status.success(),
            "{command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The agent's restore, over changed data.
    pg.psql(
        "mes",
        "UPDATE mes_core.asset_definition SET notes = 'changed after the backup';",
    );
    let changed = pg.fingerprint("mes");
    let job = agent
        .proxy()
        .await
        .restore(&info.id, RestoreOptions::default())
        .await
        .unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    pg.fingerprint("mes")
        .assert_same(&original, "the agent's restore of a zstd backup");
    let safety: Vec<BackupInfo> = list(&bus)
        .into_iter()
        .filter(|b| b.id.contains("pre-restore"))
        .collect();
    assert_eq!(safety.len(), 1, "{safety:?}");
    assert!(safety[0].id.ends_with(".sql.zst.enc"), "{}", safety[0].id);
    restore_with_standard_tools(
        &pg,
        &backup_file(&config, &safety[0]),
        &config.key_file(),
        "zstd -d",
        "mes_safety",
    );
    pg.fingerprint("mes_safety")
        .assert_same(&changed, "the zstd safety backup");
}

fn hex_sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

async fn a_stopped_database_container_is_started_and_stopped_again(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let original = pg.fingerprint("mes");
    pg.stop();
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &job).await;
    assert!(ok, "{message}");
    assert!(!pg.is_running(), "the database container was left running");
    let backups = list(&bus);
    let rows = &backups[0].table_rows;
    for (table, count) in original.table_rows() {
        assert_eq!(rows.get(&table), Some(&count), "{table}");
    }
    // The state journal holds no pending change.
    assert_eq!(
        config.pending_container_changes(),
        Vec::<serde_json::Value>::new()
    );
}

async fn an_agent_killed_mid_backup_leaves_no_complete_looking_file(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    pg.load_bulk("mes", 150);
    let config = AgentConfig::for_postgres(&pg).with("backup.compression_level", 9);
    let mut agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    // Wait until data flows, then kill.
    wait_for_progress(agent.connection(), &job, "Creating backup", 4 << 20).await;
    agent.kill9();
    let dir = config.backup_dir().join("database");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with('.')),
        "a visible file after the kill: {names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with(".partial")), "{names:?}");

    // The next start removes the partial file; list shows nothing.
    let _agent = Agent::spawn(&bus, &config).await;
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "left over after restart: {names:?}");
    assert!(list(&bus).is_empty());
}

/// A small tmpfs as the backup folder; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs (the tests run as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("backups")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn full_disks_are_refused_before_and_handled_during_a_backup(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let disk = SmallDisk::new("2m");
    let before = pg.fingerprint("mes");

    // Refused up front: the floor does not fit.
    let config = AgentConfig::for_postgres(&pg)
        .with("backup_dir", disk.path().to_str().unwrap())
        .with("backup.min_free_bytes", 64 * 1024 * 1024);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "NoSpace");
    assert!(
        outcome.message.contains("free") && outcome.message.contains("backup.min_free_bytes"),
        "{}",
        outcome.message
    );
    drop(agent);

    // Filling up while writing: the error says so, nothing is left behind.
    pg.load_bulk("mes", 30);
    let config = AgentConfig::for_postgres(&pg)
        .with("backup_dir", disk.path().to_str().unwrap())
        .with("backup.min_free_bytes", 0);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success, "a 30 MiB dump fitted into 2 MiB?");
    assert_eq!(outcome.error_name, "NoSpace", "{}", outcome.message);
    let left: Vec<_> = std::fs::read_dir(disk.path().join("database"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(pg.fingerprint("mes").total_rows() > before.total_rows());
}

async fn a_dump_missing_a_configured_schema_makes_health_unhealthy(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    pg.psql("mes", "DROP SCHEMA mes_custom CASCADE;");
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    assert!(
        outcome.warnings.iter().any(|w| w.contains("mes_custom")),
        "{:?}",
        outcome.warnings
    );
    let out = mesbakctl(&bus).args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "unhealthy", "{status}");
    let problems = status["problems"].to_string();
    assert!(problems.contains("mes_custom"), "{problems}");
    for key in [
        "last_backup",
        "last_database_backup",
        "last_ignition_backup",
        "last_test_restore",
    ] {
        assert!(
            status.get(key).is_some(),
            "status --json lacks {key}: {status}"
        );
    }
    assert!(status["last_database_backup"].is_string());
    assert!(status["last_test_restore"].is_null());
}

/// Sets the `created` time in a backup's metadata.
fn set_created(config: &AgentConfig, id: &str, created: &str) {
    let sidecar = config
        .backup_dir()
        .join("database")
        .join(format!("{id}.json"));
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    meta["created"] = created.into();
    std::fs::write(&sidecar, serde_json::to_vec(&meta).unwrap()).unwrap();
}

async fn retention_keeps_the_newest_explains_each_file_and_holds_back_a_mass_deletion(
    flavor: Flavor,
) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg)
        .with("retention.days", 7)
        .with("retention.keep_last", 1);
    let agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    for _ in 0..2 {
        let job = proxy.backup("database").await.unwrap();
        let (ok, message) = wait_job(agent.connection(), &job).await;
        assert!(ok, "{message}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Age both by their metadata, a day apart.
    let mut ids: Vec<String> = list(&bus).into_iter().map(|b| b.id).collect();
    ids.sort();
    let (older, newer) = (ids[0].clone(), ids[1].clone());
    set_created(&config, &older, "2020-01-01T00:00:00Z");
    set_created(&config, &newer, "2020-01-02T00:00:00Z");

    let plan = proxy.plan_prune().await.unwrap();
    assert_eq!(plan.len(), 2, "{plan:?}");
    let decision = |id: &str| plan.iter().find(|d| d.id == id).unwrap().clone();
    let kept = decision(&newer);
    assert!(
        kept.keep,
        "the newest good backup is never pruned: {plan:?}"
    );
    assert_eq!(kept.reasons, vec!["the newest good backup"], "{plan:?}");
    let gone = decision(&older);
    assert!(!gone.keep, "{plan:?}");
    assert!(
        gone.reasons[0].contains("older than 7 days"),
        "{:?}",
        gone.reasons
    );
    // `mesbakctl prune --dry-run` says the same, as text and as JSON.
    let out = mesbakctl(&bus)
        .args(["prune", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let action = |id: &str| {
        rows.iter()
            .find(|row| row["id"] == id)
            .map(|row| row["action"].as_str().unwrap().to_owned())
    };
    assert_eq!(action(&newer).as_deref(), Some("keep"), "{rows:?}");
    assert_eq!(action(&older).as_deref(), Some("delete"), "{rows:?}");
    let out = mesbakctl(&bus)
        .args(["prune", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|line| line.starts_with("DELETE") && line.contains(&older)),
        "{text}"
    );
    assert!(text.contains("- the newest good backup"), "{text}");
    assert!(text.contains("would delete 1 of 2 backup(s)"), "{text}");

    // A failing backup deletes nothing.
    pg.stop();
    drop(agent);
    let broken = config
        .clone()
        .with("database.container", "mesbak-test-no-such-container");
    let agent = Agent::spawn(&bus, &broken).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "NotFound", "{}", outcome.message);
    assert!(
        outcome.message.contains("mesbak-test-no-such-container"),
        "{}",
        outcome.message
    );
    assert_eq!(list(&bus).len(), 2, "a failed backup must not prune");
    drop(agent);

    // A good backup now would delete both old ones at once: two of the
    // three backups, which is what a clock that jumped ahead looks like.
    // The automatic run holds back and says why.
    pg.start_again();
    let agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    let job = proxy.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
    assert!(
        outcome
            .warnings
            .iter()
            .any(|w| w.contains("held back") && w.contains("2 of the 3 database backups")),
        "{:?}",
        outcome.warnings
    );
    let newest = outcome.files[0].clone();
    let mut left: Vec<String> = list(&bus).into_iter().map(|b| b.id).collect();
    left.sort();
    assert_eq!(left, vec![older.clone(), newer.clone(), newest.clone()]);
    let problems = proxy.problems().await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains("held back")),
        "{problems:?}"
    );

    // An explicit prune, the operator's decision, deletes both and keeps
    // the new one; the problem goes.
    let job = proxy.prune().await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &job).await;
    assert!(ok, "{message}");
    assert!(
        message.contains(&older) && message.contains(&newer),
        "{message}"
    );
    let left: Vec<String> = list(&bus).into_iter().map(|b| b.id).collect();
    assert_eq!(left, vec![newest]);
    let problems = proxy.problems().await.unwrap();
    assert!(
        !problems.iter().any(|p| p.contains("held back")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_backup_folder_is_refused() {
    let bus = Bus::start();
    let pg = Postgres::start();
    let config = AgentConfig::for_postgres(&pg);
    let real = config.dir().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, config.backup_dir()).unwrap();
    let agent = Agent::spawn(&bus, &config).await;
    let result = agent.proxy().await.backup("database").await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &result, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Config");
    assert!(outcome.message.contains("symlink"), "{}", outcome.message);
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

on_both_servers!(
    backup_restores_identically_with_standard_tools_with_and_without_roles,
    zstd_backups_restore_with_zstd_and_through_the_agent,
    a_stopped_database_container_is_started_and_stopped_again,
    an_agent_killed_mid_backup_leaves_no_complete_looking_file,
    full_disks_are_refused_before_and_handled_during_a_backup,
    a_dump_missing_a_configured_schema_makes_health_unhealthy,
    retention_keeps_the_newest_explains_each_file_and_holds_back_a_mass_deletion,
);
