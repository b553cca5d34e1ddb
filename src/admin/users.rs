//! The Users API (`/api/v1/users...` on the admin listener), shaped like
//! Okta's.
//!
//! Two kinds of users answer here. Users of the users file are listed and
//! shown read-only (changing or deleting one answers 403 `E0000006`; their
//! logins cannot be created again: 400 `E0000001`). Users created here live
//! in the store; after each write this replica applies the new state to its
//! in-memory directory at once, and other replicas see it within
//! `session.revocation_check` (see [`crate::users::UserSync`]).
//!
//! Rules beyond Okta's shapes: passwords are hashed with argon2id on the
//! blocking pool and never logged; a password change, a suspension and a
//! deletion end the user's sessions (the session epoch moves); a single
//! `DELETE` deletes (Okta deactivates first). `LOCKED_OUT` is shown for an
//! `ACTIVE` user while a lockout is in force.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Admin;
use crate::api::{json, unavailable};
use crate::audit;
use crate::clock::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::factors;
use crate::ids::Ids;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::{UserPatch, UserRecord, UserStatus, UserWrite};
use crate::users::User;

/// Users per page when `limit` is not given, and the most a page holds.
pub const MAX_PAGE: u32 = 200;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Longest login accepted.
pub const MAX_LOGIN: usize = 100;

/// Profile properties the API accepts (Okta's base profile subset, plus
/// this gateway's `groups`, sent upstream in the groups header).
const PROFILE_KEYS: [&str; 6] = ["login", "email", "firstName", "lastName", "mobilePhone", "groups"];

/// A user as the API knows it.
#[derive(Debug, Clone)]
pub enum Subject {
    /// From the users file: read-only.
    File(Arc<User>),
    /// Created through this API.
    Stored(UserRecord),
}

impl Subject {
    /// The user's id.
    pub fn id(&self) -> &str {
        match self {
            Subject::File(u) => &u.id,
            Subject::Stored(r) => &r.id,
        }
    }

    /// The user as the factor code sees them.
    pub fn user(&self) -> User {
        match self {
            Subject::File(u) => u.as_ref().clone(),
            Subject::Stored(r) => User::from_record(r),
        }
    }

    /// The login.
    pub fn login(&self) -> &str {
        match self {
            Subject::File(u) => &u.username,
            Subject::Stored(r) => &r.login,
        }
    }
}

fn file_user(st: &AppState, key: &str) -> Option<Arc<User>> {
    let dir = st.enforcer.users.read().unwrap_or_else(|p| p.into_inner());
    dir.get(key)
        .or_else(|| dir.by_login(key))
        .filter(|u| u.from_file || dir.is_directory(&u.id))
        .cloned()
}

/// Finds a user by id or login: users-file users first, then the store.
pub async fn find(st: &AppState, key: &str) -> Result<Option<Subject>, crate::store::StoreError> {
    if let Some(u) = file_user(st, key) {
        return Ok(Some(Subject::File(u)));
    }
    if let Some(r) = st.store.get_user(key).await? {
        return Ok(Some(Subject::Stored(r)));
    }
    Ok(st.store.get_user_by_login(key).await?.map(Subject::Stored))
}

/// Finds the user of a path, or the answer to give (404, 503).
pub async fn subject(st: &AppState, key: &str) -> Result<Subject, Response> {
    match find(st, key).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(ApiError::new(ErrorCode::E0000007).into_response()),
        Err(e) => Err(unavailable(e)),
    }
}

fn read_only() -> Response {
    ApiError::new(ErrorCode::E0000006)
        .cause("users from the users file or the directory are read-only through the API")
        .into_response()
}

/// The stored user of a path; users-file users are refused (403).
async fn stored(st: &AppState, key: &str) -> Result<UserRecord, Response> {
    match subject(st, key).await? {
        Subject::Stored(r) => Ok(r),
        Subject::File(_) => Err(read_only()),
    }
}

/// The Okta status shown: `LOCKED_OUT` while an active user is locked.
async fn shown_status(st: &AppState, s: &Subject) -> Result<&'static str, Response> {
    let base = match s {
        Subject::File(_) => UserStatus::Active,
        Subject::Stored(r) => r.status,
    };
    if base == UserStatus::Active
        && st
            .regulator
            .user_locked(s.id())
            .await
            .map_err(unavailable)?
            .is_some()
    {
        return Ok("LOCKED_OUT");
    }
    Ok(base.as_str())
}

fn href(url: String) -> Value {
    json!({ "href": url })
}

fn post_link(url: String) -> Value {
    json!({ "href": url, "hints": { "allow": ["POST"] } })
}

