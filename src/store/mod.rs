//! Persistent state behind one trait family, with backends `memory`
//! ([`memory`]), `sqlite` ([`sqlite`], the default) and `postgres`
//! ([`postgres`], shared by several gateway replicas).
//!
//! Everything that must survive a restart or be shared between replicas goes
//! through [`Store`]: session revocations and user epochs, failure counters
//! and lockouts (and, as the factor issues land, factors, challenges and
//! one-time tokens). Every backend runs the same conformance suite
//! (`store::conformance`), including the concurrency cases.
//!
//! Invariants every backend keeps:
//! - counters are incremented atomically: N concurrent failures count N;
//! - revocation events are returned in increasing `seq` order, and an event
//!   once visible is never lost (readers re-read a small overlap, see
//!   [`REVOCATION_OVERLAP`]);
//! - times are Unix seconds supplied by the caller, never read inside.

pub mod memory;
mod migrate;
pub mod postgres;
pub mod sqlite;

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

    /// Locks `key` until `until` (a later lock never shortens an existing one).
    async fn lock(&self, key: &CounterKey, until: UnixTime) -> StoreResult<()>;

    /// The latest `until` among the given keys' locks still in force at `now`.
    async fn locked_until(&self, keys: &[&str], now: UnixTime) -> StoreResult<Option<UnixTime>>;

    /// Clears every lock and failure counter tied to `user_id`; true if any existed.
    async fn unlock_user(&self, user_id: &str) -> StoreResult<bool>;

    // ---- housekeeping ---------------------------------------------------

    /// Deletes rows whose relevance has passed (expired revocations, old counters, locks).
    async fn purge_expired(&self, now: UnixTime) -> StoreResult<()>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Opens the configured backend, creating or migrating its schema.
pub async fn open(config: &StoreConfig) -> StoreResult<SharedStore> {
    Ok(match &config.kind {
        StoreKind::Memory => Arc::new(memory::MemoryStore::new()) as SharedStore,
        StoreKind::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreKind::Postgres { url } => {
            let url = url
                .expose_str()
                .ok_or_else(|| StoreError::Unavailable("store.url is not UTF-8".into()))?;
            Arc::new(postgres::PostgresStore::connect(url).await?)
        }
    })
}
