//! mesbakctl: the client people type and systemd timers call.

mod cli;
mod docs;
mod offline;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesbakctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Decrypt {
            file,
            key_file,
            output,
        } => offline::decrypt(&file, key_file.as_deref(), output.as_deref()),
        Command::Keygen { output } => offline::keygen(&output),
        Command::GenerateDocs { dir } => docs::generate(&dir),
        other => anyhow::bail!(
            "`{}` is not available yet in this version of mesbakctl",
            command_name(&other)
        ),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Backup { .. } => "backup",
        Command::List => "list",
        Command::Status => "status",
        Command::Verify { .. } => "verify",
        Command::Restore(_) => "restore",
        Command::TestRestore { .. } => "test-restore",
        Command::Prune { .. } => "prune",
        Command::Decrypt { .. } => "decrypt",
        Command::Keygen { .. } => "keygen",
        Command::GenerateDocs { .. } => "generate-docs",
    }
}
