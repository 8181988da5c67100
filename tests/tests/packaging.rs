//! The packages: `packaging/build` makes a .deb and an .rpm; the .deb
//! installs, upgrades, removes and purges cleanly in a clean Debian 12
//! container (`mesbak-test/debian:12`, made with debootstrap and `docker
//! import` by dev/lib.sh), lintian finds no errors in it, and the .rpm holds
//! the same files.
//!
//! Needs root, a running dockerd and the image: the tests fail, never skip,
//! without them (`dev/test` provides all three).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const IMAGE: &str = "mesbak-test/debian:12";

/// Every file the packages install, with its mode (deb and rpm alike, but
/// for where zsh completions go).
const FILES: &[(&str, u32)] = &[
    ("/usr/sbin/mesbak-agent", 0o755),
    ("/usr/bin/mesbakctl", 0o755),
    ("/etc/mesbak/mesbak.toml", 0o644),
    ("/usr/lib/systemd/system/mesbak-agent.service", 0o644),
    ("/usr/lib/systemd/system/mesbak-backup.service", 0o644),
    ("/usr/lib/systemd/system/mesbak-backup.timer", 0o644),
    ("/usr/lib/systemd/system/mesbak-test-restore.service", 0o644),
    ("/usr/lib/systemd/system/mesbak-test-restore.timer", 0o644),
    (
        "/usr/lib/systemd/system/mesbak-pitr-base-backup.service",
        0o644,
    ),
    (
        "/usr/lib/systemd/system/mesbak-pitr-base-backup.timer",
        0o644,
    ),
    (
        "/usr/lib/systemd/system/mesbak-notify-failure@.service",
        0o644,
    ),
    ("/usr/share/mesbak/prometheus/mesbak.rules.yml", 0o644),
    ("/usr/share/mesbak/grafana/mesbak-dashboard.json", 0o644),
    ("/usr/lib/tmpfiles.d/mesbak.conf", 0o644),
    ("/usr/lib/sysusers.d/mesbak.conf", 0o644),
    ("/usr/share/dbus-1/system.d/org.mesbak.Agent1.conf", 0o644),
    (
        "/usr/share/dbus-1/system-services/org.mesbak.Agent1.service",
        0o644,
    ),
    ("/usr/share/man/man8/mesbak-agent.8.gz", 0o644),
    ("/usr/share/man/man1/mesbakctl.1.gz", 0o644),
    ("/usr/share/man/man1/mesbakctl-backup.1.gz", 0o644),
    ("/usr/share/man/man1/mesbakctl-restore.1.gz", 0o644),
    ("/usr/share/man/man1/mesbakctl-decrypt.1.gz", 0o644),
    ("/usr/share/bash-completion/completions/mesbakctl", 0o644),
    ("/usr/share/fish/vendor_completions.d/mesbakctl.fish", 0o644),
    ("/usr/share/doc/mesbak/README.md", 0o644),
    ("/usr/share/doc/mesbak/FORMAT.md", 0o644),
];
const DEB_ZSH: &str = "/usr/share/zsh/vendor-completions/_mesbakctl";
const RPM_ZSH: &str = "/usr/share/zsh/site-functions/_mesbakctl";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

/// Runs a command that must succeed; returns its standard output.
fn check(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

/// Runs `packaging/build` once for all tests of this file.
fn packages() -> &'static Packages {
    static BUILT: OnceLock<Result<Packages, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let output = Command::new(workspace().join("packaging/build"))
            .current_dir(workspace())
            .output()
            .map_err(|err| format!("cannot run packaging/build: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "packaging/build failed ({}):\n{}",
                output.status,
                text(&output)
            ));
        }
        let dir = workspace().join("target/packages");
        let find = |prefix: &str, suffix: &str| -> Result<PathBuf, String> {
            let found: Vec<PathBuf> = fs::read_dir(&dir)
                .map_err(|err| format!("{}: {err}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    let name = path.file_name().unwrap().to_string_lossy();
                    name.starts_with(prefix) && name.ends_with(suffix)
                })
                .collect();
            match found.as_slice() {
                [one] => Ok(one.clone()),
                _ => Err(format!(
                    "expected one {prefix}*{suffix} in {}, found {found:?}",
                    dir.display()
                )),
            }
        };
        Ok(Packages {
            deb: find("mesbak_", ".deb")?,
            rpm: find("mesbak-", ".rpm")?,
        })
    });
    built.as_ref().unwrap_or_else(|err| panic!("{err}"))
}

