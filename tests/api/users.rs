//! The Users API: tokens, create (with and without a password), get by id or
//! login, paging with Link headers, updates, lifecycle, deletion, the
//! read-only users-file users, and `portcullis users unlock` (the real
//! binary) finding a user created here by login.

use reqwest::Method;
use serde_json::json;

use crate::common::{TOKEN, active_totp, admin, admin_as, create_user, gateway};
use crate::support::{ALICE, BOB, TestGateway};

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let paths = [
        (Method::GET, "/api/v1/users".to_owned()),
        (Method::GET, format!("/api/v1/users/{uid}")),
        (Method::GET, format!("/api/v1/users/{uid}/factors")),
        (Method::DELETE, format!("/api/v1/users/{uid}/sessions")),
        (Method::GET, format!("/api/v1/users/{uid}/recovery_codes")),
    ];
    for (method, path) in &paths {
        admin_as(&gw, method.clone(), path, None, None)
            .await
            .expect(401, Some("E0000011"));
    }
    // Wrong tokens count toward the per-address throttle (10 a minute):
    // eight here, on two routes.
    for auth in ["SSWS wrong-token", "Basic dGVzdA==", TOKEN, "SSWS"] {
        for (method, path) in &paths[1..3] {
            admin_as(&gw, method.clone(), path, None, Some(auth))
                .await
                .expect(401, Some("E0000011"));
        }
    }
    for auth in [format!("SSWS {TOKEN}"), format!("Bearer {TOKEN}")] {
        admin_as(&gw, Method::GET, "/api/v1/users/alice", None, Some(&auth))
            .await
            .expect(200, None);
    }
    // No token needed for health and the document.
    for path in ["/healthz", "/openapi.json"] {
        admin_as(&gw, Method::GET, path, None, None)
            .await
            .expect(200, None);
    }
}

#[tokio::test]
async fn wrong_tokens_are_throttled_per_address() {
    let gw = gateway("").await;
    let right = format!("SSWS {TOKEN}");
    for i in 0..10 {
        admin_as(
            &gw,
            Method::GET,
            "/api/v1/users",
            None,
            Some(&format!("SSWS guess-{i:02}-0123456789abcdef")),
        )
        .await
        .expect(401, Some("E0000011"));
    }
    // The eleventh within the minute: 429, and so is the right token now
    // (else the answer would tell a guesser which guess was right).
    for auth in ["SSWS guess-10-0123456789abcdef", right.as_str()] {
        let a = admin_as(&gw, Method::GET, "/api/v1/users", None, Some(auth)).await;
        a.expect(429, Some("E0000047"));
        assert_eq!(a.header("x-rate-limit-limit").as_deref(), Some("10"));
        assert_eq!(a.header("x-rate-limit-remaining").as_deref(), Some("0"));
        let retry: i64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(a.header("x-rate-limit-reset").is_some());
    }
    // Health checks take no token and are not throttled.
    admin_as(&gw, Method::GET, "/healthz", None, None)
        .await
        .expect(200, None);
    // After the window the right token works again.
    gw.clock.advance(61);
    admin_as(&gw, Method::GET, "/api/v1/users", None, Some(&right))
        .await
        .expect(200, None);
}

/// Behind a trusted reverse proxy, wrong tokens count per client address
/// (`X-Forwarded-For`), not per proxy: one client's guesses never lock the
/// admin API for the others.
#[tokio::test]
async fn wrong_tokens_behind_a_proxy_throttle_only_their_client() {
    let gw = gateway("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let call = |xff: &'static str, auth: String| {
        let req = gw
            .client()
            .get(gw.admin_url("/api/v1/users"))
            .header("accept", "application/json")
            .header("x-forwarded-for", xff)
            .header("authorization", auth);
        crate::common::send(req)
    };
    for i in 0..10 {
        call("203.0.113.9", format!("SSWS guess-{i:02}-0123456789abcdef"))
            .await
            .expect(401, Some("E0000011"));
    }
    call("203.0.113.9", format!("SSWS {TOKEN}"))
        .await
        .expect(429, Some("E0000047"));
    // Another client behind the same proxy is not throttled.
    call("198.51.100.7", format!("SSWS {TOKEN}"))
        .await
        .expect(200, None);
}

