//! "Leave things as found": every container the agent stops or starts is
//! written to a journal in the state folder *before* the change, and put
//! back afterwards, on success, on failure, and on the next start after a
//! crash.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use crate::docker::Docker;
use crate::persist::Record;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerChange {
    pub container: String,
    /// The state the container was found in and must be returned to.
    pub was_running: bool,
}

/// The journal file, shared by all jobs.
#[derive(Clone)]
pub struct Journal {
    record: Record<Vec<ContainerChange>>,
    entries: Arc<Mutex<Vec<ContainerChange>>>,
    /// Set when the journal was unreadable at start.
    problems: Vec<String>,
}

impl Journal {
    /// Opens `state_dir/containers.json`. An unreadable journal is kept
    /// aside and reported: the containers it named must be checked by hand.
    pub fn open(state_dir: &Path) -> Result<Journal, Error> {
        let record = Record::new(state_dir, "containers.json", "the container journal");
        let (entries, unreadable) = record.read_or_set_aside()?;
        let problems = unreadable
            .map(|problem| {
                format!(
                    "{problem}; containers an interrupted job stopped or started may not be as they were found: check them (`docker ps -a`) and start the gateway and database if they are stopped, then delete the copy"
                )
            })
            .into_iter()
            .collect();
        Ok(Journal {
            record,
            entries: Arc::new(Mutex::new(entries.unwrap_or_default())),
            problems,
        })
    }

    /// Problems found when the journal was opened.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn pending(&self) -> Vec<ContainerChange> {
        self.entries.lock().expect("journal lock").clone()
    }

    fn record(&self, change: ContainerChange) -> Result<(), Error> {
        let mut entries = self.entries.lock().expect("journal lock");
        if !entries.iter().any(|e| e.container == change.container) {
            entries.push(change);
        }
        self.save(&entries)
    }

    fn forget(&self, container: &str) -> Result<(), Error> {
        let mut entries = self.entries.lock().expect("journal lock");
        entries.retain(|e| e.container != container);
        self.save(&entries)
    }

    fn save(&self, entries: &[ContainerChange]) -> Result<(), Error> {
        self.record.write(&entries.to_vec()).map_err(|err| {
            Error::from_kind(
                err.kind(),
                format!("{}; no container was changed", err.message()),
            )
        })
    }

    /// Puts every container of a crashed run back as it was found.
    pub async fn repair(&self, docker: &Docker) -> Vec<String> {
        let mut problems = Vec::new();
        for change in self.pending() {
            match put_back(docker, &change).await {
                Ok(()) => {
                    tracing::warn!(
                        container = %change.container,
                        running = change.was_running,
                        "returned a container to the state an interrupted job found it in"
                    );
                    let _ = self.forget(&change.container);
                }
                Err(Error::NotFound(_)) => {
                    let _ = self.forget(&change.container);
                }
                Err(err) => problems.push(format!(
                    "container '{}' could not be returned to its previous state: {}",
                    change.container,
                    err.message()
                )),
            }
        }
        problems
    }
}

/// How long a job's end waits for an engine that stopped answering (dockerd
/// restarted or upgraded under the job: seconds, mostly) before it leaves
/// the containers to the agent's next start.
const ENGINE_RETURN_WAIT: Duration = Duration::from_secs(120);

