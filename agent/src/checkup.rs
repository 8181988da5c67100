//! `mesbak-agent --check-config`: checks what the next backup would trip
//! over, not only the file's syntax: the key (present, owned, mode, and
//! matching the backups already made), Docker, the database container and
//! that the server answers, the volume and the containers to stop, the
//! schedule, the backup folder (writable, room for another backup) and the
//! notify URLs. Read-only: nothing is created, repaired or started.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use mesbak_format::{Decryptor, Key};
use mesbak_interface::{BackupKind, Error};

use crate::config::Config;
use crate::docker::Docker;
use crate::postgres::{Server, catalog};
use crate::process::Runner;
use crate::storage::{Storage, human_bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One finding: what was checked and what was found.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

#[derive(Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    fn ok(&mut self, text: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Ok,
            text: text.into(),
        });
    }
    fn warn(&mut self, text: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Warning,
            text: text.into(),
        });
    }
    fn error(&mut self, text: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Error,
            text: text.into(),
        });
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Warning).count()
    }

    /// The report: what passed, then warnings, then errors, then the verdict.
    pub fn render(&self, origin: &Path) -> String {
        let mut out = format!("Checked {}:\n", origin.display());
        for (level, title) in [
            (Level::Ok, "OK"),
            (Level::Warning, "Warnings"),
            (Level::Error, "Errors"),
        ] {
            let found: Vec<&Finding> = self.0.iter().filter(|f| f.level == level).collect();
            if found.is_empty() {
                continue;
            }
            if level != Level::Ok {
                out.push_str(&format!("{title}:\n"));
            }
            for finding in found {
                let mark = match level {
                    Level::Ok => "  ok: ",
                    Level::Warning => "  warning: ",
                    Level::Error => "  error: ",
                };
                out.push_str(&format!("{mark}{}\n", finding.text));
            }
        }
        out.push_str(&match (self.errors(), self.warnings()) {
            (0, 0) => "The configuration is valid and everything it names is in place.\n".into(),
            (0, w) => format!("The configuration is valid, with {w} warning(s).\n"),
            (e, _) => format!(
                "{e} error(s): the agent or its next backup would fail; fix them and run `mesbak-agent --check-config` again.\n"
            ),
        });
        out
    }
}

