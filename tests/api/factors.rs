//! The admin Factors API and recovery codes: enroll, QR, activate, verify,
//! replay and wrong codes, ownership of ids, catalog, removal rules.

use reqwest::Method;
use serde_json::json;

use crate::common::{active_totp, admin, create_user, gateway, send, totp};
use crate::support::{BOB, TestGateway, set_cookie};

#[tokio::test]
async fn totp_enroll_qr_activate_verify() {
    let gw = gateway("").await;
    let u = create_user(&gw, "lena", None).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/users/{uid}/factors");

    let catalog = admin(&gw, Method::GET, &format!("{base}/catalog"), None).await;
    catalog.expect(200, None);
    let types: Vec<(String, String)> = catalog
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["factorType"].as_str().unwrap().into(),
                f["provider"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        types.contains(&("token:software:totp".into(), "GOOGLE".into())),
        "{types:?}"
    );
    assert!(
        catalog
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "NOT_SETUP")
    );
    assert!(
        catalog.body[0]["_links"]["enroll"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/factors")
    );

    let e = admin(
        &gw,
        Method::POST,
        &format!("{base}?activate=false"),
        Some(json!({ "factorType": "token:software:totp", "provider": "GOOGLE" })),
    )
    .await;
    e.expect(200, None);
    assert_eq!(e.header("cache-control").as_deref(), Some("no-store"));
    let f = &e.body;
    let fid = f["id"].as_str().unwrap().to_owned();
    assert_eq!(fid.len(), 20);
    assert_eq!(f["status"], "PENDING_ACTIVATION");
    assert_eq!(
        (
            f["factorType"].as_str(),
            f["provider"].as_str(),
            f["vendorName"].as_str()
        ),
        (Some("token:software:totp"), Some("GOOGLE"), Some("GOOGLE"))
    );
    let act = &f["_embedded"]["activation"];
    assert_eq!(act["encoding"], "base32");
    assert_eq!(act["keyLength"], 20);
    assert_eq!(act["timeStep"], 30);
    let secret = act["sharedSecret"].as_str().unwrap().to_owned();
    let qr = act["_links"]["qrcode"]["href"].as_str().unwrap().to_owned();
    assert_eq!(qr, gw.admin_url(&format!("{base}/{fid}/qr")));
    assert_eq!(act["_links"]["qrcode"]["type"], "image/svg+xml");

    // The QR code, while pending (with the token; not without).
    let res = gw
        .client()
        .get(&qr)
        .header("authorization", format!("SSWS {}", crate::common::TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.text().await.unwrap().contains("<svg"));
    assert_eq!(gw.client().get(&qr).send().await.unwrap().status(), 401);

    // Not verifiable while pending; a wrong activation code is refused.
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await
    .expect(410, Some("E0000154"));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({ "passCode": "000000" })),
    )
    .await
    .expect(403, Some("E0000068"));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({})),
    )
    .await
    .expect(400, Some("E0000001"));
    let a = admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "ACTIVE");
    assert!(
        a.body["_links"]["verify"]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{fid}/verify"))
    );
    admin(&gw, Method::GET, &format!("{base}/{fid}/qr"), None)
        .await
        .expect(404, Some("E0000007"));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({ "passCode": "123456" })),
    )
    .await
    .expect(403, Some("E0000079"));

    // Verify: the same step again is a replay, the next one succeeds once.
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await
    .expect(403, Some("E0000082"));
    gw.clock.advance(30);
    let code = totp(&gw, &secret, 0);
    let v = admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": code })),
    )
    .await;
    v.expect(200, None);
    assert_eq!(v.body, json!({ "factorResult": "SUCCESS" }));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": code })),
    )
    .await
    .expect(403, Some("E0000082"));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": "000000" })),
    )
    .await
    .expect(403, Some("E0000068"));
    admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({})),
    )
    .await
    .expect(400, Some("E0000001"));

    // Get, list; TOTP has no transactions and nothing to resend.
    let g = admin(&gw, Method::GET, &format!("{base}/{fid}"), None).await;
    g.expect(200, None);
    assert!(g.body.get("_embedded").is_none(), "the secret is shown once");
    assert_eq!(g.body["profile"]["credentialId"], "lena");
    let l = admin(&gw, Method::GET, &base, None).await;
    l.expect(200, None);
    assert_eq!(l.body.as_array().unwrap().len(), 1);
    admin(&gw, Method::GET, &format!("{base}/{fid}/transactions/nope"), None)
        .await
        .expect(404, Some("E0000191"));
    admin(&gw, Method::POST, &format!("{base}/{fid}/resend"), None)
        .await
        .expect(403, Some("E0000079"));
    let c = admin(&gw, Method::GET, &format!("{base}/catalog"), None).await;
    assert!(
        c.body
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["provider"] == "GOOGLE" && f["status"] == "ACTIVE")
    );
}

