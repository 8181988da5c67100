//! Databases a restore or a rollback replaced and kept (`<name>_previous_*`,
//! `<name>_rolledback_*`): every one is remembered in the agent's state
//! until dropped, shown by `status` and `list`, counted by health, and
//! droppable by name. Only the database the newest restore replaced can be
//! rolled back to, once: a rollback is not a toggle.

use mesbak_interface::{Error, KeptDatabase};
use time::{Duration, OffsetDateTime};

use crate::app::App;
use crate::health::parse_time;
use crate::state::KeptRecord;
use crate::storage::human_bytes;

/// A kept database older than this makes the health degraded: it holds a
/// whole copy of the database on the server's disk.
const KEEP_WITHOUT_NOTICE: Duration = Duration::days(7);

/// Every kept database, newest first.
pub fn list(app: &App) -> Vec<KeptDatabase> {
    let state = app.state.get();
    let mut kept: Vec<KeptDatabase> = state
        .kept_databases
        .iter()
        .map(|record| wire(record, state.rollback_target.as_deref()))
        .collect();
    kept.sort_by(|a, b| b.replaced_at.cmp(&a.replaced_at).then(b.name.cmp(&a.name)));
    kept
}

fn wire(record: &KeptRecord, rollback_target: Option<&str>) -> KeptDatabase {
    KeptDatabase {
        name: record.name.clone(),
        live_name: record.live_name.clone(),
        replaced_at: record.replaced_at.clone(),
        restored_backup: record.restored_backup.clone(),
        size_bytes: record.size_bytes,
        rollback_target: rollback_target == Some(record.name.as_str()),
    }
}

/// Health problems: kept databases forgotten for more than a week.
pub fn problems(app: &App, now: OffsetDateTime) -> Vec<String> {
    list(app)
        .into_iter()
        .filter(|db| parse_time(&db.replaced_at).is_some_and(|at| now - at > KEEP_WITHOUT_NOTICE))
        .map(|db| {
            format!(
                "database '{}' ({}) has been kept since {} by a restore and uses space on the database server; drop it with `mesbakctl restore --drop-previous {}` once it is no longer needed",
                db.name,
                human_bytes(db.size_bytes),
                db.replaced_at,
                db.name
            )
        })
        .collect()
}

/// The kept database called `name`; "" means the one the newest restore
/// kept (or, when there is exactly one, that one).
pub fn find(app: &App, name: &str) -> Result<KeptDatabase, Error> {
    let kept = list(app);
    if name.is_empty() {
        return kept
            .iter()
            .find(|db| db.rollback_target)
            .or_else(|| (kept.len() == 1).then(|| &kept[0]))
            .cloned()
            .ok_or_else(|| match kept.len() {
                0 => Error::NotFound("there is no database kept from a restore to drop".into()),
                _ => Error::InvalidArgument(format!(
                    "{} databases are kept ({}); name the one to drop: `mesbakctl restore --drop-previous NAME`",
                    kept.len(),
                    names(&kept)
                )),
            });
    }
    kept.iter()
        .find(|db| db.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::NotFound(format!(
                "'{name}' is not a database kept by mesbak ({}); `mesbakctl status` lists the kept databases",
                if kept.is_empty() {
                    "none are kept".to_owned()
                } else {
                    format!("kept: {}", names(&kept))
                }
            ))
        })
}

/// The database `RollbackRestore` would make live again.
pub fn rollback_target(app: &App) -> Result<KeptDatabase, Error> {
    let state = app.state.get();
    if let Some(target) = &state.rollback_target {
        if let Some(record) = state.kept_databases.iter().find(|db| &db.name == target) {
            return Ok(wire(record, Some(target)));
        }
    }
    Err(match &state.rolled_back_at {
        Some(at) => Error::NotFound(format!(
            "the newest restore was already rolled back at {at}; a rollback is not repeated (it would put the restored data back): restore a backup to change the live database again"
        )),
        None => Error::NotFound("there is no database kept from a restore to roll back to".into()),
    })
}

fn names(kept: &[KeptDatabase]) -> String {
    kept.iter()
        .map(|db| format!("'{}'", db.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records a database a restore just replaced; it becomes the rollback
/// target.
pub fn record_restore(app: &App, record: KeptRecord) -> Result<(), Error> {
    app.state.update(|state| {
        state.kept_databases.retain(|db| db.name != record.name);
        state.rollback_target = Some(record.name.clone());
        state.rolled_back_at = None;
        state.kept_databases.push(record);
    })
}

/// Records a rollback: `restored` (the database the rollback replaced) is
/// kept, `made_live` is no longer, and there is nothing to roll back to.
pub fn record_rollback(
    app: &App,
    made_live: &str,
    restored: Option<KeptRecord>,
    at: &str,
) -> Result<(), Error> {
    app.state.update(|state| {
        state.kept_databases.retain(|db| db.name != made_live);
        state.kept_databases.extend(restored);
        state.rollback_target = None;
        state.rolled_back_at = Some(at.to_owned());
    })
}

/// Forgets a dropped database.
pub fn record_dropped(app: &App, name: &str) -> Result<(), Error> {
    app.state.update(|state| {
        state.kept_databases.retain(|db| db.name != name);
        if state.rollback_target.as_deref() == Some(name) {
            state.rollback_target = None;
        }
    })
}

/// Brings the recorded sizes (and the list) in line with what the server
/// has: `sizes` maps every database of the server named like a kept one
/// to its size. Databases the server no longer has are forgotten;
/// `<live>_previous_*` / `<live>_rolledback_*` ones it has but the state
/// does not are adopted (a restore cut short, a state file lost).
pub fn reconcile(app: &App, live: &str, sizes: &[(String, u64)]) -> Result<(), Error> {
    let now = crate::jobs::now_rfc3339();
    app.state.update(|state| {
        state
            .kept_databases
            .retain(|db| sizes.iter().any(|(name, _)| name == &db.name));
        for (name, size) in sizes {
            match state.kept_databases.iter_mut().find(|db| &db.name == name) {
                Some(db) => db.size_bytes = *size,
                None if is_kept_name(live, name) => {
                    tracing::warn!(database = %name, "adopting a kept database the agent had no record of");
                    state.kept_databases.push(KeptRecord {
                        name: name.clone(),
                        live_name: live.to_owned(),
                        replaced_at: now.clone(),
                        restored_backup: String::new(),
                        size_bytes: *size,
                    });
                }
                None => {}
            }
        }
        if let Some(target) = &state.rollback_target {
            if !state.kept_databases.iter().any(|db| &db.name == target) {
                state.rollback_target = None;
            }
        }
    })
}

/// Whether `name` is what a restore (`<live>_previous_<stamp>`) or a
/// rollback (`<live>_rolledback_<stamp>`) leaves behind.
pub fn is_kept_name(live: &str, name: &str) -> bool {
    ["_previous_", "_rolledback_"].iter().any(|infix| {
        name.strip_prefix(live)
            .and_then(|rest| rest.strip_prefix(infix))
            .is_some_and(|stamp| {
                !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '_')
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names() {
        assert!(is_kept_name("mes", "mes_previous_20261124_143000"));
        assert!(is_kept_name("mes", "mes_rolledback_20261124_143000"));
        assert!(!is_kept_name("mes", "mes"));
        assert!(!is_kept_name("mes", "mes_restore_20261124_143000"));
        assert!(!is_kept_name("mes", "mes_previous_"));
        assert!(!is_kept_name("mes", "other_previous_20261124"));
        assert!(!is_kept_name("mes", "mes_previous_x; DROP"));
    }
}
