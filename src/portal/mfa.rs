//! The portal's second-factor pages: challenge (TOTP code or recovery
//! code), first enrollment (QR code and secret, confirmed by a code, then
//! recovery codes shown once), step-up, and `{prefix}/factors` where a
//! signed-in user manages their own factors.
//!
//! They work on the level-1 (or older level-2) session cookie; every POST is
//! CSRF-checked; a successful step issues a new session id. Changes on the
//! factors page need a second factor within the last [`RECENT_MFA_SECS`].

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use minijinja::context;
use minijinja::value::Value;

use super::{Ctx, csrf_token, enc, form_allowed, html, login, redirect, see_other};
use crate::enforce::{ActiveSession, SessionState};
use crate::factors::{self, Factor, FactorType, TOTP_TYPE, VerifyError};
use crate::ids::Ids;
use crate::pages::render;
use crate::policy::{Decision, RequestFacts};
use crate::state::AppState;

pub use super::common::RECENT_MFA_SECS;

/// A pending authenticator younger than this is shown again instead of a new one.
pub const PENDING_REUSE_SECS: i64 = 15 * 60;

/// True when `claims` satisfies the rule for `target` (its level, and its
/// `max_age`). A group mismatch counts as satisfied: the app answers 403.
pub fn satisfied(st: &AppState, ctx: &Ctx, target: &str, s: &ActiveSession) -> bool {
    let (host, path) = if target.starts_with('/') {
        (
            ctx.0.host.clone(),
            target.split(['?', '#']).next().unwrap_or("/").to_owned(),
        )
    } else {
        match url::Url::parse(target) {
            Ok(u) => (
                u.host_str().unwrap_or_default().to_ascii_lowercase(),
                u.path().to_owned(),
            ),
            Err(_) => return false,
        }
    };
    let Ok(path) = crate::policy::normalize::normalize(&path) else {
        return false;
    };
    let facts = RequestFacts {
        host: &host,
        path: &path,
        method: &http::Method::GET,
        client_addr: ctx.0.client_addr,
    };
    let (decision, _) =
        st.enforcer
            .policy
            .decide_request(&facts, Some((&s.claims, &s.user.groups)), st.clock.now());
    matches!(
        decision,
        Decision::Allow | Decision::Bypass | Decision::Forbidden | Decision::Deny
    )
}

fn has_recent_mfa(st: &AppState, s: &ActiveSession) -> bool {
    s.claims.lvl >= 2
        && s.claims
            .mfa
            .is_some_and(|t| st.clock.now() - t <= RECENT_MFA_SECS)
}

pub(super) fn session(st: &AppState, headers: &HeaderMap) -> Option<ActiveSession> {
    match st.enforcer.session(headers) {
        SessionState::Valid(s) => Some(s),
        _ => None,
    }
}

pub(super) fn to_login(st: &AppState, rd: &str) -> Response {
    see_other(&format!("{}/login?rd={}", st.config.portal.prefix, enc(rd)))
}

