//! Loading a backup into a new database: created like the live one,
//! streamed through psql with ON_ERROR_STOP (TimescaleDB's prologue and
//! epilogue around it), tables' data, indexes and keys shared by several
//! sessions as pg_restore -j would, the extension updated where the
//! server's is newer, and the rows each COPY stored compared with the
//! backup's.

mod route;
mod sessions;

use std::collections::BTreeMap;

use bytes::Bytes;
use mesbak_interface::Error;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use route::Router;
use sessions::{Sessions, Stopped};

use super::plan::{Input, Plan};
use crate::jobs::Job;
use crate::pipeline::BackupReader;
use crate::postgres::payload::{Payload, Piece};
use crate::postgres::{DumpReader, MAINTENANCE_DB, Server, quote_ident, quote_literal, timescale};

/// What a load cut short by `Cancel` leaves.
pub const CANCELLED_LOAD: &str =
    "the database it was restoring into was dropped; the live database was not changed";

/// What a load did.
pub struct Loaded {
    pub plain_bytes: u64,
    /// Rows per table as the SQL itself holds them (its COPY data).
    pub stream_rows: BTreeMap<String, u64>,
    /// Rows stored per table, as the server reported each COPY; None when
    /// the reports could not be matched to the dump's COPY statements.
    pub copied_rows: Option<BTreeMap<String, u64>>,
}

/// Creates `name` empty from template0, with the owner, encoding and
/// locale of `like` when given.
pub async fn create_database_like(
    server: &Server,
    name: &str,
    like: Option<&str>,
) -> Result<(), Error> {
    let mut statement = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(like) = like {
        #[derive(Deserialize)]
        struct Like {
            owner: String,
            encoding: String,
            collate: String,
            ctype: String,
        }
        let like: Like = server
            .query_value(
                MAINTENANCE_DB,
                &format!(
                    "SELECT pg_catalog.json_build_object('owner', pg_catalog.pg_get_userbyid(datdba), \
                     'encoding', pg_catalog.pg_encoding_to_char(encoding), \
                     'collate', datcollate, 'ctype', datctype) \
                     FROM pg_catalog.pg_database WHERE datname = {}",
                    quote_literal(like)
                ),
            )
            .await?;
        statement.push_str(&format!(
            " OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&like.owner),
            quote_literal(&like.encoding),
            quote_literal(&like.collate),
            quote_literal(&like.ctype)
        ));
    }
    statement.push_str(";\n");
    server.execute(MAINTENANCE_DB, &statement).await.map(|_| ())
}

