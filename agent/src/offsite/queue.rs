//! What the agent knows of each target between runs
//! (`state_dir/offsite.json`): the backups verified there, the copies that
//! failed and wait for their retry (with backoff), and counters for the
//! metrics. The queue of a target is every good local backup it does not
//! hold yet; those that failed carry their attempts and last error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use mesbak_interface::{BackupInfo, BackupKind, Error};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::health::parse_time;
use crate::jobs::now_rfc3339;
use crate::persist::Record;

/// The first retry waits this long; each further one twice as long...
const FIRST_RETRY: Duration = Duration::minutes(1);
/// ...up to this.
const LONGEST_RETRY: Duration = Duration::hours(1);

/// A backup verified on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub kind: BackupKind,
    /// The backup's creation time (RFC 3339).
    pub created: String,
    pub sha256: String,
    pub size: u64,
    /// When the copy was verified there.
    pub copied_at: String,
}

/// A copy that failed and waits for its retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCopy {
    pub attempts: u32,
    pub last_failed: String,
    /// Not retried by the timer before this (a sync on request or after a
    /// backup retries at once).
    pub next_attempt: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetState {
    pub copied: BTreeMap<String, CopyRecord>,
    pub failed: BTreeMap<String, FailedCopy>,
    /// When the last copy was verified there.
    pub last_success: Option<String>,
    pub copies_total: u64,
    pub failures_total: u64,
    pub bytes_total: u64,
    /// Duration of the last copy (upload and verification) and of its
    /// verification alone, for the metrics.
    pub last_copy_ms: u64,
    pub last_verify_ms: u64,
    /// The point-in-time recovery files there (see `super::pitr`).
    pub pitr: super::pitr::PitrCopies,
}

impl TargetState {
    /// The newest backup verified there.
    pub fn newest_copy(&self) -> Option<(&String, &CopyRecord)> {
        self.copied
            .iter()
            .max_by(|a, b| a.1.created.cmp(&b.1.created))
    }

    /// Good local backups this target does not hold yet, newest first (the
    /// newest restore point matters most off-site).
    pub fn queue<'b>(&self, local: &'b [BackupInfo]) -> Vec<&'b BackupInfo> {
        let mut queue: Vec<&BackupInfo> = local
            .iter()
            .filter(|b| is_good(b) && !self.copied.contains_key(&b.id))
            .collect();
        queue.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        queue
    }

    /// Records a verified copy.
    pub fn copied(&mut self, backup: &BackupInfo, bytes: u64, copy_ms: u64, verify_ms: u64) {
        self.failed.remove(&backup.id);
        self.copied.insert(
            backup.id.clone(),
            CopyRecord {
                kind: backup.kind,
                created: backup.created.clone(),
                sha256: backup.sha256.clone(),
                size: backup.size_bytes,
                copied_at: now_rfc3339(),
            },
        );
        self.last_success = Some(now_rfc3339());
        self.copies_total += 1;
        self.bytes_total += bytes;
        self.last_copy_ms = copy_ms;
        self.last_verify_ms = verify_ms;
    }

    /// Records a failed attempt at `id` and when the timer retries it.
    pub fn failed(&mut self, id: &str, message: &str, now: OffsetDateTime) {
        let failure = next_failure(self.failed.get(id), message, now);
        self.failed.insert(id.to_owned(), failure);
        self.failures_total += 1;
    }

    /// Counts a verified copy of a PITR file (no per-file record).
    pub fn record_copy(&mut self, bytes: u64) {
        self.last_success = Some(now_rfc3339());
        self.copies_total += 1;
        self.bytes_total += bytes;
    }

    /// Whether the timer should try `id` now.
    pub fn due(&self, id: &str, now: OffsetDateTime) -> bool {
        self.failed
            .get(id)
            .and_then(|f| parse_time(&f.next_attempt))
            .is_none_or(|next| next <= now)
    }

    /// Forgets failures of backups that are no longer local (retention
    /// deleted them), so they do not hold the status down.
    pub fn forget_missing(&mut self, local: &[BackupInfo]) {
        self.failed
            .retain(|id, _| local.iter().any(|backup| &backup.id == id));
    }

    /// The failure to report: the most recent one.
    pub fn last_failure(&self) -> Option<(&String, &FailedCopy)> {
        self.failed
            .iter()
            .max_by(|a, b| a.1.last_failed.cmp(&b.1.last_failed))
    }
}