pub(super) fn with_csrf(mut res: Response, set: Option<http::HeaderValue>) -> Response {
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// Revokes the session id an upgrade replaces, so only the new one carries on
/// (best effort: the old one is a lower level and expires on its own).
async fn retire(st: &AppState, s: &ActiveSession) {
    // Best effort: signing out revokes the whole sign-in anyway.
    if let Err(e) = login::retire(st, &s.claims.sid, s.claims.auth).await {
        tracing::warn!(error = %e, "could not revoke the replaced session id");
    }
}

/// Upgrades the session to level 2 (new id) and sends the browser on.
pub(super) async fn upgraded(st: &AppState, s: &ActiveSession, method: &str, target: &str) -> Response {
    let mut amr = s.claims.amr.clone();
    crate::session::add_method(&mut amr, method);
    let (_, cookie) = login::issue_session(st, &s.user, 2, amr, Some(&s.claims));
    retire(st, s).await;
    let mut res = see_other(target);
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

pub(super) fn verify_message(e: VerifyError) -> (StatusCode, &'static str) {
    match e {
        VerifyError::Invalid => (StatusCode::FORBIDDEN, "That code is not correct. Try again."),
        VerifyError::Replayed => (
            StatusCode::FORBIDDEN,
            "That code was already used. Wait for the next one.",
        ),
        VerifyError::LockedRevealed => (
            StatusCode::FORBIDDEN,
            "This account is locked. Try again later or contact your administrator.",
        ),
        VerifyError::NotActive => (StatusCode::FORBIDDEN, "That factor cannot be used."),
        VerifyError::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is temporarily unavailable.",
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct MfaQuery {
    pub(super) rd: Option<String>,
    /// Challenge even when the session already satisfies the target (factor changes).
    fresh: Option<String>,
    /// What to enroll (`totp`, `sms`, `call`, `email`, `push`).
    #[serde(rename = "type")]
    factor_type: Option<String>,
}

fn challenge_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    fresh: bool,
    all: &[Factor],
    recovery: bool,
    error: Option<&str>,
) -> String {
    let totp: Vec<Value> = all
        .iter()
        .filter(|f| f.record.factor_type == TOTP_TYPE)
        .map(|f| context! { id => f.record.id.as_str() })
        .collect();
    let oob = super::oob::challenge_buttons(all);
    render(
        "challenge.html",
        &st.config.portal.prefix,
        context! { csrf, rd, fresh, totp, oob, recovery, error },
    )
}

/// `GET {prefix}/mfa`: the second-factor challenge.
pub async fn challenge(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<MfaQuery>,
) -> Response {
    let rd = redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    let fresh = q.fresh.is_some();
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &rd);
    };
    if !fresh && satisfied(&st, &ctx, &rd, &s) {
        return see_other(&rd);
    }
    render_challenge(&st, &headers, &s, &rd, fresh, None, StatusCode::OK).await
}

pub(super) async fn render_challenge(
    st: &AppState,
    headers: &HeaderMap,
    s: &ActiveSession,
    rd: &str,
    fresh: bool,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    if super::common::needs_password(&s.claims.amr) {
        // Signed in with a possession factor alone: the password is the second step.
        let (token, set) = csrf_token(st, headers);
        let page = super::oob::password_page(st, &token, rd, &s.user.username, error);
        return with_csrf(html(status, page), set);
    }
    let all = match factors::list(st, &s.user).await {
        Ok(f) => f,
        Err(_) => return unavailable_page(st),
    };
    let totp: Vec<Factor> = factors::usable(st, &all);
    if totp.is_empty() {
        if st.config.users.enrollment == crate::config::Enrollment::FirstLogin
            && st.config.factors.any_second_factor()
        {
            return see_other(&format!("{}/enroll?rd={}", st.config.portal.prefix, enc(rd)));
        }
        return html(
            StatusCode::FORBIDDEN,
            crate::pages::message_page(
                &st.config.portal.prefix,
                "Second factor required",
                "This page requires a second factor, and your account has none. Ask your administrator to enroll one.",
            ),
        );
    }
    let recovery = st.config.factors.recovery_codes.enabled
        && st
            .store
            .recovery_codes_left(&s.user.id)
            .await
            .map(|n| n > 0)
            .unwrap_or(false);
    let (token, set) = csrf_token(st, headers);
    with_csrf(
        html(
            status,
            challenge_page(st, &token, rd, fresh, &totp, recovery, error),
        ),
        set,
    )
}

pub(super) fn unavailable_page(st: &AppState) -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        crate::pages::message_page(
            &st.config.portal.prefix,
            "Temporarily unavailable",
            "Sign-in is temporarily unavailable. Try again shortly.",
        ),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CodeForm {
    csrf: String,
    rd: String,
    factor: String,
    code: String,
    fresh: Option<String>,
}

/// The common start of a challenge answer: the safe target, the session, the
/// CSRF check, and the passwordless rule (its second step is the password,
/// not another device). `Err` is the page to answer instead.
async fn challenge_step(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    f: &CodeForm,
) -> Result<(ActiveSession, String), Box<Response>> {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = session(st, headers) else {
        return Err(Box::new(to_login(st, &rd)));
    };
    let fresh = f.fresh.is_some();
    if !form_allowed(st, ctx, headers, &f.csrf) {
        let msg = Some("This form expired. Try again.");
        return Err(Box::new(
            render_challenge(st, headers, &s, &rd, fresh, msg, StatusCode::FORBIDDEN).await,
        ));
    }
    if super::common::needs_password(&s.claims.amr) {
        return Err(Box::new(
            render_challenge(st, headers, &s, &rd, fresh, None, StatusCode::FORBIDDEN).await,
        ));
    }
    Ok((s, rd))
}

/// `POST {prefix}/mfa/verify`: a code from an authenticator app, SMS, call or e-mail.
pub async fn verify(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    let (s, rd) = match challenge_step(&st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(res) => return *res,
    };
    let fresh = f.fresh.is_some();
    let factor = match factors::find(&st, &s.user, &f.factor).await {
        Ok(Some(factor)) => factor,
        Ok(None) => {
            let msg = Some("Choose one of your factors.");
            return render_challenge(&st, &headers, &s, &rd, fresh, msg, StatusCode::FORBIDDEN).await;
        }
        Err(_) => return unavailable_page(&st),
    };
    let ft = factor.record.factor_type.clone();
    match factors::verify(
        &st,
        &s.user,
        &factor,
        &f.code,
        ctx.0.client_addr,
        &super::oob::session_flow(&s),
    )
    .await
    {
        Ok(()) => upgraded(&st, &s, factors::amr_of(&ft), &rd).await,
        Err(e) if factors::otp::is_code_type(&ft) => {
            let (status, msg) = verify_message(e);
            super::oob::code_retry(&st, &headers, &rd, fresh, &factor, false, status, msg).await
        }
        Err(e) => {
            let (status, msg) = verify_message(e);
            render_challenge(&st, &headers, &s, &rd, fresh, Some(msg), status).await
        }
    }
}

/// `POST {prefix}/mfa/recovery`: a recovery code.
pub async fn recovery(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    let (s, rd) = match challenge_step(&st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(res) => return *res,
    };
    match factors::verify_recovery(&st, &s.user, &f.code, ctx.0.client_addr).await {
        Ok(()) => upgraded(&st, &s, factors::RECOVERY_AMR, &rd).await,
        Err(e) => {
            let (status, msg) = match e {
                VerifyError::Invalid => (StatusCode::FORBIDDEN, "That recovery code is not valid."),
                other => verify_message(other),
            };
            render_challenge(&st, &headers, &s, &rd, f.fresh.is_some(), Some(msg), status).await
        }
    }
}

fn enroll_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    factor_id: &str,
    secret_b32: &str,
    qr: &str,
    error: Option<&str>,
) -> String {
    // Groups of four are easier to type into an app by hand.
    let secret_groups: Vec<String> = secret_b32
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    render(
        "enroll_totp.html",
        &st.config.portal.prefix,
        context! { csrf, rd, factor => factor_id, secret => secret_b32, secret_groups, qr, error },
    )
}

