//! The self-service factor API under `{prefix}/api/v1/users/me/factors`:
//! session, cross-site rules, the X-CSRF-Token double submit, the
//! recent-second-factor rule, ownership of factor ids, and cancelling a push.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    Answer, active_totp, admin, device_answer, gateway, level2, pairing, push_message, send, sms_and_push,
    totp,
};
use crate::support::{ALICE, TestGateway};

const ME: &str = "/_portcullis/api/v1/users/me/factors";

/// A self-service call with the given cookies and `X-CSRF-Token`.
async fn me(
    gw: &TestGateway,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = gw.client().request(method, gw.url(&format!("{ME}{path}")));
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    req = match body {
        Some(b) => req.json(&b),
        None => req.header("content-type", "application/json"),
    };
    send(req).await
}

#[tokio::test]
async fn the_csrf_header_and_a_session_are_required() {
    let gw = gateway("").await;
    let login = gw.login(ALICE).await;
    let cookies = login.cookie();
    me(&gw, Method::GET, "", &cookies, None, None)
        .await
        .expect(403, Some("E0000006"));
    me(&gw, Method::GET, "", &cookies, Some("wrong.token"), None)
        .await
        .expect(403, Some("E0000006"));
    let ok = me(&gw, Method::GET, "", &cookies, Some(&login.csrf), None).await;
    ok.expect(200, None);
    assert_eq!(ok.body, json!([]));
    me(&gw, Method::GET, "/catalog", &cookies, Some(&login.csrf), None)
        .await
        .expect(200, None);
    // No session: 401 whatever the CSRF token.
    me(
        &gw,
        Method::GET,
        "",
        &format!("portcullis_csrf={}", login.csrf),
        Some(&login.csrf),
        None,
    )
    .await
    .expect(401, Some("E0000011"));
    // A client without a CSRF cookie gets one with the refusal, then succeeds.
    let r = me(&gw, Method::GET, "", &login.session_cookie(), None, None).await;
    r.expect(403, Some("E0000006"));
    let set = r.all("set-cookie");
    let fresh = set
        .iter()
        .find_map(|c| c.strip_prefix("portcullis_csrf="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("a fresh CSRF cookie");
    me(
        &gw,
        Method::GET,
        "",
        &format!("{}; portcullis_csrf={fresh}", login.session_cookie()),
        Some(&fresh),
        None,
    )
    .await
    .expect(200, None);
}

#[tokio::test]
async fn cross_site_rules_apply() {
    let gw = gateway("").await;
    let login = gw.login(ALICE).await;
    let body = r#"{"factorType":"token:software:totp","provider":"GOOGLE"}"#;
    let plain = send(
        gw.client()
            .post(gw.url(ME))
            .header("cookie", login.cookie())
            .header("x-csrf-token", &login.csrf)
            .header("content-type", "text/plain")
            .body(body),
    )
    .await;
    plain.expect(415, Some("E0000037"));
    let cross = send(
        gw.client()
            .post(gw.url(ME))
            .header("cookie", login.cookie())
            .header("x-csrf-token", &login.csrf)
            .header("content-type", "application/json")
            .header("origin", "https://evil.example")
            .body(body),
    )
    .await;
    cross.expect(403, Some("E0000006"));
}

#[tokio::test]
async fn adding_and_removing_factors_needs_a_recent_second_factor() {
    let gw = gateway("").await;
    let login = gw.login(ALICE).await;
    let level1 = login.cookie();
    let csrf = login.csrf.clone();
    let totp_body = json!({ "factorType": "token:software:totp", "provider": "GOOGLE" });

    // A first enrollment is allowed at level 1 (users.enrollment = "first_login").
    let e = me(
        &gw,
        Method::POST,
        "",
        &level1,
        Some(&csrf),
        Some(totp_body.clone()),
    )
    .await;
    e.expect(200, None);
    let fid = e.body["id"].as_str().unwrap().to_owned();
    let secret = e.body["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let qr = e.body["_embedded"]["activation"]["_links"]["qrcode"]["href"]
        .as_str()
        .unwrap();
    assert_eq!(qr, gw.url(&format!("{ME}/{fid}/qr")));
    let q = me(
        &gw,
        Method::GET,
        &format!("/{fid}/qr"),
        &level1,
        Some(&csrf),
        None,
    )
    .await;
    q.expect(200, None);
    assert!(q.text.contains("<svg"));
    let a = me(
        &gw,
        Method::POST,
        &format!("/{fid}/lifecycle/activate"),
        &level1,
        Some(&csrf),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "ACTIVE");
    assert!(
        a.body["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .contains("/users/me/factors/")
    );
    gw.clock.advance(30);

    // A second one needs a second factor within 10 minutes; so does removal.
    let refused = me(
        &gw,
        Method::POST,
        "",
        &level1,
        Some(&csrf),
        Some(totp_body.clone()),
    )
    .await;
    refused.expect(403, Some("E0000006"));
    assert!(refused.text.contains("10 minutes"));
    me(
        &gw,
        Method::DELETE,
        &format!("/{fid}"),
        &level1,
        Some(&csrf),
        None,
    )
    .await
    .expect(403, Some("E0000006"));
    // Verifying through this API checks the code but does not raise the session.
    let v = me(
        &gw,
        Method::POST,
        &format!("/{fid}/verify"),
        &level1,
        Some(&csrf),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await;
    v.expect(200, None);
    assert_eq!(v.body["factorResult"], "SUCCESS");
    gw.clock.advance(30);

    let session = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let level2_cookies = format!("portcullis_session={session}; portcullis_csrf={csrf}");
    let second = me(
        &gw,
        Method::POST,
        "",
        &level2_cookies,
        Some(&csrf),
        Some(totp_body.clone()),
    )
    .await;
    second.expect(200, None);
    let second_id = second.body["id"].as_str().unwrap().to_owned();
    // Without the header even a fresh level-2 session is refused.
    me(
        &gw,
        Method::DELETE,
        &format!("/{second_id}"),
        &level2_cookies,
        None,
        None,
    )
    .await
    .expect(403, Some("E0000006"));
    me(
        &gw,
        Method::DELETE,
        &format!("/{second_id}"),
        &level2_cookies,
        Some(&csrf),
        None,
    )
    .await
    .expect(204, None);

    // Eleven minutes later removal is refused again.
    gw.clock.advance(11 * 60);
    me(
        &gw,
        Method::DELETE,
        &format!("/{fid}"),
        &level2_cookies,
        Some(&csrf),
        None,
    )
    .await
    .expect(403, Some("E0000006"));
    let list = me(&gw, Method::GET, "", &level2_cookies, Some(&csrf), None).await;
    list.expect(200, None);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn another_users_factor_is_not_found() {
    let gw = gateway("").await;
    let (bob_factor, _) = active_totp(&gw, &TestGateway::uid("bob")).await;
    let login = gw.login(ALICE).await;
    for (method, suffix) in [
        (Method::GET, String::new()),
        (Method::GET, "/qr".to_owned()),
        (Method::POST, "/verify".to_owned()),
        (Method::GET, "/transactions/x".to_owned()),
        (Method::DELETE, "/transactions/x".to_owned()),
    ] {
        me(
            &gw,
            method,
            &format!("/{bob_factor}{suffix}"),
            &login.cookie(),
            Some(&login.csrf),
            Some(json!({ "passCode": "123456" })),
        )
        .await
        .expect(404, Some("E0000007"));
    }
    // Removal checks the recent second factor first, so it says nothing about the id.
    me(
        &gw,
        Method::DELETE,
        &format!("/{bob_factor}"),
        &login.cookie(),
        Some(&login.csrf),
        None,
    )
    .await
    .expect(403, Some("E0000006"));
}

/// Enrolls a push factor for `uid` through the admin API and pairs `key` with it.
async fn paired_push(gw: &TestGateway, uid: &str, key: &ed25519_dalek::SigningKey) -> String {
    let e = admin(
        gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(json!({ "factorType": "push", "provider": "OKTA" })),
    )
    .await;
    e.expect(200, None);
    let token = e.body["_embedded"]["activation"]["activationToken"]
        .as_str()
        .unwrap();
    send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/push/devices"))
            .json(&pairing(key, token)),
    )
    .await
    .expect(200, None);
    e.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_user_cancels_their_own_push_and_the_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&sms_and_push(&file)).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let alice_push = paired_push(&gw, &TestGateway::uid("alice"), &key).await;
    let bob_push = paired_push(&gw, &TestGateway::uid("bob"), &key).await;
    // A push of bob's, started by an administrator.
    let b = admin(
        &gw,
        Method::POST,
        &format!(
            "/api/v1/users/{}/factors/{bob_push}/verify",
            TestGateway::uid("bob")
        ),
        None,
    )
    .await;
    b.expect(201, None);
    let bob_tid = push_message(&file, &b.body).await["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let login = gw.login(ALICE).await;
    let (cookie, csrf) = (login.cookie(), login.csrf.clone());
    let w = me(
        &gw,
        Method::POST,
        &format!("/{alice_push}/verify"),
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    w.expect(201, None);
    assert_eq!(w.body["factorResult"], "WAITING");
    let number = w.body["_embedded"]["challenge"]["correctAnswer"]
        .as_u64()
        .unwrap() as u32;
    let push = push_message(&file, &w.body).await;
    let tid = push["transaction_id"].as_str().unwrap().to_owned();
    let cancel = w.body["_links"]["cancel"]["href"].as_str().unwrap();
    assert_eq!(
        cancel,
        gw.url(&format!("{ME}/{alice_push}/transactions/{tid}")),
        "_links.cancel is where DELETE is served"
    );
    assert_eq!(w.body["_links"]["cancel"]["hints"]["allow"], json!(["DELETE"]));

    // The CSRF header is needed to cancel, as for every call.
    let path = format!("/{alice_push}/transactions/{tid}");
    me(&gw, Method::DELETE, &path, &cookie, None, None)
        .await
        .expect(403, Some("E0000006"));
    // Another user's transaction, through one's own factor: not found, untouched.
    me(
        &gw,
        Method::DELETE,
        &format!("/{alice_push}/transactions/{bob_tid}"),
        &cookie,
        Some(&csrf),
        None,
    )
    .await
    .expect(404, Some("E0000191"));
    let bob_poll = admin(
        &gw,
        Method::GET,
        &format!(
            "/api/v1/users/{}/factors/{bob_push}/transactions/{bob_tid}",
            TestGateway::uid("bob")
        ),
        None,
    )
    .await;
    assert_eq!(bob_poll.body["factorResult"], "WAITING");

    let c = me(&gw, Method::DELETE, &path, &cookie, Some(&csrf), None).await;
    c.expect(200, None);
    assert_eq!(c.body["factorResult"], "REJECTED");
    let poll = me(&gw, Method::GET, &path, &cookie, Some(&csrf), None).await;
    assert_eq!(
        poll.body["factorResult"], "REJECTED",
        "a cancelled push polls as REJECTED"
    );
    // The device answers too late: refused, and the push stays rejected.
    let late = send(
        gw.client()
            .post(gw.url(&format!("/_portcullis/api/v1/push/transactions/{tid}")))
            .json(&device_answer(&key, &push, "approve", number)),
    )
    .await;
    late.expect(403, Some("E0000079"));
    assert!(late.text.contains("cancelled"), "{}", late.text);
    let poll = me(&gw, Method::GET, &path, &cookie, Some(&csrf), None).await;
    assert_eq!(poll.body["factorResult"], "REJECTED");
    // Cancelling again answers the same.
    let again = me(&gw, Method::DELETE, &path, &cookie, Some(&csrf), None).await;
    again.expect(200, None);
    assert_eq!(again.body["factorResult"], "REJECTED");
}

/// Found in review: with only the password (a level-1 session), reading the
/// QR of a pending factor an administrator enrolled and activating it would
/// add an attacker's authenticator and reach level 2. Showing, activating and
/// resending a pending factor count as adding one.
#[tokio::test]
async fn a_password_alone_cannot_take_over_a_pending_factor() {
    let gw = gateway("").await;
    let uid = TestGateway::uid(ALICE.username);
    active_totp(&gw, &uid).await;
    let e = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(json!({ "factorType": "token:software:totp", "provider": "GOOGLE" })),
    )
    .await;
    e.expect(200, None);
    let pending = e.body["id"].as_str().unwrap().to_owned();
    let secret = e.body["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();

    let login = gw.login(ALICE).await;
    let (level1, csrf) = (login.cookie(), login.csrf.clone());
    let listed = me(&gw, Method::GET, "", &level1, Some(&csrf), None).await;
    listed.expect(200, None);
    let q = me(
        &gw,
        Method::GET,
        &format!("/{pending}/qr"),
        &level1,
        Some(&csrf),
        None,
    )
    .await;
    q.expect(403, Some("E0000006"));
    assert!(!q.text.contains("otpauth"));
    let a = me(
        &gw,
        Method::POST,
        &format!("/{pending}/lifecycle/activate"),
        &level1,
        Some(&csrf),
        Some(json!({ "passCode": totp(&gw, &secret, 0) })),
    )
    .await;
    a.expect(403, Some("E0000006"));
    let f = admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{uid}/factors/{pending}"),
        None,
    )
    .await;
    assert_eq!(f.body["status"], "PENDING_ACTIVATION");
}

/// Two replicas on one memory store and clock, each hearing of the other's
/// revocations only after `revocation_check` (120 s: not within a test).
async fn two_slow_replicas() -> (TestGateway, TestGateway) {
    let store: portcullis::store::SharedStore =
        std::sync::Arc::new(portcullis::store::memory::MemoryStore::new());
    let clock = portcullis::clock::ManualClock::new(crate::support::T0);
    let replica = || {
        TestGateway::builder()
            .toml(&format!(
                "{}\n[session]\nrevocation_check = \"120s\"\n",
                crate::common::FACTORS
            ))
            .store(store.clone())
            .clock(clock.clone())
            .start()
    };
    let (a, b) = (replica().await, replica().await);
    (a, b)
}

/// Removing one's own factor on one replica while an administrator ends the
/// user's sessions on another (that replica has not heard of it yet): the
/// removal's new epoch includes the administrator's, and the session must
/// not be re-issued past it (it was, carrying on a stolen session).
#[tokio::test]
async fn a_factor_removed_during_an_admin_revocation_does_not_carry_the_session_on() {
    let (a, b) = two_slow_replicas().await;
    let uid = TestGateway::uid("alice");
    let csrf = a.login(ALICE).await.csrf;
    let (fid, secret) = active_totp(&a, &uid).await;
    let (other, _) = active_totp(&a, &uid).await;
    let session = level2(&a, "alice", ALICE.password, &fid, &secret).await;
    let cookies = format!("portcullis_session={session}; portcullis_csrf={csrf}");

    admin(&b, Method::DELETE, &format!("/api/v1/users/{uid}/sessions"), None)
        .await
        .expect(204, None);
    // A asks the store before a factor changes, so it learns of the
    // revocation and refuses (before it asked, it removed the factor).
    let removed = me(
        &a,
        Method::DELETE,
        &format!("/{other}"),
        &cookies,
        Some(&csrf),
        None,
    )
    .await;
    removed.expect(401, Some("E0000011"));
    admin(
        &a,
        Method::GET,
        &format!("/api/v1/users/{uid}/factors/{other}"),
        None,
    )
    .await
    .expect(200, None);
    assert!(
        removed
            .headers
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("portcullis_session=")),
        "no session re-issued: {:?}",
        removed.headers
    );
    let after = b
        .client()
        .get(b.url("/private"))
        .header("accept", "application/json")
        .header("cookie", format!("portcullis_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the session ended everywhere");
}

/// A session an administrator ended on another replica a moment ago (this
/// one has not heard of it yet) cannot add a factor that would outlive it:
/// the self-service API and the portal's enrollment ask the store first.
#[tokio::test]
async fn a_session_ended_on_another_replica_cannot_add_a_factor() {
    let (a, b) = two_slow_replicas().await;
    let uid = TestGateway::uid("alice");
    let csrf = a.login(ALICE).await.csrf;
    let (fid, secret) = active_totp(&a, &uid).await;
    let session = level2(&a, "alice", ALICE.password, &fid, &secret).await;
    let cookies = format!("portcullis_session={session}; portcullis_csrf={csrf}");
    let enroll = json!({ "factorType": "token:software:totp", "provider": "GOOGLE" });
    // Before the revocation the session may enroll (and a pending factor
    // it made may not be activated after it).
    let pending = me(&a, Method::POST, "", &cookies, Some(&csrf), Some(enroll.clone())).await;
    pending.expect(200, None);
    let pending_id = pending.body["id"].as_str().unwrap().to_owned();
    let pending_secret = pending.body["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();

    admin(&b, Method::DELETE, &format!("/api/v1/users/{uid}/sessions"), None)
        .await
        .expect(204, None);
    me(&a, Method::POST, "", &cookies, Some(&csrf), Some(enroll))
        .await
        .expect(401, Some("E0000011"));
    me(
        &a,
        Method::POST,
        &format!("/{pending_id}/lifecycle/activate"),
        &cookies,
        Some(&csrf),
        Some(json!({ "passCode": totp(&a, &pending_secret, 0) })),
    )
    .await
    .expect(401, Some("E0000011"));
    let listed = admin(&a, Method::GET, &format!("/api/v1/users/{uid}/factors"), None).await;
    listed.expect(200, None);
    let active: Vec<&Value> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "ACTIVE")
        .collect();
    assert_eq!(active.len(), 1, "only the factor from before: {}", listed.body);
    // Asking the store brought A up to date: the session is refused there now.
    let after = a
        .client()
        .get(a.url("/private"))
        .header("accept", "application/json")
        .header("cookie", format!("portcullis_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}
