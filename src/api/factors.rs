//! The Factors API, shaped like Okta's, in one implementation for two
//! callers: administrators (`/api/v1/users/{id}/factors...` on the admin
//! listener) and signed-in users managing their own factors
//! (`{prefix}/api/v1/users/me/factors...`). The routes of both are in
//! their own rooms; this is what they call.
//!
//! Each operation takes a [`Scope`]: whose factors, the base URL their links
//! hang from, and who acts (for the audit log). Factor ids in paths are
//! always looked up among that user's factors, so another user's id answers
//! 404 like an unknown one. Everything type-specific goes through the
//! factor facade ([`crate::factors`]).
//!
//! Recovery codes are not Factor objects (Okta clients reject unknown
//! factor types); administrators manage them at
//! `/api/v1/users/{id}/recovery_codes`.

use std::net::IpAddr;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Caller, json, json_no_store, link, unavailable, validation, verify_error};
use crate::audit;
use crate::clock::{UnixTime, rfc3339};
use crate::error::{ApiError, ErrorCode};
use crate::factors::{self, Challenge, EnrollError, Enrolled, Factor, FactorType, kind_of};
use crate::state::Handles;
use crate::store::FactorStatus;
use crate::users::User;

/// A factor operation (one per route, for both callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorOp {
    List,
    Catalog,
    Enroll,
    Get,
    Qr,
    Activate,
    Verify,
    Transaction,
    /// Cancel a push transaction (`_links.cancel`).
    Cancel,
    Resend,
    Delete,
}

/// Whose factors an operation is about, and who acts.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub user: User,
    /// Absolute URL of the user in this API (`.../api/v1/users/{id}` or
    /// `.../api/v1/users/me`); factor links hang from it.
    pub base: String,
    /// Who acts, for the audit log (`admin`, `self`).
    pub actor: &'static str,
    /// The admin token's index, when an administrator acts.
    pub token: Option<usize>,
    pub client: IpAddr,
    /// The flow codes sent here belong to (admin, or the user's session).
    pub flow: factors::Flow,
}

impl Scope {
    fn factor_url(&self, id: &str) -> String {
        format!("{}/factors/{id}", self.base)
    }
}

/// The Okta factor object as the authn API embeds it (its `verify` link
/// under the portal prefix).
pub(crate) fn okta_factor(st: &Handles, f: &Factor) -> Value {
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

/// The Okta Factor object: the authn API's shape ([`okta_factor`]) with this
/// API's links.
pub(crate) fn factor_json(st: &Handles, scope: &Scope, f: &Factor) -> Value {
    let mut v = okta_factor(st, f);
    let r = &f.record;
    let me = scope.factor_url(&r.id);
    let mut links = json!({ "self": link(me.clone(), &["GET", "DELETE"]) });
    let kind = kind_of(&r.factor_type);
    match r.status {
        FactorStatus::PendingActivation => {
            if kind.is_none_or(|k| k.activated_by_code()) {
                links["activate"] = link(format!("{me}/lifecycle/activate"), &["POST"]);
            }
            if kind.is_some_and(|k| k.shows_secret()) {
                links["qrcode"] = json!({ "href": format!("{me}/qr"), "type": "image/svg+xml" });
            }
            if kind.is_some_and(|k| k.sends_code()) {
                links["resend"] = link(format!("{me}/resend"), &["POST"]);
            }
        }
        FactorStatus::Active => {
            links["verify"] = link(format!("{me}/verify"), &["POST"]);
        }
    }
    v["_links"] = links;
    if r.created <= 0 {
        // Provisioned by the users file: no enrollment time to show.
        if let Some(o) = v.as_object_mut() {
            o.remove("created");
            o.remove("lastUpdated");
        }
    }
    v
}

fn not_found() -> Response {
    ApiError::new(ErrorCode::E0000007).into_response()
}

/// The factor `id` of the scope's user, or 404 (also for another user's id).
async fn owned(st: &Handles, scope: &Scope, id: &str) -> Result<Factor, Response> {
    match factors::find(st, &scope.user, id).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(not_found()),
        Err(e) => Err(unavailable(e)),
    }
}

fn pass_code(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => match m.get("passCode") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::new(ErrorCode::E0000001).cause("passCode: must be a string")),
        },
        _ => Err(ApiError::new(ErrorCode::E0000003)),
    }
}

