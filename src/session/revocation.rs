//! What this replica knows about revoked sessions and user epochs.
//!
//! Checking a session must not cost a store round trip, so each replica keeps
//! the revocation log in memory and refreshes it from the store every half
//! `revocation_check`. Changes made by this replica are applied locally at
//! once; changes made by another replica arrive with the next refresh. If no
//! refresh has succeeded for longer than `revocation_check`, the view is
//! stale and [`RevocationView::check`] answers `Unavailable`: protected routes
//! then fail closed with 503 rather than trust what may be out of date.

use foldhash::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{SessionClaims, SessionReject};
use crate::clock::UnixTime;
use crate::store::{REVOCATION_OVERLAP, RevocationEvent, SharedStore, StoreResult};

#[derive(Debug, Default)]
struct State {
    /// Revoked session ids and when they would have expired anyway.
    revoked: HashMap<String, UnixTime>,
    /// Current epoch per user (absent = 0).
    epochs: HashMap<String, u64>,
    cursor: i64,
    last_ok: Option<Instant>,
}

/// The in-memory revocation view.
///
/// A reload hands the view on to the gateway it builds (see
/// [`crate::gateway::Gateway::rebuild`]), so what this replica knows, and how
/// fresh it is, survives the swap; only `revocation_check` may change.
#[derive(Debug)]
pub struct RevocationView {
    state: RwLock<State>,
    /// `revocation_check`, in nanoseconds.
    max_staleness: AtomicU64,
}

impl RevocationView {
    /// An empty view that is stale until its first successful refresh.
    pub fn new(max_staleness: Duration) -> Self {
        Self {
            state: RwLock::new(State::default()),
            max_staleness: AtomicU64::new(nanos(max_staleness)),
        }
    }

    /// Applies a reloaded `revocation_check`.
    pub fn set_max_staleness(&self, max_staleness: Duration) {
        self.max_staleness.store(nanos(max_staleness), Ordering::Relaxed);
    }

