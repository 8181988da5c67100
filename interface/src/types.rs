//! Types that cross the bus. Enums travel as their lower-case names (`s`),
//! so `busctl` output stays readable.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zbus::zvariant::{DeserializeDict, SerializeDict, Type};

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
    }
);

impl JobOperation {
    /// Whether the job changes data; only one such job runs at a time.
    pub fn mutates(self) -> bool {
        // Shipping WAL and base backups only add files, under their own lock.
        !matches!(
            self,
            JobOperation::Verify | JobOperation::PitrSync | JobOperation::PitrBaseBackup
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
    fn signatures_are_stable() {
        assert_eq!(BackupKind::SIGNATURE.to_string(), "s");
        assert_eq!(RestoreOptions::SIGNATURE.to_string(), "a{sv}");
        assert_eq!(BackupInfo::SIGNATURE.to_string(), "(sssststssssasa{st}tas)");
        assert_eq!(
            PitrStatus::SIGNATURE.to_string(),
            "(bssa(sssst)ssssasuttss)"
        );
        assert_eq!(PruneDecision::SIGNATURE.to_string(), "(ssstbas)");
    }
}
