//! Retention on a target, with the same rules as in the backup folder
//! (`retention::plan`) applied to the copies verified there: run only after
//! a successful copy, never taking the newest good copy of a kind. The
//! metadata goes first, so a half-deleted copy no longer counts.

use mesbak_interface::{BackupInfo, Error};
use time::OffsetDateTime;

use super::store::Target;
use super::{data_key, metadata_key};
use crate::app::App;
use crate::jobs::Job;
use crate::retention;

/// Deletes the expired copies on `target`; returns their ids.
pub async fn run(app: &App, job: &Job, target: &Target) -> Result<Vec<String>, Error> {
    let name = &target.name;
    let held: Vec<BackupInfo> = app
        .offsite
        .queue
        .get(name)
        .copied
        .iter()
        .map(|(id, record)| BackupInfo {
            created: record.created.clone(),
            size_bytes: record.size,
            sha256: record.sha256.clone(),
            ..BackupInfo::new(id.clone(), record.kind)
        })
        .collect();
    let expired = retention::plan(&held, app.config.retention.days, OffsetDateTime::now_utc());
    let mut deleted = Vec::new();
    for backup in expired {
        job.set_stage(format!(
            "retention: deleting {} on off-site target '{name}'",
            backup.id
        ));
        target
            .delete(&metadata_key(backup.kind, &backup.id))
            .await?;
        app.offsite.queue.update(name, |state| {
            state.copied.remove(&backup.id);
        })?;
        target.delete(&data_key(backup.kind, &backup.id)).await?;
        tracing::info!(job = job.id, target_name = %name, file = %backup.id, "retention deleted an off-site copy");
        deleted.push(backup.id);
    }
    Ok(deleted)
}
