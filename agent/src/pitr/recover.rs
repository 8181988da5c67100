//! Point-in-time recovery into a scratch cluster: a throwaway container of
//! the database container's own image, on its own volume, with no network,
//! gets the base backup and the first window of WAL segments up to the
//! target (through the archive API, the container created but not yet
//! started; every file authenticated before it starts; the next windows
//! as the replay reaches them, the replayed segments removed) and runs as
//! a standby with
//! `recovery_target_time` that pauses at the target. A standby never ends
//! recovery by itself: when it has replayed what it was given without
//! passing the target, it is fed the next segments (a backlog archived late
//! in one burst holds commits before the target past the first segment
//! archived after it), and at the end of the chain its state is the state
//! at the target. Its database is then restored through the ordinary
//! verified restore (or test restore), read from the paused standby, its
//! dump streamed straight into the load: no file in between, the dump and
//! the load at once. The live server is not touched until that restore's
//! swap; the scratch container and volume are always removed, as soon as
//! the dump has been read (a crash leaves a record in the agent's state;
//! the next start removes them).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mesbak_format::Key;
use mesbak_interface::{Compression, Error};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use super::chain::{RecoveryPlan, WalFile, WalKind};
use super::store::PitrStore;
use super::tar_stream::{TarWalk, tar_end, tar_header, tar_padding};
use crate::app::App;
use crate::docker::{Docker, TarSender};
use crate::fifo::SharedDir;
use crate::jobs::Job;
use crate::offsite::pitr::LaterWal;
use crate::pipeline::BackupReader;
use crate::postgres::{MAINTENANCE_DB, Server};
use crate::process::Runner;
use crate::storage::open_backup;

/// Label on scratch containers and volumes: the owning agent's state folder.
pub const SCRATCH_LABEL: &str = "org.mesbak.pitr-scratch";
/// Where the recovery reads WAL segments from, inside the data directory
/// (refused as a name for `pitr.archive_dir`).
const RESTORE_WAL: &str = crate::config::RESTORE_WAL_FOLDER;
/// How long recovery may go without replaying anything (a long chain
/// takes as long as it takes).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often the scratch cluster is asked how far it has replayed, once it
/// has run a while; right after its start more often (a recovery from a
/// recent base backup is over within a second), from REPLAY_POLL_FIRST up.
const REPLAY_POLL: Duration = Duration::from_millis(200);
const REPLAY_POLL_FIRST: Duration = Duration::from_millis(25);

/// The pause before the next question, `running` after the start.
fn replay_poll(running: Duration) -> Duration {
    (REPLAY_POLL_FIRST + running / 10).min(REPLAY_POLL)
}

/// A scratch container and its volume, recorded before they are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scratch {
    pub container: String,
    pub volume: String,
}

/// Where the scratch container sees its shared folder.
const SHARED_INSIDE: &str = "/run/mesbak-shared";

impl Scratch {
    /// The folder the container shares with the host (its dump comes
    /// through a FIFO in it).
    fn shared_dir(&self, state_dir: &std::path::Path) -> SharedDir {
        SharedDir::new(shared_root(state_dir).join(&self.container), SHARED_INSIDE)
    }
}

/// Where the scratch containers' shared folders are.
pub fn shared_root(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("shared")
}

/// Authenticates WAL segments: every chunk decrypted (the gzip inside is
/// checked as it is recovered); `key`'s cache keeps the PBKDF2 results
/// for the upload that follows.
async fn authenticate(
    key: &Key,
    store: &PitrStore,
    segments: &[WalFile],
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), Error> {
    // A version 1 file (shipped before format version 2) has its own salt,
    // so each costs a PBKDF2 derivation (a quarter of a CPU-second); version
    // 2 files cost one per key salt (per agent run that shipped them), then
    // the data: as many files at once as there are cores besides the one
    // unpacking the base backup.
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1);
    let files: Vec<_> = segments
        .iter()
        .map(|s| (s.name.clone(), store.wal_path(s)))
        .collect();
    let mut checks = futures_util::stream::iter(files)
        .map(|(id, path)| {
            let progress = progress.clone();
            async move {
                authenticate_segment(key, &id, &path, progress)
                    .await
                    .map_err(|err| unusable_segment(&id, err))
            }
        })
        .buffer_unordered(parallel);
    while let Some(checked) = checks.next().await {
        checked?;
    }
    Ok(())
}

/// Authenticates the base backup and the segments of `plan` (decrypted
/// only, as a check before the writers stop; the unpack that reads them
/// again counts the job's progress).
async fn authenticate_files(
    key: &Key,
    store: &PitrStore,
    plan: &RecoveryPlan,
) -> Result<(), Error> {
    let uncounted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let base = async {
        let file = open_backup(&store.base_path(&plan.base))?;
        BackupReader::start(
            plan.base.id.clone(),
            file,
            key.clone(),
            None,
            uncounted.clone(),
        )
        .drain()
        .await
        .map(|_| ())
        .map_err(|err| unusable_base(&plan.base.id, err))
    };
    tokio::try_join!(
        base,
        authenticate(key, store, &plan.segments, uncounted.clone())
    )
    .map(|_| ())
}

