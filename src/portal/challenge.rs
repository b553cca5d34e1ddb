//! The challenge page and what every second-factor page shares: the
//! session it works on, the way back to the sign-in page, the upgrade to
//! level 2, the messages for a failed verification, and the challenge page
//! itself with its out-of-band buttons and the passwordless password step.
//!
//! It sits below the `mfa` pages (TOTP, recovery codes, enrollment, the
//! factors page) and the `oob` pages (codes sent, push, addresses): both
//! import it, and `oob` imports nothing from `mfa`, so the portal's modules
//! form a DAG.

use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use minijinja::context;
use minijinja::value::Value;

use super::common::RECENT_MFA_SECS;
use super::{csrf_token, enc, html, login, see_other};
use crate::enforce::{ActiveSession, SessionState};
use crate::factors::{self, Factor, FactorType, TOTP_TYPE, VerifyError};
use crate::i18n::{t, tf};
use crate::pages::render;
use crate::state::AppState;

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
        VerifyError::Invalid => (StatusCode::FORBIDDEN, t("verify.invalid")),
        VerifyError::Replayed => (StatusCode::FORBIDDEN, t("verify.replayed")),
        VerifyError::LockedRevealed => (StatusCode::FORBIDDEN, t("common.locked")),
        VerifyError::NotActive => (StatusCode::FORBIDDEN, t("verify.not_active")),
        VerifyError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, t("common.unavailable")),
    }
}

/// How a factor is named on the pages.
pub fn describe(f: &Factor) -> String {
    super::words::describe(f)
}

/// True for a type enrolled and challenged out of band on these pages: a
/// code sent to an address, or a device that answers.
pub fn out_of_band(factor_type: &str) -> bool {
    factors::kind_of(factor_type).is_some_and(|k| k.address().is_some() || k.answered_by_device())
}

/// True for a type verified by a WebAuthn ceremony (security keys).
fn ceremony(factor_type: &str) -> bool {
    factors::kind_of(factor_type).is_some_and(|k| k.ceremony())
}

/// True for a type whose verification is a device's answer (push).
pub(super) fn answered_by_device(factor_type: &str) -> bool {
    factors::kind_of(factor_type).is_some_and(|k| k.answered_by_device())
}

/// The challenge page's buttons for out-of-band factors: each `{id, action,
/// button, description}` (see `challenge.html`).
pub fn challenge_buttons(factors: &[Factor]) -> Vec<Value> {
    factors
        .iter()
        .filter(|f| out_of_band(&f.record.factor_type) || ceremony(&f.record.factor_type))
        .map(|f| {
            // The form posts to `{prefix}/mfa/<action>`: the push route is
            // named after its type, codes of every type go to `send`.
            let (action, button) = if ceremony(&f.record.factor_type) {
                ("webauthn", t("challenge.use_key"))
            } else if answered_by_device(&f.record.factor_type) {
                (FactorType::Push.as_str(), t("challenge.send_push"))
            } else {
                ("send", t("enroll.send_code"))
            };
            context! {
                id => f.record.id.as_str(),
                action,
                button,
                description => describe(f),
            }
        })
        .collect()
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
    let oob = challenge_buttons(all);
    render(
        "challenge.html",
        &st.config.portal.prefix,
        context! { csrf, rd, fresh, totp, oob, recovery, error },
    )
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
        let page = password_page(st, &token, rd, &s.user.username, error);
        return with_csrf(html(status, page), set);
    }
    let all = match factors::list(st, &s.user).await {
        Ok(f) => f,
        Err(_) => return unavailable_page(st),
    };
    // The password is proven by now: wrong codes that locked the user are
    // worth a wait, not the words of a wrong code.
    let wait = match st.regulator.factor_locked(&s.user.id).await {
        Ok(Some(until)) => Some(tf(
            "login.factor_locked",
            &[("wait", &crate::i18n::wait_minutes(st.clock.now(), until))],
        )),
        _ => None,
    };
    let error = wait.as_deref().or(error);
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
                t("challenge.none_title"),
                t("challenge.none"),
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
            t("common.unavailable_title"),
            t("common.unavailable"),
        ),
    )
}

/// The password page: the second step of a passwordless sign-in.
pub fn password_page(st: &AppState, csrf: &str, rd: &str, username: &str, error: Option<&str>) -> String {
    render(
        "password.html",
        &st.config.portal.prefix,
        context! { csrf, rd, username, error },
    )
}

pub(super) fn has_recent_mfa(st: &AppState, s: &ActiveSession) -> bool {
    s.claims.lvl >= 2
        && s.claims
            .mfa
            .is_some_and(|t| st.clock.now() - t <= RECENT_MFA_SECS)
}

/// May this session enroll a factor now? First enrollment (no active factor)
/// with `first_login`, or any time with a recent second factor.
///
/// Never for a session the store says has ended (another replica's sign-out
/// or an administrator's reset a moment ago): a factor would outlive it.
pub(super) async fn may_enroll(st: &AppState, s: &ActiveSession) -> Result<bool, ()> {
    let allowed = has_recent_mfa(st, s) || {
        let all = factors::list(st, &s.user).await.map_err(|_| ())?;
        factors::usable(st, &all).is_empty()
            && st.config.users.enrollment == crate::config::Enrollment::FirstLogin
    };
    // Last: it reads the store's revocation log.
    Ok(allowed && st.still_current(&s.claims).await.map_err(|_| ())?)
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

/// The codes as a `text/plain` `data:` URL, for the download link (it works
/// without JavaScript; the page's script offers the same through a Blob).
fn codes_data_url(codes: &[String]) -> String {
    let text: String = codes.iter().map(|c| format!("{c}\r\n")).collect();
    format!("data:text/plain;charset=utf-8,{}", enc(&text))
}

pub(super) fn recovery_codes_page(st: &AppState, codes: &[String], rd: &str) -> String {
    render(
        "recovery_codes.html",
        &st.config.portal.prefix,
        context! { codes => codes.to_vec(), next => rd, download => codes_data_url(codes) },
    )
}
