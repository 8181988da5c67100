//! A program's output through a FIFO in a folder the host shares with a
//! container the agent made (a bind mount), instead of the engine's exec
//! streams. On these 2 cores the engine (dockerd and containerd-shim)
//! spends about 1.5 CPU-seconds copying 250 MB of pg_dump output, and when
//! the program ends it drops whatever its reader has not taken within 2 s
//! (Docker 20.10's exec exit handling): through a FIFO the writer waits
//! for the reader instead, and nothing is copied but by the kernel.
//!
//! Used where the agent makes the container (the point-in-time restore's
//! scratch cluster) and the engine is proven to see this host's folders:
//! the folder holds a random token the container must show.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use mesbak_interface::Error;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::persist::{create_private_file, write_error};
use crate::process::{Outcome, Spawned, join};
use crate::storage::ensure_private_dir;

/// The file that proves a container sees the folder.
const PROOF: &str = "proof";
/// How much of the FIFO is handed on as one block, at most.
const BLOCK: usize = 64 * 1024;

/// A folder on the host and where a container sees it.
#[derive(Clone, Debug)]
pub struct SharedDir {
    host: PathBuf,
    inside: String,
}

impl SharedDir {
    pub fn new(host: PathBuf, inside: &str) -> SharedDir {
        SharedDir {
            host,
            inside: inside.to_owned(),
        }
    }

    /// The bind mount that shares it. A `Mounts` bind: the engine refuses
    /// a source it cannot see rather than create one.
    pub fn mount(&self) -> bollard::models::Mount {
        bollard::models::Mount {
            typ: Some(bollard::models::MountType::BIND),
            source: Some(self.host.display().to_string()),
            target: Some(self.inside.clone()),
            ..Default::default()
        }
    }

    /// Where a container sees the proof file.
    pub fn proof_inside(&self) -> String {
        format!("{}/{PROOF}", self.inside)
    }

    /// Creates the folder (0700, the agent's; its parent too) with a new
    /// random token in its proof file, and returns the token.
    pub fn create(&self) -> Result<String, Error> {
        if let Some(parent) = self.host.parent() {
            ensure_private_dir(parent, &mut Vec::new())?;
        }
        ensure_private_dir(&self.host, &mut Vec::new())?;
        let mut token = [0u8; 16];
        openssl::rand::rand_bytes(&mut token)
            .map_err(|err| Error::Failed(format!("no random numbers: {err}")))?;
        let token = hex::encode(token);
        let proof = self.host.join(PROOF);
        create_private_file(&proof)
            .and_then(|mut file| file.write_all(token.as_bytes()))
            .map_err(|err| write_error(&proof, err))?;
        Ok(token)
    }

    /// Removes the folder and what is in it.
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.host) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(folder = %self.host.display(), error = %err, "could not remove a shared folder");
            }
            _ => {}
        }
    }

    /// A new FIFO in the folder (0600), its reading end open: a program
    /// in the container writes into [`Fifo::inside`].
    pub fn fifo(&self, name: &str) -> Result<Fifo, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let host = self.host.join(&name);
        let failed = |err: &dyn std::fmt::Display| {
            Error::Failed(format!("cannot make the FIFO {}: {err}", host.display()))
        };
        nix::unistd::mkfifo(
            &host,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|err| failed(&err))?;
        // The umask may have narrowed the mode, never widened it.
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o600))
            .map_err(|err| failed(&err))?;
        // Opened without waiting for a writer: until one opens it, it is
        // not readable (and does not read as ended).
        let receiver = pipe::OpenOptions::new()
            .open_receiver(&host)
            .map_err(|err| failed(&err))?;
        Ok(Fifo {
            inside: format!("{}/{name}", self.inside),
            host,
            receiver,
        })
    }
}

/// A FIFO in a [`SharedDir`], open for reading.
pub struct Fifo {
    pub inside: String,
    host: PathBuf,
    receiver: pipe::Receiver,
}

impl Spawned {
    /// The program's output is what it writes into `fifo` (its stdout
    /// stays empty): read until the program closes it, or, when the
    /// program ended, until what it left there is read (one that ended
    /// before opening it left nothing). The FIFO is removed at the end.
    pub fn output_from(self, fifo: Fifo) -> Spawned {
        let Spawned { stdin, done, .. } = self;
        let exited = CancellationToken::new();
        let program = AbortOnDrop(done);
        let done = tokio::spawn({
            let exited = exited.clone();
            async move {
                // `kill` aborts this task: the program's own goes with it.
                let mut program = program;
                let outcome = join(&mut program.0).await;
                exited.cancel();
                outcome
            }
        });
        let (sender, stdout) = mpsc::channel::<Bytes>(16);
        tokio::spawn(pump(fifo, exited, sender));
        Spawned {
            stdout,
            stdin,
            done,
        }
    }
}

