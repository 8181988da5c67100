//! Database restore that cannot lose the current data, rollback, and the
//! test restore.
//!
//! Order of a restore: authenticate the whole file (and read its row counts)
//! → check the server can take it (TimescaleDB version, room for a second
//! copy) → stop the writers → the safety backup and the restore into a new
//! database side by side → compare row counts → swap names in one
//! transaction, keeping the old database → restart the writers. The writers
//! stop before the safety backup starts, so it holds everything the swap
//! replaces. Until the swap the live database is not touched; the new
//! database is dropped on any failure (a failed safety backup stops the
//! load, a failed load the safety backup), and a restore cut short by a
//! crash is cleaned up at the next start ([`journal`]).
//!
//! The authentication pass stays before anything is touched: with metadata
//! it only decrypts (no decompression, a fraction of the load's time), and
//! a damaged or foreign file must not stop the writers.
//!
//! A point-in-time restore stops the writers and starts the safety backup
//! earlier, while the scratch cluster recovers, once the files it recovers
//! from are authenticated ([`LiveSide::start_safety_backup`]): the safety
//! backup then no longer shares the cores with the load.
//!
//! The SQL comes from a backup file or, for a point-in-time restore, from
//! a recovered scratch cluster's pg_dump streamed straight into the load
//! ([`plan::Input`]); then the stream's own row counts are what psql's
//! COPY reports must match.
//!
//! Every step goes through [`crate::postgres::Server`]: inside the database
//! container when one is configured, so no port needs publishing.

mod journal;
mod load;
mod plan;
mod previous;
mod swap;
mod test_restore;

use std::sync::Arc;

use mesbak_interface::{BackupKind, Error, RestoreOptions};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::backup;
use crate::jobs::{Job, now_rfc3339};
use crate::kept;
use crate::postgres::{Server, Session, catalog};
use crate::recovery::Touched;
use crate::state::KeptRecord;
use crate::storage::{BackupRef, Storage, human_bytes};

pub use journal::{interrupted, recover};
pub use load::compare_rows;
pub use previous::{drop_previous, rollback};
pub use test_restore::{
    pick_backup as pick_test_restore_backup, require_database_backup, run as test_restore,
    run_recovered as test_restore_recovered,
};

use journal::InProgress;
use plan::{Plan, Room, authenticate, preflight};

/// A dated suffix for database names: `20261124_143000`.
fn stamp() -> String {
    Storage::restore_point(OffsetDateTime::now_utc()).replace('-', "")
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
    run_planned(&app, &job, plan, options).await
}

/// Restores the configured database of a recovered cluster (`scratch`, a
/// point-in-time recovery) over the live one, its side readied while the
/// cluster recovered: the dump streams straight into the load, through
/// the same checks, safety backup and swap; `dumped` is cancelled once the
/// dump has been read to its end.
pub async fn run_recovered(
    app: &App,
    job: &Job,
    live: LiveSide,
    scratch: Server,
    dumped: CancellationToken,
    label: String,
    options: RestoreOptions,
) -> Result<String, Error> {
    match plan::live(app, scratch, dumped, label).await {
        Ok(plan) => finish_planned(app, job, plan, live, options).await,
        Err(err) => Err(live.abandon(err).await),
    }
}

/// The live side of a restore made ready: the server up (its container
/// started if it was stopped), a restore a crash cut short cleaned up, and
/// whether the live database exists. Nothing of the live database is
/// touched; a point-in-time restore readies it while the scratch cluster
/// recovers.
pub struct LiveSide {
    session: Session,
    live_exists: bool,
    room: Room,
    /// The safety backup, when it started before the plan was ready.
    early_safety: Option<EarlySafety>,
}

/// A safety backup running in its own task, the writers stopped before it.
struct EarlySafety {
    /// Stops it; the load of the same restore shares it, so that either
    /// failing stops the other.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl EarlySafety {
    async fn finish(self) -> Result<(), Error> {
        self.task.await.unwrap_or_else(|err| {
            Err(Error::Failed(format!(
                "the safety backup stopped unexpectedly ({err}); the live database was not changed"
            )))
        })
    }

    /// Stops it and waits until it has let go of the server (a partial
    /// file is removed by the backup itself).
    async fn abandon(self) {
        self.stop.cancel();
        let _ = self.finish().await;
    }
}

/// The safety backup of a restore.
enum Safety {
    Skip,
    /// Taken beside the load.
    Take,
    /// Started before the load, still running or done.
    Started(EarlySafety),
}

impl Safety {
    async fn abandon(self) {
        if let Safety::Started(early) = self {
            early.abandon().await;
        }
    }
}

impl LiveSide {
    /// Readies the live side; on failure what it touched is put back.
    pub async fn prepare(app: &App, job: &Job) -> Result<LiveSide, Error> {
        let mut session = app.database_session().await?;
        match ready_live(app, job, &mut session).await {
            Ok((live_exists, room)) => Ok(LiveSide {
                session,
                live_exists,
                room,
                early_safety: None,
            }),
            Err(err) => session.end(Err(err), |_: &LiveSide| String::new()).await,
        }
    }

