//! The programs under test: building them once, configuring and running the
//! agent on a private bus, waiting for its jobs, running `mesbakctl`.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use mesbak_interface::{AgentProxy, BUS_NAME, JobProxy};
use tempfile::TempDir;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::bus::Bus;
use crate::postgres::Postgres;
use crate::util::{blocking, describe, free_port, random_hex, tail_file, workspace_root};
use crate::volume::{Gateway, Volume};

/// How long [`wait_job`] waits by default.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// How long [`Agent::spawn`] waits for the agent to own its bus name.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the agent's log shown when something fails.
const LOG_TAIL: usize = 80;

/// Environment the agent and `mesbakctl` read that must not leak in from
/// the shell running the tests.
const SCRUBBED_ENV: &[&str] = &[
    "SCHEDULE",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_RETENTION_DAYS",
    "POSTGRES_HOST",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "RUST_LOG",
    // The debug build's pause points (`agent/src/fault_point.rs`).
    "MESBAK_TEST_PAUSE_AT",
    // Off-site credentials the agent would take from its environment.
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
];

/// Path of a binary of this workspace (`mesbak-agent`, `mesbakctl`), built
/// once per test process with `cargo build -p mesbak-agent -p mesbakctl` in
/// the same target folder and profile as the running test. Panics with
/// cargo's output when the build fails.
///
/// `MESBAK_TEST_BIN_DIR=<folder>` uses prebuilt binaries from there instead
/// (nothing is built).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| build_binaries().map_err(|err| format!("{err:#}")))
        .as_ref()
        .unwrap_or_else(|err| panic!("cannot build the programs under test: {err}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist after the build; is `{name}` a binary of this workspace?",
        path.display()
    );
    path
}

