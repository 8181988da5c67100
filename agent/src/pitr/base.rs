//! Physical base backups: `pg_basebackup` inside the database container, its
//! tar stream (the data directory, WAL left to the archive, and so the
//! files waiting in the server's archive folder left out) compressed and
//! encrypted into `pitr/base/` in the mesbak format, with metadata: where in
//! the WAL it starts (read from the stream's `backup_label`), the timeline,
//! when it started and finished, the server's versions.

use bytes::Bytes;
use mesbak_interface::{Compression, Error};
use time::OffsetDateTime;

use super::chain::BaseInfo;
use super::server::Archiving;
use super::store::{BASE_SUFFIX, PitrStore};
use super::tar_stream::{TarWalk, tar_end};
use crate::app::App;
use crate::jobs::{Job, now_rfc3339};
use crate::pipeline::BackupWriter;
use crate::postgres::{Server, catalog, timescale};
use crate::process;
use crate::storage::Storage;

/// What the `backup_label` at the head of the stream says.
#[derive(Debug, Default, PartialEq)]
struct Label {
    start_wal: String,
    start_lsn: String,
    timeline: u32,
}

/// Takes a base backup.
pub async fn take(
    app: &App,
    job: &Job,
    store: &PitrStore,
    server: &Server,
    archiving: &Archiving,
) -> Result<BaseInfo, Error> {
    let key = app.key()?;
    store.prepare()?;
    let started = now_rfc3339();
    let id = format!(
        "base_{}{BASE_SUFFIX}",
        Storage::restore_point(OffsetDateTime::now_utc())
    );
    let (pending, file) = store.create(&store.base_dir(), &id)?;
    job.set_stage(format!("taking the base backup {id}"));
    job.reset_bytes(0);
    // PITR's files are gzip whatever `backup.compression` says.
    let writer = BackupWriter::start(
        file,
        key,
        app.config.codec_for(Compression::Gzip),
        job.bytes_done.clone(),
    );
    let mut spawned = server
        .spawn(
            "pg_basebackup",
            &[
                "-D",
                "-",
                "-Ft",
                "-X",
                "none",
                "-c",
                "fast",
                "--no-manifest",
                "-l",
                "mesbak",
            ],
            false,
        )
        .await?;
    let mut head = Vec::new();
    let mut label = None;
    let mut first = true;
    let mut archive = TarWalk::leaving_out(archiving.archive_folder());
    let mut parts = Vec::new();
    'stream: while let Some(block) = spawned.stdout.recv().await {
        if label.is_none() && head.len() < 64 * 1024 {
            head.extend_from_slice(&block);
            label = parse_label(&head);
        }
        let block: Bytes = block;
        archive.pass(&block, &mut parts);
        for part in parts.drain(..) {
            if !writer.write(part).await {
                break 'stream;
            }
        }
        if std::mem::take(&mut first) {
            // A test crashes the agent here: half a base backup written.
            crate::fault_point::pause(&app.config.state_dir, "pitr-base-streaming").await;
        }
    }
    drop(spawned.stdout);
    // Whole or not (the check below decides), the stream ends as a tar does.
    writer.write(tar_end()).await;
    let outcome = process::join(spawned.done).await;
    let written = writer.finish().await?;
    outcome?.check(|detail| {
        Error::Database(format!(
            "pg_basebackup failed in {}: {detail}{}",
            server.runner.describe(),
            if detail.contains("replication") {
                "; the server must allow local replication connections (pg_hba.conf: local replication all trust, as the official image has)"
            } else {
                ""
            }
        ))
    })?;
    let label = label.ok_or_else(|| {
        Error::Database("pg_basebackup's output did not start with a backup_label".into())
    })?;
    archive.check("the base backup is not kept: retry with `mesbakctl pitr base-backup`")?;
    let (server_version, timescaledb) = tokio::join!(
        catalog::server_version(server),
        timescale::installed(server, &app.config.database.name)
    );
    let info = BaseInfo {
        id: id.clone(),
        started,
        finished: now_rfc3339(),
        timeline: label.timeline,
        start_wal: label.start_wal,
        start_lsn: label.start_lsn,
        wal_segment_size: archiving.wal_segment_size,
        size_bytes: written.size,
        sha256: written.sha256,
        server_version: server_version?,
        timescaledb_version: timescaledb?.map(|t| t.version).unwrap_or_default(),
    };
    let json = serde_json::to_vec_pretty(&info).expect("metadata serialises");
    pending.commit(Some(&json))?;
    job.add_file(id.clone());
    tracing::info!(
        job = job.id,
        file = %id,
        bytes = info.size_bytes,
        start_wal = %info.start_wal,
        archive_files_left_out = archive.left_out_files,
        archive_bytes_left_out = archive.left_out_bytes,
        "base backup written"
    );
    Ok(info)
}

/// The backup_label, once the head of the tar stream holds it whole.
fn parse_label(head: &[u8]) -> Option<Label> {
    let mut archive = tar::Archive::new(head);
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    if entry.path().ok()?.to_str()? != "backup_label" {
        return None;
    }
    // Only once the whole entry is there (a cut line could read as another
    // timeline).
    let size = entry.header().size().ok()?;
    if (head.len() as u64) < 512 + size {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).ok()?;
    let mut label = Label::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            // `0/3000028 (file 000000010000000000000003)`
            let (lsn, file) = rest.split_once(" (file ")?;
            label.start_lsn = lsn.to_owned();
            label.start_wal = file.trim_end_matches(')').to_owned();
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            label.timeline = rest.trim().parse().ok()?;
        }
    }
    (!label.start_wal.is_empty() && label.timeline > 0).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_read_from_the_head_of_the_stream() {
        let text = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
                    CHECKPOINT LOCATION: 0/3000080\nBACKUP METHOD: streamed\n\
                    START TIME: 2026-12-01 18:18:37 UTC\nLABEL: mesbak\nSTART TIMELINE: 1\n";
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        builder
            .append_data(&mut header, "backup_label", text.as_bytes())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        // Incomplete: not yet.
        assert_eq!(parse_label(&tar[..600]), None);
        let label = parse_label(&tar).unwrap();
        assert_eq!(label.start_wal, "000000010000000000000003");
        assert_eq!(label.start_lsn, "0/3000028");
        assert_eq!(label.timeline, 1);
    }
}
