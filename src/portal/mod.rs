//! The portal: sign-in pages and the JSON authentication API, served under
//! `portal.prefix` on every host of the main listener. The pages are routed
//! here; the JSON API comes from the route tables `api::ROUTES` and
//! `me::ROUTES`, which the OpenAPI document is tested against.
//!
//! Pages are plain forms (no JavaScript needed), protected by a signed
//! double-submit CSRF token and an Origin check; every response carries the
//! security headers of [`crate::pages::security_headers`]. `rd=` targets are
//! filtered by [`redirect::safe_target`].

pub mod api;
mod assets;
pub mod authn;
mod challenge;
mod common;
pub mod csrf;
mod enroll;
pub mod login;
pub mod me;
pub mod mfa;
pub mod oob;
pub mod passwordless;
pub mod push;
pub mod redirect;
mod transaction;
mod webauthn;
mod words;

/// The request body types of the JSON API, for the fuzz targets (`fuzz/`),
/// which deserialize arbitrary bytes into them. Not a stable interface.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::authn::{AuthnRequest, StepRequest};
    pub use super::passwordless::FactorForm;
    pub use super::push::StatusRequest;
    pub use crate::factors::push::{DeviceAnswer, DeviceRegistration};
}

use std::sync::Arc;

use axum::Form;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;

use crate::context::RequestContext;
use crate::enforce::{AccessInfo, SessionState};
use crate::error::{ApiError, ErrorCode};
use crate::i18n::{t, tf};
use crate::pages;
use crate::secret::Secret;
use crate::session::find_cookie;
use crate::state::AppState;
use login::LoginError;

/// The request context, as an extractor (the gateway's, or derived when the
/// portal is embedded in another app).
#[derive(Debug, Clone)]
pub struct Ctx(pub RequestContext);

impl FromRequestParts<Arc<AppState>> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            return Ok(Ctx(ctx.clone()));
        }
        let req = http::Request::from_parts(parts.clone(), Body::empty());
        st.enforcer.context(&req).map(Ctx).ok_or_else(|| {
            ApiError::new(ErrorCode::E0000001)
                .cause("missing or invalid Host")
                .into_response()
        })
    }
}

/// Nothing under the prefix here: an HTML page for a browser, the API's
/// `E0000007` for everything else.
async fn not_found(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if crate::enforce::is_browser(&headers) {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found_page(&st.config.portal.prefix),
        );
    }
    ApiError::new(ErrorCode::E0000007).into_response()
}

/// The portal's router (paths relative to the prefix), with `pages` (the
/// admin console's, given by the gateway so the portal does not import it)
/// served under the same language, branding, body limit and security headers.
pub fn router(state: Arc<AppState>, pages: axum::Router<Arc<AppState>>) -> axum::Router {
    // Every JSON route comes from a route table (see `api`), never ad hoc.
    let api = api::routes().layer(axum::middleware::from_fn_with_state(state.clone(), api::cors));
    let router = axum::Router::new()
        .route("/", get(account))
        .route("/login", get(login_form).post(login_submit))
        .route("/login/factor", post(passwordless::factor_step))
        .route("/logout", get(account).post(logout_submit))
        .route("/mfa", get(mfa::challenge))
        .route("/mfa/verify", post(mfa::verify))
        .route("/mfa/recovery", post(mfa::recovery))
        .route("/mfa/send", post(oob::send))
        .route("/mfa/push", post(oob::push))
        .route("/mfa/push/check", post(oob::push_check))
        .route("/mfa/password", post(oob::password))
        .route("/enroll", get(enroll::enroll))
        .route("/enroll/activate", post(mfa::activate))
        .route("/enroll/start", post(oob::enroll_start))
        .route("/enroll/resend", post(oob::enroll_resend))
        .route("/enroll/push/check", post(oob::enroll_push_check))
        .route("/factors", get(mfa::list))
        .route("/factors/recovery", post(mfa::regenerate))
        .route("/factors/{factor_id}/remove", post(mfa::remove))
        .route(
            "/factors/{factor_id}/rename",
            get(webauthn::rename_form).post(webauthn::rename_submit),
        )
        .route("/enroll/webauthn", post(webauthn::enroll_submit))
        .route(
            "/login/passkey",
            get(webauthn::passkey_page).post(webauthn::passkey_submit),
        )
        .route("/mfa/webauthn", post(webauthn::challenge))
        .route("/mfa/webauthn/verify", post(webauthn::verify))
        .route(pages::WEBAUTHN_SCRIPT, get(webauthn::script))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(pages::STYLESHEET, get(stylesheet))
        .route(push::SCRIPT_PATH, get(push::script))
        .route(pages::CODES_SCRIPT, get(assets::codes_script))
        .route(pages::BRAND_STYLESHEET, get(assets::brand_css))
        .route("/push/status", post(push::status))
        .merge(api)
        .merge(pages)
        .fallback(not_found);
    // Every page in the browser's language and the operator's branding.
    let brand = Arc::new(pages::Branding::of(&state.config.portal));
    let logo_origin = brand.logo_origin();
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let brand = brand.clone();
            let lang = req
                .headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            async move {
                let mut res = pages::scope(brand, lang.as_deref(), next.run(req)).await;
                res.headers_mut()
                    .append(header::VARY, HeaderValue::from_static("Accept-Language"));
                res
            }
        },
    ));
    // Small bodies only: forms and JSON steps are a few hundred bytes.
    crate::limits::body_limit(router.with_state(state), crate::limits::PORTAL_BODY_LIMIT).layer(
        axum::middleware::map_response(move |mut res: Response| {
            let logo_origin = logo_origin.clone();
            async move {
                pages::security_headers_with_logo(res.headers_mut(), logo_origin.as_deref());
                res
            }
        }),
    )
}

