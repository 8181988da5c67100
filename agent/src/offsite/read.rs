//! Reading from a target: what it holds (`list --offsite`), and a backup
//! fetched into a hidden spool (`backup_dir/.offsite-spool/job-<n>/`, 0700
//! and 0600) where the ordinary verify, test-restore and restore paths take
//! it: every chunk is authenticated before anything live is touched. The
//! download is checked against the SHA-256 in the backup's metadata first,
//! so a damaged copy is named as such. The spool is removed when the job
//! ends, and at start-up after a crash.

use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use mesbak_interface::{BackupInfo, BackupKind, Error};

use super::store::Target;
use super::sync::list_all;
use super::{data_key, metadata_key};
use crate::app::App;
use crate::config::ProcessEnv;
use crate::jobs::Job;
use crate::storage::{BackupRef, create_private_file, ensure_private_dir, human_bytes, kind_of_id};

const SPOOL: &str = ".offsite-spool";
/// Metadata fetched at once while listing.
const PARALLEL_METADATA: usize = 8;

/// Opens the target named `name`.
pub fn open(app: &App, name: &str) -> Result<Target, Error> {
    let config = app
        .config
        .offsite
        .iter()
        .find(|target| target.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = app.config.offsite.iter().map(|t| t.name.as_str()).collect();
            Error::NotFound(if known.is_empty() {
                format!(
                    "there is no off-site target '{name}': none is configured ([[offsite]] in {})",
                    app.config.origin.display()
                )
            } else {
                format!(
                    "there is no off-site target '{name}'; the configured ones are: {}",
                    known.join(", ")
                )
            })
        })?;
    Target::open(config, &ProcessEnv)
}

/// The backups target `name` holds, newest first. A copy without metadata
/// (never completed) or whose size disagrees with it is listed with a
/// warning.
pub async fn list(app: &App, name: &str) -> Result<Vec<BackupInfo>, Error> {
    let target = open(app, name)?;
    let held = list_all(&target).await?;
    let data: Vec<(String, BackupKind, u64)> = held
        .values()
        .filter_map(|entry| {
            let (_, id) = entry.key.split_once('/')?;
            let (kind, _) = kind_of_id(id).ok()?;
            (data_key(kind, id) == entry.key).then(|| (id.to_owned(), kind, entry.size))
        })
        .collect();
    let target = &target;
    let held = &held;
    let mut backups: Vec<BackupInfo> = futures_util::stream::iter(data)
        .map(|(id, kind, size)| async move {
            let location = target.display_key(&data_key(kind, &id));
            let meta_key = metadata_key(kind, &id);
            let mut info = if held.contains_key(&meta_key) {
                match target.get_bytes(&meta_key).await {
                    Ok(bytes) => serde_json::from_slice::<BackupInfo>(&bytes).map_err(|err| {
                        format!("its metadata there is unreadable ({err})")
                    }),
                    Err(err) => Err(err.message()),
                }
            } else {
                Err("it has no metadata there: the copy was never completed and verified, so it is not used".to_owned())
            }
            .unwrap_or_else(|problem| {
                let mut info = BackupInfo::new(id.clone(), kind);
                info.warnings.push(problem);
                info
            });
            if !info.sha256.is_empty() && info.size_bytes != size {
                info.warnings.push(format!(
                    "its size there ({size} bytes) differs from its metadata ({} bytes): the copy is damaged",
                    info.size_bytes
                ));
            }
            info.id = id;
            info.kind = kind;
            info.path = location;
            info.size_bytes = size;
            info
        })
        .buffer_unordered(PARALLEL_METADATA)
        .collect()
        .await;
    backups.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    Ok(backups)
}

/// The id a test restore from `name` uses: the one given, else the newest
/// database backup the target holds.
pub async fn pick_test_restore(app: &App, name: &str, given: &str) -> Result<String, Error> {
    if !given.is_empty() {
        if kind_of_id(given)?.0 != BackupKind::Database {
            return Err(Error::InvalidArgument(format!(
                "{given} is not a database backup; test restores check database backups"
            )));
        }
        return Ok(given.to_owned());
    }
    list(app, name)
        .await?
        .into_iter()
        .find(|b| b.kind == BackupKind::Database && !b.sha256.is_empty())
        .map(|b| b.id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "off-site target '{name}' holds no database backup yet; `mesbakctl offsite sync` copies them there"
            ))
        })
}

