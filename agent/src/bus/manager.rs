//! The manager object, `/org/mesbak/Agent1`: starts jobs, lists backups,
//! reports health. Methods only check and register; the work runs in the
//! job's own task.

use std::sync::Arc;

use mesbak_interface::{
    BackupInfo, BackupKind, BackupTarget, Error, JobOperation, KeptDatabase, MANAGER_PATH,
    OffsiteStatus, PitrStatus, PruneDecision, RestoreOptions, job_path, wire_time,
};
use time::OffsetDateTime;
use zbus::message::Header;
use zbus::zvariant::{OwnedFd, OwnedObjectPath};
use zbus::{Connection, interface};

use super::{caller_uid, launch, require_root};
use crate::app::App;
use crate::offsite::read::{self as offsite_read, spooled};
use crate::offsite::sync::Due;
use crate::storage::BackupRef;
use crate::{backup, import, kept, preview, restore, retention, verify};

pub struct Manager {
    app: Arc<App>,
}

impl Manager {
    pub fn new(app: Arc<App>) -> Manager {
        Manager { app }
    }

    async fn start<F, Fut>(
        &self,
        conn: &Connection,
        uid: u32,
        operation: JobOperation,
        target: String,
        root_only: Option<&str>,
        work: F,
    ) -> Result<OwnedObjectPath, Error>
    where
        F: FnOnce(Arc<App>, Arc<crate::jobs::Job>) -> Fut,
        Fut: std::future::Future<Output = Result<String, Error>> + Send + 'static,
    {
        if let Some(what) = root_only {
            require_root(uid, what)?;
        }
        let job = self.app.jobs.begin(operation, target, uid)?;
        // Boxed: the method call's own future stays small whatever the job.
        let future = Box::pin(work(self.app.clone(), job.clone()));
        launch(self.app.clone(), conn, job, future).await
    }

    /// Starts a job on a backup fetched from off-site target `target` into
    /// the spool (see `offsite::read::spooled`).
    async fn start_from<F, Fut>(
        &self,
        conn: &Connection,
        uid: u32,
        operation: JobOperation,
        backup: &str,
        target: &str,
        then: F,
    ) -> Result<OwnedObjectPath, Error>
    where
        F: FnOnce(Arc<App>, Arc<crate::jobs::Job>, crate::storage::BackupRef) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<String, Error>> + Send + 'static,
    {
        crate::storage::kind_of_id(backup)?;
        offsite_read::open(&self.app, target)?;
        let (id, name) = (backup.to_owned(), target.to_owned());
        self.start(conn, uid, operation, id.clone(), None, move |app, job| {
            spooled(app, job, name, id, then)
        })
        .await
    }
}

