//! The commands that ask the agent over D-Bus, and how their jobs are
//! followed: a progress bar on a terminal, plain lines otherwise, JSON with
//! `--json`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mesbak_interface::{
    AgentProxy, BackupInfo, BackupKind, BackupTarget, Error, Health, JobProxy, PruneDecision,
    RestoreOptions, StatusReport, time_from_wire,
};
use serde::Serialize;
use zbus::Connection;
use zbus::zvariant::OwnedObjectPath;

use crate::cli::{PitrCommand, RestoreArgs};

/// Turns bus-level failures into what to do about them.
pub fn explain(err: Error) -> anyhow::Error {
    if let Error::ZBus(zbus::Error::MethodError(name, detail, _)) = &err {
        let detail = detail.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => anyhow!(
                "the mesbak agent is not running; start it with `systemctl start mesbak-agent` and check `journalctl -u mesbak-agent`"
            ),
            "org.freedesktop.DBus.Error.AccessDenied" => anyhow!(
                "you are not allowed to talk to the mesbak agent; run as root or join the group `mesbak` (`usermod -aG mesbak $USER`, then log in again)"
            ),
            _ => anyhow!("{name}: {detail}"),
        };
    }
    match err {
        Error::ZBus(err) => anyhow!("talking to the mesbak agent failed: {err}"),
        other => anyhow!("{}", other.message()),
    }
}

pub async fn connect() -> Result<(Connection, AgentProxy<'static>)> {
    let conn = zbus::connection::Builder::system()
        .map_err(|err| anyhow!("cannot reach the D-Bus system bus ({err}); is dbus running?"))?
        .build()
        .await
        .map_err(|err| match err {
            zbus::Error::InputOutput(_) | zbus::Error::Address(_) => anyhow!(
                "cannot reach the D-Bus system bus ({err}); is dbus running? (DBUS_SYSTEM_BUS_ADDRESS overrides its address)"
            ),
            other => explain(Error::ZBus(other)),
        })?;
    let agent = AgentProxy::new(&conn)
        .await
        .map_err(|err| explain(Error::ZBus(err)))?;
    Ok((conn, agent))
}

/// The end of a job as `--json` prints it.
#[derive(Debug, Serialize)]
struct JobReport {
    success: bool,
    operation: String,
    target: String,
    message: String,
    error: Option<String>,
    files: Vec<String>,
    warnings: Vec<String>,
    started_at: String,
    finished_at: String,
}

