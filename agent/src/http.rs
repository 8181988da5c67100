//! The loopback health endpoint (`health.listen`, default `127.0.0.1:8888`,
//! `""` = off), for monitoring that cannot speak D-Bus.
//!
//! - `GET /` and `GET /health`: the [`StatusReport`] as JSON (the same
//!   object `mesbakctl status --json` prints), `200 OK` when the status is
//!   `healthy` or `degraded`, `503 Service Unavailable` when `unhealthy`.
//! - `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! `HEAD` works on the same paths; other methods get `405`, other paths
//! `404`. Nothing is cached (`Cache-Control: no-store`): every answer is
//! judged afresh from the backup folder, the agent's state and the clock.
//!
//! HTTP is hyper's (HTTP/1.1 only). The endpoint listens exactly where
//! configured; failing to bind (port taken, address not on this host) is
//! reported as a problem of the agent, which keeps running.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesbak_interface::{BackupInfo, BackupKind, Health, JobOperation, StatusReport};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::health::parse_time;
use crate::state::AgentState;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection (keep-alive included) is held longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts the endpoint when configured. Must be called inside the runtime.
/// A failure to listen does not stop the agent: it is logged and becomes
/// one of the agent's problems, so `mesbakctl status` shows it.
pub fn spawn(app: Arc<App>) {
    let Some(addr) = app.config.health_listen() else {
        tracing::info!("the health endpoint is off (health.listen = \"\")");
        return;
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(
            listen = %addr,
            "the health endpoint listens on a non-loopback address; anyone who can reach it sees the backup status"
        );
    }
    match bind(addr) {
        Ok(listener) => {
            tracing::info!(listen = %addr, "health endpoint listening");
            tokio::spawn(serve(app, listener));
        }
        Err(err) => {
            tracing::error!(listen = %addr, error = %err, "the health endpoint cannot listen");
            app.add_problem(format!(
                "the health endpoint cannot listen on {addr} ({err}); free that port or change health.listen in {} and restart the agent",
                app.config.origin.display()
            ));
        }
    }
}

/// Binds at once (not in the background) so a failure is a problem before
/// the agent reports itself ready.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn serve(app: Arc<App>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %err, "the health endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(app, request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "health endpoint connection"),
            }
        });
    }
}

/// What a path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Metrics,
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/" | "/health" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        _ => None,
    }
}

async fn handle<B>(app: Arc<App>, request: Request<B>) -> Response<Full<Bytes>> {
    let Some(route) = route(request.uri().path()) else {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: try /health or /metrics\n",
        );
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // Listing the backups reads files: keep it off the runtime's threads.
    let answer = tokio::task::spawn_blocking(move || {
        let now = OffsetDateTime::now_utc();
        let judgement = app.judgement();
        let report = &judgement.report;
        match route {
            Route::Health => health_response(report),
            Route::Metrics => {
                let page = metrics_page(&app, &judgement, now);
                response(StatusCode::OK, METRICS_CONTENT_TYPE, page)
            }
        }
    })
    .await;
    answer.unwrap_or_else(|err| {
        tracing::error!(error = %err, "the health endpoint failed to judge the status");
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the agent could not judge its health; see its journal\n",
        )
    })
}

/// The last `/metrics` page and the judgement it shows.
struct Page {
    generation: u64,
    made: std::time::Instant,
    body: Bytes,
}

static PAGE: std::sync::Mutex<Option<Page>> = std::sync::Mutex::new(None);

/// The `/metrics` page: rendering lists every backup, so one page serves
/// every scrape of the same judgement within [`crate::app::STATUS_REUSE`];
/// scrapes that arrive together wait for one rendering.
fn metrics_page(app: &App, judgement: &crate::app::Judgement, now: OffsetDateTime) -> Bytes {
    let mut page = PAGE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(kept) = page.as_ref() {
        if kept.generation == judgement.generation && kept.made.elapsed() < crate::app::STATUS_REUSE
        {
            return kept.body.clone();
        }
    }
    let report = &judgement.report;
    // An unreadable folder is already among the report's problems.
    let backups = app.storage.list().unwrap_or_default();
    let free = app.storage.free_bytes().ok();
    let mut text = render_metrics(report, &backups, &app.state.get(), free, now);
    crate::offsite::metrics::render(
        &mut text,
        &report.offsite,
        |name| app.offsite.queue.get(name),
        now,
    );
    crate::pitr::metrics::render(&mut text, &judgement.pitr, now);
    let body = Bytes::from(text.into_bytes());
    *page = Some(Page {
        generation: judgement.generation,
        made: std::time::Instant::now(),
        body: body.clone(),
    });
    body
}

