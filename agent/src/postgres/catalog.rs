//! What the server holds: databases, their sizes, schemas and row counts,
//! its version, and the free space where it keeps its data.

use std::collections::BTreeMap;

use mesbak_interface::Error;
use serde::Deserialize;

use super::{MAINTENANCE_DB, Server, quote_ident, quote_literal};
use crate::process::Runner;

/// Whether database `name` exists.
pub async fn database_exists(server: &Server, name: &str) -> Result<bool, Error> {
    server
        .query_value(
            MAINTENANCE_DB,
            &format!(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = {})",
                quote_literal(name)
            ),
        )
        .await
}

/// Databases whose names start with `prefix`, sorted.
pub async fn databases_like(server: &Server, prefix: &str) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct Row {
        datname: String,
    }
    let pattern = prefix
        .replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%");
    let rows: Vec<Row> = server
        .query(
            MAINTENANCE_DB,
            &format!(
                "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE {} ORDER BY datname",
                quote_literal(&format!("{pattern}%"))
            ),
        )
        .await?;
    Ok(rows.into_iter().map(|row| row.datname).collect())
}

/// Size of database `name` on disk, in bytes.
pub async fn database_size(server: &Server, name: &str) -> Result<u64, Error> {
    server
        .query_value(
            MAINTENANCE_DB,
            &format!(
                "SELECT pg_catalog.pg_database_size({})",
                quote_literal(name)
            ),
        )
        .await
}

/// The server's version (`17.2`).
pub async fn server_version(server: &Server) -> Result<String, Error> {
    server
        .query_value(
            MAINTENANCE_DB,
            "SELECT pg_catalog.current_setting('server_version')",
        )
        .await
}

/// Row count of every table whose data a dump carries, as `schema.table`:
/// plain tables, partitions and TimescaleDB's chunks, each counted alone
/// (`ONLY`), as pg_dump's COPY statements carry them; tables that belong to
/// an extension (TimescaleDB's catalog) are left out. One query.
pub async fn table_row_counts(
    server: &Server,
    database: &str,
) -> Result<BTreeMap<String, u64>, Error> {
    #[derive(Deserialize)]
    struct Row {
        name: String,
        rows: u64,
    }
    let rows: Vec<Row> = server
        .query(
            database,
            "SELECT n.nspname || '.' || c.relname AS name, \
                    ((pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml(\
                        pg_catalog.format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), \
                        false, true, '')))[1]::text)::bigint AS rows \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname !~ '^pg_' \
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                               WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                 AND d.objid = c.oid AND d.deptype = 'e')",
        )
        .await?;
    Ok(rows.into_iter().map(|row| (row.name, row.rows)).collect())
}

/// Schemas present in a database, besides the system ones.
pub async fn schemas(server: &Server, database: &str) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct Row {
        nspname: String,
    }
    let rows: Vec<Row> = server
        .query(
            database,
            "SELECT nspname FROM pg_catalog.pg_namespace \
             WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname !~ '^pg_' \
             ORDER BY 1",
        )
        .await?;
    Ok(rows.into_iter().map(|row| row.nspname).collect())
}

/// Rows of one table (`SELECT count(*)`, the table's children included).
pub async fn count_rows(
    server: &Server,
    database: &str,
    schema: &str,
    table: &str,
) -> Result<u64, Error> {
    server
        .query_value(
            database,
            &format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(schema),
                quote_ident(table)
            ),
        )
        .await
}

/// Free bytes on the file system of the server's data directory: asked
/// inside the container (`df`), or read on the host. `None` when it
/// cannot be told (no `df` in the image, a remote server).
pub async fn data_directory_free(server: &Server) -> Result<Option<u64>, Error> {
    let directory: String = server
        .query_value(
            MAINTENANCE_DB,
            "SELECT pg_catalog.current_setting('data_directory')",
        )
        .await?;
    match &server.runner {
        Runner::Container { docker, container } => {
            let argv = ["df".to_owned(), "-Pk".to_owned(), directory.clone()];
            let Ok(spawned) = docker.exec(container, &argv, &[], false).await else {
                return Ok(None);
            };
            let (out, outcome) = spawned.collect().await?;
            if outcome.exit_code != 0 {
                return Ok(None);
            }
            Ok(parse_df_available(&String::from_utf8_lossy(&out)))
        }
        Runner::Host => Ok(nix::sys::statvfs::statvfs(directory.as_str())
            .ok()
            .map(|stat| stat.blocks_available() * stat.fragment_size())),
    }
}

/// The "Available" figure of `df -Pk` output, in bytes.
fn parse_df_available(output: &str) -> Option<u64> {
    let line = output.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_is_read() {
        let out = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n\
                   /dev/vda         263112772 11208120 240411884       5% /var/lib/postgresql/data\n";
        assert_eq!(parse_df_available(out), Some(240411884 * 1024));
        assert_eq!(parse_df_available("garbage"), None);
    }
}