    fn max_staleness(&self) -> Duration {
        Duration::from_nanos(self.max_staleness.load(Ordering::Relaxed))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that `claims` is neither revoked nor from an old epoch, and that
    /// the view is fresh enough to say so at `now_instant`.
    pub fn check(&self, claims: &SessionClaims, now_instant: Instant) -> Result<(), SessionReject> {
        let s = self.read();
        match s.last_ok {
            Some(t) if now_instant.saturating_duration_since(t) <= self.max_staleness() => {}
            _ => return Err(SessionReject::Unavailable),
        }
        // The session id (replaced by a later step, or signed out) or its
        // whole sign-in (signed out).
        if s.revoked.contains_key(&claims.sid) || s.revoked.contains_key(&claims.sin) {
            return Err(SessionReject::Revoked);
        }
        if claims.ep < s.epochs.get(&claims.uid).copied().unwrap_or(0) {
            return Err(SessionReject::Revoked);
        }
        Ok(())
    }

    /// True while the view is fresh enough to trust.
    pub fn is_fresh(&self, now_instant: Instant) -> bool {
        self.read()
            .last_ok
            .is_some_and(|t| now_instant.saturating_duration_since(t) <= self.max_staleness())
    }

    /// The user's current epoch, for a session being issued.
    pub fn epoch(&self, user_id: &str) -> u64 {
        self.read().epochs.get(user_id).copied().unwrap_or(0)
    }

    /// Records a revocation of a session id or sign-in id done by this
    /// replica (already written to the store).
    pub fn note_revoked(&self, sid: &str, expires_at: UnixTime) {
        keep_revoked(&mut self.write().revoked, sid.to_owned(), expires_at);
    }

    /// Records an epoch change done by this replica (already written to the store).
    pub fn note_epoch(&self, user_id: &str, epoch: u64) {
        let mut s = self.write();
        let e = s.epochs.entry(user_id.to_owned()).or_insert(0);
        *e = (*e).max(epoch);
    }

    /// Pulls new revocation events from the store. On the first call it also
    /// loads every user's epoch. On failure the view keeps what it knew and
    /// its freshness runs down.
    pub async fn refresh(&self, store: &SharedStore, now: UnixTime, now_instant: Instant) -> StoreResult<()> {
        let first = {
            let s = self.read();
            s.last_ok.is_none() && s.cursor == 0
        };
        let epochs = if first { Some(store.epochs().await?) } else { None };
        self.pull(store, now, epochs).await?;
        self.write().last_ok = Some(now_instant);
        Ok(())
    }

    /// Pulls the revocation events written since the last refresh, now,
    /// without vouching for the view's freshness (only the refresher does:
    /// at start-up it has other checks to finish first). Called before a
    /// session changes what outlives it (adds or removes a factor), so one
    /// that another replica ended a moment ago cannot.
    /// Before the first refresh it is an error (that one loads every epoch
    /// first, and a cursor moved here would skip it).
    pub async fn catch_up(&self, store: &SharedStore, now: UnixTime) -> StoreResult<()> {
        if self.read().last_ok.is_none() {
            return Err(crate::store::StoreError::Unavailable(
                "the revocation view has not been loaded yet".into(),
            ));
        }
        self.pull(store, now, None).await
    }

    async fn pull(
        &self,
        store: &SharedStore,
        now: UnixTime,
        epochs: Option<Vec<(String, u64)>>,
    ) -> StoreResult<()> {
        if let Some(epochs) = epochs {
            let mut s = self.write();
            for (uid, ep) in epochs {
                let e = s.epochs.entry(uid).or_insert(0);
                *e = (*e).max(ep);
            }
        }
        // Every page the store has: a view far behind (a new replica, a long
        // outage) must not call itself fresh after reading only the oldest
        // batch of a long log.
        loop {
            let cursor = self.read().cursor;
            // Re-read a little behind the cursor: sequence numbers can become
            // visible out of order on PostgreSQL; applying an event twice is
            // harmless.
            let batch = store
                .revocations_since((cursor - REVOCATION_OVERLAP).max(0), now)
                .await?;
            let (more, advanced) = (batch.more, batch.cursor > cursor);
            self.apply(batch);
            if !more {
                self.write().revoked.retain(|_, exp| *exp > now);
                return Ok(());
            }
            // A full batch that did not move the cursor (a store limit no
            // larger than the overlap) would be read again forever, and the
            // rest never: not complete, so not fresh.
            if !advanced {
                return Err(crate::store::StoreError::Unavailable(
                    "the revocation log did not advance past a full batch".into(),
                ));
            }
        }
    }

    fn apply(&self, batch: crate::store::RevocationBatch) {
        let mut s = self.write();
        for ev in batch.events {
            match ev {
                RevocationEvent::Session { sid, expires_at } => {
                    keep_revoked(&mut s.revoked, sid, expires_at);
                }
                RevocationEvent::Epoch { user_id, epoch } => {
                    let e = s.epochs.entry(user_id).or_insert(0);
                    *e = (*e).max(epoch);
                }
            }
        }
        s.cursor = s.cursor.max(batch.cursor);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Records that `sid` is revoked until at least `expires_at`. A second
/// event for the same id never shortens the entry: revocation only ever
/// refuses more (an event with an earlier expiry, such as a forged
/// notification, would otherwise let the next refresh drop the entry and
/// accept the revoked session again).
fn keep_revoked(revoked: &mut HashMap<String, UnixTime>, sid: String, expires_at: UnixTime) {
    let e = revoked.entry(sid).or_insert(expires_at);
    *e = (*e).max(expires_at);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryStore;

    /// Level-1 claims of session `sid` of `uid` at epoch `ep`.
    pub(crate) fn claims(sid: &str, uid: &str, ep: u64) -> SessionClaims {
        SessionClaims {
            sid: sid.into(),
            sin: format!("in-{sid}"),
            uid: uid.into(),
            lvl: 1,
            amr: vec![],
            auth: 0,
            mfa: None,
            iat: 0,
            last: 0,
            ep,
        }
    }

    /// `catch_up` applies what other replicas wrote without vouching for
    /// freshness, and does nothing before the first refresh (which must
    /// load every epoch first: a cursor moved by a catch-up would skip it).
    #[tokio::test]
    async fn catching_up_applies_changes_but_never_makes_the_view_fresh() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        store.bump_epoch("u1").await.unwrap();
        let view = RevocationView::new(Duration::from_secs(2));
        assert!(
            view.catch_up(&store, 100).await.is_err(),
            "nothing to catch up on yet"
        );
        assert!(!view.is_fresh(Instant::now()), "a catch-up made a new view fresh");
        assert_eq!(view.epoch("u1"), 0, "nothing pulled before the first refresh");
        // Last refreshed 10 s ago: stale now, and a catch-up must not change that.
        let t0 = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .expect("the machine has been up for 10 s");
        view.refresh(&store, 100, t0).await.unwrap();
        assert_eq!(view.epoch("u1"), 1);
        assert!(!view.is_fresh(Instant::now()));
        store.bump_epoch("u1").await.unwrap();
        store.revoke_session("s9", 10_000).await.unwrap();
        view.catch_up(&store, 101).await.unwrap();
        assert_eq!(view.epoch("u1"), 2);
        assert!(!view.is_fresh(Instant::now()), "a catch-up vouched for freshness");
        assert_eq!(
            view.check(&claims("s9", "u2", 0), t0),
            Err(SessionReject::Revoked)
        );
        assert_eq!(
            view.check(&claims("s1", "u1", 1), t0),
            Err(SessionReject::Revoked)
        );
    }

    #[tokio::test]
    async fn sees_other_replicas_changes_after_refresh() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let a = RevocationView::new(Duration::from_secs(2));
        let t0 = Instant::now();
        a.refresh(&store, 100, t0).await.unwrap();
        assert_eq!(a.check(&claims("s1", "u1", 0), t0), Ok(()));
        // Another replica logs out s1 and revokes all of u2's sessions.
        store.revoke_session("s1", 10_000).await.unwrap();
        store.bump_epoch("u2").await.unwrap();
        assert_eq!(a.check(&claims("s1", "u1", 0), t0), Ok(()), "not yet refreshed");
        a.refresh(&store, 101, t0).await.unwrap();
        assert_eq!(a.check(&claims("s1", "u1", 0), t0), Err(SessionReject::Revoked));
        assert_eq!(a.check(&claims("s2", "u2", 0), t0), Err(SessionReject::Revoked));
        assert_eq!(a.check(&claims("s3", "u2", 1), t0), Ok(()));
        assert_eq!(a.epoch("u2"), 1);
    }

    #[tokio::test]
    async fn a_new_view_loads_epochs_and_is_stale_until_refreshed() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        store.bump_epoch("u1").await.unwrap();
        let v = RevocationView::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(
            v.check(&claims("s", "u1", 1), t0),
            Err(SessionReject::Unavailable)
        );
        v.refresh(&store, 0, t0).await.unwrap();
        assert_eq!(v.epoch("u1"), 1);
        assert_eq!(v.check(&claims("s", "u1", 0), t0), Err(SessionReject::Revoked));
    }

