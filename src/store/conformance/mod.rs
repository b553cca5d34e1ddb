//! The one conformance suite every [`Store`](super::Store) backend passes.
//!
//! Each case is an async function taking a fresh [`SharedStore`] and checking
//! one part of the trait's contract, with every time passed explicitly. The
//! `suite!` invocation at the bottom expands each case once per backend into a
//! `#[tokio::test(flavor = "multi_thread")]`, named
//! `store::conformance::<backend>::<case>`. Adding a backend means adding a
//! fixture below and its name to that invocation.
//!
//! The concurrency cases start 20 tasks on a multi-threaded runtime against
//! one store (on PostgreSQL each uses its own pooled connection, so they race
//! like replicas do) and check that single-use things are used once: a TOTP
//! step, a recovery code, a one-time transaction, one version of a
//! transaction, one sealed secret being replaced.
//!
//! PostgreSQL runs only when `PORTCULLIS_TEST_POSTGRES_URL` is set (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test then gets its own
//! schema `t_<random>`, dropped afterwards even when the test fails.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;

use super::memory::MemoryStore;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use serde_json::json;

/// Skips reported like the integration tests' (see the file); the library's
/// other unit tests use it from here (it can be loaded only once).
#[path = "../../../tests/support/skip.rs"]
pub(crate) mod skip;

use super::{
    AuditCursor, AuditQuery, AuditRecord, CounterKey, FactorRecord, FactorStatus, RevocationEvent,
    SealedSecret, SharedStore, TransactionRecord, UserPatch, UserRecord, UserStatus, UserWrite,
};
use crate::clock::UnixTime;

mod accounts;
use accounts::*;

/// A time well past anything that could underflow, to which the cases add offsets.
const T: UnixTime = 1_700_000_000;

// ---- fixtures ------------------------------------------------------------

mod fixtures {
    use super::*;

    pub(super) async fn memory<F, Fut>(case: F)
    where
        F: FnOnce(SharedStore) -> Fut,
        Fut: Future<Output = ()>,
    {
        case(Arc::new(MemoryStore::new())).await;
    }

    pub(super) async fn sqlite<F, Fut>(case: F)
    where
        F: FnOnce(SharedStore) -> Fut,
        Fut: Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: open creates it.
        let store = SqliteStore::open(&dir.path().join("state/portcullis.db"))
            .await
            .unwrap();
        case(Arc::new(store)).await;
    }

    pub(super) async fn postgres<F, Fut>(case: F)
    where
        F: FnOnce(SharedStore) -> Fut,
        Fut: Future<Output = ()>,
    {
        with_postgres_schema(|url, schema| async move {
            let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
            case(Arc::new(store)).await;
        })
        .await;
    }
}

/// The URL of the test PostgreSQL server, or `None` (with a note) when
/// `PORTCULLIS_TEST_POSTGRES_URL` is not set.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip::test(
                &skip::current_test(),
                "PostgreSQL: PORTCULLIS_TEST_POSTGRES_URL is not set (.ci/run starts one)",
            );
            None
        }
    }
}

/// Runs `test(url, schema)` with a fresh schema name `t_<random>` on the test
/// server, then drops that schema, also when `test` panics. Does nothing when
/// no test server is configured.
pub(crate) async fn with_postgres_schema<F, Fut>(test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = postgres_url() else { return };
    let schema = format!("t_{:016x}", rand::random::<u64>());
    let outcome = AssertUnwindSafe(test(url.clone(), schema.clone()))
        .catch_unwind()
        .await;
    drop_schema(&url, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

// ---- helpers ---------------------------------------------------------------

fn session(sid: &str, expires_at: UnixTime) -> RevocationEvent {
    RevocationEvent::Session {
        sid: sid.into(),
        expires_at,
    }
}

fn epoch(user_id: &str, epoch: u64) -> RevocationEvent {
    RevocationEvent::Epoch {
        user_id: user_id.into(),
        epoch,
    }
}

async fn sorted_epochs(store: &SharedStore) -> Vec<(String, u64)> {
    let mut epochs = store.epochs().await.unwrap();
    epochs.sort();
    epochs
}

// ---- the cases -------------------------------------------------------------

async fn health_answers(store: SharedStore) {
    store.health().await.unwrap();
    assert!(["memory", "sqlite", "postgres"].contains(&store.kind()));
}

async fn epochs_start_at_zero_and_increase(store: SharedStore) {
    assert!(
        store.epochs().await.unwrap().is_empty(),
        "every user starts at 0 (no row)"
    );
    assert_eq!(store.bump_epoch("alice").await.unwrap(), 1);
    assert_eq!(store.bump_epoch("alice").await.unwrap(), 2);
    assert_eq!(store.bump_epoch("bob").await.unwrap(), 1);
    assert_eq!(store.bump_epoch("alice").await.unwrap(), 3);
    assert_eq!(
        sorted_epochs(&store).await,
        [("alice".to_owned(), 3), ("bob".to_owned(), 1)]
    );
}

async fn revocations_come_in_order_after_the_cursor(store: SharedStore) {
    let empty = store.revocations_since(0, T).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.cursor, 0, "no events: the cursor given comes back");

    store.revoke_session("s1", T + 100).await.unwrap();
    store.bump_epoch("alice").await.unwrap();
    store.revoke_session("s2", T + 200).await.unwrap();
    let all = store.revocations_since(0, T).await.unwrap();
    assert_eq!(
        all.events,
        [session("s1", T + 100), epoch("alice", 1), session("s2", T + 200)]
    );
    assert!(all.cursor > 0);

    let none = store.revocations_since(all.cursor, T).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.cursor, all.cursor, "nothing new: the cursor stays");

    store.bump_epoch("alice").await.unwrap();
    store.revoke_session("s3", T + 300).await.unwrap();
    let next = store.revocations_since(all.cursor, T).await.unwrap();
    assert_eq!(next.events, [epoch("alice", 2), session("s3", T + 300)]);
    assert!(next.cursor > all.cursor);

    // Every cursor returns a suffix of the log, and every suffix is reachable.
    let full = store.revocations_since(0, T).await.unwrap().events;
    assert_eq!(full.len(), 5);
    let mut lengths = BTreeSet::new();
    for c in 0..=next.cursor {
        let events = store.revocations_since(c, T).await.unwrap().events;
        assert!(full.ends_with(&events), "cursor {c} gives a suffix");
        lengths.insert(events.len());
    }
    assert_eq!(lengths, (0..=full.len()).collect::<BTreeSet<_>>());

    // Past the end: nothing, and the cursor given comes back.
    let beyond = store.revocations_since(next.cursor + 1_000, T).await.unwrap();
    assert!(beyond.events.is_empty());
    assert_eq!(beyond.cursor, next.cursor + 1_000);
}

