//! Database restore that cannot lose the current data, rollback, and the
//! test restore.
//!
//! Order of a restore: authenticate the whole file (and read its row counts)
//! → safety backup → stop the writers → restore into a new database →
//! compare row counts → swap names in one transaction, keeping the old
//! database → restart the writers. Until the swap the live database is not
//! touched; the new database is dropped on any failure, and a restore cut
//! short by a crash is cleaned up at the next start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesbak_format::Key;
use mesbak_interface::{BackupKind, Error, RestoreOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::backup;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::BackupReader;
use crate::postgres::{
    DumpReader, MAINTENANCE_DB, Server, quote_ident, quote_literal, sql_error_text,
};
use crate::process;
use crate::recovery::{Touched, put_back_after};
use crate::state::{PreviousDatabase, TestRestoreRecord};
use crate::storage::{BackupRef, Storage, human_bytes, open_backup};

/// A dated suffix for database names: `20261124_143000`.
fn stamp() -> String {
    Storage::restore_point(OffsetDateTime::now_utc()).replace('-', "")
}

/// What a restore relies on, settled while authenticating the file.
pub struct Plan {
    /// Loaded once: both passes over the file share its derived key.
    key: Key,
    /// Row counts the restored database must have.
    expected: BTreeMap<String, u64>,
    /// Whether `expected` comes from the metadata (then the file's own
    /// counts must agree with it too).
    from_metadata: bool,
    timescaledb: bool,
}

/// A database the agent created and must drop if it is interrupted, kept in
/// `state_dir/restore.json` while the work runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InProgress {
    /// The scratch or new database.
    database: String,
    /// For a restore: the name the live database gets at the swap.
    previous_name: Option<String>,
    live_name: String,
    backup: String,
}

/// Authenticates every chunk before anything is touched. With metadata the
/// decryption alone suffices (the SQL is read during the load); without it
/// the SQL is read now for the row counts and TimescaleDB.
pub async fn authenticate(app: &App, job: &Job, backup: &BackupRef) -> Result<Plan, Error> {
    let key = app.key()?;
    let file = open_backup(&backup.path)?;
    let size = file
        .metadata()
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", backup.path.display())))?
        .len();
    job.reset_bytes(size);
    job.set_stage(format!("authenticating {}", backup.id));
    let metadata = app
        .storage
        .metadata(backup)
        .filter(|info| !info.table_rows.is_empty());
    let mut reader = BackupReader::start(
        backup.id.clone(),
        file,
        key.clone(),
        metadata.is_none(),
        job.bytes_done.clone(),
    );
    let mut dump = DumpReader::default();
    while let Some(block) = reader.blocks.recv().await {
        if metadata.is_none() {
            dump.feed(&block);
        }
    }
    reader.finish().await?;
    Ok(match metadata {
        Some(info) => Plan {
            key,
            expected: info.table_rows,
            from_metadata: true,
            timescaledb: !info.timescaledb_version.is_empty(),
        },
        None => Plan {
            key,
            expected: dump.table_rows,
            from_metadata: false,
            timescaledb: dump.timescaledb,
        },
    })
}

pub async fn run(
    app: Arc<App>,
    job: Arc<Job>,
    backup: BackupRef,
    options: RestoreOptions,
) -> Result<String, Error> {
    if backup.kind == BackupKind::Ignition {
        return crate::ignition::restore(app, job, backup, options).await;
    }
    let plan = authenticate(&app, &job, &backup).await?;
    let server = app.database().await?;
    let mut touched = server.touched(&app.journal);
    let result = async {
        server.ensure_up(&job, touched.as_mut()).await?;
        recover(&app, &server).await?;
        if options.skip_safety_backup != Some(true) {
            job.set_stage("taking a safety backup of the current database");
            let live_exists = database_exists(&server, &app.config.database.name).await?;
            if live_exists {
                let point = Storage::restore_point(OffsetDateTime::now_utc());
                let safety = backup::database(&app, &job, &point, Some("pre-restore")).await?;
                job.warn(format!(
                    "safety backup of the current database: {}",
                    safety.id
                ));
            }
        }
        if let Some(touched) = touched.as_mut() {
            stop_writers(&app, &job, touched).await?;
        }
        restore_database(&app, &job, &server, &backup, &plan).await
    }
    .await;
    put_back_after(touched, result, String::clone).await
}

