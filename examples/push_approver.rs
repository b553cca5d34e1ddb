//! A push approver: plays the device of Portcullis' push factor (SPEC section 8).
//!
//! It pairs with the gateway using an activation token, keeps its Ed25519
//! key in a state file, runs a small HTTP endpoint that receives challenge
//! messages, shows their context and approves or denies them, signing
//! `portcullis-push-v1\n{tid}\n{factorId}\n{decision}\n{number}\n{expiresAt}`.
//!
//! ```text
//! # 1. Enroll a push factor in the portal ({prefix}/enroll?type=push) and copy
//! #    the activation token (or the pairing link) it shows.
//! # 2. Point factors.push.delivery at this program's endpoint, e.g.
//! #      [factors.push]
//! #      enabled = true
//! #      delivery = { kind = "webhook", url = "http://127.0.0.1:7070/push", secret = "..." }
//! #    (a real deployment has a relay that forwards to phones; here the relay
//! #    is the approver itself, on localhost).
//! # 3. Run:
//! cargo run --example push_approver -- --gateway http://127.0.0.1:8080/_portcullis \
//!     --token <activation token> --listen 127.0.0.1:7070 --webhook-secret ...
//! ```
//!
//! When a sign-in pushes, it prints the user, the client address, the app and
//! the expiry, and asks for the number the browser shows (type it to
//! approve, or `d` to deny). With `--auto deny` it denies every push at once;
//! with `--auto approve` it approves once it knows the number, which it is
//! told over its control endpoint: `POST /number {"number": 42}` (tests read
//! the number from the browser page or the authn answer and post it here;
//! a number posted before the push arrives is kept for the next one).
//!
//! It prints one JSON line per event on stdout (`ready`, `paired`, `push`,
//! `answered`), so scripts can follow it. `GET /pending` lists unanswered pushes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The exact bytes the gateway verifies.
pub fn signed_text(tid: &str, factor_id: &str, decision: &str, number: u32, expires_at: &str) -> String {
    format!("portcullis-push-v1\n{tid}\n{factor_id}\n{decision}\n{number}\n{expires_at}")
}

/// What the device keeps between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    /// The Ed25519 secret key seed, base64url.
    pub seed: String,
    #[serde(rename = "factorId")]
    pub factor_id: Option<String>,
    /// The gateway's base URL including the portal prefix.
    pub gateway: String,
}

/// A paired (or pairing) device.
#[derive(Debug, Clone)]
pub struct Device {
    pub key: SigningKey,
    pub gateway: String,
    pub factor_id: Option<String>,
    http: reqwest::Client,
}

/// A push as the relay delivered it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PushMessage {
    pub transaction_id: String,
    pub factor_id: String,
    pub expires_at: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub text: String,
}

impl Device {
    /// A device with a new random key.
    pub fn generate(gateway: &str) -> Result<Self, BoxError> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self::from_seed(gateway, seed, None)
    }

    /// A device from a stored key.
    pub fn from_seed(gateway: &str, seed: [u8; 32], factor_id: Option<String>) -> Result<Self, BoxError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
            gateway: gateway.trim_end_matches('/').to_owned(),
            factor_id,
            http,
        })
    }

    /// Loads the state file, or makes a new key.
    pub fn load_or_generate(path: &std::path::Path, gateway: &str) -> Result<Self, BoxError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let st: DeviceState = serde_json::from_slice(&bytes)?;
                let seed: [u8; 32] = unb64(&st.seed)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("state file: bad seed")?;
                let gw = if gateway.is_empty() {
                    st.gateway.as_str()
                } else {
                    gateway
                };
                Self::from_seed(gw, seed, st.factor_id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::generate(gateway),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the state file (mode 0600: it holds the key).
    pub fn save(&self, path: &std::path::Path) -> Result<(), BoxError> {
        let st = DeviceState {
            seed: b64(&self.key.to_bytes()),
            factor_id: self.factor_id.clone(),
            gateway: self.gateway.clone(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        opts.open(path)?.write_all(&serde_json::to_vec_pretty(&st)?)?;
        Ok(())
    }

    /// The public key as the gateway wants it.
    pub fn public_key(&self) -> String {
        b64(self.key.verifying_key().as_bytes())
    }

    /// Pairs with the gateway: `POST {gateway}/api/v1/push/devices`.
    pub async fn pair(&mut self, token: &str, name: &str, address: &str) -> Result<String, BoxError> {
        let res = self
            .http
            .post(format!("{}/api/v1/push/devices", self.gateway))
            .json(&json!({
                "activationToken": token,
                "publicKey": self.public_key(),
                "deviceName": name,
                "address": address,
            }))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("pairing refused ({status}): {body}").into());
        }
        let id = body["factorId"]
            .as_str()
            .ok_or("pairing answer without factorId")?
            .to_owned();
        self.factor_id = Some(id.clone());
        Ok(id)
    }

    /// The answer body for a push.
    pub fn answer_body(&self, push: &PushMessage, decision: &str, number: u32) -> Value {
        let text = signed_text(
            &push.transaction_id,
            &push.factor_id,
            decision,
            number,
            &push.expires_at,
        );
        let sig = self.key.sign(text.as_bytes());
        json!({ "decision": decision, "number": number, "signature": b64(&sig.to_bytes()) })
    }

    /// Answers a push: `POST {gateway}/api/v1/push/transactions/{tid}`.
    /// Returns the HTTP status and the JSON answer.
    pub async fn answer(
        &self,
        push: &PushMessage,
        decision: &str,
        number: u32,
    ) -> Result<(u16, Value), BoxError> {
        let res = self
            .http
            .post(format!(
                "{}/api/v1/push/transactions/{}",
                self.gateway, push.transaction_id
            ))
            .json(&self.answer_body(push, decision, number))
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }
}

