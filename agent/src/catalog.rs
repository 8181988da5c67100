//! Folder listings remembered between calls. `status`, `list`, health and
//! `/metrics` read the backup folders on every call; with a WAL chain of
//! tens of thousands of files and many clients polling, re-reading them
//! each time made every call slow. A listing is kept and handed out again
//! while none of its folders changed:
//!
//! - each folder's (device, inode, mtime) must be what it was: creating,
//!   renaming or deleting an entry (every write here commits by rename)
//!   changes the folder's mtime;
//! - a folder modified within [`RACY`] before it was read is read again
//!   next time: the file system's clock is coarse, and a change in the
//!   same tick would keep the same mtime;
//! - nothing is kept longer than [`MAX_AGE`], so a file damaged in place
//!   (which changes no folder) shows within that time.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long after a folder changed its listing is not trusted.
const RACY: Duration = Duration::from_secs(2);
/// The longest a listing is reused.
const MAX_AGE: Duration = Duration::from_secs(30);

/// What identifies one state of a folder; `None` when it does not exist.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(dir: &Path) -> Stamp {
    let meta = std::fs::metadata(dir).ok()?;
    Some((meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()))
}

fn modified_at(stamp: &Stamp) -> Option<SystemTime> {
    let (_, _, seconds, nanos) = (*stamp)?;
    let since_epoch =
        Duration::from_secs(u64::try_from(seconds).ok()?) + Duration::from_nanos(nanos as u64);
    Some(SystemTime::UNIX_EPOCH + since_epoch)
}

struct Kept<T> {
    key: String,
    dirs: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    read_at: SystemTime,
    items: Arc<Vec<T>>,
}

/// One remembered listing (the last key asked for).
pub struct Listing<T> {
    kept: Mutex<Option<Kept<T>>>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            kept: Mutex::new(None),
        }
    }
}

impl<T> Listing<T> {
    /// The listing of `dirs` under `key` (what else the reading depends
    /// on), from memory while it is still right, else from `read`.
    pub fn get<E>(
        &self,
        key: &str,
        dirs: &[PathBuf],
        read: impl FnOnce() -> Result<Vec<T>, E>,
    ) -> Result<Arc<Vec<T>>, E> {
        let stamps: Vec<Stamp> = dirs.iter().map(|dir| stamp(dir)).collect();
        let now = SystemTime::now();
        if let Some(kept) = self.kept.lock().expect("listing lock").as_ref() {
            let fresh = kept.key == key
                && kept.dirs == dirs
                && kept.stamps == stamps
                && now.duration_since(kept.read_at).unwrap_or(MAX_AGE) < MAX_AGE;
            if fresh {
                return Ok(kept.items.clone());
            }
        }
        // Read outside the lock: callers in parallel may both read, which
        // costs time but never gives a wrong answer.
        let read_at = SystemTime::now();
        let items = Arc::new(read()?);
        let settled = stamps.iter().all(|stamp| {
            modified_at(stamp).is_none_or(|changed| {
                read_at
                    .duration_since(changed)
                    .is_ok_and(|quiet| quiet >= RACY)
            })
        });
        let mut kept = self.kept.lock().expect("listing lock");
        if settled {
            *kept = Some(Kept {
                key: key.to_owned(),
                dirs: dirs.to_vec(),
                stamps,
                read_at,
                items: items.clone(),
            });
        } else {
            *kept = None;
        }
        Ok(items)
    }

    /// Forgets the listing (after this process changed a folder in a way
    /// that might not move its mtime, e.g. rewriting a file in place).
    pub fn forget(&self) {
        *self.kept.lock().expect("listing lock") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn age(dir: &Path, seconds: u64) {
        let past = SystemTime::now() - Duration::from_secs(seconds);
        let file = std::fs::File::open(dir).unwrap();
        file.set_modified(past).unwrap();
    }

    #[test]
    fn kept_while_the_folder_is_unchanged_and_read_again_after_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let dirs = [dir.clone()];
        let listing: Listing<String> = Listing::default();
        let reads = Cell::new(0);
        let read = || -> Result<Vec<String>, ()> {
            reads.set(reads.get() + 1);
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names)
        };
        age(&dir, 10);
        assert!(listing.get("k", &dirs, read).unwrap().is_empty());
        assert!(listing.get("k", &dirs, read).unwrap().is_empty());
        assert_eq!(reads.get(), 1, "an unchanged folder is not read again");

        std::fs::write(dir.join("a"), b"").unwrap();
        // Just changed: read, and not trusted until it settled.
        assert_eq!(*listing.get("k", &dirs, read).unwrap(), ["a"]);
        assert_eq!(*listing.get("k", &dirs, read).unwrap(), ["a"]);
        assert_eq!(reads.get(), 3);
        age(&dir, 10);
        listing.get("k", &dirs, read).unwrap();
        listing.get("k", &dirs, read).unwrap();
        assert_eq!(reads.get(), 4);

        // Another key (say, another segment size) is another listing.
        listing.get("other", &dirs, read).unwrap();
        assert_eq!(reads.get(), 5);
        listing.forget();
        listing.get("other", &dirs, read).unwrap();
        assert_eq!(reads.get(), 6);
    }

    #[test]
    fn a_missing_folder_is_an_empty_listing_until_it_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("later");
        let dirs = [dir.clone()];
        let listing: Listing<u8> = Listing::default();
        let empty = || -> Result<Vec<u8>, ()> { Ok(Vec::new()) };
        assert!(listing.get("k", &dirs, empty).unwrap().is_empty());
        std::fs::create_dir(&dir).unwrap();
        let one = || -> Result<Vec<u8>, ()> { Ok(vec![1]) };
        assert_eq!(*listing.get("k", &dirs, one).unwrap(), [1]);
    }
}
