//! The manager object, `/org/mesbak/Agent1`: starts jobs, lists backups,
//! reports health. Methods only check and register; the work runs in the
//! job's own task.

use std::sync::Arc;

use mesbak_interface::{
    BackupInfo, BackupKind, BackupTarget, Error, JobOperation, MANAGER_PATH, PitrStatus,
    PruneDecision, RestoreOptions, job_path, wire_time,
};
use time::OffsetDateTime;
use zbus::message::Header;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, interface};

use super::{caller_uid, launch, require_root};
use crate::app::App;
use crate::{backup, restore, retention, verify};

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
        let future = work(self.app.clone(), job.clone());
        launch(self.app.clone(), conn, job, future).await
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
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::Backup,
            target.to_string(),
            None,
            move |app, job| backup::run(app, job, target),
        )
        .await
    }

    /// Every backup in the backup folder, newest first.
    async fn list_backups(&self) -> Result<Vec<BackupInfo>, Error> {
        self.app.storage.list()
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

    /// Puts back the database the last restore replaced (root only).
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

    /// Drops the database the last restore kept (root only).
    async fn drop_previous(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::DropPrevious,
            String::new(),
            Some("dropping the previous database"),
            restore::drop_previous,
        )
        .await
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

    /// What `PitrEnable` would change on the database server, one line
    /// each (for the confirmation).
    async fn plan_pitr_enable(&self) -> Result<Vec<String>, Error> {
        crate::pitr::plan_enable(&self.app).await
    }

    /// Turns point-in-time recovery on (root only): configures the server's
    /// archiving, restarts its container once, takes a first base backup.
    async fn pitr_enable(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrEnable,
            String::new(),
            Some("turning point-in-time recovery on"),
            crate::pitr::enable,
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
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrSync,
            String::new(),
            None,
            crate::pitr::sync,
        )
        .await
    }

    /// Takes a physical base backup now (the PITR timer calls it).
    async fn pitr_base_backup(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Error> {
        self.start(
            conn,
            caller_uid(conn, &header).await?,
            JobOperation::PitrBaseBackup,
            String::new(),
            None,
            crate::pitr::base_backup,
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
            move |app, job| crate::pitr::restore_to_time(app, job, target, options),
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
            move |app, job| crate::pitr::test_restore_to_time(app, job, target),
        )
        .await
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
}

/// Publishes the list of job objects.
pub async fn jobs_changed(conn: &Connection) {
    if let Some(iface) = manager(conn).await {
        let _ = iface.get().await.jobs_changed(iface.signal_emitter()).await;
    }
}