/// How the device decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ask on the terminal.
    Ask,
    /// Approve once told the number.
    Approve,
    /// Deny at once.
    Deny,
}

/// The endpoint's shared state.
pub struct Inbox {
    pub device: Device,
    pub mode: Mode,
    /// `Portcullis-Signature` secret; when set, unsigned messages are refused.
    pub webhook_secret: Option<Vec<u8>>,
    pub pending: Mutex<Vec<PushMessage>>,
    pub number: Mutex<Option<u32>>,
    /// Answers given: (transaction id, decision, HTTP status, answer).
    pub answered: Mutex<Vec<(String, String, u16, Value)>>,
    pub changed: Notify,
}

fn event(v: Value) {
    println!("{v}");
}

fn verify_webhook(secret: &[u8], header: &str, body: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => sigs.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    sigs.iter().any(|s| {
        let Ok(expected) = hex::decode(s) else {
            return false;
        };
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret) else {
            return false;
        };
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    if let Some(secret) = &inbox.webhook_secret {
        let header = headers
            .get("portcullis-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !verify_webhook(secret, header, &body) {
            event(json!({ "event": "refused", "reason": "bad webhook signature" }));
            return StatusCode::UNAUTHORIZED;
        }
    }
    let Ok(push) = serde_json::from_slice::<PushMessage>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    event(json!({ "event": "push", "push": push }));
    if let Ok(mut p) = inbox.pending.lock() {
        p.push(push);
    }
    inbox.changed.notify_waiters();
    inbox.changed.notify_one();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct NumberBody {
    number: u32,
}

async fn set_number(State(inbox): State<Arc<Inbox>>, Json(b): Json<NumberBody>) -> StatusCode {
    if let Ok(mut n) = inbox.number.lock() {
        *n = Some(b.number);
    }
    inbox.changed.notify_waiters();
    inbox.changed.notify_one();
    StatusCode::NO_CONTENT
}

async fn list_pending(State(inbox): State<Arc<Inbox>>) -> Json<Value> {
    let pending = inbox.pending.lock().map(|p| p.clone()).unwrap_or_default();
    let answered: Vec<Value> = inbox
        .answered
        .lock()
        .map(|a| {
            a.iter()
                .map(|(t, d, s, v)| json!({ "transaction_id": t, "decision": d, "status": s, "answer": v }))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "pending": pending, "answered": answered }))
}

/// Serves the endpoint on `listener`: `POST /push` (messages), `POST /number`
/// (control), `GET /pending`.
pub async fn serve(listener: tokio::net::TcpListener, inbox: Arc<Inbox>) -> Result<(), BoxError> {
    let app = axum::Router::new()
        .route("/push", post(receive))
        .route("/number", post(set_number))
        .route("/pending", get(list_pending))
        .with_state(inbox);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Answers pushes automatically (`Approve`/`Deny` modes) until the process ends.
pub async fn auto_answer(inbox: Arc<Inbox>) {
    loop {
        let notified = inbox.changed.notified();
        let next = {
            let mut pending = match inbox.pending.lock() {
                Ok(p) => p,
                Err(_) => return,
            };
            let number = inbox.number.lock().ok().and_then(|n| *n);
            match inbox.mode {
                Mode::Deny if !pending.is_empty() => Some((pending.remove(0), "deny", 0)),
                Mode::Approve if !pending.is_empty() => number.map(|n| (pending.remove(0), "approve", n)),
                _ => None,
            }
        };
        match next {
            Some((push, decision, number)) => {
                if decision == "approve"
                    && let Ok(mut n) = inbox.number.lock()
                {
                    *n = None;
                }
                record(&inbox, &push, decision, number).await;
            }
            None => notified.await,
        }
    }
}

async fn record(inbox: &Inbox, push: &PushMessage, decision: &str, number: u32) {
    match inbox.device.answer(push, decision, number).await {
        Ok((status, body)) => {
            event(
                json!({ "event": "answered", "transaction_id": push.transaction_id, "decision": decision, "status": status, "answer": body }),
            );
            if let Ok(mut a) = inbox.answered.lock() {
                a.push((push.transaction_id.clone(), decision.to_owned(), status, body));
            }
        }
        Err(e) => {
            event(json!({ "event": "error", "transaction_id": push.transaction_id, "error": e.to_string() }))
        }
    }
}

/// Asks on the terminal for each push.
async fn ask_loop(inbox: Arc<Inbox>) {
    loop {
        let notified = inbox.changed.notified();
        let next = inbox
            .pending
            .lock()
            .ok()
            .and_then(|mut p| (!p.is_empty()).then(|| p.remove(0)));
        let Some(push) = next else {
            notified.await;
            continue;
        };
        eprintln!(
            "\nSign-in request: user {} to {} from {} at {} (expires {}).\n\
             Type the number shown in the browser to approve, or d to deny:",
            push.user, push.app, push.client, push.time, push.expires_at
        );
        let read = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|n| (n, line))
        })
        .await;
        let Ok(Ok((n, line))) = read else { return };
        if n == 0 {
            return;
        }
        let line = line.trim();
        if line.eq_ignore_ascii_case("d") || line.is_empty() {
            record(&inbox, &push, "deny", 0).await;
        } else if let Ok(n) = line.parse::<u32>() {
            record(&inbox, &push, "approve", n).await;
        } else {
            eprintln!("Not a number: denied.");
            record(&inbox, &push, "deny", 0).await;
        }
    }
}

