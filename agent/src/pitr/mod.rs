//! Point-in-time recovery: nightly dumps lose up to a day; with PITR on,
//! the server archives every completed WAL segment, the agent ships each one
//! (compressed, encrypted, in the mesbak format) and keeps physical base
//! backups, so the database can be brought back to any moment from the
//! oldest kept base backup to about a minute ago.
//!
//! Sub-concerns: [`server`] (turning the server's archiving on and off),
//! [`ship`] (collecting segments), [`base`] (base backups), [`chain`] (the
//! catalog: window, gaps, what a recovery needs, retention), [`store`] (the
//! files), [`recover`] (a scratch cluster recovered to the target time,
//! then the ordinary verified restore, its dump streamed into the load),
//! [`tar_stream`] (base backups' archives checked whole and passed on).

mod base;
pub mod chain;
pub mod metrics;
mod recover;
mod server;
mod ship;
mod store;
mod tar_stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesbak_interface::{Error, PitrBase, PitrStatus, RestoreOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::postgres::Server;
use crate::restore;
use crate::storage::human_bytes;

pub use recover::Scratch;
pub use server::Archiving;
pub use store::PitrStore;

/// Files waiting in the server's archive folder that are worth an alert.
const WAITING_ALERT: usize = 10;

/// How long `pitr sync` waits for the server to archive the switched segment.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent's PITR side: its locks, and what the last shipping round
/// found. Shipping, base backups and recoveries each have their own lock,
/// so a base backup or a point-in-time recovery that takes an hour does not
/// stop WAL shipping for that hour (the server's archive folder would fill
/// and the RPO grow with it): they only add files, or read files that are
/// already there.
#[derive(Default)]
pub struct Pitr {
    /// One shipping round at a time: a round lists the server's archive
    /// folder, stores what it finds and removes it there.
    shipping: tokio::sync::Mutex<()>,
    /// One base backup at a time.
    base: tokio::sync::Mutex<()>,
    /// The files in the backup folder: a recovery from them reads the ones
    /// it planned with under a read guard, retention deletes under the
    /// write guard, so it never takes a file from under a recovery.
    local_files: tokio::sync::RwLock<()>,
    /// Set when a base backup's retention found a recovery reading the
    /// files: it runs when that recovery ends, rather than hold the base
    /// backup's job (and its off-site copy) for the recovery's length.
    retention_due: AtomicBool,
    /// The same for the files on the off-site targets: a recovery from
    /// one, and retention there (which waits: off-site recoveries are
    /// rare, and its off-site sync has nothing else to hold up).
    offsite_files: tokio::sync::RwLock<()>,
    last: Mutex<LastRound>,
}

impl Pitr {
    /// Holds off off-site retention while a recovery reads the files of
    /// an off-site target; when one is reading them, `job` says what it
    /// waits for meanwhile.
    pub async fn offsite_retention_guard(
        &self,
        job: &Job,
    ) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        if let Ok(guard) = self.offsite_files.try_write() {
            return guard;
        }
        let stage = job.stage();
        job.set_stage(
            "waiting for a point-in-time recovery to finish reading the off-site files before retention there",
        );
        let guard = self.offsite_files.write().await;
        job.set_stage(stage);
        guard
    }

    fn files(&self, source: &Source) -> &tokio::sync::RwLock<()> {
        match source {
            Source::Local => &self.local_files,
            Source::Offsite(_) => &self.offsite_files,
        }
    }

    /// The last shipping round (what health judges shipping by).
    pub fn last_round(&self) -> LastRound {
        self.last.lock().expect("pitr lock").clone()
    }
}

/// The folders that hold the base backups and the WAL chain.
pub fn folders(backup_dir: &std::path::Path) -> [std::path::PathBuf; 2] {
    let store = PitrStore::new(backup_dir);
    [store.base_dir(), store.wal_dir()]
}