    #[tokio::test]
    async fn goes_stale_without_refreshes() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let v = RevocationView::new(Duration::from_secs(2));
        let t0 = Instant::now();
        v.refresh(&store, 0, t0).await.unwrap();
        let c = claims("s", "u", 0);
        assert_eq!(v.check(&c, t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(
            v.check(&c, t0 + Duration::from_millis(2_001)),
            Err(SessionReject::Unavailable)
        );
        assert!(!v.is_fresh(t0 + Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn revoking_a_sign_in_ends_every_session_id_of_it_on_every_replica() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let (a, b) = (
            RevocationView::new(Duration::from_secs(2)),
            RevocationView::new(Duration::from_secs(2)),
        );
        let t0 = Instant::now();
        a.refresh(&store, 0, t0).await.unwrap();
        b.refresh(&store, 0, t0).await.unwrap();
        let mut level1 = claims("s1", "u", 0);
        level1.sin = "signin".into();
        let mut level2 = claims("s2", "u", 0);
        level2.sin = "signin".into();
        let mut other = claims("s3", "u", 0);
        other.sin = "another".into();
        store.revoke_session("signin", 10_000).await.unwrap();
        a.note_revoked("signin", 10_000);
        assert_eq!(a.check(&level1, t0), Err(SessionReject::Revoked));
        assert_eq!(a.check(&level2, t0), Err(SessionReject::Revoked));
        assert_eq!(a.check(&other, t0), Ok(()));
        b.refresh(&store, 1, t0).await.unwrap();
        assert_eq!(b.check(&level1, t0), Err(SessionReject::Revoked));
        assert_eq!(b.check(&other, t0), Ok(()));
    }

    #[tokio::test]
    async fn a_later_event_with_an_earlier_expiry_does_not_unrevoke() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let v = RevocationView::new(Duration::from_secs(2));
        let t0 = Instant::now();
        v.refresh(&store, 100, t0).await.unwrap();
        let c = claims("stolen", "u", 0);
        v.note_revoked("stolen", 10_000);
        // A second event for the same id that says it expired long ago (a
        // forged NOTIFY payload, or a second revocation logged with an
        // earlier end): the entry keeps the later expiry.
        v.note_revoked("stolen", 1);
        v.refresh(&store, 200, t0).await.unwrap();
        assert_eq!(v.check(&c, t0), Err(SessionReject::Revoked));
        // The same through the store's log.
        store.revoke_session("other", 10_000).await.unwrap();
        store.revoke_session("other", 1).await.unwrap();
        v.refresh(&store, 300, t0).await.unwrap();
        assert_eq!(v.check(&claims("other", "u", 0), t0), Err(SessionReject::Revoked));
        // Entries still go once their session would have expired anyway.
        v.refresh(&store, 10_000, t0).await.unwrap();
        assert_eq!(v.check(&c, t0), Ok(()));
    }

    #[tokio::test]
    async fn local_changes_apply_at_once() {
        let v = RevocationView::new(Duration::from_secs(2));
        let store: SharedStore = Arc::new(MemoryStore::new());
        let t0 = Instant::now();
        v.refresh(&store, 0, t0).await.unwrap();
        v.note_revoked("s", 1_000);
        v.note_epoch("u", 4);
        assert_eq!(v.check(&claims("s", "x", 9), t0), Err(SessionReject::Revoked));
        assert_eq!(v.check(&claims("t", "u", 3), t0), Err(SessionReject::Revoked));
        assert_eq!(v.check(&claims("t", "u", 4), t0), Ok(()));
    }
}
