//! Folder listings remembered between calls. `status`, `list`, health and
//! `/metrics` read the backup folders on every call; with a WAL chain of
//! tens of thousands of files and many clients polling, re-reading them
//! each time made every call slow. A listing is kept and handed out again
//! while its [`Stamp`] is unchanged:
//!
//! - [`Stamp::folders`]: each folder's (device, inode, mtime). Creating,
//!   renaming or deleting an entry (every write here commits by rename)
//!   changes it. Enough where only names matter (the WAL chain).
//! - [`Stamp::entries`]: that and every entry's name, size and mtime, for
//!   listings that read the files (backup metadata): a file rewritten or
//!   damaged in place shows at once. A stat per file is far cheaper than
//!   reading and parsing it.
//! - a stamp with a time within [`RACY`] before the listing was read is not
//!   trusted next time: file system clocks are coarse, and a change in the
//!   same tick would keep the same mtime;
//! - nothing is kept longer than [`MAX_AGE`];
//! - [`Listing::get_polled`], for listings polled by many clients at once:
//!   a stat per file is still milliseconds per call at thousands of files,
//!   so while the folders' own stamp is unchanged the entries are looked
//!   at again only after [`RECHECK`]. Every write of the agent changes a
//!   folder; an edit in place by someone else shows within [`RECHECK`].

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long after a change a listing is not trusted.
const RACY: Duration = Duration::from_secs(2);
/// The longest a listing is reused (a safety net: the stamps see every
/// change the agent makes and every edit of size or mtime).
const MAX_AGE: Duration = Duration::from_secs(300);
/// How long [`Listing::get_polled`] trusts the folders' stamp alone.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What identifies one state of some folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    hash: u64,
    /// The newest mtime seen.
    newest: Option<SystemTime>,
}

fn mtime(meta: &std::fs::Metadata) -> Option<SystemTime> {
    let seconds = u64::try_from(meta.mtime()).ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(seconds)
            + Duration::from_nanos(meta.mtime_nsec() as u64),
    )
}

impl Stamp {
    fn new(dirs: &[PathBuf], entries: bool) -> Stamp {
        let mut hasher = DefaultHasher::new();
        let mut newest: Option<SystemTime> = None;
        let mut note = |meta: &std::fs::Metadata, hasher: &mut DefaultHasher| {
            (
                meta.dev(),
                meta.ino(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
            )
                .hash(hasher);
            newest = newest.max(mtime(meta));
        };
        for dir in dirs {
            dir.hash(&mut hasher);
            let Ok(meta) = std::fs::metadata(dir) else {
                "missing".hash(&mut hasher);
                continue;
            };
            note(&meta, &mut hasher);
            if !entries {
                continue;
            }
            let mut names: Vec<(String, std::fs::Metadata)> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let meta = entry.path().symlink_metadata().ok()?;
                    Some((entry.file_name().to_string_lossy().into_owned(), meta))
                })
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, meta) in &names {
                name.hash(&mut hasher);
                note(meta, &mut hasher);
            }
        }
        Stamp {
            hash: hasher.finish(),
            newest,
        }
    }

    /// The folders themselves (see the module's documentation).
    pub fn folders(dirs: &[PathBuf]) -> Stamp {
        Stamp::new(dirs, false)
    }

    /// The folders and every entry's name, size and mtime.
    pub fn entries(dirs: &[PathBuf]) -> Stamp {
        Stamp::new(dirs, true)
    }

    /// Whether nothing changed within [`RACY`] before `read_at`.
    fn settled(&self, read_at: SystemTime) -> bool {
        self.newest.is_none_or(|changed| {
            read_at
                .duration_since(changed)
                .is_ok_and(|quiet| quiet >= RACY)
        })
    }
}

struct Kept<T> {
    key: String,
    stamp: Stamp,
    read_at: SystemTime,
    items: Arc<Vec<T>>,
    /// For [`Listing::get_polled`]: the folders' own stamp when `stamp`
    /// was last found unchanged, and when.
    polled: Option<(Stamp, SystemTime)>,
}

