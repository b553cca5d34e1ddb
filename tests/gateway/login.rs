//! The portal's password login (form and JSON API), CSRF and Origin checks,
//! redirect targets, regulation, and the portal's security headers.

use serde_json::{Value, json};

use crate::support::{ALICE, BOB, TestGateway, set_cookie};

/// A login page body with the per-request parts (the CSRF token and the
/// reflected username) blanked, for byte comparisons.
fn normalized(body: &str, csrf: &str, username: &str) -> String {
    body.replace(csrf, "CSRF")
        .replace(&format!("value=\"{username}\""), "value=\"USER\"")
}

#[tokio::test]
async fn form_login_sets_the_cookie_and_forwards_identity() {
    let gw = TestGateway::start("").await;
    let target = format!("http://{}/app/page?x=1", gw.main);
    let login = gw.login_rd(ALICE.username, ALICE.password, &target).await;
    assert_eq!(login.location, target);

    let attrs: Vec<&str> = login.set_cookie.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{}", login.set_cookie);
    assert!(attrs.contains(&"SameSite=Lax"), "{}", login.set_cookie);
    assert!(attrs.contains(&"Path=/"), "{}", login.set_cookie);
    assert!(attrs.contains(&"Max-Age=28800"), "{}", login.set_cookie);
    assert!(!attrs.contains(&"Secure"), "session.secure = false");

    let cookie = format!(
        "other=keep; portcullis_session={}; portcullis_csrf={}; theme=dark",
        login.session, login.csrf
    );
    let echo = gw.echo("/app/page?x=1", Some(&cookie)).await;
    assert_eq!(echo.path(), "/app/page");
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    assert_eq!(echo.header("remote-groups").as_deref(), Some("admins,dev%2Cops"));
    assert_eq!(echo.header("remote-email").as_deref(), Some("alice@example.com"));
    assert_eq!(
        echo.header("remote-name").as_deref(),
        Some("Alice Zo%C3%AB Example")
    );
    assert_eq!(echo.header("cookie").as_deref(), Some("other=keep; theme=dark"));
    let everything = echo.0.to_string();
    assert!(
        !everything.contains(&login.session),
        "the session cookie leaked upstream"
    );
    assert!(
        !everything.contains(&login.csrf),
        "the CSRF cookie leaked upstream"
    );

    // Only the gateway's cookies: the Cookie header disappears entirely.
    let echo = gw.echo("/app", Some(&login.cookie())).await;
    assert_eq!(echo.header("cookie"), None);

    // Another user gets their own identity.
    let bob = gw.login(BOB).await;
    let echo = gw.echo("/app", Some(&bob.session_cookie())).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("bob"));
    assert_eq!(echo.header("remote-groups").as_deref(), Some("staff"));
}

#[tokio::test]
async fn failed_logins_are_indistinguishable() {
    let gw = TestGateway::start("").await;
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;

    let wrong = gw
        .post_login(&client, &csrf, "alice", "not-her-password", "/", &[])
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(set_cookie(&wrong, "portcullis_session").is_none());
    let wrong = wrong.text().await.unwrap();
    assert!(wrong.contains("Incorrect username or password."), "{wrong}");

    let unknown = gw
        .post_login(&client, &csrf, "nobody", "not-her-password", "/", &[])
        .await;
    assert_eq!(unknown.status(), 401);
    assert!(set_cookie(&unknown, "portcullis_session").is_none());
    let unknown = unknown.text().await.unwrap();
    assert_eq!(
        normalized(&wrong, &csrf, "alice"),
        normalized(&unknown, &csrf, "nobody")
    );

    // An empty password and a huge one fail the same way.
    for password in [String::new(), "x".repeat(5000)] {
        let res = gw.post_login(&client, &csrf, "alice", &password, "/", &[]).await;
        assert_eq!(res.status(), 401);
        assert_eq!(
            normalized(&res.text().await.unwrap(), &csrf, "alice"),
            normalized(&wrong, &csrf, "alice")
        );
    }
}

