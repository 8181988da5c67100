//! Restore, rollback and test restore of the database.

use std::sync::Arc;

use mesbak_interface::{BackupKind, Error, RestoreOptions};

use crate::app::App;
use crate::jobs::Job;
use crate::storage::BackupRef;

fn not_yet() -> Error {
    Error::Failed("restores are not available in this build yet".into())
}

pub async fn run(
    _app: Arc<App>,
    _job: Arc<Job>,
    _backup: BackupRef,
    _options: RestoreOptions,
) -> Result<String, Error> {
    Err(not_yet())
}

pub async fn rollback(_app: Arc<App>, _job: Arc<Job>) -> Result<String, Error> {
    Err(not_yet())
}

pub async fn drop_previous(_app: Arc<App>, _job: Arc<Job>) -> Result<String, Error> {
    Err(not_yet())
}

/// The backup a test restore uses: the one named, else the newest database backup.
pub fn pick_test_restore_backup(app: &App, given: &str, is_root: bool) -> Result<BackupRef, Error> {
    if !given.is_empty() {
        let found = app.storage.resolve(given, is_root)?;
        if found.kind != BackupKind::Database {
            return Err(Error::InvalidArgument(format!(
                "{} is not a database backup; test restores check database backups",
                found.id
            )));
        }
        return Ok(found);
    }
    let newest = app
        .storage
        .list()?
        .into_iter()
        .find(|b| b.kind == BackupKind::Database)
        .ok_or_else(|| {
            Error::NotFound(
                "there is no database backup to test yet; run `mesbakctl backup database` first"
                    .into(),
            )
        })?;
    app.storage.resolve(&newest.id, is_root)
}

pub async fn test_restore(
    _app: Arc<App>,
    _job: Arc<Job>,
    _backup: BackupRef,
) -> Result<String, Error> {
    Err(not_yet())
}