/// Authenticates one segment's file: every chunk decrypted and dropped.
async fn authenticate_segment(
    key: &Key,
    name: &str,
    path: &std::path::Path,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), Error> {
    let file = open_backup(path)?;
    BackupReader::start(name.to_owned(), file, key.clone(), None, progress)
        .drain()
        .await
        .map(|_| ())
}

/// A damaged WAL segment the recovery needs, said for a point-in-time
/// restore: what a technician can do is not a backup file's "use another
/// backup" (every damage verdict of the format says that; the file's own
/// goes to the log). Other verdicts (a wrong key, a newer format) keep
/// their own advice.
fn unusable_segment(name: &str, err: Error) -> Error {
    unusable(
        format!("WAL segment {name} is damaged and the recovery needs it"),
        "an earlier time",
        err,
    )
}

/// A damaged base backup, said as [`unusable_segment`] says a segment.
fn unusable_base(id: &str, err: Error) -> Error {
    unusable(
        format!("base backup {id} is damaged"),
        "a time before it (from an older base backup)",
        err,
    )
}

fn unusable(damaged: String, earlier: &str, err: Error) -> Error {
    match err {
        Error::Integrity(detail) if detail.contains("use another backup") => {
            tracing::warn!(detail = %detail, "{damaged}");
            Error::Integrity(format!(
                "{damaged}, so nothing was changed; restore {earlier}, or this one from an off-site copy with `--from NAME`"
            ))
        }
        other => other,
    }
}

/// A scratch cluster recovered to the target time, its replay stopped
/// there (a hot standby that is read, never written).
pub struct Recovered {
    /// Its server, for the restore that moves its database over.
    pub server: Server,
    docker: Docker,
    scratch: Scratch,
}

impl Recovered {
    /// Runs `work` (a restore reading this cluster's dump) and removes the
    /// cluster as soon as `dumped` is cancelled (the dump was read to its
    /// end) or `work` ends: the removal overlaps the rest of the restore.
    pub async fn remove_once<T>(
        self,
        app: &App,
        dumped: &CancellationToken,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        // Boxed: a whole restore beside the removal is too big for a
        // worker's stack.
        let work = Box::pin(async {
            let out = work.await;
            dumped.cancel();
            out
        });
        let removal = async {
            dumped.cancelled().await;
            self.remove(app).await;
        };
        tokio::join!(work, removal).0
    }

    /// Removes the scratch cluster (its container and volume) and its record.
    pub async fn remove(self, app: &App) {
        self.server.release().await;
        remove(&self.docker, &self.scratch, &app.config.state_dir).await;
        let _ = app.state.update(|state| state.pitr_scratch = None);
    }
}

