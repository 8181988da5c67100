//! Docker volumes shaped like Ignition's `ignition-data`, and a stand-in
//! gateway container that uses one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::engine::Engine;
use crate::postgres::{LABEL, reap_leftovers};
use crate::small_disk::SmallDisk;
use crate::util::{random_hex, run, run_text, run_unchecked};

/// The image `dev/lib.sh` builds for volume helpers (`ensure_images`).
pub const BUSYBOX: &str = "mesbak-test/busybox";
/// Where the official Ignition image mounts its data volume.
pub const IGNITION_DATA: &str = "/usr/local/bin/ignition/data";

/// A named Docker volume (`mesbak-test-vol-<random>`), removed on drop.
pub struct Volume {
    name: String,
    engine: Engine,
}

impl Volume {
    /// An empty volume.
    pub fn create() -> Volume {
        Volume::create_with(&Engine::shared(), &[])
    }

    /// An empty volume in `engine`.
    pub fn create_in(engine: &Engine) -> Volume {
        Volume::create_with(engine, &[])
    }

    /// An empty volume on a tmpfs of `mib` MiB (a small disk).
    pub fn create_small(mib: u64) -> Volume {
        Volume::create_with(
            &Engine::shared(),
            &[
                "--opt",
                "type=tmpfs",
                "--opt",
                "device=tmpfs",
                "--opt",
                &format!("o=size={}", mib << 20),
            ],
        )
    }

    /// An empty volume whose files live in a new folder on `disk` (a bind
    /// of the local driver): a small disk that keeps its files while no
    /// container mounts it, unlike a tmpfs volume, whose files go when the
    /// last container using it stops.
    pub fn create_on(disk: &SmallDisk) -> Volume {
        let folder = disk.folder(&format!("volume-{}", random_hex(4)));
        Volume::create_with(
            &Engine::shared(),
            &[
                "--opt",
                "type=none",
                "--opt",
                "o=bind",
                "--opt",
                &format!("device={}", folder.display()),
            ],
        )
    }

    fn create_with(engine: &Engine, options: &[&str]) -> Volume {
        reap_leftovers();
        let name = format!("mesbak-test-vol-{}", random_hex(6));
        run(
            engine
                .docker()
                .args(["volume", "create", "--label"])
                .arg(format!("{LABEL}={}", std::process::id()))
                .args(options)
                .arg(&name),
            None,
        )
        .unwrap_or_else(|err| panic!("cannot create a Docker volume: {err:#}"));
        Volume {
            name,
            engine: engine.clone(),
        }
    }

