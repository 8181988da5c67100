//! Writing for people and for scripts without ever panicking: a closed pipe
//! (`mesbakctl list | head -1`) ends the program quietly with the status a
//! shell expects of it (141: killed by SIGPIPE); every error is one sentence,
//! and with `--json` also a JSON object on stdout:
//! `{"error": {"name": "NotFound", "message": "..."}}`.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use mesbak_interface::Error;

/// Exit status after a closed output pipe, as for a program SIGPIPE killed.
pub const BROKEN_PIPE_STATUS: u8 = 128 + 13;
/// Exit status when the user interrupted (Ctrl-C) and left a job running.
pub const INTERRUPTED_STATUS: u8 = 128 + 2;

/// Prints a line on stdout; a closed pipe becomes an error `main` ends on
/// quietly.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line on stderr, never panicking.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

pub fn write_out(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(anyhow::Error::from)
}

pub fn write_err(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// An error with its name, as `--json` reports it: the agent's error names
/// (`Busy`, `NotFound`, ...) and the client's own (`AgentNotRunning`,
/// `AccessDenied`, `BusUnavailable`, `Usage`, `Refused`).
#[derive(Debug)]
pub struct Named {
    pub name: String,
    pub message: String,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Named {}

/// A named error for `anyhow`.
pub fn named(name: &str, message: impl Into<String>) -> anyhow::Error {
    Named {
        name: name.to_owned(),
        message: message.into(),
    }
    .into()
}

/// An error from the agent, keeping its name.
pub fn agent_error(err: &Error) -> anyhow::Error {
    named(err.kind(), err.message())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Reports `err` (on stderr, and as JSON on stdout with `--json`) and gives
/// the exit status.
pub fn fail(err: anyhow::Error, json: bool) -> ExitCode {
    if is_broken_pipe(&err) {
        return ExitCode::from(BROKEN_PIPE_STATUS);
    }
    if let Some(said) = err.downcast_ref::<Said>() {
        // With --json a report on stdout already said it.
        if !(json && said.status == 1) {
            errln!("mesbakctl: {}", said.text);
        }
        return ExitCode::from(said.status);
    }
    let (name, message) = match err.chain().find_map(|c| c.downcast_ref::<Named>()) {
        Some(named) if err.chain().count() == 1 => (named.name.clone(), named.message.clone()),
        Some(named) => (named.name.clone(), format!("{err:#}")),
        None => ("Failed".to_owned(), format!("{err:#}")),
    };
    if json {
        let body = serde_json::json!({ "error": { "name": name, "message": message } });
        let _ = outln!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    errln!("mesbakctl: {message}");
    ExitCode::FAILURE
}

/// A failure whose output already said what happened: the exit status and
/// one line for stderr, no error object. `status` 1: a report (`status` of
/// an agent that is not healthy); 130: Ctrl-C left a job running.
#[derive(Debug)]
pub struct Said {
    pub status: u8,
    pub text: String,
}

impl Said {
    pub fn reported(text: String) -> Said {
        Said { status: 1, text }
    }

    pub fn interrupted(text: String) -> Said {
        Said {
            status: INTERRUPTED_STATUS,
            text,
        }
    }
}

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Said {}
