//! The portal's pages for out-of-band factors: sending a code (sms, call,
//! email) and entering it, push with the number to pick (polled by
//! `push.js`, with a "Check again" button that works without JavaScript),
//! the password as the second step after a passwordless sign-in, and
//! enrolling a phone, an e-mail address or a push device.
//!
//! Like the other second-factor pages they work on the session cookie, check
//! CSRF on every POST and issue a new session id at each step.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use minijinja::context;
use minijinja::value::Value;
use serde::Deserialize;

use super::challenge::{self, answered_by_device, describe, password_page};
use super::{Ctx, csrf_token, enc, form_allowed, html, login, redirect, see_other};
use crate::enforce::ActiveSession;
use crate::error::{ApiError, ErrorCode};
use crate::factors::{
    self, Address, Challenge, ChallengeContext, ChallengeError, Factor, FactorKind, FactorType, PushResult,
};
use crate::i18n::{t, tf};
use crate::pages::render;
use crate::secret::Secret;
use crate::state::AppState;

/// The page to type a sent code into.
fn code_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    fresh: bool,
    f: &Factor,
    enrolling: bool,
    error: Option<&str>,
) -> String {
    render(
        "code.html",
        &st.config.portal.prefix,
        context! {
            csrf,
            rd,
            fresh,
            factor => f.record.id.as_str(),
            enrolling,
            what => describe(f),
            error,
        },
    )
}