    /// Stops the writers and starts the safety backup now, before the
    /// restore's plan is ready (nothing when there is no live database or
    /// `options` skip the safety backup). Only for files already
    /// authenticated: a damaged file must not stop the writers.
    pub async fn start_safety_backup(
        &mut self,
        app: &Arc<App>,
        job: &Arc<Job>,
        options: &RestoreOptions,
    ) -> Result<(), Error> {
        if !self.live_exists
            || options.skip_safety_backup == Some(true)
            || self.early_safety.is_some()
        {
            return Ok(());
        }
        if let Some(touched) = self.session.touched() {
            stop_writers(app, job, touched).await?;
        }
        let stop = job.cancel_token().child_token();
        let (app, job, server, beside) = (
            app.clone(),
            job.clone(),
            self.session.server.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            crate::fault_point::pause(&app.config.state_dir, "restore-safety-started").await;
            safety_backup(&app, &job, &server, &beside).await
        });
        self.early_safety = Some(EarlySafety { stop, task });
        Ok(())
    }

    /// Puts back what readying touched (an early safety backup stopped,
    /// the writers started), for a restore that does not go on because of
    /// `err`; returns `err`.
    pub async fn abandon(self, err: Error) -> Error {
        if let Some(early) = self.early_safety {
            early.abandon().await;
        }
        match self.session.end(Err(err), |_: &()| String::new()).await {
            Err(err) => err,
            Ok(()) => unreachable!("a failed result stays failed"),
        }
    }
}

/// The steps before a restore or test restore plans its database: the
/// server up, a restore a crash cut short cleaned up, whether the live
/// database exists and the room readings.
async fn ready_live(app: &App, job: &Job, session: &mut Session) -> Result<(bool, Room), Error> {
    session.ensure_up(job).await?;
    let server = &session.server;
    journal::recover(app, server).await?;
    let live = &app.config.database.name;
    let live_exists = catalog::database_exists(server, live).await?;
    let room = Room::read(server, live_exists.then_some(live.as_str())).await?;
    Ok((live_exists, room))
}

async fn run_planned(
    app: &App,
    job: &Job,
    plan: Plan,
    options: RestoreOptions,
) -> Result<String, Error> {
    let live = LiveSide::prepare(app, job).await?;
    finish_planned(app, job, plan, live, options).await
}

