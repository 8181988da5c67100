//! WAL shipping: every file the server archived is read out of the archive
//! folder (inside the database container, through the exec API),
//! compressed and encrypted into `pitr/wal/`, fsynced and committed, and
//! only then removed from the server's folder. A crash in between finds the
//! file shipped and only removes it: no segment is lost or counted twice.
//!
//! Cost (bench `pitr`, two cores, format version 1): about 0.4 s of CPU per
//! 16 MiB segment, half of it the file's own PBKDF2 key derivation
//! (600,000 iterations for two output blocks), a third gzip, the rest
//! SHA-256, AES and the exec stream; about 30 MiB/s of WAL at most beside
//! a server writing flat out. In format version 2 the agent keeps one key
//! (`App::key`), so PBKDF2 runs once per agent run, and each segment pays
//! an HKDF (microseconds) instead: about half the CPU per segment (not yet
//! measured by the bench).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use mesbak_interface::{Compression, Error};
use time::OffsetDateTime;

use super::chain::{is_wal_name, wal_file_name};
use super::server::Archiving;
use super::store::PitrStore;
use crate::app::App;
use crate::pipeline::{BackupWriter, Codec};
use crate::postgres::Server;
use crate::process::{self, Runner};

/// Shipped files removed from the server's folder per `rm`.
const REMOVE_BATCH: usize = 16;

/// What one shipping round did.
#[derive(Debug, Default, Clone)]
pub struct Shipped {
    pub files: usize,
    pub plain_bytes: u64,
    /// Files still waiting in the server's folder when the round ended.
    pub waiting: usize,
}

/// A file in the server's archive folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Archived {
    pub name: String,
    pub archived_at: OffsetDateTime,
}

/// Lists the server's archive folder: WAL files with their archive times,
/// oldest first (temporary files of the archiver are left alone).
pub async fn list_archive(server: &Server, archiving: &Archiving) -> Result<Vec<Archived>, Error> {
    let Runner::Container { docker, container } = &server.runner else {
        return Err(Error::Config(
            "WAL shipping needs database.container".into(),
        ));
    };
    let argv = [
        "sh".to_owned(),
        "-c".to_owned(),
        "cd \"$1\" && for f in *; do [ -f \"$f\" ] && echo \"$(stat -c %Y \"$f\") $f\"; done; true"
            .to_owned(),
        "mesbak".to_owned(),
        archiving.archive_directory.clone(),
    ];
    let out = docker
        .exec_output(container, &argv, |detail| {
            Error::Docker(format!(
                "cannot list the WAL archive folder {} in container '{container}': {detail}",
                archiving.archive_directory
            ))
        })
        .await?;
    let mut files: Vec<Archived> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|line| {
            let (mtime, name) = line.split_once(' ')?;
            let at = OffsetDateTime::from_unix_timestamp(mtime.parse().ok()?).ok()?;
            is_wal_name(name).then(|| Archived {
                name: name.to_owned(),
                archived_at: at,
            })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Ships everything the server archived so far.
pub async fn ship(
    app: &App,
    store: &PitrStore,
    server: &Server,
    archiving: &Archiving,
) -> Result<Shipped, Error> {
    let waiting = list_archive(server, archiving).await?;
    let mut done = Shipped::default();
    if waiting.is_empty() {
        return Ok(done);
    }
    let key = app.key()?;
    store.prepare()?;
    let Runner::Container { docker, container } = &server.runner else {
        return Err(Error::Config(
            "WAL shipping needs database.container".into(),
        ));
    };
    // The round holds the shipping lock: nothing else adds to the WAL folder,
    // one listing serves every file.
    let listing = store.wal(archiving.wal_segment_size);
    let stored: std::collections::HashSet<&str> = listing.iter().map(|f| f.name.as_str()).collect();
    let mut shipped = Vec::new();
    for file in &waiting {
        let path = format!("{}/{}", archiving.archive_directory, file.name);
        if !stored.contains(file.name.as_str()) {
            let (pending, handle) = store.create(
                &store.wal_dir(),
                &wal_file_name(&file.name, file.archived_at),
            )?;
            let writer = BackupWriter::start(
                handle,
                key.clone(),
                Codec {
                    compression: Compression::Gzip,
                    level: 1,
                },
                Arc::new(AtomicU64::new(0)),
            );
            let started = std::time::Instant::now();
            let argv = ["cat".to_owned(), path.clone()];
            let mut spawned = docker.exec(container, &argv, &[], false).await?;
            while let Some(block) = spawned.stdout.recv().await {
                done.plain_bytes += block.len() as u64;
                if !writer.write(block).await {
                    break;
                }
            }
            drop(spawned.stdout);
            let outcome = process::join(spawned.done).await;
            let read = started.elapsed();
            let written = writer.finish().await?;
            let sealed = started.elapsed();
            outcome?.check(|detail| {
                Error::Docker(format!(
                    "cannot read {path} in container '{container}': {detail}"
                ))
            })?;
            pending.commit(None)?;
            tracing::debug!(
                wal = %file.name,
                bytes = written.size,
                read_ms = read.as_millis() as u64,
                sealed_ms = sealed.as_millis() as u64,
                committed_ms = started.elapsed().as_millis() as u64,
                "WAL file shipped"
            );
            done.files += 1;
        }
        // Shipped (now or by a round a crash cut short): the server's copy
        // goes, with the next few in one exec (each exec starts a process
        // in the container: 50 to 600 ms a segment on two busy cores).
        shipped.push(path);
        if shipped.len() >= REMOVE_BATCH {
            remove(docker, container, &mut shipped).await?;
        }
    }
    remove(docker, container, &mut shipped).await?;
    done.waiting = list_archive(server, archiving)
        .await
        .map(|w| w.len())
        .unwrap_or(0);
    Ok(done)
}

/// Removes the shipped `paths` from the server's archive folder (only ever
/// files whose copy is committed in the backup folder).
async fn remove(
    docker: &crate::docker::Docker,
    container: &str,
    paths: &mut Vec<String>,
) -> Result<(), Error> {
    if paths.is_empty() {
        return Ok(());
    }
    let removing = std::time::Instant::now();
    let mut argv = vec!["rm".to_owned(), "-f".to_owned(), "--".to_owned()];
    argv.append(paths);
    let files = argv[3..].join(", ");
    docker
        .exec_output(container, &argv, |detail| {
            Error::Docker(format!(
                "cannot remove the shipped {files} from container '{container}': {detail}"
            ))
        })
        .await?;
    tracing::debug!(
        files = argv.len() - 3,
        rm_ms = removing.elapsed().as_millis() as u64,
        "shipped WAL files removed from the archive"
    );
    Ok(())
}
