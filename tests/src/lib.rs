//! Shared harness for mesbak's integration tests: real `dbus-daemon`,
//! PostgreSQL in Docker containers, and the agent and client under test.
//!
//! ```no_run
//! use mesbak_tests::*;
//!
//! # async fn example() {
//! let bus = Bus::start();
//! let pg = Postgres::start_with_fixture();
//! let before = pg.fingerprint("mes");
//! let config = AgentConfig::for_postgres(&pg);
//! let agent = Agent::spawn(&bus, &config).await;
//! let job = agent.proxy().await.backup("database").await.unwrap();
//! let (ok, message) = wait_job(agent.connection(), &job).await;
//! assert!(ok, "{message}");
//! let out = mesbakctl_as(&bus, OPERATOR).args(["list", "--json"]).output().unwrap();
//! assert!(out.status.success());
//! pg.fingerprint("mes").assert_same(&before, "a backup changes nothing");
//! # }
//! ```
//!
//! Every service must be there: a missing `dockerd`, image, `dbus-daemon` or
//! test user is a panic that says how to get it (`dev/test` sets all up),
//! never a skipped test. Everything a test creates has a unique name, port
//! and folder, so tests run in parallel; `Drop` removes it (and prints the
//! relevant logs when the test is failing).

mod agent;
mod bus;
mod engine;
mod fake;
mod fingerprint;
pub mod measure;
mod offsite;
mod postgres;
mod receiver;
mod small_disk;
pub mod util;
mod volume;
mod writer;

pub use agent::{
    Agent, AgentConfig, DEFAULT_JOB_TIMEOUT, JobOutcome, STARTUP_TIMEOUT, agent_proxy, binary,
    job_proxy, libfaketime, mesbakctl, mesbakctl_as, mesbakctl_output, pause_marker,
    wait_for_progress, wait_job, wait_job_outcome, wait_paused, write_private,
};
pub use bus::{Bus, OPERATOR, OUTSIDER, as_user, policy_file};
pub use engine::{Engine, PrivateEngine};
pub use fake::{write_backup, write_sidecar};
pub use fingerprint::{Fingerprint, Role, SequenceState, TableData};
pub use offsite::{
    AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Rclone, S3Server, add_offsite, backup_folder_names,
};
pub use postgres::{
    ADMIN, DEFAULT_DB, Disk, Flavor, LABEL, Postgres, Reach, fixture_path, quote_ident,
    quote_literal,
};
pub use receiver::{HttpReceiver, Received, SmtpServer};
pub use small_disk::SmallDisk;
pub use volume::{BUSYBOX, Gateway, IGNITION_DATA, Volume, VolumeFingerprint};
pub use writer::Writer;

/// Runs each database test on both servers: PostgreSQL 15 and the plant's
/// TimescaleDB on PostgreSQL 17. Write the test as
/// `async fn name(flavor: Flavor)` and list it:
///
/// ```text
/// on_both_servers!(backup_restores_identically, restore_survives_a_kill);
/// ```
///
/// which makes `postgres15::name` and `timescaledb::name` tests.
#[macro_export]
macro_rules! on_both_servers {
    ($($name:ident),+ $(,)?) => {
        mod postgres15 {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::Flavor::Postgres15).await
                }
            )+
        }
        mod timescaledb {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::Flavor::TimescaleDb).await
                }
            )+
        }
    };
}
