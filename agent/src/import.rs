//! `mesbakctl import`: the old stack's backup files
//! (`mes_YYYY-MM-DD_HHmmss.sql.gz` from its backup container,
//! `ignition-YYYYMMDD-HHMMSS.tar.gz` from the hand-typed tar) brought into
//! the backup folder. Each file is read once, handed over by mesbakctl as an
//! open file: its bytes are encrypted as they are (the payload of a mesbak
//! backup is a standard gzip stream, so nothing is recompressed) while the
//! same bytes are decompressed and checked whole: the gzip stream to its
//! end, a pg_dump's header, COPY blocks and closing line, or a tar archive
//! to its end-of-archive marker. All or nothing: every file is written as a
//! hidden partial file and only committed when every file checked out; the
//! originals are only read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use mesbak_interface::{
    BackupInfo, BackupKind, Compression, Error, IMPORTED_SOURCE_PREFIX, backup_suffix,
};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::app::App;
use crate::ignition::TarWalker;
use crate::jobs::Job;
use crate::pipeline::{RawEncryptor, Written};
use crate::postgres::DumpReader;
use crate::storage::{PendingBackup, Storage, check_handed, human_bytes};

/// How much of the dump's start and end is kept to judge its header and
/// its closing line.
const EDGE: usize = 4096;
const READ_BLOCK: usize = 256 * 1024;

/// One old backup file as the old stack named it.
#[derive(Debug, Clone, PartialEq)]
pub struct OldName {
    pub kind: BackupKind,
    /// The name's prefix for a database dump (`mes`); `ignition` otherwise.
    pub prefix: String,
    /// `YYYY-MM-DD_HHMMSS`, the restore point the imported backup gets.
    pub point: String,
    /// The time in the name, read as UTC (the old stack's containers run in UTC).
    pub created: OffsetDateTime,
}

impl OldName {
    /// The id of the imported backup: `mes_2024-10-11_000001.sql.gz.enc`.
    pub fn new_id(&self) -> String {
        format!(
            "{}_{}{}",
            self.prefix,
            self.point,
            backup_suffix(self.kind, Compression::Gzip)
        )
    }
}

