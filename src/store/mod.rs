//! Persistent state behind one trait family, with backends `memory`
//! ([`memory`]), `sqlite` ([`sqlite`], the default) and `postgres`
//! ([`postgres`], shared by several gateway replicas).
//!
//! Everything that must survive a restart or be shared between replicas goes
//! through [`Store`]: session revocations and user epochs, failure counters
//! and lockouts, factors and their sealed secrets, TOTP steps, recovery
//! codes, short-lived transactions (authentication state, challenges,
//! one-time tokens), and users created through the Users API with their
//! change log. Every backend runs the same conformance suite
//! (`store::conformance`), including the concurrency cases.
//!
//! Invariants every backend keeps:
//! - counters are incremented atomically: N concurrent failures count N;
//! - revocation events are returned in increasing `seq` order, and an event
//!   once visible is never lost (readers re-read a small overlap, see
//!   [`REVOCATION_OVERLAP`]);
//! - single-use things are consumed atomically, also across replicas: a TOTP
//!   step is claimed once, a recovery code used once, a transaction taken
//!   once, and of concurrent updates of one transaction version one wins;
//! - ids are never overwritten: inserting a factor or a transaction whose
//!   id exists fails and keeps the stored one;
//! - times are Unix seconds supplied by the caller, never read inside.

pub mod memory;
mod migrate;
pub mod notify;
mod pooled;
pub mod postgres;
pub mod sqlite;

/// The statements, rows and errors the SQL backends share.
mod sql;

#[cfg(test)]
pub(crate) mod conformance;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixTime;
use crate::config::{StoreConfig, StoreKind};

/// How far back (in sequence numbers) a revocation reader re-reads, so that an
/// event whose sequence number was allocated before, but committed after, a
/// later one is still seen (PostgreSQL sequences commit out of order).
pub const REVOCATION_OVERLAP: i64 = 1_000;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data is not what this build understands.
    #[error("store data invalid: {0}")]
    Corrupt(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A failure counter or lockout subject, e.g. `pw:{user}:{addr}`, tied to a
/// user (when there is one) so that unlocking the user clears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// The counter's full key.
    pub key: String,
    /// The user this counter concerns, if any.
    pub user_id: Option<String>,
}

impl CounterKey {
    /// A key that concerns a user.
    pub fn for_user(key: impl Into<String>, user_id: &str) -> Self {
        Self {
            key: key.into(),
            user_id: Some(user_id.to_owned()),
        }
    }
    /// A key that concerns no user (e.g. a client address).
    pub fn anonymous(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            user_id: None,
        }
    }
}

/// One change to what sessions are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationEvent {
    /// One session id was revoked (logout); it matters until `expires_at`.
    Session { sid: String, expires_at: UnixTime },
    /// A user's session epoch moved; sessions carrying an older one are invalid.
    Epoch { user_id: String, epoch: u64 },
}

/// Revocation events after a cursor, and the cursor to ask with next.
#[derive(Debug, Clone, Default)]
pub struct RevocationBatch {
    /// Events with `seq > cursor`, in increasing `seq` order.
    pub events: Vec<RevocationEvent>,
    /// The highest `seq` returned (or the cursor given, when none).
    pub cursor: i64,
    /// The store stopped at its batch limit: rows after `cursor` may be
    /// waiting, and a reader that must be complete asks again from there.
    pub more: bool,
}

/// A factor's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FactorStatus {
    /// Enrolled, waiting for its first code (or device) to prove possession.
    #[serde(rename = "PENDING_ACTIVATION")]
    PendingActivation,
    /// Usable for sign-in.
    #[serde(rename = "ACTIVE")]
    Active,
}

impl FactorStatus {
    /// The Okta spelling (`PENDING_ACTIVATION`, `ACTIVE`), also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            FactorStatus::PendingActivation => "PENDING_ACTIVATION",
            FactorStatus::Active => "ACTIVE",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING_ACTIVATION" => Some(FactorStatus::PendingActivation),
            "ACTIVE" => Some(FactorStatus::Active),
            _ => None,
        }
    }
}

/// A factor secret encrypted at rest (see `Sealer`, which seals and opens it): the id
/// of the key that sealed it and the sealed bytes (nonce + ciphertext + tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Identifies the encryption key (derived from the key, never the key).
    pub key_id: String,
    /// Nonce, ciphertext and tag.
    pub blob: Vec<u8>,
}

