//! A job object, `/org/mesbak/Agent1/jobs/<n>` (udisks2-style: state,
//! progress, bytes, rate, and `Finished(b success, s message)`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mesbak_interface::Error;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Connection, interface};

use super::caller_uid;
use crate::jobs::Job;

pub struct JobObject {
    job: Arc<Job>,
}

impl JobObject {
    pub fn new(job: Arc<Job>) -> JobObject {
        JobObject { job }
    }
}

#[interface(name = "org.mesbak.Agent1.Job")]
impl JobObject {
    /// Asks the job to stop at its next safe point and put back what it
    /// changed (root, or whoever started the job).
    async fn cancel(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        let uid = caller_uid(conn, &header).await?;
        if uid != 0 && uid != self.job.caller_uid {
            return Err(Error::NotAuthorized(format!(
                "job {} was started by uid {}; only that user or root may cancel it (you are uid {uid})",
                self.job.id, self.job.caller_uid
            )));
        }
        self.job.cancel()?;
        tracing::info!(job = self.job.id, uid, "job cancel accepted");
        let _ = self.cancellable_changed(&emitter).await;
        Ok(())
    }

    /// Emitted once when the job ends.
    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> String {
        self.job.operation.to_string()
    }

    #[zbus(property)]
    fn target(&self) -> String {
        self.job.target.clone()
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.job.state().to_string()
    }

    #[zbus(property)]
    fn stage(&self) -> String {
        self.job.stage()
    }

    #[zbus(property)]
    fn bytes_done(&self) -> u64 {
        self.job.bytes_done.load(Ordering::Relaxed)
    }

    #[zbus(property)]
    fn bytes_total(&self) -> u64 {
        self.job.bytes_total.load(Ordering::Relaxed)
    }

    #[zbus(property)]
    fn rate(&self) -> u64 {
        self.job.rate()
    }

    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.job.progress()
    }

    #[zbus(property)]
    fn started_at(&self) -> String {
        self.job.started_at.clone()
    }

    #[zbus(property)]
    fn finished_at(&self) -> String {
        self.job.finished_at()
    }

    #[zbus(property)]
    fn message(&self) -> String {
        self.job.message()
    }

    #[zbus(property)]
    fn error_name(&self) -> String {
        self.job.error_name()
    }

    #[zbus(property)]
    fn files(&self) -> Vec<String> {
        self.job.files()
    }

    #[zbus(property)]
    fn warnings(&self) -> Vec<String> {
        self.job.warnings()
    }

    #[zbus(property)]
    fn cancellable(&self) -> bool {
        self.job.cancellable()
    }
}

/// Publishes the properties that move while a job runs. The interface lock
/// is held only to read atomics and short strings.
pub async fn progress_changed(iface: &InterfaceRef<JobObject>) {
    let emitter = iface.signal_emitter();
    let object = iface.get().await;
    let _ = object.bytes_done_changed(emitter).await;
    let _ = object.bytes_total_changed(emitter).await;
    let _ = object.rate_changed(emitter).await;
    let _ = object.progress_changed(emitter).await;
    let _ = object.stage_changed(emitter).await;
    let _ = object.files_changed(emitter).await;
    let _ = object.warnings_changed(emitter).await;
    let _ = object.cancellable_changed(emitter).await;
}

/// Publishes the end of a job: final properties, then `Finished`.
pub async fn finished(iface: &InterfaceRef<JobObject>, success: bool, message: &str) {
    progress_changed(iface).await;
    let emitter = iface.signal_emitter();
    {
        let object = iface.get().await;
        let _ = object.state_changed(emitter).await;
        let _ = object.finished_at_changed(emitter).await;
        let _ = object.message_changed(emitter).await;
        let _ = object.error_name_changed(emitter).await;
    }
    let _ = JobObject::finished(emitter, success, message).await;
}