async fn expired_session_events_are_skipped_but_the_cursor_advances(store: SharedStore) {
    store.revoke_session("old", T + 10).await.unwrap();
    store.revoke_session("edge", T + 20).await.unwrap();
    let only_expired = store.revocations_since(0, T + 20).await.unwrap();
    assert!(only_expired.events.is_empty(), "expires_at <= now is skipped");
    assert!(only_expired.cursor > 0, "the cursor moves past skipped events");
    let live = store.revocations_since(0, T + 19).await.unwrap();
    assert_eq!(live.events, [session("edge", T + 20)]);
    assert_eq!(live.cursor, only_expired.cursor);

    store.bump_epoch("carol").await.unwrap();
    store.revoke_session("live", T + 1_000).await.unwrap();
    store.revoke_session("gone", T).await.unwrap();
    let batch = store.revocations_since(0, T + 500).await.unwrap();
    assert_eq!(
        batch.events,
        [epoch("carol", 1), session("live", T + 1_000)],
        "epochs never expire"
    );
    let after = store.revocations_since(batch.cursor, T + 500).await.unwrap();
    assert!(
        after.events.is_empty(),
        "the trailing expired event was passed too"
    );
    assert_eq!(after.cursor, batch.cursor);
}

async fn record_failure_counts_within_a_window_and_resets_after_it(store: SharedStore) {
    let key = CounterKey::for_user("pw:alice:192.0.2.1", "alice");
    let other = CounterKey::anonymous("ip:192.0.2.1");
    assert_eq!(store.record_failure(&key, 60, T).await.unwrap(), 1);
    assert_eq!(store.record_failure(&key, 60, T + 30).await.unwrap(), 2);
    assert_eq!(
        store.record_failure(&other, 60, T + 30).await.unwrap(),
        1,
        "keys are independent"
    );
    assert_eq!(store.record_failure(&key, 60, T + 59).await.unwrap(), 3);
    // The window [T, T + 60) has run out: a new one starts at T + 60.
    assert_eq!(store.record_failure(&key, 60, T + 60).await.unwrap(), 1);
    assert_eq!(store.record_failure(&key, 60, T + 61).await.unwrap(), 2);
    assert_eq!(store.record_failure(&key, 60, T + 119).await.unwrap(), 3);
    assert_eq!(store.record_failure(&key, 60, T + 120).await.unwrap(), 1);
    // Long after: still a fresh window of 1.
    assert_eq!(store.record_failure(&key, 60, T + 10_000).await.unwrap(), 1);
    assert_eq!(store.record_failure(&other, 60, T + 31).await.unwrap(), 2);
}

async fn forgive_failure_takes_one_back_and_stops_at_zero(store: SharedStore) {
    let a = CounterKey::for_user("mfa:alice", "alice");
    for _ in 0..3 {
        store.record_failure(&a, 300, T).await.unwrap();
    }
    store.forgive_failure("mfa:alice").await.unwrap();
    assert_eq!(store.record_failure(&a, 300, T + 1).await.unwrap(), 3);
    for _ in 0..5 {
        store.forgive_failure("mfa:alice").await.unwrap();
    }
    assert_eq!(
        store.record_failure(&a, 300, T + 2).await.unwrap(),
        1,
        "never below zero"
    );
    store.forgive_failure("mfa:nobody").await.unwrap();
    // From two: one back leaves one.
    let b = CounterKey::for_user("mfa:bob", "bob");
    store.record_failure(&b, 300, T).await.unwrap();
    store.record_failure(&b, 300, T).await.unwrap();
    store.forgive_failure("mfa:bob").await.unwrap();
    assert_eq!(store.record_failure(&b, 300, T + 1).await.unwrap(), 2);
}

async fn clear_failures_forgets_only_that_key(store: SharedStore) {
    let a = CounterKey::for_user("mfa:alice", "alice");
    let b = CounterKey::for_user("pw:alice:192.0.2.1", "alice");
    for _ in 0..3 {
        store.record_failure(&a, 300, T).await.unwrap();
        store.record_failure(&b, 300, T).await.unwrap();
    }
    store.clear_failures("mfa:alice").await.unwrap();
    store.clear_failures("no-such-key").await.unwrap();
    assert_eq!(store.record_failure(&a, 300, T + 1).await.unwrap(), 1);
    assert_eq!(store.record_failure(&b, 300, T + 1).await.unwrap(), 4);
}

async fn lock_never_shortens_an_existing_lock(store: SharedStore) {
    let key = CounterKey::for_user("user:alice", "alice");
    store.lock(&key, T + 500).await.unwrap();
    store.lock(&key, T + 300).await.unwrap();
    assert_eq!(
        store.locked_until(&["user:alice"], T).await.unwrap(),
        Some(T + 500)
    );
    store.lock(&key, T + 800).await.unwrap();
    assert_eq!(
        store.locked_until(&["user:alice"], T).await.unwrap(),
        Some(T + 800)
    );
    store.lock(&key, T + 800).await.unwrap();
    assert_eq!(
        store.locked_until(&["user:alice"], T).await.unwrap(),
        Some(T + 800)
    );
}