async fn stylesheet() -> Response {
    let mut res = pages::CSS.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    res
}

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

/// `res` told to come back when the rate window ending at `reset` (Unix
/// seconds) is over, at least a second from now.
pub(crate) fn retry_after(mut res: Response, st: &AppState, reset: crate::clock::UnixTime) -> Response {
    let wait = (reset - st.clock.now()).max(1);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    res
}

pub(crate) fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The CSRF token to embed in a page: the request's, if genuine, else a new
/// one (returned so the caller sets the cookie).
pub(crate) fn csrf_token(st: &AppState, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match find_cookie(headers, &st.config.session.csrf_cookie_name())
        .filter(|t| csrf::well_formed(&st.csrf_key, t))
    {
        Some(t) => (t.to_owned(), None),
        None => {
            let t = csrf::new_token(&st.csrf_key);
            let c = csrf::cookie(&st.config.session, &t);
            (t, Some(c))
        }
    }
}

/// True when an unsafe form post passes the CSRF and Origin checks.
pub(crate) fn form_allowed(st: &AppState, ctx: &Ctx, headers: &HeaderMap, submitted: &str) -> bool {
    let cfg = &st.config;
    csrf::same_origin(
        headers,
        &ctx.0,
        cfg.server.external_url.as_ref(),
        &cfg.portal.trusted_origins,
    ) && csrf::verify(
        &st.csrf_key,
        find_cookie(headers, &st.config.session.csrf_cookie_name()),
        Some(submitted),
    )
}

pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Deserialize)]
struct RdQuery {
    rd: Option<String>,
    /// With `users.passwordless`: the username and password form instead.
    password: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginFormData {
    username: String,
    password: String,
    csrf: String,
    rd: String,
}

async fn login_form(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<RdQuery>,
) -> Response {
    let cfg = &st.config;
    let rd = redirect::safe_target(q.rd.as_deref(), &ctx.0.host, &cfg.portal.allowed_redirect_hosts);
    // Already signed in: go on, to the second factor if the target needs more.
    if let SessionState::Valid(s) = st.enforcer.session(&headers) {
        if mfa::satisfied(&st, &ctx, &rd, &s) {
            return see_other(&rd);
        }
        return see_other(&format!("{}/mfa?rd={}", cfg.portal.prefix, enc(&rd)));
    }
    let (token, set) = csrf_token(&st, &headers);
    let page = if cfg.users.passwordless && q.password.is_none() {
        passwordless::username_page(&st, &token, &rd, "", None)
    } else {
        let passkey = webauthn::passkey_href(&st, &rd);
        pages::login_page_with(
            &cfg.portal.title,
            &cfg.portal.prefix,
            &token,
            &rd,
            "",
            None,
            passkey.as_deref(),
        )
    };
    let mut res = html(StatusCode::OK, page);
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

async fn login_submit(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<LoginFormData>,
) -> Response {
    let cfg = &st.config;
    let prefix = &cfg.portal.prefix;
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &cfg.portal.allowed_redirect_hosts);
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        let (token, set) = csrf_token(&st, &headers);
        let page = pages::login_page(
            &cfg.portal.title,
            prefix,
            &token,
            &rd,
            crate::limits::shown_login(&f.username),
            Some(t("login.form_expired")),
        );
        let mut res = html(StatusCode::FORBIDDEN, page);
        if let Some(c) = set {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        return res;
    }
    if cfg.users.passwordless && f.password.is_empty() {
        // Username only: a possession factor signs in (OneLogin's flow).
        return passwordless::start(&st, &headers, &f.username, &rd, ctx.0.client_addr).await;
    }
    match login::check_password(&st, &f.username, Secret::new(f.password), ctx.0.client_addr).await {
        Ok(user) => {
            login::end_prior_sign_in(&st, &headers).await;
            let (claims, cookie) = login::issue_session(&st, &user, 1, vec!["pwd".into()], None);
            let active = crate::enforce::ActiveSession {
                claims: claims.into(),
                user: user.clone(),
            };
            let target = if mfa::satisfied(&st, &ctx, &rd, &active) {
                rd
            } else {
                format!("{prefix}/mfa?rd={}", enc(&rd))
            };
            let mut res = see_other(&target);
            res.headers_mut().append(header::SET_COOKIE, cookie);
            // A new session gets a new CSRF token too.
            let token = csrf::new_token(&st.csrf_key);
            res.headers_mut()
                .append(header::SET_COOKIE, csrf::cookie(&cfg.session, &token));
            res.extensions_mut().insert(AccessInfo {
                decision: "portal",
                user: Some(user.username.clone().into()),
            });
            res
        }
        Err(e) => {
            let (status, message) = match e {
                LoginError::Failed => (StatusCode::UNAUTHORIZED, t("login.failed").to_owned()),
                LoginError::LockedRevealed => (StatusCode::FORBIDDEN, t("common.locked").to_owned()),
                LoginError::FactorLocked(until) => (
                    StatusCode::FORBIDDEN,
                    tf(
                        "login.factor_locked",
                        &[("wait", &crate::i18n::wait_minutes(st.clock.now(), until))],
                    ),
                ),
                LoginError::Busy => (StatusCode::TOO_MANY_REQUESTS, t("login.busy").to_owned()),
                LoginError::Unavailable => {
                    (StatusCode::SERVICE_UNAVAILABLE, t("login.unavailable").to_owned())
                }
            };
            let (token, _) = csrf_token(&st, &headers);
            html(
                status,
                pages::login_page(
                    &cfg.portal.title,
                    prefix,
                    &token,
                    &rd,
                    crate::limits::shown_login(&f.username),
                    Some(&message),
                ),
            )
        }
    }
}

async fn account(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let cfg = &st.config;
    match st.enforcer.session(&headers) {
        SessionState::Valid(s) => {
            let (token, set) = csrf_token(&st, &headers);
            let mut res = html(
                StatusCode::OK,
                pages::signed_in_page(&cfg.portal.prefix, &token, &s.user.username, s.claims.lvl, None),
            );
            if let Some(c) = set {
                res.headers_mut().append(header::SET_COOKIE, c);
            }
            res
        }
        _ => see_other(&format!("{}/login", cfg.portal.prefix)),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfOnly {
    csrf: String,
}

async fn logout_submit(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let prefix = &st.config.portal.prefix;
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message_page(prefix, t("signout.failed"), t("signout.expired")),
        );
    }
    let mut user = None;
    if let SessionState::Valid(s) = st.enforcer.session(&headers) {
        if let Err(e) = login::sign_out(&st, &s.claims).await {
            tracing::error!(error = %e, "revoking a session failed");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message_page(prefix, t("signout.failed"), t("signout.not_recorded")),
            );
        }
        crate::audit!("session.revoked", user = %s.user.username, reason = "logout");
        user = Some(crate::enforce::LoggedUser::User(s.user.clone()));
    }
    let mut res = html(StatusCode::OK, pages::signed_out_page(prefix));
    res.headers_mut()
        .append(header::SET_COOKIE, st.enforcer.sessions.clear_cookie());
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user,
    });
    res
}
