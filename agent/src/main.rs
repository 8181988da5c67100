//! mesbak-agent: run by systemd as root; see `mesbak-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mesbak_agent::config::{self, Config, ProcessEnv};

#[derive(Debug, Parser)]
#[command(
    name = "mesbak-agent",
    version,
    about = "The mesbak backup agent: backs up, verifies and restores the MES database and the Ignition volume",
    long_about = "mesbak-agent is the root-owned daemon behind mesbakctl. It serves \
                  org.mesbak.Agent1 on the D-Bus system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), \
                  talks to Docker as the docker CLI does (DOCKER_HOST, else the local socket), and \
                  is normally started by systemd (mesbak-agent.service). The seed stack's .env names \
                  SCHEDULE, BACKUP_ENCRYPTION_KEY, BACKUP_RETENTION_DAYS, POSTGRES_HOST, POSTGRES_DB, \
                  POSTGRES_USER and POSTGRES_PASSWORD override the configuration file."
)]
struct Args {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    /// Check the configuration and everything it names (key, Docker, the
    /// database server, volume, containers, schedule, backup folder, notify
    /// URLs), print what passed, warnings and errors, and exit: 0 without
    /// errors, 1 with.
    #[arg(long)]
    check_config: bool,

    /// With --check-config: check only the file (syntax, types, values,
    /// notify URLs), not the key, Docker or the database.
    #[arg(long, requires = "check_config")]
    syntax_only: bool,

    /// Send a "UNIT failed" alert to every notify URL and exit (systemd's
    /// OnFailure= runs this; it works without the agent running).
    #[arg(long, value_name = "UNIT")]
    notify_failure: Option<String>,

    /// Write the man page into DIR and exit (used by packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

/// Writes to stdout; a closed pipe (`--check-config | head`) is not worth a
/// panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `eprintln!` that never panics (stderr may be closed too).
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = args.generate_man {
        return match write_man_page(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                complain!(
                    "mesbak-agent: cannot write the man page into {}: {err}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&args.config, &ProcessEnv) {
        Ok(config) => config,
        Err(err) => {
            complain!("mesbak-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    mesbak_agent::memory::limit_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            complain!("mesbak-agent: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config && args.syntax_only {
        if let Err(err) = mesbak_agent::notify::targets(&config) {
            complain!("mesbak-agent: {err}");
            return ExitCode::FAILURE;
        }
        say(&format!("{}: the file is valid\n", args.config.display()));
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        let findings = runtime.block_on(mesbak_agent::checkup::run(&config));
        say(&findings.render(&args.config));
        return if findings.errors() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(unit) = args.notify_failure {
        mesbak_agent::logging::init();
        return runtime.block_on(notify_failure(&config, &unit));
    }
    if let Err(err) = mesbak_agent::notify::targets(&config) {
        complain!("mesbak-agent: {err}");
        return ExitCode::FAILURE;
    }
    mesbak_agent::logging::init();
    match runtime.block_on(mesbak_agent::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err.message(), "mesbak-agent stopped");
            complain!("mesbak-agent: {}", err.message());
            ExitCode::FAILURE
        }
    }
}

/// `--notify-failure UNIT`: one alert, sent now, without the daemon.
async fn notify_failure(config: &Config, unit: &str) -> ExitCode {
    use mesbak_agent::notify::{self, Event, EventKind};
    let targets = match notify::targets(config) {
        Ok(targets) => targets,
        Err(err) => {
            complain!("mesbak-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    if targets.is_empty() {
        complain!(
            "mesbak-agent: {unit} failed, but notify.urls in {} is empty: nobody was told",
            config.origin.display()
        );
        return ExitCode::SUCCESS;
    }
    let event = Event::new(
        EventKind::UnitFailed,
        format!("{unit} failed"),
        format!("systemd reports that {unit} failed"),
        format!("See `journalctl -u {unit}` and `mesbakctl status` on the server."),
    );
    match notify::send_now(&targets, &event).await {
        Ok((delivered, wanted)) if delivered == wanted => ExitCode::SUCCESS,
        Ok((delivered, wanted)) => {
            complain!(
                "mesbak-agent: the failure of {unit} reached {delivered} of {wanted} notify targets; see the messages above"
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            complain!("mesbak-agent: cannot send alerts: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_man_page(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let man = clap_mangen::Man::new(Args::command()).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    std::fs::write(dir.join("mesbak-agent.8"), page)
}

/// The sections of mesbak-agent(8) that clap does not write.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
The agent stopped cleanly; \fB\-\-check\-config\fR found no error; \fB\-\-notify\-failure\fR reached every receiver.
.TP
.B 1
A bad configuration (one sentence naming the file, the line and the key), an error found by \fB\-\-check\-config\fR, a start\-up failure (the bus name taken, the state folder not writable), or an alert that could not be delivered.
.SH ENVIRONMENT
.TP
.B SCHEDULE, BACKUP_ENCRYPTION_KEY, BACKUP_RETENTION_DAYS, POSTGRES_HOST, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD
The seed stack's names; they win over \fImesbak.toml\fR (the unit reads \fI/etc/mesbak/mesbak.env\fR).
.TP
.B DOCKER_HOST
The Docker engine, as the docker CLI finds it (default: the local socket).
.TP
.B DBUS_SYSTEM_BUS_ADDRESS
The bus to serve \fBorg.mesbak.Agent1\fR on (default: the system bus).
.TP
.B SSL_CERT_FILE
Certificates to trust for https and SMTP alert receivers (default: the system's).
.TP
.B RUST_LOG
Log level (default: info); logs go to the journal, else to standard error.
.SH FILES
.TP
.I /etc/mesbak/mesbak.toml
The configuration; every key has a default. \fB[notify] urls\fR may hold passwords: make it mode 0600 then.
.TP
.I /etc/mesbak/mesbak.env
Optional environment (seed stack names), read by the unit.
.TP
.I /etc/mesbak/backup.key
The encryption key (root, 0600 or 0400).
.TP
.I /var/backups/mes/
The backups (\fBdatabase/\fR, \fBignition/\fR), 0700 root, files 0600.
.TP
.I /var/lib/mesbak/
The agent's state: \fBstate.json\fR (last results, kept databases), \fBcontainers.json\fR (containers to put back after a crash), \fBrestore.json\fR (a restore in progress), \fBalerts.json\fR (alerts already sent).
.TP
.I /usr/lib/systemd/system/mesbak\-agent.service, mesbak\-backup.timer, mesbak\-test\-restore.timer, mesbak\-notify\-failure@.service
The units; a failed unit alerts through \fBmesbak\-notify\-failure@.service\fR.
.SH EXAMPLES
.TP
.B mesbak\-agent \-\-check\-config && systemctl restart mesbak\-agent
Check a changed configuration and everything it names before the agent uses it.
.TP
.B mesbak\-agent \-\-notify\-failure mesbak\-backup.service
Send a test alert to every \fB[notify] urls\fR receiver.
.TP
.B journalctl \-u mesbak\-agent \-u mesbak\-backup
What the agent and the backup timer did.
.TP
.B curl \-s http://127.0.0.1:8888/metrics
The Prometheus metrics (and \fB/health\fR, the status as JSON).
.SH "SEE ALSO"
\fBmesbakctl\fR(1), \fBsystemd.time\fR(7)
"#;
