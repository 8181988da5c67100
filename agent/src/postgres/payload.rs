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
use super::{Server, catalog, facts, roles_prelude};
use crate::process::{self, Outcome, Spawned};

/// What is read from the server before pg_dump starts.
pub struct Described {
    pub server_version: String,
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
    let in_recovery = server.query_value::<bool>(
        super::MAINTENANCE_DB,
        "SELECT pg_catalog.pg_is_in_recovery()",
    );
    let (roles, server_version, timescaledb, facts, in_recovery) = tokio::join!(
        roles,
        catalog::server_version(server),
        timescale::installed(server, database),
        facts::read(server, database),
        in_recovery,
    );
    let (server_version, timescaledb, facts) = (server_version?, timescaledb?, facts?);
    let in_recovery = in_recovery?;
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

/// The payload being made.
pub struct Payload {
    prologue: Option<Bytes>,
    dump: Spawned,
    epilogue: Option<Bytes>,
}

impl Payload {
    /// Starts pg_dump of `database` on `server`.
    pub async fn start(
        server: &Server,
        database: &str,
        described: &Described,
    ) -> Result<Payload, Error> {
        let mut args = vec!["-d", database];
        if described.in_recovery {
            args.push("--no-unlogged-table-data");
        }
        let dump = server.spawn("pg_dump", &args, false).await?;
        Ok(Payload {
            prologue: Some(Bytes::from(described.prologue.clone())),
            dump,
            epilogue: Some(Bytes::from(described.epilogue.clone())),
        })
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
            Some(block) => Piece::Block(block),
            None => Piece::Block(self.epilogue.take().unwrap_or_default()),
        }
    }

    /// Waits for pg_dump (its output is dropped: a reader that stopped
    /// early ends it) and checks how it exited. pg_dump's warnings
    /// (TimescaleDB's circular foreign keys among its catalog tables) go
    /// to stderr with exit status 0: not failures.
    pub async fn finish(self, server: &Server, database: &str) -> Result<(), Error> {
        let Spawned { stdout, done, .. } = self.dump;
        drop(stdout);
        let outcome: Outcome = process::join(done).await?;
        outcome
            .check(|detail| {
                Error::Database(format!(
                    "pg_dump of database '{database}' failed in {}: {detail}",
                    server.runner.describe()
                ))
            })
            .map(|_| ())
    }
}
