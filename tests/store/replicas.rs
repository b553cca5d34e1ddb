//! Several replicas on one PostgreSQL: two `portcullis serve` processes share
//! a schema, and what one does is in force on the other (factors, TOTP
//! replay, lockout counts at once; logouts and "revoke all sessions" within
//! `session.revocation_check`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::store::Store as _;
use portcullis::store::postgres::PostgresStore;

use crate::harness::{
    CountingUpstream, Gateway, GatewayConfig, PASSWORD, StoreSpec, now, totp, uid, wait_for,
    with_postgres_schema, with_search_path,
};

/// `session.revocation_check` in these tests.
const CHECK: Duration = Duration::from_millis(500);

/// How late past `revocation_check` a refusal may come: a refresh runs every
/// half check, plus one store round trip and the poll interval of the test.
const SLACK: Duration = Duration::from_millis(750);

async fn two_replicas(url: &str, schema: &str, dir: &std::path::Path) -> (Gateway, Gateway) {
    let upstream = CountingUpstream::spawn().await;
    let users = ["alice", "bob", "carol", "dave", "erin"]
        .map(str::to_owned)
        .to_vec();
    let cfg = GatewayConfig::new(
        dir,
        upstream.addr(),
        StoreSpec::Postgres(with_search_path(url, schema)),
        users,
    );
    let (a, b) = tokio::join!(
        Gateway::start(&cfg, "replica-a"),
        Gateway::start(&cfg, "replica-b")
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_factor_enrolled_on_one_replica_verifies_on_the_other_and_codes_are_single_use() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_replicas(&url, &schema, dir.path()).await;

        let e = a.enroll_totp("alice", |_| {}).await.unwrap();
        // The activation code was used on A: B refuses it as a replay.
        if now() / 30 - e.activation_time / 30 <= 1 {
            let (status, body) = b
                .verify_totp("alice", &e.factor_id, &totp(&e.secret, e.activation_time))
                .await;
            assert_eq!(
                (status, body["errorCode"].as_str()),
                (403, Some("E0000082")),
                "{body}"
            );
        }
        // B opens the secret A sealed: the next code verifies there...
        let code = totp(&e.secret, now() + 30);
        let (status, body) = b.verify_totp("alice", &e.factor_id, &code).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("SUCCESS")),
            "{body}"
        );
        // ...and, used on B, it is refused on A.
        let (status, body) = a.verify_totp("alice", &e.factor_id, &code).await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (403, Some("E0000082")),
            "{body}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_totp_step_claimed_through_one_store_connection_is_refused_through_another() {
    with_postgres_schema(|url, schema| async move {
        // Two pools, as two replicas have, racing for the same steps.
        let one = Arc::new(PostgresStore::connect_with_schema(&url, &schema).await.unwrap());
        let two = Arc::new(PostgresStore::connect_with_schema(&url, &schema).await.unwrap());
        assert!(one.claim_totp_step("uftshared", 1_000).await.unwrap());
        assert!(!two.claim_totp_step("uftshared", 1_000).await.unwrap());
        assert!(!two.claim_totp_step("uftshared", 999).await.unwrap());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = if i % 2 == 0 { one.clone() } else { two.clone() };
                tokio::spawn(async move { store.claim_totp_step("uftshared", 1_001).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(
            won, 1,
            "one step, claimed from two replicas at once, is accepted once"
        );
        one.close().await;
        two.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_counts_are_shared_by_replicas() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_replicas(&url, &schema, dir.path()).await;
        // max_password_failures = 3, counted across both replicas.
        for gw in [&a, &b, &a] {
            let (status, _, _) = gw.authn("bob", "wrong").await.unwrap();
            assert_eq!(status, 401);
        }
        for gw in [&a, &b] {
            let (status, body, _) = gw.authn("bob", PASSWORD).await.unwrap();
            assert_eq!(status, 401, "{} lets a locked pair in: {body}", gw.name);
        }
        // Unlocking through one replica's admin API clears it for both.
        let status = a
            .admin_call(
                reqwest::Method::POST,
                &format!("/api/v1/users/{}/lifecycle/unlock", uid("bob")),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body, _) = b.authn("bob", PASSWORD).await.unwrap();
        assert_eq!(status, 200, "{body}");
    })
    .await;
}

/// Polls `gw` with `cookie` until it is refused; how long that took.
async fn refused_within(gw: &Gateway, cookie: &str) -> Duration {
    let (status, took) = wait_for(401, CHECK + SLACK + Duration::from_secs(2), || {
        gw.app_status(Some(cookie))
    })
    .await;
    assert_eq!(
        status, 401,
        "{} still accepts the session after {took:?}",
        gw.name
    );
    assert!(
        took <= CHECK + SLACK,
        "{} refused the session only after {took:?} (revocation_check {CHECK:?})",
        gw.name
    );
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logout_on_one_replica_is_enforced_by_the_other_within_revocation_check() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_replicas(&url, &schema, dir.path()).await;
        let cookie = a.sign_in("carol").await.unwrap();
        let other = a.sign_in("carol").await.unwrap();
        assert_eq!(
            b.app_status(Some(&cookie)).await,
            200,
            "a session works on every replica"
        );

        let start = Instant::now();
        assert_eq!(a.logout(&cookie).await.unwrap(), 204);
        assert_eq!(
            a.app_status(Some(&cookie)).await,
            401,
            "at once where it happened"
        );
        let took = refused_within(&b, &cookie).await;
        println!(
            "replicas: logout on A refused on B after {took:?} ({:?} after the logout)",
            start.elapsed()
        );
        assert_eq!(b.app_status(Some(&other)).await, 200, "only that session");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_all_sessions_on_one_replica_is_enforced_by_the_other_within_revocation_check() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_replicas(&url, &schema, dir.path()).await;
        let one = b.sign_in("dave").await.unwrap();
        let two = a.sign_in("dave").await.unwrap();
        let bystander = a.sign_in("erin").await.unwrap();
        for c in [&one, &two] {
            assert_eq!(b.app_status(Some(c)).await, 200);
        }

        // The admin API of A bumps dave's session epoch.
        let status = a
            .admin_call(
                reqwest::Method::DELETE,
                &format!("/api/v1/users/{}/sessions", uid("dave")),
            )
            .await;
        assert_eq!(status, 204);
        assert_eq!(a.app_status(Some(&two)).await, 401, "at once where it happened");
        let took = refused_within(&b, &one).await;
        assert_eq!(b.app_status(Some(&two)).await, 401);
        println!("replicas: revoke-all on A refused on B after {took:?}");
        assert_eq!(
            b.app_status(Some(&bystander)).await,
            200,
            "other users keep their sessions"
        );
        // A new sign-in after the revocation works on both.
        let fresh = b.sign_in("dave").await.unwrap();
        assert_eq!(a.app_status(Some(&fresh)).await, 200);

        // The same through the store directly, as another tool would do it.
        let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
        store.bump_epoch(&uid("dave")).await.unwrap();
        store.close().await;
        refused_within(&a, &fresh).await;
        refused_within(&b, &fresh).await;
    })
    .await;
}
