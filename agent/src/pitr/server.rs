//! The database server's side of PITR: continuous archiving with
//! PostgreSQL's own `basic_archive` module into a folder inside the data
//! volume (no change to the stack's compose file), `archive_timeout` so a
//! segment is completed at least every `ship_interval_secs`. Turning it on
//! or off changes `postgresql.auto.conf` (ALTER SYSTEM) and needs one
//! restart of the database container.

use std::time::Duration;

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use crate::postgres::{MAINTENANCE_DB, Server, Session, quote_literal};
use crate::process::Runner;

/// How long the server's first archived segment may take after enabling.
const ARCHIVE_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// What the agent knows of the server's archiving once enabled (kept in the
/// agent's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archiving {
    pub enabled_at: String,
    pub data_directory: String,
    /// Absolute, inside the data directory (and so inside the data volume).
    pub archive_directory: String,
    pub wal_segment_size: u64,
    pub timeline: u32,
}

impl Archiving {
    /// The archive folder's path inside the data directory (the name the
    /// data directory's tar stream gives it).
    pub fn archive_folder(&self) -> &str {
        // Outside the data directory (never, as `pitr enable` sets it) it is
        // not in the stream at all: the absolute path matches no entry.
        self.archive_directory
            .strip_prefix(self.data_directory.trim_end_matches('/'))
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(&self.archive_directory)
    }
}

/// The server's settings that archiving touches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    pub data_directory: String,
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_library: String,
    pub archive_command: String,
    pub archive_directory: Option<String>,
    pub wal_segment_size: u64,
    pub timeline: u32,
    pub server_version_num: u32,
}

pub async fn settings(server: &Server) -> Result<Settings, Error> {
    server
        .query_value(
            MAINTENANCE_DB,
            "SELECT pg_catalog.json_build_object(\
               'data_directory', pg_catalog.current_setting('data_directory'), \
               'wal_level', pg_catalog.current_setting('wal_level'), \
               'archive_mode', pg_catalog.current_setting('archive_mode'), \
               'archive_library', pg_catalog.current_setting('archive_library', true), \
               'archive_command', pg_catalog.current_setting('archive_command'), \
               'archive_directory', pg_catalog.current_setting('basic_archive.archive_directory', true), \
               'wal_segment_size', (SELECT setting::bigint * 1 FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'), \
               'timeline', (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()), \
               'server_version_num', pg_catalog.current_setting('server_version_num')::int)",
        )
        .await
}

/// What enabling will change, in words, for the confirmation and the job.
pub fn describe_changes(
    settings: &Settings,
    archive_directory: &str,
    interval: u32,
) -> Vec<String> {
    let mut changes = Vec::new();
    if settings.wal_level == "minimal" {
        changes.push("wal_level = 'replica' (was 'minimal')".to_owned());
    }
    changes.push(format!(
        "archive_mode = 'on' (was '{}')",
        settings.archive_mode
    ));
    changes.push("archive_library = 'basic_archive'".to_owned());
    changes.push(format!(
        "basic_archive.archive_directory = '{archive_directory}'"
    ));
    changes.push(format!("archive_timeout = {interval} (seconds)"));
    changes
}

/// Refuses what the agent must not or cannot take over.
pub fn check_enable(
    settings: &Settings,
    runner: &Runner,
    archive_directory: &str,
) -> Result<(), Error> {
    if matches!(runner, Runner::Host) {
        return Err(Error::Config(
            "point-in-time recovery needs the database in a container (database.container): the agent restarts it once and reads its archive through Docker".into(),
        ));
    }
    if settings.server_version_num < 150000 {
        return Err(Error::Database(format!(
            "point-in-time recovery needs PostgreSQL 15 or newer (its basic_archive module); this server is {}",
            settings.server_version_num
        )));
    }
    let ours = settings.archive_library == "basic_archive"
        && settings.archive_directory.as_deref() == Some(archive_directory);
    let archiving = settings.archive_mode != "off"
        && (!settings.archive_library.is_empty() || !settings.archive_command.is_empty());
    if archiving && !ours {
        return Err(Error::Failed(format!(
            "the database server already archives its WAL ({}); mesbak will not replace another archiver: turn it off first, or keep using it",
            if settings.archive_library.is_empty() {
                format!("archive_command = '{}'", settings.archive_command)
            } else {
                format!("archive_library = '{}'", settings.archive_library)
            }
        )));
    }
    Ok(())
}

