//! The commands that ask the agent over D-Bus, and how their jobs are
//! followed: a progress bar on a terminal, plain lines otherwise, JSON with
//! `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mesbak_interface::{
    AgentProxy, BackupInfo, BackupTarget, Error, Health, JobProxy, KeptDatabase, OffsiteReport,
    PruneDecision, RestoreOptions, RunningJob, StatusReport, job_number, job_path, time_from_wire,
};
use serde::Serialize;
use zbus::Connection;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{Fd, OwnedObjectPath};

use crate::cli::{PitrCommand, RestoreArgs};
use crate::handover::{self, Given, backup_argument};
use crate::output::{Said, agent_error, named};
use crate::{errln, outln};

/// Turns bus-level failures into what to do about them, keeping the
/// agent's error names.
pub fn explain(err: Error) -> anyhow::Error {
    if let Error::ZBus(zbus::Error::MethodError(name, detail, _)) = &err {
        let detail = detail.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => named(
                "AgentNotRunning",
                "the mesbak agent is not running; start it with `systemctl start mesbak-agent` and check `journalctl -u mesbak-agent`",
            ),
            "org.freedesktop.DBus.Error.AccessDenied" => named(
                "AccessDenied",
                "you are not allowed to talk to the mesbak agent; run as root or join the group `mesbak` (`usermod -aG mesbak $USER`, then log in again)",
            ),
            "org.freedesktop.DBus.Error.UnknownObject"
            | "org.freedesktop.DBus.Error.UnknownMethod" => named(
                "NotFound",
                "that job no longer exists (finished jobs are kept for 10 minutes); `mesbakctl jobs` lists the ones there are",
            ),
            _ => named("Failed", format!("{name}: {detail}")),
        };
    }
    match err {
        Error::ZBus(err) => named(
            "Failed",
            format!("talking to the mesbak agent failed: {err}"),
        ),
        other => agent_error(&other),
    }
}

/// For properties, which fail as plain zbus errors.
fn bus(err: zbus::Error) -> anyhow::Error {
    explain(Error::ZBus(err))
}

