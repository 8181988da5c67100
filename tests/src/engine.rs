//! Docker engines: the host's dockerd, which every test shares (never
//! restart it), and a private dockerd a test may stop, kill and start again
//! under a running job (tests/tests/faults.rs).
//!
//! A private engine keeps its data root between runs
//! (`/var/lib/mesbak-test/dockerd-<slot>`), so the test images are loaded
//! into it once per machine (again only when the host's image id changes);
//! containers and volumes left there by an earlier run are removed when it
//! starts. A few slots, each taken with `flock`, let test processes and
//! threads use private engines side by side without sharing one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::util::{blocking, run, run_text, run_unchecked, tail_file};

/// Which dockerd the harness's `docker` commands talk to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engine {
    /// `DOCKER_HOST` for a private engine; `None` is the host's dockerd.
    host: Option<String>,
}

impl Engine {
    /// The host's dockerd, shared by every test.
    pub fn shared() -> Engine {
        Engine::default()
    }

    /// A `docker` command aimed at this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Some(host) = &self.host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// Whether `container` exists in this engine and is running.
    pub fn is_running(&self, container: &str) -> bool {
        run_text(
            self.docker()
                .args(["inspect", "-f", "{{.State.Running}}", container]),
        )
        .is_ok_and(|state| state == "true")
    }

    /// `DOCKER_HOST` for a process that should use this engine (the agent);
    /// `None` for the host's.
    pub fn docker_host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// `docker run`/`create` options for long-running containers: on a
    /// private engine they restart with dockerd as a plant's compose file
    /// makes them (`restart: unless-stopped`), so a test sees which ones
    /// the engine brings back and which the agent must.
    pub(crate) fn restart_policy(&self) -> &'static [&'static str] {
        if self.host.is_some() {
            &["--restart", "unless-stopped"]
        } else {
            &[]
        }
    }
}

/// How many private engines may run at once on the machine.
const SLOTS: usize = 2;
/// Images every private engine holds: the servers and the volume helpers.
const IMAGES: &[&str] = &[
    "mesbak-test/postgres:15",
    "mesbak-test/timescaledb:pg17",
    crate::volume::BUSYBOX,
];

/// A dockerd of the test's own (no bridge, no iptables, no live restore:
/// containers die with it, as on a plant's default engine), with its own
/// managed containerd under its exec root. Drop stops it and removes what
/// the test left in it.
pub struct PrivateEngine {
    engine: Engine,
    slot: usize,
    data_root: PathBuf,
    run_dir: PathBuf,
    child: Option<Child>,
    /// Holds the slot (`flock`) while the engine lives.
    _lock: Flock<File>,
}

impl PrivateEngine {
    /// Takes a free slot (waiting for one), starts its dockerd, loads the
    /// test images it lacks and removes leftovers of earlier runs.
    pub fn start() -> PrivateEngine {
        PrivateEngine::try_start().unwrap_or_else(|err| panic!("no private dockerd: {err:#}"))
    }

    fn try_start() -> Result<PrivateEngine> {
        std::fs::create_dir_all("/var/lib/mesbak-test")?;
        std::fs::create_dir_all("/run/mesbak-test")?;
        let (slot, lock) = take_slot()?;
        let run_dir = PathBuf::from(format!("/run/mesbak-test/dockerd-{slot}"));
        std::fs::create_dir_all(&run_dir)?;
        // No /etc/docker/daemon.json of the host's engine applies here.
        std::fs::write(run_dir.join("daemon.json"), "{}\n")?;
        let mut engine = PrivateEngine {
            engine: Engine {
                host: Some(format!("unix://{}", run_dir.join("docker.sock").display())),
            },
            slot,
            data_root: PathBuf::from(format!("/var/lib/mesbak-test/dockerd-{slot}")),
            run_dir,
            child: None,
            _lock: lock,
        };
        // A dockerd of a killed test run may still hold the slot's folders.
        engine.stop_leftover();
        engine.launch()?;
        engine.remove_leftovers()?;
        engine.load_images()?;
        Ok(engine)
    }

    /// The engine, to start the test's containers in and point the agent at.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `systemctl restart docker`: SIGTERM (dockerd stops the containers),
    /// then start again; containers with a restart policy come back.
    pub fn restart(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
        self.launch()
            .unwrap_or_else(|err| panic!("the private dockerd did not start again: {err:#}"));
    }

