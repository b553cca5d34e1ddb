//! Arbitrary bytes as the JSON bodies of the authentication API
//! (`POST {prefix}/api/v1/authn`, the verify, enroll and activate steps, the
//! push device and status calls) and the passwordless factor form: parsing
//! never panics; and the same bytes, posted through the portal router of a
//! gateway on the in-memory store to a step of a live transaction, never
//! make it panic or answer 5xx.
//!
//! Each run begins a passwordless transaction (`{"username": ...}`, no
//! argon2), posts the input to the step its first byte chooses (a JSON
//! object gets the live `stateToken` unless the second byte says to keep
//! its own), then cancels the transaction. The client address changes every
//! run so the per-address limits do not turn every run into the same 429.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use portcullis::context::RequestContext;
use portcullis::portal::fuzzing::{
    AuthnRequest, DeviceAnswer, DeviceRegistration, FactorForm, StatusRequest, StepRequest,
};
use tower::ServiceExt;

const NOW: i64 = 1_800_000_000;

const USERS: &str = r#"
[[users]]
username = "alice"
password = "$argon2id$v=19$m=19456,t=2,p=1$UPMMPkEqEDpxxJo6xdgzsw$qHirl43TvUP7bGAG+ouDAD9+kOxvIAp9SZFO0X/DSEI"
email = "alice@example.com"
totp = { secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" }
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_SESSION_SECRET" => Some("fuzz-secret-0123456789abcdef0123456789abcdef".into()),
        "PORTCULLIS_ADMIN_TOKEN" => Some("fuzz-admin-token-0123456789abcdef0123456789".into()),
        // base64 of 32 bytes
        "PORTCULLIS_STORE_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        _ => None,
    }
}

/// The steps a body can be posted to (relative to the portal prefix).
const STEPS: &[&str] = &[
    "/api/v1/authn",
    "/api/v1/authn/factors",
    "/api/v1/authn/factors/{f}/verify",
    "/api/v1/authn/factors/{f}/verify/resend",
    "/api/v1/authn/factors/{f}/lifecycle/activate",
    "/api/v1/authn/factors/{f}/lifecycle/activate/poll",
    "/api/v1/authn/factors/{f}/lifecycle/resend",
    "/api/v1/authn/cancel",
    "/api/v1/push/devices",
    "/api/v1/push/transactions/{f}",
    "/push/status",
];

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    runs: AtomicU32,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.toml");
    std::fs::write(&users, USERS).unwrap();
    let text = format!(
        r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"

[users]
file = {users:?}
passwordless = true
passwordless_factors = ["token:software:totp"]

[store]
kind = "memory"
"#,
        users = users.display().to_string()
    );
    let loaded = portcullis::config::load_str(&text, &env)
        .unwrap_or_else(|e| panic!("the fuzz config must load: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = std::sync::Arc::new(portcullis::clock::ManualClock::new(NOW));
    let gateway = rt
        .block_on(portcullis::Gateway::build_with(loaded.config, clock))
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Harness {
        router: gateway.portal_router(),
        rt,
        runs: AtomicU32::new(0),
    }
});

fn request(path: &str, body: Vec<u8>, client: IpAddr) -> Request<Body> {
    let mut req = Request::post(path)
        .header(header::HOST, "app.example.com")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(RequestContext {
        peer_addr: SocketAddr::new(client, 40000),
        client_addr: client,
        scheme: "http",
        authority: portcullis::context::Authority::new("app.example.com").unwrap(),
        host: "app.example.com".into(),
        upstream: None,
        request_id: portcullis::context::RequestId::from_text("fuzz").unwrap(),
    });
    req
}

async fn post(router: &axum::Router, path: &str, body: Vec<u8>, client: IpAddr) -> (StatusCode, Vec<u8>) {
    let res = router.clone().oneshot(request(path, body, client)).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, body.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AuthnRequest>(data);
    let _ = serde_json::from_slice::<StepRequest>(data);
    let _ = serde_json::from_slice::<DeviceRegistration>(data);
    let _ = serde_json::from_slice::<DeviceAnswer>(data);
    let _ = serde_json::from_slice::<StatusRequest>(data);
    let _ = serde_urlencoded::from_bytes::<FactorForm>(data);

    let [step, flags, body @ ..] = data else {
        return;
    };
    let h = &*HARNESS;
    let n = h.runs.fetch_add(1, Ordering::Relaxed);
    let client = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    h.rt.block_on(async {
        // A live passwordless transaction: alice's (a users-file TOTP) or a decoy's.
        let login = if flags & 2 == 0 { "alice" } else { "mallory" };
        let begin = serde_json::json!({ "username": login }).to_string().into_bytes();
        let (status, answer) = post(&h.router, "/api/v1/authn", begin, client).await;
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        let token = answer["stateToken"].as_str().unwrap_or_default().to_owned();
        let factor = answer["_embedded"]["factors"][0]["id"]
            .as_str()
            .unwrap_or("x")
            .to_owned();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "beginning a passwordless sign-in answered {status}"
        );

        let mut body = body.to_vec();
        if flags & 1 == 0
            && let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(&body)
        {
            obj.insert("stateToken".into(), token.clone().into());
            body = serde_json::to_vec(&obj).unwrap();
        }
        let path = STEPS[usize::from(*step) % STEPS.len()].replace("{f}", &factor);
        let (status, _) = post(&h.router, &path, body, client).await;
        assert!(!status.is_server_error(), "POST {path} answered {status}");

        if !token.is_empty() {
            let cancel = serde_json::json!({ "stateToken": token })
                .to_string()
                .into_bytes();
            let _ = post(&h.router, "/api/v1/authn/cancel", cancel, client).await;
        }
    });
});
