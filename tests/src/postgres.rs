//! PostgreSQL servers in throwaway containers: PostgreSQL 15 (Debian's, run
//! from the host's `/usr`) and the plant's TimescaleDB 2.19 on PostgreSQL 17.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::engine::Engine;
use crate::fingerprint::Fingerprint;
use crate::util::{blocking, describe, free_port, random_hex, run, run_text, run_unchecked};

/// The superuser every test server has.
pub const ADMIN: &str = "admin";
/// The database every test server starts with.
pub const DEFAULT_DB: &str = "mes";
/// Label on everything the harness creates, with the test process's pid as
/// value, so leftovers of killed test runs can be removed.
pub const LABEL: &str = "mesbak.test.pid";

/// Which server a test runs on. Every database suite runs on both
/// ([`crate::on_both_servers!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian 12's PostgreSQL 15 (`mesbak-test/postgres:15`).
    Postgres15,
    /// The plant's server: PostgreSQL 17 with TimescaleDB 2.19, as
    /// `timescale/timescaledb:latest-pg17` (`mesbak-test/timescaledb:pg17`).
    TimescaleDb,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::Postgres15, Flavor::TimescaleDb];

    /// The image `dev/lib.sh` builds (`ensure_images`).
    pub fn image(self) -> &'static str {
        match self {
            Flavor::Postgres15 => "mesbak-test/postgres:15",
            Flavor::TimescaleDb => "mesbak-test/timescaledb:pg17",
        }
    }

    /// Whether the server has TimescaleDB.
    pub fn timescaledb(self) -> bool {
        self == Flavor::TimescaleDb
    }

    /// The fixture files, in loading order.
    pub fn fixtures(self) -> Vec<PathBuf> {
        let mut files = vec![fixture_path()];
        if self.timescaledb() {
            files.push(crate::util::workspace_root().join("tests/fixtures/mes_timescaledb.sql"));
        }
        files
    }
}

/// How the agent reaches a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// As on a plant: the container has `--network none`, no published port
    /// and no shared socket; only `docker exec` reaches the server.
    DockerOnly,
    /// Host networking, listening on `127.0.0.1:`[`Postgres::port`], for
    /// the agent's host mode (`database.container = ""`).
    HostPort,
}

/// The fixture: a realistic MES database (see the file's header).
pub fn fixture_path() -> PathBuf {
    crate::util::workspace_root().join("tests/fixtures/mes.sql")
}

/// A PostgreSQL server in its own container (`mesbak-test-pg-<random>`),
/// with the superuser `admin` / [`Postgres::password`] and an empty
/// database `mes` (which has the TimescaleDB extension on the TimescaleDB
/// server, as the official image gives it). Data lives in a named volume.
/// Drop removes container and volume.
///
/// All methods block (inside a multi-threaded tokio runtime they step aside
/// with `block_in_place`) and panic with the command's stderr on failure.
pub struct Postgres {
    name: String,
    volume: String,
    port: u16,
    password: String,
    flavor: Flavor,
    reach: Reach,
    /// Where the data directory lives.
    disk: Disk,
    /// The dockerd the container runs in.
    engine: Engine,
}

/// Where a server keeps its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk {
    /// A named Docker volume (removed with the server).
    Volume,
    /// A tmpfs of this many MiB: a small disk, gone when the container stops.
    Tmpfs(u64),
    /// A folder of the host (e.g. a small file system that outlives a
    /// crash of the server, [`crate::SmallDisk`]), bind-mounted.
    Host(PathBuf),
}

impl Postgres {
    /// A fresh PostgreSQL 15 server reached through Docker only.
    pub fn start() -> Postgres {
        Postgres::start_on(Flavor::Postgres15)
    }

    /// A fresh `flavor` server reached through Docker only, with an empty
    /// database `mes` and no roles but `admin`: also the "empty server" a
    /// restore must work on.
    pub fn start_on(flavor: Flavor) -> Postgres {
        Postgres::try_start(flavor, Reach::DockerOnly)
            .unwrap_or_else(|err| panic!("cannot start {flavor:?}: {err:#}"))
    }

