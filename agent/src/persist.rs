//! Files the agent writes for itself: one atomic write (a hidden temporary
//! file, fsync, rename over the target, fsync of the folder) used for every
//! record, sidecar and drop-in, and one versioned JSON record format for
//! the state and the crash journals.
//!
//! A record is `{"format": 1, "data": ...}`. Reading one that is absent
//! gives `Ok(None)`; one that cannot be read or parsed is an error, never a
//! silent reset: [`Record::read_or_set_aside`] renames it
//! `<name>.unreadable-<UTC time>` so nothing writes over it, and says so in
//! a sentence for health.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mesbak_interface::Error;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

/// The record format this agent writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Creates `path` 0600, never through a symlink, never over an existing file.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Flushes a folder's entries (a rename or a new name) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or
/// the new content, never a mix: write a hidden temporary file beside it
/// (`mode`, never through a symlink), fsync it, rename it over `path`, fsync
/// the folder.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = create_private_file(&tmp)?;
        if mode != 0o600 {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Turns a write failure into the error a technician can act on.
pub fn write_error(path: &Path, err: io::Error) -> Error {
    if err.raw_os_error() == Some(libc::ENOSPC) || err.raw_os_error() == Some(libc::EDQUOT) {
        Error::NoSpace(format!(
            "the disk holding {} is full; free space or move backup_dir, then retry",
            path.display()
        ))
    } else {
        Error::Failed(format!("cannot write {}: {err}", path.display()))
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    format: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: u32,
    data: serde_json::Value,
}

/// Why a record could not be read.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub what: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) is unreadable: {}",
            self.what,
            self.path.display(),
            self.reason
        )
    }
}

/// One JSON record in a folder of the agent's own, of type `T`.
pub struct Record<T> {
    path: PathBuf,
    what: &'static str,
    _data: PhantomData<fn() -> T>,
}

