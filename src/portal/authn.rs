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
//!
//! Out-of-band factors: verifying an sms, call or email factor without a
//! `passCode` sends a code and answers `MFA_CHALLENGE` (the transaction
//! remembers the challenged factor); with one it checks it. Verifying a push
//! factor sends a push and answers `MFA_CHALLENGE` with `factorResult:
//! WAITING` and `_embedded.challenge.correctAnswer`; POSTing the same verify
//! again only polls (never re-sends) until SUCCESS, REJECTED or TIMEOUT.
//! `.../verify/resend` sends again (rate limited). Profiles are masked.
//!
//! Passwordless (`users.passwordless = true`, OneLogin's flow): a username
//! without a password answers `MFA_REQUIRED` listing only the user's active
//! factors of the `passwordless_factors` types. One verified possession
//! factor gives a level-1 session; a password posted later with that
//! session (here or on the portal) makes it level 2. An unknown username, or
//! a user without such a factor, gets a decoy transaction of the same shape:
//! a stable pseudo-random subset of the passwordless types with ids derived
//! from the login (a users-file TOTP id is derived the same way), codes that
//! never match and pushes that never arrive (but are rate limited and time
//! out like real ones). Before sign-in the user object carries only the login
//! as typed and a pseudonymous id, so nothing tells a decoy from a real user.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Ctx;
pub(crate) use super::common::needs_password;
use super::common::{embedded_user, json_request, json_response, login_error};
use super::login;
use super::transaction::expiry;
pub(crate) use super::transaction::{AuthnState, IssuedSession, Mode, Pending, Status};
use crate::api::factors::okta_factor;
use crate::api::{Caller, unavailable, verify_error};
use crate::clock::{UnixTime, rfc3339};
use crate::crypto::token_id;
use crate::enforce::AccessInfo;
use crate::error::{ApiError, ErrorCode};
use crate::factors::{
    self, Challenge, ChallengeContext, ChallengeError, Factor, FactorType, PushResult, TOTP_TYPE,
    VerifyError, kind_of,
};
use crate::ids::Ids;
use crate::secret::Secret;
use crate::session::SessionClaims;
use crate::state::AppState;
use crate::store::{FactorRecord, FactorStatus, TransactionRecord};
use crate::users::User;

/// A `sessionToken` is valid this long, once.
pub(crate) const SESSION_TOKEN_TTL: i64 = 60;
const KIND: &str = "authn";
const SESSION_TOKEN: &str = "session_token";

pub(crate) use crate::factors::amr_of;

/// A factor as the authn API shows it: code factors' addresses masked, a
/// push factor's device name only (never its key or address).
pub(crate) fn authn_factor_json(st: &AppState, f: &Factor) -> Value {
    let mut v = okta_factor(st, f);
    let t = f.record.factor_type.as_str();
    let kind = kind_of(t);
    if kind.is_some_and(|k| k.sends_code()) {
        v["profile"] = factors::otp::masked_profile(t, &f.record.profile);
    } else if kind.is_some_and(|k| k.answered_by_device()) {
        v["profile"] = json!({ "deviceName": f.record.profile["deviceName"] });
    }
    v
}

/// A factor as a passwordless answer shows it: nothing a decoy could not
/// show as well (no times, no device name, the login as typed).
fn passwordless_factor_json(st: &AppState, f: &Factor, login: &str) -> Value {
    let r = &f.record;
    let prefix = &st.config.portal.prefix;
    let profile = if r.factor_type == TOTP_TYPE {
        json!({ "credentialId": login })
    } else {
        json!({})
    };
    json!({
        "id": r.id,
        "factorType": r.factor_type,
        "provider": r.provider,
        "vendorName": r.provider,
        "status": "ACTIVE",
        "profile": profile,
        "_links": {
            "verify": { "href": format!("{prefix}/api/v1/authn/factors/{}/verify", r.id), "hints": { "allow": ["POST"] } }
        },
    })
}

