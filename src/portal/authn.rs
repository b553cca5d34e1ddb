//! The authentication API's state machine, shaped like Okta's `/api/v1/authn`.
//!
//! A transaction is a store record (kind `authn`) found by the SHA-256 of its
//! `stateToken`, so any replica can continue it and the token itself is never
//! stored. It expires 5 minutes after its last step and 15 minutes after it
//! began. Its state decides what may happen next:
//!
//! | state | allowed |
//! |---|---|
//! | `MFA_REQUIRED`, `MFA_CHALLENGE` | verify one of the user's active factors |
//! | `MFA_ENROLL` | enroll a factor (user without active factors, `enrollment = "first_login"`) |
//! | `MFA_ENROLL_ACTIVATE` | activate the factor enrolled in this transaction |
//!
//! Anything else answers 403 E0000079; a factor id of another user 404
//! E0000007; an unknown or expired token 401 E0000011. `SUCCESS` ends the
//! transaction (taken atomically, so it completes once) and returns a
//! one-time `sessionToken` (60 s) that `GET {prefix}/session` exchanges for
//! the cookie.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Ctx;
use super::api::{cross_site_guard, embedded_user, login_error};
use super::login;
use crate::clock::{UnixTime, rfc3339};
use crate::enforce::AccessInfo;
use crate::error::{ApiError, ErrorCode};
use crate::factors::{self, Factor, TOTP_TYPE, VerifyError};
use crate::gateway::AppState;
use crate::secret::Secret;
use crate::session::SessionClaims;
use crate::store::{StoreError, TransactionRecord};
use crate::users::User;

/// A transaction lives this long after its last step...
pub const STEP_TTL: i64 = 5 * 60;
/// ...and at most this long after it began.
pub const TOTAL_TTL: i64 = 15 * 60;
/// A `sessionToken` is valid this long, once.
pub const SESSION_TOKEN_TTL: i64 = 60;
const KIND: &str = "authn";
const SESSION_TOKEN: &str = "session_token";

/// Where a transaction stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuthnState {
    status: String,
    created: UnixTime,
    /// When the first factor was verified.
    auth: UnixTime,
    amr: Vec<String>,
    /// The factor enrolled in this transaction, if any.
    enrolled: Option<String>,
}

/// Lookup id of a bearer token: its SHA-256, so stored ids cannot be replayed.
pub fn token_id(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn expiry(created: UnixTime, now: UnixTime) -> UnixTime {
    (now + STEP_TTL).min(created + TOTAL_TTL)
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "store error in the authentication API");
    ApiError::new(ErrorCode::E0000009).into_response()
}

