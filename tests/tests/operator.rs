//! The operator at 3 a.m.: confirmations that name what changes (in a real
//! terminal), `--json` errors, closed pipes, the right advice for a missing
//! key, running jobs shown, followed, cancelled, and Ctrl-C that asks.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesbak_tests::*;
use rexpect::session::{PtySession, spawn_command};
use serde_json::Value;

/// Generous: the agent is a debug build on a busy machine.
const PTY_TIMEOUT_MS: u64 = 60_000;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `{"error": {...}}` object a `--json` command printed.
fn json_error(out: &Output) -> (String, String) {
    let value: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", text(out)));
    (
        value["error"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        value["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Runs `cmd` with stdout a pipe whose reader is already gone.
fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Our copy of the writer went into the child's command; drop it here.
    cmd.stdout(Stdio::null());
    child.wait_with_output().unwrap()
}

/// `mesbakctl ARGS` in a real terminal.
fn pty(bus: &Bus, args: &[&str]) -> PtySession {
    let mut cmd = mesbakctl(bus);
    cmd.args(args).env("TERM", "dumb");
    spawn_command(cmd, Some(PTY_TIMEOUT_MS)).unwrap()
}

fn exit_code(session: &PtySession) -> String {
    let deadline = Instant::now() + Duration::from_millis(PTY_TIMEOUT_MS);
    loop {
        match session.process.status() {
            Some(status) if !format!("{status:?}").contains("StillAlive") => {
                return format!("{status:?}");
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "mesbakctl did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backup_files(config: &AgentConfig) -> Vec<String> {
    let mut files = Vec::new();
    for kind in ["database", "ignition"] {
        if let Ok(entries) = std::fs::read_dir(config.backup_dir().join(kind)) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_one_sentence_json_with_json_and_closed_pipes_end_quietly() {
    let bus = Bus::start();

    // No agent yet: named, with what to do.
    let out = run(mesbakctl(&bus).args(["--json", "status"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (name, message) = json_error(&out);
    assert_eq!(name, "AgentNotRunning");
    assert!(
        message.contains("systemctl start mesbak-agent"),
        "{message}"
    );

    // A usage error: JSON too, exit status 2.
    let out = run(mesbakctl(&bus).args(["--json", "backup", "everything"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(json_error(&out).0, "Usage");

    let config = AgentConfig::new().with("ignition.volume", "");
    let _agent = Agent::spawn(&bus, &config).await;
    let out = run(mesbakctl(&bus).args(["--json", "verify", "mes_2001-01-01_000000.sql.gz.enc"]));
    assert_eq!(out.status.code(), Some(1));
    let (name, message) = json_error(&out);
    assert_eq!(name, "NotFound");
    assert!(message.contains("mesbakctl list"), "{message}");
    // The failed job's own error name comes through as well.
    let out = run(mesbakctl(&bus).args(["--json", "backup", "database"]));
    assert_eq!(out.status.code(), Some(1));
    let (name, message) = json_error(&out);
    assert_eq!(name, "NotFound", "{message}");
    assert!(message.contains("does not exist"), "{message}");
    // status of an agent that is not healthy: the report, exit status 1.
    let out = run(mesbakctl(&bus).args(["--json", "status"]));
    assert_eq!(out.status.code(), Some(1));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "unhealthy", "{status}");

    // Closed pipes: no panic, the status of a program SIGPIPE ended.
    for args in [
        vec!["list"],
        vec!["status", "--json"],
        vec!["jobs"],
        vec!["--help"],
    ] {
        let out = with_closed_stdout(mesbakctl(&bus).args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if args != ["--help"] {
            assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
            assert!(stderr.is_empty(), "{args:?}: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_is_never_answered_with_make_a_new_one() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    let config = AgentConfig::for_postgres(&pg).with("ignition.volume", "");
    let agent = Agent::spawn(&bus, &config).await;
    let id = agent.backup_database().await;
    let file = config.backup_dir().join("database").join(&id);
    let key = std::fs::read(config.key_file()).unwrap();
    std::fs::remove_file(config.key_file()).unwrap();

    for args in [
        vec!["verify", id.as_str()],
        vec!["restore", id.as_str(), "--yes"],
        vec!["test-restore"],
    ] {
        let out = run(mesbakctl(&bus).args(&args));
        let all = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(all.contains("put that key back"), "{args:?}: {all}");
        assert!(!all.contains("keygen"), "{args:?}: {all}");
    }
    let out = run(mesbakctl(&bus)
        .args(["decrypt", file.to_str().unwrap(), "--key-file"])
        .arg(config.key_file()));
    let all = text(&out);
    assert!(!out.status.success());
    assert!(
        all.contains("key this backup was made with") && !all.contains("keygen"),
        "{all}"
    );
    let out = run(mesbakctl(&bus)
        .args(["--json", "decrypt", file.to_str().unwrap(), "--key-file"])
        .arg(config.key_file()));
    assert_eq!(json_error(&out).0, "KeyMissing");
    write_private(&config.key_file(), &key).unwrap();
}

/// A database with enough data that a backup runs for a while.
async fn busy_setup() -> (Bus, Postgres, AgentConfig, Agent) {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    pg.load_bulk("mes", 120);
    let config = AgentConfig::for_postgres(&pg).with("ignition.volume", "");
    let agent = Agent::spawn(&bus, &config).await;
    (bus, pg, config, agent)
}

async fn job_state(agent: &Agent, path: &str) -> String {
    job_proxy(agent.connection(), path)
        .await
        .state()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_is_shown_followed_and_cancelled_leaving_nothing_behind() {
    let (bus, _pg, config, agent) = busy_setup().await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    wait_for_progress(agent.connection(), &job, "Creating backup", 4 << 20).await;

    // status shows it, in words and in JSON.
    let out = run(mesbakctl(&bus).args(["status", "--json"]));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let running = &status["running_jobs"][0];
    assert_eq!(running["operation"], "backup", "{status}");
    assert_eq!(running["job"], job.as_str(), "{status}");
    assert!(
        running["stage"]
            .as_str()
            .unwrap()
            .contains("Creating backup"),
        "{status}"
    );
    assert!(running["started_at"].is_string(), "{status}");
    let out = run(mesbakctl(&bus).arg("status"));
    assert!(
        text(&out).contains("Running:") && text(&out).contains("backup"),
        "{}",
        text(&out)
    );
    // The Busy error points at it.
    match agent.proxy().await.backup("database").await {
        Err(mesbak_interface::Error::Busy(message)) => {
            assert!(
                message.contains("mesbakctl wait") && message.contains("mesbakctl cancel"),
                "{message}"
            )
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let out = run(mesbakctl(&bus).arg("jobs"));
    assert!(text(&out).contains("running"), "{}", text(&out));

    // An operator may not cancel root's job; root may.
    let number = job.as_str().rsplit('/').next().unwrap().to_owned();
    let out = run(mesbakctl_as(&bus, OPERATOR).args(["cancel", &number]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only that user or root"),
        "{}",
        text(&out)
    );
    let out = run(mesbakctl(&bus).args(["cancel", &number]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    assert_eq!(job_state(&agent, job.as_str()).await, "cancelled");
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert_eq!(outcome.error_name, "Cancelled");
    assert!(
        backup_files(&config).is_empty(),
        "left behind: {:?}",
        backup_files(&config)
    );
    let metrics_state = std::fs::read_to_string(config.state_dir().join("state.json")).unwrap();
    assert!(
        !metrics_state.contains("last_failure\": {\n    \"database"),
        "a cancel is not a failure: {metrics_state}"
    );

    // `wait` follows a job again to its end.
    let job = agent.proxy().await.backup("database").await.unwrap();
    let out = run(mesbakctl(&bus).arg("wait"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Backup completed successfully"),
        "{}",
        text(&out)
    );
    assert_eq!(job_state(&agent, job.as_str()).await, "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_asks_to_cancel_or_leave_the_job_and_says_which() {
    let (bus, _pg, config, agent) = busy_setup().await;

    // Leave it running.
    let mut session = pty(&bus, &["backup", "database"]);
    session.exp_string("Backup started").unwrap();
    let job = loop {
        let jobs = agent.proxy().await.jobs().await.unwrap();
        if let Some(job) = jobs.last() {
            break job.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_progress(agent.connection(), &job, "Creating backup", 2 << 20).await;
    session.send_control('c').unwrap();
    session.exp_string("is still running in the agent").unwrap();
    session.exp_string("[l]?").unwrap();
    session.send_line("l").unwrap();
    session.exp_string("Left job").unwrap();
    session.exp_string("mesbakctl wait").unwrap();
    assert!(
        exit_code(&session).contains(", 130)"),
        "{}",
        exit_code(&session)
    );
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(
        outcome.success,
        "the job left running did not finish: {}",
        outcome.message
    );
    let kept = backup_files(&config);

    // Cancel it.
    let mut session = pty(&bus, &["backup", "database"]);
    session.exp_string("Backup started").unwrap();
    let job = loop {
        let jobs = agent.proxy().await.jobs().await.unwrap();
        if let Some(job) = jobs.iter().find(|j| **j != job) {
            break job.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_progress(agent.connection(), &job, "Creating backup", 2 << 20).await;
    session.send_control('c').unwrap();
    session.exp_string("[l]?").unwrap();
    session.send_line("c").unwrap();
    session.exp_string("Cancelling job").unwrap();
    session.exp_string("cancelled").unwrap();
    assert!(
        exit_code(&session).contains(", 1)"),
        "{}",
        exit_code(&session)
    );
    assert_eq!(job_state(&agent, job.as_str()).await, "cancelled");
    assert_eq!(
        backup_files(&config),
        kept,
        "the cancelled backup left files"
    );

    // Without a terminal Ctrl-C leaves the job running and says so.
    let mut child = mesbakctl(&bus)
        .args(["backup", "database"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = 'found: loop {
        for job in agent.proxy().await.jobs().await.unwrap() {
            if job_state(&agent, job.as_str()).await == "running" {
                break 'found job;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_progress(agent.connection(), &job, "Creating backup", 2 << 20).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(130), "{}", status.1);
    assert!(status.1.contains("Left job"), "{}", status.1);
    let outcome = wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await;
    assert!(outcome.success, "{}", outcome.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn destructive_commands_name_what_changes_and_need_a_yes() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    // keep_last = 1: the expired backup made below is not among the kept.
    let config = AgentConfig::for_postgres(&pg)
        .with("ignition.volume", "")
        .with("retention.keep_last", 1)
        .with("restore.stop_containers", vec!["mes-writer-that-is-named"]);
    let agent = Agent::spawn(&bus, &config).await;
    let id = agent.backup_database().await;
    let before = pg.fingerprint("mes");
    let databases = pg.databases();

    // Not root: refused before any prompt, even in a terminal.
    for args in [
        vec!["restore", id.as_str()],
        vec!["prune"],
        vec!["restore", "--rollback"],
        vec!["restore", "--drop-previous"],
    ] {
        let out = run(mesbakctl_as(&bus, OPERATOR).args(&args));
        assert!(!out.status.success());
        assert!(text(&out).contains("only root"), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("Type 'yes'"),
            "{args:?}: {}",
            text(&out)
        );
    }
    // An expired backup for prune to delete.
    let old = "mes_2001-01-01_000000.sql.gz.enc";
    let dir = config.backup_dir().join("database");
    std::fs::copy(dir.join(&id), dir.join(old)).unwrap();
    let mut meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{id}.json"))).unwrap()).unwrap();
    meta["id"] = old.into();
    meta["created"] = "2001-01-01T00:00:00Z".into();
    write_private(
        &dir.join(format!("{old}.json")),
        &serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();

    // No terminal, no --yes: refused, nothing changed.
    for args in [vec!["restore", id.as_str()], vec!["prune"]] {
        let out = run(mesbakctl(&bus).args(&args));
        assert!(!out.status.success());
        assert!(text(&out).contains("--yes"), "{args:?}: {}", text(&out));
    }
    assert!(dir.join(old).exists());

    // In a terminal: the prompt names the database, the container and the backup.
    let mut session = pty(&bus, &["restore", &id]);
    session.exp_string(&format!("Restores {id}")).unwrap();
    session.exp_string("the live database 'mes'").unwrap();
    session
        .exp_string(&format!("in container '{}'", pg.name()))
        .unwrap();
    session.exp_string("'mes-writer-that-is-named'").unwrap();
    session.exp_string("Type 'yes' to continue:").unwrap();
    session.send_line("no").unwrap();
    session
        .exp_string("not confirmed; nothing was changed")
        .unwrap();
    assert!(exit_code(&session).contains(", 1)"));
    pg.fingerprint("mes")
        .assert_same(&before, "a restore answered 'no'");
    assert_eq!(pg.databases(), databases);

    // Prune lists the files it deletes.
    let mut session = pty(&bus, &["prune"]);
    session
        .exp_string("Deleted for good: 1 backup file(s)")
        .unwrap();
    session.exp_string(old).unwrap();
    session.exp_string("Type 'yes' to continue:").unwrap();
    session.send_line("yes").unwrap();
    session.exp_string("deleted 1 backup").unwrap();
    assert!(exit_code(&session).contains(", 0)"));
    assert!(!dir.join(old).exists());
    assert!(dir.join(&id).exists());
}