/// The page showing the number to pick on the device, polled by push.js.
/// `fields` are the hidden fields of its "Check again" form.
#[allow(clippy::too_many_arguments)]
pub fn push_page(
    st: &AppState,
    title: &str,
    check_action: &str,
    fields: &[(&str, &str)],
    tid: &str,
    number: u8,
    ttl_secs: i64,
    error: Option<&str>,
) -> String {
    let fields: Vec<Value> = fields
        .iter()
        .map(|(name, value)| context! { name => *name, value => *value })
        .collect();
    render(
        "push_wait.html",
        &st.config.portal.prefix,
        context! {
            title,
            check_action,
            fields,
            tx => tid,
            number,
            ttl => ttl_secs + 5,
            error,
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OobForm {
    csrf: String,
    rd: String,
    factor: String,
    fresh: Option<String>,
    tx: String,
    number: String,
    password: String,
    #[serde(rename = "type")]
    factor_type: String,
    address: String,
}

struct Step {
    st: Arc<AppState>,
    s: ActiveSession,
    rd: String,
    fresh: bool,
}

/// Common checks of a challenge POST: session, CSRF, not a passwordless
/// session (whose second step is the password).
async fn step(st: Arc<AppState>, ctx: &Ctx, headers: &HeaderMap, f: &OobForm) -> Result<Step, Response> {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = challenge::session(&st, headers) else {
        return Err(challenge::to_login(&st, &rd));
    };
    let fresh = f.fresh.is_some();
    if !form_allowed(&st, ctx, headers, &f.csrf) || super::common::needs_password(&s.claims.amr) {
        let q = if fresh { "fresh=1&" } else { "" };
        return Err(see_other(&format!(
            "{}/mfa?{q}rd={}",
            st.config.portal.prefix,
            enc(&rd)
        )));
    }
    Ok(Step { st, s, rd, fresh })
}

/// [`step`], then the form's factor: one of the user's active factors of an
/// enabled type.
async fn factor_step(
    st: Arc<AppState>,
    ctx: &Ctx,
    headers: &HeaderMap,
    f: &OobForm,
) -> Result<(Step, Factor), Response> {
    let p = step(st, ctx, headers, f).await?;
    match factors::find(&p.st, &p.s.user, &f.factor).await {
        Ok(Some(x)) if x.is_active() && factors::type_enabled(&p.st, &x.record.factor_type) => Ok((p, x)),
        Ok(_) => Err(see_other(&format!("{}/mfa", p.st.config.portal.prefix))),
        Err(_) => Err(challenge::unavailable_page(&p.st)),
    }
}

fn ctx_of(ctx: &Ctx, s: &ActiveSession) -> ChallengeContext {
    ChallengeContext {
        client_addr: ctx.0.client_addr,
        flow: session_flow(s),
    }
}

/// The flow of the portal's pages: codes sent in a session are usable in it only.
pub(crate) fn session_flow(s: &ActiveSession) -> factors::Flow {
    factors::Flow::Session(s.claims.sin.clone())
}

/// What to tell the user when a message could not be sent.
pub fn challenge_message(st: &AppState, e: &ChallengeError) -> (StatusCode, String) {
    let now = st.clock.now();
    match e {
        ChallengeError::TooSoon(at) => (
            StatusCode::TOO_MANY_REQUESTS,
            tf("send.too_soon", &[("n", &(at - now).max(1))]),
        ),
        ChallengeError::RateLimited(at) => (
            StatusCode::TOO_MANY_REQUESTS,
            tf(
                "send.rate_limited",
                &[("wait", &crate::i18n::wait_minutes(now, *at))],
            ),
        ),
        ChallengeError::Delivery => (StatusCode::BAD_GATEWAY, t("send.delivery").into()),
        ChallengeError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, t("common.unavailable").into()),
        ChallengeError::NotActive | ChallengeError::NotChallenged => {
            (StatusCode::FORBIDDEN, t("send.not_usable").into())
        }
    }
}

/// `POST {prefix}/mfa/send`: send a code, then ask for it.
pub async fn send(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    let codes = &st.config.factors;
    if !(codes.sms.enabled || codes.call.enabled || codes.email.enabled) {
        // No code factor: 404 before anything else, like a disabled push.
        return ApiError::new(ErrorCode::E0000007).into_response();
    }
    let (p, factor) = match factor_step(st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match factors::challenge(&p.st, &p.s.user, &factor, &ctx_of(&ctx, &p.s)).await {
        Ok(_) => code_response(
            &p.st,
            &headers,
            &p.rd,
            p.fresh,
            &factor,
            false,
            StatusCode::OK,
            None,
        ),
        Err(e @ ChallengeError::TooSoon(_)) => {
            // A code is on its way already: let the user type it.
            let (status, msg) = challenge_message(&p.st, &e);
            code_response(
                &p.st,
                &headers,
                &p.rd,
                p.fresh,
                &factor,
                false,
                status,
                Some(&msg),
            )
        }
        Err(e) => {
            let (status, msg) = challenge_message(&p.st, &e);
            challenge::render_challenge(&p.st, &headers, &p.s, &p.rd, p.fresh, Some(&msg), status).await
        }
    }
}

/// Re-renders the code page after a wrong code for a code factor.
#[allow(clippy::too_many_arguments)]
pub async fn code_retry(
    st: &AppState,
    headers: &HeaderMap,
    rd: &str,
    fresh: bool,
    factor: &Factor,
    enrolling: bool,
    status: StatusCode,
    msg: &str,
) -> Response {
    code_response(st, headers, rd, fresh, factor, enrolling, status, Some(msg))
}

/// The code page as a response, with the CSRF cookie when it is new.
#[allow(clippy::too_many_arguments)]
fn code_response(
    st: &AppState,
    headers: &HeaderMap,
    rd: &str,
    fresh: bool,
    factor: &Factor,
    enrolling: bool,
    status: StatusCode,
    msg: Option<&str>,
) -> Response {
    let (token, set) = csrf_token(st, headers);
    challenge::with_csrf(
        html(status, code_page(st, &token, rd, fresh, factor, enrolling, msg)),
        set,
    )
}

fn push_ttl(st: &AppState) -> i64 {
    i64::try_from(st.config.factors.push.ttl.as_secs()).unwrap_or(60)
}

/// The page waiting for the push `tid` with the number to pick.
fn push_wait(p: &Step, headers: &HeaderMap, factor: &Factor, tid: &str, number: u8) -> Response {
    let (token, set) = csrf_token(&p.st, headers);
    let mut fields = vec![("csrf", token.as_str()), ("rd", p.rd.as_str())];
    if p.fresh {
        fields.push(("fresh", "1"));
    }
    fields.extend([("factor", factor.record.id.as_str()), ("tx", tid)]);
    challenge::with_csrf(
        html(
            StatusCode::OK,
            push_page(
                &p.st,
                t("push.title"),
                "mfa/push/check",
                &fields,
                tid,
                number,
                push_ttl(&p.st),
                None,
            ),
        ),
        set,
    )
}

/// `POST {prefix}/mfa/push`: send a push and show the number.
pub async fn push(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    if let Some(r) = super::push::disabled(&st) {
        return r;
    }
    let (p, factor) = match factor_step(st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match factors::challenge(&p.st, &p.s.user, &factor, &ctx_of(&ctx, &p.s)).await {
        Ok(Challenge::Push {
            transaction_id,
            correct_answer,
            ..
        }) => push_wait(&p, &headers, &factor, &transaction_id, correct_answer),
        Ok(Challenge::CodeSent { .. } | Challenge::WebAuthn { .. }) => {
            see_other(&format!("{}/mfa", p.st.config.portal.prefix))
        }
        Err(e) => {
            let (status, msg) = challenge_message(&p.st, &e);
            challenge::render_challenge(&p.st, &headers, &p.s, &p.rd, p.fresh, Some(&msg), status).await
        }
    }
}

/// `POST {prefix}/mfa/push/check`: the push's answer (the script submits
/// this when it changes; without JavaScript, the "Check again" button).
pub async fn push_check(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    if let Some(r) = super::push::disabled(&st) {
        return r;
    }
    let (p, factor) = match factor_step(st, &ctx, &headers, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = match factors::push_status(&p.st, &p.s.user, &factor, &f.tx).await {
        Ok(r) => r.unwrap_or(PushResult::Timeout),
        Err(_) => return challenge::unavailable_page(&p.st),
    };
    let msg = match result {
        PushResult::Waiting => {
            return push_wait(&p, &headers, &factor, &f.tx, f.number.parse().unwrap_or(0));
        }
        PushResult::Success => {
            match factors::push::consume(&p.st, &p.s.user, &factor, &f.tx, &session_flow(&p.s)).await {
                Ok(true) => {
                    let amr = factors::amr_of(&factor.record.factor_type);
                    return challenge::upgraded(&p.st, &p.s, amr, &p.rd).await;
                }
                Ok(false) => t("push.used"),
                Err(e) => challenge::verify_message(e).1,
            }
        }
        PushResult::Rejected => t("push.rejected"),
        PushResult::Timeout => t("push.expired"),
    };
    challenge::render_challenge(
        &p.st,
        &headers,
        &p.s,
        &p.rd,
        p.fresh,
        Some(msg),
        StatusCode::FORBIDDEN,
    )
    .await
}

/// `POST {prefix}/mfa/password`: the password after a passwordless sign-in.
pub async fn password(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = challenge::session(&st, &headers) else {
        return challenge::to_login(&st, &rd);
    };
    if !super::common::needs_password(&s.claims.amr) {
        return see_other(&format!("{}/mfa?rd={}", st.config.portal.prefix, enc(&rd)));
    }
    let (token, set) = csrf_token(&st, &headers);
    if !form_allowed(&st, &ctx, &headers, &f.csrf) {
        let page = password_page(&st, &token, &rd, &s.user.username, Some(t("common.form_expired")));
        return challenge::with_csrf(html(StatusCode::FORBIDDEN, page), set);
    }
    match login::check_password(&st, &s.user.username, Secret::new(f.password), ctx.0.client_addr).await {
        Ok(user) if user.id == s.user.id => challenge::upgraded(&st, &s, "pwd", &rd).await,
        Ok(_) | Err(login::LoginError::Failed) => {
            let page = password_page(&st, &token, &rd, &s.user.username, Some(t("password.incorrect")));
            challenge::with_csrf(html(StatusCode::UNAUTHORIZED, page), set)
        }
        Err(login::LoginError::LockedRevealed) => {
            let page = password_page(&st, &token, &rd, &s.user.username, Some(t("common.locked")));
            challenge::with_csrf(html(StatusCode::FORBIDDEN, page), set)
        }
        Err(login::LoginError::FactorLocked(until)) => {
            let wait = crate::i18n::wait_minutes(st.clock.now(), until);
            let message = tf("login.factor_locked", &[("wait", &wait)]);
            let page = password_page(&st, &token, &rd, &s.user.username, Some(&message));
            challenge::with_csrf(html(StatusCode::FORBIDDEN, page), set)
        }
        Err(_) => challenge::unavailable_page(&st),
    }
}

// ---- enrollment -------------------------------------------------------------

/// The enrollment chooser: one link per enabled type.
pub fn chooser_page(st: &AppState, rd: &str) -> String {
    let types: Vec<Value> = FactorType::enabled(&st.config.factors)
        .map(|t| context! { query => t.kind().short_name(), label => super::words::enroll_label(t.kind()) })
        .collect();
    render(
        "enroll_chooser.html",
        &st.config.portal.prefix,
        context! { types, rd_query => enc(rd) },
    )
}

/// The form asking for a phone number or an e-mail address.
pub fn address_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    factor_type: &str,
    value: &str,
    error: Option<&str>,
) -> String {
    let (kind, address) = address_kind(factor_type);
    let (title, label, input_type) = (
        super::words::add_label(kind),
        super::words::field_label(address),
        address.input_type(),
    );
    render(
        "enroll_address.html",
        &st.config.portal.prefix,
        context! { title, label, input_type, kind => factor_type, csrf, rd, value, error },
    )
}

/// The kind of an address-enrolled `factor_type` (from a form: an unknown one
/// is shown as the text-message form, and refused when enrolled).
fn address_kind(factor_type: &str) -> (&'static dyn FactorKind, Address) {
    factors::kind_of(factor_type)
        .and_then(|k| Some((k, k.address()?)))
        .unwrap_or((FactorType::Sms.kind(), Address::Phone))
}

/// The pairing page of a push device: the activation token as text and QR.
fn pairing_page(
    st: &AppState,
    csrf: &str,
    rd: &str,
    factor_id: &str,
    token: Option<&str>,
    uri: &str,
    error: Option<&str>,
) -> String {
    render(
        "enroll_pairing.html",
        &st.config.portal.prefix,
        context! {
            csrf,
            rd,
            rd_query => enc(rd),
            factor => factor_id,
            token,
            uri,
            qr => token.map(|_| factors::totp::qr_data_uri(uri)),
            ttl => factors::push::ACTIVATION_TTL,
            error,
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct EnrollQuery {
    pub rd: Option<String>,
    #[serde(rename = "type")]
    pub factor_type: Option<String>,
}

/// `GET {prefix}/enroll?type=sms|call|email|push` (after `mfa::enroll`
/// decided the session may enroll): the type's first page.
pub async fn enroll_page(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    s: &ActiveSession,
    rd: &str,
    factor_type: &str,
) -> Response {
    let (token, set) = csrf_token(st, headers);
    if answered_by_device(factor_type) {
        return match factors::enroll(
            st,
            &s.user,
            factor_type,
            "OKTA",
            &serde_json::json!({}),
            &session_flow(s),
        )
        .await
        {
            Ok(factors::Enrolled::Push {
                factor,
                activation_token,
                ..
            }) => {
                let uri = super::push::pairing_uri(st, &super::push::base_url(st, ctx), &activation_token);
                let page = pairing_page(st, &token, rd, &factor.id, Some(&activation_token), &uri, None);
                challenge::with_csrf(html(StatusCode::OK, page), set)
            }
            Ok(_) | Err(_) => challenge::unavailable_page(st),
        };
    }
    let value = address_kind(factor_type).1.of_user(&s.user).unwrap_or_default();
    challenge::with_csrf(
        html(
            StatusCode::OK,
            address_page(st, &token, rd, factor_type, value, None),
        ),
        set,
    )
}

/// Guards an enrollment POST: session, CSRF, and may this session enroll.
async fn enroll_step(
    st: Arc<AppState>,
    ctx: &Ctx,
    headers: &HeaderMap,
    f: &OobForm,
) -> Result<Step, Response> {
    let rd = redirect::safe_target(Some(&f.rd), &ctx.0.host, &st.config.portal.allowed_redirect_hosts);
    let Some(s) = challenge::session(&st, headers) else {
        return Err(challenge::to_login(&st, &rd));
    };
    let back = format!("{}/enroll?rd={}", st.config.portal.prefix, enc(&rd));
    if !form_allowed(&st, ctx, headers, &f.csrf) {
        return Err(see_other(&back));
    }
    match challenge::may_enroll(&st, &s).await {
        Ok(true) => Ok(Step {
            st,
            s,
            rd,
            fresh: false,
        }),
        Ok(false) => Err(see_other(&format!(
            "{}/mfa?fresh=1&rd={}",
            st.config.portal.prefix,
            enc(&back)
        ))),
        Err(()) => Err(challenge::unavailable_page(&st)),
    }
}

/// The user's factor `id` when `fits` it, else back to the enrollment chooser.
async fn enrolling_factor(p: &Step, id: &str, fits: impl Fn(&Factor) -> bool) -> Result<Factor, Response> {
    match factors::find(&p.st, &p.s.user, id).await {
        Ok(Some(x)) if fits(&x) => Ok(x),
        Ok(_) => Err(see_other(&format!(
            "{}/enroll?rd={}",
            p.st.config.portal.prefix,
            enc(&p.rd)
        ))),
        Err(_) => Err(challenge::unavailable_page(&p.st)),
    }
}

/// `POST {prefix}/enroll/start`: enroll a phone or an e-mail address and
/// send its activation code.
pub async fn enroll_start(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    let p = match enroll_step(st, &ctx, &headers, &f).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (token, set) = csrf_token(&p.st, &headers);
    let mut profile = serde_json::Map::new();
    profile.insert(
        address_kind(&f.factor_type).1.profile_key().into(),
        f.address.clone().into(),
    );
    let profile = serde_json::Value::Object(profile);
    let rerender = |status: StatusCode, msg: &str| {
        challenge::with_csrf(
            html(
                status,
                address_page(&p.st, &token, &p.rd, &f.factor_type, &f.address, Some(msg)),
            ),
            set.clone(),
        )
    };
    match factors::enroll(
        &p.st,
        &p.s.user,
        &f.factor_type,
        "OKTA",
        &profile,
        &session_flow(&p.s),
    )
    .await
    {
        Ok(e) => {
            let factor = Factor {
                record: e.factor().clone(),
                from_config: false,
            };
            challenge::with_csrf(
                html(
                    StatusCode::OK,
                    code_page(&p.st, &token, &p.rd, false, &factor, true, None),
                ),
                set,
            )
        }
        Err(factors::EnrollError::Invalid(msg)) => rerender(StatusCode::BAD_REQUEST, &msg),
        Err(factors::EnrollError::Limited(e)) => {
            let (status, msg) = challenge_message(&p.st, &e);
            rerender(status, &msg)
        }
        Err(factors::EnrollError::NotSupported) => {
            rerender(StatusCode::BAD_REQUEST, t("enroll.not_available"))
        }
        Err(factors::EnrollError::Delivery) => rerender(StatusCode::BAD_GATEWAY, t("enroll.delivery")),
        Err(_) => challenge::unavailable_page(&p.st),
    }
}

/// `POST {prefix}/enroll/resend`: a new activation code.
pub async fn enroll_resend(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    let p = match enroll_step(st, &ctx, &headers, &f).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let factor = match enrolling_factor(&p, &f.factor, |x| {
        !x.is_active() && factors::otp::is_code_type(&x.record.factor_type)
    })
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let msg = match factors::challenge(&p.st, &p.s.user, &factor, &ctx_of(&ctx, &p.s)).await {
        Ok(_) => None,
        Err(e) => Some(challenge_message(&p.st, &e)),
    };
    let (status, msg) = match &msg {
        Some((status, m)) => (*status, Some(m.as_str())),
        None => (StatusCode::OK, None),
    };
    code_response(&p.st, &headers, &p.rd, false, &factor, true, status, msg)
}

/// `POST {prefix}/enroll/push/check`: has the device paired?
pub async fn enroll_push_check(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    headers: HeaderMap,
    Form(f): Form<OobForm>,
) -> Response {
    if let Some(r) = super::push::disabled(&st) {
        return r;
    }
    let p = match enroll_step(st, &ctx, &headers, &f).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let factor = match enrolling_factor(&p, &f.factor, |x| answered_by_device(&x.record.factor_type)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !factor.is_active() {
        let (token, set) = csrf_token(&p.st, &headers);
        let page = pairing_page(
            &p.st,
            &token,
            &p.rd,
            &factor.record.id,
            None,
            "",
            Some(t("pairing.not_yet")),
        );
        return challenge::with_csrf(html(StatusCode::OK, page), set);
    }
    challenge::enrolled(&p.st, &p.s, &p.rd, factors::amr_of(&factor.record.factor_type)).await
}
