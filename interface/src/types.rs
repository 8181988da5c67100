//! Types that cross the bus. Enums travel as their lower-case names (`s`),
//! so `busctl` output stays readable.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zbus::zvariant::{DeserializeDict, OwnedValue, SerializeDict, Type, Value};

/// A name that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNameError {
    pub what: &'static str,
    pub given: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for ParseNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}'; use one of: {}",
            self.what,
            self.given,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for ParseNameError {}

/// Declares a string-valued wire enum with `as_str`, `FromStr` and `Display`.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Type)]
        #[zvariant(signature = "s")]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = ParseNameError;

            fn from_str(given: &str) -> Result<Self, Self::Err> {
                match given {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseNameError { what: $what, given: given.to_owned(), expected: Self::NAMES }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a backup file holds.
    BackupKind, "backup kind" {
        Database = "database",
        Ignition = "ignition",
    }
);

wire_enum!(
    /// How a backup's payload is compressed; the file name says which
    /// (`.sql.gz.enc`, `.sql.zst.enc`).
    Compression, "compression" {
        /// A standard gzip stream (possibly several members): `gunzip`.
        Gzip = "gzip",
        /// A standard zstd stream: `zstd -d`.
        Zstd = "zstd",
    }
);

impl Compression {
    /// What the standard tool's files end in: `.gz`, `.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

/// The name ending of a backup file: `.sql.gz.enc`, `.tar.zst.enc`...
pub fn backup_suffix(kind: BackupKind, compression: Compression) -> &'static str {
    match (kind, compression) {
        (BackupKind::Database, Compression::Gzip) => ".sql.gz.enc",
        (BackupKind::Database, Compression::Zstd) => ".sql.zst.enc",
        (BackupKind::Ignition, Compression::Gzip) => ".tar.gz.enc",
        (BackupKind::Ignition, Compression::Zstd) => ".tar.zst.enc",
    }
}

/// What a backup file name says it holds, from its ending; None for a name
/// that is not a backup's.
pub fn backup_name_kind(name: &str) -> Option<(BackupKind, Compression)> {
    BackupKind::ALL.iter().find_map(|&kind| {
        Compression::ALL
            .iter()
            .find(|&&compression| name.ends_with(backup_suffix(kind, compression)))
            .map(|&compression| (kind, compression))
    })
}

wire_enum!(
    /// What `Backup` is asked to save.
    BackupTarget, "backup target" {
        Database = "database",
        Ignition = "ignition",
        /// Both, with one shared timestamp: one restore point.
        All = "all",
    }
);

impl BackupTarget {
    pub fn kinds(self) -> &'static [BackupKind] {
        match self {
            BackupTarget::Database => &[BackupKind::Database],
            BackupTarget::Ignition => &[BackupKind::Ignition],
            BackupTarget::All => &[BackupKind::Database, BackupKind::Ignition],
        }
    }
}

wire_enum!(
    /// Lifecycle of a job object.
    JobState, "job state" {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Stopped on request (`Cancel`), with what it changed put back.
        Cancelled = "cancelled",
    }
);

wire_enum!(
    /// What a job does.
    JobOperation, "job operation" {
        Backup = "backup",
        Verify = "verify",
        Restore = "restore",
        TestRestore = "test-restore",
        Prune = "prune",
        Rollback = "rollback",
        DropPrevious = "drop-previous",
        PitrEnable = "pitr-enable",
        PitrDisable = "pitr-disable",
        PitrSync = "pitr-sync",
        PitrBaseBackup = "pitr-base-backup",
        /// Copies what is missing to the off-site targets.
        OffsiteSync = "offsite-sync",
        /// Brings the old stack's backup files into the backup folder.
        Import = "import",
    }
);

impl JobOperation {
    /// Whether the job changes data; only one such job runs at a time. An
    /// off-site sync only reads the backups here (it has its own lock), so
    /// a long upload never holds up a backup.
    pub fn mutates(self) -> bool {
        // Shipping WAL and base backups only add files, under their own lock.
        !matches!(
            self,
            JobOperation::Verify
                | JobOperation::PitrSync
                | JobOperation::PitrBaseBackup
                | JobOperation::OffsiteSync
        )
    }
}

wire_enum!(
    /// Overall judgement of the agent's protection.
    Health, "health" {
        Healthy = "healthy",
        Degraded = "degraded",
        Unhealthy = "unhealthy",
    }
);

/// One backup file as `ListBackups` reports it. Fields that do not apply to
/// a kind (or are unknown, for a file without metadata) are empty or zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct BackupInfo {
    /// The file name, which is also the id other calls take.
    pub id: String,
    pub kind: BackupKind,
    pub path: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the encrypted file.
    pub sha256: String,
    pub duration_ms: u64,
    /// The timestamp that ties the halves of one `backup all` together.
    pub restore_point: String,
    /// Database name or volume name.
    pub source: String,
    pub server_version: String,
    pub timescaledb_version: String,
    pub schemas: Vec<String>,
    /// `schema.table` to row count at backup time.
    pub table_rows: BTreeMap<String, u64>,
    /// Gateway downtime while the volume was copied.
    pub downtime_ms: u64,
    pub warnings: Vec<String>,
}

