//! The user directory: who can sign in, looked up without I/O.
//!
//! Two sources fill it. Users from the users file get a stable id derived
//! from their login, so state tied to them (factors, lockouts, epochs)
//! survives restarts; they are read-only through the API. Users created
//! through the Users API live in the store; every replica keeps the ones
//! that may sign in (status `ACTIVE`) in memory and follows the store's user
//! change log ([`UserSync`], run by the gateway's background refresher at the
//! `session.revocation_check` cadence), so the per-request lookup never waits
//! on the store. Changes made by this replica are applied at once.
//!
//! Logins are matched case-insensitively. A login in the users file wins over
//! a stored user with the same login (the API refuses to create one, but the
//! file may be edited later): the stored user then cannot sign in until
//! renamed, and a warning says so.
//!
//! A third source is a directory (`[users.ldap]`, [`ldap`]): its users are
//! mirrored here by the directory's refresher, keyed by an id derived from
//! the directory's stable id (`entryUUID`, `objectGUID`), and checked live
//! against the directory at every sign-in. The order between sources is:
//! the users file, then users created through the API, then the directory.
//! A login held by an earlier source shadows a directory user of the same
//! name (logged at every refresh, never merged).

pub mod ldap;

use foldhash::HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::FileUser;
use crate::passwords::HashCost;
use crate::store::{REVOCATION_OVERLAP, SharedStore, StoreResult, UserRecord, UserStatus};

/// A user who can sign in. Its `Debug` leaves the password hash out.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("email", &self.email)
            .field("phone", &self.phone)
            .field("groups", &self.groups)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("from_file", &self.from_file)
            .field("config_totp", &self.config_totp)
            .finish()
    }
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