/// Follows a job to its end. Returns Ok when it succeeded.
pub async fn follow(conn: &Connection, path: OwnedObjectPath, json: bool) -> Result<()> {
    let job = JobProxy::builder(conn)
        .path(path)?
        .build()
        .await
        .map_err(|err| explain(Error::ZBus(err)))?;
    // Subscribe before reading the state: the job may end in between.
    let mut finished = job.receive_finished().await?;
    let operation = job.operation().await?;
    let tty = std::io::stderr().is_terminal() && !json;
    let bar = tty.then(|| {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut announced = String::new();
    let mut announced_all: Vec<String> = Vec::new();
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    if operation == "backup" && !json {
        line(&bar, "Backup started...");
    }
    loop {
        if job.state().await? != "running" {
            break;
        }
        tokio::select! {
            _ = finished.next() => break,
            _ = poll.tick() => {
                let stage = job.stage().await.unwrap_or_default();
                if stage != announced && !json {
                    if stage.starts_with("Creating backup: ") || bar.is_none() && !stage.is_empty() && stage != "starting" {
                        line(&bar, &stage);
                        announced_all.push(stage.clone());
                    }
                    announced = stage.clone();
                }
                if let Some(bar) = &bar {
                    update_bar(bar, &job, &stage).await;
                }
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let files = job.files().await?;
    if !json && operation == "backup" {
        // A fast job can end between two polls: name every file it made.
        for file in &files {
            let stage = format!("Creating backup: {file}");
            if bar.is_none() && !announced_all.contains(&stage) {
                println!("{stage}");
            }
        }
    }
    let report = JobReport {
        success: job.state().await? == "succeeded",
        operation,
        target: job.target().await?,
        message: job.message().await?,
        error: Some(job.error_name().await?).filter(|name| !name.is_empty()),
        files,
        warnings: job.warnings().await?,
        started_at: job.started_at().await?,
        finished_at: job.finished_at().await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
        if report.success {
            println!("{}", report.message);
        }
    }
    if report.success {
        Ok(())
    } else {
        Err(anyhow!("{}", report.message))
    }
}

fn line(bar: &Option<ProgressBar>, text: &str) {
    match bar {
        Some(bar) => bar.println(text),
        None => {
            println!("{text}");
            let _ = std::io::stdout().flush();
        }
    }
}

async fn update_bar(bar: &ProgressBar, job: &JobProxy<'_>, stage: &str) {
    let done = job.bytes_done().await.unwrap_or(0);
    let total = job.bytes_total().await.unwrap_or(0);
    let rate = job.rate().await.unwrap_or(0);
    if total > 0 {
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg}\n  [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
        }
        bar.set_position(done);
    } else {
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    }
    let rate_text = if rate > 0 {
        format!(" ({}/s)", indicatif::BinaryBytes(rate))
    } else {
        String::new()
    };
    if total == 0 && done > 0 {
        bar.set_message(format!(
            "{stage}: {}{rate_text}",
            indicatif::BinaryBytes(done)
        ));
    } else {
        bar.set_message(stage.to_owned());
    }
}

/// A backup argument: an id as `list` shows it, or a path to a file.
fn backup_argument(given: &str) -> Result<String> {
    if given.contains('/') || Path::new(given).exists() && !given.ends_with(".enc") {
        // The agent opens the file (it may be readable by root only) and
        // refuses symlinks, so resolve them here when we can.
        let path = std::fs::canonicalize(given)
            .or_else(|_| std::path::absolute(given))
            .map_err(|err| anyhow!("cannot use the path {given}: {err}"))?;
        return Ok(path.display().to_string());
    }
    Ok(given.to_owned())
}

pub async fn backup(target: BackupTarget, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = agent.backup(target.as_str()).await.map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn list(json: bool) -> Result<()> {
    let (_conn, agent) = connect().await?;
    let backups = agent.list_backups().await.map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&backups)?);
        return Ok(());
    }
    print_backups(&backups);
    Ok(())
}

fn print_backups(backups: &[BackupInfo]) {
    if backups.is_empty() {
        println!("No backups yet.");
        return;
    }
    let width = backups.iter().map(|b| b.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<width$}  {:<8}  {:<20}  {:>10}",
        "ID", "KIND", "CREATED", "SIZE"
    );
    for backup in backups {
        println!(
            "{:<width$}  {:<8}  {:<20}  {:>10}",
            backup.id,
            backup.kind.as_str(),
            backup.created,
            indicatif::BinaryBytes(backup.size_bytes).to_string()
        );
        for warning in &backup.warnings {
            println!("{:<width$}  ! {warning}", "");
        }
    }
}

pub async fn status(json: bool) -> Result<()> {
    let (_conn, agent) = connect().await?;
    let health: Health = agent
        .health()
        .await
        .map_err(|err| explain(Error::ZBus(err)))?
        .parse()
        .map_err(|err| anyhow!("the agent reported an unknown health: {err}"))?;
    let result = agent.last_test_restore_result().await?;
    let report = StatusReport {
        status: health,
        last_backup: time_from_wire(agent.last_backup().await?),
        last_database_backup: time_from_wire(agent.last_database_backup().await?),
        last_ignition_backup: time_from_wire(agent.last_ignition_backup().await?),
        last_test_restore: time_from_wire(agent.last_test_restore().await?),
        last_test_restore_ok: (!result.is_empty()).then(|| result == "passed"),
        problems: agent.problems().await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let never = || "never".to_owned();
        println!("Status:               {}", report.status);
        println!(
            "Last backup:          {}",
            report.last_backup.clone().unwrap_or_else(never)
        );
        println!(
            "Last database backup: {}",
            report.last_database_backup.clone().unwrap_or_else(never)
        );
        println!(
            "Last Ignition backup: {}",
            report.last_ignition_backup.clone().unwrap_or_else(never)
        );
        println!(
            "Last test restore:    {}",
            match (&report.last_test_restore, report.last_test_restore_ok) {
                (Some(time), Some(true)) => format!("{time} (passed)"),
                (Some(time), _) => format!("{time} (FAILED)"),
                (None, _) => never(),
            }
        );
        for problem in &report.problems {
            println!("  - {problem}");
        }
    }
    if report.status == Health::Healthy {
        Ok(())
    } else {
        bail!("mesbak is {}", report.status)
    }
}

pub async fn verify(backup: &str, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = agent
        .verify(&backup_argument(backup)?)
        .await
        .map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn test_restore(backup: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let given = backup.map(backup_argument).transpose()?.unwrap_or_default();
    let path = agent.test_restore(&given).await.map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn prune(dry_run: bool, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    if dry_run {
        let plan = agent.plan_prune().await.map_err(explain)?;
        if json {
            let rows: Vec<PlannedJson> = plan.iter().map(PlannedJson::from).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_plan(&plan);
        }
        return Ok(());
    }
    let path = agent.prune().await.map_err(explain)?;
    follow(&conn, path, json).await
}

/// One row of `prune --dry-run --json`.
#[derive(Debug, Serialize)]
struct PlannedJson<'a> {
    id: &'a str,
    kind: &'a str,
    created: &'a str,
    size_bytes: u64,
    /// `keep` or `delete`.
    action: &'static str,
    reasons: &'a [String],
}

impl<'a> From<&'a PruneDecision> for PlannedJson<'a> {
    fn from(decision: &'a PruneDecision) -> Self {
        PlannedJson {
            id: &decision.id,
            kind: decision.kind.as_str(),
            created: &decision.created,
            size_bytes: decision.size_bytes,
            action: if decision.keep { "keep" } else { "delete" },
            reasons: &decision.reasons,
        }
    }
}

/// Each backup with what `prune` would do to it and why.
fn print_plan(plan: &[PruneDecision]) {
    if plan.is_empty() {
        println!("No backups yet.");
        return;
    }
    let width = plan.iter().map(|d| d.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<6}  {:<width$}  {:<20}  {:>10}",
        "ACTION", "ID", "CREATED", "SIZE"
    );
    for decision in plan {
        println!(
            "{:<6}  {:<width$}  {:<20}  {:>10}",
            if decision.keep { "keep" } else { "DELETE" },
            decision.id,
            decision.created,
            indicatif::BinaryBytes(decision.size_bytes).to_string()
        );
        for reason in &decision.reasons {
            println!("{:<6}  {:<width$}  - {reason}", "", "");
        }
    }
    let deleted: Vec<&PruneDecision> = plan.iter().filter(|d| !d.keep).collect();
    let freed: u64 = deleted.iter().map(|d| d.size_bytes).sum();
    match deleted.len() {
        0 => println!("Nothing to prune: every backup is kept."),
        n => println!(
            "`mesbakctl prune` would delete {n} of {} backup(s), freeing {}.",
            plan.len(),
            indicatif::BinaryBytes(freed)
        ),
    }
}

