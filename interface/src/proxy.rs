//! Typed client side of the contract. The agent implements the same
//! interfaces in `agent/src/bus/`; a test compares both to the checked-in XML.

use zbus::proxy;
use zbus::zvariant::{Fd, OwnedObjectPath};

use crate::{
    BackupInfo, Error, KeptDatabase, OffsiteStatus, PitrStatus, PruneDecision, RestoreOptions,
};

/// The manager object, `/org/mesbak/Agent1`.
#[proxy(
    interface = "org.mesbak.Agent1",
    default_service = "org.mesbak.Agent1",
    default_path = "/org/mesbak/Agent1"
)]
pub trait Agent {
    /// Starts a backup of `target` (`database`, `ignition` or `all`).
    fn backup(&self, target: &str) -> Result<OwnedObjectPath, Error>;

    /// Every backup in the backup folder, newest first.
    fn list_backups(&self) -> Result<Vec<BackupInfo>, Error>;

    /// One page of `list_backups`: at most `count` backups (never more than
    /// [`MAX_PAGE`](crate::MAX_PAGE)), newest first, from position `first`
    /// (0 is the newest), and how many there are in all. A `first` at or
    /// past the total gives an empty page; `count` 0 only the total.
    fn list_backups_page(&self, first: u32, count: u32) -> Result<(u32, Vec<BackupInfo>), Error>;

    /// Authenticates a whole backup file (by id or path) without restoring it.
    fn verify(&self, backup: &str) -> Result<OwnedObjectPath, Error>;

    /// Restores a backup (root only). See `RestoreOptions`.
    fn restore(&self, backup: &str, options: RestoreOptions) -> Result<OwnedObjectPath, Error>;

    /// Puts back the database the newest restore replaced (root only).
    /// Refused once that restore was rolled back: not a toggle.
    fn rollback_restore(&self) -> Result<OwnedObjectPath, Error>;

    /// Drops a kept database by name (see `PreviousDatabases`); "" means
    /// the one the newest restore kept (root only).
    fn drop_previous(&self, name: &str) -> Result<OwnedObjectPath, Error>;

    /// What a destructive action would change, one sentence per line, for
    /// the confirmation prompt: `action` is `restore` (argument: the
    /// backup), `rollback`, `drop-previous` (argument: the name or "") or
    /// `prune`. Fails as the action itself would (nothing to roll back, a
    /// backup that does not exist, ...). Changes nothing.
    fn preview(&self, action: &str, argument: &str) -> Result<Vec<String>, Error>;

    /// Restores a database backup into a scratch database and checks it;
    /// an empty id means the newest database backup.
    fn test_restore(&self, backup: &str) -> Result<OwnedObjectPath, Error>;

    /// What `Prune` would do now: every backup, kept or deleted, and why.
    fn plan_prune(&self) -> Result<Vec<PruneDecision>, Error>;

    /// Deletes what retention allows (root only).
    fn prune(&self) -> Result<OwnedObjectPath, Error>;

    /// Turns point-in-time recovery on (root only).
    fn pitr_enable(&self) -> Result<OwnedObjectPath, Error>;

    /// Turns point-in-time recovery off (root only).
    fn pitr_disable(&self) -> Result<OwnedObjectPath, Error>;

    /// Switches to a new WAL segment and ships everything up to now.
    fn pitr_sync(&self) -> Result<OwnedObjectPath, Error>;

    /// Takes a physical base backup now.
    fn pitr_base_backup(&self) -> Result<OwnedObjectPath, Error>;

    /// Base backups, shipped WAL, the restorable window and its gaps.
    fn pitr_status(&self) -> Result<PitrStatus, Error>;

    /// Restores the database as it was at `time` (RFC 3339; root only).
    fn restore_to_time(
        &self,
        time: &str,
        options: RestoreOptions,
    ) -> Result<OwnedObjectPath, Error>;

    /// A test restore of the database as it was at `time` (RFC 3339).
    fn test_restore_to_time(&self, time: &str) -> Result<OwnedObjectPath, Error>;

    /// `RestoreToTime` with the base backup and WAL read from off-site
    /// target `target` (root only; the backup folder may have none).
    fn restore_to_time_from(
        &self,
        time: &str,
        target: &str,
        options: RestoreOptions,
    ) -> Result<OwnedObjectPath, Error>;

    /// `TestRestoreToTime` with the files read from off-site target `target`.
    fn test_restore_to_time_from(&self, time: &str, target: &str)
    -> Result<OwnedObjectPath, Error>;

    /// Copies what is missing to every off-site target now; returns the
    /// running sync's job when one is already running.
    fn sync_offsite(&self) -> Result<OwnedObjectPath, Error>;

    /// The backups off-site target `target` holds, newest first.
    fn list_offsite(&self, target: &str) -> Result<Vec<BackupInfo>, Error>;

