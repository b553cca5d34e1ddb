//! One sign-in, many session ids: the authn API's level-1 cookie ends when
//! the second factor replaces it and when the user signs out (API or
//! portal); removing one's own factor ends the user's other sessions; text
//! sent to a person names the app from configuration, whatever Host the
//! request carried; `__Host-` cookie names when the cookie is secure and
//! host-only; a new sign-in (portal or API) ends the sign-in of the valid
//! session cookie it was sent with; `MFA_ENROLL_ACTIVATE` answers link the
//! next step as Okta does.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    Answer, active_totp, admin, gateway, level2, messages, pairing, send, sms_and_push, totp,
};
use crate::support::{ALICE, BOB, TestGateway, csrf_field, form, set_cookie};

const AUTHN: &str = "/_portcullis/api/v1/authn";
const ME: &str = "/_portcullis/api/v1/users/me/factors";

/// GETs a one-factor route (`/private`, the default policy) with a session cookie value.
async fn private(gw: &TestGateway, session: &str) -> u16 {
    gw.get_json("/private", Some(&format!("portcullis_session={session}")))
        .await
        .status()
        .as_u16()
}

/// The authn API's password step for alice: the answer and its level-1 cookie.
async fn password_step(gw: &TestGateway) -> (Answer, String) {
    let res = gw
        .client()
        .post(gw.url(AUTHN))
        .json(&json!({ "username": "alice", "password": ALICE.password }))
        .send()
        .await
        .unwrap();
    let (level1, _) = set_cookie(&res, "portcullis_session").expect("a level-1 cookie at once");
    let a = send_response(res).await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "MFA_REQUIRED", "{}", a.text);
    (a, level1)
}

