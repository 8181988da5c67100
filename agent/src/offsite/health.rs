//! Health per target, a pure function of the configuration, the local
//! backups, what each target holds and the time: a copy that failed and
//! waits in the queue makes the agent **degraded** at once (naming the
//! target and the error) until it is caught up; a target that has lacked a
//! backup for more than `health.max_offsite_lag_hours` makes it
//! **unhealthy**.

use mesbak_interface::{BackupInfo, Health, OffsiteReport};
use time::{Duration, OffsetDateTime};

use super::pitr::Local;
use super::queue::TargetState;
use crate::config::Config;
use crate::health::parse_time;

/// The judgement of every target, plus the agent's problems it causes.
pub struct Assessment {
    pub targets: Vec<OffsiteReport>,
    pub unhealthy: Vec<String>,
    pub degraded: Vec<String>,
}

pub fn assess(
    config: &Config,
    local: &[BackupInfo],
    pitr_local: &Local,
    state_of: impl Fn(&str) -> TargetState,
    now: OffsetDateTime,
) -> Assessment {
    let max_lag = Duration::hours(config.health.max_offsite_lag_hours.into());
    let mut assessment = Assessment {
        targets: Vec::new(),
        unhealthy: Vec::new(),
        degraded: Vec::new(),
    };
    for target in &config.offsite {
        let name = &target.name;
        let state = state_of(name);
        let queue = state.queue(local);
        let newest = state.newest_copy();
        let newest_created = newest.map(|(_, record)| record.created.clone());
        let mut status = Health::Healthy;
        // The target is behind since the oldest backup it lacks that is
        // newer than its newest copy.
        let behind = queue
            .iter()
            .filter(|b| newest_created.as_ref().is_none_or(|n| &b.created > n))
            .filter_map(|b| parse_time(&b.created).map(|t| (b, t)))
            .min_by_key(|(_, t)| *t);
        let failure = state
            .failed
            .iter()
            .filter(|(id, _)| queue.iter().any(|b| &&b.id == id))
            .max_by(|a, b| a.1.last_failed.cmp(&b.1.last_failed));
        // The PITR files: one entry for all WAL files, one per base backup.
        let pitr_failure = state
            .pitr
            .last_failure()
            .filter(|_| state.pitr.queue_length(pitr_local) > 0);
        if let Some((backup, created)) = behind.filter(|(_, t)| now - *t > max_lag) {
            status = Health::Unhealthy;
            assessment.unhealthy.push(format!(
                "off-site target '{name}' is more than {} hours behind: {} (made {}) is not copied there yet{}",
                config.health.max_offsite_lag_hours,
                backup.id,
                created.date(),
                failure
                    .map(|(_, f)| format!(" (last error: {})", f.message))
                    .unwrap_or_default()
            ));
        } else if let Some((id, failed)) = failure {
            status = Health::Degraded;
            assessment.degraded.push(format!(
                "the off-site copy of {id} to '{name}' failed at {} ({} attempt(s)): {}; it is retried (next at {}), or run `mesbakctl offsite sync`",
                failed.last_failed, failed.attempts, failed.message, failed.next_attempt
            ));
        } else if let Some((what, failed)) = pitr_failure {
            status = Health::Degraded;
            let what = if what == "WAL" {
                format!("{} WAL file(s)", state.pitr.queued_wal(pitr_local).len())
            } else {
                format!("base backup {what}")
            };
            assessment.degraded.push(format!(
                "the off-site copy of point-in-time recovery files ({what}) to '{name}' failed at {} ({} attempt(s)): {}; local shipping goes on, the copy is retried (next at {}), or run `mesbakctl offsite sync`",
                failed.last_failed, failed.attempts, failed.message, failed.next_attempt
            ));
        }
        let failure = failure
            .into_iter()
            .chain(pitr_failure)
            .max_by(|a, b| a.1.last_failed.cmp(&b.1.last_failed));
        assessment.targets.push(OffsiteReport {
            name: name.clone(),
            url: target.url.clone(),
            status,
            newest_copy: newest.map(|(id, _)| id.clone()),
            newest_copy_created: newest_created,
            queue_length: (queue.len() + state.pitr.queue_length(pitr_local)) as u64,
            last_error: failure.map(|(_, f)| f.message.clone()),
            last_error_time: failure.map(|(_, f)| f.last_failed.clone()),
            last_success: state.last_success.clone(),
        });
    }
    assessment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsite::config::TargetConfig;
    use crate::offsite::queue::tests::backup;

    fn config() -> Config {
        let mut config = Config::default();
        config.offsite.push(TargetConfig {
            name: "s3".into(),
            url: "s3://bucket/p".into(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            allow_http: false,
            credentials_file: Default::default(),
            require_mount: false,
            bandwidth_limit: None,
        });
        config
    }

    fn no_pitr() -> Local {
        Local {
            bases: Vec::new(),
            wal: Default::default(),
            store: crate::pitr::PitrStore::new(std::path::Path::new("/nonexistent")),
        }
    }

    #[test]
    fn failures_degrade_at_once_and_lag_makes_unhealthy() {
        let config = config();
        let now = parse_time("2026-11-24T12:00:00Z").unwrap();
        let local = vec![
            backup("old", "2026-11-23T00:00:00Z"),
            backup("new", "2026-11-24T00:00:00Z"),
        ];
        let mut state = TargetState::default();
        state.copied(&local[0], 10, 1, 1);
        state.copied(&local[1], 10, 1, 1);
        let all_copied = state.clone();
        let report = assess(&config, &local, &no_pitr(), |_| all_copied.clone(), now);
        assert_eq!(report.targets[0].status, Health::Healthy);
        assert_eq!(report.targets[0].newest_copy.as_deref(), Some("new"));
        assert_eq!(report.targets[0].queue_length, 0);

        state.copied.remove("new");
        let behind_a_bit = state.clone();
        let report = assess(&config, &local, &no_pitr(), |_| behind_a_bit.clone(), now);
        assert_eq!(report.targets[0].status, Health::Healthy);
        assert_eq!(report.targets[0].queue_length, 1);

        state.failed("new", "connection refused", now);
        let failing = state.clone();
        let report = assess(&config, &local, &no_pitr(), |_| failing.clone(), now);
        assert_eq!(report.targets[0].status, Health::Degraded);
        assert!(
            report.degraded[0].contains("'s3'")
                && report.degraded[0].contains("connection refused"),
            "{:?}",
            report.degraded
        );

        let later = now + Duration::hours(15);
        let report = assess(&config, &local, &no_pitr(), |_| failing.clone(), later);
        assert_eq!(report.targets[0].status, Health::Unhealthy);
        assert!(
            report.unhealthy[0].contains("26 hours"),
            "{:?}",
            report.unhealthy
        );
        assert!(report.degraded.is_empty());

        // Nothing copied ever: behind since the oldest backup.
        let report = assess(&config, &local, &no_pitr(), |_| TargetState::default(), now);
        assert_eq!(report.targets[0].status, Health::Unhealthy);
        assert!(
            report.unhealthy[0].contains("old"),
            "{:?}",
            report.unhealthy
        );
    }
}