/// The Okta user object. `full` adds the lifecycle links an individual
/// answer carries (a collection has only `self`, as in Okta).
pub fn user_json(origin: &str, s: &Subject, status: &str, full: bool) -> Value {
    let me = format!("{origin}/api/v1/users/{}", s.id());
    let (profile, times, has_password) = match s {
        Subject::File(u) => {
            let (first, last) = match u.display_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(n) => match n.rsplit_once(' ') {
                    Some((f, l)) => (Some(f.trim().to_owned()), Some(l.to_owned())),
                    None => (Some(n.to_owned()), None),
                },
                None => (None, None),
            };
            let profile = json!({
                "login": u.username,
                "email": u.email,
                "firstName": first,
                "lastName": last,
                "mobilePhone": u.phone,
                "groups": u.groups,
            });
            (profile, [None; 5], u.password_hash.is_some())
        }
        Subject::Stored(r) => {
            let mut profile = json!({
                "login": r.login,
                "email": null,
                "firstName": null,
                "lastName": null,
                "mobilePhone": null,
                "groups": [],
            });
            if let (Some(out), Some(stored)) = (profile.as_object_mut(), r.profile.as_object()) {
                for (k, v) in stored {
                    if k != "login" {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            let times = [
                Some(r.created),
                r.activated,
                r.status_changed,
                Some(r.last_updated),
                r.password_changed,
            ];
            (profile, times, r.password_hash.is_some())
        }
    };
    let t = |i: usize| times[i].map(rfc3339);
    let mut credentials = json!({ "provider": { "type": "OKTA", "name": "OKTA" } });
    if has_password {
        // Okta's way of saying "a password is set" without showing anything of it.
        credentials["password"] = json!({});
    }
    let mut links = json!({ "self": href(me.clone()) });
    if full {
        let stored = matches!(s, Subject::Stored(_));
        links["factors"] = href(format!("{me}/factors"));
        let lifecycle = |action: &str| post_link(format!("{me}/lifecycle/{action}"));
        match (status, stored) {
            ("STAGED", true) => links["activate"] = lifecycle("activate"),
            ("ACTIVE", true) => links["suspend"] = lifecycle("suspend"),
            ("SUSPENDED", true) => links["unsuspend"] = lifecycle("unsuspend"),
            ("LOCKED_OUT", _) => links["unlock"] = lifecycle("unlock"),
            _ => {}
        }
    }
    json!({
        "id": s.id(),
        "status": status,
        "created": t(0),
        "activated": t(1),
        "statusChanged": t(2),
        "lastLogin": null,
        "lastUpdated": t(3),
        "passwordChanged": t(4),
        "profile": profile,
        "credentials": credentials,
        "_links": links,
    })
}

async fn answer_user(st: &AppState, origin: &str, s: &Subject) -> Response {
    match shown_status(st, s).await {
        Ok(status) => json(StatusCode::OK, &user_json(origin, s, status, true)),
        Err(r) => r,
    }
}

// ---- validation ------------------------------------------------------------

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::new(ErrorCode::E0000003)),
    }
}

fn invalid(causes: Vec<String>) -> ApiError {
    causes
        .into_iter()
        .fold(ApiError::new(ErrorCode::E0000001), ApiError::cause)
}

fn validation(causes: Vec<String>) -> Response {
    invalid(causes).into_response()
}

fn login_exists() -> Response {
    validation(vec![
        "login: An object with this field already exists in the current organization".into(),
    ])
}

/// Most groups a user may be given through the API, and the longest name.
const MAX_GROUPS: usize = 100;
const MAX_GROUP_NAME: usize = 255;

