//! The compressors behind a backup file, both standard streams in constant
//! memory: gzip as independent members of at most [`GZIP_BLOCK`] plain
//! bytes, deflated in parallel by libdeflate (`gunzip`, `zcat` and every
//! gzip library read consecutive members as one stream); zstd through
//! libzstd's own worker threads (`zstd -d`).

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use libdeflater::{CompressionLvl, Compressor as Deflater};
use mesbak_interface::Compression;

use super::pool::Pool;

/// Plain bytes per gzip member. libdeflate compresses a whole buffer at
/// once; each member restarts the 32 KiB window, which costs about 0.1 %
/// of size at 1 MiB.
pub const GZIP_BLOCK: usize = 1 << 20;

/// Plain bytes per zstd worker job (see [`Compressor::new`]).
const ZSTD_JOB: u32 = 2 << 20;

/// What compresses a backup and how hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub compression: Compression,
    pub level: u32,
}

impl Codec {
    /// The levels each compression accepts.
    pub fn levels(compression: Compression) -> std::ops::RangeInclusive<u32> {
        match compression {
            // libdeflate's range: 10-12 are its slow, smallest levels.
            Compression::Gzip => 1..=12,
            // Beyond 19 zstd needs hundreds of MiB per worker.
            Compression::Zstd => 1..=19,
        }
    }

    /// The level used when `backup.compression_level` is not set, chosen
    /// from measurements (database benchmark, `MESBAK_BENCH_LEVELS`): gzip's
    /// is the cheapest whose output stays at or below `gzip -6`'s size. On
    /// pg_dump text libdeflate's levels 1-4 give 1.22-1.09x that size, 5
    /// (the first with lazy matching) 0.94x for 1.4x the CPU of 4, 6 0.90x.
    pub fn default_level(compression: Compression) -> u32 {
        match compression {
            Compression::Gzip => 5,
            Compression::Zstd => 3,
        }
    }
}

/// Worker threads for compression: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// A compressing writer in front of `W`.
pub enum Compressor<W: Write + Send + 'static> {
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write + Send + 'static> Compressor<W> {
    pub fn new(codec: Codec, inner: W) -> io::Result<Compressor<W>> {
        match codec.compression {
            Compression::Gzip => Ok(Compressor::Gzip(ParallelGzip::new(
                inner,
                codec.level,
                threads(),
            )?)),
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, codec.level as i32)?;
                // XXH64 of the content in the frame, checked by `zstd -d`.
                encoder.include_checksum(true)?;
                encoder.multithread(threads() as u32)?;
                // libzstd's default job is 4 windows (8 MiB at level 3) with
                // several jobs in flight per worker: the agent's peak RSS
                // rose by ~30 MiB over gzip's. 2 MiB jobs: on pg_dump text
                // `zstd -3 -T2` peaks at 17 MB instead of 53 for 0.3 % of size.
                encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                Ok(Compressor::Zstd(encoder))
            }
        }
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Compressor::Gzip(gzip) => gzip.write_all(data),
            Compressor::Zstd(zstd) => zstd.write_all(data),
        }
    }

    /// Ends the stream and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(gzip) => gzip.finish(),
            Compressor::Zstd(zstd) => zstd.finish(),
        }
    }
}

/// A plain block and where its compressed member goes.
type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

/// Parallel gzip: blocks go to `threads` libdeflate workers; a writer
/// thread puts the members out in order. At most about `3 x threads`
/// blocks are in flight, whatever the size of the stream.
pub struct ParallelGzip<W: Write + Send + 'static> {
    block: Vec<u8>,
    pool: Pool<Job>,
    order: Option<SyncSender<Receiver<io::Result<Vec<u8>>>>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    members: u64,
}

