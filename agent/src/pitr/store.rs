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

#[cfg(test)]
mod tests {
    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::offsite::pitr::PitrCopies;
    use crate::pitr::chain::{self, BaseInfo, segment_name, wal_file_name};

    const SEG: u64 = 16 << 20;

    fn rfc3339(at: OffsetDateTime) -> String {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    /// A week of operation in the backup folder, as the agent does it: a
    /// segment archived and shipped every minute (`archive_timeout` 60 s),
    /// a base backup every night at 01:00 followed by PITR retention
    /// (`retention.days` = 3 so that a week exercises it), the same
    /// retention run over an off-site target's record. At the end the
    /// window runs from the base backup that covers the horizon to the
    /// newest segment, without a gap, here and off-site.
    #[test]
    fn a_week_of_shipping_and_retention_keeps_one_whole_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = PitrStore::new(dir.path());
        store.prepare().unwrap();
        let start = OffsetDateTime::parse(
            "2026-11-23T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let keep_days = 3;
        let mut offsite = PitrCopies::default();
        let mut offsite_bases: Vec<BaseInfo> = Vec::new();
        let minutes = 7 * 24 * 60;
        for minute in 1..=minutes {
            let now = start + Duration::minutes(minute);
            let number = minute as u64;
            let name = segment_name(1, number, SEG);
            let file = wal_file_name(&name, now);
            std::fs::write(store.wal_dir().join(&file), b"").unwrap();
            offsite.add(&chain::parse_wal_file(&file, SEG).unwrap());
            if minute % (24 * 60) == 60 {
                // 01:00: a base backup starting in this segment.
                let id = format!(
                    "base_{}.tar.gz.enc",
                    crate::storage::Storage::restore_point(now)
                );
                let base = BaseInfo {
                    id: id.clone(),
                    started: rfc3339(now),
                    finished: rfc3339(now + Duration::seconds(30)),
                    timeline: 1,
                    start_wal: name.clone(),
                    start_lsn: String::new(),
                    wal_segment_size: SEG,
                    size_bytes: 0,
                    sha256: "00".into(),
                    server_version: "17".into(),
                    timescaledb_version: String::new(),
                };
                std::fs::write(store.base_dir().join(&id), b"").unwrap();
                std::fs::write(
                    store.base_dir().join(format!("{id}.json")),
                    serde_json::to_vec(&base).unwrap(),
                )
                .unwrap();
                offsite_bases.push(base);
                // Retention after the base backup, here and there.
                let later = now + Duration::minutes(1);
                let bases = store.read_bases();
                let wal = store.read_wal(SEG);
                let (bases_gone, wal_gone) =
                    chain::plan_retention(&bases, &wal, later, keep_days, 1);
                for base in &bases_gone {
                    store.delete_base(base).unwrap();
                }
                for file in &wal_gone {
                    store.delete_wal(file).unwrap();
                    offsite.remove(file);
                }
                let (gone_there, _) =
                    chain::plan_retention(&offsite_bases, &[], later, keep_days, 1);
                offsite_bases.retain(|b| !gone_there.contains(b));
            }
        }
        let end = start + Duration::minutes(minutes);
        let bases = store.read_bases();
        let wal = store.read_wal(SEG);
        let window = chain::window(&bases, &wal);
        let (from, to) = window.span().unwrap();
        eprintln!(
            "a week (7 days, 1 segment/min, a base backup nightly, retention.days = {keep_days}): \
             window {} to {} ({:.1} days), {} base backups, {} WAL files, gaps {:?}; off-site record {} bytes",
            rfc3339(from),
            rfc3339(to),
            (to - from).as_seconds_f64() / 86400.0,
            bases.len(),
            wal.len(),
            window.gaps,
            serde_json::to_string(&offsite).unwrap().len()
        );
        assert!(window.gaps.is_empty(), "{:?}", window.gaps);
        assert_eq!(to, end, "the window reaches the newest segment");
        // From the newest base backup older than the horizon: at least
        // `retention.days` are always reachable.
        assert!(from <= end - Duration::days(keep_days.into()), "{from}");
        assert!(from > end - Duration::days(keep_days as i64 + 2), "{from}");
        assert_eq!(bases.len(), keep_days as usize + 1);
        // Off-site: the same base backups and one range of segments from
        // the oldest kept base backup's start.
        let mut there: Vec<&str> = offsite_bases.iter().map(|b| b.id.as_str()).collect();
        there.sort();
        let mut here: Vec<&str> = bases.iter().map(|b| b.id.as_str()).collect();
        here.sort();
        assert_eq!(there, here);
        let first = chain::start_number(&bases[0]).unwrap();
        assert_eq!(offsite.segments[&1], vec![[first, minutes as u64]]);
        assert_eq!(wal.len() as u64, minutes as u64 - first + 1);
    }
}
