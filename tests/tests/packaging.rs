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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mesbak_tests::util::random_hex;
use mesbak_tests::{Flavor, Gateway, LABEL, Postgres, Volume};

const IMAGE: &str = "mesbak-test/debian:12";
/// The same with systemd, dbus and rpm (dev/lib.sh, `ensure_systemd_image`).
const SYSTEMD_IMAGE: &str = "mesbak-test/debian-systemd:12";

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
    /// The same programs as a newer release (`-2`) in `next/`: an upgrade.
    next_deb: PathBuf,
    next_rpm: PathBuf,
}

/// Runs `packaging/build` once for all tests of this file (it must not run
/// twice at once), and once more for release 2 into `target/packages/next`
/// (only repackaging: the binaries are built by then).
fn packages() -> &'static Packages {
    static BUILT: OnceLock<Result<Packages, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = workspace().join("target/packages");
        let next = dir.join("next");
        build_packages(&[])?;
        build_packages(&[
            ("MESBAK_PACKAGE_RELEASE", "2"),
            ("MESBAK_PACKAGE_OUT", "target/packages/next"),
        ])?;
        Ok(Packages {
            deb: find_package(&dir, "mesbak_", ".deb")?,
            rpm: find_package(&dir, "mesbak-", ".rpm")?,
            next_deb: find_package(&next, "mesbak_", ".deb")?,
            next_rpm: find_package(&next, "mesbak-", ".rpm")?,
        })
    });
    built.as_ref().unwrap_or_else(|err| panic!("{err}"))
}

fn build_packages(env: &[(&str, &str)]) -> Result<(), String> {
    let output = Command::new(workspace().join("packaging/build"))
        .current_dir(workspace())
        .envs(env.iter().copied())
        .output()
        .map_err(|err| format!("cannot run packaging/build: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "packaging/build {env:?} failed ({}):\n{}",
            output.status,
            text(&output)
        ));
    }
    Ok(())
}

