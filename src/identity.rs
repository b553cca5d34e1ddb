//! Who a request is from, once the enforcement layer has allowed it.
//!
//! Identity travels down the stack as a [`Principal`] in the request
//! extensions; the proxy turns it into identity headers, an embedding app
//! reads it directly.

use serde::{Deserialize, Serialize};

/// Session level: 1 after one factor (password, or a possession factor in the
/// passwordless flow), 2 after two.
pub type Level = u8;

/// A signed-in user, as seen by the request being handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
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

impl Principal {
    /// True when the user is in at least one of `groups` (or `groups` is empty).
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        groups.is_empty() || groups.iter().any(|g| self.groups.iter().any(|mine| mine == g))
    }
}
