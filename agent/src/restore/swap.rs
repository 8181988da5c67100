//! The swap: the only moment a restore changes what is live. Both names
//! change in one transaction, after ending the sessions on both databases
//! (TimescaleDB's background workers hold one on each database with the
//! extension, and PostgreSQL renames only a database nobody uses); the
//! workers are started again afterwards.

use std::time::Duration;

use mesbak_interface::Error;

use crate::postgres::{MAINTENANCE_DB, Server, catalog, quote_ident, quote_literal, timescale};

/// Attempts before giving up: a session ends asynchronously after it is
/// terminated, and a worker may reconnect in between.
const ATTEMPTS: u32 = 20;

/// Renames `live` to `previous` (when it exists) and `new` to `live` in one
/// transaction. On failure nothing changed.
pub async fn swap(
    server: &Server,
    live: &str,
    previous: Option<&str>,
    new: &str,
) -> Result<(), Error> {
    let mut busy = vec![quote_literal(new)];
    let mut renames = String::new();
    if let Some(previous) = previous {
        busy.push(quote_literal(live));
        renames.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            quote_ident(live),
            quote_ident(previous)
        ));
    }
    renames.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {};\n",
        quote_ident(new),
        quote_ident(live)
    ));
    let script = format!(
        "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity \
         WHERE datname IN ({}) AND pid <> pg_catalog.pg_backend_pid();\n\
         SELECT pg_catalog.pg_sleep(0.2);\n\
         BEGIN;\n{renames}COMMIT;\n",
        busy.join(", ")
    );
    let mut last_error = String::new();
    for _ in 0..ATTEMPTS {
        match server.execute(MAINTENANCE_DB, &script).await {
            Ok(_) => {
                restart_timescale_workers(server, live).await;
                return Ok(());
            }
            // psql stops at the failed rename; its session's transaction
            // is rolled back when it exits. Unless the answer was lost
            // after the commit: then the new database is gone.
            Err(err) => {
                if matches!(catalog::database_exists(server, new).await, Ok(false)) {
                    restart_timescale_workers(server, live).await;
                    return Ok(());
                }
                last_error = err.message();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart_timescale_workers(server, live).await;
    Err(Error::Database(format!(
        "cannot switch '{live}' to the restored copy ({last_error}); the live database was not changed"
    )))
}

/// The swap ended TimescaleDB's background workers; they are started again
/// from `database` when it has the extension. A failure is only logged:
/// the server starts them at its next restart.
async fn restart_timescale_workers(server: &Server, database: &str) {
    let installed = match timescale::installed(server, database).await {
        Ok(installed) => installed,
        Err(_) => return,
    };
    if installed.is_some() {
        if let Err(err) = timescale::restart_workers(server, database).await {
            tracing::warn!(database, error = %err.message(), "could not restart TimescaleDB's background workers; they start again with the server");
        }
    }
}