/// The last shipping round, as health sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastRound {
    at: Option<OffsetDateTime>,
    error: Option<String>,
    waiting: usize,
}

fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 6];
    openssl::rand::rand_bytes(&mut bytes)
        .map_err(|err| Error::Failed(format!("no random numbers: {err}")))?;
    Ok(hex::encode(bytes))
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .expect("formatting a time cannot fail")
}

fn archiving(app: &App) -> Result<Archiving, Error> {
    app.state.get().pitr.ok_or_else(|| {
        Error::Failed(
            "point-in-time recovery is off; turn it on with `mesbakctl pitr enable`".into(),
        )
    })
}

/// The configured database container (PITR needs one).
fn container(app: &App) -> Result<String, Error> {
    let container = app.config.database.container.clone();
    if container.is_empty() {
        return Err(Error::Config(
            "point-in-time recovery needs the database in a container (database.container)".into(),
        ));
    }
    Ok(container)
}

/// What `pitr enable` will change, for the confirmation prompt (asks the
/// server; refuses as enabling would).
pub async fn preview_enable(app: &App) -> Result<Vec<String>, Error> {
    let container = container(app)?;
    let server = app.database().await?;
    let settings = server::settings(&server).await;
    server.release().await;
    let settings = settings?;
    let directory = format!(
        "{}/{}",
        settings.data_directory, app.config.pitr.archive_dir
    );
    server::check_enable(&settings, &server.runner, &directory)?;
    let mut lines =
        vec!["Turns point-in-time recovery on. On the database server (ALTER SYSTEM):".to_owned()];
    lines.extend(
        server::describe_changes(&settings, &directory, app.config.pitr.ship_interval_secs)
            .into_iter()
            .map(|change| format!("  - {change}")),
    );
    lines.push(format!(
        "Restarted once: container '{container}' (a few seconds without the database; its clients reconnect)."
    ));
    lines.push("Then a first base backup is taken and WAL is shipped from then on.".into());
    Ok(lines)
}

/// What `pitr disable` will change.
pub fn preview_disable(app: &App) -> Result<Vec<String>, Error> {
    let container = container(app)?;
    let archiving = archiving(app)?;
    Ok(vec![
        "Turns point-in-time recovery off: the last WAL is shipped, then archive_mode, archive_library, basic_archive.archive_directory and archive_timeout are reset (ALTER SYSTEM RESET).".to_owned(),
        format!("Restarted once: container '{container}'."),
        format!(
            "Kept: the base backups and WAL already shipped, until retention removes them; the folder {} on the server is left empty.",
            archiving.archive_directory
        ),
    ])
}

/// What `restore --to-time TIME` will do.
pub async fn preview_restore(app: &App, time: &str, source: &Source) -> Result<Vec<String>, Error> {
    let target = parse_target(time)?;
    let live = &app.config.database.name;
    let mut lines = vec![format!(
        "Restores '{live}' as it was at {}.",
        rfc3339(target)
    )];
    let (span, place) = match source {
        Source::Local => (
            {
                let status = status(app);
                (!status.window_from.is_empty())
                    .then(|| format!("{} to {}", status.window_from, status.window_to))
            },
            String::new(),
        ),
        Source::Offsite(name) => (
            crate::offsite::pitr::window(app, name)
                .await?
                .span()
                .map(|(from, to)| format!("{} to {}", rfc3339(from), rfc3339(to))),
            format!(" on off-site target '{name}'"),
        ),
    };
    match span {
        Some(span) => lines.push(format!("Restorable window{place}: {span}.")),
        None => lines.push(format!(
            "There is no restorable window{place} yet: this will be refused."
        )),
    }
    if let Source::Offsite(name) = source {
        lines.push(format!(
            "The base backup and WAL are fetched from '{name}' into the backup folder's spool first (removed afterwards)."
        ));
    }
    lines.push(
        "Recovered first in a scratch container of the database's own image (nothing live is touched)."
            .into(),
    );
    lines.push(format!(
        "Replaced: the live database '{live}', only after the recovered copy has been checked."
    ));
    lines.push(format!(
        "Kept: the current '{live}', renamed '{live}_previous_<time>'; `mesbakctl restore --rollback` puts it back once."
    ));
    if !app.config.restore.stop_containers.is_empty() {
        lines.push(format!(
            "Stopped during the restore, started again after: container(s) {}.",
            crate::ignition::quoted(&app.config.restore.stop_containers)
        ));
    }
    lines.push(
        "A safety backup of the current database is taken while the recovered copy loads (unless --skip-safety-backup)."
            .into(),
    );
    Ok(lines)
}

