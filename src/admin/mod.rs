//! The admin listener: `/healthz` (alive), `/readyz` (store reachable and
//! revocation view fresh), `/metrics` (Prometheus text), and the management
//! API as it lands. Tokens from `admin.tokens` are compared in constant time.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::{ApiError, ErrorCode};
use crate::gateway::AppState;
use crate::secret::ct_eq;

/// The admin router.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(ErrorCode::E0000007).into_response() })
        .with_state(state)
}

/// The index of the admin token presented (`SSWS <t>` or `Bearer <t>`), if any matches.
pub fn authorized(st: &AppState, headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !(scheme.eq_ignore_ascii_case("ssws") || scheme.eq_ignore_ascii_case("bearer")) {
        return None;
    }
    let token = token.trim().as_bytes();
    // Compare against every token (no early exit).
    st.config
        .admin
        .tokens
        .iter()
        .enumerate()
        .fold(None, |found, (i, t)| {
            if ct_eq(t.expose(), token) && !t.is_empty() {
                found.or(Some(i))
            } else {
                found
            }
        })
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let store = st.store.health().await;
    let fresh = st.enforcer.revocations.is_fresh(Instant::now());
    match (store, fresh) {
        (Ok(()), true) => "ready\n".into_response(),
        (Err(e), _) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: store unreachable\n").into_response()
        }
        (Ok(()), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: revocation view stale\n",
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if st.config.admin.metrics_require_token && authorized(&st, &headers).is_none() {
        return ApiError::new(ErrorCode::E0000011).into_response();
    }
    let mut res = crate::metrics::render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
