//! Security keys and passkeys (factor type `webauthn`, provider `FIDO`)
//! through the admin Factors API and the authn API, answered by a software
//! authenticator: Okta's shapes, single-use challenges, replayed,
//! malformed and cloned (counter going backwards) answers refused, and no
//! session for any of them.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Answer, admin, create_user, gateway, send};
use crate::soft::SoftKey;
use crate::support::TestGateway;

const ORIGIN: &str = "https://app.example.com";
const RP: &str = "app.example.com";

const WEBAUTHN: &str = r#"
[server]
external_url = "https://app.example.com"
[factors.webauthn]
enabled = true
"#;

/// An active key of `uid` through the admin API: the factor id.
async fn active_key(gw: &TestGateway, uid: &str, key: &mut SoftKey) -> String {
    let base = format!("/api/v1/users/{uid}/factors");
    let e = admin(
        gw,
        Method::POST,
        &base,
        Some(json!({ "factorType": "webauthn", "provider": "FIDO", "profile": { "authenticatorName": "Blue key" } })),
    )
    .await;
    e.expect(200, None);
    assert_eq!(e.body["status"], "PENDING_ACTIVATION");
    assert_eq!(e.body["factorType"], "webauthn");
    assert_eq!(e.body["provider"], "FIDO");
    assert!(e.body["id"].as_str().unwrap().starts_with("fwf"));
    let activation = &e.body["_embedded"]["activation"];
    for k in ["challenge", "rp", "user", "pubKeyCredParams"] {
        assert!(!activation[k].is_null(), "activation.{k}: {activation}");
    }
    assert_eq!(activation["rp"]["id"], RP);
    assert_eq!(activation["attestation"], "none");
    // Always listed (SPEC section 13), empty for the user's first key.
    assert_eq!(activation["excludeCredentials"], json!([]), "{activation}");
    let fid = e.body["id"].as_str().unwrap().to_owned();
    let answer = key.register(activation);
    let a = admin(
        gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({ "clientData": answer["clientData"], "attestation": answer["attestation"] })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "ACTIVE");
    assert_eq!(a.body["profile"]["authenticatorName"], "Blue key");
    assert_eq!(
        a.body["profile"]["credentialId"],
        json!(crate::soft::b64(&key.cred_id))
    );
    fid
}

async fn challenge(gw: &TestGateway, path: &str) -> Value {
    let c = admin(gw, Method::POST, path, Some(json!({}))).await;
    c.expect(200, None);
    assert_eq!(c.body["factorResult"], "CHALLENGE", "{}", c.text);
    c.body["_embedded"]["challenge"].clone()
}

fn assertion(a: &Value) -> Value {
    json!({
        "clientData": a["clientData"],
        "authenticatorData": a["authenticatorData"],
        "signatureData": a["signatureData"],
    })
}