/// The one file in `dir` named `prefix*suffix`.
fn find_package(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf, String> {
    let found: Vec<PathBuf> = fs::read_dir(dir)
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
}

/// A running Debian 12 container with the package folder
/// (`target/packages`) mounted at /pkg, removed when dropped.
struct Container {
    name: String,
}

impl Container {
    /// A bare Debian 12 (`IMAGE`) on host networking, so apt can reach the
    /// Debian mirror (dockerd runs without a bridge here).
    fn start(packages: &Path) -> Container {
        Container::launch(
            IMAGE,
            "ensure_debian_image",
            &["--network", "host"],
            packages,
            &["sleep", "infinity"],
        )
    }

    /// A Debian 12 whose PID 1 is systemd (`SYSTEMD_IMAGE`, with everything
    /// the packages need: no network at all), as the test environment in
    /// DESIGN.md describes (`--privileged` does not work here), with the
    /// host's Docker socket bound in when `docker` is true. Returns once
    /// systemd has finished booting.
    fn boot(packages: &Path, docker: bool) -> Container {
        let mut options = vec![
            "--network",
            "none",
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--env",
            "container=docker",
        ];
        if docker {
            options.extend(["--volume", "/var/run/docker.sock:/var/run/docker.sock"]);
        }
        let container = Container::launch(
            SYSTEMD_IMAGE,
            "ensure_systemd_image",
            &options,
            packages,
            &["/lib/systemd/systemd"],
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // "running", or "degraded" when a unit that needs more than a
            // container has failed (listed below for the record).
            let state = container.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            match state.as_str() {
                "running" => break,
                "degraded" => {
                    eprintln!(
                        "booted container is degraded:\n{}",
                        container.ok("systemctl --failed --no-legend --plain")
                    );
                    break;
                }
                _ if Instant::now() > deadline => {
                    panic!("systemd in the container did not finish booting in 90 s: {state}")
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        container
    }

    fn launch(
        image: &str,
        ensure: &str,
        options: &[&str],
        packages: &Path,
        command: &[&str],
    ) -> Container {
        let docker = run(Command::new("docker").arg("info"));
        assert!(
            docker.status.success(),
            "docker is not usable (dev/test starts dockerd): {}",
            text(&docker)
        );
        let inspect = run(Command::new("docker").args(["image", "inspect", image]));
        assert!(
            inspect.status.success(),
            "image {image} is missing; build it with \
             bash -c 'source dev/lib.sh; {ensure}' (dev/test does)"
        );
        let name = format!("mesbak-packaging-{}", random_hex(6));
        let container = Container { name };
        check(
            Command::new("docker")
                .args(["run", "--detach", "--rm", "--name", &container.name])
                // Removed by the next test run's reaper if this process is
                // killed before its guards run.
                .args(["--label", &format!("{LABEL}={}", std::process::id())])
                .args(options)
                .arg("--volume")
                .arg(format!("{}:/pkg:ro", packages.display()))
                .arg(image)
                .args(command),
        );
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

    /// Writes `contents` to `path` in the container with `mode` (made
    /// under umask 077, so a secret is never readable by others).
    fn write(&self, path: &str, mode: &str, contents: &str) {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.name, "sh", "-ec"])
            .arg(format!(
                "umask 077; cat > '{path}'.new; chmod {mode} '{path}'.new; mv '{path}'.new '{path}'"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker exec");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cannot write {path}: {}",
            text(&output)
        );
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
    // Where packaging/build put the release binaries (it honours
    // CARGO_TARGET_DIR, as cargo does).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), |dir| workspace().join(dir));
    let agent = target.join("release/mesbak-agent");
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

/// The agent's configuration inside the booted container: the test's
/// TimescaleDB container, its Ignition volume, the gateways to stop for a
/// copy or restore, and how long a gateway may take to stop.
fn booted_config(pg: &Postgres, volume: &Volume, gateways: &[&Gateway], stop_secs: u32) -> String {
    let names: Vec<String> = gateways
        .iter()
        .map(|gateway| format!("\"{}\"", gateway.name()))
        .collect();
    let names = names.join(", ");
    format!(
        r#"# Written by tests/tests/packaging.rs
[database]
container = "{db}"
name = "mes"
user = "admin"
password_file = "/etc/mesbak/db-password"

[ignition]
volume = "{volume}"
stop_containers = [{names}]
helper_image = "{busybox}"
stop_timeout_secs = {stop_secs}

[restore]
stop_containers = [{names}]

[backup]
compression_level = 1
min_free_bytes = 1048576
"#,
        db = pg.name(),
        volume = volume.name(),
        busybox = mesbak_tests::BUSYBOX,
    )
}

/// The journal entries of the agent's unit (`journalctl -o json`).
fn agent_journal(container: &Container) -> Vec<serde_json::Value> {
    container
        .ok("journalctl -u mesbak-agent.service -o json --no-pager")
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// `systemctl show -p PROPERTY --value UNIT`.
fn unit_property(container: &Container, unit: &str, property: &str) -> String {
    container
        .ok(&format!("systemctl show -p {property} --value {unit}"))
        .trim()
        .to_owned()
}

/// Checksums of every file below the folders (`sha256sum` lines, sorted).
fn checksums(container: &Container, folders: &str) -> String {
    container.ok(&format!(
        "find {folders} -type f -print0 | sort -z | xargs -0r sha256sum"
    ))
}

/// The whole life of the .deb on a server where systemd runs (one boot, to
/// keep the suite short): install, the agent under its hardened unit, a
/// backup and a test restore through the units the timers start, a restore,
/// D-Bus activation, the health endpoint, the journal's fields, an upgrade
/// during a running backup, and purge.
#[test]
fn deb_under_systemd_backs_up_restores_upgrades_and_purges() {
    let packages = packages();
    let started = Instant::now();
    let pg = Postgres::with_fixture_on(Flavor::TimescaleDb);
    let volume = Volume::create_populated();
    let gateway = Gateway::start(&volume);
    let container = Container::boot(packages.deb.parent().unwrap(), true);
    let booted = started.elapsed();
    let name = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();

    // Install offline (everything it depends on is in the image); postinst
    // enables and starts the agent and the timers.
    container.ok(&format!(
        "apt-get install -y -qq --no-install-recommends /pkg/{}",
        name(&packages.deb)
    ));
    for unit in [
        "mesbak-agent.service",
        "mesbak-backup.timer",
        "mesbak-test-restore.timer",
        "mesbak-pitr-base-backup.timer",
    ] {
        assert_eq!(
            container.ok(&format!("systemctl is-enabled {unit}")).trim(),
            "enabled",
            "{unit}"
        );
        assert_eq!(
            unit_property(&container, unit, "ActiveState"),
            "active",
            "{unit} not started by postinst"
        );
    }

    // Configure as an operator would: the stack, the database password,
    // a key; then restart the agent to read them.
    container.write(
        "/etc/mesbak/mesbak.toml",
        "0644",
        &booted_config(&pg, &volume, &[&gateway], 10),
    );
    container.write(
        "/etc/mesbak/db-password",
        "0600",
        &format!("{}\n", pg.password()),
    );
    container.ok("mesbakctl keygen");
    assert_eq!(container.stat("/etc/mesbak/backup.key"), "600 root root");
    container.ok("systemctl restart mesbak-agent.service");

    // The agent runs as root without capabilities, no new privileges, a
    // system call filter and a read-only root, as its unit says.
    let pid = unit_property(&container, "mesbak-agent.service", "MainPID");
    assert_ne!(pid, "0", "the agent is not running");
    let status = container.ok(&format!("cat /proc/{pid}/status"));
    for expected in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(
            status.lines().any(|line| line == expected),
            "agent's /proc/{pid}/status lacks {expected:?}:\n{status}"
        );
    }
    let root_mount = container.ok(&format!(
        "awk '$5 == \"/\" {{ print $6 }}' /proc/{pid}/mountinfo"
    ));
    assert!(
        root_mount.trim().split(',').any(|option| option == "ro"),
        "the agent's / is not read-only: {root_mount}"
    );

    // A backup as the timer runs it: one restore point, database + Ignition.
    container.ok("systemctl start mesbak-backup.service");
    assert_eq!(
        unit_property(&container, "mesbak-backup.service", "Result"),
        "success"
    );
    let ids = container.ok("mesbakctl list --ids");
    let database_id = ids
        .lines()
        .find(|id| id.starts_with("mes_") && id.ends_with(".sql.gz.enc"))
        .unwrap_or_else(|| panic!("no database backup listed:\n{ids}"))
        .to_owned();
    assert!(
        ids.lines()
            .any(|id| id.starts_with("ignition_") && id.ends_with(".tar.gz.enc")),
        "no Ignition backup listed:\n{ids}"
    );
    assert_eq!(
        container.stat(&format!("/var/backups/mes/database/{database_id}")),
        "600 root root"
    );

    // The test restore as its timer runs it.
    container.ok("systemctl start mesbak-test-restore.service");
    assert_eq!(
        unit_property(&container, "mesbak-test-restore.service", "Result"),
        "success"
    );

    // A restore from inside the sandbox brings the backed-up data back.
    let original = pg.fingerprint("mes");
    pg.psql(
        "mes",
        "CREATE TABLE mes_core.after_the_backup (id int); INSERT INTO mes_core.after_the_backup VALUES (1);",
    );
    container.ok(&format!("mesbakctl restore {database_id} --yes"));
    pg.fingerprint("mes")
        .assert_same(&original, "after a restore under systemd");
    assert!(gateway.is_running(), "the restore left the gateway stopped");

    // The health endpoint answers on the container's loopback, healthy:
    // a fresh backup and a passed test restore.
    let health = container.ok("curl -sS -w '\\n%{http_code}' http://127.0.0.1:8888/health");
    assert!(health.ends_with("\n200"), "health: {health}");
    let metrics = container.ok("curl -fsS http://127.0.0.1:8888/metrics");
    assert!(metrics.contains("mesbak_"), "metrics: {metrics}");

    // The journal carries the jobs' structured fields.
    let journal = agent_journal(&container);
    let finished: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|entry| entry["MESSAGE"] == "job succeeded")
        .collect();
    for operation in ["backup", "test-restore", "restore"] {
        assert!(
            finished.iter().any(|entry| {
                entry["OPERATION"] == operation
                    && entry["JOB"].as_str().is_some_and(|job| !job.is_empty())
                    && entry["DURATION_MS"].as_str().is_some()
                    && entry["RESULT"]
                        .as_str()
                        .is_some_and(|result| !result.is_empty())
                    && entry["SYSLOG_IDENTIFIER"] == "mesbak-agent"
            }),
            "no \"job succeeded\" entry with JOB, OPERATION={operation}, DURATION_MS, RESULT in:\n{finished:#?}"
        );
    }

    // D-Bus activation: a call to a stopped agent starts it.
    container.ok("systemctl stop mesbak-agent.service");
    assert_eq!(
        unit_property(&container, "mesbak-agent.service", "ActiveState"),
        "inactive"
    );
    container.ok("mesbakctl status");
    assert_eq!(
        unit_property(&container, "mesbak-agent.service", "ActiveState"),
        "active",
        "mesbakctl status did not start the agent"
    );

    // Upgrade while a backup runs: the configuration (edited, and now with
    // a gateway that takes 15 s to stop, so the backup runs that long)
    // and the key are kept, and the backup is neither cancelled nor cut
    // short: the new agent starts after it.
    let slow = Gateway::start_slow_to_stop(&volume);
    let edited = booted_config(&pg, &volume, &[&gateway, &slow], 15);
    container.write("/etc/mesbak/mesbak.toml", "0644", &edited);
    container.ok("systemctl restart mesbak-agent.service");
    let key = checksums(&container, "/etc/mesbak/backup.key");
    let old_pid = unit_property(&container, "mesbak-agent.service", "MainPID");
    container.ok("systemctl start --no-block mesbak-backup.service");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !container
        .ok("mesbakctl --json jobs")
        .contains("\"running\"")
    {
        assert!(Instant::now() < deadline, "the backup did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let upgrade_started = Instant::now();
    let upgrade = container.ok(&format!(
        "apt-get install -y -qq --no-install-recommends /pkg/next/{} 2>&1",
        name(&packages.next_deb)
    ));
    let upgrade_took = upgrade_started.elapsed();
    assert!(
        upgrade.contains("waiting for the running job"),
        "the upgrade did not wait for the backup:\n{upgrade}"
    );
    assert!(
        container
            .ok("dpkg-query -W --showformat='${Version}' mesbak")
            .ends_with("-2"),
        "not upgraded"
    );
    // The backup's unit ends with its job (its client follows the job to
    // the end, as `mesbakctl wait` did), successfully.
    let deadline = Instant::now() + Duration::from_secs(30);
    while unit_property(&container, "mesbak-backup.service", "ActiveState") != "inactive" {
        assert!(
            Instant::now() < deadline,
            "mesbak-backup.service did not end:\n{}",
            container.ok("systemctl status mesbak-backup.service --no-pager || true")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        unit_property(&container, "mesbak-backup.service", "Result"),
        "success",
        "the backup running during the upgrade failed:\n{}",
        container
            .ok("journalctl -u mesbak-backup.service -u mesbak-agent.service --no-pager -n 40")
    );
    let new_pid = unit_property(&container, "mesbak-agent.service", "MainPID");
    assert!(
        new_pid != "0" && new_pid != old_pid,
        "the agent was not restarted by the upgrade"
    );
    assert_eq!(container.ok("cat /etc/mesbak/mesbak.toml"), edited);
    assert_eq!(checksums(&container, "/etc/mesbak/backup.key"), key);
    assert!(slow.is_running() && gateway.is_running());

    // Purge: programs, configuration and state go; backups and key stay.
    let backups = checksums(&container, "/var/backups/mes");
    assert!(backups.lines().count() >= 5, "backups:\n{backups}");
    container.ok("apt-get purge -y -qq mesbak");
    assert!(!container.exists("/usr/sbin/mesbak-agent"));
    assert!(!container.exists("/etc/mesbak/mesbak.toml"));
    assert!(!container.exists("/var/lib/mesbak"));
    assert_eq!(checksums(&container, "/var/backups/mes"), backups);
    assert_eq!(checksums(&container, "/etc/mesbak/backup.key"), key);
    assert_eq!(
        container
            .sh("systemctl is-active mesbak-agent.service")
            .status
            .code(),
        Some(3),
        "the agent still runs after purge"
    );

    eprintln!(
        "booted test: {:.1} s after the packaging build (database, volume, boot {:.1} s; upgrade waiting for the backup {:.1} s)",
        started.elapsed().as_secs_f64(),
        booted.as_secs_f64(),
        upgrade_took.as_secs_f64()
    );
}

/// The .rpm in a root where rpm works: Debian's `rpm` in the booted
/// container, so the scriptlets run against a live systemd. `--nodeps`
/// because Debian's rpm database is empty: what the package requires
/// (dbus, libssl.so.3, glibc, /bin/sh) is installed, by dpkg.
/// `--force-debian`: Debian's rpm refuses to install without it.
#[test]
fn rpm_installs_upgrades_and_erases_under_systemd() {
    let packages = packages();
    let started = Instant::now();
    let name = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();
    // No Docker socket: the agent starts and reports Docker missing.
    let container = Container::boot(packages.deb.parent().unwrap(), false);
    let rpm = "rpm --nodeps --force-debian";

    container.ok(&format!("{rpm} -i /pkg/{}", name(&packages.rpm)));
    assert!(container.ok("rpm -q mesbak").trim().ends_with("-1.x86_64"));
    // Every file as the package says (digest, mode, owner).
    container.ok("rpm -V --nodeps mesbak");
    // The configuration is a config(noreplace) file, and only it.
    let flags = container.ok("rpm -q --queryformat '[%{FILEFLAGS:fflags} %{FILENAMES}\\n]' mesbak");
    let configs: Vec<&str> = flags
        .lines()
        .filter(|line| line.split(' ').next().is_some_and(|f| f.contains('c')))
        .collect();
    assert_eq!(configs, ["cn /etc/mesbak/mesbak.toml"], "{flags}");

    // %post: group, folders, units enabled and started.
    container.ok("getent group mesbak");
    for dir in [
        "/var/backups/mes",
        "/var/backups/mes/database",
        "/var/backups/mes/ignition",
        "/var/lib/mesbak",
    ] {
        assert_eq!(container.stat(dir), "700 root root", "{dir}");
    }
    assert_eq!(container.stat("/etc/mesbak"), "755 root root");
    for unit in [
        "mesbak-agent.service",
        "mesbak-backup.timer",
        "mesbak-test-restore.timer",
        "mesbak-pitr-base-backup.timer",
    ] {
        assert_eq!(
            container.ok(&format!("systemctl is-enabled {unit}")).trim(),
            "enabled",
            "{unit}"
        );
        assert_eq!(
            unit_property(&container, unit, "ActiveState"),
            "active",
            "{unit} not started by %post"
        );
    }
    // The agent answers on the bus (`status` would exit 1: no key, no
    // Docker, so not healthy).
    container.ok("mesbakctl jobs");

    // What a running installation has: an edited configuration, a key, a
    // backup, state.
    container.ok(
        "echo '# local change' >> /etc/mesbak/mesbak.toml && mesbakctl keygen && \
         printf backup > /var/backups/mes/database/mes_2026-01-01_000000.sql.gz.enc",
    );
    let kept = checksums(&container, "/etc/mesbak/backup.key /var/backups/mes");
    let edited = container.ok("cat /etc/mesbak/mesbak.toml");
    let old_pid = unit_property(&container, "mesbak-agent.service", "MainPID");

    // Upgrade to release 2: the edited configuration stays as it is (no
    // .rpmnew: the shipped file did not change), the agent restarts.
    container.ok(&format!("{rpm} -U /pkg/next/{}", name(&packages.next_rpm)));
    assert!(container.ok("rpm -q mesbak").trim().ends_with("-2.x86_64"));
    assert_eq!(container.ok("cat /etc/mesbak/mesbak.toml"), edited);
    assert!(!container.exists("/etc/mesbak/mesbak.toml.rpmnew"));
    let new_pid = unit_property(&container, "mesbak-agent.service", "MainPID");
    assert!(
        new_pid != "0" && new_pid != old_pid,
        "%postun did not restart the agent ({old_pid} -> {new_pid})"
    );
    assert_eq!(
        container
            .ok("systemctl is-enabled mesbak-backup.timer")
            .trim(),
        "enabled"
    );
    // Every file of release 2 in place; only the edited configuration differs.
    let verify = container.sh("rpm -V --nodeps mesbak");
    let verify = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify
            .lines()
            .all(|line| line.ends_with(" c /etc/mesbak/mesbak.toml")),
        "rpm -V after the upgrade:\n{verify}"
    );

    // Erase: %preun stops and disables, the files go; the edited
    // configuration is saved as .rpmsave, key, backups and state stay.
    container.ok("rpm -e mesbak");
    assert!(container.sh("rpm -q mesbak").status.code() != Some(0));
    for gone in [
        "/usr/sbin/mesbak-agent",
        "/usr/bin/mesbakctl",
        "/usr/lib/systemd/system/mesbak-agent.service",
        "/etc/mesbak/mesbak.toml",
    ] {
        assert!(!container.exists(gone), "{gone} left after erase");
    }
    assert_eq!(
        container.ok("cat /etc/mesbak/mesbak.toml.rpmsave"),
        edited,
        "the edited configuration was not saved"
    );
    assert_eq!(
        checksums(&container, "/etc/mesbak/backup.key /var/backups/mes"),
        kept
    );
    assert!(container.exists("/var/lib/mesbak"));
    let links = container.ok("find /etc/systemd/system -name 'mesbak*' -type l");
    assert!(links.trim().is_empty(), "units still enabled:\n{links}");
    assert_ne!(
        container
            .ok("systemctl show -p ActiveState --value mesbak-agent.service")
            .trim(),
        "active",
        "the agent still runs after erase"
    );
    eprintln!("rpm test: {:.1} s", started.elapsed().as_secs_f64());
}
