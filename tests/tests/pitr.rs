//! Point-in-time recovery on both servers: enable (one restart), WAL
//! shipped, rows written at t1, t2, t3, deleted at t4; a restore to t2 and
//! then to t3 gives exactly those databases, hypertables included; a test
//! restore to a time; a time outside the window and a time past a gap are
//! refused; a restore onto an empty server from base backup + WAL alone.

use std::time::Duration;

use mesbak_tests::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

fn ctl(bus: &Bus, args: &[&str]) -> (bool, String, String) {
    let out = mesbakctl(bus).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(bus: &Bus, args: &[&str]) -> String {
    let (success, stdout, stderr) = ctl(bus, args);
    assert!(success, "mesbakctl {args:?} failed: {stdout}{stderr}");
    stdout
}

/// A moment to restore to: the time and the database's fingerprint, each
/// a second clear of the writes before and after it (the window and the
/// commit times are read to the second).
async fn mark_moment(pg: &Postgres) -> (String, Fingerprint) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moment = (now(), pg.fingerprint("mes"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    moment
}

/// The database after a point-in-time restore compared with the one at
/// that time. Sequences are WAL-logged 32 values ahead, so after recovery
/// (as after a crash) one may stand up to 32 further: never behind, no
/// value is handed out twice.
#[track_caller]
fn assert_recovered(actual: Fingerprint, expected: &Fingerprint, what: &str) {
    let mut actual = actual;
    for (name, state) in actual.sequences.iter_mut() {
        if let Some(want) = expected.sequences.get(name) {
            let ahead = state.last_value - want.last_value;
            assert!(
                (0..=32).contains(&ahead),
                "{what}: sequence {name} at {} where {} was expected",
                state.last_value,
                want.last_value
            );
            *state = want.clone();
        }
    }
    actual.assert_same(expected, what);
}

/// A server with the fixture and an agent with point-in-time recovery on,
/// `ship_interval_secs` (the server's `archive_timeout`) an hour: the only
/// segment switches are the test's.
async fn enabled_without_timed_switches(flavor: Flavor) -> (Bus, Postgres, AgentConfig, Agent) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 3600);
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    (bus, pg, config, agent)
}

fn pitr_status(bus: &Bus) -> serde_json::Value {
    serde_json::from_str(&ok(bus, &["pitr", "status", "--json"])).unwrap()
}

/// Rows that change between the moments, in a plain table and (on
/// TimescaleDB) in the hypertable.
fn write_moment(pg: &Postgres, n: u32) {
    let mut sql = format!(
        "INSERT INTO mes_audit.change_log (changed_by, table_name, operation, row_key, old_row, new_row) \
         VALUES ('pitr test', 'moment', 'I', '{n}', NULL, '{{\"moment\": {n}}}');\n\
         UPDATE mes_core.asset_definition SET notes = 'moment {n}' WHERE asset_id % 7 = {n};\n"
    );
    if pg.flavor().timescaledb() {
        sql.push_str(&format!(
            "INSERT INTO mes_core.machine_metric (time, asset_id, metric, value) \
             SELECT '2026-06-0{n} 00:00:00+00', min(asset_id), 'moment', {n} FROM mes_core.asset_definition;\n"
        ));
    }
    pg.psql("mes", &sql);
}

async fn point_in_time_restore_goes_back_to_each_moment(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let agent = Agent::spawn(&bus, &config).await;

    // Without a terminal, --yes is required; with it, the server restarts once.
    let (success, _, stderr) = ctl(&bus, &["pitr", "enable"]);
    assert!(!success);
    assert!(stderr.contains("--yes"), "{stderr}");
    let started_before = pg.psql("postgres", "SELECT pg_postmaster_start_time();");
    let out = ok(&bus, &["pitr", "enable", "--yes"]);
    assert!(out.contains("archive_mode = 'on'"), "{out}");
    assert_ne!(
        pg.psql("postgres", "SELECT pg_postmaster_start_time();"),
        started_before,
        "the server was restarted"
    );
    assert_eq!(pg.psql("postgres", "SHOW archive_mode;"), "on");
    let status = pitr_status(&bus);
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(
        status["base_backups"].as_array().unwrap().len(),
        1,
        "{status}"
    );

    // Three moments, each with its fingerprint, then a careless DELETE.
    let mut moments = Vec::new();
    for n in 1..=3 {
        write_moment(&pg, n);
        moments.push(mark_moment(&pg).await);
    }
    pg.psql("mes", "DELETE FROM mes_audit.change_log;");
    if flavor.timescaledb() {
        pg.psql(
            "mes",
            "DELETE FROM mes_core.machine_metric WHERE metric = 'moment';",
        );
    }
    ok(&bus, &["pitr", "sync"]);
    let status = pitr_status(&bus);
    let window_to = status["window"]["to"].as_str().unwrap().to_owned();
    assert!(
        window_to >= moments[2].0,
        "window {status} ends before the last moment"
    );
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status}");

    // A test restore to a moment passes; the live database is not touched.
    let live = pg.fingerprint("mes");
    let out = ok(&bus, &["test-restore", "--to-time", &moments[0].0]);
    assert!(out.contains("passed"), "{out}");
    pg.fingerprint("mes")
        .assert_same(&live, "a test restore to a time changes nothing");

    // Back to t2, then to t3: exactly those databases.
    for index in [1, 2] {
        let (time, expected) = &moments[index];
        let out = ok(&bus, &["restore", "--to-time", time, "--yes"]);
        assert!(out.contains("point-in-time restore"), "{out}");
        assert_recovered(
            pg.fingerprint("mes"),
            expected,
            &format!("restored to moment {}", index + 1),
        );
        ok(&bus, &["restore", "--drop-previous", "--yes"]);
    }

    // Outside the window: refused, naming the window.
    let (success, _, stderr) = ctl(
        &bus,
        &["restore", "--to-time", "2020-01-01 00:00:00", "--yes"],
    );
    assert!(!success);
    assert!(stderr.contains("restorable window"), "{stderr}");
    // The engine here sees the agent's folders: every dump took the FIFO.
    let log = agent.log();
    assert!(
        log.contains("dump_through=fifo") && !log.contains("dump_through=exec"),
        "the scratch dumps did not all go through the shared folder:\n{log}"
    );

    drop(agent);
}

