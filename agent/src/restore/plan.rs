//! What a restore relies on, settled before anything is touched: every
//! chunk of the file authenticated, the row counts the result must have,
//! the TimescaleDB version the server must provide, and room on the
//! server's disk for a second copy of the database.

use std::collections::BTreeMap;

use mesbak_format::Key;
use mesbak_interface::Error;
use tokio_util::sync::CancellationToken;

use super::load::Loaded;
use crate::app::App;
use crate::jobs::Job;
use crate::pipeline::BackupReader;
use crate::postgres::payload::{self, Described, Payload};
use crate::postgres::{DumpReader, Server, catalog, timescale};
use crate::process::Spawned;
use crate::storage::{BackupRef, human_bytes};

/// Room kept free beyond the new copy's size (and at least this much).
const MARGIN_MIN: u64 = 64 << 20;

pub struct Plan {
    /// Where the SQL comes from.
    pub input: Input,
    /// Row counts the restored database must have (for a live dump: none
    /// yet; its own counts, read as it streams, are the expectation).
    pub expected: BTreeMap<String, u64>,
    /// Whether `expected` comes from the metadata (then the file's own
    /// counts must agree with it too).
    pub from_metadata: bool,
    /// The backup's TimescaleDB version: `Some("")` when the dump has the
    /// extension but no recorded version; `None` without TimescaleDB.
    pub timescaledb: Option<String>,
    /// Room a copy takes when there is no live database to measure, and
    /// what that figure is.
    pub size_estimate: (u64, String),
    /// The payload lacks the database's own settings, grants and comment
    /// (an old stack's dump: pg_dump without `--create` leaves them out).
    pub lacks_database_facts: bool,
}

/// Where a restore's SQL comes from.
pub enum Input {
    /// A backup file, authenticated; both passes share its derived key.
    File { backup: BackupRef, key: Key },
    /// The database of a recovered scratch cluster, dumped while it loads
    /// (a point-in-time restore): no file in between.
    Live {
        server: Server,
        database: String,
        described: Box<Described>,
        /// What is restored, in messages and records.
        label: String,
        /// Cancelled once the dump has been read to its end: the cluster
        /// may then go while the restore finishes.
        dumped: CancellationToken,
        /// pg_dump, when it could start before the load (it waits for it).
        started: Box<std::sync::Mutex<Option<Spawned>>>,
    },
}

impl Plan {
    /// The row counts the restored copy must have: the file's (from its
    /// metadata, or read in the authentication pass), or for a live dump
    /// the counts of the SQL that was loaded.
    pub fn expected<'a>(&'a self, loaded: &'a Loaded) -> &'a BTreeMap<String, u64> {
        match self.input {
            Input::File { .. } => &self.expected,
            Input::Live { .. } => &loaded.stream_rows,
        }
    }

    /// The backup's id, or what a live dump is of.
    pub fn label(&self) -> &str {
        match &self.input {
            Input::File { backup, .. } => &backup.id,
            Input::Live { label, .. } => label,
        }
    }
}

/// The plan for restoring the configured database of a recovered cluster
/// (`server`), dumped as it loads; `label` names it in messages.
pub async fn live(
    app: &App,
    server: Server,
    dumped: CancellationToken,
    label: String,
) -> Result<Plan, Error> {
    let database = &app.config.database.name;
    // A dump through a FIFO waits for its reader, so it starts now, beside
    // the description and the live side's checks; the cluster is a paused
    // standby. Through the engine's exec streams it waits for the load:
    // output not read 2 s after the program ends is dropped.
    let early = async {
        match server.has_shared_dir() {
            true => Payload::spawn_dump(&server, database, true).await.map(Some),
            false => Ok(None),
        }
    };
    let (described, started) = tokio::join!(payload::describe(&server, database), early);
    let (described, started) = (described?, started?);
    let size = described.size;
    Ok(Plan {
        expected: BTreeMap::new(),
        from_metadata: false,
        timescaledb: described.timescaledb.as_ref().map(|t| t.version.clone()),
        size_estimate: (size, format!("the size of {label}")),
        // The payload carries them.
        lacks_database_facts: false,
        input: Input::Live {
            server,
            database: database.clone(),
            described: Box::new(described),
            label,
            dumped,
            started: Box::new(std::sync::Mutex::new(started)),
        },
    })
}

