//! mesbakctl: the client people type and systemd timers call.

mod cli;
mod client;
mod docs;
mod handover;
mod offline;
mod output;
mod seed_env;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigCommand, OffsiteCommand};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => output::fail(err, json),
    }
}

/// clap's own output for help and version; a usage error as one sentence
/// (and JSON with --json), exit status 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|arg| arg == "--json") {
        let message = err
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned();
        let body = serde_json::json!({ "error": { "name": "Usage", "message": message } });
        let _ = outln!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    let _ = err.print();
    ExitCode::from(2)
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
        Command::Config(ConfigCommand::ImportEnv { path }) => seed_env::import_env(&path, cli.json),
        agent_command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(ask_agent(agent_command, cli.json));
            // A prompt's reader may still wait on the terminal: do not wait for it.
            runtime.shutdown_background();
            result
        }
    }
}

async fn ask_agent(command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::Backup { what } => client::backup(what.into(), json).await,
        Command::List {
            offsite: Some(target),
            ..
        } => client::list_offsite(&target, json).await,
        Command::List {
            ids,
            offsite: None,
            limit,
            all,
        } => client::list(json, ids, client::Shown::of(limit, all, json || ids)).await,
        Command::Status => client::status(json).await,
        Command::Jobs => client::jobs(json).await,
        Command::Wait { job } => client::wait(job.as_deref(), json).await,
        Command::Cancel { job } => client::cancel(job.as_deref(), json).await,
        Command::Verify { backup, from } => client::verify(&backup, from.as_deref(), json).await,
        Command::Restore(args) => client::restore(&args, json).await,
        Command::TestRestore {
            backup,
            to_time,
            from,
        } => match to_time {
            Some(time) => client::test_restore_to_time(&time, from.as_deref(), json).await,
            None => client::test_restore(backup.as_deref(), from.as_deref(), json).await,
        },
        Command::Pitr(command) => client::pitr(command, json).await,
        Command::Offsite {
            command: OffsiteCommand::Sync,
        } => client::offsite_sync(json).await,
        Command::Prune { dry_run, yes } => client::prune(dry_run, yes, json).await,
        Command::Import { paths, dry_run } => client::import(&paths, dry_run, json).await,
        other => anyhow::bail!("`{}` does not talk to the agent", command_name(&other)),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Backup { .. } => "backup",
        Command::List { .. } => "list",
        Command::Status => "status",
        Command::Jobs => "jobs",
        Command::Wait { .. } => "wait",
        Command::Cancel { .. } => "cancel",
        Command::Verify { .. } => "verify",
        Command::Restore(_) => "restore",
        Command::TestRestore { .. } => "test-restore",
        Command::Pitr(_) => "pitr",
        Command::Prune { .. } => "prune",
        Command::Offsite { .. } => "offsite",
        Command::Decrypt { .. } => "decrypt",
        Command::Keygen { .. } => "keygen",
        Command::GenerateDocs { .. } => "generate-docs",
        Command::Import { .. } => "import",
        Command::Config(_) => "config",
    }
}
