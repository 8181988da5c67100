//! The D-Bus side: the manager object, job objects, and the plumbing that
//! runs a job in its own task while its object reports progress. The names
//! and types come from `mesbak-interface`, shared with mesbakctl and the
//! tests; `interface/org.mesbak.Agent1.xml` is what this must introspect as.

mod job;
mod manager;
pub mod offsite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesbak_interface::{Error, JobOperation, MANAGER_PATH, job_path};
use zbus::Connection;
use zbus::message::Header;
use zbus::zvariant::OwnedObjectPath;

pub use job::JobObject;
pub use manager::Manager;

use crate::app::App;
use crate::jobs::Job;
use crate::notify::{Event, EventKind};

/// How often a running job publishes its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a finished job object stays, so clients can read its result.
const FINISHED_JOB_LIFETIME: Duration = Duration::from_secs(600);

/// The uid of the process that sent `header`'s message, from the bus.
pub async fn caller_uid(conn: &Connection, header: &Header<'_>) -> Result<u32, Error> {
    let sender = header
        .sender()
        .ok_or_else(|| Error::NotAuthorized("the message has no sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    dbus.get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|err| Error::NotAuthorized(format!("cannot identify the caller: {err}")))
}

/// Destructive calls need uid 0, as the bus (not the caller) tells.
pub fn require_root(uid: u32, what: &str) -> Result<(), Error> {
    if uid == 0 {
        Ok(())
    } else {
        Err(Error::NotAuthorized(format!(
            "{what} replaces or deletes data, so only root may do it (you are uid {uid}); run it with sudo"
        )))
    }
}

/// Publishes `job` as an object, runs `work` in its own task and reports
/// progress, the end (`Finished`) and the agent's new health.
pub async fn launch<F>(
    app: Arc<App>,
    conn: &Connection,
    job: Arc<Job>,
    work: F,
) -> Result<OwnedObjectPath, Error>
where
    F: Future<Output = Result<String, Error>> + Send + 'static,
{
    let path = job_path(job.id);
    let object_path = OwnedObjectPath::try_from(path.clone())
        .map_err(|err| Error::Failed(format!("bad job path: {err}")))?;
    if let Err(err) = conn
        .object_server()
        .at(path.as_str(), JobObject::new(job.clone()))
        .await
    {
        app.jobs.end(&job);
        app.jobs.remove(job.id);
        return Err(err.into());
    }
    tracing::info!(job = job.id, operation = %job.operation, target = %job.target, uid = job.caller_uid, "job started");
    if job.operation == JobOperation::Backup {
        app.notifier.send(Event::new(
            EventKind::BackupStarted,
            format!("backup of {} started", job.target),
            "",
            "",
        ));
    }
    manager::jobs_changed(conn).await;
    let conn = conn.clone();
    tokio::spawn(async move {
        let mut work = tokio::spawn(work);
        let iface = conn
            .object_server()
            .interface::<_, JobObject>(path.as_str())
            .await;
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = ticker.tick() => {
                    job.sample();
                    if let Ok(iface) = &iface {
                        job::progress_changed(iface).await;
                    }
                }
            }
        };
        let result = result.unwrap_or_else(|err| {
            Err(Error::Failed(format!(
                "the job stopped unexpectedly ({err}); see `journalctl -u mesbak-agent`"
            )))
        });
        let (success, message) = job.finish(&result);
        app.jobs.end(&job);
        let elapsed_ms = job.elapsed().as_millis() as u64;
        // The job's own message goes in RESULT: a `message` field would be
        // a second MESSAGE in the journal entry, next to "job succeeded".
        if success {
            tracing::info!(job = job.id, operation = %job.operation, duration_ms = elapsed_ms, result = %message, "job succeeded");
        } else {
            tracing::error!(job = job.id, operation = %job.operation, duration_ms = elapsed_ms, error = %job.error_name(), result = %message, "job failed");
        }
        alert_end(&app, &job, &result);
        if let Ok(iface) = &iface {
            job::finished(iface, success, &message).await;
        }
        manager::health_changed(&conn).await;
        tokio::time::sleep(FINISHED_JOB_LIFETIME).await;
        let _ = conn
            .object_server()
            .remove::<JobObject, _>(path.as_str())
            .await;
        app.jobs.remove(job.id);
        manager::jobs_changed(&conn).await;
    });
    Ok(object_path)
}

/// Alerts for the end of a backup or a test restore; a cancelled job
/// alerts nobody.
fn alert_end(app: &App, job: &Job, result: &Result<String, Error>) {
    let files = job.files();
    let event = match (job.operation, result) {
        (_, Err(Error::Cancelled(_))) => return,
        (JobOperation::Backup, Ok(message)) => Event::new(
            EventKind::BackupSucceeded,
            format!("backup of {} succeeded", job.target),
            message.clone(),
            "",
        ),
        (JobOperation::Backup, Err(err)) => Event::new(
            EventKind::BackupFailed,
            format!("the backup of {} failed", job.target),
            err.message(),
            "Fix the cause, then run `mesbakctl backup` (details: `journalctl -u mesbak-agent`).",
        ),
        (JobOperation::TestRestore, Err(err)) => Event::new(
            EventKind::TestRestoreFailed,
            format!("the test restore of {} failed", job.target),
            err.message(),
            "This backup may not restore: check it with `mesbakctl verify`, take a new backup and run `mesbakctl test-restore` again.",
        ),
        _ => return,
    };
    let backup = match job.operation {
        JobOperation::TestRestore => Some(job.target.clone()),
        _ => (!files.is_empty()).then(|| files.join(", ")),
    };
    app.notifier.send(event.with_backup(backup));
}

/// Serves every object, then asks for the well-known name.
pub async fn serve(app: Arc<App>) -> Result<Connection, Error> {
    let conn = zbus::connection::Builder::system()
        .map_err(|err| bus_unreachable(&err))?
        .serve_at(MANAGER_PATH, Manager::new(app))
        .map_err(|err| bus_unreachable(&err))?
        .build()
        .await
        .map_err(|err| bus_unreachable(&err))?;
    conn.request_name_with_flags(
        mesbak_interface::BUS_NAME,
        zbus::fdo::RequestNameFlags::DoNotQueue.into(),
    )
    .await
    .map_err(|err| {
        Error::Failed(format!(
            "cannot own {} on the system bus ({err}); another mesbak-agent may be running, or the bus policy /usr/share/dbus-1/system.d/org.mesbak.Agent1.conf is missing",
            mesbak_interface::BUS_NAME
        ))
    })?;
    Ok(conn)
}

fn bus_unreachable(err: &zbus::Error) -> Error {
    Error::Failed(format!(
        "cannot connect to the D-Bus system bus ({err}); check that dbus is running, or DBUS_SYSTEM_BUS_ADDRESS"
    ))
}