#[tokio::test]
async fn admin_verify_failures_count_against_the_client_behind_the_proxy() {
    // Wrong codes through the admin API count toward the address of the
    // client behind the trusted proxy, not toward the proxy itself (which
    // would block every sign-in that proxy carries).
    let gw = gateway(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n[regulation]\nmax_failures_per_ip = 3\nmax_factor_failures = 20\n",
    )
    .await;
    let uid = TestGateway::uid("alice");
    let (fid, _secret) = active_totp(&gw, &uid).await;
    for _ in 0..3 {
        let req = gw
            .client()
            .post(gw.admin_url(&format!("/api/v1/users/{uid}/factors/{fid}/verify")))
            .header("accept", "application/json")
            .header("x-forwarded-for", "203.0.113.9")
            .header("authorization", format!("SSWS {TOKEN}"))
            .json(&json!({ "passCode": "000000" }));
        crate::common::send(req).await.expect(403, Some("E0000068"));
    }
    let sign_in = |xff: Option<&'static str>| {
        let mut req = gw
            .client()
            .post(gw.url("/_portcullis/api/v1/authn"))
            .json(&json!({ "username": BOB.username, "password": BOB.password }));
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        crate::common::send(req)
    };
    // The proxy's own address (no X-Forwarded-For) is not blocked...
    sign_in(None).await.expect(200, None);
    // ...the client's is.
    sign_in(Some("203.0.113.9")).await.expect(401, Some("E0000004"));
}

