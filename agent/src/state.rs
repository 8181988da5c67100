//! What the agent remembers between runs (`state_dir/state.json`): the last
//! test restore, the last failure and attempt per kind, the databases
//! restores kept.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use crate::persist::Record;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRestoreRecord {
    pub time: String,
    pub backup: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub time: String,
    pub message: String,
}

/// The live database a restore replaced, kept for rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousDatabase {
    /// Its name now.
    pub name: String,
    /// The live name it had (and gets back on rollback).
    pub live_name: String,
    pub replaced_at: String,
    pub restored_backup: String,
}

/// A database a restore or a rollback replaced and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptRecord {
    /// Its name now.
    pub name: String,
    /// The live name it had (and gets back on rollback).
    pub live_name: String,
    pub replaced_at: String,
    /// The backup restored in its place ("" after a rollback).
    pub restored_backup: String,
    /// Size on the server when last measured; 0 when not known.
    #[serde(default)]
    pub size_bytes: u64,
}

impl From<PreviousDatabase> for KeptRecord {
    fn from(db: PreviousDatabase) -> KeptRecord {
        KeptRecord {
            name: db.name,
            live_name: db.live_name,
            replaced_at: db.replaced_at,
            restored_backup: db.restored_backup,
            size_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub last_test_restore: Option<TestRestoreRecord>,
    /// Last failed backup per kind, cleared by the next success.
    pub last_failure: BTreeMap<String, FailureRecord>,
    /// Failed backups per kind since the state was created (for metrics).
    pub failures_total: BTreeMap<String, u64>,
    /// Older agents kept one; read once into `kept_databases`.
    pub previous_database: Option<PreviousDatabase>,
    /// The server's archiving, while point-in-time recovery is on.
    pub pitr: Option<crate::pitr::Archiving>,
    /// A scratch cluster of a point-in-time restore, until it is removed.
    pub pitr_scratch: Option<crate::pitr::Scratch>,
    /// Every database a restore or a rollback replaced, until dropped.
    pub kept_databases: Vec<KeptRecord>,
    /// The kept database a rollback would make live (the one the newest
    /// restore replaced); None once rolled back.
    pub rollback_target: Option<String>,
    /// When the newest restore was rolled back (a rollback is not repeated).
    pub rolled_back_at: Option<String>,
    /// When a backup of each kind was last started (RFC 3339), whatever
    /// its outcome.
    pub last_attempt: BTreeMap<String, String>,
    /// Backups a verification found damaged, by id (cleared when one
    /// verifies again).
    pub damaged: BTreeMap<String, FailureRecord>,
    /// Per kind: the automatic retention run that was held back because it
    /// would have deleted most backups at once (cleared by the next run
    /// that is not held back, or by an explicit prune).
    pub retention_held: BTreeMap<String, FailureRecord>,
}

impl AgentState {
    /// Folds the single kept database of older agents into the list.
    fn migrate(&mut self) {
        if let Some(previous) = self.previous_database.take() {
            if !self
                .kept_databases
                .iter()
                .any(|db| db.name == previous.name)
            {
                self.rollback_target = Some(previous.name.clone());
                self.kept_databases.push(previous.into());
            }
        }
    }
}

pub struct StateStore {
    record: Record<AgentState>,
    state: Mutex<AgentState>,
    /// Set when the state file was unreadable at start (or one set aside
    /// earlier is still there).
    problems: Vec<String>,
}

impl StateStore {
    /// Opens `state_dir/state.json`. An unreadable file is never silently
    /// replaced: it is kept aside, the agent starts afresh, and
    /// [`StateStore::problems`] says so until a person removed the copy.
    pub fn open(state_dir: &Path) -> Result<StateStore, Error> {
        fs::create_dir_all(state_dir).map_err(|err| {
            Error::Config(format!(
                "cannot create the state folder {}: {err}; check state_dir",
                state_dir.display()
            ))
        })?;
        let _ = fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700));
        let record = Record::new(state_dir, "state.json", "the agent state");
        let (state, unreadable) = record.read_or_set_aside()?;
        let mut problems = Vec::new();
        if let Some(problem) = unreadable {
            problems.push(format!(
                "{problem}; the agent started with an empty state (it holds the last test restore, failure counts and the database a restore kept for `mesbakctl restore --rollback`): look at the copy, then delete it"
            ));
        } else {
            for aside in record.set_aside_files() {
                problems.push(format!(
                    "an unreadable agent state was kept as {}; look at it (the database a restore kept may be named there), then delete it",
                    aside.display()
                ));
            }
        }
        let mut state: AgentState = state.unwrap_or_default();
        state.migrate();
        Ok(StateStore {
            record,
            state: Mutex::new(state),
            problems,
        })
    }

    /// Problems found when the state was opened.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn get(&self) -> AgentState {
        self.state.lock().expect("state lock").clone()
    }

    /// Changes the state and writes it to disk atomically.
    pub fn update(&self, change: impl FnOnce(&mut AgentState)) -> Result<(), Error> {
        let mut state = self.state.lock().expect("state lock");
        change(&mut state);
        state.migrate();
        self.record.write(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_state_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.problems().is_empty());
        store
            .update(|state| {
                state.previous_database = Some(PreviousDatabase {
                    name: "mes_before".into(),
                    live_name: "mes".into(),
                    replaced_at: "2026-11-24T00:00:00Z".into(),
                    restored_backup: "x".into(),
                })
            })
            .unwrap();
        // Read back, the single kept database of older agents is in the list.
        let reopened = StateStore::open(dir.path()).unwrap().get();
        assert_eq!(reopened.kept_databases[0].name, "mes_before");
        assert_eq!(reopened.rollback_target.as_deref(), Some("mes_before"));

        let path = dir.path().join("state.json");
        let damaged = b"{\"format\": 1, \"data\": {\"previous_database\": {\"name\": \"mes_be";
        fs::write(&path, damaged).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get(), AgentState::default());
        assert_eq!(store.problems().len(), 1, "{:?}", store.problems());
        assert!(
            store.problems()[0].contains("kept as"),
            "{:?}",
            store.problems()
        );
        let kept = store.record.set_aside_files();
        assert_eq!(kept.len(), 1);
        assert_eq!(fs::read(&kept[0]).unwrap(), damaged);
        // Writing the fresh state does not touch the copy...
        store
            .update(|state| {
                state.failures_total.insert("database".into(), 1);
            })
            .unwrap();
        assert_eq!(fs::read(&kept[0]).unwrap(), damaged);
        // ...and the next start still reports it until it is removed.
        let again = StateStore::open(dir.path()).unwrap();
        assert_eq!(again.get().failures_total["database"], 1);
        assert_eq!(again.problems().len(), 1);
        fs::remove_file(&kept[0]).unwrap();
        assert!(StateStore::open(dir.path()).unwrap().problems().is_empty());
    }
}
