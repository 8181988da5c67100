//! The daemon's life: start-up checks and repairs, serving the bus, telling
//! systemd, and a clean stop that leaves containers as they were found.

use std::sync::Arc;
use std::time::Duration;

use libsystemd::daemon::{NotifyState, notify};
use mesbak_interface::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;
use crate::bus;
use crate::config::Config;

/// How long a stop waits for the running job to reach a safe point and put
/// back what it changed. Below the unit's `TimeoutStopSec=120s`, leaving
/// room for the container repair after it (a gateway's stop takes up to 30 s).
const JOB_STOP_GRACE: Duration = Duration::from_secs(75);

pub async fn run(config: Config) -> Result<(), Error> {
    // Taken before anything else: a stop that arrives during the start-up
    // repairs waits for them and then stops cleanly, instead of killing the
    // agent half-way through one.
    let mut term = signal(SignalKind::terminate())
        .map_err(|err| Error::Failed(format!("cannot handle SIGTERM: {err}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|err| Error::Failed(format!("cannot handle SIGINT: {err}")))?;
    let targets = crate::notify::targets(&config).map_err(|err| Error::Config(err.to_string()))?;
    let app = Arc::new(App::new(config)?);
    app.notifier.start(targets);
    // The repairs below (an interrupted restore's database dropped, a
    // gateway started, PITR scratch removed) may outlast the unit's start
    // timeout on a slow server; systemd is told to wait while they run.
    let extender = tokio::spawn(extend_start_timeout());
    match app.storage.prepare() {
        Ok(repairs) => {
            for repair in repairs {
                tracing::warn!(repair = %repair, "backup folder repaired");
            }
        }
        Err(err) => app.add_problem(err.message()),
    }
    crate::postgres::remove_stale_password_files(&app.config.state_dir);
    crate::offsite::read::remove_spools(&app);
    for partial in app.storage.remove_partials() {
        tracing::warn!(file = %partial.display(), "removed an incomplete backup left by an interrupted run");
    }
    // An interrupted volume restore is settled while its gateway is still
    // stopped, before the gateway is put back.
    for problem in crate::ignition::recover(&app).await {
        app.add_problem(problem);
    }
    repair_containers(&app).await;
    for problem in crate::pitr::recover_at_start(&app).await {
        app.add_problem(problem);
    }
    for problem in crate::schedule::apply(&app.config).await {
        app.add_problem(problem);
    }
    if crate::restore::interrupted(&app) {
        // Best effort: the next restore or test restore retries.
        match app.database().await {
            Ok(server) => {
                if let Err(err) = crate::restore::recover(&app, &server).await {
                    tracing::warn!(error = %err.message(), "will retry at the next restore");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err.message(), "cannot clean up an interrupted restore yet")
            }
        }
    }

    let conn = bus::serve(app.clone()).await;
    extender.abort();
    let conn = conn?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %app.config.origin.display(),
        backup_dir = %app.config.backup_dir.display(),
        "mesbak-agent ready"
    );
    crate::http::spawn(app.clone());
    crate::pitr::spawn_shipper(app.clone());
    crate::notify::spawn_watch(app.clone());
    bus::offsite::spawn_retries(app.clone(), conn.clone());
    let status = app.status();
    let _ = notify(
        false,
        &[
            NotifyState::Ready,
            NotifyState::Status(format!(
                "serving {}; health: {}",
                mesbak_interface::BUS_NAME,
                status.status
            )),
        ],
    );
    if let Some(interval) = libsystemd::daemon::watchdog_enabled(false) {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval / 2);
            loop {
                ticker.tick().await;
                let _ = notify(false, &[NotifyState::Watchdog]);
            }
        });
    }

    let bus_lost = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        reason = watch_bus(&conn) => Some(reason),
    };
    if let Some(reason) = &bus_lost {
        tracing::error!(reason = %reason, "lost the system bus; stopping");
    }
    let _ = notify(
        false,
        &[
            NotifyState::Stopping,
            NotifyState::Status("stopping: cancelling the running job".into()),
        ],
    );
    // The job first: it stops at its next safe point and puts back what it
    // changed (new database dropped, gateway started), so nothing it does
    // later can undo the container repair below.
    let left = app.jobs.stop_all(JOB_STOP_GRACE).await;
    for job in &left {
        tracing::error!(
            job = job.id,
            operation = %job.operation,
            stage = %job.stage(),
            "the job did not end within {} s of the stop; the next start cleans up after it",
            JOB_STOP_GRACE.as_secs()
        );
    }
    drop(conn);
    // Whatever a job cut short left stopped or started is put back.
    repair_containers(&app).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    match bus_lost {
        // Nobody can reach an agent without its bus name: exit with an
        // error so systemd (Restart=on-failure) starts it on the new bus.
        Some(reason) => Err(Error::Failed(format!(
            "lost the D-Bus system bus ({reason}), so the running job was cancelled and the containers put back; systemd starts the agent again"
        ))),
        None => Ok(()),
    }
}

/// How often the bus connection is checked, and how many failed checks in
/// a row mean it is gone (a restarted dbus-daemon drops every connection).
const BUS_CHECK: Duration = Duration::from_secs(1);
const BUS_CHECK_FAILURES: u32 = 3;

/// Resolves, with the reason, once the bus daemon no longer answers.
async fn watch_bus(conn: &zbus::Connection) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(BUS_CHECK).await;
        // GetId: answered by the bus itself and allowed by the system
        // bus policy (org.freedesktop.DBus.Peer is not).
        let ping = conn.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetId",
            &(),
        );
        match tokio::time::timeout(BUS_CHECK * 10, ping).await {
            Ok(Ok(_)) => failures = 0,
            Ok(Err(err)) => {
                failures += 1;
                if failures >= BUS_CHECK_FAILURES {
                    return err.to_string();
                }
            }
            Err(_) => {
                failures += 1;
                if failures >= BUS_CHECK_FAILURES {
                    return "the bus daemon did not answer".into();
                }
            }
        }
    }
}

/// Each message gives the start `START_EXTENSION` more from when it is
/// sent; one goes every third of that until the task is aborted at READY=1.
const START_EXTENSION: Duration = Duration::from_secs(30);

async fn extend_start_timeout() {
    let mut ticker = tokio::time::interval(START_EXTENSION / 3);
    loop {
        ticker.tick().await;
        let _ = notify(
            false,
            &[
                NotifyState::Other(format!(
                    "EXTEND_TIMEOUT_USEC={}",
                    START_EXTENSION.as_micros()
                )),
                NotifyState::Status(
                    "starting: checking and repairing what an interrupted run left".into(),
                ),
            ],
        );
    }
}

async fn repair_containers(app: &App) {
    if app.journal.pending().is_empty() {
        return;
    }
    match app.docker().await {
        Ok(docker) => {
            for problem in app.journal.repair(&docker).await {
                app.add_problem(problem);
            }
        }
        Err(err) => app.add_problem(format!(
            "containers changed by an interrupted job could not be checked: {}",
            err.message()
        )),
    }
}
