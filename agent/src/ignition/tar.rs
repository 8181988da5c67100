//! Tar streams: the checker that follows one as it passes, and the
//! one-entry archive that gives the volume's top folder its attributes.

use serde::{Deserialize, Serialize};

/// Largest extended tar header (PAX, GNU long name) the stream may carry.
const MAX_EXTENDED_HEADER: u64 = 1 << 20;

/// Owner, mode and time of the archive's root entry (`./`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootAttrs {
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch, and nanoseconds.
    pub mtime: i64,
    pub nanos: u32,
}

/// An entry of a tar stream: its name, and where it lies in the stream,
/// from its first header block (extended headers included) to the end of
/// its data's padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpan<'a> {
    pub name: &'a str,
    pub start: u64,
    pub end: u64,
}

/// Follows a tar stream without keeping it: checks every header's checksum,
/// honours PAX and GNU extended headers, counts entries, reads the root
/// entry's attributes and notices the end-of-archive marker.
///
/// It reads headers as the `tar` crate and GNU tar do (a fuzz target holds
/// it to the `tar` crate) and refuses what they would read differently or
/// not at all: numeric fields that are not octal (or base-256), a checksum
/// that is not the unsigned sum, an extended header in a pre-POSIX header
/// or one that is repeated or not followed by its entry.
#[derive(Debug, Default)]
pub struct TarWalker {
    /// A header block being assembled.
    block: Vec<u8>,
    /// Data bytes (with padding) still to pass over.
    skip: u64,
    /// An extended header's data being collected: (type, size, bytes).
    extended: Option<(u8, u64, Vec<u8>)>,
    /// PAX records for the next entry.
    pax: Vec<(String, String)>,
    /// A GNU long name for the next entry.
    long_name: Option<String>,
    /// Extended header types (`x`, `L`, `K`) read for the next entry.
    pending: Vec<u8>,
    /// An extended header (PAX, GNU long name or link) was read: an entry
    /// must follow it.
    awaiting_entry: bool,
    zero_blocks: u8,
    ended: bool,
    /// Bytes of the stream taken so far.
    position: u64,
    /// Where the entry being read starts: its first header block, extended
    /// headers included.
    entry_start: u64,
    /// Entries (files, folders, links...) seen.
    pub entries: u64,
    /// The root entry's attributes, when the archive starts with `./`.
    pub root: Option<RootAttrs>,
}

