//! The admin listener: `/healthz` (alive), `/readyz` (store reachable and
//! revocation view fresh), `/metrics` (Prometheus text), `/openapi.json`,
//! and the management API shaped like Okta's Users and Factors APIs
//! ([`users`], [`factors`]).
//!
//! Every route is a row of [`ROUTES`]: the router is built from that table
//! and the OpenAPI document is tested against it, so the two cannot drift.
//! API routes take an [`Admin`] extractor first: a token from `admin.tokens`
//! (`SSWS <token>` or `Bearer <token>`, compared in constant time against
//! every token) or 401 `E0000011` before anything else is looked at; wrong
//! tokens are throttled per client address ([`throttle`]: 429 `E0000047`).
//! Every admin action is an audit event naming the token by its index.

pub mod factors;
pub mod logs;
pub mod openapi;
pub mod throttle;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::api::factors::FactorOp;
use crate::api::{Route, Verb};
use crate::error::{ApiError, ErrorCode};
use crate::secret::ct_eq;
use crate::state::AppState;

/// What an admin route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    CreateUser,
    ListUsers,
    GetUser,
    UpdateUser,
    ReplaceUser,
    DeleteUser,
    ActivateUser,
    SuspendUser,
    UnsuspendUser,
    UnlockUser,
    ResetFactors,
    RevokeSessions,
    Factor(FactorOp),
    RecoveryCodesLeft,
    NewRecoveryCodes,
    RevokeRecoveryCodes,
    Logs,
}

const fn r(verb: Verb, path: &'static str, op: Op) -> Route<Op> {
    Route { verb, path, op }
}

const USER: &str = "/api/v1/users/{id}";

/// Every route of the admin listener.
pub const ROUTES: &[Route<Op>] = &[
    r(Verb::Get, "/healthz", Op::Healthz),
    r(Verb::Get, "/readyz", Op::Readyz),
    r(Verb::Get, "/metrics", Op::Metrics),
    r(Verb::Get, "/openapi.json", Op::OpenApi),
    r(Verb::Get, "/api/v1/logs", Op::Logs),
    r(Verb::Post, "/api/v1/users", Op::CreateUser),
    r(Verb::Get, "/api/v1/users", Op::ListUsers),
    r(Verb::Get, USER, Op::GetUser),
    r(Verb::Post, USER, Op::UpdateUser),
    r(Verb::Put, USER, Op::ReplaceUser),
    r(Verb::Delete, USER, Op::DeleteUser),
    r(
        Verb::Post,
        "/api/v1/users/{id}/lifecycle/activate",
        Op::ActivateUser,
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/lifecycle/suspend",
        Op::SuspendUser,
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/lifecycle/unsuspend",
        Op::UnsuspendUser,
    ),
    r(Verb::Post, "/api/v1/users/{id}/lifecycle/unlock", Op::UnlockUser),
    r(
        Verb::Post,
        "/api/v1/users/{id}/lifecycle/reset_factors",
        Op::ResetFactors,
    ),
    r(Verb::Delete, "/api/v1/users/{id}/sessions", Op::RevokeSessions),
    r(
        Verb::Get,
        "/api/v1/users/{id}/recovery_codes",
        Op::RecoveryCodesLeft,
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/recovery_codes",
        Op::NewRecoveryCodes,
    ),
    r(
        Verb::Delete,
        "/api/v1/users/{id}/recovery_codes",
        Op::RevokeRecoveryCodes,
    ),
    r(
        Verb::Get,
        "/api/v1/users/{id}/factors",
        Op::Factor(FactorOp::List),
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/factors",
        Op::Factor(FactorOp::Enroll),
    ),
    r(
        Verb::Get,
        "/api/v1/users/{id}/factors/catalog",
        Op::Factor(FactorOp::Catalog),
    ),
    r(
        Verb::Get,
        "/api/v1/users/{id}/factors/{factorId}",
        Op::Factor(FactorOp::Get),
    ),
    r(
        Verb::Delete,
        "/api/v1/users/{id}/factors/{factorId}",
        Op::Factor(FactorOp::Delete),
    ),
    r(
        Verb::Get,
        "/api/v1/users/{id}/factors/{factorId}/qr",
        Op::Factor(FactorOp::Qr),
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/factors/{factorId}/lifecycle/activate",
        Op::Factor(FactorOp::Activate),
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/factors/{factorId}/verify",
        Op::Factor(FactorOp::Verify),
    ),
    r(
        Verb::Get,
        "/api/v1/users/{id}/factors/{factorId}/transactions/{transactionId}",
        Op::Factor(FactorOp::Transaction),
    ),
    r(
        Verb::Delete,
        "/api/v1/users/{id}/factors/{factorId}/transactions/{transactionId}",
        Op::Factor(FactorOp::Cancel),
    ),
    r(
        Verb::Post,
        "/api/v1/users/{id}/factors/{factorId}/resend",
        Op::Factor(FactorOp::Resend),
    ),
];

