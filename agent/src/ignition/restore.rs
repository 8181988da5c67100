//! The restore path: safety snapshot, staging folder, extraction into it,
//! swap by renames, the volume root's attributes.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use mesbak_format::Key;
use mesbak_interface::{Error, RestoreOptions};
use time::OffsetDateTime;

use super::helper::{random_id, run_script};
use super::recovery::{Record, clean_staging, save_record};
use super::tar::{RootAttrs, TarWalker, root_archive};
use super::{Copy, MOUNT, output_ready, quoted, start_gateways};
use crate::docker::{Docker, TarSender};
use crate::pipeline::BackupReader;
use crate::process::last_lines;
use crate::recovery::Touched;
use crate::storage::{BackupRef, Storage};

impl Copy<'_> {
    /// Stops the gateways, takes the safety snapshot, stages the backup in
    /// the volume and swaps it in; the gateways are restarted at the end.
    pub(super) async fn replace(
        &self,
        key: Key,
        backup: &BackupRef,
        options: &RestoreOptions,
        touched: &mut Touched,
    ) -> Result<String, Error> {
        let app = self.app;
        let job = self.job;
        let volume = &self.source.volume;
        let down_since = Instant::now();
        let stopped = self.stop_gateways(touched).await?;
        let mut safety = None;
        if options.skip_safety_backup != Some(true) {
            let key = output_ready(app)?;
            let point = Storage::restore_point(OffsetDateTime::now_utc());
            job.set_stage(format!("taking a safety backup of volume '{volume}'"));
            let info = self
                .snapshot(key, &point, Some(crate::trust::SAFETY_TAG), None, Vec::new())
                .await
                .map_err(|err| {
                    Error::from_kind(
                        err.kind(),
                        format!(
                            "the safety backup of volume '{volume}' failed, so nothing was restored: {}",
                            err.message()
                        ),
                    )
                })?;
            job.warn(format!("safety backup of the current volume: {}", info.id));
            safety = Some(info.id);
        }

        let id = random_id()?;
        let mut record = Record {
            volume: volume.clone(),
            image: self.source.image.clone(),
            staging: format!(".mesbak-restore-{id}"),
            old: format!(".mesbak-old-{id}"),
            backup: backup.id.clone(),
            root: None,
            restored_root: None,
        };
        save_record(app, Some(&record))?;
        job.set_stage(format!("preparing a staging folder in volume '{volume}'"));
        let staged = async {
            let made = run_script(
                app,
                self.docker,
                self.source,
                MKDIR_SCRIPT,
                &[&record.staging],
            )
            .await?
            .check(|detail| {
                Error::Docker(format!(
                    "cannot create a staging folder in volume '{volume}': {detail}"
                ))
            })?;
            // The root as found, to give its time back if the restore fails.
            record.root = parse_stat(&made);
            save_record(app, Some(&record))?;
            crate::fault_point::pause(&app.config.state_dir, "ignition-staging-made").await;
            let walked = self.upload(key, backup, &record.staging).await?;
            // The point of no return: from the swap on, the restore finishes.
            job.commit(
                format!("the restored files are being swapped into volume '{volume}'"),
                "the staged files were removed",
            )?;
            Ok(walked)
        }
        .await;
        let walked = match staged {
            Ok(walked) => walked,
            Err(err) => return Err(self.abandon(&record, err).await),
        };

        job.set_stage(format!(
            "swapping the restored files into volume '{volume}'"
        ));
        record.restored_root = walked.root;
        save_record(app, Some(&record))?;
        let swapped = run_script(
            app,
            self.docker,
            self.source,
            SWAP_SCRIPT,
            &[&record.staging, &record.old],
        )
        .await;
        let outcome = match swapped {
            Ok(outcome) => outcome,
            Err(err) => return Err(self.abandon(&record, err).await),
        };
        match outcome.exit_code {
            0 => {}
            // The script put back what it had moved: nothing changed.
            10..=19 => {
                let err = Error::Docker(format!(
                    "cannot swap the restored files into volume '{volume}': {}",
                    last_lines(&outcome.stderr, 3)
                ));
                return Err(self.abandon(&record, err).await);
            }
            // Restored; the record stays so the next job deletes the rest.
            25 => job.warn(format!(
                "volume '{volume}' holds the restored files, but {}; the next Ignition job retries",
                last_lines(&outcome.stderr, 3)
            )),
            // Failed half-way: settle it now (finish, or undo).
            _ => {
                let failure = last_lines(&outcome.stderr, 3);
                match clean_staging(app, self.docker, &record).await {
                    Ok(true) => job.warn(format!(
                        "the swap into volume '{volume}' needed a second attempt ({failure})"
                    )),
                    Ok(false) => {
                        let _ = save_record(app, None);
                        return Err(Error::Docker(format!(
                            "cannot swap the restored files into volume '{volume}' ({failure}); volume '{volume}' was not changed"
                        )));
                    }
                    Err(err) => {
                        return Err(Error::Docker(format!(
                            "the swap of the restored files into volume '{volume}' failed half-way ({failure}; {}); the previous files are in {} inside the volume{}, and the agent finishes or undoes the swap before the next Ignition job",
                            err.message(),
                            record.old,
                            safety
                                .as_ref()
                                .map(|id| format!(" and in the safety backup {id}"))
                                .unwrap_or_default()
                        )));
                    }
                }
            }
        }
        // The root's owner, mode and time: the backup's, else as found.
        if let Some(root) = walked.root.or(record.root) {
            if let Err(err) = set_root(self.docker, self.helper, &root).await {
                job.warn(format!(
                    "volume '{volume}' holds the restored files, but its top folder's owner, mode or time could not be set: {}",
                    err.message()
                ));
            }
        }
        if outcome.exit_code != 25 {
            save_record(app, None)?;
        }

        let restart_failures = start_gateways(touched, &stopped).await;
        let downtime_ms = down_since.elapsed().as_millis() as u64;
        tracing::info!(
            job = job.id,
            kind = "ignition",
            file = %backup.id,
            volume = %volume,
            entries = walked.entries,
            downtime_ms,
            safety_backup = safety.as_deref().unwrap_or(""),
            "ignition volume restored"
        );
        let mut message = format!(
            "restored {} into volume '{volume}' ({} entries)",
            backup.id, walked.entries
        );
        if !stopped.is_empty() {
            message.push_str(&format!(
                "; {} stopped for {:.1} s",
                quoted(&stopped),
                downtime_ms as f64 / 1000.0
            ));
        }
        if let Some(safety) = &safety {
            message.push_str(&format!(
                "; the previous contents are in the safety backup {safety}"
            ));
        }
        if !restart_failures.is_empty() {
            return Err(Error::Docker(format!(
                "{message}, but {}",
                restart_failures.join("; ")
            )));
        }
        Ok(message)
    }

    /// Extracts the backup into `staging` in the volume: decrypted and
    /// decompressed on the fly, checked as it passes.
    async fn upload(
        &self,
        key: Key,
        backup: &BackupRef,
        staging: &str,
    ) -> Result<TarWalker, Error> {
        let file = backup.open()?;
        self.job
            .reset_bytes(file.metadata().map(|m| m.len()).unwrap_or(0));
        self.job.set_stage(format!(
            "extracting {} next to the current files",
            backup.id
        ));
        let mut reader = BackupReader::start(
            backup.id.clone(),
            file,
            key,
            Some(backup.compression),
            self.job.bytes_done.clone(),
        );
        let id = backup.id.clone();
        let cancel = self.job.cancel_token();
        let cancelled = self.job.cancelled_error("the staged files were removed");
        let forward = |sender: TarSender| async move {
            let mut walker = TarWalker::default();
            let mut damage = None;
            loop {
                let block = tokio::select! {
                    block = reader.blocks.recv() => block,
                    _ = cancel.cancelled() => {
                        damage = Some(cancelled);
                        break;
                    }
                };
                let Some(block) = block else { break };
                if let Err(err) = walker.feed(&block) {
                    damage = Some(Error::Integrity(format!(
                        "backup {id} does not hold a valid tar archive ({err}); use another backup"
                    )));
                    break;
                }
                if sender.send(Ok(block)).await.is_err() {
                    // Docker stopped reading; its answer says why.
                    break;
                }
            }
            let read = match damage {
                Some(err) => Err(err),
                None => reader.finish().await.map(|_| ()),
            };
            if let Err(err) = &read {
                let _ = sender.send(Err(io::Error::other(err.message()))).await;
            }
            (walker, read)
        };
        let (forwarded, uploaded) = self
            .docker
            .upload_from(self.helper, &format!("{MOUNT}/{staging}"), forward)
            .await;
        let (walker, read) = forwarded?;
        read?;
        uploaded.map_err(|err| {
            // Docker passes the extraction's ENOSPC on as a refusal (500)
            // whose text ends in the OS error.
            if err.message().contains("no space left on device") {
                Error::NoSpace(format!(
                    "the disk of volume '{}' became full while {} was being extracted beside the current files; free space on Docker's disk (`docker system df`), then retry",
                    self.source.volume, backup.id
                ))
            } else {
                Error::Docker(format!(
                    "Docker could not extract {} into volume '{}': {}",
                    backup.id,
                    self.source.volume,
                    err.message()
                ))
            }
        })?;
        if !walker.complete() {
            return Err(Error::Integrity(format!(
                "backup {} holds an incomplete tar archive; use another backup",
                backup.id
            )));
        }
        Ok(walker)
    }

    /// After a failure before the swap: removes the staging folder so the
    /// volume is as it was, and says so.
    async fn abandon(&self, record: &Record, err: Error) -> Error {
        self.job.set_stage("removing the staged files");
        match clean_staging(self.app, self.docker, record).await {
            Ok(_) => {
                let _ = save_record(self.app, None);
                Error::from_kind(
                    err.kind(),
                    format!(
                        "{}; volume '{}' was not changed",
                        err.message(),
                        record.volume
                    ),
                )
            }
            Err(cleanup) => Error::from_kind(
                err.kind(),
                format!(
                    "{}; the live files of volume '{}' were not changed, but {} (the agent retries before the next Ignition job)",
                    err.message(),
                    record.volume,
                    cleanup.message()
                ),
            ),
        }
    }
}

