//! Between Docker and the compressor: the relay, and the encrypted,
//! unlinked spool where blocks wait when compression falls behind.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use bytes::Bytes;
use mesbak_interface::Error;
use tokio::sync::mpsc;

use super::BLOCK;

/// Carries the tar stream to the compressor without holding the copy back:
/// when compression falls behind, blocks wait in a [`Spool`], so the
/// gateways restart when Docker has sent the last byte rather than when the
/// compressor has taken it. The spool grows to `limit` bytes at most; beyond
/// that (or without a spool) the copy waits for the compressor.
pub(super) struct Relay {
    input: mpsc::Sender<Bytes>,
    worker: tokio::task::JoinHandle<Result<u64, Error>>,
}

impl Relay {
    pub(super) fn start(spool: Option<Spool>, limit: u64, output: mpsc::Sender<Bytes>) -> Relay {
        let (input, receiver) = mpsc::channel(4);
        let worker = tokio::spawn(relay(receiver, output, spool, limit));
        Relay { input, worker }
    }

    /// Hands a block on; false when the relay stopped (see `finish`).
    pub(super) async fn send(&self, block: Bytes) -> bool {
        self.input.send(block).await.is_ok()
    }

    /// Waits until every block is handed to the compressor; returns how
    /// many bytes went through the spool.
    pub(super) async fn finish(self) -> Result<u64, Error> {
        drop(self.input);
        self.worker
            .await
            .map_err(|err| Error::Failed(format!("internal error in the copy relay: {err}")))?
    }

    pub(super) fn abort(self) {
        self.worker.abort();
    }
}

async fn relay(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    mut spool: Option<Spool>,
    limit: u64,
) -> Result<u64, Error> {
    let compressor_gone =
        || Error::Failed("the compressor stopped taking the volume's data".into());
    let spool_error = |err: io::Error| {
        Error::Failed(format!(
            "cannot read back the spooled copy of the volume: {err}"
        ))
    };
    let mut spooled_total = 0u64;
    // A block that must wait until the spool is empty (spool full or broken).
    let mut held: Option<Bytes> = None;
    let mut broken = false;
    let mut input_open = true;
    loop {
        let waiting = spool.as_ref().map_or(0, Spool::len);
        if waiting == 0 {
            if let Some(block) = held.take() {
                output.send(block).await.map_err(|_| compressor_gone())?;
                continue;
            }
            if !input_open {
                return Ok(spooled_total);
            }
        }
        let room = !broken && waiting < limit && spool.is_some();
        let take = input_open && held.is_none() && (waiting == 0 || room);
        tokio::select! {
            // While Docker still sends, the spool is drained only when it is
            // full: the compressor's threads then leave the CPU to the copy.
            permit = output.reserve(), if waiting > 0 && (!input_open || !room) => {
                let permit = permit.map_err(|_| compressor_gone())?;
                if let Some(spool) = spool.as_mut() {
                    permit.send(spool.pop(BLOCK).await.map_err(spool_error)?);
                }
            }
            next = input.recv(), if take => {
                let Some(block) = next else {
                    input_open = false;
                    continue;
                };
                let block = if waiting == 0 {
                    match output.try_send(block) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(block)) => block,
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(compressor_gone()),
                    }
                } else {
                    block
                };
                match spool.as_mut() {
                    Some(spool) if room => match spool.push(&block).await {
                        Ok(()) => spooled_total += block.len() as u64,
                        Err(err) => {
                            tracing::warn!(error = %err, "the spool of the volume copy failed; the gateway waits for compression");
                            broken = true;
                            held = Some(block);
                        }
                    },
                    _ => held = Some(block),
                }
            }
            else => {
                return Err(Error::Failed("internal error: the copy relay stalled".into()));
            }
        }
    }
}

/// A first-in first-out byte queue in a file of the backup folder, unlinked
/// as soon as it is open (nothing is left after a crash) and encrypted with
/// a key that only lives in memory: the volume's plain files never rest on
/// the backup disk.
pub(super) struct Spool {
    file: Arc<std::fs::File>,
    key: [u8; 32],
    seal: openssl::symm::Crypter,
    open: openssl::symm::Crypter,
    write_at: u64,
    read_at: u64,
}

