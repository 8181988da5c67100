//! What the agent remembers between runs (`state_dir/state.json`): the last
//! test restore, the last failure and attempt per kind, the databases
//! restores kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mesbak_interface::Error;
use serde::{Deserialize, Serialize};

use crate::storage::{create_private_file, sync_dir};

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
    path: PathBuf,
    state: Mutex<AgentState>,
}

impl StateStore {
    pub fn open(state_dir: &Path) -> Result<StateStore, Error> {
        fs::create_dir_all(state_dir).map_err(|err| {
            Error::Config(format!(
                "cannot create the state folder {}: {err}; check state_dir",
                state_dir.display()
            ))
        })?;
        let _ = fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700));
        let path = state_dir.join("state.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::error!(file = %path.display(), error = %err, "the state file is unreadable; starting afresh");
                AgentState::default()
            }),
            Err(_) => AgentState::default(),
        };
        let mut state = state;
        state.migrate();
        Ok(StateStore {
            path,
            state: Mutex::new(state),
        })
    }

    pub fn get(&self) -> AgentState {
        self.state.lock().expect("state lock").clone()
    }

    /// Changes the state and writes it to disk atomically.
    pub fn update(&self, change: impl FnOnce(&mut AgentState)) -> Result<(), Error> {
        let mut state = self.state.lock().expect("state lock");
        change(&mut state);
        state.migrate();
        write_json(&self.path, &*state)
    }
}

/// Writes `value` as JSON to `path` (0600) atomically: a hidden temporary
/// file, synced, renamed over the old one.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().expect("state file in a folder");
        let name = path
            .file_name()
            .expect("state file has a name")
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut file = create_private_file(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(value).expect("serialises"))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    };
    write().map_err(|err| Error::Failed(format!("cannot save {}: {err}", path.display())))
}
