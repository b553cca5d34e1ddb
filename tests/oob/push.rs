//! Push approval and passwordless sign-in, with the example approver as the
//! device (its webhook endpoint is the relay the gateway posts to).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::harness::{Answer, authn, eventually, field, gateway, post};
use crate::push_approver::{Device, Inbox, Mode, PushMessage};
use crate::support::{ALICE, TestGateway, form, set_cookie};

const SECRET: &str = "push-hook-secret-0123456789";

struct Setup {
    gw: TestGateway,
    inbox: Arc<Inbox>,
    factor_id: String,
    approver: SocketAddr,
}

/// A passwordless gateway whose pushes go to an approver on localhost, and
/// alice's push factor paired with it (enrolled through the authn API).
async fn setup(mode: Mode, auto: bool) -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let approver = listener.local_addr().unwrap();
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[users]\npasswordless = true\n\
         [factors.push]\nenabled = true\nttl = \"60s\"\n\
         delivery = {{ kind = \"webhook\", url = \"http://{approver}/push\", secret = \"{SECRET}\" }}\n"
    ))
    .await;
    // Enrollment: password, then pair the device.
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_ENROLL", "{}", a.json);
    assert!(
        a.json["_embedded"]["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["factorType"] == "push")
    );
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let e = post(
        &gw,
        "/_portcullis/api/v1/authn/factors",
        json!({ "stateToken": token, "factorType": "push", "provider": "OKTA" }),
        None,
    )
    .await;
    assert_eq!(e.json["status"], "MFA_ENROLL_ACTIVATE", "{}", e.json);
    assert_eq!(e.json["factorResult"], "WAITING");
    let activation = &e.json["_embedded"]["factor"]["_embedded"]["activation"];
    assert!(
        activation["_links"]["qrcode"]["href"]
            .as_str()
            .unwrap()
            .starts_with("data:image/svg+xml")
    );
    let poll = e.json["_links"]["next"]["href"].as_str().unwrap().to_owned();
    let waiting = post(&gw, &poll, json!({ "stateToken": token }), None).await;
    assert_eq!(waiting.json["factorResult"], "WAITING", "{}", waiting.json);
    let mut device = Device::generate(&gw.url("/_portcullis")).unwrap();
    let address = format!("http://{approver}/push");
    let factor_id = device
        .pair(
            activation["activationToken"].as_str().unwrap(),
            "Test phone",
            &address,
        )
        .await
        .unwrap();
    assert!(
        device
            .pair(activation["activationToken"].as_str().unwrap(), "Again", &address)
            .await
            .is_err(),
        "an activation token pairs once"
    );
    let done = post(&gw, &poll, json!({ "stateToken": token }), None).await;
    assert_eq!(done.json["status"], "SUCCESS", "{}", done.json);
    let inbox = Arc::new(Inbox {
        device,
        mode,
        webhook_secret: Some(SECRET.as_bytes().to_vec()),
        pending: Mutex::new(Vec::new()),
        number: Mutex::new(None),
        answered: Mutex::new(Vec::new()),
        changed: Notify::new(),
    });
    tokio::spawn(crate::push_approver::serve(listener, inbox.clone()));
    if auto {
        tokio::spawn(crate::push_approver::auto_answer(inbox.clone()));
    }
    Setup {
        gw,
        inbox,
        factor_id,
        approver,
    }
}