async fn finish_planned(
    app: &App,
    job: &Job,
    plan: Plan,
    live: LiveSide,
    options: RestoreOptions,
) -> Result<String, Error> {
    let LiveSide {
        mut session,
        live_exists,
        room,
        early_safety,
    } = live;
    let mut safety = Some(match early_safety {
        Some(early) => Safety::Started(early),
        None if live_exists && options.skip_safety_backup != Some(true) => Safety::Take,
        None => Safety::Skip,
    });
    let result = async {
        let server = session.server.clone();
        let timescale = preflight(app, job, &server, &plan, &room).await?;
        if let Some(touched) = session.touched() {
            stop_writers(app, job, touched).await?;
        }
        let safety = safety
            .take()
            .expect("the safety backup is handed over once");
        restore_database(
            app,
            job,
            &server,
            &plan,
            timescale.as_ref(),
            live_exists,
            safety,
        )
        .await
    }
    .await;
    // Not handed over: the restore stopped before its load.
    if let Some(safety) = safety {
        safety.abandon().await;
    }
    session.end(result, String::clone).await
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

/// The safety backup of the live database, beside the load.
async fn safety_backup(
    app: &App,
    job: &Job,
    server: &Server,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let point = Storage::restore_point(OffsetDateTime::now_utc());
    let safety = backup::dump(
        app,
        job,
        server,
        &point,
        Some(crate::trust::SAFETY_TAG),
        backup::Shown::Beside(stop),
    )
    .await?;
    job.warn(format!(
        "safety backup of the current database: {}",
        safety.id
    ));
    Ok(())
}

/// Runs `work` and `beside` together; the first to fail stops the other
/// (through `stop`) and its error is the one returned.
async fn side_by_side(
    stop: &CancellationToken,
    work: impl std::future::Future<Output = Result<(), Error>>,
    beside: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    let first_error = std::sync::Mutex::new(None);
    let watch = |result: Result<(), Error>| {
        if let Err(err) = result {
            first_error.lock().expect("error slot").get_or_insert(err);
            stop.cancel();
        }
    };
    tokio::join!(async { watch(work.await) }, async { watch(beside.await) });
    match first_error.into_inner().expect("error slot") {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore_database(
    app: &App,
    job: &Job,
    server: &Server,
    plan: &Plan,
    timescale: Option<&crate::postgres::timescale::RestorePlan>,
    live_exists: bool,
    safety: Safety,
) -> Result<String, Error> {
    let live = app.config.database.name.clone();
    let stamp = stamp();
    let new_db = format!("{live}_restore_{stamp}");
    let previous = format!("{live}_previous_{stamp}");

    let journaled = journal::save(
        app,
        Some(&InProgress {
            database: new_db.clone(),
            previous_name: Some(previous.clone()),
            live_name: live.clone(),
            backup: plan.label().to_owned(),
        }),
    );
    if let Err(err) = journaled {
        safety.abandon().await;
        return Err(err);
    }
    let state_dir = &app.config.state_dir;
    crate::fault_point::pause(state_dir, "restore-journaled").await;
    // The job's cancel stops both; a failure of either stops the other.
    let stop = match &safety {
        Safety::Started(early) => early.stop.clone(),
        Safety::Skip | Safety::Take => job.cancel_token().child_token(),
    };
    let load = async {
        load::create_database_like(server, &new_db, live_exists.then_some(live.as_str())).await?;
        let workers = app.config.restore.load_workers();
        let loaded = load::load(job, server, plan, timescale, &new_db, workers, &stop).await?;
        if plan.lacks_database_facts && live_exists {
            // The old stack's dump lacks the database's own settings,
            // grants and comment: keep the live database's, or the swap
            // would lose them (a search_path set on the database, say).
            job.set_stage("carrying the live database's settings over");
            let facts = crate::postgres::facts::read(server, &live).await?;
            server.execute(&new_db, &facts.to_sql()).await?;
        }
        job.set_stage("comparing row counts with the backup");
        // The server's own count of the rows each COPY stored; a full count
        // when the output could not be matched to the tables.
        let restored = match &loaded.copied_rows {
            Some(rows) => rows.clone(),
            None => catalog::table_row_counts(server, &new_db).await?,
        };
        let differences = compare_rows(plan.expected(&loaded), &restored);
        if !differences.is_empty() {
            return Err(Error::Integrity(format!(
                "the restored copy does not match the backup ({}); the live database was not changed",
                differences.join("; ")
            )));
        }
        Ok(())
    };
    let safety = async {
        match safety {
            Safety::Skip => Ok(()),
            Safety::Take => safety_backup(app, job, server, &stop).await,
            Safety::Started(early) => early.finish().await,
        }
    };
    // Boxed: the two futures side by side are too big for a worker's stack.
    let loaded = side_by_side(&stop, Box::pin(load), Box::pin(safety)).await;
    if loaded.is_ok() {
        crate::fault_point::pause(state_dir, "restore-loaded").await;
    }
    // The point of no return: once the names are switched, the restore
    // finishes (a rollback undoes it).
    let loaded = loaded.and_then(|()| {
        job.commit(
            format!("the live database '{live}' is being switched to the restored copy"),
            load::CANCELLED_LOAD,
        )
    });
    if let Err(err) = loaded {
        journal::drop_database(app, server, &new_db).await?;
        return Err(err);
    }

    job.set_stage(format!("switching '{live}' to the restored copy"));
    swap::swap(
        server,
        &live,
        live_exists.then_some(previous.as_str()),
        &new_db,
    )
    .await?;
    // From here the restore has happened: a failure to record it is a
    // warning, and the journal (kept) lets the next start record it.
    crate::fault_point::pause(state_dir, "restore-swapped").await;
    let recorded = if live_exists {
        let size_bytes = catalog::database_size(server, &previous).await.unwrap_or(0);
        kept::record_restore(
            app,
            KeptRecord {
                name: previous.clone(),
                live_name: live.clone(),
                replaced_at: now_rfc3339(),
                restored_backup: plan.label().to_owned(),
                size_bytes,
            },
        )
    } else {
        Ok(())
    };
    let recorded = match recorded {
        Ok(()) => {
            crate::fault_point::pause(state_dir, "restore-recorded").await;
            journal::save(app, None)
        }
        Err(err) => Err(err),
    };
    match recorded {
        Ok(()) => {}
        Err(err) => job.warn(format!(
            "the restore is done, but recording the kept database failed ({}); the agent records it at its next start",
            err.message()
        )),
    }
    previous::reconcile(app, server).await;
    let older: Vec<String> = kept::list(app)
        .into_iter()
        .filter(|db| db.name != previous)
        .map(|db| format!("'{}' ({})", db.name, human_bytes(db.size_bytes)))
        .collect();
    if !older.is_empty() {
        job.warn(format!(
            "databases kept by earlier restores still use space: {}; drop each with `mesbakctl restore --drop-previous NAME` when it is no longer needed",
            older.join(", ")
        ));
    }
    let label = plan.label();
    tracing::info!(job = job.id, file = %label, database = %live, "database restored");
    Ok(if live_exists {
        format!(
            "restored {label} into '{live}'; the previous database is kept as '{previous}': `mesbakctl restore --rollback` puts it back (once), `mesbakctl restore --drop-previous {previous}` deletes it"
        )
    } else {
        format!("restored {label} into the new database '{live}'")
    })
}