/// The failure after `previous`: one more attempt, the wait doubled.
pub fn next_failure(
    previous: Option<&FailedCopy>,
    message: &str,
    now: OffsetDateTime,
) -> FailedCopy {
    let attempts = previous.map_or(0, |f| f.attempts) + 1;
    let wait = FIRST_RETRY
        .checked_mul(1 << (attempts - 1).min(10))
        .unwrap_or(LONGEST_RETRY)
        .min(LONGEST_RETRY);
    FailedCopy {
        attempts,
        last_failed: format_time(now),
        next_attempt: format_time(now + wait),
        message: message.to_owned(),
    }
}

/// A backup with metadata (written completely by the agent) counts as good.
pub fn is_good(backup: &BackupInfo) -> bool {
    !backup.sha256.is_empty()
}

fn format_time(time: OffsetDateTime) -> String {
    time.replace_nanosecond(0)
        .unwrap_or(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `state_dir/offsite.json`, one entry per target name.
pub struct QueueStore {
    record: Record<BTreeMap<String, TargetState>>,
    state: Mutex<BTreeMap<String, TargetState>>,
    problems: Vec<String>,
}

impl QueueStore {
    /// Opens the off-site state. An unreadable file is kept aside and
    /// reported; the next sync finds out again what each target holds
    /// (what is there and verified is never copied twice).
    pub fn open(state_dir: &Path) -> QueueStore {
        let record = Record::new(state_dir, "offsite.json", "the off-site state");
        let (state, problems) = match record.read_or_set_aside() {
            Ok((state, None)) => (state.unwrap_or_default(), Vec::new()),
            Ok((_, Some(problem))) => (
                BTreeMap::new(),
                vec![format!(
                    "{problem}; the agent started with an empty off-site state (the next sync looks again at what each target holds): look at the copy, then delete it"
                )],
            ),
            Err(err) => (BTreeMap::new(), vec![err.message().to_owned()]),
        };
        QueueStore {
            record,
            state: Mutex::new(state),
            problems,
        }
    }

    /// What was wrong with the file at start.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn get(&self, target: &str) -> TargetState {
        self.state
            .lock()
            .expect("offsite state lock")
            .get(target)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes one target's state and saves the whole file.
    pub fn update<T>(
        &self,
        target: &str,
        change: impl FnOnce(&mut TargetState) -> T,
    ) -> Result<T, Error> {
        let mut state = self.state.lock().expect("offsite state lock");
        let result = change(state.entry(target.to_owned()).or_default());
        self.record.write(&state)?;
        Ok(result)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A good database backup made at `created`.
    pub fn backup(id: &str, created: &str) -> BackupInfo {
        BackupInfo {
            created: created.into(),
            size_bytes: 10,
            sha256: "ab".into(),
            ..BackupInfo::new(id, BackupKind::Database)
        }
    }

    #[test]
    fn queue_is_what_is_missing_newest_first_and_retries_back_off() {
        let local = vec![
            backup("a", "2026-11-20T00:00:00Z"),
            backup("b", "2026-11-22T00:00:00Z"),
            backup("c", "2026-11-21T00:00:00Z"),
        ];
        let mut state = TargetState::default();
        state.copied(&local[2], 10, 1, 1);
        let queue: Vec<&str> = state.queue(&local).iter().map(|b| b.id.as_str()).collect();
        assert_eq!(queue, vec!["b", "a"]);

        let now = parse_time("2026-11-22T01:00:00Z").unwrap();
        state.failed("b", "store down", now);
        assert!(!state.due("b", now));
        assert!(state.due("b", now + Duration::minutes(1)));
        state.failed("b", "store down", now);
        state.failed("b", "store down", now);
        assert!(!state.due("b", now + Duration::minutes(3)));
        assert!(state.due("b", now + Duration::minutes(4)));
        for _ in 0..20 {
            state.failed("b", "store down", now);
        }
        assert!(state.due("b", now + LONGEST_RETRY));
        assert_eq!(state.last_failure().unwrap().1.attempts, 23);

        state.copied(&local[1], 10, 1, 1);
        assert!(state.failed.is_empty());
        assert_eq!(state.newest_copy().unwrap().0, "b");
        state.failed("a", "x", now);
        state.forget_missing(&local[1..]);
        assert!(state.failed.is_empty());
    }
}
