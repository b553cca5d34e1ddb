//! The portal's passwordless sign-in (`users.passwordless = true`): the login
//! page asks for the username only, then offers the user's passwordless
//! factors (a TOTP code, a push with the number to pick); one verified
//! possession factor gives a level-1 session, and a `two_factor` page then
//! asks for the password ([`super::oob::password`]).
//!
//! The pages drive the same store transaction as the authentication API
//! ([`super::authn::begin_passwordless`]), so unknown users get the same
//! decoy factors and the same answers. The `stateToken` travels in a hidden
//! field of POSTed forms (never in a URL). "Sign in with a password instead"
//! is always offered, so users without a passwordless factor can sign in and
//! the offer says nothing about who exists.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use minijinja::context;
use minijinja::value::Value;
use serde::Deserialize;

use super::authn::{self, Loaded, Pending};
use super::{Ctx, csrf, csrf_token, enc, form_allowed, html, login, mfa, redirect, see_other};
use crate::enforce::{AccessInfo, ActiveSession};
use crate::factors::{self, Challenge, ChallengeContext, Factor, PushResult, TOTP_TYPE, VerifyError};
use crate::pages::render;
use crate::state::AppState;

/// The first page: the username only.
pub fn username_page(st: &AppState, csrf: &str, rd: &str, username: &str, error: Option<&str>) -> String {
    render(
        "passwordless_username.html",
        &st.config.portal.prefix,
        context! {
            title => crate::pages::shown_title(&st.config.portal.title),
            csrf,
            rd,
            rd_query => enc(rd),
            username,
            error,
            passkey => super::webauthn::passkey_href(st, rd),
        },
    )
}

