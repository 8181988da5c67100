//! One job's use of the database server: the server's container started if
//! it was stopped (and stopped again), writers stopped for a restore (and
//! started again), the password file removed; all of it put back as found
//! when the job ends, whatever the outcome.

use mesbak_interface::Error;

use super::{SERVER_START_TIMEOUT, Server};
use crate::jobs::Job;
use crate::process::Runner;
use crate::recovery::{Journal, Touched, put_back_after};

pub struct Session {
    pub server: Server,
    touched: Option<Touched>,
}

impl Session {
    /// Opens a session; nothing is changed yet.
    pub fn new(server: Server, journal: &Journal) -> Session {
        let touched = match &server.runner {
            Runner::Container { docker, .. } => Some(Touched::new(docker.clone(), journal.clone())),
            Runner::Host => None,
        };
        Session { server, touched }
    }

    /// Starts the database container if it is stopped (journaled first, so
    /// it is stopped again at the end or after a crash) and waits until the
    /// server answers.
    pub async fn ensure_up(&mut self, job: &Job) -> Result<(), Error> {
        if let (Some(touched), Runner::Container { container, .. }) =
            (self.touched.as_mut(), &self.server.runner)
        {
            if !touched.ensure_running(container).await? {
                job.set_stage("waiting for the database server to start");
                self.server.wait_ready(SERVER_START_TIMEOUT).await?;
            }
        }
        Ok(())
    }

    /// The containers this session changed (none in host mode).
    pub fn touched(&mut self) -> Option<&mut Touched> {
        self.touched.as_mut()
    }

    /// Ends the session after work that ended with `result`: the password
    /// file goes, containers are put back. See [`put_back_after`].
    pub async fn end<T>(
        self,
        result: Result<T, Error>,
        done: impl FnOnce(&T) -> String,
    ) -> Result<T, Error> {
        self.server.release().await;
        put_back_after(self.touched, result, done).await
    }
}
