//! Small helpers shared by the harness modules.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// `2 * bytes` random lowercase hex characters: unique names, passwords.
pub fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A TCP port on 127.0.0.1 that was free a moment ago, picked at random from
/// 20000-32767 (below Linux's ephemeral range, so outgoing connections of
/// other processes do not grab it in the meantime).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let raw = random_bytes(2);
        let port = 20000 + (u16::from_le_bytes([raw[0], raw[1]]) % 12768);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between 20000 and 32767 after 200 tries")
}

/// Runs blocking work from async code without starving the runtime: inside
/// a multi-threaded tokio runtime the worker hands its other tasks away
/// first (`block_in_place`); elsewhere it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A command line as a shell would show it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        let arg = arg.to_string_lossy();
        if arg.contains([' ', '\t', '\n', '"', '\'']) || arg.is_empty() {
            text.push_str(&format!("{arg:?}"));
        } else {
            text.push_str(&arg);
        }
    }
    text
}

/// Runs `cmd` with `stdin` fed to it, and returns its output; fails with the
/// command line, exit status and stderr when it does not exit 0.
/// A finished command's exit status, stdout and stderr, for a failed
/// assertion's message.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    let output = run_unchecked(cmd, stdin)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            if output.stderr.is_empty() {
                String::from_utf8_lossy(&output.stdout).into_owned()
            } else {
                String::new()
            }
        );
    }
    Ok(output)
}

/// Like [`run`], but any exit status is fine.
pub fn run_unchecked(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    blocking(|| {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
        // Feed stdin from a thread so a chatty child cannot deadlock us.
        let feeder = match (stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    use std::io::Write;
                    // A child that exits early closes the pipe: not our error.
                    let _ = pipe.write_all(&data);
                }))
            }
            _ => None,
        };
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", describe(cmd)))?;
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        Ok(output)
    })
}

/// Runs `cmd` and returns its stdout as text, trimmed of the final newline.
pub fn run_text(cmd: &mut Command) -> Result<String> {
    let output = run(cmd, None)?;
    let mut text = String::from_utf8(output.stdout).context("output is not UTF-8")?;
    while text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// The last `lines` lines of a text file, or a note why there are none.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