async fn locked_until_takes_the_latest_lock_in_force(store: SharedStore) {
    store
        .lock(&CounterKey::for_user("a", "alice"), T + 500)
        .await
        .unwrap();
    store.lock(&CounterKey::anonymous("b"), T + 700).await.unwrap();
    store
        .lock(&CounterKey::for_user("c", "carol"), T + 900)
        .await
        .unwrap();
    let keys = ["a", "b", "missing"];
    assert_eq!(
        store.locked_until(&keys, T).await.unwrap(),
        Some(T + 700),
        "c is not asked about"
    );
    assert_eq!(store.locked_until(&keys, T + 600).await.unwrap(), Some(T + 700));
    assert_eq!(
        store.locked_until(&keys, T + 700).await.unwrap(),
        None,
        "until <= now is over"
    );
    assert_eq!(store.locked_until(&["a"], T + 499).await.unwrap(), Some(T + 500));
    assert_eq!(store.locked_until(&["a"], T + 500).await.unwrap(), None);
    assert_eq!(store.locked_until(&["missing"], T).await.unwrap(), None);
    assert_eq!(store.locked_until(&[], T).await.unwrap(), None);
    assert_eq!(
        store.locked_until(&["a", "a", "c"], T).await.unwrap(),
        Some(T + 900)
    );
    // An expired lock can be renewed.
    store
        .lock(&CounterKey::for_user("a", "alice"), T + 2_000)
        .await
        .unwrap();
    assert_eq!(
        store.locked_until(&["a"], T + 1_000).await.unwrap(),
        Some(T + 2_000)
    );
}

async fn unlock_user_clears_only_that_users_locks_and_counters(store: SharedStore) {
    let alice_pw = CounterKey::for_user("pw:alice:192.0.2.1", "alice");
    let alice_mfa = CounterKey::for_user("mfa:alice", "alice");
    let bob = CounterKey::for_user("mfa:bob", "bob");
    let ip = CounterKey::anonymous("ip:192.0.2.1");
    store.lock(&alice_pw, T + 900).await.unwrap();
    store.record_failure(&alice_mfa, 300, T).await.unwrap();
    store.record_failure(&alice_mfa, 300, T).await.unwrap();
    store.lock(&bob, T + 900).await.unwrap();
    store.record_failure(&bob, 300, T).await.unwrap();
    store.lock(&ip, T + 900).await.unwrap();
    store.record_failure(&ip, 300, T).await.unwrap();

    assert!(store.unlock_user("alice").await.unwrap());
    assert_eq!(
        store.locked_until(&["pw:alice:192.0.2.1"], T).await.unwrap(),
        None
    );
    assert_eq!(
        store.record_failure(&alice_mfa, 300, T).await.unwrap(),
        1,
        "counter cleared"
    );
    assert_eq!(store.locked_until(&["mfa:bob"], T).await.unwrap(), Some(T + 900));
    assert_eq!(store.record_failure(&bob, 300, T).await.unwrap(), 2);
    assert_eq!(
        store.locked_until(&["ip:192.0.2.1"], T).await.unwrap(),
        Some(T + 900)
    );
    assert_eq!(store.record_failure(&ip, 300, T).await.unwrap(), 2);

    store.clear_failures("mfa:alice").await.unwrap();
    assert!(!store.unlock_user("alice").await.unwrap(), "nothing left");
    assert!(!store.unlock_user("nobody").await.unwrap());

    // A counter alone (no lock) is something to clear.
    store
        .record_failure(&CounterKey::for_user("pw:dave:x", "dave"), 300, T)
        .await
        .unwrap();
    assert!(store.unlock_user("dave").await.unwrap());
}

async fn purge_expired_removes_only_what_is_over(store: SharedStore) {
    let now = T + 100_000;
    store
        .lock(&CounterKey::for_user("over", "erin"), now - 1)
        .await
        .unwrap();
    store
        .lock(&CounterKey::for_user("in-force", "frank"), now + 100)
        .await
        .unwrap();
    // A counter whose window started more than a day ago, and a recent one.
    store
        .record_failure(&CounterKey::for_user("old", "gina"), 300, now - 90_000)
        .await
        .unwrap();
    store
        .record_failure(&CounterKey::for_user("recent", "hank"), 300, now - 10)
        .await
        .unwrap();
    store.bump_epoch("ivy").await.unwrap();
    store.bump_epoch("ivy").await.unwrap();
    store.revoke_session("expired", now - 1).await.unwrap();
    store.revoke_session("at-now", now).await.unwrap();
    store.revoke_session("kept", now + 1).await.unwrap();
    // The newest event is expired too (the memory store keeps its row, to
    // keep sequence numbers increasing; SQL backends never reuse them).
    store.revoke_session("newest", now - 5).await.unwrap();
    let cursor = store.revocations_since(0, now).await.unwrap().cursor;

    store.purge_expired(now).await.unwrap();

    assert_eq!(
        store.locked_until(&["over"], now - 10).await.unwrap(),
        None,
        "the row is gone"
    );
    assert_eq!(
        store.locked_until(&["in-force"], now).await.unwrap(),
        Some(now + 100)
    );
    assert!(!store.unlock_user("erin").await.unwrap(), "expired lock purged");
    assert!(!store.unlock_user("gina").await.unwrap(), "old counter purged");
    assert!(store.unlock_user("hank").await.unwrap(), "recent counter kept");
    assert!(store.unlock_user("frank").await.unwrap(), "lock in force kept");

    // Asking as of long ago shows which rows are left.
    let left = store.revocations_since(0, 0).await.unwrap().events;
    assert!(left.contains(&session("kept", now + 1)));
    assert!(!left.contains(&session("expired", now - 1)));
    assert!(!left.contains(&session("at-now", now)));
    assert!(left.contains(&epoch("ivy", 2)), "the latest epoch event stays");
    assert_eq!(sorted_epochs(&store).await, [("ivy".to_owned(), 2)]);

    // Sequence numbers keep increasing although the newest event was purged.
    store.revoke_session("after", now + 50).await.unwrap();
    let next = store.revocations_since(cursor, now).await.unwrap();
    assert_eq!(next.events, [session("after", now + 50)]);
    assert!(next.cursor > cursor);

    store.purge_expired(now).await.unwrap();
    assert!(
        store.unlock_user("frank").await.is_ok(),
        "purging twice is harmless"
    );
}

