//! Off-site copies against real stores on loopback: s3s-fs (S3), Azurite
//! (Azure Blob) and a folder (a mounted share), each test with its own
//! servers. Copies are verified there, mirror the backup folder's names
//! (checked with rclone), survive the store going down and the agent being
//! killed, refuse wrong credentials, missing buckets and unmounted shares
//! with clear words, and a damaged copy is caught by verify and refused by
//! restore. The disaster drill restores the database and the Ignition
//! volume onto empty ones from the store alone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use mesbak_tests::*;
use serde_json::Value;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ctl(bus: &Bus, args: &[&str]) -> Output {
    mesbakctl(bus).args(args).output().expect("run mesbakctl")
}

fn ctl_ok(bus: &Bus, args: &[&str]) -> String {
    let out = ctl(bus, args);
    assert!(
        out.status.success(),
        "mesbakctl {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctl_json(bus: &Bus, args: &[&str]) -> Value {
    let out = ctl(bus, args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("mesbakctl {args:?}: not JSON ({err}):\n{}", text(&out)))
}

/// `status --json`'s entry for target `name`.
fn offsite_status(bus: &Bus, name: &str) -> Value {
    let status = ctl_json(bus, &["status", "--json"]);
    status["offsite"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no offsite array: {status}"))
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("status --json has no target {name}: {status}"))
        .clone()
}

/// An Ignition volume with `random_mib` MiB of incompressible data (so its
/// backup is about that large) and a stand-in gateway.
fn ignition_source(config: &mut AgentConfig, random_mib: u64) -> (Volume, Gateway) {
    let volume = Volume::create_populated();
    if random_mib > 0 {
        volume.sh(&format!(
            "dd if=/dev/urandom of=/data/projects.bin bs=1048576 count={} 2>/dev/null",
            random_mib
        ));
    }
    let gateway = Gateway::start(&volume);
    config.ignition(&volume, &[&gateway]);
    (volume, gateway)
}

async fn backup(agent: &Agent, what: &str) -> Vec<String> {
    let job = agent
        .proxy()
        .await
        .backup(what)
        .await
        .expect("start a backup");
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "backup failed: {}", outcome.message);
    outcome.files
}