/// `pitr enable`: configures the server, restarts it once, takes the first
/// base backup and starts shipping.
pub async fn enable(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let container = container(&app)?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        let server = session.server.clone();
        let settings = server::settings(&server).await?;
        let directory = format!("{}/{}", settings.data_directory, app.config.pitr.archive_dir);
        server::check_enable(&settings, &server.runner, &directory)?;
        let changes = server::describe_changes(&settings, &directory, app.config.pitr.ship_interval_secs);
        job.set_stage(format!(
            "configuring continuous archiving ({}) and restarting '{container}'",
            changes.join(", ")
        ));
        let settings = server::enable(
            &mut session,
            app.config.pitr.ship_interval_secs,
            &directory,
            &container,
        )
        .await?;
        let archiving = Archiving {
            enabled_at: now_rfc3339(),
            data_directory: settings.data_directory.clone(),
            archive_directory: directory.clone(),
            wal_segment_size: settings.wal_segment_size,
            timeline: settings.timeline,
        };
        app.state
            .update(|state| state.pitr = Some(archiving.clone()))?;
        tracing::info!(job = job.id, archive = %directory, "point-in-time recovery enabled");
        let store = PitrStore::new(&app.config.backup_dir);
        let base = take_base(&app, &job, &store, &server, &archiving).await?;
        Ok(format!(
            "point-in-time recovery is on: the server archives its WAL into {directory} ({}), '{container}' was restarted once, the first base backup is {}; WAL is shipped at least every {} s",
            changes.join(", "),
            base.id,
            app.config.pitr.ship_interval_secs
        ))
    }
    .await;
    session.end(result, String::clone).await
}

/// `pitr disable`: ships what is left, then turns the server's archiving
/// off (one restart). What was shipped stays until retention removes it.
pub async fn disable(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let container = container(&app)?;
    let archiving = archiving(&app)?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        let server = session.server.clone();
        {
            let _shipping = app.pitr.shipping.lock().await;
            let store = PitrStore::new(&app.config.backup_dir);
            job.set_stage("shipping the last WAL segments");
            if let Err(err) = server::switch_and_wait(&server, SYNC_TIMEOUT).await {
                job.warn(format!("the last segment was not archived: {}", err.message()));
            }
            ship_locked(&app, &store, &server, &archiving).await?;
        }
        job.set_stage(format!("turning archiving off and restarting '{container}'"));
        server::disable(&mut session, &container).await?;
        app.state.update(|state| state.pitr = None)?;
        tracing::info!(job = job.id, "point-in-time recovery disabled");
        Ok(format!(
            "point-in-time recovery is off: '{container}' was restarted once without archiving; the base backups and WAL already shipped stay until retention removes them"
        ))
    }
    .await;
    session.end(result, String::clone).await
}

/// `pitr sync`: the server switches to a new segment now; everything up to
/// this moment is shipped.
pub async fn sync(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let archiving = archiving(&app)?;
    let server = app.database().await?;
    job.set_stage("switching to a new WAL segment and shipping");
    let store = PitrStore::new(&app.config.backup_dir);
    let synced = switch_and_ship(&app, &store, &server, &archiving).await;
    server.release().await;
    let (switched, shipped) = synced?;
    Ok(format!(
        "WAL shipped up to segment {switched} ({} files, {} of WAL)",
        shipped.files,
        human_bytes(shipped.plain_bytes)
    ))
}

