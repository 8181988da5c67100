//! mesbakctl: the client people type and systemd timers call.

mod cli;
mod client;
mod docs;
mod offline;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, OffsiteCommand};

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
        agent_command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(ask_agent(agent_command, cli.json))
        }
    }
}

async fn ask_agent(command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::Backup { what } => client::backup(what.into(), json).await,
        Command::List { offsite: None } => client::list(json).await,
        Command::List {
            offsite: Some(target),
        } => client::list_offsite(&target, json).await,
        Command::Status => client::status(json).await,
        Command::Verify { backup, from } => client::verify(&backup, from.as_deref(), json).await,
        Command::Restore(args) => client::restore(&args, json).await,
        Command::TestRestore {
            backup,
            to_time,
            from,
        } => match to_time {
            Some(time) => client::test_restore_to_time(&time, json).await,
            None => client::test_restore(backup.as_deref(), from.as_deref(), json).await,
        },
        Command::Pitr(command) => client::pitr(command, json).await,
        Command::Offsite {
            command: OffsiteCommand::Sync,
        } => client::offsite_sync(json).await,
        Command::Prune { dry_run } => client::prune(dry_run, json).await,
        other => anyhow::bail!("`{}` does not talk to the agent", command_name(&other)),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Backup { .. } => "backup",
        Command::List { .. } => "list",
        Command::Status => "status",
        Command::Verify { .. } => "verify",
        Command::Restore(_) => "restore",
        Command::TestRestore { .. } => "test-restore",
        Command::Pitr(_) => "pitr",
        Command::Prune { .. } => "prune",
        Command::Offsite { .. } => "offsite",
        Command::Decrypt { .. } => "decrypt",
        Command::Keygen { .. } => "keygen",
        Command::GenerateDocs { .. } => "generate-docs",
    }
}
