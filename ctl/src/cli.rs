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
    after_help = "Exit status: 0 on success, 1 when the operation failed (with --json the error is also printed as {\"error\": {\"name\": ..., \"message\": ...}}), 2 on a usage error, 130 when Ctrl-C left a job running, 141 when the output pipe was closed."
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
    /// List the backups, newest first (and the databases restores kept).
    ///
    /// The text shows the newest 50 and says how many there are in all;
    /// `--all` shows every backup, `--limit N` the newest N. `--json` and
    /// `--ids` (for scripts) list every backup unless `--limit N` is given.
    List {
        /// Print only the backup ids, one per line (for scripts and completion).
        #[arg(long, conflicts_with = "json")]
        ids: bool,
        /// List what off-site target NAME holds instead of the backup folder.
        #[arg(long, value_name = "NAME", conflicts_with = "ids")]
        offsite: Option<String>,
        /// Show only the newest N backups (the text listing shows the newest
        /// 50 unless --all; --json and --ids list every backup unless --limit).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "offsite")]
        limit: Option<u32>,
        /// Show every backup, not only the newest 50.
        #[arg(long, conflicts_with_all = ["limit", "offsite"])]
        all: bool,
    },
    /// Show whether backups are fresh and test restores pass, the running
    /// job, the databases restores kept and the off-site targets.
    Status,
    /// List the agent's jobs: running and finished in the last 10 minutes.
    Jobs,
    /// Follow a job to its end with its progress (default: the running one).
    Wait {
        /// Job number (as `jobs` shows) or object path.
        job: Option<String>,
    },
    /// Cancel a job: it stops at its next safe point and puts back what it
    /// changed (default: the running one).
    Cancel {
        /// Job number (as `jobs` shows) or object path.
        job: Option<String>,
    },
    /// Check that a backup decrypts and authenticates completely.
    Verify {
        /// A backup id (file name, as `list` shows) or a path to a backup file
        /// (opened with your permissions and handed to the agent).
        backup: String,
        /// Read the backup from off-site target NAME.
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
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
        /// Read the backup (or, with --to-time, the base backup and WAL) from
        /// off-site target NAME (default: its newest database backup).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Bring the old stack's backups in (root only).
    ///
    /// Each old file (database/mes_YYYY-MM-DD_HHmmss.sql.gz,
    /// ignition/ignition-YYYYMMDD-HHMMSS.tar.gz) is read whole and checked
    /// (the gzip stream to its end; a pg_dump's header, data and closing
    /// line; a tar archive to its end), then encrypted into the backup folder
    /// under the same time (database/mes_2024-10-11_000001.sql.gz.enc,
    /// ignition/ignition_2024-10-11_000001.tar.gz.enc) with its row counts.
    /// The originals are only read. A damaged or unknown file is refused
    /// with what is wrong, and then nothing is imported. Imported backups
    /// are listed, verified, test-restored and restored like any other, but
    /// do not count as fresh backups for health.
    Import {
        /// Old backup files, or the old `backups/` folder (its database/ and ignition/).
        #[arg(required = true, value_name = "FILE|FOLDER")]
        paths: Vec<PathBuf>,
        /// Check every file and show what would be imported; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Off-site copies (the [[offsite]] targets of the configuration).
    Offsite {
        #[command(subcommand)]
        command: OffsiteCommand,
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
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long, short = 'y', conflicts_with = "dry_run")]
        yes: bool,
    },
    /// Decrypt a backup file without the agent (to stdout unless -o).
    ///
    /// The output is the standard `.sql.gz` / `.tar.gz` payload (`.sql.zst`
    /// / `.tar.zst` for zstd backups):
    /// `mesbakctl decrypt FILE | gunzip | psql -v ON_ERROR_STOP=1 DB`
    /// (`| zstd -d |` for `.zst.enc` files).
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
    /// Take a physical base backup now (mesbak-pitr-base-backup.timer runs this).
    BaseBackup {
        /// Succeed without doing anything when point-in-time recovery is
        /// off (what the timer uses, so a plant without PITR sees no failure).
        #[arg(long)]
        if_enabled: bool,
    },
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
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Do not take a safety backup of the current data first (not recommended).
    #[arg(long, requires = "backup")]
    pub skip_safety_backup: bool,
    /// Put back the database that the newest restore replaced (once: a
    /// rollback is not repeated).
    #[arg(long, conflicts_with_all = ["backup", "drop_previous"])]
    pub rollback: bool,
    /// Drop a database a restore kept: NAME as `status` lists it, default
    /// the one the newest restore kept.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["backup", "rollback"])]
    pub drop_previous: Option<Option<String>>,
    /// Read the backup (or, with --to-time, the base backup and WAL) from
    /// off-site target NAME (the backup folder may be empty).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rollback", "drop_previous"])]
    pub from: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the mesbak.toml lines matching the seed stack's .env (secrets
    /// are never printed: it says where they go).
    ImportEnv {
        /// The stack's .env file.
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum OffsiteCommand {
    /// Copy what is missing to every off-site target now, verified there.
    Sync,
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
        let cli = Cli::try_parse_from(["mesbakctl", "restore", "--drop-previous"]).unwrap();
        let Command::Restore(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.drop_previous, Some(None));
        let cli =
            Cli::try_parse_from(["mesbakctl", "restore", "--drop-previous", "mes_previous_1"])
                .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.drop_previous, Some(Some("mes_previous_1".into())));
    }

    #[test]
    fn list_limits() {
        let limit = |args: &[&str]| match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::List { limit, all, .. }) => Ok((limit, all)),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err.kind()),
        };
        assert_eq!(limit(&["mesbakctl", "list"]), Ok((None, false)));
        assert_eq!(limit(&["mesbakctl", "list", "--all"]), Ok((None, true)));
        assert_eq!(
            limit(&["mesbakctl", "list", "--limit", "2", "--json"]),
            Ok((Some(2), false))
        );
        assert!(limit(&["mesbakctl", "list", "--limit", "0"]).is_err());
        assert!(limit(&["mesbakctl", "list", "--limit", "2", "--all"]).is_err());
        assert!(limit(&["mesbakctl", "list", "--all", "--offsite", "s3"]).is_err());
    }

    #[test]
    fn offsite_options() {
        let cli = Cli::try_parse_from(["mesbakctl", "list", "--offsite", "s3", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::List { offsite: Some(ref n), .. } if n == "s3"));
        assert!(Cli::try_parse_from(["mesbakctl", "restore", "x", "--from", "s3"]).is_ok());
        assert!(
            Cli::try_parse_from(["mesbakctl", "restore", "--rollback", "--from", "s3"]).is_err()
        );
        assert!(Cli::try_parse_from(["mesbakctl", "test-restore", "--from", "s3"]).is_ok());
        assert!(Cli::try_parse_from(["mesbakctl", "verify", "x", "--from", "s3"]).is_ok());
        assert!(matches!(
            Cli::try_parse_from(["mesbakctl", "offsite", "sync"])
                .unwrap()
                .command,
            Command::Offsite {
                command: OffsiteCommand::Sync
            }
        ));
    }

    #[test]
    fn import_and_config() {
        assert!(Cli::try_parse_from(["mesbakctl", "import"]).is_err());
        let cli = Cli::try_parse_from(["mesbakctl", "import", "a.sql.gz", "backups", "--dry-run"])
            .unwrap();
        assert!(
            matches!(cli.command, Command::Import { ref paths, dry_run: true } if paths.len() == 2)
        );
        assert!(matches!(
            Cli::try_parse_from(["mesbakctl", "config", "import-env", ".env"])
                .unwrap()
                .command,
            Command::Config(ConfigCommand::ImportEnv { .. })
        ));
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
