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

    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,

    /// Write the man page into DIR and exit (used by packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = args.generate_man {
        return match write_man_page(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!(
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
            eprintln!("mesbak-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("{}: the configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    mesbak_agent::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mesbak-agent: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mesbak_agent::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err.message(), "mesbak-agent stopped");
            eprintln!("mesbak-agent: {}", err.message());
            ExitCode::FAILURE
        }
    }
}

fn write_man_page(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let man = clap_mangen::Man::new(Args::command()).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(dir.join("mesbak-agent.8"), page)
}