fn build_binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESBAK_TEST_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // A test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().context("locating the test binary")?;
    let (target_dir, profile) = match exe.parent() {
        Some(deps) if deps.file_name().is_some_and(|n| n == "deps") => {
            let profile_dir = deps.parent().context("deps has a parent")?;
            let profile = profile_dir
                .file_name()
                .context("profile folder name")?
                .to_string_lossy()
                .into_owned();
            let target = profile_dir.parent().context("profile has a parent")?;
            (target.to_path_buf(), profile)
        }
        _ => (
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target")),
            "debug".to_owned(),
        ),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "mesbak-agent",
            "-p",
            "mesbakctl",
            "--target-dir",
        ])
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("mesbak-tests: {}", describe(&cmd));
    let started = Instant::now();
    let output = blocking(|| cmd.stdin(Stdio::null()).output())
        .with_context(|| format!("cannot run `{}`", describe(&cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            describe(&cmd),
            output.status,
            crate::util::tail(&String::from_utf8_lossy(&output.stderr), 60)
        );
    }
    eprintln!(
        "mesbak-tests: built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(target_dir.join(profile))
}

/// `mesbakctl` as root, talking to `bus`.
pub fn mesbakctl(bus: &Bus) -> Command {
    let mut cmd = bus.command(binary("mesbakctl"));
    scrub(&mut cmd);
    cmd
}

/// Runs `mesbakctl args` as root against `bus` to its end.
pub fn mesbakctl_output(bus: &Bus, args: &[&str]) -> Output {
    mesbakctl(bus).args(args).output().expect("run mesbakctl")
}

/// `mesbakctl` as the unprivileged `user` (see [`crate::OPERATOR`],
/// [`crate::OUTSIDER`]), talking to `bus`.
pub fn mesbakctl_as(bus: &Bus, user: &str) -> Command {
    let mut cmd = bus.command_as(user, binary("mesbakctl"));
    scrub(&mut cmd);
    cmd
}

fn scrub(cmd: &mut Command) {
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
}

/// An agent configuration in a fresh temporary folder, written as TOML when
/// an [`Agent`] starts from it.
///
/// [`AgentConfig::new`] and [`AgentConfig::for_postgres`] fill in a safe test
/// setup; [`AgentConfig::set`] overrides any key by its dotted path,
/// [`AgentConfig::unset`] removes one (so the agent's default applies) and
/// [`AgentConfig::raw`] replaces the whole file (for bad-config tests).
///
/// Layout of [`AgentConfig::dir`]: `backups/` (`backup_dir`, not created:
/// the agent creates it), `state/` (`state_dir`, not created), `backup.key`
/// (0600), `db-password` (0600), `mesbak.toml`, `agent.log`.
#[derive(Clone)]
pub struct AgentConfig {
    dir: Arc<TempDir>,
    values: toml::Table,
    raw: Option<String>,
    env: Vec<(String, Option<String>)>,
    private_mount: Option<PathBuf>,
}

impl AgentConfig {
    /// A configuration without a database server: `database.container`
    /// names a container that does not exist and `database.port` a closed
    /// port, so nothing reaches a real server by accident.
    ///
    /// Defaults: backup and state folders in the temporary folder, a fresh
    /// key file, `health.listen = ""` (health ages 26 h and 192 h),
    /// `database.schemas` the three `mes_*` schemas, `backup.min_free_bytes` = 1 MiB,
    /// compression level 1, Ignition volume `mesbak-test-ign-<random>` (not
    /// created) with no containers to stop, helper image
    /// `mesbak-test/busybox`, no writer containers to stop on restore.
    pub fn new() -> AgentConfig {
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-agent-")
            .tempdir()
            .expect("create a temporary folder for the agent");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 the agent's folder");
        let key_file = dir.path().join("backup.key");
        mesbak_format::Key::generate_file(&key_file)
            .unwrap_or_else(|err| panic!("cannot write the test key: {err}"));
        let id = random_hex(4);
        let mut config = AgentConfig {
            dir: Arc::new(dir),
            values: toml::Table::new(),
            raw: None,
            env: Vec::new(),
            private_mount: None,
        };
        let root = config.dir().to_path_buf();
        config
            .set("backup_dir", path_str(&root.join("backups")))
            .set("state_dir", path_str(&root.join("state")))
            .set("database.container", format!("mesbak-test-no-db-{id}"))
            .set("database.name", "mes")
            .set("database.user", "admin")
            .set("database.host", "127.0.0.1")
            .set("database.port", i64::from(free_port()))
            .set(
                "database.schemas",
                vec!["mes_core", "mes_audit", "mes_custom"],
            )
            .set("ignition.volume", format!("mesbak-test-ign-{id}"))
            .set("ignition.stop_containers", Vec::<String>::new())
            .set("ignition.helper_image", "mesbak-test/busybox")
            .set("ignition.stop_timeout_secs", 10)
            .set("encryption.key_file", path_str(&key_file))
            .set("retention.days", 30)
            .set("restore.stop_containers", Vec::<String>::new())
            .set("backup.compression_level", 1)
            .set("backup.min_free_bytes", 1024 * 1024)
            .set("health.listen", "")
            .set("health.max_backup_age_hours", 26)
            .set("health.max_test_restore_age_hours", 192)
            .set("schedule.dropin_dir", path_str(&root.join("systemd")));
        config
    }

    /// [`AgentConfig::new`], with `[database]` pointing at `pg`: user
    /// `admin`, database `mes`, its password in a 0600 file, and
    /// * for a server reached through Docker only ([`crate::Reach::DockerOnly`]),
    ///   its container (and a closed port: nothing may go over TCP);
    /// * for one on the host's network ([`crate::Reach::HostPort`]), host
    ///   mode: `container = ""`, `127.0.0.1` and its port.
    pub fn for_postgres(pg: &Postgres) -> AgentConfig {
        let mut config = AgentConfig::new();
        let password_file = config.dir().join("db-password");
        write_private(&password_file, format!("{}\n", pg.password()).as_bytes())
            .unwrap_or_else(|err| panic!("cannot write {}: {err:#}", password_file.display()));
        config
            .set("database.user", pg.user())
            .set("database.password_file", path_str(&password_file));
        match pg.reach() {
            crate::Reach::DockerOnly => {
                config.set("database.container", pg.name());
            }
            crate::Reach::HostPort => {
                config
                    .set("database.container", "")
                    .set("database.host", "127.0.0.1")
                    .set("database.port", i64::from(pg.port()));
            }
        }
        config.use_engine(pg.engine());
        config
    }

    /// Points the agent at `engine` (`DOCKER_HOST`, as a plant would).
    pub fn use_engine(&mut self, engine: &crate::Engine) -> &mut AgentConfig {
        if let Some(host) = engine.docker_host() {
            self.env("DOCKER_HOST", host);
        }
        self
    }

    /// Points `[ignition]` at `volume` and makes the agent stop `gateways`
    /// for the copy (and, on restore, `[restore] stop_containers` too).
    pub fn ignition(&mut self, volume: &Volume, gateways: &[&Gateway]) -> &mut AgentConfig {
        self.use_engine(volume.engine());
        let names: Vec<String> = gateways.iter().map(|g| g.name().to_owned()).collect();
        self.set("ignition.volume", volume.name())
            .set("ignition.stop_containers", names.clone())
            .set("restore.stop_containers", names)
    }

    /// Sets `key` (a dotted path such as `"database.port"` or
    /// `"backup_dir"`) to `value`, creating tables on the way.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut AgentConfig {
        let (table, last) = self.table_for(key);
        table.insert(last.to_owned(), value.into());
        self
    }

    /// [`AgentConfig::set`], by value, for chaining off a constructor.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> AgentConfig {
        self.set(key, value);
        self
    }

    /// Removes `key`, so the agent's own default applies.
    pub fn unset(&mut self, key: &str) -> &mut AgentConfig {
        let (table, last) = self.table_for(key);
        table.remove(last);
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let mut parts = key.split('.').peekable();
        let mut table = &self.values;
        while let Some(part) = parts.next() {
            let value = table.get(part)?;
            if parts.peek().is_none() {
                return Some(value);
            }
            table = value.as_table()?;
        }
        None
    }

    /// Uses `text` verbatim as the configuration file (the keys set stay
    /// unused); for tests of bad configurations.
    pub fn raw(&mut self, text: impl Into<String>) -> &mut AgentConfig {
        self.raw = Some(text.into());
        self
    }

    /// Sets an environment variable for the agent (e.g. the seed stack's
    /// `POSTGRES_PASSWORD`; they are otherwise removed).
    pub fn env(&mut self, name: &str, value: &str) -> &mut AgentConfig {
        self.env.push((name.to_owned(), Some(value.to_owned())));
        self
    }

    /// Runs the agent with its wall clock moved by `offset`, libfaketime's
    /// syntax (`"+400d"`, `"-3h"`), through Debian's libfaketime
    /// (`LD_PRELOAD`); the monotonic clock stays real so timeouts and
    /// timers behave. Panics when libfaketime is not installed (dev/test
    /// installs the `faketime` package).
    pub fn fake_clock(&mut self, offset: &str) -> &mut AgentConfig {
        let library = libfaketime();
        self.env("LD_PRELOAD", library.to_str().expect("UTF-8 path"))
            .env("FAKETIME", offset)
            .env("DONT_FAKE_MONOTONIC", "1")
    }

    /// Undoes [`AgentConfig::fake_clock`] for the next start.
    pub fn real_clock(&mut self) -> &mut AgentConfig {
        self.env_remove("LD_PRELOAD")
            .env_remove("FAKETIME")
            .env_remove("DONT_FAKE_MONOTONIC")
    }

    /// Runs the agent in a mount namespace of its own, where `path` (made
    /// 0700 if missing) is an empty tmpfs: what the agent writes there is
    /// not what the Docker engine finds at that path, as for an agent in a
    /// container of its own or an engine on another filesystem view.
    pub fn private_mount(&mut self, path: &Path) -> &mut AgentConfig {
        self.private_mount = Some(path.to_owned());
        self
    }

    /// Removes an environment variable from the agent's environment.
    pub fn env_remove(&mut self, name: &str) -> &mut AgentConfig {
        self.env.push((name.to_owned(), None));
        self
    }

    /// The temporary folder holding everything of this configuration.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the file is written.
    pub fn path(&self) -> PathBuf {
        self.dir().join("mesbak.toml")
    }

    /// The agent's log (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("agent.log")
    }

    /// `backup_dir` as configured.
    pub fn backup_dir(&self) -> PathBuf {
        self.path_value("backup_dir")
    }

    /// `state_dir` as configured.
    pub fn state_dir(&self) -> PathBuf {
        self.path_value("state_dir")
    }

    /// The container changes the agent's journal (`state_dir/containers.json`,
    /// a versioned record `{"format": 1, "data": [...]}`) still holds; empty
    /// when there is no journal. Panics when it cannot be read.
    pub fn pending_container_changes(&self) -> Vec<serde_json::Value> {
        let path = self.state_dir().join("containers.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(err) => panic!("cannot read {}: {err}", path.display()),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{} is not JSON ({err}): {text}", path.display()));
        let entries = match value.get("data") {
            Some(data) => data.clone(),
            None => value,
        };
        entries
            .as_array()
            .unwrap_or_else(|| panic!("{} holds no list: {text}", path.display()))
            .clone()
    }

    /// `encryption.key_file` as configured.
    pub fn key_file(&self) -> PathBuf {
        self.path_value("encryption.key_file")
    }

    /// The backup key, read from the key file.
    pub fn key(&self) -> mesbak_format::Key {
        mesbak_format::Key::from_file(&self.key_file())
            .unwrap_or_else(|err| panic!("cannot read the test key: {err}"))
    }

    /// The TOML text [`AgentConfig::write`] writes.
    pub fn to_toml(&self) -> String {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => toml::to_string(&self.values).expect("a toml::Table serializes"),
        }
    }

    /// Writes the file (mode 0644, root's) and returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.path();
        std::fs::write(&path, self.to_toml())
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)))
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        path
    }

    fn path_value(&self, key: &str) -> PathBuf {
        match self.get(key) {
            Some(toml::Value::String(s)) => PathBuf::from(s),
            other => panic!("{key} is not set to a path in this test configuration: {other:?}"),
        }
    }

    fn table_for<'k>(&mut self, key: &'k str) -> (&mut toml::Table, &'k str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("split yields at least one part");
        assert!(!last.is_empty(), "empty configuration key in {key:?}");
        let mut table = &mut self.values;
        for part in parts {
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in {key:?} is not a table"));
        }
        (table, last)
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig::new()
    }
}

