//! The self-service factor API: a signed-in user's own factors at
//! `{prefix}/api/v1/users/me/factors...`, with the same operations and
//! answers as the admin Factors API (one implementation,
//! [`crate::api::factors`], given "who is the user").
//!
//! Every request needs, in this order: the section 6 cross-site rules
//! (unsafe methods send `Content-Type: application/json`, browsers a
//! same-origin or trusted `Origin`), a valid session (else 401 `E0000011`),
//! and the header `X-CSRF-Token` equal to the `portcullis_csrf` cookie
//! (`__Host-portcullis_csrf` when the session cookie is secure and host-only;
//! double submit; else 403 `E0000006`, with a fresh cookie when the request
//! had no genuine one, so a client signed in through the authn API can get
//! one). Adding a factor (enroll) or removing one also needs a second factor
//! verified within the last 10 minutes, except a first enrollment when
//! `users.enrollment = "first_login"`, as on the portal's pages.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::{HeaderMap, Method, header};

use super::Ctx;
use super::common::cross_site_guard;
use crate::api::factors::{self as api, EnrollQuery, FactorOp, Scope};
use crate::api::{Route, Verb};
use crate::enforce::{ActiveSession, SessionState};
use crate::error::{ApiError, ErrorCode};
use crate::ids::Ids;
use crate::session::find_cookie;
use crate::state::AppState;

/// The header that must echo the CSRF cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

const fn r(verb: Verb, path: &'static str, op: FactorOp) -> Route<FactorOp> {
    Route { verb, path, op }
}

/// Every self-service route (relative to the portal prefix).
pub const ROUTES: &[Route<FactorOp>] = &[
    r(Verb::Get, "/api/v1/users/me/factors", FactorOp::List),
    r(Verb::Post, "/api/v1/users/me/factors", FactorOp::Enroll),
    r(Verb::Get, "/api/v1/users/me/factors/catalog", FactorOp::Catalog),
    r(Verb::Get, "/api/v1/users/me/factors/{factorId}", FactorOp::Get),
    r(
        Verb::Delete,
        "/api/v1/users/me/factors/{factorId}",
        FactorOp::Delete,
    ),
    r(Verb::Get, "/api/v1/users/me/factors/{factorId}/qr", FactorOp::Qr),
    r(
        Verb::Post,
        "/api/v1/users/me/factors/{factorId}/lifecycle/activate",
        FactorOp::Activate,
    ),
    r(
        Verb::Post,
        "/api/v1/users/me/factors/{factorId}/verify",
        FactorOp::Verify,
    ),
    r(
        Verb::Get,
        "/api/v1/users/me/factors/{factorId}/transactions/{transactionId}",
        FactorOp::Transaction,
    ),
    r(
        Verb::Delete,
        "/api/v1/users/me/factors/{factorId}/transactions/{transactionId}",
        FactorOp::Cancel,
    ),
    r(
        Verb::Post,
        "/api/v1/users/me/factors/{factorId}/resend",
        FactorOp::Resend,
    ),
];

/// The self-service routes, to merge into the portal's API router.
pub fn routes() -> axum::Router<Arc<AppState>> {
    ROUTES.iter().fold(axum::Router::new(), |router, route| {
        router.route(route.path, handler(route.op, route.verb.filter()))
    })
}

fn handler(op: FactorOp, filter: MethodFilter) -> MethodRouter<Arc<AppState>> {
    match op {
        FactorOp::List => on(filter, list),
        FactorOp::Catalog => on(filter, catalog),
        FactorOp::Enroll => on(filter, enroll),
        FactorOp::Get => on(filter, get),
        FactorOp::Qr => on(filter, qr),
        FactorOp::Activate => on(filter, activate),
        FactorOp::Verify => on(filter, verify),
        FactorOp::Transaction => on(filter, transaction),
        FactorOp::Cancel => on(filter, cancel),
        FactorOp::Resend => on(filter, resend),
        FactorOp::Delete => on(filter, delete),
    }
}

/// True when the session verified a second factor within the last 10 minutes.
fn recent_mfa(st: &AppState, s: &ActiveSession) -> bool {
    s.claims.lvl >= 2
        && s.claims
            .mfa
            .is_some_and(|t| st.clock.now() - t <= super::common::RECENT_MFA_SECS)
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Read, verify, poll, cancel a push.
    Session,
    /// Add a factor: enroll, and show, activate or resend a pending one.
    Enroll,
    /// Remove a factor.
    Remove,
}