async fn keys_are_opaque_strings(store: SharedStore) {
    let odd = [
        "pw:o'brien:2001:db8::1",
        "x\"); DROP TABLE locks; --",
        "100%_match\\",
        "ünïcødé:ключ:鍵",
        "",
    ];
    for (i, k) in odd.iter().enumerate() {
        let key = CounterKey::for_user(*k, k);
        assert_eq!(store.record_failure(&key, 60, T).await.unwrap(), 1);
        assert_eq!(store.record_failure(&key, 60, T).await.unwrap(), 2);
        store.lock(&key, T + 10 + i as i64).await.unwrap();
        store.revoke_session(k, T + 10).await.unwrap();
        assert_eq!(store.bump_epoch(k).await.unwrap(), 1);
    }
    for (i, k) in odd.iter().enumerate() {
        assert_eq!(
            store.locked_until(&[*k], T).await.unwrap(),
            Some(T + 10 + i as i64)
        );
    }
    assert_eq!(store.locked_until(&odd, T).await.unwrap(), Some(T + 14));
    assert_eq!(
        store.locked_until(&["pw:o'brien:%"], T).await.unwrap(),
        None,
        "no pattern matching"
    );
    let events = store.revocations_since(0, T).await.unwrap().events;
    for k in odd {
        assert!(events.contains(&session(k, T + 10)));
        assert!(events.contains(&epoch(k, 1)));
    }
    assert!(store.unlock_user("x\"); DROP TABLE locks; --").await.unwrap());
    assert_eq!(
        store.locked_until(&["ünïcødé:ключ:鍵"], T).await.unwrap(),
        Some(T + 13)
    );
}

async fn record_failure_counts_concurrently(store: SharedStore) {
    let key = CounterKey::for_user("mfa:carol", "carol");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.record_failure(&key, 300, T).await })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=50).collect::<Vec<u32>>(),
        "each caller sees its own count"
    );
    assert_eq!(
        store.record_failure(&key, 300, T + 1).await.unwrap(),
        51,
        "the count is 50"
    );
}

async fn bump_epoch_is_atomic_under_concurrency(store: SharedStore) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.bump_epoch("dave").await })
        })
        .collect();
    let mut returned = BTreeSet::new();
    for task in tasks {
        assert!(
            returned.insert(task.await.unwrap().unwrap()),
            "epochs are distinct"
        );
    }
    assert_eq!(returned, (1..=20).collect::<BTreeSet<u64>>());
    assert_eq!(store.epochs().await.unwrap(), [("dave".to_owned(), 20)]);
    let logged: BTreeSet<u64> = store
        .revocations_since(0, T)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter_map(|e| match e {
            RevocationEvent::Epoch { user_id, epoch } if user_id == "dave" => Some(epoch),
            _ => None,
        })
        .collect();
    assert_eq!(logged, returned, "every bump is logged");
}