async fn a_gap_in_the_chain_is_found_and_refused_past_it(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let _agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    write_moment(&pg, 1);
    ok(&bus, &["pitr", "sync"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before_gap = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_moment(&pg, 2);
    ok(&bus, &["pitr", "sync"]);
    write_moment(&pg, 3);
    ok(&bus, &["pitr", "sync"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_gap = now();
    write_moment(&pg, 4);
    ok(&bus, &["pitr", "sync"]);

    // Lose the segment written between the two times.
    let wal_dir = config.backup_dir().join("pitr/wal");
    let mut segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.len() > 24
                && name[..24].chars().all(|c| c.is_ascii_hexdigit())
                && name.as_bytes()[24] == b'_'
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    let lost = &segments[segments.len() - 2];
    std::fs::remove_file(wal_dir.join(lost)).unwrap();

    let status = pitr_status(&bus);
    assert_eq!(status["gaps"].as_array().unwrap().len(), 1, "{status}");
    assert!(
        lost.starts_with(status["gaps"][0].as_str().unwrap()),
        "{status}"
    );
    let (_, health, _) = ctl(&bus, &["status", "--json"]);
    assert!(health.contains("gap"), "{health}");

    let (success, _, stderr) = ctl(&bus, &["restore", "--to-time", &after_gap, "--yes"]);
    assert!(!success, "a time past the gap was restored");
    assert!(
        stderr.contains("is missing") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    let out = ok(&bus, &["test-restore", "--to-time", &before_gap]);
    assert!(out.contains("passed"), "{out}");
}

async fn a_new_server_is_restored_from_base_backup_and_wal_alone(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    write_moment(&pg, 1);
    let (time, expected) = mark_moment(&pg).await;
    write_moment(&pg, 2);
    ok(&bus, &["pitr", "sync"]);
    drop(agent);

    // The old server is gone; a new one, empty, and the backup folder.
    let empty = Postgres::start_on(flavor);
    empty.drop_database("mes");
    let dr = AgentConfig::for_postgres(&empty)
        .with("backup_dir", config.backup_dir().to_str().unwrap())
        .with("encryption.key_file", config.key_file().to_str().unwrap());
    let dr_bus = Bus::start();
    let _agent = Agent::spawn(&dr_bus, &dr).await;
    drop(pg);
    ok(&dr_bus, &["restore", "--to-time", &time, "--yes"]);
    assert_recovered(
        empty.fingerprint("mes"),
        &expected,
        "a new server from base backup and WAL",
    );
    // The scratch cluster is gone.
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=org.mesbak.pitr-scratch",
            "--format",
            "{{.Names}} {{.Labels}}",
        ])
        .output()
        .unwrap();
    let ours = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(dr.state_dir().to_str().unwrap()))
        .count();
    assert_eq!(ours, 0, "{}", String::from_utf8_lossy(&out.stdout));
}

/// When the database container last started.
fn started_at(pg: &Postgres) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.StartedAt}}", pg.name()])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker inspect {}", pg.name());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn a_stopped_server_is_started_while_the_scratch_cluster_recovers_and_stopped_again(
    flavor: Flavor,
) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    write_moment(&pg, 1);
    let (time, expected) = mark_moment(&pg).await;
    write_moment(&pg, 2);
    ok(&bus, &["pitr", "sync"]);
    pg.stop();
    let stopped_since = started_at(&pg);

    // A time that cannot be restored does not touch the stopped server.
    let (success, _, stderr) = ctl(
        &bus,
        &["restore", "--to-time", "2020-01-01 00:00:00", "--yes"],
    );
    assert!(!success);
    assert!(stderr.contains("restorable window"), "{stderr}");
    assert!(!pg.is_running(), "a refused time started the server");
    assert_eq!(
        started_at(&pg),
        stopped_since,
        "a refused time started the server"
    );

    // A reachable one starts it beside the recovery, restores, and leaves
    // it stopped as it was found.
    let out = ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert!(!pg.is_running(), "the server was left running: {out}");
    assert_ne!(
        started_at(&pg),
        stopped_since,
        "the restore never started the server"
    );
    // Started while the scratch cluster recovered, not after it.
    let log = agent.log();
    let recovered_at = log
        .find("scratch cluster recovered")
        .expect("recovery logged");
    let started_at_line = log
        .find("starting a stopped container for the job")
        .expect("the start logged");
    assert!(
        started_at_line < recovered_at,
        "the server was started only after the recovery:\n{}",
        log.lines()
            .filter(|l| l.contains("container") || l.contains("recover") || l.contains("job"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    pg.start_again();
    assert_recovered(
        pg.fingerprint("mes"),
        &expected,
        "restored with the server stopped",
    );
    drop(agent);
}

/// Shipped segment names (the server's names), sorted.
fn shipped_segments(config: &AgentConfig) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.backup_dir().join("pitr/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .filter_map(|name| name.rsplit_once('_').map(|(wal, _)| wal.to_owned()))
        .filter(|wal| wal.len() == 24)
        .collect();
    names.sort();
    names
}

/// The name of the WAL segment after `name` (16 MiB segments: 256 to a
/// log file).
fn next_segment(name: &str) -> String {
    let number = |from: usize| u32::from_str_radix(&name[from..from + 8], 16).unwrap();
    let (timeline, log, segment) = (&name[..8], number(8), number(16));
    if segment == 0xFF {
        format!("{timeline}{:08X}{:08X}", log + 1, 0)
    } else {
        format!("{timeline}{log:08X}{:08X}", segment + 1)
    }
}

fn hidden_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn server_archive(pg: &Postgres) -> String {
    pg.psql(
        "postgres",
        "SELECT coalesce(string_agg(name, ' ' ORDER BY name), '') FROM pg_ls_dir(current_setting('data_directory') || '/mesbak_wal') AS name;",
    )
}

async fn an_agent_killed_while_shipping_or_recovering_loses_nothing(flavor: Flavor) {
    let (bus, pg, config, mut agent) = enabled_without_timed_switches(flavor).await;
    write_moment(&pg, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (time, expected) = (now(), pg.fingerprint("mes"));
    // Many segments waiting, then the agent killed while it ships them.
    for n in 0..25 {
        pg.psql(
            "mes",
            &format!("INSERT INTO mes_audit.change_log (table_name, operation, row_key) VALUES ('kill', 'I', '{n}'); SELECT pg_switch_wal();"),
        );
    }
    let sync = agent.proxy().await.pitr_sync().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    agent.kill9();
    let _ = sync;
    let mut agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "sync"]);
    let names = shipped_segments(&config);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique, names, "a segment was shipped twice");
    let status = pitr_status(&bus);
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(
        server_archive(&pg),
        "",
        "segments left in the server's folder"
    );
    assert!(hidden_files(&config.backup_dir().join("pitr/wal")).is_empty());

    // Killed during a point-in-time restore: the scratch cluster goes at
    // the next start, the live database is as it was.
    let live = pg.fingerprint("mes");
    let job = agent
        .proxy()
        .await
        .restore_to_time(&time, mesbak_interface::RestoreOptions::default())
        .await
        .unwrap();
    wait_for_progress(
        agent.connection(),
        &job,
        "recovering the scratch cluster",
        0,
    )
    .await;
    agent.kill9();
    let scratch = |label_value: &str| -> usize {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=org.mesbak.pitr-scratch={label_value}"),
                "-q",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let label = config.state_dir().display().to_string();
    assert_eq!(
        scratch(&label),
        1,
        "the scratch container exists while recovering"
    );
    let mut agent = Agent::spawn(&bus, &config).await;
    assert_eq!(
        scratch(&label),
        0,
        "the next start removed the scratch container"
    );
    pg.fingerprint("mes")
        .assert_same(&live, "after a killed point-in-time restore");

    // Killed once the recovered database has streamed into the new one,
    // before the swap: the loaded copy and the scratch cluster go at the
    // next start, the live database is as it was.
    agent.terminate().await;
    let mut paused = config.clone();
    paused.env("MESBAK_TEST_PAUSE_AT", "restore-loaded");
    let mut agent = Agent::spawn(&bus, &paused).await;
    let job = agent
        .proxy()
        .await
        .restore_to_time(&time, mesbak_interface::RestoreOptions::default())
        .await
        .unwrap();
    let within = Duration::from_secs(300);
    wait_paused(&config, "restore-loaded", &job, &agent, within).await;
    // The scratch cluster goes as soon as its dump has been read, while
    // the restore goes on.
    let gone_by = std::time::Instant::now() + Duration::from_secs(60);
    while scratch(&label) != 0 {
        assert!(
            std::time::Instant::now() < gone_by,
            "the scratch cluster is still there a minute after its dump was read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let copies = "SELECT count(*) FROM pg_database WHERE datname LIKE 'mes_restore_%'";
    assert_eq!(pg.psql("postgres", copies).trim(), "1", "the loaded copy");
    agent.kill9();
    std::fs::remove_file(pause_marker(&config, "restore-loaded")).unwrap();
    let _agent = Agent::spawn(&bus, &config).await;
    assert_eq!(
        scratch(&label),
        0,
        "the next start removed the scratch container"
    );
    assert_eq!(
        pg.psql("postgres", copies).trim(),
        "0",
        "the loaded copy was dropped"
    );
    pg.fingerprint("mes")
        .assert_same(&live, "after a point-in-time restore killed mid-load");
    let out = ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(pg.fingerprint("mes"), &expected, "after the retry");
}

async fn a_failing_shipper_is_reported_before_the_server_fills(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let _agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    // The key becomes unreadable: segments pile up on the server.
    let key = std::fs::read(config.key_file()).unwrap();
    std::fs::remove_file(config.key_file()).unwrap();
    // Each switch after a write (a switch with nothing written since the
    // last one archives nothing).
    pg.psql("mes", "CREATE TABLE public.wal_filler (x int);");
    for _ in 0..3 {
        pg.psql(
            "mes",
            "INSERT INTO public.wal_filler SELECT generate_series(1, 1000); SELECT pg_switch_wal();",
        );
    }
    let (success, _, stderr) = ctl(&bus, &["pitr", "sync"]);
    assert!(!success);
    assert!(stderr.contains("key"), "{stderr}");
    let (healthy, status, _) = ctl(&bus, &["status", "--json"]);
    assert!(!healthy, "{status}");
    assert!(status.contains("WAL shipping fails"), "{status}");
    assert!(!server_archive(&pg).is_empty());
    // The key is back: the backlog is shipped, nothing lost.
    std::fs::write(config.key_file(), key).unwrap();
    std::fs::set_permissions(
        config.key_file(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    ok(&bus, &["pitr", "sync"]);
    assert_eq!(server_archive(&pg), "");
    let status = pitr_status(&bus);
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
}

/// The PITR files in the backup folder, as an off-site target mirrors them
/// (`pitr/base/<id>`, `pitr/base/<id>.json`, `pitr/wal/<file>`).
fn local_pitr_names(config: &AgentConfig) -> Vec<String> {
    let mut names = Vec::new();
    for folder in ["pitr/base", "pitr/wal"] {
        for entry in std::fs::read_dir(config.backup_dir().join(folder))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(format!("{folder}/{name}"));
            }
        }
    }
    names.sort();
    names
}

/// What s3s-fs holds below `plant/pitr/`.
fn s3_pitr_names(s3: &S3Server) -> Vec<String> {
    s3.files("mes-backups")
        .into_iter()
        .filter_map(|name| name.strip_prefix("plant/").map(str::to_owned))
        .filter(|name| name.starts_with("pitr/"))
        .collect()
}

fn offsite_entry(bus: &Bus, name: &str) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&ctl(bus, &["status", "--json"]).1).unwrap();
    status["offsite"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no target {name}: {status}"))
        .clone()
}

/// Base backups and shipped WAL go to S3 and Azure like any backup, each
/// verified there; a store that cannot be reached leaves shipping working
/// and shows in the status, and catches up; with the local PITR files gone,
/// a point-in-time restore reads them from the store.
#[tokio::test(flavor = "multi_thread")]
async fn pitr_files_go_off_site_and_a_restore_reads_them_back() {
    let bus = Bus::start();
    let mut s3 = S3Server::start();
    s3.create_bucket("mes-backups");
    let azure = Azurite::start();
    azure.create_container("plant-backups");
    let pg = Postgres::with_fixture_on(Flavor::TimescaleDb);
    let mut config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 3600);
    let s3_credentials = s3.credentials_file(config.dir());
    add_offsite(
        &mut config,
        s3.target("s3", "mes-backups", "plant", &s3_credentials),
    );
    let azure_credentials = azure.credentials_file(config.dir());
    add_offsite(
        &mut config,
        azure.target("azure", "plant-backups", "plant", &azure_credentials),
    );
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    write_moment(&pg, 1);
    let (time, expected) = mark_moment(&pg).await;
    ok(&bus, &["pitr", "base-backup"]);
    write_moment(&pg, 2);
    ok(&bus, &["pitr", "sync"]);
    let out = ok(&bus, &["offsite", "sync"]);
    assert!(
        out.contains("verified") || out.contains("up to date"),
        "{out}"
    );

    let local = local_pitr_names(&config);
    assert!(
        local
            .iter()
            .filter(|n| n.starts_with("pitr/base/") && n.ends_with(".json"))
            .count()
            == 2
            && local.iter().any(|n| n.starts_with("pitr/wal/")),
        "{local:?}"
    );
    assert_eq!(s3_pitr_names(&s3), local, "S3 mirrors the PITR folder");
    assert_eq!(
        azure
            .names("plant-backups", "plant")
            .into_iter()
            .filter(|n| n.starts_with("pitr/"))
            .collect::<Vec<_>>(),
        local,
        "Azure mirrors the PITR folder"
    );
    for name in local.iter().filter(|n| !n.ends_with(".json")) {
        assert_eq!(
            std::fs::read(s3.object_file("mes-backups", &format!("plant/{name}"))).unwrap(),
            std::fs::read(config.backup_dir().join(name)).unwrap(),
            "{name}"
        );
    }
    for target in ["s3", "azure"] {
        let entry = offsite_entry(&bus, target);
        assert_eq!(entry["status"], "healthy", "{entry}");
        assert_eq!(entry["queue_length"], 0, "{entry}");
    }
    // The off-site state stays small: WAL is remembered as ranges.
    let state = std::fs::read_to_string(config.state_dir().join("offsite.json")).unwrap();
    assert!(!state.contains("pitr/wal"), "{state}");

    // S3 unreachable: shipping goes on, the status names the target.
    s3.stop();
    pg.psql(
        "mes",
        "CREATE TABLE public.offsite_down (x int); INSERT INTO public.offsite_down SELECT generate_series(1, 1000);",
    );
    ok(&bus, &["pitr", "sync"]);
    assert_eq!(
        server_archive(&pg),
        "",
        "shipping stopped with the store down"
    );
    let (success, _, stderr) = ctl(&bus, &["offsite", "sync"]);
    assert!(!success, "the sync succeeded with S3 down");
    assert!(stderr.contains("'s3'"), "{stderr}");
    let entry = offsite_entry(&bus, "s3");
    assert_eq!(entry["status"], "degraded", "{entry}");
    assert!(entry["queue_length"].as_u64().unwrap() > 0, "{entry}");
    let (_, status, _) = ctl(&bus, &["status", "--json"]);
    assert!(status.contains("point-in-time recovery files"), "{status}");
    let pitr = pitr_status(&bus);
    assert_eq!(pitr["last_error"], serde_json::Value::Null, "{pitr}");
    assert_eq!(offsite_entry(&bus, "azure")["queue_length"], 0);
    s3.start_again();
    ok(&bus, &["offsite", "sync"]);
    assert_eq!(s3_pitr_names(&s3), local_pitr_names(&config));
    assert_eq!(offsite_entry(&bus, "s3")["status"], "healthy");

    // The local PITR files are gone: the restore reads them from S3.
    let aside = config.dir().join("pitr-aside");
    std::fs::rename(config.backup_dir().join("pitr"), &aside).unwrap();
    // The confirmation names the window the store holds, not the local one.
    let preview = agent
        .proxy()
        .await
        .preview("restore-to-time-from", &format!("s3/{time}"))
        .await
        .unwrap();
    assert!(
        preview
            .iter()
            .any(|line| line.starts_with("Restorable window on off-site target 's3': ")),
        "{preview:?}"
    );
    let out = ok(
        &bus,
        &["restore", "--to-time", &time, "--from", "s3", "--yes"],
    );
    assert!(
        out.contains("point-in-time restore") && out.contains("'s3'"),
        "{out}"
    );
    assert_recovered(pg.fingerprint("mes"), &expected, "restored from S3");
    drop(agent);
}

/// WAL written and switched `count` times (a switch after nothing written
/// archives nothing).
fn switch_segments(pg: &Postgres, count: u32, tag: &str) {
    for n in 0..count {
        pg.psql(
            "mes",
            &format!("INSERT INTO mes_audit.change_log (table_name, operation, row_key) VALUES ('{tag}', 'I', '{n}'); SELECT pg_switch_wal();"),
        );
    }
}

/// The shipped segments form one run without a gap or a repeat, and the
/// window reaches the newest one.
#[track_caller]
fn assert_chain_whole(bus: &Bus, config: &AgentConfig, what: &str) {
    let names = shipped_segments(config);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique, names, "{what}: a segment was shipped twice");
    let status = pitr_status(bus);
    assert!(
        status["gaps"].as_array().unwrap().is_empty(),
        "{what}: {status}"
    );
    assert_eq!(
        status["newest_wal"].as_str().unwrap(),
        names.last().unwrap(),
        "{what}: {status}"
    );
    assert!(
        hidden_files(&config.backup_dir().join("pitr/wal")).is_empty(),
        "{what}: partial WAL files left"
    );
}

