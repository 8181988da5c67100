//! Tar streams of a data directory as they pass: a base backup's archive
//! checked whole (pg_basebackup exits 0 even when the Docker engine dropped
//! the end of its output: the engine closes an exec's output 2 s after the
//! program ended if its reader has not taken it all, and a base backup
//! without its last files, `global/pg_control` last of all, would only fail
//! the restore that needs it), passed on without the files of the server's
//! WAL archive folder and without its end-of-archive marker (so WAL
//! segments can follow in the same upload), and the headers of the entries
//! the agent adds itself.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use mesbak_interface::Error;

use crate::ignition::TarWalker;

const BLOCK: usize = 512;

/// Follows a data directory's tar stream with [`TarWalker`] (every header
/// checked as the `tar` crate and GNU tar read it), noting whether
/// `global/pg_control` passed, and leaves out the files of the server's own
/// WAL archive folder when told its name.
#[derive(Default)]
pub struct TarWalk {
    walker: TarWalker,
    /// `<folder>/` whose files are left out (the folder's own entry stays).
    left_out: Option<String>,
    /// `global/pg_control` was among the entries.
    control_file: bool,
    /// What the walker found damaged.
    damage: Option<String>,
    /// Where in the stream the entries left out lie; those that may still
    /// have bytes to come.
    dropping: Vec<Range<u64>>,
    /// Files left out, and their bytes in the stream.
    pub left_out_files: u64,
    pub left_out_bytes: u64,
    /// Bytes [`TarWalk::pass`] holds back: they may start an entry left
    /// out or the end-of-archive marker.
    held: BytesMut,
}

impl TarWalk {
    /// A walk that leaves out the files in the data directory's `folder`
    /// (the server's WAL archive folder: they are shipped on their own, and
    /// a base backup taken while shipping is behind would carry them twice).
    pub fn leaving_out(folder: &str) -> TarWalk {
        TarWalk {
            left_out: Some(format!("{}/", folder.trim_end_matches('/'))),
            ..TarWalk::default()
        }
    }

    /// Follows `data`, the next bytes of the stream.
    fn feed(&mut self, data: &[u8]) {
        if self.damage.is_some() {
            return;
        }
        let (control_file, left_out, dropping) =
            (&mut self.control_file, &self.left_out, &mut self.dropping);
        let (files, bytes) = (&mut self.left_out_files, &mut self.left_out_bytes);
        let fed = self.walker.feed_entries(data, |entry| {
            *control_file |= entry.name == "global/pg_control";
            let inside = left_out.as_deref().is_some_and(|folder| {
                entry.name.len() > folder.len() && entry.name.starts_with(folder)
            });
            if inside {
                dropping.push(entry.start..entry.end);
                *files += 1;
                *bytes += entry.end - entry.start;
            }
        });
        self.damage = fed.err();
    }

    /// Follows `block` and hands on into `out` what is known to come before
    /// the end-of-archive marker, without the entries left out (bytes that
    /// may start either are held back until that is told), so that more
    /// entries can follow in the same stream. Nothing more goes on once the
    /// stream is damaged.
    pub fn pass(&mut self, block: &Bytes, out: &mut Vec<Bytes>) {
        let start = self.walker.position();
        self.feed(block);
        if self.damage.is_some() {
            return;
        }
        let settled = self.walker.settled();
        let held_start = start - self.held.len() as u64;
        let held = self.held.split().freeze();
        for (origin, bytes) in [(held_start, held), (start, block.clone())] {
            let cut = (settled.saturating_sub(origin) as usize).min(bytes.len());
            self.hand_on(origin, &bytes.slice(..cut), out);
            if !self.walker.complete() {
                self.held.extend_from_slice(&bytes[cut..]);
            }
        }
        self.dropping.retain(|range| range.end > settled);
    }

    /// Hands on `bytes`, which start at `origin` in the stream, without
    /// those of the entries left out.
    fn hand_on(&self, origin: u64, bytes: &Bytes, out: &mut Vec<Bytes>) {
        let end = origin + bytes.len() as u64;
        let mut at = origin;
        for range in &self.dropping {
            if range.end <= at || range.start >= end {
                continue;
            }
            if range.start > at {
                out.push(bytes.slice((at - origin) as usize..(range.start - origin) as usize));
            }
            at = range.end.min(end);
        }
        if at < end {
            out.push(bytes.slice((at - origin) as usize..));
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

/// The end-of-archive marker: two empty blocks.
pub fn tar_end() -> Bytes {
    Bytes::from_static(&[0u8; 2 * BLOCK])
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

    #[test]
    fn the_archive_folders_files_are_left_out_however_the_stream_is_split() {
        let long = format!("mesbak_wal/{}", "x".repeat(120));
        // (name, size, kept)
        let entries: Vec<(&str, usize, bool)> = vec![
            ("backup_label", 200, true),
            ("mesbak_wal/", 0, true),
            ("mesbak_wal/000000010000000000000003", 16 * 1024, false),
            ("mesbak_wal/archtemp", 700, false),
            ("mesbak_wal_old/file", 5, true),
            (&long, 3, false),
            ("base/5/16384", 8192, true),
            ("mesbak_wal/000000010000000000000004", 512, false),
            ("global/pg_control", 8192, true),
        ];
        let build = |all: bool| {
            let mut builder = tar::Builder::new(Vec::new());
            for (name, size, kept) in &entries {
                if !(all || *kept) {
                    continue;
                }
                let mut header = tar::Header::new_ustar();
                header.set_mode(0o600);
                if name.ends_with('/') {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, name, &[][..]).unwrap();
                } else {
                    header.set_size(*size as u64);
                    // A long name goes in a GNU long-name header first.
                    builder
                        .append_data(&mut header, name, &vec![name.len() as u8; *size][..])
                        .unwrap();
                }
            }
            builder.into_inner().unwrap()
        };
        let (tar, kept) = (build(true), build(false));
        for block in [1, 100, 512, 1000, 4096, 20000, tar.len()] {
            let mut walk = TarWalk::leaving_out("mesbak_wal");
            let mut out = Vec::new();
            for piece in tar.chunks(block) {
                walk.pass(&Bytes::copy_from_slice(piece), &mut out);
            }
            walk.check(THEN).unwrap();
            assert_eq!(walk.left_out_files, 4, "split every {block} bytes");
            let mut joined: Vec<u8> = out.concat();
            joined.extend_from_slice(&tar_end());
            assert_eq!(joined.len(), kept.len(), "split every {block} bytes");
            assert!(joined == kept, "split every {block} bytes");
        }
    }
}
