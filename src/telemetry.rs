//! Logging: text or JSON lines through `tracing`, one access line per request
//! (target `portcullis::access`) and audit events (target `portcullis::audit`).
//!
//! Nothing logged ever contains a password, code, secret, cookie or token:
//! access lines carry the path without its query string, and audit events
//! name users and factor types only.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (a no-op if one is installed already).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_target(true).try_init(),
    };
}

/// Emits an audit event: `event` names what happened; fields say who and how.
#[macro_export]
macro_rules! audit {
    ($event:literal $(, $($field:tt)*)?) => {
        tracing::info!(target: "portcullis::audit", event = $event $(, $($field)*)?)
    };
}
