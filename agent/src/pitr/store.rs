//! The PITR part of the backup folder: `pitr/base/` (physical base backups,
//! `base_<point>.tar.gz.enc` with a `.json` sidecar) and `pitr/wal/` (one
//! encrypted file per WAL file the server archived, its archive time in the
//! name). Written as every backup is ([`PendingFile`]): a hidden partial
//! file, fsynced, then linked into place without overwriting.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use mesbak_interface::Error;

use super::chain::{BaseInfo, WalFile, parse_wal_file};
use crate::catalog::{Listing, Stamp, key};
use crate::storage::{PendingFile, remove_partials_in, sync_dir, write_error};

// The WAL folder holds tens of thousands of files: its listings are kept
// while it does not change (see `crate::catalog`).
static BASES: LazyLock<Listing<BaseInfo>> = LazyLock::new(Listing::default);
static WAL: LazyLock<Listing<WalFile>> = LazyLock::new(Listing::default);
static BYTES: LazyLock<Listing<u64>> = LazyLock::new(Listing::default);

pub const BASE_SUFFIX: &str = ".tar.gz.enc";

#[derive(Debug, Clone)]
pub struct PitrStore {
    root: PathBuf,
}

impl PitrStore {
    pub fn new(backup_dir: &Path) -> PitrStore {
        PitrStore {
            root: backup_dir.join("pitr"),
        }
    }

    pub fn base_dir(&self) -> PathBuf {
        self.root.join("base")
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }

    /// Creates the folders 0700 (the backup folder itself is prepared by
    /// the storage).
    pub fn prepare(&self) -> Result<(), Error> {
        for dir in [&self.root, &self.base_dir(), &self.wal_dir()] {
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                    return Err(Error::Config(format!(
                        "{} is not a plain folder; mesbak refuses to write through symlinks",
                        dir.display()
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
                        .create(dir)
                        .map_err(|err| write_error(dir, err))?;
                }
            }
        }
        Ok(())
    }

    /// Starts writing `name` in `dir`.
    pub fn create(&self, dir: &Path, name: &str) -> Result<(PendingFile, File), Error> {
        self.prepare()?;
        PendingFile::create(dir, name)
    }

    /// Removes partial files a crash left behind.
    pub fn remove_partials(&self) {
        for dir in [self.base_dir(), self.wal_dir()] {
            remove_partials_in(&dir);
        }
    }

    /// Every base backup with its metadata.
    pub fn bases(&self) -> Vec<BaseInfo> {
        let dirs = [self.base_dir()];
        // Entries: the listing reads each base backup's metadata.
        let listed = BASES.get(&key(&dirs, ""), Stamp::entries(&dirs), || {
            Ok::<_, ()>(self.read_bases())
        });
        listed
            .map(|bases| bases.as_ref().clone())
            .unwrap_or_default()
    }

    fn read_bases(&self) -> Vec<BaseInfo> {
        let mut bases = Vec::new();
        let Ok(entries) = fs::read_dir(self.base_dir()) else {
            return bases;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !self.base_dir().join(id).is_file() {
                continue;
            }
            if let Ok(bytes) = fs::read(entry.path()) {
                if let Ok(info) = serde_json::from_slice::<BaseInfo>(&bytes) {
                    bases.push(info);
                }
            }
        }
        bases.sort_by(|a, b| a.finished.cmp(&b.finished));
        bases
    }

    /// Every shipped WAL file, by name.
    pub fn wal(&self, segment_size: u64) -> Arc<Vec<WalFile>> {
        let dirs = [self.wal_dir()];
        // Names are all the listing reads: the folder's own stamp will do.
        WAL.get(
            &key(&dirs, &segment_size.to_string()),
            Stamp::folders(&dirs),
            || Ok::<_, ()>(self.read_wal(segment_size)),
        )
        .unwrap_or_default()
    }

    fn read_wal(&self, segment_size: u64) -> Vec<WalFile> {
        let mut files: Vec<WalFile> = fs::read_dir(self.wal_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (!name.starts_with('.'))
                    .then(|| parse_wal_file(&name, segment_size))
                    .flatten()
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }

    /// The shipped copy of the server's WAL file `name`, if any.
    pub fn shipped(&self, name: &str, segment_size: u64) -> Option<WalFile> {
        self.wal(segment_size)
            .iter()
            .find(|f| f.name == name)
            .cloned()
    }

    pub fn wal_path(&self, file: &WalFile) -> PathBuf {
        self.wal_dir().join(&file.file_name)
    }

    pub fn base_path(&self, base: &BaseInfo) -> PathBuf {
        self.base_dir().join(&base.id)
    }

    /// Deletes a base backup and its metadata.
    pub fn delete_base(&self, base: &BaseInfo) -> Result<(), Error> {
        let path = self.base_path(base);
        fs::remove_file(&path)
            .map_err(|err| Error::Failed(format!("cannot delete {}: {err}", path.display())))?;
        let _ = fs::remove_file(self.base_dir().join(format!("{}.json", base.id)));
        sync_dir(&self.base_dir()).map_err(|err| write_error(&self.base_dir(), err))
    }

    /// Deletes a shipped WAL file.
    pub fn delete_wal(&self, file: &WalFile) -> Result<(), Error> {
        let path = self.wal_path(file);
        fs::remove_file(&path)
            .map_err(|err| Error::Failed(format!("cannot delete {}: {err}", path.display())))
    }

    /// Total bytes of the PITR files.
    pub fn total_bytes(&self) -> u64 {
        let dirs = [self.base_dir(), self.wal_dir()];
        BYTES
            .get(&key(&dirs, ""), Stamp::folders(&dirs), || {
                Ok::<_, ()>(vec![self.read_total_bytes()])
            })
            .map(|total| total[0])
            .unwrap_or_default()
    }

    fn read_total_bytes(&self) -> u64 {
        [self.base_dir(), self.wal_dir()]
            .iter()
            .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
            .filter_map(|entry| entry.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum()
    }
}