/// A database a restore or a rollback replaced and kept (`<name>_previous_*`,
/// `<name>_rolledback_*`), as the `PreviousDatabases` property lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Value, OwnedValue)]
pub struct KeptDatabase {
    /// Its name on the server now.
    pub name: String,
    /// The live name it had, and gets back on rollback.
    pub live_name: String,
    /// RFC 3339: when it stopped being live.
    pub replaced_at: String,
    /// The backup restored in its place ("" when it was replaced by a rollback).
    pub restored_backup: String,
    /// Size on the server when last measured; 0 when not known.
    pub size_bytes: u64,
    /// Whether `RollbackRestore` would make it live again: only the database
    /// the newest restore replaced, and only until it was rolled back once.
    pub rollback_target: bool,
}

/// A job that is still running, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningJob {
    /// Its object path (`mesbakctl wait` takes it, or its number).
    pub job: String,
    pub operation: JobOperation,
    pub target: String,
    pub stage: String,
    /// 0.0 to 1.0, or null when not known.
    pub progress: Option<f64>,
    pub bytes_done: u64,
    pub started_at: String,
}

/// How the `source` of an imported backup starts: `imported:<old file name>`.
pub const IMPORTED_SOURCE_PREFIX: &str = "imported:";

impl BackupInfo {
    /// Whether the backup was imported from the old stack's files (`mesbakctl
    /// import`) rather than made by mesbak: it restores like any other, but
    /// its age says nothing about whether backups run now.
    pub fn is_imported(&self) -> bool {
        self.source.starts_with(IMPORTED_SOURCE_PREFIX)
    }

    /// A backup known only by its id and kind; every other field empty.
    pub fn new(id: impl Into<String>, kind: BackupKind) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            kind,
            path: String::new(),
            created: String::new(),
            size_bytes: 0,
            sha256: String::new(),
            duration_ms: 0,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: Vec::new(),
            table_rows: BTreeMap::new(),
            downtime_ms: 0,
            warnings: Vec::new(),
        }
    }
}

/// What `Prune` would do to one backup, and every reason for it, as
/// `PlanPrune` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct PruneDecision {
    pub id: String,
    pub kind: BackupKind,
    /// RFC 3339, as the backup's metadata says.
    pub created: String,
    pub size_bytes: u64,
    /// false: `Prune` deletes it.
    pub keep: bool,
    /// Why it is kept or deleted, one phrase per rule.
    pub reasons: Vec<String>,
}

/// Options of `Restore`, as `a{sv}`; absent keys take their defaults.
#[derive(Debug, Clone, Default, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zvariant(signature = "a{sv}", rename_all = "kebab-case")]
pub struct RestoreOptions {
    /// Skip the safety backup of the current data. Default: false.
    pub skip_safety_backup: Option<bool>,
}

/// The agent's health, as `mesbakctl status --json` prints it and the HTTP
/// endpoint serves it. Times are RFC 3339 or null when there was none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub status: Health,
    pub last_backup: Option<String>,
    pub last_database_backup: Option<String>,
    pub last_ignition_backup: Option<String>,
    pub last_test_restore: Option<String>,
    /// Whether the last test restore passed; null when there was none.
    pub last_test_restore_ok: Option<bool>,
    /// Why the status is not healthy, one sentence each.
    pub problems: Vec<String>,
    /// Jobs running now.
    #[serde(default)]
    pub running_jobs: Vec<RunningJob>,
    /// Databases kept by restores and rollbacks, until dropped.
    #[serde(default)]
    pub previous_databases: Vec<KeptDatabase>,
    /// One entry per `[[offsite]]` target, in configuration order.
    #[serde(default)]
    pub offsite: Vec<OffsiteReport>,
}

/// One off-site target as `status --json` and the HTTP endpoint show it.
/// Times are RFC 3339 or null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsiteReport {
    pub name: String,
    /// `s3://...`, `az://...` or the path, as configured.
    pub url: String,
    /// This target's own judgement.
    pub status: Health,
    /// The newest backup verified there, and when it was made.
    pub newest_copy: Option<String>,
    pub newest_copy_created: Option<String>,
    /// Good local backups not (yet) verified there.
    pub queue_length: u64,
    /// The last failed copy that still waits for its retry.
    pub last_error: Option<String>,
    pub last_error_time: Option<String>,
    /// When the last copy was verified there.
    pub last_success: Option<String>,
}

