//! A database backup's payload as pg_dump makes it, in order: the roles it
//! needs (created only where missing), TimescaleDB's restore prologue,
//! pg_dump's plain SQL, TimescaleDB's epilogue, and the database-level
//! facts pg_dump leaves out. So `decrypt | gunzip | psql` into an empty
//! database brings all of it back, on a server with or without the roles.
//!
//! One producer for both of its readers: the backup writes it to a file,
//! a point-in-time restore streams a recovered cluster's payload straight
//! into its load.

use bytes::Bytes;
use mesbak_interface::Error;
use tokio_util::sync::CancellationToken;

use super::timescale::{self, Installed};
use super::{Server, facts, roles_prelude};
use crate::process::{self, Outcome, Spawned};

/// What is read from the server before pg_dump starts.
pub struct Described {
    pub server_version: String,
    /// The database's size on the server, in bytes.
    pub size: u64,
    pub timescaledb: Option<Installed>,
    /// Sentences for the job: what a restore by hand must know.
    pub warnings: Vec<String>,
    /// The server is a standby (a recovered scratch cluster paused at its
    /// target): its unlogged tables cannot be read, and hold no rows a
    /// recovery would keep anyway.
    in_recovery: bool,
    prologue: String,
    epilogue: String,
}

/// Reads the roles, versions and database facts of `database`.
pub async fn describe(server: &Server, database: &str) -> Result<Described, Error> {
    let roles_args = ["--roles-only", "-l", database];
    let roles = server.output("pg_dumpall", &roles_args, None, |detail| {
        Error::Database(format!(
            "pg_dumpall --roles-only failed in {}: {detail}",
            server.runner.describe()
        ))
    });
    // The rest in one query: each exec costs the engine about as much as
    // the query itself, and a backup or point-in-time restore waits for this.
    #[derive(serde::Deserialize)]
    struct Read {
        server_version: String,
        in_recovery: bool,
        size: u64,
        timescaledb: Option<Installed>,
        facts: facts::DatabaseFacts,
    }
    let query = format!(
        "SELECT pg_catalog.json_build_object(\
               'server_version', pg_catalog.current_setting('server_version'), \
               'in_recovery', pg_catalog.pg_is_in_recovery(), \
               'size', pg_catalog.pg_database_size(pg_catalog.current_database()), \
               'timescaledb', ({}), 'facts', ({}))",
        timescale::INSTALLED,
        facts::QUERY
    );
    let read = server.query_value::<Read>(database, &query);
    let (roles, read) = tokio::join!(roles, read);
    let Read {
        server_version,
        in_recovery,
        size,
        timescaledb,
        facts,
    } = read?;
    let mut prologue = roles_prelude(&roles?);
    let mut epilogue = String::new();
    let mut warnings = Vec::new();
    if let Some(extension) = &timescaledb {
        if extension.schema == "public" {
            prologue.push_str(&timescale::prologue(&extension.version));
            epilogue.push_str(timescale::epilogue());
        } else {
            warnings.push(format!(
                "TimescaleDB is installed in schema '{}', not 'public': a restore by hand (decrypt | gunzip | psql) must call {0}.timescaledb_pre_restore() before and {0}.timescaledb_post_restore() after the load",
                extension.schema
            ));
        }
    }
    epilogue.push_str(&facts.to_sql());
    Ok(Described {
        server_version,
        size,
        timescaledb,
        warnings,
        in_recovery,
        prologue,
        epilogue,
    })
}

/// One piece of the payload.
pub enum Piece {
    Block(Bytes),
    /// `stop` was cancelled: pg_dump is killed.
    Cancelled,
    /// Everything was handed out; [`Payload::finish`] says whether pg_dump
    /// succeeded.
    End,
}

/// The line pg_dump ends its plain output with (newer versions follow it
/// with `\unrestrict KEY`).
const CLOSING_LINE: &[u8] = b"\n-- PostgreSQL database dump complete\n";
/// How much of the end of pg_dump's output is kept to find that line.
const TAIL: usize = 1024;

/// Whether `tail` (the last bytes of pg_dump's output) holds its closing
/// line. The Docker engine closes an exec's output 2 s after the program
/// ended if its reader has not taken all of it by then (a consumer
/// stalled on a slow disk, psql busy building an index): pg_dump exits 0
/// and its last kilobytes are gone, which only the missing closing line
/// tells.
fn ends_complete(tail: &[u8]) -> bool {
    memchr::memmem::find(tail, CLOSING_LINE).is_some()
}

/// Keeps the last [`TAIL`] bytes of a stream in `tail`, `block` after block.
fn keep_tail(tail: &mut Vec<u8>, block: &[u8]) {
    let block = &block[block.len().saturating_sub(TAIL)..];
    let excess = (tail.len() + block.len()).saturating_sub(TAIL);
    tail.drain(..excess.min(tail.len()));
    tail.extend_from_slice(block);
}

/// The payload being made.
pub struct Payload {
    prologue: Option<Bytes>,
    dump: Spawned,
    epilogue: Option<Bytes>,
    /// The last bytes of pg_dump's output.
    tail: Vec<u8>,
    /// pg_dump's output was read to its end: whether it ended complete.
    ended: Option<bool>,
}

