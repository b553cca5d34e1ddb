//! Who a request is from, once the enforcement layer has allowed it.
//!
//! Identity travels down the stack as a [`Principal`] in the request
//! extensions; the proxy turns it into identity headers, an embedding app
//! reads it directly.

use std::sync::Arc;

use http::HeaderValue;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Session level: 1 after one factor (password, or a possession factor in the
/// passwordless flow), 2 after two.
pub type Level = u8;

/// A signed-in user, as seen by the request being handled: the fields of
/// [`PrincipalInfo`] (read through `Deref`, `principal.username`) and the
/// identity header values made from them.
///
/// Shared: cloning it, as handing it to a request does, copies a pointer, and
/// the enforcement layer builds one per session and user, not per request.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<Shared>);

#[derive(PartialEq, Eq)]
struct Shared {
    info: PrincipalInfo,
    headers: IdentityValues,
}

/// What a [`Principal`] says about its user and session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalInfo {
    /// Stable user id (`00u...`).
    pub user_id: String,
    /// The login name.
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// 1 or 2.
    pub level: Level,
    /// The session id (never sent upstream).
    pub session_id: String,
}

/// The identity header values of a principal, encoded once (see
/// [`crate::proxy::headers::set_identity`]); `None` leaves a header out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityValues {
    pub user: Option<HeaderValue>,
    pub groups: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    pub name: Option<HeaderValue>,
}

impl Principal {
    /// A principal with `info`, its identity header values encoded now.
    pub fn new(info: PrincipalInfo) -> Self {
        let headers = crate::proxy::headers::identity_values(&info);
        Self(Arc::new(Shared { info, headers }))
    }

    /// The identity header values (percent-encoded; absent or empty fields
    /// have none).
    pub fn identity_values(&self) -> &IdentityValues {
        &self.0.headers
    }

    /// True when the user is in at least one of `groups` (or `groups` is empty).
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        groups.is_empty() || groups.iter().any(|g| self.groups.iter().any(|mine| mine == g))
    }
}

impl std::ops::Deref for Principal {
    type Target = PrincipalInfo;
    fn deref(&self) -> &PrincipalInfo {
        &self.0.info
    }
}

impl From<PrincipalInfo> for Principal {
    fn from(info: PrincipalInfo) -> Self {
        Self::new(info)
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.info.fmt(f)
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.info.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PrincipalInfo::deserialize(d).map(Self::new)
    }
}
