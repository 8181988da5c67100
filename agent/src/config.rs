//! `/etc/mesbak/mesbak.toml` and the seed stack's environment overrides.
//! Every key has a default so an empty file works on the standard stack; a
//! bad file is refused with the file and the key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesbak_interface::Compression;
use serde::Deserialize;
use thiserror::Error;

use crate::pipeline::Codec;

pub const DEFAULT_PATH: &str = "/etc/mesbak/mesbak.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "cannot read configuration file {path}: {source}; create it (an empty file uses the defaults) or pass --config"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A syntax or type error at a place in the file.
    #[error("invalid configuration in {path} line {line}: {what}")]
    At {
        path: PathBuf,
        line: usize,
        /// "key `a.b`: ..." or the syntax problem.
        what: String,
    },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub backup_dir: PathBuf,
    /// Agent state: the recovery journal and the last results.
    pub state_dir: PathBuf,
    pub database: Database,
    pub ignition: Ignition,
    pub encryption: Encryption,
    pub retention: Retention,
    pub restore: Restore,
    pub backup: Backup,
    pub health: HealthConfig,
    pub schedule: Schedule,
    pub pitr: Pitr,
    pub notify: Notify,
    /// `[[offsite]]` targets (see `offsite::config`).
    pub offsite: Vec<crate::offsite::config::TargetConfig>,
    #[serde(skip)]
    pub origin: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notify {
    /// Where alerts go (see `notify::Target`).
    pub urls: Vec<String>,
    /// How often the agent judges health, disk and containers for alerts.
    pub check_interval_secs: u32,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            urls: Vec::new(),
            check_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// Container running PostgreSQL; "" means the host's own `pg_dump`.
    pub container: String,
    pub name: String,
    pub user: String,
    pub password_file: PathBuf,
    /// Host or socket folder for the agent's own SQL connection.
    pub host: String,
    pub port: u16,
    /// Schemas every database backup must contain.
    pub schemas: Vec<String>,
    /// The password from `POSTGRES_PASSWORD`; never logged.
    #[serde(skip)]
    pub password_env: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ignition {
    pub volume: String,
    pub stop_containers: Vec<String>,
    /// Image of the never-started helper container; "" = the gateway's own.
    pub helper_image: String,
    pub stop_timeout_secs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encryption {
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Keep every backup made within this many days.
    pub days: u32,
    /// Always keep the newest N good backups of each kind, whatever the
    /// clock says (the newest good one is kept even with 0).
    pub keep_last: u32,
    /// Also keep the newest good backup of each of the last N days, ISO
    /// weeks and months that have one (restic's rules).
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restore {
    pub stop_containers: Vec<String>,
    /// psql sessions that share a restore's table data, indexes and keys
    /// (as pg_restore -j), beside the main one that runs the rest in
    /// order: 0 (the default) = one per core, at most 4; 1 = the whole
    /// load in one session.
    pub load_sessions: u32,
}

impl Restore {
    /// The most sessions a load may use.
    pub const MAX_LOAD_SESSIONS: u32 = 16;

    /// Worker sessions beside a load's main one (which runs what must go
    /// in order): none when the load runs in one session.
    pub fn load_workers(&self) -> usize {
        let sessions = match self.load_sessions {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            n => n as usize,
        };
        if sessions > 1 { sessions } else { 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backup {
    /// `gzip` (the default: `.sql.gz.enc`, `.tar.gz.enc`) or `zstd`
    /// (`.sql.zst.enc`, `.tar.zst.enc`).
    pub compression: Compression,
    /// gzip 1-12, zstd 1-19; unset = the compression's measured default.
    pub compression_level: Option<u32>,
    /// Refuse to start a backup when less than this would stay free.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `host:port` of the HTTP endpoint; "" = off.
    pub listen: String,
    pub max_backup_age_hours: u32,
    pub max_test_restore_age_hours: u32,
    /// An off-site target lacking a backup longer than this is unhealthy.
    pub max_offsite_lag_hours: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// systemd `OnCalendar=` of the backup timer (or a cron line).
    pub backup: String,
    pub test_restore: String,
    /// Where the timers' drop-ins go; "" = the agent leaves the timers alone.
    pub dropin_dir: PathBuf,
}

/// Where a point-in-time recovery's scratch cluster reads the WAL it is fed,
/// inside its data directory.
pub const RESTORE_WAL_FOLDER: &str = "mesbak_restore_wal";

/// The folders of a PostgreSQL (13 to 17) data directory, and the one a
/// point-in-time recovery feeds WAL through: no name for the archive folder.
const DATA_DIRECTORY_FOLDERS: &[&str] = &[
    "base",
    "global",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_logical",
    "pg_multixact",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_twophase",
    "pg_wal",
    "pg_xact",
    RESTORE_WAL_FOLDER,
];

/// Point-in-time recovery: continuous WAL archiving on the database server,
/// shipped by the agent; physical base backups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pitr {
    /// Set by `mesbakctl pitr enable` in the agent's state; `true` here says
    /// the server must be archiving (health complains if it is not).
    pub enabled: bool,
    /// WAL segments are shipped (and the server switches to a new one) at
    /// least this often.
    pub ship_interval_secs: u32,
    /// systemd calendar of the physical base backups.
    pub base_backup: String,
    /// Where the server puts completed segments for the agent to collect,
    /// relative to its data directory (inside the data volume).
    pub archive_dir: String,
}

impl Default for Pitr {
    fn default() -> Self {
        Pitr {
            enabled: false,
            ship_interval_secs: 60,
            base_backup: "Sun *-*-* 01:00:00".into(),
            archive_dir: "mesbak_wal".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backup_dir: "/var/backups/mes".into(),
            state_dir: "/var/lib/mesbak".into(),
            database: Database::default(),
            ignition: Ignition::default(),
            encryption: Encryption::default(),
            retention: Retention::default(),
            restore: Restore::default(),
            backup: Backup::default(),
            health: HealthConfig::default(),
            schedule: Schedule::default(),
            pitr: Pitr::default(),
            notify: Notify::default(),
            offsite: Vec::new(),
            origin: DEFAULT_PATH.into(),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Database {
            container: "mes-database".into(),
            name: "mes".into(),
            user: "admin".into(),
            password_file: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 5432,
            schemas: vec!["mes_core".into(), "mes_audit".into(), "mes_custom".into()],
            password_env: None,
        }
    }
}

impl Default for Ignition {
    fn default() -> Self {
        Ignition {
            volume: "ignition-data".into(),
            stop_containers: vec!["mes-ignition".into()],
            helper_image: String::new(),
            stop_timeout_secs: 30,
        }
    }
}

impl Default for Encryption {
    fn default() -> Self {
        Encryption {
            key_file: "/etc/mesbak/backup.key".into(),
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            days: 30,
            keep_last: 7,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        }
    }
}

impl Default for Restore {
    fn default() -> Self {
        Restore {
            stop_containers: vec!["mes-ignition".into()],
            // The index and key builds after the data are most of a
            // TimescaleDB restore; shared, they take a restore with its
            // safety backup from 1.28x to 1.11x of a bare psql load.
            load_sessions: 0,
        }
    }
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            compression: Compression::Gzip,
            compression_level: None,
            min_free_bytes: 10 << 30,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            listen: "127.0.0.1:8888".into(),
            max_backup_age_hours: 26,
            max_test_restore_age_hours: 192,
            max_offsite_lag_hours: 26,
        }
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            backup: "*-*-* 00:00:00".into(),
            test_restore: "weekly".into(),
            dropin_dir: "/etc/systemd/system".into(),
        }
    }
}

/// A secret from the environment: `Debug` (and so every log line and
/// `--check-config` dump of the configuration) shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"(set, not shown)\"")
    }
}

/// Source of environment variables, so tests can inject them.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Config {
    /// Reads `path`, applies the environment overrides and checks the result.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path, env)
    }

    /// [`Config::load`] for text already read from `path`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &dyn Environment,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::parse(text, path)?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map_or(1, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            })
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|err| ConfigError::At {
            path: path.to_owned(),
            line: line_of(err.span()),
            what: format!(
                "this is not valid TOML ({}); see the commented defaults in /etc/mesbak/mesbak.toml",
                toml_message(&err)
            ),
        })?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            ConfigError::At {
                path: path.to_owned(),
                line: line_of(inner.span()),
                what: format!("key `{key}`: {}", humanize(&toml_message(&inner))),
            }
        })?;
        config.origin = path.to_owned();
        Ok(config)
    }

    /// The seed stack's `.env` names win over the file, so a plant can point
    /// the unit's `EnvironmentFile=` at its existing `.env`.
    fn apply_env(&mut self, env: &dyn Environment) -> Result<(), ConfigError> {
        if let Some(days) = env.var("BACKUP_RETENTION_DAYS") {
            self.retention.days = days.trim().parse().map_err(|_| ConfigError::Env {
                name: "BACKUP_RETENTION_DAYS",
                message: format!("'{days}' is not a whole number of days"),
            })?;
        }
        if let Some(host) = env.var("POSTGRES_HOST") {
            self.database.host = host;
        }
        if let Some(name) = env.var("POSTGRES_DB") {
            self.database.name = name;
        }
        if let Some(user) = env.var("POSTGRES_USER") {
            self.database.user = user;
        }
        self.database.password_env = env.var("POSTGRES_PASSWORD").map(Secret);
        if let Some(schedule) = env.var("SCHEDULE") {
            self.schedule.backup = schedule;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: self.origin.clone(),
            key: key.into(),
            message,
        };
        for (key, path) in [
            ("backup_dir", &self.backup_dir),
            ("state_dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("'{}' must be an absolute path", path.display()),
                ));
            }
        }
        if self.database.name.is_empty() || self.database.name.contains(['/', '\0']) {
            return Err(invalid(
                "database.name",
                format!("'{}' is not a usable database name", self.database.name),
            ));
        }
        if self.database.user.is_empty() {
            return Err(invalid("database.user", "must not be empty".into()));
        }
        for schema in &self.database.schemas {
            if schema.is_empty() {
                return Err(invalid(
                    "database.schemas",
                    "schema names must not be empty".into(),
                ));
            }
        }
        for (key, names) in [
            ("ignition.stop_containers", &self.ignition.stop_containers),
            ("restore.stop_containers", &self.restore.stop_containers),
        ] {
            if let Some(bad) = names.iter().find(|name| !is_docker_name(name)) {
                return Err(invalid(key, format!("'{bad}' is not a container name")));
            }
        }
        if !self.database.container.is_empty() && !is_docker_name(&self.database.container) {
            return Err(invalid(
                "database.container",
                format!("'{}' is not a container name", self.database.container),
            ));
        }
        if !self.ignition.volume.is_empty() && !is_docker_name(&self.ignition.volume) {
            return Err(invalid(
                "ignition.volume",
                format!("'{}' is not a volume name", self.ignition.volume),
            ));
        }
        let levels = Codec::levels(self.backup.compression);
        if let Some(level) = self
            .backup
            .compression_level
            .filter(|l| !levels.contains(l))
        {
            return Err(invalid(
                "backup.compression_level",
                format!(
                    "{level} is out of range for {}; use {} (fastest) to {} (smallest), or leave it out for the default {}",
                    self.backup.compression,
                    levels.start(),
                    levels.end(),
                    Codec::default_level(self.backup.compression)
                ),
            ));
        }
        if self.restore.load_sessions > Restore::MAX_LOAD_SESSIONS {
            return Err(invalid(
                "restore.load_sessions",
                format!(
                    "{} is out of range; use 1 to {} sessions, or 0 for one per core",
                    self.restore.load_sessions,
                    Restore::MAX_LOAD_SESSIONS
                ),
            ));
        }
        if !(10..=3600).contains(&self.pitr.ship_interval_secs) {
            return Err(invalid(
                "pitr.ship_interval_secs",
                format!(
                    "{} is out of range; use 10 to 3600 seconds",
                    self.pitr.ship_interval_secs
                ),
            ));
        }
        let archive_dir = &self.pitr.archive_dir;
        if archive_dir.is_empty()
            || !archive_dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err(invalid(
                "pitr.archive_dir",
                format!("'{archive_dir}' must be a plain folder name like mesbak_wal"),
            ));
        }
        // The folder is inside the data directory: PostgreSQL's own folders,
        // and the one a point-in-time recovery feeds WAL through, are not
        // free (base backups leave the archive folder's files out). Only
        // those names: any other one worked before and must go on loading.
        if DATA_DIRECTORY_FOLDERS.contains(&archive_dir.as_str()) {
            return Err(invalid(
                "pitr.archive_dir",
                format!(
                    "'{archive_dir}' is a folder PostgreSQL or mesbak already uses in the data directory; choose another name like mesbak_wal"
                ),
            ));
        }
        if self.retention.days == 0 {
            return Err(invalid(
                "retention.days",
                "0 would delete every backup but the newest; use at least 1".into(),
            ));
        }
        crate::offsite::config::validate(&self.offsite)
            .map_err(|(key, message)| invalid(&key, message))?;
        if !self.health.listen.is_empty() {
            self.health.listen.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "health.listen",
                    format!(
                        "'{}' is not an address like 127.0.0.1:8888 (use \"\" to turn it off)",
                        self.health.listen
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// How backups are compressed.
    pub fn codec(&self) -> Codec {
        self.codec_for(self.backup.compression)
    }

    /// `compression` at the configured level when it is the configured
    /// compression, else at its default (PITR's files are always gzip).
    pub fn codec_for(&self, compression: Compression) -> Codec {
        let level = self
            .backup
            .compression_level
            .filter(|_| compression == self.backup.compression)
            .unwrap_or_else(|| Codec::default_level(compression));
        Codec { compression, level }
    }

    /// The health endpoint's address, when it is on.
    pub fn health_listen(&self) -> Option<SocketAddr> {
        self.health.listen.parse().ok()
    }

    /// The database password: `POSTGRES_PASSWORD`, else `password_file`.
    pub fn database_password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(password) = &self.database.password_env {
            return Ok(Some(password.0.clone()));
        }
        if self.database.password_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.database.password_file).map_err(|err| {
            ConfigError::Invalid {
                path: self.origin.clone(),
                key: "database.password_file".into(),
                message: format!(
                    "cannot read {}: {err}",
                    self.database.password_file.display()
                ),
            }
        })?;
        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
    }
}