/// The handler for `op` on the method `filter`.
fn handler(op: Op, filter: MethodFilter) -> MethodRouter<Arc<AppState>> {
    match op {
        Op::Healthz => on(filter, || async { "ok\n" }),
        Op::Readyz => on(filter, readyz),
        Op::Metrics => on(filter, metrics),
        Op::OpenApi => on(filter, openapi::serve),
        Op::CreateUser => on(filter, users::create),
        Op::ListUsers => on(filter, users::list),
        Op::GetUser => on(filter, users::get),
        Op::UpdateUser => on(filter, users::update),
        Op::ReplaceUser => on(filter, users::replace),
        Op::DeleteUser => on(filter, users::delete),
        Op::ActivateUser => on(filter, users::activate),
        Op::SuspendUser => on(filter, users::suspend),
        Op::UnsuspendUser => on(filter, users::unsuspend),
        Op::UnlockUser => on(filter, users::unlock),
        Op::ResetFactors => on(filter, users::reset),
        Op::RevokeSessions => on(filter, users::revoke_sessions),
        Op::RecoveryCodesLeft => on(filter, factors::recovery_left),
        Op::NewRecoveryCodes => on(filter, factors::recovery_new),
        Op::RevokeRecoveryCodes => on(filter, factors::recovery_revoke),
        Op::Factor(op) => factors::admin_handler(op, filter),
        Op::Logs => on(filter, logs::list),
    }
}

/// The admin router, built from [`ROUTES`].
pub fn router(state: Arc<AppState>, throttle: Arc<throttle::TokenThrottle>) -> axum::Router {
    let mut router = axum::Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route.op, route.verb.filter()));
    }
    let router = router
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .fallback(|| async { ApiError::new(ErrorCode::E0000007).into_response() })
        .with_state(state)
        .layer(axum::Extension(throttle));
    crate::limits::body_limit(router, crate::limits::ADMIN_BODY_LIMIT)
}

/// The index of the admin token presented (`SSWS <t>` or `Bearer <t>`), if any matches.
pub fn authorized(st: &AppState, headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    // `SSWS <token>` or `Bearer <token>`. The space is optional: the official
    // Okta Python SDK 3.x sends `SSWS<token>` (it concatenates mode and token).
    let split = |scheme: &str| {
        value
            .get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &value[scheme.len()..])
    };
    let token = split("SSWS").or_else(|| split("Bearer"))?.trim_start().as_bytes();
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

/// An authorized admin call: the token's index, and the origin this
/// listener was reached at (for the absolute links in answers).
#[derive(Debug, Clone)]
pub struct Admin {
    pub token: usize,
    pub origin: String,
    /// The caller's address as the main listener resolves it (trusted
    /// proxies and X-Forwarded-For): what regulation counts failures by.
    pub client: IpAddr,
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Response> {
        let token = checked_token(st, parts).map_err(|r| *r)?;
        Ok(Admin {
            token,
            origin: origin(st, parts),
            client: client_addr(st, parts),
        })
    }
}

/// The client address of an admin call as the main listener resolves it
/// (the socket peer, or X-Forwarded-For's right-most untrusted hop when the
/// peer is in `trusted_proxies`). A call whose peer is unknown (a router
/// served without the listener's connection info, as an embedding might)
/// counts as the unspecified address `0.0.0.0`, with X-Forwarded-For
/// ignored: such calls share one throttle, and no header can spread them
/// over many (an assumed loopback peer would trust the header whenever
/// 127.0.0.1 is a trusted proxy).
fn client_addr(st: &AppState, parts: &Parts) -> IpAddr {
    match parts.extensions.get::<crate::context::ConnInfo>() {
        Some(conn) => {
            crate::context::client_addr(conn.peer.ip(), &parts.headers, &st.config.server.trusted_proxies)
        }
        None => IpAddr::from([0, 0, 0, 0]),
    }
}

/// The index of the admin token of a call, after the per-address throttle
/// ([`throttle`]); else the answer: 429 while throttled, 401 without a
/// right token (a wrong one is counted).
fn checked_token(st: &AppState, parts: &Parts) -> Result<usize, Box<Response>> {
    // One client behind a proxy throttles only itself.
    let peer = client_addr(st, parts);
    let now = st.clock.now();
    // The router always carries the throttle; a router built without one
    // would count nothing, so it refuses instead.
    let Some(throttle) = parts.extensions.get::<Arc<throttle::TokenThrottle>>() else {
        tracing::error!("admin router without its token throttle");
        return Err(Box::new(ApiError::new(ErrorCode::E0000009).into_response()));
    };
    if let Some(reset) = throttle.blocked(peer, now) {
        crate::audit!("admin.refused", method = %parts.method, path = %parts.uri.path(), client = %peer, reason = "too many wrong tokens");
        return Err(Box::new(
            ApiError::rate_limited(throttle::MAX_FAILURES, reset, now).into_response(),
        ));
    }
    match authorized(st, &parts.headers) {
        Some(token) => Ok(token),
        None => {
            if parts.headers.contains_key(header::AUTHORIZATION) {
                throttle.failed(peer, now);
            }
            crate::audit!("admin.refused", method = %parts.method, path = %parts.uri.path(), client = %peer, reason = "missing or wrong token");
            Err(Box::new(ApiError::new(ErrorCode::E0000011).into_response()))
        }
    }
}

