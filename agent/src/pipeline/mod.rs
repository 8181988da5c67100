//! The data path, in constant memory: blocks from a program's stdout go
//! through parallel compression (standard gzip members, or zstd) and the
//! mesbak format into a file, with the SHA-256 of what lands on disk; and
//! back: file → authenticated decryption → decompression → blocks for a
//! program's stdin.

mod compress;
mod inflate;
mod pool;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use mesbak_format::{Decryptor, Encryptor, FormatError, Key};
use mesbak_interface::{Compression, Error};
use openssl::sha::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use compress::Codec;
use compress::Compressor;
use inflate::ParallelGunzip;

/// Blocks in flight between the producer and the compressor.
const CHANNEL_BLOCKS: usize = 16;
/// Size of the blocks the reader hands out.
const READ_BLOCK: usize = 256 * 1024;

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes of the encrypted file.
    pub size: u64,
    pub sha256: String,
    /// Bytes before compression.
    pub plain_bytes: u64,
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl HashingWriter<BufWriter<File>> {
    /// The sink of a backup file: buffered, hashed, counted.
    fn for_file(file: File) -> Self {
        HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Flushes and syncs the file; what was written, with `plain_bytes`.
    fn seal(self, plain_bytes: u64) -> Result<Written, Error> {
        let file = self
            .inner
            .into_inner()
            .map_err(|err| io_write_error(err.into_error()))?;
        file.sync_all().map_err(io_write_error)?;
        Ok(Written {
            size: self.written,
            sha256: hex::encode(self.hasher.finish()),
            plain_bytes,
        })
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Feeds plain bytes to a backup file being written on a worker thread.
pub struct BackupWriter {
    sender: mpsc::Sender<Bytes>,
    worker: JoinHandle<Result<Written, Error>>,
}

impl BackupWriter {
    /// Starts the compressor and encryptor writing into `file`. `progress`
    /// counts plain bytes as they are compressed.
    pub fn start(file: File, key: Key, codec: Codec, progress: Arc<AtomicU64>) -> BackupWriter {
        let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_BLOCKS);
        let worker = tokio::task::spawn_blocking(move || {
            let encryptor =
                Encryptor::new(HashingWriter::for_file(file), &key).map_err(format_write_error)?;
            let mut compressor = Compressor::new(codec, encryptor)
                .map_err(|err| Error::Failed(format!("cannot start compression: {err}")))?;
            let mut plain_bytes = 0u64;
            while let Some(block) = receiver.blocking_recv() {
                compressor.write_all(&block).map_err(io_write_error)?;
                plain_bytes += block.len() as u64;
                progress.fetch_add(block.len() as u64, Ordering::Relaxed);
            }
            let encryptor = compressor.finish().map_err(io_write_error)?;
            encryptor
                .finish()
                .map_err(io_write_error)?
                .seal(plain_bytes)
        });
        BackupWriter { sender, worker }
    }

    /// Adds a block; fails if the worker stopped (its error comes from `finish`).
    pub async fn write(&self, block: Bytes) -> bool {
        self.sender.send(block).await.is_ok()
    }

    /// Copies a program's stdout in; returns false if the worker stopped.
    pub async fn pump(&self, stdout: &mut mpsc::Receiver<Bytes>) -> bool {
        while let Some(block) = stdout.recv().await {
            if !self.write(block).await {
                return false;
            }
        }
        true
    }

    /// Ends the stream and waits for the file to be complete and synced.
    pub async fn finish(self) -> Result<Written, Error> {
        drop(self.sender);
        self.worker
            .await
            .map_err(|err| Error::Failed(format!("internal error in the backup writer: {err}")))?
    }
}

/// Encrypts a payload that is already compressed (an imported old backup)
/// into a backup file, synchronously, hashing what lands on disk.
pub struct RawEncryptor {
    encryptor: Encryptor<HashingWriter<BufWriter<File>>>,
    payload_bytes: u64,
}

impl RawEncryptor {
    pub fn new(file: File, key: &Key) -> Result<RawEncryptor, Error> {
        Ok(RawEncryptor {
            encryptor: Encryptor::new(HashingWriter::for_file(file), key)
                .map_err(format_write_error)?,
            payload_bytes: 0,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.payload_bytes += data.len() as u64;
        self.encryptor.write_all(data).map_err(io_write_error)
    }

    /// Seals the last chunk and syncs the file; `plain_bytes` of the
    /// result is the payload's size as given (still compressed).
    pub fn finish(self) -> Result<Written, Error> {
        self.encryptor
            .finish()
            .map_err(io_write_error)?
            .seal(self.payload_bytes)
    }
}

fn io_write_error(err: io::Error) -> Error {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        Error::NoSpace(
            "the disk filled up while writing the backup; the partial file was removed, free space and retry".into(),
        )
    } else {
        Error::Failed(format!("cannot write the backup: {err}"))
    }
}

fn format_write_error(err: FormatError) -> Error {
    match err {
        FormatError::Io(err) => io_write_error(err),
        other => Error::Failed(format!("cannot start encryption: {other}")),
    }
}

/// Maps a format failure while reading to the error a technician sees.
pub fn read_error(id: &str, err: FormatError) -> Error {
    match err {
        FormatError::Io(err) => Error::Failed(format!("cannot read backup {id}: {err}")),
        other => Error::Integrity(format!("backup {id} cannot be used: {other}")),
    }
}

/// Reads a backup on a worker thread, handing out authenticated (and, with
/// a compression, decompressed) blocks.
pub struct BackupReader {
    pub blocks: mpsc::Receiver<Bytes>,
    worker: JoinHandle<Result<u64, Error>>,
}

impl BackupReader {
    /// `progress` counts encrypted bytes consumed, so it can be set against
    /// the file size.
    pub fn start(
        id: String,
        file: File,
        key: Key,
        decompress: Option<Compression>,
        progress: Arc<AtomicU64>,
    ) -> BackupReader {
        let (sender, blocks) = mpsc::channel::<Bytes>(CHANNEL_BLOCKS);
        let worker = tokio::task::spawn_blocking(move || {
            let counted = CountingReader {
                inner: io::BufReader::with_capacity(1 << 20, file),
                progress,
            };
            let decryptor = Decryptor::new(counted, &key).map_err(|err| read_error(&id, err))?;
            let buffered = io::BufReader::with_capacity(1 << 20, decryptor);
            let mut source: Box<dyn Read> = match decompress {
                None => Box::new(buffered),
                Some(Compression::Gzip) => Box::new(
                    ParallelGunzip::new(buffered, compress::threads() + 1)
                        .map_err(|err| Error::Failed(format!("cannot start gzip: {err}")))?,
                ),
                // Consecutive frames are read as one stream, as `zstd -d` does.
                Some(Compression::Zstd) => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .map_err(|err| Error::Failed(format!("cannot start zstd: {err}")))?,
                ),
            };
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; READ_BLOCK];
                let n = read_full(&mut source, &mut buf).map_err(|err| {
                    match FormatError::from_io(&err) {
                        Some(_) => read_error(&id, FormatError::from_io_owned(err)),
                        // Not the system's: the decompressor's verdict.
                        None if err.raw_os_error().is_none() => {
                            Error::Integrity(format!(
                                "backup {id} decrypts but its {}payload is damaged ({err}); use another backup",
                                decompress.map_or(String::new(), |c| format!("{c} "))
                            ))
                        }
                        None => Error::Failed(format!("cannot read backup {id}: {err}")),
                    }
                })?;
                if n == 0 {
                    return Ok(total);
                }
                buf.truncate(n);
                total += n as u64;
                if sender.blocking_send(Bytes::from(buf)).is_err() {
                    return Ok(total);
                }
            }
        });
        BackupReader { blocks, worker }
    }

    /// Waits for the reader; the total plain bytes read, or why it stopped.
    pub async fn finish(self) -> Result<u64, Error> {
        drop(self.blocks);
        self.worker
            .await
            .map_err(|err| Error::Failed(format!("internal error in the backup reader: {err}")))?
    }

    /// Reads to the end, discarding: a full authentication (and
    /// decompression check).
    pub async fn drain(mut self) -> Result<u64, Error> {
        while self.blocks.recv().await.is_some() {}
        self.finish().await
    }
}