/// Stops the configured writers; a writer that does not exist is noted.
async fn stop_writers(app: &App, job: &Job, touched: &mut Touched) -> Result<(), Error> {
    for container in &app.config.restore.stop_containers {
        match touched.ensure_stopped(container, 30).await {
            Ok(_) => {}
            Err(Error::NotFound(_)) => job.warn(format!(
                "container '{container}' (restore.stop_containers) does not exist; nothing to stop"
            )),
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn restore_database(
    app: &App,
    job: &Job,
    server: &Server,
    backup: &BackupRef,
    plan: &Plan,
) -> Result<String, Error> {
    let live = app.config.database.name.clone();
    let stamp = stamp();
    let new_db = format!("{live}_restore_{stamp}");
    let previous = format!("{live}_previous_{stamp}");
    let admin = server.connect(MAINTENANCE_DB).await?;
    let live_exists = database_exists_sql(&admin, &live).await?;

    save_in_progress(
        app,
        Some(&InProgress {
            database: new_db.clone(),
            previous_name: Some(previous.clone()),
            live_name: live.clone(),
            backup: backup.id.clone(),
        }),
    )?;
    let loaded = async {
        create_database_like(&admin, &new_db, live_exists.then_some(live.as_str())).await?;
        let loaded = load(job, server, backup, plan, &new_db).await?;
        job.set_stage("comparing row counts with the backup");
        // The server's own count of the rows each COPY stored; a full count
        // when the output could not be matched to the tables.
        let restored = match loaded.copied_rows {
            Some(rows) => rows,
            None => {
                let client = server.connect(&new_db).await?;
                crate::postgres::table_row_counts(&client).await?
            }
        };
        let differences = compare_rows(&plan.expected, &restored);
        if !differences.is_empty() {
            return Err(Error::Integrity(format!(
                "the restored copy does not match the backup ({}); the live database was not changed",
                differences.join("; ")
            )));
        }
        Ok(())
    }
    .await;
    if let Err(err) = loaded {
        drop_database(app, &admin, &new_db).await?;
        return Err(err);
    }

    job.set_stage(format!("switching '{live}' to the restored copy"));
    swap(
        &admin,
        &live,
        live_exists.then_some(previous.as_str()),
        &new_db,
    )
    .await?;
    let older = app.state.get().previous_database;
    if live_exists {
        app.state.update(|state| {
            state.previous_database = Some(PreviousDatabase {
                name: previous.clone(),
                live_name: live.clone(),
                replaced_at: now_rfc3339(),
                restored_backup: backup.id.clone(),
            })
        })?;
    }
    save_in_progress(app, None)?;
    if let Some(older) = older.filter(|_| live_exists) {
        job.warn(format!(
            "an older kept database '{}' (from a restore at {}) still exists; drop it with DROP DATABASE when it is no longer needed",
            older.name, older.replaced_at
        ));
    }
    tracing::info!(job = job.id, file = %backup.id, database = %live, "database restored");
    Ok(if live_exists {
        format!(
            "restored {} into '{live}'; the previous database is kept as '{previous}': `mesbakctl restore --rollback` puts it back, `mesbakctl restore --drop-previous` deletes it",
            backup.id
        )
    } else {
        format!("restored {} into the new database '{live}'", backup.id)
    })
}

/// Streams the backup's SQL into `database` through psql with
/// ON_ERROR_STOP, wrapped in TimescaleDB's pre/post restore when needed.
async fn load(
    job: &Job,
    server: &Server,
    backup: &BackupRef,
    plan: &Plan,
    database: &str,
) -> Result<Loaded, Error> {
    job.set_stage(format!("restoring {} into '{database}'", backup.id));
    let file = open_backup(&backup.path)?;
    job.reset_bytes(file.metadata().map(|m| m.len()).unwrap_or(0));
    let mut reader = BackupReader::start(
        backup.id.clone(),
        file,
        plan.key.clone(),
        true,
        job.bytes_done.clone(),
    );
    let mut dump = DumpReader::default();
    let mut plain_bytes = 0u64;
    let argv = server.argv("psql", &["-X", "-v", "ON_ERROR_STOP=1", "-d", database]);
    let spawned = server.runner.spawn(&argv, &server.env(), true).await?;
    let process::Spawned {
        mut stdout,
        stdin,
        done,
    } = spawned;
    let mut stdin = stdin.ok_or_else(|| Error::Failed("psql has no input".into()))?;
    // psql reports `COPY <rows>` per COPY it ran; everything else is noise.
    let copy_reports = tokio::spawn(async move {
        let mut counts = Vec::new();
        let mut line = Vec::new();
        while let Some(block) = stdout.recv().await {
            for &byte in block.iter() {
                if byte == b'\n' {
                    if let Some(rows) = line.strip_prefix(b"COPY ") {
                        counts.extend(
                            std::str::from_utf8(rows)
                                .ok()
                                .and_then(|r| r.parse::<u64>().ok()),
                        );
                    }
                    line.clear();
                } else if line.len() < 64 {
                    line.push(byte);
                }
            }
        }
        counts
    });
    let (prefix, suffix) = if plan.timescaledb {
        (
            "CREATE EXTENSION IF NOT EXISTS timescaledb;\nSELECT timescaledb_pre_restore();\n",
            "\nSELECT timescaledb_post_restore();\n",
        )
    } else {
        ("", "")
    };
    let mut fed = stdin.write_all(prefix.as_bytes()).await.is_ok();
    while fed {
        let Some(block) = reader.blocks.recv().await else {
            break;
        };
        dump.feed(&block);
        plain_bytes += block.len() as u64;
        fed = stdin.write_all(&block).await.is_ok();
    }
    if fed {
        fed = stdin.write_all(suffix.as_bytes()).await.is_ok();
    }
    let _ = stdin.shutdown().await;
    drop(stdin);
    let read = if fed {
        reader.finish().await.map(|_| ())
    } else {
        drop(reader);
        Ok(())
    };
    let outcome = process::join(done).await?;
    let copy_reports = copy_reports.await.unwrap_or_default();
    outcome.check(|detail| {
        Error::Database(format!(
            "psql stopped restoring {} into '{database}': {detail}",
            backup.id
        ))
    })?;
    read?;
    if !fed {
        return Err(Error::Database(format!(
            "psql stopped reading while restoring {} into '{database}'",
            backup.id
        )));
    }
    if plan.from_metadata {
        let differences = compare_rows(&plan.expected, &dump.table_rows);
        if !differences.is_empty() {
            return Err(Error::Integrity(format!(
                "row counts differ from the backup's metadata ({}); the metadata file does not belong to this backup",
                differences.join("; ")
            )));
        }
    }
    let copied_rows = (copy_reports.len() == dump.copy_order.len())
        .then(|| dump.copy_order.iter().cloned().zip(copy_reports).collect());
    Ok(Loaded {
        plain_bytes,
        copied_rows,
    })
}

/// What a load did.
struct Loaded {
    plain_bytes: u64,
    /// Rows stored per table, as the server reported each COPY; None when
    /// the reports could not be matched to the dump's COPY statements.
    copied_rows: Option<BTreeMap<String, u64>>,
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

async fn database_exists(server: &Server, name: &str) -> Result<bool, Error> {
    let admin = server.connect(MAINTENANCE_DB).await?;
    database_exists_sql(&admin, name).await
}

async fn database_exists_sql(client: &tokio_postgres::Client, name: &str) -> Result<bool, Error> {
    let row = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|err| sql(err, "cannot list databases"))?;
    Ok(row.is_some())
}

fn sql(err: tokio_postgres::Error, what: &str) -> Error {
    Error::Database(format!("{what}: {}", sql_error_text(&err)))
}

/// Creates `name` empty, with the owner, encoding and locale of `like`.
async fn create_database_like(
    client: &tokio_postgres::Client,
    name: &str,
    like: Option<&str>,
) -> Result<(), Error> {
    let mut statement = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(like) = like {
        let row = client
            .query_one(
                "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype \
                 FROM pg_database WHERE datname = $1",
                &[&like],
            )
            .await
            .map_err(|err| sql(err, "cannot read the live database's settings"))?;
        let owner: String = row.get(0);
        let encoding: String = row.get(1);
        let collate: String = row.get(2);
        let ctype: String = row.get(3);
        statement.push_str(&format!(
            " OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&owner),
            quote_literal(&encoding),
            quote_literal(&collate),
            quote_literal(&ctype)
        ));
    }
    client
        .batch_execute(&statement)
        .await
        .map_err(|err| sql(err, &format!("cannot create database '{name}'")))
}

/// Drops a database the agent made. On failure the in-progress record
/// stays, so the next start or restore drops it.
async fn drop_database(
    app: &App,
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), Error> {
    let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    match client.batch_execute(&statement).await {
        Ok(()) => save_in_progress(app, None),
        Err(err) => {
            tracing::error!(database = name, error = %sql_error_text(&err), "could not drop a database the agent created; retrying at the next start");
            Ok(())
        }
    }
}

/// Renames `live` to `previous` and `new` to `live` in one transaction,
/// after ending the other sessions on `live`. Retries briefly: a session
/// ends asynchronously after it is terminated.
async fn swap(
    client: &tokio_postgres::Client,
    live: &str,
    previous: Option<&str>,
    new: &str,
) -> Result<(), Error> {
    let mut statement = String::from("BEGIN;\n");
    if let Some(previous) = previous {
        statement.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            quote_ident(live),
            quote_ident(previous)
        ));
    }
    statement.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {};\nCOMMIT;",
        quote_ident(new),
        quote_ident(live)
    ));
    let mut last_error = String::new();
    for _ in 0..20 {
        if previous.is_some() {
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&live],
                )
                .await
                .map_err(|err| sql(err, "cannot end the sessions on the live database"))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match client.batch_execute(&statement).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                let _ = client.batch_execute("ROLLBACK").await;
                last_error = sql_error_text(&err);
            }
        }
    }
    Err(Error::Database(format!(
        "cannot switch '{live}' to the restored copy ({last_error}); the live database was not changed"
    )))
}