/// Runs every check on a configuration that parsed.
pub async fn run(config: &Config) -> Findings {
    let mut found = Findings::default();
    found.ok("the file parses and every key is known");
    match crate::notify::targets(config) {
        Ok(targets) if targets.is_empty() => found
            .warn("notify.urls is empty: nobody is alerted when a backup fails or stops happening"),
        Ok(targets) => found.ok(format!(
            "notify.urls: {}",
            targets
                .iter()
                .map(|t| t.describe())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(err) => found.error(err.to_string()),
    }
    let storage = Storage::new(&config.backup_dir);
    let key = check_key(config, &mut found);
    if let Some(key) = &key {
        check_key_matches(&storage, key, &mut found);
    }
    check_backup_dir(config, &storage, &mut found);
    check_schedule(config, &mut found).await;
    check_docker(config, &mut found).await;
    found
}

fn check_key(config: &Config, found: &mut Findings) -> Option<Key> {
    match Key::from_env() {
        Some(Ok(key)) => {
            found.ok("encryption key: BACKUP_ENCRYPTION_KEY (from the environment)");
            Some(key)
        }
        Some(Err(err)) => {
            found.error(format!("BACKUP_ENCRYPTION_KEY: {err}"));
            None
        }
        None => match Key::from_file(&config.encryption.key_file) {
            Ok(key) => {
                found.ok(format!(
                    "encryption key: {} (owner and mode are safe)",
                    config.encryption.key_file.display()
                ));
                Some(key)
            }
            Err(err) => {
                let have_backups = !Storage::new(&config.backup_dir)
                    .list()
                    .unwrap_or_default()
                    .is_empty();
                found.error(format!(
                    "encryption.key_file: {}",
                    crate::app::key_advice(&err, have_backups)
                ));
                None
            }
        },
    }
}

/// The newest backup of each kind must open with the key: a key that does
/// not match cannot read any of them.
fn check_key_matches(storage: &Storage, key: &Key, found: &mut Findings) {
    let Ok(backups) = storage.list() else {
        return;
    };
    for kind in BackupKind::ALL {
        let Some(newest) = backups.iter().find(|b| b.kind == *kind) else {
            continue;
        };
        let opened = crate::storage::open_backup(Path::new(&newest.path)).and_then(|file| {
            Decryptor::new(std::io::BufReader::new(file), key)
                .map(|_| ())
                .map_err(|err| crate::pipeline::read_error(&newest.id, err))
        });
        match opened {
            Ok(()) => found.ok(format!("the key opens the newest {kind} backup ({})", newest.id)),
            Err(err) => found.error(format!(
                "{}; this key does not belong to the backups already here: put back the key they were made with (do not make a new one)",
                err.message()
            )),
        }
    }
}

fn check_backup_dir(config: &Config, storage: &Storage, found: &mut Findings) {
    let root = storage.root();
    let euid = nix::unistd::geteuid().as_raw();
    // Where the agent will write: the folder, or the nearest parent that
    // exists (it creates the rest).
    let existing = match fs::symlink_metadata(root) {
        Err(_) => {
            let Some(parent) = root.ancestors().skip(1).find(|p| p.exists()) else {
                found.error(format!(
                    "backup_dir {}: no parent folder exists",
                    root.display()
                ));
                return;
            };
            found.ok(format!(
                "backup_dir {} does not exist yet; the agent creates it (0700)",
                root.display()
            ));
            parent.to_path_buf()
        }
        Ok(meta) if meta.file_type().is_symlink() => {
            found.error(format!(
                "backup_dir {} is a symlink; mesbak refuses to write through symlinks: point backup_dir at the real folder",
                root.display()
            ));
            return;
        }
        Ok(meta) if !meta.is_dir() => {
            found.error(format!("backup_dir {} is not a folder", root.display()));
            return;
        }
        Ok(meta) if meta.uid() != euid => {
            found.error(format!(
                "backup_dir {} is owned by uid {}, not by the agent (uid {euid}); `chown root:root {}`",
                root.display(),
                meta.uid(),
                root.display()
            ));
            return;
        }
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o700 {
                found.warn(format!(
                    "backup_dir {} has mode {mode:04o}; the agent repairs it to 0700 at its next start",
                    root.display()
                ));
            }
            root.to_path_buf()
        }
    };
    let probe = existing.join(format!(".mesbak-check-{}", std::process::id()));
    match crate::storage::create_private_file(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            found.ok(format!("{} is writable", existing.display()));
        }
        Err(err) => found.error(format!(
            "backup_dir: {} is not writable: {err}",
            existing.display()
        )),
    }
    if let Ok(free) = Storage::new(&existing).free_bytes() {
        let backups = storage.list().unwrap_or_default();
        let largest = crate::commit::next_backup_size(&backups);
        let floor = config.backup.min_free_bytes;
        if free < floor.saturating_add(largest) {
            found.error(format!(
                "only {} is free in {}: the next backup needs about {} and {} must stay free (backup.min_free_bytes); free space or move backup_dir",
                human_bytes(free),
                existing.display(),
                human_bytes(largest),
                human_bytes(floor)
            ));
        } else {
            found.ok(format!(
                "{} free in {}",
                human_bytes(free),
                existing.display()
            ));
        }
    }
}

async fn check_schedule(config: &Config, found: &mut Findings) {
    for (key, spec) in [
        ("schedule.backup (or SCHEDULE)", &config.schedule.backup),
        ("schedule.test_restore", &config.schedule.test_restore),
    ] {
        let calendar = match crate::schedule::on_calendar(spec) {
            Ok(calendar) => calendar,
            Err(err) => {
                found.error(format!("{key}: {err}"));
                continue;
            }
        };
        // systemd is the judge of its own calendar syntax.
        match crate::schedule::validate(spec, &calendar).await {
            Ok(()) => found.ok(format!(
                "{key}: '{spec}' runs at OnCalendar={}",
                calendar.join(" and OnCalendar=")
            )),
            Err(err) if err.contains("could not be checked") => found.warn(format!("{key}: {err}")),
            Err(err) => found.error(format!("{key}: {err}")),
        }
    }
}