/// Turns archiving on: the folder, the settings, one restart, then a check
/// that a segment really gets archived. On failure the settings are reset
/// and the server restarted again, so it is as it was.
pub async fn enable(
    session: &mut Session,
    interval: u32,
    archive_directory: &str,
    container: &str,
) -> Result<Settings, Error> {
    let server = session.server.clone();
    // The module must load on this server before anything is changed.
    server
        .execute(MAINTENANCE_DB, "LOAD 'basic_archive';\n")
        .await
        .map_err(|err| {
            Error::Database(format!(
                "the database server cannot load PostgreSQL's basic_archive module ({}); nothing was changed",
                err.message()
            ))
        })?;
    make_archive_directory(&server, archive_directory).await?;
    // The module loaded in the same session: PostgreSQL 15 refuses to set
    // the parameter of a module it has not loaded.
    let statements = format!(
        "LOAD 'basic_archive';\n\
         ALTER SYSTEM SET archive_mode = 'on';\n\
         ALTER SYSTEM SET archive_library = 'basic_archive';\n\
         ALTER SYSTEM SET basic_archive.archive_directory = {};\n\
         ALTER SYSTEM SET archive_timeout = {interval};\n\
         DO $mesbak$ BEGIN IF pg_catalog.current_setting('wal_level') = 'minimal' THEN \
           EXECUTE 'ALTER SYSTEM SET wal_level = ''replica'''; END IF; END $mesbak$;\n",
        quote_literal(archive_directory)
    );
    server.execute(MAINTENANCE_DB, &statements).await?;
    let result = async {
        restart(session, container).await?;
        let now = settings(&server).await?;
        if now.archive_mode != "on" || now.archive_library != "basic_archive" {
            return Err(Error::Database(format!(
                "after the restart the server still has archive_mode = '{}' and archive_library = '{}'; a setting elsewhere (the command line?) overrides postgresql.auto.conf",
                now.archive_mode, now.archive_library
            )));
        }
        check_archiving(&server).await?;
        Ok(now)
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(error = %err.message(), "archiving did not work; putting the server's settings back");
        let _ = server.execute(MAINTENANCE_DB, RESET).await;
        let _ = restart(session, container).await;
        return Err(Error::from_kind(
            err.kind(),
            format!(
                "{}; the server's settings were put back as they were",
                err.message()
            ),
        ));
    }
    result
}

const RESET: &str = "LOAD 'basic_archive';\n\
     ALTER SYSTEM RESET archive_mode;\n\
     ALTER SYSTEM RESET archive_library;\n\
     ALTER SYSTEM RESET basic_archive.archive_directory;\n\
     ALTER SYSTEM RESET archive_timeout;\n";

/// Turns archiving off again (one restart); `wal_level` stays.
pub async fn disable(session: &mut Session, container: &str) -> Result<(), Error> {
    session.server.execute(MAINTENANCE_DB, RESET).await?;
    restart(session, container).await
}

/// Stops and starts the database container (journaled: a crash between the
/// two starts it again) and waits until the server answers.
async fn restart(session: &mut Session, container: &str) -> Result<(), Error> {
    if let Some(touched) = session.touched() {
        touched.ensure_stopped(container, 60).await?;
        touched.restore_one(container).await?;
    }
    session.server.wait_ready(Duration::from_secs(120)).await
}

/// Creates the archive folder inside the data directory, owned by the
/// server's user, 0700.
async fn make_archive_directory(server: &Server, directory: &str) -> Result<(), Error> {
    let Runner::Container { docker, container } = &server.runner else {
        return Ok(());
    };
    let argv = [
        "sh".to_owned(),
        "-c".to_owned(),
        "owner=$(stat -c %u:%g \"$(dirname \"$1\")\") && mkdir -p -m 0700 \"$1\" && chown \"$owner\" \"$1\" && chmod 0700 \"$1\"".to_owned(),
        "mesbak".to_owned(),
        directory.to_owned(),
    ];
    docker
        .exec_output(container, &argv, |detail| {
            Error::Docker(format!(
                "cannot create the WAL archive folder {directory} in container '{container}': {detail}; nothing was changed"
            ))
        })
        .await?;
    Ok(())
}

/// Switches to a new segment and waits until the server archived it
/// without failures.
async fn check_archiving(server: &Server) -> Result<(), Error> {
    switch_and_wait(server, ARCHIVE_CHECK_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|err| Error::Database(format!("archiving does not work: {}", err.message())))
}