fn json_response(body: Value) -> Response {
    let mut res = (StatusCode::OK, body.to_string()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The Okta factor object as embedded in authn answers.
pub fn factor_json(st: &AppState, f: &Factor) -> Value {
    let r = &f.record;
    let prefix = &st.config.portal.prefix;
    let mut v = json!({
        "id": r.id,
        "factorType": r.factor_type,
        "provider": r.provider,
        "vendorName": r.provider,
        "status": r.status.as_str(),
        "profile": r.profile,
        "_links": {
            "verify": { "href": format!("{prefix}/api/v1/authn/factors/{}/verify", r.id), "hints": { "allow": ["POST"] } }
        },
    });
    if r.created > 0 {
        v["created"] = json!(rfc3339(r.created));
        v["lastUpdated"] = json!(rfc3339(r.last_updated));
    }
    v
}

/// The pseudo-factor for recovery codes in authn answers (not a Factor object
/// of the Factors API; Okta clients never see it there).
fn recovery_json(st: &AppState, user: &User) -> Value {
    let id = recovery_factor_id(&user.id);
    json!({
        "id": id,
        "factorType": "recovery_code",
        "provider": "PORTCULLIS",
        "vendorName": "PORTCULLIS",
        "status": "ACTIVE",
        "profile": {},
        "_links": { "verify": { "href": format!("{}/api/v1/authn/factors/{id}/verify", st.config.portal.prefix) } },
    })
}

/// The id under which a user's recovery codes are verified in the authn API.
pub fn recovery_factor_id(user_id: &str) -> String {
    let d = Sha256::digest(format!("portcullis/recovery-factor/{user_id}").as_bytes());
    format!("rec{}", &hex::encode(d)[..17])
}

/// The enrollment catalog for `MFA_ENROLL`.
fn catalog(st: &AppState) -> Vec<Value> {
    let prefix = &st.config.portal.prefix;
    let mut out = Vec::new();
    if st.config.factors.totp.enabled {
        for provider in ["GOOGLE", "OKTA"] {
            out.push(json!({
                "factorType": TOTP_TYPE,
                "provider": provider,
                "vendorName": provider,
                "status": "NOT_SETUP",
                "enrollment": "OPTIONAL",
                "_links": { "enroll": { "href": format!("{prefix}/api/v1/authn/factors"), "hints": { "allow": ["POST"] } } },
            }));
        }
    }
    out
}

/// Builds an answer for a live transaction.
fn state_answer(
    st: &AppState,
    token: &str,
    state: &AuthnState,
    expires: UnixTime,
    user: &User,
    factors: Vec<Value>,
) -> Value {
    let prefix = &st.config.portal.prefix;
    json!({
        "stateToken": token,
        "expiresAt": rfc3339(expires),
        "status": state.status,
        "_embedded": { "user": embedded_user(user), "factors": factors },
        "_links": { "cancel": { "href": format!("{prefix}/api/v1/authn/cancel"), "hints": { "allow": ["POST"] } } },
    })
}

/// Issues the level-2 (or level-1) session, a one-time sessionToken, and the
/// `SUCCESS` answer with the cookie.
async fn success(
    st: &AppState,
    user: &User,
    level: u8,
    amr: Vec<String>,
    auth: UnixTime,
    extra: Option<(&str, Value)>,
) -> Response {
    let now = st.clock.now();
    let epoch = st.enforcer.revocations.epoch(&user.id);
    let claims = SessionClaims::new(
        &user.id,
        level,
        amr,
        auth,
        (level >= 2).then_some(now),
        epoch,
        now,
    );
    let session_token = crate::crypto::random_token();
    let record = TransactionRecord {
        id: token_id(&session_token),
        kind: SESSION_TOKEN.into(),
        user_id: user.id.clone(),
        data: serde_json::to_value(&claims).unwrap_or(Value::Null),
        version: 0,
        expires_at: now + SESSION_TOKEN_TTL,
    };
    if let Err(e) = st.store.put_transaction(&record).await {
        return unavailable(e);
    }
    let mut embedded = json!({ "user": embedded_user(user) });
    if let Some((k, v)) = extra {
        embedded[k] = v;
    }
    let body = json!({
        "status": "SUCCESS",
        "expiresAt": rfc3339(now + SESSION_TOKEN_TTL),
        "sessionToken": session_token,
        "_embedded": embedded,
    });
    let mut res = json_response(body);
    res.headers_mut()
        .append(header::SET_COOKIE, st.enforcer.sessions.set_cookie(&claims, now));
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user: Some(user.username.clone()),
    });
    res
}

#[derive(Deserialize)]
struct AuthnRequest {
    username: Option<String>,
    password: Option<String>,
}