/// One remembered listing (the last key asked for).
pub struct Listing<T> {
    kept: Mutex<Option<Kept<T>>>,
    /// Held while the folders are read: callers that find the listing
    /// stale at the same moment wait for one reading instead of each
    /// reading thousands of files at once.
    reading: Mutex<()>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            kept: Mutex::new(None),
            reading: Mutex::new(()),
        }
    }
}

impl<T> Listing<T> {
    /// The listing under `key` (what the reading depends on: its folders
    /// and options) in the state `stamp` describes, from memory while it
    /// is still right, else from `read`.
    pub fn get<E>(
        &self,
        key: &str,
        stamp: Stamp,
        read: impl FnOnce() -> Result<Vec<T>, E>,
    ) -> Result<Arc<Vec<T>>, E> {
        self.get_checked(key, stamp, None, read)
    }

    /// The listing of `dirs` under `key`, checked by the folders' own
    /// stamp alone while their entries were found unchanged less than
    /// [`RECHECK`] ago, else by [`Stamp::entries`].
    pub fn get_polled<E>(
        &self,
        key: &str,
        dirs: &[PathBuf],
        read: impl FnOnce() -> Result<Vec<T>, E>,
    ) -> Result<Arc<Vec<T>>, E> {
        let folders = Stamp::folders(dirs);
        let now = SystemTime::now();
        if let Some(kept) = self.kept.lock().expect("listing lock").as_ref() {
            let recent = kept.polled.is_some_and(|(stamp, at)| {
                stamp == folders && now.duration_since(at).unwrap_or(RECHECK) < RECHECK
            });
            if kept.key == key && recent && age(kept.read_at, now) < MAX_AGE {
                return Ok(kept.items.clone());
            }
        }
        self.get_checked(key, Stamp::entries(dirs), Some(folders), read)
    }

    fn get_checked<E>(
        &self,
        key: &str,
        stamp: Stamp,
        folders: Option<Stamp>,
        read: impl FnOnce() -> Result<Vec<T>, E>,
    ) -> Result<Arc<Vec<T>>, E> {
        let kept_items = || {
            let now = SystemTime::now();
            let mut kept = self.kept.lock().expect("listing lock");
            let kept = kept.as_mut()?;
            if kept.key == key && kept.stamp == stamp && age(kept.read_at, now) < MAX_AGE {
                kept.polled = folders.map(|folders| (folders, now));
                return Some(kept.items.clone());
            }
            None
        };
        if let Some(items) = kept_items() {
            return Ok(items);
        }
        let _reading = self.reading.lock().expect("listing read lock");
        // Someone else may have read it while this caller waited.
        if let Some(items) = kept_items() {
            return Ok(items);
        }
        let read_at = SystemTime::now();
        let items = Arc::new(read()?);
        let mut kept = self.kept.lock().expect("listing lock");
        *kept = stamp.settled(read_at).then(|| Kept {
            key: key.to_owned(),
            stamp,
            read_at,
            items: items.clone(),
            polled: folders.map(|folders| (folders, read_at)),
        });
        Ok(items)
    }

    /// Forgets the listing.
    pub fn forget(&self) {
        *self.kept.lock().expect("listing lock") = None;
    }
}

fn age(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(MAX_AGE)
}