/// SIGKILL while a base backup streams: no partial base backup is listed
/// (the hidden file goes at the next start), the server's backup ends with
/// the connection, the next base backup works and no WAL is lost.
async fn an_agent_killed_during_a_base_backup_leaves_no_partial_one(flavor: Flavor) {
    let (bus, pg, config, mut agent) = enabled_without_timed_switches(flavor).await;
    write_moment(&pg, 1);
    ok(&bus, &["pitr", "sync"]);
    agent.terminate().await;

    let mut paused = config.clone();
    paused.env("MESBAK_TEST_PAUSE_AT", "pitr-base-streaming");
    let mut agent = Agent::spawn(&bus, &paused).await;
    let job = agent.proxy().await.pitr_base_backup().await.unwrap();
    let within = Duration::from_secs(120);
    wait_paused(&config, "pitr-base-streaming", &job, &agent, within).await;
    let marker = pause_marker(&config, "pitr-base-streaming");
    let base_dir = config.backup_dir().join("pitr/base");
    assert_eq!(hidden_files(&base_dir).len(), 1, "the partial base backup");
    agent.kill9();
    std::fs::remove_file(&marker).unwrap();
    let _ = job;
    // pg_basebackup loses its reader: the server ends the backup.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_progress_basebackup;",
    ) != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still runs the killed base backup"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    write_moment(&pg, 2);

    let _agent = Agent::spawn(&bus, &config).await;
    assert!(
        hidden_files(&base_dir).is_empty(),
        "the partial file is left"
    );
    let status = pitr_status(&bus);
    assert_eq!(
        status["base_backups"].as_array().unwrap().len(),
        1,
        "a partial base backup is listed: {status}"
    );
    ok(&bus, &["pitr", "base-backup"]);
    write_moment(&pg, 3);
    ok(&bus, &["pitr", "sync"]);
    let status = pitr_status(&bus);
    assert_eq!(
        status["base_backups"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    assert_chain_whole(&bus, &config, "after the killed base backup");
    assert_eq!(server_archive(&pg), "");
}

/// `docker restart` of the database container while a backlog of segments
/// is being shipped: the round in flight fails or finishes, nothing is
/// lost or shipped twice, the chain has no gap and shipping resumes.
async fn the_database_restarted_under_shipping_loses_no_segment(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    let before = shipped_segments(&config).len();
    switch_segments(&pg, 30, "restart");
    let sync = agent.proxy().await.pitr_sync().await.unwrap();
    // Restart once shipping is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while shipped_segments(&config).len() < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "shipping never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.restart();
    let outcome = wait_job_outcome(agent.connection(), &sync, DEFAULT_JOB_TIMEOUT).await;
    eprintln!(
        "sync across the restart: success {}, {}",
        outcome.success, outcome.message
    );
    // Shipping resumes on its own (the shipper's next round) and on request.
    write_moment(&pg, 1);
    // The window's end is the newest segment's time in whole seconds:
    // switch in a later second, so `time` lies inside it.
    let (time, expected) = mark_moment(&pg).await;
    switch_segments(&pg, 2, "after");
    ok(&bus, &["pitr", "sync"]);
    assert_eq!(server_archive(&pg), "", "segments left on the server");
    assert!(shipped_segments(&config).len() >= before + 32);
    assert_chain_whole(&bus, &config, "after the restart");
    let status = pitr_status(&bus);
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    // The chain across the restart recovers.
    let out = ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(pg.fingerprint("mes"), &expected, "across the restart");
    drop(agent);
}

/// Archiving that failed for a while and then caught up stores its backlog
/// in one burst, every segment with about the same (later) archive time:
/// the first segment archived after the target is then not the last one
/// holding commits before it. The recovery goes on into the later
/// segments until it passes the target; the restore gives exactly the
/// database at the target, not the one at the end of that first segment.
async fn a_backlog_archived_in_a_burst_is_recovered_to_the_exact_time(flavor: Flavor) {
    // No timed segment switches: only the test's.
    let (bus, pg, config, agent) = enabled_without_timed_switches(flavor).await;
    let folder = pg.psql(
        "postgres",
        "SELECT current_setting('data_directory') || '/mesbak_wal';",
    );
    // The archive folder refuses the server: its segments wait in pg_wal.
    pg.exec(&format!("chmod 000 '{folder}'"), "close the archive folder");
    write_moment(&pg, 1);
    pg.psql("mes", "SELECT pg_switch_wal();");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_moment(&pg, 2);
    let (time, expected) = mark_moment(&pg).await;
    pg.psql("mes", "SELECT pg_switch_wal();");
    write_moment(&pg, 3);
    pg.psql("mes", "SELECT pg_switch_wal();");
    let failing = "SELECT failed_count > 0 AND last_failed_wal > coalesce(last_archived_wal, '') FROM pg_stat_archiver;";
    let by = std::time::Instant::now() + Duration::from_secs(30);
    while pg.psql("postgres", failing) != "t" {
        assert!(std::time::Instant::now() < by, "archiving did not fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Open again: the backlog is archived at once, after `time`.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pg.exec(&format!("chmod 700 '{folder}'"), "open the archive folder");
    switch_segments(&pg, 1, "open");
    ok(&bus, &["pitr", "sync"]);
    assert_chain_whole(&bus, &config, "after the backlog");
    let out = ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(
        pg.fingerprint("mes"),
        &expected,
        "restored into the backlog",
    );
    drop(agent);
}

/// The files in the recovering scratch cluster's WAL folder, watched
/// until `done` (docker exec every 100 ms): the most seen at once.
fn watch_scratch_wal(label: String, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut most = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=org.mesbak.pitr-scratch={label}"),
            ])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().next() {
            let out = std::process::Command::new("docker")
                .args([
                    "exec",
                    id,
                    "sh",
                    "-c",
                    "ls \"$PGDATA/mesbak_restore_wal\" 2>/dev/null | wc -l",
                ])
                .output()
                .unwrap();
            let count = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            most = most.max(count);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    most
}

/// A target far from the base backup (here 60 segments; a week of
/// minute-by-minute segments is 10,000, 160 GiB unpacked): the segments go
/// into the scratch cluster a window at a time (512 MiB, 32 segments of 16
/// MiB), the replayed ones removed, and the restore still gives exactly
/// the database at the target.
async fn a_long_chain_is_recovered_through_a_window_of_segments(flavor: Flavor) {
    let (bus, pg, config, agent) = enabled_without_timed_switches(flavor).await;
    write_moment(&pg, 1);
    switch_segments(&pg, 60, "long");
    write_moment(&pg, 2);
    let (time, expected) = mark_moment(&pg).await;
    pg.psql("mes", "DELETE FROM mes_audit.change_log;");
    ok(&bus, &["pitr", "sync"]);
    assert_chain_whole(&bus, &config, "after 60 segments");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (label, done) = (config.state_dir().display().to_string(), done.clone());
        std::thread::spawn(move || watch_scratch_wal(label, done))
    };
    let out = ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(
        pg.fingerprint("mes"),
        &expected,
        "restored across 60 segments",
    );
    // A window of 32, plus fewer than a quarter window replayed and not
    // yet removed; and the watch saw the folder at all.
    assert!(
        (1..=40).contains(&most),
        "the scratch cluster held {most} WAL segments at once"
    );
    let removals = agent
        .log()
        .matches("replayed WAL segments removed from the scratch volume")
        .count();
    assert!(removals >= 2, "replayed segments removed {removals} times");
    drop(agent);
}

/// An agent whose folders the Docker engine does not see as it does (an
/// agent in a container of its own, a remote engine): the engine refuses to
/// mount the scratch cluster's shared folder (and makes none), so the dump
/// comes through the engine's exec streams, and restores to the moment all
/// the same.
async fn an_agent_the_engine_cannot_share_a_folder_with_restores_through_exec_streams(
    flavor: Flavor,
) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let mut config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 10);
    config.private_mount(&config.state_dir().join("shared"));
    let agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);

    write_moment(&pg, 1);
    let (moment, expected) = mark_moment(&pg).await;
    write_moment(&pg, 2);
    pg.psql("mes", "DELETE FROM mes_audit.change_log;");
    ok(&bus, &["pitr", "sync"]);

    let live = pg.fingerprint("mes");
    let out = ok(&bus, &["test-restore", "--to-time", &moment]);
    assert!(out.contains("passed"), "{out}");
    pg.fingerprint("mes")
        .assert_same(&live, "a test restore to a time changes nothing");

    let out = ok(&bus, &["restore", "--to-time", &moment, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(
        pg.fingerprint("mes"),
        &expected,
        "restored through exec streams",
    );
    let log = agent.log();
    assert!(
        log.contains("its dump comes through the engine"),
        "the missing proof was not noticed:\n{log}"
    );
    assert_eq!(
        log.matches("dump_through=exec").count(),
        2,
        "the test restore and the restore did not both dump through exec streams:\n{log}"
    );
    // The engine refused the folder it could not see rather than make one.
    let engine_view: Vec<_> = std::fs::read_dir(config.state_dir().join("shared"))
        .unwrap()
        .collect();
    assert!(
        engine_view.is_empty(),
        "the engine created {engine_view:?} where the agent cannot see it"
    );
    drop(agent);
}

/// A `pitr sync` on `agent` that must finish within a minute, while `held`
/// (a base backup or a recovery) waits at a pause point.
async fn sync_while_held(agent: &Agent, held: &zbus::zvariant::OwnedObjectPath, what: &str) {
    let sync = agent.proxy().await.pitr_sync().await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &sync, Duration::from_secs(60)).await;
    assert!(
        outcome.success,
        "pitr sync during {what}: {}",
        outcome.message
    );
    let held = job_proxy(agent.connection(), held.as_str()).await;
    assert_eq!(
        held.state().await.unwrap(),
        "running",
        "{what} ended before the sync: the sync is not proven to run beside it"
    );
}