/// [`put_back`]; when the engine does not answer, waits for it to come back
/// (up to [`ENGINE_RETURN_WAIT`]) and tries once more: a container the job
/// stopped stays stopped after an engine restart (it was stopped on
/// purpose), so only the agent can start it again.
async fn put_back_when_engine_answers(
    docker: &Docker,
    change: &ContainerChange,
) -> Result<(), Error> {
    let first = put_back(docker, change).await;
    if first.is_ok() || docker.version().await.is_ok() {
        return first;
    }
    tracing::warn!(
        container = %change.container,
        "the Docker engine does not answer; waiting for it to put the container back"
    );
    let deadline = Instant::now() + ENGINE_RETURN_WAIT;
    while docker.version().await.is_err() {
        if Instant::now() > deadline {
            return first;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    put_back(docker, change).await
}

async fn put_back(docker: &Docker, change: &ContainerChange) -> Result<(), Error> {
    let running = docker.is_running(&change.container).await?;
    match (change.was_running, running) {
        (true, false) => docker.start(&change.container).await,
        (false, true) => docker.stop(&change.container, 30).await,
        _ => Ok(()),
    }
}

/// Puts back what `touched` changed once a job's work ended with `result`.
/// The work's own error comes first; when the work succeeded but a
/// container could not be put back, the error says both (`done` describes
/// what succeeded).
pub async fn put_back_after<T>(
    touched: Option<Touched>,
    result: Result<T, Error>,
    done: impl FnOnce(&T) -> String,
) -> Result<T, Error> {
    let put_back = match touched {
        Some(touched) => touched.restore().await,
        None => Ok(()),
    };
    let value = result?;
    match put_back {
        Ok(()) => Ok(value),
        Err(err) => Err(Error::Docker(format!(
            "{}, but {}",
            done(&value),
            err.message()
        ))),
    }
}

/// The containers one job changed, to be put back with [`Touched::restore`].
pub struct Touched {
    docker: Docker,
    journal: Journal,
    changed: Vec<ContainerChange>,
}

impl Touched {
    pub fn new(docker: Docker, journal: Journal) -> Touched {
        Touched {
            docker,
            journal,
            changed: Vec::new(),
        }
    }

    /// Starts `container` if it is stopped. Returns whether it was running.
    pub async fn ensure_running(&mut self, container: &str) -> Result<bool, Error> {
        if self.docker.is_running(container).await? {
            return Ok(true);
        }
        let change = ContainerChange {
            container: container.to_owned(),
            was_running: false,
        };
        self.journal.record(change.clone())?;
        self.changed.push(change);
        tracing::info!(container, "starting a stopped container for the job");
        self.docker.start(container).await?;
        Ok(false)
    }

    /// Stops `container` if it runs. Returns whether it was running.
    pub async fn ensure_stopped(
        &mut self,
        container: &str,
        timeout_secs: u32,
    ) -> Result<bool, Error> {
        if !self.docker.is_running(container).await? {
            return Ok(false);
        }
        let change = ContainerChange {
            container: container.to_owned(),
            was_running: true,
        };
        self.journal.record(change.clone())?;
        self.changed.push(change);
        tracing::info!(container, "stopping a container for the job");
        self.docker.stop(container, timeout_secs).await?;
        Ok(true)
    }

    /// Puts one container back now (e.g. restart the gateway as soon as its
    /// data is copied).
    pub async fn restore_one(&mut self, container: &str) -> Result<(), Error> {
        let Some(at) = self.changed.iter().position(|c| c.container == container) else {
            return Ok(());
        };
        let change = self.changed.remove(at);
        put_back_when_engine_answers(&self.docker, &change).await?;
        self.journal.forget(&change.container)
    }

    /// Puts every changed container back, newest change first. Reports all
    /// failures, not just the first.
    pub async fn restore(mut self) -> Result<(), Error> {
        let mut failures = Vec::new();
        while let Some(change) = self.changed.pop() {
            match put_back_when_engine_answers(&self.docker, &change).await {
                Ok(()) => {
                    let _ = self.journal.forget(&change.container);
                }
                Err(err) => failures.push(format!(
                    "container '{}' could not be {} again: {}",
                    change.container,
                    if change.was_running {
                        "started"
                    } else {
                        "stopped"
                    },
                    err.message()
                )),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Docker(format!(
                "{}; the agent retries at its next start",
                failures.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_restarts_and_an_unreadable_one_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let change = ContainerChange {
            container: "mes-ignition".into(),
            was_running: true,
        };
        journal.record(change.clone()).unwrap();
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.pending(), vec![change]);
        assert!(reopened.problems().is_empty());

        let path = dir.path().join("containers.json");
        std::fs::write(&path, b"[{\"container\": \"mes-igni").unwrap();
        let damaged = Journal::open(dir.path()).unwrap();
        assert!(damaged.pending().is_empty());
        let problem = &damaged.problems()[0];
        assert!(
            problem.contains("container journal") && problem.contains("docker ps -a"),
            "{problem}"
        );
        assert!(!path.exists());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("containers.json.unreadable-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
    }
}