impl<T> Clone for Record<T> {
    fn clone(&self) -> Self {
        Record {
            path: self.path.clone(),
            what: self.what,
            _data: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Record<T> {
    /// The record `dir/name`; `what` names it in messages ("the agent state").
    pub fn new(dir: &Path, name: &str, what: &'static str) -> Record<T> {
        Record {
            path: dir.join(name),
            what,
            _data: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record, `None` when there is none.
    pub fn read(&self) -> Result<Option<T>, Unreadable> {
        let unreadable = |reason: String| Unreadable {
            path: self.path.clone(),
            what: self.what,
            reason,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(unreadable(err.to_string())),
        };
        let value: serde_json::Value = serde_json::from_reader(io::BufReader::new(file))
            .map_err(|err| unreadable(format!("not valid JSON ({err})")))?;
        // Files written before the envelope existed hold the data alone.
        let data = match serde_json::from_value::<EnvelopeIn>(value.clone()) {
            Ok(envelope) if envelope.format > FORMAT_VERSION => {
                return Err(unreadable(format!(
                    "it has format {}, written by a newer mesbak (this one reads up to {FORMAT_VERSION})",
                    envelope.format
                )));
            }
            Ok(envelope) => envelope.data,
            Err(_) => value,
        };
        serde_json::from_value(data)
            .map(Some)
            .map_err(|err| unreadable(format!("unexpected content ({err})")))
    }

    /// Writes the record atomically (0600).
    pub fn write(&self, data: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(&EnvelopeOut {
            format: FORMAT_VERSION,
            data,
        })
        .map_err(|err| Error::Failed(format!("cannot encode {}: {err}", self.what)))?;
        write_atomic(&self.path, &bytes, 0o600).map_err(|err| self.write_failed(err))
    }

    /// Removes the record; absent is fine.
    pub fn remove(&self) -> Result<(), Error> {
        match fs::remove_file(&self.path) {
            Ok(()) => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                sync_dir(dir).map_err(|err| self.write_failed(err))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(self.write_failed(err)),
        }
    }

    /// Reads the record; one that cannot be read is renamed
    /// `<name>.unreadable-<UTC time>` (so it is kept for a person to look
    /// at and nothing writes over it) and described in the returned
    /// problem, to which the caller adds what it means. Fails only when it
    /// cannot even be moved aside.
    pub fn read_or_set_aside(&self) -> Result<(Option<T>, Option<String>), Error> {
        match self.read() {
            Ok(data) => Ok((data, None)),
            Err(unreadable) => {
                let aside = self.set_aside().map_err(|err| {
                    Error::Failed(format!(
                        "{unreadable}, and it cannot be moved aside ({err}); move it away by hand and start again"
                    ))
                })?;
                tracing::error!(file = %self.path.display(), kept_as = %aside.display(), reason = %unreadable.reason, "unreadable record kept aside");
                Ok((
                    None,
                    Some(format!("{unreadable}; it was kept as {}", aside.display())),
                ))
            }
        }
    }

    /// Records of this name set aside earlier and still there, oldest
    /// first: a person has yet to look at them.
    pub fn set_aside_files(&self) -> Vec<PathBuf> {
        let prefix = format!("{}.unreadable-", self.file_name());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn set_aside(&self) -> io::Result<PathBuf> {
        let stamp = OffsetDateTime::now_utc()
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(io::Error::other)?;
        let name = self.file_name();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        for attempt in 0..100 {
            let aside = match attempt {
                0 => dir.join(format!("{name}.unreadable-{stamp}")),
                n => dir.join(format!("{name}.unreadable-{stamp}-{n}")),
            };
            if fs::symlink_metadata(&aside).is_ok() {
                continue;
            }
            fs::rename(&self.path, &aside)?;
            sync_dir(dir)?;
            return Ok(aside);
        }
        Err(io::Error::other("too many records set aside"))
    }

    fn write_failed(&self, err: io::Error) -> Error {
        match write_error(&self.path, err) {
            Error::Failed(message) => {
                Error::Failed(format!("cannot record {}: {message}", self.what))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        count: u32,
    }

    fn sample() -> Sample {
        Sample {
            name: "x".into(),
            count: 3,
        }
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.conf");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // Never through a symlink at the temporary name.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(".x.tmp"))
            .unwrap();
        write_atomic(&dir.path().join("x"), b"3", 0o600).unwrap();
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn records_round_trip_with_a_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let record: Record<Sample> = Record::new(dir.path(), "r.json", "the sample");
        assert!(record.read().unwrap().is_none());
        record.write(&sample()).unwrap();
        let text = fs::read_to_string(record.path()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        assert_eq!(record.read().unwrap(), Some(sample()));
        assert_eq!(fs::metadata(record.path()).unwrap().mode() & 0o777, 0o600);
        record.remove().unwrap();
        record.remove().unwrap();
        assert!(record.read().unwrap().is_none());
    }

    #[test]
    fn records_without_the_envelope_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let record: Record<Sample> = Record::new(dir.path(), "r.json", "the sample");
        fs::write(record.path(), br#"{"name":"x","count":3}"#).unwrap();
        assert_eq!(record.read().unwrap(), Some(sample()));
    }

    #[test]
    fn unreadable_records_are_errors_and_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let record: Record<Sample> = Record::new(dir.path(), "r.json", "the sample");
        for bad in [
            &b"{\"name\": \"x\", \"cou"[..],
            b"{\"format\": 1, \"data\": {\"name\": 5}}",
            b"{\"format\": 9, \"data\": {\"name\": \"x\", \"count\": 3}}",
            b"\xff\xfe",
        ] {
            fs::write(record.path(), bad).unwrap();
            let err = record.read().unwrap_err();
            assert!(err.to_string().contains("the sample"), "{err}");
            let (data, problem) = record.read_or_set_aside().unwrap();
            assert!(data.is_none());
            let problem = problem.unwrap();
            assert!(problem.contains("kept as"), "{problem}");
            assert!(!record.path().exists());
        }
        let kept: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), 4, "{kept:?}");
        assert_eq!(record.set_aside_files().len(), 4);
        assert!(
            kept.iter()
                .all(|name| name.starts_with("r.json.unreadable-"))
        );
        let newer = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| fs::read(p).unwrap().starts_with(b"{\"format\": 9"))
            .unwrap();
        assert!(newer.exists());
        // A fresh record can be written after.
        record.write(&sample()).unwrap();
        assert_eq!(record.read().unwrap(), Some(sample()));
    }
}
