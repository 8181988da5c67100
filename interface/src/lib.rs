//! The `org.mesbak.Agent1` D-Bus contract, defined once for the agent, the
//! client and the tests: bus names, the named errors, the wire types, typed
//! proxies and the introspection XML the running agent is held to.

mod error;
mod proxy;
mod types;

pub use error::Error;
pub use proxy::{AgentProxy, JobProxy};
pub use types::{
    BackupInfo, BackupKind, BackupTarget, Compression, Health, IMPORTED_SOURCE_PREFIX,
    JobOperation, JobState, KeptDatabase, OffsiteReport, OffsiteStatus, ParseNameError, PitrBase,
    PitrStatus, PruneDecision, RestoreOptions, RunningJob, StatusReport, backup_name_kind,
    backup_suffix, time_from_wire, wire_time,
};

/// Well-known bus name the agent owns on the system bus.
pub const BUS_NAME: &str = "org.mesbak.Agent1";
/// Object path of the agent's manager object.
pub const MANAGER_PATH: &str = "/org/mesbak/Agent1";
/// Interface of the manager object.
pub const MANAGER_INTERFACE: &str = "org.mesbak.Agent1";
/// Interface of each job object.
pub const JOB_INTERFACE: &str = "org.mesbak.Agent1.Job";
/// Job objects live below this path, as `<JOBS_PATH>/<number>`.
pub const JOBS_PATH: &str = "/org/mesbak/Agent1/jobs";
/// Prefix of every error name the agent returns.
pub const ERROR_PREFIX: &str = "org.mesbak.Agent1.Error";
/// Members of this group may talk to the agent (bus policy); destructive
/// calls additionally need uid 0.
pub const CLIENT_GROUP: &str = "mesbak";
/// The most backups one `ListBackupsPage` call returns; a larger count is
/// clamped to it (ask again from where the page ended).
pub const MAX_PAGE: u32 = 1000;
/// Which positions of a listing of `total` items the page from `first` of
/// at most `count` (clamped to [`MAX_PAGE`]) covers: empty when `first`
/// is at or past the end, or `count` is 0.
pub fn page_range(total: usize, first: u32, count: u32) -> std::ops::Range<usize> {
    let start = usize::try_from(first).unwrap_or(usize::MAX).min(total);
    let count = usize::try_from(count.min(MAX_PAGE)).unwrap_or(usize::MAX);
    start..start.saturating_add(count).min(total)
}

/// The introspection data of the manager and job objects, as checked in.
pub const INTROSPECTION_XML: &str = include_str!("../org.mesbak.Agent1.xml");

/// Path of job number `id`.
pub fn job_path(id: u64) -> String {
    format!("{JOBS_PATH}/{id}")
}

/// The number of a job from its path or its number as typed.
pub fn job_number(given: &str) -> Option<u64> {
    given
        .strip_prefix(JOBS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(given)
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_slices_of_the_listing() {
        assert_eq!(page_range(3000, 0, 50), 0..50);
        assert_eq!(
            page_range(3000, 2990, 50),
            2990..3000,
            "the last page is short"
        );
        assert_eq!(page_range(3, 0, 50), 0..3);
        assert_eq!(page_range(3, 3, 50), 3..3, "first at the end: empty");
        assert_eq!(
            page_range(3, u32::MAX, u32::MAX),
            3..3,
            "first past the end: empty"
        );
        assert_eq!(page_range(3, 1, 0), 1..1, "count 0: only the total");
        assert_eq!(page_range(0, 0, 50), 0..0);
        assert_eq!(
            page_range(5000, 10, u32::MAX),
            10..10 + MAX_PAGE as usize,
            "an absurd count is clamped"
        );
    }
}