fn save_in_progress(app: &App, record: Option<&InProgress>) -> Result<(), Error> {
    let path = app.config.state_dir.join("restore.json");
    match record {
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::Failed(format!(
                "cannot remove {}: {err}",
                path.display()
            ))),
        },
        Some(record) => {
            let tmp = app.config.state_dir.join(".restore.json.tmp");
            let _ = std::fs::remove_file(&tmp);
            let write = || -> std::io::Result<()> {
                let mut file = crate::storage::create_private_file(&tmp)?;
                std::io::Write::write_all(
                    &mut file,
                    &serde_json::to_vec_pretty(record).expect("serialises"),
                )?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                crate::storage::sync_dir(&app.config.state_dir)
            };
            write().map_err(|err| {
                Error::Failed(format!(
                    "cannot record the restore in {}: {err}; nothing was changed",
                    path.display()
                ))
            })
        }
    }
}

/// Whether a restore or test restore was cut short and left work behind.
pub fn interrupted(app: &App) -> bool {
    app.config.state_dir.join("restore.json").exists()
}

/// Cleans up after a restore or test restore that was cut short: drops
/// its database, or, when the swap had happened, records the kept one.
pub async fn recover(app: &App, server: &Server) -> Result<(), Error> {
    let path = app.config.state_dir.join("restore.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let Ok(record) = serde_json::from_slice::<InProgress>(&bytes) else {
        tracing::warn!(file = %path.display(), "ignoring an unreadable restore record");
        return save_in_progress(app, None);
    };
    let cleanup = async {
        let admin = server.connect(MAINTENANCE_DB).await?;
        if database_exists_sql(&admin, &record.database).await? {
            tracing::warn!(database = %record.database, backup = %record.backup, "dropping the database of an interrupted restore");
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&record.database)
                ))
                .await
                .map_err(|err| sql(err, &format!("cannot drop '{}'", record.database)))?;
        } else if let Some(previous) = &record.previous_name {
            if database_exists_sql(&admin, previous).await? {
                app.state.update(|state| {
                    state.previous_database = Some(PreviousDatabase {
                        name: previous.clone(),
                        live_name: record.live_name.clone(),
                        replaced_at: now_rfc3339(),
                        restored_backup: record.backup.clone(),
                    })
                })?;
            }
        }
        save_in_progress(app, None)
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

