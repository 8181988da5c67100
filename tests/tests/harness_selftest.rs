//! Tests of the test harness itself: the private bus and its policy, the
//! PostgreSQL containers, the fixture and the fingerprint, the agent
//! configuration, job waiting and the build of the programs under test.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

use mesbak_interface::{BUS_NAME, JOBS_PATH, MANAGER_PATH};
use mesbak_tests::{
    Agent, AgentConfig, Bus, Flavor, Gateway, OPERATOR, OUTSIDER, Postgres, Reach, Volume,
    assert_fingerprint_eq, binary, mesbakctl, mesbakctl_as, on_both_servers, wait_job,
    wait_job_outcome,
};
use zbus::object_server::SignalEmitter;

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `dbus-send` as `user` (None = root) on `bus`, with `--print-reply`.
fn dbus_send(bus: &Bus, user: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match user {
        Some(user) => bus.command_as(user, "dbus-send"),
        None => bus.command("dbus-send"),
    };
    cmd.args(["--system", "--print-reply", "--reply-timeout=5000"])
        .args(args)
        .output()
        .expect("run dbus-send")
}

fn request_name(bus: &Bus, user: Option<&str>, name: &str) -> Output {
    dbus_send(
        bus,
        user,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &format!("string:{name}"),
            "uint32:0",
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn root_connects_to_the_private_bus_and_lists_names() {
    let bus = Bus::start();
    assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
    let mode = std::fs::metadata(bus.socket().parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "the socket folder must be reachable");

    let conn = bus.connection().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let names: Vec<String> = dbus
        .list_names()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "org.freedesktop.DBus"),
        "{names:?}"
    );
    let me = conn.unique_name().unwrap().to_string();
    assert!(names.contains(&me), "{me} not in {names:?}");
    // Really a system bus with EXTERNAL auth: the daemon knows we are root.
    let uid = dbus
        .get_connection_unix_user(zbus::names::BusName::try_from(me.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(uid, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_users_connect_but_only_group_mesbak_reaches_the_agent() {
    let bus = Bus::start();
    // Stand in for the agent: root owns the name and serves the manager
    // object with a Version property.
    let agent = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .name(BUS_NAME)
        .unwrap()
        .serve_at(MANAGER_PATH, FakeManager)
        .unwrap()
        .build()
        .await
        .expect("root may own org.mesbak.Agent1");

    for user in [OPERATOR, OUTSIDER] {
        let out = dbus_send(
            &bus,
            Some(user),
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetConnectionUnixUser",
                &format!("string:{}", agent.unique_name().unwrap()),
            ],
        );
        assert!(
            out.status.success(),
            "{user} cannot use the bus: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("uint32 0"),
            "{}",
            text(&out)
        );
    }

    let get_version = [
        "--dest=org.mesbak.Agent1",
        MANAGER_PATH,
        "org.freedesktop.DBus.Properties.Get",
        "string:org.mesbak.Agent1",
        "string:Version",
    ];
    for user in [Some(OPERATOR), None] {
        let out = dbus_send(&bus, user, &get_version);
        assert!(
            out.status.success(),
            "{user:?} must reach the agent: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("0.0-fake"),
            "{}",
            text(&out)
        );
    }
    let out = dbus_send(&bus, Some(OUTSIDER), &get_version);
    assert!(
        !out.status.success(),
        "{OUTSIDER} must not reach the agent: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
        "{}",
        text(&out)
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_root_may_own_the_agent_name() {
    let bus = Bus::start();
    for user in [OPERATOR, OUTSIDER] {
        for name in [BUS_NAME, "org.example.Anything"] {
            let out = request_name(&bus, Some(user), name);
            assert!(
                !out.status.success(),
                "{user} could own {name}: {}",
                text(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
                "{}",
                text(&out)
            );
        }
    }
    let out = request_name(&bus, None, BUS_NAME);
    assert!(
        out.status.success(),
        "root must own {BUS_NAME}: {}",
        text(&out)
    );
    // 1 = DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uint32 1"),
        "{}",
        text(&out)
    );
}

/// A stand-in manager object.
struct FakeManager;

#[zbus::interface(name = "org.mesbak.Agent1")]
impl FakeManager {
    #[zbus(property)]
    fn version(&self) -> String {
        "0.0-fake".into()
    }
}

/// A stand-in job object with the contract's interface name, to test
/// `wait_job` without the agent.
struct FakeJob {
    state: String,
    message: String,
}

#[zbus::interface(name = "org.mesbak.Agent1.Job")]
impl FakeJob {
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.clone()
    }

    #[zbus(property)]
    fn message(&self) -> String {
        self.message.clone()
    }

    #[zbus(property)]
    fn error_name(&self) -> String {
        if self.state == "failed" {
            "NoSpace".into()
        } else {
            String::new()
        }
    }

    #[zbus(property)]
    fn files(&self) -> Vec<String> {
        vec!["mes_2026-01-01_000000.sql.gz.enc".into()]
    }

    #[zbus(property)]
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_job_sees_running_finished_and_failed_jobs() {
    let bus = Bus::start();
    let running = format!("{JOBS_PATH}/1");
    let done = format!("{JOBS_PATH}/2");
    let failed = format!("{JOBS_PATH}/3");
    let job = |state: &str, message: &str| FakeJob {
        state: state.into(),
        message: message.into(),
    };
    let server = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .name(BUS_NAME)
        .unwrap()
        .serve_at(running.as_str(), job("running", ""))
        .unwrap()
        .serve_at(done.as_str(), job("succeeded", "already done"))
        .unwrap()
        .serve_at(failed.as_str(), job("failed", "disk full"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let client = bus.connection().await;

    // Already finished: read from the properties.
    assert_eq!(
        wait_job(&client, done.as_str()).await,
        (true, "already done".to_owned())
    );
    let outcome = wait_job_outcome(&client, failed.as_str(), Duration::from_secs(5)).await;
    assert!(!outcome.success);
    assert_eq!(outcome.message, "disk full");
    assert_eq!(outcome.error_name, "NoSpace");
    assert_eq!(outcome.files, ["mes_2026-01-01_000000.sql.gz.enc"]);

    // Running: finishes 300 ms later with the signal.
    let iface = server
        .object_server()
        .interface::<_, FakeJob>(running.as_str())
        .await
        .unwrap();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            let mut job = iface.get_mut().await;
            job.state = "succeeded".into();
            job.message = "backup written".into();
        }
        FakeJob::finished(iface.signal_emitter(), true, "backup written")
            .await
            .unwrap();
    });
    let started = Instant::now();
    let path = zbus::zvariant::OwnedObjectPath::try_from(running.as_str()).unwrap();
    assert_eq!(
        wait_job(&client, &path).await,
        (true, "backup written".to_owned())
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    finisher.await.unwrap();
}

async fn fixture_loads_and_fingerprint_is_stable_and_sensitive(flavor: Flavor) {
    let started = Instant::now();
    let pg = Postgres::with_fixture_on(flavor);
    eprintln!("server + fixture: {:.1} s", started.elapsed().as_secs_f64());
    assert!(pg.is_running());
    assert!(pg.name().starts_with("mesbak-test-pg-"));
    assert_eq!(pg.databases(), ["mes", "postgres"]);

    let t = Instant::now();
    let fp = pg.fingerprint("mes");
    eprintln!(
        "fingerprint: {:.2} s: {}",
        t.elapsed().as_secs_f64(),
        fp.summary()
    );
    let again = pg.fingerprint("mes");
    assert_fingerprint_eq!(again, fp);
    assert_eq!(again, fp);

    // What the fixture promises is really there.
    for schema in ["mes_core", "mes_audit", "mes_custom", "public"] {
        assert!(fp.schemas.contains(schema), "{schema}");
    }
    assert!(
        fp.extensions.iter().any(|e| e.starts_with("hstore ")),
        "{:?}",
        fp.extensions
    );
    for table in [
        "mes_core.asset_definition",
        "mes_core.site",
        "mes_core.ProductionLine",
        "mes_core.work_order",
        "mes_core.production_event_2026_01",
        "mes_core.production_event_default",
        "mes_audit.change_log",
        "mes_custom.Shift Notes",
    ] {
        assert!(
            fp.tables.get(table).is_some_and(|t| t.rows > 0),
            "{table}: {:?}",
            fp.tables.get(table)
        );
    }
    assert!(
        !fp.tables.contains_key("mes_core.production_event"),
        "partitioned parents are skipped"
    );
    // The database's own settings, grants and comment.
    assert!(
        fp.database["settings"].contains("search_path=mes_core, public, \"$user\""),
        "{:?}",
        fp.database
    );
    assert!(fp.database["settings of mes_report"].contains("statement_timeout=45s"));
    assert!(
        fp.database["acl"].contains("mes_readonly=c/admin"),
        "{:?}",
        fp.database
    );
    assert!(fp.database["comment"].contains("Werk Süd"));
    match flavor {
        Flavor::Postgres15 => {
            assert!((3000..20000).contains(&fp.total_rows()), "{}", fp.summary());
            assert!(fp.hypertables.is_empty());
        }
        Flavor::TimescaleDb => {
            assert!(
                fp.extensions
                    .iter()
                    .any(|e| e.starts_with("timescaledb 2."))
            );
            assert_eq!(
                fp.hypertables["hypertable mes_core.machine_metric"],
                "dimensions time Time 1 day; 36 chunks"
            );
            assert!(
                fp.hypertables["hypertable mes_core.quality_measurement"].contains("2 partitions")
            );
            let chunks = fp
                .tables
                .keys()
                .filter(|t| t.starts_with("_timescaledb_internal._hyper_"))
                .count();
            assert!(chunks >= 60, "dozens of chunks: {chunks}");
            assert!(fp.owners["table mes_core.machine_metric"] == "mes_owner");
        }
    }
    assert_eq!(
        fp.materialized_views["mes_core.mv_asset_state_summary"].digest,
        "not populated"
    );
    assert!(fp.materialized_views["mes_core.mv_daily_output"].rows > 0);
    let batch = &fp.sequences["mes_core.batch_seq"];
    assert_eq!((batch.last_value, batch.is_called), (4242, false));
    let orders = &fp.sequences["mes_core.order_no_seq"];
    assert_eq!((orders.last_value, orders.is_called), (50000, true));
    let app = &fp.roles["mes_app"];
    assert!(app.login && app.has_password && app.password_digest.is_some());
    assert_eq!(app.member_of, ["mes_rw"]);
    assert_eq!(fp.roles["Shift Lead"].member_of, ["mes_rw (admin option)"]);
    assert!(
        fp.roles["admin"].password_digest.is_none(),
        "bootstrap superuser's password is not compared"
    );
    assert_eq!(fp.owners["table mes_core.asset_definition"], "mes_owner");
    assert_eq!(fp.owners["table mes_custom.Shift Notes"], "mes_app");
    assert_eq!(fp.owners["schema mes_custom"], "mes_app");
    assert_eq!(fp.owners["type mes_core.equipment_state"], "mes_owner");
    assert!(fp.acls["column mes_core.material.sku"].contains("mes_readonly=r/mes_owner"));
    assert!(
        fp.definitions
            .contains_key("trigger mes_core.work_order.work_order_audit")
    );

    // Tricky text comes back exactly through psql.
    let note = pg.psql(
        "mes",
        "SELECT notes FROM mes_core.asset_definition WHERE asset_type = 'edge-case';",
    );
    assert!(
        note.contains("line two\r\nline three\n\\.\nafter"),
        "{note:?}"
    );

    // Each kind of change shows, by name.
    pg.psql(
        "mes",
        "UPDATE mes_core.site SET name = name || '!' WHERE code = 'US-OH';\n\
         SELECT setval('mes_core.batch_seq', 4242, true) \\gset\n\
         GRANT SELECT ON mes_custom.kpi_target TO mes_report;\n\
         ALTER ROLE mes_report PASSWORD 'changed';\n\
         ALTER TABLE mes_core.material OWNER TO mes_app;",
    );
    let changed = pg.fingerprint("mes");
    assert_ne!(changed, fp);
    let diff = changed.diff(&fp).join("\n");
    eprintln!("{diff}");
    for expected in [
        "table mes_core.site:",
        "sequence mes_core.batch_seq:",
        "ACL of table mes_custom.kpi_target:",
        "role mes_report:",
        "owner of table mes_core.material:",
    ] {
        assert!(diff.contains(expected), "missing {expected:?} in:\n{diff}");
    }
    assert!(!diff.contains("table mes_core.work_order:"), "{diff}");
    let panic = std::panic::catch_unwind(|| changed.assert_same(&fp, "after changes")).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("after changes") && message.contains("table mes_core.site:"),
        "{message}"
    );

    // Stop and start keep everything.
    pg.stop();
    assert!(!pg.is_running());
    pg.start_again();
    assert!(pg.is_running());
    assert_fingerprint_eq!(pg.fingerprint("mes"), changed, "after a restart");
}

async fn a_pg_dump_copy_has_the_same_fingerprint(flavor: Flavor) {
    let pg = Postgres::with_fixture_on(flavor);
    let original = pg.fingerprint("mes");
    let t = Instant::now();
    pg.copy_database("mes", "mes_copy");
    eprintln!("pg_dump | psql: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(pg.databases(), ["mes", "mes_copy", "postgres"]);
    // pg_dump without --create leaves out the database's own settings,
    // grants and comment (which is why a mesbak backup carries them):
    // everything else is the same.
    let mut copy = pg.fingerprint("mes_copy");
    assert_ne!(copy.database, original.database);
    copy.database = original.database.clone();
    assert_fingerprint_eq!(copy, original, "pg_dump | psql copy");

    // An empty database differs in every table, readably.
    pg.create_database("empty");
    let empty = pg.fingerprint("empty");
    let diff = empty.diff(&original);
    assert!(
        diff.iter()
            .any(|d| d.starts_with("table mes_core.asset_definition: only right")),
        "{diff:?}"
    );
    assert!(empty.tables.is_empty());
}

async fn an_empty_server_has_only_admin(flavor: Flavor) {
    let pg = Postgres::start_on(flavor);
    assert_eq!(pg.roles(), ["admin"]);
    assert_eq!(pg.databases(), ["mes", "postgres"]);
    assert_eq!(
        pg.psql(
            "mes",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mes_%';"
        ),
        "0"
    );
    // The password works over TCP (inside the container's own network:
    // it has none other), as a hardened socket would want it too.
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            "-e",
            &format!("PGPASSWORD={}", pg.password()),
            pg.name(),
        ])
        .args([
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "admin",
        ])
        .args(["-d", "mes", "-XAtc", "SELECT current_user"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "admin");
    let err = pg
        .try_psql("mes", "SELECT * FROM no_such_table;")
        .unwrap_err();
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn load_bulk_reaches_roughly_the_requested_dump_size() {
    let pg = Postgres::start_with_fixture();
    let before = pg.pg_dump_size("mes");
    let t = Instant::now();
    pg.load_bulk("mes", 24);
    let load = t.elapsed();
    let t = Instant::now();
    let after = pg.pg_dump_size("mes");
    let dump = t.elapsed();
    let grown = (after - before) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "load_bulk 24 MiB: {:.1} s, dump grew by {grown:.1} MiB (pg_dump {:.1} s)",
        load.as_secs_f64(),
        dump.as_secs_f64()
    );
    assert!(
        (20.0..30.0).contains(&grown),
        "dump grew by {grown:.1} MiB, asked for 24"
    );
    // Bulk rows keep the sequence ahead and land in every partition.
    let fp = pg.fingerprint("mes");
    for part in ["2026_01", "2026_02", "2026_03", "2026_04", "default"] {
        let rows = fp.tables[&format!("mes_core.production_event_{part}")].rows;
        assert!(
            rows > if part == "default" { 10 } else { 10_000 },
            "{part}: {rows}"
        );
    }
    pg.psql(
        "mes",
        "INSERT INTO mes_core.production_event (event_time, asset_id, event_type) VALUES (now(), 100, 'after bulk');",
    );
}

#[test]
fn agent_config_writes_a_complete_private_setup() {
    let mut config = AgentConfig::new();
    let dir_mode = std::fs::metadata(config.dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert!(
        !config.backup_dir().exists(),
        "the agent creates backup_dir itself"
    );
    let key_meta = std::fs::metadata(config.key_file()).unwrap();
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    let key_text = std::fs::read_to_string(config.key_file()).unwrap();
    assert!(
        key_text.ends_with('\n') && key_text.trim().len() == 44,
        "{key_text:?}"
    );
    let _key = config.key();

    config
        .set("retention.days", 7)
        .set("backup.compression_level", 6)
        .unset("health.max_backup_age_hours");
    let config = config.with("ignition.stop_containers", vec!["gw-a", "gw-b"]);
    let written: toml::Table = std::fs::read_to_string(config.write())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(written["retention"]["days"].as_integer(), Some(7));
    assert_eq!(written["backup"]["compression_level"].as_integer(), Some(6));
    assert_eq!(
        written["backup"]["min_free_bytes"].as_integer(),
        Some(1 << 20)
    );
    assert_eq!(written["health"]["listen"].as_str(), Some(""));
    assert_eq!(
        written["ignition"]["stop_containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        written["ignition"]["helper_image"].as_str(),
        Some("mesbak-test/busybox")
    );
    assert_eq!(
        written["restore"]["stop_containers"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(
        written["database"]["container"]
            .as_str()
            .unwrap()
            .starts_with("mesbak-test-no-db-")
    );
    assert_eq!(
        written["encryption"]["key_file"].as_str(),
        config.key_file().to_str()
    );
    // Timer drop-ins go into the test folder, never /etc/systemd/system.
    assert_eq!(
        written["schedule"]["dropin_dir"].as_str(),
        config.dir().join("systemd").to_str()
    );
    let keys: Vec<&String> = written.keys().collect();
    assert_eq!(
        keys,
        [
            "backup",
            "backup_dir",
            "database",
            "encryption",
            "health",
            "ignition",
            "restore",
            "retention",
            "schedule",
            "state_dir"
        ]
    );

    let mut bad = AgentConfig::new();
    bad.raw("backup_dir = 42\n");
    assert_eq!(
        std::fs::read_to_string(bad.write()).unwrap(),
        "backup_dir = 42\n"
    );
    // Each configuration has its own folder.
    assert_ne!(bad.dir(), config.dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn for_postgres_points_at_the_server_and_protects_the_password() {
    let pg = Postgres::start();
    let config = AgentConfig::for_postgres(&pg);
    let written: toml::Table = std::fs::read_to_string(config.write())
        .unwrap()
        .parse()
        .unwrap();
    let db = &written["database"];
    // Reached through Docker only: the container, and a port nothing listens on.
    assert_eq!(pg.reach(), Reach::DockerOnly);
    assert_eq!(db["container"].as_str(), Some(pg.name()));
    let port = db["port"].as_integer().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(db["name"].as_str(), Some("mes"));
    assert_eq!(db["user"].as_str(), Some("admin"));
    let password_file = db["password_file"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(password_file).unwrap(),
        format!("{}\n", pg.password())
    );
    let mode = std::fs::metadata(password_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Host mode: no container, the server's TCP port on the host.
    let reachable = Postgres::start_reachable(Flavor::Postgres15);
    let config = AgentConfig::for_postgres(&reachable);
    let written: toml::Table = std::fs::read_to_string(config.write())
        .unwrap()
        .parse()
        .unwrap();
    let db = &written["database"];
    assert_eq!(db["container"].as_str(), Some(""));
    assert_eq!(db["host"].as_str(), Some("127.0.0.1"));
    assert_eq!(db["port"].as_integer(), Some(i64::from(reachable.port())));
    assert!(std::net::TcpStream::connect(("127.0.0.1", reachable.port())).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn binaries_build_once_and_mesbakctl_runs_as_each_user() {
    let t = Instant::now();
    let agent = binary("mesbak-agent");
    let ctl = binary("mesbakctl");
    eprintln!("build: {:.1} s", t.elapsed().as_secs_f64());
    assert!(agent.is_file() && ctl.is_file());
    let t = Instant::now();
    assert_eq!(binary("mesbakctl"), ctl);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the build runs once per process"
    );

    let bus = Bus::start();
    let out = mesbakctl(&bus).arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for user in [OPERATOR, OUTSIDER] {
        // The unprivileged users can run it (the target folder is readable).
        let out = mesbakctl_as(&bus, user).arg("--version").output().unwrap();
        assert!(out.status.success(), "{user}: {}", text(&out));
        // No agent on this bus: a clear failure, not success.
        let out = mesbakctl_as(&bus, user).arg("status").output().unwrap();
        assert!(!out.status.success(), "{user}: {}", text(&out));
    }
}

/// The agent's own parser accepts what `AgentConfig` writes
/// (`mesbak-agent --check-config --syntax-only`; its sections deny unknown
/// keys).
fn assert_agent_accepts(config: &AgentConfig) {
    let out = std::process::Command::new(binary("mesbak-agent"))
        .args(["--check-config", "--syntax-only"])
        .arg("--config")
        .arg(config.write())
        .env_remove("POSTGRES_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesbak-agent rejects the harness configuration:\n{}\n{}",
        config.to_toml(),
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_accepts_the_harness_configurations() {
    let volume = Volume::create();
    let gateway = Gateway::create(&volume);
    let mut config = AgentConfig::new();
    assert_agent_accepts(&config);
    config.ignition(&volume, &[&gateway]);
    assert_agent_accepts(&config);
    let pg = Postgres::start();
    assert_agent_accepts(&AgentConfig::for_postgres(&pg));
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_helpers_start_crash_restart_and_stop_the_agent() {
    let bus = Bus::start();
    let config = AgentConfig::new();
    let t = Instant::now();
    let mut agent = Agent::spawn(&bus, &config).await;
    eprintln!("agent up in {:.2} s", t.elapsed().as_secs_f64());
    assert!(agent.is_running());
    assert!(!agent.proxy().await.version().await.unwrap().is_empty());
    let dbus = zbus::fdo::DBusProxy::new(agent.connection()).await.unwrap();
    let owner = dbus
        .get_name_owner(BUS_NAME.try_into().unwrap())
        .await
        .unwrap();
    let uid = dbus
        .get_connection_unix_process_id(owner.clone().into())
        .await
        .unwrap();
    assert_eq!(uid, agent.pid(), "the name belongs to the agent we started");

    let status = agent.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!agent.is_running());
    // A new agent from the same configuration: spawn waits for the new owner.
    let mut again = Agent::spawn(&bus, &config).await;
    let new_owner = dbus
        .get_name_owner(BUS_NAME.try_into().unwrap())
        .await
        .unwrap();
    assert_ne!(new_owner, owner);
    let status = again.terminate().await;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(again.log().contains("===== mesbak-agent --config"));

    // A configuration the agent must refuse: it exits, and both helpers say so.
    let mut bad = AgentConfig::new();
    bad.raw("backup_dir = 42\n");
    let (status, output) = Agent::run_to_exit(&bus, &bad, Duration::from_secs(20)).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("backup_dir"), "{output}");
    let err = Agent::try_spawn(&bus, &bad)
        .await
        .err()
        .expect("a bad config does not start");
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn volume_fingerprint_survives_a_tar_copy_and_sees_changes() {
    let source = Volume::create_populated();
    let fp = source.fingerprint();
    assert_eq!(source.fingerprint(), fp);
    for (path, expected) in [
        ("./db/config.idb", "regular file|600|0|0|1|3145744|"),
        ("./logs/wrapper.log", "|644|1000|1000|2|"),
        ("./config/current.idb", "-> ../db/config.idb"),
        ("./config/dangling", "-> does-not-exist"),
        ("./modules", "directory|2775|"),
        ("./temp", "directory|1777|"),
        ("./jar cache/ünïcødé/lib 1.jar", "|65534|65534|"),
        ("./empty-folder", "directory|755|0|0|"),
    ] {
        let entry =
            fp.0.get(path)
                .unwrap_or_else(|| panic!("{path} missing: {:#?}", fp.0));
        assert!(entry.contains(expected), "{path}: {entry} lacks {expected}");
    }

    // GNU tar on the host as the reference copy.
    let copy = Volume::create();
    let status = std::process::Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "tar -C '{}' --numeric-owner -cf - . | tar -C '{}' --numeric-owner --same-permissions -xf -",
            source.mountpoint().display(),
            copy.mountpoint().display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    copy.fingerprint().assert_same(&fp, "a tar copy");

    copy.sh("chmod 0644 db/config.idb; echo x >> logs/wrapper.log; rm config/dangling; mkdir new");
    let diff = copy.fingerprint().diff(&fp).join("\n");
    for path in [
        "./db/config.idb",
        "./logs/wrapper.log",
        "./config/dangling",
        "./new",
    ] {
        assert!(diff.contains(&format!("{path}:")), "{path} not in:\n{diff}");
    }
    copy.clear();
    assert_eq!(copy.fingerprint().0.len(), 1, "only the root is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn stand_in_gateway_stops_fast_and_starts_again() {
    let volume = Volume::create_populated();
    let gateway = Gateway::start(&volume);
    assert!(gateway.name().starts_with("mesbak-test-gw-"));
    assert!(gateway.is_running());
    let first = gateway.started_at();
    let t = Instant::now();
    gateway.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "docker stop took {:?}",
        t.elapsed()
    );
    assert!(!gateway.is_running());
    gateway.start_again();
    assert!(gateway.is_running());
    assert_ne!(gateway.started_at(), first);
    // It sees the volume at Ignition's path.
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            gateway.name(),
            "cat",
            "/usr/local/bin/ignition/data/.uuid",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "8d5c7a2e-0000-4000-8000-000000000001"
    );
    let stopped = Gateway::create(&volume);
    assert!(!stopped.is_running());
}

on_both_servers!(
    fixture_loads_and_fingerprint_is_stable_and_sensitive,
    a_pg_dump_copy_has_the_same_fingerprint,
    an_empty_server_has_only_admin,
);
