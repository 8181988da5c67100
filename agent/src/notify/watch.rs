//! The agent's own timer (`notify.check_interval_secs`): judges health, free
//! space and containers left stopped, and alerts on each change for the
//! worse (and once when health recovers). What was last alerted is kept in
//! `state_dir/alerts.json`, so a restart does not repeat an alert.

use std::sync::Arc;
use std::time::Duration;

use mesbak_interface::Health;
use serde::{Deserialize, Serialize};

use super::{Event, EventKind};
use crate::app::App;
use crate::persist::Record;
use crate::storage::human_bytes;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Alerted {
    /// The health last alerted ("" = never: taken as healthy).
    health: String,
    problems: Vec<String>,
    disk_low: bool,
    stopped: Vec<String>,
}

/// Starts the timer when any notify URL is configured.
pub fn spawn_watch(app: Arc<App>) {
    if app.config.notify.urls.is_empty() {
        return;
    }
    let interval = Duration::from_secs(app.config.notify.check_interval_secs.max(1).into());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let app = app.clone();
            // Reading the backup folder blocks: off the runtime's threads.
            if let Err(err) = tokio::task::spawn_blocking(move || check(&app)).await {
                tracing::error!(error = %err, "the alert check failed");
            }
        }
    });
}

fn record(app: &App) -> Record<Alerted> {
    Record::new(&app.config.state_dir, "alerts.json", "the alerts sent")
}

/// What was alerted; an unreadable file is set aside (alerts may repeat).
fn load(app: &App) -> Alerted {
    match record(app).read_or_set_aside() {
        Ok((alerted, _)) => alerted.unwrap_or_default(),
        Err(err) => {
            tracing::warn!(error = %err.message(), "cannot read the alerts sent; they may repeat");
            Alerted::default()
        }
    }
}

fn save(app: &App, alerted: &Alerted) {
    if let Err(err) = record(app).write(alerted) {
        tracing::warn!(error = %err.message(), "cannot remember the alerts sent; they may repeat after a restart");
    }
}

/// One round of judging; sends what changed for the worse.
pub fn check(app: &App) {
    let mut alerted = load(app);
    let before = alerted.clone();
    let report = app.status();
    let level = |health: &str| match health {
        "unhealthy" => 2,
        "degraded" => 1,
        _ => 0,
    };
    let now = report.status.as_str();
    let new_problems: Vec<&String> = report
        .problems
        .iter()
        .filter(|p| !alerted.problems.contains(p))
        .collect();
    if level(now) > level(&alerted.health)
        || (level(now) > 0 && level(now) == level(&alerted.health) && !new_problems.is_empty())
    {
        let (kind, what) = match report.status {
            Health::Unhealthy => (EventKind::HealthUnhealthy, "backups are unhealthy"),
            _ => (
                EventKind::HealthDegraded,
                "backups need attention (degraded)",
            ),
        };
        let shown: Vec<&String> = if new_problems.is_empty() {
            report.problems.iter().collect()
        } else {
            new_problems
        };
        app.notifier.send(Event::new(
            kind,
            what,
            shown
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            "Run `mesbakctl status` on the server and see `journalctl -u mesbak-agent`.",
        ));
    } else if level(now) == 0 && level(&alerted.health) > 0 {
        app.notifier.send(Event::new(
            EventKind::HealthRecovered,
            "backups are healthy again",
            "",
            "",
        ));
    }
    alerted.health = now.to_owned();
    alerted.problems = report.problems.clone();

    let low = disk_low(app);
    if let Some(reason) = &low {
        if !alerted.disk_low {
            app.notifier.send(Event::new(
                EventKind::DiskLow,
                "the disk holding the backups is nearly full",
                reason.clone(),
                "Free space there or move backup_dir; the next backup will be refused otherwise.",
            ));
        }
    }
    alerted.disk_low = low.is_some();

    let stopped: Vec<String> = if app.jobs.is_busy() {
        alerted.stopped.clone()
    } else {
        app.journal
            .pending()
            .into_iter()
            .filter(|change| change.was_running)
            .map(|change| change.container)
            .collect()
    };
    let newly: Vec<&String> = stopped
        .iter()
        .filter(|c| !alerted.stopped.contains(c))
        .collect();
    if !newly.is_empty() {
        app.notifier.send(Event::new(
            EventKind::ContainerLeftStopped,
            "a container mesbak stopped is still stopped",
            format!(
                "container(s) {} could not be started again after a job",
                newly
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "Start it with `docker start NAME` and see `journalctl -u mesbak-agent`.",
        ));
    }
    alerted.stopped = stopped;
    if alerted != before {
        save(app, &alerted);
    }
}

/// Why free space is low where backups go, if it is: less than the floor
/// (`backup.min_free_bytes`) plus the newest backup of the largest kind.
pub fn disk_low(app: &App) -> Option<String> {
    let free = app.storage.free_bytes().ok()?;
    let backups = app.storage.list().unwrap_or_default();
    let largest = crate::commit::next_backup_size(&backups);
    let floor = app.config.backup.min_free_bytes;
    (free < floor.saturating_add(largest)).then(|| {
        format!(
            "only {} is free in {}, less than the {} kept free (backup.min_free_bytes) plus {} for the next backup",
            human_bytes(free),
            app.storage.root().display(),
            human_bytes(floor),
            human_bytes(largest)
        )
    })
}