impl TarWalker {
    /// Takes the next bytes of the stream; an error describes the damage.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.feed_entries(data, |_| {})
    }

    /// Takes the next bytes of the stream, handing `entry` each entry whose
    /// header they complete.
    pub fn feed_entries(
        &mut self,
        mut data: &[u8],
        mut entry: impl FnMut(&EntrySpan),
    ) -> Result<(), String> {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                self.position += n as u64;
                data = &data[n..];
                continue;
            }
            if self.block.is_empty() && self.extended.is_none() && !self.awaiting_entry {
                self.entry_start = self.position;
            }
            let n = (512 - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..n]);
            self.position += n as u64;
            data = &data[n..];
            if self.block.len() < 512 {
                break;
            }
            let block = std::mem::take(&mut self.block);
            self.next_block(&block, &mut entry)?;
        }
        Ok(())
    }

    /// Whether the end-of-archive marker was seen.
    pub fn complete(&self) -> bool {
        self.ended
    }

    /// Bytes of the stream taken so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many bytes of the stream are known to come before its
    /// end-of-archive marker: all taken but a header block still being
    /// assembled and an empty block that may start the marker.
    pub fn before_end(&self) -> u64 {
        self.position - self.block.len() as u64 - 512 * u64::from(self.zero_blocks)
    }

    /// How many bytes of the stream are known to come before the entry
    /// whose headers are still being read (or, between entries, before the
    /// end-of-archive marker): what lies before it is whole entries, their
    /// data as it comes, and global headers.
    pub fn settled(&self) -> u64 {
        if self.awaiting_entry || self.extended.is_some() {
            self.entry_start
        } else {
            self.before_end()
        }
    }

    fn next_block(
        &mut self,
        block: &[u8],
        entry: &mut dyn FnMut(&EntrySpan),
    ) -> Result<(), String> {
        if let Some((kind, size, mut data)) = self.extended.take() {
            data.extend_from_slice(block);
            if (data.len() as u64) < size {
                self.extended = Some((kind, size, data));
            } else {
                data.truncate(size as usize);
                self.extended_header(kind, &data)?;
            }
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            if self.awaiting_entry {
                return Err(format!(
                    "an extended header after {} entries is followed by the end of the archive instead of the entry it describes",
                    self.entries
                ));
            }
            self.zero_blocks += 1;
            self.ended = self.zero_blocks == 2;
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(format!(
                "a header follows a single empty block after {} entries",
                self.entries
            ));
        }
        self.header(block, entry)
    }

    fn header(&mut self, block: &[u8], entry: &mut dyn FnMut(&EntrySpan)) -> Result<(), String> {
        let stored = octal(&block[148..156])
            .ok_or_else(|| format!("unreadable header checksum after {} entries", self.entries))?;
        // The unsigned sum with the checksum field as spaces (POSIX).
        let sum: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(format!(
                "header checksum mismatch after {} entries",
                self.entries
            ));
        }
        let typeflag = block[156];
        let magic = Magic::of(block);
        let extended = matches!(typeflag, b'x' | b'g' | b'L' | b'K');
        if extended && magic == Magic::Old {
            return Err(format!(
                "an extended header (type '{}') in a pre-POSIX header after {} entries",
                typeflag.escape_ascii(),
                self.entries
            ));
        }
        // PAX records describe the next entry, not another extended header.
        let pax_size = self
            .pax_value("size")
            .filter(|_| !extended)
            .and_then(|v| v.parse::<u64>().ok());
        let size = match pax_size {
            Some(size) => size,
            None => numeric(&block[124..136])
                .ok_or_else(|| format!("unreadable size field after {} entries", self.entries))?,
        };
        match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if typeflag != b'g' {
                    if self.pending.contains(&typeflag) {
                        return Err(format!(
                            "two extended headers of type '{}' for one entry after {} entries",
                            typeflag.escape_ascii(),
                            self.entries
                        ));
                    }
                    self.pending.push(typeflag);
                    // A global PAX header describes no one entry.
                    self.awaiting_entry = true;
                }
                if size > MAX_EXTENDED_HEADER {
                    return Err(format!("an extended header of {size} bytes"));
                }
                if size == 0 {
                    self.extended_header(typeflag, &[])?;
                } else {
                    self.extended = Some((typeflag, size, Vec::with_capacity(size as usize)));
                }
                return Ok(());
            }
            _ => {}
        }
        let name = match (self.pax_value("path"), &self.long_name) {
            (Some(path), _) => path.to_owned(),
            (None, Some(long)) => long.clone(),
            (None, None) => {
                let name = field_str(&block[0..100]);
                // GNU headers keep times where ustar has the prefix.
                let prefix = if magic == Magic::Ustar {
                    field_str(&block[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }
            }
        };
        if self.entries == 0 && typeflag == b'5' && is_root(&name) {
            let number = |key: &str, range: std::ops::Range<usize>| -> Result<u64, String> {
                match self.pax_value(key) {
                    Some(value) => value.split('.').next().and_then(|n| n.parse().ok()),
                    None => numeric(&block[range]),
                }
                .ok_or_else(|| format!("the top folder's {key} is unreadable"))
            };
            let mode = octal(&block[100..108])
                .ok_or_else(|| "the top folder's mode is unreadable".to_owned())?;
            self.root = Some(RootAttrs {
                mode: (mode & 0o7777) as u32,
                uid: number("uid", 108..116)?,
                gid: number("gid", 116..124)?,
                mtime: i64::try_from(number("mtime", 136..148)?)
                    .map_err(|_| "the top folder's mtime is out of range".to_owned())?,
                nanos: self
                    .pax_value("mtime")
                    .and_then(|value| value.split_once('.'))
                    .and_then(|(_, fraction)| {
                        let digits: String = fraction.chars().take(9).collect();
                        format!("{digits:0<9}").parse().ok()
                    })
                    .unwrap_or(0),
            });
        }
        // Links, devices, folders and FIFOs carry no data. Readers disagree
        // on whether a size there means data follows (POSIX and the `tar`
        // crate: for folders and devices; Go's, i.e. Docker's: never), so
        // one is damage.
        if matches!(typeflag, b'1'..=b'6') {
            if size != 0 {
                return Err(format!(
                    "a link, folder or device entry with a data size ({size} bytes) after {} entries",
                    self.entries + 1
                ));
            }
        } else {
            self.skip = size.div_ceil(512) * 512;
        }
        entry(&EntrySpan {
            name: &name,
            start: self.entry_start,
            end: self.position + self.skip,
        });
        self.entries += 1;
        self.pax.clear();
        self.long_name = None;
        self.pending.clear();
        self.awaiting_entry = false;
        Ok(())
    }

    fn extended_header(&mut self, kind: u8, data: &[u8]) -> Result<(), String> {
        match kind {
            b'x' => self.pax = parse_pax(data)?,
            b'L' => {
                self.long_name = Some(
                    String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_owned(),
                )
            }
            // Global PAX records and GNU long link names change no path.
            _ => {}
        }
        Ok(())
    }

    fn pax_value(&self, key: &str) -> Option<&str> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The archive's top folder, as `docker cp`/the archive API writes it.
fn is_root(name: &str) -> bool {
    matches!(name, "." | "./")
}

/// What kind of header a block is, by its magic and version fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magic {
    /// POSIX ustar (and pax): `ustar\0` `00`.
    Ustar,
    /// GNU: `ustar ` ` \0`.
    Gnu,
    /// Anything else: a pre-POSIX (V7) header.
    Old,
}

