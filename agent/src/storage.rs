//! The backup folder: layout, names, permissions, atomic writes, metadata
//! sidecars and listing. Root and sub-folders are 0700 owned by the agent's
//! user, files 0600; looser modes are repaired (and logged), symlinks and
//! foreign owners refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesbak_interface::{
    BackupInfo, BackupKind, Compression, Error, backup_name_kind, backup_suffix,
};
// Re-exported for callers not yet moved to `persist`.
use crate::catalog::{self, Listing};
use crate::persist::write_atomic;
pub use crate::persist::{create_private_file, sync_dir, write_error};
use crate::trust::parse_time;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// The folder of a kind, here and on off-site targets.
pub fn subdir(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Database => "database",
        BackupKind::Ignition => "ignition",
    }
}

const METADATA_SUFFIX: &str = ".json";
const PARTIAL_SUFFIX: &str = ".partial";
/// What [`write_atomic`] leaves behind when cut short.
const TMP_SUFFIX: &str = ".tmp";

/// Checks a backup id: a plain file name with a known suffix, which says
/// what it holds and how it is compressed.
pub fn kind_of_id(id: &str) -> Result<(BackupKind, Compression), Error> {
    let plain = !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !id.contains("..");
    if !plain {
        return Err(Error::InvalidArgument(format!(
            "'{}' is not a backup id; use a file name exactly as `mesbakctl list` shows it",
            id.escape_debug()
        )));
    }
    backup_name_kind(id).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "'{id}' is not a backup id: backup files end in .sql.gz.enc, .sql.zst.enc, .tar.gz.enc or .tar.zst.enc"
        ))
    })
}

/// A backup as listed, with what is wrong between its file and its
/// metadata (`None`: they agree).
#[derive(Debug, Clone)]
pub struct Listed {
    pub info: BackupInfo,
    pub metadata_problem: Option<String>,
}

/// A backup file the agent may read.
#[derive(Debug, Clone)]
pub struct BackupRef {
    pub id: String,
    pub kind: BackupKind,
    /// How its payload is compressed (from the name).
    pub compression: Compression,
    /// Where it is; for a handed-over file, the caller's name for it (a
    /// label only: the agent never opens that path).
    pub path: PathBuf,
    /// A file mesbakctl opened with the caller's permissions and passed
    /// over D-Bus (`VerifyFile`, `RestoreFile`, ...), read instead of `path`.
    pub handed: Option<Arc<File>>,
}

impl BackupRef {
    /// A file handed over by a client: `name` (its file name there) must be
    /// a backup id, and the descriptor a regular file open for reading.
    pub fn handed(file: OwnedFd, name: &str) -> Result<BackupRef, Error> {
        let file = File::from(file);
        let (kind, compression) = kind_of_id(name)?;
        check_handed(&file, name)?;
        Ok(BackupRef {
            id: name.to_owned(),
            kind,
            compression,
            path: PathBuf::from(name),
            handed: Some(Arc::new(file)),
        })
    }

    /// Opens the backup for reading from its start. A handed-over file is
    /// duplicated and rewound: each pass (authenticate, then load) reads it
    /// whole, one after the other.
    pub fn open(&self) -> Result<File, Error> {
        match &self.handed {
            None => open_backup(&self.path),
            Some(file) => {
                let mut copy = file.try_clone().map_err(|err| {
                    Error::Failed(format!("cannot read the file handed over: {err}"))
                })?;
                copy.seek(SeekFrom::Start(0)).map_err(|err| {
                    Error::Failed(format!("cannot rewind the file handed over: {err}"))
                })?;
                Ok(copy)
            }
        }
    }
}