#[interface(name = "org.mesbak.Agent1")]
impl Manager {
    /// Starts a backup of `target` (`database`, `ignition` or `all`).
    async fn backup(
        &self,
        target: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let target: BackupTarget =
            target
                .parse()
                .map_err(|err: mesbak_interface::ParseNameError| {
                    Error::InvalidArgument(err.to_string())
                })?;
        let conn_after = conn.clone();
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Backup,
            target.to_string(),
            None,
            move |app, job| async move {
                let result = backup::run(app.clone(), job, target).await;
                super::offsite::after_backup(&app, &conn_after).await;
                result
            },
        )
        .await
    }

    /// Every backup in the backup folder, newest first.
    async fn list_backups(&self) -> Result<Vec<BackupInfo>, Error> {
        self.app.storage.list()
    }

    /// One page of `ListBackups`: at most `count` backups (and never more
    /// than 1000), newest first, from position `first` (0 is the newest),
    /// and `total`, how many there are. A `first` at or past `total` gives
    /// an empty page; `count` 0 gives only the total.
    #[zbus(out_args("total", "page"))]
    async fn list_backups_page(
        &self,
        first: u32,
        count: u32,
    ) -> Result<(u32, Vec<BackupInfo>), Error> {
        self.app.storage.list_page(first, count)
    }

    /// Authenticates a whole backup file without restoring it.
    async fn verify(
        &self,
        backup: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        let found = self.app.storage.resolve(backup, uid == 0)?;
        self.start(
            conn,
            uid,
            JobOperation::Verify,
            found.id.clone(),
            None,
            move |app, job| verify::run(app, job, found),
        )
        .await
    }

    /// Restores a backup over the live data (root only).
    async fn restore(
        &self,
        backup: &str,
        options: RestoreOptions,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        require_root(uid, "restore")?;
        let found = self.app.storage.resolve(backup, true)?;
        self.start(
            conn,
            uid,
            JobOperation::Restore,
            found.id.clone(),
            None,
            move |app, job| restore::run(app, job, found, options),
        )
        .await
    }

    /// Puts back the database the newest restore replaced (root only).
    /// Refused once that restore was rolled back: not a toggle.
    async fn rollback_restore(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Rollback,
            String::new(),
            Some("rollback"),
            restore::rollback,
        )
        .await
    }

    /// Drops a kept database by name (see `PreviousDatabases`); "" means
    /// the one the newest restore kept (root only).
    async fn drop_previous(
        &self,
        name: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        require_root(uid, "dropping a kept database")?;
        let kept = kept::find(&self.app, name)?;
        self.start(
            conn,
            uid,
            JobOperation::DropPrevious,
            kept.name.clone(),
            None,
            move |app, job| restore::drop_previous(app, job, kept),
        )
        .await
    }

    /// What a destructive action would change, one sentence per line, for
    /// the confirmation prompt: `action` is `restore` (argument: the
    /// backup), `restore-file` (the file's name), `restore-from`
    /// (TARGET/ID), `restore-to-time` (the time), `restore-to-time-from`
    /// (TARGET/TIME), `rollback`, `drop-previous` (argument: the name or
    /// ""), `prune`, `pitr-enable` or `pitr-disable`. Fails as the action
    /// itself would (nothing to roll back, a backup that does not exist,
    /// ...). Changes nothing.
    async fn preview(
        &self,
        action: &str,
        argument: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, Error> {
        let uid = caller_uid(conn, &header).await?;
        match action {
            // These ask the database server what it would change.
            "pitr-enable" => {
                super::require_root(uid, "turning point-in-time recovery on")?;
                crate::pitr::preview_enable(&self.app).await
            }
            "pitr-disable" => {
                super::require_root(uid, "turning point-in-time recovery off")?;
                crate::pitr::preview_disable(&self.app)
            }
            "restore-to-time" => {
                super::require_root(uid, "restore")?;
                crate::pitr::preview_restore(&self.app, argument, &crate::pitr::Source::Local).await
            }
            // "TARGET/TIME" (target names have no '/').
            "restore-to-time-from" => {
                super::require_root(uid, "restore")?;
                let (name, time) = argument.split_once('/').ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "'{argument}' is not TARGET/TIME for a point-in-time restore preview"
                    ))
                })?;
                let source = crate::pitr::Source::Offsite(name.to_owned());
                crate::pitr::preview_restore(&self.app, time, &source).await
            }
            _ => preview::describe(&self.app, action, argument, uid),
        }
    }

    /// Restores a database backup into a scratch database and checks it;
    /// an empty id means the newest database backup.
    async fn test_restore(
        &self,
        backup: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        let found = restore::pick_test_restore_backup(&self.app, backup, uid == 0)?;
        self.start(
            conn,
            uid,
            JobOperation::TestRestore,
            found.id.clone(),
            None,
            move |app, job| restore::test_restore(app, job, found),
        )
        .await
    }

    /// What `Prune` would do now: every backup, kept or deleted, and why.
    async fn plan_prune(&self) -> Result<Vec<PruneDecision>, Error> {
        let listed = self.app.storage.list_checked()?;
        let plan = retention::local_plan(
            &listed,
            &self.app.config,
            &self.app.state.get(),
            BackupKind::ALL,
            OffsetDateTime::now_utc(),
            retention::Run::Explicit,
        );
        Ok(retention::wire_decisions(&plan, &listed))
    }

    /// Deletes what retention allows (root only).
    async fn prune(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Prune,
            String::new(),
            Some("prune"),
            |app, job| async move { prune(&app, &job) },
        )
        .await
    }

    /// Turns point-in-time recovery on (root only): configures the server's
    /// archiving, restarts its container once, takes a first base backup.
    async fn pitr_enable(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let conn_after = conn.clone();
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrEnable,
            String::new(),
            Some("turning point-in-time recovery on"),
            move |app, job| async move {
                let result = crate::pitr::enable(app.clone(), job).await;
                // Its files go off-site like any backup's.
                super::offsite::after_backup(&app, &conn_after).await;
                result
            },
        )
        .await
    }

    /// Turns it off (root only; one restart of the database container).
    async fn pitr_disable(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrDisable,
            String::new(),
            Some("turning point-in-time recovery off"),
            crate::pitr::disable,
        )
        .await
    }

    /// Switches the server to a new WAL segment and ships everything.
    async fn pitr_sync(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let conn_after = conn.clone();
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrSync,
            String::new(),
            None,
            move |app, job| async move {
                let result = crate::pitr::sync(app.clone(), job).await;
                // Its files go off-site like any backup's.
                super::offsite::after_backup(&app, &conn_after).await;
                result
            },
        )
        .await
    }

    /// Takes a physical base backup now (the PITR timer calls it).
    async fn pitr_base_backup(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let conn_after = conn.clone();
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrBaseBackup,
            String::new(),
            None,
            move |app, job| async move {
                let result = crate::pitr::base_backup(app.clone(), job).await;
                // Its files go off-site like any backup's.
                super::offsite::after_backup(&app, &conn_after).await;
                result
            },
        )
        .await
    }

    /// Base backups, shipped WAL, the restorable window and its gaps.
    async fn pitr_status(&self) -> PitrStatus {
        crate::pitr::status(&self.app)
    }

    /// Restores the database as it was at `time` (RFC 3339; root only):
    /// recovered in a scratch cluster, then the ordinary verified restore.
    async fn restore_to_time(
        &self,
        time: &str,
        options: RestoreOptions,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let target = crate::pitr::parse_target(time)?;
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Restore,
            time.to_owned(),
            Some("restore"),
            move |app, job| {
                crate::pitr::restore_to_time(app, job, target, options, crate::pitr::Source::Local)
            },
        )
        .await
    }

    /// A test restore of the database as it was at `time` (RFC 3339).
    async fn test_restore_to_time(
        &self,
        time: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let target = crate::pitr::parse_target(time)?;
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::TestRestore,
            time.to_owned(),
            None,
            move |app, job| {
                crate::pitr::test_restore_to_time(app, job, target, crate::pitr::Source::Local)
            },
        )
        .await
    }

    /// `RestoreToTime` with the base backup and WAL read from off-site
    /// target `target` (root only; the backup folder may have none).
    async fn restore_to_time_from(
        &self,
        time: &str,
        target: &str,
        options: RestoreOptions,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let at = crate::pitr::parse_target(time)?;
        offsite_read::open(&self.app, target)?;
        let source = crate::pitr::Source::Offsite(target.to_owned());
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Restore,
            time.to_owned(),
            Some("restore"),
            move |app, job| crate::pitr::restore_to_time(app, job, at, options, source),
        )
        .await
    }

    /// `TestRestoreToTime` with the files read from off-site target `target`.
    async fn test_restore_to_time_from(
        &self,
        time: &str,
        target: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let at = crate::pitr::parse_target(time)?;
        offsite_read::open(&self.app, target)?;
        let source = crate::pitr::Source::Offsite(target.to_owned());
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::TestRestore,
            time.to_owned(),
            None,
            move |app, job| crate::pitr::test_restore_to_time(app, job, at, source),
        )
        .await
    }

    /// Copies what is missing to every off-site target now; returns the
    /// running sync's job when one is already running.
    async fn sync_offsite(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        super::offsite::start_sync(self.app.clone(), conn, uid, Due::All).await
    }

    /// The backups off-site target `target` holds, newest first.
    async fn list_offsite(&self, target: &str) -> Result<Vec<BackupInfo>, Error> {
        tokio::time::timeout(LIST_OFFSITE_TIMEOUT, offsite_read::list(&self.app, target))
            .await
            .unwrap_or_else(|_| Err(not_answering(target)))
    }

    /// `Verify` of a backup read from off-site target `target`.
    async fn verify_from(
        &self,
        backup: &str,
        target: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        self.start_from(conn, uid, JobOperation::Verify, backup, target, verify::run)
            .await
    }

    /// `TestRestore` of a backup read from off-site target `target`; an
    /// empty id means the newest database backup there.
    async fn test_restore_from(
        &self,
        backup: &str,
        target: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        offsite_read::open(&self.app, target)?;
        let picked = tokio::time::timeout(
            LIST_OFFSITE_TIMEOUT,
            offsite_read::pick_test_restore(&self.app, target, backup),
        )
        .await
        .unwrap_or_else(|_| Err(not_answering(target)))?;
        self.start_from(
            conn,
            uid,
            JobOperation::TestRestore,
            &picked,
            target,
            restore::test_restore,
        )
        .await
    }

    /// `Restore` of a backup read from off-site target `target` (root only).
    async fn restore_from(
        &self,
        backup: &str,
        target: &str,
        options: RestoreOptions,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        require_root(uid, "restore")?;
        self.start_from(
            conn,
            uid,
            JobOperation::Restore,
            backup,
            target,
            move |app, job, found| restore::run(app, job, found, options),
        )
        .await
    }

    /// Brings the old stack's backup files in: each (file, name) is an open
    /// file and its name (`mes_YYYY-MM-DD_HHmmss.sql.gz`,
    /// `ignition-YYYYMMDD-HHMMSS.tar.gz`), checked whole, encrypted under
    /// the same timestamp; all or nothing. `dry_run` checks and writes
    /// nothing (root only).
    async fn import(
        &self,
        files: Vec<(OwnedFd, String)>,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        require_root(uid, "import")?;
        let old = import::handed(files)?;
        let target = match old.as_slice() {
            [one] => one.name.clone(),
            many => format!("{} files", many.len()),
        };
        self.start(
            conn,
            uid,
            JobOperation::Import,
            target,
            None,
            move |app, job| import::run(app, job, old, dry_run),
        )
        .await
    }

    /// `Verify` of a backup file the caller opened and handed over; `name`
    /// is its file name (a backup id).
    async fn verify_file(
        &self,
        file: OwnedFd,
        name: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        let found = BackupRef::handed(file.into(), name)?;
        self.start(
            conn,
            uid,
            JobOperation::Verify,
            found.id.clone(),
            None,
            move |app, job| verify::run(app, job, found),
        )
        .await
    }

    /// `TestRestore` of a backup file the caller opened and handed over.
    async fn test_restore_file(
        &self,
        file: OwnedFd,
        name: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        let found = BackupRef::handed(file.into(), name)?;
        restore::require_database_backup(&found)?;
        self.start(
            conn,
            uid,
            JobOperation::TestRestore,
            found.id.clone(),
            None,
            move |app, job| restore::test_restore(app, job, found),
        )
        .await
    }

    /// `Restore` of a backup file the caller opened and handed over (root only).
    async fn restore_file(
        &self,
        file: OwnedFd,
        name: &str,
        options: RestoreOptions,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = caller_uid(conn, &header).await?;
        require_root(uid, "restore")?;
        let found = BackupRef::handed(file.into(), name)?;
        self.start(
            conn,
            uid,
            JobOperation::Restore,
            found.id.clone(),
            None,
            move |app, job| restore::run(app, job, found, options),
        )
        .await
    }

    /// One entry per off-site target: newest copy, queue, last error.
    #[zbus(property)]
    fn offsite(&self) -> Vec<OffsiteStatus> {
        self.app
            .status()
            .offsite
            .iter()
            .map(OffsiteStatus::from)
            .collect()
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// `healthy`, `degraded` or `unhealthy`.
    #[zbus(property)]
    fn health(&self) -> String {
        self.app.status().status.to_string()
    }

    /// One sentence per reason the agent is not healthy.
    #[zbus(property)]
    fn problems(&self) -> Vec<String> {
        self.app.status().problems
    }

    /// RFC 3339 time of the newest backup of any kind, or "".
    #[zbus(property)]
    fn last_backup(&self) -> String {
        wire_time(&self.app.status().last_backup)
    }

    #[zbus(property)]
    fn last_database_backup(&self) -> String {
        wire_time(&self.app.status().last_database_backup)
    }

    #[zbus(property)]
    fn last_ignition_backup(&self) -> String {
        wire_time(&self.app.status().last_ignition_backup)
    }

    #[zbus(property)]
    fn last_test_restore(&self) -> String {
        wire_time(&self.app.status().last_test_restore)
    }

    /// `passed`, `failed`, or "" when no test restore ran yet.
    #[zbus(property)]
    fn last_test_restore_result(&self) -> String {
        match self.app.state.get().last_test_restore {
            Some(record) if record.ok => "passed".into(),
            Some(_) => "failed".into(),
            None => String::new(),
        }
    }

    /// Job objects that exist now, running or recently finished.
    #[zbus(property)]
    fn jobs(&self) -> Vec<OwnedObjectPath> {
        self.app
            .jobs
            .ids()
            .into_iter()
            .filter_map(|id| OwnedObjectPath::try_from(job_path(id)).ok())
            .collect()
    }

    /// Databases kept by restores and rollbacks, until dropped.
    #[zbus(property)]
    fn previous_databases(&self) -> Vec<KeptDatabase> {
        kept::list(&self.app)
    }
}