/// Checks a profile object and returns it normalized (trimmed strings,
/// `null`s dropped) with its login. `base` is the profile being updated
/// (partial updates merge into it); `None` for a full profile.
pub(crate) fn check_profile(given: &Value, base: Option<&Value>) -> Result<(String, Value), ApiError> {
    let Some(given) = given.as_object() else {
        return Err(invalid(vec!["profile: must be an object".into()]));
    };
    let mut merged = base.and_then(|b| b.as_object().cloned()).unwrap_or_default();
    let mut causes = Vec::new();
    for (k, v) in given {
        if !PROFILE_KEYS.contains(&k.as_str()) {
            causes.push(format!(
                "profile.{k}: unknown property (accepted: {})",
                PROFILE_KEYS.join(", ")
            ));
            continue;
        }
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    let mut out = Map::new();
    let text = |k: &str, v: &Value, min: usize, max: usize, causes: &mut Vec<String>| -> Option<String> {
        match v.as_str().map(str::trim) {
            Some(t)
                if (min..=max).contains(&t.chars().count())
                    && !t.chars().any(crate::names::is_hidden_char) =>
            {
                Some(t.to_owned())
            }
            Some(_) => {
                causes.push(format!(
                    "{k}: must be {min} to {max} characters, without control or invisible characters"
                ));
                None
            }
            None => {
                causes.push(format!("{k}: must be a string"));
                None
            }
        }
    };
    let login = match merged.get("login") {
        Some(v) => {
            let login = text("login", v, 1, MAX_LOGIN, &mut causes);
            if login
                .as_deref()
                .is_some_and(|l| l.chars().any(char::is_whitespace))
            {
                causes.push("login: must not contain spaces".into());
            }
            login
        }
        None => {
            causes.push("login: The field cannot be left blank".into());
            None
        }
    };
    if let Some(v) = merged.get("email")
        && let Some(e) = text("email", v, 5, 100, &mut causes)
    {
        // The e-mail factor's own check: the address goes upstream in an
        // identity header, where `,` or `<` would read as a second address.
        match crate::factors::otp::normalize_email(&e) {
            Ok(e) => {
                out.insert("email".into(), json!(e));
            }
            Err(_) => causes.push("email: Does not match required pattern".into()),
        }
    }
    for (k, max) in [("firstName", 50), ("lastName", 50)] {
        if let Some(v) = merged.get(k)
            && let Some(t) = text(k, v, 1, max, &mut causes)
        {
            out.insert(k.into(), json!(t));
        }
    }
    // E.164, as the users file requires and SMS/call enrollment checks
    // (stored normalized: separators dropped).
    if let Some(v) = merged.get("mobilePhone")
        && let Some(t) = text("mobilePhone", v, 1, 100, &mut causes)
    {
        match crate::factors::otp::normalize_phone(&t) {
            Ok(phone) => {
                out.insert("mobilePhone".into(), json!(phone));
            }
            Err(cause) => causes.push(format!(
                "profile.mobilePhone{}",
                cause.strip_prefix("phoneNumber").unwrap_or(&cause)
            )),
        }
    }
    if let Some(v) = merged.get("groups") {
        match v.as_array() {
            Some(groups)
                if groups.len() <= MAX_GROUPS
                    && groups.iter().all(|g| {
                        g.as_str().is_some_and(|g| {
                            let g = g.trim();
                            !g.is_empty() && g.chars().count() <= MAX_GROUP_NAME && !g.chars().any(crate::names::is_hidden_char)
                        })
                    }) =>
            {
                let groups: Vec<&str> = groups.iter().filter_map(|g| g.as_str()).map(str::trim).collect();
                out.insert("groups".into(), json!(groups));
            }
            _ => causes.push(format!(
                "groups: must be an array of at most {MAX_GROUPS} names of 1 to {MAX_GROUP_NAME} characters, without control or invisible characters"
            )),
        }
    }
    match login {
        Some(login) if causes.is_empty() => {
            out.insert("login".into(), json!(login));
            Ok((login, Value::Object(out)))
        }
        _ => Err(invalid(causes)),
    }
}

/// The password in `credentials.password.value`, if any (checked).
fn check_password(body: &Map<String, Value>) -> Result<Option<Secret>, ApiError> {
    let Some(credentials) = body.get("credentials").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let password = credentials.get("password").filter(|p| !p.is_null());
    let Some(password) = password else {
        return Ok(None);
    };
    if password.get("hash").is_some() || password.get("hook").is_some() {
        return Err(invalid(vec![
            "credentials.password: only a value is accepted (no hash or hook)".into(),
        ]));
    }
    match password.get("value").and_then(Value::as_str) {
        Some(v) => check_password_value(v).map(Some).map_err(|c| invalid(vec![c])),
        None => Err(invalid(vec![
            "credentials.password.value: must be a string".into(),
        ])),
    }
}

/// Checks a new password (the API and the command line).
pub(crate) fn check_password_value(v: &str) -> Result<Secret, String> {
    if v.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "password: Password requirements were not met: at least {MIN_PASSWORD} characters"
        ));
    }
    if v.len() > crate::passwords::MAX_PASSWORD_LEN {
        return Err(format!(
            "password: at most {} bytes",
            crate::passwords::MAX_PASSWORD_LEN
        ));
    }
    Ok(Secret::new(v))
}

/// argon2id on the blocking pool (it is slow and memory-hard on purpose).
async fn hash(password: Secret) -> Result<String, Response> {
    let done = tokio::task::spawn_blocking(move || crate::passwords::hash_password(password.expose())).await;
    match done {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(unavailable(format!("hashing a password failed: {e}"))),
        Err(e) => Err(unavailable(format!("hashing a password failed: {e}"))),
    }
}