/// The multi-threaded libfaketime of Debian's `faketime` package.
pub fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "libfaketimeMT.so.1 is not installed under /usr/lib/*/faketime/: install Debian's `faketime` package (dev/test does)"
        )
    })
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}

/// Creates `path` with mode 0600 and `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    Ok(())
}

/// A running `mesbak-agent` on a private bus. Drop kills it (and prints the
/// tail of its log when the test is failing).
pub struct Agent {
    child: Child,
    connection: zbus::Connection,
    log: PathBuf,
    _dir: Arc<TempDir>,
    exit: Option<ExitStatus>,
}

impl Agent {
    /// Writes `config`, starts `mesbak-agent --config <file>` with
    /// `DBUS_SYSTEM_BUS_ADDRESS` at `bus` and `RUST_LOG=debug`, and waits
    /// until it owns `org.mesbak.Agent1` (30 s). Panics with the log's tail
    /// when it exits or does not come up.
    pub async fn spawn(bus: &Bus, config: &AgentConfig) -> Agent {
        Agent::try_spawn(bus, config)
            .await
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// [`Agent::spawn`], returning the error (which includes the log's tail)
    /// instead of panicking.
    pub async fn try_spawn(bus: &Bus, config: &AgentConfig) -> Result<Agent> {
        let connection = bus.try_connection().await?;
        let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
        let name = zbus::names::BusName::try_from(BUS_NAME)?;
        // A previous agent's name may linger for a moment after it died.
        let previous = dbus.get_name_owner(name.clone()).await.ok();

        let (mut child, log, offset) = start_agent(bus, config)?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mesbak-agent exited ({status}) before it owned {BUS_NAME}; log {}:\n{}",
                    log.display(),
                    run_tail(&log, offset)
                );
            }
            match dbus.get_name_owner(name.clone()).await {
                Ok(owner) if Some(&owner) != previous.as_ref() => break,
                _ => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mesbak-agent did not own {BUS_NAME} within {} s; log {}:\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    log.display(),
                    run_tail(&log, offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Agent {
            child,
            connection,
            log,
            _dir: config.dir.clone(),
            exit: None,
        })
    }

