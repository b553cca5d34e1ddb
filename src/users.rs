//! The user directory: who can sign in, looked up without I/O.
//!
//! Users from the users file get a stable id derived from their login, so
//! state tied to them (factors, lockouts, epochs) survives restarts. Logins
//! are matched case-insensitively.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::FileUser;

/// A user who can sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `00u` + 17 alphanumerics.
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub groups: Vec<String>,
    /// argon2id PHC string; `None` for users who cannot use a password.
    pub password_hash: Option<String>,
    /// True for users defined in the users file (read-only through the API).
    pub from_file: bool,
    /// A TOTP secret provisioned by the users file (a read-only, active factor).
    pub config_totp: Option<crate::secret::Secret>,
}

/// The stable id of a users-file user: `00u` + 17 characters derived from the login.
pub fn file_user_id(login: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let digest = Sha256::digest(format!("portcullis/file-user/{}", login.to_lowercase()).as_bytes());
    let mut id = String::from("00u");
    id.extend(
        digest
            .iter()
            .take(17)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
    );
    id
}

/// Users by id and by lower-cased login.
#[derive(Debug, Default, Clone)]
pub struct UserDirectory {
    by_id: HashMap<String, Arc<User>>,
    by_login: HashMap<String, Arc<User>>,
}

impl UserDirectory {
    /// Builds the directory from the users file.
    pub fn from_file_users(users: &[FileUser]) -> Self {
        let mut dir = Self::default();
        for u in users {
            dir.insert(User {
                id: file_user_id(&u.username),
                username: u.username.clone(),
                display_name: u.display_name.clone(),
                email: u.email.clone(),
                phone: u.phone.clone(),
                groups: u.groups.clone(),
                password_hash: Some(u.password_hash.clone()),
                from_file: true,
                config_totp: u.totp_secret.clone(),
            });
        }
        dir
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, user: User) {
        let user = Arc::new(user);
        self.by_login.insert(user.username.to_lowercase(), user.clone());
        self.by_id.insert(user.id.clone(), user);
    }

    /// The user with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }

    /// The user with this login (case-insensitive).
    pub fn by_login(&self, login: &str) -> Option<&Arc<User>> {
        self.by_login.get(&login.to_lowercase())
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The directory shared between the request path and the code that changes it.
pub type SharedUsers = Arc<std::sync::RwLock<UserDirectory>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_user_ids_are_stable_and_okta_shaped() {
        let a = file_user_id("alice");
        assert_eq!(a, file_user_id("Alice"));
        assert_ne!(a, file_user_id("bob"));
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("00u") && a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn looks_up_by_id_and_login() {
        let dir = UserDirectory::from_file_users(&[FileUser {
            username: "Alice".into(),
            password_hash: "$argon2id$...".into(),
            display_name: None,
            email: None,
            phone: None,
            groups: vec!["admins".into()],
            totp_secret: None,
        }]);
        let u = dir.by_login("alice").unwrap();
        assert_eq!(dir.get(&u.id).unwrap().username, "Alice");
        assert!(dir.by_login("bob").is_none());
    }
}
