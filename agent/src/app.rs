//! The agent's shared context: configuration, Docker, the backup folder, the
//! journals and the job registry. Every job and bus method works through it.

use std::sync::Mutex;

use mesbak_format::{Key, KeyError};
use mesbak_interface::{Error, StatusReport};
use time::OffsetDateTime;

use crate::config::Config;
use crate::docker::Docker;
use crate::health;
use crate::jobs::Jobs;
use crate::postgres::{Server, Session};
use crate::process::Runner;
use crate::recovery::Journal;
use crate::state::StateStore;
use crate::storage::Storage;

pub struct App {
    pub config: Config,
    pub storage: Storage,
    pub journal: Journal,
    pub state: StateStore,
    pub jobs: Jobs,
    pub pitr: crate::pitr::Pitr,
    docker: tokio::sync::Mutex<Option<Docker>>,
    /// Problems found outside jobs (start-up checks, repairs that failed).
    problems: Mutex<Vec<String>>,
}

impl App {
    pub fn new(config: Config) -> Result<App, Error> {
        let state = StateStore::open(&config.state_dir)?;
        let journal = Journal::open(&config.state_dir)?;
        let mut problems = state.problems().to_vec();
        problems.extend(journal.problems().iter().cloned());
        for problem in &problems {
            tracing::error!(problem = %problem, "agent problem");
        }
        Ok(App {
            storage: Storage::new(&config.backup_dir),
            config,
            journal,
            state,
            jobs: Jobs::default(),
            pitr: crate::pitr::Pitr::default(),
            docker: tokio::sync::Mutex::new(None),
            problems: Mutex::new(problems),
        })
    }

    /// The Docker engine, connecting (and negotiating the API version) on
    /// first use so the agent starts even while Docker is still coming up.
    pub async fn docker(&self) -> Result<Docker, Error> {
        let mut slot = self.docker.lock().await;
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let docker = Docker::connect().await?;
        match docker.version().await {
            Ok(version) => tracing::info!(docker = %version, "connected to Docker"),
            Err(err) => {
                tracing::warn!(error = %err.message(), "Docker answered but not its version")
            }
        }
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// The encryption key: `BACKUP_ENCRYPTION_KEY`, else the key file.
    pub fn key(&self) -> Result<Key, Error> {
        let key = match Key::from_env() {
            Some(key) => key,
            None => Key::from_file(&self.config.encryption.key_file),
        };
        key.map_err(|err: KeyError| Error::Config(err.to_string()))
    }

    /// Where database programs run, and how to reach the server.
    pub async fn database(&self) -> Result<Server, Error> {
        let runner = if self.config.database.container.is_empty() {
            Runner::Host
        } else {
            Runner::Container {
                docker: self.docker().await?,
                container: self.config.database.container.clone(),
            }
        };
        let password = self
            .config
            .database_password()
            .map_err(|err| Error::Config(err.to_string()))?;
        Ok(Server::new(&self.config, runner, password))
    }

    /// A job's session with the database server (see [`Session`]).
    pub async fn database_session(&self) -> Result<Session, Error> {
        Ok(Session::new(self.database().await?, &self.journal))
    }

    pub fn add_problem(&self, problem: String) {
        tracing::warn!(problem = %problem, "agent problem");
        self.problems.lock().expect("problems lock").push(problem);
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.problems.lock().expect("problems lock").clone();
        problems.extend(
            self.journal
                .pending()
                .into_iter()
                .filter(|_| !self.jobs.is_busy())
                .map(|change| {
                    format!(
                        "container '{}' still has to be {} again",
                        change.container,
                        if change.was_running {
                            "started"
                        } else {
                            "stopped"
                        }
                    )
                }),
        );
        problems
    }

    /// Health now.
    pub fn status(&self) -> StatusReport {
        self.status_at(OffsetDateTime::now_utc())
    }

    pub fn status_at(&self, now: OffsetDateTime) -> StatusReport {
        let mut problems = self.problems();
        let backups = match self.storage.list() {
            Ok(backups) => backups,
            Err(err) => {
                problems.push(err.message());
                Vec::new()
            }
        };
        let mut report = health::assess(&self.config, &backups, &self.state.get(), &problems, now);
        for (unhealthy, problem) in crate::pitr::problems(self, now) {
            let status = if unhealthy {
                mesbak_interface::Health::Unhealthy
            } else {
                mesbak_interface::Health::Degraded
            };
            report.status = report.status.max(status);
            report.problems.push(problem);
        }
        report
    }
}