/// May this session enroll a factor now? First enrollment (no active factor)
/// with `first_login`, or any time with a recent second factor.
pub(super) async fn may_enroll(st: &AppState, s: &ActiveSession) -> Result<bool, ()> {
    if has_recent_mfa(st, s) {
        return Ok(true);
    }
    let all = factors::list(st, &s.user).await.map_err(|_| ())?;
    Ok(factors::usable(st, &all).is_empty()
        && st.config.users.enrollment == crate::config::Enrollment::FirstLogin)
}

/// `GET {prefix}/enroll`: start (or resume) a TOTP enrollment.
pub async fn enroll(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<MfaQuery>,
) -> Response {
    let rd = redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &rd);
    };
    match may_enroll(&st, &s).await {
        Ok(true) => {}
        Ok(false) => {
            let back = format!("{}/enroll?rd={}", st.config.portal.prefix, enc(&rd));
            return see_other(&format!(
                "{}/mfa?fresh=1&rd={}",
                st.config.portal.prefix,
                enc(&back)
            ));
        }
        Err(()) => return unavailable_page(&st),
    }
    let oob_types: Vec<&str> = FactorType::enabled(&st.config.factors)
        .map(FactorType::as_str)
        .filter(|t| super::oob::out_of_band(t) || factors::kind_of(t).is_some_and(|k| k.ceremony()))
        .collect();
    match q.factor_type.as_deref() {
        Some(factors::webauthn::WEBAUTHN_TYPE)
            if factors::type_enabled(&st, factors::webauthn::WEBAUTHN_TYPE) =>
        {
            return super::webauthn::enroll_page(&st, &headers, &s, &rd).await;
        }
        Some(t) if oob_types.contains(&t) => {
            return super::oob::enroll_page(&st, &ctx, &headers, &s, &rd, t).await;
        }
        None if !oob_types.is_empty() => {
            return html(StatusCode::OK, super::oob::chooser_page(&st, &rd));
        }
        _ => {}
    }
    // Resume a pending authenticator of this user (a reload, a second tab)
    // rather than leaving one pending factor behind per page view.
    let pending = match factors::list(&st, &s.user).await {
        Ok(all) => all.into_iter().find(|f| {
            !f.from_config
                && f.record.factor_type == TOTP_TYPE
                && f.record.status == crate::store::FactorStatus::PendingActivation
                && st.clock.now() - f.record.created < PENDING_REUSE_SECS
        }),
        Err(_) => return unavailable_page(&st),
    };
    let resumed =
        pending.and_then(|f| factors::totp_secret(&st, &s.user, &f).map(|secret| (f.record.id, secret)));
    let (factor_id, secret) = match resumed {
        Some(r) => r,
        None => match factors::enroll_totp(&st, &s.user, "GOOGLE").await {
            Ok(e) => (e.factor.id, e.secret),
            Err(e) => {
                tracing::error!(error = %e, "portal enrollment failed");
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::pages::message_page(
                        &st.config.portal.prefix,
                        "Cannot set up a factor",
                        "The gateway cannot store new factors right now.",
                    ),
                );
            }
        },
    };
    let uri = factors::totp::otpauth_uri(&st.config.factors.totp, secret.expose(), &s.user.username);
    let (token, set) = csrf_token(&st, &headers);
    let page = enroll_page(
        &st,
        &token,
        &rd,
        &factor_id,
        &factors::totp::base32(secret.expose()),
        &factors::totp::qr_data_uri(&uri),
        None,
    );
    with_csrf(html(StatusCode::OK, page), set)
}