/// Recovers `plan` to `target` in a scratch cluster, left standing for the
/// restore that follows ([`Recovered::remove`] afterwards; on failure it is
/// removed here). Every file is authenticated before the cluster starts:
/// the base backup as it is unpacked into the throwaway volume, the
/// segments beside that; later segments as they are fed (fetched into
/// `store` first from `more`, an off-site target, when given).
///
/// The cluster runs as a standby that pauses at the target: it never ends
/// recovery by itself, so the recovery is fed segment by segment until it
/// has passed `target` (the first commit after it) or replayed the whole
/// chain, and it is never restarted.
///
/// `authenticated` is told, beside the unpack, once the base backup and
/// every segment up to the target are authenticated, when the chain is
/// short enough to go in with the base backup (then the replay takes
/// seconds): a restore stops its writers and starts its safety backup from
/// there. It is dropped untold otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn recover(
    app: &App,
    job: &Job,
    key: &Key,
    store: &PitrStore,
    plan: &RecoveryPlan,
    target: OffsetDateTime,
    more: Option<&LaterWal>,
    authenticated: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Recovered, Error> {
    let docker = app.docker().await?;
    let live = &app.config.database.container;
    let image = docker.image_of(live).await?;
    let (env, user) = docker.image_env_user(&image).await?;
    let data_dir = env
        .iter()
        .find_map(|line| line.strip_prefix("PGDATA=").map(str::to_owned))
        .unwrap_or_else(|| "/var/lib/postgresql/data".to_owned());
    // The server's read-only mounts (configuration files, or a stand-in
    // image's programs) come along; its data does not.
    let readonly = docker.readonly_binds(live).await?;
    let id = super::random_id()?;
    let scratch = Scratch {
        container: format!("mesbak-pitr-{id}"),
        volume: format!("mesbak-pitr-{id}"),
    };
    app.state
        .update(|state| state.pitr_scratch = Some(scratch.clone()))?;
    let result = async {
        let labels: HashMap<String, String> = [(
            SCRATCH_LABEL.to_owned(),
            app.config.state_dir.display().to_string(),
        )]
        .into();
        docker.create_volume(&scratch.volume, labels.clone()).await?;
        // Programs run in the container as the image's user: root can
        // enter the agent's folder.
        let as_root = matches!(user.as_str(), "" | "root" | "0" | "0:0" | "root:root");
        let shared = match as_root && docker.shares_host_folders().await {
            true => Some(scratch.shared_dir(&app.config.state_dir)),
            false => None,
        };
        let token = match &shared {
            Some(shared) => shared.create()?,
            None => String::new(),
        };
        let target_text = target.format(&Rfc3339).expect("formatting a time");
        // PostgreSQL's own form, to the microsecond it keeps.
        let target_pg = target
            .to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
            ))
            .expect("formatting a time");
        let settings = [
            // A segment not fed yet is not an error: the standby waits.
            format!("restore_command=test -f {data_dir}/{RESTORE_WAL}/%f && cp {data_dir}/{RESTORE_WAL}/%f %p"),
            "archive_mode=off".to_owned(),
            "hot_standby=on".to_owned(),
            format!("recovery_target_time={target_pg}"),
            "recovery_target_action=pause".to_owned(),
            format!("wal_retrieve_retry_interval={}ms", RETRY.as_millis()),
        ];
        let create = bollard::models::ContainerCreateBody {
            image: Some(image.clone()),
            cmd: Some(
                std::iter::once("postgres".to_owned())
                    .chain(settings.into_iter().flat_map(|s| ["-c".to_owned(), s]))
                    .collect(),
            ),
            labels: Some(labels.clone()),
            network_disabled: Some(true),
            host_config: Some(bollard::models::HostConfig {
                binds: Some(
                    std::iter::once(format!("{}:{data_dir}", scratch.volume))
                        .chain(readonly.iter().cloned())
                        .collect(),
                ),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shared = create_scratch(&docker, &scratch.container, create, shared).await?;
        let sizes = std::iter::once(store.base_path(&plan.base))
            .chain(plan.segments.iter().map(|s| store.wal_path(s)))
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|m| m.len());
        job.reset_bytes(sizes.sum());
        job.set_stage(format!(
            "unpacking the base backup {} into a scratch cluster and authenticating {} WAL segments",
            plan.base.id,
            plan.segments.len()
        ));
        let feed = Feed {
            key,
            docker: &docker,
            container: &scratch.container,
            data_dir: &data_dir,
            store,
            segment_size: plan.base.wal_segment_size,
            owner: tokio::sync::OnceCell::new(),
        };
        // Only a window of the segments goes in before the start, in the
        // base backup's upload (each chunk authenticated as it goes); the
        // rest are authenticated beside it and follow as the replay
        // reaches them (a week after the base backup is some 10,000
        // segments, 160 GiB unpacked).
        let window = plan.segments.len().min(feed.ahead());
        let mut entries = feed.entries(&plan.segments[..window], true, job.bytes_done.clone());
        // The first later segment follows them when the whole chain goes in
        // and the segment is here (not off-site): the first commit after the
        // target is often in it, and feeding it only once the standby has
        // replayed the rest costs a round (an exec, an upload, a look). A
        // standby that pauses before it never reads it. It goes in only if
        // a check beside the unpack authenticated it: a damaged segment the
        // recovery may not need must not fail the restore.
        if window == plan.segments.len()
            && more.is_none()
            && let Some(segment) = plan.later.first()
        {
            entries.spare = Some(Spare::check(key, store, segment));
            let size = std::fs::metadata(store.wal_path(segment)).map_or(0, |m| m.len());
            job.bytes_total.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        }
        let whole_chain_first = window == plan.segments.len();
        let told = async {
            if let Some(authenticated) = authenticated.filter(|_| whole_chain_first) {
                authenticate_files(key, store, plan).await?;
                let _ = authenticated.send(());
            }
            Ok(())
        };
        let (shared, later_fed, (), ()) = tokio::try_join!(
            async { Ok(proven(&docker, &scratch.container, shared, &token).await) },
            Box::pin(upload_base(
                key,
                job,
                &feed,
                store,
                plan,
                &app.config.pitr.archive_dir,
                entries
            )),
            Box::pin(authenticate(
                key,
                store,
                &plan.segments[window..],
                job.bytes_done.clone()
            )),
            Box::pin(told),
        )?;
        job.set_stage(format!(
            "recovering the scratch cluster to {target_text} ({} WAL segments)",
            plan.segments.len()
        ));
        let mut server = Server::new(
            &app.config,
            Runner::Container {
                docker: docker.clone(),
                container: scratch.container.clone(),
            },
            None,
        );
        if let Some(shared) = shared {
            server = server.with_shared_dir(shared);
        }
        docker.start(&scratch.container).await?;
        let reached = replay(&feed, &server, plan, (window, later_fed), &target_text, more).await?;
        let dump_through = if server.has_shared_dir() { "fifo" } else { "exec" };
        tracing::info!(job = job.id, target = %target_text, base = %plan.base.id, reached = %reached, later_prefed = later_fed, dump_through = %dump_through, "scratch cluster recovered");
        Ok(server)
    }
    .await;
    match result {
        Ok(server) => Ok(Recovered {
            server,
            docker,
            scratch,
        }),
        Err(err) => {
            remove(&docker, &scratch, &app.config.state_dir).await;
            let _ = app.state.update(|state| state.pitr_scratch = None);
            Err(err)
        }
    }
}

