//! The databases restores replaced, kept until the operator decides: the
//! newest one rolled back (swapped in again, once: a rollback is not a
//! toggle) or any of them dropped by name. The list itself is `kept`.

use std::sync::Arc;

use mesbak_interface::{Error, KeptDatabase};

use super::{stamp, stop_writers, swap::swap};
use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::kept;
use crate::postgres::{MAINTENANCE_DB, Server, catalog, quote_ident};
use crate::state::KeptRecord;

/// Puts back the database the newest restore replaced; the restored one is
/// kept in turn, and no second rollback follows.
pub async fn rollback(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let target = kept::rollback_target(&app)?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        let server = session.server.clone();
        if !catalog::database_exists(&server, &target.name).await? {
            reconcile(&app, &server).await;
            return Err(Error::NotFound(format!(
                "the kept database '{}' no longer exists on the server; nothing was changed",
                target.name
            )));
        }
        job.check_cancel("nothing was changed")?;
        if let Some(touched) = session.touched() {
            stop_writers(&app, &job, touched).await?;
        }
        let live = &target.live_name;
        let replaced = format!("{live}_rolledback_{}", stamp());
        job.commit(
            format!("'{}' is being switched back in", target.name),
            "nothing was changed",
        )?;
        job.set_stage(format!("putting '{}' back as '{live}'", target.name));
        let live_exists = catalog::database_exists(&server, live).await?;
        swap(
            &server,
            live,
            live_exists.then_some(replaced.as_str()),
            &target.name,
        )
        .await?;
        let size_bytes = if live_exists {
            catalog::database_size(&server, &replaced).await.unwrap_or(0)
        } else {
            0
        };
        kept::record_rollback(
            &app,
            &target.name,
            live_exists.then(|| KeptRecord {
                name: replaced.clone(),
                live_name: live.clone(),
                replaced_at: now_rfc3339(),
                restored_backup: target.restored_backup.clone(),
                size_bytes,
            }),
            &now_rfc3339(),
        )?;
        tracing::info!(job = job.id, database = %target.name, live = %live, "rolled back");
        Ok(if live_exists {
            format!(
                "'{}' is live again as '{live}' (as before the restore of {}); the restored data is kept as '{replaced}' (`mesbakctl restore --drop-previous {replaced}` deletes it). A rollback is not repeated: restore a backup to change '{live}' again",
                target.name, target.restored_backup
            )
        } else {
            format!("'{}' is live again as '{live}'", target.name)
        })
    }
    .await;
    session.end(result, String::clone).await
}

/// Drops one kept database.
pub async fn drop_previous(
    app: Arc<App>,
    job: Arc<Job>,
    kept: KeptDatabase,
) -> Result<String, Error> {
    // Never the live database, never a name the agent did not make.
    if kept.name == app.config.database.name || !kept::is_kept_name(&kept.live_name, &kept.name) {
        return Err(Error::InvalidArgument(format!(
            "'{}' is not a database mesbak kept; it is not dropped",
            kept.name
        )));
    }
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        job.commit(
            format!("'{}' is being dropped", kept.name),
            "nothing was changed",
        )?;
        job.set_stage(format!("dropping '{}'", kept.name));
        session
            .server
            .execute(
                MAINTENANCE_DB,
                &format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
                    quote_ident(&kept.name)
                ),
            )
            .await?;
        kept::record_dropped(&app, &kept.name)?;
        reconcile(&app, &session.server).await;
        tracing::info!(job = job.id, database = %kept.name, "dropped a kept database");
        Ok::<_, Error>(format!(
            "dropped the kept database '{}'{}",
            kept.name,
            if kept.rollback_target {
                "; the newest restore can no longer be rolled back"
            } else {
                ""
            }
        ))
    }
    .await;
    session.end(result, String::clone).await
}

/// Brings the kept list in line with the server (sizes, databases gone,
/// ones the agent lost track of). Best effort: the list stays as it was on
/// failure.
pub async fn reconcile(app: &App, server: &Server) {
    let live = &app.config.database.name;
    let mut found = Vec::new();
    for infix in ["_previous_", "_rolledback_"] {
        match catalog::databases_like(server, &format!("{live}{infix}")).await {
            Ok(names) => found.extend(names),
            Err(err) => {
                tracing::warn!(error = %err.message(), "cannot list the kept databases");
                return;
            }
        }
    }
    let mut sizes = Vec::new();
    for name in found {
        let size = catalog::database_size(server, &name).await.unwrap_or(0);
        sizes.push((name, size));
    }
    if let Err(err) = kept::reconcile(app, live, &sizes) {
        tracing::warn!(error = %err.message(), "cannot record the kept databases");
    }
}
