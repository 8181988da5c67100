//! What a destructive action would change, in sentences for the
//! confirmation prompt (`Preview`): the databases, containers and files by
//! name. Checks as the action itself would, root first, so a prompt is never
//! shown for something that will be refused. Changes nothing.

use mesbak_interface::{BackupKind, Error};
use time::OffsetDateTime;

use crate::app::App;
use crate::bus::require_root;
use crate::ignition::quoted;
use crate::kept;
use crate::retention;
use crate::storage::human_bytes;

pub fn describe(app: &App, action: &str, argument: &str, uid: u32) -> Result<Vec<String>, Error> {
    match action {
        "restore" => {
            require_root(uid, "restore")?;
            restore(app, argument)
        }
        "restore-file" => {
            require_root(uid, "restore")?;
            restore_file(app, argument)
        }
        "restore-from" => {
            require_root(uid, "restore")?;
            restore_from(app, argument)
        }
        "rollback" => {
            require_root(uid, "rollback")?;
            rollback(app)
        }
        "drop-previous" => {
            require_root(uid, "dropping a kept database")?;
            drop_previous(app, argument)
        }
        "prune" => {
            require_root(uid, "prune")?;
            prune(app)
        }
        other => Err(Error::InvalidArgument(format!(
            "'{other}' is not an action to preview; use restore, rollback, drop-previous or prune"
        ))),
    }
}

fn restore(app: &App, backup: &str) -> Result<Vec<String>, Error> {
    let found = app.storage.resolve(backup, true)?;
    let info = app.storage.metadata(&found);
    let made = info
        .as_ref()
        .map(|info| format!(" (made {}, {})", info.created, human_bytes(info.size_bytes)))
        .unwrap_or_else(|| " (no metadata: its row counts are read from the file)".into());
    Ok(replaced(
        app,
        format!("Restores {}{made}.", found.id),
        found.kind,
    ))
}

/// `restore FILE`: the argument is the file's name; the file itself is
/// handed over with the restore, so nothing is read here.
fn restore_file(app: &App, name: &str) -> Result<Vec<String>, Error> {
    let (kind, _) = crate::storage::kind_of_id(name)?;
    Ok(replaced(
        app,
        format!(
            "Restores {name}, the file you named (authenticated whole before anything is touched)."
        ),
        kind,
    ))
}

/// `restore ID --from TARGET`: the argument is `TARGET/ID`.
fn restore_from(app: &App, argument: &str) -> Result<Vec<String>, Error> {
    let (target, id) = argument
        .split_once('/')
        .ok_or_else(|| Error::InvalidArgument(format!("'{argument}' is not TARGET/ID")))?;
    let (kind, _) = crate::storage::kind_of_id(id)?;
    Ok(replaced(
        app,
        format!(
            "Restores {id}, read from off-site target '{target}' (downloaded and authenticated before anything is touched)."
        ),
        kind,
    ))
}

/// The lines of a restore of a `kind` backup, after `first`.
fn replaced(app: &App, first: String, kind: BackupKind) -> Vec<String> {
    let mut lines = vec![first];
    let config = &app.config;
    match kind {
        BackupKind::Database => {
            let live = &config.database.name;
            let place = if config.database.container.is_empty() {
                "on the host's server".to_owned()
            } else {
                format!("in container '{}'", config.database.container)
            };
            lines.push(format!(
                "Replaced: the live database '{live}' {place}, only after the restored copy has been checked."
            ));
            lines.push(format!(
                "Kept: the current '{live}', renamed '{live}_previous_<time>'; `mesbakctl restore --rollback` puts it back once."
            ));
            if !config.restore.stop_containers.is_empty() {
                lines.push(format!(
                    "Stopped during the restore, started again after: container(s) {}.",
                    quoted(&config.restore.stop_containers)
                ));
            }
            lines.push("A safety backup of the current database is taken first (unless --skip-safety-backup).".into());
            let already = kept::list(app);
            if !already.is_empty() {
                lines.push(format!(
                    "Already kept from earlier restores: {} ({}); drop them with `mesbakctl restore --drop-previous NAME`.",
                    already
                        .iter()
                        .map(|db| format!("'{}'", db.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    human_bytes(already.iter().map(|db| db.size_bytes).sum())
                ));
            }
        }
        BackupKind::Ignition => {
            lines.push(format!(
                "Replaced: every file of Docker volume '{}', after the backup has been unpacked beside them.",
                config.ignition.volume
            ));
            if !config.ignition.stop_containers.is_empty() {
                lines.push(format!(
                    "Stopped during the restore, started again after: container(s) {}.",
                    quoted(&config.ignition.stop_containers)
                ));
            }
            lines.push("A safety backup of the volume as it is now is taken first (unless --skip-safety-backup).".into());
        }
    }
    lines
}

fn rollback(app: &App) -> Result<Vec<String>, Error> {
    let target = kept::rollback_target(app)?;
    let live = &target.live_name;
    let mut lines = vec![
        format!(
            "Made live again: '{}', the database '{live}' was before the restore of {} at {}; it becomes '{live}'.",
            target.name, target.restored_backup, target.replaced_at
        ),
        format!(
            "Kept: the current '{live}' (the restored data), renamed '{live}_rolledback_<time>', until you drop it."
        ),
    ];
    if !app.config.restore.stop_containers.is_empty() {
        lines.push(format!(
            "Stopped during the switch, started again after: container(s) {}.",
            quoted(&app.config.restore.stop_containers)
        ));
    }
    lines.push(
        "A rollback is done once: to change the live database again after it, restore a backup."
            .into(),
    );
    Ok(lines)
}

fn drop_previous(app: &App, name: &str) -> Result<Vec<String>, Error> {
    let db = kept::find(app, name)?;
    let size = if db.size_bytes > 0 {
        format!("{}, ", human_bytes(db.size_bytes))
    } else {
        String::new()
    };
    let mut lines = vec![format!(
        "Deleted for good: database '{}' ({size}the '{}' replaced at {}).",
        db.name, db.live_name, db.replaced_at
    )];
    if db.rollback_target {
        lines.push(
            "After this, `mesbakctl restore --rollback` is no longer possible for the newest restore."
                .into(),
        );
    }
    Ok(lines)
}

fn prune(app: &App) -> Result<Vec<String>, Error> {
    let listed = app.storage.list_checked()?;
    let plan = retention::local_plan(
        &listed,
        &app.config,
        &app.state.get(),
        BackupKind::ALL,
        OffsetDateTime::now_utc(),
        retention::Run::Explicit,
    );
    let deletions: Vec<_> = retention::wire_decisions(&plan, &listed)
        .into_iter()
        .filter(|decision| !decision.keep)
        .collect();
    if deletions.is_empty() {
        return Ok(vec![
            "Nothing to delete: every backup is kept by a retention rule (`mesbakctl prune --dry-run` says which)."
                .into(),
        ]);
    }
    let mut lines = vec![format!(
        "Deleted for good: {} backup file(s) no [retention] rule keeps:",
        deletions.len()
    )];
    lines.extend(deletions.iter().map(|decision| {
        format!(
            "  {} ({}, {}): {}",
            decision.id,
            decision.created,
            human_bytes(decision.size_bytes),
            decision.reasons.join("; ")
        )
    }));
    Ok(lines)
}
