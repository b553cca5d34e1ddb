//! Prometheus metrics: one process-wide recorder, rendered on the admin
//! listener's `/metrics`.
//!
//! Metric names (all prefixed `portcullis_`): `requests_total{decision,status}`,
//! `upstream_duration_seconds{upstream}`, `upstream_errors_total{upstream,kind}`,
//! `logins_total{result}`, `lockouts_total{kind}`, `store_duration_seconds{op}`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once per process; later calls reuse it).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// The metrics in Prometheus text format (empty if no recorder is installed).
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// Counts one request by decision and status.
pub fn request(decision: &'static str, status: u16) {
    metrics::counter!("portcullis_requests_total", "decision" => decision, "status" => status.to_string())
        .increment(1);
}

/// Counts one sign-in attempt by result (`success`, `failure`, `locked`, `busy`, `error`).
pub fn login(result: &'static str) {
    metrics::counter!("portcullis_logins_total", "result" => result).increment(1);
}

/// Counts a lockout by kind (`user`, `client`).
pub fn lockout(kind: &'static str) {
    metrics::counter!("portcullis_lockouts_total", "kind" => kind).increment(1);
}

/// Counts a second-factor verification by factor type and result.
pub fn factor_verification(factor_type: &str, result: &'static str) {
    metrics::counter!("portcullis_factor_verifications_total", "type" => factor_type.to_owned(), "result" => result)
        .increment(1);
}

/// Counts a factor lifecycle event (`enrolled`, `activated`, `removed`).
pub fn factor_event(event: &'static str, factor_type: &str) {
    metrics::counter!("portcullis_factor_events_total", "event" => event, "type" => factor_type.to_owned())
        .increment(1);
}
