//! A code (sms) is bound to the flow that sent it (issue 10): an authn
//! transaction, the admin API, or a signed-in session. A code sent for one
//! cannot be used in another, and a refused try leaves it usable where it
//! belongs.

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::{Answer, authn, gateway, messages, post};
use crate::support::{ALICE, Login, TestGateway};

const TOKEN: &str = "test-admin-token-0123456789abcdef";

async fn admin(gw: &TestGateway, method: Method, path: &str, body: Value) -> (u16, Value) {
    let res = gw
        .client()
        .request(method, gw.admin_url(path))
        .header("authorization", format!("SSWS {TOKEN}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn last_code(file: &std::path::Path) -> String {
    messages(file).pop().unwrap()["code"].as_str().unwrap().to_owned()
}

/// Starts a sign-in of alice: the state token and the sms verify link.
async fn sign_in(gw: &TestGateway, fid: &str) -> (String, String) {
    let a = authn(gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_REQUIRED", "{}", a.json);
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    (token, format!("/_portcullis/api/v1/authn/factors/{fid}/verify"))
}

/// The self-service verify of a signed-in browser (`passCode` or none).
async fn self_verify(gw: &TestGateway, login: &Login, fid: &str, body: Value) -> (u16, Value) {
    let res = gw
        .client()
        .post(gw.url(&format!("/_portcullis/api/v1/users/me/factors/{fid}/verify")))
        .header("cookie", login.cookie())
        .header("x-csrf-token", &login.csrf)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn refused(s: u16, body: &Value) {
    assert_eq!((s, body["errorCode"].as_str()), (403, Some("E0000068")), "{body}");
}

async fn verify(gw: &TestGateway, link: &str, token: &str, code: &str) -> Answer {
    post(gw, link, json!({ "stateToken": token, "passCode": code }), None).await
}

#[tokio::test]
async fn a_code_is_only_good_in_the_flow_that_sent_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[regulation]\nmax_factor_failures = 50\n\
         [factors.sms]\nenabled = true\nresend_after = \"1s\"\n\
         delivery = {{ kind = \"file\", path = {:?} }}\n",
        file.display().to_string()
    ))
    .await;
    let uid = TestGateway::uid("alice");
    // The admin enrolls and activates alice's sms factor (admin flow).
    let (s, f) = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        json!({ "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": "+15555550100" } }),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let fid = f["id"].as_str().unwrap().to_owned();
    let admin_verify = format!("/api/v1/users/{uid}/factors/{fid}/verify");
    let (s, body) = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors/{fid}/lifecycle/activate"),
        json!({ "passCode": last_code(&file) }),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // Sign-in A asks for a code.
    gw.clock.advance(5);
    let (a, link) = sign_in(&gw, &fid).await;
    let sent = post(&gw, &link, json!({ "stateToken": a }), None).await;
    assert_eq!(sent.json["status"], "MFA_CHALLENGE", "{}", sent.json);
    let code_a = last_code(&file);
    // Sign-in B cannot use it, nor can the admin API.
    let (b, _) = sign_in(&gw, &fid).await;
    let r = verify(&gw, &link, &b, &code_a).await;
    assert_eq!(
        (r.status, r.json["errorCode"].as_str()),
        (403, Some("E0000068")),
        "{}",
        r.json
    );
    let (s, body) = admin(&gw, Method::POST, &admin_verify, json!({ "passCode": code_a })).await;
    assert_eq!((s, body["errorCode"].as_str()), (403, Some("E0000068")), "{body}");
    // Nor can a signed-in browser through the self-service API.
    let browser = gw.login(ALICE).await;
    let (s, body) = self_verify(&gw, &browser, &fid, json!({ "passCode": code_a })).await;
    refused(s, &body);
    // Sign-in A still can.
    let ok = verify(&gw, &link, &a, &code_a).await;
    assert_eq!(ok.json["status"], "SUCCESS", "{}", ok.json);

    // The other way: a code the admin API sent is no good to a sign-in.
    gw.clock.advance(5);
    let (s, body) = admin(&gw, Method::POST, &admin_verify, json!({})).await;
    assert_eq!(
        (s, body["factorResult"].as_str()),
        (200, Some("CHALLENGE")),
        "{body}"
    );
    let code_x = last_code(&file);
    let (c, _) = sign_in(&gw, &fid).await;
    let r = verify(&gw, &link, &c, &code_x).await;
    assert_eq!(
        (r.status, r.json["errorCode"].as_str()),
        (403, Some("E0000068")),
        "{}",
        r.json
    );
    let (s, body) = self_verify(&gw, &browser, &fid, json!({ "passCode": code_x })).await;
    refused(s, &body);
    let (s, body) = admin(&gw, Method::POST, &admin_verify, json!({ "passCode": code_x })).await;
    assert_eq!(
        (s, body["factorResult"].as_str()),
        (200, Some("SUCCESS")),
        "{body}"
    );

    // A code the self-service API sent is good there only, in that session.
    gw.clock.advance(5);
    let (s, body) = self_verify(&gw, &browser, &fid, json!({})).await;
    assert_eq!(
        (s, body["factorResult"].as_str()),
        (200, Some("CHALLENGE")),
        "{body}"
    );
    let code_s = last_code(&file);
    let (d, _) = sign_in(&gw, &fid).await;
    let r = verify(&gw, &link, &d, &code_s).await;
    refused(r.status, &r.json);
    let (s, body) = admin(&gw, Method::POST, &admin_verify, json!({ "passCode": code_s })).await;
    refused(s, &body);
    let other = gw.login(ALICE).await;
    let (s, body) = self_verify(&gw, &other, &fid, json!({ "passCode": code_s })).await;
    refused(s, &body);
    let (s, body) = self_verify(&gw, &browser, &fid, json!({ "passCode": code_s })).await;
    assert_eq!(
        (s, body["factorResult"].as_str()),
        (200, Some("SUCCESS")),
        "{body}"
    );
}

