//! Off-site copies: every good backup (and its metadata) goes to each
//! `[[offsite]]` target — S3 or an S3-compatible store, Azure Blob, or a
//! folder on a mounted share — streamed in constant memory and verified
//! there (read back, SHA-256 compared) before it counts. What failed stays
//! queued and is retried after the next backup, on `mesbakctl offsite sync`
//! and by the agent's retry timer, with backoff. Retention applies there
//! too. A backup never fails because a store is down: health says so.
//!
//! Layout there mirrors the backup folder: `PREFIX/database/<id>`,
//! `PREFIX/database/<id>.json`, `PREFIX/ignition/<id>`, ... so rclone or a
//! cloud console shows the same names, and a plant whose server is gone
//! restores from the target alone (`restore ID --from NAME`).
//!
//! Layout here: `config` the `[[offsite]]` tables and credentials, `store`
//! the one interface over the three kinds (`local` the path target),
//! `queue` what the agent remembers per target, `sync` copying and
//! verifying, `expire` retention there, `read` listing and fetching into
//! the spool for verify / test-restore / restore, `health` and `metrics`.

pub mod config;
mod expire;
pub mod health;
mod local;
pub mod metrics;
pub mod pitr;
pub mod queue;
pub mod read;
pub mod store;
pub mod sync;

use std::path::Path;

use mesbak_interface::BackupKind;

use crate::storage::subdir;
use queue::QueueStore;

/// How often the agent looks for copies past their backoff.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The agent's off-site side: the remembered state and the sync lock.
pub struct Offsite {
    pub queue: QueueStore,
    /// The job id of the sync job that runs now, 0 when none.
    pub sync_job: std::sync::atomic::AtomicU64,
    /// Set when a sync was asked for while one ran (say, by a backup that
    /// finished after the running sync listed the folder): the running
    /// sync then looks again before it ends.
    pub again: std::sync::atomic::AtomicBool,
    running: tokio::sync::Mutex<()>,
}

impl Offsite {
    pub fn new(state_dir: &Path) -> Offsite {
        Offsite {
            queue: QueueStore::open(state_dir),
            sync_job: std::sync::atomic::AtomicU64::new(0),
            again: std::sync::atomic::AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// One sync at a time (copies of the same backup must not race).
    async fn lock_sync(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }
}

/// Key of a backup's data on a target.
pub fn data_key(kind: BackupKind, id: &str) -> String {
    format!("{}/{id}", subdir(kind))
}

/// Key of a backup's metadata on a target.
pub fn metadata_key(kind: BackupKind, id: &str) -> String {
    format!("{}/{id}.json", subdir(kind))
}