/// The answer of a WebAuthn ceremony in a JSON body (`clientData` with
/// `attestation`, or with `authenticatorData` and `signatureData`), as the
/// proof text the factor checks; `None` when the body carries none.
fn ceremony_proof(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(factors::webauthn::proof_from_body(&v)),
        _ => Err(ApiError::new(ErrorCode::E0000003)),
    }
}

// ---- the operations ----------------------------------------------------------

/// `GET .../factors`: every factor of the user.
pub(crate) async fn list(st: &Handles, scope: &Scope) -> Response {
    match factors::list(st, &scope.user).await {
        Ok(all) => {
            let out: Vec<Value> = all.iter().map(|f| factor_json(st, scope, f)).collect();
            audit!("factors.listed", user = %scope.user.username, actor = %scope.actor, token = scope.token);
            json(StatusCode::OK, &Value::Array(out))
        }
        Err(e) => unavailable(e),
    }
}

/// The `(factorType, provider)` pairs that can be enrolled now.
fn enrollable(st: &Handles) -> Vec<(&'static str, &'static str)> {
    FactorType::enabled(&st.config.factors)
        .flat_map(|t| t.kind().providers().iter().map(move |p| (t.as_str(), *p)))
        .collect()
}

/// `GET .../factors/catalog`: the factor types the user can enroll.
pub(crate) async fn catalog(st: &Handles, scope: &Scope) -> Response {
    let mine = match factors::list(st, &scope.user).await {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    let out: Vec<Value> = enrollable(st)
        .into_iter()
        .map(|(t, p)| {
            let status = mine
                .iter()
                .find(|f| f.record.factor_type == t && f.record.provider == p)
                .map_or("NOT_SETUP", |f| f.record.status.as_str());
            json!({
                "factorType": t,
                "provider": p,
                "vendorName": p,
                "status": status,
                "enrollment": "OPTIONAL",
                "_links": { "enroll": link(format!("{}/factors", scope.base), &["POST"]) },
            })
        })
        .collect();
    json(StatusCode::OK, &Value::Array(out))
}

/// Query of an enrollment.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct EnrollQuery {
    activate: Option<bool>,
}

impl EnrollQuery {
    /// The `activate` parameter, if given.
    pub fn activate(&self) -> Option<bool> {
        self.activate
    }
}

#[derive(Debug, Deserialize)]
struct EnrollBody {
    #[serde(rename = "factorType")]
    factor_type: Option<String>,
    provider: Option<String>,
    profile: Option<Value>,
}

/// `POST .../factors?activate=false`: enrolls a factor (`PENDING_ACTIVATION`).
pub(crate) async fn enroll(st: &Handles, scope: &Scope, activate: Option<bool>, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<EnrollBody>(body) else {
        return ApiError::new(ErrorCode::E0000003).into_response();
    };
    if activate == Some(true) {
        return validation(
            "activate: factors are activated by proving possession (lifecycle/activate with a passCode)",
        );
    }
    let Some(factor_type) = req.factor_type.filter(|t| !t.is_empty()) else {
        return validation("factorType: The field cannot be left blank");
    };
    let provider = req.provider.unwrap_or_else(|| {
        kind_of(&factor_type)
            .and_then(|k| k.providers().first().copied())
            .unwrap_or("OKTA")
            .to_owned()
    });
    if !enrollable(st).contains(&(factor_type.as_str(), provider.as_str())) {
        return validation(format!(
            "factorType: {factor_type} with provider {provider} is not supported or not enabled"
        ));
    }
    let profile = req.profile.unwrap_or_else(|| json!({}));
    let enrolled =
        match factors::enroll(st, &scope.user, &factor_type, &provider, &profile, &scope.flow).await {
            Ok(e) => e,
            Err(EnrollError::NotSupported) => {
                return validation(format!(
                    "factorType: {factor_type} is not supported or not enabled"
                ));
            }
            Err(EnrollError::Invalid(cause)) => return validation(cause),
            Err(EnrollError::Limited(e)) => {
                return super::challenge_error(st, Caller::Factors, &factor_type, e);
            }
            Err(EnrollError::Delivery) => {
                return ApiError::new(ErrorCode::E0000009)
                    .cause("the activation message could not be delivered; try again later")
                    .into_response();
            }
            Err(e) => return unavailable(e),
        };
    let factor = Factor {
        record: enrolled.factor().clone(),
        from_config: false,
    };
    audit!("factor.enrolled.api", user = %scope.user.username, factor_type = %factor_type, factor_id = %factor.record.id, actor = %scope.actor, token = scope.token);
    let mut v = factor_json(st, scope, &factor);
    let qr_href = format!("{}/qr", scope.factor_url(&factor.record.id));
    match &enrolled {
        Enrolled::Totp(t) => {
            let cfg = &st.config.factors.totp;
            v["_embedded"] = json!({
                "activation": {
                    "timeStep": cfg.period,
                    "sharedSecret": factors::totp::base32(t.secret.expose()),
                    "encoding": "base32",
                    "keyLength": t.secret.len(),
                    "algorithm": factors::totp::algorithm_name(cfg.algorithm),
                    "digits": cfg.digits,
                    "_links": { "qrcode": { "href": qr_href, "type": "image/svg+xml" } },
                }
            });
        }
        Enrolled::Code { expires_at, .. } => {
            v["_embedded"] = json!({ "activation": { "expiresAt": rfc3339(*expires_at) } });
        }
        Enrolled::WebAuthn { options, .. } => {
            v["_embedded"] = json!({ "activation": options });
        }
        Enrolled::Push {
            activation_token,
            expires_at,
            ..
        } => {
            v["_embedded"] = json!({
                "activation": {
                    "expiresAt": rfc3339(*expires_at),
                    "activationToken": activation_token,
                    "factorResult": "WAITING",
                    "_links": {
                        "qrcode": { "href": factors::totp::qr_data_uri(activation_token), "type": "image/svg+xml" },
                    },
                }
            });
        }
    }
    json_no_store(StatusCode::OK, &v)
}