/// An enrolled factor as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorRecord {
    /// 20 characters, unique.
    pub id: String,
    pub user_id: String,
    /// `token:software:totp`, `sms`, `call`, `email`, `push`.
    pub factor_type: String,
    /// `GOOGLE` or `OKTA`.
    pub provider: String,
    pub status: FactorStatus,
    /// Type-specific profile (phone number, e-mail, device name and public key...).
    pub profile: serde_json::Value,
    /// The encrypted secret, for factors that have one (TOTP).
    pub secret: Option<SealedSecret>,
    pub created: UnixTime,
    pub last_updated: UnixTime,
}

/// A short-lived record shared by replicas: an authentication transaction
/// (`stateToken`), a one-time `sessionToken`, an OTP challenge, a push
/// transaction; also, never expiring, a users-file user's password
/// fingerprint (`crate::session::file_passwords`). `id` is what the caller
/// looks it up by (for bearer tokens, a hash of the token, never the token
/// itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionRecord {
    pub id: String,
    /// What it is (`authn`, `session_token`, ...); lookups name the kind they expect.
    pub kind: String,
    pub user_id: String,
    /// Kind-specific state.
    pub data: serde_json::Value,
    /// Bumped by every successful update (optimistic concurrency).
    pub version: i64,
    pub expires_at: UnixTime,
}

/// A user's stored lifecycle status (`LOCKED_OUT` is never stored: it is
/// derived from the user's lockouts when the user is shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Created with `activate=false`: cannot sign in yet.
    Staged,
    /// Can sign in.
    Active,
    /// Suspended by an administrator: cannot sign in.
    Suspended,
}

impl UserStatus {
    /// The Okta spelling, also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Staged => "STAGED",
            UserStatus::Active => "ACTIVE",
            UserStatus::Suspended => "SUSPENDED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "STAGED" => Some(UserStatus::Staged),
            "ACTIVE" => Some(UserStatus::Active),
            "SUSPENDED" => Some(UserStatus::Suspended),
            _ => None,
        }
    }
}

/// A user created through the Users API, as stored (users-file users are
/// never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// `00u` + 17 characters, unique, never reused.
    pub id: String,
    /// Unique among stored users, compared case-insensitively.
    pub login: String,
    pub status: UserStatus,
    /// The Okta profile object (`login`, `email`, `firstName`, ...), JSON.
    pub profile: serde_json::Value,
    /// argon2id PHC string; `None` for a user without a password.
    pub password_hash: Option<String>,
    pub created: UnixTime,
    pub activated: Option<UnixTime>,
    pub status_changed: Option<UnixTime>,
    pub last_updated: UnixTime,
    pub password_changed: Option<UnixTime>,
    /// The user's place in the change log: set by the store on every write
    /// (what the caller passes is ignored), increasing across all users.
    pub seq: i64,
}

/// A change to a stored user; `None` fields stay as they are. The store sets
/// `last_updated` (always), `password_changed` (with a password),
/// `status_changed` (when the status changes) and `activated` (the first
/// time the status becomes `ACTIVE`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPatch {
    /// A new login (with a new `profile`, whose `login` it should equal).
    pub login: Option<String>,
    pub profile: Option<serde_json::Value>,
    pub password_hash: Option<String>,
    pub status: Option<UserStatus>,
}

/// The outcome of writing a stored user.
#[derive(Debug, Clone, PartialEq)]
pub enum UserWrite {
    /// Written; the user as stored now.
    Written(UserRecord),
    /// No such user.
    NotFound,
    /// Another stored user has this login (case-insensitively).
    LoginTaken,
}

/// Stored users changed after a cursor, in increasing `seq` order, and the
/// cursor to ask with next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserChanges {
    /// Users created or updated (their current state).
    pub users: Vec<UserRecord>,
    /// Ids of users deleted, with the `seq` of their deletion.
    pub deleted: Vec<(String, i64)>,
    /// The highest `seq` returned (or the cursor given, when none).
    pub cursor: i64,
}

/// One audit event as stored (see `crate::audit`): the Okta System Log
/// object the API answers with, plus what queries filter and sort on.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The event's `uuid`, unique.
    pub uuid: String,
    /// When it happened, Unix milliseconds (the `published` of the body).
    pub published_ms: i64,
    /// The Okta `eventType`.
    pub event_type: String,
    /// Lower-cased text a `q` filter looks in (actor, targets, event type,
    /// message): never a secret.
    pub search: String,
    /// The System Log event object.
    pub body: serde_json::Value,
    /// Set by the store on insert (what the caller passes is ignored):
    /// breaks ties between events of one millisecond, for paging.
    pub seq: i64,
}

/// Where a page of audit events ended: the last event's time and `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub published_ms: i64,
    pub seq: i64,
}

