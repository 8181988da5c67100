//! A running program, in a container (Docker exec) or on the host, seen the
//! same way: stdout as a stream of byte blocks, optional stdin, and an
//! outcome with the exit code and the tail of stderr.

use std::pin::Pin;
use std::process::Stdio;

use bytes::Bytes;
use mesbak_interface::Error;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::docker::Docker;

/// Where database tools run: inside the database container, or on the host.
#[derive(Clone)]
pub enum Runner {
    Container { docker: Docker, container: String },
    Host,
}

pub struct Spawned {
    /// Closed at end of output.
    pub stdout: mpsc::Receiver<Bytes>,
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub done: JoinHandle<Result<Outcome, Error>>,
}

#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i64,
    pub stderr: String,
}

impl Outcome {
    /// Ok when the program exited 0; else an error built by `fail` from
    /// the last lines of stderr.
    pub fn check(self, fail: impl FnOnce(String) -> Error) -> Result<String, Error> {
        if self.exit_code == 0 {
            Ok(self.stderr)
        } else {
            let detail = last_lines(&self.stderr, 3);
            let detail = if detail.is_empty() {
                format!("exit status {}", self.exit_code)
            } else {
                detail
            };
            Err(fail(detail))
        }
    }
}

impl Spawned {
    /// Stops the program: its output is cut (a program in a container gets
    /// SIGPIPE on its next write, a host program is killed).
    pub fn kill(&mut self) {
        self.done.abort();
        self.stdin = None;
    }

    /// Waits for the end, collecting all of stdout (for small outputs).
    pub async fn collect(mut self) -> Result<(Vec<u8>, Outcome), Error> {
        drop(self.stdin.take());
        let mut out = Vec::new();
        while let Some(block) = self.stdout.recv().await {
            out.extend_from_slice(&block);
        }
        let outcome = join(self.done).await?;
        Ok((out, outcome))
    }
}

/// Waits for a program's task (`JoinHandle` or `&mut JoinHandle`).
pub async fn join(
    done: impl std::future::Future<Output = Result<Result<Outcome, Error>, tokio::task::JoinError>>,
) -> Result<Outcome, Error> {
    done.await.map_err(|err| {
        Error::Failed(format!("internal error while waiting for a program: {err}"))
    })?
}

impl Runner {
    pub fn describe(&self) -> String {
        match self {
            Runner::Container { container, .. } => format!("container '{container}'"),
            Runner::Host => "the host".into(),
        }
    }

    pub async fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        with_stdin: bool,
    ) -> Result<Spawned, Error> {
        match self {
            Runner::Container { docker, container } => {
                docker.exec(container, argv, env, with_stdin).await
            }
            Runner::Host => spawn_host(argv, env, with_stdin),
        }
    }
}

/// What a host program inherits from the agent's environment.
const HOST_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_MESSAGES", "TZ"];

fn spawn_host(
    argv: &[String],
    env: &[(String, String)],
    with_stdin: bool,
) -> Result<Spawned, Error> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Failed("empty command".into()))?;
    // A minimal environment: the agent's own (BACKUP_ENCRYPTION_KEY,
    // POSTGRES_PASSWORD, ...) never reaches another program.
    let inherited = HOST_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|value| (*name, value)));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(inherited)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if with_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            Error::NotFound(format!(
                "cannot run {program} on the host ({err}); install the PostgreSQL client (postgresql-client) or set database.container"
            ))
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stdin = child
        .stdin
        .take()
        .map(|stdin| Box::pin(stdin) as Pin<Box<dyn AsyncWrite + Send>>);
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let program = program.clone();
    let done = tokio::spawn(async move {
        let stderr_task = tokio::spawn(async move {
            let mut tail = StderrTail::default();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push(&buf[..n]);
            }
            tail
        });
        let mut reader_gone = false;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = stdout.read(&mut buf).await.map_err(|err| {
                Error::Failed(format!("cannot read the output of {program}: {err}"))
            })?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if !reader_gone && tx.send(Bytes::from(buf)).await.is_err() {
                reader_gone = true;
            }
        }
        drop(tx);
        let status = child
            .wait()
            .await
            .map_err(|err| Error::Failed(format!("cannot wait for {program}: {err}")))?;
        let stderr = stderr_task.await.unwrap_or_default();
        Ok(Outcome {
            exit_code: status.code().map(i64::from).unwrap_or(-1),
            stderr: stderr.into_string(),
        })
    });
    Ok(Spawned {
        stdout: rx,
        stdin,
        done,
    })
}

/// The last 64 KiB of a program's stderr.
#[derive(Default)]
pub struct StderrTail {
    bytes: Vec<u8>,
}

impl StderrTail {
    const LIMIT: usize = 64 * 1024;

    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > Self::LIMIT {
            let cut = self.bytes.len() - Self::LIMIT;
            self.bytes.drain(..cut);
        }
    }

    pub fn into_string(self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The last `n` non-empty lines, joined with "; ".
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_end() {
        let mut tail = StderrTail::default();
        tail.push(&vec![b'a'; 100_000]);
        tail.push(b"the end");
        let text = tail.into_string();
        assert_eq!(text.len(), StderrTail::LIMIT);
        assert!(text.ends_with("the end"));
        assert_eq!(last_lines("a\n\nb\nc\nd\n", 2), "c; d");
    }

    #[tokio::test]
    async fn host_programs_stream_and_report_exit_codes() {
        let spawned = Runner::Host
            .spawn(
                &[
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 3".into(),
                ],
                &[],
                false,
            )
            .await
            .unwrap();
        let (out, outcome) = spawned.collect().await.unwrap();
        assert_eq!(out, b"out\n");
        assert_eq!(outcome.exit_code, 3);
        let err = outcome.check(Error::Database).unwrap_err();
        assert_eq!(err.message(), "err");
    }

    #[tokio::test]
    async fn host_programs_get_a_minimal_environment() {
        // cargo gives every test process CARGO_MANIFEST_DIR: it must not pass.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let spawned = Runner::Host
            .spawn(
                &["sh".into(), "-c".into(), "env".into()],
                &[("PGCONNECT_TIMEOUT".into(), "15".into())],
                false,
            )
            .await
            .unwrap();
        let (out, _) = spawned.collect().await.unwrap();
        let env = String::from_utf8(out).unwrap();
        assert!(!env.contains("CARGO_MANIFEST_DIR"), "{env}");
        assert!(env.contains("PGCONNECT_TIMEOUT=15"), "{env}");
        assert!(env.contains("PATH="), "{env}");
    }
}