    /// Runs the agent and waits (up to `timeout`) for it to exit on its own,
    /// as it must for a bad configuration. Returns the exit status and the
    /// whole output of this run. Panics if it is still running by then.
    pub async fn run_to_exit(
        bus: &Bus,
        config: &AgentConfig,
        timeout: Duration,
    ) -> (ExitStatus, String) {
        let (mut child, log, offset) =
            start_agent(bus, config).unwrap_or_else(|err| panic!("{err:#}"));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for mesbak-agent") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mesbak-agent still ran after {} s; log:\n{}",
                    timeout.as_secs(),
                    run_tail(&log, offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let bytes = std::fs::read(&log).unwrap_or_default();
        let text =
            String::from_utf8_lossy(&bytes[(offset as usize).min(bytes.len())..]).into_owned();
        (status, text)
    }

    /// A proxy of the manager object, on the test's root connection, reading
    /// properties fresh on every call (no cache).
    pub async fn proxy(&self) -> AgentProxy<'static> {
        agent_proxy(&self.connection).await
    }

    /// The root connection the agent was awaited on.
    pub fn connection(&self) -> &zbus::Connection {
        &self.connection
    }

    /// Backs the database up, asserts that it worked, and returns the
    /// backup's id.
    pub async fn backup_database(&self) -> String {
        let job = self.proxy().await.backup("database").await.unwrap();
        let outcome = wait_job_outcome(&self.connection, &job, DEFAULT_JOB_TIMEOUT).await;
        assert!(outcome.success, "{}", outcome.message);
        outcome.files[0].clone()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (all runs from this configuration, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The number after `field=` on the last log line that contains
    /// `line`; panics with the log when there is none.
    #[track_caller]
    pub fn last_logged_number(&self, line: &str, field: &str) -> u64 {
        let log = self.log();
        log.lines()
            .rfind(|l| l.contains(line))
            .and_then(|l| l.split(&format!("{field}=")).nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} on a '{line}' line in the log:\n{log}"))
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Kills the agent with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.poll_exit() {
            return status;
        }
        let _ = self.child.kill();
        let status = blocking(|| self.child.wait()).expect("reap mesbak-agent");
        self.exit = Some(status);
        status
    }

    /// Sends SIGTERM and waits up to 30 s for the agent to exit; panics with
    /// the log's tail if it does not.
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.poll_exit() {
            return status;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        match self.wait_exit(Duration::from_secs(30)).await {
            Some(status) => status,
            None => panic!(
                "mesbak-agent did not exit within 30 s of SIGTERM; log:\n{}",
                tail_file(&self.log, LOG_TAIL)
            ),
        }
    }

    /// Waits up to `timeout` for the agent to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- mesbak-agent log {} (last {LOG_TAIL} lines) ---\n{}\n---",
                self.log.display(),
                tail_file(&self.log, LOG_TAIL)
            );
        }
    }
}