pub async fn restore(args: &RestoreArgs, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = if args.rollback {
        agent.rollback_restore().await.map_err(explain)?
    } else if args.drop_previous {
        agent.drop_previous().await.map_err(explain)?
    } else if let Some(time) = &args.to_time {
        let time = target_time(time)?;
        if !args.yes {
            confirm_to_time(&agent, &time, args.skip_safety_backup).await?;
        }
        let options = RestoreOptions {
            skip_safety_backup: args.skip_safety_backup.then_some(true),
        };
        agent
            .restore_to_time(&time, options)
            .await
            .map_err(explain)?
    } else {
        let given = args
            .backup
            .as_deref()
            .ok_or_else(|| anyhow!("name the backup to restore (see `mesbakctl list`)"))?;
        let argument = backup_argument(given)?;
        if !args.yes {
            confirm(&agent, &argument, args.skip_safety_backup).await?;
        }
        let options = RestoreOptions {
            skip_safety_backup: args.skip_safety_backup.then_some(true),
        };
        agent.restore(&argument, options).await.map_err(explain)?
    };
    follow(&conn, path, json).await
}

/// Asks on a terminal; refuses without one (use --yes in scripts).
async fn confirm(agent: &AgentProxy<'_>, argument: &str, skip_safety: bool) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("restore replaces live data; confirm with --yes when running without a terminal");
    }
    let id = argument.rsplit('/').next().unwrap_or(argument);
    let info = agent
        .list_backups()
        .await
        .map_err(explain)?
        .into_iter()
        .find(|b| b.id == id);
    let kind = info
        .as_ref()
        .map(|b| b.kind)
        .unwrap_or(if id.ends_with(".tar.gz.enc") {
            BackupKind::Ignition
        } else {
            BackupKind::Database
        });
    let made = info
        .as_ref()
        .map(|b| format!(" (made {})", b.created))
        .unwrap_or_default();
    eprintln!("This restores {id}{made}.");
    match kind {
        BackupKind::Database => {
            eprintln!("  Replaced: the live database, after the restored copy has been checked.");
            eprintln!(
                "  Kept:     the current database, renamed, until `mesbakctl restore --drop-previous`;"
            );
            eprintln!("            `mesbakctl restore --rollback` puts it back.");
            eprintln!(
                "  Stopped during the restore: the configured writer containers (restarted after)."
            );
        }
        BackupKind::Ignition => {
            eprintln!("  Replaced: every file of the Ignition volume.");
            eprintln!("  The gateway is stopped during the restore and started again after.");
        }
    }
    if skip_safety {
        eprintln!("  No safety backup of the current data will be taken (--skip-safety-backup).");
    } else {
        eprintln!("  A safety backup of the current data is taken first.");
    }
    eprint!("Restore now? Type 'yes' to continue: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("restore cancelled; nothing was changed");
    }
    Ok(())
}

