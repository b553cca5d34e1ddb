//! Second factors through the portal: a level-1 session meets a two-factor
//! rule, the challenge upgrades it (with a new session id), `max_age` steps
//! up, wrong codes lock, and a users-file TOTP factor works read-only.

use std::sync::OnceLock;

use portcullis::clock::Clock;
use portcullis::config::{TotpAlgorithm, TotpConfig};

use crate::support::*;

/// RFC 6238's SHA-1 seed, provisioned for carol by the users file.
const SEED: &[u8] = b"12345678901234567890";
const SEED_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const PASSWORD: &str = "carol-tr0ub4dor-3";

fn users_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let hash = portcullis::passwords::hash_password(PASSWORD.as_bytes()).unwrap();
        std::fs::write(
            dir.path().join("users.toml"),
            format!(
                "[[users]]\nusername = \"carol\"\npassword = {}\ngroups = [\"finance\"]\ntotp = {{ secret = \"{SEED_B32}\" }}\n",
                toml_str(&hash)
            ),
        )
        .unwrap();
        dir
    })
}

async fn start(extra: &str) -> TestGateway {
    start_with_users("", extra).await
}

/// Like [`start`], with more keys for the `[users]` table.
async fn start_with_users(users_extra: &str, extra: &str) -> TestGateway {
    start_with(users_extra, "", extra).await
}

/// Like [`start_with_users`], with more keys for the `[regulation]` table.
async fn start_with(users_extra: &str, regulation_extra: &str, extra: &str) -> TestGateway {
    let users = users_dir().path().join("users.toml");
    TestGateway::start(&format!(
        r#"
[users]
file = {users}
{users_extra}

[factors.totp]
enabled = true

[regulation]
max_factor_failures = 3
{regulation_extra}

[[rules]]
path = "^/pay(/|$)"
policy = "two_factor"
max_age = "15m"

[[rules]]
path = "^/secure(/|$)"
policy = "two_factor"
{extra}"#,
        users = toml_str(&users.display().to_string()),
    ))
    .await
}

fn code(gw: &TestGateway) -> String {
    let cfg = TotpConfig {
        enabled: true,
        issuer: "Portcullis".into(),
        digits: 6,
        period: 30,
        algorithm: TotpAlgorithm::Sha1,
        skew: 1,
    };
    portcullis::factors::totp::code_at(&cfg, SEED, gw.clock.now())
}