/// True when a users-file user (other than `except`) has this login.
fn file_login(st: &AppState, login: &str) -> bool {
    file_user(st, login).is_some()
}

/// Ends every session of a user (the epoch moves), here at once and on
/// other replicas at their next refresh.
async fn end_sessions(st: &AppState, user_id: &str) -> Result<(), Response> {
    let epoch = st.store.bump_epoch(user_id).await.map_err(unavailable)?;
    st.enforcer.revocations.note_epoch(user_id, epoch);
    Ok(())
}

// ---- operations shared with the command line ---------------------------------

/// Who acts on a user, for the audit log: an admin token (by index), the
/// `portcullis users ...` command line, or an administrator signed in to the
/// admin console (by login). Its `Display` is the audit log's `actor` field
/// (`admin`, `cli`, `console:<login>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Admin(usize),
    Cli,
    Console(String),
}

impl Actor {
    /// The kind of actor: `admin`, `cli` or `console`.
    pub fn name(&self) -> &'static str {
        match self {
            Actor::Admin(_) => "admin",
            Actor::Cli => "cli",
            Actor::Console(_) => "console",
        }
    }

    /// The admin token's index, if a token acted.
    pub fn token(&self) -> Option<usize> {
        match self {
            Actor::Admin(t) => Some(*t),
            Actor::Cli | Actor::Console(_) => None,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Console(login) => write!(f, "console:{login}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Where a user comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Api,
    Directory,
}

impl Source {
    /// How the command line names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
            Source::Directory => "directory",
        }
    }
}

/// The source of a user the API knows.
pub fn source_of(s: &Subject) -> Source {
    match s {
        Subject::Stored(_) => Source::Api,
        Subject::File(u) if u.from_file => Source::File,
        Subject::File(_) => Source::Directory,
    }
}

/// Why a user operation failed (the API and the command line each say it
/// their way).
#[derive(Debug)]
pub enum UserOpError {
    /// No user with that id or login.
    NotFound,
    /// The user is from the users file or the directory: change them there.
    ReadOnly(Source),
    /// The login is taken (in this source or an earlier one).
    LoginTaken(Source),
    /// No such factor of this user.
    FactorNotFound,
    /// The factor is provisioned by the users file.
    FactorReadOnly,
    Invalid(Vec<String>),
    Unavailable(String),
}

impl UserOpError {
    /// The Okta error answer.
    pub fn response(&self) -> Response {
        match self {
            UserOpError::NotFound | UserOpError::FactorNotFound => {
                ApiError::new(ErrorCode::E0000007).into_response()
            }
            UserOpError::ReadOnly(_) => read_only(),
            UserOpError::LoginTaken(_) => login_exists(),
            UserOpError::FactorReadOnly => ApiError::new(ErrorCode::E0000006)
                .cause("this factor is provisioned by the users file and is read-only")
                .into_response(),
            UserOpError::Invalid(causes) => validation(causes.clone()),
            UserOpError::Unavailable(e) => unavailable(e),
        }
    }
}

impl std::fmt::Display for UserOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserOpError::NotFound => {
                f.write_str("no such user (not in the users file, the store or the directory)")
            }
            UserOpError::ReadOnly(Source::File) => f.write_str(
                "the user is defined in the users file (users.file): remove or change them there, then reload",
            ),
            UserOpError::ReadOnly(_) => f.write_str(
                "the user comes from the directory (users.ldap): remove or disable them in the directory",
            ),
            UserOpError::LoginTaken(s) => write!(f, "the login already exists (source: {})", s.as_str()),
            UserOpError::FactorNotFound => f.write_str("the user has no factor with that id"),
            UserOpError::FactorReadOnly => f.write_str(
                "the factor is provisioned by the users file (its `totp` entry): remove it there",
            ),
            UserOpError::Invalid(causes) => f.write_str(&causes.join("; ")),
            UserOpError::Unavailable(e) => write!(f, "the store: {e}"),
        }
    }
}

fn unavailable_op(e: impl std::fmt::Display) -> UserOpError {
    UserOpError::Unavailable(e.to_string())
}

/// Every user of every source: the users file and the directory (as this
/// replica knows them), then the store's, read page by page.
pub async fn every_user(st: &AppState) -> Result<Vec<Subject>, crate::store::StoreError> {
    let mut subjects: Vec<Subject> = st
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .read_only_users()
        .into_iter()
        .map(Subject::File)
        .collect();
    let mut after: Option<String> = None;
    loop {
        let page = st.store.list_users(after.as_deref(), MAX_PAGE).await?;
        let full = page.len() == MAX_PAGE as usize;
        after = page.last().map(|r| r.id.clone());
        subjects.extend(page.into_iter().map(Subject::Stored));
        if !full {
            return Ok(subjects);
        }
    }
}

