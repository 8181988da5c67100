//! Logs go to the journal with structured fields (JOB, KIND, FILE, BYTES,
//! DURATION_MS, ...) when journald is there, else to stderr.

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Libraries whose debug output would carry secrets: bollard logs every
/// answer of the engine, and a container's inspection holds its
/// environment (the stack's POSTGRES_PASSWORD). Whatever RUST_LOG asks,
/// they log at most at info.
const QUIET: &[&str] = &["bollard=info", "hyper=info", "hyper_util=info", "zbus=info"];

pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in QUIET {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    let journald = if Path::new("/run/systemd/journal/socket").exists() {
        tracing_journald::layer().ok().map(|layer| {
            layer
                .with_field_prefix(None)
                .with_syslog_identifier("mesbak-agent".into())
        })
    } else {
        None
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
}