/// [`OffsiteReport`] on the bus (`Offsite` property): "" stands for null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type, Value, OwnedValue)]
pub struct OffsiteStatus {
    pub name: String,
    pub url: String,
    /// A [`Health`] name.
    pub status: String,
    pub newest_copy: String,
    pub newest_copy_created: String,
    pub queue_length: u64,
    pub last_error: String,
    pub last_error_time: String,
    pub last_success: String,
}

impl From<&OffsiteReport> for OffsiteStatus {
    fn from(report: &OffsiteReport) -> OffsiteStatus {
        OffsiteStatus {
            name: report.name.clone(),
            url: report.url.clone(),
            status: report.status.to_string(),
            newest_copy: wire_time(&report.newest_copy),
            newest_copy_created: wire_time(&report.newest_copy_created),
            queue_length: report.queue_length,
            last_error: wire_time(&report.last_error),
            last_error_time: wire_time(&report.last_error_time),
            last_success: wire_time(&report.last_success),
        }
    }
}

impl From<OffsiteStatus> for OffsiteReport {
    fn from(status: OffsiteStatus) -> OffsiteReport {
        OffsiteReport {
            name: status.name,
            url: status.url,
            status: status.status.parse().unwrap_or(Health::Unhealthy),
            newest_copy: time_from_wire(status.newest_copy),
            newest_copy_created: time_from_wire(status.newest_copy_created),
            queue_length: status.queue_length,
            last_error: time_from_wire(status.last_error),
            last_error_time: time_from_wire(status.last_error_time),
            last_success: time_from_wire(status.last_success),
        }
    }
}

/// One physical base backup of point-in-time recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct PitrBase {
    pub id: String,
    /// RFC 3339: when it started and finished.
    pub started: String,
    pub finished: String,
    /// The WAL segment it starts in.
    pub start_wal: String,
    pub size_bytes: u64,
}

/// Point-in-time recovery as `PitrStatus` reports it. Times are RFC 3339 or
/// "" (D-Bus has no null; `mesbakctl pitr status --json` prints null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct PitrStatus {
    pub enabled: bool,
    pub enabled_at: String,
    /// Where the server archives (inside its data volume).
    pub archive_directory: String,
    /// Oldest first.
    pub base_backups: Vec<PitrBase>,
    /// The newest shipped segment and when the server archived it.
    pub newest_wal: String,
    pub newest_wal_time: String,
    /// The restorable window: any time from `window_from` to `window_to`.
    pub window_from: String,
    pub window_to: String,
    /// Segments missing from the chain: times past one are reachable only
    /// from a base backup taken after it.
    pub gaps: Vec<String>,
    /// WAL files waiting in the server's archive folder at the last round.
    pub waiting: u32,
    pub wal_files: u64,
    /// Bytes of base backups and WAL in the backup folder.
    pub bytes: u64,
    pub last_shipped_at: String,
    /// Why the last shipping round failed; "" when it did not.
    pub last_error: String,
}

/// D-Bus has no null: an empty string stands for "never".
pub fn wire_time(time: &Option<String>) -> String {
    time.clone().unwrap_or_default()
}

/// The inverse of [`wire_time`].
pub fn time_from_wire(time: String) -> Option<String> {
    (!time.is_empty()).then_some(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_and_print_their_wire_names() {
        for kind in BackupKind::ALL {
            assert_eq!(kind.as_str().parse::<BackupKind>().unwrap(), *kind);
        }
        assert_eq!("all".parse::<BackupTarget>().unwrap().kinds().len(), 2);
        let err = "everything".parse::<BackupTarget>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backup target 'everything'; use one of: database, ignition, all"
        );
        assert_eq!(
            serde_json::to_string(&JobOperation::TestRestore).unwrap(),
            "\"test-restore\""
        );
    }

    #[test]
    fn backup_names_say_kind_and_compression() {
        for &kind in BackupKind::ALL {
            for &compression in Compression::ALL {
                let name = format!("mes_2026-01-02_030405{}", backup_suffix(kind, compression));
                assert_eq!(backup_name_kind(&name), Some((kind, compression)));
            }
        }
        for name in ["mes.sql.gz", "mes.sql.enc", "mes.sql.bz2.enc", "x.json"] {
            assert_eq!(backup_name_kind(name), None, "{name}");
        }
    }

    #[test]
    fn signatures_are_stable() {
        assert_eq!(BackupKind::SIGNATURE.to_string(), "s");
        assert_eq!(RestoreOptions::SIGNATURE.to_string(), "a{sv}");
        assert_eq!(BackupInfo::SIGNATURE.to_string(), "(sssststssssasa{st}tas)");
        assert_eq!(
            PitrStatus::SIGNATURE.to_string(),
            "(bssa(sssst)ssssasuttss)"
        );
        assert_eq!(KeptDatabase::SIGNATURE.to_string(), "(sssstb)");
        assert_eq!(OffsiteStatus::SIGNATURE.to_string(), "(ssssstsss)");
        assert_eq!(PruneDecision::SIGNATURE.to_string(), "(ssstbas)");
    }
}
