//! What the JSON APIs share: the route table rows both routers are built
//! from, the JSON answers, and the one mapping from factor and store errors
//! to Okta's error answers. The admin listener ([`crate::admin`]) and the
//! portal's authentication and self-service APIs ([`crate::portal`]) use
//! these; the Factors API itself, one implementation for both callers, is
//! [`factors`].

pub mod factors;

use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::factors::{ChallengeError, VerifyError};
use crate::state::Handles;

/// An HTTP method of a route table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    /// The method's name, as in the OpenAPI document (lower case there).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    pub(crate) fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// One row of a route table: method, path (axum and OpenAPI share the
/// `{param}` syntax) and what serves it.
#[derive(Debug, Clone, Copy)]
pub struct Route<O> {
    pub verb: Verb,
    pub path: &'static str,
    pub op: O,
}

/// 405 `E0000022`: a path of a route table asked with a method it does not
/// serve. Install it with `Router::method_not_allowed_fallback` after the
/// router's last route (it reaches only the routes already there); axum still
/// adds the `Allow` header.
pub(crate) async fn method_not_allowed() -> Response {
    ApiError::new(ErrorCode::E0000022).into_response()
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// A JSON answer that carries a secret, codes or a transaction: never cached.
pub(crate) fn json_no_store(status: StatusCode, body: &Value) -> Response {
    let mut res = json(status, body);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A HAL link with the methods it allows.
pub(crate) fn link(href: String, methods: &[&str]) -> Value {
    serde_json::json!({ "href": href, "hints": { "allow": methods } })
}

/// 503 `E0000009` for a store failure (the cause goes to the log only).
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "API: store unavailable");
    ApiError::new(ErrorCode::E0000009).into_response()
}

/// 400 `E0000001` with one cause.
pub(crate) fn validation(cause: impl Into<String>) -> Response {
    ApiError::new(ErrorCode::E0000001).cause(cause).into_response()
}

/// The answer to a refused code (the admin, self-service and authn APIs).
pub(crate) fn verify_error(e: VerifyError) -> Response {
    match e {
        VerifyError::Invalid => ApiError::new(ErrorCode::E0000068).into_response(),
        VerifyError::Replayed => ApiError::new(ErrorCode::E0000082).into_response(),
        VerifyError::LockedRevealed => ApiError::new(ErrorCode::E0000069).into_response(),
        VerifyError::NotActive => ApiError::new(ErrorCode::E0000154).into_response(),
        VerifyError::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}

/// Which API answers a refused challenge: the two differ where their
/// clients expect different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The authentication API (`/api/v1/authn`).
    Authn,
    /// The Factors API (admin and self-service).
    Factors,
}

/// The answer to a challenge that could not be started; rate limits carry
/// the factor type's send limit in their headers.
pub(crate) fn challenge_error(
    st: &Handles,
    caller: Caller,
    factor_type: &str,
    e: ChallengeError,
) -> Response {
    let now = st.clock.now();
    match e {
        ChallengeError::NotChallenged if caller == Caller::Factors => {
            validation("passCode: The field cannot be left blank")
        }
        ChallengeError::NotActive | ChallengeError::NotChallenged => {
            ApiError::new(ErrorCode::E0000154).into_response()
        }
        ChallengeError::TooSoon(at) => {
            ApiError::rate_limited_as(ErrorCode::E0000109, 1, at, now).into_response()
        }
        ChallengeError::RateLimited(at) => {
            ApiError::rate_limited(crate::factors::send_limit(st, factor_type), at, now).into_response()
        }
        ChallengeError::Delivery => ApiError::new(ErrorCode::E0000009)
            .cause(match caller {
                Caller::Authn => "The message could not be delivered. Try again later or use another factor.",
                Caller::Factors => "the message could not be delivered; try again later",
            })
            .into_response(),
        ChallengeError::Unavailable => ApiError::new(ErrorCode::E0000009).into_response(),
    }
}