/// Where the scratch cluster's replay stands.
#[derive(Deserialize)]
struct Replay {
    /// Paused at the target (or, unexpectedly, out of recovery).
    stopped: bool,
    /// The standby replayed what it has and waits for the next segment.
    waiting: bool,
    /// The end of the last record replayed, as a byte position.
    replayed: u64,
}

const REPLAY_STATE: &str = "SELECT pg_catalog.json_build_object(\
    'stopped', CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() ELSE true END, \
    'waiting', EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup' AND wait_event = 'RecoveryRetrieveRetryInterval'), \
    'replayed', COALESCE((pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_catalog.pg_lsn)::bigint, 0))";

/// How many later segments go to the recovery at a time, at most: one
/// first (the next commit is usually in it), twice as many each time after.
const FEED_BATCH: usize = 16;
/// How much WAL the scratch volume holds ahead of the replay, at most: the
/// segments up to the target are fed in windows of this, the replayed ones
/// removed (a restore a week after the base backup must not need the
/// week's WAL on disk at once).
const FEED_AHEAD_BYTES: u64 = 512 << 20;
/// How soon the standby looks again for a segment it did not have: a
/// segment fed while it waits is replayed at most this much later. A look
/// is a `test -f` (a fork), so waiting costs nothing worth counting.
const RETRY: Duration = Duration::from_millis(50);
/// How long the scratch cluster may show no sign of progress before it
/// starts answering.
const STALL: Duration = Duration::from_secs(120);