impl Magic {
    fn of(block: &[u8]) -> Magic {
        match &block[257..265] {
            b"ustar\x0000" => Magic::Ustar,
            b"ustar  \x00" => Magic::Gnu,
            _ => Magic::Old,
        }
    }
}

fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal field: digits up to the first NUL, blanks around them allowed
/// (as GNU tar and the `tar` crate read it); empty is not a number.
fn octal(field: &[u8]) -> Option<u64> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?.trim();
    u64::from_str_radix(text, 8).ok()
}

/// A numeric header field: octal, or GNU base-256 for large values.
fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        Some(value)
    } else {
        octal(field)
    }
}

/// PAX records: `<length> <key>=<value>\n`.
fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err("a PAX record with a bad length".into());
        }
        let record = &data[space + 1..length - 1];
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without a value")?;
        records.push((
            String::from_utf8_lossy(&record[..equals]).into_owned(),
            String::from_utf8_lossy(&record[equals + 1..]).into_owned(),
        ));
        data = &data[length..];
    }
    Ok(records)
}

/// A tar archive holding one folder entry `name/` with `root`'s
/// attributes; PAX records carry nanoseconds and ids too large for ustar.
pub(super) fn root_archive(name: &str, root: &RootAttrs) -> std::io::Result<Vec<u8>> {
    let mut records: Vec<(&str, String)> = Vec::new();
    if root.nanos != 0 {
        records.push(("mtime", format!("{}.{:09}", root.mtime, root.nanos)));
    }
    for (key, id) in [("uid", root.uid), ("gid", root.gid)] {
        if id > USTAR_MAX_ID {
            records.push((key, id.to_string()));
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_pax_extensions(records.iter().map(|(key, value)| (*key, value.as_bytes())))?;
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_path(format!("{name}/"))?;
    header.set_mode(root.mode & 0o7777);
    header.set_uid(root.uid.min(USTAR_MAX_ID));
    header.set_gid(root.gid.min(USTAR_MAX_ID));
    header.set_mtime(root.mtime.max(0) as u64);
    header.set_size(0);
    header.set_cksum();
    builder.append(&header, std::io::empty())?;
    builder.into_inner()
}

/// The largest id a ustar header's 8-byte octal field holds.
const USTAR_MAX_ID: u64 = 0o7777777;

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block built by the `tar` crate.
    fn header(name: &str, typeflag: u8, mode: u32, size: u64, uid: u64, mtime: u64) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::new(typeflag));
        // set_path refuses names like `././@LongLink`; write the raw field.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_size(size);
        header.set_mtime(mtime);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    fn entry(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, 0o644, data.len() as u64, 0, 1);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            let mut length = body.len() + 1;
            while format!("{length}{body}").len() != length {
                length += 1;
            }
            data.extend_from_slice(format!("{length}{body}").as_bytes());
        }
        entry("PaxHeader", b'x', &data)
    }

    fn walk(bytes: &[u8], piece: usize) -> Result<TarWalker, String> {
        let mut walker = TarWalker::default();
        for chunk in bytes.chunks(piece) {
            walker.feed(chunk)?;
        }
        Ok(walker)
    }

    fn archive() -> Vec<u8> {
        let mut tar = header("./", b'5', 0o4751, 0, 1000, 1_600_000_000);
        tar.extend(entry("./a b/", b'5', b""));
        tar.extend(entry("./a b/file", b'0', &vec![7u8; 1300]));
        tar.extend(pax(&[("path", "./ünï/ long name"), ("size", "3")]));
        tar.extend(entry("ignored", b'0', b"abc"));
        tar.extend(entry("./link", b'2', b""));
        tar.extend(entry("././@LongLink", b'L', b"./very/long/name\0"));
        tar.extend(entry("./very/long/na", b'0', b"xy"));
        tar.extend(vec![0u8; 1024]);
        tar
    }

    #[test]
    fn each_entry_spans_its_extended_headers_header_and_data() {
        let tar = archive();
        let expected = [
            ("./", 0, 512),
            ("./a b/", 512, 1024),
            ("./a b/file", 1024, 1024 + 512 + 1536),
            // PAX header (2 blocks), header, data.
            ("./ünï/ long name", 3072, 3072 + 2048),
            ("./link", 5120, 5632),
            // GNU long name (2 blocks), header, data.
            ("./very/long/name", 5632, 5632 + 2048),
        ];
        for piece in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let mut walker = TarWalker::default();
            let mut spans = Vec::new();
            for chunk in tar.chunks(piece) {
                walker
                    .feed_entries(chunk, |span| {
                        spans.push((span.name.to_owned(), span.start, span.end))
                    })
                    .unwrap();
            }
            let expected: Vec<(String, u64, u64)> = expected
                .iter()
                .map(|(name, start, end)| (name.to_string(), *start, *end))
                .collect();
            assert_eq!(spans, expected, "piece {piece}");
            assert_eq!(walker.settled(), 7680, "piece {piece}");
        }
        // Within an entry's extended header, nothing after its start is settled.
        let mut walker = TarWalker::default();
        walker.feed(&tar[..3072 + 700]).unwrap();
        assert_eq!(walker.settled(), 3072);
        walker.feed(&tar[3072 + 700..3072 + 1024 + 10]).unwrap();
        assert_eq!(walker.settled(), 3072);
        walker
            .feed(&tar[3072 + 1024 + 10..3072 + 1536 + 100])
            .unwrap();
        assert_eq!(walker.settled(), 3072 + 1536 + 100);
    }

    #[test]
    fn walks_a_complete_archive_in_any_pieces() {
        let tar = archive();
        for piece in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let walker = walk(&tar, piece).unwrap();
            assert!(walker.complete(), "piece {piece}");
            assert_eq!(walker.entries, 6, "piece {piece}");
            assert_eq!(
                walker.root,
                Some(RootAttrs {
                    mode: 0o4751,
                    uid: 1000,
                    gid: 1000,
                    mtime: 1_600_000_000,
                    nanos: 0
                })
            );
        }
    }

    #[test]
    fn pax_overrides_the_root_attributes() {
        let mut tar = pax(&[("uid", "3000000"), ("mtime", "1700000000.25")]);
        tar.extend(header(".", b'5', 0o700, 0, 5, 5));
        tar.extend(vec![0u8; 1024]);
        let walker = walk(&tar, 100).unwrap();
        let root = walker.root.unwrap();
        assert_eq!(
            (root.uid, root.gid, root.mtime),
            (3_000_000, 5, 1_700_000_000)
        );
        assert_eq!(root.mode, 0o700);
    }

    #[test]
    fn truncation_and_damage_are_noticed() {
        let tar = archive();
        // Cut at a block boundary before the end marker: no error, but incomplete.
        let walker = walk(&tar[..tar.len() - 1024], 512).unwrap();
        assert!(!walker.complete());
        // A flipped byte in a header.
        let mut damaged = tar.clone();
        damaged[512 + 10] ^= 1;
        assert!(walk(&damaged, 512).unwrap_err().contains("checksum"));
        // A header after a single empty block.
        let mut odd = header("./", b'5', 0o755, 0, 0, 0);
        odd.extend(vec![0u8; 512]);
        odd.extend(entry("x", b'0', b"1"));
        assert!(walk(&odd, 512).is_err());
        // No root entry: no root attributes.
        let mut plain = entry("x", b'0', b"1");
        plain.extend(vec![0u8; 1024]);
        let walker = walk(&plain, 512).unwrap();
        assert!(walker.complete() && walker.root.is_none());
    }

    #[test]
    fn root_archives_carry_owner_mode_and_nanoseconds() {
        let root = RootAttrs {
            mode: 0o4751,
            uid: 1000,
            gid: 5_000_000,
            mtime: 1_700_000_000,
            nanos: 123_456_789,
        };
        let tar = root_archive("volume", &root).unwrap();
        let walker = walk(&tar, 512).unwrap();
        assert!(walker.complete());
        assert_eq!(walker.entries, 1);
        // The walker takes `volume/` for a plain folder, not the root.
        assert_eq!(walker.root, None);
        let listed = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar)?;
                child.wait_with_output()
            })
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(text.starts_with("drwsr-x--x 1000/5000000"), "{text}");
        assert!(text.contains("volume/"), "{text}");
    }

    #[test]
    fn base_256_sizes_are_read() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[7] = 0x02; // 2 << 32 = 8 GiB
        assert_eq!(numeric(&field), Some(8 << 30));
        assert_eq!(numeric(b"00000001750\0"), Some(1000));
    }

    #[test]
    fn gnu_tar_archives_are_walked() {
        // What a real tar program writes, PAX and GNU formats, long and
        // non-ASCII names included.
        let dir = tempfile::tempdir().unwrap();
        let long = "d".repeat(120);
        std::fs::create_dir_all(dir.path().join(&long).join("ünïcødé dir")).unwrap();
        std::fs::write(
            dir.path().join(&long).join("ünïcødé dir/f"),
            vec![1u8; 5000],
        )
        .unwrap();
        std::os::unix::fs::symlink("../x", dir.path().join("link")).unwrap();
        for format in ["pax", "gnu", "ustar"] {
            let out = std::process::Command::new("tar")
                .args(["--format", format, "-C"])
                .arg(dir.path())
                .args(["-cf", "-", "."])
                .output()
                .unwrap();
            if format == "ustar" {
                // ustar cannot hold the long name: tar says so.
                continue;
            }
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let walker = walk(&out.stdout, 1000).unwrap();
            assert!(walker.complete(), "{format}");
            assert_eq!(walker.entries, 5, "{format}");
            assert!(walker.root.is_some(), "{format}");
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/tar_walker.rs, against the tar
    /// crate): a PAX header followed by the end-of-archive marker was
    /// accepted as a complete, empty archive; such a stream was cut short.
    #[test]
    fn an_extended_header_without_its_entry_is_damage() {
        for extended in [
            pax(&[("mtime", "1700000000.25")]),
            entry("././@LongLink", b'L', b"./very/long/name\0"),
        ] {
            let mut tar = header("./", b'5', 0o755, 0, 0, 0);
            tar.extend(extended);
            tar.extend(vec![0u8; 1024]);
            let err = walk(&tar, 512).unwrap_err();
            assert!(err.contains("extended header after 1 entries"), "{err}");
        }
        // A global header describes no entry: fine before the end.
        let mut tar = header("./", b'5', 0o755, 0, 0, 0);
        tar.extend(entry("pax_global_header", b'g', b"9 a=bcd\n"));
        tar.extend(vec![0u8; 1024]);
        assert!(walk(&tar, 512).unwrap().complete());
    }

    /// Found by fuzzing against the tar crate: headers it (and GNU tar)
    /// read differently or not at all are damage here too, so what the
    /// walker passes is what Docker unpacks.
    #[test]
    fn headers_other_readers_would_read_differently_are_refused() {
        let end = vec![0u8; 1024];
        let with = |mut block: Vec<u8>, change: &dyn Fn(&mut [u8])| {
            change(&mut block[..512]);
            // Keep the checksum right so only the change counts.
            let mut header = tar::Header::new_old();
            header.as_mut_bytes().copy_from_slice(&block[..512]);
            header.set_cksum();
            block[..512].copy_from_slice(header.as_bytes());
            block
        };
        // An extended header whose magic is damaged (a pre-POSIX header).
        let mut tar = with(pax(&[("path", "./x")]), &|b| {
            b[257..265].copy_from_slice(b"ust\0\0ra\0")
        });
        tar.extend(entry("./y", b'0', b"1"));
        tar.extend(&end);
        assert!(walk(&tar, 512).unwrap_err().contains("pre-POSIX"));
        // Two PAX headers for one entry.
        let mut tar = pax(&[("path", "./a")]);
        tar.extend(pax(&[("path", "./b")]));
        tar.extend(entry("./y", b'0', b"1"));
        tar.extend(&end);
        assert!(
            walk(&tar, 512)
                .unwrap_err()
                .contains("two extended headers")
        );
        // An empty numeric field is not 0.
        let mut tar = with(entry("./y", b'0', b""), &|b| b[124..136].fill(0));
        tar.extend(&end);
        assert!(walk(&tar, 512).unwrap_err().contains("size"));
        // Digits after a NUL do not count: "1\0" then garbage is 1.
        let mut tar = with(entry("./y", b'0', b"a"), &|b| {
            b[124..136].copy_from_slice(b"1\x00garbage\x00\x00\x00")
        });
        tar.extend(&end);
        assert_eq!(walk(&tar, 512).unwrap().entries, 1);
        // A signed checksum (pre-1988 writers) is not the POSIX sum.
        let mut tar = entry("./ü", b'0', b"");
        let signed: i64 = tar[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        tar[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        tar.extend(&end);
        assert!(walk(&tar, 512).unwrap_err().contains("checksum"));
        // PAX records describe the next entry, not a GNU long name header.
        let mut tar = pax(&[("size", "3")]);
        tar.extend(entry("././@LongLink", b'L', b"./a/long/name\0"));
        tar.extend(entry("./a/long/na", b'0', b"abc"));
        tar.extend(&end);
        assert_eq!(walk(&tar, 512).unwrap().entries, 1);
        // The top folder is `.` or `./`, not `/` or `//`; an unreadable
        // mode of it is damage, not 0755.
        for name in ["/", "//", ""] {
            let mut tar = header(name, b'5', 0o700, 0, 0, 0);
            tar.extend(&end);
            assert_eq!(walk(&tar, 512).unwrap().root, None, "{name:?}");
        }
        let mut tar = with(header("./", b'5', 0o700, 0, 0, 0), &|b| {
            b[100..108].fill(b' ')
        });
        tar.extend(&end);
        assert!(walk(&tar, 512).unwrap_err().contains("mode"));
        // A folder with a data size: Go (Docker) skips no data, POSIX and
        // the tar crate skip it.
        let mut tar = header("./d/", b'5', 0o700, 3, 0, 0);
        tar.extend(entry("./d/f", b'0', b"1"));
        tar.extend(&end);
        assert!(walk(&tar, 512).unwrap_err().contains("data size"));
    }

    #[test]
    fn gnu_headers_have_no_prefix_field() {
        // GNU tar keeps access and change times where ustar has the prefix:
        // they are not part of the name.
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_path("./").unwrap();
        header.set_mode(0o750);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_size(0);
        header.as_gnu_mut().unwrap().set_atime(1_700_000_000);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend(vec![0u8; 1024]);
        assert_eq!(walk(&tar, 512).unwrap().root.map(|r| r.mode), Some(0o750));
    }
}