/// `pitr base-backup` (and its timer): a new base backup, then retention.
pub async fn base_backup(app: Arc<App>, job: Arc<Job>) -> Result<String, Error> {
    let archiving = archiving(&app)?;
    let mut session = app.database_session().await?;
    let result = async {
        session.ensure_up(&job).await?;
        let server = session.server.clone();
        let store = PitrStore::new(&app.config.backup_dir);
        let base = take_base(&app, &job, &store, &server, &archiving).await?;
        let retention = retention_after_base(&app, &job, &store, &archiving);
        Ok(format!(
            "base backup {} written ({}){retention}",
            base.id,
            human_bytes(base.size_bytes),
        ))
    }
    .await;
    session.end(result, String::clone).await
}

/// A base backup (one at a time), then the WAL up to its end shipped.
async fn take_base(
    app: &App,
    job: &Job,
    store: &PitrStore,
    server: &Server,
    archiving: &Archiving,
) -> Result<chain::BaseInfo, Error> {
    let base = {
        let _base = app.pitr.base.lock().await;
        base::take(app, job, store, server, archiving).await?
    };
    switch_and_ship(app, store, server, archiving).await?;
    Ok(base)
}

/// Switches the server to a new segment and ships everything up to it;
/// returns the switched segment's name and what was shipped.
async fn switch_and_ship(
    app: &App,
    store: &PitrStore,
    server: &Server,
    archiving: &Archiving,
) -> Result<(String, ship::Shipped), Error> {
    let _shipping = app.pitr.shipping.lock().await;
    let switched = server::switch_and_wait(server, SYNC_TIMEOUT).await?;
    let shipped = ship_locked(app, store, server, archiving).await?;
    Ok((switched, shipped))
}

/// One shipping round with the shipping lock held; records its outcome.
async fn ship_locked(
    app: &App,
    store: &PitrStore,
    server: &Server,
    archiving: &Archiving,
) -> Result<ship::Shipped, Error> {
    let result = ship::ship(app, store, server, archiving).await;
    let waiting_now = match &result {
        Ok(shipped) => shipped.waiting,
        Err(_) => ship::list_archive(server, archiving)
            .await
            .map(|w| w.len())
            .unwrap_or(0),
    };
    let mut last = app.pitr.last.lock().expect("pitr lock");
    last.waiting = waiting_now;
    last.at = Some(OffsetDateTime::now_utc());
    match &result {
        Ok(_) => last.error = None,
        Err(err) => last.error = Some(err.message()),
    }
    result
}

/// Ships in the background every `ship_interval_secs` while PITR is on.
pub fn spawn_shipper(app: Arc<App>) {
    let interval = Duration::from_secs(u64::from(app.config.pitr.ship_interval_secs));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.min(Duration::from_secs(15)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(archiving) = app.state.get().pitr else {
                continue;
            };
            let Ok(_shipping) = app.pitr.shipping.try_lock() else {
                continue;
            };
            let server = match app.database().await {
                Ok(server) => server,
                Err(err) => {
                    app.pitr.last.lock().expect("pitr lock").error = Some(err.message());
                    continue;
                }
            };
            let store = PitrStore::new(&app.config.backup_dir);
            match ship_locked(&app, &store, &server, &archiving).await {
                Ok(shipped) if shipped.files > 0 => {
                    tracing::info!(
                        files = shipped.files,
                        bytes = shipped.plain_bytes,
                        waiting = shipped.waiting,
                        "WAL shipped"
                    );
                    // Under a write load more was archived meanwhile: the
                    // next round starts now rather than after an interval
                    // (RPO is the round's length instead of interval + round).
                    if shipped.waiting > 0 {
                        ticker.reset_immediately();
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err.message(), "WAL shipping failed; retrying")
                }
            }
            server.release().await;
        }
    });
}