/// Finds a user by id or login, or [`UserOpError::NotFound`].
pub async fn find_subject(st: &AppState, key: &str) -> Result<Subject, UserOpError> {
    match find(st, key).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(UserOpError::NotFound),
        Err(e) => Err(unavailable_op(e)),
    }
}

/// The stored (API) user `key`; users-file and directory users are refused.
async fn stored_op(st: &AppState, key: &str) -> Result<UserRecord, UserOpError> {
    match find_subject(st, key).await? {
        Subject::Stored(r) => Ok(r),
        s @ Subject::File(_) => Err(UserOpError::ReadOnly(source_of(&s))),
    }
}

/// The source other than the store that holds `login`, if any: the users
/// file or the directory. Before the directory's first full read (the
/// command line; a gateway just started) the directory is asked directly.
async fn login_elsewhere(st: &AppState, login: &str) -> Result<Option<Source>, UserOpError> {
    if let Some(u) = file_user(st, login) {
        return Ok(Some(if u.from_file {
            Source::File
        } else {
            Source::Directory
        }));
    }
    let pending = st
        .enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .directory_pending();
    if pending && let Some(dir) = &st.directory {
        return match dir.find(login).await {
            Ok(Some(_)) => Ok(Some(Source::Directory)),
            Ok(None) => Ok(None),
            Err(e) => Err(UserOpError::Unavailable(format!("the directory: {e}"))),
        };
    }
    Ok(None)
}

/// Creates a stored user (the password, if any, is hashed here).
pub async fn create_user(
    st: &AppState,
    login: String,
    profile: Value,
    password: Option<Secret>,
    active: bool,
    actor: Actor,
) -> Result<UserRecord, UserOpError> {
    if let Some(source) = login_elsewhere(st, &login).await? {
        return Err(UserOpError::LoginTaken(source));
    }
    let password_hash = match password {
        Some(p) => Some(hash_op(p).await?),
        None => None,
    };
    let now = st.clock.now();
    let record = UserRecord {
        id: format!("00u{}", crate::crypto::random_id(17)),
        login,
        status: if active {
            UserStatus::Active
        } else {
            UserStatus::Staged
        },
        profile,
        password_changed: password_hash.as_ref().map(|_| now),
        password_hash,
        created: now,
        activated: active.then_some(now),
        status_changed: active.then_some(now),
        last_updated: now,
        seq: 0,
    };
    match st.store.create_user(&record).await {
        Ok(UserWrite::Written(r)) => {
            crate::users::apply_record(&st.enforcer.users, &r);
            audit!("admin.user.created", user = %r.login, user_id = %r.id, status = r.status.as_str(), actor = %actor, token = actor.token());
            Ok(r)
        }
        Ok(_) => Err(UserOpError::LoginTaken(Source::Api)),
        Err(e) => Err(unavailable_op(e)),
    }
}

/// Deletes a stored user (with their factors and recovery codes) and ends
/// their sessions.
pub async fn delete_user(st: &AppState, key: &str, actor: Actor) -> Result<UserRecord, UserOpError> {
    let r = stored_op(st, key).await?;
    match st.store.delete_user(&r.id, st.clock.now()).await {
        Ok(true) => {}
        Ok(false) => return Err(UserOpError::NotFound),
        Err(e) => return Err(unavailable_op(e)),
    }
    // Deleted ids are never reused: no later state of this id can exist.
    crate::users::apply_deleted(&st.enforcer.users, &r.id, i64::MAX);
    end_sessions_op(st, &r.id).await?;
    audit!("admin.user.deleted", user = %r.login, user_id = %r.id, actor = %actor, token = actor.token());
    Ok(r)
}

/// Clears the user's lockouts; true if one was in force.
pub async fn unlock_user(st: &AppState, key: &str, actor: Actor) -> Result<(Subject, bool), UserOpError> {
    let s = find_subject(st, key).await?;
    let was_locked = st.regulator.unlock(s.id()).await.map_err(unavailable_op)?;
    audit!("user.unlocked", user = %s.login(), user_id = %s.id(), actor = %actor, token = actor.token(), was_locked = was_locked);
    Ok((s, was_locked))
}

/// What a factor reset did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactorReset {
    /// The ids of the removed factors.
    pub removed: Vec<String>,
    /// Factors provisioned by the users file (left alone).
    pub read_only: usize,
}