/// A job's spool folder; removed when dropped.
pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    /// `backup_dir/.offsite-spool/job-<n>/`, 0700, empty.
    pub fn create(app: &App, job: &Job) -> Result<Spool, Error> {
        for repair in app.storage.prepare()? {
            tracing::warn!(repair = %repair, "backup folder repaired");
        }
        let spool_root = app.storage.root().join(SPOOL);
        let mut repairs = Vec::new();
        ensure_private_dir(&spool_root, &mut repairs)?;
        let dir = spool_root.join(format!("job-{}", job.id));
        let _ = fs::remove_dir_all(&dir);
        ensure_private_dir(&dir, &mut repairs)?;
        Ok(Spool { dir })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(folder = %self.dir.display(), error = %err, "cannot remove an off-site spool; it is removed at the next start");
            }
        }
    }
}

/// Fetches `id` from target `name` into the spool, checks it against its
/// metadata there, and hands it to `then` (verify, test-restore, restore).
pub async fn spooled<F, Fut>(
    app: Arc<App>,
    job: Arc<Job>,
    name: String,
    id: String,
    then: F,
) -> Result<String, Error>
where
    F: FnOnce(Arc<App>, Arc<Job>, BackupRef) -> Fut,
    Fut: Future<Output = Result<String, Error>>,
{
    let (kind, compression) = kind_of_id(&id)?;
    let target = open(&app, &name)?;
    job.set_stage(format!(
        "reading the metadata of {id} on off-site target '{name}'"
    ));
    let meta_key = metadata_key(kind, &id);
    let metadata: BackupInfo = match target.get_bytes(&meta_key).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
            Error::Integrity(format!(
                "the metadata of {id} on off-site target '{name}' is unreadable ({err}); nothing was changed"
            ))
        })?,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "off-site target '{name}' holds no verified copy of {id}; `mesbakctl list --offsite {name}` shows what it holds"
            )));
        }
        Err(err) => return Err(err),
    };
    let free = app.storage.free_bytes()?;
    let needed = metadata
        .size_bytes
        .saturating_add(app.config.backup.min_free_bytes);
    if free < needed {
        return Err(Error::NoSpace(format!(
            "only {} free in {}: fetching {id} ({}) from '{name}' needs that much and mesbak keeps {} free (backup.min_free_bytes); free space, then retry",
            human_bytes(free),
            app.storage.root().display(),
            human_bytes(metadata.size_bytes),
            human_bytes(app.config.backup.min_free_bytes)
        )));
    }
    let spool = Spool::create(&app, &job)?;
    let path = spool.dir.join(&id);
    let mut file =
        create_private_file(&path).map_err(|err| crate::storage::write_error(&path, err))?;
    job.set_stage(format!("fetching {id} from off-site target '{name}'"));
    job.reset_bytes(metadata.size_bytes);
    let digest = target
        .read(&data_key(kind, &id), &job.bytes_done, |block| {
            file.write_all(block)
                .map_err(|err| crate::storage::write_error(&path, err))
        })
        .await?;
    file.sync_all()
        .map_err(|err| crate::storage::write_error(&path, err))?;
    drop(file);
    if digest.sha256 != metadata.sha256 || digest.size != metadata.size_bytes {
        return Err(Error::Integrity(format!(
            "the copy of {id} on off-site target '{name}' is damaged: it has {} bytes with SHA-256 {}, the backup had {} bytes with {}; nothing was changed: use another backup (`mesbakctl list --offsite {name}`) or a local copy",
            digest.size, digest.sha256, metadata.size_bytes, metadata.sha256
        )));
    }
    let meta_path = spool.dir.join(format!("{id}.json"));
    let mut meta_file = create_private_file(&meta_path)
        .map_err(|err| crate::storage::write_error(&meta_path, err))?;
    meta_file
        .write_all(&serde_json::to_vec_pretty(&metadata).expect("metadata serialises"))
        .map_err(|err| crate::storage::write_error(&meta_path, err))?;
    drop(meta_file);
    tracing::info!(job = job.id, target_name = %name, file = %id, bytes = digest.size, "fetched an off-site copy; its SHA-256 matches");
    let backup = BackupRef {
        id,
        kind,
        compression,
        path,
        handed: None,
    };
    let result = then(app, job, backup).await;
    drop(spool);
    result.map(|message| format!("{message} (read from off-site target '{name}')"))
}

/// Removes spools a crash left behind. Call only while no job runs.
pub fn remove_spools(app: &App) {
    let root = app.storage.root().join(SPOOL);
    match fs::symlink_metadata(&root) {
        Ok(meta) if meta.is_dir() => {
            if let Err(err) = fs::remove_dir_all(&root) {
                app.add_problem(format!(
                    "cannot remove the off-site spool {} left by an interrupted job: {err}",
                    root.display()
                ));
            } else {
                tracing::warn!(folder = %root.display(), "removed the off-site spool of an interrupted job");
            }
        }
        Ok(_) => {
            let _ = fs::remove_file(&root);
        }
        Err(_) => {}
    }
}