/// Puts back the database the last restore replaced.
pub async fn rollback(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let previous = app.state.get().previous_database.ok_or_else(|| {
        Error::NotFound("there is no database kept from a restore to roll back to".into())
    })?;
    let server = app.database().await?;
    let mut touched = server.touched(&app.journal);
    let result = async {
        server.ensure_up(&job, touched.as_mut()).await?;
        let admin = server.connect(MAINTENANCE_DB).await?;
        if !database_exists_sql(&admin, &previous.name).await? {
            return Err(Error::NotFound(format!(
                "the kept database '{}' no longer exists",
                previous.name
            )));
        }
        if let Some(touched) = touched.as_mut() {
            stop_writers(&app, &job, touched).await?;
        }
        let replaced = format!("{}_rolledback_{}", previous.live_name, stamp());
        job.set_stage(format!("putting '{}' back as '{}'", previous.name, previous.live_name));
        let live_exists = database_exists_sql(&admin, &previous.live_name).await?;
        swap(
            &admin,
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
    put_back_after(touched, result, String::clone).await
}

/// Drops the database the last restore kept.
pub async fn drop_previous(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let previous = app.state.get().previous_database.ok_or_else(|| {
        Error::NotFound("there is no database kept from a restore to drop".into())
    })?;
    let server = app.database().await?;
    let mut touched = server.touched(&app.journal);
    let result = async {
        server.ensure_up(&job, touched.as_mut()).await?;
        job.set_stage(format!("dropping '{}'", previous.name));
        let admin = server.connect(MAINTENANCE_DB).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&previous.name)
            ))
            .await
            .map_err(|err| sql(err, &format!("cannot drop '{}'", previous.name)))?;
        app.state.update(|state| state.previous_database = None)?;
        Ok::<_, Error>(format!("dropped the kept database '{}'", previous.name))
    }
    .await;
    put_back_after(touched, result, String::clone).await
}