/// `GET .../factors/{fid}`.
pub(crate) async fn get(st: &Handles, scope: &Scope, id: &str) -> Response {
    match owned(st, scope, id).await {
        Ok(f) => json(StatusCode::OK, &factor_json(st, scope, &f)),
        Err(r) => r,
    }
}

/// `GET .../factors/{fid}/qr`: the TOTP key URI as an SVG QR code, only
/// while the factor is `PENDING_ACTIVATION` (the secret is opened from its
/// sealed form; after activation it is never shown again).
pub(crate) async fn qr(st: &Handles, scope: &Scope, id: &str) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !kind_of(&f.record.factor_type).is_some_and(|k| k.shows_secret())
        || f.record.status != FactorStatus::PendingActivation
    {
        return not_found();
    }
    let Some(secret) = factors::totp_secret(st, &scope.user, &f) else {
        return unavailable("the factor secret cannot be opened");
    };
    let uri = factors::totp::otpauth_uri(&st.config.factors.totp, secret.expose(), &scope.user.username);
    let svg = match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build(),
        Err(e) => return unavailable(format!("QR code: {e}")),
    };
    audit!("factor.qr.shown", user = %scope.user.username, factor_id = %f.record.id, actor = %scope.actor, token = scope.token);
    let mut res = (StatusCode::OK, svg).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    res
}

/// `POST .../factors/{fid}/lifecycle/activate` `{passCode}`.
pub(crate) async fn activate(st: &Handles, scope: &Scope, id: &str, body: &[u8]) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ceremony = kind_of(&f.record.factor_type).is_some_and(|k| k.ceremony());
    let code = match (ceremony, pass_code(body)) {
        (true, _) => match ceremony_proof(body) {
            Ok(Some(p)) => p,
            Ok(None) => return validation("clientData: The field cannot be left blank"),
            Err(e) => return e.into_response(),
        },
        (false, Ok(Some(c))) => c,
        (false, Ok(None)) => return validation("passCode: The field cannot be left blank"),
        (false, Err(e)) => return e.into_response(),
    };
    if f.record.status != FactorStatus::PendingActivation
        || kind_of(&f.record.factor_type).is_some_and(|k| !k.activated_by_code())
    {
        return ApiError::new(ErrorCode::E0000079)
            .cause("only a factor PENDING_ACTIVATION is activated with a passCode")
            .into_response();
    }
    if let Err(e) = factors::activate(st, &scope.user, &f, &code, scope.client, &scope.flow).await {
        return verify_error(e);
    }
    audit!("factor.activated.api", user = %scope.user.username, factor_id = %f.record.id, actor = %scope.actor, token = scope.token);
    match owned(st, scope, id).await {
        Ok(f) => json(StatusCode::OK, &factor_json(st, scope, &f)),
        Err(r) => r,
    }
}