#[tokio::test]
async fn users_are_created_shown_and_sign_in() {
    let gw = gateway("").await;
    let u = create_user(&gw, "dana@example.com", Some("dana-password-1")).await;
    let id = u["id"].as_str().unwrap();
    assert!(id.len() == 20 && id.starts_with("00u") && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(u["status"], "ACTIVE");
    assert_eq!(u["profile"]["login"], "dana@example.com");
    assert_eq!(u["profile"]["firstName"], "Test");
    assert_eq!(
        u["credentials"]["provider"],
        json!({ "type": "OKTA", "name": "OKTA" })
    );
    assert_eq!(u["credentials"]["password"], json!({}), "set, never shown");
    for k in [
        "created",
        "activated",
        "statusChanged",
        "lastUpdated",
        "passwordChanged",
    ] {
        assert!(u[k].as_str().is_some_and(|t| t.ends_with(".000Z")), "{k}: {u}");
    }
    assert!(u["lastLogin"].is_null());
    assert_eq!(
        u["_links"]["self"]["href"],
        gw.admin_url(&format!("/api/v1/users/{id}"))
    );
    assert!(!u.to_string().contains("dana-password-1") && !u.to_string().contains("argon2"));

    // By id and by login (any case).
    for key in [id.to_owned(), "DANA@example.com".to_owned()] {
        let got = admin(&gw, Method::GET, &format!("/api/v1/users/{key}"), None).await;
        got.expect(200, None);
        assert_eq!(got.body["id"], id);
    }
    admin(&gw, Method::GET, "/api/v1/users/00uNOBODY", None)
        .await
        .expect(404, Some("E0000007"));

    // The new user signs in through the portal at once (this replica applied it).
    let login = gw.login_rd("dana@example.com", "dana-password-1", "/").await;
    assert_eq!(gw.status("/app", Some(&login.session_cookie())).await, 200);

    // Without a password: active, no password credential, cannot sign in with one.
    let p = create_user(&gw, "erin", None).await;
    assert_eq!(p["status"], "ACTIVE");
    assert!(p["credentials"].get("password").is_none());
}

#[tokio::test]
async fn logins_are_unique_and_profiles_checked() {
    let gw = gateway("").await;
    create_user(&gw, "frank", None).await;
    for login in ["alice", "ALICE", "Frank"] {
        let a = admin(
            &gw,
            Method::POST,
            "/api/v1/users",
            Some(json!({ "profile": { "login": login } })),
        )
        .await;
        a.expect(400, Some("E0000001"));
        assert!(a.text.contains("already exists"), "{}", a.text);
    }
    for body in [
        json!({ "profile": {} }),
        json!({ "profile": { "login": "a b" } }),
        json!({ "profile": { "login": "gina", "email": "not-an-email" } }),
        // A second address where the e-mail identity header would carry it.
        json!({ "profile": { "login": "gina", "email": "g@example.com,boss@example.com" } }),
        json!({ "profile": { "login": "gina", "email": "\"<x>\"@example.com" } }),
        // Logins and names that look like others.
        json!({ "profile": { "login": "alice\u{200B}" } }),
        json!({ "profile": { "login": "\u{202E}anig" } }),
        json!({ "profile": { "login": "gina", "firstName": "Gi\u{FEFF}na" } }),
        // Groups: control characters, overlong names, too many.
        json!({ "profile": { "login": "gina", "groups": ["a\u{0}b"] } }),
        json!({ "profile": { "login": "gina", "groups": ["x".repeat(256)] } }),
        json!({ "profile": { "login": "gina", "groups": (0..101).map(|i| format!("g{i}")).collect::<Vec<_>>() } }),
        json!({ "profile": { "login": "gina", "nickName": "g" } }),
        json!({ "profile": { "login": "gina" }, "credentials": { "password": { "value": "short" } } }),
        json!({}),
    ] {
        admin(&gw, Method::POST, "/api/v1/users", Some(body))
            .await
            .expect(400, Some("E0000001"));
    }
    let bad = crate::common::send(
        gw.client()
            .post(gw.admin_url("/api/v1/users"))
            .header("authorization", format!("SSWS {TOKEN}"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    bad.expect(400, Some("E0000003"));
}

/// `profile.mobilePhone` is E.164 (as in the users file and SMS enrollment),
/// on creation and on both kinds of profile update; stored normalized.
#[tokio::test]
async fn mobile_phones_are_e164() {
    let gw = gateway("").await;
    for phone in ["abc", "15555550100", "+1555"] {
        let a = admin(
            &gw,
            Method::POST,
            "/api/v1/users",
            Some(json!({ "profile": { "login": "hank", "mobilePhone": phone } })),
        )
        .await;
        a.expect(400, Some("E0000001"));
        assert!(
            a.body["errorCauses"][0]["errorSummary"]
                .as_str()
                .is_some_and(|c| c.starts_with("profile.mobilePhone: ")),
            "{}",
            a.text
        );
    }
    let a = admin(
        &gw,
        Method::POST,
        "/api/v1/users",
        Some(json!({ "profile": { "login": "hank", "mobilePhone": "+1 (555) 555-0100" } })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["profile"]["mobilePhone"], "+15555550100", "{}", a.text);
    let uid = a.body["id"].as_str().unwrap();
    let path = format!("/api/v1/users/{uid}");
    for method in [Method::POST, Method::PUT] {
        let a = admin(
            &gw,
            method.clone(),
            &path,
            Some(json!({ "profile": { "login": "hank", "mobilePhone": "abc" } })),
        )
        .await;
        a.expect(400, Some("E0000001"));
        assert!(a.text.contains("profile.mobilePhone"), "{method}: {}", a.text);
    }
    let a = admin(&gw, Method::GET, &path, None).await;
    assert_eq!(a.body["profile"]["mobilePhone"], "+15555550100", "{}", a.text);
}

#[tokio::test]
async fn users_page_by_id_with_link_headers() {
    let gw = gateway("").await;
    let mut want: Vec<String> = vec![TestGateway::uid("alice"), TestGateway::uid("bob")];
    for i in 0..5 {
        want.push(
            create_user(&gw, &format!("pager{i}"), None).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    want.sort();
    let mut seen = Vec::new();
    let mut next = Some(gw.admin_url("/api/v1/users?limit=2"));
    let mut pages = 0;
    while let Some(url) = next.take() {
        let path = url.strip_prefix(&gw.admin_url("")).unwrap().to_owned();
        let a = admin(&gw, Method::GET, &path, None).await;
        a.expect(200, None);
        pages += 1;
        let links = a.all("link");
        assert!(links.iter().any(|l| l.ends_with("rel=\"self\"")), "{links:?}");
        for u in a.body.as_array().unwrap() {
            seen.push(u["id"].as_str().unwrap().to_owned());
            assert_eq!(
                u["_links"].as_object().unwrap().len(),
                1,
                "a collection shows only self"
            );
        }
        next = links.iter().find(|l| l.ends_with("rel=\"next\"")).map(|l| {
            l.split(';')
                .next()
                .unwrap()
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        });
    }
    assert_eq!(seen, want, "every user once, in id order");
    assert_eq!(pages, 4);
    // The links name the listener as the caller reached it, but only by a plain
    // host and port: a `Host` that would forge another `Link` entry is not used.
    let hostile = gw
        .client()
        .get(gw.admin_url("/api/v1/users?limit=2"))
        .header("authorization", format!("SSWS {TOKEN}"))
        .header("host", "x>;rel=\"next\",<https://evil.example/")
        .send()
        .await
        .unwrap();
    assert_eq!(hostile.status(), 200);
    let links: Vec<String> = hostile
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(links.len(), 2, "self and next: {links:?}");
    for link in &links {
        assert!(!link.contains("evil"), "{links:?}");
        assert_eq!(link.matches('<').count(), 1, "one entry: {links:?}");
    }
    // Users-file users are listed too, marked by nothing but their read-only answers.
    for limit in ["0", "201", "x"] {
        admin(&gw, Method::GET, &format!("/api/v1/users?limit={limit}"), None)
            .await
            .expect(400, Some("E0000001"));
    }
    admin(&gw, Method::GET, "/api/v1/users?search=profile.login", None)
        .await
        .expect(400, Some("E0000001"));
}

#[tokio::test]
async fn users_file_users_are_read_only() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let a = admin(&gw, Method::GET, "/api/v1/users/alice", None).await;
    a.expect(200, None);
    assert_eq!(a.body["id"], uid);
    assert_eq!(a.body["profile"]["email"], "alice@example.com");
    assert!(a.body["created"].is_null());
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/api/v1/users/{uid}"),
            Some(json!({ "profile": { "login": "alice" } })),
        ),
        (
            Method::POST,
            format!("/api/v1/users/{uid}"),
            Some(json!({ "profile": { "firstName": "A" } })),
        ),
        (Method::DELETE, format!("/api/v1/users/{uid}"), None),
        (
            Method::POST,
            format!("/api/v1/users/{uid}/lifecycle/suspend"),
            None,
        ),
    ] {
        admin(&gw, method, &path, body)
            .await
            .expect(403, Some("E0000006"));
    }
    // A stored user cannot take a file user's login either.
    let u = create_user(&gw, "hank", None).await;
    let id = u["id"].as_str().unwrap();
    admin(
        &gw,
        Method::PUT,
        &format!("/api/v1/users/{id}"),
        Some(json!({ "profile": { "login": "Alice" } })),
    )
    .await
    .expect(400, Some("E0000001"));
}

#[tokio::test]
async fn put_with_only_a_password_changes_it_and_keeps_the_profile() {
    let gw = gateway("").await;
    let u = create_user(&gw, "jude", Some("jude-password-1")).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/users/{id}");
    let s1 = gw.login_rd("jude", "jude-password-1", "/").await;
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 200);
    let put = |body: serde_json::Value| admin(&gw, Method::PUT, &path, Some(body));

    // The same password rules as elsewhere; nothing changes on a refusal.
    let a = put(json!({ "credentials": { "password": { "value": "short" } } })).await;
    a.expect(400, Some("E0000001"));
    assert!(a.text.contains("at least 8"), "{}", a.text);
    // Neither profile nor password: refused, with a cause.
    for body in [
        json!({}),
        json!({ "credentials": {} }),
        json!({ "profile": null }),
    ] {
        let a = put(body).await;
        a.expect(400, Some("E0000001"));
        assert!(a.text.contains("profile"), "{}", a.text);
    }
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 200);

    // Okta's PUT with credentials alone: a new password, the profile kept,
    // the user's sessions ended.
    let a = put(json!({ "credentials": { "password": { "value": "jude-password-2" } } })).await;
    a.expect(200, None);
    assert_eq!(a.body["profile"], u["profile"], "{}", a.text);
    assert!(a.body["credentials"]["password"].is_object());
    assert_eq!(
        admin(&gw, Method::GET, &path, None).await.body["profile"],
        u["profile"]
    );
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 401);
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let res = gw
        .post_login(&client, &csrf, "jude", "jude-password-1", "/", &[])
        .await;
    assert_eq!(res.status(), 401);
    gw.login_rd("jude", "jude-password-2", "/").await;
}

#[tokio::test]
async fn password_change_suspension_and_deletion_end_sessions() {
    let gw = gateway("").await;
    let u = create_user(&gw, "ivy", Some("ivy-password-1")).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let s1 = gw.login_rd("ivy", "ivy-password-1", "/").await;
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 200);

    // A profile change keeps sessions; the new profile is what is shown.
    let a = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}"),
        Some(json!({ "profile": { "lastName": "Changed", "mobilePhone": "+15555550123" } })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["profile"]["lastName"], "Changed");
    assert_eq!(
        a.body["profile"]["firstName"], "Test",
        "a partial update keeps the rest"
    );
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 200);

    // A new password ends them, and only the new password works.
    admin(
        &gw,
        Method::PUT,
        &format!("/api/v1/users/{id}"),
        Some(json!({ "profile": { "login": "ivy", "firstName": "Ivy" }, "credentials": { "password": { "value": "ivy-password-2" } } })),
    )
    .await
    .expect(200, None);
    assert_eq!(gw.status("/app", Some(&s1.session_cookie())).await, 401);
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let res = gw
        .post_login(&client, &csrf, "ivy", "ivy-password-1", "/", &[])
        .await;
    assert_eq!(res.status(), 401);
    let s2 = gw.login_rd("ivy", "ivy-password-2", "/").await;

    // Suspended: sessions end, no sign-in; unsuspended: sign-in again.
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}/lifecycle/suspend"),
        None,
    )
    .await
    .expect(200, None);
    assert_eq!(
        admin(&gw, Method::GET, &format!("/api/v1/users/{id}"), None)
            .await
            .body["status"],
        "SUSPENDED"
    );
    assert_eq!(gw.status("/app", Some(&s2.session_cookie())).await, 401);
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}/lifecycle/suspend"),
        None,
    )
    .await
    .expect(403, Some("E0000079"));
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}/lifecycle/unsuspend"),
        None,
    )
    .await
    .expect(200, None);
    let s3 = gw.login_rd("ivy", "ivy-password-2", "/").await;

    // Deleted: 204, then gone everywhere.
    admin(&gw, Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await
        .expect(204, None);
    assert_eq!(gw.status("/app", Some(&s3.session_cookie())).await, 401);
    admin(&gw, Method::GET, &format!("/api/v1/users/{id}"), None)
        .await
        .expect(404, Some("E0000007"));
    admin(&gw, Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await
        .expect(404, Some("E0000007"));
    let csrf = gw.login_page(&client, "/").await;
    let res = gw
        .post_login(&client, &csrf, "ivy", "ivy-password-2", "/", &[])
        .await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn staged_users_sign_in_after_activation() {
    let gw = gateway("").await;
    let a = admin(
        &gw,
        Method::POST,
        "/api/v1/users?activate=false",
        Some(json!({ "profile": { "login": "jay" }, "credentials": { "password": { "value": "jay-password-1" } } })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "STAGED");
    assert!(a.body["activated"].is_null());
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert!(
        a.body["_links"]["activate"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/lifecycle/activate")
    );
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    assert_eq!(
        gw.post_login(&client, &csrf, "jay", "jay-password-1", "/", &[])
            .await
            .status(),
        401
    );
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}/lifecycle/activate"),
        None,
    )
    .await
    .expect(200, None);
    gw.login_rd("jay", "jay-password-1", "/").await;
}

#[tokio::test]
async fn another_replica_sees_stored_users_within_revocation_check() {
    let gw = gateway("").await;
    let second = crate::support::TestGateway::builder()
        .toml(crate::common::FACTORS)
        .store(gw.gateway.state().store.clone())
        .clock(gw.clock.clone())
        .start()
        .await;
    let u = create_user(&gw, "kim", Some("kim-password-1")).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let seen = |g: &TestGateway| {
        g.gateway
            .state()
            .enforcer
            .users
            .read()
            .unwrap()
            .by_login("kim")
            .is_some()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen(&second) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen(&second), "the other replica follows the change log");
    second.login_rd("kim", "kim-password-1", "/").await;
    admin(&gw, Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await
        .expect(204, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen(&second) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!seen(&second), "and sees the deletion");
    let _ = ALICE;
}

/// `portcullis users unlock USER --config FILE` with the gateway's config.
async fn cli_unlock(gw: &TestGateway, user: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &gw.config_text).unwrap();
    let user = user.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["users", "unlock", &user, "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

async fn status(gw: &TestGateway, uid: &str) -> serde_json::Value {
    admin(gw, Method::GET, &format!("/api/v1/users/{uid}"), None)
        .await
        .body["status"]
        .clone()
}

/// Locks `uid` with wrong codes for `fid` (two are enough in the test config).
async fn lock(gw: &TestGateway, uid: &str, fid: &str) {
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
    assert_eq!(status(gw, uid).await, "LOCKED_OUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_unlocks_an_api_created_user_by_login() {
    let gw = gateway(
        "[store]\nkind = \"sqlite\"\npath = \"{tmp}/portcullis.db\"\n\
         [regulation]\nmax_factor_failures = 2\n",
    )
    .await;
    let u = create_user(&gw, "Ursula.Locked", Some("ursula-password-1")).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let (fid, _) = active_totp(&gw, &uid).await;
    // By login, in another case (logins compare case-insensitively).
    lock(&gw, &uid, &fid).await;
    let (_, out) = cli_unlock(&gw, "ursula.LOCKED").await;
    assert!(out.contains("ursula.LOCKED: unlocked"), "{out}");
    assert_eq!(status(&gw, &uid).await, "ACTIVE", "unlocked by the CLI");
    let (_, out) = cli_unlock(&gw, "Ursula.Locked").await;
    assert!(out.contains("was not locked"), "{out}");
    // By id, as before.
    lock(&gw, &uid, &fid).await;
    let (_, out) = cli_unlock(&gw, &uid).await;
    assert!(out.contains("unlocked") && !out.contains("not locked"), "{out}");
    assert_eq!(status(&gw, &uid).await, "ACTIVE");
    // A users-file login still resolves to that user.
    let (_, out) = cli_unlock(&gw, "alice").await;
    assert!(out.contains("alice: was not locked"), "{out}");
}
