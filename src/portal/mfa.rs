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
use crate::enforce::ActiveSession;
use crate::factors::{self, Factor, FactorType, TOTP_TYPE, VerifyError};
use crate::i18n::t;
use crate::ids::Ids;
use crate::pages::render;
use crate::policy::{Decision, RequestFacts};
use crate::state::AppState;

pub use super::common::RECENT_MFA_SECS;
// The steps every second-factor page shares, also used from here by the
// passwordless pages.
use super::challenge::{enrolled, has_recent_mfa, may_enroll, recovery_codes_page};
pub(super) use super::challenge::{
    render_challenge, session, to_login, unavailable_page, upgraded, verify_message, with_csrf,
};

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

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct MfaQuery {
    pub(super) rd: Option<String>,
    /// Challenge even when the session already satisfies the target (factor changes).
    fresh: Option<String>,
    /// What to enroll (`totp`, `sms`, `call`, `email`, `push`).
    #[serde(rename = "type")]
    pub(super) factor_type: Option<String>,
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
        let msg = Some(t("common.form_expired"));
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
            let msg = Some(t("challenge.choose"));
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
                VerifyError::Invalid => (StatusCode::FORBIDDEN, t("verify.recovery_invalid")),
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
    uri: &str,
    error: Option<&str>,
) -> String {
    // The QR code for a camera, the `otpauth://` link to tap on the phone itself.
    let qr = factors::totp::qr_data_uri(uri);
    // Groups of four are easier to type into an app by hand.
    let secret_groups: Vec<String> = secret_b32
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    render(
        "enroll_totp.html",
        &st.config.portal.prefix,
        context! { csrf, rd, factor => factor_id, secret => secret_b32, secret_groups, qr, uri, error },
    )
}

