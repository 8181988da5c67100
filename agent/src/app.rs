//! The agent's shared context: configuration, Docker, the backup folder, the
//! journals and the job registry. Every job and bus method works through it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesbak_format::{Key, KeyError};
use mesbak_interface::{Error, Health, StatusReport};
use time::OffsetDateTime;

use crate::catalog::Stamp;
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
    /// The last status judgement (see [`App::status`]).
    judged: Mutex<Option<Judged>>,
    /// The key last read (see [`App::key`]).
    key: Mutex<Option<Key>>,
}

/// Numbers judgements across every `App` of the process, so a number
/// names one judgement (see [`Judgement::generation`]).
static JUDGEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How long a status judgement is handed out again while nothing it
/// depends on is seen to change. Bounds how late a change the agent cannot
/// see cheaply (a file edited in place by hand) shows in the status.
pub const STATUS_REUSE: Duration = Duration::from_secs(1);

/// A status judgement and what it was made from.
struct Judged {
    inputs: StatusInputs,
    at: Instant,
    status: Arc<Judgement>,
}

/// The health judgement with the PITR chain it looked at (`/metrics`
/// shows both).
pub struct Judgement {
    pub report: StatusReport,
    pub pitr: mesbak_interface::PitrStatus,
    /// Which judgement this is: the same number while it is reused.
    pub generation: u64,
}

/// What a judgement depends on besides the clock, each cheap to read: the
/// folders that hold backups, WAL and records (every write here commits by
/// a rename in one of them), the problems noted, the running jobs and the
/// last WAL shipping round.
#[derive(PartialEq)]
struct StatusInputs {
    folders: Stamp,
    problems: Vec<String>,
    jobs: Vec<(u64, String)>,
    shipping: crate::pitr::LastRound,
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
            judged: Mutex::new(None),
            key: Mutex::new(None),
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
    ///
    /// Read (and its file checked) on every call, so a changed or removed
    /// key file counts at once; but while the key stays the same, the `Key`
    /// handed out is the one read first, so every file the agent writes
    /// shares its key salt and the agent runs PBKDF2 once, not once per job
    /// or WAL shipping round (format version 2, FORMAT.md 3).
    pub fn key(&self) -> Result<Key, Error> {
        let key = match Key::from_env() {
            Some(key) => key,
            None => Key::from_file(&self.config.encryption.key_file),
        };
        let key = key.map_err(|err: KeyError| {
            let have_backups = !self.storage.list().unwrap_or_default().is_empty();
            Error::Config(key_advice(&err, have_backups))
        })?;
        let mut kept = self
            .key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match kept.as_ref() {
            Some(earlier) if earlier.same_secret(&key) => Ok(earlier.clone()),
            _ => {
                *kept = Some(key.clone());
                Ok(key)
            }
        }
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

    /// Health now. `status`, `list`, health checks and `/metrics` are
    /// polled by many clients at once over a folder that may hold tens of
    /// thousands of files: a judgement is reused while its inputs are
    /// unchanged and it is younger than [`STATUS_REUSE`].
    pub fn status(&self) -> StatusReport {
        self.judgement().report.clone()
    }

    /// The current judgement, shared (see [`App::status`]).
    pub fn judgement(&self) -> Arc<Judgement> {
        let inputs = self.status_inputs();
        if let Some(judged) = self.judged.lock().expect("status lock").as_ref() {
            if judged.inputs == inputs && judged.at.elapsed() < STATUS_REUSE {
                let mut fresh = Judgement {
                    report: judged.status.report.clone(),
                    pitr: judged.status.pitr.clone(),
                    generation: judged.status.generation,
                };
                // Progress moves all the time; it costs nothing to read.
                fresh.report.running_jobs = self.running_jobs();
                return Arc::new(fresh);
            }
        }
        let at = Instant::now();
        let mut judgement = self.judge(OffsetDateTime::now_utc());
        judgement.generation = JUDGEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = Arc::new(judgement);
        *self.judged.lock().expect("status lock") = Some(Judged {
            inputs,
            at,
            status: status.clone(),
        });
        status
    }

    fn status_inputs(&self) -> StatusInputs {
        let mut folders: Vec<std::path::PathBuf> = mesbak_interface::BackupKind::ALL
            .iter()
            .map(|kind| self.storage.dir(*kind))
            .collect();
        folders.extend(crate::pitr::folders(&self.config.backup_dir));
        folders.extend([
            self.config.backup_dir.clone(),
            self.config.state_dir.clone(),
        ]);
        StatusInputs {
            folders: Stamp::folders(&folders),
            problems: self.problems(),
            jobs: self
                .jobs
                .running()
                .iter()
                .map(|job| (job.id, job.stage()))
                .collect(),
            shipping: self.pitr.last_round(),
        }
    }

    fn running_jobs(&self) -> Vec<mesbak_interface::RunningJob> {
        self.jobs
            .running()
            .iter()
            .map(|job| job.running())
            .collect()
    }

    /// Health at `now`, judged afresh.
    pub fn status_at(&self, now: OffsetDateTime) -> StatusReport {
        self.judge(now).report
    }

    fn judge(&self, now: OffsetDateTime) -> Judgement {
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
        let pitr = crate::pitr::status(self);
        for (unhealthy, problem) in crate::pitr::problems(self, &pitr, now) {
            let status = if unhealthy {
                Health::Unhealthy
            } else {
                Health::Degraded
            };
            report.status = report.status.max(status);
            report.problems.push(problem);
        }
        report.running_jobs = self.running_jobs();
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
        Judgement {
            report,
            pitr,
            generation: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key_salt(key: &Key) -> Vec<u8> {
        let file = mesbak_format::Encryptor::new(Vec::new(), key)
            .unwrap()
            .finish()
            .unwrap();
        file[14..30].to_vec()
    }

    #[test]
    fn the_same_key_read_again_keeps_its_key_salt_and_a_new_one_does_not() {
        assert!(
            std::env::var_os(mesbak_format::ENV_KEY_VAR).is_none(),
            "unset {} to run this test: the key would come from it, not from the file below",
            mesbak_format::ENV_KEY_VAR
        );
        let tmp = tempfile::tempdir().unwrap();
        let key_file = tmp.path().join("backup.key");
        let write_key = |text: &[u8]| {
            std::fs::write(&key_file, text).unwrap();
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_key(b"first key\n");
        let mut config = Config {
            backup_dir: tmp.path().join("backups"),
            state_dir: tmp.path().join("state"),
            ..Default::default()
        };
        config.encryption.key_file = key_file.clone();
        let app = App::new(config).unwrap();
        let salt = key_salt(&app.key().unwrap());
        assert_eq!(key_salt(&app.key().unwrap()), salt);
        write_key(b"second key\n");
        let second = app.key().unwrap();
        assert_ne!(key_salt(&second), salt);
        assert_eq!(key_salt(&app.key().unwrap()), key_salt(&second));
        std::fs::remove_file(&key_file).unwrap();
        assert!(app.key().is_err(), "a removed key file counts at once");
    }
}
