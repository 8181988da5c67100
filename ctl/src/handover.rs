//! Files named on the command line are opened here, with the caller's own
//! permissions, and handed to the agent as open files (unix fd passing over
//! D-Bus): the agent never opens a path for a caller, so what the caller
//! cannot read stays unreadable, and the agent's private /tmp does not hide
//! the caller's files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use nix::libc;

/// A file opened for the agent, with the name it has here (no folder).
#[derive(Debug)]
pub struct Handed {
    pub file: File,
    pub name: String,
}

/// What a backup argument names: an id in the backup folder, or a file.
#[derive(Debug)]
pub enum Given {
    Id(String),
    File(Handed),
}

/// A backup argument: a path (it has a `/`, or it is a file here that is
/// not named like a backup id) is opened here; anything else is an id.
pub fn backup_argument(given: &str) -> Result<Given> {
    let path = Path::new(given);
    if given.contains('/') || path.symlink_metadata().is_ok() && !given.ends_with(".enc") {
        return open(path).map(Given::File);
    }
    Ok(Given::Id(given.to_owned()))
}

/// Opens `path` for reading as the caller: never through a symlink (a
/// link could point the agent's root caller at a file they did not mean),
/// only a regular file.
pub fn open(path: &Path) -> Result<Handed> {
    let shown = path.display();
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{shown} does not name a file; give the path of the file"))?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EMLINK) => anyhow!(
                "{shown} is a symlink; mesbakctl only hands over real files: name the file it points to"
            ),
            Some(libc::EACCES) | Some(libc::EPERM) => anyhow!(
                "cannot read {shown}: permission denied; mesbakctl opens files with your own permissions, so make it readable to you or run mesbakctl with sudo"
            ),
            Some(libc::ENOENT) => anyhow!("{shown} does not exist; check the path"),
            _ => anyhow!("cannot open {shown}: {err}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|err| anyhow!("cannot inspect {shown}: {err}"))?;
    if !meta.is_file() {
        bail!("{shown} is not a regular file; name a backup file");
    }
    // O_NONBLOCK only kept a FIFO from blocking the open; reads of a
    // regular file ignore it, but clear it all the same.
    clear_nonblock(&file).map_err(|err| anyhow!("cannot use {shown}: {err}"))?;
    Ok(Handed { file, name })
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::fd::AsRawFd;
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Whether a name is one of the old stack's backup files: its database
/// dumps (`*.sql.gz`) or its Ignition tars (`ignition-*.tar.gz`).
fn looks_old(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".sql.gz") || name.starts_with("ignition-") && name.ends_with(".tar.gz"))
}

/// The files `mesbakctl import` hands over: each FILE as named, and for a
/// folder (the old `backups/` tree) the old backups in it and in its
/// `database/` and `ignition/` folders, oldest name first.
pub fn old_backups(paths: &[PathBuf]) -> Result<Vec<Handed>> {
    let mut handed = Vec::new();
    for path in paths {
        let meta = path.symlink_metadata().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => anyhow!("{} does not exist; check the path", path.display()),
            _ => anyhow!("cannot read {}: {err}", path.display()),
        })?;
        if !meta.is_dir() {
            handed.push(open(path)?);
            continue;
        }
        let mut found = Vec::new();
        for dir in [path.clone(), path.join("database"), path.join("ignition")] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound && dir != *path => continue,
                Err(err) => bail!(
                    "cannot read the folder {}: {err}; mesbakctl reads it with your own permissions",
                    dir.display()
                ),
            };
            for entry in entries {
                let entry = entry.map_err(|err| anyhow!("cannot read {}: {err}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if looks_old(&name) {
                    found.push(dir.join(name));
                }
            }
        }
        if found.is_empty() {
            bail!(
                "no old backups in {}: looked for database/*.sql.gz and ignition/ignition-*.tar.gz",
                path.display()
            );
        }
        found.sort();
        for file in found {
            handed.push(open(&file)?);
        }
    }
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_ids_and_paths_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            backup_argument("mes_2026-01-01_000000.sql.gz.enc").unwrap(),
            Given::Id(_)
        ));
        let file = dir.path().join("mes_2026-01-01_000000.sql.gz.enc");
        std::fs::write(&file, b"x").unwrap();
        let Given::File(handed) = backup_argument(file.to_str().unwrap()).unwrap() else {
            panic!("a path is a file")
        };
        assert_eq!(handed.name, "mes_2026-01-01_000000.sql.gz.enc");
    }

    #[test]
    fn symlinks_folders_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sql.gz.enc");
        std::fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link.sql.gz.enc");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = open(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = open(&dir.path().join("gone")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_folder_gives_its_old_backups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("database")).unwrap();
        std::fs::create_dir(dir.path().join("ignition")).unwrap();
        for name in [
            "database/mes_2024-10-11_000001.sql.gz",
            "database/.gitkeep",
            "ignition/ignition-20241011-000001.tar.gz",
            "README.md",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let names: Vec<String> = old_backups(&[dir.path().to_owned()])
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(
            names,
            [
                "mes_2024-10-11_000001.sql.gz",
                "ignition-20241011-000001.tar.gz"
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(old_backups(&[empty.path().to_owned()]).is_err());
    }
}