/// A point-in-time target as the agent takes it (RFC 3339): local times are
/// the operator's (this terminal's) time zone.
fn target_time(given: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(given, &Rfc3339).is_ok() {
        return Ok(given.to_owned());
    }
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(given, format).map_err(|_| {
        anyhow!(
            "'{given}' is not a time; write \"2026-11-24 10:41:00\" (local time) or RFC 3339 (2026-11-24T10:41:00+01:00)"
        )
    })?;
    let offset =
        time::UtcOffset::local_offset_at(local.assume_utc()).unwrap_or(time::UtcOffset::UTC);
    Ok(local.assume_offset(offset).format(&Rfc3339)?)
}

pub async fn test_restore_to_time(time: &str, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = agent
        .test_restore_to_time(&target_time(time)?)
        .await
        .map_err(explain)?;
    follow(&conn, path, json).await
}

/// Asks before a point-in-time restore, naming the window it comes from.
async fn confirm_to_time(agent: &AgentProxy<'_>, time: &str, skip_safety: bool) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("restore replaces live data; confirm with --yes when running without a terminal");
    }
    let status = agent.pitr_status().await.map_err(explain)?;
    eprintln!("This restores the database as it was at {time}.");
    if !status.window_from.is_empty() {
        eprintln!(
            "  Restorable window: {} to {}.",
            status.window_from, status.window_to
        );
    }
    eprintln!("  Recovered first in a scratch container (nothing live is touched), then:");
    eprintln!("  Replaced: the live database, after the recovered copy has been checked.");
    eprintln!(
        "  Kept:     the current database, renamed, until `mesbakctl restore --drop-previous`."
    );
    if skip_safety {
        eprintln!("  No safety backup of the current data will be taken (--skip-safety-backup).");
    } else {
        eprintln!("  A safety backup of the current data is taken first.");
    }
    ask("Restore now?", "restore cancelled; nothing was changed")
}

