//! Reading the gzip payload mesbak writes, its members inflated in parallel.
//!
//! The payload is a run of independent members of at most [`GZIP_BLOCK`]
//! plain bytes, each starting with libdeflate's fixed header. Gzip records
//! no member's length, so the stream is cut where that header appears and
//! the pieces go to libdeflate workers. A piece that is not exactly one
//! member (the header's ten bytes can also occur inside compressed data,
//! or the stream is damaged) ends the parallel reading: from that piece on,
//! flate2 reads the rest one member after the other, as it reads any gzip
//! stream, and reports damage as before. A stream from another writer is
//! read that way from its start.

use std::collections::VecDeque;
use std::io::{self, Cursor, Read};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use libdeflater::Decompressor;
use memchr::memmem;

use super::compress::GZIP_BLOCK;
use super::pool::Pool;

/// libdeflate's member header up to its extra flags: magic, deflate, no
/// flags, no time. The extra flags (0, 2 or 4) and "unknown" system follow.
const HEADER: [u8; 8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
const HEADER_LEN: usize = 10;
/// Header and trailer: the least a member takes.
const MIN_MEMBER: usize = 18;
/// Compressed bytes read from the source at a time.
const READ_CHUNK: usize = 256 << 10;
/// The most a piece (and a member's plain bytes) may take before the
/// stream is read sequentially: a member mesbak wrote is at most
/// [`GZIP_BLOCK`] plain, barely more compressed.
const MAX_PIECE: usize = 4 * GZIP_BLOCK;

fn is_header(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[..HEADER.len()] == HEADER
        && matches!(bytes[8], 0 | 2 | 4)
        && bytes[9] == 0xff
}

/// What a worker hands back: the piece, and its plain bytes if the piece
/// is exactly one member.
type Inflated = (Bytes, Option<Vec<u8>>);
type Job = (Bytes, SyncSender<Inflated>);

/// The agent's inflating workers, one per core, shared by every reader:
/// a restore reads its base backup and authenticates WAL segments at
/// once, and each reader's own threads would each leave a malloc arena.
fn workers() -> io::Result<&'static Pool<Job>> {
    static WORKERS: OnceLock<Pool<Job>> = OnceLock::new();
    if let Some(pool) = WORKERS.get() {
        return Ok(pool);
    }
    let pool = Pool::start(
        "gunzip",
        super::compress::threads(),
        Decompressor::new,
        inflate,
    )?;
    Ok(WORKERS.get_or_init(|| pool))
}

fn inflate(decompressor: &mut Decompressor, (piece, result): Job) {
    let plain = inflate_member(decompressor, &piece);
    // The reader may have stopped; nothing waits for this piece then.
    let _ = result.send((piece, plain));
}

/// The plain bytes of `piece` if it is exactly one gzip member.
fn inflate_member(decompressor: &mut Decompressor, piece: &[u8]) -> Option<Vec<u8>> {
    if piece.len() < MIN_MEMBER {
        return None;
    }
    let trailer = &piece[piece.len() - 8..];
    let crc = u32::from_le_bytes(trailer[..4].try_into().ok()?);
    let size = u32::from_le_bytes(trailer[4..].try_into().ok()?) as usize;
    if size > MAX_PIECE {
        return None;
    }
    let mut plain = vec![0u8; size];
    let n = decompressor.gzip_decompress(piece, &mut plain).ok()?;
    // libdeflate checked the trailer that follows the deflate data; that
    // the piece's own last eight bytes match too means the member ends
    // where the piece does.
    (n == size && libdeflater::crc32(&plain) == crc).then_some(plain)
}

/// A gzip decoder over `R` (decrypted payload bytes) that inflates
/// mesbak's members on the agent's workers, in constant memory: at most
/// `window` members in flight.
pub struct ParallelGunzip<R: Read + 'static> {
    plain: Vec<u8>,
    at: usize,
    mode: Mode<R>,
}

enum Mode<R: Read + 'static> {
    Parallel(Box<Splitter<R>>),
    Sequential(Box<MultiGzDecoder<Box<dyn Read>>>),
    /// Only while the stream changes hands.
    Switching,
}

struct Splitter<R> {
    source: R,
    /// Read and not yet handed out; starts at a member's header.
    pending: BytesMut,
    /// `pending[..scanned]` holds no header but its first.
    scanned: usize,
    source_ended: bool,
    /// The whole stream was handed to the workers.
    handed_out: bool,
    checked_start: bool,
    pool: &'static Pool<Job>,
    in_flight: VecDeque<Receiver<Inflated>>,
    window: usize,
}

/// Why a splitter cannot go on.
enum Stop {
    Io(io::Error),
    /// No member header within [`MAX_PIECE`]: not a stream to split.
    Unsplittable,
}