async fn check_docker(config: &Config, found: &mut Findings) {
    let needs_docker = !config.database.container.is_empty() || !config.ignition.volume.is_empty();
    if !needs_docker {
        check_server(config, Runner::Host, found).await;
        return;
    }
    let docker = match Docker::connect().await {
        Ok(docker) => docker,
        Err(err) => {
            found.error(format!("Docker: {}", err.message()));
            return;
        }
    };
    match docker.version().await {
        Ok(version) => found.ok(format!("Docker answers ({version})")),
        Err(err) => {
            found.error(format!("Docker: {}", err.message()));
            return;
        }
    }
    let container = &config.database.container;
    if container.is_empty() {
        check_server(config, Runner::Host, found).await;
    } else {
        match docker.is_running(container).await {
            Ok(true) => {
                check_server(
                    config,
                    Runner::Container {
                        docker: docker.clone(),
                        container: container.clone(),
                    },
                    found,
                )
                .await
            }
            Ok(false) => found.warn(format!(
                "database.container '{container}' exists but is stopped; a backup starts it and stops it again"
            )),
            Err(Error::NotFound(_)) => found.error(format!(
                "database.container '{container}' does not exist; check `docker ps -a` and database.container in {}",
                config.origin.display()
            )),
            Err(err) => found.error(format!("database.container '{container}': {}", err.message())),
        }
    }
    let volume = &config.ignition.volume;
    if !volume.is_empty() {
        match docker.volume_exists(volume).await {
            Ok(true) => found.ok(format!("ignition.volume '{volume}' exists")),
            Ok(false) => found.error(format!(
                "ignition.volume '{volume}' does not exist; check `docker volume ls` (or set ignition.volume = \"\" when there is no Ignition)"
            )),
            Err(err) => found.error(format!("ignition.volume '{volume}': {}", err.message())),
        }
        if !config.ignition.helper_image.is_empty() {
            match docker.image_exists(&config.ignition.helper_image).await {
                Ok(true) => {}
                _ => found.error(format!(
                    "ignition.helper_image '{}' is not on this host; load it or set ignition.helper_image = \"\"",
                    config.ignition.helper_image
                )),
            }
        }
    }
    for (key, names) in [
        ("ignition.stop_containers", &config.ignition.stop_containers),
        ("restore.stop_containers", &config.restore.stop_containers),
    ] {
        for name in names {
            match docker.is_running(name).await {
                Ok(_) => found.ok(format!("{key}: container '{name}' exists")),
                Err(Error::NotFound(_)) => found.error(format!(
                    "{key}: container '{name}' does not exist; check `docker ps -a` and {key}"
                )),
                Err(err) => found.error(format!("{key}: '{name}': {}", err.message())),
            }
        }
    }
}

async fn check_server(config: &Config, runner: Runner, found: &mut Findings) {
    let password = match config.database_password() {
        Ok(password) => password,
        Err(err) => {
            found.error(err.to_string());
            return;
        }
    };
    let place = runner.describe();
    let server = Server::new(config, runner, password);
    match catalog::server_version(&server).await {
        Ok(version) => found.ok(format!(
            "the database server in {place} answers as '{}' (PostgreSQL {version})",
            config.database.user
        )),
        Err(err) => {
            found.error(format!(
                "the database server in {place} does not answer: {}",
                err.message()
            ));
            return;
        }
    }
    match catalog::database_exists(&server, &config.database.name).await {
        Ok(true) => found.ok(format!("database '{}' exists", config.database.name)),
        Ok(false) => found.error(format!(
            "database '{}' (database.name or POSTGRES_DB) does not exist on the server",
            config.database.name
        )),
        Err(err) => found.error(err.message()),
    }
}
