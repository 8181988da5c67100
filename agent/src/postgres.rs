//! PostgreSQL: the command lines of pg_dump, pg_dumpall and psql (run inside
//! the database container or on the host), the roles prelude that makes a
//! dump restorable on a server without its roles, the reading of a dump
//! stream for row counts and schemas, and the agent's own SQL connection.

use std::collections::BTreeMap;
use std::time::Duration;

use mesbak_interface::Error;
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::jobs::Job;
use crate::process::Runner;
use crate::recovery::{Journal, Touched};

/// The database every server has, to manage the others from.
pub const MAINTENANCE_DB: &str = "postgres";
/// How long a server started for a job may take to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach the database server, for programs and for SQL.
#[derive(Clone)]
pub struct Server {
    pub runner: Runner,
    pub user: String,
    password: Option<String>,
    pub host: String,
    pub port: u16,
}

impl Server {
    pub fn new(config: &Config, runner: Runner, password: Option<String>) -> Server {
        Server {
            runner,
            user: config.database.user.clone(),
            password,
            host: config.database.host.clone(),
            port: config.database.port,
        }
    }

    /// argv for a client program (the database goes in `extra`: `-d` for
    /// pg_dump and psql, `-l` for pg_dumpall). In a container the program
    /// uses the server's own socket; on the host, host and port.
    pub fn argv(&self, program: &str, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![program.to_owned(), "--no-password".into()];
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

    /// Environment for client programs: the password, never on a command line.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("PGCONNECT_TIMEOUT".into(), "15".into())];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD".into(), password.clone()));
        }
        env
    }

    /// Runs a short psql query and returns its unaligned output.
    pub async fn psql_query(&self, database: &str, sql: &str) -> Result<String, Error> {
        let argv = self.argv(
            "psql",
            &[
                "-d",
                database,
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        let (out, outcome) = self
            .runner
            .spawn(&argv, &self.env(), false)
            .await?
            .collect()
            .await?;
        outcome.check(|detail| {
            Error::Database(format!(
                "a query on database '{database}' in {} failed: {detail}",
                self.runner.describe()
            ))
        })?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
    }

    /// Waits until the server accepts connections (after starting its
    /// container), up to `timeout`.
    pub async fn wait_ready(&self, database: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.psql_query(database, "SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Database(format!(
                        "the database server did not accept connections within {} s: {}",
                        timeout.as_secs(),
                        err.message()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Follows the changes a job makes to the database's container (none
    /// when the server runs on the host).
    pub fn touched(&self, journal: &Journal) -> Option<Touched> {
        match &self.runner {
            Runner::Container { docker, .. } => Some(Touched::new(docker.clone(), journal.clone())),
            Runner::Host => None,
        }
    }

    /// Starts the database container if it is stopped (recorded in
    /// `touched`, so it is stopped again at the end) and then waits until
    /// the server answers.
    pub async fn ensure_up(&self, job: &Job, touched: Option<&mut Touched>) -> Result<(), Error> {
        if let (Some(touched), Runner::Container { container, .. }) = (touched, &self.runner) {
            if !touched.ensure_running(container).await? {
                job.set_stage("waiting for the database server to start");
                self.wait_ready(MAINTENANCE_DB, SERVER_START_TIMEOUT)
                    .await?;
            }
        }
        Ok(())
    }

    /// Opens the agent's own SQL connection to `database`.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("mesbak-agent")
            .connect_timeout(Duration::from_secs(15));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) = config.connect(NoTls).await.map_err(|err| {
            Error::Database(format!(
                "cannot connect to PostgreSQL at {}:{} as '{}' (database '{database}'): {}; check database.host, database.port and the password",
                self.host,
                self.port,
                self.user,
                sql_error_text(&err)
            ))
        })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "SQL connection ended");
            }
        });
        Ok(client)
    }
}

/// The server's message for a SQL error, without the crate's wrapping.
pub fn sql_error_text(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => err.to_string(),
    }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Server and TimescaleDB versions, as the server reports them.
pub async fn versions(server: &Server, database: &str) -> Result<(String, String), Error> {
    let out = server
        .psql_query(
            database,
            "SELECT current_setting('server_version'), \
             coalesce((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), '')",
        )
        .await?;
    let (server_version, timescaledb) = out.split_once('|').unwrap_or((out.as_str(), ""));
    Ok((server_version.to_owned(), timescaledb.to_owned()))
}