struct CountingReader<R> {
    inner: R,
    progress: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use flate2::read::MultiGzDecoder;

    use super::*;

    fn key() -> Key {
        Key::from_secret(b"pipeline test key").unwrap()
    }

    fn codecs() -> [Codec; 2] {
        [
            Codec {
                compression: Compression::Gzip,
                level: 6,
            },
            Codec {
                compression: Compression::Zstd,
                level: 3,
            },
        ]
    }

    /// Decompresses with the standard decoders alone (several gzip
    /// members or zstd frames read as one stream, as gunzip and zstd -d do).
    fn standard_decode(compression: Compression, data: impl Read) -> Vec<u8> {
        let mut plain = Vec::new();
        match compression {
            Compression::Gzip => MultiGzDecoder::new(data).read_to_end(&mut plain),
            Compression::Zstd => zstd::stream::read::Decoder::new(data)
                .unwrap()
                .read_to_end(&mut plain),
        }
        .unwrap();
        plain
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn round_trip_through_compression_and_encryption() {
        for codec in codecs() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.enc");
            let progress = Arc::new(AtomicU64::new(0));
            let writer =
                BackupWriter::start(File::create(&path).unwrap(), key(), codec, progress.clone());
            let mut expected = Vec::new();
            // Several gzip blocks, the last one partial.
            for i in 0..3000u32 {
                let line = format!("{i}\tsome row text\twith tabs\n").repeat(50);
                expected.extend_from_slice(line.as_bytes());
                assert!(writer.write(Bytes::from(line)).await);
            }
            let written = writer.finish().await.unwrap();
            assert_eq!(written.plain_bytes, expected.len() as u64);
            assert_eq!(progress.load(Ordering::Relaxed), expected.len() as u64);
            assert_eq!(written.size, std::fs::metadata(&path).unwrap().len());
            let digest = hex::encode(openssl::sha::sha256(&std::fs::read(&path).unwrap()));
            assert_eq!(written.sha256, digest);

            let plain = Decryptor::new(File::open(&path).unwrap(), &key()).unwrap();
            assert!(
                standard_decode(codec.compression, plain) == expected,
                "{codec:?}"
            );

            let mut reader = BackupReader::start(
                "b".into(),
                File::open(&path).unwrap(),
                key(),
                Some(codec.compression),
                Arc::new(AtomicU64::new(0)),
            );
            let mut back = Vec::new();
            while let Some(block) = reader.blocks.recv().await {
                back.extend_from_slice(&block);
            }
            assert_eq!(reader.finish().await.unwrap(), expected.len() as u64);
            assert!(back == expected, "{codec:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_stream_is_a_valid_empty_payload() {
        for codec in codecs() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.enc");
            let writer = BackupWriter::start(
                File::create(&path).unwrap(),
                key(),
                codec,
                Arc::new(AtomicU64::new(0)),
            );
            assert_eq!(writer.finish().await.unwrap().plain_bytes, 0);
            let plain = Decryptor::new(File::open(&path).unwrap(), &key()).unwrap();
            assert!(standard_decode(codec.compression, plain).is_empty());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn damage_and_wrong_key_are_integrity_errors() {
        for codec in codecs() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.enc");
            let writer = BackupWriter::start(
                File::create(&path).unwrap(),
                key(),
                codec,
                Arc::new(AtomicU64::new(0)),
            );
            assert!(writer.write(Bytes::from(vec![7u8; 3 << 20])).await);
            writer.finish().await.unwrap();

            let wrong = Key::from_secret(b"another key").unwrap();
            let reader = BackupReader::start(
                "b".into(),
                File::open(&path).unwrap(),
                wrong,
                Some(codec.compression),
                Arc::new(AtomicU64::new(0)),
            );
            let err = reader.drain().await.unwrap_err();
            assert!(matches!(err, Error::Integrity(_)), "{err:?}");
            assert!(err.message().contains("key"), "{}", err.message());

            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            let reader = BackupReader::start(
                "b".into(),
                File::open(&path).unwrap(),
                key(),
                Some(codec.compression),
                Arc::new(AtomicU64::new(0)),
            );
            let err = reader.drain().await.unwrap_err();
            assert!(matches!(err, Error::Integrity(_)), "{err:?}");
        }
    }

    /// A payload that authenticates but does not decompress (written so by
    /// hand) is damage too, named with its compression.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_authentic_but_broken_payload_is_an_integrity_error() {
        for compression in Compression::ALL.iter().copied() {
            let mut compressor = Compressor::new(
                Codec {
                    compression,
                    level: 1,
                },
                Vec::new(),
            )
            .unwrap();
            compressor
                .write_all(&b"COPY t FROM stdin;\n".repeat(10_000))
                .unwrap();
            let mut payload = compressor.finish().unwrap();
            let middle = payload.len() / 2;
            payload[middle] ^= 0x55;
            payload.truncate(payload.len() - 3);

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.enc");
            let mut encryptor = Encryptor::new(File::create(&path).unwrap(), &key()).unwrap();
            encryptor.write_all(&payload).unwrap();
            encryptor.finish().unwrap();
            let reader = BackupReader::start(
                "b".into(),
                File::open(&path).unwrap(),
                key(),
                Some(compression),
                Arc::new(AtomicU64::new(0)),
            );
            let err = reader.drain().await.unwrap_err();
            assert!(matches!(err, Error::Integrity(_)), "{err:?}");
            assert!(
                err.message()
                    .contains(&format!("its {compression} payload is damaged")),
                "{}",
                err.message()
            );
        }
    }
}