impl Payload {
    /// Starts pg_dump of `database` on `server`, or takes `started` (pg_dump
    /// started by [`Payload::spawn_dump`] beforehand).
    pub async fn start(
        server: &Server,
        database: &str,
        described: &Described,
        started: Option<Spawned>,
    ) -> Result<Payload, Error> {
        let dump = match started {
            Some(dump) => dump,
            None => Payload::spawn_dump(server, database, described.in_recovery).await?,
        };
        Ok(Payload {
            prologue: Some(Bytes::from(described.prologue.clone())),
            dump,
            epilogue: Some(Bytes::from(described.epilogue.clone())),
            tail: Vec::with_capacity(2 * TAIL),
            ended: None,
        })
    }

    /// Starts pg_dump of `database` on `server`; a standby's (`in_recovery`)
    /// unlogged tables hold no data.
    pub async fn spawn_dump(
        server: &Server,
        database: &str,
        in_recovery: bool,
    ) -> Result<Spawned, Error> {
        let mut args = vec!["-d", database];
        if in_recovery {
            args.push("--no-unlogged-table-data");
        }
        server.spawn_writing("pg_dump", &args).await
    }

    /// The next piece; pg_dump is killed when `stop` is cancelled first.
    pub async fn next(&mut self, stop: &CancellationToken) -> Piece {
        if let Some(prologue) = self.prologue.take() {
            return Piece::Block(prologue);
        }
        if self.epilogue.is_none() {
            return Piece::End;
        }
        let block = tokio::select! {
            block = self.dump.stdout.recv() => block,
            _ = stop.cancelled() => {
                // pg_dump ends when its output is cut.
                self.dump.kill();
                self.epilogue = None;
                return Piece::Cancelled;
            }
        };
        match block {
            Some(block) => {
                keep_tail(&mut self.tail, &block);
                Piece::Block(block)
            }
            None => {
                let complete = ends_complete(&self.tail);
                self.ended = Some(complete);
                if complete {
                    Piece::Block(self.epilogue.take().unwrap_or_default())
                } else {
                    // Nothing more goes out: `finish` refuses the payload.
                    self.epilogue = None;
                    Piece::End
                }
            }
        }
    }

    /// Waits for pg_dump (its output is dropped: a reader that stopped
    /// early ends it) and checks how it exited and, when its output was
    /// read to the end, that none of it was lost on the way. pg_dump's
    /// warnings (TimescaleDB's circular foreign keys among its catalog
    /// tables) go to stderr with exit status 0: not failures.
    pub async fn finish(self, server: &Server, database: &str) -> Result<(), Error> {
        let Spawned { stdout, done, .. } = self.dump;
        drop(stdout);
        let outcome: Outcome = process::join(done).await?;
        outcome.check(|detail| {
            Error::Database(format!(
                "pg_dump of database '{database}' failed in {}: {detail}",
                server.runner.describe()
            ))
        })?;
        match self.ended {
            Some(false) => Err(Error::Database(format!(
                "the dump of database '{database}' from {} ended before pg_dump's closing line: its last part was lost on the way (the Docker engine drops the output a slow reader has not taken 2 s after the program ends), so it is not used; retry, and if it happens again look at this machine's disk and load",
                server.runner.describe()
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of pg_dump 17.6's plain output (older versions stop after
    /// the closing comment).
    const END: &str = "ALTER TABLE ONLY mes_core.asset\n    ADD CONSTRAINT asset_pkey PRIMARY KEY (id);\n\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict 3lV0o1RZwqg5s0cIbDQzuyfGBf9GUcBMWbjg1aKnBZ1FSqLoS6ddhhXuw9a2bdB\n\n";

    /// 20 KiB of dump, then its end.
    fn dump_stream() -> Vec<u8> {
        let mut stream = "COPY mes_core.asset (id, name) FROM stdin;\n"
            .repeat(500)
            .into_bytes();
        stream.extend_from_slice(END.as_bytes());
        stream
    }

    fn tail_of(stream: &[u8], block: usize) -> Vec<u8> {
        let mut tail = Vec::new();
        for piece in stream.chunks(block) {
            keep_tail(&mut tail, piece);
        }
        tail
    }

    #[test]
    fn a_dump_read_to_its_closing_line_is_complete_however_it_was_split() {
        let stream = dump_stream();
        for block in [1, 7, 100, 1023, 1024, 1025, 4096, stream.len()] {
            let tail = tail_of(&stream, block);
            assert!(tail.len() <= TAIL);
            assert!(ends_complete(&tail), "split every {block} bytes");
        }
        let old = END.split("\\unrestrict").next().unwrap();
        assert!(ends_complete(old.as_bytes()));
    }

    #[test]
    fn a_dump_cut_before_its_closing_line_is_not_complete() {
        let stream = dump_stream();
        let closing = memchr::memmem::find(&stream, CLOSING_LINE).unwrap();
        for cut in [0, 100, closing, closing + CLOSING_LINE.len() - 1] {
            assert!(!ends_complete(&tail_of(&stream[..cut], 64)), "cut at {cut}");
        }
    }
}