    /// A volume holding [`Volume::populate`]'s tree.
    pub fn create_populated() -> Volume {
        let volume = Volume::create();
        volume.populate();
        volume
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dockerd the volume lives in.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where dockerd keeps the volume's files on this host (root only).
    pub fn mountpoint(&self) -> std::path::PathBuf {
        run_text(self.engine.docker().args([
            "volume",
            "inspect",
            "-f",
            "{{.Mountpoint}}",
            &self.name,
        ]))
        .unwrap_or_else(|err| panic!("{err:#}"))
        .into()
    }

    /// Runs `script` with busybox `sh -ec` as root in a throwaway container
    /// (`--network none`) with the volume at `/data` as working folder;
    /// returns stdout. Panics with stderr on failure.
    pub fn sh(&self, script: &str) -> String {
        self.try_sh(script)
            .unwrap_or_else(|err| panic!("script on volume {} failed: {err:#}", self.name))
    }

    /// [`Volume::sh`], returning the error instead of panicking.
    pub fn try_sh(&self, script: &str) -> Result<String> {
        run_text(self.engine.docker().args([
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            &format!("{LABEL}={}", std::process::id()),
            "-v",
            &format!("{}:/data", self.name),
            "-w",
            "/data",
            BUSYBOX,
            "sh",
            "-ec",
            script,
        ]))
    }

    /// Fills the volume with a tree like a gateway's: a 3 MiB incompressible
    /// internal database, compressible logs, projects with spaces and
    /// non-ASCII in their names, nested folders, relative, absolute and
    /// dangling symlinks, a hard link, an empty file and an empty folder,
    /// several owners (0, 999, 1000, 65534), modes such as 0600, 0640, 0750,
    /// setgid and sticky folders, and fixed modification times.
    pub fn populate(&self) {
        self.sh(POPULATE);
    }

    /// Every entry below the volume root (the root itself is `.`): path to
    /// `type|mode|uid|gid|links`, plus `|size|mtime|md5` for regular files
    /// and `-> target` for symlinks.
    pub fn fingerprint(&self) -> VolumeFingerprint {
        let listing = self.sh(LIST);
        VolumeFingerprint(
            listing
                .lines()
                .filter_map(|line| line.split_once('\t'))
                .map(|(path, rest)| (path.to_owned(), rest.to_owned()))
                .collect(),
        )
    }

    /// Removes everything in the volume, keeping the volume.
    pub fn clear(&self) {
        self.sh("find /data -mindepth 1 -maxdepth 1 -exec rm -rf {} +");
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = run_unchecked(
            self.engine
                .docker()
                .args(["volume", "rm", "-f", &self.name]),
            None,
        );
    }
}

/// A volume's contents as [`Volume::fingerprint`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFingerprint(pub BTreeMap<String, String>);

impl VolumeFingerprint {
    /// Differences from `other`, one line each (left = self).
    pub fn diff(&self, other: &VolumeFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (path, l) in &self.0 {
            match other.0.get(path) {
                None => out.push(format!("{path}: only left ({l})")),
                Some(r) if r != l => out.push(format!("{path}: left {l} != right {r}")),
                Some(_) => {}
            }
        }
        for (path, r) in &other.0 {
            if !self.0.contains_key(path) {
                out.push(format!("{path}: only right ({r})"));
            }
        }
        out
    }

    /// Panics with the differences unless equal.
    #[track_caller]
    pub fn assert_same(&self, expected: &VolumeFingerprint, what: &str) {
        let diff = self.diff(expected);
        if !diff.is_empty() {
            panic!(
                "{what}: the volume differs (left = actual, right = expected), {} difference(s):\n  {}",
                diff.len(),
                diff.join("\n  ")
            );
        }
    }
}

/// What a stand-in gateway prints once its SIGTERM trap is set.
const READY: &str = "mesbak-stand-in-ready";

/// A stand-in Ignition gateway: a busybox container
/// (`mesbak-test-gw-<random>`, `--network none`) with a volume mounted at
/// [`IGNITION_DATA`], idling until stopped (it exits at once on SIGTERM).
/// Removed on drop.
pub struct Gateway {
    name: String,
    engine: Engine,
}

impl Gateway {
    /// Creates and starts the container.
    pub fn start(volume: &Volume) -> Gateway {
        let gateway = Gateway::create(volume);
        gateway.start_again();
        gateway
    }

    /// Creates the container without starting it (a stopped gateway).
    pub fn create(volume: &Volume) -> Gateway {
        Gateway::create_with_script(
            volume,
            &format!("trap 'exit 0' TERM INT; echo {READY}; while :; do sleep 1 & wait $!; done"),
        )
    }

    /// Creates and starts a gateway that ignores SIGTERM, as a busy
    /// Ignition that is slow to stop: `docker stop -t N` takes the full N
    /// seconds (then SIGKILL), so a job that stops it lasts that long.
    pub fn start_slow_to_stop(volume: &Volume) -> Gateway {
        let gateway =
            Gateway::create_with_script(volume, "trap '' TERM INT; while :; do sleep 1; done");
        run(volume.engine.docker().args(["start", &gateway.name]), None)
            .unwrap_or_else(|err| panic!("{err:#}"));
        gateway
    }