#[tokio::test]
async fn factors_api_enroll_activate_challenge_verify() {
    let gw = gateway(WEBAUTHN).await;
    let u = create_user(&gw, "wanda", None).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let catalog = admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{uid}/factors/catalog"),
        None,
    )
    .await;
    assert!(
        catalog
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["factorType"] == "webauthn" && f["provider"] == "FIDO"),
        "{}",
        catalog.text
    );
    let mut key = SoftKey::new(ORIGIN);
    let fid = active_key(&gw, &uid, &mut key).await;
    let verify = format!("/api/v1/users/{uid}/factors/{fid}/verify");

    // A second key's creation options exclude the first one.
    let second = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(json!({ "factorType": "webauthn", "provider": "FIDO", "profile": { "authenticatorName": "Red key" } })),
    )
    .await;
    second.expect(200, None);
    let excluded = &second.body["_embedded"]["activation"]["excludeCredentials"];
    assert_eq!(excluded.as_array().map(Vec::len), Some(1), "{}", second.text);
    assert_eq!(excluded[0]["id"], json!(crate::soft::b64(&key.cred_id)));
    let pending = second.body["id"].as_str().unwrap();
    admin(
        &gw,
        Method::DELETE,
        &format!("/api/v1/users/{uid}/factors/{pending}"),
        None,
    )
    .await;

    let o = challenge(&gw, &verify).await;
    assert_eq!(o["rpId"], RP);
    assert_eq!(
        o["allowCredentials"][0]["id"],
        json!(crate::soft::b64(&key.cred_id))
    );
    let good = assertion(&key.assert(&o, RP));
    let v = admin(&gw, Method::POST, &verify, Some(good.clone())).await;
    v.expect(200, None);
    assert_eq!(v.body["factorResult"], "SUCCESS");
    // The same answer again: its challenge is used up.
    admin(&gw, Method::POST, &verify, Some(good))
        .await
        .expect(403, Some("E0000082"));

    // Malformed, and a cloned key whose counter went backwards.
    let _ = challenge(&gw, &verify).await;
    let bad = json!({ "clientData": "not base64!", "authenticatorData": "", "signatureData": "" });
    admin(&gw, Method::POST, &verify, Some(bad))
        .await
        .expect(403, Some("E0000068"));
    let o = challenge(&gw, &verify).await;
    let cloned = assertion(&key.assert_with_counter(&o, RP, 1));
    admin(&gw, Method::POST, &verify, Some(cloned))
        .await
        .expect(403, Some("E0000068"));
    // The key still works with its own counter.
    let o = challenge(&gw, &verify).await;
    admin(&gw, Method::POST, &verify, Some(assertion(&key.assert(&o, RP))))
        .await
        .expect(200, None);
}

fn no_session(a: &Answer) -> bool {
    !a.all("set-cookie")
        .iter()
        .any(|c| c.starts_with("portcullis_session="))
}

async fn authn(gw: &TestGateway, body: Value, path: &str) -> Answer {
    send(gw.client().post(gw.url(path)).json(&body)).await
}