/// Reads 'yes' on the terminal, or fails with `refused`.
fn ask(question: &str, refused: &str) -> Result<()> {
    eprint!("{question} Type 'yes' to continue: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("{refused}");
    }
    Ok(())
}

pub async fn pitr(command: PitrCommand, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = match command {
        PitrCommand::Status => return pitr_status(&agent, json).await,
        PitrCommand::Enable { yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "`pitr enable` changes the database server's configuration and restarts it; confirm with --yes when running without a terminal"
                    );
                }
                let changes = agent.plan_pitr_enable().await.map_err(explain)?;
                eprintln!("This turns point-in-time recovery on. On the database server:");
                for change in &changes {
                    eprintln!("  - {change}");
                }
                ask("Go ahead?", "nothing was changed")?;
            }
            agent.pitr_enable().await.map_err(explain)?
        }
        PitrCommand::Disable { yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "`pitr disable` changes the database server's configuration and restarts it; confirm with --yes when running without a terminal"
                    );
                }
                eprintln!(
                    "This turns point-in-time recovery off: the server stops archiving its WAL"
                );
                eprintln!(
                    "(its container is restarted once); what was shipped stays until retention removes it."
                );
                ask("Go ahead?", "nothing was changed")?;
            }
            agent.pitr_disable().await.map_err(explain)?
        }
        PitrCommand::Sync => agent.pitr_sync().await.map_err(explain)?,
        PitrCommand::BaseBackup => agent.pitr_base_backup().await.map_err(explain)?,
    };
    follow(&conn, path, json).await
}

async fn pitr_status(agent: &AgentProxy<'_>, json: bool) -> Result<()> {
    let status = agent.pitr_status().await.map_err(explain)?;
    let time = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    if json {
        let report = serde_json::json!({
            "enabled": status.enabled,
            "enabled_at": time(&status.enabled_at),
            "archive_directory": time(&status.archive_directory),
            "base_backups": status.base_backups,
            "newest_wal": time(&status.newest_wal),
            "newest_wal_time": time(&status.newest_wal_time),
            "window": {
                "from": time(&status.window_from),
                "to": time(&status.window_to),
            },
            "gaps": status.gaps,
            "waiting": status.waiting,
            "wal_files": status.wal_files,
            "bytes": status.bytes,
            "last_shipped_at": time(&status.last_shipped_at),
            "last_error": time(&status.last_error),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let or_never = |text: &str| {
            if text.is_empty() {
                "never".to_owned()
            } else {
                text.to_owned()
            }
        };
        println!(
            "Point-in-time recovery: {}",
            if status.enabled {
                format!(
                    "on since {} (archive {})",
                    status.enabled_at, status.archive_directory
                )
            } else {
                "off".to_owned()
            }
        );
        println!(
            "Restorable window:      {}",
            if status.window_from.is_empty() {
                "none yet".to_owned()
            } else {
                format!("{} to {}", status.window_from, status.window_to)
            }
        );
        println!(
            "WAL shipped up to:      {} ({})",
            or_never(&status.newest_wal),
            or_never(&status.newest_wal_time)
        );
        println!(
            "Shipped:                {} WAL files, {} in all; {} waiting on the server",
            status.wal_files,
            indicatif::BinaryBytes(status.bytes),
            status.waiting
        );
        println!("Base backups:           {}", status.base_backups.len());
        for base in &status.base_backups {
            println!(
                "  {}  finished {}  from {}  {}",
                base.id,
                base.finished,
                base.start_wal,
                indicatif::BinaryBytes(base.size_bytes)
            );
        }
        for gap in &status.gaps {
            println!("  ! missing WAL segment {gap}");
        }
        if !status.last_error.is_empty() {
            println!("  ! last shipping failed: {}", status.last_error);
        }
    }
    Ok(())
}
