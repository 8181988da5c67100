//! PostgreSQL, reached the way the plant's stack allows: with
//! `database.container` set, every program (pg_dump, pg_dumpall, psql) runs
//! inside the database container through the Docker exec API and talks to
//! the server over its own socket, so no published port and no shared
//! socket are needed; with `container = ""` the host's programs connect to
//! `host:port`. All SQL the agent runs goes through psql the same way.
//!
//! Sub-concerns: [`catalog`] (what the server holds), [`dump`] (reading a
//! dump stream), [`roles`] and [`facts`] (what a dump leaves out and a
//! backup carries), [`payload`] (a backup's SQL as pg_dump makes it),
//! [`timescale`] (Timescale's logical backup procedure),
//! [`credentials`] (the password, never in an environment) and
//! [`session`] (a job's use of the server, left as found).

pub mod catalog;
mod credentials;
pub mod dump;
pub mod facts;
pub mod payload;
pub mod roles;
pub mod session;
pub mod timescale;

use std::sync::Arc;
use std::time::Duration;

use mesbak_interface::Error;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::fifo::SharedDir;
use crate::process::{Runner, Spawned};

pub use dump::{DumpReader, qualified_name};
pub use roles::roles_prelude;
pub use session::Session;

use credentials::Credentials;
pub use credentials::remove_stale_host_files as remove_stale_password_files;

/// The database every server has, to manage the others from.
pub const MAINTENANCE_DB: &str = "postgres";
/// How long a server started for a job may take to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach the database server: where its programs run, as whom, and
/// (host mode) where it listens.
#[derive(Clone)]
pub struct Server {
    pub runner: Runner,
    pub user: String,
    host: String,
    port: u16,
    credentials: Arc<Credentials>,
    /// A folder shared with the server's container (one the agent made),
    /// through which a dump reaches the agent without the engine.
    shared: Option<SharedDir>,
}

impl Server {
    pub fn new(config: &Config, runner: Runner, password: Option<String>) -> Server {
        Server {
            credentials: Arc::new(Credentials::new(password, &config.state_dir)),
            runner,
            user: config.database.user.clone(),
            host: config.database.host.clone(),
            port: config.database.port,
            shared: None,
        }
    }

    /// The server whose container sees `shared`: a dump's output goes
    /// through a FIFO in it.
    pub fn with_shared_dir(mut self, shared: SharedDir) -> Server {
        self.shared = Some(shared);
        self
    }

    /// argv for a client program (the database goes in `extra`: `-d` for
    /// pg_dump and psql, `-l` for pg_dumpall). In a container the program
    /// uses the server's own socket; on the host, host and port. `-w`: a
    /// program never waits for a password on a terminal.
    fn argv(&self, program: &str, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![program.to_owned(), "-w".into()];
        if matches!(self.runner, Runner::Host) {
            argv.extend([
                "-h".into(),
                self.host.clone(),
                "-p".into(),
                self.port.to_string(),
            ]);
        }
        argv.extend(["-U".into(), self.user.clone()]);
        argv.extend(extra.iter().map(|arg| arg.to_string()));
        argv
    }

    /// Starts a client program (`pg_dump`, `psql`...) with `args`, its
    /// password (when the server asks for one) in a private password file.
    pub async fn spawn(
        &self,
        program: &str,
        args: &[&str],
        with_stdin: bool,
    ) -> Result<Spawned, Error> {
        let env = self.credentials.env(self).await?;
        self.runner
            .spawn(&self.argv(program, args), &env, with_stdin)
            .await
    }

    /// Whether a dump's output comes through a FIFO ([`Server::with_shared_dir`]).
    pub fn has_shared_dir(&self) -> bool {
        self.shared.is_some()
    }

    /// Starts a program that writes its output to the file its `-f` names
    /// (pg_dump): into a FIFO in the shared folder when the server has one,
    /// else to stdout.
    pub async fn spawn_writing(&self, program: &str, args: &[&str]) -> Result<Spawned, Error> {
        let Some(shared) = &self.shared else {
            return self.spawn(program, args, false).await;
        };
        let fifo = shared.fifo(program)?;
        let output = fifo.inside.clone();
        let args: Vec<&str> = args.iter().copied().chain(["-f", &output]).collect();
        Ok(self.spawn(program, &args, false).await?.output_from(fifo))
    }