impl Spool {
    pub(super) fn create(dir: &std::path::Path) -> io::Result<Spool> {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).map_err(io::Error::other)?;
        let mut name = [0u8; 6];
        openssl::rand::rand_bytes(&mut name).map_err(io::Error::other)?;
        let path = dir.join(format!(".spool-{}.partial", hex::encode(name)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let _ = std::fs::remove_file(&path);
        let (seal, open) = Spool::crypters(&key)?;
        Ok(Spool {
            file: Arc::new(file?),
            key,
            seal,
            open,
            write_at: 0,
            read_at: 0,
        })
    }

    /// A fresh AES-256-CTR stream for writing and its twin for reading.
    fn crypters(key: &[u8; 32]) -> io::Result<(openssl::symm::Crypter, openssl::symm::Crypter)> {
        use openssl::symm::{Cipher, Crypter, Mode};
        let mut iv = [0u8; 16];
        openssl::rand::rand_bytes(&mut iv).map_err(io::Error::other)?;
        let seal = Crypter::new(Cipher::aes_256_ctr(), Mode::Encrypt, key, Some(&iv))
            .map_err(io::Error::other)?;
        let open = Crypter::new(Cipher::aes_256_ctr(), Mode::Decrypt, key, Some(&iv))
            .map_err(io::Error::other)?;
        Ok((seal, open))
    }

    /// Bytes waiting.
    fn len(&self) -> u64 {
        self.write_at - self.read_at
    }

    async fn push(&mut self, block: &[u8]) -> io::Result<()> {
        let mut sealed = vec![0u8; block.len() + 16];
        let n = self
            .seal
            .update(block, &mut sealed)
            .map_err(io::Error::other)?;
        sealed.truncate(n);
        let file = self.file.clone();
        let at = self.write_at;
        tokio::task::spawn_blocking(move || {
            std::os::unix::fs::FileExt::write_all_at(&*file, &sealed, at)
        })
        .await
        .map_err(io::Error::other)??;
        self.write_at += n as u64;
        Ok(())
    }

    /// Takes up to `max` of the oldest bytes; an emptied spool starts over.
    async fn pop(&mut self, max: usize) -> io::Result<Bytes> {
        let n = (max as u64).min(self.len()) as usize;
        let file = self.file.clone();
        let at = self.read_at;
        let sealed = tokio::task::spawn_blocking(move || {
            let mut sealed = vec![0u8; n];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut sealed, at).map(|()| sealed)
        })
        .await
        .map_err(io::Error::other)??;
        let mut plain = vec![0u8; n + 16];
        let got = self
            .open
            .update(&sealed, &mut plain)
            .map_err(io::Error::other)?;
        plain.truncate(got);
        self.read_at += n as u64;
        if self.len() == 0 {
            self.file.set_len(0)?;
            self.write_at = 0;
            self.read_at = 0;
            (self.seal, self.open) = Spool::crypters(&self.key)?;
        }
        Ok(Bytes::from(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `blocks` through a relay to a consumer that sleeps `pause`
    /// per block; returns what came out and the bytes spooled.
    async fn relayed(blocks: &[Bytes], limit: u64, pause: u64) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (to_consumer, mut from_relay) = mpsc::channel::<Bytes>(2);
        let consumer = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(block) = from_relay.recv().await {
                out.extend_from_slice(&block);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            out
        });
        let relay = Relay::start(Some(Spool::create(dir.path()).unwrap()), limit, to_consumer);
        for block in blocks {
            assert!(relay.send(block.clone()).await);
        }
        let spooled = relay.finish().await.unwrap();
        // The spool file was unlinked at once.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        (consumer.await.unwrap(), spooled)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_relay_keeps_order_through_the_spool() {
        let blocks: Vec<Bytes> = (0..200u32)
            .map(|i| {
                let size = 1 + (i as usize * 7919) % 70_000;
                Bytes::from(
                    (0..size)
                        .map(|j| (i as usize * 31 + j) as u8)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let expected: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
        // A slow consumer: most of it goes through the spool.
        let (out, spooled) = relayed(&blocks, u64::MAX, 1).await;
        assert!(out == expected, "the bytes differ");
        assert!(spooled > expected.len() as u64 / 2, "{spooled}");
        // A spool that fills up: the rest waits for the consumer.
        let (out, spooled) = relayed(&blocks, 300_000, 1).await;
        assert!(out == expected, "the bytes differ with a full spool");
        assert!(spooled > 0);
        // No spool room at all: plain back-pressure.
        let (out, spooled) = relayed(&blocks, 0, 0).await;
        assert!(out == expected);
        assert_eq!(spooled, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_spool_holds_no_plain_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        let plain = b"Motor 1 setpoint 42 ".repeat(1000);
        spool.push(&plain).await.unwrap();
        let mut on_disk = vec![0u8; plain.len()];
        std::os::unix::fs::FileExt::read_exact_at(&*spool.file, &mut on_disk, 0).unwrap();
        assert!(!on_disk.windows(8).any(|w| w == b"Motor 1 "));
        assert_eq!(spool.pop(usize::MAX).await.unwrap(), Bytes::from(plain));
        assert_eq!(spool.len(), 0);
    }
}