impl User {
    /// The sign-in view of a stored user: the profile's `firstName` and
    /// `lastName` make the display name, `mobilePhone` the phone.
    pub fn from_record(r: &UserRecord) -> User {
        let text = |k: &str| {
            r.profile
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let name: Vec<String> = ["firstName", "lastName"].iter().filter_map(|k| text(k)).collect();
        User {
            id: r.id.clone(),
            username: r.login.clone(),
            display_name: (!name.is_empty()).then(|| name.join(" ")),
            email: text("email"),
            phone: text("mobilePhone"),
            groups: r
                .profile
                .get("groups")
                .and_then(|g| g.as_array())
                .map(|g| g.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            password_hash: r.password_hash.clone(),
            from_file: false,
            config_totp: None,
        }
    }
}

/// Users by id and by lower-cased login.
#[derive(Debug, Default, Clone)]
pub struct UserDirectory {
    by_id: HashMap<String, Arc<User>>,
    by_login: HashMap<String, Arc<User>>,
    /// The change-log position of the newest state applied per stored user
    /// (deleted ones included), so an older state read late never wins.
    store_seq: HashMap<String, i64>,
    /// Users mirrored from the directory, by id: where they live there.
    directory: HashMap<String, ldap::DirectoryRef>,
    /// True while the directory's view is older than `refresh_interval`
    /// allows: directory users' sessions then fail closed (503).
    directory_stale: bool,
    /// True from start-up until the directory's first full read.
    directory_pending: bool,
    /// How many users' password hashes have each cost.
    hash_costs: BTreeMap<HashCost, usize>,
    /// How many users have a TOTP secret from the users file.
    config_totp_users: usize,
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

    /// Takes over, on a reload, what the directory being replaced (`old`)
    /// learned from the store, and with `directory` what it read from
    /// `[users.ldap]` (when the directory to read is the same), so those users
    /// keep working until the first reads of this gateway. The users file is
    /// this directory's own and wins a login or id it shares with a carried
    /// user (as in [`UserDirectory::apply_record`]); a stored user wins over a
    /// directory user, as when both are read.
    pub fn carry_from(&mut self, old: &UserDirectory, directory: bool) {
        self.store_seq = old.store_seq.clone();
        let (mut stored, mut mirrored) = (Vec::new(), Vec::new());
        for u in old.by_id.values().filter(|u| !u.from_file) {
            match old.directory.get(&u.id) {
                None => stored.push(u),
                Some(at) => mirrored.push((u, at)),
            }
        }
        for u in stored {
            if self.by_id.contains_key(&u.id) || self.by_login(&u.username).is_some() {
                continue;
            }
            self.insert(User::clone(u));
        }
        if directory {
            for (u, at) in mirrored {
                self.upsert_directory_user(User::clone(u), at.clone());
            }
            self.directory_pending = old.directory_pending;
            self.directory_stale = old.directory_stale;
        }
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, user: User) {
        let user = Arc::new(user);
        self.count_cost(&user, 1);
        self.by_login.insert(user.username.to_lowercase(), user.clone());
        if let Some(old) = self.by_id.insert(user.id.clone(), user) {
            self.count_cost(&old, -1);
        }
    }

    /// Removes the user `id` (and its login, if that login is still theirs).
    pub fn remove(&mut self, id: &str) -> Option<Arc<User>> {
        let user = self.by_id.remove(id)?;
        self.count_cost(&user, -1);
        let key = user.username.to_lowercase();
        if self.by_login.get(&key).is_some_and(|u| u.id == id) {
            self.by_login.remove(&key);
        }
        Some(user)
    }

    /// Applies the current state of a stored user: an `ACTIVE` user can sign
    /// in, any other status cannot. A state older than one already applied is
    /// ignored. Returns false when the user's login belongs to a users-file
    /// user (the file wins).
    pub fn apply_record(&mut self, r: &UserRecord) -> bool {
        if self.store_seq.get(&r.id).is_some_and(|seen| *seen > r.seq) {
            return true;
        }
        self.store_seq.insert(r.id.clone(), r.seq);
        if self.by_id.get(&r.id).is_some_and(|u| u.from_file) {
            return false;
        }
        self.remove(&r.id);
        if r.status != UserStatus::Active {
            return true;
        }
        if self.by_login(&r.login).is_some_and(|u| u.from_file) {
            return false;
        }
        self.insert(User::from_record(r));
        true
    }

    /// Applies the deletion of a stored user at change-log position `seq`.
    pub fn apply_deleted(&mut self, id: &str, seq: i64) {
        if self.store_seq.get(id).is_some_and(|seen| *seen > seq) {
            return;
        }
        self.store_seq.insert(id.to_owned(), seq);
        if !self.by_id.get(id).is_some_and(|u| u.from_file) {
            self.remove(id);
        }
    }

    /// The users-file users, in id order.
    pub fn file_users(&self) -> Vec<Arc<User>> {
        let mut v: Vec<Arc<User>> = self.by_id.values().filter(|u| u.from_file).cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The user with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }

    fn count_cost(&mut self, user: &User, by: isize) {
        if user.config_totp.is_some() {
            self.config_totp_users = self.config_totp_users.saturating_add_signed(by);
        }
        let Some(cost) = user.password_hash.as_deref().and_then(HashCost::of) else {
            return;
        };
        let n = self.hash_costs.entry(cost).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            self.hash_costs.remove(&cost);
        }
    }

    /// The hash cost that a sign-in naming no one with a password imitates
    /// ([`crate::passwords::PasswordPool::imitate`]): one the users' hashes
    /// have, picked by `key` (a keyed hash of the login, stable across
    /// restarts) with each cost as likely as it is among the users. Where
    /// users' hashes differ in cost, a slow or quick answer then says
    /// nothing about whether a login exists. `None` without hashed users.
    pub fn cost_for_unknown(&self, key: &str) -> Option<HashCost> {
        let total: usize = self.hash_costs.values().sum();
        if total == 0 {
            return None;
        }
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // The key's place in [0, 1) scaled to the users (not a modulo): a
        // user added or removed moves the boundaries between costs a little,
        // so it changes the cost of few unknown logins (about one in
        // `total`), not of half of them, and comparing answers before and
        // after a change tells little.
        let scaled = (u128::from(u64::from_le_bytes(first)) * total as u128) >> 64;
        let mut pick = u64::try_from(scaled).unwrap_or(u64::MAX);
        for (cost, n) in &self.hash_costs {
            let n = *n as u64;
            if pick < n {
                return Some(*cost);
            }
            pick -= n;
        }
        None
    }

    /// The user with this login (case-insensitive).
    pub fn by_login(&self, login: &str) -> Option<&Arc<User>> {
        self.by_login.get(&login.to_lowercase())
    }

    /// The users the API shows read-only (users file and directory), in id order.
    pub fn read_only_users(&self) -> Vec<Arc<User>> {
        let mut v: Vec<Arc<User>> = self
            .by_id
            .values()
            .filter(|u| u.from_file || self.directory.contains_key(&u.id))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// True for a user mirrored from the directory.
    pub fn is_directory(&self, id: &str) -> bool {
        self.directory.contains_key(id)
    }

    /// Where a directory user lives in the directory.
    pub fn directory_ref(&self, id: &str) -> Option<&ldap::DirectoryRef> {
        self.directory.get(id)
    }

    /// The directory users, in id order.
    pub fn directory_users(&self) -> Vec<Arc<User>> {
        let mut v: Vec<Arc<User>> = self
            .directory
            .keys()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// True while directory users' sessions must fail closed.
    pub fn directory_stale(&self) -> bool {
        self.directory_stale
    }

    /// True until the directory (if any) has been read once.
    pub fn directory_pending(&self) -> bool {
        self.directory_pending
    }

    /// Marks the directory as not read yet (or read).
    pub fn set_directory_pending(&mut self, pending: bool) {
        self.directory_pending = pending;
    }

    /// Marks the directory's view as too old to trust (or fresh again).
    pub fn set_directory_stale(&mut self, stale: bool) {
        self.directory_stale = stale;
    }

    /// Adds or updates one directory user. Returns false (and changes
    /// nothing) when an earlier source (file, API) holds the login.
    pub fn upsert_directory_user(&mut self, user: User, at: ldap::DirectoryRef) -> bool {
        if self
            .by_login(&user.username)
            .is_some_and(|u| u.id != user.id && !self.directory.contains_key(&u.id))
        {
            return false;
        }
        if self
            .by_id
            .get(&user.id)
            .is_some_and(|u| !self.directory.contains_key(&u.id))
        {
            return false;
        }
        // A rename: the old login must not keep pointing at this user.
        if let Some(old) = self.by_id.get(&user.id).cloned() {
            let key = old.username.to_lowercase();
            if self.by_login.get(&key).is_some_and(|u| u.id == old.id) {
                self.by_login.remove(&key);
            }
        }
        self.directory.insert(user.id.clone(), at);
        self.insert(user);
        true
    }

    /// Replaces every directory user with `users` (a full read of the
    /// directory). Returns the ids that are gone and the logins an earlier
    /// source shadows.
    pub fn replace_directory_users(
        &mut self,
        users: Vec<(User, ldap::DirectoryRef)>,
    ) -> (Vec<String>, Vec<String>) {
        let keep: std::collections::HashSet<String> = users.iter().map(|(u, _)| u.id.clone()).collect();
        let gone: Vec<String> = self
            .directory
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in &gone {
            self.remove_directory_user(id);
        }
        let mut shadowed = Vec::new();
        for (user, at) in users {
            let (id, login) = (user.id.clone(), user.username.clone());
            if !self.upsert_directory_user(user, at) {
                // Shadowed: its sessions end too (an earlier source owns the name now).
                self.remove_directory_user(&id);
                shadowed.push(login);
            }
        }
        (gone, shadowed)
    }

    /// Forgets one directory user (gone from the directory, or disabled).
    pub fn remove_directory_user(&mut self, id: &str) -> Option<Arc<User>> {
        self.directory.remove(id)?;
        self.remove(id)
    }

    /// True when some user has a TOTP secret from the users file (kept as
    /// users come and go: no scan).
    pub fn any_config_totp(&self) -> bool {
        self.config_totp_users > 0
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

/// Applies a stored user's state to the shared directory (after this replica
/// wrote it, or when the change log says so).
pub fn apply_record(users: &SharedUsers, r: &UserRecord) {
    let applied = users.write().unwrap_or_else(|p| p.into_inner()).apply_record(r);
    if !applied {
        tracing::warn!(user_id = %r.id, "a stored user's login is also in the users file; the file's user wins");
    }
}

/// Applies a stored user's deletion to the shared directory.
pub fn apply_deleted(users: &SharedUsers, id: &str, seq: i64) {
    users
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .apply_deleted(id, seq);
}

/// Change-log entries read per store call.
const SYNC_BATCH: u32 = 5_000;

/// Follows the store's user change log into a [`SharedUsers`] directory.
#[derive(Debug, Default)]
pub struct UserSync {
    cursor: std::sync::atomic::AtomicI64,
}

impl UserSync {
    /// A sync that has read nothing yet (its first refresh loads every user).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every change after the last one seen (re-reading a small overlap,
    /// as positions can become visible out of order on PostgreSQL) and
    /// applies it. On failure nothing read in this call is lost: the cursor
    /// only moves past what was applied.
    pub async fn refresh(&self, store: &SharedStore, users: &SharedUsers) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let mut cursor = self.cursor.load(Ordering::SeqCst);
        let mut from = (cursor - REVOCATION_OVERLAP).max(0);
        loop {
            let batch = store.users_changed_since(from, SYNC_BATCH).await?;
            let done = batch.cursor == from || batch.users.len() + batch.deleted.len() < SYNC_BATCH as usize;
            for r in &batch.users {
                apply_record(users, r);
            }
            for (id, seq) in &batch.deleted {
                apply_deleted(users, id, *seq);
            }
            cursor = cursor.max(batch.cursor);
            self.cursor.fetch_max(cursor, Ordering::SeqCst);
            from = batch.cursor;
            if done {
                return Ok(());
            }
        }
    }
}

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

    fn record(id: &str, login: &str, status: UserStatus, seq: i64) -> UserRecord {
        UserRecord {
            id: id.into(),
            login: login.into(),
            status,
            profile: serde_json::json!({ "login": login, "firstName": "Dana", "lastName": "Scully", "mobilePhone": "+15555550100", "groups": ["x"] }),
            password_hash: Some("$argon2id$...".into()),
            created: 1,
            activated: None,
            status_changed: None,
            last_updated: 1,
            password_changed: None,
            seq,
        }
    }

    fn file_dir() -> UserDirectory {
        UserDirectory::from_file_users(&[FileUser {
            username: "Alice".into(),
            password_hash: "$argon2id$...".into(),
            display_name: None,
            email: None,
            phone: None,
            groups: vec![],
            totp_secret: None,
        }])
    }

    #[test]
    fn stored_users_come_and_go_with_their_status_in_change_order() {
        let mut dir = file_dir();
        assert!(dir.apply_record(&record("00uD", "dana", UserStatus::Active, 3)));
        let d = dir.by_login("DANA").unwrap().clone();
        assert_eq!(d.display_name.as_deref(), Some("Dana Scully"));
        assert_eq!(d.phone.as_deref(), Some("+15555550100"));
        assert_eq!(d.groups, ["x"]);
        assert!(!d.from_file);
        // An older state read late changes nothing.
        dir.apply_record(&record("00uD", "dana", UserStatus::Suspended, 2));
        assert!(dir.get("00uD").is_some());
        // Suspended, then renamed and active again.
        dir.apply_record(&record("00uD", "dana", UserStatus::Suspended, 4));
        assert!(dir.get("00uD").is_none() && dir.by_login("dana").is_none());
        dir.apply_record(&record("00uD", "dana2", UserStatus::Active, 5));
        assert_eq!(dir.by_login("dana2").unwrap().id, "00uD");
        assert!(dir.by_login("dana").is_none());
        // Deleted; a late re-read of an older state does not bring it back.
        dir.apply_deleted("00uD", 6);
        dir.apply_record(&record("00uD", "dana2", UserStatus::Active, 5));
        assert!(dir.get("00uD").is_none() && dir.by_login("dana2").is_none());
        assert_eq!(dir.file_users().len(), 1);
    }

    fn dir_user(stable: &str, login: &str, groups: &[&str]) -> (User, ldap::DirectoryRef) {
        ldap::DirEntry {
            dn: format!("uid={login},dc=x"),
            stable_id: stable.into(),
            username: login.into(),
            display_name: None,
            email: None,
            phone: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            disabled: false,
        }
        .to_user()
    }

    #[test]
    fn directory_users_are_mirrored_by_stable_id_after_earlier_sources() {
        let mut dir = file_dir();
        dir.apply_record(&record("00uS", "sam", UserStatus::Active, 1));
        let (gone, shadowed) = dir.replace_directory_users(vec![
            dir_user("uuid-1", "dana", &["admins"]),
            dir_user("uuid-2", "alice", &[]),
            dir_user("uuid-3", "sam", &[]),
        ]);
        assert!(gone.is_empty());
        assert_eq!(shadowed, ["alice", "sam"], "file and API users own their logins");
        assert!(dir.by_login("alice").unwrap().from_file);
        assert_eq!(dir.by_login("sam").unwrap().id, "00uS");
        let dana = dir.by_login("dana").unwrap().clone();
        assert!(dir.is_directory(&dana.id));
        assert_eq!(dana.id, ldap::directory_user_id("uuid-1"));
        assert_eq!(dir.directory_users().len(), 1);
        assert_eq!(dir.read_only_users().len(), 2, "alice and dana");
        // Removed from a group; then recreated with a new stable id.
        dir.replace_directory_users(vec![dir_user("uuid-1", "dana", &[])]);
        assert!(dir.get(&dana.id).unwrap().groups.is_empty());
        let (gone, _) = dir.replace_directory_users(vec![dir_user("uuid-9", "dana", &[])]);
        assert_eq!(gone, std::slice::from_ref(&dana.id));
        assert!(dir.get(&dana.id).is_none(), "the old account's id is gone");
        assert_eq!(
            dir.by_login("dana").unwrap().id,
            ldap::directory_user_id("uuid-9")
        );
        // A sign-in of a renamed account moves its login.
        let (renamed, at) = dir_user("uuid-9", "dana2", &[]);
        assert!(dir.upsert_directory_user(renamed, at));
        assert!(dir.by_login("dana").is_none());
        assert!(dir.by_login("dana2").is_some());
    }

    #[test]
    fn a_reload_carries_stored_and_directory_users_and_the_new_file_wins() {
        let mut old = file_dir();
        old.apply_record(&record("00uS", "sam", UserStatus::Active, 4));
        old.apply_record(&record("00uT", "tess", UserStatus::Active, 5));
        old.apply_deleted("00uG", 6);
        old.replace_directory_users(vec![dir_user("uuid-1", "dana", &["admins"])]);
        old.set_directory_stale(true);
        let dana = ldap::directory_user_id("uuid-1");
        // The new users file adds tess, who now wins her login.
        let file = |extra: &[&str]| {
            let mut users = vec![hashed_user("Alice", "$argon2id$...".into())];
            users.extend(extra.iter().map(|n| hashed_user(n, "$argon2id$...".into())));
            UserDirectory::from_file_users(&users)
        };
        let mut new = file(&["tess"]);
        new.carry_from(&old, true);
        assert_eq!(new.by_login("sam").unwrap().id, "00uS");
        assert!(new.by_login("tess").unwrap().from_file, "the file wins");
        assert!(new.get("00uT").is_none());
        assert!(new.is_directory(&dana) && new.get(&dana).unwrap().groups == ["admins"]);
        assert!(new.directory_stale() && !new.directory_pending());
        // What the store said is remembered: an older state read late loses.
        new.apply_record(&record("00uG", "gone", UserStatus::Active, 3));
        assert!(new.get("00uG").is_none());
        new.apply_record(&record("00uS", "sam", UserStatus::Suspended, 2));
        assert!(new.get("00uS").is_some());
        // Another directory: its users are not carried, nor its state.
        let mut other = file(&[]);
        other.set_directory_pending(true);
        other.carry_from(&old, false);
        assert!(other.get(&dana).is_none() && other.directory_users().is_empty());
        assert!(other.directory_pending() && !other.directory_stale());
        assert_eq!(other.by_login("tess").unwrap().id, "00uT", "a stored user again");
    }

    #[test]
    fn the_users_file_wins_a_login() {
        let mut dir = file_dir();
        assert!(!dir.apply_record(&record("00uX", "ALICE", UserStatus::Active, 1)));
        assert!(dir.get("00uX").is_none());
        assert!(dir.by_login("alice").unwrap().from_file);
        dir.apply_deleted("00uX", 2);
        assert!(
            dir.by_login("alice").is_some(),
            "removing the stored user keeps the file's"
        );
    }

    #[tokio::test]
    async fn sync_follows_the_change_log() {
        let store: SharedStore = Arc::new(crate::store::memory::MemoryStore::new());
        let users: SharedUsers = Arc::new(std::sync::RwLock::new(file_dir()));
        let sync = UserSync::new();
        store
            .create_user(&record("00uA", "amy", UserStatus::Active, 0))
            .await
            .unwrap();
        store
            .create_user(&record("00uB", "ben", UserStatus::Staged, 0))
            .await
            .unwrap();
        sync.refresh(&store, &users).await.unwrap();
        assert!(users.read().unwrap().by_login("amy").is_some());
        assert!(
            users.read().unwrap().by_login("ben").is_none(),
            "staged users cannot sign in"
        );
        store.delete_user("00uA", 2).await.unwrap();
        let patch = crate::store::UserPatch {
            status: Some(UserStatus::Active),
            ..Default::default()
        };
        store.update_user("00uB", &patch, 3).await.unwrap();
        sync.refresh(&store, &users).await.unwrap();
        assert!(users.read().unwrap().by_login("amy").is_none());
        assert!(users.read().unwrap().by_login("ben").is_some());
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

    fn hashed_user(name: &str, hash: String) -> FileUser {
        FileUser {
            username: name.into(),
            password_hash: hash,
            display_name: None,
            email: None,
            phone: None,
            groups: vec![],
            totp_secret: None,
        }
    }

    /// A PHC string of the given cost (the salt and output are not checked
    /// here, only parsed).
    fn hash_of(m: u32, t: u32) -> String {
        format!("$argon2id$v=19$m={m},t={t},p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    }

    #[test]
    fn unknown_logins_imitate_the_users_costs_in_proportion_and_stably() {
        let mut dir = UserDirectory::default();
        assert_eq!(dir.cost_for_unknown("h:anyone"), None);
        let users: Vec<FileUser> = (0..3)
            .map(|i| hashed_user(&format!("u{i}"), hash_of(19456, 2)))
            .chain([hashed_user("heavy", hash_of(65536, 3))])
            .collect();
        dir = UserDirectory::from_file_users(&users);
        // A passwordless user and a stored user with the default cost.
        dir.insert(User {
            password_hash: None,
            ..(*dir.by_login("u0").unwrap().clone()).clone()
        });
        let mut stored = record("00uS", "stored", UserStatus::Active, 1);
        stored.password_hash = Some(hash_of(19456, 2));
        assert!(dir.apply_record(&stored));
        // Costs now: default × 3 (u1, u2, stored), heavy × 1.
        let light = HashCost::of(&hash_of(19456, 2)).unwrap();
        let heavy = HashCost::of(&hash_of(65536, 3)).unwrap();
        let picks: Vec<HashCost> = (0..4000)
            .map(|i| dir.cost_for_unknown(&format!("h:{i:032x}")).unwrap())
            .collect();
        let heavies = picks.iter().filter(|c| **c == heavy).count();
        assert!(
            (800..1200).contains(&heavies),
            "{heavies} of 4000 heavy, want ~1000"
        );
        assert!(picks.iter().all(|c| *c == heavy || *c == light));
        // The same login, the same cost, every time.
        for (i, pick) in picks.iter().enumerate().take(50) {
            let key = format!("h:{i:032x}");
            assert_eq!(dir.cost_for_unknown(&key).as_ref(), Some(pick));
        }
        // Counts follow removals: with the heavy user gone, only the default.
        dir.remove(&file_user_id("heavy"));
        assert!((0..200).all(|i| dir.cost_for_unknown(&format!("h:{i}")) == Some(light)));
        // A user replaced under the same id is counted once.
        let u1 = dir.by_login("u1").unwrap().clone();
        dir.insert(User {
            password_hash: Some(hash_of(65536, 3)),
            ..(*u1).clone()
        });
        assert_eq!(dir.hash_costs.get(&heavy), Some(&1));
        assert_eq!(dir.hash_costs.get(&light), Some(&2));
    }

    #[test]
    fn a_user_added_changes_the_cost_of_few_unknown_logins() {
        let users: Vec<FileUser> = (0..20)
            .map(|i| {
                hashed_user(
                    &format!("u{i}"),
                    if i < 10 {
                        hash_of(19456, 2)
                    } else {
                        hash_of(65536, 3)
                    },
                )
            })
            .collect();
        let mut dir = UserDirectory::from_file_users(&users);
        let keys: Vec<String> = (0..10_000).map(|i| format!("h:{i:032x}")).collect();
        let before: Vec<_> = keys.iter().map(|k| dir.cost_for_unknown(k)).collect();
        dir.insert(User {
            id: "00uNEW".into(),
            username: "new".into(),
            ..(*dir.by_login("u0").unwrap().clone()).clone()
        });
        let flipped = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| dir.cost_for_unknown(k) != **b)
            .count();
        // About 1 in 21 would be expected; a modulo pick re-rolls half.
        assert!(flipped < 1_000, "{flipped} of 10 000 unknown logins changed cost");
    }
}
