//! A restore in progress, recorded in the state folder, and the cleanup
//! after a job cut short: leftover helpers, a staging folder, a swap that
//! must be finished or undone.

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use super::helper::{create_helper, helper_owner, remove_helper, run_script};
use super::restore::set_root;
use super::tar::RootAttrs;
use super::{HELPER_LABEL, Source};
use crate::app::App;
use crate::docker::Docker;

/// The record of a restore in progress, in the state folder.
const RECORD: &str = "ignition-restore.json";

/// How long recovery waits for a helper that still runs.
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

pub(super) async fn recover_with(app: &App, docker: &Docker) -> Vec<String> {
    let mut problems = Vec::new();
    match docker
        .containers_with_label(&format!("{HELPER_LABEL}={}", helper_owner(app)))
        .await
    {
        Ok(helpers) => {
            for helper in helpers {
                // A swap still running finishes first: cut short, it would
                // leave the volume half-swapped.
                if helper.running {
                    let _ = tokio::time::timeout(HELPER_WAIT, docker.wait_exit(&helper.name)).await;
                }
                match docker.remove_container(&helper.name).await {
                    Ok(()) => {
                        tracing::warn!(container = %helper.name, "removed a helper container left by an interrupted job")
                    }
                    Err(err) => problems.push(format!(
                        "helper container '{}' could not be removed: {}",
                        helper.name,
                        err.message()
                    )),
                }
            }
        }
        Err(err) => problems.push(format!(
            "helper containers could not be listed: {}",
            err.message()
        )),
    }
    let record = match record_file(app).read_or_set_aside() {
        Ok((Some(record), _)) => record,
        Ok((None, None)) => return problems,
        Ok((None, Some(unreadable))) => {
            problems.push(format!(
                "{unreadable}; an interrupted restore of volume '{}' may have left a .mesbak-restore-* or .mesbak-old-* folder in it: check the volume's top folder, then delete the copy",
                app.config.ignition.volume
            ));
            return problems;
        }
        Err(err) => {
            problems.push(err.message());
            return problems;
        }
    };
    match clean_staging(app, docker, &record).await {
        Ok(restored) => {
            if restored {
                tracing::warn!(volume = %record.volume, backup = %record.backup, "finished the swap of an interrupted Ignition restore: the volume holds the restored files");
            } else {
                tracing::warn!(volume = %record.volume, backup = %record.backup, "removed the staging folder of an interrupted Ignition restore; the volume was not changed");
            }
            if let Err(err) = save_record(app, None) {
                problems.push(err.message());
            }
        }
        Err(err) => problems.push(err.message()),
    }
    problems
}

/// Removes a restore's staging (and old) folder from the volume, settling a
/// swap that was cut short; returns whether the volume holds the restored
/// files.
pub(super) async fn clean_staging(
    app: &App,
    docker: &Docker,
    record: &Record,
) -> Result<bool, Error> {
    if !docker.volume_exists(&record.volume).await? {
        return Ok(false);
    }
    let source = Source {
        volume: record.volume.clone(),
        gateways: Vec::new(),
        image: record.image.clone(),
        others_running: Vec::new(),
    };
    let outcome = run_script(
        app,
        docker,
        &source,
        CLEAN_SCRIPT,
        &[&record.staging, &record.old],
    )
    .await?;
    let said = outcome.check(|detail| {
        Error::Docker(format!(
            "the staging folder {} of an interrupted restore of {} could not be removed from volume '{}': {detail}",
            record.staging, record.backup, record.volume
        ))
    })?;
    // Making and removing folders changed the top folder's time: give it
    // the backup's attributes if the swap went (or was finished) through,
    // else those it was found with.
    let restored = said.contains("restored");
    let root = if restored {
        record.restored_root
    } else {
        record.root
    };
    if let Some(root) = &root {
        let helper = create_helper(app, docker, &source, false).await?;
        let set = set_root(docker, &helper, root).await;
        remove_helper(docker, &helper).await;
        set?;
    }
    Ok(restored)
}

/// A restore in progress: what to clean up if it is cut short.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) volume: String,
    pub(super) image: String,
    pub(super) staging: String,
    pub(super) old: String,
    pub(super) backup: String,
    /// The volume's top folder as found, once known.
    pub(super) root: Option<RootAttrs>,
    /// The backup's top folder, once the swap is about to start.
    #[serde(default)]
    pub(super) restored_root: Option<RootAttrs>,
}

fn record_file(app: &App) -> crate::persist::Record<Record> {
    crate::persist::Record::new(
        &app.config.state_dir,
        RECORD,
        "the record of the Ignition restore in progress",
    )
}

/// Records the restore in progress (`None`: it ended).
pub(super) fn save_record(app: &App, record: Option<&Record>) -> Result<(), Error> {
    let file = record_file(app);
    match record {
        Some(record) => file.write(record),
        None => file.remove(),
    }
}

/// Removes what a restore left in the volume. A swap cut short is settled
/// first: with the marker in the old folder every old file is already aside,
/// so the restored files are moved in ("restored"); without it the old files
/// are moved back. Exits non-zero if a move fails.
const CLEAN_SCRIPT: &str = r#"
S=$1 O=$2
move_all() {
    cd "$1" || exit 1
    for e in * .[!.]* ..?*; do
        if [ -e "$e" ] || [ -L "$e" ]; then mv -f -- "$e" /volume/ || exit 1; fi
    done
    cd /volume || exit 1
}
cd /volume || exit 1
if [ -d "$O" ]; then
    if [ -e "$O/.mesbak-moved-aside" ] || [ ! -d "$S" ]; then
        [ -d "$S" ] && move_all "/volume/$S"
        echo restored
    else
        move_all "/volume/$O"
        echo unchanged
    fi
fi
rm -rf -- "$S" "$O"
"#;