/// `scheme://authority` of the admin listener as the caller reached it.
fn origin(st: &AppState, parts: &Parts) -> String {
    let scheme = if st.config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Only a plain host and port: the value goes into `Link` headers and
    // `_links`, where `>`, `;` or `"` would forge another entry.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .filter(|a| crate::context::is_plain_authority(a))
        .map_or_else(|| st.config.admin.listen.to_string(), str::to_owned);
    format!("{scheme}://{authority}")
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let store = st.store.health().await;
    let fresh = st.enforcer.revocations.is_fresh(Instant::now());
    if store.is_ok()
        && fresh
        && let Some(Err(e)) = st.directory.as_ref().map(|d| d.ready())
    {
        tracing::warn!(error = %e, "readiness: directory unreachable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: directory unreachable\n",
        )
            .into_response();
    }
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

async fn metrics(State(st): State<Arc<AppState>>, parts: Parts) -> Response {
    if st.config.admin.metrics_require_token
        && let Err(refused) = checked_token(&st, &parts)
    {
        return *refused;
    }
    let mut res = crate::metrics::render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::Gateway;

    const CONFIG: &str = r#"
default_policy = "one_factor"
[admin]
tokens = ["first-admin-token-0123456789", "second-admin-token-0123456789"]
[[upstreams]]
name = "unused"
url = "http://127.0.0.1:9"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[store]
kind = "memory"
encryption_keys = []
[factors.totp]
enabled = false
[factors.recovery_codes]
enabled = false
"#;

    async fn gateway() -> Gateway {
        let loaded = crate::config::load_str(CONFIG, &|_| None).expect("config");
        let gw = Gateway::build(loaded.config).await.expect("gateway");
        gw.state()
            .enforcer
            .users
            .write()
            .unwrap()
            .insert(crate::users::User {
                id: "00uBOB".into(),
                username: "bob".into(),
                display_name: None,
                email: None,
                phone: None,
                groups: vec![],
                password_hash: None,
                // As if from the users file: the API finds those in the directory.
                from_file: true,
                config_totp: None,
            });
        gw
    }

    fn call(method: &str, path: &str, auth: Option<&str>) -> Request<Body> {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn calls_from_an_unknown_peer_share_one_throttle_whatever_they_forward() {
        // Loopback trusted as a proxy: were an unknown peer taken for it,
        // each X-Forwarded-For value would get a throttle of its own.
        let text = CONFIG.replacen(
            "[admin]",
            "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[admin]",
            1,
        );
        let loaded = crate::config::load_str(&text, &|_| None).expect("config");
        let gw = Gateway::build(loaded.config).await.expect("gateway");
        let app = gw.admin_router();
        let wrong = |i: u32| {
            let mut r = call("GET", "/api/v1/users", Some("SSWS wrong-token"));
            r.headers_mut()
                .insert("x-forwarded-for", format!("198.51.100.{i}").parse().unwrap());
            r
        };
        for i in 0..throttle::MAX_FAILURES {
            let res = app.clone().oneshot(wrong(i)).await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "call {i}");
        }
        let res = app.clone().oneshot(wrong(200)).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        // The same from a known peer (the listener's connection info) still
        // follows the trusted proxy's header: another client, not throttled.
        let mut known = wrong(201);
        known.extensions_mut().insert(crate::context::ConnInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
            tls: false,
        });
        let res = app.clone().oneshot(known).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn unlock_needs_a_token_and_clears_the_lock() {
        let gw = gateway().await;
        let st = gw.state().clone();
        for _ in 0..5 {
            st.regulator
                .factor_failed("00uBOB", "192.0.2.1".parse().unwrap())
                .await
                .unwrap();
        }
        assert!(st.regulator.user_locked("00uBOB").await.unwrap().is_some());
        let app = gw.admin_router();
        let path = "/api/v1/users/bob/lifecycle/unlock";
        let res = app.clone().oneshot(call("POST", path, None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(call("POST", path, Some("SSWS wrong-token")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(call(
                "POST",
                "/api/v1/users/nobody/lifecycle/unlock",
                Some("SSWS second-admin-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(
            st.regulator.user_locked("00uBOB").await.unwrap().is_some(),
            "refused calls change nothing"
        );
        let res = app
            .clone()
            .oneshot(call("POST", path, Some("Bearer second-admin-token-0123456789")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(st.regulator.user_locked("00uBOB").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoking_sessions_bumps_the_epoch() {
        let gw = gateway().await;
        let st = gw.state().clone();
        let before = st.enforcer.revocations.epoch("00uBOB");
        let res = gw
            .admin_router()
            .oneshot(call(
                "DELETE",
                "/api/v1/users/00uBOB/sessions",
                Some("SSWS first-admin-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(st.enforcer.revocations.epoch("00uBOB"), before + 1);
    }
}
