//! Identifiers that arrive in requests (factor, transaction and user ids in
//! paths and bodies): checked for charset and length before anything uses or
//! logs them, so a path such as `.../transactions/x%0A...` is a plain 404
//! that touches neither the store nor the log.
//!
//! Every id the gateway issues is ASCII letters and digits (a type prefix and
//! a random or derived tail; see [`crate::crypto::random_id`]), at most
//! [`MAX_ID`] long; `-` and `_` (base64url) are accepted too. A user path segment may also be a login (the admin API's
//! `/api/v1/users/{id or login}`): at most [`crate::limits::MAX_LOGIN_BYTES`]
//! bytes and no control characters.

use axum::extract::{FromRequestParts, Path, RawPathParams};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// The longest id accepted (issued ids are 20 to 32 characters).
pub const MAX_ID: usize = 64;

/// True for a well-formed id: 1 to [`MAX_ID`] ASCII letters, digits, `-`
/// or `_` (issued ids are letters and digits; the base64url characters are
/// allowed for ids made elsewhere, such as credential ids).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// True for a user id or a plausible login (no control characters, bounded).
pub fn is_user_key(s: &str) -> bool {
    is_id(s)
        || (!s.is_empty()
            && s.len() <= crate::limits::MAX_LOGIN_BYTES
            && !s
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')))
}

/// The answer to a malformed id: the not-found answer its route gives.
fn not_found(param: &str) -> Response {
    let code = if param == "transactionId" {
        ErrorCode::E0000191
    } else {
        ErrorCode::E0000007
    };
    ApiError::new(code).into_response()
}

/// Path parameters of a route, each checked before the handler runs: `id`
/// is a user id or login ([`is_user_key`]), every other one an id
/// ([`is_id`]). A malformed one answers 404 (`E0000191` for a
/// `transactionId`, else `E0000007`), like an unknown one.
#[derive(Debug, Clone)]
pub struct Ids<T>(pub T);

impl<S, T> FromRequestParts<S> for Ids<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found(""))?;
        for (name, value) in &raw {
            let ok = if name == "id" {
                is_user_key(value)
            } else {
                is_id(value)
            };
            if !ok {
                return Err(not_found(name));
            }
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Ids(t))
            .map_err(|_| not_found(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_letters_and_digits_of_bounded_length() {
        assert!(is_id("ptxAbc123"));
        assert!(is_id(&format!("mbl{}", crate::crypto::random_id(17))));
        assert!(!is_id(""));
        assert!(!is_id("x\nevent=\"user.unlocked\""));
        assert!(is_id("a-b_c"));
        assert!(!is_id("a b") && !is_id("a%0A") && !is_id("a.b") && !is_id("a\"b"));
        assert!(!is_id(&"a".repeat(MAX_ID + 1)));
        assert!(is_user_key("alice@example.com"));
        assert!(!is_user_key("alice\n"));
        assert!(!is_user_key("alice\u{2028}"));
        assert!(!is_user_key(&"a@".repeat(200)));
    }
}