    /// dockerd and its containerd SIGKILLed and started again (a crash):
    /// its start kills the containers it finds still running (their shims
    /// outlive both), then applies restart policies. (A containerd left
    /// running makes the new dockerd time out waiting for its own.)
    pub fn kill_and_start(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGKILL);
        self.kill_containerd();
        self.launch()
            .unwrap_or_else(|err| panic!("the private dockerd did not start again: {err:#}"));
    }

    /// Stops dockerd with `signal` and waits until it is gone.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let _ = blocking(|| child.wait());
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let exec_root = self.run_dir.join("exec");
        let mut cmd = Command::new("dockerd");
        cmd.args(["--bridge=none", "--iptables=false", "--live-restore=false"])
            .arg("--config-file")
            .arg(self.run_dir.join("daemon.json"))
            .arg("--host")
            .arg(self.engine.host.as_deref().expect("a private engine"))
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(self.run_dir.join("docker.pid"))
            // Should a system containerd appear, stay out of the host
            // engine's namespaces in it.
            .args(["--containerd-namespace", "mesbak-test"])
            .args(["--containerd-plugins-namespace", "mesbak-test-plugins"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("cannot start dockerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = run_unchecked(
                self.engine.docker().args(["info", "--format", "{{.ID}}"]),
                None,
            )?;
            if info.status.success() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "dockerd exited ({status}); its log:\n{}",
                    tail_file(&self.log_path(), 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer within 60 s; its log:\n{}",
                    tail_file(&self.log_path(), 30)
                );
            }
            blocking(|| std::thread::sleep(Duration::from_millis(200)));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("dockerd.log")
    }

    /// Ends a dockerd (and its containerd) a killed test run left on this
    /// slot.
    fn stop_leftover(&self) {
        end_process(
            &self.run_dir.join("docker.pid"),
            &self.data_root.display().to_string(),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.kill_containerd();
    }

    /// SIGKILLs the managed containerd of this slot, if it runs, and
    /// deletes its pid file: dockerd takes a pid that still exists (a
    /// zombie no one has reaped yet) for a running containerd and waits for
    /// it in vain.
    fn kill_containerd(&self) {
        let pidfile = self.run_dir.join("exec/containerd/containerd.pid");
        end_process(
            &pidfile,
            &self.run_dir.display().to_string(),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(pidfile);
    }

    /// Containers and volumes of earlier runs: this engine is the test's.
    fn remove_leftovers(&self) -> Result<()> {
        let containers = run_text(self.engine.docker().args(["ps", "-aq"]))?;
        if !containers.is_empty() {
            run(
                self.engine
                    .docker()
                    .args(["rm", "-f", "-v"])
                    .args(containers.lines()),
                None,
            )?;
        }
        // (`volume prune --all` needs a newer API than Docker 20.10's.)
        let volumes = run_text(self.engine.docker().args(["volume", "ls", "-q"]))?;
        if !volumes.is_empty() {
            run(
                self.engine
                    .docker()
                    .args(["volume", "rm", "-f"])
                    .args(volumes.lines()),
                None,
            )?;
        }
        Ok(())
    }

    /// Loads the test images whose id differs from the host engine's
    /// (`docker save | docker load`); old versions are removed, so the
    /// data root stays the size of the images.
    fn load_images(&self) -> Result<()> {
        let shared = Engine::shared();
        for image in IMAGES {
            let wanted = run_text(
                shared
                    .docker()
                    .args(["image", "inspect", "-f", "{{.Id}}", image]),
            )
            .with_context(|| format!("image {image} is not on the host (dev/test builds it)"))?;
            let have = run_text(
                self.engine
                    .docker()
                    .args(["image", "inspect", "-f", "{{.Id}}", image]),
            )
            .unwrap_or_default();
            if have == wanted {
                continue;
            }
            let mut save = shared
                .docker()
                .args(["save", image])
                .stdout(Stdio::piped())
                .spawn()
                .context("docker save")?;
            let out = blocking(|| {
                self.engine
                    .docker()
                    .arg("load")
                    .stdin(save.stdout.take().expect("piped"))
                    .output()
            })?;
            let saved = blocking(|| save.wait())?;
            if !out.status.success() || !saved.success() {
                bail!(
                    "cannot load {image} into the private dockerd: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = run_unchecked(self.engine.docker().args(["image", "prune", "-f"]), None);
        Ok(())
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- private dockerd (slot {}) log ---\n{}\n---",
                self.slot,
                tail_file(&self.log_path(), 30)
            );
        }
        if self.child.is_some() {
            let _ = self.remove_leftovers();
        }
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}

/// Sends `signal` to the process in `pidfile` if its command line names
/// `mark` (so a reused pid is left alone), and waits up to 30 s for it to go.
fn end_process(pidfile: &Path, mark: &str, signal: nix::sys::signal::Signal) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.contains(mark) {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    let deadline = Instant::now() + Duration::from_secs(30);
    // (A zombie's command line is empty: gone as far as we care.)
    let alive = || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
    while alive() && Instant::now() < deadline {
        blocking(|| std::thread::sleep(Duration::from_millis(50)));
    }
}

/// A free slot and its lock: tries each, then waits a moment and again.
fn take_slot() -> Result<(usize, Flock<File>)> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        for slot in 0..SLOTS {
            let file = File::create(format!("/var/lib/mesbak-test/dockerd-{slot}.lock"))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok((slot, lock));
            }
        }
        if Instant::now() > deadline {
            bail!("no private dockerd slot came free within 15 min");
        }
        blocking(|| std::thread::sleep(Duration::from_millis(500)));
    }
}