/// Reads an old backup file's name: `<db>_YYYY-MM-DD_HHmmss.sql.gz` or
/// `ignition-YYYYMMDD-HHMMSS.tar.gz`.
pub fn parse_old_name(name: &str) -> Result<OldName, Error> {
    let unknown = || {
        Error::InvalidArgument(format!(
            "'{}' is not an old backup's name: mesbak imports database/mes_YYYY-MM-DD_HHmmss.sql.gz and ignition/ignition-YYYYMMDD-HHMMSS.tar.gz as the old stack named them",
            name.escape_debug()
        ))
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (kind, prefix, date, clock) = if let Some(stem) = name.strip_suffix(".sql.gz") {
        // The database name may itself contain `_`: the stamp is the last 17 bytes.
        let (prefix, stamp) = stem
            .len()
            .checked_sub(18)
            .filter(|&at| stem.is_char_boundary(at) && stem.as_bytes()[at] == b'_')
            .map(|at| (&stem[..at], &stem[at + 1..]))
            .ok_or_else(unknown)?;
        let (date, clock) = stamp.split_once('_').ok_or_else(unknown)?;
        let parts: Vec<&str> = date.split('-').collect();
        if parts.len() != 3 || !parts.iter().all(|p| digits(p)) {
            return Err(unknown());
        }
        (BackupKind::Database, prefix, parts.concat(), clock)
    } else if let Some(stamp) = name
        .strip_prefix("ignition-")
        .and_then(|s| s.strip_suffix(".tar.gz"))
    {
        let (date, clock) = stamp.split_once('-').ok_or_else(unknown)?;
        (BackupKind::Ignition, "ignition", date.to_owned(), clock)
    } else {
        return Err(unknown());
    };
    let plain_prefix = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain_prefix || date.len() != 8 || clock.len() != 6 || !digits(&date) || !digits(clock) {
        return Err(unknown());
    }
    let number = |s: &str| s.parse::<u16>().map_err(|_| unknown());
    let bad_time = || {
        Error::InvalidArgument(format!(
            "'{name}' names a date or time that does not exist; rename it to the time the backup was made"
        ))
    };
    let day = Date::from_calendar_date(
        i32::from(number(&date[..4])?),
        Month::try_from(number(&date[4..6])? as u8).map_err(|_| bad_time())?,
        number(&date[6..])? as u8,
    )
    .map_err(|_| bad_time())?;
    let clock_time = Time::from_hms(
        number(&clock[..2])? as u8,
        number(&clock[2..4])? as u8,
        number(&clock[4..])? as u8,
    )
    .map_err(|_| bad_time())?;
    Ok(OldName {
        kind,
        prefix: prefix.to_owned(),
        point: format!("{}-{}-{}_{clock}", &date[..4], &date[4..6], &date[6..]),
        created: PrimitiveDateTime::new(day, clock_time).assume_utc(),
    })
}

/// An old backup handed over by mesbakctl.
#[derive(Debug)]
pub struct OldFile {
    /// Its name where the caller has it (no folder).
    pub name: String,
    pub old: OldName,
    pub file: File,
}

/// Checks what the client handed over: at least one file, each a regular
/// file open for reading under an old backup's name, no name twice.
pub fn handed(files: Vec<(zbus::zvariant::OwnedFd, String)>) -> Result<Vec<OldFile>, Error> {
    if files.is_empty() {
        return Err(Error::InvalidArgument(
            "no file to import; name the old backup files or the old backups/ folder".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    files
        .into_iter()
        .map(|(fd, name)| {
            let old = parse_old_name(&name)?;
            if !seen.insert(old.new_id()) {
                return Err(Error::InvalidArgument(format!(
                    "{name} is named twice (or with another file of the same time); name each old backup once"
                )));
            }
            let file = File::from(OwnedFd::from(fd));
            check_handed(&file, &name)?;
            Ok(OldFile { name, old, file })
        })
        .collect()
}

/// What reading one old file found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Bytes of the old file.
    pub size: u64,
    /// Bytes once decompressed.
    pub plain_bytes: u64,
    pub table_rows: BTreeMap<String, u64>,
    pub schemas: Vec<String>,
    /// From the dump's `-- Dumped from database version` line.
    pub server_version: String,
    pub timescaledb: bool,
    /// Tar entries.
    pub entries: u64,
}

/// Copies every byte read from `inner` into the encryptor (when writing).
struct Tee<'a> {
    inner: &'a mut File,
    copy: Option<&'a mut RawEncryptor>,
    failed: Option<Error>,
    read: &'a AtomicU64,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = self.copy.as_deref_mut() {
            if let Err(err) = copy.write(&buf[..n]) {
                let message = err.message();
                self.failed = Some(err);
                return Err(io::Error::other(message));
            }
        }
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Follows the decompressed stream of one kind of old backup.
enum Follower {
    Dump {
        reader: Box<DumpReader>,
        head: Vec<u8>,
        tail: Vec<u8>,
    },
    Tar(Box<TarWalker>),
}

impl Follower {
    fn new(kind: BackupKind) -> Follower {
        match kind {
            BackupKind::Database => Follower::Dump {
                reader: Box::default(),
                head: Vec::new(),
                tail: Vec::new(),
            },
            BackupKind::Ignition => Follower::Tar(Box::default()),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            Follower::Dump { reader, head, tail } => {
                if head.len() < EDGE {
                    let take = (EDGE - head.len()).min(data.len());
                    head.extend_from_slice(&data[..take]);
                    if head.len() >= 2 && !head.starts_with(b"--") {
                        return Err(not_a_dump(head));
                    }
                }
                tail.extend_from_slice(&data[data.len().saturating_sub(EDGE)..]);
                let excess = tail.len().saturating_sub(EDGE);
                tail.drain(..excess);
                reader.feed(data);
                Ok(())
            }
            Follower::Tar(walker) => walker
                .feed(data)
                .map_err(|damage| format!("the tar archive inside is damaged: {damage}")),
        }
    }

    /// The verdict at the end of the stream.
    fn finish(self, checked: &mut Checked) -> Result<(), String> {
        match self {
            Follower::Dump { reader, head, tail } => {
                let head_text = String::from_utf8_lossy(&head);
                if !head_text.contains("-- PostgreSQL database dump") {
                    return Err(not_a_dump(&head));
                }
                if let Some(table) = reader.in_copy() {
                    return Err(format!(
                        "the dump breaks off inside the data of table {table}: it was cut short"
                    ));
                }
                if !String::from_utf8_lossy(&tail).contains("-- PostgreSQL database dump complete")
                {
                    return Err(
                        "the dump lacks pg_dump's closing line (\"PostgreSQL database dump complete\"): it was cut short or pg_dump failed".into(),
                    );
                }
                checked.server_version = head_text
                    .lines()
                    .find_map(|line| line.strip_prefix("-- Dumped from database version "))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default();
                let reader = *reader;
                checked.timescaledb = reader.timescaledb;
                checked.table_rows = reader.table_rows;
                checked.schemas = reader.schemas;
                Ok(())
            }
            Follower::Tar(walker) => {
                if !walker.complete() {
                    return Err(
                        "the tar archive ends before its end-of-archive marker: it was cut short"
                            .into(),
                    );
                }
                checked.entries = walker.entries;
                Ok(())
            }
        }
    }
}

fn not_a_dump(head: &[u8]) -> String {
    if head.starts_with(b"PGDMP") {
        "it holds a pg_dump custom-format archive, not a plain SQL dump; mesbak imports the plain dumps the old stack made".into()
    } else if String::from_utf8_lossy(head).contains("-- PostgreSQL database cluster dump") {
        "it holds a pg_dumpall of the whole server, not a pg_dump of one database".into()
    } else {
        "it does not start like a plain pg_dump (\"-- PostgreSQL database dump\"): it is not a database dump".into()
    }
}

/// Reads `file` whole: decompresses it, follows the SQL or tar inside and,
/// with `copy`, encrypts its bytes as they are read. An `Err` says what is
/// wrong with the file; the outer error is the system's (disk full...).
pub fn check(
    file: &mut File,
    kind: BackupKind,
    copy: Option<&mut RawEncryptor>,
    read: &AtomicU64,
    cancelled: &dyn Fn() -> bool,
) -> Result<Result<Checked, String>, Error> {
    let mut tee = Tee {
        inner: file,
        copy,
        failed: None,
        read,
    };
    let mut checked = Checked::default();
    let mut follower = Follower::new(kind);
    let verdict = {
        let mut gzip = MultiGzDecoder::new(&mut tee);
        let mut buf = vec![0u8; READ_BLOCK];
        loop {
            if cancelled() {
                return Err(Error::Cancelled(
                    "the import was cancelled; nothing was added".into(),
                ));
            }
            match gzip.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    checked.plain_bytes += n as u64;
                    if let Err(damage) = follower.feed(&buf[..n]) {
                        break Err(damage);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(gzip_damage(&err)),
            }
        }
    };
    if let Some(err) = tee.failed.take() {
        return Err(err);
    }
    checked.size = read.load(Ordering::Relaxed);
    Ok(verdict.and_then(|()| {
        if checked.plain_bytes == 0 {
            return Err("it is empty once decompressed".into());
        }
        follower.finish(&mut checked).map(|()| checked)
    }))
}

fn gzip_damage(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => {
            "its gzip stream ends early: the file was cut short (copied or written incompletely)"
                .into()
        }
        _ if err.raw_os_error().is_some() => format!("it cannot be read: {err}"),
        _ => format!("it is not a valid gzip file ({err})"),
    }
}

/// One file's outcome.
enum Outcome {
    /// Checked and (unless a dry run) written, not yet visible.
    Ready {
        name: String,
        old: OldName,
        checked: Box<Checked>,
        written: Option<Box<(PendingBackup, Written)>>,
    },
    /// Already imported earlier: left as it is.
    Already { name: String, id: String },
}

/// The import job.
pub async fn run(
    app: Arc<App>,
    job: Arc<Job>,
    files: Vec<OldFile>,
    dry_run: bool,
) -> Result<String, Error> {
    let started = Instant::now();
    let key = app.key()?;
    if !dry_run {
        for repair in app.storage.prepare()? {
            tracing::warn!("{repair}");
        }
        check_space(&app, &files)?;
    }
    let mut outcomes = Vec::new();
    let mut problems = Vec::new();
    for mut old_file in files {
        job.check_cancel("nothing was added")?;
        let id = old_file.old.new_id();
        if let Some(existing) = existing(&app.storage, &old_file.old, &id) {
            match existing {
                Ok(()) => outcomes.push(Outcome::Already {
                    name: old_file.name,
                    id,
                }),
                Err(problem) => problems.push(format!("{}: {problem}", old_file.name)),
            }
            continue;
        }
        let size = old_file.file.metadata().map(|m| m.len()).unwrap_or(0);
        job.reset_bytes(size);
        job.set_stage(format!(
            "{} {}",
            if dry_run { "checking" } else { "importing" },
            old_file.name
        ));
        let pending = if dry_run {
            None
        } else {
            let (pending, handle) = app.storage.create(
                old_file.old.kind,
                Compression::Gzip,
                &old_file.old.prefix,
                &old_file.old.point,
                None,
            )?;
            if pending.id != id {
                // Another file of that name appeared meanwhile.
                problems.push(format!(
                    "{}: {id} appeared in the backup folder while importing; run the import again",
                    old_file.name
                ));
                continue;
            }
            Some((pending, handle))
        };
        let (kind, key, job_ref) = (old_file.old.kind, key.clone(), job.clone());
        let (verdict, pending, file) = tokio::task::spawn_blocking(move || {
            let mut encryptor = match pending {
                Some((pending, handle)) => match RawEncryptor::new(handle, &key) {
                    Ok(encryptor) => Some((pending, encryptor)),
                    Err(err) => return (Err(err), None, old_file),
                },
                None => None,
            };
            let verdict = check(
                &mut old_file.file,
                kind,
                encryptor.as_mut().map(|(_, e)| e),
                &job_ref.bytes_done,
                &|| job_ref.is_cancelled(),
            );
            (verdict, encryptor, old_file)
        })
        .await
        .map_err(|err| Error::Failed(format!("internal error while importing: {err}")))?;
        match verdict? {
            Err(problem) => problems.push(format!("{}: {problem}", file.name)),
            Ok(checked) => {
                let written = match pending {
                    Some((pending, encryptor)) => Some(Box::new((pending, encryptor.finish()?))),
                    None => None,
                };
                outcomes.push(Outcome::Ready {
                    name: file.name,
                    old: file.old,
                    checked: Box::new(checked),
                    written,
                });
            }
        }
    }
    if !problems.is_empty() {
        // The partial files go with `outcomes`.
        return Err(Error::Integrity(format!(
            "refused {} of the old backup file(s), so nothing was imported: {}; leave out or replace the damaged file(s) and run the import again",
            problems.len(),
            problems.join("; ")
        )));
    }
    job.check_cancel("nothing was added")?;
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut lines = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Already { name, id } => {
                lines.push(format!("{name}: already imported as {id}, left as it is"))
            }
            Outcome::Ready {
                name,
                old,
                checked,
                written: None,
            } => lines.push(format!(
                "{name}: intact ({}); would be imported as {}",
                describe(old.kind, &checked),
                old.new_id()
            )),
            Outcome::Ready {
                name,
                old,
                checked,
                written: Some(written),
            } => {
                let (pending, written) = *written;
                let info = metadata(&pending, &name, &old, &checked, &written, duration_ms);
                pending.commit(&info)?;
                job.add_file(info.id.clone());
                tracing::info!(
                    job = job.id,
                    kind = old.kind.as_str(),
                    file = %info.id,
                    original = %name,
                    bytes = written.size,
                    sha256 = %written.sha256,
                    "imported an old backup"
                );
                lines.push(format!(
                    "{name}: imported as {} ({})",
                    info.id,
                    describe(old.kind, &checked)
                ));
            }
        }
    }
    if !dry_run {
        job.warn(
            "imported backups are listed, verified and restored like any other, but do not count as fresh backups for health".to_owned(),
        );
    }
    Ok(lines.join("\n"))
}

