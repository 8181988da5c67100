//! The backup path: the volume streamed from the never-started helper
//! through the tar checker and the relay into a new backup file.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use mesbak_format::Key;
use mesbak_interface::{BackupInfo, BackupKind, Error};
use tokio::sync::mpsc;

use super::spool::{Relay, Spool};
use super::tar::TarWalker;
use super::{BLOCK, Copy, MOUNT, quoted, start_gateways};
use crate::commit::{CANCELLED_BACKUP, commit};
use crate::jobs::now_rfc3339;
use crate::pipeline::BackupWriter;
use crate::recovery::Touched;

impl Copy<'_> {
    /// Streams the volume into a new backup. With `touched`, stops the
    /// gateways first and restarts them as soon as the tar stream is
    /// complete; without, they are already stopped.
    pub(super) async fn snapshot(
        &self,
        key: Key,
        point: &str,
        tag: Option<&str>,
        mut touched: Option<&mut Touched>,
        warnings: Vec<String>,
    ) -> Result<BackupInfo, Error> {
        let app = self.app;
        let job = self.job;
        let volume = &self.source.volume;
        let started = Instant::now();
        let created = now_rfc3339();
        let previous = app
            .storage
            .list()?
            .into_iter()
            .find(|b| b.kind == BackupKind::Ignition);
        let codec = app.config.codec();
        let (pending, file) = app.storage.create(
            BackupKind::Ignition,
            codec.compression,
            "ignition",
            point,
            tag,
        )?;
        job.set_stage(format!("Creating backup: {}", pending.id));
        job.reset_bytes(0);
        let writer = BackupWriter::start(file, key, codec, job.bytes_done.clone());
        let (to_writer, mut relayed) = mpsc::channel::<Bytes>(4);
        let feeder = tokio::spawn(async move {
            let mut writer_ok = true;
            while let Some(block) = relayed.recv().await {
                if !writer.write(block).await {
                    writer_ok = false;
                    break;
                }
            }
            drop(relayed);
            (writer_ok, writer.finish().await)
        });
        // What the spool may take: the space left after the floor and a
        // backup the size of the last one.
        let spool_limit = app
            .storage
            .free_bytes()
            .unwrap_or(0)
            .saturating_sub(app.config.backup.min_free_bytes)
            .saturating_sub(previous.as_ref().map_or(0, |p| p.size_bytes));
        let spool = match Spool::create(&app.storage.dir(BackupKind::Ignition)) {
            Ok(spool) => Some(spool),
            Err(err) => {
                tracing::warn!(error = %err, "no spool for the volume copy; the gateway waits for compression");
                None
            }
        };
        let relay = Relay::start(spool, spool_limit, to_writer);

        let down_since = Instant::now();
        let stopped = match touched.as_deref_mut() {
            Some(touched) => self.stop_gateways(touched).await?,
            None => Vec::new(),
        };
        job.set_stage(format!("copying volume '{volume}' into {}", pending.id));
        let mut walker = TarWalker::default();
        let mut stream = Box::pin(self.docker.download(self.helper, &format!("{MOUNT}/.")));
        let mut block = BytesMut::with_capacity(BLOCK);
        let mut failed = None;
        let mut relay_ok = true;
        let mut paused = false;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = job.cancelled() => {
                    failed = Some(job.cancelled_error(CANCELLED_BACKUP));
                    break;
                }
            };
            let Some(item) = item else { break };
            let data = match item {
                Ok(data) => data,
                Err(err) => {
                    failed = Some(Error::Docker(format!(
                        "the copy of volume '{volume}' broke off: {}",
                        err.message()
                    )));
                    break;
                }
            };
            if let Err(damage) = walker.feed(&data) {
                failed = Some(Error::Docker(format!(
                    "Docker sent a damaged tar stream of volume '{volume}' ({damage}); retry the backup"
                )));
                break;
            }
            if !paused {
                // A test disturbs the engine here, mid-stream.
                paused = true;
                crate::fault_point::pause(&app.config.state_dir, "ignition-copying").await;
            }
            block.extend_from_slice(&data);
            if block.len() >= BLOCK {
                relay_ok = relay.send(block.split().freeze()).await;
                if !relay_ok {
                    break;
                }
            }
        }
        drop(stream);
        if failed.is_none() && relay_ok {
            if !block.is_empty() {
                relay_ok = relay.send(block.freeze()).await;
            }
            if !walker.complete() {
                failed = Some(Error::Docker(format!(
                    "the tar stream of volume '{volume}' ended before its end; retry the backup"
                )));
            }
        }

        // Docker has sent the last byte: the gateways need not wait for
        // compression.
        let restart_failures = match touched {
            Some(touched) => start_gateways(touched, &stopped).await,
            None => Vec::new(),
        };
        let downtime_ms = if stopped.is_empty() {
            0
        } else {
            down_since.elapsed().as_millis() as u64
        };
        if !stopped.is_empty() && failed.is_none() && relay_ok {
            job.set_stage(format!(
                "{} running again after {:.1} s; compressing the rest of {}",
                quoted(&stopped),
                downtime_ms as f64 / 1000.0,
                pending.id
            ));
        }

        let spooled = if failed.is_none() {
            relay.finish().await
        } else {
            relay.abort();
            Ok(0)
        };
        let (writer_ok, written) = feeder
            .await
            .map_err(|err| Error::Failed(format!("internal error in the backup writer: {err}")))?;
        // A writer failure (disk full) explains a broken stream best.
        let (written, spooled) = match (failed, written) {
            (_, Err(err)) if !writer_ok => return Err(err),
            (Some(err), _) => return Err(err),
            (None, written) => {
                let spooled = spooled?;
                if !relay_ok {
                    return Err(Error::Failed(format!(
                        "the copy of volume '{volume}' stopped before its end; retry the backup"
                    )));
                }
                (written?, spooled)
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let info = BackupInfo {
            id: pending.id.clone(),
            kind: BackupKind::Ignition,
            path: pending.path().display().to_string(),
            created,
            size_bytes: written.size,
            sha256: written.sha256.clone(),
            duration_ms,
            restore_point: point.to_owned(),
            source: volume.clone(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: Vec::new(),
            table_rows: Default::default(),
            downtime_ms,
            warnings,
        };
        let info = commit(job, pending, info, previous.as_ref(), written.plain_bytes)?;
        tracing::info!(
            job = job.id,
            file = %info.id,
            volume = %volume,
            entries = walker.entries,
            spooled_bytes = spooled,
            "ignition volume copied"
        );
        if !restart_failures.is_empty() {
            return Err(Error::Docker(format!(
                "backup {} was saved, but {}",
                info.id,
                restart_failures.join("; ")
            )));
        }
        Ok(info)
    }
}