/// Waits while the scratch cluster replays, feeding it the rest of
/// `plan.segments` (the first `fed.0` went in before the start, and the
/// first `fed.1` of `plan.later` with them) whenever
/// less than half a window is left ahead of the replay, and `plan.later`
/// a batch at a time whenever it has replayed everything it was given,
/// until it pauses at the target or has replayed the whole chain. Replayed
/// segments are removed from the scratch volume as it goes. Returns what
/// its log says of where recovery stopped.
async fn replay(
    feed: &Feed<'_>,
    server: &Server,
    plan: &RecoveryPlan,
    (fed, later_fed): (usize, usize),
    target_text: &str,
    more: Option<&LaterWal>,
) -> Result<String, Error> {
    let base = &plan.base.id;
    // The last replay position and when it was reached.
    let mut progress = (0u64, tokio::time::Instant::now());
    let mut due = &plan.segments[fed..];
    let (fed_later, mut later) = plan.later.split_at(later_fed);
    // The segments in the scratch volume not yet known to be replayed.
    let mut given: std::collections::VecDeque<WalFile> = plan.segments[..fed]
        .iter()
        .chain(fed_later)
        .cloned()
        .collect();
    let mut last_fed = given.back().cloned();
    let mut batch_size = 2usize.pow(later_fed as u32).min(FEED_BATCH);
    // When the last batch went in, and how far the replay stood then: the
    // standby may still be in its wait from before it.
    let mut fed_at: Option<(tokio::time::Instant, u64)> = None;
    let mut quiet = (String::new(), tokio::time::Instant::now());
    let started = tokio::time::Instant::now();
    let mut answered = false;
    loop {
        if !feed
            .docker
            .is_running(feed.container)
            .await
            .unwrap_or(false)
        {
            let log = feed.docker.logs_tail(feed.container, 30).await;
            return Err(Error::Database(format!(
                "the scratch cluster stopped during recovery from {base}: {}",
                crate::process::last_lines(&log, 3)
            )));
        }
        let state = server
            .query_value::<Replay>(MAINTENANCE_DB, REPLAY_STATE)
            .await;
        if state.is_ok() && !std::mem::replace(&mut answered, true) {
            tracing::debug!(
                after_ms = started.elapsed().as_millis() as u64,
                "the scratch cluster answers (consistent)"
            );
        }
        if let Ok(state) = &state {
            if state.replayed != progress.0 {
                progress = (state.replayed, tokio::time::Instant::now());
            }
            if state.stopped {
                tracing::debug!(
                    after_ms = started.elapsed().as_millis() as u64,
                    replayed = state.replayed,
                    "the scratch cluster paused at the target"
                );
                let log = feed.docker.logs_tail(feed.container, 200).await;
                return Ok(log
                    .lines()
                    .find(|l| l.contains("recovery stopping"))
                    .map(|l| l.split_once("LOG:").map_or(l, |(_, m)| m).trim().to_owned())
                    .unwrap_or_else(|| format!("paused at {target_text}")));
            }
            let ahead = feed.replayed(&mut given, state.replayed).await?;
            if !due.is_empty() && ahead <= feed.ahead() / 2 {
                let (batch, rest) = due.split_at(due.len().min(feed.ahead() - ahead));
                feed.give(batch, &mut given, &mut last_fed).await?;
                due = rest;
                fed_at = Some((tokio::time::Instant::now(), state.replayed));
                quiet.1 = tokio::time::Instant::now();
                continue;
            }
        }
        match state {
            Ok(state)
                if state.waiting
                    && !fed_at.as_ref().is_some_and(|(at, replayed)| {
                        *replayed == state.replayed && at.elapsed() < RETRY * 3
                    }) =>
            {
                // Everything fed is replayed, as far as it goes: into the
                // last segment fed, or a file in between is damaged.
                let replayed = state.replayed;
                if let Some(last) = &last_fed {
                    let starts = segment_start(last, feed.segment_size);
                    if replayed < starts {
                        let log = feed.docker.logs_tail(feed.container, 40).await;
                        tracing::warn!(base = %base, replayed, log = %log, "recovery stopped before the last segment it was given");
                        return Err(Error::Integrity(format!(
                            "recovery from {base} stopped at byte {replayed} of the WAL, before segment {} it was given: a WAL file is damaged; nothing was changed ({})",
                            last.name,
                            crate::process::last_lines(&log, 3)
                        )));
                    }
                }
                if !due.is_empty() {
                    // Fed above as soon as the replay gets this far.
                } else if later.is_empty() {
                    // No commit after the target in the shipped WAL: its
                    // end is the state at the target.
                    return Ok(format!(
                        "no commit between {target_text} and the end of the shipped WAL: recovered to its end"
                    ));
                } else {
                    let (batch, rest) = later.split_at(later.len().min(batch_size));
                    if let Some(remote) = more {
                        remote.fetch(batch).await?;
                    }
                    feed.give(batch, &mut given, &mut last_fed).await?;
                    tracing::debug!(
                        segments = batch.len(),
                        replayed = state.replayed,
                        after_ms = started.elapsed().as_millis() as u64,
                        "WAL past the target's segment fed to the scratch cluster (no commit after the target yet)"
                    );
                    later = rest;
                    batch_size = (batch_size * 2).min(FEED_BATCH);
                    fed_at = Some((tokio::time::Instant::now(), state.replayed));
                    continue;
                }
            }
            Ok(_) => quiet.1 = tokio::time::Instant::now(),
            Err(_) => {
                // Not answering yet (replaying to a consistent state): its
                // log must move.
                let tail = feed.docker.logs_tail(feed.container, 3).await;
                if tail != quiet.0 {
                    quiet = (tail, tokio::time::Instant::now());
                } else if quiet.1.elapsed() >= STALL {
                    return Err(Error::Database(format!(
                        "the scratch cluster made no progress recovering from {base} for {} s: {}",
                        STALL.as_secs(),
                        crate::process::last_lines(&quiet.0, 3)
                    )));
                }
            }
        }
        if progress.1.elapsed() >= RECOVERY_TIMEOUT {
            let log = feed.docker.logs_tail(feed.container, 30).await;
            return Err(Error::Database(format!(
                "the scratch cluster replayed nothing for an hour recovering from {base}: {}",
                crate::process::last_lines(&log, 3)
            )));
        }
        tokio::time::sleep(replay_poll(started.elapsed())).await;
    }
}

/// The byte position where `segment` begins in the WAL.
fn segment_start(segment: &WalFile, segment_size: u64) -> u64 {
    match segment.kind {
        WalKind::Segment { number, .. } => number * segment_size,
        _ => 0,
    }
}