/// An operator's users file whose hashes cost more than the default: a
/// login that names no one takes as long as a wrong password of a real user
/// (before, it was checked against a default-cost dummy, some 5 times
/// quicker here, which told which logins exist).
#[tokio::test]
async fn unknown_logins_take_as_long_as_the_users_own_hashes() {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
    let heavy = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(65536, 3, 1, None).unwrap(),
    )
    .hash_password(b"heavy-secret")
    .unwrap()
    .to_string();
    let users = format!("[[users]]\nusername = \"heavy\"\npassword = \"{heavy}\"\n");
    let gw = TestGateway::builder().users(&users).start().await;
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let timed = |login: &'static str| {
        let (gw, client, csrf) = (&gw, &client, &csrf);
        async move {
            let started = std::time::Instant::now();
            let res = gw
                .post_login(client, csrf, login, "not-the-password", "/", &[])
                .await;
            assert_eq!(res.status(), 401, "{login}");
            started.elapsed()
        }
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved, medians of 5: a burst of load elsewhere on the machine
    // moves single samples, not both medians one way.
    for i in 0..5 {
        known.push(timed("heavy").await);
        unknown.push(timed(["nobody", "ghost", "nemo", "nix", "none"][i]).await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[2], unknown[2]);
    assert!(
        unknown * 2 > known && known * 2 > unknown,
        "median of 5: a real user's wrong password {known:?}, an unknown login {unknown:?}"
    );
}