/// A base backup or a point-in-time recovery of a big database takes its
/// time: WAL shipping goes on meanwhile (a `pitr sync` finishes while
/// either is held at a pause point), and so does a base backup beside the
/// recovery, leaving its retention, which deletes files, to the recovery
/// that reads them, to run as it lets them go. Nothing is shipped twice or
/// lost, the window reaches the moment written during the recovery, and
/// the base backup taken while a sync shipped its first segment restores
/// to that moment exactly.
async fn shipping_goes_on_during_a_base_backup_and_a_recovery(flavor: Flavor) {
    let (bus, pg, config, mut agent) = enabled_without_timed_switches(flavor).await;
    write_moment(&pg, 1);
    let (first, _) = mark_moment(&pg).await;
    ok(&bus, &["pitr", "sync"]);
    agent.terminate().await;

    let mut paused = config.clone();
    paused.env(
        "MESBAK_TEST_PAUSE_AT",
        "pitr-base-streaming,pitr-recovery-planned",
    );
    let mut agent = Agent::spawn(&bus, &paused).await;
    let within = Duration::from_secs(120);
    let base = agent.proxy().await.pitr_base_backup().await.unwrap();
    wait_paused(&config, "pitr-base-streaming", &base, &agent, within).await;
    write_moment(&pg, 2);
    sync_while_held(&agent, &base, "a base backup").await;
    std::fs::remove_file(pause_marker(&config, "pitr-base-streaming")).unwrap();
    let (success, message) = wait_job(agent.connection(), &base).await;
    assert!(success, "{message}");

    let recovery = agent
        .proxy()
        .await
        .test_restore_to_time(&first)
        .await
        .unwrap();
    wait_paused(&config, "pitr-recovery-planned", &recovery, &agent, within).await;
    write_moment(&pg, 3);
    let (third, at_third) = mark_moment(&pg).await;
    sync_while_held(&agent, &recovery, "a point-in-time recovery").await;
    // A base backup goes on too; its retention is left to the recovery,
    // which runs it as it lets the files go.
    let base = agent.proxy().await.pitr_base_backup().await.unwrap();
    wait_paused(&config, "pitr-base-streaming", &base, &agent, within).await;
    std::fs::remove_file(pause_marker(&config, "pitr-base-streaming")).unwrap();
    let outcome = wait_job_outcome(agent.connection(), &base, Duration::from_secs(120)).await;
    assert!(
        outcome.success
            && outcome
                .message
                .contains("retention runs when the point-in-time recovery reading the files ends"),
        "the base backup beside the recovery: {}",
        outcome.message
    );
    assert!(!agent.log().contains("deferred PITR retention ran"));
    std::fs::remove_file(pause_marker(&config, "pitr-recovery-planned")).unwrap();
    let (success, message) = wait_job(agent.connection(), &recovery).await;
    assert!(success, "the test restore to {first}: {message}");
    assert!(
        agent.log().contains("deferred PITR retention ran"),
        "the recovery did not run the deferred retention"
    );
    // The test restore's load wrote WAL on the live server since.
    ok(&bus, &["pitr", "sync"]);

    assert_chain_whole(
        &bus,
        &config,
        "after shipping beside a base backup and a recovery",
    );
    let status = pitr_status(&bus);
    assert_eq!(
        status["base_backups"].as_array().unwrap().len(),
        3,
        "{status}"
    );
    let window_to = status["window"]["to"].as_str().unwrap().to_owned();
    assert!(
        window_to >= third,
        "the window ends at {window_to}, before {third}"
    );
    assert_eq!(
        server_archive(&pg),
        "",
        "segments left in the server's folder"
    );

    agent.terminate().await;
    let _agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["restore", "--to-time", &third, "--yes"]);
    assert_recovered(
        pg.fingerprint("mes"),
        &at_third,
        "restored from the base backup taken beside a sync",
    );
}