/// The key of a listing of `dirs` with `options`.
pub fn key(dirs: &[PathBuf], options: &str) -> String {
    let mut key = options.to_owned();
    for dir in dirs {
        key.push('\0');
        key.push_str(&dir.display().to_string());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::Path;

    /// Sets the mtime of a file or folder `seconds` back.
    fn age(path: &Path, seconds: u64) {
        let past = SystemTime::now() - Duration::from_secs(seconds);
        let file = std::fs::File::open(path).unwrap();
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
        assert!(
            listing
                .get("k", Stamp::folders(&dirs), read)
                .unwrap()
                .is_empty()
        );
        assert!(
            listing
                .get("k", Stamp::folders(&dirs), read)
                .unwrap()
                .is_empty()
        );
        assert_eq!(reads.get(), 1, "an unchanged folder is not read again");

        std::fs::write(dir.join("a"), b"").unwrap();
        // Just changed: read, and not trusted until it settled.
        assert_eq!(
            *listing.get("k", Stamp::folders(&dirs), read).unwrap(),
            ["a"]
        );
        assert_eq!(
            *listing.get("k", Stamp::folders(&dirs), read).unwrap(),
            ["a"]
        );
        assert_eq!(reads.get(), 3);
        age(&dir, 10);
        listing.get("k", Stamp::folders(&dirs), read).unwrap();
        listing.get("k", Stamp::folders(&dirs), read).unwrap();
        assert_eq!(reads.get(), 4);

        // Another key (say, another segment size) is another listing.
        listing.get("other", Stamp::folders(&dirs), read).unwrap();
        assert_eq!(reads.get(), 5);
        listing.forget();
        listing.get("other", Stamp::folders(&dirs), read).unwrap();
        assert_eq!(reads.get(), 6);
    }

    #[test]
    fn entries_see_a_file_rewritten_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("a.json"), b"{}").unwrap();
        age(&dir.join("a.json"), 10);
        age(&dir, 10);
        let dirs = [dir.clone()];
        let before = Stamp::entries(&dirs);
        assert_eq!(before, Stamp::entries(&dirs));
        let folders = Stamp::folders(&dirs);
        std::fs::write(dir.join("a.json"), b"{\"x\": 1}").unwrap();
        assert_ne!(before, Stamp::entries(&dirs), "a rewrite in place is seen");
        assert_eq!(
            folders,
            Stamp::folders(&dirs),
            "the folder itself did not change"
        );
    }

    #[test]
    fn polled_listings_see_an_edit_in_place_within_the_recheck_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("a.json"), b"{}").unwrap();
        age(&dir.join("a.json"), 10);
        age(&dir, 10);
        let dirs = [dir.clone()];
        let listing: Listing<u64> = Listing::default();
        let reads = Cell::new(0);
        let read = || -> Result<Vec<u64>, ()> {
            reads.set(reads.get() + 1);
            Ok(vec![std::fs::metadata(dir.join("a.json")).unwrap().len()])
        };
        assert_eq!(*listing.get_polled("k", &dirs, read).unwrap(), [2]);
        assert_eq!(*listing.get_polled("k", &dirs, read).unwrap(), [2]);
        assert_eq!(reads.get(), 1);

        std::fs::write(dir.join("a.json"), b"{\"x\": 1}").unwrap();
        // Settled again (not racy), so only the recheck can see the edit.
        age(&dir.join("a.json"), 10);
        std::thread::sleep(RECHECK);
        assert_eq!(
            *listing.get_polled("k", &dirs, read).unwrap(),
            [8],
            "the edit in place is seen once the recheck time passed"
        );

        // A new file changes the folder: seen at once.
        std::fs::write(dir.join("b.json"), b"{}").unwrap();
        let before = reads.get();
        listing.get_polled("k", &dirs, read).unwrap();
        assert_eq!(reads.get(), before + 1);
    }

    #[test]
    fn a_missing_folder_is_an_empty_listing_until_it_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("later");
        let dirs = [dir.clone()];
        let listing: Listing<u8> = Listing::default();
        let empty = || -> Result<Vec<u8>, ()> { Ok(Vec::new()) };
        assert!(
            listing
                .get("k", Stamp::folders(&dirs), empty)
                .unwrap()
                .is_empty()
        );
        std::fs::create_dir(&dir).unwrap();
        let one = || -> Result<Vec<u8>, ()> { Ok(vec![1]) };
        assert_eq!(*listing.get("k", Stamp::folders(&dirs), one).unwrap(), [1]);
    }
}