#[tokio::test]
async fn login_form_needs_csrf_and_same_origin() {
    let gw = TestGateway::start("").await;
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let other = gw.login_page(&gw.client(), "/").await;
    assert_ne!(csrf, other);
    let url = gw.url("/_portcullis/login");
    let body = |token: Option<&str>| {
        let mut pairs = vec![("username", "alice"), ("password", ALICE.password), ("rd", "/")];
        if let Some(t) = token {
            pairs.push(("csrf", t));
        }
        crate::support::form(&pairs)
    };
    let cases: Vec<(&str, Option<String>, Option<&str>)> = vec![
        ("no token, no cookie", None, None),
        (
            "cookie but no field",
            Some(format!("portcullis_csrf={csrf}")),
            None,
        ),
        ("field but no cookie", None, Some(csrf.as_str())),
        (
            "another genuine token",
            Some(format!("portcullis_csrf={csrf}")),
            Some(other.as_str()),
        ),
        (
            "planted token without a MAC",
            Some("portcullis_csrf=abc.def".to_owned()),
            Some("abc.def"),
        ),
    ];
    for (what, cookie, field) in cases {
        let mut req = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html")
            .body(body(field));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{what}");
        assert!(set_cookie(&res, "portcullis_session").is_none(), "{what}");
    }

    for headers in [
        [("origin", "https://evil.example")],
        [("origin", "null")],
        [("sec-fetch-site", "cross-site")],
        [("sec-fetch-site", "same-site")],
    ] {
        let res = gw
            .post_login(&client, &csrf, "alice", ALICE.password, "/", &headers)
            .await;
        assert_eq!(res.status(), 403, "{headers:?}");
        assert!(set_cookie(&res, "portcullis_session").is_none());
    }

    // The genuine browser request passes.
    let own = format!("http://{}", gw.main);
    let res = gw
        .post_login(
            &client,
            &csrf,
            "alice",
            ALICE.password,
            "/",
            &[("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert!(set_cookie(&res, "portcullis_session").is_some());
}

#[tokio::test]
async fn redirect_targets_are_filtered() {
    let gw = TestGateway::start("").await;
    let own = format!("http://{}/somewhere?a=b", gw.main);
    for (rd, want) in [
        ("https://evil.example/", "/"),
        ("//evil.example", "/"),
        ("//evil.example/path", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("http://127.0.0.1@evil.example/", "/"),
        ("/relative/ok?x=1", "/relative/ok?x=1"),
        (own.as_str(), own.as_str()),
    ] {
        let login = gw.login_rd(ALICE.username, ALICE.password, rd).await;
        assert_eq!(login.location, want, "rd={rd}");
    }
}

#[tokio::test]
async fn password_failures_block_the_pair_then_the_user() {
    let gw = TestGateway::start(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[regulation]
max_password_failures = 3
max_password_failures_per_user = 6
max_failures_per_ip = 1000
window = "5m"
lockout = "15m"
"#,
    )
    .await;
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let attempt = |password: &'static str, from: &'static str| {
        let client = client.clone();
        let csrf = csrf.clone();
        let gw = &gw;
        async move {
            let res = gw
                .post_login(
                    &client,
                    &csrf,
                    "alice",
                    password,
                    "/",
                    &[("x-forwarded-for", from)],
                )
                .await;
            let status = res.status().as_u16();
            let body = normalized(&res.text().await.unwrap(), &csrf, "alice");
            (status, body)
        }
    };
    let (status, generic) = attempt("wrong", "198.51.100.1").await;
    assert_eq!(status, 401);
    for _ in 0..2 {
        assert_eq!(attempt("wrong", "198.51.100.1").await, (401, generic.clone()));
    }
    // The (alice, .1) pair is blocked: even the right password fails, generically.
    assert_eq!(
        attempt(ALICE.password, "198.51.100.1").await,
        (401, generic.clone()),
        "pair blocked"
    );
    // A stranger at .1 cannot lock alice out: from .2 she signs in.
    assert_eq!(attempt(ALICE.password, "198.51.100.2").await.0, 303);

    // Checked failures from all addresses add up to the per-user limit (6):
    // the three above (not the refused right password: a blocked pair's
    // attempts do not count toward the user), two here and one more.
    for _ in 0..2 {
        assert_eq!(attempt("wrong", "198.51.100.3").await, (401, generic.clone()));
    }
    assert_eq!(attempt("wrong", "198.51.100.8").await, (401, generic.clone()));
    assert_eq!(
        attempt(ALICE.password, "198.51.100.3").await,
        (401, generic.clone()),
        "user locked (the .3 pair itself is below its limit)"
    );
    assert_eq!(
        attempt(ALICE.password, "198.51.100.4").await,
        (401, generic.clone()),
        "user locked everywhere"
    );
    // Bob is not affected.
    let res = gw
        .post_login(
            &client,
            &csrf,
            "bob",
            BOB.password,
            "/",
            &[("x-forwarded-for", "198.51.100.4")],
        )
        .await;
    assert_eq!(res.status(), 303);

    // The lockout ends.
    gw.clock.advance(15 * 60 + 1);
    assert_eq!(attempt(ALICE.password, "198.51.100.4").await.0, 303);

    // Lock again, then unlock through the regulator (what `users unlock` does).
    for from in ["198.51.100.5", "198.51.100.6"] {
        for _ in 0..3 {
            assert_eq!(attempt("wrong", from).await.0, 401);
        }
    }
    assert_eq!(
        attempt(ALICE.password, "198.51.100.7").await.0,
        401,
        "locked again"
    );
    let uid = TestGateway::uid("alice");
    assert!(gw.gateway.state().regulator.unlock(&uid).await.unwrap());
    assert!(
        !gw.gateway.state().regulator.unlock(&uid).await.unwrap(),
        "nothing left"
    );
    // Unlocking also clears the blocked pairs tied to the user.
    assert_eq!(attempt(ALICE.password, "198.51.100.5").await.0, 303);
}

#[tokio::test]
async fn authn_api_applies_the_cross_site_rules() {
    let gw = TestGateway::start("").await;
    let client = gw.client();
    let url = gw.url("/_portcullis/api/v1/authn");
    let good = json!({"username": "alice", "password": ALICE.password}).to_string();

    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let res = client
            .post(&url)
            .header("content-type", ct)
            .body(good.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 415, "{ct}");
        assert!(set_cookie(&res, "portcullis_session").is_none());
    }
    let res = client.post(&url).body(good.clone()).send().await.unwrap();
    assert_eq!(res.status(), 415, "no content type");

    for (k, v) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .header(k, v)
            .body(good.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{k}: {v}");
        assert!(res.headers().get("access-control-allow-origin").is_none());
        assert!(set_cookie(&res, "portcullis_session").is_none());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errorCode"], "E0000006");
    }

    let res = client
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("origin", format!("http://{}", gw.main))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let (session, _) = set_cookie(&res, "portcullis_session").expect("a session cookie");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["_embedded"]["user"]["profile"]["login"], "alice");
    assert!(body["expiresAt"].is_string());
    let echo = gw
        .echo("/private", Some(&format!("portcullis_session={session}")))
        .await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));

    // Wrong password and unknown user: the same 401 E0000004.
    let mut bodies = Vec::new();
    for (user, password) in [("alice", "wrong"), ("nobody", "wrong")] {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .body(json!({"username": user, "password": password}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{user}");
        assert!(set_cookie(&res, "portcullis_session").is_none());
        let mut body: Value = res.json().await.unwrap();
        assert_eq!(body["errorCode"], "E0000004");
        body.as_object_mut().unwrap().remove("errorId");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);

    for malformed in ["{\"username\":", "not json", "[1,2]"] {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .body(malformed)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{malformed}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errorCode"], "E0000003", "{malformed}");
    }
}

#[tokio::test]
async fn portal_pages_send_the_security_headers() {
    let gw = TestGateway::start("").await;
    let res = gw
        .client()
        .get(gw.url("/_portcullis/login?rd=/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["cache-control"], "no-store");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let (csrf, csrf_cookie) = set_cookie(&res, "portcullis_csrf").unwrap();
    assert!(!csrf.is_empty());
    assert!(csrf_cookie.contains("SameSite=Strict"), "{csrf_cookie}");

    let res = gw
        .client()
        .get(gw.url("/_portcullis/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
}