    /// A fresh `flavor` server on host networking at 127.0.0.1:[`Postgres::port`].
    pub fn start_reachable(flavor: Flavor) -> Postgres {
        Postgres::try_start(flavor, Reach::HostPort)
            .unwrap_or_else(|err| panic!("cannot start {flavor:?}: {err:#}"))
    }

    /// A fresh PostgreSQL 15 server with the fixture loaded into `mes`.
    pub fn start_with_fixture() -> Postgres {
        Postgres::with_fixture_on(Flavor::Postgres15)
    }

    /// A fresh `flavor` server with its fixture loaded into `mes`.
    pub fn with_fixture_on(flavor: Flavor) -> Postgres {
        let pg = Postgres::start_on(flavor);
        pg.load_fixture(DEFAULT_DB);
        pg
    }

    /// A fresh `flavor` server whose data directory is a tmpfs of `mib` MiB
    /// (fill it with [`Postgres::fill_data_disk`]).
    pub fn start_on_small_disk(flavor: Flavor, mib: u64) -> Postgres {
        Postgres::launch_with(
            &Engine::shared(),
            flavor,
            Reach::DockerOnly,
            Disk::Tmpfs(mib),
        )
        .unwrap_or_else(|err| panic!("cannot start {flavor:?}: {err:#}"))
    }

    /// Starts a server, returning the error instead of panicking.
    pub fn try_start(flavor: Flavor, reach: Reach) -> Result<Postgres> {
        Postgres::launch_with(&Engine::shared(), flavor, reach, Disk::Volume)
    }

    /// A fresh `flavor` server in `engine` reached through Docker only,
    /// its data on `disk`, with its fixture loaded into `mes`.
    pub fn with_fixture_in(engine: &Engine, flavor: Flavor, disk: Disk) -> Postgres {
        let pg = Postgres::launch_with(engine, flavor, Reach::DockerOnly, disk)
            .unwrap_or_else(|err| panic!("cannot start {flavor:?}: {err:#}"));
        pg.load_fixture(DEFAULT_DB);
        pg
    }

    fn launch_with(engine: &Engine, flavor: Flavor, reach: Reach, disk: Disk) -> Result<Postgres> {
        if *engine == Engine::shared() {
            check_docker(flavor)?;
        }
        reap_leftovers();
        let mut last_error = None;
        // A port found free can be taken before the server binds it: retry.
        for _ in 0..3 {
            let id = random_hex(6);
            let pg = Postgres {
                name: format!("mesbak-test-pg-{id}"),
                volume: format!("mesbak-test-pg-{id}-data"),
                port: match reach {
                    Reach::HostPort => free_port(),
                    Reach::DockerOnly => 5432,
                },
                password: random_hex(12),
                flavor,
                reach,
                disk: disk.clone(),
                engine: engine.clone(),
            };
            match pg.launch() {
                Ok(()) => return Ok(pg),
                Err(err) => last_error = Some(err), // drop removes what exists
            }
        }
        Err(last_error.expect("three attempts"))
    }