/// Refuses a handed-over descriptor that is not a regular file opened for
/// reading (a pipe, a socket, a folder, a write-only file).
pub fn check_handed(file: &File, name: &str) -> Result<(), Error> {
    let meta = file
        .metadata()
        .map_err(|err| Error::InvalidArgument(format!("cannot inspect {name}: {err}")))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{name} is not a regular file; hand over a backup file"
        )));
    }
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|err| Error::InvalidArgument(format!("cannot inspect {name}: {err}")))?;
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(Error::InvalidArgument(format!(
            "{name} was not opened for reading"
        )));
    }
    Ok(())
}

/// The backup folder.
#[derive(Clone)]
pub struct Storage {
    root: PathBuf,
    /// The last listing, shared by clones (see [`crate::catalog`]).
    listing: Arc<Listing<Listed>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("root", &self.root).finish()
    }
}

/// Where a new backup is being written; invisible until `commit`.
pub struct PendingBackup {
    pub id: String,
    pub kind: BackupKind,
    pub compression: Compression,
    file: PendingFile,
}

/// A file being written in a folder of the backup tree: a hidden partial
/// file until [`PendingFile::commit`], removed if never committed.
pub struct PendingFile {
    dir: PathBuf,
    name: String,
    partial: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Starts `name` in `dir` as `.<name>.partial`, 0600, never through a
    /// symlink.
    pub fn create(dir: &Path, name: &str) -> Result<(PendingFile, File), Error> {
        let partial = dir.join(format!(".{name}{PARTIAL_SUFFIX}"));
        let _ = fs::remove_file(&partial);
        let file = create_private_file(&partial).map_err(|err| write_error(&partial, err))?;
        Ok((
            PendingFile {
                dir: dir.to_owned(),
                name: name.to_owned(),
                partial,
                committed: false,
            },
            file,
        ))
    }