    /// Runs `program args` to its end and returns its stdout; an exit
    /// status other than 0 becomes an error built by `fail` from stderr.
    pub async fn output(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        fail: impl FnOnce(String) -> Error,
    ) -> Result<String, Error> {
        let mut spawned = self.spawn(program, args, stdin.is_some()).await?;
        if let (Some(text), Some(mut input)) = (stdin, spawned.stdin.take()) {
            // A program that stops reading early reports why on stderr.
            let _ = input.write_all(text.as_bytes()).await;
            let _ = input.shutdown().await;
        }
        let (out, outcome) = spawned.collect().await?;
        outcome.check(fail)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs SQL statements in `database`, one after the other as `psql -f`
    /// does (so `CREATE DATABASE` and friends work), stopping at the first
    /// error. Returns what psql printed.
    pub async fn execute(&self, database: &str, sql: &str) -> Result<String, Error> {
        self.output(
            "psql",
            &[
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-f",
                "-",
            ],
            Some(sql),
            |detail| self.sql_error(database, detail),
        )
        .await
    }

    /// Runs a query and returns its rows, each read from JSON into `T`
    /// (column names are the field names).
    pub async fn query<T: DeserializeOwned>(
        &self,
        database: &str,
        sql: &str,
    ) -> Result<Vec<T>, Error> {
        let wrapped =
            format!("SELECT coalesce(pg_catalog.json_agg(q), '[]'::json) FROM ({sql}) AS q");
        let out = self
            .output(
                "psql",
                &[
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    database,
                    "-c",
                    &wrapped,
                ],
                None,
                |detail| self.sql_error(database, detail),
            )
            .await?;
        serde_json::from_str(out.trim()).map_err(|err| {
            Error::Database(format!(
                "the answer of a query on database '{database}' in {} cannot be read ({err})",
                self.runner.describe()
            ))
        })
    }

    /// The one value of a one-row, one-column query, as JSON.
    pub async fn query_value<T: DeserializeOwned>(
        &self,
        database: &str,
        sql: &str,
    ) -> Result<T, Error> {
        #[derive(serde::Deserialize)]
        struct One<T> {
            value: T,
        }
        let rows: Vec<One<T>> = self
            .query(database, &format!("SELECT ({sql}) AS value"))
            .await?;
        rows.into_iter().next().map(|row| row.value).ok_or_else(|| {
            Error::Database(format!(
                "a query on database '{database}' in {} returned no row",
                self.runner.describe()
            ))
        })
    }

    fn sql_error(&self, database: &str, detail: String) -> Error {
        Error::Database(format!(
            "a statement on database '{database}' in {} failed: {detail}",
            self.runner.describe()
        ))
    }

    /// Waits until the server accepts connections (after its container was
    /// started), up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // pg_isready needs no password, says only whether the server
            // answers, and takes no -w.
            let mut argv = self.argv("pg_isready", &["-d", MAINTENANCE_DB]);
            argv.retain(|arg| arg != "-w");
            let ready = match self.runner.spawn(&argv, &[], false).await?.collect().await {
                Ok((_, outcome)) => outcome.exit_code == 0,
                Err(_) => false,
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Database(format!(
                    "the database server in {} did not accept connections within {} s; check its log (`docker logs`)",
                    self.runner.describe(),
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes what the server's credentials left (the password file).
    pub async fn release(&self) {
        self.credentials.release(self).await;
    }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (standard_conforming_strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Splits a leading SQL identifier (bare or double-quoted) off `text`.
fn split_ident(text: &str) -> Option<(String, &str)> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    chars.next();
                    name.push('"');
                } else {
                    return Some((name, &rest[at + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text.find([' ', ';', '.', '(']).unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(split_ident("abc;"), Some(("abc".into(), ";")));
        assert_eq!(
            split_ident("\"a \"\"b\"\"\".c"),
            Some(("a \"b\"".into(), ".c"))
        );
    }
}
