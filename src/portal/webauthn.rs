//! The portal's security-key and passkey pages (the factor is
//! `factors::webauthn`):
//! - `GET {prefix}/enroll?type=webauthn` registers a named key (the page
//!   carries the creation options; [`SCRIPT`] asks the browser and posts
//!   the answer to `POST {prefix}/enroll/webauthn`);
//! - `POST {prefix}/mfa/webauthn` (the challenge page's button) starts a
//!   sign-in with a key; `POST {prefix}/mfa/webauthn/verify` checks it;
//! - `GET/POST {prefix}/factors/{id}/rename` renames a key (removing is
//!   the factors page's, with the last-factor rule);
//! - `GET {prefix}/static/webauthn.js`, allowed by the pages' CSP.
//!
//! Every ceremony runs in the session's flow: an answer made on one
//! session's page cannot finish another's.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use minijinja::context;
use minijinja::value::Value;
use serde::Deserialize;

use super::mfa::{self, with_csrf};
use super::{Ctx, csrf, csrf_token, enc, form_allowed, html, redirect, see_other};
use crate::enforce::{AccessInfo, ActiveSession};
use crate::factors::webauthn::{self as wa, WEBAUTHN_TYPE};
use crate::factors::{self, Challenge, ChallengeContext, Enrolled, Factor};
use crate::ids::Ids;
use crate::pages::render;
use crate::state::AppState;
use crate::store::FactorStatus;

/// The page script.
pub const SCRIPT: &str = include_str!("webauthn.js");

/// `GET {prefix}/static/webauthn.js`.
pub async fn script() -> Response {
    let mut res = SCRIPT.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    res
}

/// The ceremony page.
#[allow(clippy::too_many_arguments)]
fn page(
    st: &AppState,
    mode: &str,
    options: &serde_json::Value,
    action: &str,
    fields: &[(&str, &str)],
    name: &str,
    back: Option<&str>,
    error: Option<&str>,
) -> String {
    let fields: Vec<Value> = fields
        .iter()
        .map(|(name, value)| context! { name => *name, value => *value })
        .collect();
    let (title, intro, button) = if mode == "create" {
        (
            "Add a security key or passkey",
            "Name it, then follow your browser's prompt: touch your key, or use your device's screen lock.",
            "Add the key",
        )
    } else {
        (
            "Use your security key",
            "Follow your browser's prompt: touch your key, or use your device's screen lock.",
            "Use the key",
        )
    };
    render(
        "webauthn.html",
        &st.config.portal.prefix,
        context! {
            mode, title, intro, button, action, fields, name, back, error,
            options => options.to_string(),
        },
    )
}

fn unavailable(st: &AppState) -> Response {
    mfa::unavailable_page(st)
}

/// The user's pending key to resume (a reload), if young enough.
async fn pending_key(st: &AppState, s: &ActiveSession) -> Result<Option<Factor>, ()> {
    let all = factors::list(st, &s.user).await.map_err(|_| ())?;
    Ok(all.into_iter().find(|f| {
        f.record.factor_type == WEBAUTHN_TYPE
            && f.record.status == FactorStatus::PendingActivation
            && st.clock.now() - f.record.created < mfa::PENDING_REUSE_SECS
    }))
}

/// The enrollment page (after `mfa::enroll`'s checks): a pending key with
/// fresh creation options.
pub async fn enroll_page(st: &AppState, headers: &HeaderMap, s: &ActiveSession, rd: &str) -> Response {
    enroll_render(st, headers, s, rd, "", None, StatusCode::OK).await
}

async fn enroll_render(
    st: &AppState,
    headers: &HeaderMap,
    s: &ActiveSession,
    rd: &str,
    name: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let started = match pending_key(st, s).await {
        Err(()) => return unavailable(st),
        Ok(Some(f)) => wa::restart_registration(st, &s.user, &f)
            .await
            .map(|o| (f.record.id.clone(), o)),
        Ok(None) => match factors::enroll(
            st,
            &s.user,
            WEBAUTHN_TYPE,
            wa::PROVIDER,
            &serde_json::json!({}),
            &super::oob::session_flow(s),
        )
        .await
        {
            Ok(Enrolled::WebAuthn { factor, options, .. }) => Ok((factor.id, options)),
            Ok(_) => Err(factors::EnrollError::NotSupported),
            Err(e) => Err(e),
        },
    };
    let (factor_id, options) = match started {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "portal webauthn enrollment failed");
            return unavailable(st);
        }
    };
    let (token, set) = csrf_token(st, headers);
    let action = format!("{}/enroll/webauthn", st.config.portal.prefix);
    let back = format!("{}/enroll?rd={}", st.config.portal.prefix, enc(rd));
    let body = page(
        st,
        "create",
        &options,
        &action,
        &[("csrf", &token), ("rd", rd), ("factor", &factor_id)],
        name,
        Some(&back),
        error,
    );
    with_csrf(html(status, body), set)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CeremonyForm {
    csrf: String,
    rd: String,
    factor: String,
    fresh: Option<String>,
    name: String,
    response: String,
}