/// A running Debian 12 container with the package folder mounted at /pkg,
/// removed when dropped.
struct Container {
    name: String,
}

impl Container {
    fn start(packages: &Path) -> Container {
        let docker = run(Command::new("docker").arg("info"));
        assert!(
            docker.status.success(),
            "docker is not usable (dev/test starts dockerd): {}",
            text(&docker)
        );
        let image = run(Command::new("docker").args(["image", "inspect", IMAGE]));
        assert!(
            image.status.success(),
            "image {IMAGE} is missing; build it with \
             bash -c 'source dev/lib.sh; ensure_debian_image' (dev/test does)"
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("mesbak-packaging-{}-{nanos}", std::process::id());
        let container = Container { name };
        // Host networking so apt can reach the Debian mirror (dockerd runs
        // without a bridge here).
        check(Command::new("docker").args([
            "run",
            "--detach",
            "--rm",
            "--network",
            "host",
            "--name",
            &container.name,
            "--volume",
            &format!("{}:/pkg:ro", packages.display()),
            IMAGE,
            "sleep",
            "infinity",
        ]));
        container
    }

    /// Runs a shell script in the container.
    fn sh(&self, script: &str) -> Output {
        run(Command::new("docker")
            .args(["exec", "--env", "DEBIAN_FRONTEND=noninteractive"])
            .arg(&self.name)
            .args(["bash", "-euo", "pipefail", "-c", script]))
    }

    /// Runs a shell script that must succeed; returns its standard output.
    fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "in the container, `{script}` failed ({}):\n{}",
            output.status,
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e '{path}'")).status.success()
    }

    /// `mode owner group` of a path.
    fn stat(&self, path: &str) -> String {
        self.ok(&format!("stat -c '%a %U %G' '{path}'"))
            .trim()
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", &self.name])
            .output();
    }
}