/// `POST .../factors/{fid}/verify` `{passCode?}`.
pub(crate) async fn verify(st: &Handles, scope: &Scope, id: &str, body: &[u8]) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ceremony = kind_of(&f.record.factor_type).is_some_and(|k| k.ceremony());
    let code = match if ceremony {
        ceremony_proof(body)
    } else {
        pass_code(body)
    } {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ft = f.record.factor_type.clone();
    if !f.is_active() || !factors::type_enabled(st, &ft) {
        return ApiError::new(ErrorCode::E0000154).into_response();
    }
    let me = scope.factor_url(&f.record.id);
    // A device answers (push), or a code is to be sent (sms, call, email
    // without a passCode): start a challenge. Else check the code.
    let challenge = kind_of(&ft)
        .is_some_and(|k| k.answered_by_device() || ((k.sends_code() || k.ceremony()) && code.is_none()));
    match (challenge, code) {
        (true, _) => {
            let ctx = factors::ChallengeContext {
                client_addr: scope.client,
                flow: scope.flow.clone(),
            };
            match factors::challenge(st, &scope.user, &f, &ctx).await {
                Ok(Challenge::CodeSent { expires_at }) => {
                    audit!("factor.challenged.api", user = %scope.user.username, factor_type = %ft, actor = %scope.actor, token = scope.token);
                    json(
                        StatusCode::OK,
                        &json!({
                            "factorResult": "CHALLENGE",
                            "expiresAt": rfc3339(expires_at),
                            "_links": {
                                "verify": link(format!("{me}/verify"), &["POST"]),
                                "factor": link(me, &["GET", "DELETE"]),
                            },
                        }),
                    )
                }
                Ok(Challenge::Push {
                    transaction_id,
                    expires_at,
                    correct_answer,
                }) => {
                    audit!("factor.challenged.api", user = %scope.user.username, factor_type = %ft, actor = %scope.actor, token = scope.token);
                    push_waiting(&me, &transaction_id, expires_at, correct_answer)
                }
                Ok(Challenge::WebAuthn { options, expires_at }) => {
                    audit!("factor.challenged.api", user = %scope.user.username, factor_type = %ft, actor = %scope.actor, token = scope.token);
                    json_no_store(
                        StatusCode::OK,
                        &json!({
                            "factorResult": "CHALLENGE",
                            "expiresAt": rfc3339(expires_at),
                            "profile": f.record.profile,
                            "_embedded": { "challenge": options },
                            "_links": {
                                "verify": link(format!("{me}/verify"), &["POST"]),
                                "factor": link(me, &["GET", "DELETE"]),
                            },
                        }),
                    )
                }
                Err(e) => super::challenge_error(st, Caller::Factors, &ft, e),
            }
        }
        (false, None) => validation("passCode: The field cannot be left blank"),
        (false, Some(code)) => {
            match factors::verify(st, &scope.user, &f, &code, scope.client, &scope.flow).await {
                Ok(()) => {
                    audit!("factor.verified.api", user = %scope.user.username, factor_type = %ft, actor = %scope.actor, token = scope.token);
                    json(StatusCode::OK, &json!({ "factorResult": "SUCCESS" }))
                }
                Err(e) => verify_error(e),
            }
        }
    }
}

/// 201 `WAITING` with the poll and cancel links and the number to show.
fn push_waiting(me: &str, tid: &str, expires_at: UnixTime, correct_answer: u8) -> Response {
    let poll = format!("{me}/transactions/{tid}");
    json_no_store(
        StatusCode::CREATED,
        &json!({
            "factorResult": "WAITING",
            "expiresAt": rfc3339(expires_at),
            "profile": {},
            "_embedded": { "challenge": { "correctAnswer": correct_answer } },
            "_links": {
                "poll": link(poll.clone(), &["GET"]),
                "cancel": link(poll, &["DELETE"]),
            },
        }),
    )
}

/// A push transaction's state as Okta answers a poll: `WAITING` links
/// `poll` and `cancel`; `REJECTED` and `TIMEOUT` link `verify` (a new push).
/// `_links.factor` also carries the factor's `factorType` and `id`: the Okta
/// SDK 3.x parses that link of a `REJECTED` or `TIMEOUT` answer as a Factor,
/// which needs its type.
fn transaction_json(scope: &Scope, f: &Factor, tid: &str, result: factors::PushResult) -> Value {
    let me = scope.factor_url(&f.record.id);
    let mut factor = link(me.clone(), &["GET", "DELETE"]);
    factor["factorType"] = json!(f.record.factor_type);
    factor["id"] = json!(f.record.id);
    let mut v = json!({
        "factorResult": result.as_str(),
        "_links": { "factor": factor },
    });
    if let Some(c) = f.record.profile.get("credentialId") {
        v["profile"] = json!({ "credentialId": c });
    }
    match result {
        factors::PushResult::Waiting => {
            let poll = format!("{me}/transactions/{tid}");
            v["_links"]["poll"] = link(poll.clone(), &["GET"]);
            v["_links"]["cancel"] = link(poll, &["DELETE"]);
        }
        factors::PushResult::Rejected | factors::PushResult::Timeout => {
            v["_links"]["verify"] = link(format!("{me}/verify"), &["POST"]);
        }
        factors::PushResult::Success => {}
    }
    v
}

