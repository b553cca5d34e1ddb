//! Okta-style API errors and their HTTP form.
//!
//! Every JSON error the gateway answers is an [`ApiError`], rendered as Okta's
//! error object `{errorCode, errorSummary, errorLink, errorId, errorCauses}`.
//! The summaries are fixed per code so an answer never reveals which part of a
//! credential was wrong.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The Okta error codes this gateway uses, with their status and summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400 validation failed.
    E0000001,
    /// 400 the request body was not well-formed.
    E0000003,
    /// 401 authentication failed.
    E0000004,
    /// 403 you do not have permission.
    E0000006,
    /// 404 not found.
    E0000007,
    /// 405 the endpoint does not support the method (`Allow` lists those it does).
    E0000022,
    /// 401 invalid session or token.
    E0000011,
    /// 429 rate limit exceeded.
    E0000047,
    /// 403 invalid passcode/answer.
    E0000068,
    /// 403 user locked.
    E0000069,
    /// 403 operation not allowed in the current state.
    E0000079,
    /// 403 passcode already used.
    E0000082,
    /// 429 an SMS/e-mail was sent too recently.
    E0000109,
    /// 410 factor not active.
    E0000154,
    /// 404 transaction not found.
    E0000191,
    /// 415 unsupported media type (this gateway's own use of Okta's code).
    E0000037,
    /// 503 service unavailable (this gateway's own code for fail-closed answers).
    E0000009,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            E0000001 | E0000003 => StatusCode::BAD_REQUEST,
            E0000004 | E0000011 => StatusCode::UNAUTHORIZED,
            E0000006 | E0000068 | E0000069 | E0000079 | E0000082 => StatusCode::FORBIDDEN,
            E0000007 | E0000191 => StatusCode::NOT_FOUND,
            E0000022 => StatusCode::METHOD_NOT_ALLOWED,
            E0000047 | E0000109 => StatusCode::TOO_MANY_REQUESTS,
            E0000154 => StatusCode::GONE,
            E0000037 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            E0000009 => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The code's fixed summary.
    pub fn summary(self) -> &'static str {
        use ErrorCode::*;
        match self {
            E0000001 => "Api validation failed",
            E0000003 => "The request body was not well-formed.",
            E0000004 => "Authentication failed",
            E0000006 => "You do not have permission to perform the requested action",
            E0000007 => "Not found: Resource not found",
            E0000022 => "The endpoint does not support the provided HTTP method",
            E0000011 => "Invalid token provided",
            E0000047 => "API call exceeded rate limit due to too many requests.",
            E0000068 => "Invalid Passcode/Answer",
            E0000069 => "User Locked",
            E0000079 => "This operation is not allowed in the current authentication state.",
            E0000082 => "Each code can only be used once. Please wait for a new code and try again.",
            // Okta's text names SMS and 30 seconds; here it is any code message
            // and `resend_after` (the cause and Retry-After say how long).
            E0000109 => "A code was sent recently. Please wait before requesting another one.",
            E0000154 => "Factor could not be verified because it is not active.",
            E0000191 => "Transaction not found.",
            E0000037 => "Unsupported media type. Send Content-Type: application/json.",
            E0000009 => "Internal Server Error: the service is temporarily unavailable.",
        }
    }

    /// The code as text, e.g. `E0000004`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            E0000001 => "E0000001",
            E0000003 => "E0000003",
            E0000004 => "E0000004",
            E0000006 => "E0000006",
            E0000007 => "E0000007",
            E0000022 => "E0000022",
            E0000011 => "E0000011",
            E0000047 => "E0000047",
            E0000068 => "E0000068",
            E0000069 => "E0000069",
            E0000079 => "E0000079",
            E0000082 => "E0000082",
            E0000109 => "E0000109",
            E0000154 => "E0000154",
            E0000191 => "E0000191",
            E0000037 => "E0000037",
            E0000009 => "E0000009",
        }
    }
}

/// A cause attached to a validation error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCause {
    #[serde(rename = "errorSummary")]
    pub error_summary: String,
}

/// An Okta-style API error, ready to answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub causes: Vec<ErrorCause>,
    /// Extra headers (e.g. `WWW-Authenticate`, rate-limit headers).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    #[serde(rename = "errorSummary")]
    error_summary: &'a str,
    #[serde(rename = "errorLink")]
    error_link: &'a str,
    #[serde(rename = "errorId")]
    error_id: String,
    #[serde(rename = "errorCauses")]
    error_causes: &'a [ErrorCause],
}

impl ApiError {
    /// An error with no causes.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            causes: Vec::new(),
            headers: Vec::new(),
        }
    }
    /// Adds a cause (a validation detail safe to show the caller).
    pub fn cause(mut self, summary: impl Into<String>) -> Self {
        self.causes.push(ErrorCause {
            error_summary: summary.into(),
        });
        self
    }
    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
    /// The JSON body.
    pub fn body(&self) -> String {
        let body = ErrorBody {
            error_code: self.code.as_str(),
            error_summary: self.code.summary(),
            error_link: self.code.as_str(),
            error_id: format!("oae{}", crate::crypto::random_id(19)),
            error_causes: &self.causes,
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.code.status(), self.body()).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (k, v) in self.headers {
            h.append(k, v);
        }
        res
    }
}

impl ApiError {
    /// 429 E0000047 with `Date` and the `X-Rate-Limit-*` headers Okta clients read.
    pub fn rate_limited(limit: u32, reset_at: crate::clock::UnixTime, now: crate::clock::UnixTime) -> Self {
        Self::rate_limited_as(ErrorCode::E0000047, limit, reset_at, now)
    }

    /// A rate-limit error with another code (e.g. E0000109) and the same headers.
    pub fn rate_limited_as(
        code: ErrorCode,
        limit: u32,
        reset_at: crate::clock::UnixTime,
        now: crate::clock::UnixTime,
    ) -> Self {
        let num =
            |n: i64| HeaderValue::from_str(&n.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0"));
        let mut e = Self::new(code)
            .header(
                header::HeaderName::from_static("x-rate-limit-limit"),
                num(i64::from(limit)),
            )
            .header(
                header::HeaderName::from_static("x-rate-limit-remaining"),
                HeaderValue::from_static("0"),
            )
            .header(
                header::HeaderName::from_static("x-rate-limit-reset"),
                num(reset_at),
            )
            .header(header::RETRY_AFTER, num((reset_at - now).max(1)));
        if let Ok(d) = HeaderValue::from_str(&crate::clock::http_date(now)) {
            e = e.header(header::DATE, d);
        }
        if code == ErrorCode::E0000109 {
            e = e.cause(format!(
                "another code can be sent in {} seconds",
                (reset_at - now).max(1)
            ));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_okta_error_object() {
        let e = ApiError::new(ErrorCode::E0000001).cause("login: required");
        let v: serde_json::Value = serde_json::from_str(&e.body()).expect("json");
        assert_eq!(v["errorCode"], "E0000001");
        assert_eq!(v["errorSummary"], "Api validation failed");
        assert_eq!(v["errorCauses"][0]["errorSummary"], "login: required");
        assert!(v["errorId"].as_str().is_some_and(|s| s.starts_with("oae")));
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    }
}