/// The entries of the newest base backup, as GNU tar lists them.
fn newest_base_entries(config: &AgentConfig) -> Vec<String> {
    let dir = config.backup_dir().join("pitr/base");
    let mut bases: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz.enc"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    bases.sort();
    let newest = bases.last().expect("a base backup");
    let mut plain = Vec::new();
    let file = std::fs::File::open(newest).unwrap();
    std::io::Read::read_to_end(
        &mut mesbak_format::Decryptor::new(file, &config.key()).unwrap(),
        &mut plain,
    )
    .unwrap();
    let mut tar = std::process::Command::new("tar")
        .args(["-tzf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = tar.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &plain));
    let out = tar.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "GNU tar cannot read {}: {}",
        newest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A base backup leaves out the files waiting in the server's archive
/// folder (segments are shipped on their own; a base backup taken while
/// shipping is behind would carry them twice): the folder's own entry
/// stays, GNU tar reads the base backup whole, and a point-in-time restore
/// from it gives the moment exactly.
async fn a_base_backup_leaves_out_the_servers_archive_folder(flavor: Flavor) {
    let (bus, pg, config, agent) = enabled_without_timed_switches(flavor).await;
    let folder = pg.psql(
        "postgres",
        "SELECT current_setting('data_directory') || '/mesbak_wal';",
    );
    // What an archiver killed mid-copy leaves: a temporary file, never
    // shipped, that stays in the folder.
    pg.exec(
        &format!(
            "head -c 3M /dev/urandom > '{folder}/archtemp.000000010000000000000042.1.1' && chown postgres '{folder}/archtemp.000000010000000000000042.1.1'"
        ),
        "leave an archiver's temporary file",
    );
    switch_segments(&pg, 3, "waiting");
    write_moment(&pg, 1);
    ok(&bus, &["pitr", "base-backup"]);

    let entries = newest_base_entries(&config);
    assert!(
        entries.iter().any(|e| e == "global/pg_control"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e == "mesbak_wal/"),
        "the archive folder's own entry is gone: {entries:?}"
    );
    let inside: Vec<&String> = entries
        .iter()
        .filter(|e| e.starts_with("mesbak_wal/") && e.as_str() != "mesbak_wal/")
        .collect();
    assert!(
        inside.is_empty(),
        "archive files in the base backup: {inside:?}"
    );
    let left_out = agent.last_logged_number("base backup written", "archive_files_left_out");
    assert!(
        left_out >= 1,
        "the temporary file was not left out: {left_out}"
    );
    assert!(
        server_archive(&pg).contains("archtemp."),
        "the server's folder lost the archiver's file"
    );

    write_moment(&pg, 2);
    let (time, expected) = mark_moment(&pg).await;
    write_moment(&pg, 3);
    ok(&bus, &["pitr", "sync"]);
    assert_chain_whole(&bus, &config, "after the base backup");
    ok(&bus, &["restore", "--to-time", &time, "--yes"]);
    assert_recovered(
        pg.fingerprint("mes"),
        &expected,
        "restored from a base backup without the archive folder's files",
    );
}

/// The segment after the target's goes in before the scratch cluster
/// starts, when it authenticates: a recovery that needs it (no commit
/// after the target in the target's segment) finds it there. A damaged
/// one stays out and fails nothing when the recovery does not need it;
/// a damaged segment a recovery needs is refused before anything changes.
async fn the_segment_after_the_targets_goes_in_first_unless_damaged(flavor: Flavor) {
    let (bus, pg, config, agent) = enabled_without_timed_switches(flavor).await;
    // The target's segment ends with nothing committed after the target.
    write_moment(&pg, 1);
    let (needs_next, at_needs_next) = mark_moment(&pg).await;
    pg.psql("mes", "SELECT pg_switch_wal();");
    write_moment(&pg, 2);
    pg.psql("mes", "SELECT pg_switch_wal();");
    ok(&bus, &["pitr", "sync"]);
    ok(&bus, &["restore", "--to-time", &needs_next, "--yes"]);
    assert_recovered(
        pg.fingerprint("mes"),
        &at_needs_next,
        "restored from the target's segment and the next",
    );
    assert_eq!(
        agent.last_logged_number("scratch cluster recovered", "later_prefed"),
        1,
        "the next segment was not fed first"
    );

    // A commit after the target in the target's own segment; the next
    // segment (holding the third moment) damaged.
    write_moment(&pg, 3);
    let (own, at_own) = mark_moment(&pg).await;
    write_moment(&pg, 4);
    // The segment after the one the switch completes: the server's own
    // background writes (autovacuum, TimescaleDB's job scheduler) may put
    // WAL into it before the fifth moment, so it is named, not guessed
    // from what the next sync ships.
    let damaged = next_segment(
        pg.psql("mes", "SELECT pg_walfile_name(pg_switch_wal());")
            .trim(),
    );
    write_moment(&pg, 5);
    let (inside_damaged, _) = mark_moment(&pg).await;
    pg.psql("mes", "SELECT pg_switch_wal();");
    ok(&bus, &["pitr", "sync"]);
    assert_chain_whole(&bus, &config, "before the damage");
    assert!(
        shipped_segments(&config).contains(&damaged),
        "segment {damaged}, after the target's, was shipped"
    );
    let wal_dir = config.backup_dir().join("pitr/wal");
    let file = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{damaged}_"))
        })
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();

    ok(&bus, &["restore", "--to-time", &own, "--yes"]);
    assert_recovered(
        pg.fingerprint("mes"),
        &at_own,
        "restored past a damaged segment it did not need",
    );
    assert_eq!(
        agent.last_logged_number("scratch cluster recovered", "later_prefed"),
        0,
        "the damaged segment went in"
    );
    assert!(
        agent
            .log()
            .contains("a WAL segment past the target's did not authenticate"),
        "the damaged segment was not noticed"
    );

    let (success, _, stderr) = ctl(&bus, &["restore", "--to-time", &inside_damaged, "--yes"]);
    assert!(!success, "a time inside a damaged segment was restored");
    assert!(
        stderr.contains(&format!("WAL segment {damaged} is damaged"))
            && stderr.contains("nothing was changed")
            && stderr.contains("restore an earlier time"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_recovered(
        pg.fingerprint("mes"),
        &at_own,
        "the live database after a refused restore",
    );
}

/// A point-in-time restore stops the writers and starts its safety backup
/// while the scratch cluster recovers, once the base backup and the WAL
/// are authenticated: a damaged base backup is refused with the writer
/// never stopped and no safety backup; an agent killed with the writer
/// stopped and the safety backup started puts the writer back at its next
/// start; the restore then stops the writer once and keeps a safety backup
/// of what it replaced.
async fn a_point_in_time_restore_stops_the_writers_once_its_files_are_sound(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let writer = Writer::start();
    let config = AgentConfig::for_postgres(&pg)
        .with("pitr.ship_interval_secs", 3600)
        .with("restore.stop_containers", vec![writer.name.clone()]);
    let mut agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
    write_moment(&pg, 1);
    let (target, at_target) = mark_moment(&pg).await;
    write_moment(&pg, 2);
    pg.psql("mes", "SELECT pg_switch_wal();");
    ok(&bus, &["pitr", "sync"]);
    let live = pg.fingerprint("mes");
    let writer_started = writer.started_at();
    let backups_before = agent.proxy().await.list_backups().await.unwrap().len();

    // A damaged base backup: refused, the writer never stopped.
    let base = std::fs::read_dir(config.backup_dir().join("pitr/base"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            !p.to_string_lossy().ends_with(".json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .expect("a base backup");
    let sound = std::fs::read(&base).unwrap();
    let mut damaged = sound.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    std::fs::write(&base, &damaged).unwrap();
    let (success, _, stderr) = ctl(&bus, &["restore", "--to-time", &target, "--yes"]);
    assert!(!success, "a damaged base backup was restored");
    let id = base.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&format!("base backup {id} is damaged"))
            && stderr.contains("nothing was changed")
            && stderr.contains("restore a time before it"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        writer.started_at(),
        writer_started,
        "the writer was stopped for a damaged base backup"
    );
    assert!(writer.is_running());
    assert_eq!(
        agent.proxy().await.list_backups().await.unwrap().len(),
        backups_before,
        "a safety backup was taken for a damaged base backup"
    );
    pg.fingerprint("mes")
        .assert_same(&live, "after a refused restore");
    std::fs::write(&base, &sound).unwrap();

    // Killed once the writer is stopped and the safety backup started: the
    // next start puts the writer back; nothing else changed.
    agent.terminate().await;
    let mut paused = config.clone();
    paused.env("MESBAK_TEST_PAUSE_AT", "restore-safety-started");
    let mut agent = Agent::spawn(&bus, &paused).await;
    let job = agent
        .proxy()
        .await
        .restore_to_time(&target, mesbak_interface::RestoreOptions::default())
        .await
        .unwrap();
    wait_paused(
        &config,
        "restore-safety-started",
        &job,
        &agent,
        Duration::from_secs(120),
    )
    .await;
    assert!(
        !writer.is_running(),
        "the writer runs while the safety backup starts"
    );
    agent.kill9();
    std::fs::remove_file(pause_marker(&config, "restore-safety-started")).unwrap();
    let agent = Agent::spawn(&bus, &config).await;
    assert!(writer.is_running(), "the writer was left stopped");
    pg.fingerprint("mes")
        .assert_same(&live, "after a killed restore");
    let copies = "SELECT count(*) FROM pg_database WHERE datname LIKE 'mes_restore_%'";
    assert_eq!(
        pg.psql("postgres", copies).trim(),
        "0",
        "a loaded copy was left"
    );
    assert_eq!(
        agent.proxy().await.list_backups().await.unwrap().len(),
        backups_before,
        "a safety backup cut short was left"
    );

    // The restore: the writer stopped and started once, a safety backup of
    // the database it replaced.
    let writer_started = writer.started_at();
    let out = ok(&bus, &["restore", "--to-time", &target, "--yes"]);
    assert!(out.contains("point-in-time restore"), "{out}");
    assert_recovered(pg.fingerprint("mes"), &at_target, "the restore");
    assert!(writer.is_running(), "the writer was left stopped");
    assert_ne!(
        writer.started_at(),
        writer_started,
        "the writer was not stopped"
    );
    let backups = agent.proxy().await.list_backups().await.unwrap();
    let safety: Vec<_> = backups
        .iter()
        .filter(|b| b.id.contains("pre-restore"))
        .collect();
    assert_eq!(safety.len(), 1, "{backups:?}");
    // The writer stopped while the scratch cluster recovered.
    let log = agent.log();
    let stopped = log
        .rfind("stopping a container for the job")
        .expect("the writer's stop in the log");
    let recovered = log
        .rfind("scratch cluster recovered")
        .expect("the recovery in the log");
    assert!(
        stopped < recovered,
        "the writer was stopped only after the recovery"
    );
}

on_both_servers!(
    a_point_in_time_restore_stops_the_writers_once_its_files_are_sound,
    the_segment_after_the_targets_goes_in_first_unless_damaged,
    a_base_backup_leaves_out_the_servers_archive_folder,
    shipping_goes_on_during_a_base_backup_and_a_recovery,
    an_agent_the_engine_cannot_share_a_folder_with_restores_through_exec_streams,
    a_stopped_server_is_started_while_the_scratch_cluster_recovers_and_stopped_again,
    a_long_chain_is_recovered_through_a_window_of_segments,
    a_backlog_archived_in_a_burst_is_recovered_to_the_exact_time,
    point_in_time_restore_goes_back_to_each_moment,
    a_gap_in_the_chain_is_found_and_refused_past_it,
    a_new_server_is_restored_from_base_backup_and_wal_alone,
    an_agent_killed_while_shipping_or_recovering_loses_nothing,
    a_failing_shipper_is_reported_before_the_server_fills,
    an_agent_killed_during_a_base_backup_leaves_no_partial_one,
    the_database_restarted_under_shipping_loses_no_segment,
);