/// GETs `path` as a browser with `cookie`.
async fn browse(gw: &TestGateway, path: &str, cookie: &str) -> reqwest::Response {
    gw.client()
        .get(gw.url(path))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Opens the challenge page for `rd` and submits `code`; returns the answer.
async fn submit_code(gw: &TestGateway, login: &Login, rd: &str, code: &str) -> reqwest::Response {
    let page = browse(gw, &format!("/_portcullis/mfa?rd={}", enc(rd)), &login.cookie()).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let factor = portcullis::factors::config_factor_id(&TestGateway::uid("carol"));
    assert!(
        html.contains(&factor),
        "the challenge offers carol's provisioned factor"
    );
    gw.client()
        .post(gw.url("/_portcullis/mfa/verify"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf_field(&html)),
            ("rd", rd),
            ("factor", &factor),
            ("code", code),
        ]))
        .send()
        .await
        .unwrap()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_second_factor_upgrades_the_session_and_step_up_asks_again() {
    let gw = start("").await;
    let login = gw.login_rd("carol", PASSWORD, "/secure/x").await;
    // The password alone is not enough for /secure: straight on to the challenge.
    assert!(
        login.location.contains("/_portcullis/mfa?rd="),
        "{}",
        login.location
    );
    let res = browse(&gw, "/secure/x", &login.cookie()).await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with("/_portcullis/mfa?rd="),
        "signed in: the challenge, not the login page"
    );
    // A one-factor route already works.
    assert_eq!(browse(&gw, "/other", &login.cookie()).await.status(), 200);

    let res = submit_code(&gw, &login, "/secure/x", &code(&gw)).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/secure/x");
    let (upgraded, _) = set_cookie(&res, "portcullis_session").expect("a new session cookie");
    assert_ne!(upgraded, login.session);
    let level2 = format!("portcullis_session={upgraded}; portcullis_csrf={}", login.csrf);
    let res = browse(&gw, "/secure/x", &level2).await;
    assert_eq!(res.status(), 200);
    // The level-1 session it replaced is gone.
    assert_eq!(browse(&gw, "/other", &login.cookie()).await.status(), 302);

    // Step-up: /pay wants a second factor at most 15 minutes old.
    assert_eq!(browse(&gw, "/pay", &level2).await.status(), 200);
    gw.clock.advance(16 * 60);
    let res = browse(&gw, "/pay", &level2).await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).starts_with("/_portcullis/mfa?rd="));
    // /secure has no max_age: still fine (and this keeps the session active).
    assert_eq!(browse(&gw, "/secure/x", &level2).await.status(), 200);
    let stepped = Login {
        session: upgraded,
        csrf: login.csrf.clone(),
        set_cookie: String::new(),
        location: String::new(),
    };
    let res = submit_code(&gw, &stepped, &gw.url("/pay"), &code(&gw)).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), gw.url("/pay"), "back to the original URL");
    let (fresh, _) = set_cookie(&res, "portcullis_session").unwrap();
    assert_eq!(
        browse(&gw, "/pay", &format!("portcullis_session={fresh}"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn codes_are_single_use_and_wrong_codes_lock() {
    let gw = start("").await;
    let login = gw.login_rd("carol", PASSWORD, "/secure/").await;
    let good = code(&gw);
    assert_eq!(submit_code(&gw, &login, "/secure/", &good).await.status(), 303);
    // The same code again (another browser, same step): refused.
    let other = gw.login_rd("carol", PASSWORD, "/secure/").await;
    let res = submit_code(&gw, &other, "/secure/", &good).await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("already used"));
    // Three wrong codes lock carol: then even the right one is refused. Her
    // password is proven by now, so she is told to wait rather than that the
    // code is wrong.
    for _ in 0..2 {
        let res = submit_code(&gw, &other, "/secure/", "000000").await;
        assert_eq!(res.status(), 403);
    }
    gw.clock.advance(30);
    let res = submit_code(&gw, &other, "/secure/", &code(&gw)).await;
    assert_eq!(res.status(), 403);
    let text = res.text().await.unwrap();
    assert!(text.contains("Try again in about 15 minutes."), "{text}");
    // The password step is locked too, and says nothing of it (SPEC section
    // 6, `reveal_lockout` off): the right password, a wrong one and an
    // unknown user all get the generic answer and no session.
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    for (user, password) in [
        ("carol", "not-her-password"),
        ("nobody", "not-her-password"),
        ("carol", PASSWORD),
    ] {
        let res = gw.post_login(&client, &csrf, user, password, "/", &[]).await;
        assert_eq!(res.status(), 401, "{user} {password}");
        assert!(set_cookie(&res, "portcullis_session").is_none());
        let text = res.text().await.unwrap();
        assert!(
            text.contains("Incorrect username or password.") && !text.contains("Try again in"),
            "{text}"
        );
    }
    // An administrator unlocks: the next step's code works.
    let res = gw
        .client()
        .post(gw.admin_url("/api/v1/users/carol/lifecycle/unlock"))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    gw.clock.advance(30);
    assert_eq!(
        submit_code(&gw, &other, "/secure/", &code(&gw)).await.status(),
        303
    );
}

#[tokio::test]
async fn with_reveal_lockout_the_right_password_is_told_to_wait() {
    let gw = start_with("", "reveal_lockout = true", "").await;
    let login = gw.login_rd("carol", PASSWORD, "/secure/").await;
    for _ in 0..3 {
        let res = submit_code(&gw, &login, "/secure/", "000000").await;
        assert_eq!(res.status(), 403);
    }
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    // A wrong password is told the account is locked, never how long ...
    let res = gw
        .post_login(&client, &csrf, "carol", "not-her-password", "/", &[])
        .await;
    assert_eq!(res.status(), 403);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("This account is locked.") && !text.contains("Try again in"),
        "{text}"
    );
    // ... the right one is told to wait (coarsely), without a session, in
    // the browser's language.
    gw.clock.advance(5 * 60);
    let res = gw
        .post_login(
            &client,
            &csrf,
            "carol",
            PASSWORD,
            "/",
            &[("accept-language", "de")],
        )
        .await;
    assert_eq!(res.status(), 403);
    assert!(set_cookie(&res, "portcullis_session").is_none());
    let text = res.text().await.unwrap();
    assert!(
        text.contains("Versuchen Sie es in etwa 10 Minuten erneut."),
        "{text}"
    );
}

/// carol's password through the authentication API (the first step).
async fn carol_password_step(gw: &TestGateway) -> reqwest::Response {
    gw.client()
        .post(gw.url("/_portcullis/api/v1/authn"))
        .header("content-type", "application/json")
        .body(r#"{"username":"carol","password":"carol-tr0ub4dor-3"}"#)
        .send()
        .await
        .unwrap()
}

/// A sign-in begun before the user's sessions were ended (the admin API's
/// `DELETE /api/v1/users/{id}/sessions`, as after a reported attack) cannot
/// be finished afterwards: a second factor given later (a push approved by
/// mistake, a code) signs no one in on that transaction.
#[tokio::test]
async fn a_sign_in_begun_before_its_users_sessions_ended_cannot_finish() {
    let gw = start("").await;
    let client = gw.client();
    let begin = || async {
        let res = carol_password_step(&gw).await;
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["status"], "MFA_REQUIRED", "{body}");
        body
    };
    let finish = |body: serde_json::Value| {
        let fid = body["_embedded"]["factors"][0]["id"].as_str().unwrap().to_owned();
        let payload = serde_json::json!({ "stateToken": body["stateToken"], "passCode": code(&gw) });
        client
            .post(gw.url(&format!("/_portcullis/api/v1/authn/factors/{fid}/verify")))
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
    };
    let begun = begin().await;
    let res = client
        .delete(gw.admin_url(&format!("/api/v1/users/{}/sessions", TestGateway::uid("carol"))))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = finish(begun).await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(set_cookie(&res, "portcullis_session").is_none());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["errorCode"], "E0000011", "{body}");
    // A sign-in begun afterwards finishes.
    let res = finish(begin().await).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["status"],
        "SUCCESS"
    );
}