/// The backup a test restore uses: the one named, else the newest database backup.
pub fn pick_test_restore_backup(app: &App, given: &str, is_root: bool) -> Result<BackupRef, Error> {
    if !given.is_empty() {
        let found = app.storage.resolve(given, is_root)?;
        if found.kind != BackupKind::Database {
            return Err(Error::InvalidArgument(format!(
                "{} is not a database backup; test restores check database backups",
                found.id
            )));
        }
        return Ok(found);
    }
    let newest = app
        .storage
        .list()?
        .into_iter()
        .find(|b| b.kind == BackupKind::Database)
        .ok_or_else(|| {
            Error::NotFound(
                "there is no database backup to test yet; run `mesbakctl backup database` first"
                    .into(),
            )
        })?;
    app.storage.resolve(&newest.id, is_root)
}

/// Restores into a scratch database, checks it, drops it, records the result.
pub async fn test_restore(
    app: Arc<App>,
    job: Arc<Job>,
    backup: BackupRef,
) -> Result<String, Error> {
    let result = test_restore_checks(&app, &job, &backup).await;
    let record = TestRestoreRecord {
        time: now_rfc3339(),
        backup: backup.id.clone(),
        ok: result.is_ok(),
        message: match &result {
            Ok(message) => message.clone(),
            Err(err) => err.message(),
        },
    };
    app.state
        .update(|state| state.last_test_restore = Some(record))?;
    result
}

async fn test_restore_checks(app: &App, job: &Job, backup: &BackupRef) -> Result<String, Error> {
    let plan = authenticate(app, job, backup).await?;
    let server = app.database().await?;
    let mut touched = server.touched(&app.journal);
    let result = async {
        server.ensure_up(job, touched.as_mut()).await?;
        recover(app, &server).await?;
        let scratch = format!("{}_testrestore_{}", app.config.database.name, stamp());
        let admin = server.connect(MAINTENANCE_DB).await?;
        save_in_progress(
            app,
            Some(&InProgress {
                database: scratch.clone(),
                previous_name: None,
                live_name: app.config.database.name.clone(),
                backup: backup.id.clone(),
            }),
        )?;
        let checked = async {
            create_database_like(&admin, &scratch, None).await?;
            let plain_bytes = load(job, &server, backup, &plan, &scratch)
                .await?
                .plain_bytes;
            job.set_stage("checking the restored copy");
            let checks = check_restored(app, &server, &scratch, &plan.expected).await?;
            Ok::<_, Error>(format!("{checks} ({} of SQL)", human_bytes(plain_bytes)))
        }
        .await;
        drop_database(app, &admin, &scratch).await?;
        checked
    }
    .await;
    let message = put_back_after(touched, result, |message| {
        format!("the test restore passed ({message})")
    })
    .await?;
    Ok(format!("test restore of {} passed: {message}", backup.id))
}

/// Row counts, schemas and a probe query on a restored copy.
async fn check_restored(
    app: &App,
    server: &Server,
    database: &str,
    expected: &BTreeMap<String, u64>,
) -> Result<String, Error> {
    let client = server.connect(database).await?;
    let restored = crate::postgres::table_row_counts(&client).await?;
    let differences = compare_rows(expected, &restored);
    if !differences.is_empty() {
        return Err(Error::Integrity(format!(
            "row counts differ from the backup's metadata: {}",
            differences.join("; ")
        )));
    }
    let schemas = crate::postgres::schemas(&client).await?;
    let missing: Vec<&str> = app
        .config
        .database
        .schemas
        .iter()
        .filter(|s| !schemas.contains(s))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Integrity(format!(
            "the restored copy lacks the schema(s) {}",
            missing.join(", ")
        )));
    }
    let mut probe = String::new();
    if restored.contains_key("mes_core.asset_definition") {
        let count: i64 = client
            .query_one("SELECT count(*) FROM mes_core.asset_definition", &[])
            .await
            .map_err(|err| sql(err, "the probe query on mes_core.asset_definition failed"))?
            .get(0);
        probe = format!(", mes_core.asset_definition answers with {count} rows");
    }
    let rows: u64 = restored.values().sum();
    Ok(format!(
        "{} tables with {rows} rows match, schemas present{probe}",
        restored.len()
    ))
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
