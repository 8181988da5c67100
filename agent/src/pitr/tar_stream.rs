//! Tar streams of a data directory as they pass: a base backup's archive
//! checked whole (pg_basebackup exits 0 even when the Docker engine dropped
//! the end of its output: the engine closes an exec's output 2 s after the
//! program ended if its reader has not taken it all, and a base backup
//! without its last files, `global/pg_control` last of all, would only fail
//! the restore that needs it), passed on without its end-of-archive marker
//! so WAL segments can follow in the same upload, and the headers of the
//! entries the agent adds itself.

use bytes::{Bytes, BytesMut};
use mesbak_interface::Error;

use crate::ignition::TarWalker;

const BLOCK: usize = 512;

/// Follows a data directory's tar stream with [`TarWalker`] (every header
/// checked as the `tar` crate and GNU tar read it), noting whether
/// `global/pg_control` passed.
#[derive(Default)]
pub struct TarWalk {
    walker: TarWalker,
    /// `global/pg_control` was among the entries.
    control_file: bool,
    /// What the walker found damaged.
    damage: Option<String>,
    /// Bytes [`TarWalk::pass`] holds back: they may start the
    /// end-of-archive marker.
    held: BytesMut,
}

impl TarWalk {
    /// Follows `data`, the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.damage.is_some() {
            return;
        }
        let control_file = &mut self.control_file;
        let fed = self
            .walker
            .feed_entries(data, |name| *control_file |= name == "global/pg_control");
        self.damage = fed.err();
    }

    /// Follows `block` and hands on into `out` what is known to come before
    /// the end-of-archive marker (bytes that may start it are held back
    /// until that is told), so that more entries can follow in the same
    /// stream. Nothing more goes on once the stream is damaged.
    pub fn pass(&mut self, block: &Bytes, out: &mut Vec<Bytes>) {
        let start = self.walker.position();
        self.feed(block);
        if self.damage.is_some() {
            return;
        }
        let end = self.walker.before_end();
        let held_start = start - self.held.len() as u64;
        let from_held = (end.saturating_sub(held_start) as usize).min(self.held.len());
        if from_held > 0 {
            out.push(self.held.split_to(from_held).freeze());
        }
        let from_block = (end.saturating_sub(start) as usize).min(block.len());
        if from_block > 0 {
            out.push(block.slice(..from_block));
        }
        if self.walker.complete() {
            self.held.clear();
        } else {
            self.held.extend_from_slice(&block[from_block..]);
        }
    }

    /// Whether the stream was a whole archive of a data directory; `then`
    /// says what follows from it not being one, and what to do.
    pub fn check(&self, then: &str) -> Result<(), Error> {
        let problem = if let Some(damage) = &self.damage {
            format!("a damaged tar header ({damage})")
        } else if !self.walker.complete() {
            "no end-of-archive marker: its last part was lost on the way".to_owned()
        } else if !self.control_file {
            "no global/pg_control".to_owned()
        } else {
            return Ok(());
        };
        Err(Error::Integrity(format!(
            "pg_basebackup's output has {problem}; {then}, and if it happens again look at this machine's disk and load"
        )))
    }
}

/// A ustar header for `name` of `size` bytes, owned by `owner` (uid, gid).
pub fn tar_header(
    name: &str,
    size: u64,
    kind: tar::EntryType,
    (uid, gid): (u64, u64),
) -> Result<Bytes, Error> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(name)
        .map_err(|err| Error::Failed(format!("cannot name {name} in a tar stream: {err}")))?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o700
    } else {
        0o600
    });
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(0);
    header.set_cksum();
    Ok(Bytes::copy_from_slice(header.as_bytes()))
}

/// Padding after a file's data in a tar stream.
pub fn tar_padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const THEN: &str = "the base backup is not kept";

    const ENTRIES: [(&str, usize); 4] = [
        ("backup_label", 200),
        ("base/5/16384", 8192 * 3),
        ("PG_VERSION", 3),
        ("global/pg_control", 8192),
    ];

    fn data_directory_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, size) in ENTRIES {
            let mut header = tar::Header::new_ustar();
            header.set_size(size as u64);
            header.set_mode(0o600);
            // Pages are mostly zeros: a cut inside one must not read as the end.
            builder
                .append_data(&mut header, name, &vec![0u8; size][..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn walk(stream: &[u8], block: usize) -> TarWalk {
        let mut walk = TarWalk::default();
        for piece in stream.chunks(block) {
            walk.feed(piece);
        }
        walk
    }

    #[test]
    fn a_whole_archive_passes_however_it_is_split() {
        let tar = data_directory_tar();
        for block in [1, 511, 512, 513, 28 * 1024, tar.len()] {
            walk(&tar, block).check(THEN).unwrap();
        }
    }

    #[test]
    fn an_archive_cut_anywhere_is_refused() {
        let tar = data_directory_tar();
        for cut in (0..tar.len()).step_by(256).chain([tar.len() - 1]) {
            let err = walk(&tar[..cut], 4096).check(THEN).unwrap_err();
            assert!(err.message().contains(THEN), "{cut}");
        }
    }

    #[test]
    fn a_damaged_header_or_a_missing_control_file_is_refused() {
        let mut tar = data_directory_tar();
        // The second header's name.
        tar[1024 + 10] ^= 0x55;
        let err = walk(&tar, 4096).check(THEN).unwrap_err().message();
        assert!(err.contains("damaged tar header"), "{err}");

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o600);
        builder
            .append_data(&mut header, "PG_VERSION", &b"17\n"[..])
            .unwrap();
        let err = walk(&builder.into_inner().unwrap(), 4096)
            .check(THEN)
            .unwrap_err()
            .message();
        assert!(err.contains("no global/pg_control"), "{err}");
    }

    #[test]
    fn an_archive_passed_on_loses_only_its_end_marker_and_takes_more_entries() {
        let tar = data_directory_tar();
        for block in [1, 500, 512, 4096, tar.len()] {
            let mut walk = TarWalk::default();
            let mut out = Vec::new();
            for piece in tar.chunks(block) {
                walk.pass(&Bytes::copy_from_slice(piece), &mut out);
            }
            walk.check(THEN).unwrap();
            let mut joined: Vec<u8> = out.concat();
            let entries: usize = ENTRIES
                .iter()
                .map(|(_, size)| BLOCK + size + tar_padding(*size as u64))
                .sum();
            assert_eq!(joined, tar[..entries], "split every {block} bytes");
            joined.extend_from_slice(
                &tar_header("extra", 5, tar::EntryType::Regular, (0, 0)).unwrap(),
            );
            joined.extend_from_slice(b"hello");
            joined.extend_from_slice(&[0u8; BLOCK - 5]);
            joined.extend_from_slice(&[0u8; 2 * BLOCK]);
            let names: Vec<String> = tar::Archive::new(&joined[..])
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
            assert_eq!(
                names,
                [
                    "backup_label",
                    "base/5/16384",
                    "PG_VERSION",
                    "global/pg_control",
                    "extra"
                ]
            );
        }
    }
}