/// Removes every factor of a user (or only `factor`), the last active one
/// included, and ends their sessions: the helpdesk's "lost phone". With
/// `users.enrollment = "first_login"` the user enrolls again at the next
/// sign-in. Factors provisioned by the users file stay (read-only).
pub async fn reset_factors(
    st: &AppState,
    key: &str,
    factor: Option<&str>,
    actor: Actor,
) -> Result<(Subject, FactorReset), UserOpError> {
    let s = find_subject(st, key).await?;
    let user = s.user();
    let mut all = factors::list(st, &user).await.map_err(unavailable_op)?;
    if let Some(id) = factor {
        match all.iter().find(|f| f.record.id == id) {
            Some(f) if f.from_config => return Err(UserOpError::FactorReadOnly),
            Some(_) => {}
            None => return Err(UserOpError::FactorNotFound),
        }
    }
    // Sessions end first, then the factors are read again: a session of the
    // user's (perhaps an attacker's) cannot add a factor the reset misses.
    end_sessions_op(st, s.id()).await?;
    if factor.is_none() {
        all = factors::list(st, &user).await.map_err(unavailable_op)?;
    }
    let mut reset = FactorReset::default();
    let chosen: Vec<&factors::Factor> = match factor {
        Some(id) => all.iter().filter(|f| f.record.id == id).collect(),
        None => {
            reset.read_only = all.iter().filter(|f| f.from_config).count();
            all.iter().filter(|f| !f.from_config).collect()
        }
    };
    for f in chosen {
        match factors::remove_by(
            st,
            &user,
            &f.record.id,
            &actor.to_string(),
            factors::Remover::Administrator,
        )
        .await
        {
            Ok(_) | Err(factors::RemoveError::NotFound) => reset.removed.push(f.record.id.clone()),
            Err(factors::RemoveError::ReadOnly) => reset.read_only += 1,
            Err(factors::RemoveError::LastFactor) => {
                return Err(UserOpError::Unavailable("the last factor was kept".into()));
            }
            Err(factors::RemoveError::Unavailable) => {
                return Err(UserOpError::Unavailable("removing a factor failed".into()));
            }
        }
    }
    audit!("user.factors.reset", user = %s.login(), user_id = %s.id(), removed = reset.removed.len(), factor_id = factor, actor = %actor, token = actor.token());
    Ok((s, reset))
}

/// Ends every session of a user (the session epoch moves): the admin API's
/// `DELETE /api/v1/users/{id}/sessions` and the console's "sign out everywhere".
pub async fn revoke_sessions_of(st: &AppState, key: &str, actor: Actor) -> Result<Subject, UserOpError> {
    let s = find_subject(st, key).await?;
    end_sessions_op(st, s.id()).await?;
    audit!("sessions.revoked", user = %s.login(), user_id = %s.id(), actor = %actor, token = actor.token());
    Ok(s)
}

async fn hash_op(password: Secret) -> Result<String, UserOpError> {
    let done = tokio::task::spawn_blocking(move || crate::passwords::hash_password(password.expose())).await;
    match done {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(UserOpError::Unavailable(format!(
            "hashing a password failed: {e}"
        ))),
        Err(e) => Err(UserOpError::Unavailable(format!(
            "hashing a password failed: {e}"
        ))),
    }
}

async fn end_sessions_op(st: &AppState, user_id: &str) -> Result<(), UserOpError> {
    let epoch = st.store.bump_epoch(user_id).await.map_err(unavailable_op)?;
    st.enforcer.revocations.note_epoch(user_id, epoch);
    Ok(())
}

// ---- handlers ---------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
pub struct CreateQuery {
    activate: Option<bool>,
}