#[test]
fn deb_installs_upgrades_removes_and_purges_in_a_clean_debian() {
    let packages = packages();
    let deb = format!(
        "/pkg/{}",
        packages.deb.file_name().unwrap().to_string_lossy()
    );
    let container = Container::start(packages.deb.parent().unwrap());

    // Install as a plant would, dependencies from the Debian mirror
    // (recommends left out: docker.io is not needed to check the package).
    container.ok("apt-get update -qq");
    container.ok(&format!(
        "apt-get install -y -qq --no-install-recommends {deb}"
    ));
    let status = container.ok("dpkg-query -W --showformat='${Status}|${Version}' mesbak");
    assert!(
        status.starts_with("install ok installed|"),
        "dpkg status: {status}"
    );

    // Files and modes.
    for (path, mode) in FILES.iter().chain(&[(DEB_ZSH, 0o644)]) {
        assert_eq!(
            container.stat(path),
            format!("{mode:o} root root"),
            "mode or owner of {path}"
        );
    }
    let copyright = container.ok("cat /usr/share/doc/mesbak/copyright");
    assert!(copyright.contains("Apache-2.0"), "copyright: {copyright}");
    assert!(container.exists("/usr/share/doc/mesbak/changelog.Debian.gz"));
    assert!(
        container
            .ok("zcat /usr/share/man/man8/mesbak-agent.8.gz")
            .contains(".TH mesbak-agent 8")
    );

    // The configuration is a conffile, and only it.
    let conffiles = container.ok("cat /var/lib/dpkg/info/mesbak.conffiles");
    assert_eq!(conffiles.trim(), "/etc/mesbak/mesbak.toml");
    let conffiles = container.ok("dpkg-query -W --showformat='${Conffiles}' mesbak");
    assert!(
        conffiles
            .trim_start()
            .starts_with("/etc/mesbak/mesbak.toml "),
        "dpkg-query Conffiles: {conffiles}"
    );

    // Group, folders, units enabled (without a running systemd).
    container.ok("getent group mesbak");
    for dir in [
        "/var/backups/mes",
        "/var/backups/mes/database",
        "/var/backups/mes/ignition",
        "/var/lib/mesbak",
    ] {
        assert_eq!(container.stat(dir), "700 root root", "{dir}");
    }
    for link in [
        "/etc/systemd/system/multi-user.target.wants/mesbak-agent.service",
        "/etc/systemd/system/timers.target.wants/mesbak-backup.timer",
        "/etc/systemd/system/timers.target.wants/mesbak-test-restore.timer",
        "/etc/systemd/system/timers.target.wants/mesbak-pitr-base-backup.timer",
    ] {
        assert!(container.exists(link), "{link} missing: unit not enabled");
    }

    // Both programs run with the libraries the package pulled in, and the
    // shipped configuration (every key commented out) is valid (the full
    // check also wants a key and a Docker engine, which this bare container
    // has not).
    assert!(container.ok("mesbakctl --help").contains("mesbakctl"));
    assert!(container.ok("mesbakctl --version").contains("mesbakctl"));
    container.ok("mesbak-agent --check-config --syntax-only");

    // Upgrade (a reinstall runs the upgrade paths): local changes to the
    // conffile survive.
    container.ok("echo '# local change' >> /etc/mesbak/mesbak.toml");
    container.ok(&format!("dpkg -i {deb}"));
    assert!(
        container
            .ok("cat /etc/mesbak/mesbak.toml")
            .contains("# local change")
    );

    // A backup, a key and state, as a running agent would leave them.
    container.ok(
        "printf backup > /var/backups/mes/database/mes_2026-01-01_000000.sql.gz.enc && \
         install -m 0600 /dev/null /etc/mesbak/backup.key && echo key > /etc/mesbak/backup.key && \
         echo '{}' > /var/lib/mesbak/state.json && \
         echo 'POSTGRES_PASSWORD=x' > /etc/mesbak/mesbak.env",
    );

    // Remove: programs and units go, configuration, key and backups stay.
    container.ok("apt-get remove -y -qq mesbak");
    let status = container.ok("dpkg-query -W --showformat='${Status}' mesbak");
    assert_eq!(status, "deinstall ok config-files");
    for gone in [
        "/usr/sbin/mesbak-agent",
        "/usr/bin/mesbakctl",
        "/usr/lib/systemd/system/mesbak-agent.service",
    ] {
        assert!(!container.exists(gone), "{gone} left after remove");
    }
    for kept in [
        "/etc/mesbak/mesbak.toml",
        "/etc/mesbak/backup.key",
        "/var/backups/mes/database/mes_2026-01-01_000000.sql.gz.enc",
    ] {
        assert!(container.exists(kept), "{kept} deleted by remove");
    }

    // Purge: configuration and state go; backups and the key stay.
    container.ok("apt-get purge -y -qq mesbak");
    let status = container.sh("dpkg-query -W --showformat='${Status}' mesbak");
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("config-files"),
        "still known to dpkg after purge: {}",
        text(&status)
    );
    for gone in [
        "/etc/mesbak/mesbak.toml",
        "/etc/mesbak/mesbak.env",
        "/var/lib/mesbak",
    ] {
        assert!(!container.exists(gone), "{gone} left after purge");
    }
    assert_eq!(
        container.ok("cat /var/backups/mes/database/mes_2026-01-01_000000.sql.gz.enc"),
        "backup",
        "purge touched a backup"
    );
    assert_eq!(container.ok("cat /etc/mesbak/backup.key").trim(), "key");
    assert_eq!(container.stat("/var/backups/mes"), "700 root root");
    let leftovers = container.ok("find /etc/systemd/system -name 'mesbak*'");
    assert!(
        leftovers.trim().is_empty(),
        "unit links left after purge:\n{leftovers}"
    );
}

