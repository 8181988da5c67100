//! A small file system of its own on the host: an ext4 image file,
//! loop-mounted under `/var/lib/mesbak-test/`. Unlike a tmpfs in a
//! container, it outlives the container (a server's PANIC and restart),
//! and the test can fill it from the host at any moment.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::util::{random_hex, run, run_text, run_unchecked};

/// An ext4 file system of a given size, mounted at [`SmallDisk::path`];
/// drop unmounts it and deletes the image.
pub struct SmallDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl SmallDisk {
    /// Creates and mounts a `mib` MiB file system.
    pub fn create(mib: u64) -> SmallDisk {
        SmallDisk::try_create(mib).unwrap_or_else(|err| panic!("no small disk: {err:#}"))
    }

    fn try_create(mib: u64) -> Result<SmallDisk> {
        let id = random_hex(6);
        let base = Path::new("/var/lib/mesbak-test");
        std::fs::create_dir_all(base)?;
        let disk = SmallDisk {
            image: base.join(format!("disk-{id}.ext4")),
            mount: base.join(format!("disk-{id}")),
        };
        std::fs::File::create(&disk.image)?.set_len(mib << 20)?;
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=0"])
                .arg(&disk.image),
            None,
        )?;
        std::fs::create_dir_all(&disk.mount)?;
        run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&disk.image)
                .arg(&disk.mount),
            None,
        )?;
        Ok(disk)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// A new empty folder on it (an empty data directory for a server).
    pub fn folder(&self, name: &str) -> PathBuf {
        let folder = self.mount.join(name);
        std::fs::create_dir_all(&folder).unwrap_or_else(|err| panic!("{err}"));
        folder
    }

    /// Free bytes.
    pub fn free(&self) -> u64 {
        let text = run_text(
            Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(&self.mount),
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
        text.lines()
            .last()
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("df said {text:?}"))
    }

    /// Fills it with the file `filler` until about `leave` bytes stay free.
    pub fn fill(&self, leave: u64) {
        let size = self.free().saturating_sub(leave);
        run(
            Command::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(self.filler()),
            None,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// Deletes the filler.
    pub fn unfill(&self) {
        std::fs::remove_file(self.filler()).unwrap_or_else(|err| panic!("{err}"));
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run_unchecked(Command::new("umount").arg("-l").arg(&self.mount), None);
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