/// Docker's rule for container and volume names.
pub fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// toml's message without the file excerpt it draws.
fn toml_message(err: &toml::de::Error) -> String {
    one_line(err.message())
}

/// serde's wording in a technician's words.
fn humanize(message: &str) -> String {
    let mut text = message.to_owned();
    for (from, to) in [
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number"),
        (
            "expected a sequence",
            "expected a list such as [\"a\", \"b\"]",
        ),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected text in double quotes"),
        ("invalid type: string", "got the text"),
        ("invalid type: integer", "got the number"),
        ("invalid type: boolean", "got"),
        ("invalid value: integer", "got the number"),
        ("unknown field", "unknown key"),
        ("expected one of", "the keys allowed here are"),
    ] {
        text = text.replace(from, to);
    }
    text
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.ends_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|value| value.to_string())
        }
    }

    fn load(text: &str, env: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesbak.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, &FakeEnv(env.iter().copied().collect()))
    }

    #[test]
    fn empty_file_gives_the_standard_stack() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.backup_dir, Path::new("/var/backups/mes"));
        assert_eq!(config.database.container, "mes-database");
        assert_eq!(config.database.name, "mes");
        assert_eq!(config.ignition.volume, "ignition-data");
        assert_eq!(config.retention.days, 30);
        assert_eq!(config.retention.keep_last, 7);
        assert_eq!(config.retention.keep_daily, 0);
        assert_eq!(config.backup.min_free_bytes, 10 << 30);
        assert_eq!(
            config.health_listen(),
            Some("127.0.0.1:8888".parse().unwrap())
        );
    }

    #[test]
    fn seed_stack_env_overrides_the_file() {
        let config = load(
            "[database]\nname = \"other\"\n[retention]\ndays = 3\n",
            &[
                ("POSTGRES_DB", "mes"),
                ("POSTGRES_USER", "plant"),
                ("POSTGRES_PASSWORD", "s3cret"),
                ("BACKUP_RETENTION_DAYS", "14"),
                ("SCHEDULE", "0 2 * * *"),
            ],
        )
        .unwrap();
        assert_eq!(config.database.name, "mes");
        assert_eq!(config.database.user, "plant");
        assert_eq!(
            config.database_password().unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(config.retention.days, 14);
        assert_eq!(config.schedule.backup, "0 2 * * *");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = load("[database]\nport = \"abc\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mesbak.toml line 2"), "{err}");
        assert!(err.contains("`database.port`"), "{err}");
        assert!(err.contains("a whole number from 0 to 65535"), "{err}");
        assert!(!err.contains("u16"), "{err}");

        let err = load("backup_dir = \"/x\"\n[database\nport = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mesbak.toml line 2"), "{err}");
        assert!(!err.contains("(syntax)"), "{err}");

        let err = load("[databse]\nport = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("databse"), "{err}");

        let err = load("backup_dir = \"relative/dir\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`backup_dir`") && err.contains("absolute"),
            "{err}"
        );

        let err = load("[backup]\ncompression_level = 13\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`backup.compression_level`") && err.contains("1 (fastest) to 12"),
            "{err}"
        );
        let err = load(
            "[backup]\ncompression = \"zstd\"\ncompression_level = 20\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`backup.compression_level`") && err.contains("zstd"),
            "{err}"
        );
        let err = load("[backup]\ncompression = \"xz\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`backup.compression`") && err.contains("zstd"),
            "{err}"
        );

        let err = load("[restore]\nload_sessions = 17\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`restore.load_sessions`") && err.contains("1 to 16"),
            "{err}"
        );
        let sessions = |n: u32| {
            let restore = Restore {
                load_sessions: n,
                ..Restore::default()
            };
            restore.load_workers()
        };
        assert_eq!((sessions(1), sessions(2), sessions(16)), (0, 2, 16));
        // One per core, at most 4, by default; a one-core machine loads in
        // one session.
        assert!(matches!(sessions(0), 0 | 2..=4), "{}", sessions(0));
        assert_eq!(Restore::default().load_workers(), sessions(0));

        for folder in ["../x", "pg_wal", "pg_xact", "base", "global"] {
            let err = load(&format!("[pitr]\narchive_dir = \"{folder}\"\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`pitr.archive_dir`") && err.contains("mesbak_wal"),
                "{err}"
            );
        }
        assert_eq!(
            load("[pitr]\narchive_dir = \"pg_archive\"\n", &[])
                .unwrap()
                .pitr
                .archive_dir,
            "pg_archive"
        );

        let err = load("[health]\nlisten = \"everywhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`health.listen`"), "{err}");

        let err = load("[restore]\nstop_containers = [\"../x\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`restore.stop_containers`"), "{err}");

        let err = load("backup_dir = [", &[]).unwrap_err().to_string();
        assert!(err.contains("mesbak.toml") && !err.contains('\n'), "{err}");

        let err = load("", &[("BACKUP_RETENTION_DAYS", "thirty")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BACKUP_RETENTION_DAYS"), "{err}");
    }

    #[test]
    fn offsite_targets_are_read_and_checked() {
        let config = load(
            "[[offsite]]\nname = \"s3\"\nurl = \"s3://mes-backups/plant-7\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nbandwidth_limit = \"4 MiB/s\"\n\n[[offsite]]\nname = \"nas\"\nurl = \"/mnt/nas/mes\"\nrequire_mount = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.offsite.len(), 2);
        assert_eq!(config.offsite[0].bandwidth_limit, Some(4 << 20));
        assert_eq!(config.offsite[0].region, "us-east-1");
        assert!(config.offsite[1].require_mount);
        assert_eq!(config.health.max_offsite_lag_hours, 26);

        let err = load("[[offsite]]\nname = \"x\"\nurl = \"ftp://host/x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`offsite[0].url`") && err.contains("s3://"),
            "{err}"
        );
        let err = load(
            "[[offsite]]\nname = \"x\"\nurl = \"s3://bucket/x\"\nbandwidth_limit = \"fast\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bandwidth_limit"), "{err}");
        let err = load(
            "[[offsite]]\nname = \"x\"\nurl = \"/srv/x\"\npassword = 1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn missing_file_says_what_to_do() {
        let err = Config::load(Path::new("/nonexistent/mesbak.toml"), &ProcessEnv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/mesbak.toml") && err.contains("--config"),
            "{err}"
        );
    }
}
