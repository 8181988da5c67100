//! The agent's shared context: configuration, Docker, the backup folder, the
//! journals and the job registry. Every job and bus method works through it.

use std::sync::Mutex;

use mesbak_format::{Key, KeyError};
use mesbak_interface::{Error, Health, StatusReport};
use time::OffsetDateTime;

use crate::config::Config;
use crate::docker::Docker;
use crate::health;
use crate::jobs::Jobs;
use crate::notify::Notifier;
use crate::offsite::Offsite;
use crate::postgres::{Server, Session};
use crate::process::Runner;
use crate::recovery::Journal;
use crate::state::StateStore;
use crate::storage::Storage;

/// A key problem with what to do: where backups exist, a missing key must
/// be found again (a new one cannot read them); only a fresh installation
/// is told to make one.
pub fn key_advice(err: &KeyError, have_backups: bool) -> String {
    match err {
        KeyError::Missing(path) if have_backups => format!(
            "{err}; the backups already here were made with a key: put that key back at {} (or set BACKUP_ENCRYPTION_KEY to it). A new key cannot read them",
            path.display()
        ),
        KeyError::Missing(path) => format!(
            "{err}; on a new installation create one with `mesbakctl keygen -o {}` and keep a copy away from this server",
            path.display()
        ),
        other => other.to_string(),
    }
}

pub struct App {
    pub config: Config,
    pub storage: Storage,
    pub journal: Journal,
    pub state: StateStore,
    pub jobs: Jobs,
    pub pitr: crate::pitr::Pitr,
    pub notifier: Notifier,
    pub offsite: Offsite,
    docker: tokio::sync::Mutex<Option<Docker>>,
    /// Problems found outside jobs (start-up checks, repairs that failed).
    problems: Mutex<Vec<String>>,
}

impl App {
    pub fn new(config: Config) -> Result<App, Error> {
        let state = StateStore::open(&config.state_dir)?;
        let journal = Journal::open(&config.state_dir)?;
        let offsite = Offsite::new(&config.state_dir);
        let mut problems = state.problems().to_vec();
        problems.extend(journal.problems().iter().cloned());
        problems.extend(offsite.queue.problems().iter().cloned());
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
            notifier: Notifier::default(),
            offsite,
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
        key.map_err(|err: KeyError| {
            let have_backups = !self.storage.list().unwrap_or_default().is_empty();
            Error::Config(key_advice(&err, have_backups))
        })
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
        problems.extend(crate::kept::problems(self, now));
        let mut report = health::assess(&self.config, &backups, &self.state.get(), &problems, now);
        for (unhealthy, problem) in crate::pitr::problems(self, now) {
            let status = if unhealthy {
                Health::Unhealthy
            } else {
                Health::Degraded
            };
            report.status = report.status.max(status);
            report.problems.push(problem);
        }
        report.running_jobs = self
            .jobs
            .running()
            .iter()
            .map(|job| job.running())
            .collect();
        report.previous_databases = crate::kept::list(self);
        let offsite = crate::offsite::health::assess(
            &self.config,
            &backups,
            &crate::offsite::pitr::Local::read(self),
            |name| self.offsite.queue.get(name),
            now,
        );
        if !offsite.unhealthy.is_empty() {
            report.status = Health::Unhealthy;
        } else if !offsite.degraded.is_empty() && report.status == Health::Healthy {
            report.status = Health::Degraded;
        }
        report.problems.extend(offsite.unhealthy);
        report.problems.extend(offsite.degraded);
        report.offsite = offsite.targets;
        report
    }
}
