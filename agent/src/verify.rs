//! The verify job: authenticate every chunk of a backup and check its gzip
//! or zstd stream, without writing anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mesbak_interface::Error;

use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::BackupReader;
use crate::state::FailureRecord;
use crate::storage::{BackupRef, human_bytes};

/// Reads the whole file; Ok only when every chunk authenticated and the
/// payload decompressed.
pub async fn check(app: &App, job: &Job, backup: &BackupRef) -> Result<u64, Error> {
    let key = app.key()?;
    let file = backup.open()?;
    let size = file
        .metadata()
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", backup.path.display())))?
        .len();
    job.reset_bytes(size);
    job.set_stage(format!("authenticating {}", backup.id));
    let mut reader = BackupReader::start(
        backup.id.clone(),
        file,
        key,
        Some(backup.compression),
        job.bytes_done.clone(),
    );
    loop {
        tokio::select! {
            block = reader.blocks.recv() => if block.is_none() { break },
            _ = job.cancelled() => return Err(job.cancelled_error("nothing was changed")),
        }
    }
    let plain = reader.finish().await?;
    job.bytes_done.store(size, Ordering::Relaxed);
    Ok(plain)
}

pub async fn run(app: Arc<App>, job: Arc<Job>, backup: BackupRef) -> Result<String, Error> {
    let result = check(&app, &job, &backup).await;
    remember_damage(&app, &backup, &result)?;
    let plain = result?;
    Ok(format!(
        "backup {} is intact: every chunk authenticated, {} of payload",
        backup.id,
        human_bytes(plain)
    ))
}

/// Remembers a backup of the backup folder that failed authentication, so
/// retention no longer counts it as good, and forgets it once it verifies.
fn remember_damage(
    app: &App,
    backup: &BackupRef,
    result: &Result<u64, Error>,
) -> Result<(), Error> {
    if backup.handed.is_some() || backup.path != app.storage.dir(backup.kind).join(&backup.id) {
        return Ok(());
    }
    match result {
        Err(Error::Integrity(message)) => app.state.update(|state| {
            state.damaged.insert(
                backup.id.clone(),
                FailureRecord {
                    time: now_rfc3339(),
                    message: message.clone(),
                },
            );
        }),
        Ok(_) if app.state.get().damaged.contains_key(&backup.id) => app.state.update(|state| {
            state.damaged.remove(&backup.id);
        }),
        _ => Ok(()),
    }
}