/// PITR retention: the one policy for the backup folder and every off-site
/// target (`retention.days` back, at least one base backup).
pub fn plan_retention(
    app: &App,
    bases: &[chain::BaseInfo],
    wal: &[chain::WalFile],
    now: OffsetDateTime,
) -> (Vec<chain::BaseInfo>, Vec<chain::WalFile>) {
    chain::plan_retention(bases, wal, now, app.config.retention.days, 1)
}

/// Deletes base backups and WAL retention allows; returns what went.
fn apply_retention(app: &App, store: &PitrStore, archiving: &Archiving) -> Vec<String> {
    let bases = store.bases();
    let wal = store.wal(archiving.wal_segment_size);
    let (bases_gone, wal_gone) = plan_retention(app, &bases, &wal, OffsetDateTime::now_utc());
    let mut removed = Vec::new();
    for base in &bases_gone {
        match store.delete_base(base) {
            Ok(()) => removed.push(base.id.clone()),
            Err(err) => {
                tracing::warn!(error = %err.message(), "retention could not delete a base backup")
            }
        }
    }
    let mut segments = 0;
    for file in &wal_gone {
        if store.delete_wal(file).is_ok() {
            segments += 1;
        }
    }
    if segments > 0 {
        removed.push(format!("{segments} WAL files"));
    }
    removed
}

/// What `pitr status` shows.
pub fn status(app: &App) -> PitrStatus {
    let state = app.state.get().pitr;
    let segment_size = state.as_ref().map_or(16 << 20, |a| a.wal_segment_size);
    let store = PitrStore::new(&app.config.backup_dir);
    let bases = store.bases();
    let wal = store.wal(segment_size);
    let window = chain::window(&bases, &wal);
    let last = app.pitr.last.lock().expect("pitr lock").clone();
    let (from, to) = window.span().unzip();
    PitrStatus {
        enabled: state.is_some(),
        enabled_at: state
            .as_ref()
            .map(|a| a.enabled_at.clone())
            .unwrap_or_default(),
        archive_directory: state.map(|a| a.archive_directory).unwrap_or_default(),
        base_backups: bases
            .iter()
            .map(|b| PitrBase {
                id: b.id.clone(),
                started: b.started.clone(),
                finished: b.finished.clone(),
                start_wal: b.start_wal.clone(),
                size_bytes: b.size_bytes,
            })
            .collect(),
        newest_wal: window
            .newest
            .as_ref()
            .map(|n| n.0.clone())
            .unwrap_or_default(),
        newest_wal_time: window
            .newest
            .as_ref()
            .map(|n| rfc3339(n.1))
            .unwrap_or_default(),
        window_from: from.map(rfc3339).unwrap_or_default(),
        window_to: to.map(rfc3339).unwrap_or_default(),
        gaps: window.gaps,
        waiting: last.waiting as u32,
        wal_files: wal.len() as u64,
        bytes: store.total_bytes(),
        last_shipped_at: last.at.map(rfc3339).unwrap_or_default(),
        last_error: last.error.unwrap_or_default(),
    }
}