    /// Where the file will be.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Makes the file visible: its data must be complete and synced. The
    /// metadata sidecar (`<name>.json`), when given, goes first, so a
    /// visible file always has it; the file never replaces an existing one
    /// (link + unlink, unlike rename); the folder is synced.
    pub fn commit(mut self, metadata: Option<&[u8]>) -> Result<PathBuf, Error> {
        if let Some(json) = metadata {
            let meta_path = self.dir.join(format!("{}{METADATA_SUFFIX}", self.name));
            write_atomic(&meta_path, json, 0o600).map_err(|err| write_error(&meta_path, err))?;
        }
        let path = self.path();
        fs::hard_link(&self.partial, &path).map_err(|err| write_error(&path, err))?;
        let _ = fs::remove_file(&self.partial);
        sync_dir(&self.dir).map_err(|err| write_error(&self.dir, err))?;
        self.committed = true;
        Ok(path)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// Removes the hidden partial files in `dir` (after a crash); returns them.
pub fn remove_partials_in(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && (name.ends_with(PARTIAL_SUFFIX) || name.ends_with(TMP_SUFFIX))
            && fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Storage {
        Storage {
            root: root.into(),
            listing: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, kind: BackupKind) -> PathBuf {
        self.root.join(subdir(kind))
    }

    /// Creates the folders or checks and repairs them. Returns one line per
    /// repair made, for the journal.
    pub fn prepare(&self) -> Result<Vec<String>, Error> {
        let mut repairs = Vec::new();
        ensure_private_dir(&self.root, &mut repairs)?;
        for kind in BackupKind::ALL {
            ensure_private_dir(&self.dir(*kind), &mut repairs)?;
        }
        Ok(repairs)
    }

    /// Removes hidden partial files a crash left behind. Call only when no
    /// job runs.
    pub fn remove_partials(&self) -> Vec<PathBuf> {
        BackupKind::ALL
            .iter()
            .flat_map(|kind| remove_partials_in(&self.dir(*kind)))
            .collect()
    }

    /// The name every backup of one run shares: `YYYY-MM-DD_HHMMSS`, UTC.
    pub fn restore_point(now: OffsetDateTime) -> String {
        now.format(format_description!(
            "[year]-[month]-[day]_[hour][minute][second]"
        ))
        .expect("formatting a date cannot fail")
    }

    /// Starts a new backup file `<prefix>_<point>[_<tag>]<suffix>`, made
    /// unique if a file of that name exists.
    pub fn create(
        &self,
        kind: BackupKind,
        compression: Compression,
        prefix: &str,
        point: &str,
        tag: Option<&str>,
    ) -> Result<(PendingBackup, File), Error> {
        self.prepare()?;
        let dir = self.dir(kind);
        let base = match tag {
            Some(tag) => format!("{prefix}_{point}_{tag}"),
            None => format!("{prefix}_{point}"),
        };
        for attempt in 0..100 {
            let id = if attempt == 0 {
                format!("{base}{}", backup_suffix(kind, compression))
            } else {
                format!("{base}-{attempt}{}", backup_suffix(kind, compression))
            };
            kind_of_id(&id)?;
            if fs::symlink_metadata(dir.join(&id)).is_ok() {
                continue;
            }
            let (file, handle) = PendingFile::create(&dir, &id)?;
            return Ok((
                PendingBackup {
                    id,
                    kind,
                    compression,
                    file,
                },
                handle,
            ));
        }
        Err(Error::Failed(format!(
            "too many backups named {base} in {}",
            dir.display()
        )))
    }

    /// Finds a backup by id, or (root callers) by absolute path.
    pub fn resolve(&self, given: &str, allow_paths: bool) -> Result<BackupRef, Error> {
        if given.contains('\0') {
            return Err(Error::InvalidArgument(
                "a backup id must not contain NUL bytes".into(),
            ));
        }
        let (id, path) = if given.starts_with('/') {
            let path = PathBuf::from(given);
            let id = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (kind, _) = kind_of_id(&id)?;
            if path.parent() != Some(self.dir(kind).as_path()) && !allow_paths {
                return Err(Error::NotAuthorized(format!(
                    "only root may use backup files outside {}; copy the file there or run as root",
                    self.root.display()
                )));
            }
            (id, path)
        } else {
            let (kind, _) = kind_of_id(given)?;
            (given.to_owned(), self.dir(kind).join(given))
        };
        let (kind, compression) = kind_of_id(&id)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(Error::InvalidArgument(format!(
                "{} is a symlink; mesbak only reads real files",
                path.display()
            ))),
            Ok(meta) if !meta.is_file() => Err(Error::InvalidArgument(format!(
                "{} is not a regular file",
                path.display()
            ))),
            Ok(_) => Ok(BackupRef {
                id,
                kind,
                compression,
                path,
                handed: None,
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(Error::NotFound(format!(
                "backup '{given}' does not exist; `mesbakctl list` shows the backups there are"
            ))),
            Err(err) => Err(Error::Failed(format!(
                "cannot read {}: {err}",
                path.display()
            ))),
        }
    }

    /// Every backup, newest first. Files without metadata are listed with
    /// what the file system tells.
    pub fn list(&self) -> Result<Vec<BackupInfo>, Error> {
        Ok(self
            .shared_listing()?
            .iter()
            .map(|l| l.info.clone())
            .collect())
    }

    /// One page of [`Storage::list`] (see [`mesbak_interface::page_range`])
    /// and how many backups there are: only the page is copied out of the
    /// shared listing.
    pub fn list_page(&self, first: u32, count: u32) -> Result<(u32, Vec<BackupInfo>), Error> {
        let listing = self.shared_listing()?;
        let page = listing[mesbak_interface::page_range(listing.len(), first, count)]
            .iter()
            .map(|l| l.info.clone())
            .collect();
        Ok((u32::try_from(listing.len()).unwrap_or(u32::MAX), page))
    }

    /// Every backup, newest first (by time, not by text), each with what
    /// is wrong between the file and its metadata.
    pub fn list_checked(&self) -> Result<Vec<Listed>, Error> {
        Ok(self.shared_listing()?.as_ref().clone())
    }

    /// The shared listing behind [`Storage::list`] and [`Storage::list_checked`].
    fn shared_listing(&self) -> Result<Arc<Vec<Listed>>, Error> {
        let dirs: Vec<PathBuf> = BackupKind::ALL.iter().map(|kind| self.dir(*kind)).collect();
        // Every entry's size and mtime: metadata rewritten or a file cut
        // short in place must show (within catalog::RECHECK).
        self.listing
            .get_polled(&catalog::key(&dirs, ""), &dirs, || self.read_listing())
    }

    /// [`Storage::list_checked`] from the folders themselves.
    fn read_listing(&self) -> Result<Vec<Listed>, Error> {
        let mut backups = Vec::new();
        for kind in BackupKind::ALL {
            let dir = self.dir(*kind);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(Error::Failed(format!(
                        "cannot read {}: {err}",
                        dir.display()
                    )));
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || backup_name_kind(&name).map(|(k, _)| k) != Some(*kind) {
                    continue;
                }
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if !meta.is_file() {
                    tracing::warn!(file = %entry.path().display(), "ignoring a backup name that is not a regular file");
                    continue;
                }
                if meta.mode() & 0o077 != 0 {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600));
                    tracing::warn!(file = %entry.path().display(), "repaired the mode of a backup file to 0600");
                }
                backups.push(self.listed(*kind, &name, &meta));
            }
        }
        backups.sort_by(|a, b| {
            let time = |l: &Listed| parse_time(&l.info.created);
            time(b)
                .cmp(&time(a))
                .then_with(|| b.info.id.cmp(&a.info.id))
        });
        Ok(backups)
    }

    fn listed(&self, kind: BackupKind, id: &str, meta: &fs::Metadata) -> Listed {
        let path = self.dir(kind).join(id);
        let metadata = read_metadata(&self.dir(kind).join(format!("{id}{METADATA_SUFFIX}")));
        let metadata_problem = match &metadata {
            None => Some("it has no metadata".to_owned()),
            Some(info) if info.id != id => {
                Some(format!("its metadata describes another file ({})", info.id))
            }
            Some(info) if info.kind != kind => {
                Some(format!("its metadata describes a {} backup", info.kind))
            }
            Some(info) if info.size_bytes != meta.len() => Some(format!(
                "the file has {} bytes but its metadata says {}: it was cut short or replaced",
                meta.len(),
                info.size_bytes
            )),
            Some(info) if info.sha256.is_empty() => Some("its metadata has no checksum".to_owned()),
            Some(_) => None,
        };
        let mut info = metadata.unwrap_or_else(|| BackupInfo {
            id: id.to_owned(),
            kind,
            path: String::new(),
            created: OffsetDateTime::from_unix_timestamp(meta.mtime())
                .ok()
                .and_then(|time| time.format(&Rfc3339).ok())
                .unwrap_or_default(),
            size_bytes: 0,
            sha256: String::new(),
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: Vec::new(),
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec!["no metadata was found for this backup".into()],
        });
        info.id = id.to_owned();
        info.kind = kind;
        info.path = path.display().to_string();
        info.size_bytes = meta.len();
        if let Some(problem) = &metadata_problem {
            if !info.sha256.is_empty() {
                // Not the file the metadata describes: it does not count
                // as a good backup anywhere (health, off-site, retention).
                info.warnings.push(format!(
                    "{problem}; it is damaged or not the backup that was made"
                ));
                info.sha256.clear();
            }
        }
        Listed {
            info,
            metadata_problem,
        }
    }

    /// The metadata of one backup, if it has any. A handed-over file has
    /// none: what lies beside it in the caller's folder is not read.
    pub fn metadata(&self, backup: &BackupRef) -> Option<BackupInfo> {
        if backup.handed.is_some() {
            return None;
        }
        read_metadata(
            &backup
                .path
                .with_file_name(format!("{}{METADATA_SUFFIX}", backup.id)),
        )
    }

    /// Deletes a backup and its metadata.
    pub fn delete(&self, info: &BackupInfo) -> Result<(), Error> {
        let dir = self.dir(info.kind);
        kind_of_id(&info.id)?;
        fs::remove_file(dir.join(&info.id)).map_err(|err| {
            Error::Failed(format!(
                "cannot delete {}: {err}",
                dir.join(&info.id).display()
            ))
        })?;
        let _ = fs::remove_file(dir.join(format!("{}{METADATA_SUFFIX}", info.id)));
        sync_dir(&dir).map_err(|err| write_error(&dir, err))
    }

    /// Bytes free for the agent in the backup folder.
    pub fn free_bytes(&self) -> Result<u64, Error> {
        let stat = nix::sys::statvfs::statvfs(&self.root).map_err(|err| {
            Error::Failed(format!(
                "cannot check free space in {}: {err}",
                self.root.display()
            ))
        })?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

impl PendingBackup {
    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Makes the backup visible: the data file must be complete and synced.
    /// The metadata goes first so a visible backup always has it.
    pub fn commit(self, info: &BackupInfo) -> Result<BackupRef, Error> {
        let json = serde_json::to_vec_pretty(info).expect("metadata serialises");
        let path = self.file.commit(Some(&json))?;
        Ok(BackupRef {
            id: self.id,
            kind: self.kind,
            compression: self.compression,
            path,
            handed: None,
        })
    }
}

fn read_metadata(path: &Path) -> Option<BackupInfo> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    serde_json::from_reader(io::BufReader::new(file)).ok()
}

/// Opens a backup for reading, refusing symlinks.
pub fn open_backup(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| Error::Failed(format!("cannot open {}: {err}", path.display())))
}

/// Creates `path` 0700 or checks and repairs it; refuses symlinks and
/// folders of other users.
pub fn ensure_private_dir(path: &Path, repairs: &mut Vec<String>) -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|err| write_error(path, err))?;
            // The umask may have narrowed but never widened the mode; make it exact.
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(|err| write_error(path, err))?;
            Ok(())
        }
        Err(err) => Err(Error::Failed(format!(
            "cannot inspect {}: {err}",
            path.display()
        ))),
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::Config(format!(
            "{} is a symlink; mesbak refuses to write through symlinks: point backup_dir at the real folder",
            path.display()
        ))),
        Ok(meta) if !meta.is_dir() => Err(Error::Config(format!(
            "{} exists but is not a folder; move it away or change backup_dir",
            path.display()
        ))),
        Ok(meta) if meta.uid() != euid => Err(Error::Config(format!(
            "{} is owned by uid {}, not by the agent (uid {euid}); fix with `chown root:root {}` or change backup_dir",
            path.display(),
            meta.uid(),
            path.display()
        ))),
        Ok(meta) => {
            if meta.mode() & 0o7777 != 0o700 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(|err| write_error(path, err))?;
                repairs.push(format!(
                    "repaired the mode of {} from {:04o} to 0700",
                    path.display(),
                    meta.mode() & 0o7777
                ));
            }
            Ok(())
        }
    }
}

