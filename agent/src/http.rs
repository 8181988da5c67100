//! The loopback health endpoint (`health.listen`).

use std::sync::Arc;

use crate::app::App;

/// Starts the endpoint when configured.
pub fn spawn(app: Arc<App>) {
    if let Some(addr) = app.config.health_listen() {
        tracing::info!(listen = %addr, "the health endpoint is not available in this build yet");
    }
}
