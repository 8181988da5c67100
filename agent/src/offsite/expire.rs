//! Retention on a target, with the same rules as in the backup folder
//! (`retention::plan`) applied to the copies verified there: run only after
//! a successful copy, never taking the newest good copy of a kind. The
//! metadata goes first, so a half-deleted copy no longer counts.

use mesbak_interface::{BackupKind, Error};
use time::OffsetDateTime;

use super::store::Target;
use super::{data_key, metadata_key};
use crate::app::App;
use crate::jobs::Job;
use crate::retention;
use crate::trust::parse_time;

/// Deletes the expired copies on `target`; returns their ids.
pub async fn run(app: &App, job: &Job, target: &Target) -> Result<Vec<String>, Error> {
    let name = &target.name;
    let copied = app.offsite.queue.get(name).copied;
    // Every copy there was verified when it was made: all are good.
    let candidates: Vec<retention::Candidate> = copied
        .iter()
        .map(|(id, record)| retention::Candidate {
            id: id.clone(),
            series: record.kind.as_str().to_owned(),
            created: parse_time(&record.created),
            flaw: None,
        })
        .collect();
    let plan = retention::plan(
        &candidates,
        &retention::Policy::from(&app.config.retention),
        OffsetDateTime::now_utc(),
        retention::Run::Automatic,
    );
    for (series, why) in &plan.held_back {
        job.warn(format!("off-site target '{name}', {series}: {why}"));
    }
    let expired: Vec<(String, BackupKind)> = plan
        .deletions()
        .filter_map(|d| copied.get(&d.id).map(|record| (d.id.clone(), record.kind)))
        .collect();
    let mut deleted = Vec::new();
    for (id, kind) in expired {
        job.set_stage(format!(
            "retention: deleting {id} on off-site target '{name}'"
        ));
        target.delete(&metadata_key(kind, &id)).await?;
        app.offsite.queue.update(name, |state| {
            state.copied.remove(&id);
        })?;
        target.delete(&data_key(kind, &id)).await?;
        tracing::info!(job = job.id, target_name = %name, file = %id, "retention deleted an off-site copy");
        deleted.push(id);
    }
    Ok(deleted)
}