/// `POST {prefix}/api/v1/authn`: the password step.
pub async fn authn(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(res) = cross_site_guard(&st, &ctx, &method, &headers) {
        return *res;
    }
    let Ok(req) = serde_json::from_slice::<AuthnRequest>(&body) else {
        return ApiError::new(ErrorCode::E0000003).into_response();
    };
    let Some(username) = req.username.filter(|u| !u.trim().is_empty()) else {
        return ApiError::new(ErrorCode::E0000001)
            .cause("username: The field cannot be left blank")
            .into_response();
    };
    let Some(password) = req.password else {
        return ApiError::new(ErrorCode::E0000001)
            .cause("password: The field cannot be left blank")
            .into_response();
    };
    let user = match login::check_password(&st, &username, Secret::new(password), ctx.0.client_addr).await {
        Ok(u) => u,
        Err(e) => return login_error(&st, e),
    };
    let now = st.clock.now();
    let amr = vec!["pwd".to_owned()];
    if !st.config.factors.any_second_factor() {
        return success(&st, &user, 1, amr, now, None).await;
    }
    let factors = match factors::list(&st, &user).await {
        Ok(f) => factors::usable(&st, &f),
        Err(e) => return unavailable(e),
    };
    let recovery_left = if st.config.factors.recovery_codes.enabled && !factors.is_empty() {
        match st.store.recovery_codes_left(&user.id).await {
            Ok(n) => n,
            Err(e) => return unavailable(e),
        }
    } else {
        0
    };
    let enrolling = factors.is_empty();
    let state = AuthnState {
        status: if enrolling { "MFA_ENROLL" } else { "MFA_REQUIRED" }.into(),
        created: now,
        auth: now,
        amr,
        enrolled: None,
    };
    let listed: Vec<Value> = if enrolling {
        if st.config.users.enrollment == crate::config::Enrollment::FirstLogin {
            catalog(&st)
        } else {
            Vec::new()
        }
    } else {
        let mut v: Vec<Value> = factors.iter().map(|f| factor_json(&st, f)).collect();
        if recovery_left > 0 {
            v.push(recovery_json(&st, &user));
        }
        v
    };
    let token = crate::crypto::random_token();
    let expires = expiry(now, now);
    let record = TransactionRecord {
        id: token_id(&token),
        kind: KIND.into(),
        user_id: user.id.clone(),
        data: serde_json::to_value(&state).unwrap_or(Value::Null),
        version: 0,
        expires_at: expires,
    };
    if let Err(e) = st.store.put_transaction(&record).await {
        return unavailable(e);
    }
    // A correct password is one factor: the level-1 cookie now, level 2 after the second.
    let (_, cookie) = login::issue_session(&st, &user, 1, state.amr.clone(), None);
    let mut res = json_response(state_answer(&st, &token, &state, expires, &user, listed));
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user: Some(user.username.clone()),
    });
    res
}

#[derive(Deserialize)]
struct StepRequest {
    #[serde(rename = "stateToken")]
    state_token: Option<String>,
    #[serde(rename = "passCode")]
    pass_code: Option<String>,
    #[serde(rename = "factorType")]
    factor_type: Option<String>,
    provider: Option<String>,
}

/// A loaded transaction with its user.
struct Loaded {
    token: String,
    record: TransactionRecord,
    state: AuthnState,
    user: Arc<User>,
}

/// Parses the body, applies the cross-site rules and loads the transaction.
async fn load(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Loaded, StepRequest), Response> {
    cross_site_guard(st, ctx, method, headers).map_err(|r| *r)?;
    let req: StepRequest =
        serde_json::from_slice(body).map_err(|_| ApiError::new(ErrorCode::E0000003).into_response())?;
    let Some(token) = req.state_token.clone().filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    };
    let now = st.clock.now();
    let record = match st.store.get_transaction(KIND, &token_id(&token), now).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(ApiError::new(ErrorCode::E0000011).into_response()),
        Err(e) => return Err(unavailable(e)),
    };
    let state: AuthnState = serde_json::from_value(record.data.clone())
        .map_err(|_| ApiError::new(ErrorCode::E0000011).into_response())?;
    let user = st
        .enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&record.user_id)
        .cloned();
    let Some(user) = user else {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    };
    Ok((
        Loaded {
            token,
            record,
            state,
            user,
        },
        req,
    ))
}

/// Saves a changed transaction (sliding its expiry); `Err` when a concurrent
/// step won or it expired meanwhile.
async fn save(st: &AppState, loaded: &Loaded, state: &AuthnState) -> Result<UnixTime, Response> {
    let now = st.clock.now();
    let expires = expiry(state.created, now);
    let record = TransactionRecord {
        data: serde_json::to_value(state).unwrap_or(Value::Null),
        expires_at: expires,
        ..loaded.record.clone()
    };
    match st.store.update_transaction(&record, now).await {
        Ok(true) => Ok(expires),
        Ok(false) => Err(ApiError::new(ErrorCode::E0000011).into_response()),
        Err(e) => Err(unavailable(e)),
    }
}

/// Ends the transaction; only one concurrent finisher gets `Ok`.
async fn finish(st: &AppState, loaded: &Loaded) -> Result<(), Response> {
    match st
        .store
        .take_transaction(KIND, &loaded.record.id, st.clock.now())
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::new(ErrorCode::E0000011).into_response()),
        Err(e) => Err(unavailable(e)),
    }
}