/// Which audit events to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only events published at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only events published before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only events whose `search` text contains this (already lower-cased).
    pub q: Option<String>,
    /// At most this many.
    pub limit: u32,
    /// Only events after this cursor in the chosen order.
    pub after: Option<AuditCursor>,
    /// Newest first (else oldest first); ties by `seq` in the same direction.
    pub descending: bool,
}

/// The gateway's persistent state.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name (`memory`, `sqlite`, `postgres`) for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Succeeds when the backend answers a trivial query.
    async fn health(&self) -> StoreResult<()>;

    // ---- sessions -------------------------------------------------------

    /// Records that session `sid` is revoked until `expires_at` (its own expiry).
    async fn revoke_session(&self, sid: &str, expires_at: UnixTime) -> StoreResult<()>;

    /// Moves `user_id`'s session epoch forward and returns the new value.
    async fn bump_epoch(&self, user_id: &str) -> StoreResult<u64>;

    /// The current epoch of every user that has one (users without one are at 0).
    async fn epochs(&self) -> StoreResult<Vec<(String, u64)>>;

    /// Revocation events with `seq > cursor` whose relevance has not passed
    /// (`Session` events with `expires_at > now`; every `Epoch` event).
    async fn revocations_since(&self, cursor: i64, now: UnixTime) -> StoreResult<RevocationBatch>;

    // ---- regulation -----------------------------------------------------

    /// Adds one failure to `key`'s fixed window of `window` seconds and returns
    /// the count in the current window (a window older than `window` restarts at 1).
    async fn record_failure(&self, key: &CounterKey, window: i64, now: UnixTime) -> StoreResult<u32>;

    /// Forgets `key`'s failures.
    async fn clear_failures(&self, key: &str) -> StoreResult<()>;

    /// Takes one failure back from `key`'s count (never below zero): an
    /// attempt counted before it was checked turned out right.
    async fn forgive_failure(&self, key: &str) -> StoreResult<()>;

    /// Locks `key` until `until` (a later lock never shortens an existing one).
    async fn lock(&self, key: &CounterKey, until: UnixTime) -> StoreResult<()>;

    /// The latest `until` among the given keys' locks still in force at `now`.
    async fn locked_until(&self, keys: &[&str], now: UnixTime) -> StoreResult<Option<UnixTime>>;

    /// Clears every lock and failure counter tied to `user_id`; true if any existed.
    async fn unlock_user(&self, user_id: &str) -> StoreResult<bool>;

    // ---- factors --------------------------------------------------------

    /// Stores a new factor; fails (keeping the stored one) if its id exists.
    async fn insert_factor(&self, factor: &FactorRecord) -> StoreResult<()>;

    /// The factor `factor_id` if it belongs to `user_id`.
    async fn get_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<Option<FactorRecord>>;

    /// Every factor of `user_id`, oldest first.
    async fn list_factors(&self, user_id: &str) -> StoreResult<Vec<FactorRecord>>;

    /// Moves a `PENDING_ACTIVATION` factor of `user_id` to `ACTIVE`; false if
    /// there is no such pending factor.
    async fn activate_factor(&self, user_id: &str, factor_id: &str, now: UnixTime) -> StoreResult<bool>;

    /// Sets the profile and status of a factor of `user_id` (and its
    /// `last_updated` to `now`) if its status is still `expected`: a status
    /// guard, so of concurrent updates from one status one wins. The id,
    /// type, provider, secret and creation time stay. False if there is no
    /// such factor in that status (nothing changes then).
    async fn update_factor_profile(
        &self,
        user_id: &str,
        factor_id: &str,
        expected: FactorStatus,
        profile: &serde_json::Value,
        status: FactorStatus,
        now: UnixTime,
    ) -> StoreResult<bool>;

    /// Deletes a factor of `user_id` (and its TOTP step record); false if none.
    async fn delete_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool>;

    /// Deletes a factor of `user_id` only while it is `PENDING_ACTIVATION`
    /// (and its TOTP step record): a status guard, so a factor activated
    /// meanwhile stays. False if there is no such pending factor.
    async fn delete_pending_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool>;

    /// Records that TOTP time step `step` was used with `factor_id`. True only
    /// if `step` is later than every step used before: atomically, so the same
    /// code presented twice at once (on any replica) succeeds at most once.
    /// Works for factors that are not stored here (users-file TOTP) too.
    async fn claim_totp_step(&self, factor_id: &str, step: i64) -> StoreResult<bool>;

    /// The distinct key ids that sealed the stored factor secrets.
    async fn secret_key_ids(&self) -> StoreResult<Vec<String>>;

    /// Up to `limit` factors whose secret is sealed with a key other than `key_id`.
    async fn factors_sealed_with_other_keys(
        &self,
        key_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<FactorRecord>>;

    /// Replaces a factor's sealed secret if it is still `old` (compare and
    /// set, so rotation never overwrites a concurrent change); true if replaced.
    async fn replace_factor_secret(
        &self,
        factor_id: &str,
        old: &SealedSecret,
        new: &SealedSecret,
    ) -> StoreResult<bool>;

    // ---- recovery codes -------------------------------------------------

    /// Replaces all of `user_id`'s recovery codes with these hashes.
    async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Consumes one recovery code by its hash; true if it existed (atomically:
    /// a code is accepted once, even when presented twice at once).
    async fn use_recovery_code(&self, user_id: &str, hash: &str) -> StoreResult<bool>;

    /// How many unused recovery codes `user_id` has.
    async fn recovery_codes_left(&self, user_id: &str) -> StoreResult<u32>;

    // ---- transactions and one-time tokens -------------------------------

    /// Stores a new transaction; fails (keeping the stored one) if its id exists.
    async fn put_transaction(&self, t: &TransactionRecord) -> StoreResult<()>;

    /// The transaction `id` of `kind`, unless it has expired at `now`.
    async fn get_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>>;

    /// Writes `t` if the stored version still equals `t.version` (and it has not
    /// expired); the stored version becomes `t.version + 1`. False if another
    /// update won, or it is gone.
    async fn update_transaction(&self, t: &TransactionRecord, now: UnixTime) -> StoreResult<bool>;

    /// Deletes and returns the transaction (single use): of two concurrent
    /// takes, one gets it. Expired ones are not returned.
    async fn take_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>>;

    // ---- users (created through the Users API) --------------------------

    /// Stores a new user; `LoginTaken` if a stored user has its login
    /// (case-insensitively). An existing id is an error, as for factors.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<UserWrite>;

    /// The stored user `id`.
    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>>;

    /// The stored user whose login equals `login` case-insensitively.
    async fn get_user_by_login(&self, login: &str) -> StoreResult<Option<UserRecord>>;

    /// Up to `limit` stored users with ids greater than `after` (all when
    /// `None`), in id order (byte order), for paging.
    async fn list_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRecord>>;

    /// Applies `patch` to the stored user `id` at `now` (see [`UserPatch`]).
    async fn update_user(&self, id: &str, patch: &UserPatch, now: UnixTime) -> StoreResult<UserWrite>;

    /// Deletes the stored user `id` with their factors, TOTP steps and
    /// recovery codes, leaving a deletion entry in the change log; false if
    /// there was no such user.
    async fn delete_user(&self, id: &str, now: UnixTime) -> StoreResult<bool>;

    /// Users written or deleted with `seq > cursor`, at most `limit` entries,
    /// in increasing `seq` order (replicas keep their user directory fresh
    /// with it; on PostgreSQL they re-read an overlap, as for revocations).
    async fn users_changed_since(&self, cursor: i64, limit: u32) -> StoreResult<UserChanges>;

    // ---- audit events ----------------------------------------------------

    /// Appends audit events (one batch, one transaction where the backend
    /// has them). `seq` is assigned by the store, increasing.
    async fn insert_audit_events(&self, events: &[AuditRecord]) -> StoreResult<()>;

    /// Audit events matching `query`, ordered by (`published_ms`, `seq`),
    /// ascending or descending as asked.
    async fn query_audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>>;

    /// Deletes audit events published before `before_ms` (retention);
    /// returns how many.
    async fn purge_audit_events(&self, before_ms: i64) -> StoreResult<u64>;

    // ---- housekeeping ---------------------------------------------------

    /// Deletes rows whose relevance has passed (expired revocations, old counters,
    /// locks, expired transactions).
    async fn purge_expired(&self, now: UnixTime) -> StoreResult<()>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Opens the configured backend, creating or migrating its schema.
pub async fn open(config: &StoreConfig) -> StoreResult<SharedStore> {
    Ok(match &config.kind {
        StoreKind::Memory => Arc::new(memory::MemoryStore::new()) as SharedStore,
        StoreKind::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreKind::Postgres { url, listen_url } => {
            let url = url
                .expose_str()
                .ok_or_else(|| StoreError::Unavailable("store.url is not UTF-8".into()))?;
            let direct = listen_url
                .as_ref()
                .map(|u| {
                    u.expose_str()
                        .ok_or_else(|| StoreError::Unavailable("store.listen_url is not UTF-8".into()))
                })
                .transpose()?;
            match direct {
                // A separate direct URL: `store.url` may be a transaction-mode pooler.
                Some(direct) if direct != url => {
                    Arc::new(postgres::PostgresStore::connect_pooled(url, direct).await?)
                }
                _ => Arc::new(postgres::PostgresStore::connect(url).await?),
            }
        }
    })
}
