//! The D-Bus contract against the running agent: introspection equals the
//! checked-in XML, callers are checked, the second mutating job is `Busy`,
//! odd ids and bad configuration are refused with clear words.

use mesbak_interface::{Error, INTROSPECTION_XML, MANAGER_PATH, RestoreOptions};
use mesbak_tests::*;
use zbus_xml::Node;

async fn introspect(conn: &zbus::Connection, path: &str) -> String {
    let proxy = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(mesbak_interface::BUS_NAME)
        .unwrap()
        .path(path.to_owned())
        .unwrap()
        .build()
        .await
        .unwrap();
    proxy.introspect().await.unwrap()
}

fn interface<'a>(node: &'a Node<'a>, name: &str) -> &'a zbus_xml::Interface<'a> {
    node.interfaces()
        .iter()
        .find(|iface| iface.name().as_str() == name)
        .unwrap_or_else(|| panic!("interface {name} is not in the introspection"))
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_equals_the_checked_in_xml() {
    let bus = Bus::start();
    let pg = Postgres::start();
    let agent = Agent::spawn(&bus, &AgentConfig::for_postgres(&pg)).await;
    let expected = Node::from_reader(INTROSPECTION_XML.as_bytes()).unwrap();

    let live_manager = introspect(agent.connection(), MANAGER_PATH).await;
    let live_manager = Node::from_reader(live_manager.as_bytes()).unwrap();
    assert_eq!(
        interface(&live_manager, mesbak_interface::MANAGER_INTERFACE),
        interface(&expected, mesbak_interface::MANAGER_INTERFACE),
        "the agent's manager interface differs from interface/org.mesbak.Agent1.xml"
    );

    // A job object carries the job interface.
    let job = agent.proxy().await.backup("database").await.unwrap();
    let live_job = introspect(agent.connection(), job.as_str()).await;
    let live_job = Node::from_reader(live_job.as_bytes()).unwrap();
    assert_eq!(
        interface(&live_job, mesbak_interface::JOB_INTERFACE),
        interface(&expected, mesbak_interface::JOB_INTERFACE),
        "the agent's job interface differs from interface/org.mesbak.Agent1.xml"
    );
    let (ok, message) = wait_job(agent.connection(), &job).await;
    assert!(ok, "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_are_checked_by_the_bus_and_by_the_agent() {
    let bus = Bus::start();
    let pg = Postgres::start();
    let config = AgentConfig::for_postgres(&pg);
    let agent = Agent::spawn(&bus, &config).await;

    // Not in group mesbak: the bus policy refuses.
    let out = mesbakctl_as(&bus, OUTSIDER).arg("list").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not allowed") && stderr.contains("mesbak"),
        "{stderr}"
    );

    // In group mesbak: may list and back up, may not restore or prune.
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["backup", "database"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = mesbakctl_as(&bus, OPERATOR)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let backups: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    let id = backups[0]["id"].as_str().unwrap().to_owned();
    for args in [
        vec!["restore", id.as_str(), "--yes"],
        vec!["prune"],
        vec!["restore", "--rollback"],
        vec!["restore", "--drop-previous"],
    ] {
        let out = mesbakctl_as(&bus, OPERATOR).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was allowed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("only root"), "{args:?}: {stderr}");
    }
    // The same through the bus: the named error, checked by the agent
    // (group mesbak passes the bus policy).
    for (method, args) in [
        ("Prune", &[][..]),
        ("RollbackRestore", &[][..]),
        ("DropPrevious", &["string:"][..]),
    ] {
        let out = bus
            .command_as(OPERATOR, "dbus-send")
            .args([
                "--system",
                "--print-reply",
                "--reply-timeout=5000",
                "--dest=org.mesbak.Agent1",
                "/org/mesbak/Agent1",
                &format!("org.mesbak.Agent1.{method}"),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{method} was allowed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Error org.mesbak.Agent1.Error.NotAuthorized:")
                && stderr.contains("root"),
            "{method}: {stderr}"
        );
    }
    assert!(
        config.backup_dir().join("database").join(&id).exists(),
        "a denied call deleted a backup"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_mutating_job_is_busy() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    let agent = Agent::spawn(&bus, &AgentConfig::for_postgres(&pg)).await;
    let proxy = agent.proxy().await;
    // A backup that exists, so a restore of it could start.
    let existing = agent.backup_database().await;
    pg.load_bulk("mes", 40);
    let before = pg.fingerprint("mes");

    let first = proxy.backup("database").await.unwrap();
    let expect_busy =
        |what: &str, result: Result<zbus::zvariant::OwnedObjectPath, Error>| match result {
            Err(Error::Busy(message)) => assert!(
                message.contains("backup") && message.contains("retry"),
                "{what}: {message}"
            ),
            other => panic!("{what}: expected Busy, got {other:?}"),
        };
    expect_busy("backup", proxy.backup("database").await);
    expect_busy(
        "restore",
        proxy.restore(&existing, RestoreOptions::default()).await,
    );
    expect_busy("test restore", proxy.test_restore(&existing).await);
    expect_busy("prune", proxy.prune().await);
    // Reading jobs run beside it.
    let verify = proxy.verify(&existing).await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &verify).await;
    assert!(ok, "{message}");
    let (ok, message) = wait_job(agent.connection(), &first).await;
    assert!(ok, "{message}");
    // Nothing the refused calls asked for happened.
    assert_fingerprint_eq!(pg.fingerprint("mes"), before);
    assert_eq!(proxy.list_backups().await.unwrap().len(), 2);
    // Free again once the first ended.
    let third = proxy.backup("database").await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &third).await;
    assert!(ok, "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_backup_ids_are_refused() {
    let bus = Bus::start();
    let config = AgentConfig::new();
    let agent = Agent::spawn(&bus, &config).await;
    let proxy = agent.proxy().await;
    std::fs::create_dir_all(config.dir().join("elsewhere")).unwrap();
    let outside = config.dir().join("elsewhere/x.sql.gz.enc");
    std::fs::write(&outside, b"not a backup").unwrap();
    std::fs::create_dir_all(config.backup_dir().join("database")).unwrap();
    std::os::unix::fs::symlink(
        &outside,
        config.backup_dir().join("database/link.sql.gz.enc"),
    )
    .unwrap();
    // (A NUL cannot cross D-Bus at all: the bus drops such a message; the
    // agent's own check is unit-tested in agent/src/storage.rs.)
    for id in [
        "../x.sql.gz.enc",
        "a/b.sql.gz.enc",
        "..",
        "",
        ".hidden.sql.gz.enc",
        "link.sql.gz.enc",
        "mes.txt",
    ] {
        let result = proxy.verify(id).await;
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{id:?}: {result:?}"
        );
    }
    match proxy.verify("mes_2001-01-01_000000.sql.gz.enc").await {
        Err(Error::NotFound(message)) => assert!(message.contains("mesbakctl list"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A file is opened by mesbakctl with the caller's own permissions (and
    // handed over): the operator cannot read this root-only one.
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["verify", outside.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    // Root may name any file; this one is simply not a mesbak file.
    let job = proxy.verify(outside.to_str().unwrap()).await.unwrap();
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Integrity", "{}", outcome.message);
    assert!(
        outcome.message.contains("not a mesbak backup"),
        "{}",
        outcome.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_is_refused_naming_key_and_file() {
    let bus = Bus::start();
    let mut config = AgentConfig::new();
    config.set("database.port", "five thousand");
    let (status, log) = Agent::run_to_exit(&bus, &config, STARTUP_TIMEOUT).await;
    assert!(!status.success());
    assert!(
        log.contains("`database.port`") && log.contains("mesbak.toml"),
        "{log}"
    );
    assert!(
        !log.contains("panicked") && !log.contains("RUST_BACKTRACE"),
        "{log}"
    );

    let mut config = AgentConfig::new();
    config.raw("[database\nport = 1\n");
    let (status, log) = Agent::run_to_exit(&bus, &config, STARTUP_TIMEOUT).await;
    assert!(!status.success());
    assert!(log.contains("mesbak.toml"), "{log}");

    let mut config = AgentConfig::new();
    config.set("retention.colour", "blue");
    let (status, log) = Agent::run_to_exit(&bus, &config, STARTUP_TIMEOUT).await;
    assert!(!status.success());
    assert!(log.contains("colour"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_agent_gets_a_clear_message() {
    let bus = Bus::start();
    let out = mesbakctl(&bus).arg("status").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent is not running"), "{stderr}");
}