/// Row count of every table whose data a dump carries, as `schema.table`.
pub async fn table_row_counts(
    client: &tokio_postgres::Client,
) -> Result<BTreeMap<String, u64>, Error> {
    let tables = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e')",
            &[],
        )
        .await
        .map_err(|err| Error::Database(format!("cannot list tables: {}", sql_error_text(&err))))?;
    let mut counts = BTreeMap::new();
    for row in tables {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let count: i64 = client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|err| {
                Error::Database(format!(
                    "cannot count rows of {schema}.{table}: {}",
                    sql_error_text(&err)
                ))
            })?
            .get(0);
        counts.insert(format!("{schema}.{table}"), count as u64);
    }
    Ok(counts)
}

/// Schemas present in a database, besides the system ones.
pub async fn schemas(client: &tokio_postgres::Client) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
             AND nspname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|err| Error::Database(format!("cannot list schemas: {}", sql_error_text(&err))))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Turns `pg_dumpall --roles-only` output into SQL that creates each role
/// only where it is missing (with its attributes, password and settings) and
/// then grants memberships: safe to run on a server that has the roles (it
/// changes nothing there) and complete on one that has none.
pub fn roles_prelude(dumpall: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut statements: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut grants = Vec::new();
    for line in dumpall.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("CREATE ROLE ") {
            if let Some((name, _)) = split_ident(rest) {
                order.push(name.clone());
                statements.entry(name).or_default().push(line.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("ALTER ROLE ") {
            // Per-database settings name a database the target may lack.
            if line.contains(" IN DATABASE ") {
                continue;
            }
            if let Some((name, _)) = split_ident(rest) {
                statements.entry(name).or_default().push(line.to_owned());
            }
        } else if line.starts_with("GRANT ") && line.ends_with(';') {
            // The grantor may not exist on the target server; the restoring
            // superuser grants instead.
            let statement = match line.find(" GRANTED BY ") {
                Some(at) => format!("{};", &line[..at]),
                None => line.to_owned(),
            };
            grants.push(statement);
        }
    }
    let body: String = order
        .iter()
        .flat_map(|name| statements.get(name))
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let mut tag = "mesbak".to_owned();
    while body.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    let mut out = String::from(
        "--\n-- mesbak: roles this database uses (from pg_dumpall --roles-only),\n\
         -- created only where missing; existing roles are left as they are.\n--\n\n",
    );
    for name in &order {
        out.push_str(&format!(
            "DO ${tag}$\nBEGIN\n  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {}) THEN\n",
            quote_literal(name)
        ));
        for statement in &statements[name] {
            out.push_str("    EXECUTE ");
            out.push_str(&quote_literal(statement.trim_end_matches(';')));
            out.push_str(";\n");
        }
        out.push_str(&format!("  END IF;\nEND\n${tag}$;\n\n"));
    }
    for grant in grants {
        out.push_str(&grant);
        out.push('\n');
    }
    out.push_str("\n-- mesbak: end of roles\n\n");
    out
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

/// Reads a plain pg_dump stream as it passes: rows per table (one line per
/// row between `COPY ... FROM stdin;` and `\.`) and the schemas created.
/// The counts match the dump's own snapshot exactly.
#[derive(Default)]
pub struct DumpReader {
    /// The start of a line that continues in the next block.
    line: Vec<u8>,
    line_truncated: bool,
    /// The table whose COPY data is passing, and its rows so far.
    copying: Option<(String, u64)>,
    pub table_rows: BTreeMap<String, u64>,
    /// Tables in the order their COPY statements come.
    pub copy_order: Vec<String>,
    pub schemas: Vec<String>,
    /// The dump creates the `timescaledb` extension.
    pub timescaledb: bool,
}

impl DumpReader {
    const LINE_PREFIX: usize = 4096;

    /// Reads the next block of the dump. Complete lines are looked at in
    /// place; only a line split across blocks is copied (its first 4 KiB).
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (part, after) = (&rest[..at], &rest[at + 1..]);
            if self.line.is_empty() && !self.line_truncated {
                self.end_line(part, false);
            } else {
                self.push_partial(part);
                let line = std::mem::take(&mut self.line);
                let truncated = std::mem::replace(&mut self.line_truncated, false);
                self.end_line(&line, truncated);
            }
            rest = after;
        }
        self.push_partial(rest);
    }

    fn push_partial(&mut self, part: &[u8]) {
        let room = Self::LINE_PREFIX.saturating_sub(self.line.len());
        if part.len() > room {
            self.line_truncated = true;
        }
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self, line: &[u8], truncated: bool) {
        if let Some((table, rows)) = &mut self.copying {
            if line == b"\\." {
                let (table, rows) = (std::mem::take(table), *rows);
                self.table_rows.insert(table, rows);
                self.copying = None;
            } else {
                *rows += 1;
            }
            return;
        }
        if truncated {
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        if let Some(rest) = text.strip_prefix("COPY ") {
            if text.ends_with(" FROM stdin;") {
                if let Some(name) = qualified_name(rest) {
                    self.copy_order.push(name.clone());
                    self.copying = Some((name, 0));
                }
            }
        } else if text.starts_with("CREATE EXTENSION") && text.contains(" timescaledb ") {
            self.timescaledb = true;
        } else if let Some(rest) = text.strip_prefix("CREATE SCHEMA ") {
            if let Some((name, _)) = split_ident(rest) {
                self.schemas.push(name);
            }
        }
    }
}

/// `schema.table` from the start of a COPY statement.
fn qualified_name(text: &str) -> Option<String> {
    let (schema, rest) = split_ident(text)?;
    let rest = rest.strip_prefix('.')?;
    let (table, _) = split_ident(rest)?;
    Some(format!("{schema}.{table}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMPALL: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict abc

SET default_transaction_read_only = off;

--
-- Roles
--

CREATE ROLE admin;
ALTER ROLE admin WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc=$def=:ghi=';
CREATE ROLE "Line ""Operator""";
ALTER ROLE "Line ""Operator""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'it''s';
ALTER ROLE "Line ""Operator""" SET search_path TO 'mes_core';
CREATE ROLE mes_owner;
ALTER ROLE mes_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;

--
-- Role memberships
--

GRANT mes_owner TO "Line ""Operator""" GRANTED BY admin;

\unrestrict abc
"#;

    #[test]
    fn roles_are_created_only_where_missing() {
        let prelude = roles_prelude(DUMPALL);
        assert!(!prelude.contains("\\restrict"), "{prelude}");
        assert!(!prelude.contains("GRANTED BY"), "{prelude}");
        assert!(prelude.contains("GRANT mes_owner TO \"Line \"\"Operator\"\"\";"));
        assert!(
            prelude.contains("WHERE rolname = 'Line \"Operator\"'"),
            "{prelude}"
        );
        assert!(
            prelude.contains("EXECUTE 'ALTER ROLE \"Line \"\"Operator\"\"\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD ''it''''s''';"),
            "{prelude}"
        );
        assert_eq!(prelude.matches("IF NOT EXISTS").count(), 3);
        // Settings belong to their role's block.
        let operator_block = prelude
            .split("DO $mesbak$")
            .find(|block| block.contains("rolname = 'Line"))
            .unwrap();
        assert!(operator_block.contains("SET search_path"));
    }

    #[test]
    fn dump_reader_counts_rows_per_table_across_blocks() {
        let dump = "SET x = 1;\nCREATE SCHEMA mes_core;\nCREATE SCHEMA \"Odd \"\"Name\"\"\";\n\
                    COPY mes_core.asset (id, name) FROM stdin;\n1\ta\n2\tb\\nc\n3\t\\.x\n\\.\n\n\
                    COPY \"Odd \"\"Name\"\"\".\"Line Name\" (id) FROM stdin;\n\\.\n\
                    COPY public.t (v) FROM stdin;\nx\n\\.\n\
                    CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public;\n";
        for block_size in [1, 2, 7, 1000] {
            let mut reader = DumpReader::default();
            for block in dump.as_bytes().chunks(block_size) {
                reader.feed(block);
            }
            assert_eq!(reader.table_rows["mes_core.asset"], 3);
            assert_eq!(reader.table_rows["Odd \"Name\".Line Name"], 0);
            assert_eq!(reader.table_rows["public.t"], 1);
            assert_eq!(reader.schemas, vec!["mes_core", "Odd \"Name\""]);
            assert!(reader.timescaledb);
            assert_eq!(
                reader.copy_order,
                vec!["mes_core.asset", "Odd \"Name\".Line Name", "public.t"]
            );
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(split_ident("abc;"), Some(("abc".into(), ";")));
    }
}