/// Health problems of PITR, `(unhealthy, sentence)`.
pub fn problems(app: &App, status: &PitrStatus, now: OffsetDateTime) -> Vec<(bool, String)> {
    let mut problems = Vec::new();
    let Some(archiving) = app.state.get().pitr else {
        if app.config.pitr.enabled {
            problems.push((
                false,
                "pitr.enabled is set but the server is not archiving for mesbak; run `mesbakctl pitr enable`".to_owned(),
            ));
        }
        return problems;
    };
    if !status.last_error.is_empty() {
        problems.push((false, format!("WAL shipping fails: {}", status.last_error)));
    }
    if status.waiting as usize >= WAITING_ALERT {
        problems.push((
            false,
            format!(
                "{} WAL files wait in the database server's archive folder ({}); they are in its data volume and fill its disk until they are shipped",
                status.waiting, archiving.archive_directory
            ),
        ));
    }
    if !status.gaps.is_empty() {
        problems.push((
            false,
            format!(
                "the WAL chain has {} gap(s) (first: segment {}); times past a gap are reachable only from a newer base backup: take one with `mesbakctl pitr base-backup`",
                status.gaps.len(),
                status.gaps[0]
            ),
        ));
    }
    let interval = i64::from(app.config.pitr.ship_interval_secs);
    if status.base_backups.is_empty() {
        problems.push((
            true,
            "point-in-time recovery has no base backup; take one with `mesbakctl pitr base-backup`"
                .to_owned(),
        ));
    } else if status.window_to.is_empty() {
        problems.push((
            true,
            "no base backup has an unbroken WAL chain: point-in-time restores are impossible; take a base backup with `mesbakctl pitr base-backup`".to_owned(),
        ));
    }
    let enabled_at = OffsetDateTime::parse(&archiving.enabled_at, &Rfc3339).ok();
    let newest = OffsetDateTime::parse(&status.newest_wal_time, &Rfc3339).ok();
    let reference = newest.or(enabled_at);
    if let Some(reference) = reference {
        let behind = (now - reference).whole_seconds();
        // The server switches segments every interval only when there was
        // WAL to archive; a few intervals of quiet are normal.
        if behind > 5 * interval.max(60) && status.waiting > 0 {
            problems.push((
                false,
                format!(
                    "WAL shipping is {behind} s behind ({} file(s) waiting in the server's archive folder)",
                    status.waiting
                ),
            ));
        }
    }
    problems
}

/// Parses a target time: RFC 3339, or the agent's local "YYYY-MM-DD HH:MM:SS".
pub fn parse_target(text: &str) -> Result<OffsetDateTime, Error> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time);
    }
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(text, format).map_err(|_| {
        Error::InvalidArgument(format!(
            "'{text}' is not a time; write RFC 3339 (2026-11-24T10:41:00+01:00) or local \"2026-11-24 10:41:00\""
        ))
    })?;
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    Ok(local.assume_offset(offset))
}

/// Where a point-in-time restore reads the base backup and the WAL.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The backup folder.
    Local,
    /// Off-site target NAME (`--from NAME`), fetched into the spool first.
    Offsite(String),
}