impl<W: Write + Send + 'static> ParallelGzip<W> {
    pub fn new(inner: W, level: u32, threads: usize) -> io::Result<ParallelGzip<W>> {
        let level = CompressionLvl::new(level as i32).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gzip level {level} is out of range"),
            )
        })?;
        let threads = threads.max(1);
        let pool = Pool::start("gzip", threads, move || Worker::new(level), deflate)?;
        let (order, results) = sync_channel::<Receiver<io::Result<Vec<u8>>>>(threads * 2);
        let writer = std::thread::Builder::new()
            .name("gzip-out".into())
            .spawn(move || write_in_order(inner, &results))?;
        Ok(ParallelGzip {
            block: Vec::with_capacity(GZIP_BLOCK),
            pool,
            order: Some(order),
            writer: Some(writer),
            members: 0,
        })
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = data.len().min(GZIP_BLOCK - self.block.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == GZIP_BLOCK {
                self.dispatch()?;
            }
        }
        Ok(())
    }

    /// Hands the current block to the workers, its member's place to the writer.
    fn dispatch(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(GZIP_BLOCK));
        let (result, member) = sync_channel(1);
        let sent = self
            .order
            .as_ref()
            .is_some_and(|order| order.send(member).is_ok())
            && self.pool.send((block, result));
        if sent {
            self.members += 1;
            Ok(())
        } else {
            // The writer stopped: its error says why.
            Err(self.stop().err().unwrap_or_else(|| {
                io::Error::other("the gzip writer stopped before the end of the stream")
            }))
        }
    }

    /// Closes the queues and waits for every thread; the writer's result.
    fn stop(&mut self) -> io::Result<W> {
        self.pool.stop();
        self.order = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the gzip writer thread panicked")),
            None => Err(io::Error::other("the gzip stream was already finished")),
        }
    }

    /// Compresses what is left and waits until every member is written.
    pub fn finish(mut self) -> io::Result<W> {
        // An empty stream is still one (empty) member, as `gzip` writes it.
        if !self.block.is_empty() || self.members == 0 {
            self.dispatch()?;
        }
        self.stop()
    }
}

/// A compressing thread's own state: its compressor, and room for the
/// largest member a block can give.
struct Worker {
    compressor: Deflater,
    scratch: Vec<u8>,
}

impl Worker {
    fn new(level: CompressionLvl) -> Worker {
        let mut compressor = Deflater::new(level);
        let scratch = vec![0u8; compressor.gzip_compress_bound(GZIP_BLOCK)];
        Worker {
            compressor,
            scratch,
        }
    }
}

/// Compresses into the worker's scratch room and hands on a copy of just
/// the member: a member sized for the worst case (a whole block, zeroed)
/// kept about 1 MiB resident per member waiting for the writer, where the
/// member itself is a fraction of that.
fn deflate(worker: &mut Worker, (block, result): Job) {
    let bound = worker.compressor.gzip_compress_bound(block.len());
    if worker.scratch.len() < bound {
        worker.scratch.resize(bound, 0);
    }
    let compressed = worker
        .compressor
        .gzip_compress(&block, &mut worker.scratch)
        .map(|n| worker.scratch[..n].to_vec())
        .map_err(|err| io::Error::other(format!("gzip compression failed: {err}")));
    // The input block goes back to the allocator before the member waits.
    drop(block);
    // The writer may have stopped; the producer learns that from it.
    let _ = result.send(compressed);
}

fn write_in_order<W: Write>(
    mut inner: W,
    results: &Receiver<Receiver<io::Result<Vec<u8>>>>,
) -> io::Result<W> {
    for member in results {
        let member = member
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))??;
        inner.write_all(&member)?;
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Fails once `limit` bytes were written, as a full disk does.
    struct FillsUp {
        written: usize,
        limit: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written + buf.len() > self.limit {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.written += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        // Incompressible enough that members do not shrink to nothing.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 7) as u8 + b'a'
            })
            .collect()
    }

    #[test]
    fn members_come_out_in_order_as_one_gzip_stream() {
        let data = noise(5 * GZIP_BLOCK + 12_345);
        for threads in [1, 2, 5] {
            let mut gzip = ParallelGzip::new(Vec::new(), 1, threads).unwrap();
            // Writes that straddle block boundaries.
            for piece in data.chunks(300_007) {
                gzip.write_all(piece).unwrap();
            }
            let out = gzip.finish().unwrap();
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "{threads} threads");
            // Six members, each a standard gzip header.
            let members = out.windows(3).filter(|w| w == &[0x1f, 0x8b, 8]).count();
            assert!(members >= 6, "{members}");
        }
    }

    #[test]
    fn a_failing_output_is_reported_not_hung_on() {
        let mut gzip = ParallelGzip::new(
            FillsUp {
                written: 0,
                limit: 100_000,
            },
            1,
            2,
        )
        .unwrap();
        let data = noise(GZIP_BLOCK);
        let mut failed = None;
        for _ in 0..50 {
            if let Err(err) = gzip.write_all(&data) {
                failed = Some(err);
                break;
            }
        }
        let err = match failed {
            Some(err) => err,
            None => gzip.finish().map(|_| ()).unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
