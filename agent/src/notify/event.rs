//! What an alert says: the host, what happened, the one-sentence reason and
//! what to do.

use serde::Serialize;

use super::Target;
use crate::jobs::now_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    BackupStarted,
    BackupSucceeded,
    BackupFailed,
    TestRestoreFailed,
    HealthDegraded,
    HealthUnhealthy,
    HealthRecovered,
    OffsiteBehind,
    DiskLow,
    ContainerLeftStopped,
    /// A mesbak unit failed (systemd `OnFailure=`, sent without the agent).
    UnitFailed,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::BackupStarted => "backup-started",
            EventKind::BackupSucceeded => "backup-succeeded",
            EventKind::BackupFailed => "backup-failed",
            EventKind::TestRestoreFailed => "test-restore-failed",
            EventKind::HealthDegraded => "health-degraded",
            EventKind::HealthUnhealthy => "health-unhealthy",
            EventKind::HealthRecovered => "health-recovered",
            EventKind::OffsiteBehind => "offsite-behind",
            EventKind::DiskLow => "disk-low",
            EventKind::ContainerLeftStopped => "container-left-stopped",
            EventKind::UnitFailed => "unit-failed",
        }
    }

    /// `ok`, `start`, `warning` or `failure`.
    pub fn status(self) -> &'static str {
        match self {
            EventKind::BackupStarted => "start",
            EventKind::BackupSucceeded | EventKind::HealthRecovered => "ok",
            EventKind::HealthDegraded | EventKind::OffsiteBehind | EventKind::DiskLow => "warning",
            EventKind::BackupFailed
            | EventKind::TestRestoreFailed
            | EventKind::HealthUnhealthy
            | EventKind::ContainerLeftStopped
            | EventKind::UnitFailed => "failure",
        }
    }
}

/// One alert. Serialised as the generic webhook's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub host: String,
    #[serde(rename = "event")]
    pub kind: EventKind,
    pub status: &'static str,
    /// The whole text: host, what happened, why, what to do.
    pub message: String,
    /// What happened, short (a mail's subject).
    pub what: String,
    /// Why, in one sentence.
    pub reason: String,
    /// What to do about it.
    pub action: String,
    /// The backup concerned, if any.
    pub backup: Option<String>,
    /// RFC 3339.
    pub time: String,
}

impl Event {
    pub fn new(
        kind: EventKind,
        what: impl Into<String>,
        reason: impl Into<String>,
        action: impl Into<String>,
    ) -> Event {
        let host = super::host_name();
        let what = what.into();
        let reason = reason.into();
        let action = action.into();
        let mut message = format!("{host}: {what}");
        if !reason.is_empty() {
            message.push_str(&format!(": {}", reason.trim_end_matches('.')));
        }
        message.push('.');
        if !action.is_empty() {
            message.push_str(&format!(" {action}"));
        }
        Event {
            host,
            kind,
            status: kind.status(),
            message,
            what,
            reason,
            action,
            backup: None,
            time: now_rfc3339(),
        }
    }

    /// For the off-site copies: `target` has fallen behind, because `reason`.
    pub fn offsite_behind(target: &str, reason: impl Into<String>) -> Event {
        Event::new(
            EventKind::OffsiteBehind,
            format!("off-site copies to '{target}' are behind"),
            reason,
            "Check the target's reachability and credentials; `mesbakctl offsite sync` retries now.",
        )
    }

    pub fn with_backup(mut self, backup: Option<String>) -> Event {
        self.backup = backup.filter(|b| !b.is_empty());
        self
    }

    /// Healthchecks pings start, success and failure of backups (and the
    /// agent's own verdict); the others get everything worth a look.
    pub fn goes_to(&self, target: &Target) -> bool {
        match target {
            Target::Healthchecks { .. } => matches!(
                self.kind,
                EventKind::BackupStarted
                    | EventKind::BackupSucceeded
                    | EventKind::BackupFailed
                    | EventKind::HealthUnhealthy
                    | EventKind::HealthRecovered
                    | EventKind::UnitFailed
            ),
            _ => !matches!(
                self.kind,
                EventKind::BackupStarted | EventKind::BackupSucceeded
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_says_host_what_why_and_what_to_do() {
        let event = Event::new(
            EventKind::BackupFailed,
            "the database backup failed",
            "pg_dump could not connect.",
            "Check `journalctl -u mesbak-agent`.",
        );
        assert!(event.message.starts_with(&event.host));
        assert!(event.message.ends_with(
            "the database backup failed: pg_dump could not connect. Check `journalctl -u mesbak-agent`."
        ));
        let json = serde_json::to_value(&event).unwrap();
        for key in ["host", "event", "status", "message", "backup", "time"] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["event"], "backup-failed");
        assert_eq!(json["status"], "failure");
    }
}
