//! Backups as the agent leaves them, written straight into a backup
//! folder: for tests of what is judged or listed from the files and their
//! metadata sidecars (`<id>.json`), without taking real backups.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{AgentConfig, write_private};

/// The schemas a faked database backup names.
pub const SCHEMAS: [&str; 3] = ["mes_core", "mes_audit", "mes_custom"];

/// A backup as the agent leaves it: the file (0600, `size` bytes) and its
/// metadata sidecar with the given `created` time.
pub fn write_backup(
    config: &AgentConfig,
    kind: &str,
    id: &str,
    created: OffsetDateTime,
    size: usize,
    duration_ms: u64,
) {
    let dir = config.backup_dir().join(kind);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .unwrap();
    for folder in [config.backup_dir(), dir.clone()] {
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o700)).unwrap();
    }
    write_private(&dir.join(id), &vec![0x5a; size]).unwrap();
    write_sidecar(&dir, id, kind, created, size, duration_ms);
}

/// The metadata sidecar of backup `id` in `dir` (the folder of `kind`).
pub fn write_sidecar(
    dir: &Path,
    id: &str,
    kind: &str,
    created: OffsetDateTime,
    size: usize,
    duration_ms: u64,
) {
    let schemas: Vec<&str> = if kind == "database" {
        SCHEMAS.to_vec()
    } else {
        Vec::new()
    };
    let info = json!({
        "id": id,
        "kind": kind,
        "path": dir.join(id).to_str().unwrap(),
        "created": created.format(&Rfc3339).unwrap(),
        "size_bytes": size,
        "sha256": "00".repeat(32),
        "duration_ms": duration_ms,
        "restore_point": id.split('.').next().unwrap(),
        "source": if kind == "database" { "mes" } else { "ignition-data" },
        "server_version": if kind == "database" { "15.10" } else { "" },
        "timescaledb_version": "",
        "table_rows": schemas
            .iter()
            .map(|schema| (format!("{schema}.t"), json!(1)))
            .collect::<serde_json::Map<String, Value>>(),
        "schemas": schemas,
        "downtime_ms": 0,
        "warnings": [],
    });
    write_private(
        &dir.join(format!("{id}.json")),
        serde_json::to_vec_pretty(&info).unwrap().as_slice(),
    )
    .unwrap();
}
