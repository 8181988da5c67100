//! The systemd and D-Bus files in `systemd/`: `systemd-analyze verify` is
//! clean, the agent's sandbox scores at most 3.0 in `systemd-analyze
//! security`, the tmpfiles and sysusers snippets do what the packages rely
//! on, and the names and schedules agree across the files.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The most `systemd-analyze security` exposure the agent may have.
const MAX_AGENT_EXPOSURE: f64 = 3.0;

const UNITS: &[&str] = &[
    "mesbak-agent.service",
    "mesbak-backup.service",
    "mesbak-backup.timer",
    "mesbak-test-restore.service",
    "mesbak-test-restore.timer",
    "mesbak-pitr-base-backup.service",
    "mesbak-pitr-base-backup.timer",
    "mesbak-notify-failure@.service",
];

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .join("systemd")
}

fn read(name: &str) -> String {
    let path = systemd_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// Runs a command to completion (stdin is empty unless the caller set it).
fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?} (is systemd installed?): {err}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The values of `key=` in a unit-style file, in order (comments skipped).
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn value(unit: &str, key: &str) -> String {
    let found = values(unit, key);
    assert_eq!(found.len(), 1, "expected exactly one {key}= in:\n{unit}");
    found.into_iter().next().unwrap()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let paths: Vec<PathBuf> = UNITS.iter().map(|unit| systemd_dir().join(unit)).collect();
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths));
    // The one message that is expected on a machine without the package:
    // the agent's binary is not installed at its ExecStart= path.
    let agent = value(&read("mesbak-agent.service"), "ExecStart");
    let agent_binary = agent.split_whitespace().next().unwrap().to_owned();
    let expected = format!(
        "mesbak-agent.service: Command {agent_binary} is not executable: No such file or directory"
    );
    // The notify template runs the same binary (verified as instance "i").
    let expected_notify = format!(
        "mesbak-notify-failure@i.service: Command {agent_binary} is not executable: No such file or directory"
    );
    let all = text(&output);
    let binary_missing = !Path::new(&agent_binary).exists();
    let unexpected: Vec<&str> = all
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            !binary_missing || (line.trim() != expected && line.trim() != expected_notify)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "systemd-analyze verify reported problems:\n{}",
        unexpected.join("\n")
    );
    if output.status.success() {
        return;
    }
    assert!(
        all.contains(&expected),
        "systemd-analyze verify failed without saying why: {all}"
    );
}

/// `systemd-analyze security --offline=yes`'s overall exposure of a unit.
fn exposure(unit: &str) -> f64 {
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(systemd_dir().join(unit)));
    let all = text(&output);
    let marker = format!("Overall exposure level for {unit}:");
    let line = all
        .lines()
        .find(|line| line.contains(&marker))
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{all}"));
    let figure = line[line.find(&marker).unwrap() + marker.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    figure
        .parse()
        .unwrap_or_else(|_| panic!("cannot read the exposure in {line:?}"))
}

#[test]
fn agent_sandbox_exposure_is_at_most_three() {
    let level = exposure("mesbak-agent.service");
    assert!(
        level <= MAX_AGENT_EXPOSURE,
        "mesbak-agent.service exposure {level} > {MAX_AGENT_EXPOSURE}"
    );
    // The timer jobs only talk to the bus: they can be much tighter.
    for unit in ["mesbak-backup.service", "mesbak-test-restore.service"] {
        let level = exposure(unit);
        assert!(level <= 1.5, "{unit} exposure {level} > 1.5");
    }
}

#[test]
fn agent_unit_is_a_hardened_notify_service_that_keeps_its_access() {
    let unit = read("mesbak-agent.service");
    assert_eq!(value(&unit, "Type"), "notify");
    assert_eq!(value(&unit, "BusName"), "org.mesbak.Agent1");
    assert_eq!(value(&unit, "Restart"), "on-failure");
    assert!(!value(&unit, "WatchdogSec").is_empty());
    assert_eq!(
        value(&unit, "EnvironmentFile"),
        "-/etc/mesbak/mesbak.env",
        "the env file must stay optional"
    );
    assert_eq!(value(&unit, "StateDirectory"), "mesbak");
    // What the agent needs must survive the hardening: the Docker socket
    // (AF_UNIX), loopback TCP to PostgreSQL and the health endpoint, the
    // backup folder writable.
    assert!(values(&unit, "PrivateNetwork").iter().all(|v| v == "no"));
    let families = value(&unit, "RestrictAddressFamilies");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.contains(family), "{family} missing: {families}");
    }
    assert!(
        values(&unit, "ReadWritePaths")
            .iter()
            .any(|v| v == "/var/backups/mes"),
        "/var/backups/mes must be writable"
    );
    assert!(values(&unit, "IPAddressDeny").is_empty());
}