/// Characters of a pseudonymous id derived from `login` under a server key.
fn pseudonym(st: &AppState, what: &str, login: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let key = st
        .config
        .session
        .secrets
        .first()
        .map(|s| crate::crypto::derive_key(s, "decoy"))
        .unwrap_or_default();
    let mac = crate::crypto::hmac_sha256(
        key.expose(),
        format!("{what}|{}", login.to_lowercase()).as_bytes(),
    );
    mac.iter()
        .cycle()
        .take(len)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// The user object of a passwordless answer: the login as typed and a
/// pseudonymous id (real and decoy alike).
fn passwordless_user_json(st: &AppState, login: &str) -> Value {
    json!({
        "id": format!("00u{}", pseudonym(st, "user", login, 17)),
        "profile": { "login": login, "locale": "en", "timeZone": "UTC" },
    })
}

/// The passwordless factor types that are enabled.
fn passwordless_types(st: &AppState) -> Vec<String> {
    st.config
        .users
        .passwordless_factors
        .iter()
        // A passkey signs in without a username ("Sign in with a passkey"),
        // not as the possession step after one.
        .filter(|t| factors::type_enabled(st, t) && t.as_str() != factors::webauthn::WEBAUTHN_TYPE)
        .cloned()
        .collect()
}

/// The decoy factors of `login`: a stable, non-empty subset of the enabled
/// passwordless types, with ids shaped like real ones.
fn decoy_factors(st: &AppState, login: &str) -> Vec<Factor> {
    let types = passwordless_types(st);
    if types.is_empty() {
        return Vec::new();
    }
    let bits = pseudonym(st, "subset", login, 1).bytes().next().unwrap_or(0);
    let any_file_totp = st
        .enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .any_config_totp();
    let mut chosen: Vec<&String> = types
        .iter()
        .enumerate()
        .filter(|(i, _)| bits >> (i % 8) & 1 == 1)
        .map(|(_, t)| t)
        .collect();
    if chosen.is_empty() {
        chosen.push(&types[usize::from(bits) % types.len()]);
    }
    chosen
        .into_iter()
        .map(|t| {
            // Shaped as a real factor of the type is, each shape this
            // deployment can give a real user equally likely (stable per
            // login): a users-file TOTP's id can be computed by anyone, an
            // enrolled one's cannot, so a decoy that always took one shape
            // would tell unknown logins from users with the other, and one of
            // a shape no real user can have would tell them apart outright.
            let kind = kind_of(t);
            let providers = kind.map_or(&["OKTA"][..], |k| k.providers());
            let style = usize::from(
                pseudonym(st, "style", &format!("{t}|{login}"), 1)
                    .bytes()
                    .next()
                    .unwrap_or(0),
            );
            let file_totp =
                t == TOTP_TYPE && any_file_totp && style % (providers.len() + 1) == providers.len();
            let provider = providers[style % providers.len()];
            let id = if file_totp {
                factors::config_factor_id(&crate::users::file_user_id(login))
            } else {
                let prefix = kind.map_or("fac", |k| k.id_prefix(provider));
                format!("{prefix}{}", pseudonym(st, t, login, 17))
            };
            let provider = if file_totp { "GOOGLE" } else { provider };
            Factor {
                record: FactorRecord {
                    id,
                    user_id: String::new(),
                    factor_type: t.clone(),
                    provider: provider.into(),
                    status: FactorStatus::Active,
                    profile: json!({}),
                    secret: None,
                    created: 0,
                    last_updated: 0,
                },
                from_config: false,
            }
        })
        .collect()
}

/// The factors a passwordless transaction offers.
async fn passwordless_factors(
    st: &AppState,
    user: &User,
    state: &AuthnState,
) -> Result<Vec<Factor>, Response> {
    if state.mode.is_decoy() {
        return Ok(decoy_factors(st, &state.login));
    }
    let types = passwordless_types(st);
    let all = factors::list(st, user).await.map_err(unavailable)?;
    Ok(factors::usable(st, &all)
        .into_iter()
        .filter(|f| types.contains(&f.record.factor_type))
        .collect())
}

/// The pseudo-factor for recovery codes in authn answers (not a Factor object
/// of the Factors API; Okta clients never see it there).
fn recovery_json(st: &AppState, user: &User) -> Value {
    let id = recovery_factor_id(&user.id);
    json!({
        "id": id,
        "factorType": factors::recovery::RECOVERY_TYPE,
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
    for t in FactorType::enabled(&st.config.factors) {
        for provider in t.kind().providers() {
            out.push(json!({
                "factorType": t.as_str(),
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
    let user_json = if state.mode.is_passwordless() {
        passwordless_user_json(st, &state.login)
    } else {
        embedded_user(user)
    };
    json!({
        "stateToken": token,
        "expiresAt": rfc3339(expires),
        "status": state.status.as_str(),
        "_embedded": { "user": user_json, "factors": factors },
        "_links": { "cancel": { "href": format!("{prefix}/api/v1/authn/cancel"), "hints": { "allow": ["POST"] } } },
    })
}

/// [`state_answer`] about one factor: `_embedded.factor` instead of the list.
fn factor_answer(
    st: &AppState,
    loaded: &Loaded,
    state: &AuthnState,
    expires: UnixTime,
    factor: Value,
) -> Value {
    let mut body = state_answer(st, &loaded.token, state, expires, &loaded.user, Vec::new());
    if let Some(obj) = body["_embedded"].as_object_mut() {
        obj.remove("factors");
    }
    body["_embedded"]["factor"] = factor;
    body
}

/// The authn API's activate link of a factor (the factor's own `_links.activate`).
fn activate_href(prefix: &str, factor_id: &str) -> String {
    format!("{prefix}/api/v1/authn/factors/{factor_id}/lifecycle/activate")
}

/// The `_links` of a pending factor activated by a code sent to it (sms,
/// call, email): `activate`, and `resend` for another code.
fn code_activation_links(prefix: &str, record: &FactorRecord) -> Value {
    json!({
        "activate": { "href": activate_href(prefix, &record.id), "hints": { "allow": ["POST"] } },
        "resend": [{
            "name": record.factor_type,
            "href": format!("{prefix}/api/v1/authn/factors/{}/lifecycle/resend", record.id),
            "hints": { "allow": ["POST"] },
        }],
    })
}

/// Adds Okta's top-level links of an `MFA_ENROLL_ACTIVATE` answer about the
/// factor enrolled in the transaction, beside `cancel`: `next` (`activate`,
/// the factor's own activate link; `poll` for a factor its device
/// activates) and, when its activation code can be sent again, `resend`.
/// No `prev`: there is no `{prefix}/api/v1/authn/previous`.
fn enroll_activate_links(st: &AppState, body: &mut Value, record: &FactorRecord) {
    let prefix = &st.config.portal.prefix;
    let activate_href = activate_href(prefix, &record.id);
    let kind = kind_of(&record.factor_type);
    body["_links"]["next"] = if kind.is_some_and(|k| !k.activated_by_code()) {
        json!({ "name": "poll", "href": format!("{activate_href}/poll"), "hints": { "allow": ["POST"] } })
    } else {
        json!({ "name": "activate", "href": activate_href, "hints": { "allow": ["POST"] } })
    };
    if kind.is_some_and(|k| k.sends_code()) {
        body["_links"]["resend"] = code_activation_links(prefix, record)["resend"].take();
    }
}

/// True when the user's sessions were ended (epoch moved) since the sign-in
/// that began at epoch `began` (none: a sign-in that begins now).
fn ended_since(st: &AppState, user: &User, began: Option<u64>) -> bool {
    began.is_some_and(|b| b < st.enforcer.revocations.epoch(&user.id))
}

/// Issues the level-2 (or level-1) session, a one-time sessionToken, and the
/// `SUCCESS` answer with the cookie.
/// `replaces` is the session this one upgrades (same sign-in): its sign-in
/// id carries over and its session id is retired. `began` is the epoch the
/// sign-in began at (of the session or the transaction it continues): if the
/// user's sessions were ended since, nothing is issued.
#[allow(clippy::too_many_arguments)]
async fn success(
    st: &AppState,
    user: &User,
    level: u8,
    amr: Vec<String>,
    auth: UnixTime,
    replaces: Option<&IssuedSession>,
    began: Option<u64>,
    extra: Option<(&str, Value)>,
) -> Response {
    let now = st.clock.now();
    if ended_since(st, user, began) {
        return ApiError::new(ErrorCode::E0000011).into_response();
    }
    // Not below the sign-in's own: a replica whose view lags must not issue
    // a session the others would refuse.
    let epoch = st.enforcer.revocations.epoch(&user.id).max(began.unwrap_or(0));
    let mut claims = SessionClaims::new(
        &user.id,
        level,
        amr,
        auth,
        (level >= 2).then_some(now),
        epoch,
        now,
    );
    if let Some(old) = replaces {
        claims = claims.in_sign_in(&old.sin);
        // Best effort: signing out revokes the whole sign-in anyway.
        if let Err(e) = login::retire(st, &old.sid, auth).await {
            tracing::warn!(error = %e, "could not revoke the replaced session id");
        }
    }
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
        user: Some(user.username.clone().into()),
    });
    res
}

/// The body of `POST {prefix}/api/v1/authn`.
#[derive(Deserialize)]
pub struct AuthnRequest {
    username: Option<String>,
    password: Option<String>,
}

/// `POST {prefix}/api/v1/authn`: the password step.
pub(crate) async fn authn(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: AuthnRequest = match json_request(&st, &ctx, &method, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(username) = req.username.filter(|u| !u.trim().is_empty()) else {
        return ApiError::new(ErrorCode::E0000001)
            .cause("username: The field cannot be left blank")
            .into_response();
    };
    let Some(password) = req.password else {
        if st.config.users.passwordless {
            let rate = match admit_passwordless(&st, &username, ctx.0.client_addr) {
                Ok(rate) => rate,
                Err(refused) => return refused.api_error(&st).into_response(),
            };
            return match begin_passwordless(&st, &username).await {
                Ok(started) => {
                    let listed: Vec<Value> = started
                        .factors
                        .iter()
                        .map(|f| passwordless_factor_json(&st, f, &started.state.login))
                        .collect();
                    let mut res = json_response(state_answer(
                        &st,
                        &started.token,
                        &started.state,
                        started.expires,
                        &started.user,
                        listed,
                    ));
                    rate_headers(res.headers_mut(), rate);
                    res
                }
                Err(r) => r,
            };
        }
        return ApiError::new(ErrorCode::E0000001)
            .cause("password: The field cannot be left blank")
            .into_response();
    };
    let user = match login::check_password(&st, &username, Secret::new(password), ctx.0.client_addr).await {
        Ok(u) => u,
        Err(e) => return login_error(&st, e),
    };
    let now = st.clock.now();
    // The password as the second step after a passwordless sign-in.
    if let crate::enforce::SessionState::Valid(s) = st.enforcer.session(&headers)
        && s.user.id == user.id
        && s.claims.lvl == 1
        && needs_password(&s.claims.amr)
    {
        let mut amr = s.claims.amr.clone();
        crate::session::add_method(&mut amr, "pwd");
        let replaced = IssuedSession {
            sid: s.claims.sid.clone(),
            sin: s.claims.sin.clone(),
        };
        return success(
            &st,
            &user,
            2,
            amr,
            s.claims.auth,
            Some(&replaced),
            Some(s.claims.ep),
            None,
        )
        .await;
    }
    let amr = vec!["pwd".to_owned()];
    if !st.config.factors.any_second_factor() {
        login::end_prior_sign_in(&st, &headers).await;
        return success(&st, &user, 1, amr, now, None, None, None).await;
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
    // A correct password is one factor: the level-1 cookie now, level 2 after
    // the second. The transaction remembers it, so the upgrade replaces it.
    login::end_prior_sign_in(&st, &headers).await;
    let (level1, cookie) = login::issue_session(&st, &user, 1, amr.clone(), None);
    let state = AuthnState {
        status: if enrolling {
            Status::Enroll
        } else {
            Status::Required
        },
        created: now,
        auth: now,
        amr,
        session: Some(IssuedSession {
            sid: level1.sid,
            sin: level1.sin,
        }),
        epoch: st.enforcer.revocations.epoch(&user.id),
        ..AuthnState::default()
    };
    let listed: Vec<Value> = if enrolling {
        if st.config.users.enrollment == crate::config::Enrollment::FirstLogin {
            catalog(&st)
        } else {
            Vec::new()
        }
    } else {
        let mut v: Vec<Value> = factors.iter().map(|f| authn_factor_json(&st, f)).collect();
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
    let mut res = json_response(state_answer(&st, &token, &state, expires, &user, listed));
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user: Some(user.username.clone().into()),
    });
    res
}

/// A passwordless transaction just begun.
pub(crate) struct Started {
    pub(crate) token: String,
    pub(crate) state: AuthnState,
    pub(crate) expires: UnixTime,
    pub(crate) user: Arc<User>,
    pub(crate) factors: Vec<Factor>,
}

/// Why an unauthenticated passwordless sign-in was not begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The login is longer than [`login::MAX_LOGIN_LEN`]: nobody has it.
    TooLong,
    /// This address opened too many transactions this minute.
    Limited(crate::limits::RateInfo),
}

impl Refused {
    /// The API's answer: the generic 401 E0000004, or 429 E0000047 with the
    /// `Date` and `X-Rate-Limit-*` headers.
    pub(crate) fn api_error(self, st: &AppState) -> ApiError {
        match self {
            Refused::TooLong => ApiError::new(ErrorCode::E0000004),
            Refused::Limited(r) => ApiError::rate_limited(r.limit, r.reset, st.clock.now()),
        }
    }
}

/// Whether an unauthenticated passwordless transaction for `login` may be
/// begun from `addr`: at most `regulation.max_transactions_per_ip_per_minute`
/// per address (decoys included), and never for a login no user can have
/// (it would be stored, echoed and logged).
pub(crate) fn admit_passwordless(
    st: &AppState,
    login: &str,
    addr: std::net::IpAddr,
) -> Result<crate::limits::RateInfo, Refused> {
    let rate = match st.regulator.transaction_admitted(addr) {
        Ok(rate) => rate,
        Err(r) => {
            crate::metrics::login("rate_limited");
            crate::audit!("signin.passwordless.limited", client = %addr);
            return Err(Refused::Limited(r));
        }
    };
    if login.trim().len() > login::MAX_LOGIN_LEN {
        crate::metrics::login("failure");
        crate::audit!("signin.passwordless.refused", client = %addr, reason = "login too long");
        return Err(Refused::TooLong);
    }
    Ok(rate)
}

/// The `X-Rate-Limit-*` headers Okta sends on every answer, so clients can
/// slow down before they are refused.
fn rate_headers(h: &mut HeaderMap, rate: crate::limits::RateInfo) {
    for (name, value) in [
        ("x-rate-limit-limit", i64::from(rate.limit)),
        ("x-rate-limit-remaining", i64::from(rate.remaining)),
        ("x-rate-limit-reset", rate.reset),
    ] {
        h.insert(header::HeaderName::from_static(name), HeaderValue::from(value));
    }
}

/// Begins a passwordless sign-in for `login` (real or decoy; see the module
/// docs). Callers check [`admit_passwordless`] first.
pub(crate) async fn begin_passwordless(st: &AppState, login: &str) -> Result<Started, Response> {
    let login = login.trim();
    if login.len() > login::MAX_LOGIN_LEN {
        // Never stored, echoed or logged.
        return Err(ApiError::new(ErrorCode::E0000004).into_response());
    }
    let known = st
        .enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .by_login(login)
        .cloned();
    let now = st.clock.now();
    let mut state = AuthnState {
        status: Status::Required,
        mode: Mode::Passwordless,
        created: now,
        auth: now,
        login: login.to_owned(),
        ..AuthnState::default()
    };
    let decoy_user = || {
        Arc::new(User {
            id: crate::users::file_user_id(login),
            username: login.to_owned(),
            display_name: None,
            email: None,
            phone: None,
            groups: Vec::new(),
            password_hash: None,
            from_file: false,
            config_totp: None,
        })
    };
    let (user, listed) = match known {
        Some(user) => {
            let listed = passwordless_factors(st, &user, &state).await?;
            if listed.is_empty() {
                (decoy_user(), Vec::new())
            } else {
                (user, listed)
            }
        }
        None => {
            // The same store round trip a real user costs.
            let _ = st.store.list_factors(&crate::users::file_user_id(login)).await;
            (decoy_user(), Vec::new())
        }
    };
    let listed = if listed.is_empty() {
        state.mode = Mode::Decoy;
        decoy_factors(st, login)
    } else {
        state.epoch = st.enforcer.revocations.epoch(&user.id);
        listed
    };
    if state.mode.is_decoy() {
        crate::audit!("signin.passwordless.decoy", login = %login);
    } else {
        crate::audit!("signin.passwordless.started", user = %user.username);
    }
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
    st.store.put_transaction(&record).await.map_err(unavailable)?;
    Ok(Started {
        token,
        state,
        expires,
        user,
        factors: listed,
    })
}

/// The body of the steps after the password (verify, enroll, activate, resend, cancel).
#[derive(Deserialize)]
pub struct StepRequest {
    #[serde(rename = "stateToken")]
    state_token: Option<String>,
    #[serde(rename = "passCode")]
    pass_code: Option<String>,
    #[serde(rename = "factorType")]
    factor_type: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    profile: Option<Value>,
    /// A WebAuthn answer (`clientData`, `attestation`, `authenticatorData`,
    /// `signatureData`...), kept whole for the factor to read.
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl StepRequest {
    /// The WebAuthn answer this step carries, as the factor's proof text.
    fn ceremony_proof(&self) -> Option<String> {
        factors::webauthn::proof_from_body(&Value::Object(self.rest.clone()))
    }
}

/// A loaded transaction with its user.
pub(crate) struct Loaded {
    pub(crate) token: String,
    record: TransactionRecord,
    pub(crate) state: AuthnState,
    pub(crate) user: Arc<User>,
}

impl Loaded {
    /// The flow of this transaction: codes sent in it are usable in it only.
    pub(crate) fn flow(&self) -> factors::Flow {
        factors::Flow::Authn(self.record.id.clone())
    }
}

/// Parses the body, applies the cross-site rules and loads the transaction.
async fn load(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Loaded, StepRequest), Response> {
    let req: StepRequest = json_request(st, ctx, method, headers, body).map_err(|r| *r)?;
    let Some(token) = req.state_token.clone().filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    };
    Ok((load_token(st, &token).await?, req))
}

/// Loads the transaction of `token` (the portal's passwordless pages use it too).
pub(crate) async fn load_token(st: &AppState, token: &str) -> Result<Loaded, Response> {
    let token = token.to_owned();
    let now = st.clock.now();
    let record = match st.store.get_transaction(KIND, &token_id(&token), now).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(ApiError::new(ErrorCode::E0000011).into_response()),
        Err(e) => return Err(unavailable(e)),
    };
    let state: AuthnState = serde_json::from_value(record.data.clone())
        .map_err(|_| ApiError::new(ErrorCode::E0000011).into_response())?;
    let user = if state.mode.is_decoy() {
        Some(Arc::new(User {
            id: record.user_id.clone(),
            username: state.login.clone(),
            display_name: None,
            email: None,
            phone: None,
            groups: Vec::new(),
            password_hash: None,
            from_file: false,
            config_totp: None,
        }))
    } else {
        st.enforcer
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.user_id)
            .cloned()
    };
    let Some(user) = user else {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    };
    // Signed out everywhere (or the password changed) since it began: the
    // transaction ends with the sessions of that time, so a second factor
    // approved later cannot sign in whoever started it.
    // Older only: a replica whose view lags behind the one that began the
    // transaction sees a newer epoch in it, which is no sign-out.
    if !state.mode.is_decoy() && state.epoch < st.enforcer.revocations.epoch(&user.id) {
        return Err(ApiError::new(ErrorCode::E0000011).into_response());
    }
    Ok(Loaded {
        token,
        record,
        state,
        user,
    })
}

/// Saves a changed transaction (sliding its expiry); `Err` when a concurrent
/// step won or it expired meanwhile.
pub(crate) async fn save(st: &AppState, loaded: &Loaded, state: &AuthnState) -> Result<UnixTime, Response> {
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
pub(crate) async fn finish(st: &AppState, loaded: &Loaded) -> Result<(), Response> {
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

fn missing_passcode() -> Response {
    ApiError::new(ErrorCode::E0000001)
        .cause("passCode: The field cannot be left blank")
        .into_response()
}

fn challenge_error(st: &AppState, factor_type: &str, e: ChallengeError) -> Response {
    crate::api::challenge_error(st, Caller::Authn, factor_type, e)
}

/// The user's factor `factor_id` (else `E0000007`).
async fn find_factor(st: &AppState, user: &User, factor_id: &str) -> Result<Factor, Response> {
    match factors::find(st, user, factor_id).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ApiError::new(ErrorCode::E0000007).into_response()),
        Err(e) => Err(unavailable(e)),
    }
}

/// The factor `factor_id` as this transaction may use it: a listed factor
/// of a passwordless sign-in, else any usable factor of the user.
pub(crate) async fn resolve_factor(
    st: &AppState,
    loaded: &Loaded,
    factor_id: &str,
) -> Result<Factor, Response> {
    if loaded.state.mode.is_passwordless() {
        return passwordless_factors(st, &loaded.user, &loaded.state)
            .await?
            .into_iter()
            .find(|f| f.record.id == factor_id)
            .ok_or_else(|| ApiError::new(ErrorCode::E0000007).into_response());
    }
    let factor = find_factor(st, &loaded.user, factor_id).await?;
    if !factor.is_active() || !factors::type_enabled(st, &factor.record.factor_type) {
        return Err(ApiError::new(ErrorCode::E0000154).into_response());
    }
    Ok(factor)
}

/// The factors a passwordless transaction lists (decoys for a decoy).
pub(crate) async fn listed_factors(st: &AppState, loaded: &Loaded) -> Result<Vec<Factor>, Response> {
    passwordless_factors(st, &loaded.user, &loaded.state).await
}

/// A code for a decoy factor: counted and refused exactly like a wrong one
/// (a locked decoy answers like a locked user).
pub(crate) async fn decoy_verify(
    st: &AppState,
    loaded: &Loaded,
    addr: std::net::IpAddr,
) -> Result<(), VerifyError> {
    let uid = &loaded.record.user_id;
    // Decoys only exist in passwordless sign-ins: a first factor.
    // The same attempt a real user's code takes (its turn, its counts), so
    // neither answers nor timing tell a decoy from a user.
    crate::regulation::as_first_factor(true, async {
        let Some(attempt) = st.regulator.factor_attempt(uid, addr).await? else {
            return Err(if st.config.regulation.reveal_lockout {
                VerifyError::LockedRevealed
            } else {
                VerifyError::Invalid
            });
        };
        crate::audit!("factor.verify.failed", user = %loaded.state.login, client = %addr, reason = "invalid");
        st.regulator.factor_attempt_failed(attempt, uid, addr).await?;
        Err(VerifyError::Invalid)
    })
    .await
}

/// Completes the transaction after a verified factor: level 2 after a
/// password, level 1 for a passwordless sign-in.
/// `headers` are the request's: a passwordless sign-in is a new one, which
/// ends the sign-in of a valid session cookie they carry.
async fn complete(st: &AppState, headers: &HeaderMap, loaded: &Loaded, method: &str) -> Response {
    if ended_since(st, &loaded.user, Some(loaded.state.epoch)) {
        return ApiError::new(ErrorCode::E0000011).into_response();
    }
    if let Err(r) = finish(st, loaded).await {
        return r;
    }
    let mut amr = loaded.state.amr.clone();
    crate::session::add_method(&mut amr, method);
    if loaded.state.mode.is_passwordless() {
        crate::audit!("signin.passwordless.succeeded", user = %loaded.user.username, method = method);
        login::end_prior_sign_in(st, headers).await;
        success(
            st,
            &loaded.user,
            1,
            amr,
            st.clock.now(),
            None,
            Some(loaded.state.epoch),
            None,
        )
        .await
    } else {
        success(
            st,
            &loaded.user,
            2,
            amr,
            loaded.state.auth,
            loaded.state.session.as_ref(),
            Some(loaded.state.epoch),
            None,
        )
        .await
    }
}

fn challenge_context(ctx: &Ctx, loaded: &Loaded) -> ChallengeContext {
    ChallengeContext {
        client_addr: ctx.0.client_addr,
        flow: loaded.flow(),
    }
}

/// The `MFA_CHALLENGE` answer for `factor` (`push`: with its result and,
/// while waiting, the number to show).
fn challenge_answer(
    st: &AppState,
    loaded: &Loaded,
    state: &AuthnState,
    expires: UnixTime,
    factor: &Factor,
    push: Option<(PushResult, Option<u8>)>,
) -> Response {
    json_response(challenge_body(st, loaded, state, expires, factor, push))
}

/// The body of [`challenge_answer`].
fn challenge_body(
    st: &AppState,
    loaded: &Loaded,
    state: &AuthnState,
    expires: UnixTime,
    factor: &Factor,
    push: Option<(PushResult, Option<u8>)>,
) -> Value {
    let prefix = &st.config.portal.prefix;
    let fid = &factor.record.id;
    let ft = factor.record.factor_type.as_str();
    let embedded = if state.mode.is_passwordless() {
        passwordless_factor_json(st, factor, &state.login)
    } else {
        authn_factor_json(st, factor)
    };
    let mut body = factor_answer(st, loaded, state, expires, embedded);
    let verify_href = format!("{prefix}/api/v1/authn/factors/{fid}/verify");
    body["_links"]["next"] = json!({
        "name": if push.is_some() { "poll" } else { "verify" },
        "href": verify_href,
        "hints": { "allow": ["POST"] },
    });
    body["_links"]["resend"] = json!([{
        "name": ft,
        "href": format!("{verify_href}/resend"),
        "hints": { "allow": ["POST"] },
    }]);
    if let Some((result, number)) = push {
        body["factorResult"] = json!(result.as_str());
        if let (PushResult::Waiting, Some(n)) = (result, number) {
            body["_embedded"]["challenge"] = json!({ "correctAnswer": n });
        }
    }
    body
}

/// Sends a code for `factor` and answers `MFA_CHALLENGE`.
async fn send_code(st: &AppState, ctx: &Ctx, loaded: &Loaded, factor: &Factor) -> Response {
    let sent = if loaded.state.mode.is_decoy() {
        // Decoys list no code factors; refuse like an inactive factor.
        Err(ChallengeError::NotActive)
    } else {
        factors::challenge(st, &loaded.user, factor, &challenge_context(ctx, loaded)).await
    };
    let expires_at = match sent {
        Ok(Challenge::CodeSent { expires_at }) => expires_at,
        Ok(Challenge::Push { .. } | Challenge::WebAuthn { .. }) => {
            return ApiError::new(ErrorCode::E0000154).into_response();
        }
        Err(e) => return challenge_error(st, &factor.record.factor_type, e),
    };
    let state = loaded.state.challenged(Pending {
        factor_id: factor.record.id.clone(),
        transaction_id: None,
        correct_answer: None,
        expires_at,
    });
    match save(st, loaded, &state).await {
        Ok(expires) => challenge_answer(st, loaded, &state, expires, factor, None),
        Err(r) => r,
    }
}

/// Starts a push (or, for a decoy, a transaction no device answers).
async fn start_push(st: &AppState, ctx: &Ctx, loaded: &Loaded, factor: &Factor) -> Response {
    if let Some(old) = loaded
        .state
        .challenge
        .as_ref()
        .and_then(|p| p.transaction_id.as_deref())
    {
        factors::push::abandon(st, old).await;
    }
    let started = if loaded.state.mode.is_decoy() {
        factors::push::decoy(st, &loaded.record.user_id, &factor.record.id, &loaded.flow()).await
    } else {
        factors::challenge(st, &loaded.user, factor, &challenge_context(ctx, loaded)).await
    };
    let (tid, expires_at, number) = match started {
        Ok(Challenge::Push {
            transaction_id,
            expires_at,
            correct_answer,
        }) => (transaction_id, expires_at, correct_answer),
        Ok(Challenge::CodeSent { .. } | Challenge::WebAuthn { .. }) => {
            return ApiError::new(ErrorCode::E0000154).into_response();
        }
        Err(e) => return challenge_error(st, &factor.record.factor_type, e),
    };
    let state = loaded.state.challenged(Pending {
        factor_id: factor.record.id.clone(),
        transaction_id: Some(tid),
        correct_answer: Some(number),
        expires_at,
    });
    match save(st, loaded, &state).await {
        Ok(expires) => challenge_answer(
            st,
            loaded,
            &state,
            expires,
            factor,
            Some((PushResult::Waiting, Some(number))),
        ),
        Err(r) => r,
    }
}

/// Starts a WebAuthn ceremony with `factor`: `MFA_CHALLENGE` with the
/// request options in `_embedded.challenge` (a decoy has no keys).
async fn start_ceremony(st: &AppState, ctx: &Ctx, loaded: &Loaded, factor: &Factor) -> Response {
    if loaded.state.mode.is_decoy() {
        return ApiError::new(ErrorCode::E0000154).into_response();
    }
    let (options, expires_at) =
        match factors::challenge(st, &loaded.user, factor, &challenge_context(ctx, loaded)).await {
            Ok(Challenge::WebAuthn { options, expires_at }) => (options, expires_at),
            Ok(_) => return ApiError::new(ErrorCode::E0000154).into_response(),
            Err(e) => return challenge_error(st, &factor.record.factor_type, e),
        };
    let state = loaded.state.challenged(Pending {
        factor_id: factor.record.id.clone(),
        transaction_id: None,
        correct_answer: None,
        expires_at,
    });
    match save(st, loaded, &state).await {
        Ok(expires) => {
            let mut v = challenge_body(st, loaded, &state, expires, factor, None);
            v["_embedded"]["challenge"] = options;
            if let Some(o) = v["_links"].as_object_mut() {
                o.remove("resend");
            }
            json_response(v)
        }
        Err(r) => r,
    }
}

/// Polls the push in progress for `factor`: SUCCESS completes the sign-in;
/// REJECTED and TIMEOUT end the challenge (the next verify sends a new push).
async fn poll_push(
    st: &AppState,
    headers: &HeaderMap,
    loaded: &Loaded,
    factor: &Factor,
    pending: &Pending,
) -> Response {
    let tid = pending.transaction_id.as_deref().unwrap_or_default();
    let result = match factors::push::status(st, &loaded.user, factor, tid).await {
        Ok(r) => r.unwrap_or(PushResult::Timeout),
        Err(e) => return unavailable(e),
    };
    match result {
        PushResult::Waiting => challenge_answer(
            st,
            loaded,
            &loaded.state,
            loaded.record.expires_at,
            factor,
            Some((PushResult::Waiting, pending.correct_answer)),
        ),
        PushResult::Success => {
            match factors::push::consume(st, &loaded.user, factor, tid, &loaded.flow()).await {
                Ok(true) => complete(st, headers, loaded, amr_of(&factor.record.factor_type)).await,
                Ok(false) => ApiError::new(ErrorCode::E0000011).into_response(),
                Err(e) => verify_error(e),
            }
        }
        done @ (PushResult::Rejected | PushResult::Timeout) => {
            let state = loaded.state.challenge_ended();
            match save(st, loaded, &state).await {
                Ok(expires) => challenge_answer(st, loaded, &state, expires, factor, Some((done, None))),
                Err(r) => r,
            }
        }
    }
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/verify`.
pub(crate) async fn verify(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Ids(factor_id): Ids<String>,
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
    // Recovery codes (never for a passwordless sign-in).
    if factor_id == recovery_factor_id(&user.id) && !loaded.state.mode.is_passwordless() {
        if !loaded.state.status.may_verify() {
            return ApiError::new(ErrorCode::E0000079).into_response();
        }
        let Some(code) = req.pass_code.filter(|c| !c.trim().is_empty()) else {
            return missing_passcode();
        };
        if let Err(e) = factors::verify_recovery(&st, &user, &code, addr).await {
            return verify_error(e);
        }
        return complete(&st, &headers, &loaded, factors::RECOVERY_AMR).await;
    }
    if !loaded.state.status.may_verify() {
        // Another user's (or no) factor is 404 first, as everywhere.
        return match (
            loaded.state.mode.is_passwordless(),
            factors::find(&st, &user, &factor_id).await,
        ) {
            (false, Ok(None)) | (true, _) => ApiError::new(ErrorCode::E0000007).into_response(),
            (false, Ok(Some(_))) => ApiError::new(ErrorCode::E0000079).into_response(),
            (false, Err(e)) => unavailable(e),
        };
    }
    let factor = match resolve_factor(&st, &loaded, &factor_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let proof = req.ceremony_proof();
    let code = req.pass_code.filter(|c| !c.trim().is_empty());
    match kind_of(&factor.record.factor_type) {
        Some(k) if k.answered_by_device() => match loaded.state.challenge.clone() {
            Some(p) if p.factor_id == factor.record.id && p.transaction_id.is_some() => {
                poll_push(&st, &headers, &loaded, &factor, &p).await
            }
            _ => start_push(&st, &ctx, &loaded, &factor).await,
        },
        Some(k) if k.ceremony() => match proof {
            None => start_ceremony(&st, &ctx, &loaded, &factor).await,
            Some(proof) => {
                let verified = crate::regulation::as_first_factor(
                    loaded.state.mode.is_passwordless(),
                    factors::verify(&st, &user, &factor, &proof, addr, &loaded.flow()),
                )
                .await;
                if let Err(e) = verified {
                    return verify_error(e);
                }
                complete(&st, &headers, &loaded, k.amr()).await
            }
        },
        Some(k) if k.sends_code() => match code {
            None => send_code(&st, &ctx, &loaded, &factor).await,
            Some(code) => {
                if let Err(e) = factors::verify(&st, &user, &factor, &code, addr, &loaded.flow()).await {
                    return verify_error(e);
                }
                complete(&st, &headers, &loaded, k.amr()).await
            }
        },
        // A code the user reads from the factor (an authenticator app).
        Some(k) => {
            let Some(code) = code else {
                return missing_passcode();
            };
            if loaded.state.mode.is_decoy() {
                return verify_error(
                    decoy_verify(&st, &loaded, addr)
                        .await
                        .err()
                        .unwrap_or(VerifyError::Invalid),
                );
            }
            // In a passwordless sign-in the code is the first factor: its
            // failures count like passwords (strangers cannot lock the user).
            let verified = crate::regulation::as_first_factor(
                loaded.state.mode.is_passwordless(),
                factors::verify(&st, &user, &factor, &code, addr, &loaded.flow()),
            )
            .await;
            if let Err(e) = verified {
                return verify_error(e);
            }
            complete(&st, &headers, &loaded, k.amr()).await
        }
        None => ApiError::new(ErrorCode::E0000154).into_response(),
    }
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/verify/resend`: sends the
/// code or push of the factor being challenged again (rate limited).
pub(crate) async fn resend(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Ids(factor_id): Ids<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, _) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let factor = match resolve_factor(&st, &loaded, &factor_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !loaded.state.is_challenging(&factor_id) {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    match kind_of(&factor.record.factor_type) {
        Some(k) if k.sends_code() => send_code(&st, &ctx, &loaded, &factor).await,
        Some(k) if k.answered_by_device() => start_push(&st, &ctx, &loaded, &factor).await,
        _ => ApiError::new(ErrorCode::E0000079).into_response(),
    }
}

/// `POST {prefix}/api/v1/authn/factors`: enroll a factor (only in `MFA_ENROLL`).
pub(crate) async fn enroll(
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
    if loaded.state.status != Status::Enroll
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
    let provider = req.provider.unwrap_or_else(|| {
        kind_of(&factor_type)
            .and_then(|k| k.providers().first().copied())
            .unwrap_or("OKTA")
            .into()
    });
    let profile = req.profile.unwrap_or_else(|| json!({}));
    let enrolled = match factors::enroll(&st, &user, &factor_type, &provider, &profile, &loaded.flow()).await
    {
        Ok(e) => e,
        Err(factors::EnrollError::NotSupported) => {
            return ApiError::new(ErrorCode::E0000001)
                .cause("factorType: not supported or not enabled (or provider: not supported)")
                .into_response();
        }
        Err(factors::EnrollError::Invalid(cause)) => {
            return ApiError::new(ErrorCode::E0000001).cause(cause).into_response();
        }
        Err(factors::EnrollError::Limited(e)) => return challenge_error(&st, &factor_type, e),
        Err(factors::EnrollError::Delivery) => {
            return ApiError::new(ErrorCode::E0000009)
                .cause("The activation code could not be delivered. Try again later.")
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "enrollment failed");
            return ApiError::new(ErrorCode::E0000009).into_response();
        }
    };
    let state = loaded.state.enrolled(&enrolled.factor().id);
    let expires = match save(&st, &loaded, &state).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let record = enrolled.factor().clone();
    let prefix = &st.config.portal.prefix;
    let activate_href = activate_href(prefix, &record.id);
    let mut factor = okta_factor(
        &st,
        &Factor {
            record: record.clone(),
            from_config: false,
        },
    );
    match &enrolled {
        factors::Enrolled::Totp(t) => {
            let cfg = &st.config.factors.totp;
            factor["_embedded"] = json!({
                "activation": {
                    "timeStep": cfg.period,
                    "sharedSecret": crate::factors::totp::base32(t.secret.expose()),
                    "encoding": "base32",
                    "keyLength": t.secret.len(),
                    "algorithm": crate::factors::totp::algorithm_name(cfg.algorithm),
                    "digits": cfg.digits,
                    "_links": { "qrcode": { "href": crate::factors::totp::qr_data_uri(&t.uri), "type": "image/svg+xml" } },
                }
            });
            factor["_links"] =
                json!({ "activate": { "href": activate_href, "hints": { "allow": ["POST"] } } });
        }
        factors::Enrolled::WebAuthn { options, .. } => {
            factor["_embedded"] = json!({ "activation": options });
            factor["_links"] =
                json!({ "activate": { "href": activate_href, "hints": { "allow": ["POST"] } } });
        }
        factors::Enrolled::Code { expires_at, .. } => {
            factor["_embedded"] = json!({ "activation": { "expiresAt": rfc3339(*expires_at) } });
            factor["_links"] = code_activation_links(prefix, &record);
        }
        factors::Enrolled::Push {
            activation_token,
            expires_at,
            ..
        } => {
            let pairing = super::push::pairing_uri(&st, &super::push::base_url(&st, &ctx), activation_token);
            factor["_embedded"] = json!({
                "activation": {
                    "activationToken": activation_token,
                    "expiresAt": rfc3339(*expires_at),
                    "factorResult": "WAITING",
                    "_links": {
                        "qrcode": { "href": crate::factors::totp::qr_data_uri(&pairing), "type": "image/svg+xml" },
                        "device": { "href": format!("{prefix}/api/v1/push/devices"), "hints": { "allow": ["POST"] } },
                    },
                }
            });
            factor["_links"] = json!({ "poll": { "href": format!("{activate_href}/poll"), "hints": { "allow": ["POST"] } } });
        }
    }
    let mut body = factor_answer(&st, &loaded, &state, expires, factor);
    enroll_activate_links(&st, &mut body, &record);
    if let factors::Enrolled::Push { .. } = &enrolled {
        body["factorResult"] = json!("WAITING");
    }
    json_response(body)
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/lifecycle/activate`.
pub(crate) async fn activate(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Ids(factor_id): Ids<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, req) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = loaded.user.clone();
    let factor = match find_factor(&st, &user, &factor_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !loaded.state.is_activating(&factor_id) {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    // Enrolling signs in only a user without an active factor: one activated
    // since this transaction enrolled (the portal, another transaction) must
    // be verified instead, or a password alone could add a factor and sign
    // in after the user secured the account. Two activations at once take
    // turns, so the second sees the first's factor.
    let Some(_turn) = st.regulator.factor_change_turn(&user.id).await else {
        return ApiError::new(ErrorCode::E0000047).into_response();
    };
    // Nor for a user whose sessions were ended since this transaction began,
    // by what the store says now (another replica's reset a moment ago):
    // the factor would outlive the refusal below.
    if let Err(e) = st.revocations.catch_up(&st.store, st.clock.now()).await {
        return unavailable(e);
    }
    if ended_since(&st, &user, Some(loaded.state.epoch)) {
        return ApiError::new(ErrorCode::E0000011).into_response();
    }
    match factors::list(&st, &user).await {
        Ok(f) if factors::usable(&st, &f).iter().any(|u| u.record.id != factor_id) => {
            return ApiError::new(ErrorCode::E0000079).into_response();
        }
        Ok(_) => {}
        Err(e) => return unavailable(e),
    }
    let method = amr_of(&factor.record.factor_type);
    if kind_of(&factor.record.factor_type).is_some_and(|k| !k.activated_by_code()) {
        // The device activates the factor; this polls for it.
        if !factor.is_active() {
            let timed_out = st.clock.now() >= factor.record.created + factors::push::ACTIVATION_TTL;
            let mut body = factor_answer(
                &st,
                &loaded,
                &loaded.state,
                loaded.record.expires_at,
                authn_factor_json(&st, &factor),
            );
            if !timed_out {
                enroll_activate_links(&st, &mut body, &factor.record);
            }
            body["factorResult"] = json!(if timed_out { "TIMEOUT" } else { "WAITING" });
            return json_response(body);
        }
    } else {
        let ceremony = kind_of(&factor.record.factor_type).is_some_and(|k| k.ceremony());
        let code = if ceremony {
            req.ceremony_proof()
        } else {
            req.pass_code.clone().filter(|c| !c.trim().is_empty())
        };
        let Some(code) = code else {
            return if ceremony {
                ApiError::new(ErrorCode::E0000001)
                    .cause("clientData: The field cannot be left blank")
                    .into_response()
            } else {
                missing_passcode()
            };
        };
        if let Err(e) = factors::activate(&st, &user, &factor, &code, ctx.0.client_addr, &loaded.flow()).await
        {
            return verify_error(e);
        }
    }
    // Before the codes are replaced: a refused sign-in must not leave the
    // user with new recovery codes nobody saw.
    if ended_since(&st, &user, Some(loaded.state.epoch)) {
        return ApiError::new(ErrorCode::E0000011).into_response();
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
    crate::session::add_method(&mut amr, method);
    success(
        &st,
        &user,
        2,
        amr,
        loaded.state.auth,
        loaded.state.session.as_ref(),
        Some(loaded.state.epoch),
        codes.as_ref().map(|c| ("recoveryCodes", c.clone())),
    )
    .await
}

/// `POST {prefix}/api/v1/authn/factors/{factorId}/lifecycle/resend`: sends
/// the activation code of the factor enrolled in this transaction again.
pub(crate) async fn resend_activation(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    Ids(factor_id): Ids<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (loaded, _) = match load(&st, &ctx, &method, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let factor = match find_factor(&st, &loaded.user, &factor_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !loaded.state.is_activating(&factor_id)
        || !kind_of(&factor.record.factor_type).is_some_and(|k| k.sends_code())
    {
        return ApiError::new(ErrorCode::E0000079).into_response();
    }
    if let Err(e) = factors::challenge(&st, &loaded.user, &factor, &challenge_context(&ctx, &loaded)).await {
        return challenge_error(&st, &factor.record.factor_type, e);
    }
    let expires = match save(&st, &loaded, &loaded.state).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let mut embedded = okta_factor(&st, &factor);
    embedded["_links"] = code_activation_links(&st.config.portal.prefix, &factor.record);
    let mut body = factor_answer(&st, &loaded, &loaded.state, expires, embedded);
    enroll_activate_links(&st, &mut body, &factor.record);
    json_response(body)
}

/// `POST {prefix}/api/v1/authn/cancel`.
pub(crate) async fn cancel(
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
pub(crate) struct SessionQuery {
    token: Option<String>,
    rd: Option<String>,
}

/// `GET {prefix}/session?token=...&rd=...`: exchanges a one-time sessionToken
/// for the session cookie and redirects.
pub(crate) async fn exchange(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    let rd = super::redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    // Login CSRF: a link from another site must not sign the browser in to
    // an account whose token the linking site obtained. Hand-offs come from
    // the app's own site (same-origin or same-site navigations) or a typed URL.
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        let mut res = super::html(
            StatusCode::FORBIDDEN,
            crate::pages::message_page(
                &st.config.portal.prefix,
                crate::i18n::t("link.refused_title"),
                crate::i18n::t("link.refused"),
            ),
        );
        res.headers_mut()
            .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        return res;
    }
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
            crate::pages::message_page(
                &st.config.portal.prefix,
                crate::i18n::t("link.expired_title"),
                crate::i18n::t("link.expired"),
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
