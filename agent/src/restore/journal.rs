//! The restore's crash journal (`state_dir/restore.json`): the database a
//! restore or test restore created, recorded before it is created and
//! removed only once it is dropped or swapped in. After a crash the next
//! start (or the next restore) drops it, or, when the swap had committed,
//! records the database it kept.

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::jobs::now_rfc3339;
use crate::kept;
use crate::persist::Record;
use crate::postgres::{MAINTENANCE_DB, Server, catalog, quote_ident};
use crate::state::KeptRecord;

const FILE: &str = "restore.json";

/// A database the agent created and must drop if it is interrupted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InProgress {
    /// The scratch or new database.
    pub database: String,
    /// For a restore: the name the live database gets at the swap.
    pub previous_name: Option<String>,
    pub live_name: String,
    pub backup: String,
}

fn record(app: &App) -> Record<InProgress> {
    Record::new(&app.config.state_dir, FILE, "the restore journal")
}

/// Records `record` (before its database is created) or clears the record.
pub fn save(app: &App, in_progress: Option<&InProgress>) -> Result<(), Error> {
    let journal = record(app);
    match in_progress {
        None => journal.remove(),
        Some(in_progress) => journal.write(in_progress).map_err(|err| {
            Error::from_kind(
                err.kind(),
                format!("{}; nothing was changed", err.message()),
            )
        }),
    }
}

/// Whether a restore or test restore was cut short and left work behind.
pub fn interrupted(app: &App) -> bool {
    record(app).path().exists()
}

/// Drops a database the agent made and clears the record. On failure the
/// record stays, so the next start or restore drops it.
pub async fn drop_database(app: &App, server: &Server, name: &str) -> Result<(), Error> {
    let statement = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
        quote_ident(name)
    );
    match server.execute(MAINTENANCE_DB, &statement).await {
        Ok(_) => save(app, None),
        Err(err) => {
            tracing::error!(database = name, error = %err.message(), "could not drop a database the agent created; retrying at the next start");
            Ok(())
        }
    }
}

/// Cleans up after a restore or test restore that was cut short: drops
/// its database, or, when the swap had happened, records the kept one.
pub async fn recover(app: &App, server: &Server) -> Result<(), Error> {
    let record = match record(app).read_or_set_aside()? {
        (Some(record), None) => record,
        (_, Some(problem)) => {
            // It may name a database the agent made; a person decides.
            app.add_problem(format!(
                "{problem}; a restore or test restore was cut short and the database it was creating (named in the copy) may still be on the server: drop it if it is there, then delete the copy"
            ));
            return Ok(());
        }
        (None, None) => return Ok(()),
    };
    let cleanup = async {
        if catalog::database_exists(server, &record.database).await? {
            tracing::warn!(database = %record.database, backup = %record.backup, "dropping the database of an interrupted restore");
            server
                .execute(
                    MAINTENANCE_DB,
                    &format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
                        quote_ident(&record.database)
                    ),
                )
                .await?;
        } else if let Some(previous) = &record.previous_name {
            if catalog::database_exists(server, previous).await? {
                tracing::warn!(database = %previous, backup = %record.backup, "an interrupted restore had swapped; keeping the replaced database for rollback");
                let size_bytes = catalog::database_size(server, previous).await.unwrap_or(0);
                kept::record_restore(
                    app,
                    KeptRecord {
                        name: previous.clone(),
                        live_name: record.live_name.clone(),
                        replaced_at: now_rfc3339(),
                        restored_backup: record.backup.clone(),
                        size_bytes,
                    },
                )?;
            }
        }
        save(app, None)
    };
    cleanup.await.map_err(|err: Error| {
        Error::from_kind(
            err.kind(),
            format!(
                "the database '{}' of an interrupted restore could not be cleaned up: {}",
                record.database,
                err.message()
            ),
        )
    })
}
