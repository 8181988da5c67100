//! Alerts to `[notify] urls`: failed backups and test restores, health
//! turning degraded or unhealthy (judged on the agent's own timer, so a
//! backup that never ran alerts too), off-site copies falling behind, low
//! disk, a container left stopped.
//!
//! Sending never blocks or fails a job: events go into a bounded queue and a
//! worker task delivers each to every target, retrying with back-off. URL
//! secrets (passwords, tokens in paths and queries) are never logged: only
//! [`Target::describe`] is.
//!
//! Layout: `target` the URL grammar, `event` what is said, `http` generic
//! JSON / healthchecks / ntfy delivery (reqwest), `smtp` mail (lettre),
//! `watch` the timer that judges health, disk and containers.

mod event;
mod http;
mod smtp;
mod target;
mod watch;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

pub use event::{Event, EventKind};
pub use target::{SmtpEncryption, SmtpTarget, Target};
pub use watch::spawn_watch;

use crate::config::{Config, ConfigError};

/// Events waiting for delivery; more are dropped (and logged), never waited for.
const QUEUE: usize = 256;
/// Waits between delivery attempts of one event to one target.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// Parses every `notify.urls` entry; the error names the file, the key and
/// the entry's place, never its secrets.
pub fn targets(config: &Config) -> Result<Vec<Target>, ConfigError> {
    config
        .notify
        .urls
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Target::parse(text).map_err(|message| ConfigError::Invalid {
                path: config.origin.clone(),
                key: format!("notify.urls[{i}]"),
                message: format!("the URL {message}"),
            })
        })
        .collect()
}

/// The agent's side of alerting: cheap to call from anywhere.
#[derive(Default)]
pub struct Notifier {
    sender: Mutex<Option<mpsc::Sender<Event>>>,
}

impl Notifier {
    /// Starts the delivery worker for `targets` (none: events are dropped).
    /// Must be called inside the runtime.
    pub fn start(&self, targets: Vec<Target>) {
        if targets.is_empty() {
            return;
        }
        for target in &targets {
            tracing::info!(target = %target.describe(), "alerts go to this target");
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(deliver_all(targets, receiver));
        *self.sender.lock().expect("notifier lock") = Some(sender);
    }

    /// Queues `event`; never waits.
    pub fn send(&self, event: Event) {
        let sender = self.sender.lock().expect("notifier lock").clone();
        let Some(sender) = sender else {
            return;
        };
        tracing::info!(event = event.kind.name(), what = %event.what, "alert");
        if let Err(err) = sender.try_send(event) {
            tracing::warn!(error = %err, "the alert queue is full; an alert was dropped");
        }
    }
}

async fn deliver_all(targets: Vec<Target>, mut receiver: mpsc::Receiver<Event>) {
    let client = match http::client() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "alerts cannot be sent: no HTTP client");
            return;
        }
    };
    while let Some(event) = receiver.recv().await {
        for target in &targets {
            if !event.goes_to(target) {
                continue;
            }
            let target = target.clone();
            let event = event.clone();
            let client = client.clone();
            // Each delivery retries on its own: a dead target delays nobody.
            tokio::spawn(async move {
                deliver_with_retries(&client, &target, &event, &RETRY_DELAYS).await;
            });
        }
    }
}

/// Delivers `event` to `target`, retrying after each of `delays`. Returns
/// whether it arrived.
pub async fn deliver_with_retries(
    client: &reqwest::Client,
    target: &Target,
    event: &Event,
    delays: &[Duration],
) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match deliver(client, target, event).await {
            Ok(()) => {
                tracing::info!(target = %target.describe(), event = event.kind.name(), attempt, "alert delivered");
                return true;
            }
            Err(err) => match delays.get(attempt - 1) {
                Some(delay) => {
                    tracing::warn!(target = %target.describe(), event = event.kind.name(), attempt, error = %err, retry_in_s = delay.as_secs(), "alert not delivered; retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    tracing::error!(target = %target.describe(), event = event.kind.name(), attempt, error = %err, "alert not delivered; giving up");
                    return false;
                }
            },
        }
    }
}

async fn deliver(client: &reqwest::Client, target: &Target, event: &Event) -> Result<(), String> {
    match target {
        Target::Smtp(smtp) => smtp::send(smtp, event).await,
        other => http::send(client, other, event).await,
    }
}

/// For `mesbak-agent --notify-failure UNIT` (systemd `OnFailure=`): sends
/// one event to every target with a few quick retries, without the daemon.
/// Returns how many targets got it, of how many.
pub async fn send_now(targets: &[Target], event: &Event) -> Result<(usize, usize), String> {
    let client = http::client()?;
    let delays = [Duration::from_secs(1), Duration::from_secs(5)];
    let mut delivered = 0;
    let mut wanted = 0;
    for target in targets.iter().filter(|t| event.goes_to(t)) {
        wanted += 1;
        if deliver_with_retries(&client, target, event, &delays).await {
            delivered += 1;
        }
    }
    Ok((delivered, wanted))
}

/// This host's name, as alerts say it.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}
