//! The authentication API (`{prefix}/api/v1/...`), shaped like Okta's
//! `/api/v1/authn` and `/api/v1/sessions/me`, with the push device API.
//!
//! Every JSON route under the prefix is a row of a route table: [`ROUTES`]
//! here (authentication, sessions, the session hand-over, push devices) and
//! [`super::me::ROUTES`] (self-service factors). The portal router builds
//! them from those tables only, and a test keeps the OpenAPI document's
//! paths under the prefix equal to the two tables, so a route cannot be
//! added without its documentation.
//!
//! Cross-site rules for every endpoint that reads or sets cookies: unsafe
//! methods need `Content-Type: application/json` (else 415, which a plain
//! HTML form cannot send) and, when the browser says where it comes from
//! (`Origin`, `Sec-Fetch-Site`), the same origin or a `trusted_origins` one
//! (else 403). CORS headers are only sent to trusted origins.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

pub use super::common::{cross_site_guard, embedded_user, login_error};
use super::login;
use super::{Ctx, authn, push};
use crate::api::{Route, Verb};
use crate::clock::rfc3339;
use crate::enforce::SessionState;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// What a route of [`ROUTES`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOp {
    /// Primary authentication (username, password or passwordless).
    Authn,
    /// Enroll a factor in `MFA_ENROLL`.
    AuthnEnroll,
    /// Verify a factor (a code, a challenge sent, a push started or polled).
    AuthnVerify,
    /// Send the code or push of the factor being challenged again.
    AuthnResend,
    /// Activate the factor enrolled in this transaction.
    AuthnActivate,
    /// Poll the push factor enrolled in this transaction until it pairs.
    AuthnActivatePoll,
    /// Send the activation code of the factor enrolled in this transaction again.
    AuthnActivationResend,
    /// Cancel the transaction.
    AuthnCancel,
    /// Exchange a one-time `sessionToken` for the session cookie (redirects).
    SessionExchange,
    /// The current session.
    MySession,
    /// Sign out.
    Logout,
    /// A push device pairs itself.
    PushDevice,
    /// A push device answers a push.
    PushAnswer,
}

const fn r(verb: Verb, path: &'static str, op: ApiOp) -> Route<ApiOp> {
    Route { verb, path, op }
}

/// Every authentication, session and push device route (relative to the
/// portal prefix). The self-service factor routes are [`super::me::ROUTES`].
pub const ROUTES: &[Route<ApiOp>] = &[
    r(Verb::Post, "/api/v1/authn", ApiOp::Authn),
    r(Verb::Post, "/api/v1/authn/factors", ApiOp::AuthnEnroll),
    r(
        Verb::Post,
        "/api/v1/authn/factors/{factorId}/verify",
        ApiOp::AuthnVerify,
    ),
    r(
        Verb::Post,
        "/api/v1/authn/factors/{factorId}/verify/resend",
        ApiOp::AuthnResend,
    ),
    r(
        Verb::Post,
        "/api/v1/authn/factors/{factorId}/lifecycle/activate",
        ApiOp::AuthnActivate,
    ),
    r(
        Verb::Post,
        "/api/v1/authn/factors/{factorId}/lifecycle/activate/poll",
        ApiOp::AuthnActivatePoll,
    ),
    r(
        Verb::Post,
        "/api/v1/authn/factors/{factorId}/lifecycle/resend",
        ApiOp::AuthnActivationResend,
    ),
    r(Verb::Post, "/api/v1/authn/cancel", ApiOp::AuthnCancel),
    r(Verb::Get, "/session", ApiOp::SessionExchange),
    r(Verb::Get, "/api/v1/sessions/me", ApiOp::MySession),
    r(Verb::Delete, "/api/v1/sessions/me", ApiOp::Logout),
    r(Verb::Post, "/api/v1/push/devices", ApiOp::PushDevice),
    r(
        Verb::Post,
        "/api/v1/push/transactions/{transactionId}",
        ApiOp::PushAnswer,
    ),
];

fn handler(op: ApiOp, filter: MethodFilter) -> MethodRouter<Arc<AppState>> {
    match op {
        ApiOp::Authn => on(filter, authn::authn),
        ApiOp::AuthnEnroll => on(filter, authn::enroll),
        ApiOp::AuthnVerify => on(filter, authn::verify),
        ApiOp::AuthnResend => on(filter, authn::resend),
        // Activation with a passCode and the push pairing poll are one step.
        ApiOp::AuthnActivate | ApiOp::AuthnActivatePoll => on(filter, authn::activate),
        ApiOp::AuthnActivationResend => on(filter, authn::resend_activation),
        ApiOp::AuthnCancel => on(filter, authn::cancel),
        ApiOp::SessionExchange => on(filter, authn::exchange),
        ApiOp::MySession => on(filter, me),
        ApiOp::Logout => on(filter, logout),
        ApiOp::PushDevice => on(filter, push::register),
        ApiOp::PushAnswer => on(filter, push::answer),
    }
}

/// The JSON API under the prefix: [`ROUTES`] and the self-service routes
/// ([`super::me::ROUTES`]); a method they do not serve answers 405 `E0000022`.
pub fn routes() -> axum::Router<Arc<AppState>> {
    ROUTES
        .iter()
        .fold(axum::Router::new(), |router, route| {
            router.route(route.path, handler(route.op, route.verb.filter()))
        })
        .merge(super::me::routes())
        .method_not_allowed_fallback(crate::api::method_not_allowed)
}

/// Adds CORS headers for a trusted origin (and answers its preflight).
pub async fn cors(
    State(st): State<Arc<AppState>>,
    req: http::Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| st.config.portal.trusted_origins.iter().any(|t| t == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = req.method() == Method::OPTIONS;
    let mut res = if preflight && origin.is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(o) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, DELETE"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, Accept, X-CSRF-Token"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
    res
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `GET {prefix}/api/v1/sessions/me`: the current session.
pub async fn me(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match st.enforcer.session(&headers) {
        SessionState::Valid(s) => json_response(
            StatusCode::OK,
            json!({
                "id": s.claims.sid,
                "userId": s.user.id,
                "login": s.user.username,
                "status": "ACTIVE",
                "createdAt": rfc3339(s.claims.auth),
                "expiresAt": rfc3339(s.claims.auth + st.enforcer.sessions.lifetime()),
                "lastFactorVerification": s.claims.mfa.map(rfc3339),
                "lastPasswordVerification": rfc3339(s.claims.auth),
                "amr": s.claims.amr,
                "mfaActive": s.claims.lvl >= 2,
            }),
        ),
        SessionState::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
        _ => ApiError::new(ErrorCode::E0000007).into_response(),
    }
}

/// `DELETE {prefix}/api/v1/sessions/me`: logout.
pub async fn logout(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(res) = cross_site_guard(&st, &ctx, &method, &headers) {
        return *res;
    }
    match st.enforcer.session(&headers) {
        SessionState::Valid(s) => {
            if let Err(e) = login::sign_out(&st, &s.claims).await {
                tracing::error!(error = %e, "revoking a session failed");
                return ApiError::new(ErrorCode::E0000009).into_response();
            }
            crate::audit!("session.revoked", user = %s.user.username, reason = "logout");
            let mut res = StatusCode::NO_CONTENT.into_response();
            res.headers_mut()
                .append(header::SET_COOKIE, st.enforcer.sessions.clear_cookie());
            res
        }
        SessionState::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
        _ => {
            let mut res = ApiError::new(ErrorCode::E0000007).into_response();
            res.headers_mut()
                .append(header::SET_COOKIE, st.enforcer.sessions.clear_cookie());
            res
        }
    }
}