async fn lock_keeps_the_maximum_under_concurrency(store: SharedStore) {
    let tasks: Vec<_> = (0..20)
        .map(|i: i64| {
            let store = store.clone();
            // Deadlines arrive in an order unrelated to their size.
            let until = T + 100 + (i * 7) % 20;
            tokio::spawn(async move {
                store
                    .lock(&CounterKey::for_user("user:erin", "erin"), until)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        store.locked_until(&["user:erin"], T).await.unwrap(),
        Some(T + 119)
    );
}

// ---- factors ---------------------------------------------------------------

fn sealed(key_id: &str, blob: &[u8]) -> SealedSecret {
    SealedSecret {
        key_id: key_id.into(),
        blob: blob.to_vec(),
    }
}

fn factor(id: &str, user_id: &str, created: UnixTime, secret: Option<SealedSecret>) -> FactorRecord {
    FactorRecord {
        id: id.into(),
        user_id: user_id.into(),
        factor_type: "token:software:totp".into(),
        provider: "GOOGLE".into(),
        status: FactorStatus::PendingActivation,
        profile: json!({ "credentialId": format!("{user_id}@example.com") }),
        secret,
        created,
        last_updated: created,
    }
}

async fn factors_round_trip_and_list_oldest_first(store: SharedStore) {
    let mut sms = factor("sms-alice", "alice", T + 10, None);
    sms.factor_type = "sms".into();
    sms.provider = "OKTA".into();
    sms.status = FactorStatus::Active;
    sms.profile = json!({ "phoneNumber": "+1 555 0100", "nested": { "ünï": [1, 2.5, null, true] } });
    // Every byte value survives, including NUL and invalid UTF-8.
    let blob: Vec<u8> = (0..=255).collect();
    let totp = factor("totp-alice", "alice", T + 20, Some(sealed("k1", &blob)));
    let same_second = factor("push-alice", "alice", T + 20, None);
    let bob = factor("totp-bob", "bob", T, Some(sealed("k1", b"b")));
    // Inserted out of creation order: listing is by `created`, then insertion.
    for f in [&totp, &sms, &same_second, &bob] {
        store.insert_factor(f).await.unwrap();
    }

    assert_eq!(
        store.get_factor("alice", "totp-alice").await.unwrap().as_ref(),
        Some(&totp)
    );
    assert_eq!(
        store.get_factor("alice", "sms-alice").await.unwrap().as_ref(),
        Some(&sms)
    );
    assert_eq!(store.get_factor("alice", "missing").await.unwrap(), None);
    let ids: Vec<String> = store
        .list_factors("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(ids, ["sms-alice", "totp-alice", "push-alice"]);
    assert_eq!(store.list_factors("bob").await.unwrap(), [bob]);
    assert!(store.list_factors("carol").await.unwrap().is_empty());
}

async fn factors_are_scoped_by_user(store: SharedStore) {
    let f = factor("f-alice", "alice", T, Some(sealed("k1", b"s")));
    store.insert_factor(&f).await.unwrap();
    store.claim_totp_step("f-alice", 100).await.unwrap();

    assert_eq!(store.get_factor("bob", "f-alice").await.unwrap(), None);
    assert!(!store.activate_factor("bob", "f-alice", T + 1).await.unwrap());
    assert!(!store.delete_factor("bob", "f-alice").await.unwrap());
    assert!(store.list_factors("bob").await.unwrap().is_empty());
    // Nothing the other user tried changed alice's factor or its step.
    assert_eq!(store.get_factor("alice", "f-alice").await.unwrap(), Some(f));
    assert!(!store.claim_totp_step("f-alice", 100).await.unwrap());
}

async fn insert_factor_refuses_an_existing_id(store: SharedStore) {
    let first = factor("f1", "alice", T, Some(sealed("k1", b"first")));
    store.insert_factor(&first).await.unwrap();
    let again = factor("f1", "mallory", T + 5, Some(sealed("k1", b"second")));
    assert!(store.insert_factor(&again).await.is_err());
    assert_eq!(store.get_factor("alice", "f1").await.unwrap(), Some(first));
    assert_eq!(store.get_factor("mallory", "f1").await.unwrap(), None);
}

async fn activate_factor_moves_a_pending_factor_once(store: SharedStore) {
    let f = factor("f1", "alice", T, None);
    store.insert_factor(&f).await.unwrap();
    assert!(store.activate_factor("alice", "f1", T + 30).await.unwrap());
    let active = store.get_factor("alice", "f1").await.unwrap().unwrap();
    assert_eq!(active.status, FactorStatus::Active);
    assert_eq!(active.last_updated, T + 30);
    assert_eq!(active.created, T);
    assert!(
        !store.activate_factor("alice", "f1", T + 40).await.unwrap(),
        "already active"
    );
    assert_eq!(
        store
            .get_factor("alice", "f1")
            .await
            .unwrap()
            .unwrap()
            .last_updated,
        T + 30,
        "a refused activation changes nothing"
    );
    assert!(!store.activate_factor("alice", "missing", T).await.unwrap());
}

async fn update_factor_profile_sets_profile_and_status_under_a_status_guard(store: SharedStore) {
    let secret = sealed("k1", b"kept");
    let pending = factor("f1", "alice", T, Some(secret.clone()));
    store.insert_factor(&pending).await.unwrap();
    let device = json!({ "deviceName": "Phone", "publicKey": "AAAA", "nested": { "ünï": [1, null] } });
    use FactorStatus::{Active, PendingActivation};

    // Another user's id, a wrong expected status and an unknown id change nothing.
    for (user, id, expected) in [
        ("bob", "f1", PendingActivation),
        ("alice", "f1", Active),
        ("alice", "missing", PendingActivation),
    ] {
        assert!(
            !store
                .update_factor_profile(user, id, expected, &device, Active, T + 5)
                .await
                .unwrap(),
            "{user} {id} {expected:?}"
        );
    }
    assert_eq!(
        store.get_factor("alice", "f1").await.unwrap(),
        Some(pending.clone())
    );

    assert!(
        store
            .update_factor_profile("alice", "f1", PendingActivation, &device, Active, T + 30)
            .await
            .unwrap()
    );
    let updated = store.get_factor("alice", "f1").await.unwrap().unwrap();
    assert_eq!(
        updated,
        FactorRecord {
            status: Active,
            profile: device.clone(),
            last_updated: T + 30,
            ..pending
        },
        "id, type, provider, secret and creation time stay"
    );
    assert_eq!(updated.secret, Some(secret));
    assert!(
        !store
            .update_factor_profile("alice", "f1", PendingActivation, &json!({}), Active, T + 40)
            .await
            .unwrap(),
        "no longer pending: the guard refuses"
    );
    // Active to active (a profile change) is allowed when asked for.
    let renamed = json!({ "deviceName": "Tablet" });
    assert!(
        store
            .update_factor_profile("alice", "f1", Active, &renamed, Active, T + 50)
            .await
            .unwrap()
    );
    let got = store.get_factor("alice", "f1").await.unwrap().unwrap();
    assert_eq!((got.profile, got.last_updated), (renamed, T + 50));
    assert_eq!(store.list_factors("alice").await.unwrap().len(), 1);
}

async fn update_factor_profile_has_one_winner_under_concurrency(store: SharedStore) {
    store
        .insert_factor(&factor("f1", "alice", T, None))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i: u8| {
            let store = store.clone();
            tokio::spawn(async move {
                let profile = json!({ "deviceName": format!("device {i}") });
                store
                    .update_factor_profile(
                        "alice",
                        "f1",
                        FactorStatus::PendingActivation,
                        &profile,
                        FactorStatus::Active,
                        T + 1,
                    )
                    .await
                    .map(|won| won.then_some(profile))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(winners.len(), 1, "one device pairs");
    let stored = store.get_factor("alice", "f1").await.unwrap().unwrap();
    assert_eq!(Some(&stored.profile), winners.first());
    assert_eq!(stored.status, FactorStatus::Active);
}

async fn delete_factor_removes_it_and_its_totp_step(store: SharedStore) {
    store
        .insert_factor(&factor("f1", "alice", T, None))
        .await
        .unwrap();
    store
        .insert_factor(&factor("f2", "alice", T, None))
        .await
        .unwrap();
    assert!(store.claim_totp_step("f1", 1_000).await.unwrap());
    assert!(store.claim_totp_step("f2", 1_000).await.unwrap());

    assert!(store.delete_factor("alice", "f1").await.unwrap());
    assert_eq!(store.get_factor("alice", "f1").await.unwrap(), None);
    assert!(!store.delete_factor("alice", "f1").await.unwrap(), "already gone");
    let left: Vec<String> = store
        .list_factors("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(left, ["f2"]);
    // f1's step record went with it; f2's is untouched.
    assert!(store.claim_totp_step("f1", 5).await.unwrap());
    assert!(!store.claim_totp_step("f2", 1_000).await.unwrap());
}

async fn delete_pending_factor_leaves_an_active_factor(store: SharedStore) {
    store
        .insert_factor(&factor("f1", "alice", T, None))
        .await
        .unwrap();
    store
        .insert_factor(&factor("f2", "alice", T, None))
        .await
        .unwrap();
    assert!(store.activate_factor("alice", "f2", T + 1).await.unwrap());
    assert!(store.claim_totp_step("f1", 1_000).await.unwrap());

    assert!(
        !store.delete_pending_factor("bob", "f1").await.unwrap(),
        "another user's"
    );
    assert!(
        !store.delete_pending_factor("alice", "f2").await.unwrap(),
        "active: kept"
    );
    assert!(store.get_factor("alice", "f2").await.unwrap().is_some());
    assert!(store.delete_pending_factor("alice", "f1").await.unwrap());
    assert_eq!(store.get_factor("alice", "f1").await.unwrap(), None);
    assert!(
        !store.delete_pending_factor("alice", "f1").await.unwrap(),
        "already gone"
    );
    // f1's step record went with it.
    assert!(store.claim_totp_step("f1", 5).await.unwrap());
}

async fn claim_totp_step_accepts_only_later_steps(store: SharedStore) {
    assert!(store.claim_totp_step("f1", 100).await.unwrap(), "first use");
    assert!(!store.claim_totp_step("f1", 100).await.unwrap(), "replay");
    assert!(!store.claim_totp_step("f1", 99).await.unwrap(), "older step");
    assert!(store.claim_totp_step("f1", 102).await.unwrap());
    assert!(
        !store.claim_totp_step("f1", 101).await.unwrap(),
        "a skipped step is older now"
    );
    // Factors are independent, and need not be stored (users-file TOTP).
    assert!(store.claim_totp_step("uft-not-stored", 100).await.unwrap());
    assert!(store.claim_totp_step("f2", 0).await.unwrap());
    assert!(store.claim_totp_step("f3", -5).await.unwrap());
    assert!(!store.claim_totp_step("f3", -6).await.unwrap());
}

async fn claim_totp_step_succeeds_once_under_concurrency(store: SharedStore) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_totp_step("f1", 57_000_000).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(
        won, 1,
        "the same code presented 20 times at once is accepted once"
    );
    assert!(!store.claim_totp_step("f1", 57_000_000).await.unwrap());
    assert!(
        !store.claim_totp_step("f1", 56_999_999).await.unwrap(),
        "an older step is refused afterwards"
    );
    assert!(store.claim_totp_step("f1", 57_000_001).await.unwrap());
}

async fn claim_totp_step_keeps_the_latest_under_concurrency(store: SharedStore) {
    // Steps arrive in an order unrelated to their size: whatever the
    // interleaving, the latest one ends up recorded.
    let tasks: Vec<_> = (0..20)
        .map(|i: i64| {
            let store = store.clone();
            let step = 1_000 + (i * 7) % 20;
            tokio::spawn(async move { store.claim_totp_step("f1", step).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert!(won >= 1);
    assert!(!store.claim_totp_step("f1", 1_019).await.unwrap());
    assert!(store.claim_totp_step("f1", 1_020).await.unwrap());
}

async fn sealed_secrets_are_found_by_key_and_replaced_by_compare_and_set(store: SharedStore) {
    assert!(store.secret_key_ids().await.unwrap().is_empty());
    store
        .insert_factor(&factor("a1", "alice", T, Some(sealed("old", b"a1-old"))))
        .await
        .unwrap();
    store
        .insert_factor(&factor("a2", "alice", T + 1, Some(sealed("new", b"a2-new"))))
        .await
        .unwrap();
    store
        .insert_factor(&factor("a3", "alice", T + 2, None))
        .await
        .unwrap();
    store
        .insert_factor(&factor("b1", "bob", T + 3, Some(sealed("older", b"b1-older"))))
        .await
        .unwrap();
    assert_eq!(store.secret_key_ids().await.unwrap(), ["new", "old", "older"]);

    let others = store.factors_sealed_with_other_keys("new", 10).await.unwrap();
    let mut ids: Vec<&str> = others.iter().map(|f| f.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a1", "b1"], "factors without a secret are not listed");
    assert_eq!(
        store
            .factors_sealed_with_other_keys("new", 1)
            .await
            .unwrap()
            .len(),
        1,
        "limit"
    );
    assert!(
        store
            .factors_sealed_with_other_keys("new", 0)
            .await
            .unwrap()
            .is_empty()
    );

    let a1_new = sealed("new", b"a1-resealed");
    // Compare and set: a stale `old` (other blob, or other key id) changes nothing.
    assert!(
        !store
            .replace_factor_secret("a1", &sealed("old", b"something else"), &a1_new)
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_factor_secret("a1", &sealed("new", b"a1-old"), &a1_new)
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_factor_secret("missing", &sealed("old", b"a1-old"), &a1_new)
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_factor_secret("a1", &sealed("old", b"a1-old"), &a1_new)
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_factor_secret("a1", &sealed("old", b"a1-old"), &sealed("new", b"again"))
            .await
            .unwrap(),
        "the second swap from the same old value loses"
    );
    let a1 = store.get_factor("alice", "a1").await.unwrap().unwrap();
    assert_eq!(a1.secret, Some(a1_new));
    assert_eq!(a1.last_updated, T, "re-sealing is not a change of the factor");

    assert!(
        store
            .replace_factor_secret("b1", &sealed("older", b"b1-older"), &sealed("new", b"b1-new"))
            .await
            .unwrap()
    );
    assert_eq!(store.secret_key_ids().await.unwrap(), ["new"]);
    assert!(
        store
            .factors_sealed_with_other_keys("new", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn replace_factor_secret_has_one_winner_under_concurrency(store: SharedStore) {
    let old = sealed("old", b"original");
    store
        .insert_factor(&factor("f1", "alice", T, Some(old.clone())))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i: u8| {
            let (store, old) = (store.clone(), old.clone());
            tokio::spawn(async move {
                let new = sealed("new", &[i; 8]);
                store
                    .replace_factor_secret("f1", &old, &new)
                    .await
                    .map(|won| won.then_some(new))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(winners.len(), 1, "one replica's re-seal wins, the others retry");
    let stored = store.get_factor("alice", "f1").await.unwrap().unwrap();
    assert_eq!(stored.secret.as_ref(), winners.first());
}

// ---- recovery codes --------------------------------------------------------

fn hashes(list: &[&str]) -> Vec<String> {
    list.iter().map(|h| (*h).to_owned()).collect()
}

async fn recovery_codes_are_used_once_and_replaced_as_a_set(store: SharedStore) {
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 0);
    assert!(!store.use_recovery_code("alice", "h1").await.unwrap());
    store
        .replace_recovery_codes("alice", &hashes(&["h1", "h2", "h3"]), T)
        .await
        .unwrap();
    store
        .replace_recovery_codes("bob", &hashes(&["h1", "b2"]), T)
        .await
        .unwrap();
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 3);

    assert!(store.use_recovery_code("alice", "h2").await.unwrap());
    assert!(!store.use_recovery_code("alice", "h2").await.unwrap(), "used up");
    assert!(
        !store.use_recovery_code("alice", "b2").await.unwrap(),
        "bob's code"
    );
    assert!(!store.use_recovery_code("carol", "h1").await.unwrap());
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 2);
    assert_eq!(
        store.recovery_codes_left("bob").await.unwrap(),
        2,
        "the same hash of another user is another code"
    );

    // A new set replaces the old one entirely; a repeated hash counts once.
    store
        .replace_recovery_codes("alice", &hashes(&["n1", "n2", "n1"]), T + 100)
        .await
        .unwrap();
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 2);
    assert!(
        !store.use_recovery_code("alice", "h1").await.unwrap(),
        "old set revoked"
    );
    assert!(store.use_recovery_code("alice", "n1").await.unwrap());
    assert!(!store.use_recovery_code("alice", "n1").await.unwrap());

    store.replace_recovery_codes("alice", &[], T + 200).await.unwrap();
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 0);
    assert!(!store.use_recovery_code("alice", "n2").await.unwrap());
    assert!(store.use_recovery_code("bob", "h1").await.unwrap());
}

async fn a_recovery_code_is_used_once_under_concurrency(store: SharedStore) {
    store
        .replace_recovery_codes("alice", &hashes(&["h1", "h2"]), T)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_recovery_code("alice", "h1").await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one code presented 20 times at once is accepted once");
    assert_eq!(store.recovery_codes_left("alice").await.unwrap(), 1);
}

// ---- transactions ----------------------------------------------------------

fn transaction(id: &str, kind: &str, expires_at: UnixTime) -> TransactionRecord {
    TransactionRecord {
        id: id.into(),
        kind: kind.into(),
        user_id: "alice".into(),
        data: json!({ "state": "MFA_REQUIRED", "factors": ["f1", "f2"], "n": 1 }),
        version: 0,
        expires_at,
    }
}

async fn transactions_are_got_updated_and_taken_by_kind(store: SharedStore) {
    let t = transaction("tx1", "authn", T + 300);
    store.put_transaction(&t).await.unwrap();
    assert_eq!(
        store.get_transaction("authn", "tx1", T).await.unwrap().as_ref(),
        Some(&t)
    );
    assert_eq!(
        store.get_transaction("session_token", "tx1", T).await.unwrap(),
        None,
        "lookups name the kind they expect"
    );
    assert_eq!(store.get_transaction("authn", "tx2", T).await.unwrap(), None);

    // Compare and set on the version; the stored version moves to version + 1.
    let step = TransactionRecord {
        data: json!({ "state": "MFA_CHALLENGE" }),
        expires_at: T + 600,
        ..t.clone()
    };
    assert!(store.update_transaction(&step, T + 1).await.unwrap());
    let got = store
        .get_transaction("authn", "tx1", T + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.data, json!({ "state": "MFA_CHALLENGE" }));
    assert_eq!(got.expires_at, T + 600, "an update can extend the expiry");
    assert!(
        !store.update_transaction(&step, T + 2).await.unwrap(),
        "version 0 is stale now"
    );
    let wrong_kind = TransactionRecord {
        kind: "push".into(),
        ..got.clone()
    };
    assert!(!store.update_transaction(&wrong_kind, T + 2).await.unwrap());
    let missing = TransactionRecord {
        id: "nope".into(),
        ..got.clone()
    };
    assert!(!store.update_transaction(&missing, T + 2).await.unwrap());
    assert!(store.update_transaction(&got, T + 2).await.unwrap());
    assert_eq!(
        store
            .get_transaction("authn", "tx1", T + 2)
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );

    // Taken once, and only under its kind.
    assert_eq!(store.take_transaction("push", "tx1", T + 3).await.unwrap(), None);
    let taken = store
        .take_transaction("authn", "tx1", T + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.version, 2);
    assert_eq!(taken.data, json!({ "state": "MFA_CHALLENGE" }));
    assert_eq!(store.take_transaction("authn", "tx1", T + 3).await.unwrap(), None);
    assert_eq!(store.get_transaction("authn", "tx1", T + 3).await.unwrap(), None);
    assert!(!store.update_transaction(&taken, T + 3).await.unwrap());
}

async fn put_transaction_refuses_an_existing_id(store: SharedStore) {
    let t = transaction("tx1", "authn", T + 300);
    store.put_transaction(&t).await.unwrap();
    let again = TransactionRecord {
        user_id: "mallory".into(),
        ..transaction("tx1", "authn", T + 900)
    };
    assert!(store.put_transaction(&again).await.is_err());
    assert_eq!(store.get_transaction("authn", "tx1", T).await.unwrap(), Some(t));
}

async fn an_expired_transaction_cannot_be_got_updated_or_taken(store: SharedStore) {
    let t = transaction("tx1", "otp", T + 300);
    store.put_transaction(&t).await.unwrap();
    assert!(
        store
            .get_transaction("otp", "tx1", T + 299)
            .await
            .unwrap()
            .is_some()
    );
    // `expires_at <= now` is over.
    assert_eq!(store.get_transaction("otp", "tx1", T + 300).await.unwrap(), None);
    let later = TransactionRecord {
        expires_at: T + 900,
        ..t.clone()
    };
    assert!(
        !store.update_transaction(&later, T + 300).await.unwrap(),
        "an update cannot revive it"
    );
    assert_eq!(store.take_transaction("otp", "tx1", T + 300).await.unwrap(), None);
    assert_eq!(store.get_transaction("otp", "tx1", T + 400).await.unwrap(), None);
}

async fn purge_expired_deletes_expired_transactions(store: SharedStore) {
    store
        .put_transaction(&transaction("gone", "authn", T + 100))
        .await
        .unwrap();
    store
        .put_transaction(&transaction("edge", "authn", T + 200))
        .await
        .unwrap();
    store
        .put_transaction(&transaction("kept", "authn", T + 201))
        .await
        .unwrap();
    store.purge_expired(T + 200).await.unwrap();
    // Asked as of before they expired: only the purged ones are missing.
    assert_eq!(store.get_transaction("authn", "gone", T).await.unwrap(), None);
    assert_eq!(store.get_transaction("authn", "edge", T).await.unwrap(), None);
    assert!(store.get_transaction("authn", "kept", T).await.unwrap().is_some());
    // The id of a purged transaction is free again.
    store
        .put_transaction(&transaction("gone", "authn", T + 900))
        .await
        .unwrap();
}

async fn a_transaction_is_taken_once_under_concurrency(store: SharedStore) {
    store
        .put_transaction(&transaction("tok", "session_token", T + 60))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_transaction("session_token", "tok", T).await })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(
        got.len(),
        1,
        "a one-time token presented 20 times at once is returned once"
    );
    assert_eq!(got[0].id, "tok");
}

async fn concurrent_updates_of_one_version_have_one_winner(store: SharedStore) {
    let t = transaction("tx1", "authn", T + 300);
    store.put_transaction(&t).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i: i64| {
            let store = store.clone();
            let mine = TransactionRecord {
                data: json!({ "writer": i }),
                ..t.clone()
            };
            tokio::spawn(async move {
                store
                    .update_transaction(&mine, T)
                    .await
                    .map(|won| won.then_some(i))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(winners.len(), 1, "exactly one update of version 0 wins");
    let stored = store.get_transaction("authn", "tx1", T).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.data, json!({ "writer": winners[0] }));
}

// ---- users -----------------------------------------------------------------

// ---- expansion: every case against every backend --------------------------

macro_rules! suite {
    ($($backend:ident),+ ; $cases:tt) => {
        $( suite!(@backend $backend $cases); )+
    };
    (@backend $backend:ident { $($case:ident),+ $(,)? }) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::fixtures::$backend(super::$case).await;
                }
            )+
        }
    };
}

suite!(memory, sqlite, postgres; {
    health_answers,
    epochs_start_at_zero_and_increase,
    revocations_come_in_order_after_the_cursor,
    expired_session_events_are_skipped_but_the_cursor_advances,
    record_failure_counts_within_a_window_and_resets_after_it,
    clear_failures_forgets_only_that_key,
    forgive_failure_takes_one_back_and_stops_at_zero,
    lock_never_shortens_an_existing_lock,
    locked_until_takes_the_latest_lock_in_force,
    unlock_user_clears_only_that_users_locks_and_counters,
    purge_expired_removes_only_what_is_over,
    keys_are_opaque_strings,
    record_failure_counts_concurrently,
    bump_epoch_is_atomic_under_concurrency,
    lock_keeps_the_maximum_under_concurrency,
    factors_round_trip_and_list_oldest_first,
    factors_are_scoped_by_user,
    insert_factor_refuses_an_existing_id,
    activate_factor_moves_a_pending_factor_once,
    update_factor_profile_sets_profile_and_status_under_a_status_guard,
    update_factor_profile_has_one_winner_under_concurrency,
    delete_factor_removes_it_and_its_totp_step,
    delete_pending_factor_leaves_an_active_factor,
    claim_totp_step_accepts_only_later_steps,
    claim_totp_step_succeeds_once_under_concurrency,
    claim_totp_step_keeps_the_latest_under_concurrency,
    sealed_secrets_are_found_by_key_and_replaced_by_compare_and_set,
    replace_factor_secret_has_one_winner_under_concurrency,
    recovery_codes_are_used_once_and_replaced_as_a_set,
    a_recovery_code_is_used_once_under_concurrency,
    transactions_are_got_updated_and_taken_by_kind,
    put_transaction_refuses_an_existing_id,
    an_expired_transaction_cannot_be_got_updated_or_taken,
    purge_expired_deletes_expired_transactions,
    a_transaction_is_taken_once_under_concurrency,
    concurrent_updates_of_one_version_have_one_winner,
    users_round_trip_by_id_and_login_case_insensitively,
    create_user_refuses_a_taken_login_and_an_existing_id,
    list_users_pages_in_id_order,
    update_user_patches_fields_and_sets_the_times,
    delete_user_removes_what_the_user_owned,
    user_changes_come_in_order_after_the_cursor,
    concurrent_creates_of_one_login_have_one_winner,
    audit_events_round_trip_in_time_order,
    audit_events_filter_by_time_and_text,
    audit_events_page_after_a_cursor_in_both_orders,
    a_short_page_holds_the_first_events_in_order,
    purge_audit_events_keeps_what_is_within_retention,
});