/// `GET .../factors/{fid}/transactions/{tid}`: a push transaction's state.
pub(crate) async fn transaction(st: &Handles, scope: &Scope, id: &str, tid: &str) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match factors::push_status(st, &scope.user, &f, tid).await {
        Ok(Some(result)) => json(StatusCode::OK, &transaction_json(scope, &f, tid, result)),
        Ok(None) => ApiError::new(ErrorCode::E0000191).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `DELETE .../factors/{fid}/transactions/{tid}` (the push's
/// `_links.cancel`): a waiting push becomes `REJECTED` and the device's
/// answer is refused; one no longer waiting keeps its state. Answers the
/// transaction like a poll.
pub(crate) async fn cancel(st: &Handles, scope: &Scope, id: &str, tid: &str) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match factors::cancel_push(st, &scope.user, &f, tid).await {
        Ok(Some(result)) => {
            audit!("factor.push.cancelled.api", user = %scope.user.username, factor_id = %f.record.id, transaction = %tid, result = result.as_str(), actor = %scope.actor, token = scope.token);
            json(StatusCode::OK, &transaction_json(scope, &f, tid, result))
        }
        Ok(None) => ApiError::new(ErrorCode::E0000191).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST .../factors/{fid}/resend`: sends a pending code factor's
/// activation code again (rate limited: 429 `E0000109`).
pub(crate) async fn resend(st: &Handles, scope: &Scope, id: &str) -> Response {
    let f = match owned(st, scope, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ft = f.record.factor_type.clone();
    if !kind_of(&ft).is_some_and(|k| k.sends_code()) || f.record.status != FactorStatus::PendingActivation {
        return ApiError::new(ErrorCode::E0000079)
            .cause("only an sms, call or email factor PENDING_ACTIVATION has an activation code to resend")
            .into_response();
    }
    let ctx = factors::ChallengeContext {
        client_addr: scope.client,
        flow: scope.flow.clone(),
    };
    match factors::challenge(st, &scope.user, &f, &ctx).await {
        Ok(_) => {
            audit!("factor.resent.api", user = %scope.user.username, factor_type = %ft, actor = %scope.actor, token = scope.token);
            json(StatusCode::OK, &factor_json(st, scope, &f))
        }
        Err(e) => super::challenge_error(st, Caller::Factors, &ft, e),
    }
}

/// `DELETE .../factors/{fid}`: 204. Removing an active factor also ends the
/// user's sessions (a factor reset; see [`factors::remove_by`]); the
/// self-service route re-issues the caller's own session. An administrator
/// may remove the last active factor; the user may not (two-factor policy).
pub(crate) async fn delete(st: &Handles, scope: &Scope, id: &str) -> Response {
    if let Err(r) = owned(st, scope, id).await {
        return r;
    }
    // An administrator may remove the last factor (the user enrolls again);
    // the user themselves may not while policy requires two.
    let by = if scope.token.is_some() {
        factors::Remover::Administrator
    } else {
        factors::Remover::User
    };
    let moved = match factors::remove_by(st, &scope.user, id, scope.actor, by).await {
        Ok(moved) => moved,
        Err(factors::RemoveError::NotFound) => return not_found(),
        Err(factors::RemoveError::ReadOnly) => {
            return ApiError::new(ErrorCode::E0000006)
                .cause("this factor is provisioned by the users file and is read-only")
                .into_response();
        }
        Err(factors::RemoveError::LastFactor) => {
            return ApiError::new(ErrorCode::E0000006)
                .cause("the last active factor cannot be removed while the policy requires two factors")
                .into_response();
        }
        Err(factors::RemoveError::Unavailable) => return unavailable("removing a factor failed"),
    };
    audit!("factor.removed.api", user = %scope.user.username, factor_id = %id, actor = %scope.actor, token = scope.token);
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Some(moved) = moved {
        res.extensions_mut().insert(moved);
    }
    res
}