/// Bytes for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn ids_must_be_plain_names() {
        assert_eq!(
            kind_of_id("mes_2026-01-02_030405.sql.gz.enc").unwrap(),
            (BackupKind::Database, Compression::Gzip)
        );
        assert_eq!(
            kind_of_id("ignition_2026-01-02_030405.tar.zst.enc").unwrap(),
            (BackupKind::Ignition, Compression::Zstd)
        );
        for bad in [
            "",
            "..",
            "../x.sql.gz.enc",
            "a/b.sql.gz.enc",
            ".hidden.sql.gz.enc",
            "x\0.sql.gz.enc",
            "a..b.sql.gz.enc",
            "mes.sql",
            "mes.sql.gz",
            "mes.sql.xz.enc",
            "mes name.sql.gz.enc",
        ] {
            assert!(kind_of_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn folders_are_created_private_and_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::new(tmp.path().join("backups"));
        assert!(storage.prepare().unwrap().is_empty());
        for dir in [storage.root().to_owned(), storage.dir(BackupKind::Database)] {
            assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        }
        fs::set_permissions(
            storage.dir(BackupKind::Ignition),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let repairs = storage.prepare().unwrap();
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert_eq!(
            fs::metadata(storage.dir(BackupKind::Ignition))
                .unwrap()
                .mode()
                & 0o7777,
            0o700
        );
    }

    #[test]
    fn symlinked_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        let err = Storage::new(tmp.path().join("link")).prepare().unwrap_err();
        assert!(err.message().contains("symlink"), "{}", err.message());
    }

    #[test]
    fn pending_backup_is_invisible_until_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::new(tmp.path().join("b"));
        let (pending, mut file) = storage
            .create(
                BackupKind::Database,
                Compression::Gzip,
                "mes",
                "2026-01-02_030405",
                None,
            )
            .unwrap();
        file.write_all(b"data").unwrap();
        assert!(storage.list().unwrap().is_empty());
        let info = BackupInfo {
            id: pending.id.clone(),
            kind: BackupKind::Database,
            path: String::new(),
            created: "2026-01-02T03:04:05Z".into(),
            size_bytes: 4,
            sha256: "ab".into(),
            duration_ms: 1,
            restore_point: "2026-01-02_030405".into(),
            source: "mes".into(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: vec![],
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec![],
        };
        let committed = pending.commit(&info).unwrap();
        assert_eq!(committed.id, "mes_2026-01-02_030405.sql.gz.enc");
        let listed = storage.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].sha256, "ab");
        assert_eq!(fs::metadata(&committed.path).unwrap().mode() & 0o777, 0o600);
        // A second backup in the same second gets its own name.
        let (second, _file) = storage
            .create(
                BackupKind::Database,
                Compression::Gzip,
                "mes",
                "2026-01-02_030405",
                None,
            )
            .unwrap();
        assert_eq!(second.id, "mes_2026-01-02_030405-1.sql.gz.enc");
        drop(second);
        // A zstd backup is listed beside it and resolves as zstd.
        let (zstd, _file) = storage
            .create(
                BackupKind::Database,
                Compression::Zstd,
                "mes",
                "2026-01-02_030406",
                None,
            )
            .unwrap();
        assert_eq!(zstd.id, "mes_2026-01-02_030406.sql.zst.enc");
        let zstd = zstd
            .commit(&BackupInfo {
                id: "mes_2026-01-02_030406.sql.zst.enc".into(),
                created: "2026-01-02T03:04:06Z".into(),
                ..info.clone()
            })
            .unwrap();
        assert_eq!(zstd.compression, Compression::Zstd);
        let listed = storage.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "mes_2026-01-02_030406.sql.zst.enc");
        let resolved = storage.resolve(&listed[0].id, false).unwrap();
        assert_eq!(
            (resolved.kind, resolved.compression),
            (BackupKind::Database, Compression::Zstd)
        );
        assert!(storage.remove_partials().is_empty());
    }

    #[test]
    fn resolve_refuses_tricks() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::new(tmp.path().join("b"));
        storage.prepare().unwrap();
        let target = tmp.path().join("elsewhere.sql.gz.enc");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(
            &target,
            storage.dir(BackupKind::Database).join("link.sql.gz.enc"),
        )
        .unwrap();
        assert!(matches!(
            storage.resolve("link.sql.gz.enc", true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            storage.resolve("../elsewhere.sql.gz.enc", true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            storage.resolve(target.to_str().unwrap(), false),
            Err(Error::NotAuthorized(_))
        ));
        assert!(storage.resolve(target.to_str().unwrap(), true).is_ok());
        assert!(matches!(
            storage.resolve("missing.sql.gz.enc", true),
            Err(Error::NotFound(_))
        ));
    }
}
