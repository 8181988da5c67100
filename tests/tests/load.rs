//! A restore's load shared by several psql sessions (`restore.load_sessions`):
//! tables cut into pieces across sessions, indexes and keys built side by
//! side, every row and key back as in one session; a session that stops
//! at an error, in the data or while building a key, stops the load with
//! psql's words and leaves the live database as it was.

use std::fs;
use std::process::Command;

use mesbak_interface::RestoreOptions;
use mesbak_tests::util::output_text;
use mesbak_tests::*;

async fn restore(agent: &Agent, id: &str) -> JobOutcome {
    let job = agent
        .proxy()
        .await
        .restore(id, RestoreOptions::default())
        .await
        .unwrap();
    wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await
}

/// Databases a restore made and did not drop.
fn restore_databases(pg: &Postgres) -> Vec<String> {
    pg.databases()
        .into_iter()
        .filter(|name| name.contains("_restore_"))
        .collect()
}

/// With three sessions a database with tables bigger than a piece comes
/// back exactly, its biggest tables loaded in several pieces; with one
/// session it comes back the same way.
async fn sessions_share_the_load_and_every_row_and_key_comes_back(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    // Tables (partitions, chunks) of 2.5 MiB or more: over a piece each.
    pg.load_bulk("mes", 16);
    // What a restore computes again from the rows.
    pg.psql("mes", "REFRESH MATERIALIZED VIEW mes_core.mv_daily_output;");
    let mut config = AgentConfig::for_postgres(&pg).with("restore.load_sessions", 3);
    let agent = Agent::spawn(&bus, &config).await;
    let backup_id = agent.backup_database().await;
    let original = pg.fingerprint("mes");

    pg.psql(
        "mes",
        "DELETE FROM mes_audit.change_log WHERE true; CREATE TABLE mes_custom.added_later (id int);",
    );
    let outcome = restore(&agent, &backup_id).await;
    assert!(outcome.success, "{}", outcome.message);
    pg.fingerprint("mes")
        .assert_same(&original, "a restore loaded by three sessions");
    assert_eq!(agent.last_logged_number(" loaded job=", "sessions"), 4);
    let shared_copies = agent.last_logged_number(" loaded job=", "copies");
    assert!(agent.last_logged_number(" loaded job=", "builds") > 0);
    assert!(restore_databases(&pg).is_empty());

    // One session: the same database, one COPY statement per table.
    drop(agent);
    config.set("restore.load_sessions", 1);
    let agent = Agent::spawn(&bus, &config).await;
    pg.psql("mes", "DELETE FROM mes_audit.change_log WHERE true;");
    let outcome = restore(&agent, &backup_id).await;
    assert!(outcome.success, "{}", outcome.message);
    pg.fingerprint("mes")
        .assert_same(&original, "a restore loaded by one session");
    assert_eq!(agent.last_logged_number(" loaded job=", "sessions"), 1);
    let copies = agent.last_logged_number(" loaded job=", "copies");
    assert!(
        shared_copies > copies,
        "{shared_copies} COPY statements in three sessions, {copies} in one: no table was cut into pieces"
    );
}

/// The old stack's dump of the database, as plain SQL.
fn plain_dump(pg: &Postgres) -> String {
    let out = Command::new("docker")
        .args(["exec", pg.name(), "pg_dump", "-U", ADMIN, "mes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of the dump's biggest COPY: the byte range of its data.
fn biggest_copy(dump: &str) -> std::ops::Range<usize> {
    let mut best = 0..0;
    let mut at = 0;
    while let Some(found) = dump[at..].find("\nCOPY ") {
        let start = at + found + 1;
        let data = start + dump[start..].find('\n').unwrap() + 1;
        let end = data + dump[data..].find("\n\\.\n").map_or(0, |e| e + 1);
        if end - data > best.end - best.start {
            best = data..end;
        }
        at = end;
    }
    assert!(!best.is_empty(), "the dump has no COPY data");
    best
}

/// The dump with `change` made to the row in the middle of its biggest
/// table, imported as the old backup `name`; returns the backup's id.
fn import_changed(bus: &Bus, pg: &Postgres, name: &str, change: impl Fn(&str) -> String) -> String {
    let dump = plain_dump(pg);
    let rows = biggest_copy(&dump);
    let half = rows.start + (rows.end - rows.start) / 2;
    let middle = half + dump[half..].find('\n').unwrap() + 1;
    assert!(middle < rows.end, "the biggest table has too few rows");
    let row_end = middle + dump[middle..].find('\n').unwrap() + 1;
    let changed = format!(
        "{}{}{}",
        &dump[..middle],
        change(&dump[middle..row_end]),
        &dump[row_end..]
    );
    let dir = tempfile::tempdir().unwrap();
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = gzip.stdin.take().unwrap();
    let writing = std::thread::spawn(move || {
        use std::io::Write;
        input.write_all(changed.as_bytes()).unwrap();
    });
    let gzipped = gzip.wait_with_output().unwrap();
    writing.join().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, &gzipped.stdout).unwrap();
    let out = mesbakctl_output(bus, &["import", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    format!("{name}.enc")
}

/// A session that stops at an error stops the load: a row the server
/// cannot read (in a piece of table data), then a duplicated row (when a
/// session builds the table's primary key). Each time the restore fails
/// with psql's own words, and the live database, the containers and the
/// server's databases are as they were.
async fn a_session_stopping_at_an_error_stops_the_load_and_changes_nothing(flavor: Flavor) {
    let bus = Bus::start();
    let pg = Postgres::with_fixture_on(flavor);
    pg.load_bulk("mes", 16);
    let writer = Writer::start();
    let config = AgentConfig::for_postgres(&pg)
        .with("restore.load_sessions", 2)
        .with("restore.stop_containers", vec![writer.name.clone()]);
    let agent = Agent::spawn(&bus, &config).await;
    let original = pg.fingerprint("mes");
    let databases = pg.databases();

    let unreadable = import_changed(&bus, &pg, "mes_2024-10-11_000001.sql.gz", |row| {
        let (_, rest) = row.split_once('\t').unwrap();
        format!("not a value\t{rest}")
    });
    let refused_unchanged = |outcome: JobOutcome, psql_says: &str, when: &str| {
        assert!(!outcome.success, "restored {when}");
        assert!(
            outcome.message.contains("psql stopped restoring")
                && outcome.message.contains(psql_says),
            "{}",
            outcome.message
        );
        assert!(!outcome.message.contains('\n'), "{}", outcome.message);
        pg.fingerprint("mes").assert_same(&original, when);
        assert_eq!(pg.databases(), databases);
        assert!(writer.is_running(), "the writer was left stopped {when}");
    };
    refused_unchanged(
        restore(&agent, &unreadable).await,
        "invalid input syntax",
        "after a load stopped in its data",
    );

    // The row twice: the data loads, and the primary key (or the chunk's
    // unique key) cannot be built.
    let duplicated = import_changed(&bus, &pg, "mes_2024-10-12_000001.sql.gz", |row| {
        format!("{row}{row}")
    });
    refused_unchanged(
        restore(&agent, &duplicated).await,
        "could not create unique index",
        "after a load stopped building a key",
    );
}

on_both_servers!(
    sessions_share_the_load_and_every_row_and_key_comes_back,
    a_session_stopping_at_an_error_stops_the_load_and_changes_nothing,
);