impl<R: Read + 'static> ParallelGunzip<R> {
    pub fn new(source: R, window: usize) -> io::Result<ParallelGunzip<R>> {
        let pool = workers()?;
        Ok(ParallelGunzip {
            plain: Vec::new(),
            at: 0,
            mode: Mode::Parallel(Box::new(Splitter {
                source,
                pending: BytesMut::new(),
                scanned: 0,
                source_ended: false,
                handed_out: false,
                checked_start: false,
                pool,
                in_flight: VecDeque::new(),
                window: window.max(1),
            })),
        })
    }

    /// Puts the next member's plain bytes in `plain`; false at the end of
    /// the stream or once it is read sequentially.
    fn next_member(&mut self) -> io::Result<bool> {
        let Mode::Parallel(splitter) = &mut self.mode else {
            return Ok(false);
        };
        let failed = match splitter.fill_window() {
            Ok(()) => match splitter.in_flight.pop_front() {
                None => return Ok(false),
                Some(member) => match member
                    .recv()
                    .map_err(|_| io::Error::other("a gzip worker stopped"))?
                {
                    (_, Some(plain)) => {
                        self.plain = plain;
                        self.at = 0;
                        return Ok(true);
                    }
                    (piece, None) => Some(piece),
                },
            },
            Err(Stop::Unsplittable) => None,
            Err(Stop::Io(err)) => return Err(err),
        };
        self.read_sequentially(failed)?;
        Ok(false)
    }

    /// Hands the rest of the stream, from `failed` (a piece that was not a
    /// member) or what is still pending, to flate2.
    fn read_sequentially(&mut self, failed: Option<Bytes>) -> io::Result<()> {
        let Mode::Parallel(splitter) = std::mem::replace(&mut self.mode, Mode::Switching) else {
            return Ok(());
        };
        let Splitter {
            source,
            pending,
            in_flight,
            ..
        } = *splitter;
        let mut rest = Vec::new();
        rest.extend_from_slice(failed.as_deref().unwrap_or_default());
        for member in in_flight {
            let (piece, _) = member
                .recv()
                .map_err(|_| io::Error::other("a gzip worker stopped"))?;
            rest.extend_from_slice(&piece);
        }
        rest.extend_from_slice(&pending);
        let stream: Box<dyn Read> = Box::new(Cursor::new(rest).chain(source));
        self.mode = Mode::Sequential(Box::new(MultiGzDecoder::new(stream)));
        Ok(())
    }
}

impl<R: Read + 'static> Read for ParallelGunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.at);
                buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if let Mode::Sequential(decoder) = &mut self.mode {
                return decoder.read(buf);
            }
            if !self.next_member()? && !matches!(self.mode, Mode::Sequential(_)) {
                return Ok(0);
            }
        }
    }
}

impl<R: Read> Splitter<R> {
    /// Hands pieces to the workers until `window` are in flight or the
    /// stream is all handed out.
    fn fill_window(&mut self) -> Result<(), Stop> {
        while self.in_flight.len() < self.window && !self.handed_out {
            match self.next_piece()? {
                Some(piece) => {
                    let (result, member) = sync_channel(1);
                    if !self.pool.send((piece, result)) {
                        return Err(Stop::Io(io::Error::other("the gzip workers stopped")));
                    }
                    self.in_flight.push_back(member);
                }
                None => self.handed_out = true,
            }
        }
        Ok(())
    }

    /// The stream up to the next member header, or to its end.
    fn next_piece(&mut self) -> Result<Option<Bytes>, Stop> {
        loop {
            if !self.checked_start && (self.pending.len() >= HEADER_LEN || self.source_ended) {
                if !is_header(&self.pending) {
                    return Err(Stop::Unsplittable);
                }
                self.checked_start = true;
            }
            let from = self.scanned.max(MIN_MEMBER);
            if self.checked_start && self.pending.len() > from {
                let found = memmem::find_iter(&self.pending[from..], &HEADER)
                    .map(|at| from + at)
                    .find(|&at| is_header(&self.pending[at..]));
                if let Some(cut) = found {
                    self.scanned = 0;
                    return Ok(Some(self.pending.split_to(cut).freeze()));
                }
                // A header may straddle what was read so far.
                self.scanned = self.pending.len() - (HEADER_LEN - 1);
            }
            if self.source_ended {
                self.scanned = 0;
                return Ok((!self.pending.is_empty()).then(|| self.pending.split().freeze()));
            }
            if self.pending.len() > MAX_PIECE {
                return Err(Stop::Unsplittable);
            }
            self.read_chunk().map_err(Stop::Io)?;
        }
    }

