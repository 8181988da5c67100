//! Jobs: long operations with state and progress, one data-changing job at
//! a time. The D-Bus side (`bus::job`) only reads what is here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesbak_interface::{Error, JobOperation, JobState, RunningJob, job_path};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&Rfc3339)
        .expect("formatting a date cannot fail")
}

pub struct Job {
    pub id: u64,
    pub operation: JobOperation,
    pub target: String,
    pub caller_uid: u32,
    pub started_at: String,
    started: Instant,
    /// Bytes processed; shared with the data path.
    pub bytes_done: Arc<AtomicU64>,
    pub bytes_total: AtomicU64,
    /// Set by `Cancel`; the work checks it at its safe points.
    cancel: CancellationToken,
    inner: Mutex<JobInner>,
}

struct JobInner {
    state: JobState,
    stage: String,
    finished_at: String,
    message: String,
    error_name: String,
    files: Vec<String>,
    warnings: Vec<String>,
    /// (seconds since start, bytes) samples for the rate.
    samples: Vec<(f64, u64)>,
    /// Why the job can no longer be cancelled, once it is past its point
    /// of no return.
    committed: Option<String>,
}

impl Job {
    fn new(id: u64, operation: JobOperation, target: String, caller_uid: u32) -> Job {
        Job {
            id,
            operation,
            target,
            caller_uid,
            started_at: now_rfc3339(),
            started: Instant::now(),
            bytes_done: Arc::new(AtomicU64::new(0)),
            bytes_total: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            inner: Mutex::new(JobInner {
                state: JobState::Running,
                stage: "starting".into(),
                finished_at: String::new(),
                message: String::new(),
                error_name: String::new(),
                files: Vec::new(),
                warnings: Vec::new(),
                samples: Vec::new(),
                committed: None,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, JobInner> {
        self.inner.lock().expect("job lock")
    }

    pub fn set_stage(&self, stage: impl Into<String>) {
        let stage = stage.into();
        tracing::info!(job = self.id, operation = %self.operation, stage = %stage, "job stage");
        self.inner().stage = stage;
    }

    /// Starts a new phase of byte counting (e.g. authenticate, then restore).
    pub fn reset_bytes(&self, total: u64) {
        self.bytes_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(total, Ordering::Relaxed);
        self.inner().samples.clear();
    }

    pub fn add_file(&self, id: impl Into<String>) {
        self.inner().files.push(id.into());
    }

    pub fn warn(&self, warning: impl Into<String>) {
        let warning = warning.into();
        tracing::warn!(job = self.id, warning = %warning, "job warning");
        self.inner().warnings.push(warning);
    }

    pub fn state(&self) -> JobState {
        self.inner().state
    }

    pub fn stage(&self) -> String {
        self.inner().stage.clone()
    }

    pub fn finished_at(&self) -> String {
        self.inner().finished_at.clone()
    }

    pub fn message(&self) -> String {
        self.inner().message.clone()
    }

    pub fn error_name(&self) -> String {
        self.inner().error_name.clone()
    }

    pub fn files(&self) -> Vec<String> {
        self.inner().files.clone()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.inner().warnings.clone()
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Takes a progress sample; called a few times a second while running.
    pub fn sample(&self) {
        let now = self.started.elapsed().as_secs_f64();
        let bytes = self.bytes_done.load(Ordering::Relaxed);
        let mut inner = self.inner();
        inner.samples.push((now, bytes));
        // Keep about five seconds.
        while inner.samples.len() > 2 && now - inner.samples[0].0 > 5.0 {
            inner.samples.remove(0);
        }
    }

    /// Bytes per second over the last few seconds.
    pub fn rate(&self) -> u64 {
        let inner = self.inner();
        match (inner.samples.first(), inner.samples.last()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1.saturating_sub(b0) as f64 / (t1 - t0)) as u64
            }
            _ => 0,
        }
    }

    /// 0..1, or -1 when the total is not known.
    pub fn progress(&self) -> f64 {
        if self.state() == JobState::Succeeded {
            return 1.0;
        }
        let total = self.bytes_total.load(Ordering::Relaxed);
        if total == 0 {
            return -1.0;
        }
        (self.bytes_done.load(Ordering::Relaxed) as f64 / total as f64).min(1.0)
    }

    /// Asks the work to stop at its next safe point. Refused once the job
    /// is past its point of no return, or when it already ended.
    pub fn cancel(&self) -> Result<(), Error> {
        let inner = self.inner();
        if inner.state != JobState::Running {
            return Err(Error::Failed(format!(
                "job {} ({} {}) has already ended ({}); there is nothing to cancel",
                self.id, self.operation, self.target, inner.state
            )));
        }
        if let Some(why) = &inner.committed {
            return Err(Error::Failed(format!(
                "job {} ({} {}) can no longer be cancelled: {why}; wait for it to finish (`mesbakctl wait {}`)",
                self.id, self.operation, self.target, self.id
            )));
        }
        tracing::warn!(job = self.id, operation = %self.operation, stage = %inner.stage, "cancel requested");
        self.cancel.cancel();
        Ok(())
    }

    /// Whether `cancel` was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token `cancel` sets, for work running in tasks of its own.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Resolves when `cancel` is asked for: for `select!` in long loops.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// A safe point: `Err(Cancelled)` when cancel was asked for. `undone`
    /// says what the caller puts back on the way out.
    pub fn check_cancel(&self, undone: &str) -> Result<(), Error> {
        if self.is_cancelled() {
            Err(self.cancelled_error(undone))
        } else {
            Ok(())
        }
    }

    /// The error a cancelled job ends with.
    pub fn cancelled_error(&self, undone: &str) -> Error {
        Error::Cancelled(format!("the {} was cancelled; {undone}", self.operation))
    }

    /// Passes the point of no return: from now on `cancel` is refused with
    /// `why`. Fails with `Cancelled` when cancel was asked for before.
    pub fn commit(&self, why: impl Into<String>, undone: &str) -> Result<(), Error> {
        let mut inner = self.inner();
        if self.cancel.is_cancelled() {
            return Err(self.cancelled_error(undone));
        }
        inner.committed = Some(why.into());
        Ok(())
    }

    /// Whether `cancel` would be accepted now.
    pub fn cancellable(&self) -> bool {
        let inner = self.inner();
        inner.state == JobState::Running && inner.committed.is_none() && !self.is_cancelled()
    }

    /// The job as `status` shows it while it runs.
    pub fn running(&self) -> RunningJob {
        let progress = self.progress();
        RunningJob {
            job: job_path(self.id),
            operation: self.operation,
            target: self.target.clone(),
            stage: self.stage(),
            progress: (progress >= 0.0).then_some(progress),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            started_at: self.started_at.clone(),
        }
    }

    /// Records the end. Returns (success, message) for the signal.
    pub fn finish(&self, result: &Result<String, Error>) -> (bool, String) {
        let mut inner = self.inner();
        inner.finished_at = now_rfc3339();
        match result {
            Ok(message) => {
                inner.state = JobState::Succeeded;
                inner.stage = "done".into();
                inner.message = message.clone();
            }
            Err(err) => {
                (inner.state, inner.stage) = match err {
                    Error::Cancelled(_) => (JobState::Cancelled, "cancelled".into()),
                    _ => (JobState::Failed, "failed".into()),
                };
                inner.message = err.message();
                inner.error_name = err.kind().to_owned();
            }
        }
        (inner.state == JobState::Succeeded, inner.message.clone())
    }
}

/// Every job object that exists, and the slot of the one mutating job.
#[derive(Default)]
pub struct Jobs {
    next_id: AtomicU64,
    /// Set when the agent stops: no new job starts.
    closed: AtomicBool,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    mutating: Mutex<Option<Arc<Job>>>,
}

impl Jobs {
    /// Registers a job, or refuses with `Busy` while another data-changing
    /// job runs.
    pub fn begin(
        &self,
        operation: JobOperation,
        target: String,
        caller_uid: u32,
    ) -> Result<Arc<Job>, Error> {
        let mut mutating = self.mutating.lock().expect("jobs lock");
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Failed(format!(
                "the agent is stopping, so no {operation} can start now; retry once it runs again (`systemctl status mesbak-agent`)"
            )));
        }
        if operation.mutates() {
            if let Some(running) = mutating.as_ref() {
                return Err(Error::Busy(format!(
                    "a {} job ({}) is running since {}; follow it with `mesbakctl wait {}` (or cancel it with `mesbakctl cancel {}`) and retry",
                    running.operation, running.target, running.started_at, running.id, running.id
                )));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job::new(id, operation, target, caller_uid));
        if operation.mutates() {
            *mutating = Some(job.clone());
        }
        self.jobs.lock().expect("jobs lock").insert(id, job.clone());
        Ok(job)
    }

    /// Frees the mutating slot when `job` held it, and the memory the
    /// job freed.
    pub fn end(&self, job: &Job) {
        {
            let mut mutating = self.mutating.lock().expect("jobs lock");
            if mutating
                .as_ref()
                .is_some_and(|running| running.id == job.id)
            {
                *mutating = None;
            }
        }
        crate::memory::release_freed();
    }

    pub fn remove(&self, id: u64) {
        self.jobs.lock().expect("jobs lock").remove(&id);
    }

    pub fn ids(&self) -> Vec<u64> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .keys()
            .copied()
            .collect()
    }

    /// For a stop: refuses new jobs, asks every running job to stop at its
    /// next safe point, and waits up to `grace` for all of them to end
    /// (a job past its point of no return finishes instead). Returns the
    /// jobs still running after `grace`.
    pub async fn stop_all(&self, grace: Duration) -> Vec<Arc<Job>> {
        {
            // Under the slot's lock, so no `begin` slips in between.
            let _slot = self.mutating.lock().expect("jobs lock");
            self.closed.store(true, Ordering::SeqCst);
        }
        for job in self.running() {
            match job.cancel() {
                Ok(()) => {
                    tracing::warn!(job = job.id, operation = %job.operation, "stopping: the job is cancelled")
                }
                Err(err) => {
                    tracing::warn!(job = job.id, operation = %job.operation, reason = %err.message(), "stopping: waiting for the job to finish")
                }
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let running = self.running();
            if running.is_empty() && !self.is_busy() {
                return running;
            }
            if Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_busy(&self) -> bool {
        self.mutating.lock().expect("jobs lock").is_some()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs.lock().expect("jobs lock").get(&id).cloned()
    }

    /// The jobs still running, oldest first.
    pub fn running(&self) -> Vec<Arc<Job>> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .values()
            .filter(|job| job.state() == JobState::Running)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mutating_job_at_a_time() {
        let jobs = Jobs::default();
        let backup = jobs.begin(JobOperation::Backup, "all".into(), 0).unwrap();
        let Err(err) = jobs.begin(JobOperation::Restore, "x".into(), 0) else {
            panic!("a second mutating job was accepted");
        };
        assert!(matches!(err, Error::Busy(_)));
        // Reading jobs may run beside it.
        jobs.begin(JobOperation::Verify, "x".into(), 0).unwrap();
        jobs.end(&backup);
        jobs.begin(JobOperation::Prune, String::new(), 0).unwrap();
        assert_eq!(jobs.ids(), vec![1, 2, 3]);
    }

    #[test]
    fn progress_and_finish() {
        let job = Job::new(1, JobOperation::Backup, "database".into(), 0);
        assert_eq!(job.progress(), -1.0);
        job.reset_bytes(200);
        job.bytes_done.store(50, Ordering::Relaxed);
        assert_eq!(job.progress(), 0.25);
        let (ok, message) = job.finish(&Err(Error::NoSpace("disk full".into())));
        assert!(!ok);
        assert_eq!(message, "disk full");
        assert_eq!(job.error_name(), "NoSpace");
        assert_eq!(job.state(), JobState::Failed);
    }

    #[test]
    fn cancel_until_the_point_of_no_return() {
        let job = Job::new(1, JobOperation::Restore, "x".into(), 0);
        assert!(job.cancellable());
        job.check_cancel("nothing changed").unwrap();
        job.commit("the database was switched", "x").unwrap();
        assert!(!job.cancellable());
        let err = job.cancel().unwrap_err();
        assert!(
            err.message().contains("database was switched"),
            "{}",
            err.message()
        );
        assert!(!job.is_cancelled());

        let job = Job::new(2, JobOperation::Backup, "all".into(), 0);
        job.cancel().unwrap();
        assert!(job.is_cancelled());
        let err = job
            .commit("too late", "the partial file was removed")
            .unwrap_err();
        assert_eq!(err.kind(), "Cancelled");
        assert!(err.message().contains("partial file was removed"));
        job.finish(&Err(err));
        assert_eq!(job.state(), JobState::Cancelled);
        assert_eq!(job.error_name(), "Cancelled");
        assert!(job.cancel().is_err(), "an ended job cannot be cancelled");
    }
}