#[test]
fn timers_run_the_client_on_the_documented_schedules() {
    let backup_timer = read("mesbak-backup.timer");
    assert_eq!(value(&backup_timer, "OnCalendar"), "*-*-* 00:00:00");
    assert_eq!(value(&backup_timer, "Persistent"), "true");
    assert!(!value(&backup_timer, "RandomizedDelaySec").is_empty());
    let test_timer = read("mesbak-test-restore.timer");
    assert_eq!(value(&test_timer, "OnCalendar"), "weekly");
    assert_eq!(value(&test_timer, "Persistent"), "true");
    for timer in [&backup_timer, &test_timer] {
        assert_eq!(value(timer, "WantedBy"), "timers.target");
        let calendar = value(timer, "OnCalendar");
        let output = run(Command::new("systemd-analyze").args(["calendar", &calendar]));
        assert!(output.status.success(), "{calendar}: {}", text(&output));
    }
    assert!(value(&read("mesbak-backup.service"), "ExecStart").ends_with("mesbakctl backup all"));
    assert!(
        value(&read("mesbak-test-restore.service"), "ExecStart")
            .ends_with("mesbakctl test-restore")
    );

    // The defaults documented in the shipped configuration match the timers.
    let config = fs::read_to_string(systemd_dir().join("../packaging/mesbak.toml")).unwrap();
    assert!(config.contains("#backup = \"*-*-* 00:00:00\""));
    assert!(config.contains("#test_restore = \"weekly\""));
}

#[test]
fn dbus_activation_starts_the_agent_unit() {
    let activation = read("org.mesbak.Agent1.service");
    assert!(activation.contains("[D-BUS Service]"));
    assert_eq!(value(&activation, "Name"), "org.mesbak.Agent1");
    assert_eq!(value(&activation, "User"), "root");
    assert_eq!(value(&activation, "SystemdService"), "mesbak-agent.service");

    let policy = read("org.mesbak.Agent1.conf");
    assert!(policy.contains("<allow own=\"org.mesbak.Agent1\"/>"));
    assert!(policy.contains("<policy group=\"mesbak\">"));
    assert!(policy.contains("<deny own=\"org.mesbak.Agent1\"/>"));
    assert_eq!(
        policy.matches("<allow own=").count(),
        1,
        "only root owns the name"
    );
}

#[test]
fn tmpfiles_and_sysusers_make_the_folders_and_the_group() {
    let root = tempfile::tempdir().unwrap();
    let tmpfiles = fs::File::open(systemd_dir().join("mesbak.tmpfiles")).unwrap();
    let output = run(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg("-")
        .stdin(tmpfiles));
    assert!(
        output.status.success(),
        "systemd-tmpfiles: {}",
        text(&output)
    );
    for dir in [
        "var/backups/mes",
        "var/backups/mes/database",
        "var/backups/mes/ignition",
        "var/lib/mesbak",
    ] {
        let meta = fs::metadata(root.path().join(dir)).unwrap_or_else(|err| panic!("{dir}: {err}"));
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{dir}");
        assert_eq!(meta.uid(), 0, "{dir} must be root's");
    }

    let sysusers = fs::File::open(systemd_dir().join("mesbak.sysusers")).unwrap();
    let output = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg("-")
        .stdin(sysusers));
    assert!(
        output.status.success(),
        "systemd-sysusers: {}",
        text(&output)
    );
    let group = fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group.lines().any(|line| line.starts_with("mesbak:x:")),
        "no group mesbak in {group}"
    );
}

#[test]
fn failures_of_every_mesbak_unit_alert_through_the_notifier() {
    for unit in [
        "mesbak-agent.service",
        "mesbak-backup.service",
        "mesbak-test-restore.service",
    ] {
        assert_eq!(
            value(&read(unit), "OnFailure"),
            "mesbak-notify-failure@%n.service",
            "{unit}"
        );
    }
    let notifier = read("mesbak-notify-failure@.service");
    assert_eq!(
        value(&notifier, "ExecStart"),
        "/usr/sbin/mesbak-agent --config /etc/mesbak/mesbak.toml --notify-failure %i"
    );
    assert_eq!(value(&notifier, "Type"), "oneshot");
    // Sandboxed like the clients, but it must reach the receivers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("mesbak-notify-failure@mesbak-backup.service.service");
    fs::write(&path, &notifier).unwrap();
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let all = text(&output);
    let level: f64 = all
        .lines()
        .find_map(|line| line.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    assert!(level <= MAX_AGENT_EXPOSURE, "notifier exposure {level}");
    assert!(values(&notifier, "RestrictAddressFamilies")[0].contains("AF_INET"));
}