/// Extracts the base backup (a tar of the data directory) into the
/// scratch container's data directory, `window` (the first segments and
/// the standby signal) after it in the same archive. The files of the
/// server's archive folder that base backups of older agents carry stay
/// out: the cluster recovers with archiving off, from the shipped WAL.
async fn upload_base(
    key: &Key,
    job: &Job,
    feed: &Feed<'_>,
    store: &PitrStore,
    plan: &RecoveryPlan,
    archive_folder: &str,
    window: SegmentEntries,
) -> Result<usize, Error> {
    let path = store.base_path(&plan.base);
    let mut reader = BackupReader::start(
        plan.base.id.clone(),
        open_backup(&path)?,
        key.clone(),
        Some(Compression::Gzip),
        job.bytes_done.clone(),
    );
    let base = plan.base.id.clone();
    let archive_folder = archive_folder.to_owned();
    let produce = |sender: TarSender| async move {
        let sent = async {
            // The base backup's entries without its end-of-archive marker.
            let mut archive = TarWalk::leaving_out(&archive_folder);
            let mut parts = Vec::new();
            while let Some(block) = reader.blocks.recv().await {
                archive.pass(&block, &mut parts);
                for part in parts.drain(..) {
                    if sender.send(Ok(part)).await.is_err() {
                        // The engine refused the archive: its error says why.
                        return Ok(0);
                    }
                }
            }
            reader
                .finish()
                .await
                .map_err(|err| unusable_base(&base, err))?;
            archive.check(&format!(
                "base backup {base} cannot be used and nothing was changed: a time before it is recovered from an older base backup"
            ))?;
            window.send(&sender).await
        }
        .await;
        fail_stream(&sender, sent).await
    };
    let (produced, uploaded) = feed
        .docker
        .upload_from(feed.container, feed.data_dir, produce)
        .await;
    let later_fed = produced??;
    uploaded.map(|()| later_fed)
}

/// Ends an upload's tar stream with `result`'s error, if any, so that the
/// engine refuses the archive.
async fn fail_stream<T>(sender: &TarSender, result: Result<T, Error>) -> Result<T, Error> {
    if let Err(err) = &result {
        let _ = sender.send(Err(io::Error::other(err.message()))).await;
    }
    result
}

/// Tar entries that put WAL segments (decrypted) into
/// `<data>/mesbak_restore_wal/`.
struct SegmentEntries {
    key: Key,
    /// Each segment's name and file, in order.
    segments: Vec<(String, std::path::PathBuf)>,
    segment_size: u64,
    owner: (u64, u64),
    /// The first upload, before the cluster starts: the folder itself
    /// before the segments, the `standby.signal` that makes the cluster a
    /// standby after them.
    first: bool,
    /// A segment that follows the others if its check authenticated it.
    spare: Option<Spare>,
    /// Counts the encrypted bytes read.
    progress: Arc<std::sync::atomic::AtomicU64>,
}

/// A segment put in only if a check run beforehand authenticated it.
struct Spare {
    name: String,
    path: std::path::PathBuf,
    checked: tokio::task::JoinHandle<bool>,
}

impl Spare {
    /// Starts the check of `segment`, beside whatever comes before it.
    fn check(key: &Key, store: &PitrStore, segment: &WalFile) -> Spare {
        let (name, path) = (segment.name.clone(), store.wal_path(segment));
        let checked = tokio::spawn({
            let (key, name, path) = (key.clone(), name.clone(), path.clone());
            async move {
                let checked = authenticate_segment(&key, &name, &path, Arc::default()).await;
                if let Err(err) = &checked {
                    tracing::warn!(segment = %name, error = %err.message(), "a WAL segment past the target's did not authenticate; it is fed only if the recovery reaches it");
                }
                checked.is_ok()
            }
        });
        Spare {
            name,
            path,
            checked,
        }
    }
}

impl SegmentEntries {
    /// Sends the entries and the end-of-archive marker; returns how many
    /// spares went in (0 or 1). A segment copied while still being written is
    /// shorter than a segment, which a standby takes as not there yet. A
    /// damaged file never gets in whole: each chunk is authenticated before
    /// it is sent, and a file that ends early fails the stream. A refused
    /// archive ends the sending early: the upload's error says why.
    async fn send(mut self, sender: &TarSender) -> Result<usize, Error> {
        if self.first {
            let directory = tar_header(
                &format!("{RESTORE_WAL}/"),
                0,
                tar::EntryType::Directory,
                self.owner,
            )?;
            let _ = sender.send(Ok(directory)).await;
        }
        for (name, path) in &self.segments {
            if !self.send_segment(name, path, sender).await? {
                return Ok(0);
            }
        }
        let mut spare_sent = 0;
        if let Some(spare) = self.spare.take()
            && spare.checked.await.unwrap_or(false)
        {
            if !self.send_segment(&spare.name, &spare.path, sender).await? {
                return Ok(0);
            }
            spare_sent = 1;
        }
        if self.first {
            let signal = tar_header("standby.signal", 0, tar::EntryType::Regular, self.owner)?;
            let _ = sender.send(Ok(signal)).await;
        }
        let _ = sender.send(Ok(tar_end())).await;
        Ok(spare_sent)
    }