fn factors_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    token: &str,
    factors: &[Factor],
    error: Option<&str>,
) -> String {
    let factors: Vec<Value> = factors
        .iter()
        .map(|f| context! { id => f.record.id.as_str(), totp => f.record.factor_type == TOTP_TYPE })
        .collect();
    render(
        "passwordless_factors.html",
        &st.config.portal.prefix,
        context! { csrf, rd, rd_query => enc(rd), state => token, factors, error },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct FactorForm {
    csrf: String,
    rd: String,
    state: String,
    factor: String,
    code: String,
    action: String,
    tx: String,
    number: String,
}

/// Begins a passwordless sign-in from the login form.
pub async fn start(
    st: &AppState,
    headers: &HeaderMap,
    username: &str,
    rd: &str,
    addr: std::net::IpAddr,
) -> Response {
    let (token, set) = csrf_token(st, headers);
    if username.trim().is_empty() {
        let page = username_page(
            st,
            &token,
            rd,
            "",
            Some(crate::i18n::t("passwordless.enter_username")),
        );
        return mfa::with_csrf(html(StatusCode::BAD_REQUEST, page), set);
    }
    match authn::admit_passwordless(st, username, addr) {
        Ok(_) => {}
        Err(authn::Refused::TooLong) => {
            let page = username_page(st, &token, rd, "", Some(crate::i18n::t("passwordless.unknown")));
            return mfa::with_csrf(html(StatusCode::UNAUTHORIZED, page), set);
        }
        Err(authn::Refused::Limited(r)) => {
            let page = username_page(
                st,
                &token,
                rd,
                crate::limits::shown_login(username),
                Some(crate::i18n::t("passwordless.too_many")),
            );
            let res = mfa::with_csrf(html(StatusCode::TOO_MANY_REQUESTS, page), set);
            return super::retry_after(res, st, r.reset);
        }
    }
    match authn::begin_passwordless(st, username).await {
        Ok(started) => {
            let page = factors_page(st, &token, rd, &started.token, &started.factors, None);
            mfa::with_csrf(html(StatusCode::OK, page), set)
        }
        Err(_) => mfa::unavailable_page(st),
    }
}

fn expired(st: &AppState, headers: &HeaderMap, rd: &str) -> Response {
    let (token, set) = csrf_token(st, headers);
    let page = username_page(st, &token, rd, "", Some(crate::i18n::t("passwordless.expired")));
    mfa::with_csrf(html(StatusCode::UNAUTHORIZED, page), set)
}

/// Signs the user in at level 1 after the possession factor, and sends the
/// browser on (to the password step when the target needs two factors).
async fn signed_in(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    loaded: &Loaded,
    method: &str,
    rd: &str,
) -> Response {
    if authn::finish(st, loaded).await.is_err() {
        return see_other(&format!("{}/login?rd={}", st.config.portal.prefix, enc(rd)));
    }
    login::end_prior_sign_in(st, headers).await;
    let (claims, cookie) = login::issue_session(st, &loaded.user, 1, vec![method.to_owned()], None);
    crate::audit!("signin.passwordless.succeeded", user = %loaded.user.username, method = method);
    let active = ActiveSession {
        claims: claims.into(),
        user: loaded.user.clone(),
    };
    let target = if mfa::satisfied(st, ctx, rd, &active) {
        rd.to_owned()
    } else {
        format!("{}/mfa?rd={}", st.config.portal.prefix, enc(rd))
    };
    let mut res = see_other(&target);
    res.headers_mut().append(header::SET_COOKIE, cookie);
    let token = csrf::new_token(&st.csrf_key);
    res.headers_mut()
        .append(header::SET_COOKIE, csrf::cookie(&st.config.session, &token));
    res.extensions_mut().insert(AccessInfo {
        decision: "portal",
        user: Some(loaded.user.username.clone().into()),
    });
    res
}

fn waiting_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    loaded: &Loaded,
    factor: &Factor,
    tid: &str,
    number: u8,
) -> String {
    let fields = [
        ("csrf", csrf),
        ("rd", rd),
        ("state", loaded.token.as_str()),
        ("factor", factor.record.id.as_str()),
        ("tx", tid),
        ("action", "check"),
    ];
    super::oob::push_page(
        st,
        crate::i18n::t("push.title"),
        "login/factor",
        &fields,
        tid,
        number,
        i64::try_from(st.config.factors.push.ttl.as_secs()).unwrap_or(60),
        None,
    )
}

/// `POST {prefix}/login/factor`: a code, "send a push", or "check again".
pub async fn factor_step(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<FactorForm>,
) -> Response {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        return expired(&st, &headers, &rd);
    }
    let Ok(loaded) = authn::load_token(&st, &f.state).await else {
        return expired(&st, &headers, &rd);
    };
    if !loaded.state.mode.is_passwordless() || !loaded.state.status.may_verify() {
        return expired(&st, &headers, &rd);
    }
    let Ok(factor) = authn::resolve_factor(&st, &loaded, &f.factor).await else {
        return expired(&st, &headers, &rd);
    };
    let (token, set) = csrf_token(&st, &headers);
    let again = |status: StatusCode, msg: &str, listed: &[Factor]| {
        let page = factors_page(&st, &token, &rd, &loaded.token, listed, Some(msg));
        mfa::with_csrf(html(status, page), set.clone())
    };
    let listed = match authn::listed_factors(&st, &loaded).await {
        Ok(l) => l,
        Err(_) => return mfa::unavailable_page(&st),
    };
    let addr = ctx.0.client_addr;
    if factor.record.factor_type == TOTP_TYPE {
        // Without a password step this code is the first factor: count its
        // failures like passwords, so strangers cannot lock the user out.
        let result = crate::regulation::as_first_factor(true, async {
            if loaded.state.mode.is_decoy() {
                authn::decoy_verify(&st, &loaded, addr).await
            } else {
                factors::verify_totp(&st, &loaded.user, &factor, &f.code, addr, false).await
            }
        })
        .await;
        return match result {
            Ok(()) => signed_in(&st, &ctx, &headers, &loaded, "otp", &rd).await,
            Err(VerifyError::Unavailable) => mfa::unavailable_page(&st),
            Err(e) => {
                let (status, msg) = mfa::verify_message(e);
                again(status, msg, &listed)
            }
        };
    }
    if f.action == "check"
        && let Some(p) =
            loaded.state.challenge.clone().filter(|p| {
                p.factor_id == factor.record.id && p.transaction_id.as_deref() == Some(f.tx.as_str())
            })
    {
        let result = match factors::push::status(&st, &loaded.user, &factor, &f.tx).await {
            Ok(r) => r.unwrap_or(PushResult::Timeout),
            Err(_) => return mfa::unavailable_page(&st),
        };
        let msg = match result {
            PushResult::Waiting => {
                let number = p.correct_answer.unwrap_or(0);
                let page = waiting_page(&st, &token, &rd, &loaded, &factor, &f.tx, number);
                return mfa::with_csrf(html(StatusCode::OK, page), set);
            }
            PushResult::Success => {
                match factors::push::consume(&st, &loaded.user, &factor, &f.tx, &loaded.flow()).await {
                    Ok(true) => {
                        let amr = factors::amr_of(&factor.record.factor_type);
                        return signed_in(&st, &ctx, &headers, &loaded, amr, &rd).await;
                    }
                    Ok(false) => crate::i18n::t("push.used"),
                    Err(e) => mfa::verify_message(e).1,
                }
            }
            PushResult::Rejected => crate::i18n::t("push.rejected"),
            PushResult::Timeout => crate::i18n::t("push.expired"),
        };
        let cleared = loaded.state.challenge_ended();
        let _ = authn::save(&st, &loaded, &cleared).await;
        return again(StatusCode::FORBIDDEN, msg, &listed);
    }
    // Send a push (a new one replaces any earlier one).
    if let Some(old) = loaded
        .state
        .challenge
        .as_ref()
        .and_then(|p| p.transaction_id.as_deref())
    {
        factors::push::abandon(&st, old).await;
    }
    let started = if loaded.state.mode.is_decoy() {
        factors::push::decoy(&st, &loaded.user.id, &factor.record.id, &loaded.flow()).await
    } else {
        let cctx = ChallengeContext {
            client_addr: addr,
            flow: loaded.flow(),
        };
        factors::challenge(&st, &loaded.user, &factor, &cctx).await
    };
    match started {
        Ok(Challenge::Push {
            transaction_id,
            expires_at,
            correct_answer,
        }) => {
            let state = loaded.state.challenged(Pending {
                factor_id: factor.record.id.clone(),
                transaction_id: Some(transaction_id.clone()),
                correct_answer: Some(correct_answer),
                expires_at,
            });
            if authn::save(&st, &loaded, &state).await.is_err() {
                return expired(&st, &headers, &rd);
            }
            let page = waiting_page(
                &st,
                &token,
                &rd,
                &loaded,
                &factor,
                &transaction_id,
                correct_answer,
            );
            mfa::with_csrf(html(StatusCode::OK, page), set)
        }
        Ok(Challenge::CodeSent { .. } | Challenge::WebAuthn { .. }) => {
            again(StatusCode::FORBIDDEN, crate::i18n::t("send.not_usable"), &listed)
        }
        Err(e) => {
            let (status, msg) = super::oob::challenge_message(&st, &e);
            again(status, &msg, &listed)
        }
    }
}