/// Starts the agent; returns the child, the log path and where this run's
/// output starts in the log.
fn start_agent(bus: &Bus, config: &AgentConfig) -> Result<(Child, PathBuf, u64)> {
    let path = config.write();
    let log = config.log_path();
    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(
        log_file,
        "===== mesbak-agent --config {} =====",
        path.display()
    )?;
    let mut cmd = match &config.private_mount {
        None => Command::new(binary("mesbak-agent")),
        Some(dir) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            // unshare and sh exec: the agent keeps the child's pid.
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o mode=0700 mesbak-private "$0" && exec "$@""#)
                .arg(dir)
                .arg(binary("mesbak-agent"));
            cmd
        }
    };
    cmd.arg("--config").arg(&path);
    scrub(&mut cmd);
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env("RUST_LOG", "debug");
    for (name, value) in &config.env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
    Ok((child, log, offset))
}

/// The last lines of the log from `offset` on (this run's output).
fn run_tail(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    crate::util::tail(&String::from_utf8_lossy(&bytes[start..]), LOG_TAIL)
}

/// A manager proxy on `connection` that reads properties fresh each time.
pub async fn agent_proxy(connection: &zbus::Connection) -> AgentProxy<'static> {
    AgentProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("build AgentProxy")
}

/// A proxy of the job object at `path` that reads properties fresh each
/// time (for `Cancel`, `State`, `Cancellable`...).
pub async fn job_proxy(connection: &zbus::Connection, path: &str) -> JobProxy<'static> {
    JobProxy::builder(connection)
        .path(path.to_owned())
        .unwrap_or_else(|err| panic!("not a job path {path}: {err}"))
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("build JobProxy")
}

/// The marker the agent writes when it pauses at `point`
/// (`agent/src/fault_point.rs`, debug builds only); deleting it resumes.
pub fn pause_marker(config: &AgentConfig, point: &str) -> PathBuf {
    config.state_dir().join(format!("paused-at-{point}"))
}