async fn send_response(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Verifies a TOTP code in the transaction, without any cookie (as an API
/// client that ignored the level-1 cookie would); returns the level-2 cookie.
async fn verify_totp(gw: &TestGateway, a: &Answer, fid: &str, secret: &str) -> String {
    let res = gw
        .client()
        .post(gw.url(&format!("{AUTHN}/factors/{fid}/verify")))
        .json(&json!({ "stateToken": a.body["stateToken"], "passCode": totp(gw, secret, 0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (level2, _) = set_cookie(&res, "portcullis_session").expect("SUCCESS sets the level-2 cookie");
    gw.clock.advance(30);
    level2
}

#[tokio::test]
async fn the_password_steps_cookie_ends_at_the_upgrade_and_at_api_sign_out() {
    let gw = gateway("").await;
    let (fid, secret) = active_totp(&gw, &TestGateway::uid("alice")).await;
    let (a, level1) = password_step(&gw).await;
    assert_eq!(
        private(&gw, &level1).await,
        200,
        "level 1 reaches one-factor routes"
    );
    let level2 = verify_totp(&gw, &a, &fid, &secret).await;
    assert_eq!(private(&gw, &level2).await, 200);
    assert_eq!(
        private(&gw, &level1).await,
        401,
        "a saved copy of the replaced level-1 cookie is refused"
    );

    // Another sign-in, signed out through the API before and after its upgrade.
    let (a, level1) = password_step(&gw).await;
    let level2 = verify_totp(&gw, &a, &fid, &secret).await;
    let res = gw
        .client()
        .delete(gw.url("/_portcullis/api/v1/sessions/me"))
        .header("cookie", format!("portcullis_session={level2}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(private(&gw, &level2).await, 401);
    assert_eq!(private(&gw, &level1).await, 401, "the whole sign-in ended");
}

#[tokio::test]
async fn portal_sign_out_ends_the_api_sign_in_it_continues() {
    let gw = gateway("").await;
    let (fid, secret) = active_totp(&gw, &TestGateway::uid("alice")).await;
    let (a, level1) = password_step(&gw).await;
    let level2 = verify_totp(&gw, &a, &fid, &secret).await;
    // The portal's account page gives the browser a CSRF token for the sign-out form.
    let page = gw
        .client()
        .get(gw.url("/_portcullis/logout"))
        .header("accept", "text/html")
        .header("cookie", format!("portcullis_session={level2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let (csrf_cookie, _) = set_cookie(&page, "portcullis_csrf").expect("a CSRF cookie");
    let csrf = csrf_field(&page.text().await.unwrap());
    let res = gw
        .client()
        .post(gw.url("/_portcullis/logout"))
        .header("accept", "text/html")
        .header(
            "cookie",
            format!("portcullis_session={level2}; portcullis_csrf={csrf_cookie}"),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(private(&gw, &level2).await, 401);
    assert_eq!(private(&gw, &level1).await, 401, "the password step's cookie too");
}

/// Signs out through the API with a session cookie.
async fn api_sign_out(gw: &TestGateway, session: &str) {
    let res = gw
        .client()
        .delete(gw.url("/_portcullis/api/v1/sessions/me"))
        .header("cookie", format!("portcullis_session={session}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn signing_in_again_ends_the_sign_in_of_the_cookie_presented() {
    let gw = gateway("").await;
    let (fid, secret) = active_totp(&gw, &TestGateway::uid("alice")).await;

    // Through the portal's login form, with the level-2 cookie A present.
    let a = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    assert_eq!(private(&gw, &a).await, 200);
    let page = gw
        .client()
        .get(gw.url("/_portcullis/login"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let (csrf_cookie, _) = set_cookie(&page, "portcullis_csrf").expect("a CSRF cookie");
    let csrf = csrf_field(&page.text().await.unwrap());
    let res = gw
        .client()
        .post(gw.url("/_portcullis/login"))
        .header("accept", "text/html")
        .header(
            "cookie",
            format!("portcullis_session={a}; portcullis_csrf={csrf_cookie}"),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf),
            ("rd", "/"),
            ("username", "alice"),
            ("password", ALICE.password),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let (b, _) = set_cookie(&res, "portcullis_session").expect("a new session");
    assert_eq!(private(&gw, &b).await, 200);
    assert_eq!(
        private(&gw, &a).await,
        401,
        "the older sign-in ended with the new one"
    );
    api_sign_out(&gw, &b).await;
    assert_eq!(private(&gw, &b).await, 401);
    assert_eq!(private(&gw, &a).await, 401, "a saved copy of A is refused");

    // Through the authn API's password step, with another level-2 cookie present.
    let a = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    assert_eq!(private(&gw, &a).await, 200);
    let res = gw
        .client()
        .post(gw.url(AUTHN))
        .header("cookie", format!("portcullis_session={a}"))
        .json(&json!({ "username": "alice", "password": ALICE.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (c, _) = set_cookie(&res, "portcullis_session").expect("a level-1 cookie");
    assert_eq!(private(&gw, &c).await, 200);
    assert_eq!(private(&gw, &a).await, 401);
    api_sign_out(&gw, &c).await;
    assert_eq!(private(&gw, &a).await, 401, "a saved copy of A is refused");
}

/// A self-service call with cookies and `X-CSRF-Token`.
async fn me(gw: &TestGateway, method: Method, path: &str, cookie: &str, csrf: &str) -> Answer {
    let req = gw
        .client()
        .request(method, gw.url(&format!("{ME}{path}")))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .header("content-type", "application/json");
    let res = req.send().await.unwrap();
    send_response(res).await
}

/// A CSRF token for a session signed in through the API: the refusal hands one out.
async fn csrf_for(gw: &TestGateway, session: &str) -> String {
    let r = me(gw, Method::GET, "", &format!("portcullis_session={session}"), "").await;
    r.expect(403, Some("E0000006"));
    r.all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("portcullis_csrf="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("a fresh CSRF cookie")
}

#[tokio::test]
async fn removing_ones_own_factor_ends_the_users_other_sessions() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let (fid, secret) = active_totp(&gw, &uid).await;
    let (spare, _) = active_totp(&gw, &uid).await;
    let here = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let elsewhere = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let bob = gw.login(BOB).await;
    assert_eq!(private(&gw, &elsewhere).await, 200);

    let csrf = csrf_for(&gw, &here).await;
    let cookie = format!("portcullis_session={here}; portcullis_csrf={csrf}");
    let r = me(&gw, Method::DELETE, &format!("/{spare}"), &cookie, &csrf).await;
    r.expect(204, None);
    assert_eq!(private(&gw, &elsewhere).await, 401, "the other session ended");
    let reissued = r
        .all("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("portcullis_session="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("the caller's session is re-issued");
    assert_eq!(
        private(&gw, &here).await,
        401,
        "so did the cookie the removal replaced"
    );
    assert_eq!(private(&gw, &reissued).await, 200, "the remover stays signed in");
    let cookie = format!("portcullis_session={reissued}; portcullis_csrf={csrf}");
    let list = me(&gw, Method::GET, "", &cookie, &csrf).await;
    list.expect(200, None);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(
        private(&gw, &bob.session).await,
        200,
        "other users are not affected"
    );
}

#[tokio::test]
async fn removing_ones_own_factor_on_the_portal_ends_the_users_other_sessions() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let (fid, secret) = active_totp(&gw, &uid).await;
    let (spare, _) = active_totp(&gw, &uid).await;
    let here = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let elsewhere = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let page = gw
        .client()
        .get(gw.url("/_portcullis/factors"))
        .header("accept", "text/html")
        .header("cookie", format!("portcullis_session={here}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let (csrf_cookie, _) = set_cookie(&page, "portcullis_csrf").expect("a CSRF cookie");
    let csrf = csrf_field(&page.text().await.unwrap());
    let res = gw
        .client()
        .post(gw.url(&format!("/_portcullis/factors/{spare}/remove")))
        .header("accept", "text/html")
        .header(
            "cookie",
            format!("portcullis_session={here}; portcullis_csrf={csrf_cookie}"),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(private(&gw, &elsewhere).await, 401, "the other session ended");
    let (reissued, _) = set_cookie(&res, "portcullis_session").expect("the remover's session is re-issued");
    assert!(res.text().await.unwrap().contains("The factor was removed."));
    assert_eq!(private(&gw, &reissued).await, 200, "the remover stays signed in");
}

#[tokio::test]
async fn messages_name_the_configured_app_whatever_the_host_header() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&format!(
        "[server]\nexternal_url = \"https://app.example.com\"\n{}",
        sms_and_push(&file)
    ))
    .await;
    let uid = TestGateway::uid("alice");
    // An SMS factor and a paired push factor, through the admin API.
    let sms_id = active_sms(&gw, &uid, &file).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let push = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(json!({ "factorType": "push", "provider": "OKTA" })),
    )
    .await;
    push.expect(200, None);
    let push_id = push.body["id"].as_str().unwrap().to_owned();
    let token = push.body["_embedded"]["activation"]["activationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/push/devices"))
            .json(&pairing(&key, &token)),
    )
    .await
    .expect(200, None);

    // The sign-in arrives with a Host the requester chose.
    let hostile = "evil.example";
    let post = |path: String, body: Value| {
        gw.client()
            .post(gw.url(&path))
            .header("host", hostile)
            .json(&body)
    };
    let a = send(post(
        AUTHN.to_owned(),
        json!({ "username": "alice", "password": ALICE.password }),
    ))
    .await;
    a.expect(200, None);
    let state = a.body["stateToken"].clone();
    for fid in [&sms_id, &push_id] {
        let before = messages(&file).len();
        let v = send(post(
            format!("{AUTHN}/factors/{fid}/verify"),
            json!({ "stateToken": state }),
        ))
        .await;
        v.expect(200, None);
        assert_eq!(v.body["status"], "MFA_CHALLENGE", "{}", v.text);
        // Pushes leave in the background: wait (bounded) for the message.
        let mut all = messages(&file);
        for _ in 0..500 {
            if all.len() > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            all = messages(&file);
        }
        assert_eq!(all.len(), before + 1, "one message sent");
        let m = all.last().unwrap();
        assert_eq!(m["app"], "app.example.com", "{m}");
        let text = m["text"].as_str().unwrap();
        assert!(text.contains("app.example.com"), "{text}");
        assert!(!m.to_string().contains(hostile), "{m}");
    }
}

#[tokio::test]
async fn without_an_external_url_messages_name_the_default_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&sms_and_push(&file)).await;
    let uid = TestGateway::uid("alice");
    let sms_id = active_sms(&gw, &uid, &file).await;
    let a = send(
        gw.client()
            .post(gw.url(AUTHN))
            .header("host", "evil.example")
            .json(&json!({ "username": "alice", "password": ALICE.password })),
    )
    .await;
    let v = send(
        gw.client()
            .post(gw.url(&format!("{AUTHN}/factors/{sms_id}/verify")))
            .header("host", "evil.example")
            .json(&json!({ "stateToken": a.body["stateToken"] })),
    )
    .await;
    v.expect(200, None);
    let m = messages(&file).pop().unwrap();
    // The base test config's default upstream is called "echo".
    assert_eq!(m["app"], "echo", "{m}");
    assert!(!m.to_string().contains("evil.example"), "{m}");
}

/// Enrolls and activates an SMS factor for `uid` through the admin API (the
/// `file` delivery holds the activation code); moves the clock past `resend_after`.
async fn active_sms(gw: &TestGateway, uid: &str, file: &std::path::Path) -> String {
    let base = format!("/api/v1/users/{uid}/factors");
    let e = admin(
        gw,
        Method::POST,
        &base,
        Some(
            json!({ "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": "+15555550100" } }),
        ),
    )
    .await;
    e.expect(200, None);
    let id = e.body["id"].as_str().unwrap().to_owned();
    let code = messages(file).last().unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    admin(
        gw,
        Method::POST,
        &format!("{base}/{id}/lifecycle/activate"),
        Some(json!({ "passCode": code })),
    )
    .await
    .expect(200, None);
    gw.clock.advance(30);
    id
}

/// The value and attributes of cookie `name` among a response's `Set-Cookie`s.
fn cookie_of(headers: &reqwest::header::HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| {
            let (pair, _) = h.split_once(';').unwrap_or((h, ""));
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| (v.trim().to_owned(), h.to_owned()))
        })
}

#[tokio::test]
async fn secure_host_only_cookies_take_the_host_prefix() {
    let gw = gateway("[session]\nsecure = true\n").await;
    // The login page's CSRF cookie.
    let page = gw
        .client()
        .get(gw.url("/_portcullis/login"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let headers = page.headers().clone();
    assert!(cookie_of(&headers, "portcullis_csrf").is_none(), "no plain name");
    let (csrf, attrs) = cookie_of(&headers, "__Host-portcullis_csrf").expect("a __Host- CSRF cookie");
    assert!(attrs.contains("Path=/") && attrs.contains("Secure"), "{attrs}");
    assert!(!attrs.contains("Domain"), "{attrs}");
    let field = csrf_field(&page.text().await.unwrap());
    // Signing in sets the session cookie under its __Host- name.
    let res = gw
        .client()
        .post(gw.url("/_portcullis/login"))
        .header("accept", "text/html")
        .header("cookie", format!("__Host-portcullis_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("username", "alice"),
            ("password", ALICE.password),
            ("csrf", &field),
            ("rd", "/"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let headers = res.headers().clone();
    assert!(
        cookie_of(&headers, "portcullis_session").is_none(),
        "no plain name"
    );
    let (session, attrs) =
        cookie_of(&headers, "__Host-portcullis_session").expect("a __Host- session cookie");
    assert!(
        attrs.contains("Path=/") && attrs.contains("Secure") && attrs.contains("HttpOnly"),
        "{attrs}"
    );
    assert!(!attrs.contains("Domain"), "{attrs}");
    let (csrf, _) = cookie_of(&headers, "__Host-portcullis_csrf").expect("a fresh CSRF cookie");
    let cookies = format!(
        "portcullis_session=planted; __Host-portcullis_session={session}; __Host-portcullis_csrf={csrf}; theme=dark"
    );
    // The session works under its new name, and neither name reaches the upstream.
    let echo = gw.echo("/private", Some(&cookies)).await;
    let upstream_cookie = echo.header("cookie").unwrap_or_default();
    assert_eq!(upstream_cookie, "theme=dark", "{:?}", echo.0);
    // A cookie under the plain name is not a session.
    assert_eq!(
        gw.get_json("/private", Some(&format!("portcullis_session={session}")))
            .await
            .status(),
        401
    );
    // The self-service API's double submit reads the __Host- CSRF cookie.
    let r = me(&gw, Method::GET, "", &cookies, &csrf).await;
    r.expect(200, None);
    let r = me(
        &gw,
        Method::GET,
        "",
        &format!("__Host-portcullis_session={session}; portcullis_csrf={csrf}"),
        &csrf,
    )
    .await;
    r.expect(403, Some("E0000006"));
    assert!(r.text.contains("__Host-portcullis_csrf"), "{}", r.text);
}

/// Okta's `MFA_ENROLL_ACTIVATE` links the next step at the top: `next`
/// (`activate`, the factor's own activate link; `poll` for push), `cancel`,
/// and `resend` for a factor whose code can be sent again. There is no
/// `{prefix}/api/v1/authn/previous`, so no `prev`.
#[tokio::test]
async fn enroll_activate_answers_link_the_next_step_as_okta_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&format!(
        "{}\n[server]\nexternal_url = \"https://app.example.com\"\n[factors.webauthn]\nenabled = true\n",
        sms_and_push(&file)
    ))
    .await;
    let enroll = |login: &'static str, factor_type: &'static str, provider: &'static str| {
        let gw = &gw;
        async move {
            crate::common::create_user(gw, login, Some("enroll-password-1")).await;
            let a = send(
                gw.client()
                    .post(gw.url(AUTHN))
                    .json(&json!({ "username": login, "password": "enroll-password-1" })),
            )
            .await;
            assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);
            let state = a.body["stateToken"].as_str().unwrap().to_owned();
            let e = send(
                gw.client()
                    .post(gw.url(&format!("{AUTHN}/factors")))
                    .json(&json!({
                        "stateToken": state, "factorType": factor_type, "provider": provider,
                        "profile": { "phoneNumber": "+15555550122" },
                    })),
            )
            .await;
            e.expect(200, None);
            assert_eq!(e.body["status"], "MFA_ENROLL_ACTIVATE", "{}", e.text);
            (state, e)
        }
    };
    let links_of = |e: &Answer, name: &str| {
        let fid = e.body["_embedded"]["factor"]["id"].as_str().unwrap();
        let links = &e.body["_links"];
        let activate = format!("{AUTHN}/factors/{fid}/lifecycle/activate");
        assert_eq!(links["cancel"]["href"], format!("{AUTHN}/cancel"), "{}", e.text);
        assert_eq!(links["next"]["name"], name, "{}", e.text);
        assert_eq!(links["next"]["hints"]["allow"], json!(["POST"]), "{}", e.text);
        assert!(links.get("prev").is_none(), "{}", e.text);
        if name == "activate" {
            assert_eq!(links["next"]["href"], activate.as_str(), "{}", e.text);
            assert_eq!(
                links["next"]["href"], e.body["_embedded"]["factor"]["_links"]["activate"]["href"],
                "the factor's own activate link: {}",
                e.text
            );
        } else {
            assert_eq!(links["next"]["href"], format!("{activate}/poll"), "{}", e.text);
        }
        links.clone()
    };

    for (login, factor_type, provider) in [
        ("tess", "token:software:totp", "GOOGLE"),
        ("wynn", "webauthn", "FIDO"),
    ] {
        let (_, e) = enroll(login, factor_type, provider).await;
        let links = links_of(&e, "activate");
        assert!(links.get("resend").is_none(), "{factor_type}: {}", e.text);
        if factor_type == "webauthn" {
            // SPEC section 13: the creation options always list the
            // credentials to exclude (none yet).
            let activation = &e.body["_embedded"]["factor"]["_embedded"]["activation"];
            assert_eq!(activation["excludeCredentials"], json!([]), "{}", e.text);
        }
    }

    // SMS: `resend` too, the factor's own resend link; the answer to a
    // resend is shaped the same.
    let (state, e) = enroll("sid", "sms", "OKTA").await;
    let links = links_of(&e, "activate");
    let own = &e.body["_embedded"]["factor"]["_links"]["resend"];
    assert_eq!(links["resend"], *own, "{}", e.text);
    assert_eq!(links["resend"][0]["name"], "sms", "{}", e.text);
    gw.clock.advance(21);
    let fid = e.body["_embedded"]["factor"]["id"].as_str().unwrap();
    let r = send(
        gw.client()
            .post(gw.url(&format!("{AUTHN}/factors/{fid}/lifecycle/resend")))
            .json(&json!({ "stateToken": state })),
    )
    .await;
    r.expect(200, None);
    assert_eq!(r.body["status"], "MFA_ENROLL_ACTIVATE", "{}", r.text);
    assert_eq!(links_of(&r, "activate")["resend"], links["resend"], "{}", r.text);

    // Push keeps `next` = poll, and has no resend.
    let (_, e) = enroll("pia", "push", "OKTA").await;
    let links = links_of(&e, "poll");
    assert!(links.get("resend").is_none(), "{}", e.text);
}

/// An abandoned enrollment does not pile up: enrolling the same factor type
/// again (in a new sign-in) replaces the pending factor left behind.
#[tokio::test]
async fn enrolling_again_replaces_the_abandoned_pending_factor() {
    let gw = gateway("").await;
    let u = crate::common::create_user(&gw, "abby", Some("enroll-password-1")).await;
    let uid = u["id"].as_str().unwrap();
    let mut enrolled = Vec::new();
    for _ in 0..3 {
        let a = send(
            gw.client()
                .post(gw.url(AUTHN))
                .json(&json!({ "username": "abby", "password": "enroll-password-1" })),
        )
        .await;
        assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);
        let e = send(gw.client().post(gw.url(&format!("{AUTHN}/factors"))).json(&json!({
            "stateToken": a.body["stateToken"], "factorType": "token:software:totp", "provider": "GOOGLE",
        })))
        .await;
        e.expect(200, None);
        enrolled.push(e.body["_embedded"]["factor"]["id"].as_str().unwrap().to_owned());
    }
    let list = admin(&gw, Method::GET, &format!("/api/v1/users/{uid}/factors"), None).await;
    list.expect(200, None);
    let pending: Vec<(&str, &str)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pending,
        [(enrolled[2].as_str(), "PENDING_ACTIVATION")],
        "{}",
        list.text
    );
}

/// An API client's 401 on a two-factor route says what it lacks: a session
/// without one, a second factor with a level-1 session.
#[tokio::test]
async fn a_level1_session_on_a_two_factor_route_is_told_a_second_factor_is_required() {
    let gw = gateway("").await;
    active_totp(&gw, &TestGateway::uid("alice")).await;
    let (_, level1) = password_step(&gw).await;
    for (cookie, cause) in [
        (None, "a session is required"),
        (
            Some(format!("portcullis_session={level1}")),
            "a second factor is required",
        ),
    ] {
        let a = send_response(gw.get_json("/secure/x", cookie.as_deref()).await).await;
        a.expect(401, Some("E0000011"));
        assert_eq!(a.body["errorCauses"][0]["errorSummary"], cause, "{}", a.text);
    }
}

/// dora, a new API user without factors, signs in with her password and
/// enrolls TOTP through the authn API: her id, the state token, the pending
/// factor's id and its shared secret.
async fn dora_enrolls_totp(gw: &TestGateway) -> (String, String, String, String) {
    let user = crate::common::create_user(gw, "dora", Some("enroll-password-1")).await;
    let uid = user["id"].as_str().unwrap().to_owned();
    let a = send(
        gw.client()
            .post(gw.url(AUTHN))
            .json(&json!({ "username": "dora", "password": "enroll-password-1" })),
    )
    .await;
    assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);
    let state = a.body["stateToken"].as_str().unwrap().to_owned();
    let e = send(
        gw.client()
            .post(gw.url(&format!("{AUTHN}/factors")))
            .json(&json!({ "stateToken": state, "factorType": "token:software:totp", "provider": "OKTA" })),
    )
    .await;
    assert_eq!(e.body["status"], "MFA_ENROLL_ACTIVATE", "{}", e.text);
    let fid = e.body["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
    let secret = e.body["_embedded"]["factor"]["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    (uid, state, fid, secret)
}

/// A transaction that enrolled a factor while the user had none cannot sign
/// in by activating it once the user has an active factor from elsewhere
/// (the portal, another transaction, a helpdesk): a password alone would add
/// a factor after the account was secured. The enrollment must be verified
/// with the existing factor instead.
#[tokio::test]
async fn an_enrollment_overtaken_by_another_active_factor_cannot_sign_in() {
    let gw = gateway("").await;
    let (uid, state, fid, secret) = dora_enrolls_totp(&gw).await;
    // Meanwhile the account gets an active factor elsewhere.
    active_totp(&gw, &uid).await;
    let done = gw
        .client()
        .post(gw.url(&format!("{AUTHN}/factors/{fid}/lifecycle/activate")))
        .json(&json!({ "stateToken": state, "passCode": totp(&gw, &secret, 0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 403);
    assert!(set_cookie(&done, "portcullis_session").is_none());
    assert!(done.text().await.unwrap().contains("E0000079"));
}

/// A transaction enrolling a factor for a user whose sessions were ended
/// since it began, on another replica a moment ago (this gateway's view has
/// not heard of it): the activation is refused before the factor is
/// activated (it was activated, then the sign-in refused, so the factor
/// outlived the administrator's reset).
#[tokio::test]
async fn an_enrollment_after_the_users_sessions_ended_elsewhere_activates_nothing() {
    let gw = gateway("[session]\nrevocation_check = \"120s\"\n").await;
    let (uid, state, fid, secret) = dora_enrolls_totp(&gw).await;
    // Another replica ends dora's sessions: only the store knows.
    gw.gateway.state().store.bump_epoch(&uid).await.unwrap();
    let done = gw
        .client()
        .post(gw.url(&format!("{AUTHN}/factors/{fid}/lifecycle/activate")))
        .json(&json!({ "stateToken": state, "passCode": totp(&gw, &secret, 0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 401);
    assert!(set_cookie(&done, "portcullis_session").is_none());
    assert!(done.text().await.unwrap().contains("E0000011"));
    let f = admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{uid}/factors/{fid}"),
        None,
    )
    .await;
    assert_eq!(f.body["status"], "PENDING_ACTIVATION", "{}", f.text);
}
