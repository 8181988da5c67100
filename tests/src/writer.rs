//! A stand-in for the Ignition gateway as a writer to the database: a
//! container a restore must stop (`restore.stop_containers`) and start
//! again. Its Docker timestamps tell when and for how long.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::Engine;
use crate::util::random_hex;
use crate::volume::BUSYBOX;

pub struct Writer {
    pub name: String,
    engine: Engine,
}

impl Writer {
    /// Starts one, on no network; it stops at once on SIGTERM.
    pub fn start() -> Writer {
        Writer::start_in(&Engine::shared())
    }

    /// Starts one in `engine`.
    pub fn start_in(engine: &Engine) -> Writer {
        let name = format!("mesbak-test-writer-{}", random_hex(4));
        let status = engine
            .docker()
            .args(["run", "-d"])
            .args(engine.restart_policy())
            .args(["--network", "none", "--name", &name, BUSYBOX])
            .args([
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot start the writer container (dev/test builds {BUSYBOX})"
        );
        Writer {
            name,
            engine: engine.clone(),
        }
    }

    fn inspect(&self, format: &str) -> String {
        let out = self
            .engine
            .docker()
            .args(["inspect", "-f", format, &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn is_running(&self) -> bool {
        self.engine.is_running(&self.name)
    }

    pub fn started_at(&self) -> String {
        self.inspect("{{.State.StartedAt}}")
    }

    /// Seconds between the last stop and the last start.
    pub fn last_downtime(&self) -> f64 {
        let text = self.inspect("{{.State.FinishedAt}} {{.State.StartedAt}}");
        let (stopped, started) = text.split_once(' ').expect("two times");
        let parse = |t: &str| OffsetDateTime::parse(t, &Rfc3339).expect("a Docker time");
        (parse(started) - parse(stopped)).as_seconds_f64()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.engine.docker().args(["rm", "-f", &self.name]).output();
    }
}