/// A new code factor's activation code counts against the user's sends like
/// any other: past `max_sends_per_hour` the enrollment answers 429
/// `E0000047` with the rate-limit headers, in the Factors API and in a
/// sign-in's enrollment, and no factor is left behind.
#[tokio::test]
async fn enrolling_past_the_send_limit_answers_429_like_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n\
         [factors.sms]\nenabled = true\nmax_sends_per_hour = 2\n\
         delivery = {{ kind = \"file\", path = {:?} }}\n",
        file.display().to_string()
    ))
    .await;
    let uid = TestGateway::uid("alice");
    let factors = format!("/api/v1/users/{uid}/factors");
    let sms =
        json!({ "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": "+15555550100" } });
    for _ in 0..2 {
        let (s, f) = admin(&gw, Method::POST, &factors, sms.clone()).await;
        assert_eq!(s, 200, "{f}");
        let fid = f["id"].as_str().unwrap();
        let (s, body) = admin(&gw, Method::DELETE, &format!("{factors}/{fid}"), json!({})).await;
        assert_eq!(s, 204, "{body}");
    }
    assert_eq!(messages(&file).len(), 2);

    let (s, body) = admin(&gw, Method::POST, &factors, sms.clone()).await;
    assert_eq!((s, body["errorCode"].as_str()), (429, Some("E0000047")), "{body}");

    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_ENROLL", "{}", a.json);
    let e = post(
        &gw,
        "/_portcullis/api/v1/authn/factors",
        json!({ "stateToken": a.json["stateToken"], "factorType": "sms", "provider": "OKTA",
                "profile": { "phoneNumber": "+15555550100" } }),
        None,
    )
    .await;
    assert_eq!(
        (e.status, e.json["errorCode"].as_str()),
        (429, Some("E0000047")),
        "{}",
        e.json
    );
    assert_eq!(e.header("x-rate-limit-limit").as_deref(), Some("2"));
    assert_eq!(e.header("x-rate-limit-remaining").as_deref(), Some("0"));
    let retry: i64 = e.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(e.header("x-rate-limit-reset").is_some() && e.header("date").is_some());

    assert_eq!(messages(&file).len(), 2, "nothing more was sent");
    let (s, list) = admin(&gw, Method::GET, &factors, json!({})).await;
    assert_eq!(s, 200);
    assert!(
        !list.as_array().unwrap().iter().any(|f| f["factorType"] == "sms"),
        "no half-enrolled factor: {list}"
    );
}