    /// Sends one segment's entry; false when the archive was refused.
    async fn send_segment(
        &self,
        name: &str,
        path: &std::path::Path,
        sender: &TarSender,
    ) -> Result<bool, Error> {
        let size = self.segment_size;
        let header = tar_header(
            &format!("{RESTORE_WAL}/{name}"),
            size,
            tar::EntryType::Regular,
            self.owner,
        )?;
        if sender.send(Ok(header)).await.is_err() {
            return Ok(false);
        }
        let mut reader = BackupReader::start(
            name.to_owned(),
            open_backup(path)?,
            self.key.clone(),
            Some(Compression::Gzip),
            self.progress.clone(),
        );
        let mut sent = 0u64;
        while let Some(block) = reader.blocks.recv().await {
            sent += block.len() as u64;
            if sender.send(Ok(block)).await.is_err() {
                return Ok(false);
            }
        }
        reader
            .finish()
            .await
            .map_err(|err| unusable_segment(name, err))?;
        let padding = tar_padding(sent);
        if padding > 0 {
            let _ = sender.send(Ok(Bytes::from(vec![0u8; padding]))).await;
        }
        if sent != size {
            return Err(Error::Integrity(format!(
                "WAL segment {name} holds {sent} bytes, not {size}"
            )));
        }
        Ok(true)
    }
}

/// What feeding WAL segments to the scratch cluster needs.
struct Feed<'a> {
    key: &'a Key,
    docker: &'a Docker,
    container: &'a str,
    data_dir: &'a str,
    store: &'a PitrStore,
    segment_size: u64,
    /// The data directory's owner (uid, gid), read once the cluster runs.
    owner: tokio::sync::OnceCell<(u64, u64)>,
}

impl Feed<'_> {
    /// How many segments the scratch volume holds ahead of the replay.
    fn ahead(&self) -> usize {
        (FEED_AHEAD_BYTES / self.segment_size.max(1)).max(2) as usize
    }

    /// Uploads `batch` after the segments fed so far: `given` (not yet
    /// replayed) and `last` (the newest) follow.
    async fn give(
        &self,
        batch: &[WalFile],
        given: &mut std::collections::VecDeque<WalFile>,
        last: &mut Option<WalFile>,
    ) -> Result<(), Error> {
        self.upload(batch).await?;
        given.extend(batch.iter().cloned());
        *last = batch.last().cloned().or(last.take());
        Ok(())
    }

    /// Drops the segments of `given` the replay has passed (`replayed`, a
    /// byte position) and removes them from the scratch volume, a quarter
    /// window at a time (each removal is an exec); the standby has its own
    /// copy of a segment from the moment it asked for it. Returns how
    /// many are left ahead of the replay.
    async fn replayed(
        &self,
        given: &mut std::collections::VecDeque<WalFile>,
        replayed: u64,
    ) -> Result<usize, Error> {
        let passed = given
            .iter()
            .take_while(|s| segment_start(s, self.segment_size) + self.segment_size <= replayed)
            .count();
        if passed > 0 && passed >= self.ahead() / 4 {
            let mut argv = vec!["rm".to_owned(), "-f".to_owned(), "--".to_owned()];
            argv.extend(
                given
                    .drain(..passed)
                    .map(|s| format!("{}/{RESTORE_WAL}/{}", self.data_dir, s.name)),
            );
            self.docker
                .exec_output(self.container, &argv, |detail| {
                    Error::Docker(format!(
                        "cannot remove replayed WAL segments from the scratch cluster: {detail}"
                    ))
                })
                .await?;
            tracing::debug!(
                removed = passed,
                ahead = given.len(),
                "replayed WAL segments removed from the scratch volume"
            );
            return Ok(given.len());
        }
        Ok(given.len() - passed)
    }

    async fn data_dir_owner(&self) -> Result<(u64, u64), Error> {
        let argv = ["stat", "-c", "%u %g", self.data_dir].map(str::to_owned);
        let out = self
            .docker
            .exec_output(self.container, &argv, |detail| {
                Error::Docker(format!(
                    "cannot read the owner of the scratch cluster's data directory: {detail}"
                ))
            })
            .await?;
        let out = String::from_utf8_lossy(&out);
        let mut ids = out.split_whitespace().map(|id| id.parse::<u64>().ok());
        match (ids.next().flatten(), ids.next().flatten()) {
            (Some(uid), Some(gid)) => Ok((uid, gid)),
            _ => Err(Error::Docker(format!(
                "the scratch cluster's data directory has no readable owner ('{}')",
                out.trim()
            ))),
        }
    }

    /// The entries that put `segments` into the scratch volume (with
    /// `first`, before the cluster starts); `progress` counts their bytes.
    fn entries(
        &self,
        segments: &[WalFile],
        first: bool,
        progress: Arc<std::sync::atomic::AtomicU64>,
    ) -> SegmentEntries {
        SegmentEntries {
            key: self.key.clone(),
            segments: segments
                .iter()
                .map(|s| (s.name.clone(), self.store.wal_path(s)))
                .collect(),
            segment_size: self.segment_size,
            // Before the cluster starts, the image's entry point gives the
            // data directory to its server's user.
            owner: (0, 0),
            first,
            spare: None,
            progress,
        }
    }

    /// Puts `segments` into the running scratch cluster's restore folder,
    /// as its server's user's files from the start.
    async fn upload(&self, segments: &[WalFile]) -> Result<(), Error> {
        let owner = *self.owner.get_or_try_init(|| self.data_dir_owner()).await?;
        let entries = SegmentEntries {
            owner,
            ..self.entries(segments, false, Arc::default())
        };
        let produce = |sender: TarSender| async move {
            let sent = entries.send(&sender).await.map(|_| ());
            fail_stream(&sender, sent).await
        };
        let (produced, uploaded) = self
            .docker
            .upload_from(self.container, self.data_dir, produce)
            .await;
        produced??;
        uploaded
    }
}

