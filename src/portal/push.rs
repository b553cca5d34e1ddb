//! The push device API and the portal's push polling.
//!
//! Device endpoints (JSON, no cookie; SPEC section 8):
//! - `POST {prefix}/api/v1/push/devices` `{activationToken, publicKey,
//!   deviceName, address}` pairs a device and activates its factor; answers
//!   `{id, factorId, factorType, status, profile}`;
//! - `POST {prefix}/api/v1/push/transactions/{tid}` `{decision, number,
//!   signature}` records a signed answer; answers `{factorResult}`.
//!
//! For the portal's pages: `POST {prefix}/push/status` `{transactionId}` (or,
//! with the session cookie, `{factorId}` of one's own factor being paired)
//! answers `{factorResult}`, which [`SCRIPT`] (served at
//! `{prefix}/static/push.js`, allowed by the pages' CSP) polls; when the
//! result is no longer `WAITING` the script submits the page's "Check again"
//! form, which does the real work (and works without JavaScript).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::json;

use super::Ctx;
pub use super::common::{base_url, pairing_uri};
use super::common::{json_request, json_response};
use crate::enforce::SessionState;
use crate::error::{ApiError, ErrorCode};
use crate::factors::FactorType;
use crate::factors::push::{self, AnswerError, DeviceAnswer, DeviceError, DeviceRegistration};
use crate::state::AppState;

/// Where the polling script is served, relative to the prefix.
pub const SCRIPT_PATH: &str = crate::pages::PUSH_SCRIPT;

/// Polls a push (or a device pairing) and submits the "Check again" form
/// once it is no longer waiting.
pub const SCRIPT: &str = r#"// Portcullis: wait for a push answer, then continue.
(function () {
  "use strict";
  var box = document.getElementById("push-wait");
  var form = document.getElementById("push-check");
  if (!box || !form || !window.fetch) { return; }
  var body = {};
  if (box.getAttribute("data-tx")) { body.transactionId = box.getAttribute("data-tx"); }
  if (box.getAttribute("data-factor")) { body.factorId = box.getAttribute("data-factor"); }
  var until = Date.now() + 1000 * Number(box.getAttribute("data-ttl") || "120");
  var status = document.getElementById("push-status");
  function tick() {
    if (Date.now() > until) { form.submit(); return; }
    fetch(box.getAttribute("data-poll"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.ok ? r.json() : { factorResult: "UNKNOWN" };
    }).then(function (j) {
      if (j.factorResult === "WAITING") { setTimeout(tick, 2000); }
      else { if (status) { status.textContent = box.getAttribute("data-continuing") || "..."; } form.submit(); }
    }).catch(function () { setTimeout(tick, 4000); });
  }
  if (status) { status.textContent = box.getAttribute("data-waiting") || "..."; }
  setTimeout(tick, 1500);
})();
"#;

/// `GET {prefix}/static/push.js`.
pub async fn script() -> Response {
    let mut res = SCRIPT.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    res
}

/// The answer of every push route while push is disabled: 404 before
/// anything else (no body read, no store access, nothing logged).
pub(crate) fn disabled(st: &AppState) -> Option<Response> {
    (!st.config.factors.push.enabled).then(|| ApiError::new(ErrorCode::E0000007).into_response())
}

/// `POST {prefix}/api/v1/push/devices`: a device pairs itself.
pub async fn register(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = disabled(&st) {
        return r;
    }
    let reg: DeviceRegistration = match json_request(&st, &ctx, &method, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match push::register_device(&st, &reg).await {
        Ok(f) => json_response(json!({
            "id": f.id,
            "factorId": f.id,
            "factorType": f.factor_type,
            "provider": f.provider,
            "status": f.status.as_str(),
            "profile": { "deviceName": f.profile["deviceName"] },
        })),
        Err(DeviceError::InvalidToken) => ApiError::new(ErrorCode::E0000011)
            .cause("activationToken: invalid, used or expired")
            .into_response(),
        Err(DeviceError::Invalid(cause)) => ApiError::new(ErrorCode::E0000001).cause(cause).into_response(),
        Err(DeviceError::Unavailable) => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}

/// `POST {prefix}/api/v1/push/transactions/{tid}`: a device answers.
pub async fn answer(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    // Not `Ids`: a disabled push answers E0000007 before the id is looked at.
    Path(tid): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = disabled(&st) {
        return r;
    }
    if !crate::ids::is_id(&tid) {
        return ApiError::new(ErrorCode::E0000191).into_response();
    }
    let ans: DeviceAnswer = match json_request(&st, &ctx, &method, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match push::answer(&st, &tid, &ans, ctx.0.client_addr).await {
        Ok(result) => json_response(json!({ "factorResult": result.as_str() })),
        Err(AnswerError::NotFound) => ApiError::new(ErrorCode::E0000191).into_response(),
        Err(AnswerError::Invalid(cause)) => ApiError::new(ErrorCode::E0000001).cause(cause).into_response(),
        Err(AnswerError::BadSignature) => ApiError::new(ErrorCode::E0000006)
            .cause("signature: missing or invalid")
            .into_response(),
        Err(AnswerError::Answered) => ApiError::new(ErrorCode::E0000079)
            .cause("this push was already answered")
            .into_response(),
        Err(AnswerError::Cancelled) => ApiError::new(ErrorCode::E0000079)
            .cause("this push was cancelled")
            .into_response(),
        Err(AnswerError::Expired) => ApiError::new(ErrorCode::E0000079)
            .cause("this push has expired")
            .into_response(),
        Err(AnswerError::WrongNumber) => ApiError::new(ErrorCode::E0000068)
            .cause("number: not the number shown; the sign-in was rejected")
            .into_response(),
        Err(AnswerError::Unavailable) => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}

/// The body of `POST {prefix}/push/status`.
#[derive(Deserialize)]
pub struct StatusRequest {
    #[serde(rename = "transactionId")]
    transaction_id: Option<String>,
    #[serde(rename = "factorId")]
    factor_id: Option<String>,
}

/// `POST {prefix}/push/status`: what the polling script asks.
pub async fn status(
    State(st): State<Arc<AppState>>,
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = disabled(&st) {
        return r;
    }
    let req: StatusRequest = match json_request(&st, &ctx, &method, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Some(tid) = req.transaction_id {
        if !crate::ids::is_id(&tid) {
            return ApiError::new(ErrorCode::E0000191).into_response();
        }
        return match push::status_by_id(&st, &tid).await {
            Ok(Some(r)) => json_response(json!({ "factorResult": r.as_str() })),
            Ok(None) => ApiError::new(ErrorCode::E0000191).into_response(),
            Err(_) => ApiError::new(ErrorCode::E0000009).into_response(),
        };
    }
    // Pairing a device: one's own pending factor becomes active.
    let (Some(fid), SessionState::Valid(s)) = (req.factor_id, st.enforcer.session(&headers)) else {
        return ApiError::new(ErrorCode::E0000007).into_response();
    };
    match crate::factors::find(&st, &s.user, &fid).await {
        Ok(Some(f)) if FactorType::parse(&f.record.factor_type) == Some(FactorType::Push) => {
            json_response(json!({
                "factorResult": if f.is_active() { "SUCCESS" } else { "WAITING" }
            }))
        }
        Ok(_) => ApiError::new(ErrorCode::E0000007).into_response(),
        Err(_) => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}