/// Tells the approver the number the browser shows (its control endpoint).
async fn tell_number(approver: SocketAddr, n: u64) {
    let res = reqwest::Client::new()
        .post(format!("http://{approver}/number"))
        .json(&json!({ "number": n }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

/// Starts a passwordless sign-in and its push; returns the state token,
/// the verify URL and the number shown.
async fn passwordless_push(s: &Setup) -> (String, String, u64) {
    let a = authn(&s.gw, "alice", None).await;
    assert_eq!(a.json["status"], "MFA_REQUIRED", "{}", a.json);
    let factors = a.json["_embedded"]["factors"].as_array().unwrap();
    assert_eq!(factors.len(), 1, "only passwordless factors: {}", a.json);
    assert_eq!(factors[0]["id"], s.factor_id.as_str());
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let verify = factors[0]["_links"]["verify"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(w.json["status"], "MFA_CHALLENGE", "{}", w.json);
    assert_eq!(w.json["factorResult"], "WAITING");
    assert_eq!(w.json["_links"]["next"]["name"], "poll");
    let n = w.json["_embedded"]["challenge"]["correctAnswer"]
        .as_u64()
        .unwrap();
    assert!((10..=99).contains(&n));
    (token, verify, n)
}

async fn poll_until(gw: &TestGateway, verify: &str, token: &str, want: &str) -> Answer {
    let mut last = Value::Null;
    for _ in 0..200 {
        let a = post(gw, verify, json!({ "stateToken": token }), None).await;
        let got = a.json["factorResult"]
            .as_str()
            .or(a.json["status"].as_str())
            .unwrap_or_default()
            .to_owned();
        if got == want || a.json["status"] == want {
            return a;
        }
        assert!(got == "WAITING", "expected {want}, got {}", a.json);
        last = a.json;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("still {last} instead of {want}");
}

#[tokio::test]
async fn passwordless_push_approved_by_the_example_approver() {
    let s = setup(Mode::Approve, true).await;
    let (token, verify, n) = passwordless_push(&s).await;
    // Polling does not send again.
    let again = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(again.json["factorResult"], "WAITING");
    assert_eq!(
        again.json["_embedded"]["challenge"]["correctAnswer"].as_u64(),
        Some(n)
    );
    let pushes = eventually(Duration::from_secs(5), "the push at the approver", || async {
        let p = s.inbox.pending.lock().unwrap().clone();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(pushes.len(), 1, "one push for one sign-in");
    assert_eq!(pushes[0].user, "alice");
    tell_number(s.approver, n).await;
    let ok = poll_until(&s.gw, &verify, &token, "SUCCESS").await;
    let session = ok.session.clone().expect("a session cookie");
    let cookie = format!("portcullis_session={session}");
    let me: Value =
        s.gw.get_json("/_portcullis/api/v1/sessions/me", Some(&cookie))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(me["amr"], json!(["push"]));
    assert_eq!(me["mfaActive"], false, "one possession factor is level 1");
    assert_eq!(
        s.gw.status("/", Some(&cookie)).await,
        401,
        "two_factor needs more"
    );
    // The password is the second step.
    let pw = post(
        &s.gw,
        "/_portcullis/api/v1/authn",
        json!({ "username": "alice", "password": ALICE.password }),
        Some(&cookie),
    )
    .await;
    assert_eq!(pw.json["status"], "SUCCESS", "{}", pw.json);
    let cookie2 = format!("portcullis_session={}", pw.session.unwrap());
    let echo = s.gw.echo("/", Some(&cookie2)).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    let answered = s.inbox.answered.lock().unwrap().clone();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].2, 200);
}

#[tokio::test]
async fn unknown_users_get_an_indistinguishable_transaction() {
    let s = setup(Mode::Deny, false).await;
    let real = authn(&s.gw, "alice", None).await;
    let fake = authn(&s.gw, "mallory", None).await;
    let fake2 = authn(&s.gw, "Mallory", None).await;
    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
            Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
            Value::String(_) => json!("s"),
            other => other.clone(),
        }
    }
    assert_eq!(real.status, fake.status);
    assert_eq!(
        shape(&real.json),
        shape(&fake.json),
        "{}\n{}",
        real.json,
        fake.json
    );
    let id = |a: &Answer| {
        a.json["_embedded"]["factors"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id(&fake), id(&fake2), "decoy factor ids are stable");
    assert!(id(&fake).starts_with("opf") && id(&fake).len() == 20);
    assert!(
        real.json["_embedded"]["user"]["profile"]
            .get("firstName")
            .is_none()
    );
    // A decoy push waits like a real one, then times out.
    let token = fake.json["stateToken"].as_str().unwrap();
    let verify = fake.json["_embedded"]["factors"][0]["_links"]["verify"]["href"]
        .as_str()
        .unwrap();
    let w = post(&s.gw, verify, json!({ "stateToken": token }), None).await;
    assert_eq!(w.json["factorResult"], "WAITING");
    assert!(w.json["_embedded"]["challenge"]["correctAnswer"].is_u64());
    s.gw.clock.advance(61);
    let t = post(&s.gw, verify, json!({ "stateToken": token }), None).await;
    assert_eq!(t.json["factorResult"], "TIMEOUT", "{}", t.json);
}

#[tokio::test]
async fn push_denied() {
    let s = setup(Mode::Deny, true).await;
    let (token, verify, _n) = passwordless_push(&s).await;
    let r = poll_until(&s.gw, &verify, &token, "REJECTED").await;
    assert_eq!(r.json["status"], "MFA_CHALLENGE");
    assert!(r.session.is_none());
}

#[tokio::test]
async fn push_times_out() {
    let s = setup(Mode::Ask, false).await;
    let (token, verify, _n) = passwordless_push(&s).await;
    s.gw.clock.advance(61);
    let t = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(t.json["factorResult"], "TIMEOUT", "{}", t.json);
    // The next verify sends a new push.
    let w = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(w.json["factorResult"], "WAITING");
}

async fn next_push(s: &Setup) -> PushMessage {
    eventually(Duration::from_secs(5), "a push", || async {
        let mut p = s.inbox.pending.lock().unwrap();
        (!p.is_empty()).then(|| p.remove(0))
    })
    .await
}

#[tokio::test]
async fn forged_late_repeated_and_wrong_number_answers_are_refused() {
    let s = setup(Mode::Ask, false).await;
    let dev = &s.inbox.device;
    let (token, verify, n) = passwordless_push(&s).await;
    let push = next_push(&s).await;
    assert_eq!(push.factor_id, s.factor_id);
    let answer_url = format!("/_portcullis/api/v1/push/transactions/{}", push.transaction_id);
    // Unsigned.
    let unsigned = post(
        &s.gw,
        &answer_url,
        json!({ "decision": "approve", "number": n }),
        None,
    )
    .await;
    assert_eq!(
        (unsigned.status, unsigned.json["errorCode"].as_str()),
        (403, Some("E0000006"))
    );
    // Signed by another key.
    let forger = Device::generate(&s.gw.url("/_portcullis")).unwrap();
    let (status, body) = forger.answer(&push, "approve", n as u32).await.unwrap();
    assert_eq!((status, body["errorCode"].as_str()), (403, Some("E0000006")));
    // The right key over other bytes (a number other than the one signed).
    let mut tampered = dev.answer_body(&push, "approve", n as u32);
    tampered["number"] = json!(n + 1);
    let t = post(&s.gw, &answer_url, tampered, None).await;
    assert_eq!(t.json["errorCode"], "E0000006");
    // The wrong number, properly signed: refused, and the push is rejected.
    let wrong = if n == 99 { 10 } else { n as u32 + 1 };
    let (status, body) = dev.answer(&push, "approve", wrong).await.unwrap();
    assert_eq!((status, body["errorCode"].as_str()), (403, Some("E0000068")));
    let r = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(r.json["factorResult"], "REJECTED", "{}", r.json);
    let (status, _) = dev.answer(&push, "approve", n as u32).await.unwrap();
    assert_eq!(status, 403, "one guess only");

    // A new push, approved; the same answer again is refused.
    let w = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    let n = w.json["_embedded"]["challenge"]["correctAnswer"]
        .as_u64()
        .unwrap() as u32;
    let push = next_push(&s).await;
    let (status, body) = dev.answer(&push, "approve", n).await.unwrap();
    assert_eq!(
        (status, body["factorResult"].as_str()),
        (200, Some("SUCCESS")),
        "{body}"
    );
    let (status, body) = dev.answer(&push, "approve", n).await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (403, Some("E0000079")),
        "repeated"
    );
    let ok = post(&s.gw, &verify, json!({ "stateToken": token }), None).await;
    assert_eq!(ok.json["status"], "SUCCESS");

    // A late answer.
    let (_token, _verify, n) = passwordless_push(&s).await;
    let push = next_push(&s).await;
    s.gw.clock.advance(61);
    let (status, body) = dev.answer(&push, "approve", n as u32).await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (403, Some("E0000079")),
        "late: {body}"
    );
    // An unknown transaction.
    let mut ghost = push.clone();
    ghost.transaction_id = "ptxNoSuchTransaction0000000000000".into();
    let (status, body) = dev.answer(&ghost, "approve", n as u32).await.unwrap();
    assert_eq!((status, body["errorCode"].as_str()), (404, Some("E0000191")));
}

#[tokio::test]
async fn passwordless_through_the_portal_then_the_password() {
    let s = setup(Mode::Approve, true).await;
    let gw = &s.gw;
    let client = gw.client();
    let res = client
        .get(gw.url("/_portcullis/login?rd=%2F"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let (csrf, _) = set_cookie(&res, "portcullis_csrf").unwrap();
    let page = res.text().await.unwrap();
    assert!(
        page.contains("name=\"username\"") && !page.contains("name=\"password\""),
        "{page}"
    );
    let c = format!("portcullis_csrf={csrf}");
    let send = |path: &'static str, pairs: Vec<(&'static str, String)>, cookie: String| {
        let client = client.clone();
        let url = gw.url(path);
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client
                .post(url)
                .header("accept", "text/html")
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&pairs))
                .send()
                .await
                .unwrap()
        }
    };
    let res = send(
        "/_portcullis/login",
        vec![
            ("csrf", csrf.clone()),
            ("rd", "/".into()),
            ("username", "alice".into()),
        ],
        c.clone(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("Send a push"), "{page}");
    let state = field(&page, "state");
    let factor = field(&page, "factor");
    let res = send(
        "/_portcullis/login/factor",
        vec![
            ("csrf", csrf.clone()),
            ("rd", "/".into()),
            ("state", state.clone()),
            ("factor", factor.clone()),
            ("action", "push".into()),
        ],
        c.clone(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("/_portcullis/static/push.js") && page.contains("Check again"),
        "{page}"
    );
    let start = page.find("id=\"push-number\">").unwrap() + "id=\"push-number\">".len();
    let n: u64 = page[start..start + 2].parse().unwrap();
    let tx = field(&page, "tx");
    tell_number(s.approver, n).await;
    let check = || {
        send(
            "/_portcullis/login/factor",
            vec![
                ("csrf", csrf.clone()),
                ("rd", "/".into()),
                ("state", state.clone()),
                ("factor", factor.clone()),
                ("tx", tx.clone()),
                ("action", "check".into()),
            ],
            c.clone(),
        )
    };
    let res = eventually(Duration::from_secs(5), "the approval", || async {
        let r = check().await;
        (r.status() == 303).then_some(r)
    })
    .await;
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/_portcullis/mfa")
    );
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let (csrf2, _) = set_cookie(&res, "portcullis_csrf").unwrap();
    let c2 = format!("portcullis_session={session}; portcullis_csrf={csrf2}");
    // The polling script is served.
    let js = client
        .get(gw.url("/_portcullis/static/push.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    // The second step asks for the password only.
    let res = client
        .get(gw.url("/_portcullis/mfa?rd=%2F"))
        .header("accept", "text/html")
        .header("cookie", &c2)
        .send()
        .await
        .unwrap();
    let page = res.text().await.unwrap();
    assert!(
        page.contains("name=\"password\"") && !page.contains("mfa/push\""),
        "{page}"
    );
    let res = send(
        "/_portcullis/mfa/password",
        vec![
            ("csrf", csrf2.clone()),
            ("rd", "/".into()),
            ("password", ALICE.password.into()),
        ],
        c2.clone(),
    )
    .await;
    assert_eq!(res.status(), 303);
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let echo = gw.echo("/", Some(&format!("portcullis_session={session}"))).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
}

#[tokio::test]
async fn password_then_push_through_the_portal() {
    let s = setup(Mode::Approve, true).await;
    let gw = &s.gw;
    let login = gw.login(ALICE).await;
    let c = login.cookie();
    let page = gw
        .client()
        .get(gw.url("/_portcullis/mfa?rd=%2F"))
        .header("accept", "text/html")
        .header("cookie", &c)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Push to Test phone"), "{page}");
    let csrf = field(&page, "csrf");
    let post_form = |path: &'static str, pairs: Vec<(&'static str, String)>| {
        let req = gw
            .client()
            .post(gw.url(path))
            .header("accept", "text/html")
            .header("cookie", c.clone())
            .header("content-type", "application/x-www-form-urlencoded");
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            req.body(form(&pairs)).send().await.unwrap()
        }
    };
    let res = post_form(
        "/_portcullis/mfa/push",
        vec![
            ("csrf", csrf.clone()),
            ("rd", "/".into()),
            ("factor", s.factor_id.clone()),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    let start = page.find("id=\"push-number\">").unwrap() + "id=\"push-number\">".len();
    let n: u64 = page[start..start + 2].parse().unwrap();
    let tx = field(&page, "tx");
    // Without JavaScript: "Check again" while waiting shows the same number.
    let check = || {
        post_form(
            "/_portcullis/mfa/push/check",
            vec![
                ("csrf", csrf.clone()),
                ("rd", "/".into()),
                ("factor", s.factor_id.clone()),
                ("tx", tx.clone()),
                ("number", n.to_string()),
            ],
        )
    };
    let waiting = check().await;
    assert_eq!(waiting.status(), 200);
    assert!(
        waiting
            .text()
            .await
            .unwrap()
            .contains(&format!("id=\"push-number\">{n}<"))
    );
    tell_number(s.approver, n).await;
    let res = eventually(Duration::from_secs(5), "the approval", || async {
        let r = check().await;
        (r.status() == 303).then_some(r)
    })
    .await;
    assert_eq!(res.headers()["location"], "/");
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let cookie = format!("portcullis_session={session}");
    let me: Value = gw
        .get_json("/_portcullis/api/v1/sessions/me", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["amr"], json!(["pwd", "push"]));
    assert_eq!(gw.status("/", Some(&cookie)).await, 200);
}

/// An activation QR code handed out before the user's sessions were ended
/// (an administrator, "sign out everywhere", on another replica a moment
/// ago: only the store knows) pairs no device; one handed out after does.
#[tokio::test]
async fn ending_the_users_sessions_voids_pairings_handed_out_before() {
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[session]\nrevocation_check = \"120s\"\n\
         [factors.push]\nenabled = true\nttl = \"60s\"\n\
         delivery = {{ kind = \"webhook\", url = \"http://127.0.0.1:9/push\", secret = \"{SECRET}\" }}\n"
    ))
    .await;
    let enroll = || async {
        let a = authn(&gw, "alice", Some(ALICE.password)).await;
        assert_eq!(a.json["status"], "MFA_ENROLL", "{}", a.json);
        let token = a.json["stateToken"].as_str().unwrap().to_owned();
        let e = post(
            &gw,
            "/_portcullis/api/v1/authn/factors",
            json!({ "stateToken": token, "factorType": "push", "provider": "OKTA" }),
            None,
        )
        .await;
        assert_eq!(e.json["status"], "MFA_ENROLL_ACTIVATE", "{}", e.json);
        let factor = e.json["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
        let activation = e.json["_embedded"]["factor"]["_embedded"]["activation"]["activationToken"]
            .as_str()
            .unwrap()
            .to_owned();
        (factor, activation)
    };
    let (factor, before) = enroll().await;
    let uid = TestGateway::uid("alice");
    let store = gw.gateway.state().store.clone();
    store.bump_epoch(&uid).await.unwrap();
    let mut device = Device::generate(&gw.url("/_portcullis")).unwrap();
    let refused = device.pair(&before, "Phone", "http://127.0.0.1:9/push").await;
    assert!(refused.is_err(), "paired with a code from before: {refused:?}");
    let pending = store.get_factor(&uid, &factor).await.unwrap().unwrap();
    assert_eq!(pending.status, portcullis::store::FactorStatus::PendingActivation);
    // A new enrollment after the sessions ended pairs as usual, even where
    // the gateway has not heard of the end yet.
    store.bump_epoch(&uid).await.unwrap();
    let (_, after) = enroll().await;
    device
        .pair(&after, "Phone", "http://127.0.0.1:9/push")
        .await
        .expect("a code handed out after pairs");

    // The admin API enrolls for no session: its codes outlive an ending.
    let res = gw
        .client()
        .post(gw.admin_url(&format!("/api/v1/users/{uid}/factors")))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .json(&json!({ "factorType": "push", "provider": "OKTA" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let code = body["_embedded"]["activation"]["activationToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    store.bump_epoch(&uid).await.unwrap();
    Device::generate(&gw.url("/_portcullis"))
        .unwrap()
        .pair(&code, "Tablet", "http://127.0.0.1:9/push")
        .await
        .expect("an administrator's pairing code is not a session's");
}