fn recovery_codes_page(st: &AppState, codes: &[String], rd: &str) -> String {
    render(
        "recovery_codes.html",
        &st.config.portal.prefix,
        context! { codes => codes.to_vec(), next => rd },
    )
}

/// `POST {prefix}/enroll/activate`: confirm the new factor with a code.
pub async fn activate(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &rd);
    };
    let factor = match factors::find(&st, &s.user, &f.factor).await {
        Ok(Some(factor)) if !factor.from_config => factor,
        Ok(_) => return see_other(&format!("{}/enroll?rd={}", st.config.portal.prefix, enc(&rd))),
        Err(_) => return unavailable_page(&st),
    };
    if factors::otp::is_code_type(&factor.record.factor_type) {
        let retry =
            |status, msg| super::oob::code_retry(&st, &headers, &rd, false, &factor, true, status, msg);
        if !form_allowed(&st, &ctx, &headers, &f.csrf) {
            return retry(StatusCode::FORBIDDEN, "This form expired. Try again.").await;
        }
        match may_enroll(&st, &s).await {
            Ok(true) => {}
            Ok(false) => return retry(StatusCode::FORBIDDEN, "Verify with your current factor first.").await,
            Err(()) => return unavailable_page(&st),
        }
        if let Err(e) = factors::activate(
            &st,
            &s.user,
            &factor,
            &f.code,
            ctx.0.client_addr,
            &super::oob::session_flow(&s),
        )
        .await
        {
            let (status, msg) = verify_message(e);
            return retry(status, msg).await;
        }
        let method = factors::amr_of(&factor.record.factor_type);
        return enrolled(&st, &s, &rd, method).await;
    }
    let secret = factors::totp_secret(&st, &s.user, &factor);
    let rerender = |st: &AppState, token: &str, msg: &str| {
        let b32 = secret
            .as_ref()
            .map(|s| factors::totp::base32(s.expose()))
            .unwrap_or_default();
        let uri = secret
            .as_ref()
            .map(|sec| factors::totp::otpauth_uri(&st.config.factors.totp, sec.expose(), &s.user.username))
            .unwrap_or_default();
        enroll_page(
            st,
            token,
            &rd,
            &factor.record.id,
            &b32,
            &factors::totp::qr_data_uri(&uri),
            Some(msg),
        )
    };
    let (token, _) = csrf_token(&st, &headers);
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            rerender(&st, &token, "This form expired. Try again."),
        );
    }
    match may_enroll(&st, &s).await {
        Ok(true) => {}
        Ok(false) => {
            return html(
                StatusCode::FORBIDDEN,
                rerender(&st, &token, "Verify with your current factor first."),
            );
        }
        Err(()) => return unavailable_page(&st),
    }
    if let Err(e) = factors::activate_totp(&st, &s.user, &factor, &f.code, ctx.0.client_addr).await {
        let (status, msg) = verify_message(e);
        return html(status, rerender(&st, &token, msg));
    }
    enrolled(&st, &s, &rd, "otp").await
}

