//! What the API tests share: a gateway with TOTP and recovery codes on, and
//! a small JSON client for the admin listener.

use reqwest::Method;
use serde_json::Value;

use crate::support::TestGateway;

/// The admin token of the base test config.
pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// TOML for the API tests: TOTP and recovery codes, and one two-factor rule
/// (so a user's last factor is protected).
pub const FACTORS: &str = r#"
[factors.totp]
enabled = true
[factors.recovery_codes]
enabled = true
count = 10

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/secure/"
policy = "two_factor"
"#;

/// A gateway for the API tests, with `extra` TOML merged after [`FACTORS`].
pub async fn gateway(extra: &str) -> TestGateway {
    TestGateway::start(&format!("{FACTORS}\n{extra}")).await
}

/// An answer: status, headers and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
    /// Asserts the status and, for errors, the Okta error code.
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(self.status, status, "{}", self.text);
        if let Some(code) = code {
            assert_eq!(self.body["errorCode"], code, "{}", self.text);
            assert!(self.body["errorId"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(self.body["errorCauses"].is_array());
        }
        self
    }
}

/// Sends a request and reads the answer.
pub async fn send(req: reqwest::RequestBuilder) -> Answer {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// An admin API call with the test token (`auth = None`: no Authorization).
pub async fn admin_as(
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> Answer {
    let mut req = gw
        .client()
        .request(method, gw.admin_url(path))
        .header("accept", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

/// An admin API call with the test token.
pub async fn admin(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> Answer {
    admin_as(gw, method, path, body, Some(&format!("SSWS {TOKEN}"))).await
}

/// Creates a stored user through the API (asserting 200) and returns it.
pub async fn create_user(gw: &TestGateway, login: &str, password: Option<&str>) -> Value {
    // A login that is an address is its own e-mail.
    let email = if login.contains('@') {
        login.to_owned()
    } else {
        format!("{login}@example.com")
    };
    let mut body = serde_json::json!({
        "profile": { "login": login, "email": email, "firstName": "Test", "lastName": "User" }
    });
    if let Some(p) = password {
        body["credentials"] = serde_json::json!({ "password": { "value": p } });
    }
    let a = admin(gw, Method::POST, "/api/v1/users?activate=true", Some(body)).await;
    a.expect(200, None);
    a.body
}

/// The TOTP code of a base32 secret at the gateway's clock, offset by `steps`.
pub fn totp(gw: &TestGateway, secret_b32: &str, steps: i64) -> String {
    use portcullis::clock::Clock as _;
    let secret = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, secret_b32).unwrap();
    let cfg = gw.gateway.state().config.factors.totp.clone();
    portcullis::factors::totp::code_at(&cfg, &secret, gw.clock.now() + steps * 30)
}

/// Enrolls and activates a TOTP factor for `uid` through the admin API;
/// returns `(factor id, base32 secret)`. Moves the clock one step on so the
/// activation code's step is used up and the next code is fresh.
pub async fn active_totp(gw: &TestGateway, uid: &str) -> (String, String) {
    let e = admin(
        gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(serde_json::json!({ "factorType": "token:software:totp", "provider": "GOOGLE" })),
    )
    .await;
    e.expect(200, None);
    let fid = e.body["id"].as_str().unwrap().to_owned();
    let secret = e.body["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = totp(gw, &secret, 0);
    admin(
        gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/factors/{fid}/lifecycle/activate"),
        Some(serde_json::json!({ "passCode": code })),
    )
    .await
    .expect(200, None);
    gw.clock.advance(30);
    (fid, secret)
}

/// Signs in through the authn API with a password and a TOTP code; returns
/// the level-2 session cookie value.
pub async fn level2(gw: &TestGateway, login: &str, password: &str, fid: &str, secret: &str) -> String {
    let a = send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/authn"))
            .json(&serde_json::json!({ "username": login, "password": password })),
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.body["status"], "MFA_REQUIRED", "{}", a.text);
    let token = a.body["stateToken"].as_str().unwrap().to_owned();
    let code = totp(gw, secret, 0);
    let v = gw
        .client()
        .post(gw.url(&format!("/_portcullis/api/v1/authn/factors/{fid}/verify")))
        .json(&serde_json::json!({ "stateToken": token, "passCode": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 200);
    let (session, _) = crate::support::set_cookie(&v, "portcullis_session").expect("a level-2 session");
    gw.clock.advance(30);
    session
}

/// The `file` delivery's messages so far.
pub fn messages(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The message of the push a verify answer (201 `WAITING`) started: pushes
/// are delivered in the background, so it is awaited (up to 5 s).
pub async fn push_message(path: &std::path::Path, answer: &Value) -> Value {
    let tid = answer["_links"]["cancel"]["href"]
        .as_str()
        .and_then(|h| h.rsplit('/').next())
        .unwrap_or_else(|| panic!("no cancel link in {answer}"))
        .to_owned();
    for _ in 0..500 {
        if let Some(m) = messages(path)
            .into_iter()
            .find(|m| m["transaction_id"] == tid.as_str())
        {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the push {tid} was never delivered")
}

/// TOML enabling sms (`resend_after = "20s"`) and push with a `file`
/// delivery writing to `file`.
pub fn sms_and_push(file: &std::path::Path) -> String {
    let delivery = format!(
        "{{ kind = \"file\", path = {} }}",
        crate::support::toml_str(&file.display().to_string())
    );
    format!(
        "[factors.sms]\nenabled = true\nresend_after = \"20s\"\ndelivery = {delivery}\n\
         [factors.push]\nenabled = true\nttl = \"60s\"\ndelivery = {delivery}\n"
    )
}

/// What a device posts to `{prefix}/api/v1/push/devices` to pair with `key`.
pub fn pairing(key: &ed25519_dalek::SigningKey, activation_token: &str) -> Value {
    serde_json::json!({
        "activationToken": activation_token,
        "publicKey": portcullis::crypto::b64(key.verifying_key().as_bytes()),
        "deviceName": "Test phone",
        "address": "relay:device-1",
    })
}

/// A device's signed answer to a push message (as the `file` delivery wrote it).
pub fn device_answer(key: &ed25519_dalek::SigningKey, push: &Value, decision: &str, number: u32) -> Value {
    use ed25519_dalek::Signer as _;
    let bytes = portcullis::factors::push::signed_bytes(
        push["transaction_id"].as_str().unwrap(),
        push["factor_id"].as_str().unwrap(),
        decision,
        number,
        push["expires_at"].as_str().unwrap(),
    );
    serde_json::json!({
        "decision": decision,
        "number": number,
        "signature": portcullis::crypto::b64(&key.sign(&bytes).to_bytes()),
    })
}