struct AbortOnDrop(JoinHandle<Result<Outcome, Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies the FIFO into `out` block by block; see [`Spawned::output_from`].
/// A consumer that stops reading closes the FIFO: the program's next write
/// fails and it ends.
async fn pump(fifo: Fifo, exited: CancellationToken, out: mpsc::Sender<Bytes>) {
    let Fifo {
        host, mut receiver, ..
    } = fifo;
    let mut ended = false;
    loop {
        let mut block = BytesMut::with_capacity(BLOCK);
        let read = if ended {
            // Without writers a FIFO reads to its end without waiting
            // (read directly: the runtime has seen no readiness for a FIFO
            // no writer ever opened).
            match read_now(&receiver, &mut block) {
                // A writer is still there (a child of the program).
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    receiver.read_buf(&mut block).await
                }
                read => read,
            }
        } else {
            tokio::select! {
                read = receiver.read_buf(&mut block) => read,
                () = exited.cancelled() => {
                    ended = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) => break,
            Ok(_) => {
                if out.send(block.freeze()).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                // The output ends short; its reader's checks refuse it.
                tracing::warn!(fifo = %host.display(), error = %err, "reading a program's output broke off");
                break;
            }
        }
    }
    drop(receiver);
    let _ = std::fs::remove_file(&host);
}

/// One read of the FIFO as it stands, without waiting.
fn read_now(fifo: &pipe::Receiver, block: &mut BytesMut) -> io::Result<usize> {
    block.resize(BLOCK, 0);
    let read = nix::unistd::read(fifo.as_raw_fd(), &mut block[..]).map_err(io::Error::from);
    block.truncate(*read.as_ref().unwrap_or(&0));
    read
}

/// Removes every shared folder under `parent` (at start: none is in use).
pub fn remove_all_under(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        SharedDir::new(entry.path(), "").remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Runner;

    fn shared() -> (tempfile::TempDir, SharedDir) {
        let root = tempfile::tempdir().unwrap();
        let dir = SharedDir::new(root.path().join("shared").join("one"), "/unused");
        dir.create().unwrap();
        (root, dir)
    }

    /// A host program stands in for one in a container: it writes into the
    /// FIFO's host path.
    async fn run(dir: &SharedDir, script: &str) -> (Vec<u8>, Outcome, PathBuf) {
        let fifo = dir.fifo("test").unwrap();
        let host = fifo.host.clone();
        let argv = ["sh", "-c", script, "sh", host.to_str().unwrap()].map(str::to_owned);
        let spawned = Runner::Host.spawn(&argv, &[], false).await.unwrap();
        let (out, outcome) = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            spawned.output_from(fifo).collect(),
        )
        .await
        .expect("the output ends")
        .unwrap();
        (out, outcome, host)
    }

    #[tokio::test]
    async fn what_the_program_writes_arrives_whole_and_the_fifo_goes() {
        let (_root, dir) = shared();
        // 3 MiB: many times the FIFO's buffer, the writer waits for the reader.
        let (out, outcome, host) = run(
            &dir,
            "head -c 3145728 /dev/zero | tr '\\0' x > \"$1\"; echo done >&2",
        )
        .await;
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(out.len(), 3 << 20);
        assert!(out.iter().all(|&b| b == b'x'));
        for _ in 0..100 {
            if !host.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!host.exists(), "the FIFO is removed");
        let proof = std::fs::metadata(dir.host.join(PROOF)).unwrap();
        assert_eq!(proof.permissions().mode() & 0o777, 0o600);
        dir.remove();
        assert!(!dir.host.exists());
    }

    #[tokio::test]
    async fn a_program_that_never_opens_the_fifo_ends_the_output_empty() {
        let (_root, dir) = shared();
        let (out, outcome, _) = run(&dir, "echo 'cannot connect' >&2; exit 1").await;
        assert!(out.is_empty());
        assert_eq!(outcome.exit_code, 1);
        assert!(outcome.stderr.contains("cannot connect"));
    }

    #[tokio::test]
    async fn a_program_that_ends_while_its_output_waits_in_the_fifo_loses_none_of_it() {
        let (_root, dir) = shared();
        // Less than the FIFO's buffer: written, closed and ended before
        // (possibly) the first read.
        let (out, outcome, _) = run(&dir, "printf 'the end\\n' > \"$1\"").await;
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(out, b"the end\n");
    }
}