/// Gives the volume's top folder `root`'s owner, mode and time (to the
/// nanosecond): a one-entry archive `volume/` extracted at `/` of a helper,
/// which Docker applies to the mount point, i.e. the volume itself.
pub(super) async fn set_root(docker: &Docker, helper: &str, root: &RootAttrs) -> Result<(), Error> {
    let tar = root_archive(MOUNT.trim_start_matches('/'), root).map_err(|err| {
        Error::Failed(format!(
            "cannot describe the volume's top folder as a tar entry: {err}"
        ))
    })?;
    let tar = Bytes::from(tar);
    docker
        .upload(helper, "/", futures_util::stream::iter([Ok(tar)]))
        .await
}

/// The top folder's attributes from `stat -c '%a %u %g %Y %y' .` (busybox
/// and GNU agree on this format; `%y` carries the nanoseconds).
fn parse_stat(output: &str) -> Option<RootAttrs> {
    let line = output.lines().find(|line| !line.trim().is_empty())?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [mode, uid, gid, mtime, _date, time, ..] = fields.as_slice() else {
        return None;
    };
    let nanos = time
        .split_once('.')
        .map(|(_, fraction)| {
            let digits: String = fraction.chars().take(9).collect();
            format!("{digits:0<9}").parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some(RootAttrs {
        mode: u32::from_str_radix(mode, 8).ok()?,
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        mtime: mtime.parse().ok()?,
        nanos,
    })
}

/// Creates the staging folder (and proves the image has a shell).
const MKDIR_SCRIPT: &str = r#"cd /volume && stat -c '%a %u %g %Y %y' . && mkdir -m 0700 -- "$1""#;

/// Swaps the staged files in by renames. Exit 10-19: failed, nothing
/// changed; 25: restored, tidying failed; other: failed half-way.
const SWAP_SCRIPT: &str = r#"
S=$1 O=$2
cd /volume || exit 10
[ -d "$S" ] || { echo "the staged copy $S is missing" >&2; exit 11; }
mkdir -m 0700 -- "$O" || exit 12
put_back() {
    cd "/volume/$O" || return 1
    for e in * .[!.]* ..?*; do
        if [ -e "$e" ] || [ -L "$e" ]; then mv -f -- "$e" /volume/ || return 1; fi
    done
    cd /volume && rmdir -- "$O"
}
for e in * .[!.]* ..?*; do
    if [ "$e" = "$S" ] || [ "$e" = "$O" ]; then continue; fi
    if [ -e "$e" ] || [ -L "$e" ]; then
        if ! mv -f -- "$e" "$O/"; then
            echo "cannot move $e aside" >&2
            if put_back; then exit 13; else exit 24; fi
        fi
    fi
done
: > "$O/.mesbak-moved-aside" || { echo "cannot mark $O" >&2; if put_back; then exit 14; else exit 24; fi; }
cd "/volume/$S" || exit 21
for e in * .[!.]* ..?*; do
    if [ -e "$e" ] || [ -L "$e" ]; then
        mv -f -- "$e" /volume/ || { echo "cannot move $e into place" >&2; exit 22; }
    fi
done
cd /volume || exit 23
rmdir -- "$S" || exit 23
rm -rf -- "$O" || { echo "the previous files could not all be deleted from $O" >&2; exit 25; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_output_is_parsed_with_nanoseconds() {
        assert_eq!(
            parse_stat("4750 1234 4321 1600000000 2020-09-13 12:26:40.1234567 +0000\n"),
            Some(RootAttrs {
                mode: 0o4750,
                uid: 1234,
                gid: 4321,
                mtime: 1_600_000_000,
                nanos: 123_456_700
            })
        );
        assert_eq!(
            parse_stat("755 0 0 5 2020-09-13 12:26:40 +0000").map(|r| r.nanos),
            Some(0)
        );
        assert_eq!(parse_stat("mkdir: can't create"), None);
    }
}