/// Applies the rules of this API and returns the caller's scope.
async fn scope(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    need: Need,
) -> Result<Scope, Response> {
    cross_site_guard(st, ctx, method, headers).map_err(|r| *r)?;
    let s = match st.enforcer.session(headers) {
        SessionState::Valid(s) => s,
        SessionState::Unavailable => return Err(ApiError::new(ErrorCode::E0000009).into_response()),
        _ => return Err(ApiError::new(ErrorCode::E0000011).into_response()),
    };
    let cookie = find_cookie(headers, &st.config.session.csrf_cookie_name());
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !super::csrf::verify(&st.csrf_key, cookie, sent) {
        let mut res = ApiError::new(ErrorCode::E0000006)
            .cause(format!(
                "the X-CSRF-Token header must equal the {} cookie",
                st.config.session.csrf_cookie_name()
            ))
            .into_response();
        if !cookie.is_some_and(|c| super::csrf::well_formed(&st.csrf_key, c)) {
            let token = super::csrf::new_token(&st.csrf_key);
            res.headers_mut().append(
                header::SET_COOKIE,
                super::csrf::cookie(&st.config.session, &token),
            );
        }
        return Err(res);
    }
    let allowed = match need {
        Need::Session => true,
        Need::Remove => recent_mfa(st, &s),
        // Showing a pending factor's secret, activating it or resending its
        // activation code is adding a factor: a password alone must not do it.
        Need::Enroll => {
            recent_mfa(st, &s) || {
                let all = crate::factors::list(st, &s.user)
                    .await
                    .map_err(crate::api::unavailable)?;
                crate::factors::usable(st, &all).is_empty()
                    && st.config.users.enrollment == crate::config::Enrollment::FirstLogin
            }
        }
    };
    if !allowed {
        return Err(ApiError::new(ErrorCode::E0000006)
            .cause("adding or removing a factor needs a second factor verified within the last 10 minutes")
            .into_response());
    }
    // A factor outlives the session: one ended on another replica (signed
    // out, or every session of the user ended by an administrator's reset)
    // a moment ago must not add or remove one here.
    if need != Need::Session
        && !st
            .still_current(&s.claims)
            .await
            .map_err(crate::api::unavailable)?
    {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    }
    let origin = match &st.config.server.external_url {
        Some(u) => u.origin().ascii_serialization(),
        None => format!("{}://{}", ctx.0.scheme, ctx.0.authority),
    };
    Ok(Scope {
        base: format!("{origin}{}/api/v1/users/me", st.config.portal.prefix),
        user: s.user.as_ref().clone(),
        actor: "self",
        token: None,
        client: ctx.0.client_addr,
        flow: crate::factors::Flow::Session(s.claims.sin.clone()),
    })
}

macro_rules! me {
    ($st:expr, $ctx:expr, $method:expr, $headers:expr, $need:expr) => {
        match scope(&$st, &$ctx, &$method, &$headers, $need).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

async fn list(State(st): State<Arc<AppState>>, ctx: Ctx, method: Method, headers: HeaderMap) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::list(&st, &scope).await
}

async fn catalog(State(st): State<Arc<AppState>>, ctx: Ctx, method: Method, headers: HeaderMap) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::catalog(&st, &scope).await
}

async fn enroll(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<EnrollQuery>,
    body: Bytes,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Enroll);
    api::enroll(&st, &scope, q.activate(), &body).await
}

async fn get(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::get(&st, &scope, &fid).await
}

async fn qr(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Enroll);
    api::qr(&st, &scope, &fid).await
}

async fn activate(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
    body: Bytes,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Enroll);
    api::activate(&st, &scope, &fid, &body).await
}

async fn verify(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
    body: Bytes,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::verify(&st, &scope, &fid, &body).await
}

async fn transaction(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids((fid, tid)): Ids<(String, String)>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::transaction(&st, &scope, &fid, &tid).await
}

async fn cancel(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids((fid, tid)): Ids<(String, String)>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Session);
    api::cancel(&st, &scope, &fid, &tid).await
}

async fn resend(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Enroll);
    api::resend(&st, &scope, &fid).await
}

async fn delete(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    Ids(fid): Ids<String>,
) -> Response {
    let scope = me!(st, ctx, method, headers, Need::Remove);
    // Read before the removal moves the epoch (which ends this session too).
    let current = match st.enforcer.session(&headers) {
        SessionState::Valid(s) => s.claims,
        _ => return ApiError::new(ErrorCode::E0000011).into_response(),
    };
    let mut res = api::delete(&st, &scope, &fid).await;
    if res.status().is_success() {
        // Every other session of the user ended; this one carries on.
        let moved = res.extensions().get::<crate::factors::EpochMoved>().copied();
        if let Some(cookie) = super::login::reissue(&st, &current, moved) {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    res
}
