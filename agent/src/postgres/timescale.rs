//! TimescaleDB, following Timescale's logical backup procedure: the
//! extension version is recorded with the backup; the restore creates that
//! same version in the new database, loads the dump between
//! `timescaledb_pre_restore()` and `timescaledb_post_restore()`, then updates
//! the extension where the server's is newer; a version the server cannot
//! provide is refused before anything is touched. Its background workers
//! hold connections to every database with the extension, so the swap ends
//! them and starts them again afterwards.
//!
//! The same prologue and epilogue travel inside the backup's payload, so
//! `decrypt | gunzip | psql` into an empty database follows the procedure
//! too; the agent sends them again around the load (they are idempotent),
//! which also covers dumps made without them (imported old backups).

use mesbak_interface::Error;
use serde::Deserialize;

use super::{MAINTENANCE_DB, Server, quote_literal};

/// The marker line the prologue starts with; the dump reader takes the
/// version from it.
pub const MARKER: &str = "-- mesbak: TimescaleDB ";

/// The extension in one database.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Installed {
    pub version: String,
    pub schema: String,
}

/// TimescaleDB in `database`, if it is there.
pub async fn installed(server: &Server, database: &str) -> Result<Option<Installed>, Error> {
    server.query_value(database, INSTALLED).await
}

/// TimescaleDB in the current database as JSON (`version`, `schema`), or
/// null: one value, so that it can go into a larger query.
pub const INSTALLED: &str = "SELECT pg_catalog.json_build_object('version', e.extversion, 'schema', n.nspname) \
     FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
     WHERE e.extname = 'timescaledb'";

/// What a restore of a TimescaleDB backup will do on this server.
#[derive(Debug, Clone, PartialEq)]
pub struct RestorePlan {
    /// The version the backup was taken with, created in the new database.
    pub version: String,
    /// The server's default version, when newer: `ALTER EXTENSION ...
    /// UPDATE` after the load.
    pub update_to: Option<String>,
}

/// Checks that the server can give a restore of a backup taken with
/// TimescaleDB `version` that same version (`""`: unknown, as in dumps
/// made without mesbak; the server's default is used).
pub async fn plan_restore(server: &Server, version: &str) -> Result<RestorePlan, Error> {
    #[derive(Deserialize)]
    struct Available {
        version: String,
        default_version: String,
    }
    let available: Vec<Available> = server
        .query(
            MAINTENANCE_DB,
            "SELECT v.version, e.default_version \
             FROM pg_catalog.pg_available_extension_versions v \
             JOIN pg_catalog.pg_available_extensions e ON e.name = v.name \
             WHERE v.name = 'timescaledb'",
        )
        .await?;
    decide(
        version,
        &available
            .iter()
            .map(|a| a.version.as_str())
            .collect::<Vec<_>>(),
        available.first().map(|a| a.default_version.as_str()),
    )
}

fn decide(wanted: &str, available: &[&str], default: Option<&str>) -> Result<RestorePlan, Error> {
    let Some(default) = default else {
        return Err(Error::Database(format!(
            "this backup needs TimescaleDB {}, but the database server has no TimescaleDB; restore it on a server from the TimescaleDB image (timescale/timescaledb) the backup was taken with",
            if wanted.is_empty() { "" } else { wanted }
        )));
    };
    if wanted.is_empty() {
        return Ok(RestorePlan {
            version: default.to_owned(),
            update_to: None,
        });
    }
    if !available.contains(&wanted) {
        return Err(Error::Database(format!(
            "this backup was taken with TimescaleDB {wanted}, which this database server cannot create (it has {}); nothing was changed: restore onto a server whose image provides TimescaleDB {wanted} (then update the extension), or use a backup taken with {default}",
            available.join(", ")
        )));
    }
    let update_to = (version_key(default) > version_key(wanted)).then(|| default.to_owned());
    Ok(RestorePlan {
        version: wanted.to_owned(),
        update_to,
    })
}

/// `2.19.3` → `[2, 19, 3]` for comparison; text parts count as 0.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(['.', '-'])
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// What the payload (and the agent, around a load) sends before the dump:
/// the recorded version in `public`, then restoring mode.
pub fn prologue(version: &str) -> String {
    format!(
        "{MARKER}{version}: Timescale's logical restore (this version, restoring mode during\n\
         -- the load, timescaledb_post_restore() at the end)\n\
         CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public VERSION {};\n\
         SELECT public.timescaledb_pre_restore();\n\n",
        quote_literal(version)
    )
}

/// What follows the dump: restoring mode off, background workers back.
pub fn epilogue() -> &'static str {
    "\n-- mesbak: end of TimescaleDB's restoring mode\nSELECT public.timescaledb_post_restore();\n"
}

/// `ALTER EXTENSION timescaledb UPDATE` in `database`: a session of its own,
/// as Timescale requires (the first statement after connecting).
pub async fn update_extension(server: &Server, database: &str, to: &str) -> Result<(), Error> {
    server
        .execute(
            database,
            &format!(
                "ALTER EXTENSION timescaledb UPDATE TO {};\n",
                quote_literal(to)
            ),
        )
        .await
        .map(|_| ())
}

/// Starts the server's TimescaleDB background workers again (after a swap
/// ended them), from a database that has the extension.
pub async fn restart_workers(server: &Server, database: &str) -> Result<(), Error> {
    server
        .execute(
            database,
            "DO $mesbak$ BEGIN\n\
             IF pg_catalog.to_regproc('_timescaledb_functions.restart_background_workers') IS NOT NULL THEN\n\
               PERFORM _timescaledb_functions.restart_background_workers();\n\
             ELSE\n\
               PERFORM _timescaledb_internal.restart_background_workers();\n\
             END IF;\n\
             END $mesbak$;\n",
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_version_is_kept_updated_or_refused() {
        let plan = decide("2.19.3", &["2.19.3"], Some("2.19.3")).unwrap();
        assert_eq!(plan.version, "2.19.3");
        assert_eq!(plan.update_to, None);

        let plan = decide("2.18.1", &["2.18.1", "2.19.3"], Some("2.19.3")).unwrap();
        assert_eq!(plan.update_to.as_deref(), Some("2.19.3"));

        let err = decide("2.20.0", &["2.19.3"], Some("2.19.3")).unwrap_err();
        assert!(
            err.message().contains("TimescaleDB 2.20.0"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("it has 2.19.3"), "{}", err.message());

        let err = decide("2.19.3", &[], None).unwrap_err();
        assert!(
            err.message().contains("has no TimescaleDB"),
            "{}",
            err.message()
        );

        assert_eq!(
            decide("", &["2.19.3"], Some("2.19.3")).unwrap().version,
            "2.19.3"
        );
        assert!(version_key("2.10.0") > version_key("2.9.9"));
    }

    #[test]
    fn the_prologue_carries_the_version_for_the_dump_reader() {
        let text = prologue("2.19.3");
        assert!(text.starts_with("-- mesbak: TimescaleDB 2.19.3:"));
        assert!(text.contains("VERSION '2.19.3';"));
        assert!(text.contains("SELECT public.timescaledb_pre_restore();"));
    }
}