/// Whether the backup folder already has `id`: `Some(Ok)` when it is this
/// same old file imported before, `Some(Err)` when it is something else.
fn existing(storage: &Storage, old: &OldName, id: &str) -> Option<Result<(), String>> {
    let path = storage.dir(old.kind).join(id);
    std::fs::symlink_metadata(&path).ok()?;
    let found = storage.resolve(id, false).ok();
    let info = found.as_ref().and_then(|found| storage.metadata(found));
    Some(match info {
        Some(info) if info.is_imported() => Ok(()),
        _ => Err(format!(
            "the backup folder already has {id}, made by mesbak; nothing to import for that time"
        )),
    })
}

fn describe(kind: BackupKind, checked: &Checked) -> String {
    match kind {
        BackupKind::Database => format!(
            "{} gzip, {} of SQL, {} table(s), {} row(s)",
            human_bytes(checked.size),
            human_bytes(checked.plain_bytes),
            checked.table_rows.len(),
            checked.table_rows.values().sum::<u64>()
        ),
        BackupKind::Ignition => format!(
            "{} gzip, {} tar with {} entries",
            human_bytes(checked.size),
            human_bytes(checked.plain_bytes),
            checked.entries
        ),
    }
}

fn metadata(
    pending: &PendingBackup,
    name: &str,
    old: &OldName,
    checked: &Checked,
    written: &Written,
    duration_ms: u64,
) -> BackupInfo {
    let mut info = BackupInfo::new(pending.id.clone(), old.kind);
    info.path = pending.path().display().to_string();
    info.created = old
        .created
        .format(&Rfc3339)
        .expect("formatting a date cannot fail");
    info.size_bytes = written.size;
    info.sha256 = written.sha256.clone();
    info.duration_ms = duration_ms;
    info.restore_point = old.point.clone();
    info.source = format!("{IMPORTED_SOURCE_PREFIX}{name}");
    info.server_version = checked.server_version.clone();
    info.schemas = checked.schemas.clone();
    info.table_rows = checked.table_rows.clone();
    info.warnings.push(format!(
        "imported from the old stack's {name} ({} original): not made by mesbak; its time is the one in the name, read as UTC{}",
        human_bytes(checked.size),
        if checked.timescaledb {
            "; the TimescaleDB version it was dumped with is not recorded, so a restore uses the server's"
        } else {
            ""
        }
    ));
    info
}