fn verify_error(e: VerifyError) -> Response {
    match e {
        VerifyError::Invalid => ApiError::new(ErrorCode::E0000068).into_response(),
        VerifyError::Replayed => ApiError::new(ErrorCode::E0000082).into_response(),
        VerifyError::LockedRevealed => ApiError::new(ErrorCode::E0000069).into_response(),
        VerifyError::NotActive => ApiError::new(ErrorCode::E0000154).into_response(),
        VerifyError::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}

fn missing_passcode() -> Response {
    ApiError::new(ErrorCode::E0000001)
        .cause("passCode: The field cannot be left blank")
        .into_response()
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/verify`.
pub async fn verify(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Path(factor_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, req) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = loaded.user.clone();
    let addr = ctx.0.client_addr;
    // Recovery codes.
    if factor_id == recovery_factor_id(&user.id) {
        if !matches!(loaded.state.status.as_str(), "MFA_REQUIRED" | "MFA_CHALLENGE") {
            return ApiError::new(ErrorCode::E0000079).into_response();
        }
        let Some(code) = req.pass_code.filter(|c| !c.trim().is_empty()) else {
            return missing_passcode();
        };
        if let Err(e) = factors::verify_recovery(&st, &user, &code, addr).await {
            return verify_error(e);
        }
        if let Err(r) = finish(&st, &loaded).await {
            return r;
        }
        let mut amr = loaded.state.amr.clone();
        amr.push("recovery".into());
        return success(&st, &user, 2, amr, loaded.state.auth, None).await;
    }
    let factor = match factors::find(&st, &user, &factor_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return ApiError::new(ErrorCode::E0000007).into_response(),
        Err(e) => return unavailable(e),
    };
    if !matches!(loaded.state.status.as_str(), "MFA_REQUIRED" | "MFA_CHALLENGE") {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    if !factor.is_active() || !factors::type_enabled(&st, &factor.record.factor_type) {
        return ApiError::new(ErrorCode::E0000154).into_response();
    }
    if factor.record.factor_type != TOTP_TYPE {
        // Out-of-band factors arrive with their own issue.
        return ApiError::new(ErrorCode::E0000154).into_response();
    }
    let Some(code) = req.pass_code.filter(|c| !c.trim().is_empty()) else {
        return missing_passcode();
    };
    if let Err(e) = factors::verify_totp(&st, &user, &factor, &code, addr, false).await {
        return verify_error(e);
    }
    if let Err(r) = finish(&st, &loaded).await {
        return r;
    }
    let mut amr = loaded.state.amr.clone();
    amr.push("otp".into());
    success(&st, &user, 2, amr, loaded.state.auth, None).await
}

/// `POST {prefix}/api/v1/authn/factors`: enroll a factor (only in `MFA_ENROLL`).
pub async fn enroll(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, req) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if loaded.state.status != "MFA_ENROLL"
        || st.config.users.enrollment != crate::config::Enrollment::FirstLogin
    {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    let user = loaded.user.clone();
    // Enrollment is for users without an active factor; re-check (another
    // transaction may have activated one meanwhile).
    match factors::list(&st, &user).await {
        Ok(f) if !factors::usable(&st, &f).is_empty() => {
            return ApiError::new(ErrorCode::E0000079).into_response();
        }
        Ok(_) => {}
        Err(e) => return unavailable(e),
    }
    let factor_type = req.factor_type.unwrap_or_default();
    let provider = req.provider.unwrap_or_else(|| "GOOGLE".into());
    if factor_type != TOTP_TYPE {
        return ApiError::new(ErrorCode::E0000001)
            .cause("factorType: not supported or not enabled")
            .into_response();
    }
    let enrolled = match factors::enroll_totp(&st, &user, &provider).await {
        Ok(e) => e,
        Err(factors::EnrollError::NotSupported) => {
            return ApiError::new(ErrorCode::E0000001)
                .cause("provider: not supported")
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "enrollment failed");
            return ApiError::new(ErrorCode::E0000009).into_response();
        }
    };
    let state = AuthnState {
        status: "MFA_ENROLL_ACTIVATE".into(),
        enrolled: Some(enrolled.factor.id.clone()),
        ..loaded.state.clone()
    };
    let expires = match save(&st, &loaded, &state).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let cfg = &st.config.factors.totp;
    let mut factor = factor_json(
        &st,
        &Factor {
            record: enrolled.factor.clone(),
            from_config: false,
        },
    );
    factor["_embedded"] = json!({
        "activation": {
            "timeStep": cfg.period,
            "sharedSecret": crate::factors::totp::base32(enrolled.secret.expose()),
            "encoding": "base32",
            "keyLength": enrolled.secret.len(),
            "algorithm": crate::factors::totp::algorithm_name(cfg.algorithm),
            "digits": cfg.digits,
            "_links": { "qrcode": { "href": crate::factors::totp::qr_data_uri(&enrolled.uri), "type": "image/svg+xml" } },
        }
    });
    factor["_links"] = json!({
        "activate": {
            "href": format!("{}/api/v1/authn/factors/{}/lifecycle/activate", st.config.portal.prefix, enrolled.factor.id),
            "hints": { "allow": ["POST"] }
        }
    });
    let mut body = state_answer(&st, &loaded.token, &state, expires, &user, Vec::new());
    body["_embedded"]["factor"] = factor;
    if let Some(obj) = body["_embedded"].as_object_mut() {
        obj.remove("factors");
    }
    json_response(body)
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/lifecycle/activate`.
pub async fn activate(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Path(factor_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, req) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = loaded.user.clone();
    let factor = match factors::find(&st, &user, &factor_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return ApiError::new(ErrorCode::E0000007).into_response(),
        Err(e) => return unavailable(e),
    };
    if loaded.state.status != "MFA_ENROLL_ACTIVATE"
        || loaded.state.enrolled.as_deref() != Some(factor_id.as_str())
    {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    let Some(code) = req.pass_code.filter(|c| !c.trim().is_empty()) else {
        return missing_passcode();
    };
    if let Err(e) = factors::activate_totp(&st, &user, &factor, &code, ctx.0.client_addr).await {
        return verify_error(e);
    }
    if let Err(r) = finish(&st, &loaded).await {
        return r;
    }
    let codes = if st.config.factors.recovery_codes.enabled {
        match factors::new_recovery_codes(&st, &user).await {
            Ok(c) => Some(json!(c)),
            Err(e) => return unavailable(e),
        }
    } else {
        None
    };
    let mut amr = loaded.state.amr.clone();
    amr.push("otp".into());
    success(
        &st,
        &user,
        2,
        amr,
        loaded.state.auth,
        codes.as_ref().map(|c| ("recoveryCodes", c.clone())),
    )
    .await
}

/// `POST {prefix}/api/v1/authn/cancel`.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, _) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = finish(&st, &loaded).await {
        return r;
    }
    json_response(json!({ "status": "UNAUTHENTICATED" }))
}

#[derive(Deserialize)]
pub struct SessionQuery {
    token: Option<String>,
    rd: Option<String>,
}

/// `GET {prefix}/session?token=...&rd=...`: exchanges a one-time sessionToken
/// for the session cookie and redirects.
pub async fn exchange(State(st): State<Arc<AppState>>, ctx: Ctx, Query(q): Query<SessionQuery>) -> Response {
    let rd = super::redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    let now = st.clock.now();
    let taken = match q.token.filter(|t| !t.is_empty()) {
        Some(t) => st.store.take_transaction(SESSION_TOKEN, &token_id(&t), now).await,
        None => Ok(None),
    };
    let claims = match taken {
        Ok(Some(record)) => serde_json::from_value::<SessionClaims>(record.data).ok(),
        Ok(None) => None,
        Err(e) => return unavailable(e),
    };
    let Some(claims) = claims else {
        let mut res = super::html(
            StatusCode::UNAUTHORIZED,
            super::pages::message_page(
                "Sign-in link expired",
                "This sign-in link is invalid or was already used. Sign in again.",
            ),
        );
        res.headers_mut()
            .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        return res;
    };
    let mut res = super::see_other(&rd);
    *res.status_mut() = StatusCode::FOUND;
    res.headers_mut()
        .append(header::SET_COOKIE, st.enforcer.sessions.set_cookie(&claims, now));
    res.headers_mut()
        .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}
