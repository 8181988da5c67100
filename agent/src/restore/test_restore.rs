//! The test restore ("a backup you haven't tested is not a backup"): the
//! backup restored into a scratch database on the same server, checked
//! (row counts, schemas, a probe query), dropped, and the result recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesbak_interface::{BackupKind, Error};
use tokio_util::sync::CancellationToken;

use super::journal::{self, InProgress};
use super::load::{compare_rows, create_database_like, load};
use super::plan::{self, Plan, authenticate, preflight};
use super::stamp;
use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::postgres::{Server, catalog};
use crate::state::TestRestoreRecord;
use crate::storage::{BackupRef, human_bytes};

/// The backup a test restore uses: the one named, else the newest database backup.
pub fn pick_backup(app: &App, given: &str, is_root: bool) -> Result<BackupRef, Error> {
    if !given.is_empty() {
        let found = app.storage.resolve(given, is_root)?;
        require_database_backup(&found)?;
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

/// Test restores check database backups only.
pub fn require_database_backup(backup: &BackupRef) -> Result<(), Error> {
    if backup.kind != BackupKind::Database {
        return Err(Error::InvalidArgument(format!(
            "{} is not a database backup; test restores check database backups",
            backup.id
        )));
    }
    Ok(())
}

/// Restores into a scratch database, checks it, drops it, records the result.
pub async fn run(app: Arc<App>, job: Arc<Job>, backup: BackupRef) -> Result<String, Error> {
    let result = async {
        let plan = authenticate(&app, &job, &backup).await?;
        checks(&app, &job, &plan).await
    }
    .await;
    record(&app, &backup.id, result)
}

/// The test restore of a recovered cluster's database (`scratch`, a
/// point-in-time recovery), its dump streamed straight into the load.
pub async fn run_recovered(
    app: &App,
    job: &Job,
    scratch: Server,
    dumped: CancellationToken,
    label: String,
) -> Result<String, Error> {
    let result = async {
        let plan = plan::live(app, scratch, dumped, label.clone()).await?;
        checks(app, job, &plan).await
    }
    .await;
    record(app, &label, result)
}

/// Records a test restore's result (a cancelled one leaves the last real
/// result standing).
fn record(app: &App, label: &str, result: Result<String, Error>) -> Result<String, Error> {
    if matches!(result, Err(Error::Cancelled(_))) {
        // Neither passed nor failed: the last real result stands.
        return result;
    }
    let record = TestRestoreRecord {
        time: now_rfc3339(),
        backup: label.to_owned(),
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

async fn checks(app: &App, job: &Job, plan: &Plan) -> Result<String, Error> {
    let mut session = app.database_session().await?;
    let result = async {
        let (_, room) = super::ready_live(app, job, &mut session).await?;
        let server = &session.server;
        let live = &app.config.database.name;
        let timescale = preflight(app, job, server, plan, &room).await?;
        let scratch = format!("{live}_testrestore_{}", stamp());
        journal::save(
            app,
            Some(&InProgress {
                database: scratch.clone(),
                previous_name: None,
                live_name: live.clone(),
                backup: plan.label().to_owned(),
            }),
        )?;
        let checked = async {
            create_database_like(server, &scratch, None).await?;
            let loaded = load(
                job,
                server,
                plan,
                timescale.as_ref(),
                &scratch,
                app.config.restore.load_workers(),
                &job.cancel_token(),
            )
            .await?;
            job.set_stage("checking the restored copy");
            let checks = check_restored(app, server, &scratch, plan.expected(&loaded)).await?;
            Ok::<_, Error>(format!(
                "{checks} ({} of SQL)",
                human_bytes(loaded.plain_bytes)
            ))
        }
        .await;
        journal::drop_database(app, server, &scratch).await?;
        checked
    }
    .await;
    let message = session
        .end(result, |message| {
            format!("the test restore passed ({message})")
        })
        .await?;
    Ok(format!(
        "test restore of {} passed: {message}",
        plan.label()
    ))
}

/// Row counts (every table, TimescaleDB's chunks included), schemas and a
/// probe query on a restored copy.
async fn check_restored(
    app: &App,
    server: &Server,
    database: &str,
    expected: &BTreeMap<String, u64>,
) -> Result<String, Error> {
    let restored = catalog::table_row_counts(server, database).await?;
    let differences = compare_rows(expected, &restored);
    if !differences.is_empty() {
        return Err(Error::Integrity(format!(
            "row counts differ from the backup's metadata: {}",
            differences.join("; ")
        )));
    }
    let schemas = catalog::schemas(server, database).await?;
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
        let count = catalog::count_rows(server, database, "mes_core", "asset_definition")
            .await
            .map_err(|err| {
                Error::Integrity(format!(
                    "the probe query on mes_core.asset_definition failed: {}",
                    err.message()
                ))
            })?;
        probe = format!(", mes_core.asset_definition answers with {count} rows");
    }
    let rows: u64 = restored.values().sum();
    Ok(format!(
        "{} tables with {rows} rows match, schemas present{probe}",
        restored.len()
    ))
}
