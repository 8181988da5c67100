//! A path target: a folder on a mounted NAS / SMB / NFS share. Files are
//! written as hidden `.<name>.partial` (0600, never through a symlink),
//! synced, then renamed into place; folders are 0700. With `require_mount`
//! nothing is written unless the folder is on a mounted file system other
//! than the one holding `/`, so an unmounted share never fills the local
//! disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use mesbak_interface::Error;
use openssl::sha::Sha256;

use super::store::{Digest, Entry, Pacer};
use crate::storage::{create_private_file, sync_dir};

const PARTIAL_SUFFIX: &str = ".partial";
const BLOCK: usize = 1 << 20;

pub struct LocalDir {
    name: String,
    root: PathBuf,
    require_mount: bool,
}

impl LocalDir {
    pub fn new(name: &str, root: PathBuf, require_mount: bool) -> LocalDir {
        LocalDir {
            name: name.to_owned(),
            root,
            require_mount,
        }
    }

    /// The folder of `key`'s kind and the file name; refuses anything but
    /// `<folder>/<plain name>` (the folder may be nested: `pitr/wal`).
    fn split<'k>(&self, key: &'k str) -> Result<(PathBuf, &'k str), Error> {
        match key.rsplit_once('/') {
            Some((folder, name))
                if !name.is_empty()
                    && !name.starts_with('.')
                    && folder
                        .split('/')
                        .all(|part| !part.is_empty() && !part.starts_with('.')) =>
            {
                Ok((self.root.join(folder), name))
            }
            _ => Err(Error::InvalidArgument(format!(
                "'{key}' is not a key of off-site target '{}'",
                self.name
            ))),
        }
    }

    /// With `require_mount`, the folder (or the nearest existing folder
    /// above it) must sit on a mount point below `/`.
    fn check_mount(&self) -> Result<(), Error> {
        if !self.require_mount {
            return Ok(());
        }
        let mut current = Some(self.root.as_path());
        while let Some(path) = current {
            let parent = path.parent();
            match (fs::metadata(path), parent.map(fs::metadata)) {
                (Ok(meta), Some(Ok(parent_meta))) if meta.dev() != parent_meta.dev() => {
                    return Ok(());
                }
                _ => {}
            }
            current = parent.filter(|p| p != &Path::new("/"));
        }
        Err(Error::Failed(format!(
            "off-site target '{}': {} is not on a mounted share (require_mount = true), so nothing was written there; mount the share (check `findmnt -T {}`), then `mesbakctl offsite sync` (the copy stays queued)",
            self.name,
            self.root.display(),
            self.root.display()
        )))
    }

    fn io_error(&self, what: &str, path: &Path, err: io::Error) -> Error {
        match err.raw_os_error() {
            Some(libc::EROFS) => Error::Failed(format!(
                "off-site target '{}': {} is read-only for the agent; if the share is mounted read-write, allow it in the service's sandbox: `systemctl edit mesbak-agent`, add [Service] ReadWritePaths={}",
                self.name,
                path.display(),
                self.root.display()
            )),
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace(format!(
                "off-site target '{}': the share holding {} is full; free space there (the copy stays queued)",
                self.name,
                self.root.display()
            )),
            _ if err.kind() == io::ErrorKind::NotFound => Error::NotFound(format!(
                "off-site target '{}': {} does not exist while {what}; mount the share or create the folder",
                self.name,
                path.display()
            )),
            _ => Error::Failed(format!(
                "off-site target '{}': {what} {} failed: {err}",
                self.name,
                path.display()
            )),
        }
    }

    /// Creates `folder` 0700 (and the root when missing); refuses symlinks.
    fn ensure_folder(&self, folder: &Path) -> Result<(), Error> {
        for dir in [self.root.as_path(), folder] {
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::Config(format!(
                        "off-site target '{}': {} is a symlink; point url at the real folder",
                        self.name,
                        dir.display()
                    )));
                }
                Ok(meta) if !meta.is_dir() => {
                    return Err(Error::Config(format!(
                        "off-site target '{}': {} is not a folder",
                        self.name,
                        dir.display()
                    )));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|err| self.io_error("creating", dir, err))?;
                    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                }
                Err(err) => return Err(self.io_error("inspecting", dir, err)),
            }
        }
        Ok(())
    }

    pub fn list(&self, folder: &str) -> Result<Vec<Entry>, Error> {
        self.check_mount()?;
        let dir = self.root.join(folder);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(self.io_error("listing", &dir, err)),
        };
        let mut listed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            listed.push(Entry {
                key: format!("{folder}/{name}"),
                size: meta.len(),
            });
        }
        Ok(listed)
    }

    pub async fn upload(
        &self,
        key: &str,
        file: File,
        progress: &AtomicU64,
        pacer: &mut Pacer,
    ) -> Result<Digest, Error> {
        self.check_mount()?;
        let (folder, name) = self.split(key)?;
        self.ensure_folder(&folder)?;
        let partial = folder.join(format!(".{name}{PARTIAL_SUFFIX}"));
        let _ = fs::remove_file(&partial);
        let mut out =
            create_private_file(&partial).map_err(|err| self.io_error("writing", &partial, err))?;
        let copied = async {
            let mut source = Some(file);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let mut file = source.take().expect("source");
                let (block, file) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; BLOCK];
                    let n = read_full(&mut file, &mut buf)?;
                    buf.truncate(n);
                    Ok::<_, io::Error>((buf, file))
                })
                .await
                .map_err(|err| Error::Failed(format!("internal error copying: {err}")))?
                .map_err(|err| Error::Failed(format!("cannot read the backup to copy: {err}")))?;
                source = Some(file);
                if block.is_empty() {
                    break;
                }
                let len = block.len() as u64;
                pacer.pace(len).await;
                hasher.update(&block);
                size += len;
                out = write_blocking(out, block)
                    .await
                    .map_err(|err| self.io_error("writing", &partial, err))?;
                progress.fetch_add(len, Ordering::Relaxed);
            }
            let out = tokio::task::spawn_blocking(move || out.sync_all().map(|()| out))
                .await
                .map_err(|err| Error::Failed(format!("internal error copying: {err}")))?
                .map_err(|err| self.io_error("syncing", &partial, err))?;
            drop(out);
            Ok::<_, Error>(Digest {
                size,
                sha256: hex::encode(hasher.finish()),
            })
        }
        .await;
        let digest = match copied {
            Ok(digest) => digest,
            Err(err) => {
                let _ = fs::remove_file(&partial);
                return Err(err);
            }
        };
        self.commit(&partial, &folder, name)?;
        Ok(digest)
    }

    /// Renames a complete, synced partial file into place.
    fn commit(&self, partial: &Path, folder: &Path, name: &str) -> Result<(), Error> {
        let path = folder.join(name);
        if let Err(err) = fs::rename(partial, &path) {
            let _ = fs::remove_file(partial);
            return Err(self.io_error("renaming", &path, err));
        }
        sync_dir(folder).map_err(|err| self.io_error("syncing", folder, err))
    }

    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        self.check_mount()?;
        let (folder, name) = self.split(key)?;
        self.ensure_folder(&folder)?;
        let partial = folder.join(format!(".{name}{PARTIAL_SUFFIX}"));
        let _ = fs::remove_file(&partial);
        let written = create_private_file(&partial).and_then(|mut out| {
            out.write_all(bytes)?;
            out.sync_all()
        });
        if let Err(err) = written {
            let _ = fs::remove_file(&partial);
            return Err(self.io_error("writing", &partial, err));
        }
        self.commit(&partial, &folder, name)
    }

    /// Streams `key`, bypassing the page cache so the share's copy is read.
    pub fn read(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes, Error>>, Error> {
        self.check_mount()?;
        let (folder, name) = self.split(key)?;
        let path = folder.join(name);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|err| self.io_error("reading", &path, err))?;
        // Drop what this host cached of the file, so a read-back reads the share.
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        let name = self.name.clone();
        let stream = futures_util::stream::unfold(Some(file), move |state| {
            let name = name.clone();
            let path = path.clone();
            async move {
                let mut file = state?;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; BLOCK];
                    let n = read_full(&mut file, &mut buf)?;
                    buf.truncate(n);
                    Ok::<_, io::Error>((buf, file))
                })
                .await;
                match read {
                    Ok(Ok((buf, _))) if buf.is_empty() => None,
                    Ok(Ok((buf, file))) => Some((Ok(Bytes::from(buf)), Some(file))),
                    Ok(Err(err)) => Some((
                        Err(Error::Failed(format!(
                            "off-site target '{name}': reading {} failed: {err}",
                            path.display()
                        ))),
                        None,
                    )),
                    Err(err) => Some((
                        Err(Error::Failed(format!("internal error reading: {err}"))),
                        None,
                    )),
                }
            }
        });
        Ok(stream.boxed())
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.check_mount()?;
        let (folder, name) = self.split(key)?;
        let path = folder.join(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&folder).map_err(|err| self.io_error("syncing", &folder, err)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(self.io_error("deleting", &path, err)),
        }
    }

    pub fn remove_partials(&self) -> Vec<String> {
        if self.check_mount().is_err() {
            return Vec::new();
        }
        let mut removed = Vec::new();
        for folder in ["database", "ignition", "pitr/base", "pitr/wal"] {
            let Ok(entries) = fs::read_dir(self.root.join(folder)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.')
                    && name.ends_with(PARTIAL_SUFFIX)
                    && fs::remove_file(entry.path()).is_ok()
                {
                    removed.push(format!("{folder}/{name}"));
                }
            }
        }
        removed
    }
}

async fn write_blocking(mut out: File, block: Vec<u8>) -> io::Result<File> {
    tokio::task::spawn_blocking(move || out.write_all(&block).map(|()| out))
        .await
        .map_err(io::Error::other)?
}

fn read_full(reader: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