#[tokio::test]
async fn factor_ids_are_checked_against_their_owner() {
    let gw = gateway("").await;
    let alice = TestGateway::uid("alice");
    let bob = TestGateway::uid("bob");
    let (fid, secret) = active_totp(&gw, &bob).await;
    for (method, suffix, body) in [
        (Method::GET, String::new(), None),
        (Method::GET, "/qr".into(), None),
        (
            Method::POST,
            "/verify".into(),
            Some(json!({ "passCode": totp(&gw, &secret, 0) })),
        ),
        (
            Method::POST,
            "/lifecycle/activate".into(),
            Some(json!({ "passCode": "123456" })),
        ),
        (Method::GET, "/transactions/x".into(), None),
        (Method::POST, "/resend".into(), None),
        (Method::DELETE, String::new(), None),
    ] {
        admin(
            &gw,
            method,
            &format!("/api/v1/users/{alice}/factors/{fid}{suffix}"),
            body,
        )
        .await
        .expect(404, Some("E0000007"));
    }
    // Still bob's, still usable.
    admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{bob}/factors/{fid}"),
        None,
    )
    .await
    .expect(200, None);
    admin(&gw, Method::GET, "/api/v1/users/nobody/factors", None)
        .await
        .expect(404, Some("E0000007"));
}

#[tokio::test]
async fn enrollment_is_checked_and_an_admin_may_remove_the_last_factor() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let base = format!("/api/v1/users/{uid}/factors");
    for (query, body) in [
        ("", json!({ "factorType": "question" })),
        (
            "",
            json!({ "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": "+15555550100" } }),
        ),
        (
            "",
            json!({ "factorType": "token:software:totp", "provider": "RSA" }),
        ),
        ("", json!({ "provider": "GOOGLE" })),
        (
            "?activate=true",
            json!({ "factorType": "token:software:totp", "provider": "GOOGLE" }),
        ),
    ] {
        admin(&gw, Method::POST, &format!("{base}{query}"), Some(body))
            .await
            .expect(400, Some("E0000001"));
    }
    let (first, _) = active_totp(&gw, &uid).await;
    let (second, _) = active_totp(&gw, &uid).await;
    admin(&gw, Method::DELETE, &format!("{base}/{first}"), None)
        .await
        .expect(204, None);
    admin(&gw, Method::GET, &format!("{base}/{first}"), None)
        .await
        .expect(404, Some("E0000007"));
    // An administrator may remove the last one (the user enrolls again; see reset.rs).
    admin(&gw, Method::DELETE, &format!("{base}/{second}"), None)
        .await
        .expect(204, None);
    // A pending factor can always go.
    let p = admin(
        &gw,
        Method::POST,
        &base,
        Some(json!({ "factorType": "token:software:totp", "provider": "OKTA" })),
    )
    .await;
    p.expect(200, None);
    assert!(p.body["id"].as_str().unwrap().starts_with("ost"));
    admin(
        &gw,
        Method::DELETE,
        &format!("{base}/{}", p.body["id"].as_str().unwrap()),
        None,
    )
    .await
    .expect(204, None);
}

#[tokio::test]
async fn removing_an_active_factor_ends_the_users_sessions() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("bob");
    let (f1, _) = active_totp(&gw, &uid).await;
    active_totp(&gw, &uid).await;
    let s = gw.login(crate::support::BOB).await;
    assert_eq!(gw.status("/app", Some(&s.session_cookie())).await, 200);
    admin(
        &gw,
        Method::DELETE,
        &format!("/api/v1/users/{uid}/factors/{f1}"),
        None,
    )
    .await
    .expect(204, None);
    assert_eq!(gw.status("/app", Some(&s.session_cookie())).await, 401);
}