/// After a factor was activated: recovery codes when it is the user's first
/// (shown once), and the session upgraded to level 2 (new id).
pub(super) async fn enrolled(st: &AppState, s: &ActiveSession, rd: &str, method: &str) -> Response {
    let first = match factors::list(st, &s.user).await {
        Ok(all) => factors::usable(st, &all).len() <= 1,
        Err(_) => return unavailable_page(st),
    };
    let mut res = if first && st.config.factors.recovery_codes.enabled {
        match factors::new_recovery_codes(st, &s.user).await {
            Ok(codes) => html(StatusCode::OK, recovery_codes_page(st, &codes, rd)),
            Err(_) => return unavailable_page(st),
        }
    } else {
        see_other(rd)
    };
    let mut amr = s.claims.amr.clone();
    crate::session::add_method(&mut amr, method);
    let (_, cookie) = login::issue_session(st, &s.user, 2, amr, Some(&s.claims));
    retire(st, s).await;
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

fn factors_page(
    st: &AppState,
    s: &ActiveSession,
    csrf: &str,
    factors: &[Factor],
    codes_left: u32,
    notice: Option<&str>,
) -> String {
    let rows: Vec<Value> = factors
        .iter()
        .map(|f| {
            let kind = factors::kind_of(&f.record.factor_type);
            // Keys are told apart by the names their users gave them.
            let named = kind.is_some_and(|k| k.ceremony());
            let name = match kind {
                Some(k) if named => k.describe(&f.record.profile),
                Some(k) => k.label().to_owned(),
                None => f.record.factor_type.clone(),
            };
            context! {
                id => f.record.id.as_str(),
                name,
                active => f.is_active(),
                managed => f.from_config,
                rename => named && !f.from_config,
            }
        })
        .collect();
    let add: Vec<Value> = FactorType::enabled(&st.config.factors)
        .map(|t| context! { query => t.kind().short_name(), label => t.kind().add_label() })
        .collect();
    render(
        "factors.html",
        &st.config.portal.prefix,
        context! {
            username => s.user.username.as_str(),
            notice,
            factors => rows,
            add,
            back_query => enc(&format!("{}/factors", st.config.portal.prefix)),
            recovery => st.config.factors.recovery_codes.enabled,
            codes_left,
            csrf,
        },
    )
}

pub(super) async fn render_factors(
    st: &AppState,
    headers: &HeaderMap,
    s: &ActiveSession,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let all = match factors::list(st, &s.user).await {
        Ok(f) => f,
        Err(_) => return unavailable_page(st),
    };
    let left = st.store.recovery_codes_left(&s.user.id).await.unwrap_or(0);
    let (token, set) = csrf_token(st, headers);
    with_csrf(html(status, factors_page(st, s, &token, &all, left, notice)), set)
}

/// `GET {prefix}/factors`: the user's factors.
pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let target = format!("{}/factors", st.config.portal.prefix);
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &target);
    };
    render_factors(&st, &headers, &s, None, StatusCode::OK).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// Guards a factor change: a session, CSRF, and a recent second factor
/// (else a step-up that comes back to the factors page).
pub(super) fn change_guard(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<ActiveSession, Box<Response>> {
    let target = format!("{}/factors", st.config.portal.prefix);
    let Some(s) = session(st, headers) else {
        return Err(Box::new(to_login(st, &target)));
    };
    if !form_allowed(st, ctx, headers, csrf) {
        return Err(Box::new(see_other(&target)));
    }
    if !has_recent_mfa(st, &s) {
        // Users without any factor may only enroll, which has its own page.
        return Err(Box::new(see_other(&format!(
            "{}/mfa?fresh=1&rd={}",
            st.config.portal.prefix,
            enc(&target)
        ))));
    }
    Ok(s)
}

/// `POST {prefix}/factors/{id}/remove`.
pub async fn remove(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Ids(id): Ids<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match change_guard(&st, &ctx, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut reissued = None;
    let (notice, status) = match factors::remove(&st, &s.user, &id, "self").await {
        Ok(()) => {
            // The epoch moved: every other session of the user ended; this one carries on.
            reissued = Some(login::reissue(&st, &s.claims));
            ("The factor was removed.", StatusCode::OK)
        }
        Err(factors::RemoveError::LastFactor) => (
            "This is your last factor and sign-in requires two: add another one first.",
            StatusCode::CONFLICT,
        ),
        Err(factors::RemoveError::ReadOnly) => (
            "This factor is managed by your administrator.",
            StatusCode::FORBIDDEN,
        ),
        Err(factors::RemoveError::NotFound) => ("No such factor.", StatusCode::NOT_FOUND),
        Err(factors::RemoveError::Unavailable) => return unavailable_page(&st),
    };
    let mut res = render_factors(&st, &headers, &s, Some(notice), status).await;
    if let Some(cookie) = reissued {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
    res
}

/// `POST {prefix}/factors/recovery`: new recovery codes (shown once).
pub async fn regenerate(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match change_guard(&st, &ctx, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !st.config.factors.recovery_codes.enabled {
        return see_other(&format!("{}/factors", st.config.portal.prefix));
    }
    match factors::new_recovery_codes(&st, &s.user).await {
        Ok(codes) => html(
            StatusCode::OK,
            recovery_codes_page(&st, &codes, &format!("{}/factors", st.config.portal.prefix)),
        ),
        Err(_) => unavailable_page(&st),
    }
}