/// Waits until the agent has paused `job` at `point`, failing when the job
/// ends first or `within` passes.
pub async fn wait_paused(
    config: &AgentConfig,
    point: &str,
    job: &OwnedObjectPath,
    agent: &Agent,
    within: Duration,
) {
    let marker = pause_marker(config, point);
    let deadline = Instant::now() + within;
    let proxy = job_proxy(agent.connection(), job.as_str()).await;
    while !marker.exists() {
        assert_eq!(
            proxy.state().await.unwrap_or_default(),
            "running",
            "the job ended before pausing at {point}: {}",
            proxy.message().await.unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "never paused at {point}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 120 s) until the job at `job` has handled `bytes` and its
/// stage contains `stage`, to interrupt it there; panics if the job ends
/// first.
pub async fn wait_for_progress(
    connection: &zbus::Connection,
    job: &OwnedObjectPath,
    stage: &str,
    bytes: u64,
) {
    let proxy = job_proxy(connection, job.as_str()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now_stage = proxy.stage().await.unwrap_or_default();
        let done = proxy.bytes_done().await.unwrap_or(0);
        if now_stage.contains(stage) && done >= bytes {
            return;
        }
        assert_eq!(
            proxy.state().await.unwrap_or_default(),
            "running",
            "the job ended before the point to interrupt it ({now_stage}): {}",
            proxy.message().await.unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the job never reached '{stage}' with {bytes} bytes (stage '{now_stage}', {done} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub success: bool,
    /// The `Finished` signal's message.
    pub message: String,
    /// The `ErrorName` property (`""` on success or when the job object was
    /// already gone).
    pub error_name: String,
    /// The `Files` property (backup ids the job created).
    pub files: Vec<String>,
    /// The `Warnings` property.
    pub warnings: Vec<String>,
}

/// Waits (up to [`DEFAULT_JOB_TIMEOUT`]) for the job at `path` to finish and
/// returns its success and message. Subscribes to `Finished` before reading
/// `State`, so a job that ends in between is not missed.
pub async fn wait_job<'p, P>(connection: &zbus::Connection, path: P) -> (bool, String)
where
    P: TryInto<ObjectPath<'p>>,
    P::Error: Into<zbus::Error>,
{
    let outcome = wait_job_outcome(connection, path, DEFAULT_JOB_TIMEOUT).await;
    (outcome.success, outcome.message)
}

/// [`wait_job`] with a timeout, returning the job's error name, files and
/// warnings too. Panics on timeout or when the job cannot be followed.
pub async fn wait_job_outcome<'p, P>(
    connection: &zbus::Connection,
    path: P,
    timeout: Duration,
) -> JobOutcome
where
    P: TryInto<ObjectPath<'p>>,
    P::Error: Into<zbus::Error>,
{
    let path: ObjectPath<'p> = path
        .try_into()
        .map_err(Into::into)
        .unwrap_or_else(|err| panic!("not a job path: {err}"));
    try_wait_job(connection, &path, timeout)
        .await
        .unwrap_or_else(|err| panic!("waiting for job {path}: {err:#}"))
}

async fn try_wait_job(
    connection: &zbus::Connection,
    path: &ObjectPath<'_>,
    timeout: Duration,
) -> Result<JobOutcome> {
    let job = JobProxy::builder(connection)
        .path(path.as_ref())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut finished = job.receive_finished().await?;
    let state = job.state().await;
    let signal = match &state {
        Ok(state) if state == "running" => Some(
            tokio::time::timeout(timeout, finished.next())
                .await
                .map_err(|_| anyhow!("the job did not finish within {} s", timeout.as_secs()))?,
        ),
        Ok(_) => None,
        // The job object may already be gone; its signal may be queued.
        Err(err) => match tokio::time::timeout(Duration::from_secs(1), finished.next()).await {
            Ok(next) => Some(next),
            Err(_) => bail!("cannot read the job's State: {err}"),
        },
    };
    let (success, message) = match signal {
        Some(next) => {
            let signal = next.ok_or_else(|| anyhow!("the Finished signal stream ended"))?;
            let args = signal.args()?;
            (args.success, args.message.clone())
        }
        None => (
            matches!(&state, Ok(s) if s == "succeeded"),
            job.message().await?,
        ),
    };
    Ok(JobOutcome {
        success,
        message,
        error_name: job.error_name().await.unwrap_or_default(),
        files: job.files().await.unwrap_or_default(),
        warnings: job.warnings().await.unwrap_or_default(),
    })
}