#[tokio::test]
async fn recovery_codes_are_counted_generated_once_and_revoked() {
    let gw = gateway("").await;
    let path = format!("/api/v1/users/{}/recovery_codes", TestGateway::uid("alice"));
    let a = admin(&gw, Method::GET, &path, None).await;
    a.expect(200, None);
    assert_eq!(a.body["count"], 0);
    let g = admin(&gw, Method::POST, &path, None).await;
    g.expect(200, None);
    assert_eq!(g.header("cache-control").as_deref(), Some("no-store"));
    let codes = g.body["recoveryCodes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(admin(&gw, Method::GET, &path, None).await.body["count"], 10);
    // Not a Factor object: the factor list does not show them.
    let l = admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{}/factors", TestGateway::uid("alice")),
        None,
    )
    .await;
    assert!(!l.text.contains("recovery"));
    admin(&gw, Method::DELETE, &path, None).await.expect(204, None);
    assert_eq!(admin(&gw, Method::GET, &path, None).await.body["count"], 0);
    admin(&gw, Method::GET, "/api/v1/users/nobody/recovery_codes", None)
        .await
        .expect(404, Some("E0000007"));
}

/// Locks bob with two wrong codes through the admin verify (the config sets
/// `max_factor_failures = 2`); returns his user id.
async fn lock_bob_by_codes(gw: &TestGateway) -> String {
    let uid = TestGateway::uid("bob");
    let (fid, _) = active_totp(gw, &uid).await;
    for _ in 0..2 {
        admin(
            gw,
            Method::POST,
            &format!("/api/v1/users/{uid}/factors/{fid}/verify"),
            Some(json!({ "passCode": "000000" })),
        )
        .await
        .expect(403, Some("E0000068"));
    }
    let u = admin(gw, Method::GET, &format!("/api/v1/users/{uid}"), None).await;
    assert_eq!(u.body["status"], "LOCKED_OUT");
    uid
}

/// The authn API's password step (which must set no cookie here).
async fn authn(gw: &TestGateway, user: &str, password: &str) -> crate::common::Answer {
    let a = send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/authn"))
            .json(&json!({ "username": user, "password": password })),
    )
    .await;
    assert!(a.header("set-cookie").is_none(), "{:?}", a.headers);
    a
}