/// How long `ListOffsite` waits for a target (clients give up at 25 s).
const LIST_OFFSITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn not_answering(target: &str) -> Error {
    Error::Failed(format!(
        "off-site target '{target}' did not answer within {} s; check that it is reachable",
        LIST_OFFSITE_TIMEOUT.as_secs()
    ))
}

fn prune(app: &App, job: &crate::jobs::Job) -> Result<String, Error> {
    job.set_stage("deleting what retention lets go");
    let applied = retention::apply(app, job, BackupKind::ALL, retention::Run::Explicit)?;
    if !applied.failed.is_empty() {
        return Err(Error::Failed(format!(
            "{}{}; check the backup folder's permissions and retry",
            applied.failed.join("; "),
            match applied.deleted.len() {
                0 => String::new(),
                n => format!(" (deleted {n} other backup(s))"),
            }
        )));
    }
    Ok(match applied.deleted.len() {
        0 => "nothing to prune: every backup is kept (`mesbakctl prune --dry-run` says why)".into(),
        n => format!("deleted {n} backup(s): {}", applied.deleted.join(", ")),
    })
}

async fn manager(conn: &Connection) -> Option<zbus::object_server::InterfaceRef<Manager>> {
    conn.object_server()
        .interface::<_, Manager>(MANAGER_PATH)
        .await
        .ok()
}

/// Publishes the health properties after something changed them.
pub async fn health_changed(conn: &Connection) {
    let Some(iface) = manager(conn).await else {
        return;
    };
    let emitter = iface.signal_emitter();
    let object = iface.get().await;
    let _ = object.health_changed(emitter).await;
    let _ = object.problems_changed(emitter).await;
    let _ = object.last_backup_changed(emitter).await;
    let _ = object.last_database_backup_changed(emitter).await;
    let _ = object.last_ignition_backup_changed(emitter).await;
    let _ = object.last_test_restore_changed(emitter).await;
    let _ = object.last_test_restore_result_changed(emitter).await;
    let _ = object.previous_databases_changed(emitter).await;
    let _ = object.offsite_changed(emitter).await;
}

/// Publishes the list of job objects.
pub async fn jobs_changed(conn: &Connection) {
    if let Some(iface) = manager(conn).await {
        let _ = iface.get().await.jobs_changed(iface.signal_emitter()).await;
    }
}