#[tokio::test]
async fn authn_api_signs_in_with_a_key_and_never_with_a_bad_answer() {
    let gw = gateway(&format!("{WEBAUTHN}\n[regulation]\nmax_factor_failures = 3\n")).await;
    let u = create_user(&gw, "xena", Some("Correct horse 42!")).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let mut key = SoftKey::new(ORIGIN);
    let fid = active_key(&gw, &uid, &mut key).await;
    let start = || async {
        let a = authn(
            &gw,
            json!({ "username": "xena", "password": "Correct horse 42!" }),
            "/_portcullis/api/v1/authn",
        )
        .await;
        a.expect(200, None);
        assert_eq!(a.body["status"], "MFA_REQUIRED", "{}", a.text);
        assert!(
            a.body["_embedded"]["factors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["factorType"] == "webauthn"),
            "{}",
            a.text
        );
        a.body["stateToken"].as_str().unwrap().to_owned()
    };
    let path = format!("/_portcullis/api/v1/authn/factors/{fid}/verify");

    let token = start().await;
    let c = authn(&gw, json!({ "stateToken": token }), &path).await;
    c.expect(200, None);
    assert_eq!(c.body["status"], "MFA_CHALLENGE", "{}", c.text);
    let o = c.body["_embedded"]["challenge"].clone();
    assert!(o["challenge"].is_string(), "{}", c.text);
    let mut body = assertion(&key.assert(&o, RP));
    body["stateToken"] = json!(token);
    let ok = authn(&gw, body.clone(), &path).await;
    ok.expect(200, None);
    assert_eq!(ok.body["status"], "SUCCESS", "{}", ok.text);
    assert!(ok.body["sessionToken"].is_string());
    // The transaction is finished: the same answer again gets nothing.
    authn(&gw, body, &path).await.expect(401, Some("E0000011"));

    // Another transaction: an answer made for the first one's challenge is a replay.
    let token = start().await;
    let c = authn(&gw, json!({ "stateToken": token }), &path).await;
    let o2 = c.body["_embedded"]["challenge"].clone();
    let mut stale = assertion(&key.assert(&o, RP));
    stale["stateToken"] = json!(token);
    let r = authn(&gw, stale, &path).await;
    r.expect(403, Some("E0000068"));
    assert!(no_session(&r));
    // A different authenticator for the same credential id.
    let _ = authn(&gw, json!({ "stateToken": token }), &path).await;
    let mut stranger = SoftKey::new(ORIGIN);
    stranger.cred_id = key.cred_id.clone();
    stranger.counter = 100;
    let _ = o2;
    let o3 = authn(&gw, json!({ "stateToken": token }), &path).await.body["_embedded"]["challenge"].clone();
    let mut forged = assertion(&stranger.assert(&o3, RP));
    forged["stateToken"] = json!(token);
    authn(&gw, forged, &path).await.expect(403, Some("E0000068"));
    // Three failures: locked; the right key is refused like a wrong one.
    let _ = authn(&gw, json!({ "stateToken": token }), &path).await;
    let mut junk = json!({ "clientData": "AAAA", "authenticatorData": "AAAA", "signatureData": "AAAA" });
    junk["stateToken"] = json!(token);
    authn(&gw, junk, &path).await.expect(403, Some("E0000068"));
    let o4 = authn(&gw, json!({ "stateToken": token }), &path).await.body["_embedded"]["challenge"].clone();
    let mut right = assertion(&key.assert(&o4, RP));
    right["stateToken"] = json!(token);
    let locked = authn(&gw, right, &path).await;
    locked.expect(403, Some("E0000068"));
    assert!(no_session(&locked));
}

/// The passkey sign-in page stores a ceremony for whoever asks, signed in or
/// not: it is counted like the other sign-in transactions a client may start
/// without a password (`max_transactions_per_ip_per_minute`), so a loop of
/// GETs cannot fill the store.
#[tokio::test]
async fn the_passkey_page_is_limited_per_address() {
    let gw = gateway(&format!(
        "{WEBAUTHN}[users]\npasswordless_factors = [\"webauthn\"]\n\
         [regulation]\nmax_transactions_per_ip_per_minute = 3\n"
    ))
    .await;
    let page = || async {
        // No cookie jar: each request is a stranger's first visit.
        let res = gw
            .client()
            .get(gw.url("/_portcullis/login/passkey?rd=/"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, retry, res.text().await.unwrap())
    };
    for n in 0..3 {
        let (status, _, body) = page().await;
        assert_eq!(status, 200, "page {n}: {body}");
        assert!(body.contains("data-options"), "page {n} holds a ceremony: {body}");
    }
    let (status, retry, body) = page().await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert!(!body.contains("data-options"), "no ceremony once limited: {body}");
}

/// A registration challenge is good for the ceremony's five minutes, as a
/// sign-in's is: an answer kept from an abandoned enrollment does not
/// activate the key later, and a new ceremony for the same pending key works.
#[tokio::test]
async fn a_registration_answer_is_taken_for_the_ceremonys_time_only() {
    let gw = gateway(WEBAUTHN).await;
    let u = create_user(&gw, "walter", None).await;
    let uid = u["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/users/{uid}/factors");
    let enroll = || async {
        let e = admin(
            &gw,
            Method::POST,
            &base,
            Some(json!({ "factorType": "webauthn", "provider": "FIDO", "profile": { "authenticatorName": "Late key" } })),
        )
        .await;
        e.expect(200, None);
        (
            e.body["id"].as_str().unwrap().to_owned(),
            e.body["_embedded"]["activation"].clone(),
        )
    };
    let activate = |fid: String, answer: Value| {
        let gw = &gw;
        let base = &base;
        async move {
            admin(
                gw,
                Method::POST,
                &format!("{base}/{fid}/lifecycle/activate"),
                Some(json!({ "clientData": answer["clientData"], "attestation": answer["attestation"] })),
            )
            .await
        }
    };
    let mut key = SoftKey::new(ORIGIN);
    let (fid, activation) = enroll().await;
    let answer = key.register(&activation);
    gw.clock.advance(301);
    let late = activate(fid.clone(), answer).await;
    assert_eq!(late.status, 403, "{}", late.text);
    let listed = admin(&gw, Method::GET, &format!("{base}/{fid}"), None).await;
    assert_eq!(listed.body["status"], "PENDING_ACTIVATION", "{}", listed.text);
    // Within the time, a fresh enrollment activates.
    let (fid, activation) = enroll().await;
    let answer = key.register(&activation);
    gw.clock.advance(299);
    activate(fid, answer).await.expect(200, None);
}
