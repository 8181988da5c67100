//! Off-site sync jobs: started on request, after every backup and by the
//! retry timer. A request while a sync runs gets that sync's job.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mesbak_interface::{Error, JobOperation, job_path};
use time::OffsetDateTime;
use zbus::Connection;
use zbus::zvariant::OwnedObjectPath;

use super::launch;
use crate::app::App;
use crate::offsite::RETRY_INTERVAL;
use crate::offsite::sync::{self, Due};

/// Starts a sync job (or returns the running one).
pub async fn start_sync(
    app: Arc<App>,
    conn: &Connection,
    uid: u32,
    due: Due,
) -> Result<OwnedObjectPath, Error> {
    if app.config.offsite.is_empty() {
        return Err(Error::Config(format!(
            "no off-site target is configured; add an [[offsite]] table to {}",
            app.config.origin.display()
        )));
    }
    let running = app.offsite.sync_job.load(Ordering::Acquire);
    if running != 0 && app.jobs.ids().contains(&running) {
        app.offsite.again.store(true, Ordering::Release);
        return OwnedObjectPath::try_from(job_path(running))
            .map_err(|err| Error::Failed(format!("bad job path: {err}")));
    }
    let job = app
        .jobs
        .begin(JobOperation::OffsiteSync, "offsite".into(), uid)?;
    app.offsite.sync_job.store(job.id, Ordering::Release);
    let work = {
        let app = app.clone();
        let job = job.clone();
        async move {
            let result = sync::run(&app, &job, due).await;
            let _ = app.offsite.sync_job.compare_exchange(
                job.id,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            result
        }
    };
    launch(app, conn, job, work).await
}

/// After a backup job: copy what it made (and whatever else waits).
pub async fn after_backup(app: &Arc<App>, conn: &Connection) {
    if app.config.offsite.is_empty() {
        return;
    }
    if let Err(err) = start_sync(app.clone(), conn, 0, Due::All).await {
        tracing::warn!(error = %err.message(), "cannot start the off-site copy after the backup");
    }
}

/// Retries copies past their backoff, every [`RETRY_INTERVAL`].
pub fn spawn_retries(app: Arc<App>, conn: Connection) {
    if app.config.offsite.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RETRY_INTERVAL);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let idle = app.offsite.sync_job.load(Ordering::Acquire) == 0;
            let check = app.clone();
            let due = tokio::task::spawn_blocking(move || {
                sync::anything_due(&check, OffsetDateTime::now_utc())
            })
            .await
            .unwrap_or(false);
            if idle && due {
                if let Err(err) = start_sync(app.clone(), &conn, 0, Due::PastBackoff).await {
                    tracing::warn!(error = %err.message(), "cannot start the off-site retry");
                }
            }
        }
    });
}
