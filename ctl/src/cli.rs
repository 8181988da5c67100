//! The command line. This is the contract of DESIGN.md; man pages and shell
//! completions are generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesbak_interface::BackupTarget;

/// Default key file, as in the agent's default configuration.
pub const DEFAULT_KEY_FILE: &str = "/etc/mesbak/backup.key";

#[derive(Debug, Parser)]
#[command(
    name = "mesbakctl",
    version,
    about = "Back up, check and restore the MES database and the Ignition gateway",
    long_about = "mesbakctl asks the mesbak agent (over the D-Bus system bus) to back up, \
                  verify, restore and test-restore the MES database and the Ignition gateway \
                  volume. `decrypt` and `keygen` work offline, without the agent.",
    after_help = "Exit status: 0 on success, 1 when the operation failed, 2 on a usage error."
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up the database, the Ignition volume, or both as one restore point.
    Backup {
        /// What to back up.
        #[arg(value_enum, default_value_t = TargetArg::All)]
        what: TargetArg,
    },
    /// List the backups, newest first.
    List,
    /// Show whether backups are fresh and test restores pass.
    Status,
    /// Check that a backup decrypts and authenticates completely.
    Verify {
        /// A backup id (file name, as `list` shows) or a path to a backup file.
        backup: String,
    },
    /// Restore a backup over the live data (root only).
    ///
    /// The whole file is authenticated first, a safety backup of the current
    /// data is taken, and the live database is only replaced once the restored
    /// copy checked out; the previous database is kept until you drop it.
    Restore(RestoreArgs),
    /// Restore a database backup into a scratch database, check it, drop it.
    TestRestore {
        /// A backup id or path; default: the newest database backup.
        #[arg(conflicts_with = "to_time")]
        backup: Option<String>,
        /// Test a point-in-time restore to TIME instead (RFC 3339, or local
        /// "YYYY-MM-DD HH:MM:SS").
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
    },
    /// Point-in-time recovery: continuous WAL archiving on the database server.
    #[command(subcommand)]
    Pitr(PitrCommand),
    /// Delete what the retention rules let go (root only).
    ///
    /// A backup stays if any `[retention]` rule keeps it: made within `days`,
    /// among the newest `keep_last` good backups of its kind, or the newest
    /// good one of a day, week or month that `keep_daily`, `keep_weekly` or
    /// `keep_monthly` keep. `--dry-run` lists every backup with the reasons.
    Prune {
        /// Only show, for each backup, whether it would be kept or deleted and why.
        #[arg(long)]
        dry_run: bool,
    },
    /// Decrypt a backup file without the agent (to stdout unless -o).
    ///
    /// The output is the standard `.sql.gz` or `.tar.gz` payload:
    /// `mesbakctl decrypt FILE | gunzip | psql -v ON_ERROR_STOP=1 DB`.
    Decrypt {
        /// The encrypted backup file, or - for standard input.
        file: PathBuf,
        /// The key file; default: $BACKUP_ENCRYPTION_KEY if set, else /etc/mesbak/backup.key.
        #[arg(long, value_name = "K")]
        key_file: Option<PathBuf>,
        /// Write here instead of standard output (never overwrites).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Create a new random encryption key file (mode 0600, never overwrites).
    Keygen {
        /// Where to write the key; - prints it to standard output.
        #[arg(short, long, value_name = "FILE", default_value = DEFAULT_KEY_FILE)]
        output: PathBuf,
    },
    /// Write man pages and shell completions (used when packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Folder to write `man/` and `completions/` into.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Turn continuous WAL archiving on (root only; restarts the database container once).
    ///
    /// Names what it changes on the database server first and asks on a
    /// terminal; without one, --yes is required.
    Enable {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Turn it off again (root only; restarts the database container once).
    Disable {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Base backups, WAL shipped up to, the restorable window and any gap.
    Status,
    /// Switch the server to a new WAL segment and ship everything up to now.
    Sync,
    /// Take a physical base backup now (the PITR timer runs this).
    BaseBackup,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("mode").args(["backup", "rollback", "drop_previous", "to_time"]).required(true))]
pub struct RestoreArgs {
    /// A backup id (file name, as `list` shows) or a path to a backup file.
    pub backup: Option<String>,
    /// Restore the database as it was at TIME (point-in-time recovery; RFC
    /// 3339, or local "YYYY-MM-DD HH:MM:SS").
    #[arg(long, value_name = "TIME", conflicts_with_all = ["backup", "rollback", "drop_previous"])]
    pub to_time: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Do not take a safety backup of the current data first (not recommended).
    #[arg(long, requires = "backup")]
    pub skip_safety_backup: bool,
    /// Put back the database that the last restore replaced.
    #[arg(long, conflicts_with_all = ["backup", "drop_previous"])]
    pub rollback: bool,
    /// Drop the database that the last restore kept.
    #[arg(long, conflicts_with_all = ["backup", "rollback"])]
    pub drop_previous: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TargetArg {
    Database,
    Ignition,
    All,
}

impl From<TargetArg> for BackupTarget {
    fn from(arg: TargetArg) -> BackupTarget {
        match arg {
            TargetArg::Database => BackupTarget::Database,
            TargetArg::Ignition => BackupTarget::Ignition,
            TargetArg::All => BackupTarget::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restore_needs_a_backup_or_a_mode() {
        assert!(Cli::try_parse_from(["mesbakctl", "restore"]).is_err());
        assert!(Cli::try_parse_from(["mesbakctl", "restore", "--rollback"]).is_ok());
        assert!(Cli::try_parse_from(["mesbakctl", "restore", "x", "--rollback"]).is_err());
        assert!(Cli::try_parse_from(["mesbakctl", "restore", "x", "--yes"]).is_ok());
    }

    #[test]
    fn backup_defaults_to_all_and_json_is_global() {
        let cli = Cli::try_parse_from(["mesbakctl", "backup", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Backup {
                what: TargetArg::All
            }
        ));
    }
}
