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
        tokio::time::sleep(Duration::from_millis(1100)).await;
        moments.push((now(), pg.fingerprint("mes")));
        tokio::time::sleep(Duration::from_millis(1100)).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (time, expected) = (now(), pg.fingerprint("mes"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    let config = AgentConfig::for_postgres(&pg).with("pitr.ship_interval_secs", 3600);
    let mut agent = Agent::spawn(&bus, &config).await;
    ok(&bus, &["pitr", "enable", "--yes"]);
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
    let _agent = Agent::spawn(&bus, &config).await;
    assert_eq!(
        scratch(&label),
        0,
        "the next start removed the scratch container"
    );
    pg.fingerprint("mes")
        .assert_same(&live, "after a killed point-in-time restore");
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

on_both_servers!(
    point_in_time_restore_goes_back_to_each_moment,
    a_gap_in_the_chain_is_found_and_refused_past_it,
    a_new_server_is_restored_from_base_backup_and_wal_alone,
    an_agent_killed_while_shipping_or_recovering_loses_nothing,
    a_failing_shipper_is_reported_before_the_server_fills,
);