/// Plans a recovery to `target`, then recovers a scratch cluster to that
/// moment (every file authenticated before it starts). The files are only
/// needed until then: the hold on retention and an off-site spool are let
/// go before the restore that follows. Shipping and base backups go on
/// meanwhile.
async fn recover_to(
    app: &App,
    job: &Job,
    target: OffsetDateTime,
    source: &Source,
    planned: Option<tokio::sync::oneshot::Sender<()>>,
    authenticated: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<recover::Recovered, Error> {
    let planned = async || {
        if let Some(planned) = planned {
            let _ = planned.send(());
        }
        crate::fault_point::pause(&app.config.state_dir, "pitr-recovery-planned").await;
    };
    if target > OffsetDateTime::now_utc() {
        return Err(Error::InvalidArgument(format!(
            "{} is in the future",
            rfc3339(target)
        )));
    }
    // One key for both passes over the files: its cache spares the second
    // PBKDF2 derivation of each version 1 file, and runs it once per key
    // salt for version 2 files (once per agent run that shipped them).
    let key = app.key()?;
    let recovered = async {
        let _files = app.pitr.files(source).read().await;
        match source {
            Source::Local => {
                let segment_size = app
                    .state
                    .get()
                    .pitr
                    .map_or(16 << 20, |a| a.wal_segment_size);
                let store = PitrStore::new(&app.config.backup_dir);
                let plan = plan_or_refuse(&store.bases(), &store.wal(segment_size), target, "")?;
                planned().await;
                recover::recover(app, job, &key, &store, &plan, target, None, authenticated).await
            }
            Source::Offsite(name) => {
                let (spool, store, plan, later) =
                    crate::offsite::pitr::fetch(app, job, name, target).await?;
                planned().await;
                let recovered = recover::recover(
                    app,
                    job,
                    &key,
                    &store,
                    &plan,
                    target,
                    Some(&later),
                    authenticated,
                )
                .await;
                drop(spool);
                recovered
            }
        }
    }
    .await;
    if *source == Source::Local {
        run_deferred_retention(app).await;
    }
    recovered
}

/// Retention after a base backup: now, or, while a recovery reads the
/// files, when that recovery ends. Returns what to add to the job's
/// message.
fn retention_after_base(app: &App, job: &Job, store: &PitrStore, archiving: &Archiving) -> String {
    // The flag first: whoever finds the files free with it set runs the
    // retention (this job now, or the recovery as it lets them go), in
    // whichever order the two meet.
    app.pitr.retention_due.store(true, Ordering::SeqCst);
    let Ok(_retention) = app.pitr.local_files.try_write() else {
        tracing::info!(
            job = job.id,
            "PITR retention deferred: a point-in-time recovery is reading the files"
        );
        return "; retention runs when the point-in-time recovery reading the files ends".into();
    };
    if !app.pitr.retention_due.swap(false, Ordering::SeqCst) {
        return String::new();
    }
    let removed = apply_retention(app, store, archiving);
    if removed.is_empty() {
        String::new()
    } else {
        format!("; retention removed {}", removed.join(", "))
    }
}

/// Runs the retention a base backup deferred while a recovery read the
/// files in the backup folder.
async fn run_deferred_retention(app: &App) {
    if !app.pitr.retention_due.swap(false, Ordering::SeqCst) {
        return;
    }
    let Some(archiving) = app.state.get().pitr else {
        return;
    };
    let _retention = app.pitr.local_files.write().await;
    let store = PitrStore::new(&app.config.backup_dir);
    let removed = apply_retention(app, &store, &archiving);
    tracing::info!(removed = %removed.join(", "), "deferred PITR retention ran");
}

/// What a point-in-time restore restores, in its messages and records.
fn as_of(app: &App, target: OffsetDateTime) -> String {
    format!("'{}' as of {}", app.config.database.name, rfc3339(target))
}

/// What a recovery to `target` needs, or why it cannot be done (`place`:
/// where the files are, for the message; empty for the backup folder).
pub fn plan_or_refuse(
    bases: &[chain::BaseInfo],
    wal: &[chain::WalFile],
    target: OffsetDateTime,
    place: &str,
) -> Result<chain::RecoveryPlan, Error> {
    chain::plan_recovery(bases, wal, target).ok_or_else(|| {
        let window = chain::window(bases, wal);
        let reachable = match window.span() {
            Some((from, to)) => format!(
                "the restorable window{place} is {} to {}",
                rfc3339(from),
                rfc3339(to)
            ),
            None => {
                format!("there is no restorable window{place} yet (no base backup with its WAL)")
            }
        };
        let gaps = if window.gaps.is_empty() {
            String::new()
        } else {
            format!(
                " (WAL segment {} is missing, so times after it need a newer base backup)",
                window.gaps[0]
            )
        };
        Error::InvalidArgument(format!(
            "{} cannot be restored: {reachable}{gaps}; nothing was changed",
            rfc3339(target)
        ))
    })
}

/// `restore --to-time`: the database as it was at `target`, through the
/// ordinary verified restore.
pub async fn restore_to_time(
    app: Arc<App>,
    job: Arc<Job>,
    target: OffsetDateTime,
    options: RestoreOptions,
    source: Source,
) -> Result<String, Error> {
    // The live side is readied while the scratch cluster recovers, once
    // the target is known to be reachable: nothing there is touched for a
    // time that cannot be restored. Once the files are authenticated (a
    // chain short enough to replay in seconds), the writers stop and the
    // safety backup runs beside the recovery, not beside the load.
    let (planned, reachable) = tokio::sync::oneshot::channel();
    let (authenticated, files_sound) = tokio::sync::oneshot::channel();
    let live = async {
        reachable.await.ok()?;
        let mut live = match restore::LiveSide::prepare(&app, &job).await {
            Ok(live) => live,
            Err(err) => return Some(Err(err)),
        };
        if files_sound.await.is_ok()
            && let Err(err) = live.start_safety_backup(&app, &job, &options).await
        {
            return Some(Err(live.abandon(err).await));
        }
        Some(Ok(live))
    };
    let (recovered, live) = tokio::join!(
        Box::pin(recover_to(
            &app,
            &job,
            target,
            &source,
            Some(planned),
            Some(authenticated)
        )),
        live,
    );
    let (recovered, live) = match (recovered, live) {
        (Ok(recovered), Some(Ok(live))) => (recovered, live),
        (Ok(recovered), live) => {
            let live = match live {
                Some(live) => live,
                None => restore::LiveSide::prepare(&app, &job).await,
            };
            match live {
                Ok(live) => (recovered, live),
                Err(err) => {
                    recovered.remove(&app).await;
                    return Err(err);
                }
            }
        }
        (Err(err), Some(Ok(live))) => return Err(live.abandon(err).await),
        (Err(err), _) => return Err(err),
    };
    let label = as_of(&app, target);
    let (scratch, dumped) = (recovered.server.clone(), CancellationToken::new());
    let restored =
        restore::run_recovered(&app, &job, live, scratch, dumped.clone(), label, options);
    let message = recovered.remove_once(&app, &dumped, restored).await?;
    Ok(format!(
        "point-in-time restore to {}: {message}{}",
        rfc3339(target),
        from_where(&source)
    ))
}

/// `test-restore --to-time`: the same recovery, then a test restore.
pub async fn test_restore_to_time(
    app: Arc<App>,
    job: Arc<Job>,
    target: OffsetDateTime,
    source: Source,
) -> Result<String, Error> {
    let recovered = recover_to(&app, &job, target, &source, None, None).await?;
    let label = as_of(&app, target);
    let (scratch, dumped) = (recovered.server.clone(), CancellationToken::new());
    let tested = restore::test_restore_recovered(&app, &job, scratch, dumped.clone(), label);
    let message = recovered.remove_once(&app, &dumped, tested).await?;
    Ok(format!(
        "point-in-time test restore to {}: {message}{}",
        rfc3339(target),
        from_where(&source)
    ))
}

fn from_where(source: &Source) -> String {
    match source {
        Source::Local => String::new(),
        Source::Offsite(name) => {
            format!(" (base backup and WAL read from off-site target '{name}')")
        }
    }
}

/// At start: removes a scratch cluster a crash left, and partial files.
pub async fn recover_at_start(app: &App) -> Vec<String> {
    PitrStore::new(&app.config.backup_dir).remove_partials();
    // No restore runs yet: no scratch container's folder is in use.
    crate::fifo::remove_all_under(&recover::shared_root(&app.config.state_dir));
    let Some(scratch) = app.state.get().pitr_scratch else {
        return Vec::new();
    };
    match app.docker().await {
        Ok(docker) => {
            recover::remove(&docker, &scratch, &app.config.state_dir).await;
            let _ = app.state.update(|state| state.pitr_scratch = None);
            tracing::warn!(container = %scratch.container, "removed the scratch cluster of an interrupted point-in-time restore");
            Vec::new()
        }
        Err(err) => vec![format!(
            "the scratch container '{}' of an interrupted point-in-time restore could not be removed yet: {}",
            scratch.container,
            err.message()
        )],
    }
}