#[tokio::test]
async fn the_api_flow_uses_the_provisioned_factor() {
    let gw = start("").await;
    let client = gw.client();
    let res = carol_password_step(&gw).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "MFA_REQUIRED");
    let factor = &body["_embedded"]["factors"][0];
    assert_eq!(factor["factorType"], "token:software:totp");
    let verify = gw.url(&format!(
        "/_portcullis/api/v1/authn/factors/{}/verify",
        factor["id"].as_str().unwrap()
    ));
    let send = |code: String| {
        let body = serde_json::json!({ "stateToken": body["stateToken"], "passCode": code });
        client
            .post(verify.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let res = send("999999".into()).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["errorCode"],
        "E0000068"
    );
    let res = send(code(&gw)).await.unwrap();
    assert_eq!(res.status(), 200);
    let ok: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ok["status"], "SUCCESS");
    let token = ok["sessionToken"].as_str().unwrap();
    // The transaction is over: its stateToken is spent.
    let res = send(code(&gw)).await.unwrap();
    assert_eq!(res.status(), 401);
    // A link opened from another site is refused (login CSRF) and does not
    // spend the token.
    let res = client
        .get(gw.url(&format!("/_portcullis/session?token={token}&rd=/secure/")))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(set_cookie(&res, "portcullis_session").is_none());
    // The sessionToken hands the session to a browser once.
    let res = client
        .get(gw.url(&format!("/_portcullis/session?token={token}&rd=/secure/")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(location(&res), "/secure/");
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    assert_eq!(
        browse(&gw, "/secure/", &format!("portcullis_session={session}"))
            .await
            .status(),
        200
    );
    let res = client
        .get(gw.url(&format!("/_portcullis/session?token={token}&rd=/")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn reloading_the_enrollment_page_resumes_the_same_pending_factor() {
    let gw = TestGateway::start(
        "[factors.totp]\nenabled = true\n\n[[rules]]\npath = \"^/secure(/|$)\"\npolicy = \"two_factor\"\n",
    )
    .await;
    let login = gw.login_rd(ALICE.username, ALICE.password, "/secure/").await;
    let secret_of = |html: &str| {
        let marker = "data-secret=\"";
        let start = html.find(marker).expect("the key is on the page") + marker.len();
        html[start..start + html[start..].find('"').unwrap()].to_owned()
    };
    let first = browse(&gw, "/_portcullis/enroll?rd=/secure/", &login.cookie())
        .await
        .text()
        .await
        .unwrap();
    let again = browse(&gw, "/_portcullis/enroll?rd=/secure/", &login.cookie())
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(secret_of(&first), secret_of(&again));
    let uid = TestGateway::uid(ALICE.username);
    assert_eq!(
        gw.gateway.state().store.list_factors(&uid).await.unwrap().len(),
        1
    );
    // Much later, a new one is offered instead.
    gw.clock.advance(16 * 60);
    let relogin = gw.login_rd(ALICE.username, ALICE.password, "/secure/").await;
    let later = browse(&gw, "/_portcullis/enroll?rd=/secure/", &relogin.cookie())
        .await
        .text()
        .await
        .unwrap();
    assert_ne!(secret_of(&first), secret_of(&later));
}

/// Found in review: with passwordless sign-in on, anyone who knows a login
/// could lock that user out with a few wrong codes. A passwordless code is a
/// first factor: its failures block only the (user, address) pair.
#[tokio::test]
async fn wrong_passwordless_codes_do_not_lock_the_user() {
    let gw = start_with_users(
        "passwordless = true\npasswordless_factors = [\"token:software:totp\"]",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let client = gw.client();
    // The stranger and carol come through a trusted proxy, from two addresses.
    let from = |addr: &'static str, path: &str, body: serde_json::Value| {
        client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("x-forwarded-for", addr)
            .body(body.to_string())
            .send()
    };
    const STRANGER: &str = "192.0.2.66";
    for _ in 0..5 {
        let res = from(
            STRANGER,
            "/_portcullis/api/v1/authn",
            serde_json::json!({ "username": "carol" }),
        )
        .await
        .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["status"], "MFA_REQUIRED", "{body}");
        let fid = body["_embedded"]["factors"][0]["id"].as_str().unwrap().to_owned();
        let res = from(
            STRANGER,
            &format!("/_portcullis/api/v1/authn/factors/{fid}/verify"),
            serde_json::json!({ "stateToken": body["stateToken"], "passCode": "000000" }),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 403);
    }
    let uid = TestGateway::uid("carol");
    assert!(
        gw.gateway
            .state()
            .regulator
            .user_locked(&uid)
            .await
            .unwrap()
            .is_none(),
        "carol is not locked"
    );
    let password = serde_json::json!({ "username": "carol", "password": PASSWORD });
    // From the stranger's address the (carol, address) pair is blocked...
    let res = from(STRANGER, "/_portcullis/api/v1/authn", password.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // ...while carol, from her own address, signs in with her password.
    let res = from("198.51.100.7", "/_portcullis/api/v1/authn", password)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// A passwordless sign-in through the authentication API is a new sign-in:
/// it ends the sign-in of the valid session cookie it was sent with, so a
/// saved copy of the older (level-2) cookie is refused after signing out.
#[tokio::test]
async fn a_passwordless_sign_in_ends_the_sign_in_of_the_cookie_presented() {
    let gw = start_with_users(
        "passwordless = true\npasswordless_factors = [\"token:software:totp\"]",
        "",
    )
    .await;
    let login = gw.login_rd("carol", PASSWORD, "/secure/").await;
    let res = submit_code(&gw, &login, "/secure/", &code(&gw)).await;
    assert_eq!(res.status(), 303);
    let a = format!(
        "portcullis_session={}",
        set_cookie(&res, "portcullis_session").unwrap().0
    );
    assert_eq!(browse(&gw, "/secure/x", &a).await.status(), 200, "level 2");
    gw.clock.advance(30);
    let authn = |path: String, body: serde_json::Value| {
        gw.client()
            .post(gw.url(&path))
            .header("content-type", "application/json")
            .header("cookie", a.clone())
            .body(body.to_string())
            .send()
    };
    let res = authn(
        "/_portcullis/api/v1/authn".into(),
        serde_json::json!({ "username": "carol" }),
    )
    .await
    .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "MFA_REQUIRED", "{body}");
    let fid = body["_embedded"]["factors"][0]["id"].as_str().unwrap().to_owned();
    let res = authn(
        format!("/_portcullis/api/v1/authn/factors/{fid}/verify"),
        serde_json::json!({ "stateToken": body["stateToken"], "passCode": code(&gw) }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let b = format!(
        "portcullis_session={}",
        set_cookie(&res, "portcullis_session").unwrap().0
    );
    assert_eq!(browse(&gw, "/other", &b).await.status(), 200);
    assert_eq!(
        browse(&gw, "/other", &a).await.status(),
        302,
        "the older sign-in ended"
    );
    let res = gw
        .client()
        .delete(gw.url("/_portcullis/api/v1/sessions/me"))
        .header("cookie", b.clone())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(browse(&gw, "/other", &b).await.status(), 302);
    assert_eq!(
        browse(&gw, "/other", &a).await.status(),
        302,
        "a saved copy of A is refused"
    );

    // The portal's passwordless form, with another level-2 cookie present.
    gw.clock.advance(30);
    let login = gw.login_rd("carol", PASSWORD, "/secure/").await;
    let res = submit_code(&gw, &login, "/secure/", &code(&gw)).await;
    assert_eq!(res.status(), 303);
    let a = set_cookie(&res, "portcullis_session").unwrap().0;
    gw.clock.advance(30);
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let cookies = format!("portcullis_session={a}; portcullis_csrf={csrf}");
    let post = |path: &str, fields: &[(&str, &str)]| {
        gw.client()
            .post(gw.url(path))
            .header("accept", "text/html")
            .header("cookie", cookies.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
    };
    let res = post(
        "/_portcullis/login",
        &[("csrf", &csrf), ("rd", "/"), ("username", "carol")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {page}"))
            + marker.len();
        page[start..start + page[start..].find('"').unwrap()].to_owned()
    };
    let (state, factor) = (field("state"), field("factor"));
    let res = post(
        "/_portcullis/login/factor",
        &[
            ("csrf", &csrf),
            ("rd", "/"),
            ("state", &state),
            ("factor", &factor),
            ("code", &code(&gw)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    let b = set_cookie(&res, "portcullis_session").unwrap().0;
    assert_eq!(
        browse(&gw, "/other", &format!("portcullis_session={b}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        browse(&gw, "/other", &format!("portcullis_session={a}"))
            .await
            .status(),
        302,
        "the older sign-in ended with the portal's passwordless sign-in"
    );
}

/// Repeated step-ups keep one `amr` entry per method, and signing out ends
/// every session id the sign-in went through (each step-up's included).
#[tokio::test]
async fn step_ups_do_not_grow_amr_and_logout_ends_every_step() {
    let gw = start("").await;
    let login = gw.login_rd("carol", PASSWORD, "/secure/x").await;
    let mut saved = vec![login.session.clone()];
    let res = submit_code(&gw, &login, "/secure/x", &code(&gw)).await;
    assert_eq!(res.status(), 303);
    let mut current = set_cookie(&res, "portcullis_session").unwrap().0;
    saved.push(current.clone());
    for _ in 0..4 {
        // Past max_age: /pay asks again; a fresh code steps up.
        gw.clock.advance(16 * 60);
        let step = Login {
            session: current.clone(),
            csrf: login.csrf.clone(),
            set_cookie: String::new(),
            location: String::new(),
        };
        let res = submit_code(&gw, &step, "/pay", &code(&gw)).await;
        assert_eq!(res.status(), 303);
        current = set_cookie(&res, "portcullis_session").unwrap().0;
        saved.push(current.clone());
    }
    let me = gw
        .get_json(
            "/_portcullis/api/v1/sessions/me",
            Some(&format!("portcullis_session={current}")),
        )
        .await;
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["amr"], serde_json::json!(["pwd", "otp"]), "{me}");
    let cookie = |s: &str| format!("portcullis_session={s}; portcullis_csrf={}", login.csrf);
    assert_eq!(browse(&gw, "/pay", &cookie(&current)).await.status(), 200);

    let res = gw
        .client()
        .post(gw.url("/_portcullis/logout"))
        .header("accept", "text/html")
        .header("cookie", cookie(&current))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &login.csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (i, s) in saved.iter().enumerate() {
        let res = gw
            .get_json("/other", Some(&format!("portcullis_session={s}")))
            .await;
        assert_eq!(res.status(), 401, "saved cookie {i} of the signed-out sign-in");
    }
}