#[tokio::test]
async fn a_user_locked_by_codes_signs_in_like_a_wrong_password() {
    let gw = gateway("[regulation]\nmax_factor_failures = 2\n").await;
    lock_bob_by_codes(&gw).await;
    // SPEC section 6: the right password of a locked user gets exactly the
    // answer of a wrong one (and of an unknown user), not E0000069.
    let mut bodies = Vec::new();
    for (user, password) in [("bob", BOB.password), ("bob", "wrong"), ("nobody", "wrong")] {
        let a = authn(&gw, user, password).await;
        a.expect(401, Some("E0000004"));
        let mut body = a.body;
        body.as_object_mut().unwrap().remove("errorId");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    // The login form too: the generic words, no wait and no session.
    let client = gw.client();
    for password in [BOB.password, "wrong"] {
        let csrf = gw.login_page(&client, "/").await;
        let res = gw.post_login(&client, &csrf, "bob", password, "/", &[]).await;
        assert_eq!(res.status(), 401);
        assert!(set_cookie(&res, "portcullis_session").is_none());
        let text = res.text().await.unwrap();
        assert!(
            text.contains("Incorrect username or password.") && !text.contains("Try again"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn reveal_lockout_tells_a_user_locked_by_codes() {
    let gw = gateway("[regulation]\nmax_factor_failures = 2\nreveal_lockout = true\n").await;
    lock_bob_by_codes(&gw).await;
    authn(&gw, "bob", BOB.password)
        .await
        .expect(403, Some("E0000069"));
    authn(&gw, "bob", "wrong").await.expect(403, Some("E0000069"));
    // The form tells the right password how long to wait.
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let res = gw.post_login(&client, &csrf, "bob", BOB.password, "/", &[]).await;
    assert_eq!(res.status(), 403);
    assert!(set_cookie(&res, "portcullis_session").is_none());
    let text = res.text().await.unwrap();
    assert!(text.contains("Try again in about 15 minutes."), "{text}");
}

#[tokio::test]
async fn a_locked_user_shows_locked_out_until_unlocked() {
    let gw = gateway("[regulation]\nmax_factor_failures = 2\n").await;
    let uid = TestGateway::uid("bob");
    let (fid, _) = active_totp(&gw, &uid).await;
    for _ in 0..2 {
        admin(
            &gw,
            Method::POST,
            &format!("/api/v1/users/{uid}/factors/{fid}/verify"),
            Some(json!({ "passCode": "000000" })),
        )
        .await
        .expect(403, Some("E0000068"));
    }
    let u = admin(&gw, Method::GET, &format!("/api/v1/users/{uid}"), None).await;
    assert_eq!(u.body["status"], "LOCKED_OUT");
    assert!(u.body["_links"]["unlock"]["href"].is_string());
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/lifecycle/unlock"),
        None,
    )
    .await
    .expect(200, None);
    assert_eq!(
        admin(&gw, Method::GET, &format!("/api/v1/users/{uid}"), None)
            .await
            .body["status"],
        "ACTIVE"
    );
}

/// Enrolling a type and provider the user has pending replaces that pending
/// factor; an active factor of the same type stays, and another provider's
/// pending factor too.
#[tokio::test]
async fn enrolling_again_replaces_a_pending_factor_and_keeps_active_ones() {
    let gw = gateway("").await;
    let u = create_user(&gw, "penny", None).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/users/{uid}/factors");
    let (active, _) = active_totp(&gw, &uid).await;
    let enroll = |provider: &'static str| {
        let (gw, base) = (&gw, &base);
        async move {
            let e = admin(
                gw,
                Method::POST,
                base,
                Some(json!({ "factorType": "token:software:totp", "provider": provider })),
            )
            .await;
            e.expect(200, None);
            e.body["id"].as_str().unwrap().to_owned()
        }
    };
    let okta = enroll("OKTA").await;
    let _abandoned = enroll("GOOGLE").await;
    let latest = enroll("GOOGLE").await;
    let list = admin(&gw, Method::GET, &base, None).await;
    list.expect(200, None);
    let mut got: Vec<(String, String)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().into(),
                f["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (active, "ACTIVE".to_owned()),
        (okta, "PENDING_ACTIVATION".to_owned()),
        (latest, "PENDING_ACTIVATION".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want, "{}", list.text);
}

/// Wrong codes sent all at once (many connections, a store with real
/// latency: SQLite) cannot get around `max_factor_failures`: each attempt is
/// counted toward the lock before it is checked, so only three are checked
/// and the rest are refused. Before, every one of them read "not locked"
/// before the first failure was counted: hundreds of guesses per lockout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_sent_at_once_are_checked_one_after_another() {
    use portcullis::clock::Clock as _;
    use portcullis::store::{CounterKey, SharedStore, sqlite::SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = std::sync::Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.unwrap());
    let gw = TestGateway::builder()
        .toml(&format!(
            "{}\n[regulation]\nmax_factor_failures = 3\n",
            crate::common::FACTORS
        ))
        .store(store.clone())
        .start()
        .await;
    let uid = TestGateway::uid("bob");
    let (fid, secret) = active_totp(&gw, &uid).await;
    let right: Vec<String> = (-1..=1).map(|s| totp(&gw, &secret, s)).collect();
    let path = format!("/api/v1/users/{uid}/factors/{fid}/verify");
    let wrong = (0u32..)
        .map(|i| format!("{:06}", 100_003 + i * 7_919))
        .filter(|c| !right.contains(c))
        .take(24);
    // 24: well within the admin listener's 32 connections per address (the
    // calls above may still hold theirs while the server closes them).
    let answers = futures_util::future::join_all(
        wrong.map(|code| admin(&gw, Method::POST, &path, Some(json!({ "passCode": code })))),
    )
    .await;
    assert!(answers.iter().all(|a| a.status == 403), "all refused");
    // Wrong codes that were checked count for the address too (refused ones
    // do not): read the store's count by adding one.
    let key = CounterKey::anonymous("ip:127.0.0.1");
    let counted = store.record_failure(&key, 3_600, gw.clock.now()).await.unwrap();
    assert_eq!(counted - 1, 3, "codes checked before the lock");
    admin(&gw, Method::POST, &path, Some(json!({ "passCode": right[1] })))
        .await
        .expect(403, Some("E0000068"));
}