    /// Reads up to [`READ_CHUNK`] more bytes into `pending`.
    fn read_chunk(&mut self) -> io::Result<()> {
        let start = self.pending.len();
        self.pending.resize(start + READ_CHUNK, 0);
        let mut filled = start;
        let result = loop {
            match self.source.read(&mut self.pending[filled..]) {
                Ok(0) => {
                    self.source_ended = true;
                    break Ok(());
                }
                Ok(n) => {
                    filled += n;
                    if filled == self.pending.len() {
                        break Ok(());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        self.pending.truncate(filled);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression as Level;
    use flate2::write::GzEncoder;

    use super::super::compress::ParallelGzip;
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Half text-like, half random: members of varied sizes.
                if (i / 70_000) % 2 == 0 {
                    b"0123456789 abcdef,\n"[(state % 19) as usize]
                } else {
                    state as u8
                }
            })
            .collect()
    }

    fn mesbak_gzip(plain: &[u8], level: u32) -> Vec<u8> {
        let mut gzip = ParallelGzip::new(Vec::new(), level, 2).unwrap();
        // Uneven writes, as a program's output comes.
        for part in plain.chunks(77_777) {
            gzip.write_all(part).unwrap();
        }
        gzip.finish().unwrap()
    }

    /// Reads through a source that hands out at most `step` bytes a call.
    struct Trickle {
        data: Cursor<Vec<u8>>,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.data.read(&mut buf[..n])
        }
    }

    fn gunzip(compressed: Vec<u8>, step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut reader = ParallelGunzip::new(
            Trickle {
                data: Cursor::new(compressed),
                step,
            },
            3,
        )?;
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain)?;
        Ok((plain, matches!(reader.mode, Mode::Parallel(_))))
    }

    #[test]
    fn mesbak_members_are_inflated_in_parallel_to_the_same_bytes() {
        for len in [0, 1, GZIP_BLOCK - 1, GZIP_BLOCK, 7 * GZIP_BLOCK + 12_345] {
            let plain = noise(len);
            for step in [usize::MAX, 65_536, 4_099] {
                let (read, parallel) = gunzip(mesbak_gzip(&plain, 5), step).unwrap();
                assert_eq!(read.len(), plain.len(), "{len} bytes, steps of {step}");
                assert!(read == plain, "{len} bytes, steps of {step}");
                assert!(parallel, "{len} bytes were read sequentially");
            }
        }
    }

    #[test]
    fn a_header_inside_a_member_hands_the_rest_to_the_sequential_reader() {
        // Stored blocks (level 0) carry the plain bytes as they are: every
        // member then holds false headers.
        let mut header = HEADER.to_vec();
        header.extend_from_slice(&[0, 0xff]);
        let plain: Vec<u8> = header
            .iter()
            .copied()
            .chain(noise(1_000))
            .cycle()
            .take(3 * GZIP_BLOCK + 500)
            .collect();
        let (read, parallel) = gunzip(mesbak_gzip(&plain, 0), usize::MAX).unwrap();
        assert!(read == plain);
        assert!(!parallel, "the false headers went unnoticed");
    }

    #[test]
    fn other_writers_streams_are_read_as_any_gzip() {
        let plain = noise(5 * GZIP_BLOCK);
        // One member far larger than mesbak's, with flate2's header (the
        // same bytes as libdeflate's), then one with a file name.
        let mut one = GzEncoder::new(Vec::new(), Level::new(6));
        one.write_all(&plain).unwrap();
        let mut named = flate2::GzBuilder::new()
            .filename("mes.sql")
            .write(Vec::new(), Level::new(1));
        named.write_all(&plain[..1000]).unwrap();
        for compressed in [one.finish().unwrap(), named.finish().unwrap()] {
            let mut expected = Vec::new();
            MultiGzDecoder::new(&compressed[..])
                .read_to_end(&mut expected)
                .unwrap();
            let (read, parallel) = gunzip(compressed, 65_536).unwrap();
            assert!(read == expected);
            assert!(!parallel);
        }
    }

    #[test]
    fn damage_is_an_error_as_flate2_reports_it() {
        let plain = noise(3 * GZIP_BLOCK);
        let mut compressed = mesbak_gzip(&plain, 5);
        let middle = compressed.len() / 2;
        compressed[middle] ^= 0x55;
        let err = gunzip(compressed.clone(), usize::MAX).unwrap_err();
        assert_eq!(err.raw_os_error(), None, "{err}");
        // Cut short: the last member is incomplete.
        compressed.truncate(middle);
        assert!(gunzip(compressed, usize::MAX).is_err());
    }

    #[test]
    fn a_source_error_is_passed_on_unchanged() {
        struct Fails;
        impl Read for Fails {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let compressed = mesbak_gzip(&noise(2 * GZIP_BLOCK), 5);
        let mut reader = ParallelGunzip::new(Cursor::new(compressed).chain(Fails), 2).unwrap();
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
}
