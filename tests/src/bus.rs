//! A private system-like D-Bus daemon per test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::util::{blocking, tail_file, workspace_root};

/// The test user in group `mesbak` (created by `dev/test`).
pub const OPERATOR: &str = "mesbak-operator";
/// The test user outside group `mesbak` (created by `dev/test`).
pub const OUTSIDER: &str = "mesbak-outsider";

/// The bus policy file the package installs, as tests include it.
pub fn policy_file() -> PathBuf {
    workspace_root().join("systemd/org.mesbak.Agent1.conf")
}

/// A private `dbus-daemon` configured like Debian's system bus (EXTERNAL
/// auth only, deny-own / deny-method-call by default) plus mesbak's own
/// policy file from `systemd/`. Killed on drop.
///
/// Point programs at it with `DBUS_SYSTEM_BUS_ADDRESS=`[`Bus::address`]; run
/// them as the unprivileged test users with [`Bus::command_as`].
pub struct Bus {
    child: Child,
    address: String,
    socket: PathBuf,
    dir: TempDir,
}

impl Bus {
    /// Starts the daemon and waits until it listens. Panics with the reason
    /// when `dbus-daemon`, the policy file or the test users are missing.
    pub fn start() -> Bus {
        Bus::try_start()
            .unwrap_or_else(|err| panic!("cannot start a private D-Bus daemon: {err:#}"))
    }

    /// [`Bus::start`], returning the error instead of panicking.
    pub fn try_start() -> Result<Bus> {
        check_test_users()?;
        let policy = policy_file();
        if !policy.is_file() {
            bail!("the bus policy {} is missing", policy.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-bus-")
            .tempdir()
            .context("creating the bus folder")?;
        // The test users must reach the socket: 0755 on the folder (the
        // daemon makes the socket itself world-connectable, as on a host).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("system.conf");
        std::fs::write(&config, system_conf(&socket, &policy))?;
        let (child, address) = spawn_daemon(dir.path(), &socket)?;
        Ok(Bus {
            child,
            address,
            socket,
            dir,
        })
    }

    /// Restarts the daemon on the same socket, as `systemctl restart dbus`
    /// does: every connection drops and every name is released. The
    /// address changes (a new guid); connections made before are dead.
    pub fn restart(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = blocking(|| self.child.wait());
        let _ = std::fs::remove_file(&self.socket);
        let (child, address) = spawn_daemon(self.dir.path(), &self.socket)
            .unwrap_or_else(|err| panic!("cannot start the private D-Bus daemon again: {err:#}"));
        self.child = child;
        self.address = address;
    }

    /// The address for `DBUS_SYSTEM_BUS_ADDRESS` (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The listening socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's stderr, for diagnostics.
    pub fn log(&self) -> String {
        tail_file(&self.dir.path().join("dbus-daemon.log"), 200)
    }

    /// A new connection as this (root) process.
    pub async fn connection(&self) -> zbus::Connection {
        self.try_connection().await.unwrap_or_else(|err| {
            panic!(
                "cannot connect to the private bus {}: {err:#}\n{}",
                self.address,
                self.log()
            )
        })
    }

    /// [`Bus::connection`], returning the error instead of panicking.
    pub async fn try_connection(&self) -> Result<zbus::Connection> {
        Ok(zbus::connection::Builder::address(self.address.as_str())?
            .build()
            .await?)
    }

    /// A `Command` that runs `program` as `user` (e.g. [`OPERATOR`] or
    /// [`OUTSIDER`]) with the user's groups, through `setpriv`, with
    /// `DBUS_SYSTEM_BUS_ADDRESS` pointing at this bus. Add arguments and
    /// environment as usual.
    pub fn command_as(&self, user: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = as_user(user, program);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address);
        cmd
    }

    /// A `Command` for `program` as root, with `DBUS_SYSTEM_BUS_ADDRESS`
    /// pointing at this bus.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address);
        cmd
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- dbus-daemon log ({}) ---\n{}\n---",
                self.address,
                self.log()
            );
        }
    }
}

/// A `Command` running `program` as `user` with the user's primary and
/// supplementary groups (`setpriv --reuid --regid --init-groups`), keeping the
/// environment. Panics when the user does not exist.
pub fn as_user(user: &str, program: impl AsRef<OsStr>) -> Command {
    let account = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("test user {user} is missing: run dev/test (or `source dev/lib.sh; ensure_users`) as root")
        });
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", account.uid))
        .arg(format!("--regid={}", account.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(program)
        // HOME=/root would be unreadable for the user; nothing should need it.
        .env("HOME", "/nonexistent");
    cmd
}

/// Starts `dbus-daemon` with `dir/system.conf`, logging to
/// `dir/dbus-daemon.log`, and waits until it listens on `socket`.
fn spawn_daemon(dir: &Path, socket: &Path) -> Result<(Child, String)> {
    let config = dir.join("system.conf");
    let log = dir.join("dbus-daemon.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;

    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("cannot run dbus-daemon (Debian package `dbus`; run dev/test to install it)")?;

    // The daemon prints its address once it listens.
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = blocking(|| rx.recv_timeout(Duration::from_secs(10)));
    let address = match line {
        Ok(line) if !line.trim().is_empty() => line.trim().to_owned(),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "dbus-daemon did not print its address within 10 s; its log:\n{}",
                tail_file(&log, 30)
            );
        }
    };
    if !socket.exists() {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "dbus-daemon claims {address} but {} does not exist",
            socket.display()
        );
    }
    Ok((child, address))
}

fn check_test_users() -> Result<()> {
    use nix::unistd::{Group, User};
    let group = Group::from_name(mesbak_interface::CLIENT_GROUP)?.with_context(|| {
        format!(
            "group {} is missing: run dev/test (or `source dev/lib.sh; ensure_users`) as root",
            mesbak_interface::CLIENT_GROUP
        )
    })?;
    for user in [OPERATOR, OUTSIDER] {
        User::from_name(user)?.with_context(|| {
            format!("test user {user} is missing: run dev/test (or `source dev/lib.sh; ensure_users`) as root")
        })?;
    }
    if !group.mem.iter().any(|m| m == OPERATOR) {
        bail!(
            "{OPERATOR} is not a member of group {}; run dev/test (or `usermod -aG mesbak {OPERATOR}`)",
            group.name
        );
    }
    if group.mem.iter().any(|m| m == OUTSIDER) {
        bail!("{OUTSIDER} must not be a member of group {}", group.name);
    }
    Ok(())
}

/// Debian's `/usr/share/dbus-1/system.conf`, minus the service helper,
/// syslog and the host's own policy folders, listening on `socket`, plus
/// `policy`.
fn system_conf(socket: &Path, policy: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
        socket = xml_escape(&socket.display().to_string()),
        policy = xml_escape(&policy.display().to_string()),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