    fn launch(&self) -> Result<()> {
        let pid = std::process::id().to_string();
        run(
            self.engine.docker().args([
                "volume",
                "create",
                "--label",
                &format!("{LABEL}={pid}"),
                &self.volume,
            ]),
            None,
        )?;
        let image = self.flavor.image();
        let mut cmd = self.engine.docker();
        cmd.args(["run", "-d", "--name", &self.name])
            .args(["--label", &format!("{LABEL}={pid}")])
            .args(self.engine.restart_policy())
            .args(match &self.disk {
                Disk::Volume => [
                    "-v".to_owned(),
                    format!("{}:/var/lib/postgresql/data", self.volume),
                ],
                Disk::Tmpfs(mib) => [
                    "--mount".to_owned(),
                    format!(
                        "type=tmpfs,destination=/var/lib/postgresql/data,tmpfs-size={}",
                        mib << 20
                    ),
                ],
                Disk::Host(folder) => [
                    "--mount".to_owned(),
                    format!(
                        "type=bind,source={},destination=/var/lib/postgresql/data",
                        folder.display()
                    ),
                ],
            })
            .args(["-e", &format!("POSTGRES_USER={ADMIN}")])
            .args(["-e", &format!("POSTGRES_PASSWORD={}", self.password)])
            .args(["-e", &format!("POSTGRES_DB={DEFAULT_DB}")])
            .args(["-e", &format!("PGPORT={}", self.port)]);
        match self.reach {
            Reach::DockerOnly => cmd.args(["--network", "none"]),
            Reach::HostPort => cmd.args(["--network", "host"]),
        };
        if self.flavor == Flavor::Postgres15 {
            // Debian's PostgreSQL 15 runs from the host's /usr.
            cmd.args(["-v", "/usr:/usr:ro"]);
        }
        cmd.arg(image);
        run(&mut cmd, None)
            .with_context(|| format!("docker run {image} (build it with dev/test)"))?;
        self.wait_ready()
    }