/// Authenticates every chunk before anything is touched. With metadata the
/// decryption alone suffices (the SQL is read during the load); without it,
/// or for an imported old dump (whose metadata cannot know the TimescaleDB
/// version), the SQL is read now for the row counts and TimescaleDB.
pub async fn authenticate(app: &App, job: &Job, backup: &BackupRef) -> Result<Plan, Error> {
    let key = app.key()?;
    let file = backup.open()?;
    let file_size = file
        .metadata()
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", backup.path.display())))?
        .len();
    job.reset_bytes(file_size);
    job.set_stage(format!("authenticating {}", backup.id));
    let metadata = app
        .storage
        .metadata(backup)
        .filter(|info| !info.table_rows.is_empty() && !info.is_imported());
    let mut reader = BackupReader::start(
        backup.id.clone(),
        file,
        key.clone(),
        metadata.is_none().then_some(backup.compression),
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
            expected: info.table_rows,
            from_metadata: true,
            timescaledb: (!info.timescaledb_version.is_empty()).then_some(info.timescaledb_version),
            input: Input::File {
                backup: backup.clone(),
                key,
            },
            size_estimate: size_estimate(file_size),
            // Every backup the agent makes carries them.
            lacks_database_facts: false,
        },
        None => Plan {
            expected: dump.table_rows,
            from_metadata: false,
            timescaledb: dump
                .timescaledb
                .then(|| dump.timescaledb_version.unwrap_or_default()),
            size_estimate: size_estimate(file_size),
            lacks_database_facts: !dump.database_facts,
            input: Input::File {
                backup: backup.clone(),
                key,
            },
        },
    })
}

/// Room a copy of a backup of `file_size` bytes takes on an empty server.
fn size_estimate(file_size: u64) -> (u64, String) {
    (
        file_size.saturating_mul(4),
        "four times the backup file".to_owned(),
    )
}

/// What the room check reads from the server: the live database's size
/// (when it exists) and the free space where the server keeps its data
/// (`None`: no `df` there).
pub struct Room {
    live_size: Option<u64>,
    free: Option<u64>,
}

impl Room {
    /// Reads both at once (a point-in-time restore, while its scratch
    /// cluster recovers); `live` is the live database, when it exists.
    pub async fn read(server: &Server, live: Option<&str>) -> Result<Room, Error> {
        let live_size = async {
            match live {
                Some(name) => catalog::database_size(server, name).await.map(Some),
                None => Ok(None),
            }
        };
        let (live_size, free) = tokio::try_join!(live_size, catalog::data_directory_free(server))?;
        Ok(Room { live_size, free })
    }
}

/// The server-side checks before a restore or test restore creates its
/// database: the TimescaleDB version (`None` without TimescaleDB) and room
/// for the copy.
pub async fn preflight(
    app: &App,
    job: &Job,
    server: &Server,
    plan: &Plan,
    room: &Room,
) -> Result<Option<timescale::RestorePlan>, Error> {
    let timescale = match &plan.timescaledb {
        Some(version) => Some(timescale::plan_restore(server, version).await?),
        None => None,
    };
    check_room(app, job, server, plan, room).await?;
    Ok(timescale)
}

/// Refuses when the file system of the server's data directory cannot take
/// a copy of the database (the live one's size, or for a restore onto an
/// empty server an estimate from the backup) plus a margin.
async fn check_room(
    app: &App,
    job: &Job,
    server: &Server,
    plan: &Plan,
    room: &Room,
) -> Result<(), Error> {
    let live = &app.config.database.name;
    let (size, basis) = match room.live_size {
        Some(size) => (size, format!("the size of '{live}'")),
        None => plan.size_estimate.clone(),
    };
    let needed = size + (size / 10).max(MARGIN_MIN);
    let Some(free) = room.free else {
        job.warn(format!(
            "the free space where {} keeps its data cannot be told (no `df` there); the restore needs about {}",
            server.runner.describe(),
            human_bytes(needed)
        ));
        return Ok(());
    };
    if free >= needed {
        return Ok(());
    }
    let mut kept = Vec::new();
    for name in catalog::databases_like(server, &format!("{live}_previous_")).await? {
        let size = catalog::database_size(server, &name).await?;
        kept.push(format!("'{name}' ({})", human_bytes(size)));
    }
    let hint = if kept.is_empty() {
        "free space on the server's disk (or grow its volume), then retry".to_owned()
    } else {
        format!(
            "the database(s) kept by earlier restores take room: {}; drop what is no longer needed (`mesbakctl restore --drop-previous`) or free space on the server's disk, then retry",
            kept.join(", ")
        )
    };
    Err(Error::NoSpace(format!(
        "the database server has {} free where it keeps its data, and the restore needs about {} ({basis} plus a margin); nothing was changed: {hint}",
        human_bytes(free),
        human_bytes(needed)
    )))
}