/// Forces the current segment out and waits (up to `timeout`) until the
/// server archived it. Returns its name.
pub async fn switch_and_wait(server: &Server, timeout: Duration) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Archiver {
        archived: Option<String>,
        failed: i64,
        last_failed: Option<String>,
        /// Whether the switched segment is archived (absent before the switch).
        done: Option<bool>,
    }
    const ARCHIVER: &str = "SELECT pg_catalog.json_build_object('archived', last_archived_wal, \
         'failed', failed_count, 'last_failed', last_failed_wal) FROM pg_catalog.pg_stat_archiver";
    let before: Archiver = server.query_value(MAINTENANCE_DB, ARCHIVER).await?;
    // pg_switch_wal returns the end of the segment it completed (a segment
    // boundary), or, when nothing was written since the last switch, the
    // position just after the new segment's page header: then the segment
    // to wait for is the previous one (archived already).
    let switched: String = server
        .query_value(
            MAINTENANCE_DB,
            "SELECT pg_catalog.pg_walfile_name(CASE \
               WHEN pg_catalog.pg_wal_lsn_diff(s.l, '0/0') % seg.size <= 64 THEN s.l - 64 \
               ELSE s.l END) \
             FROM (SELECT pg_catalog.pg_switch_wal() AS l) AS s, \
                  (SELECT setting::numeric AS size FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size') AS seg",
        )
        .await?;
    if switched.len() != 24 || !switched.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Database(format!(
            "the server named its switched WAL segment '{switched}', which is not a segment name"
        )));
    }
    let archiver = archived_query(&switched);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now: Archiver = server.query_value(MAINTENANCE_DB, &archiver).await?;
        if now.done == Some(true) {
            return Ok(switched);
        }
        if now.failed > before.failed {
            return Err(Error::Database(format!(
                "the server failed to archive WAL segment {}; its log says why (`docker logs`)",
                now.last_failed.unwrap_or_else(|| switched.clone())
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Database(format!(
                "the server did not archive segment {switched} within {} s (last archived: {}); check its log (`docker logs`)",
                timeout.as_secs(),
                now.archived.unwrap_or_else(|| "none".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The archiver's counters and whether `segment` (a checked segment name)
/// is archived. `last_archived_wal` cannot say: it names the file archived
/// last, and a base backup's `.backup` file, named after the segment the
/// backup started in, is archived after the later segment its end
/// switched out whenever a segment was switched during the backup. So the
/// status folder answers: archived is a `.done`, or neither a `.ready` nor
/// the segment itself left in `pg_wal` (removed or recycled after its
/// archiving, with its status file).
fn archived_query(segment: &str) -> String {
    format!(
        "SELECT pg_catalog.json_build_object('archived', a.last_archived_wal, \
           'failed', a.failed_count, 'last_failed', a.last_failed_wal, \
           'done', EXISTS (SELECT 1 FROM pg_catalog.pg_ls_archive_statusdir() WHERE name = '{segment}.done') \
              OR (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ls_archive_statusdir() WHERE name = '{segment}.ready') \
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ls_waldir() WHERE name = '{segment}'))) \
         FROM pg_catalog.pg_stat_archiver AS a"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: &str, library: &str, command: &str) -> Settings {
        Settings {
            data_directory: "/var/lib/postgresql/data".into(),
            wal_level: "replica".into(),
            archive_mode: mode.into(),
            archive_library: library.into(),
            archive_command: command.into(),
            archive_directory: None,
            wal_segment_size: 16 << 20,
            timeline: 1,
            server_version_num: 170002,
        }
    }

    #[test]
    fn the_archive_folder_is_named_as_in_the_data_directory() {
        let archiving = |data: &str, archive: &str| Archiving {
            enabled_at: String::new(),
            data_directory: data.into(),
            archive_directory: archive.into(),
            wal_segment_size: 16 << 20,
            timeline: 1,
        };
        let folder = |data, archive| archiving(data, archive).archive_folder().to_owned();
        assert_eq!(
            folder(
                "/var/lib/postgresql/data",
                "/var/lib/postgresql/data/mesbak_wal"
            ),
            "mesbak_wal"
        );
        assert_eq!(folder("/pgdata/", "/pgdata/mesbak_wal"), "mesbak_wal");
        assert_eq!(
            folder("/pgdata", "/pgdata2/mesbak_wal"),
            "/pgdata2/mesbak_wal"
        );
    }

    #[test]
    fn another_archiver_is_never_replaced() {
        let docker_runner = Runner::Host;
        assert!(
            check_enable(&settings("off", "", ""), &docker_runner, "/d").is_err(),
            "host mode"
        );
        let err =
            check_enable(&settings("on", "", "cp %p /mnt/%f"), &Runner::Host, "/d").unwrap_err();
        assert!(
            err.message()
                .contains("point-in-time recovery needs the database in a container")
        );
        let changes = describe_changes(
            &settings("off", "", ""),
            "/var/lib/postgresql/data/mesbak_wal",
            60,
        );
        assert!(
            changes
                .iter()
                .any(|c| c.contains("archive_mode = 'on' (was 'off')"))
        );
        assert!(changes.iter().any(|c| c.contains("archive_timeout = 60")));
    }
}