/// Refuses to start when the files would not fit beside the configured
/// free-space floor.
fn check_space(app: &App, files: &[OldFile]) -> Result<(), Error> {
    let free = app.storage.free_bytes()?;
    let needed: u64 = files
        .iter()
        .map(|f| f.file.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let floor = app.config.backup.min_free_bytes;
    if free < needed.saturating_add(floor) {
        return Err(Error::NoSpace(format!(
            "only {} free in {}: the import needs about {} and mesbak keeps {} free (backup.min_free_bytes); free space or import fewer files, then retry",
            human_bytes(free),
            app.storage.root().display(),
            human_bytes(needed),
            human_bytes(floor),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use flate2::Compression as Level;
    use flate2::write::GzEncoder;

    use super::*;

    #[test]
    fn old_names_are_read() {
        let db = parse_old_name("mes_2024-10-11_000001.sql.gz").unwrap();
        assert_eq!(db.kind, BackupKind::Database);
        assert_eq!(db.new_id(), "mes_2024-10-11_000001.sql.gz.enc");
        assert_eq!(db.created.format(&Rfc3339).unwrap(), "2024-10-11T00:00:01Z");
        let ign = parse_old_name("ignition-20241011-143022.tar.gz").unwrap();
        assert_eq!(ign.new_id(), "ignition_2024-10-11_143022.tar.gz.enc");
        assert_eq!(ign.point, "2024-10-11_143022");
        let other_db = parse_old_name("mes_prod_2024-10-11_000001.sql.gz").unwrap();
        assert_eq!(other_db.prefix, "mes_prod");
        for bad in [
            "mes_2024-10-11_000001.sql",
            "mes_2024-13-11_000001.sql.gz",
            "mes_2024-10-11_250001.sql.gz",
            "mes-2024-10-11-000001.sql.gz",
            "_2024-10-11_000001.sql.gz",
            "../x_2024-10-11_000001.sql.gz",
            "ignition-2024101-000001.tar.gz",
            "ignition_20241011_000001.tar.gz",
            "mes_2024-10-11_000001.sql.gz.enc",
            "notes.txt",
        ] {
            assert!(parse_old_name(bad).is_err(), "{bad} accepted");
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Level::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn check_bytes(bytes: &[u8], kind: BackupKind) -> Result<Checked, String> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        check(&mut file, kind, None, &AtomicU64::new(0), &|| false).unwrap()
    }

    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 17.2\n\nCREATE SCHEMA mes_core;\nCOPY mes_core.asset (id, name) FROM stdin;\n1\ta\n2\tb\n\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n";

    #[test]
    fn a_whole_dump_is_read_with_its_rows() {
        let checked = check_bytes(&gzip(DUMP.as_bytes()), BackupKind::Database).unwrap();
        assert_eq!(checked.table_rows["mes_core.asset"], 2);
        assert_eq!(checked.server_version, "17.2");
        assert_eq!(checked.schemas, vec!["mes_core".to_owned()]);
    }

    #[test]
    fn damaged_and_foreign_files_are_refused_with_the_reason() {
        let whole = gzip(DUMP.as_bytes());
        let cut = check_bytes(&whole[..whole.len() - 12], BackupKind::Database).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
        // Cut after the data, before pg_dump's closing line.
        let after_copy = DUMP.find("\\.\n").unwrap() + 3;
        let no_end =
            check_bytes(&gzip(&DUMP.as_bytes()[..after_copy]), BackupKind::Database).unwrap_err();
        assert!(no_end.contains("closing line"), "{no_end}");
        let in_copy_at = DUMP.find("1\ta").unwrap() + 2;
        let in_copy =
            check_bytes(&gzip(&DUMP.as_bytes()[..in_copy_at]), BackupKind::Database).unwrap_err();
        assert!(in_copy.contains("mes_core.asset"), "{in_copy}");
        let text = check_bytes(&gzip(b"hello world\n"), BackupKind::Database).unwrap_err();
        assert!(text.contains("not a database dump"), "{text}");
        let plain = check_bytes(DUMP.as_bytes(), BackupKind::Database).unwrap_err();
        assert!(plain.contains("not a valid gzip"), "{plain}");
        let tar_cut = check_bytes(&gzip(&[0u8; 100]), BackupKind::Ignition).unwrap_err();
        assert!(tar_cut.contains("cut short"), "{tar_cut}");
        let mut garbage = whole.clone();
        garbage.extend_from_slice(b"trailing junk");
        assert!(check_bytes(&garbage, BackupKind::Database).is_err());
    }

    #[test]
    fn a_whole_tar_is_read() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "./data/x", &b"abc"[..])
            .unwrap();
        let archive = builder.into_inner().unwrap();
        let checked = check_bytes(&gzip(&archive), BackupKind::Ignition).unwrap();
        assert_eq!(checked.entries, 1);
        let cut = check_bytes(&gzip(&archive[..1024]), BackupKind::Ignition).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
    }
}