/// The off-site sync jobs that run now.
async fn running_syncs(agent: &Agent) -> Vec<zbus::zvariant::OwnedObjectPath> {
    let mut running = Vec::new();
    for path in agent.proxy().await.jobs().await.unwrap_or_default() {
        let job = mesbak_interface::JobProxy::builder(agent.connection())
            .path(path.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        if job.operation().await.unwrap_or_default() == "offsite-sync"
            && job.state().await.unwrap_or_default() == "running"
        {
            running.push(path);
        }
    }
    running
}

/// Waits (up to `timeout`) until no off-site sync job runs, so a test does
/// not race the sync a backup started.
async fn wait_syncs_idle(agent: &Agent, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !running_syncs(agent).await.is_empty() {
        assert!(Instant::now() < deadline, "an off-site sync still runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The off-site sync a backup started, waiting for it to appear.
async fn running_sync(agent: &Agent) -> zbus::zvariant::OwnedObjectPath {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(path) = running_syncs(agent).await.pop() {
            return path;
        }
        assert!(Instant::now() < deadline, "no off-site sync started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the health endpoint");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn flip_byte(path: &Path) {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_to_s3_azure_and_a_path_are_verified_and_mirror_the_backup_folder() {
    let bus = Bus::start();
    let s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let azure = Azurite::start();
    let share = tempfile::tempdir().unwrap();
    let rclone = Rclone::new(&[s3.rclone_section("s3")]);
    azure.create_container("plant-backups");

    let mut config = AgentConfig::new();
    let (_volume, _gateway) = ignition_source(&mut config, 20);
    let health_port = mesbak_tests::util::free_port();
    config.set("health.listen", format!("127.0.0.1:{health_port}"));
    let s3_credentials = s3.credentials_file(config.dir());
    add_offsite(
        &mut config,
        s3.target("s3", "mes-backups", "plant-7", &s3_credentials),
    );
    let target = azure.target(
        "azure",
        "plant-backups",
        "plant-7",
        &azure.credentials_file(config.dir()),
    );
    add_offsite(&mut config, target);
    let mut nas = toml::Table::new();
    nas.insert("name".into(), "nas".into());
    nas.insert(
        "url".into(),
        share
            .path()
            .join("mes")
            .to_string_lossy()
            .into_owned()
            .into(),
    );
    add_offsite(&mut config, nas);
    let agent = Agent::spawn(&bus, &config).await;

    // Two backups (the second multipart-sized too), each copied after it.
    backup(&agent, "ignition").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    backup(&agent, "ignition").await;
    // On request: returns the running sync's job or starts one; all is there.
    let out = ctl_ok(&bus, &["offsite", "sync"]);
    assert!(
        out.contains("up to date") || out.contains("verified"),
        "{out}"
    );
    wait_syncs_idle(&agent, Duration::from_secs(120)).await;

    let local = backup_folder_names(&config.backup_dir());
    assert_eq!(local.len(), 4, "{local:?}");
    assert_eq!(
        rclone.names("s3:mes-backups", "plant-7"),
        local,
        "S3 mirrors the folder"
    );
    assert_eq!(
        azure.names("plant-backups", "plant-7"),
        local,
        "Azure mirrors the folder"
    );
    let mut on_share: Vec<String> = ["database", "ignition"]
        .iter()
        .flat_map(|kind| {
            std::fs::read_dir(share.path().join("mes").join(kind))
                .into_iter()
                .flatten()
                .flatten()
                .map(move |e| format!("{kind}/{}", e.file_name().to_string_lossy()))
        })
        .collect();
    on_share.sort();
    assert_eq!(
        on_share, local,
        "the share mirrors the folder, with nothing hidden left"
    );
    // Same bytes there as here.
    for name in local.iter().filter(|n| !n.ends_with(".json")) {
        let here = std::fs::read(config.backup_dir().join(name)).unwrap();
        assert_eq!(
            std::fs::read(share.path().join("mes").join(name)).unwrap(),
            here
        );
        assert_eq!(
            std::fs::read(s3.object_file("mes-backups", &format!("plant-7/{name}"))).unwrap(),
            here
        );
        let mode = std::fs::metadata(share.path().join("mes").join(name)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    for target in ["s3", "azure", "nas"] {
        let listed = ctl_json(&bus, &["list", "--offsite", target, "--json"]);
        let ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{target}: {listed}");
        for backup in listed.as_array().unwrap() {
            assert_eq!(
                backup["warnings"],
                serde_json::json!([]),
                "{target}: {backup}"
            );
            assert_eq!(backup["sha256"].as_str().unwrap().len(), 64);
        }
        let status = offsite_status(&bus, target);
        assert_eq!(status["status"], "healthy", "{status}");
        assert_eq!(status["queue_length"], 0, "{status}");
        assert_eq!(status["newest_copy"].as_str(), Some(ids[0]), "{status}");
        let out = ctl_ok(&bus, &["verify", ids[1], "--from", target]);
        assert!(out.contains("intact") && out.contains(target), "{out}");
    }
    let status = ctl_json(&bus, &["status", "--json"]);
    assert!(
        !status["problems"].to_string().contains("off-site"),
        "{status}"
    );
    let metrics = http_get(health_port, "/metrics");
    for target in ["s3", "azure", "nas"] {
        assert!(
            metrics.contains(&format!(
                "mesbak_offsite_queue_length{{target=\"{target}\"}} 0"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "mesbak_offsite_copies_total{{target=\"{target}\"}} 2"
            )),
            "{metrics}"
        );
        assert!(metrics.contains(&format!(
            "mesbak_offsite_health{{target=\"{target}\",status=\"healthy\"}} 1"
        )));
    }
    // Secrets never reach the log, --json or the bus.
    let log = agent.log();
    assert!(!log.contains(&s3.secret_key), "the S3 secret is in the log");
    assert!(!log.contains(AZURITE_KEY), "the Azure key is in the log");
    assert!(!status.to_string().contains(&s3.secret_key));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_down_during_the_upload_queues_the_copy_and_it_catches_up() {
    let bus = Bus::start();
    let mut s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let mut config = AgentConfig::new();
    let (_volume, _gateway) = ignition_source(&mut config, 24);
    let mut target = s3.target(
        "s3",
        "mes-backups",
        "plant",
        &s3.credentials_file(config.dir()),
    );
    // Slow enough to pull the plug in the middle.
    target.insert("bandwidth_limit".into(), "6 MiB/s".into());
    add_offsite(&mut config, target);
    let agent = Agent::spawn(&bus, &config).await;

    let made = backup(&agent, "ignition").await;
    let sync = running_sync(&agent).await;
    wait_for_progress(agent.connection(), &sync, "copying", 6 << 20).await;
    s3.stop();
    let outcome = wait_job_outcome(agent.connection(), &sync, Duration::from_secs(300)).await;
    assert!(!outcome.success, "the sync succeeded with the store down");
    assert!(
        outcome.message.contains("'s3'") && outcome.message.contains("reach"),
        "{}",
        outcome.message
    );
    // The backup itself is fine; the status says what is wrong off-site.
    let status = ctl_json(&bus, &["status", "--json"]);
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("'s3'") && problems.contains(&made[0]),
        "{status}"
    );
    let target_status = offsite_status(&bus, "s3");
    assert_eq!(target_status["status"], "degraded", "{target_status}");
    assert_eq!(target_status["queue_length"], 1);
    assert!(
        target_status["last_error"]
            .as_str()
            .unwrap()
            .contains("reach")
    );
    // Nothing partial became an object.
    s3.start_again();
    let rclone = Rclone::new(&[s3.rclone_section("s3")]);
    assert!(
        rclone.names("s3:mes-backups", "plant").is_empty(),
        "a partial upload is visible"
    );

    let out = ctl_ok(&bus, &["offsite", "sync"]);
    assert!(out.contains("copied 1 backup"), "{out}");
    assert_eq!(
        rclone.names("s3:mes-backups", "plant"),
        backup_folder_names(&config.backup_dir())
    );
    let target_status = offsite_status(&bus, "s3");
    assert_eq!(target_status["status"], "healthy", "{target_status}");
    assert_eq!(target_status["last_error"], Value::Null);
    assert!(
        !ctl_json(&bus, &["status", "--json"])["problems"]
            .to_string()
            .contains("off-site")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_missing_buckets_and_an_unmounted_share_are_named() {
    let bus = Bus::start();
    let s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let azure = Azurite::start();
    let share = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new();
    let (_volume, _gateway) = ignition_source(&mut config, 0);

    let wrong = config.dir().join("wrong-credentials");
    write_private(
        &wrong,
        format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=not-the-secret\n",
            s3.access_key
        )
        .as_bytes(),
    )
    .unwrap();
    add_offsite(&mut config, s3.target("badkey", "mes-backups", "p", &wrong));
    let target = s3.target(
        "nobucket",
        "no-such-bucket",
        "p",
        &s3.credentials_file(config.dir()),
    );
    add_offsite(&mut config, target);
    let target = azure.target(
        "nocontainer",
        "no-such-container",
        "p",
        &azure.credentials_file(config.dir()),
    );
    add_offsite(&mut config, target);
    let mount = share.path().join("nas");
    std::fs::create_dir(&mount).unwrap();
    let mut nas = toml::Table::new();
    nas.insert("name".into(), "nas".into());
    nas.insert(
        "url".into(),
        mount.join("mes").to_string_lossy().into_owned().into(),
    );
    nas.insert("require_mount".into(), true.into());
    add_offsite(&mut config, nas);
    let agent = Agent::spawn(&bus, &config).await;

    // The backup succeeds locally whatever the stores say.
    let made = backup(&agent, "ignition").await;
    assert!(config.backup_dir().join("ignition").join(&made[0]).exists());
    wait_syncs_idle(&agent, Duration::from_secs(120)).await;
    let out = ctl(&bus, &["offsite", "sync"]);
    assert!(!out.status.success());
    let message = text(&out);
    for expected in [
        "'badkey'",
        "refused the credentials",
        "bucket 'no-such-bucket' does not exist",
        "container 'no-such-container' does not exist",
        "not on a mounted share",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in:\n{message}"
        );
    }
    assert!(!message.contains("not-the-secret"), "{message}");
    assert!(
        !mount.join("mes").exists(),
        "something was written to the unmounted share"
    );
    let status = ctl_json(&bus, &["status", "--json"]);
    assert_ne!(status["status"], "healthy", "{status}");
    let problems = status["problems"].to_string();
    for name in ["'badkey'", "'nobucket'", "'nocontainer'", "'nas'"] {
        assert!(
            problems.contains(name),
            "{name} is not among the problems: {status}"
        );
    }
    for name in ["badkey", "nobucket", "nocontainer", "nas"] {
        assert_eq!(offsite_status(&bus, name)["status"], "degraded");
    }

    // Once the share is mounted, that target catches up; the others stay queued.
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64m,mode=0700",
            "mesbak-test-share",
        ])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a tmpfs (the tests run as root)"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    let out = ctl(&bus, &["offsite", "sync"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        mount.join("mes/ignition").join(&made[0]).exists(),
        "the mounted share got no copy:\n{}",
        text(&out)
    );
    assert_eq!(offsite_status(&bus, "nas")["status"], "healthy");
    assert_eq!(offsite_status(&bus, "badkey")["status"], "degraded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_damaged_in_the_store_is_caught_by_verify_and_refused_by_restore() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    let s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let mut config = AgentConfig::for_postgres(&pg);
    let target = s3.target(
        "s3",
        "mes-backups",
        "plant",
        &s3.credentials_file(config.dir()),
    );
    add_offsite(&mut config, target);
    let agent = Agent::spawn(&bus, &config).await;
    let made = backup(&agent, "database").await;
    let id = &made[0];
    wait_syncs_idle(&agent, Duration::from_secs(120)).await;
    ctl_ok(&bus, &["verify", id, "--from", "s3"]);

    flip_byte(&s3.object_file("mes-backups", &format!("plant/database/{id}")));
    let before = pg.fingerprint("mes");
    let out = ctl(&bus, &["verify", id, "--from", "s3"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is damaged"), "{}", text(&out));
    let out = ctl(&bus, &["restore", id, "--from", "s3", "--yes"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is damaged") && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    pg.fingerprint("mes")
        .assert_same(&before, "a refused restore changes nothing");
    assert!(!pg.databases().iter().any(|db| db.contains("restore")));
    assert!(
        !config.backup_dir().join(".offsite-spool").exists()
            || std::fs::read_dir(config.backup_dir().join(".offsite-spool"))
                .unwrap()
                .next()
                .is_none(),
        "the spool was left behind"
    );
    // The local backup is still good, and the listing there flags nothing
    // the metadata could tell (same size): verify is what catches it.
    ctl_ok(&bus, &["verify", id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_upload_leaves_nothing_partial_and_catches_up() {
    let bus = Bus::start();
    let s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let share = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new();
    let (_volume, _gateway) = ignition_source(&mut config, 24);
    let mut target = s3.target(
        "s3",
        "mes-backups",
        "plant",
        &s3.credentials_file(config.dir()),
    );
    target.insert("bandwidth_limit".into(), "8 MiB/s".into());
    add_offsite(&mut config, target);
    let mut nas = toml::Table::new();
    nas.insert("name".into(), "nas".into());
    nas.insert(
        "url".into(),
        share.path().to_string_lossy().into_owned().into(),
    );
    nas.insert("bandwidth_limit".into(), "8 MiB/s".into());
    add_offsite(&mut config, nas);
    let mut agent = Agent::spawn(&bus, &config).await;

    let made = backup(&agent, "ignition").await;
    let sync = running_sync(&agent).await;
    wait_for_progress(agent.connection(), &sync, "copying", 8 << 20).await;
    agent.kill9();
    let rclone = Rclone::new(&[s3.rclone_section("s3")]);
    assert!(
        rclone.names("s3:mes-backups", "plant").is_empty(),
        "a partial upload is visible"
    );
    assert!(!share.path().join("ignition").join(&made[0]).exists());

    let agent = Agent::spawn(&bus, &config).await;
    let out = ctl_ok(&bus, &["offsite", "sync"]);
    assert!(out.contains("copied 1 backup"), "{out}");
    let local = backup_folder_names(&config.backup_dir());
    assert_eq!(rclone.names("s3:mes-backups", "plant"), local);
    let mut on_share: Vec<String> = std::fs::read_dir(share.path().join("ignition"))
        .unwrap()
        .flatten()
        .map(|e| format!("ignition/{}", e.file_name().to_string_lossy()))
        .collect();
    on_share.sort();
    assert_eq!(
        on_share, local,
        "the unfinished copy on the share was not cleaned up"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn disaster_drill_restores_database_and_volume_from_the_store_alone() {
    let bus = Bus::start();
    let s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let azure = Azurite::start();
    azure.create_container("plant");

    // The plant: a real database and volume, backed up off-site.
    let pg = Postgres::start_with_fixture();
    let mut config = AgentConfig::for_postgres(&pg);
    let (volume, _gateway) = ignition_source(&mut config, 2);
    let credentials = s3.credentials_file(config.dir());
    add_offsite(
        &mut config,
        s3.target("s3", "mes-backups", "plant-7", &credentials),
    );
    let azure_credentials = azure.credentials_file(config.dir());
    add_offsite(
        &mut config,
        azure.target("azure", "plant", "plant-7", &azure_credentials),
    );
    let agent = Agent::spawn(&bus, &config).await;
    backup(&agent, "all").await;
    wait_syncs_idle(&agent, Duration::from_secs(180)).await;
    let database = pg.fingerprint("mes");
    let files = volume.fingerprint();
    let key = std::fs::read(config.key_file()).unwrap();
    drop(agent);
    drop(pg);
    drop(_gateway);

    // A new server: empty backup folder, an empty database server and
    // volume; only the key and the store's credentials came along.
    let bus = Bus::start();
    let new_pg = Postgres::start();
    new_pg.drop_database("mes");
    let mut fresh = AgentConfig::for_postgres(&new_pg);
    write_private(&fresh.key_file(), &key).unwrap();
    let new_volume = Volume::create();
    let new_gateway = Gateway::start(&new_volume);
    fresh.ignition(&new_volume, &[&new_gateway]);
    let new_credentials = fresh.dir().join("s3-credentials");
    std::fs::copy(&credentials, &new_credentials).unwrap();
    add_offsite(
        &mut fresh,
        s3.target("s3", "mes-backups", "plant-7", &new_credentials),
    );
    let new_azure_credentials = fresh.dir().join("azure-credentials");
    std::fs::copy(&azure_credentials, &new_azure_credentials).unwrap();
    add_offsite(
        &mut fresh,
        azure.target("azure", "plant", "plant-7", &new_azure_credentials),
    );
    let agent = Agent::spawn(&bus, &fresh).await;
    assert!(backup_folder_names(&fresh.backup_dir()).is_empty());

    let listed = ctl_json(&bus, &["list", "--offsite", "s3", "--json"]);
    let backups = listed.as_array().unwrap();
    let newest_point = backups[0]["restore_point"].as_str().unwrap().to_owned();
    let of_kind = |kind: &str| {
        backups
            .iter()
            .find(|b| b["kind"] == kind && b["restore_point"] == newest_point.as_str())
            .unwrap_or_else(|| panic!("no {kind} backup of {newest_point}: {listed}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (db_id, ign_id) = (of_kind("database"), of_kind("ignition"));

    let out = ctl_ok(&bus, &["test-restore", "--from", "azure"]);
    assert!(out.contains("passed") && out.contains(&db_id), "{out}");
    let out = ctl_ok(&bus, &["restore", &db_id, "--from", "s3", "--yes"]);
    assert!(out.contains("restored"), "{out}");
    new_pg
        .fingerprint("mes")
        .assert_same(&database, "the database restored from S3");
    let out = ctl_ok(&bus, &["restore", &ign_id, "--from", "azure", "--yes"]);
    assert!(out.contains(&ign_id), "{out}");
    new_volume
        .fingerprint()
        .assert_same(&files, "the volume restored from Azure");
    assert!(
        new_gateway.is_running(),
        "the gateway was not started again"
    );
    // Nothing of the fetched copies stays behind.
    assert!(
        std::fs::read_dir(fresh.backup_dir().join(".offsite-spool"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    );
    drop(agent);
}