/// The HTTP status for a health judgement. `degraded` answers 200: the
/// backups are fresh (the service works) but something needs attention —
/// the JSON's `status` and `problems` say what. Only `unhealthy` (no
/// successful backup within the expected interval) answers 503, so an HTTP
/// check that looks at the code alone alerts on exactly that.
pub fn status_code(health: Health) -> StatusCode {
    match health {
        Health::Healthy | Health::Degraded => StatusCode::OK,
        Health::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn health_response(report: &StatusReport) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(report).expect("a status report serializes");
    body.push(b'\n');
    response(status_code(report.status), JSON_CONTENT_TYPE, body)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// One metric family being written: `# HELP` and `# TYPE`, then samples.
pub(crate) struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    pub(crate) fn new(
        out: &'a mut String,
        name: &'static str,
        kind: &str,
        help: &str,
    ) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    /// A sample; `labels` values are fixed words or checked names (off-site
    /// targets), never needing escapes.
    pub(crate) fn sample(
        &mut self,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut Self {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(name, value)| format!("{name}=\"{value}\""))
                .collect();
            let _ = write!(self.out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// Seconds since the Unix epoch, with the fraction when there is one.
fn unix_seconds(time: OffsetDateTime) -> f64 {
    time.unix_timestamp_nanos() as f64 / 1e9
}

/// The `/metrics` page: a pure function of the report, the backups on disk,
/// the remembered results, the free space and the time, so tests inject
/// them all. Only verified backups (see `health::counts`) feed the "last
/// backup" series.
///
/// Series of a kind with no backup (last success time, its age, duration
/// and size) and the test-restore series before the first test restore are
/// left out rather than given a made-up value; `mesbak_backups{kind}` and
/// `mesbak_health` always say how things stand.
pub fn render_metrics(
    report: &StatusReport,
    backups: &[BackupInfo],
    state: &AgentState,
    free_bytes: Option<u64>,
    now: OffsetDateTime,
) -> String {
    let mut out = String::new();
    let newest: Vec<(BackupKind, Option<(&BackupInfo, OffsetDateTime)>)> = BackupKind::ALL
        .iter()
        .map(|&kind| (kind, crate::health::newest_counted(backups, kind, now)))
        .collect();

    Family::new(
        &mut out,
        "mesbak_up",
        "gauge",
        "Whether the mesbak agent answers (always 1).",
    )
    .sample(&[], 1);
    Family::new(
        &mut out,
        "mesbak_build_info",
        "gauge",
        "The running agent's version (always 1).",
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);

    let mut family = Family::new(
        &mut out,
        "mesbak_health",
        "gauge",
        "The agent's health judgement: 1 for the current status, 0 for the others.",
    );
    for health in Health::ALL {
        family.sample(
            &[("status", health.as_str())],
            u8::from(*health == report.status),
        );
    }
    Family::new(
        &mut out,
        "mesbak_problems",
        "gauge",
        "Number of problems behind a status other than healthy.",
    )
    .sample(&[], report.problems.len());

    let mut family = Family::new(
        &mut out,
        "mesbak_last_success_timestamp_seconds",
        "gauge",
        "Creation time of the newest backup on disk, per kind (Unix seconds).",
    );
    for (kind, newest) in &newest {
        if let Some((_, created)) = newest {
            family.sample(&[("kind", kind.as_str())], unix_seconds(*created));
        }
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_last_success_age_seconds",
        "gauge",
        "Age of the newest backup on disk, per kind, when the agent answered.",
    );
    for (kind, newest) in &newest {
        if let Some((_, created)) = newest {
            let age = (now - *created).as_seconds_f64().max(0.0);
            family.sample(&[("kind", kind.as_str())], age);
        }
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_last_backup_duration_seconds",
        "gauge",
        "How long the newest backup on disk took, per kind.",
    );
    for (kind, newest) in &newest {
        if let Some((backup, _)) = newest {
            family.sample(
                &[("kind", kind.as_str())],
                backup.duration_ms as f64 / 1000.0,
            );
        }
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_last_backup_size_bytes",
        "gauge",
        "Size of the newest backup file on disk, per kind.",
    );
    for (kind, newest) in &newest {
        if let Some((backup, _)) = newest {
            family.sample(&[("kind", kind.as_str())], backup.size_bytes);
        }
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_backups",
        "gauge",
        "Number of backup files on disk, per kind.",
    );
    for kind in BackupKind::ALL {
        let count = backups.iter().filter(|b| b.kind == *kind).count();
        family.sample(&[("kind", kind.as_str())], count);
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_backup_failures_total",
        "counter",
        "Failed backups per kind since the agent's state was created.",
    );
    for kind in BackupKind::ALL {
        let failures = state
            .failures_total
            .get(kind.as_str())
            .copied()
            .unwrap_or(0);
        family.sample(&[("kind", kind.as_str())], failures);
    }

    let mut family = Family::new(
        &mut out,
        "mesbak_last_attempt_timestamp_seconds",
        "gauge",
        "When a backup of each kind was last started, whatever its outcome (Unix seconds).",
    );
    for kind in BackupKind::ALL {
        if let Some(time) = state
            .last_attempt
            .get(kind.as_str())
            .and_then(|t| parse_time(t))
        {
            family.sample(&[("kind", kind.as_str())], unix_seconds(time));
        }
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_last_ignition_downtime_seconds",
        "gauge",
        "How long the Ignition gateway was stopped for the newest volume backup.",
    );
    if let Some((backup, _)) = newest
        .iter()
        .find(|(kind, _)| *kind == BackupKind::Ignition)
        .and_then(|(_, newest)| *newest)
    {
        family.sample(&[], backup.downtime_ms as f64 / 1000.0);
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_backup_dir_free_bytes",
        "gauge",
        "Bytes free for the agent where backups are written.",
    );
    if let Some(free) = free_bytes {
        family.sample(&[], free);
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_job_running",
        "gauge",
        "Whether a job of each operation is running (1) or not (0).",
    );
    for operation in JobOperation::ALL {
        let running = report
            .running_jobs
            .iter()
            .any(|job| job.operation == *operation);
        family.sample(&[("operation", operation.as_str())], u8::from(running));
    }
    Family::new(
        &mut out,
        "mesbak_previous_databases",
        "gauge",
        "Databases kept by restores and rollbacks (mes_previous_*), until dropped.",
    )
    .sample(&[], report.previous_databases.len());
    Family::new(
        &mut out,
        "mesbak_previous_databases_bytes",
        "gauge",
        "Size of the kept databases, as last measured.",
    )
    .sample(
        &[],
        report
            .previous_databases
            .iter()
            .map(|db| db.size_bytes)
            .sum::<u64>(),
    );

    let test = state
        .last_test_restore
        .as_ref()
        .and_then(|record| parse_time(&record.time).map(|time| (record, time)));
    let mut family = Family::new(
        &mut out,
        "mesbak_last_test_restore_timestamp_seconds",
        "gauge",
        "When the last test restore finished (Unix seconds).",
    );
    if let Some((_, time)) = test {
        family.sample(&[], unix_seconds(time));
    }
    let mut family = Family::new(
        &mut out,
        "mesbak_last_test_restore_success",
        "gauge",
        "Whether the last test restore passed (1) or failed (0).",
    );
    if let Some(record) = &state.last_test_restore {
        family.sample(&[], u8::from(record.ok));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TestRestoreRecord;
    use http_body_util::BodyExt;

    fn backup(kind: BackupKind, id: &str, created: &str, size: u64, ms: u64) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            kind,
            path: String::new(),
            created: created.into(),
            size_bytes: size,
            sha256: "ab".into(),
            duration_ms: ms,
            restore_point: String::new(),
            source: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
            schemas: vec![],
            table_rows: Default::default(),
            downtime_ms: 0,
            warnings: vec![],
        }
    }

    fn report(status: Health) -> StatusReport {
        StatusReport {
            status,
            last_backup: Some("2026-11-24T00:00:00Z".into()),
            last_database_backup: Some("2026-11-24T00:00:00Z".into()),
            last_ignition_backup: None,
            last_test_restore: None,
            last_test_restore_ok: None,
            problems: vec![],
            running_jobs: vec![],
            previous_databases: vec![],
            offsite: vec![],
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        parse_time(text).unwrap()
    }

    /// The samples of a metrics page: `name{labels}` to value.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                (series.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn value<'a>(samples: &'a [(String, String)], series: &str) -> Option<&'a str> {
        samples
            .iter()
            .find(|(name, _)| name == series)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn status_maps_to_http_code() {
        assert_eq!(status_code(Health::Healthy), StatusCode::OK);
        assert_eq!(status_code(Health::Degraded), StatusCode::OK);
        assert_eq!(
            status_code(Health::Unhealthy),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn health_response_carries_the_report() {
        for (health, code) in [
            (Health::Healthy, 200),
            (Health::Degraded, 200),
            (Health::Unhealthy, 503),
        ] {
            let report = report(health);
            let response = health_response(&report);
            assert_eq!(response.status().as_u16(), code, "{health}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], JSON_CONTENT_TYPE);
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let parsed: StatusReport = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed, report);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["status"], health.as_str());
            assert_eq!(json["last_backup"], "2026-11-24T00:00:00Z");
            assert!(json["last_ignition_backup"].is_null());
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), Some(Route::Health));
        assert_eq!(route("/health"), Some(Route::Health));
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        for other in ["/nope", "/health/", "/metrics/x", "//", ""] {
            assert_eq!(route(other), None, "{other:?}");
        }
    }

    #[test]
    fn metrics_render_every_series() {
        let mut backups = vec![
            backup(
                BackupKind::Database,
                "mes_2026-11-23_000000.sql.gz.enc",
                "2026-11-23T00:00:00Z",
                1000,
                900,
            ),
            backup(
                BackupKind::Database,
                "mes_2026-11-24_000000.sql.gz.enc",
                "2026-11-24T00:00:00Z",
                2048,
                1500,
            ),
            backup(
                BackupKind::Ignition,
                "ignition_2026-11-24_000000.tar.gz.enc",
                "2026-11-24T00:00:00.5Z",
                4096,
                250,
            ),
        ];
        backups[2].downtime_ms = 1250;
        let state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                time: "2026-11-24T01:00:00Z".into(),
                backup: "mes_2026-11-24_000000.sql.gz.enc".into(),
                ok: true,
                message: String::new(),
            }),
            failures_total: [("ignition".to_owned(), 3)].into_iter().collect(),
            last_attempt: [("database".to_owned(), "2026-11-24T00:00:00Z".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let mut report = report(Health::Degraded);
        report.problems = vec!["one".into(), "two".into()];
        report.running_jobs = vec![mesbak_interface::RunningJob {
            job: "/org/mesbak/Agent1/jobs/3".into(),
            operation: JobOperation::Restore,
            target: "x".into(),
            stage: "restoring".into(),
            progress: None,
            bytes_done: 0,
            started_at: "2026-11-24T11:00:00Z".into(),
        }];
        report.previous_databases = vec![mesbak_interface::KeptDatabase {
            name: "mes_previous_20261120_000000".into(),
            live_name: "mes".into(),
            replaced_at: "2026-11-20T00:00:00Z".into(),
            restored_backup: "x".into(),
            size_bytes: 234_000_000,
            rollback_target: true,
        }];
        let text = render_metrics(
            &report,
            &backups,
            &state,
            Some(5 << 30),
            at("2026-11-24T12:00:00Z"),
        );
        let samples = samples(&text);
        let expect = [
            ("mesbak_up", "1"),
            ("mesbak_health{status=\"healthy\"}", "0"),
            ("mesbak_health{status=\"degraded\"}", "1"),
            ("mesbak_health{status=\"unhealthy\"}", "0"),
            ("mesbak_problems", "2"),
            (
                "mesbak_last_success_timestamp_seconds{kind=\"database\"}",
                "1795478400",
            ),
            (
                "mesbak_last_success_timestamp_seconds{kind=\"ignition\"}",
                "1795478400.5",
            ),
            (
                "mesbak_last_success_age_seconds{kind=\"database\"}",
                "43200",
            ),
            (
                "mesbak_last_success_age_seconds{kind=\"ignition\"}",
                "43199.5",
            ),
            (
                "mesbak_last_backup_duration_seconds{kind=\"database\"}",
                "1.5",
            ),
            (
                "mesbak_last_backup_duration_seconds{kind=\"ignition\"}",
                "0.25",
            ),
            ("mesbak_last_backup_size_bytes{kind=\"database\"}", "2048"),
            ("mesbak_last_backup_size_bytes{kind=\"ignition\"}", "4096"),
            ("mesbak_backups{kind=\"database\"}", "2"),
            ("mesbak_backups{kind=\"ignition\"}", "1"),
            ("mesbak_backup_failures_total{kind=\"database\"}", "0"),
            ("mesbak_backup_failures_total{kind=\"ignition\"}", "3"),
            ("mesbak_last_test_restore_timestamp_seconds", "1795482000"),
            ("mesbak_last_test_restore_success", "1"),
            ("mesbak_backup_dir_free_bytes", "5368709120"),
            ("mesbak_job_running{operation=\"backup\"}", "0"),
            ("mesbak_job_running{operation=\"restore\"}", "1"),
            (
                "mesbak_last_attempt_timestamp_seconds{kind=\"database\"}",
                "1795478400",
            ),
            ("mesbak_last_ignition_downtime_seconds", "1.25"),
            ("mesbak_previous_databases", "1"),
            ("mesbak_previous_databases_bytes", "234000000"),
        ];
        for (series, wanted) in expect {
            assert_eq!(value(&samples, series), Some(wanted), "{series} in\n{text}");
        }
        assert_eq!(
            value(
                &samples,
                &format!(
                    "mesbak_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some("1")
        );
        // Every sample belongs to a family announced with HELP and TYPE,
        // announced once, before its samples.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert!(!announced.contains(&name.to_owned()), "{name} twice");
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                announced.push(name.to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(announced.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn metrics_leave_out_what_never_happened() {
        let state = AgentState {
            last_test_restore: Some(TestRestoreRecord {
                time: "2026-11-24T01:00:00Z".into(),
                backup: "x".into(),
                ok: false,
                message: "row counts differ".into(),
            }),
            ..Default::default()
        };
        let mut report = report(Health::Unhealthy);
        report.last_backup = None;
        report.last_database_backup = None;
        let text = render_metrics(&report, &[], &state, None, at("2026-11-24T12:00:00Z"));
        let samples = samples(&text);
        assert_eq!(
            value(&samples, "mesbak_health{status=\"unhealthy\"}"),
            Some("1")
        );
        assert_eq!(
            value(&samples, "mesbak_health{status=\"healthy\"}"),
            Some("0")
        );
        assert_eq!(
            value(&samples, "mesbak_backups{kind=\"database\"}"),
            Some("0")
        );
        assert_eq!(
            value(&samples, "mesbak_backup_failures_total{kind=\"database\"}"),
            Some("0")
        );
        assert_eq!(
            value(&samples, "mesbak_last_test_restore_success"),
            Some("0")
        );
        for absent in [
            "mesbak_last_success_timestamp_seconds",
            "mesbak_last_success_age_seconds",
            "mesbak_last_backup_duration_seconds",
            "mesbak_last_backup_size_bytes",
        ] {
            assert!(
                !samples.iter().any(|(series, _)| series.starts_with(absent)),
                "{absent} in\n{text}"
            );
        }

        let text = render_metrics(
            &report,
            &[],
            &AgentState::default(),
            None,
            at("2026-11-24T12:00:00Z"),
        );
        assert!(
            !text.contains("\nmesbak_last_test_restore_success "),
            "{text}"
        );
        assert!(
            !text.contains("\nmesbak_last_test_restore_timestamp_seconds "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wrong_method_and_unknown_path() {
        // The handler on an agent context with an empty backup folder; the
        // server around it is exercised by tests/tests/health_http.rs.
        let (_tmp, app) = test_app();
        let request = Request::builder().uri("/nope").body(()).unwrap();
        let response = handle(app.clone(), request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/health")
            .body(())
            .unwrap();
        let response = handle(app.clone(), request).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");

        // No backups at all: unhealthy, 503.
        let request = Request::builder().uri("/health").body(()).unwrap();
        let response = handle(app.clone(), request).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let report: StatusReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(report.status, Health::Unhealthy);
        let request = Request::builder().uri("/metrics").body(()).unwrap();
        let response = handle(app, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
    }

    fn test_app() -> (tempfile::TempDir, Arc<App>) {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            backup_dir: tmp.path().join("backups"),
            state_dir: tmp.path().join("state"),
            ..Default::default()
        };
        (tmp, Arc::new(App::new(config).unwrap()))
    }
}