/// Removes a scratch container and its volume (errors are logged: the next
/// start retries from the state's record).
pub async fn remove(docker: &Docker, scratch: &Scratch, state_dir: &std::path::Path) {
    if let Err(err) = docker.remove_container(&scratch.container).await {
        tracing::warn!(container = %scratch.container, error = %err.message(), "could not remove the scratch container");
    }
    if let Err(err) = docker.remove_volume(&scratch.volume).await {
        tracing::warn!(volume = %scratch.volume, error = %err.message(), "could not remove the scratch volume");
    }
    scratch.shared_dir(state_dir).remove();
}

/// Creates the scratch container, with `shared` mounted when the engine
/// can: a `Mounts` bind (unlike `Binds`) makes the engine refuse a source
/// it does not see instead of creating it in its own view of the
/// filesystem, where the agent could not remove it. Refused, the container
/// is created without it and the dump comes through the engine.
async fn create_scratch(
    docker: &Docker,
    container: &str,
    create: bollard::models::ContainerCreateBody,
    shared: Option<SharedDir>,
) -> Result<Option<SharedDir>, Error> {
    let Some(shared) = shared else {
        docker.create_container(container, create).await?;
        return Ok(None);
    };
    let mut with_share = create.clone();
    if let Some(host) = with_share.host_config.as_mut() {
        host.mounts = Some(vec![shared.mount()]);
    }
    match docker.create_container(container, with_share).await {
        Ok(_) => Ok(Some(shared)),
        Err(err) => {
            tracing::info!(
                container,
                error = %err,
                "the Docker engine cannot mount this host's folder into the scratch container: its dump comes through the engine"
            );
            shared.remove();
            docker.create_container(container, create).await?;
            Ok(None)
        }
    }
}

/// The scratch container's shared folder, when the container sees it: its
/// proof file holds `token`. Otherwise (an engine that sees another
/// filesystem) the dump comes through the engine's exec streams.
async fn proven(
    docker: &Docker,
    container: &str,
    shared: Option<SharedDir>,
    token: &str,
) -> Option<SharedDir> {
    let shared = shared?;
    let mut archive = Vec::new();
    let mut download = std::pin::pin!(docker.download(container, &shared.proof_inside()));
    while let Some(block) = download.next().await {
        match block {
            // One small file: a few KiB of tar.
            Ok(block) if archive.len() < 1 << 20 => archive.extend_from_slice(&block),
            _ => break,
        }
    }
    if memchr::memmem::find(&archive, token.as_bytes()).is_some() {
        Some(shared)
    } else {
        tracing::info!(
            container,
            "the Docker engine does not show the scratch container this host's folder: its dump comes through the engine"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use mesbak_format::FormatError;

    use super::*;
    use crate::pipeline::read_error;

    #[test]
    fn a_damaged_segment_is_said_for_a_recovery_and_a_wrong_key_is_not() {
        let name = "000000010000000000000007";
        let damaged = [
            FormatError::CorruptChunk {
                index: 0,
                offset: 71,
            },
            FormatError::Truncated { offset: 4096 },
            FormatError::TrailingData { offset: 4096 },
            FormatError::CorruptHeader("salt"),
        ];
        for verdict in damaged {
            let said = unusable_segment(name, read_error(name, verdict)).message();
            assert!(
                said.starts_with(&format!("WAL segment {name} is damaged"))
                    && said.contains("restore an earlier time")
                    && !said.contains("another backup"),
                "{said}"
            );
        }
        for verdict in [
            || FormatError::WrongKey,
            || FormatError::UnsupportedVersion(9),
        ] {
            let said = unusable_segment(name, read_error(name, verdict())).message();
            assert_eq!(said, read_error(name, verdict()).message());
        }
        let unreadable = || Error::Failed("cannot read backup x: disk I/O error".into());
        assert_eq!(
            unusable_segment(name, unreadable()).message(),
            unreadable().message()
        );
    }
}
