//! Named points inside jobs where the fault-injection tests stop the agent,
//! to crash it or disturb what it is about to touch exactly there (e.g.
//! between a restore's swap and the state write that records it).
//!
//! Only debug builds (the test harness's) look at `MESBAK_TEST_PAUSE_AT`;
//! in a release build `pause` is an empty function, so no environment can
//! stop a production agent half-way through a job.

use std::path::Path;

/// The environment variable naming the points to pause at, comma-separated.
#[cfg(debug_assertions)]
pub const PAUSE_AT: &str = "MESBAK_TEST_PAUSE_AT";

/// Pauses at `point` when the test asked for it: writes
/// `state_dir/paused-at-<point>` and waits until the test deletes it.
#[cfg(debug_assertions)]
pub async fn pause(state_dir: &Path, point: &str) {
    let wanted = std::env::var(PAUSE_AT).unwrap_or_default();
    if !wanted.split(',').any(|name| name == point) {
        return;
    }
    let marker = state_dir.join(format!("paused-at-{point}"));
    if let Err(err) = std::fs::write(&marker, point) {
        tracing::error!(point, error = %err, "cannot write the pause marker; not pausing");
        return;
    }
    tracing::warn!(
        point,
        "paused for a test until {} is deleted",
        marker.display()
    );
    while marker.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(point, "resumed");
}

#[cfg(not(debug_assertions))]
pub async fn pause(_state_dir: &Path, _point: &str) {}