pub async fn connect() -> Result<(Connection, AgentProxy<'static>)> {
    let unreachable = |err: &dyn std::fmt::Display| {
        named(
            "BusUnavailable",
            format!(
                "cannot reach the D-Bus system bus ({err}); is dbus running? (DBUS_SYSTEM_BUS_ADDRESS overrides its address)"
            ),
        )
    };
    let conn = zbus::connection::Builder::system()
        .map_err(|err| unreachable(&err))?
        .build()
        .await
        .map_err(|err| match err {
            zbus::Error::InputOutput(_) | zbus::Error::Address(_) => unreachable(&err),
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

async fn job_proxy(conn: &Connection, path: OwnedObjectPath) -> Result<JobProxy<'static>> {
    JobProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(bus)
}

/// Follows a job to its end. Returns Ok when it succeeded. Ctrl-C asks (on
/// a terminal) whether to cancel the job or leave it running, and says
/// which it did.
pub async fn follow(conn: &Connection, path: OwnedObjectPath, json: bool) -> Result<()> {
    let number = job_number(path.as_str()).unwrap_or(0);
    let job = job_proxy(conn, path).await?;
    // Subscribe before reading the state: the job may end in between.
    let mut finished = job.receive_finished().await.map_err(bus)?;
    let operation = job.operation().await.map_err(bus)?;
    let tty = std::io::stderr().is_terminal() && !json;
    let new_bar = || {
        // A terminal indicatif will not draw on (TERM=dumb) gets plain lines.
        tty.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .filter(|bar| !bar.is_hidden())
    };
    let mut bar = new_bar();
    let mut announced = String::new();
    let mut announced_all: Vec<String> = Vec::new();
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    if operation == "backup" && !json {
        line(&bar, "Backup started...")?;
    }
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    loop {
        if job.state().await.map_err(bus)? != "running" {
            break;
        }
        tokio::select! {
            _ = finished.next() => break,
            _ = &mut interrupt => {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
                interrupted(&job, number, &operation).await?;
                // Cancel was asked for: follow the job to its end.
                interrupt = Box::pin(tokio::signal::ctrl_c());
                bar = new_bar();
            }
            _ = poll.tick() => {
                let stage = job.stage().await.unwrap_or_default();
                if stage != announced && !json {
                    if stage.starts_with("Creating backup: ") || bar.is_none() && !stage.is_empty() && stage != "starting" {
                        line(&bar, &stage)?;
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
    let files = job.files().await.map_err(bus)?;
    if !json && operation == "backup" {
        // A fast job can end between two polls: name every file it made.
        for file in &files {
            let stage = format!("Creating backup: {file}");
            if bar.is_none() && !announced_all.contains(&stage) {
                outln!("{stage}")?;
            }
        }
    }
    let state = job.state().await.map_err(bus)?;
    let report = JobReport {
        success: state == "succeeded",
        operation,
        target: job.target().await.map_err(bus)?,
        message: job.message().await.map_err(bus)?,
        error: Some(job.error_name().await.map_err(bus)?).filter(|name| !name.is_empty()),
        files,
        warnings: job.warnings().await.map_err(bus)?,
        started_at: job.started_at().await.map_err(bus)?,
        finished_at: job.finished_at().await.map_err(bus)?,
    };
    if !report.success {
        // With --json the error object says it (`output::fail`).
        let name = report.error.clone().unwrap_or_else(|| "Failed".into());
        for warning in report.warnings.iter().filter(|_| !json) {
            errln!("warning: {warning}");
        }
        return Err(named(&name, report.message));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for warning in &report.warnings {
            errln!("warning: {warning}");
        }
        outln!("{}", report.message)?;
    }
    Ok(())
}

/// Ctrl-C while following a job: on a terminal, ask whether to cancel it
/// or leave it running; without one, leave it running. Returns Ok when the
/// job was asked to cancel (the caller follows it to its end).
async fn interrupted(job: &JobProxy<'_>, number: u64, operation: &str) -> Result<()> {
    let left = || {
        anyhow::Error::new(Said::interrupted(format!(
            "Left job {number} ({operation}) running in the agent: follow it with `mesbakctl wait {number}`, cancel it with `mesbakctl cancel {number}`."
        )))
    };
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(left());
    }
    let cancellable = job.cancellable().await.unwrap_or(false);
    if !cancellable {
        errln!(
            "\nJob {number} ({operation}) can no longer be cancelled (it is past its point of no return)."
        );
        return Err(left());
    }
    errln!("\nJob {number} ({operation}) is still running in the agent.");
    crate::output::write_err(format_args!(
        "Cancel it (put back what it changed) [c], or leave it running [l]? "
    ));
    let answer = read_answer().await;
    match answer.as_deref().map(str::trim) {
        Some("c" | "C" | "cancel") => match job.cancel().await {
            Ok(()) => {
                errln!("Cancelling job {number}; waiting for it to put back what it changed...");
                Ok(())
            }
            Err(err) => {
                errln!("The agent refused to cancel: {}", err.message());
                Err(left())
            }
        },
        _ => Err(left()),
    }
}

/// One line from the terminal; None on end of input or a second Ctrl-C.
async fn read_answer() -> Option<String> {
    let read = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        match std::io::stdin().read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer),
        }
    });
    tokio::select! {
        answer = read => answer.ok().flatten(),
        _ = tokio::signal::ctrl_c() => None,
    }
}

fn line(bar: &Option<ProgressBar>, text: &str) -> Result<()> {
    match bar {
        Some(bar) => {
            bar.println(text);
            Ok(())
        }
        None => outln!("{text}"),
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

/// Brings the old stack's backup files in: opened here, handed over.
pub async fn import(paths: &[PathBuf], dry_run: bool, json: bool) -> Result<()> {
    let handed = handover::old_backups(paths)?;
    let (conn, agent) = connect().await?;
    let files: Vec<(Fd<'_>, &str)> = handed
        .iter()
        .map(|h| (Fd::from(&h.file), h.name.as_str()))
        .collect();
    let path = agent.import(&files, dry_run).await.map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn backup(target: BackupTarget, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = agent.backup(target.as_str()).await.map_err(explain)?;
    follow(&conn, path, json).await
}

/// How many backups the text listing shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// Which backups `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    All,
    Newest(u32),
}

impl Shown {
    /// From `--limit N` and `--all`: without either, people see the newest
    /// [`DEFAULT_LIST_LIMIT`] and scripts (`--json`, `--ids`) every backup,
    /// as they always did.
    pub fn of(limit: Option<u32>, all: bool, for_scripts: bool) -> Shown {
        match limit {
            Some(limit) => Shown::Newest(limit),
            None if all || for_scripts => Shown::All,
            None => Shown::Newest(DEFAULT_LIST_LIMIT),
        }
    }
}

/// The newest `limit` backups, a page at a time, and how many there are.
async fn newest_backups(agent: &AgentProxy<'_>, limit: u32) -> Result<(usize, Vec<BackupInfo>)> {
    let mut backups: Vec<BackupInfo> = Vec::new();
    loop {
        let have = u32::try_from(backups.len()).unwrap_or(u32::MAX);
        let (total, page) = match agent.list_backups_page(have, limit - have).await {
            Ok(answer) => answer,
            Err(Error::ZBus(zbus::Error::MethodError(name, _, _)))
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod" =>
            {
                // An agent from before ListBackupsPage (not restarted yet).
                let mut all = agent.list_backups().await.map_err(explain)?;
                let total = all.len();
                all.truncate(limit as usize);
                return Ok((total, all));
            }
            Err(err) => return Err(explain(err)),
        };
        let ended = page.is_empty();
        backups.extend(page);
        if ended || backups.len() >= (limit.min(total) as usize) {
            backups.truncate(limit as usize);
            return Ok((total as usize, backups));
        }
    }
}

/// `n` with a comma between thousands: 3,000.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

pub async fn list(json: bool, ids_only: bool, shown: Shown) -> Result<()> {
    let (_conn, agent) = connect().await?;
    let (total, backups) = match shown {
        Shown::All => {
            let backups = agent.list_backups().await.map_err(explain)?;
            (backups.len(), backups)
        }
        Shown::Newest(limit) => newest_backups(&agent, limit).await?,
    };
    if ids_only {
        for backup in &backups {
            outln!("{}", backup.id)?;
        }
        return Ok(());
    }
    if json {
        return outln!("{}", serde_json::to_string_pretty(&backups)?);
    }
    print_backups(&backups)?;
    if backups.len() < total {
        outln!(
            "showing the newest {} of {} backups; `mesbakctl list --all` shows every one",
            grouped(backups.len()),
            grouped(total)
        )?;
    }
    let kept = agent.previous_databases().await.map_err(bus)?;
    if !kept.is_empty() {
        outln!()?;
        print_kept(&kept)?;
    }
    Ok(())
}

pub async fn list_offsite(target: &str, json: bool) -> Result<()> {
    let (_conn, agent) = connect().await?;
    let backups = agent.list_offsite(target).await.map_err(explain)?;
    if json {
        return outln!("{}", serde_json::to_string_pretty(&backups)?);
    }
    if backups.is_empty() {
        return outln!("Off-site target '{target}' holds no backups yet.");
    }
    print_backups(&backups)
}

pub async fn offsite_sync(json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = agent.sync_offsite().await.map_err(explain)?;
    follow(&conn, path, json).await
}

fn print_backups(backups: &[BackupInfo]) -> Result<()> {
    if backups.is_empty() {
        return outln!("No backups yet.");
    }
    let width = backups.iter().map(|b| b.id.len()).max().unwrap_or(2).max(2);
    outln!(
        "{:<width$}  {:<8}  {:<20}  {:>10}",
        "ID",
        "KIND",
        "CREATED",
        "SIZE"
    )?;
    for backup in backups {
        outln!(
            "{:<width$}  {:<8}  {:<20}  {:>10}{}",
            backup.id,
            backup.kind.as_str(),
            backup.created,
            indicatif::BinaryBytes(backup.size_bytes).to_string(),
            if backup.is_imported() {
                "  imported"
            } else {
                ""
            }
        )?;
        for warning in &backup.warnings {
            outln!("{:<width$}  ! {warning}", "")?;
        }
    }
    Ok(())
}

fn print_kept(kept: &[KeptDatabase]) -> Result<()> {
    outln!("Databases kept by restores (drop with `mesbakctl restore --drop-previous NAME`):")?;
    for db in kept {
        let size = if db.size_bytes > 0 {
            format!(", {}", indicatif::BinaryBytes(db.size_bytes))
        } else {
            String::new()
        };
        let from = if db.restored_backup.is_empty() {
            String::new()
        } else {
            format!(", replaced by the restore of {}", db.restored_backup)
        };
        let rollback = if db.rollback_target {
            " (`restore --rollback` puts it back)"
        } else {
            ""
        };
        outln!(
            "  {} (was '{}' until {}{from}{size}){rollback}",
            db.name,
            db.live_name,
            db.replaced_at
        )?;
    }
    Ok(())
}

/// The jobs still running, as `status` shows them.
async fn running_jobs(conn: &Connection, agent: &AgentProxy<'_>) -> Result<Vec<RunningJob>> {
    let mut running = Vec::new();
    for path in agent.jobs().await.map_err(bus)? {
        let Ok(job) = job_proxy(conn, path.clone()).await else {
            continue;
        };
        // A job may end and go between listing and reading it.
        let Ok(state) = job.state().await else {
            continue;
        };
        if state != "running" {
            continue;
        }
        let progress = job.progress().await.unwrap_or(-1.0);
        running.push(RunningJob {
            job: path.to_string(),
            operation: job
                .operation()
                .await
                .map_err(bus)?
                .parse()
                .map_err(|err| anyhow!("the agent reported an unknown job: {err}"))?,
            target: job.target().await.unwrap_or_default(),
            stage: job.stage().await.unwrap_or_default(),
            progress: (progress >= 0.0).then_some(progress),
            bytes_done: job.bytes_done().await.unwrap_or(0),
            started_at: job.started_at().await.unwrap_or_default(),
        });
    }
    Ok(running)
}

fn describe_running(job: &RunningJob) -> String {
    let number = job_number(&job.job).unwrap_or(0);
    let progress = match job.progress {
        Some(p) => format!(", {:.0}%", p * 100.0),
        None if job.bytes_done > 0 => format!(", {}", indicatif::BinaryBytes(job.bytes_done)),
        None => String::new(),
    };
    let target = if job.target.is_empty() {
        String::new()
    } else {
        format!(" {}", job.target)
    };
    format!(
        "job {number}: {}{target} since {}: {}{progress}",
        job.operation, job.started_at, job.stage
    )
}

pub async fn status(json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let health: Health = agent
        .health()
        .await
        .map_err(bus)?
        .parse()
        .map_err(|err| anyhow!("the agent reported an unknown health: {err}"))?;
    let result = agent.last_test_restore_result().await.map_err(bus)?;
    let report = StatusReport {
        status: health,
        last_backup: time_from_wire(agent.last_backup().await.map_err(bus)?),
        last_database_backup: time_from_wire(agent.last_database_backup().await.map_err(bus)?),
        last_ignition_backup: time_from_wire(agent.last_ignition_backup().await.map_err(bus)?),
        last_test_restore: time_from_wire(agent.last_test_restore().await.map_err(bus)?),
        last_test_restore_ok: (!result.is_empty()).then(|| result == "passed"),
        problems: agent.problems().await.map_err(bus)?,
        running_jobs: running_jobs(&conn, &agent).await?,
        previous_databases: agent.previous_databases().await.map_err(bus)?,
        offsite: agent
            .offsite()
            .await
            .map_err(bus)?
            .into_iter()
            .map(OffsiteReport::from)
            .collect(),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let never = || "never".to_owned();
        outln!("Status:               {}", report.status)?;
        outln!(
            "Last backup:          {}",
            report.last_backup.clone().unwrap_or_else(never)
        )?;
        outln!(
            "Last database backup: {}",
            report.last_database_backup.clone().unwrap_or_else(never)
        )?;
        outln!(
            "Last Ignition backup: {}",
            report.last_ignition_backup.clone().unwrap_or_else(never)
        )?;
        outln!(
            "Last test restore:    {}",
            match (&report.last_test_restore, report.last_test_restore_ok) {
                (Some(time), Some(true)) => format!("{time} (passed)"),
                (Some(time), _) => format!("{time} (FAILED)"),
                (None, _) => never(),
            }
        )?;
        for target in &report.offsite {
            outln!(
                "Off-site '{}':{}{} ({}; newest copy: {}; queued: {})",
                target.name,
                " ".repeat(12usize.saturating_sub(target.name.len())),
                target.status,
                target.url,
                target.newest_copy.as_deref().unwrap_or("none"),
                target.queue_length
            )?;
        }
        for job in &report.running_jobs {
            outln!("Running:              {}", describe_running(job))?;
        }
        for problem in &report.problems {
            outln!("  - {problem}")?;
        }
        if !report.previous_databases.is_empty() {
            print_kept(&report.previous_databases)?;
        }
    }
    if report.status == Health::Healthy {
        Ok(())
    } else {
        // The report said it all; the exit status tells scripts.
        Err(Said::reported(format!("mesbak is {}", report.status)).into())
    }
}

pub async fn verify(backup: &str, from: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = match from {
        Some(target) => agent.verify_from(backup, target).await,
        None => match backup_argument(backup)? {
            Given::Id(id) => agent.verify(&id).await,
            Given::File(file) => agent.verify_file(Fd::from(&file.file), &file.name).await,
        },
    }
    .map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn test_restore(backup: Option<&str>, from: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = match from {
        Some(target) => {
            agent
                .test_restore_from(backup.unwrap_or_default(), target)
                .await
        }
        None => match backup.map(backup_argument).transpose()? {
            None => agent.test_restore("").await,
            Some(Given::Id(id)) => agent.test_restore(&id).await,
            Some(Given::File(file)) => {
                agent
                    .test_restore_file(Fd::from(&file.file), &file.name)
                    .await
            }
        },
    }
    .map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn prune(dry_run: bool, yes: bool, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    if dry_run {
        let plan = agent.plan_prune().await.map_err(explain)?;
        if json {
            let rows: Vec<PlannedJson> = plan.iter().map(PlannedJson::from).collect();
            outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            print_plan(&plan)?;
        }
        return Ok(());
    }
    let preview = agent.preview("prune", "").await.map_err(explain)?;
    if agent
        .plan_prune()
        .await
        .map_err(explain)?
        .iter()
        .all(|decision| decision.keep)
    {
        return outln!("{}", preview.join("\n"));
    }
    confirm(&preview, "Delete these backups now?", yes, "prune")?;
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
fn print_plan(plan: &[PruneDecision]) -> Result<()> {
    if plan.is_empty() {
        return outln!("No backups yet.");
    }
    let width = plan.iter().map(|d| d.id.len()).max().unwrap_or(2).max(2);
    outln!(
        "{:<6}  {:<width$}  {:<20}  {:>10}",
        "ACTION",
        "ID",
        "CREATED",
        "SIZE"
    )?;
    for decision in plan {
        outln!(
            "{:<6}  {:<width$}  {:<20}  {:>10}",
            if decision.keep { "keep" } else { "DELETE" },
            decision.id,
            decision.created,
            indicatif::BinaryBytes(decision.size_bytes).to_string()
        )?;
        for reason in &decision.reasons {
            outln!("{:<6}  {:<width$}  - {reason}", "", "")?;
        }
    }
    let deleted: Vec<&PruneDecision> = plan.iter().filter(|d| !d.keep).collect();
    let freed: u64 = deleted.iter().map(|d| d.size_bytes).sum();
    match deleted.len() {
        0 => outln!("Nothing to prune: every backup is kept."),
        n => outln!(
            "`mesbakctl prune` would delete {n} of {} backup(s), freeing {}.",
            plan.len(),
            indicatif::BinaryBytes(freed)
        ),
    }
}

pub async fn restore(args: &RestoreArgs, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = if args.rollback {
        let preview = agent.preview("rollback", "").await.map_err(explain)?;
        confirm(&preview, "Roll back now?", args.yes, "restore --rollback")?;
        agent.rollback_restore().await.map_err(explain)?
    } else if let Some(name) = &args.drop_previous {
        let name = name.as_deref().unwrap_or("");
        let preview = agent
            .preview("drop-previous", name)
            .await
            .map_err(explain)?;
        confirm(
            &preview,
            "Drop it now?",
            args.yes,
            "restore --drop-previous",
        )?;
        agent.drop_previous(name).await.map_err(explain)?
    } else if let Some(time) = &args.to_time {
        let time = target_time(time)?;
        let mut preview = match &args.from {
            Some(target) => {
                agent
                    .preview("restore-to-time-from", &format!("{target}/{time}"))
                    .await
            }
            None => agent.preview("restore-to-time", &time).await,
        }
        .map_err(explain)?;
        if args.skip_safety_backup {
            without_safety_backup(&mut preview);
        }
        confirm(&preview, "Restore now?", args.yes, "restore --to-time")?;
        let options = RestoreOptions {
            skip_safety_backup: args.skip_safety_backup.then_some(true),
        };
        match &args.from {
            Some(target) => agent.restore_to_time_from(&time, target, options).await,
            None => agent.restore_to_time(&time, options).await,
        }
        .map_err(explain)?
    } else {
        let given = args
            .backup
            .as_deref()
            .ok_or_else(|| named("Usage", "name the backup to restore (see `mesbakctl list`)"))?;
        let argument = match &args.from {
            Some(_) => Given::Id(given.to_owned()),
            None => backup_argument(given)?,
        };
        let mut preview = match (&args.from, &argument) {
            (Some(target), _) => {
                agent
                    .preview("restore-from", &format!("{target}/{given}"))
                    .await
            }
            (None, Given::Id(id)) => agent.preview("restore", id).await,
            (None, Given::File(file)) => agent.preview("restore-file", &file.name).await,
        }
        .map_err(explain)?;
        if args.skip_safety_backup {
            without_safety_backup(&mut preview);
        }
        confirm(&preview, "Restore now?", args.yes, "restore")?;
        let options = RestoreOptions {
            skip_safety_backup: args.skip_safety_backup.then_some(true),
        };
        match (&args.from, &argument) {
            (Some(target), _) => agent.restore_from(given, target, options).await,
            (None, Given::Id(id)) => agent.restore(id, options).await,
            (None, Given::File(file)) => {
                agent
                    .restore_file(Fd::from(&file.file), &file.name, options)
                    .await
            }
        }
        .map_err(explain)?
    };
    follow(&conn, path, json).await
}

/// Shows what will change and asks on a terminal; without one, `--yes` is
/// required. The agent has already checked the caller (root) and the
/// action (`Preview`), so nothing is asked that would then be refused.
fn confirm(preview: &[String], question: &str, yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(named(
            "Refused",
            format!(
                "`mesbakctl {what}` changes or deletes data; without a terminal to confirm on, add --yes"
            ),
        ));
    }
    for line in preview {
        errln!("{line}");
    }
    crate::output::write_err(format_args!("{question} Type 'yes' to continue: "));
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|err| anyhow!("cannot read the answer: {err}"))?;
    if answer.trim() != "yes" {
        return Err(named(
            "Refused",
            format!("`mesbakctl {what}` not confirmed; nothing was changed"),
        ));
    }
    Ok(())
}

/// The job named (a number or a path), else the one running.
async fn pick_job(
    conn: &Connection,
    agent: &AgentProxy<'_>,
    given: Option<&str>,
) -> Result<OwnedObjectPath> {
    if let Some(given) = given {
        let number = job_number(given).ok_or_else(|| {
            named(
                "InvalidArgument",
                format!("'{given}' is not a job number; `mesbakctl jobs` lists them"),
            )
        })?;
        return OwnedObjectPath::try_from(job_path(number)).map_err(|err| anyhow!("{err}"));
    }
    let running = running_jobs(conn, agent).await?;
    match running.as_slice() {
        [] => Err(named(
            "NotFound",
            "no job is running; `mesbakctl jobs` lists the recent ones",
        )),
        [one] => OwnedObjectPath::try_from(one.job.clone()).map_err(|err| anyhow!("{err}")),
        many => Err(named(
            "InvalidArgument",
            format!(
                "{} jobs are running ({}); name one",
                many.len(),
                many.iter()
                    .map(|job| job_number(&job.job).unwrap_or(0).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// A job as `mesbakctl jobs --json` lists it.
#[derive(Debug, Serialize)]
struct JobSummary {
    job: u64,
    path: String,
    operation: String,
    target: String,
    state: String,
    stage: String,
    progress: Option<f64>,
    started_at: String,
    finished_at: String,
    message: String,
}

pub async fn jobs(json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let mut jobs = Vec::new();
    for path in agent.jobs().await.map_err(bus)? {
        let Ok(job) = job_proxy(&conn, path.clone()).await else {
            continue;
        };
        let Ok(state) = job.state().await else {
            continue;
        };
        let progress = job.progress().await.unwrap_or(-1.0);
        jobs.push(JobSummary {
            job: job_number(path.as_str()).unwrap_or(0),
            path: path.to_string(),
            operation: job.operation().await.unwrap_or_default(),
            target: job.target().await.unwrap_or_default(),
            state,
            stage: job.stage().await.unwrap_or_default(),
            progress: (progress >= 0.0).then_some(progress),
            started_at: job.started_at().await.unwrap_or_default(),
            finished_at: job.finished_at().await.unwrap_or_default(),
            message: job.message().await.unwrap_or_default(),
        });
    }
    if json {
        return outln!("{}", serde_json::to_string_pretty(&jobs)?);
    }
    if jobs.is_empty() {
        return outln!("No jobs (finished jobs are listed for 10 minutes).");
    }
    for job in &jobs {
        let progress = job
            .progress
            .filter(|_| job.state == "running")
            .map(|p| format!(" {:.0}%", p * 100.0))
            .unwrap_or_default();
        let detail = if job.state == "running" {
            &job.stage
        } else {
            &job.message
        };
        outln!(
            "{:>4}  {:<13} {:<10} {}{progress}  started {}  {}",
            job.job,
            job.operation,
            job.state,
            job.target,
            job.started_at,
            detail
        )?;
    }
    Ok(())
}

pub async fn wait(given: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = pick_job(&conn, &agent, given).await?;
    follow(&conn, path, json).await
}

pub async fn cancel(given: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = pick_job(&conn, &agent, given).await?;
    let job = job_proxy(&conn, path.clone()).await?;
    job.cancel().await.map_err(explain)?;
    if !json {
        errln!(
            "Cancel requested for job {}; waiting for it to put back what it changed...",
            job_number(path.as_str()).unwrap_or(0)
        );
    }
    match follow(&conn, path, json).await {
        // Cancelled as asked: that is this command's success.
        Err(err)
            if err
                .downcast_ref::<crate::output::Named>()
                .is_some_and(|n| n.name == "Cancelled") =>
        {
            if !json {
                outln!("{err}")?;
            }
            Ok(())
        }
        other => other,
    }
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

pub async fn test_restore_to_time(time: &str, from: Option<&str>, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let time = target_time(time)?;
    let path = match from {
        Some(target) => agent.test_restore_to_time_from(&time, target).await,
        None => agent.test_restore_to_time(&time).await,
    }
    .map_err(explain)?;
    follow(&conn, path, json).await
}

pub async fn pitr(command: PitrCommand, json: bool) -> Result<()> {
    let (conn, agent) = connect().await?;
    let path = match command {
        PitrCommand::Status => return pitr_status(&agent, json).await,
        PitrCommand::Enable { yes } => {
            let preview = agent.preview("pitr-enable", "").await.map_err(explain)?;
            confirm(&preview, "Go ahead?", yes, "pitr enable")?;
            agent.pitr_enable().await.map_err(explain)?
        }
        PitrCommand::Disable { yes } => {
            let preview = agent.preview("pitr-disable", "").await.map_err(explain)?;
            confirm(&preview, "Go ahead?", yes, "pitr disable")?;
            agent.pitr_disable().await.map_err(explain)?
        }
        PitrCommand::Sync => agent.pitr_sync().await.map_err(explain)?,
        PitrCommand::BaseBackup { if_enabled } => {
            if if_enabled && !agent.pitr_status().await.map_err(explain)?.enabled {
                return match json {
                    true => outln!(
                        "{}",
                        serde_json::json!({"skipped": "point-in-time recovery is off"})
                    ),
                    false => outln!("Point-in-time recovery is off: no base backup taken."),
                };
            }
            agent.pitr_base_backup().await.map_err(explain)?
        }
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
        return outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    let or_never = |text: &str| {
        if text.is_empty() {
            "never".to_owned()
        } else {
            text.to_owned()
        }
    };
    outln!(
        "Point-in-time recovery: {}",
        if status.enabled {
            format!(
                "on since {} (archive {})",
                status.enabled_at, status.archive_directory
            )
        } else {
            "off".to_owned()
        }
    )?;
    outln!(
        "Restorable window:      {}",
        if status.window_from.is_empty() {
            "none yet".to_owned()
        } else {
            format!("{} to {}", status.window_from, status.window_to)
        }
    )?;
    outln!(
        "WAL shipped up to:      {} ({})",
        or_never(&status.newest_wal),
        or_never(&status.newest_wal_time)
    )?;
    outln!(
        "Shipped:                {} WAL files, {} in all; {} waiting on the server",
        status.wal_files,
        indicatif::BinaryBytes(status.bytes),
        status.waiting
    )?;
    outln!("Base backups:           {}", status.base_backups.len())?;
    for base in &status.base_backups {
        outln!(
            "  {}  finished {}  from {}  {}",
            base.id,
            base.finished,
            base.start_wal,
            indicatif::BinaryBytes(base.size_bytes)
        )?;
    }
    for gap in &status.gaps {
        outln!("  ! missing WAL segment {gap}")?;
    }
    if !status.last_error.is_empty() {
        outln!("  ! last shipping failed: {}", status.last_error)?;
    }
    Ok(())
}

/// The confirmation of a restore with `--skip-safety-backup` says so
/// instead of promising the safety backup.
fn without_safety_backup(preview: &mut Vec<String>) {
    preview.retain(|line| !line.starts_with("A safety backup"));
    preview.push("No safety backup of the current data is taken (--skip-safety-backup).".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_see_the_newest_50_and_scripts_everything_unless_told() {
        assert_eq!(
            Shown::of(None, false, false),
            Shown::Newest(DEFAULT_LIST_LIMIT)
        );
        assert_eq!(Shown::of(None, true, false), Shown::All);
        assert_eq!(Shown::of(None, false, true), Shown::All, "--json, --ids");
        assert_eq!(Shown::of(Some(2), false, true), Shown::Newest(2));
        assert_eq!(Shown::of(Some(2), false, false), Shown::Newest(2));
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(50), "50");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(3000), "3,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