/// The browser's answer as the factor's proof text (`None`: not an answer).
fn proof_of(response: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(response)
        .ok()
        .filter(serde_json::Value::is_object)
        .and_then(|v| wa::proof_from_body(&v))
}

/// `POST {prefix}/enroll/webauthn`: the registration answer (and the name).
pub async fn enroll_submit(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CeremonyForm>,
) -> Response {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = mfa::session(&st, &headers) else {
        return mfa::to_login(&st, &rd);
    };
    let again = |msg: &'static str, status| {
        let (st, headers, s, rd, name) = (st.clone(), headers.clone(), s.clone(), rd.clone(), f.name.clone());
        async move { enroll_render(&st, &headers, &s, &rd, &name, Some(msg), status).await }
    };
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return again("This form expired. Try again.", StatusCode::FORBIDDEN).await;
    }
    match super::challenge::may_enroll(&st, &s).await {
        Ok(true) => {}
        Ok(false) => return again("Verify with your current factor first.", StatusCode::FORBIDDEN).await,
        Err(()) => return unavailable(&st),
    }
    let factor = match factors::find(&st, &s.user, &f.factor).await {
        Ok(Some(x)) if x.record.factor_type == WEBAUTHN_TYPE && !x.is_active() => x,
        Ok(_) => {
            return see_other(&format!(
                "{}/enroll?type=webauthn&rd={}",
                st.config.portal.prefix,
                enc(&rd)
            ));
        }
        Err(_) => return unavailable(&st),
    };
    if wa::name_of(&serde_json::json!({ "authenticatorName": f.name })).is_err() {
        return again(
            "Give the key a name of at most 64 characters.",
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let Some(proof) = proof_of(&f.response) else {
        return again("Your browser sent no answer. Try again.", StatusCode::BAD_REQUEST).await;
    };
    if let Err(e) = factors::activate(
        &st,
        &s.user,
        &factor,
        &proof,
        ctx.0.client_addr,
        &super::oob::session_flow(&s),
    )
    .await
    {
        let (status, _) = mfa::verify_message(e);
        return again("That key could not be added. Try again.", status).await;
    }
    if let Ok(Some(active)) = factors::find(&st, &s.user, &factor.record.id).await
        && let Err(e) = wa::rename(&st, &s.user, &active, &f.name).await
    {
        tracing::warn!(error = %e, "naming a new key failed");
    }
    super::challenge::enrolled(&st, &s, &rd, factors::amr_of(WEBAUTHN_TYPE)).await
}

/// Session, CSRF and passwordless checks of a challenge POST, and the key.
async fn challenge_step(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    f: &CeremonyForm,
) -> Result<(ActiveSession, String, Factor), Response> {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = mfa::session(st, headers) else {
        return Err(mfa::to_login(st, &rd));
    };
    let q = if f.fresh.is_some() { "fresh=1&" } else { "" };
    let back = see_other(&format!("{}/mfa?{q}rd={}", st.config.portal.prefix, enc(&rd)));
    if !form_allowed(st, ctx, headers, &f.csrf) || super::common::needs_password(&s.claims.amr) {
        return Err(back);
    }
    match factors::find(st, &s.user, &f.factor).await {
        Ok(Some(x))
            if x.is_active()
                && x.record.factor_type == WEBAUTHN_TYPE
                && factors::type_enabled(st, WEBAUTHN_TYPE) =>
        {
            Ok((s, rd, x))
        }
        Ok(_) => Err(back),
        Err(_) => Err(unavailable(st)),
    }
}

/// Renders the sign-in ceremony for `factor` with a new challenge.
#[allow(clippy::too_many_arguments)]
async fn challenge_render(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    s: &ActiveSession,
    rd: &str,
    fresh: bool,
    factor: &Factor,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let cctx = ChallengeContext {
        client_addr: ctx.0.client_addr,
        flow: super::oob::session_flow(s),
    };
    let options = match factors::challenge(st, &s.user, factor, &cctx).await {
        Ok(Challenge::WebAuthn { options, .. }) => options,
        Ok(_) | Err(_) => return unavailable(st),
    };
    let (token, set) = csrf_token(st, headers);
    let prefix = &st.config.portal.prefix;
    let action = format!("{prefix}/mfa/webauthn/verify");
    let back = format!(
        "{prefix}/mfa?{}rd={}",
        if fresh { "fresh=1&" } else { "" },
        enc(rd)
    );
    let mut fields = vec![
        ("csrf", token.as_str()),
        ("rd", rd),
        ("factor", factor.record.id.as_str()),
    ];
    if fresh {
        fields.push(("fresh", "1"));
    }
    let body = page(st, "get", &options, &action, &fields, "", Some(&back), error);
    with_csrf(html(status, body), set)
}

/// `POST {prefix}/mfa/webauthn`: the page that asks the key.
pub async fn challenge(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CeremonyForm>,
) -> Response {
    let (s, rd, factor) = match challenge_step(&st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    challenge_render(
        &st,
        &ctx,
        &headers,
        &s,
        &rd,
        f.fresh.is_some(),
        &factor,
        None,
        StatusCode::OK,
    )
    .await
}

/// `POST {prefix}/mfa/webauthn/verify`: the key's answer.
pub async fn verify(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CeremonyForm>,
) -> Response {
    let (s, rd, factor) = match challenge_step(&st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let fresh = f.fresh.is_some();
    // No answer at all still uses up the challenge and counts, like a wrong one.
    let proof = proof_of(&f.response).unwrap_or_else(|| r#"{"clientData":""}"#.to_owned());
    match factors::verify(
        &st,
        &s.user,
        &factor,
        &proof,
        ctx.0.client_addr,
        &super::oob::session_flow(&s),
    )
    .await
    {
        Ok(()) => mfa::upgraded(&st, &s, factors::amr_of(WEBAUTHN_TYPE), &rd).await,
        Err(e) => {
            let (status, _) = mfa::verify_message(e);
            let msg = match e {
                factors::VerifyError::LockedRevealed | factors::VerifyError::Unavailable => {
                    mfa::verify_message(e).1
                }
                _ => "That key was not accepted. Try again, or use another method.",
            };
            challenge_render(&st, &ctx, &headers, &s, &rd, fresh, &factor, Some(msg), status).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RenameForm {
    csrf: String,
    name: String,
}

fn rename_page(st: &AppState, csrf: &str, factor: &Factor, name: &str, error: Option<&str>) -> String {
    render(
        "webauthn_rename.html",
        &st.config.portal.prefix,
        context! { csrf, factor => factor.record.id.as_str(), name, error },
    )
}

async fn own_key(st: &AppState, s: &ActiveSession, id: &str) -> Result<Factor, Response> {
    match factors::find(st, &s.user, id).await {
        Ok(Some(f)) if f.record.factor_type == WEBAUTHN_TYPE => Ok(f),
        Ok(_) => Err(see_other(&format!("{}/factors", st.config.portal.prefix))),
        Err(_) => Err(unavailable(st)),
    }
}

/// `GET {prefix}/factors/{id}/rename`.
pub async fn rename_form(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Ids(id): Ids<String>,
) -> Response {
    let target = format!("{}/factors", st.config.portal.prefix);
    let Some(s) = mfa::session(&st, &headers) else {
        return mfa::to_login(&st, &target);
    };
    let f = match own_key(&st, &s, &id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let name = f.record.profile["authenticatorName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (token, set) = csrf_token(&st, &headers);
    with_csrf(
        html(StatusCode::OK, rename_page(&st, &token, &f, &name, None)),
        set,
    )
}

/// `POST {prefix}/factors/{id}/rename` (a recent second factor, like every change).
pub async fn rename_submit(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Ids(id): Ids<String>,
    Form(f): Form<RenameForm>,
) -> Response {
    let s = match mfa::change_guard(&st, &ctx, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let key = match own_key(&st, &s, &id).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match wa::rename(&st, &s.user, &key, &f.name).await {
        Ok(true) => {
            crate::audit!("factor.renamed", user = %s.user.username, factor_id = %id, actor = %"self");
            mfa::render_factors(
                &st,
                &headers,
                &s,
                Some("The key was renamed."),
                StatusCode::OK,
                "/",
            )
            .await
        }
        Ok(false) => see_other(&format!("{}/factors", st.config.portal.prefix)),
        Err(factors::EnrollError::Invalid(_)) => {
            let (token, set) = csrf_token(&st, &headers);
            let msg = Some("Give the key a name of at most 64 characters.");
            with_csrf(
                html(
                    StatusCode::BAD_REQUEST,
                    rename_page(&st, &token, &key, &f.name, msg),
                ),
                set,
            )
        }
        Err(_) => unavailable(&st),
    }
}

// ---- usernameless sign-in with a passkey ------------------------------------

/// The passkey sign-in link for the sign-in pages, when `[factors.webauthn]`
/// is on and `users.passwordless_factors` lists `webauthn`.
pub fn passkey_href(st: &AppState, rd: &str) -> Option<String> {
    let on = st.config.factors.webauthn.enabled
        && st
            .config
            .users
            .passwordless_factors
            .iter()
            .any(|f| f == WEBAUTHN_TYPE);
    on.then(|| format!("{}/login/passkey?rd={}", st.config.portal.prefix, enc(rd)))
}

/// The flow of a usernameless ceremony: bound to the browser's CSRF token
/// (the cookie and the form must both carry it).
fn passkey_flow(csrf: &str) -> factors::Flow {
    factors::Flow::Authn(format!("passkey:{}", crate::crypto::token_id(csrf)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RdQuery {
    rd: Option<String>,
}

async fn passkey_render(
    st: &AppState,
    headers: &HeaderMap,
    addr: std::net::IpAddr,
    rd: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (token, set) = csrf_token(st, headers);
    // Each page stores a ceremony for a stranger: counted like the other
    // sign-in transactions a client may start without a password.
    // (No login here, so only the address's rate can refuse it.)
    if let Err(super::authn::Refused::Limited(r)) = super::authn::admit_passwordless(st, "", addr) {
        let page = crate::pages::message_page(
            &st.config.portal.prefix,
            crate::i18n::t("common.unavailable_title"),
            crate::i18n::t("passwordless.too_many"),
        );
        let res = with_csrf(html(StatusCode::TOO_MANY_REQUESTS, page), set);
        return super::retry_after(res, st, r.reset);
    }
    let (options, _) = match wa::challenge_discoverable(st, &passkey_flow(&token)).await {
        Ok(x) => x,
        Err(_) => return unavailable(st),
    };
    let prefix = &st.config.portal.prefix;
    let action = format!("{prefix}/login/passkey");
    let back = format!("{prefix}/login?rd={}", enc(rd));
    let mut body = page(
        st,
        "get",
        &options,
        &action,
        &[("csrf", &token), ("rd", rd)],
        "",
        Some(&back),
        error,
    );
    body = body.replace("Use your security key</h1>", "Sign in with a passkey</h1>");
    with_csrf(html(status, body), set)
}

/// `GET {prefix}/login/passkey?rd=`: a usernameless ceremony.
pub async fn passkey_page(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<RdQuery>,
) -> Response {
    let rd = redirect::safe_target(
        q.rd.as_deref(),
        &ctx.0.host,
        &st.config.portal.allowed_redirect_hosts,
    );
    if passkey_href(&st, &rd).is_none() {
        return see_other(&format!("{}/login?rd={}", st.config.portal.prefix, enc(&rd)));
    }
    passkey_render(&st, &headers, ctx.0.client_addr, &rd, None, StatusCode::OK).await
}

/// `POST {prefix}/login/passkey`: the passkey's answer. With user
/// verification (which the ceremony requires) it proves two factors, the
/// key and the PIN or biometrics that unlocked it: a level-2 session.
pub async fn passkey_submit(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<CeremonyForm>,
) -> Response {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    if passkey_href(&st, &rd).is_none() {
        return see_other(&format!("{}/login?rd={}", st.config.portal.prefix, enc(&rd)));
    }
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return passkey_render(
            &st,
            &headers,
            ctx.0.client_addr,
            &rd,
            Some("This form expired. Try again."),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let proof = proof_of(&f.response).unwrap_or_else(|| r#"{"clientData":""}"#.to_owned());
    // No password came first: failures count like wrong passwords, so a
    // stranger naming a user cannot lock that user out.
    let done = crate::regulation::as_first_factor(
        true,
        wa::verify_discoverable(&st, &st.users, &proof, ctx.0.client_addr, &passkey_flow(&f.csrf)),
    )
    .await;
    let (user, uv) = match done {
        Ok((user, _factor, uv)) => (user, uv),
        Err(wa::DiscoverableError::Verify(factors::VerifyError::Unavailable)) => return unavailable(&st),
        Err(e) => {
            crate::audit!("signin.passkey.failed", client = %ctx.0.client_addr, reason = ?e);
            return passkey_render(
                &st,
                &headers,
                ctx.0.client_addr,
                &rd,
                Some("That passkey was not accepted. Try again, or sign in another way."),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
    };
    super::login::end_prior_sign_in(&st, &headers).await;
    let level = if uv { 2 } else { 1 };
    let mut amr = Vec::new();
    crate::session::add_method(&mut amr, factors::amr_of(WEBAUTHN_TYPE));
    if uv {
        crate::session::add_method(&mut amr, "mfa");
    }
    crate::audit!("signin.passwordless.succeeded", user = %user.username, method = "passkey", level = level);
    let (_, cookie) = super::login::issue_session(&st, &user, level, amr, None);
    let mut res = see_other(&rd);
    res.headers_mut().append(header::SET_COOKIE, cookie);
    // A new session gets a new CSRF token too (the old one named this
    // ceremony's flow, and may have been seen before the sign-in).
    let token = csrf::new_token(&st.csrf_key);
    res.headers_mut()
        .append(header::SET_COOKIE, csrf::cookie(&st.config.session, &token));
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user: Some(user.username.clone().into()),
    });
    res
}
