//! Day one at a plant: the old stack's backups (`pg_dump | gzip` in the
//! database container, `tar czf` of the Ignition volume) brought in with
//! `mesbakctl import`, then listed, verified, test-restored and restored
//! like any other; damaged files refused with nothing added; files named on
//! the command line handed over as open files with the caller's permissions.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mesbak_interface::BackupInfo;
use mesbak_tests::util::output_text;
use mesbak_tests::*;

const DUMP_NAME: &str = "mes_2024-10-11_000001.sql.gz";
const TAR_NAME: &str = "ignition-20241011-000001.tar.gz";
const DUMP_ID: &str = "mes_2024-10-11_000001.sql.gz.enc";
const TAR_ID: &str = "ignition_2024-10-11_000001.tar.gz.enc";

fn list(bus: &Bus) -> Vec<BackupInfo> {
    let out = mesbakctl_output(bus, &["list", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = value.get("backups").cloned().unwrap_or(value);
    serde_json::from_value(backups).unwrap()
}

/// The old stack's backups folder, made the way the seed stack makes it.
fn old_backups(pg: &Postgres, volume: &Volume) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    for sub in ["database", "ignition"] {
        fs::create_dir_all(backups.join(sub)).unwrap();
    }
    // The backup container's dump: plain pg_dump through gzip.
    let dump = Command::new("docker")
        .args([
            "exec",
            pg.name(),
            "sh",
            "-c",
            &format!("pg_dump -U {ADMIN} mes | gzip"),
        ])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", output_text(&dump));
    fs::write(backups.join("database").join(DUMP_NAME), &dump.stdout).unwrap();
    // The README's hand-typed Ignition backup.
    let tar = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{}:/data", volume.name()))
        .arg("-v")
        .arg(format!("{}:/backup", backups.join("ignition").display()))
        .args([
            BUSYBOX,
            "tar",
            "czf",
            &format!("/backup/{TAR_NAME}"),
            "-C",
            "/data",
            ".",
        ])
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", output_text(&tar));
    fs::write(backups.join("README.md"), "old stack's notes\n").unwrap();
    (dir, backups)
}

fn sha(path: &Path) -> Vec<u8> {
    openssl::sha::sha256(&fs::read(path).unwrap()).to_vec()
}

/// Every entry of the backup folder, hidden ones included.
fn folder_entries(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in ["database", "ignition"] {
        if let Ok(entries) = fs::read_dir(root.join(sub)) {
            for entry in entries {
                names.push(format!(
                    "{sub}/{}",
                    entry.unwrap().file_name().to_string_lossy()
                ));
            }
        }
    }
    names.sort();
    names
}

async fn old_backups_import_and_restore_like_any_other(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let volume = Volume::create_populated();
    let gateway = Gateway::start(&volume);
    let mut config = AgentConfig::for_postgres(&pg);
    config.ignition(&volume, &[&gateway]);
    let agent = Agent::spawn(&bus, &config).await;
    let original = pg.fingerprint("mes");
    let original_volume = volume.fingerprint();
    let (_old, backups) = old_backups(&pg, &volume);
    let dump_path = backups.join("database").join(DUMP_NAME);
    let dump_sha = sha(&dump_path);

    // A dry run checks and writes nothing.
    let out = mesbakctl_output(&bus, &["import", "--dry-run", backups.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("would be imported as {DUMP_ID}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("would be imported as {TAR_ID}")),
        "{said}"
    );
    assert!(folder_entries(&config.backup_dir()).is_empty());

    // The folder imports both, under the old files' time.
    let out = mesbakctl_output(&bus, &["import", backups.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(sha(&dump_path), dump_sha, "the original is only read");
    let listed = list(&bus);
    let ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&DUMP_ID) && ids.contains(&TAR_ID), "{ids:?}");
    let db = listed.iter().find(|b| b.id == DUMP_ID).unwrap();
    assert!(db.is_imported(), "{db:?}");
    assert_eq!(db.source, format!("imported:{DUMP_NAME}"));
    assert_eq!(db.created, "2024-10-11T00:00:01Z");
    assert_eq!(db.restore_point, "2024-10-11_000001");
    assert!(!db.table_rows.is_empty());
    for (table, rows) in &db.table_rows {
        if !table.starts_with("_timescaledb") {
            // The keys are schema.table as written, unquoted; the rows a
            // dump holds are the table's own (a hypertable's are in its
            // chunks), hence ONLY.
            let (schema, name) = table.split_once('.').unwrap();
            let quoted = format!(
                "ONLY \"{}\".\"{}\"",
                schema.replace('"', "\"\""),
                name.replace('"', "\"\"")
            );
            assert_eq!(*rows, pg.count("mes", &quoted), "rows of {table}");
        }
    }
    let text_list = mesbakctl_output(&bus, &["list"]);
    assert!(
        String::from_utf8_lossy(&text_list.stdout).contains("imported"),
        "{}",
        output_text(&text_list)
    );
    // Imported twice: left as it is.
    let again = mesbakctl_output(&bus, &["import", dump_path.to_str().unwrap()]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already imported"));

    // Health: an imported backup is not a fresh one.
    let proxy = agent.proxy().await;
    let problems = proxy.problems().await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains("no database backup")),
        "{problems:?}"
    );
    assert_ne!(proxy.health().await.unwrap(), "healthy");

    for id in [DUMP_ID, TAR_ID] {
        let out = mesbakctl_output(&bus, &["verify", id]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let out = mesbakctl_output(&bus, &["test-restore", DUMP_ID]);
    assert!(out.status.success(), "{}", output_text(&out));

    // Restores bring back the data: the database through a handed-over
    // file path, the volume by id.
    pg.psql(
        "mes",
        "CREATE TABLE public.made_after_the_old_backup (x int)",
    );
    let imported_file = config.backup_dir().join("database").join(DUMP_ID);
    let out = mesbakctl_output(&bus, &["restore", imported_file.to_str().unwrap(), "--yes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    pg.fingerprint("mes")
        .assert_same(&original, "restore of an imported pg_dump | gzip");
    volume.sh("rm -rf /data/* && echo changed > /data/new-file");
    let out = mesbakctl_output(&bus, &["restore", TAR_ID, "--yes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    volume
        .fingerprint()
        .assert_same(&original_volume, "restore of an imported tar czf");
}

async fn damaged_and_foreign_files_are_refused_with_nothing_added(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let volume = Volume::create_populated();
    let config = AgentConfig::for_postgres(&pg);
    let _agent = Agent::spawn(&bus, &config).await;
    let (old, backups) = old_backups(&pg, &volume);
    let whole = fs::read(backups.join("database").join(DUMP_NAME)).unwrap();
    let truncated = old.path().join("mes_2024-10-12_000001.sql.gz");
    fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let not_a_dump = old.path().join("mes_2024-10-13_000001.sql.gz");
    let gz = Command::new("sh")
        .args(["-c", "echo 'hello, not SQL' | gzip"])
        .output()
        .unwrap();
    fs::write(&not_a_dump, gz.stdout).unwrap();
    let unknown = old.path().join("notes.sql");
    fs::write(&unknown, "SELECT 1;").unwrap();
    let good = backups.join("database").join(DUMP_NAME);

    for (file, reason) in [
        (&truncated, "cut short"),
        (&not_a_dump, "not a database dump"),
        (&unknown, "not an old backup's name"),
    ] {
        let out = mesbakctl_output(
            &bus,
            &["import", good.to_str().unwrap(), file.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{}", output_text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{reason}: {stderr}");
        assert!(
            folder_entries(&config.backup_dir()).is_empty(),
            "{:?}",
            folder_entries(&config.backup_dir())
        );
    }
    // A tar cut short, alone.
    let tar = fs::read(backups.join("ignition").join(TAR_NAME)).unwrap();
    let cut_tar = old.path().join("ignition-20241012-000001.tar.gz");
    fs::write(&cut_tar, &tar[..tar.len() * 2 / 3]).unwrap();
    let out = mesbakctl_output(&bus, &["import", cut_tar.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(folder_entries(&config.backup_dir()).is_empty());
    assert!(list(&bus).is_empty());
}

on_both_servers!(
    old_backups_import_and_restore_like_any_other,
    damaged_and_foreign_files_are_refused_with_nothing_added
);

/// Files named on the command line are opened by mesbakctl with the
/// caller's permissions: a file only the caller can read works, one the
/// caller cannot read and a symlink are refused by mesbakctl itself.
#[tokio::test(flavor = "multi_thread")]
async fn files_are_handed_over_with_the_callers_permissions() {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(Flavor::Postgres15);
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &job).await;
    assert!(ok, "{message}");
    let id = list(&bus)[0].id.clone();
    let made = config.backup_dir().join("database").join(&id);

    // A folder only the operator can enter, a file only the operator reads.
    let place = tempfile::tempdir().unwrap();
    let private = place.path().join("operator-only");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(place.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = private.join(&id);
    fs::copy(&made, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{OPERATOR}:{OPERATOR}")])
        .arg(&private)
        .output()
        .unwrap();
    assert!(chown.status.success(), "{}", output_text(&chown));
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["verify", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["test-restore", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // A root-only file: mesbakctl (as the operator) cannot open it.
    let root_only = place.path().join(&id);
    fs::copy(&made, &root_only).unwrap();
    fs::set_permissions(&root_only, fs::Permissions::from_mode(0o600)).unwrap();
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["verify", root_only.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        output_text(&out)
    );

    // A symlink is refused, whoever asks.
    let link = place.path().join(format!("link-{id}"));
    std::os::unix::fs::symlink(&made, &link).unwrap();
    for out in [
        mesbakctl_as(&bus, OPERATOR)
            .args(["verify", link.to_str().unwrap()])
            .output()
            .unwrap(),
        mesbakctl_output(&bus, &["verify", link.to_str().unwrap()]),
    ] {
        assert!(!out.status.success(), "{}", output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("symlink"),
            "{}",
            output_text(&out)
        );
    }
    // Ids keep working.
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["verify", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// `mesbakctl config import-env`: the seed stack's .env as mesbak.toml
/// lines, the key's value never printed.
#[test]
fn config_import_env_prints_the_toml_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join(".env");
    fs::write(
        &env,
        "POSTGRES_DB=mes\nPOSTGRES_USER=admin\nPOSTGRES_PASSWORD=hunter2-db\nBACKUP_ENCRYPTION_KEY=key-value-never-shown\nSCHEDULE=0 2 * * *\nBACKUP_RETENTION_DAYS=14\n",
    )
    .unwrap();
    let out = Command::new(binary("mesbakctl"))
        .args(["config", "import-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Table = stdout.parse().unwrap();
    assert_eq!(parsed["database"]["name"].as_str(), Some("mes"));
    assert_eq!(parsed["retention"]["days"].as_integer(), Some(14));
    assert_eq!(parsed["schedule"]["backup"].as_str(), Some("0 2 * * *"));
    assert_eq!(
        parsed["encryption"]["key_file"].as_str(),
        Some("/etc/mesbak/backup.key")
    );
    assert!(!stdout.contains("key-value-never-shown") && !stdout.contains("hunter2"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("key-value-never-shown"));
}