/// `POST /api/v1/users?activate=true`: creates a user, with or without a password.
pub async fn create(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> Response {
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (login, profile) = match check_profile(body.get("profile").unwrap_or(&Value::Null), None) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let password = match check_password(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let active = q.activate.unwrap_or(true);
    match create_user(&st, login, profile, password, active, Actor::Admin(admin.token)).await {
        Ok(r) => answer_user(&st, &admin.origin, &Subject::Stored(r)).await,
        Err(e) => e.response(),
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
    q: Option<String>,
    filter: Option<String>,
    search: Option<String>,
}

/// `GET /api/v1/users?limit=&after=`: users-file and stored users in id
/// order, paged with `Link: <...>; rel="next"`.
pub async fn list(admin: Admin, State(st): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    if q.q.is_some() || q.filter.is_some() || q.search.is_some() {
        return validation(vec![
            "q, filter and search are not supported: page with limit and after".into(),
        ]);
    }
    let limit = match q.limit.as_deref().map(str::parse::<u32>) {
        None => MAX_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => return validation(vec![format!("limit: must be a number from 1 to {MAX_PAGE}")]),
    };
    let after = q.after.filter(|a| !a.is_empty());
    let files: Vec<Arc<User>> = st
        .enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .read_only_users()
        .into_iter()
        .filter(|u| after.as_deref().is_none_or(|a| u.id.as_str() > a))
        .collect();
    let stored = match st.store.list_users(after.as_deref(), limit + 1).await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    let mut page: Vec<Subject> = files
        .into_iter()
        .map(Subject::File)
        .chain(stored.into_iter().map(Subject::Stored))
        .collect();
    page.sort_by(|a, b| a.id().cmp(b.id()));
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let mut out = Vec::with_capacity(page.len());
    for s in &page {
        match shown_status(&st, s).await {
            Ok(status) => out.push(user_json(&admin.origin, s, status, false)),
            Err(r) => return r,
        }
    }
    audit!("admin.users.listed", count = out.len(), token = admin.token);
    let base = format!("{}/api/v1/users", admin.origin);
    let enc =
        |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let self_link = match &after {
        Some(a) => format!("<{base}?limit={limit}&after={}>; rel=\"self\"", enc(a)),
        None => format!("<{base}?limit={limit}>; rel=\"self\""),
    };
    let mut res = json(StatusCode::OK, &Value::Array(out));
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&self_link) {
        h.append(header::LINK, v);
    }
    if more && let Some(last) = page.last() {
        let next = format!("<{base}?limit={limit}&after={}>; rel=\"next\"", enc(last.id()));
        if let Ok(v) = HeaderValue::from_str(&next) {
            h.append(header::LINK, v);
        }
    }
    res
}

/// `GET /api/v1/users/{id or login}`.
pub async fn get(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    let s = match subject(&st, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    audit!("admin.user.read", user = %s.login(), token = admin.token);
    answer_user(&st, &admin.origin, &s).await
}

/// `POST /api/v1/users/{id}`: partial update (given profile properties
/// replace stored ones, `null` removes one; `credentials.password.value`).
pub async fn update(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(id): Ids<String>,
    body: Bytes,
) -> Response {
    change(&st, &admin, &id, &body, true).await
}

/// `PUT /api/v1/users/{id}`: replaces the profile, the password, or both
/// (a body with neither is refused).
pub async fn replace(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(id): Ids<String>,
    body: Bytes,
) -> Response {
    change(&st, &admin, &id, &body, false).await
}

async fn change(st: &AppState, admin: &Admin, id: &str, body: &[u8], partial: bool) -> Response {
    let current = match stored(st, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let password = match check_password(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut patch = UserPatch::default();
    match body.get("profile").filter(|p| !p.is_null()) {
        Some(given) => {
            let base = partial.then_some(&current.profile);
            let (login, profile) = match check_profile(given, base) {
                Ok(x) => x,
                Err(e) => return e.into_response(),
            };
            if login.to_lowercase() != current.login.to_lowercase() && file_login(st, &login) {
                return login_exists();
            }
            patch.login = Some(login);
            patch.profile = Some(profile);
        }
        // Okta's PUT replaces the profile, the credentials or both: without
        // a profile, a new password alone keeps the stored one.
        None if !partial && password.is_none() => {
            return validation(vec![
                "profile: The field cannot be left blank (or give credentials.password.value)".into(),
            ]);
        }
        None => {}
    }
    if let Some(p) = password {
        match hash(p).await {
            Ok(h) => patch.password_hash = Some(h),
            Err(r) => return r,
        }
    }
    let password_changed = patch.password_hash.is_some();
    match st.store.update_user(&current.id, &patch, st.clock.now()).await {
        Ok(UserWrite::Written(r)) => {
            if password_changed && let Err(res) = end_sessions(st, &r.id).await {
                return res;
            }
            crate::users::apply_record(&st.enforcer.users, &r);
            audit!("admin.user.updated", user = %r.login, user_id = %r.id, password_changed = password_changed, token = admin.token);
            answer_user(st, &admin.origin, &Subject::Stored(r)).await
        }
        Ok(UserWrite::NotFound) => ApiError::new(ErrorCode::E0000007).into_response(),
        Ok(UserWrite::LoginTaken) => login_exists(),
        Err(e) => unavailable(e),
    }
}

/// `DELETE /api/v1/users/{id}`: deletes a stored user at once (with their
/// factors and recovery codes) and ends their sessions.
pub async fn delete(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    match delete_user(&st, &id, Actor::Admin(admin.token)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.response(),
    }
}

/// Moves a stored user from `from` to `to`; `end` ends their sessions.
async fn transition(
    st: &AppState,
    admin: &Admin,
    id: &str,
    from: UserStatus,
    to: UserStatus,
    event: &'static str,
) -> Response {
    let r = match stored(st, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if r.status != from {
        return ApiError::new(ErrorCode::E0000079)
            .cause(format!(
                "the user is {}, not {}",
                r.status.as_str(),
                from.as_str()
            ))
            .into_response();
    }
    let patch = UserPatch {
        status: Some(to),
        ..UserPatch::default()
    };
    match st.store.update_user(&r.id, &patch, st.clock.now()).await {
        Ok(UserWrite::Written(r)) => {
            if to != UserStatus::Active
                && let Err(res) = end_sessions(st, &r.id).await
            {
                return res;
            }
            crate::users::apply_record(&st.enforcer.users, &r);
            audit!("admin.user.lifecycle", action = event, user = %r.login, user_id = %r.id, token = admin.token);
            json(StatusCode::OK, &json!({}))
        }
        Ok(UserWrite::NotFound) => ApiError::new(ErrorCode::E0000007).into_response(),
        Ok(UserWrite::LoginTaken) => login_exists(),
        Err(e) => unavailable(e),
    }
}

/// `POST /api/v1/users/{id}/lifecycle/activate`: `STAGED` to `ACTIVE`.
pub async fn activate(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    transition(
        &st,
        &admin,
        &id,
        UserStatus::Staged,
        UserStatus::Active,
        "activated",
    )
    .await
}

/// `POST /api/v1/users/{id}/lifecycle/suspend`: `ACTIVE` to `SUSPENDED` (sessions end).
pub async fn suspend(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    transition(
        &st,
        &admin,
        &id,
        UserStatus::Active,
        UserStatus::Suspended,
        "suspended",
    )
    .await
}

/// `POST /api/v1/users/{id}/lifecycle/unsuspend`: `SUSPENDED` to `ACTIVE`.
pub async fn unsuspend(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    transition(
        &st,
        &admin,
        &id,
        UserStatus::Suspended,
        UserStatus::Active,
        "unsuspended",
    )
    .await
}

/// `POST /api/v1/users/{id}/lifecycle/unlock`: clears the user's lockouts.
pub async fn unlock(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    match unlock_user(&st, &id, Actor::Admin(admin.token)).await {
        Ok(_) => json(StatusCode::OK, &json!({})),
        Err(e) => e.response(),
    }
}

/// `POST /api/v1/users/{id}/lifecycle/reset_factors`: removes every factor
/// of the user, the last one included, and ends their sessions; the user
/// enrolls again at the next sign-in (`users.enrollment = "first_login"`).
pub async fn reset(admin: Admin, State(st): State<Arc<AppState>>, Ids(id): Ids<String>) -> Response {
    match reset_factors(&st, &id, None, Actor::Admin(admin.token)).await {
        Ok(_) => json(StatusCode::OK, &json!({})),
        Err(e) => e.response(),
    }
}

/// `DELETE /api/v1/users/{id}/sessions`: ends every session of the user.
pub async fn revoke_sessions(
    admin: Admin,
    State(st): State<Arc<AppState>>,
    Ids(id): Ids<String>,
) -> Response {
    match revoke_sessions_of(&st, &id, Actor::Admin(admin.token)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_checked_and_normalized() {
        let (login, p) = check_profile(
            &json!({ "login": " dana@example.com ", "email": "dana@example.com", "firstName": "Dana", "lastName": null, "groups": ["a"] }),
            None,
        )
        .unwrap();
        assert_eq!(login, "dana@example.com");
        assert_eq!(
            p,
            json!({ "login": "dana@example.com", "email": "dana@example.com", "firstName": "Dana", "groups": ["a"] })
        );
        assert!(
            check_profile(&json!({ "email": "x@example.com" }), None).is_err(),
            "login required"
        );
        assert!(check_profile(&json!({ "login": "a b" }), None).is_err());
        assert!(check_profile(&json!({ "login": "ab", "email": "nope" }), None).is_err());
        assert!(check_profile(&json!({ "login": "ab", "nickName": "x" }), None).is_err());
        assert!(check_profile(&json!({ "login": "ab", "firstName": "" }), None).is_err());
        // A partial update merges, and null removes.
        let (_, p) = check_profile(&json!({ "firstName": null, "lastName": "Y" }), Some(&p)).unwrap();
        assert_eq!(p["lastName"], "Y");
        assert!(p.get("firstName").is_none());
        assert_eq!(p["login"], "dana@example.com");
    }

    #[test]
    fn passwords_are_checked() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_password(&body(json!({}))).unwrap().is_none());
        assert!(
            check_password(&body(
                json!({ "credentials": { "password": { "value": "short" } } })
            ))
            .is_err()
        );
        assert!(check_password(&body(json!({ "credentials": { "password": { "hash": {} } } }))).is_err());
        let p = check_password(&body(
            json!({ "credentials": { "password": { "value": "long enough" } } }),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.expose(), b"long enough");
    }
}
