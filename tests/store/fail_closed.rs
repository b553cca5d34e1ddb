//! Fail closed: with its store unreachable, a gateway answers 503 on
//! protected routes (within `session.revocation_check`) and forwards nothing
//! there, keeps serving `bypass` routes, reports not ready, and recovers by
//! itself when the store is back.
//!
//! The gateway reaches PostgreSQL through a TCP proxy inside the test, which
//! cuts every connection and refuses new ones while down.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    ADMIN_TOKEN, CountingUpstream, Gateway, GatewayConfig, PASSWORD, PREFIX, StoreSpec, SwitchableProxy,
    postgres_addr, via, wait_for, with_postgres_schema, with_search_path,
};

const CHECK: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_millis(750);

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_fails_protected_routes_closed_and_service_recovers() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let proxy = SwitchableProxy::spawn(postgres_addr(&url)).await;
        let upstream = CountingUpstream::spawn().await;
        let store_url = with_search_path(&via(&url, proxy.addr), &schema);
        let cfg = GatewayConfig::new(
            dir.path(),
            upstream.addr(),
            StoreSpec::Postgres(store_url),
            vec!["alice".into()],
        );
        let gw = Gateway::start(&cfg, "gateway").await;
        let cookie = gw.sign_in("alice").await.unwrap();
        assert_eq!(gw.app_status(Some(&cookie)).await, 200);
        assert_eq!(gw.get("/public/before", None).await.unwrap().0, 200);
        assert_eq!(gw.readyz().await, 200);

        proxy.down();
        let cut = Instant::now();
        let (status, took) = wait_for(503, CHECK + SLACK + Duration::from_secs(5), || {
            gw.app_status(Some(&cookie))
        })
        .await;
        assert_eq!(status, 503, "still {status} {took:?} after the store went away");
        assert!(
            took <= CHECK + SLACK,
            "503 only after {took:?} (revocation_check {CHECK:?})"
        );
        let forwarded_meanwhile = upstream.count("/app");

        // From then on nothing reaches the upstream on a protected route,
        // whatever the method or the credentials.
        for _ in 0..10 {
            assert_eq!(gw.app_status(Some(&cookie)).await, 503);
            let (status, _, _) = gw
                .post("/app/write", &json!({ "x": 1 }), Some(&cookie))
                .await
                .unwrap();
            assert_eq!(status, 503);
            // Without a cookie too: a sign-in could not be completed.
            assert_eq!(gw.app_status(None).await, 503, "anonymous");
        }
        assert_eq!(
            upstream.count("/app"),
            forwarded_meanwhile,
            "a protected request reached the upstream while the store was unreachable"
        );
        // Bypass routes keep working; readiness says why not; signing in fails closed too.
        for i in 0..3 {
            let (status, body) = gw.get(&format!("/public/during-{i}"), None).await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(upstream.count("/public/during"), 3);
        let (ready, _) = wait_for(503, Duration::from_secs(10), || gw.readyz()).await;
        assert_eq!(ready, 503, "/readyz while the store is unreachable");
        let (status, body, cookie_set) = gw.authn("alice", PASSWORD).await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(cookie_set.is_none());
        let down_for = cut.elapsed();

        proxy.up();
        let back = Instant::now();
        let (status, recovered) =
            wait_for(200, Duration::from_secs(20), || gw.app_status(Some(&cookie))).await;
        assert_eq!(
            status,
            200,
            "no recovery within {recovered:?}:\n{}",
            gw.log_text()
        );
        let (ready, _) = wait_for(200, Duration::from_secs(10), || gw.readyz()).await;
        assert_eq!(ready, 200);
        gw.sign_in("alice").await.unwrap();
        assert_eq!(gw.get(&format!("{PREFIX}/healthz"), None).await.unwrap().0, 200);
        println!(
            "fail closed: 503 after {took:?} ({forwarded_meanwhile} protected request(s) forwarded before), \
             store down {down_for:?}, recovered {:?} after it came back",
            back.elapsed()
        );
    })
    .await;
}

/// A `SIGHUP` while the store is out of reach: the reloaded gateway carries
/// over the revocation view (still fresh) and the users read from the store,
/// so signed-in users, a users-file one and an API-created one, keep working
/// (they got 503 and 401: the new gateway had an empty view and no stored
/// users until the store answered).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_while_the_store_is_away_keeps_signed_in_users() {
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let proxy = SwitchableProxy::spawn(postgres_addr(&url)).await;
        let upstream = CountingUpstream::spawn().await;
        let store_url = with_search_path(&via(&url, proxy.addr), &schema);
        let mut cfg = GatewayConfig::new(
            dir.path(),
            upstream.addr(),
            StoreSpec::Postgres(store_url),
            vec!["alice".into()],
        );
        // Long enough for a reload whose store calls each wait for a connection.
        cfg.revocation_check = "120s";
        let gw = Gateway::start(&cfg, "gateway").await;
        let created = reqwest::Client::new()
            .post(gw.admin_url("/api/v1/users?activate=true"))
            .header("authorization", format!("SSWS {ADMIN_TOKEN}"))
            .json(&json!({
                "profile": { "login": "sam", "email": "sam@example.com", "firstName": "Sam", "lastName": "Stored" },
                "credentials": { "password": { "value": PASSWORD } }
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200);
        let alice = gw.sign_in("alice").await.unwrap();
        let sam = gw.sign_in("sam").await.unwrap();
        for cookie in [&alice, &sam] {
            assert_eq!(gw.app_status(Some(cookie)).await, 200);
        }

        proxy.down();
        let pid = gw.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !gw.log_text().contains("configuration reloaded") {
            assert!(Instant::now() < deadline, "no reload:\n{}", gw.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(gw.app_status(Some(&alice)).await, 200, "a users-file user after the reload");
        assert_eq!(gw.app_status(Some(&sam)).await, 200, "a stored user after the reload");

        // alice's password changes in the users file while the store is
        // still away: her sessions must end, and that cannot be written or
        // checked now, so protected routes fail closed until it can.
        let hash = portcullis::passwords::hash_password(b"alice-second-password").unwrap();
        std::fs::write(
            dir.path().join("users.toml"),
            format!("[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\nemail = \"alice@example.com\"\n"),
        )
        .unwrap();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        while gw.log_text().matches("configuration reloaded").count() < 2 {
            assert!(Instant::now() < deadline, "no second reload:\n{}", gw.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(gw.app_status(Some(&alice)).await, 503, "a changed password, not checked yet");
        assert_eq!(gw.app_status(Some(&sam)).await, 503);

        proxy.up();
        let (status, _) = wait_for(200, Duration::from_secs(20), || gw.app_status(Some(&sam))).await;
        assert_eq!(status, 200);
        assert_ne!(gw.app_status(Some(&alice)).await, 200, "ended by the password change");
        gw.sign_in("sam").await.unwrap();
    })
    .await;
}