    /// `Verify` of a backup read from off-site target `target`.
    fn verify_from(&self, backup: &str, target: &str) -> Result<OwnedObjectPath, Error>;

    /// `TestRestore` of a backup read from off-site target `target`; an
    /// empty id means the newest database backup there.
    fn test_restore_from(&self, backup: &str, target: &str) -> Result<OwnedObjectPath, Error>;

    /// `Restore` of a backup read from off-site target `target` (root only).
    fn restore_from(
        &self,
        backup: &str,
        target: &str,
        options: RestoreOptions,
    ) -> Result<OwnedObjectPath, Error>;

    /// Brings the old stack's backup files in: each `(file, name)` is an
    /// open file and its name (`mes_YYYY-MM-DD_HHmmss.sql.gz`,
    /// `ignition-YYYYMMDD-HHMMSS.tar.gz`), checked whole, encrypted under
    /// the same timestamp; all or nothing. `dry_run` checks and writes
    /// nothing (root only).
    fn import(&self, files: &[(Fd<'_>, &str)], dry_run: bool) -> Result<OwnedObjectPath, Error>;

    /// `Verify` of a backup file the caller opened and handed over; `name`
    /// is its file name (a backup id).
    fn verify_file(&self, file: Fd<'_>, name: &str) -> Result<OwnedObjectPath, Error>;

    /// `TestRestore` of a backup file the caller opened and handed over.
    fn test_restore_file(&self, file: Fd<'_>, name: &str) -> Result<OwnedObjectPath, Error>;

    /// `Restore` of a backup file the caller opened and handed over (root only).
    fn restore_file(
        &self,
        file: Fd<'_>,
        name: &str,
        options: RestoreOptions,
    ) -> Result<OwnedObjectPath, Error>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// One entry per off-site target: newest copy, queue, last error.
    #[zbus(property)]
    fn offsite(&self) -> zbus::Result<Vec<OffsiteStatus>>;

    /// `healthy`, `degraded` or `unhealthy`.
    #[zbus(property)]
    fn health(&self) -> zbus::Result<String>;

    /// One sentence per reason the agent is not healthy.
    #[zbus(property)]
    fn problems(&self) -> zbus::Result<Vec<String>>;

    /// RFC 3339 time of the newest good backup of any kind, or "".
    #[zbus(property)]
    fn last_backup(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn last_database_backup(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn last_ignition_backup(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn last_test_restore(&self) -> zbus::Result<String>;

    /// `passed`, `failed`, or "" when no test restore ran yet.
    #[zbus(property)]
    fn last_test_restore_result(&self) -> zbus::Result<String>;

    /// Job objects that exist now, running or recently finished.
    #[zbus(property)]
    fn jobs(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Databases kept by restores and rollbacks, until dropped.
    #[zbus(property)]
    fn previous_databases(&self) -> zbus::Result<Vec<KeptDatabase>>;
}

/// A job object, `/org/mesbak/Agent1/jobs/<n>`.
#[proxy(
    interface = "org.mesbak.Agent1.Job",
    default_service = "org.mesbak.Agent1"
)]
pub trait Job {
    /// Asks the job to stop at its next safe point and put back what it
    /// changed; it then ends with state `cancelled`. Refused (`Failed`)
    /// once the job is past the point of no return (a restore that has
    /// switched the database), and for callers other than root and the
    /// job's owner (`NotAuthorized`).
    fn cancel(&self) -> Result<(), Error>;

    /// Emitted once when the job ends.
    #[zbus(signal)]
    fn finished(&self, success: bool, message: String) -> zbus::Result<()>;

    /// A `JobOperation` name.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    /// What the job works on: a backup target or a backup id.
    #[zbus(property)]
    fn target(&self) -> zbus::Result<String>;

    /// A `JobState` name.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;

    /// What the job is doing now, in words.
    #[zbus(property)]
    fn stage(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn bytes_done(&self) -> zbus::Result<u64>;

    /// 0 when not known.
    #[zbus(property)]
    fn bytes_total(&self) -> zbus::Result<u64>;

    /// Bytes per second over the last few seconds.
    #[zbus(property)]
    fn rate(&self) -> zbus::Result<u64>;

    /// 0.0 to 1.0, or -1.0 when not known.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;

    #[zbus(property)]
    fn started_at(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn finished_at(&self) -> zbus::Result<String>;

    /// The final message once finished; "" while running.
    #[zbus(property)]
    fn message(&self) -> zbus::Result<String>;

    /// The `Error` variant name when the job failed, else "".
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;

    /// Backup ids the job created (backups, safety backups).
    #[zbus(property)]
    fn files(&self) -> zbus::Result<Vec<String>>;

    /// Things that went right but deserve a look.
    #[zbus(property)]
    fn warnings(&self) -> zbus::Result<Vec<String>>;

    /// Whether `Cancel` would still be accepted.
    #[zbus(property)]
    fn cancellable(&self) -> zbus::Result<bool>;
}