/// The TOTP part of `GET {prefix}/enroll` (after [`super::enroll::enroll`]'s
/// checks): start, or resume, an authenticator-app enrollment.
pub(super) async fn enroll_totp(st: &AppState, headers: &HeaderMap, s: &ActiveSession, rd: &str) -> Response {
    // Resume a pending authenticator of this user (a reload, a second tab)
    // rather than leaving one pending factor behind per page view.
    let pending = match factors::list(st, &s.user).await {
        Ok(all) => all.into_iter().find(|f| {
            !f.from_config
                && f.record.factor_type == TOTP_TYPE
                && f.record.status == crate::store::FactorStatus::PendingActivation
                && st.clock.now() - f.record.created < PENDING_REUSE_SECS
        }),
        Err(_) => return unavailable_page(st),
    };
    let resumed =
        pending.and_then(|f| factors::totp_secret(st, &s.user, &f).map(|secret| (f.record.id, secret)));
    let (factor_id, secret) = match resumed {
        Some(r) => r,
        // Through `factors::enroll`: an older pending authenticator is replaced.
        None => match factors::enroll(
            st,
            &s.user,
            TOTP_TYPE,
            "GOOGLE",
            &serde_json::json!({}),
            &super::oob::session_flow(s),
        )
        .await
        .and_then(|e| match e {
            factors::Enrolled::Totp(e) => Ok(e),
            _ => Err(factors::EnrollError::NotSupported),
        }) {
            Ok(e) => (e.factor.id, e.secret),
            Err(e) => {
                tracing::error!(error = %e, "portal enrollment failed");
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::pages::message_page(
                        &st.config.portal.prefix,
                        t("enroll.cannot_title"),
                        t("enroll.cannot"),
                    ),
                );
            }
        },
    };
    let uri = factors::totp::otpauth_uri(&st.config.factors.totp, secret.expose(), &s.user.username);
    let (token, set) = csrf_token(st, headers);
    let page = enroll_page(
        st,
        &token,
        rd,
        &factor_id,
        &factors::totp::base32(secret.expose()),
        &uri,
        None,
    );
    with_csrf(html(StatusCode::OK, page), set)
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
            return retry(StatusCode::FORBIDDEN, t("common.form_expired")).await;
        }
        match may_enroll(&st, &s).await {
            Ok(true) => {}
            Ok(false) => return retry(StatusCode::FORBIDDEN, t("enroll.verify_first")).await,
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
        enroll_page(st, token, &rd, &factor.record.id, &b32, &uri, Some(msg))
    };
    let (token, _) = csrf_token(&st, &headers);
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            rerender(&st, &token, t("common.form_expired")),
        );
    }
    match may_enroll(&st, &s).await {
        Ok(true) => {}
        Ok(false) => {
            return html(
                StatusCode::FORBIDDEN,
                rerender(&st, &token, t("enroll.verify_first")),
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

fn factors_page(
    st: &AppState,
    s: &ActiveSession,
    csrf: &str,
    factors: &[Factor],
    codes_left: u32,
    notice: Option<&str>,
    back: &str,
) -> String {
    let rows: Vec<Value> = factors
        .iter()
        .map(|f| {
            let kind = factors::kind_of(&f.record.factor_type);
            // Keys are told apart by the names their users gave them.
            let named = kind.is_some_and(|k| k.ceremony());
            let name = match kind {
                Some(_) if named => super::words::describe(f),
                Some(k) => super::words::label(k).to_owned(),
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
        .map(|t| context! { query => t.kind().short_name(), label => super::words::add_label(t.kind()) })
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
            back,
        },
    )
}

pub(super) async fn render_factors(
    st: &AppState,
    headers: &HeaderMap,
    s: &ActiveSession,
    notice: Option<&str>,
    status: StatusCode,
    back: &str,
) -> Response {
    let all = match factors::list(st, &s.user).await {
        Ok(f) => f,
        Err(_) => return unavailable_page(st),
    };
    let left = st.store.recovery_codes_left(&s.user.id).await.unwrap_or(0);
    let (token, set) = csrf_token(st, headers);
    with_csrf(
        html(status, factors_page(st, s, &token, &all, left, notice, back)),
        set,
    )
}

/// Where the factors page's "back to the application" link goes.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct BackQuery {
    rd: Option<String>,
}

/// `GET {prefix}/factors?rd=`: the user's factors, with a link back to `rd`
/// (same origin only, else `/`).
pub async fn list(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<BackQuery>,
) -> Response {
    let back = redirect::same_origin_target(q.rd.as_deref(), &ctx.0.host);
    let target = format!("{}/factors?rd={}", st.config.portal.prefix, enc(&back));
    let Some(s) = session(&st, &headers) else {
        return to_login(&st, &target);
    };
    render_factors(&st, &headers, &s, None, StatusCode::OK, &back).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// Guards a factor change: a session, CSRF, a recent second factor (else a
/// step-up that comes back to the factors page), and a session the store
/// says has not ended (another replica's sign-out a moment ago).
pub(super) async fn change_guard(
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
    match st.still_current(&s.claims).await {
        Ok(true) => Ok(s),
        Ok(false) => Err(Box::new(to_login(st, &target))),
        Err(_) => Err(Box::new(unavailable_page(st))),
    }
}

/// `POST {prefix}/factors/{id}/remove`.
pub async fn remove(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Ids(id): Ids<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match change_guard(&st, &ctx, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut reissued = None;
    let (notice, status) = match factors::remove(&st, &s.user, &id, "self").await {
        Ok(moved) => {
            // The epoch moved: every other session of the user ended; this one carries on.
            reissued = login::reissue(&st, &s.claims, moved);
            (t("factors.removed"), StatusCode::OK)
        }
        Err(factors::RemoveError::LastFactor) => (t("factors.last"), StatusCode::CONFLICT),
        Err(factors::RemoveError::ReadOnly) => (t("factors.managed_by_admin"), StatusCode::FORBIDDEN),
        Err(factors::RemoveError::NotFound) => (t("factors.not_found"), StatusCode::NOT_FOUND),
        Err(factors::RemoveError::Unavailable) => return unavailable_page(&st),
    };
    let mut res = render_factors(&st, &headers, &s, Some(notice), status, "/").await;
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
    let s = match change_guard(&st, &ctx, &headers, &f.csrf).await {
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