    /// Creates the container, running busybox `sh -c script` once started.
    fn create_with_script(volume: &Volume, script: &str) -> Gateway {
        reap_leftovers();
        let name = format!("mesbak-test-gw-{}", random_hex(6));
        let engine = volume.engine.clone();
        run(
            engine
                .docker()
                .args(["create"])
                .args(engine.restart_policy())
                .args([
                    "--name",
                    &name,
                    "--label",
                    &format!("{LABEL}={}", std::process::id()),
                    "--network",
                    "none",
                    "-v",
                    &format!("{}:{IGNITION_DATA}", volume.name()),
                    BUSYBOX,
                    "sh",
                    "-c",
                    script,
                ]),
            None,
        )
        .unwrap_or_else(|err| panic!("cannot create a stand-in gateway: {err:#}"));
        Gateway { name, engine }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the container is running.
    pub fn is_running(&self) -> bool {
        self.engine.is_running(&self.name)
    }

    /// `docker stop`.
    pub fn stop(&self) {
        run(
            self.engine.docker().args(["stop", "-t", "10", &self.name]),
            None,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// `docker start`, then waits until the script has set its trap: a
    /// SIGTERM before it is ignored (the shell is PID 1) and `docker stop`
    /// would wait its full timeout.
    pub fn start_again(&self) {
        let before = self.readies();
        run(self.engine.docker().args(["start", &self.name]), None)
            .unwrap_or_else(|err| panic!("{err:#}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.readies() == before {
            assert!(
                Instant::now() < deadline,
                "the stand-in gateway {} did not set its trap within 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How often the script has said it is ready (once per start).
    fn readies(&self) -> usize {
        run_text(self.engine.docker().args(["logs", &self.name]))
            .unwrap_or_else(|err| panic!("{err:#}"))
            .matches(READY)
            .count()
    }

    /// When the container last started (`.State.StartedAt`, RFC 3339):
    /// compare before and after to see whether something restarted it.
    pub fn started_at(&self) -> String {
        run_text(
            self.engine
                .docker()
                .args(["inspect", "-f", "{{.State.StartedAt}}", &self.name]),
        )
        .unwrap_or_else(|err| panic!("{err:#}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = run_unchecked(self.engine.docker().args(["rm", "-f", &self.name]), None);
    }
}

const POPULATE: &str = r#"
umask 022
mkdir -p db logs modules 'jar cache/ünïcødé' empty-folder \
    'projects/Line Overview/com.inductiveautomation.perspective/views/Main' \
    projects/global/ignition/script-python/util \
    config/resources/core/ignition/tag-definition/default \
    temp
printf 'SQLite format 3\000' > db/config.idb
head -c 3145728 /dev/urandom >> db/config.idb
cp db/config.idb db/config.idb.bak
seq 1 40000 | sed 's/^/2026-01-01 00:00:00 INFO  [GatewayContext] tick /' > logs/wrapper.log
ln logs/wrapper.log logs/wrapper.log.hardlink
printf '{\n  "custom": {},\n  "params": {"line": "Linie 2 – Lackierung"},\n  "root": {"type": "ia.container.flex"}\n}\n' \
    > 'projects/Line Overview/com.inductiveautomation.perspective/views/Main/view.json'
printf 'def hello():\n\treturn "hällo\\\\world"\n' > projects/global/ignition/script-python/util/code.py
printf '{"tags": [{"name": "Motor 1", "valueSource": "opc"}]}\n' \
    > config/resources/core/ignition/tag-definition/default/tags.json
printf '8d5c7a2e-0000-4000-8000-000000000001\n' > .uuid
: > modules/empty.modl
printf 'cached' > 'jar cache/ünïcødé/lib 1.jar'
ln -s ../db/config.idb config/current.idb
ln -s /usr/local/bin/ignition/data/db config/absolute-db
ln -s does-not-exist config/dangling
chown -R 999:999 projects config
chown 1000:1000 logs/wrapper.log
chown 65534:65534 'jar cache/ünïcødé/lib 1.jar'
chmod 0600 db/config.idb .uuid
chmod 0640 db/config.idb.bak
chmod 0750 db
chmod 2775 modules
chmod 1777 temp
chmod 0755 projects/global/ignition/script-python/util/code.py
find . -type f -exec touch -d '2025-06-01 12:34:56' {} +
"#;

const LIST: &str = r#"
find . | sort | while IFS= read -r p; do
    t=$(stat -c '%F|%a|%u|%g|%h' "$p")
    case "$t" in
        regular*) x="|$(stat -c '%s|%Y' "$p")|$(md5sum < "$p" | cut -d' ' -f1)" ;;
        symbolic*) x=" -> $(readlink "$p")" ;;
        *) x= ;;
    esac
    printf '%s\t%s%s\n' "$p" "$t" "$x"
done
"#;
