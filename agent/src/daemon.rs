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

pub async fn run(config: Config) -> Result<(), Error> {
    let targets = crate::notify::targets(&config).map_err(|err| Error::Config(err.to_string()))?;
    let app = Arc::new(App::new(config)?);
    app.notifier.start(targets);
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

    let conn = bus::serve(app.clone()).await?;
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

    let mut term = signal(SignalKind::terminate())
        .map_err(|err| Error::Failed(format!("cannot handle SIGTERM: {err}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|err| Error::Failed(format!("cannot handle SIGINT: {err}")))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = notify(false, &[NotifyState::Stopping]);
    if app.jobs.is_busy() {
        tracing::warn!("stopping while a job runs; its partial output is discarded");
    }
    drop(conn);
    // A job cut short must not leave the gateway or the database stopped.
    repair_containers(&app).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
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
