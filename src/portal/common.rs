//! What the portal's handlers share (the JSON API's guards and answers, the
//! push pairing link, the step-up rules), below all of them, so that the
//! handler modules import it and not each other.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use super::Ctx;
use super::login::LoginError;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::users::User;

/// How recent a second factor must be to add or remove factors.
pub const RECENT_MFA_SECS: i64 = 10 * 60;

/// True when the content type is JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Applies the cross-site rules to an unsafe request; `Err` is the answer.
pub fn cross_site_guard(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if !is_json(headers) {
        return Err(Box::new(ApiError::new(ErrorCode::E0000037).into_response()));
    }
    let cfg = &st.config;
    if !super::csrf::same_origin(
        headers,
        &ctx.0,
        cfg.server.external_url.as_ref(),
        &cfg.portal.trusted_origins,
    ) {
        let refused = ApiError::new(ErrorCode::E0000006).cause("cross-origin request refused");
        return Err(Box::new(refused.into_response()));
    }
    Ok(())
}

/// The Okta user object embedded in authn answers.
pub fn embedded_user(u: &User) -> serde_json::Value {
    let (first, last) = match u.display_name.as_deref().map(str::trim) {
        Some(n) => match n.rsplit_once(' ') {
            Some((f, l)) => (f.to_owned(), l.to_owned()),
            None => (n.to_owned(), String::new()),
        },
        None => (u.username.clone(), String::new()),
    };
    json!({
        "id": u.id,
        "profile": {
            "login": u.username,
            "firstName": first,
            "lastName": last,
            "locale": "en",
            "timeZone": "UTC",
        }
    })
}

/// Maps a failed password step to its API answer.
pub fn login_error(st: &AppState, e: LoginError) -> Response {
    match e {
        LoginError::Failed => ApiError::new(ErrorCode::E0000004).into_response(),
        LoginError::LockedRevealed | LoginError::FactorLocked(_) => {
            ApiError::new(ErrorCode::E0000069).into_response()
        }
        LoginError::Busy => ApiError::rate_limited(1, st.clock.now() + 1, st.clock.now()).into_response(),
        LoginError::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}

/// A JSON answer (200, `no-store`).
pub(crate) fn json_response(body: Value) -> Response {
    crate::api::json_no_store(StatusCode::OK, &body)
}

/// Applies the cross-site rules and parses the JSON body (else `E0000003`);
/// `Err` is the answer.
pub(crate) fn json_request<T: serde::de::DeserializeOwned>(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    cross_site_guard(st, ctx, method, headers)?;
    serde_json::from_slice(body).map_err(|_| Box::new(ApiError::new(ErrorCode::E0000003).into_response()))
}

/// True for a session signed in by a possession factor alone (passwordless):
/// the password is its second step.
pub(crate) fn needs_password(amr: &[String]) -> bool {
    !amr.is_empty() && !amr.iter().any(|m| m == "pwd")
}

/// The gateway's base URL as a device should call it: `server.external_url`,
/// else the scheme and Host of this request.
pub fn base_url(st: &AppState, ctx: &Ctx) -> String {
    match &st.config.server.external_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None => format!("{}://{}", ctx.0.scheme, ctx.0.authority),
    }
}

/// What the pairing QR code holds: where the device posts and the token.
pub fn pairing_uri(st: &AppState, base: &str, token: &str) -> String {
    format!(
        "portcullis-push://pair?gateway={}&token={}",
        super::enc(&format!("{base}{}", st.config.portal.prefix)),
        super::enc(token)
    )
}