/// Streams the plan's SQL (a backup file, or a recovered cluster's live
/// dump) into `database` through psql with ON_ERROR_STOP, wrapped in
/// TimescaleDB's prologue and epilogue when it has TimescaleDB, then
/// updates the extension where planned. From the first table data on,
/// `workers` more psql sessions share the data, indexes and keys
/// ([`route`], [`sessions`]). Stops with the job's cancelled error when
/// `stop` (the job's token or a child of it) is cancelled.
#[allow(clippy::too_many_arguments)]
pub async fn load(
    job: &Job,
    server: &Server,
    plan: &Plan,
    timescale: Option<&timescale::RestorePlan>,
    database: &str,
    workers: usize,
    stop: &CancellationToken,
) -> Result<Loaded, Error> {
    let label = plan.label();
    job.set_stage(format!("restoring {label} into '{database}'"));
    let mut sql = Sql::open(job, plan).await?;
    let mut dump = DumpReader::default();
    let mut plain_bytes = 0u64;
    // One session loads a table in one COPY.
    let mut router = Router::with_piece_bytes(if workers > 0 {
        route::PIECE_BYTES
    } else {
        usize::MAX
    });
    let mut sessions = Sessions::start(server, database, workers).await?;
    let (prologue, epilogue) = match timescale {
        Some(ts) => (timescale::prologue(&ts.version), timescale::epilogue()),
        None => (String::new(), ""),
    };
    let mut routed = Vec::new();
    router.route(&Bytes::from(prologue), &mut routed);
    let mut fed = Ok(());
    'feeding: loop {
        for piece in routed.drain(..) {
            fed = sessions.feed(piece, stop).await;
            if fed.is_err() {
                break 'feeding;
            }
        }
        match sql.next(stop).await {
            Piece::Block(block) => {
                dump.feed(&block);
                plain_bytes += block.len() as u64;
                if sql.counts_itself() {
                    job.bytes_done
                        .fetch_add(block.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                router.route(&block, &mut routed);
            }
            Piece::End => break,
            Piece::Cancelled => {
                fed = Err(Stopped::Cancelled);
                break;
            }
        }
    }
    if fed.is_ok() {
        router.route(&Bytes::from_static(epilogue.as_bytes()), &mut routed);
        router.finish(&mut routed);
        for piece in routed.drain(..) {
            fed = sessions.feed(piece, stop).await;
            if fed.is_err() {
                break;
            }
        }
    }
    let failed = match fed {
        Ok(()) => false,
        Err(Stopped::Cancelled) => {
            // psql is cut off; the caller drops the database it filled.
            sessions.kill();
            return Err(job.cancelled_error(CANCELLED_LOAD));
        }
        Err(Stopped::Failed(err)) => {
            sessions.kill();
            return Err(err);
        }
        Err(Stopped::Ended) => true,
    };
    // A source that stopped early (psql gave up) is not waited for.
    let read = if failed { Ok(()) } else { sql.finish().await };
    let shared = if workers > 0 {
        format!(
            " (the load ran in {} sessions: if it fails the same way again, set `[restore] load_sessions = 1` and retry)",
            workers + 1
        )
    } else {
        String::new()
    };
    let finished = sessions
        .finish(failed, |detail| {
            // The server's own words for ENOSPC ("could not extend file ...").
            if detail.contains("No space left on device") {
                Error::NoSpace(format!(
                    "the database server's disk became full while {label} was being loaded into '{database}'; the live database was not changed and the partial copy is dropped: free space where the server keeps its data, then retry"
                ))
            } else {
                Error::Database(format!(
                    "psql stopped restoring {label} into '{database}': {detail}{shared}"
                ))
            }
        })
        .await;
    // A source that failed (a damaged file, a dump cut short) explains
    // whatever psql made of it.
    read?;
    let Some(finished) = finished? else {
        return Err(Error::Database(format!(
            "psql stopped reading while restoring {label} into '{database}'{shared}"
        )));
    };
    let [serial_ms, data_ms, build_ms] = finished.spent_ms;
    tracing::info!(
        job = job.id,
        database,
        sessions = finished.sessions,
        copies = finished.copies,
        builds = finished.builds,
        serial_ms,
        data_ms,
        build_ms,
        "loaded"
    );
    if plan.from_metadata {
        let differences = compare_rows(&plan.expected, &dump.table_rows);
        if !differences.is_empty() {
            return Err(Error::Integrity(format!(
                "row counts differ from the backup's metadata ({}); the metadata file does not belong to this backup",
                differences.join("; ")
            )));
        }
    }
    if let Some(to) = timescale.and_then(|ts| ts.update_to.as_deref()) {
        job.set_stage(format!("updating TimescaleDB in '{database}' to {to}"));
        timescale::update_extension(server, database, to).await?;
    }
    Ok(Loaded {
        plain_bytes,
        copied_rows: finished.copied_rows,
        stream_rows: dump.table_rows,
    })
}

/// The SQL being read: a backup file decrypted (and decompressed) as it is
/// read, or a recovered cluster's payload as pg_dump makes it.
enum Sql<'a> {
    File(BackupReader),
    Live(Payload, &'a Server, &'a str, &'a CancellationToken),
}

impl<'a> Sql<'a> {
    async fn open(job: &Job, plan: &'a Plan) -> Result<Sql<'a>, Error> {
        Ok(match &plan.input {
            Input::File { backup, key } => {
                let file = backup.open()?;
                job.reset_bytes(file.metadata().map(|m| m.len()).unwrap_or(0));
                Sql::File(BackupReader::start(
                    backup.id.clone(),
                    file,
                    key.clone(),
                    Some(backup.compression),
                    job.bytes_done.clone(),
                ))
            }
            Input::Live {
                server,
                database,
                described,
                dumped,
                started,
                ..
            } => {
                // The size of the SQL is not known before pg_dump ends.
                job.reset_bytes(0);
                let started = started.lock().unwrap_or_else(|e| e.into_inner()).take();
                Sql::Live(
                    Payload::start(server, database, described, started).await?,
                    server,
                    database,
                    dumped,
                )
            }
        })
    }

    /// Whether the job's bytes are counted here (a file's reader counts
    /// the encrypted bytes it reads itself).
    fn counts_itself(&self) -> bool {
        matches!(self, Sql::Live(..))
    }

    async fn next(&mut self, stop: &CancellationToken) -> Piece {
        match self {
            Sql::File(reader) => tokio::select! {
                block = reader.blocks.recv() => block.map_or(Piece::End, Piece::Block),
                _ = stop.cancelled() => Piece::Cancelled,
            },
            Sql::Live(payload, ..) => payload.next(stop).await,
        }
    }

    async fn finish(self) -> Result<(), Error> {
        match self {
            Sql::File(reader) => reader.finish().await.map(|_| ()),
            Sql::Live(payload, server, database, dumped) => {
                let finished = payload.finish(server, database).await;
                dumped.cancel();
                finished
            }
        }
    }
}

/// Differences between expected and restored row counts, one phrase each.
/// TimescaleDB's catalog tables belong to the extension and are not counted.
pub fn compare_rows(
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Vec<String> {
    let internal = |name: &str| {
        [
            "_timescaledb_catalog.",
            "_timescaledb_config.",
            "_timescaledb_cache.",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
    };
    let mut differences = Vec::new();
    for (table, want) in expected.iter().filter(|(t, _)| !internal(t)) {
        match actual.get(table) {
            Some(got) if got == want => {}
            Some(got) => differences.push(format!("{table}: {got} rows, expected {want}")),
            None => differences.push(format!("{table} is missing")),
        }
    }
    for (table, got) in actual {
        if !expected.contains_key(table) && !internal(table) && *got > 0 {
            differences.push(format!("{table}: {got} rows not in the backup"));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_comparison_names_each_difference() {
        let expected: BTreeMap<String, u64> = [
            ("a.t".to_owned(), 3),
            ("a.gone".to_owned(), 1),
            ("_timescaledb_catalog.hypertable".to_owned(), 2),
        ]
        .into();
        let actual: BTreeMap<String, u64> = [
            ("a.t".to_owned(), 2),
            ("a.extra".to_owned(), 5),
            ("a.empty".to_owned(), 0),
        ]
        .into();
        assert_eq!(
            compare_rows(&expected, &actual),
            vec![
                "a.gone is missing",
                "a.t: 2 rows, expected 3",
                "a.extra: 5 rows not in the backup"
            ]
        );
        assert!(compare_rows(&actual, &actual).is_empty());
    }
}