    /// Waits until the server answers on its socket, for up to 90 s.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = run_unchecked(
                self.engine
                    .docker()
                    .args(["exec", &self.name, "pg_isready", "-q", "-U", ADMIN]),
                None,
            )?;
            if ready.status.success() {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "container {} stopped before PostgreSQL was ready; its log:\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL in {} not ready within 90 s; its log:\n{}",
                    self.name,
                    self.logs(40)
                );
            }
            blocking(|| std::thread::sleep(Duration::from_millis(200)));
        }
    }

    /// Which server this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// How the agent reaches it.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dockerd the container runs in.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The data volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// The TCP port: on 127.0.0.1 of the host for [`Reach::HostPort`], inside
    /// the container's own network namespace otherwise.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name, `admin`.
    pub fn user(&self) -> &str {
        ADMIN
    }

    /// The superuser's password (random hex).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs `sql` as `admin` in `db` with
    /// `psql -X -At -v ON_ERROR_STOP=1` (SQL on stdin) and returns stdout
    /// without its final newline: one row per line, columns split by `|`.
    /// Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|err| panic!("psql in {} ({db}) failed: {err:#}", self.name))
    }

    /// [`Postgres::psql`], returning the error instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String> {
        let output = run(
            self.engine.docker().args([
                "exec",
                "-i",
                &self.name,
                "psql",
                "-U",
                ADMIN,
                "-d",
                db,
                "-X",
                "-At",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ]),
            Some(sql.as_bytes()),
        )?;
        let mut text = String::from_utf8(output.stdout).context("psql output is not UTF-8")?;
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// Loads the server's fixtures (`tests/fixtures/mes.sql`, and on the
    /// TimescaleDB server `mes_timescaledb.sql`) into the existing database `db`.
    pub fn load_fixture(&self, db: &str) {
        for path in self.flavor.fixtures() {
            let sql = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
            self.psql(db, &sql);
        }
    }

    /// Creates an empty database owned by `admin`.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {};", quote_ident(name)),
        );
    }

    /// Drops a database (and its connections), if it exists.
    pub fn drop_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE);",
                quote_ident(name)
            ),
        );
    }

    /// Names of the databases, except the templates, sorted.
    pub fn databases(&self) -> Vec<String> {
        self.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname;",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Whether database `name` exists.
    pub fn has_database(&self, name: &str) -> bool {
        self.databases().iter().any(|d| d == name)
    }

    /// Roles that are not PostgreSQL's own (`pg_*`), sorted.
    pub fn roles(&self) -> Vec<String> {
        self.psql(
            "postgres",
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname;",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Everything a restore must bring back of `db`: see [`Fingerprint`].
    pub fn fingerprint(&self, db: &str) -> Fingerprint {
        Fingerprint::of(self, db)
            .unwrap_or_else(|err| panic!("fingerprint of {db} in {} failed: {err:#}", self.name))
    }

    /// Row count of a table (`schema.table`, quoted as needed).
    pub fn count(&self, db: &str, table: &str) -> u64 {
        self.psql(db, &format!("SELECT count(*) FROM {table};"))
            .parse()
            .expect("count(*) is a number")
    }

    /// `pg_dump` of `db` in plain format, run in the container.
    pub fn pg_dump(&self, db: &str) -> Vec<u8> {
        run(
            self.engine
                .docker()
                .args(["exec", &self.name, "pg_dump", "-U", ADMIN, db]),
            None,
        )
        .unwrap_or_else(|err| panic!("{err:#}"))
        .stdout
    }

    /// Size in bytes of `pg_dump` of `db` in plain format, streamed (for
    /// bulk data, where [`Postgres::pg_dump`] would hold it all in memory).
    pub fn pg_dump_size(&self, db: &str) -> u64 {
        blocking(|| {
            let mut cmd = self.engine.docker();
            cmd.args(["exec", &self.name, "pg_dump", "-U", ADMIN, db]);
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run docker exec pg_dump");
            let mut stdout = child.stdout.take().expect("piped");
            let size = std::io::copy(&mut stdout, &mut std::io::sink()).expect("read pg_dump");
            let out = child.wait_with_output().expect("wait for pg_dump");
            assert!(
                out.status.success(),
                "`{}` failed: {}",
                describe(&cmd),
                String::from_utf8_lossy(&out.stderr)
            );
            size
        })
    }

    /// Copies `from` into the new database `to` on the same server with
    /// `pg_dump | psql -v ON_ERROR_STOP=1` (between TimescaleDB's
    /// pre_restore and post_restore on that server); the roles already exist.
    pub fn copy_database(&self, from: &str, to: &str) {
        self.create_database(to);
        // Timescale's logical restore: restoring mode around the load.
        if self.flavor.timescaledb() {
            self.psql(to, "SELECT public.timescaledb_pre_restore();");
        }
        blocking(|| {
            let mut dump_cmd = self.engine.docker();
            dump_cmd.args(["exec", &self.name, "pg_dump", "-U", ADMIN, from]);
            let mut dump = dump_cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run docker exec pg_dump");
            let mut load_cmd = self.engine.docker();
            load_cmd.args([
                "exec",
                "-i",
                &self.name,
                "psql",
                "-U",
                ADMIN,
                "-d",
                to,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ]);
            let load = load_cmd
                .stdin(dump.stdout.take().expect("piped"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("run docker exec psql");
            let dumped = dump.wait_with_output().expect("wait for pg_dump");
            if !dumped.status.success() {
                panic!(
                    "`{}` failed: {}",
                    describe(&dump_cmd),
                    String::from_utf8_lossy(&dumped.stderr)
                );
            }
            if !load.status.success() {
                panic!(
                    "`{}` failed: {}",
                    describe(&load_cmd),
                    String::from_utf8_lossy(&load.stderr)
                );
            }
        });
        if self.flavor.timescaledb() {
            self.psql(to, "SELECT public.timescaledb_post_restore();");
        }
    }

    /// Adds time-series rows to `db` (which must hold the fixture) until its
    /// `pg_dump` grows by about `approx_mib` MiB: on PostgreSQL 15 into the
    /// partitioned `mes_core.production_event`, on TimescaleDB into the
    /// hypertable `mes_core.machine_metric` (one daily chunk per ~50,000
    /// rows), as a plant's historian fills them. Rows are generated
    /// server-side (counts, states, alarms with jsonb payloads); they
    /// compress about as well as real dumps do.
    pub fn load_bulk(&self, db: &str, approx_mib: u64) {
        if self.flavor.timescaledb() {
            self.load_bulk_metrics(db, approx_mib);
        } else {
            self.load_bulk_events(db, approx_mib);
        }
    }

    /// Historian samples in the hypertable, from 2025-01-01 on (before the
    /// fixture's own rows), 6 assets every 10 seconds.
    fn load_bulk_metrics(&self, db: &str, approx_mib: u64) {
        let target = approx_mib * 1024 * 1024;
        let first: i64 = self
            .psql(
                db,
                "SELECT count(*) FROM mes_core.machine_metric WHERE time < '2026-01-01';",
            )
            .parse()
            .expect("count(*) is a number");
        let sample_rows: u64 = 20_000;
        self.psql(db, &bulk_metric_sql(first, sample_rows));
        let sample_bytes = self.copy_out_bytes(
            db,
            &format!(
                "SELECT * FROM mes_core.machine_metric WHERE time >= timestamptz '2025-01-01 00:00:00+00' + ({first} / 6) * interval '10 seconds' \
                 AND time < '2026-01-01'"
            ),
        );
        let per_row = (sample_bytes / sample_rows).max(1);
        let mut remaining = (target / per_row).saturating_sub(sample_rows);
        let mut next = first + sample_rows as i64;
        const BATCH: u64 = 500_000;
        while remaining > 0 {
            let rows = remaining.min(BATCH);
            self.psql(db, &bulk_metric_sql(next, rows));
            next += rows as i64;
            remaining -= rows;
        }
        self.psql(db, "ANALYZE mes_core.machine_metric;");
    }

    fn load_bulk_events(&self, db: &str, approx_mib: u64) {
        let target = approx_mib * 1024 * 1024;
        // Calibrate the COPY text size of a row on a first batch.
        let sample_rows: u64 = 20_000;
        let first = self.next_bulk_id(db);
        self.psql(db, &bulk_insert_sql(first, sample_rows));
        let sample_bytes = self.copy_out_bytes(
            db,
            &format!(
                "SELECT * FROM mes_core.production_event WHERE event_id >= {first} AND event_id < {}",
                first + sample_rows as i64
            ),
        );
        let per_row = (sample_bytes / sample_rows).max(1);
        let mut remaining = (target / per_row).saturating_sub(sample_rows);
        let mut next = first + sample_rows as i64;
        // Batches small enough to keep each statement to a few seconds.
        const BATCH: u64 = 500_000;
        while remaining > 0 {
            let rows = remaining.min(BATCH);
            self.psql(db, &bulk_insert_sql(next, rows));
            next += rows as i64;
            remaining -= rows;
        }
        self.psql(
            db,
            &format!(
                "SELECT setval('mes_core.production_event_id_seq', \
                 greatest({next} - 1, (SELECT last_value FROM mes_core.production_event_id_seq))) \\gset\n\
                 ANALYZE mes_core.production_event;"
            ),
        );
    }

    /// First event id free for bulk rows: well above anything the sequence
    /// handed out, so the fixture's own rows and later inserts never clash.
    fn next_bulk_id(&self, db: &str) -> i64 {
        let max: i64 = self
            .psql(
                db,
                "SELECT greatest(coalesce(max(event_id), 0), \
                 (SELECT last_value FROM mes_core.production_event_id_seq)) \
                 FROM mes_core.production_event;",
            )
            .parse()
            .expect("max(event_id) is a number");
        (max / 1_000_000 + 1) * 1_000_000
    }

    fn copy_out_bytes(&self, db: &str, query: &str) -> u64 {
        let output = run(
            self.engine.docker().args([
                "exec",
                &self.name,
                "psql",
                "-U",
                ADMIN,
                "-d",
                db,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("COPY ({query}) TO STDOUT"),
            ]),
            None,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
        output.stdout.len() as u64
    }

    /// Fills the file system of the data directory with a file until only
    /// about `leave_mib` MiB stay free.
    pub fn fill_data_disk(&self, leave_mib: u64) {
        // Only sh and coreutils: PostgreSQL 15's image has no awk.
        let script = format!(
            "avail() {{ df -Pk /var/lib/postgresql/data | {{ read -r _; read -r _ _ _ a _; echo $a; }}; }}; \
             fill=$(( $(avail) / 1024 - {leave_mib} )); \
             if [ $fill -gt 0 ]; then head -c ${{fill}}M /dev/zero > /var/lib/postgresql/data/mesbak-test-filler; fi; \
             sync; avail"
        );
        self.exec(&script, "fill the data disk");
    }

    /// Runs a shell script in the server's container, as root.
    pub fn exec(&self, script: &str, what: &str) -> String {
        let out = run(
            self.engine
                .docker()
                .args(["exec", "-u", "0", &self.name, "sh", "-c", script]),
            None,
        )
        .unwrap_or_else(|err| panic!("cannot {what} in {}: {err:#}", self.name));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Size of `db` on disk, in bytes.
    pub fn database_size(&self, db: &str) -> u64 {
        self.psql(
            "postgres",
            &format!("SELECT pg_database_size({});", quote_literal(db)),
        )
        .parse()
        .expect("pg_database_size is a number")
    }

    /// `docker stop` the container (fast shutdown).
    pub fn stop(&self) {
        run(
            self.engine.docker().args(["stop", "-t", "30", &self.name]),
            None,
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// `docker restart` the container (fast shutdown, start) and wait
    /// until it answers.
    pub fn restart(&self) {
        run(
            Command::new("docker").args(["restart", "-t", "30", &self.name]),
            None,
        )
        .and_then(|_| self.wait_ready())
        .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// `docker start` the stopped container and wait until it answers.
    pub fn start_again(&self) {
        run(self.engine.docker().args(["start", &self.name]), None)
            .and_then(|_| self.wait_ready())
            .unwrap_or_else(|err| panic!("{err:#}"));
    }

    /// Whether the container is running.
    pub fn is_running(&self) -> bool {
        self.engine.is_running(&self.name)
    }

    /// The container's `docker logs`, last `lines` lines (stdout and stderr).
    pub fn logs(&self, lines: usize) -> String {
        match run_unchecked(
            self.engine
                .docker()
                .args(["logs", "--tail", &lines.to_string(), &self.name]),
            None,
        ) {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => format!("(no logs: {err:#})"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL container {} (port {}) log ---\n{}\n---",
                self.name,
                self.port,
                self.logs(30)
            );
        }
        let _ = run_unchecked(
            self.engine.docker().args(["rm", "-f", "-v", &self.name]),
            None,
        );
        let _ = run_unchecked(
            self.engine
                .docker()
                .args(["volume", "rm", "-f", &self.volume]),
            None,
        );
    }
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled (standard_conforming_strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn check_docker(flavor: Flavor) -> Result<()> {
    static DOCKER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DOCKER
        .get_or_init(|| {
            run(
                Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
                None,
            )
            .map(|_| ())
            .map_err(|err| {
                format!(
                    "dockerd does not answer; run dev/test (or `source dev/lib.sh; ensure_dockerd`) as root: {err:#}"
                )
            })
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    let image = flavor.image();
    if run(
        Command::new("docker").args(["image", "inspect", image]),
        None,
    )
    .is_err()
    {
        bail!(
            "image {image} is missing; run dev/test (or `source dev/lib.sh; ensure_images`) as root"
        );
    }
    Ok(())
}

/// Removes containers and volumes labelled by test processes that no longer
/// exist (a killed `cargo test`), once per process.
pub(crate) fn reap_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let alive = |pid: &str| {
            pid.parse::<i32>().is_ok_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            })
        };
        let format = format!("{{{{.Names}}}} {{{{.Label \"{LABEL}\"}}}}");
        if let Ok(list) = run_text(Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL}"),
            "--format",
            &format,
        ])) {
            for line in list.lines() {
                match line.split_once(' ') {
                    Some((name, pid)) if !alive(pid) => {
                        let _ = run_unchecked(
                            Command::new("docker").args(["rm", "-f", "-v", name]),
                            None,
                        );
                    }
                    _ => {}
                }
            }
        }
        let vformat = format!("{{{{.Name}}}} {{{{.Label \"{LABEL}\"}}}}");
        if let Ok(list) = run_text(Command::new("docker").args([
            "volume",
            "ls",
            "--filter",
            &format!("label={LABEL}"),
            "--format",
            &vformat,
        ])) {
            for line in list.lines() {
                match line.split_once(' ') {
                    Some((name, pid)) if !alive(pid) => {
                        let _ = run_unchecked(
                            Command::new("docker").args(["volume", "rm", name]),
                            None,
                        );
                    }
                    _ => {}
                }
            }
        }
    });
}

/// `INSERT ... SELECT generate_series` of `rows` historian rows with ids
/// from `first`. Timestamps cycle through January-April 2026 (every
/// partition) with a sprinkle of rows for the default partition.
fn bulk_insert_sql(first: i64, rows: u64) -> String {
    let last = first + rows as i64 - 1;
    format!(
        r#"INSERT INTO mes_core.production_event
    (event_id, event_time, asset_id, work_order_id, event_type, good_count, scrap_count, value, payload)
SELECT g,
       CASE WHEN g % 10007 = 0 THEN timestamptz '2026-06-01 00:00:00+00' + (g % 1000) * interval '1 minute'
            ELSE timestamptz '2026-01-01 00:00:00+00' + ((g * 7919) % 10281600) * interval '1 second'
       END,
       100 + g % 300,
       CASE WHEN g % 9 = 0 THEN NULL ELSE 1 + g % 996 END,
       (ARRAY['count', 'count', 'count', 'state_change', 'quality_check', 'alarm', 'downtime'])[1 + g % 7],
       (g * 13) % 60,
       CASE WHEN g % 17 = 0 THEN 1 + g % 3 ELSE 0 END,
       CASE WHEN g % 23 = 0 THEN NULL ELSE round((18.5 + (g % 977) * 0.0131)::numeric, 4)::double precision END,
       CASE g % 7
           WHEN 3 THEN jsonb_build_object('from', (ARRAY['idle', 'setup', 'running', 'blocked'])[1 + g % 4],
                                          'to', (ARRAY['running', 'blocked', 'down', 'idle'])[1 + g % 4],
                                          'plc', 'S7-1500/' || (g % 12))
           WHEN 4 THEN jsonb_build_object('inspector', (ARRAY['Jürgen', '佐藤', 'Pat'])[1 + g % 3],
                                          'passed', g % 31 <> 0, 'torque_nm', 11 + g % 5)
           WHEN 5 THEN jsonb_build_object('alarm', 'AL' || (g % 64), 'text', 'Lichtschranke unterbrochen',
                                          'ack', g % 2 = 0)
           WHEN 6 THEN jsonb_build_object('reason', (ARRAY['Materialmangel', 'Werkzeugwechsel', '段取り', 'no operator'])[1 + g % 4],
                                          'minutes', g % 45)
           ELSE NULL
       END
FROM generate_series({first}::bigint, {last}::bigint) AS g;
"#
    )
}

/// `INSERT ... SELECT generate_series` of `rows` historian samples for the
/// hypertable, numbered from `first`: 6 assets every 10 seconds from
/// 2025-01-01, a metric and quality per sample, a jsonb note now and then.
fn bulk_metric_sql(first: i64, rows: u64) -> String {
    let last = first + rows as i64 - 1;
    format!(
        r#"INSERT INTO mes_core.machine_metric (time, asset_id, metric, value, quality, attributes)
SELECT timestamptz '2025-01-01 00:00:00+00' + (g / 6) * interval '10 seconds',
       a.ids[1 + g % 6],
       (ARRAY['spindle_rpm', 'temperature_c', 'Ströme "L1"', 'vibration_mm_s'])[1 + (g / 6) % 4],
       CASE WHEN g % 97 = 0 THEN NULL ELSE round((1000 + (g * 37) % 500) / 7.0, 3) END,
       CASE WHEN g % 211 = 0 THEN 0 ELSE 192 END,
       CASE WHEN g % 53 = 0 THEN jsonb_build_object('note', 'Werkzeugwechsel', 'by', '佐藤', 'shift', g % 3) END
FROM generate_series({first}::bigint, {last}::bigint) AS g,
     (SELECT array_agg(asset_id ORDER BY asset_id) AS ids
      FROM (SELECT asset_id FROM mes_core.asset_definition ORDER BY asset_id LIMIT 6) AS six) AS a;
"#
    )
}
