//! The database a restore replaced, kept until the operator decides:
//! rolled back (swapped in again) or dropped.

use std::sync::Arc;

use mesbak_interface::Error;

use super::{stamp, stop_writers, swap::swap};
use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::postgres::{MAINTENANCE_DB, catalog, quote_ident};
use crate::state::PreviousDatabase;

/// Puts back the database the last restore replaced.
pub async fn rollback(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let previous = app.state.get().previous_database.ok_or_else(|| {
        Error::NotFound("there is no database kept from a restore to roll back to".into())
    })?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        let server = session.server.clone();
        if !catalog::database_exists(&server, &previous.name).await? {
            return Err(Error::NotFound(format!(
                "the kept database '{}' no longer exists",
                previous.name
            )));
        }
        if let Some(touched) = session.touched() {
            stop_writers(&app, &job, touched).await?;
        }
        let replaced = format!("{}_rolledback_{}", previous.live_name, stamp());
        job.set_stage(format!(
            "putting '{}' back as '{}'",
            previous.name, previous.live_name
        ));
        let live_exists = catalog::database_exists(&server, &previous.live_name).await?;
        swap(
            &server,
            &previous.live_name,
            live_exists.then_some(replaced.as_str()),
            &previous.name,
        )
        .await?;
        app.state.update(|state| {
            state.previous_database = live_exists.then(|| PreviousDatabase {
                name: replaced.clone(),
                live_name: previous.live_name.clone(),
                replaced_at: now_rfc3339(),
                restored_backup: previous.restored_backup.clone(),
            })
        })?;
        Ok(format!(
            "'{}' is live again; the restored database is kept as '{replaced}' (`mesbakctl restore --drop-previous` deletes it)",
            previous.live_name
        ))
    }
    .await;
    session.end(result, String::clone).await
}

/// Drops the database the last restore kept.
pub async fn drop_previous(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let previous = app.state.get().previous_database.ok_or_else(|| {
        Error::NotFound("there is no database kept from a restore to drop".into())
    })?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        job.set_stage(format!("dropping '{}'", previous.name));
        session
            .server
            .execute(
                MAINTENANCE_DB,
                &format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
                    quote_ident(&previous.name)
                ),
            )
            .await?;
        app.state.update(|state| state.previous_database = None)?;
        Ok::<_, Error>(format!("dropped the kept database '{}'", previous.name))
    }
    .await;
    session.end(result, String::clone).await
}