#[derive(clap::Parser, Debug)]
#[command(about = "A push approver device for Portcullis (see the file's documentation)")]
struct Args {
    /// The gateway's base URL with the portal prefix, e.g. http://127.0.0.1:8080/_portcullis.
    #[arg(long, default_value = "")]
    gateway: String,
    /// The activation token shown at enrollment (pairs the device).
    #[arg(long)]
    token: Option<String>,
    /// Or the pairing link (portcullis-push://pair?gateway=...&token=...).
    #[arg(long)]
    pairing_uri: Option<String>,
    /// Where the key and factor id are kept.
    #[arg(long, default_value = "push_approver.json")]
    state: PathBuf,
    /// The endpoint the relay posts to.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// The address registered with the gateway (default: http://<listen>/push).
    #[arg(long)]
    address: Option<String>,
    #[arg(long, default_value = "Push approver")]
    name: String,
    /// approve | deny: answer without asking.
    #[arg(long)]
    auto: Option<String>,
    /// The webhook secret, to check each message's Portcullis-Signature.
    #[arg(long, env = "PUSH_HOOK_SECRET")]
    webhook_secret: Option<String>,
}

fn parse_pairing(uri: &str) -> Option<(String, String)> {
    let url = url::Url::parse(uri).ok()?;
    let mut gateway = None;
    let mut token = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "gateway" => gateway = Some(v.into_owned()),
            "token" => token = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((gateway?, token?))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    use clap::Parser;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let (mut gateway, mut token) = (args.gateway.clone(), args.token.clone());
    if let Some(uri) = &args.pairing_uri {
        let (g, t) = parse_pairing(uri)
            .ok_or("--pairing-uri: expected portcullis-push://pair?gateway=...&token=...")?;
        gateway = g;
        token = Some(t);
    }
    let mut device = Device::load_or_generate(&args.state, &gateway)?;
    if device.gateway.is_empty() {
        return Err("--gateway is required the first time".into());
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let address = args
        .address
        .clone()
        .unwrap_or_else(|| format!("http://{local}/push"));
    if let Some(token) = token {
        let id = device.pair(&token, &args.name, &address).await?;
        device.save(&args.state)?;
        event(json!({ "event": "paired", "factorId": id, "address": address }));
    } else if device.factor_id.is_none() {
        return Err("not paired yet: give --token or --pairing-uri".into());
    }
    let mode = match args.auto.as_deref() {
        None => Mode::Ask,
        Some("approve") => Mode::Approve,
        Some("deny") => Mode::Deny,
        Some(other) => return Err(format!("--auto: expected approve or deny, got {other}").into()),
    };
    let inbox = Arc::new(Inbox {
        device,
        mode,
        webhook_secret: args.webhook_secret.map(String::into_bytes),
        pending: Mutex::new(Vec::new()),
        number: Mutex::new(None),
        answered: Mutex::new(Vec::new()),
        changed: Notify::new(),
    });
    event(
        json!({ "event": "ready", "listen": local.to_string(), "address": address, "factorId": inbox.device.factor_id }),
    );
    let worker = if mode == Mode::Ask {
        tokio::spawn(ask_loop(inbox.clone()))
    } else {
        tokio::spawn(auto_answer(inbox.clone()))
    };
    let served = serve(listener, inbox).await;
    worker.abort();
    served
}