#[test]
fn deb_metadata_declares_the_dependencies() {
    let deb = &packages().deb;
    let fields = check(Command::new("dpkg-deb").arg("--field").arg(deb).args([
        "Package",
        "Depends",
        "Recommends",
        "Suggests",
        "Section",
    ]));
    assert!(fields.contains("Package: mesbak\n"), "{fields}");
    assert!(fields.contains("libssl3"), "libssl not declared: {fields}");
    assert!(fields.contains("dbus-system-bus"), "{fields}");
    assert!(
        fields.contains("Recommends: docker.io | docker-ce"),
        "{fields}"
    );
    assert!(fields.contains("Suggests: postgresql-client"), "{fields}");
    let scripts = check(Command::new("dpkg-deb").arg("--info").arg(deb));
    for script in ["postinst", "prerm", "postrm"] {
        assert!(scripts.contains(script), "no {script} in:\n{scripts}");
    }
}

#[test]
fn lintian_finds_no_errors_in_the_deb() {
    let deb = &packages().deb;
    let output = run(Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(deb));
    let all = text(&output);
    let errors: Vec<&str> = all.lines().filter(|line| line.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(output.status.success(), "lintian failed:\n{all}");
}

#[test]
fn rpm_lists_the_expected_files_and_scriptlets() {
    let rpm = &packages().rpm;
    let listed: BTreeSet<String> = check(Command::new("rpm").arg("-qpl").arg(rpm))
        .lines()
        .map(str::to_owned)
        .collect();
    for path in FILES.iter().map(|(path, _)| *path).chain([RPM_ZSH]) {
        assert!(
            listed.contains(path),
            "{path} missing from the rpm: {listed:#?}"
        );
    }
    let config = check(Command::new("rpm").arg("-qpc").arg(rpm));
    assert_eq!(config.trim(), "/etc/mesbak/mesbak.toml");
    let modes = check(
        Command::new("rpm")
            .args([
                "-qp",
                "--queryformat",
                "[%{FILEMODES:perms} %{FILENAMES}\\n]",
            ])
            .arg(rpm),
    );
    for (path, mode) in FILES {
        let perms = if *mode == 0o755 {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert!(
            modes.lines().any(|line| line == format!("{perms} {path}")),
            "{path} should be {perms} in:\n{modes}"
        );
    }
    let scripts = check(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm));
    for scriptlet in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
    ] {
        assert!(scripts.contains(scriptlet), "no {scriptlet}:\n{scripts}");
    }
    let requires = check(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm));
    assert!(
        requires.contains("libssl.so.3"),
        "libssl not required:\n{requires}"
    );
    assert!(requires.lines().any(|line| line == "dbus"), "{requires}");
}

#[test]
fn every_documented_config_key_is_accepted_by_the_agent() {
    packages();
    // packaging/mesbak.toml with every setting uncommented: the documented
    // keys and defaults must be exactly what the agent accepts.
    let shipped = fs::read_to_string(workspace().join("packaging/mesbak.toml")).unwrap();
    let uncommented: String = shipped
        .lines()
        .map(|line| match line.strip_prefix('#') {
            // Settings, and the table headers of the examples ([[offsite]]).
            Some(rest)
                if (rest.contains(" = ") && !rest.starts_with(' ')) || rest.starts_with('[') =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(uncommented.contains("\nbackup_dir = \"/var/backups/mes\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesbak.toml");
    fs::write(&path, &uncommented).unwrap();
    let agent = workspace().join("target/release/mesbak-agent");
    check(
        Command::new(&agent)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--config")
            .arg(&path)
            .args(["--check-config", "--syntax-only"]),
    );
    // And a wrong key is refused (so the check above means something).
    fs::write(&path, "[health]\nlisten_typo = \"127.0.0.1:8888\"\n").unwrap();
    let output = run(Command::new(&agent)
        .env_clear()
        .arg("--config")
        .arg(&path)
        .args(["--check-config", "--syntax-only"]));
    assert!(!output.status.success(), "a bad config was accepted");
}
