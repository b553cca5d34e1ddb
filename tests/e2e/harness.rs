//! What the end-to-end tests share: the config they run the gateway with, an
//! in-process gateway on a [`ManualClock`], a small JSON client for the
//! authentication API, and the independent tools (`oathtool`, Python, zbar)
//! that compute and check codes instead of the gateway's own TOTP code.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use portcullis::Gateway;
use portcullis::clock::ManualClock;
use portcullis::server::{ListenerOptions, Shutdown};
use serde_json::Value;

/// A user of the users file, password in clear.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub username: &'static str,
    pub password: &'static str,
}

pub const ALICE: User = User {
    username: "alice",
    password: "alice-e2e-correct-horse",
};

/// A second user, whose factor ids alice must not be able to use.
pub const BOB: User = User {
    username: "bob",
    password: "bob-e2e-battery-staple",
};

/// Where in-process gateways start their clock: 15 s into a TOTP step
/// (2026-01-01T00:00:15Z).
pub const T0: i64 = 1_767_225_615;

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The users file (argon2 runs once per process: it is slow on purpose).
pub fn users_file() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut out = String::new();
        for u in [ALICE, BOB] {
            let hash = portcullis::passwords::hash_password(u.password.as_bytes()).unwrap();
            out.push_str(&format!(
                "[[users]]\nusername = {}\npassword = {}\ndisplay_name = {}\nemail = {}\n\n",
                toml_str(u.username),
                toml_str(&hash),
                toml_str(&format!("{} Example", u.username)),
                toml_str(&format!("{}@example.com", u.username)),
            ));
        }
        out
    })
}

/// A fresh store key: base64 of 32 random bytes.
fn store_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(portcullis::crypto::random_bytes(32))
}

/// Knobs of the test config.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `server.listen` (port 0 for in-process gateways, which bind their own).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: SocketAddr,
    /// `None`: the memory store; `Some(dir)`: SQLite in `dir`.
    pub sqlite_dir: Option<std::path::PathBuf>,
    pub max_factor_failures: u32,
    pub skew: u32,
}

impl Setup {
    /// Writes the users file into `dir` and returns the config text: two-factor
    /// everywhere, TOTP and 10 recovery codes, plain http.
    pub fn config(&self, dir: &Path) -> String {
        std::fs::write(dir.join("users.toml"), users_file()).unwrap();
        let store = match &self.sqlite_dir {
            Some(d) => format!(
                "kind = \"sqlite\"\npath = {}",
                toml_str(&d.join("portcullis.db").display().to_string())
            ),
            None => "kind = \"memory\"".to_owned(),
        };
        let secret = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(portcullis::crypto::random_bytes(32))
        };
        format!(
            r#"default_policy = "two_factor"

[server]
listen = "{listen}"
shutdown_timeout = "2s"

[admin]
listen = "{admin}"
tokens = []

[[upstreams]]
name = "echo"
url = "http://{upstream}"
timeout = "5s"

[session]
secrets = ["{secret}"]
secure = false

[users]
file = {users}
enrollment = "first_login"

[store]
{store}
encryption_keys = ["{key}"]

[regulation]
max_factor_failures = {mff}
max_password_failures = 5
max_failures_per_ip = 50
window = "5m"
lockout = "15m"
reveal_lockout = false

[factors.totp]
enabled = true
issuer = "Portcullis"
digits = 6
period = 30
algorithm = "SHA1"
skew = {skew}

[factors.recovery_codes]
enabled = true
count = 10

[log]
format = "text"
level = "warn"
"#,
            listen = self.listen,
            admin = self.admin,
            upstream = self.upstream,
            users = toml_str(&dir.join("users.toml").display().to_string()),
            key = store_key(),
            mff = self.max_factor_failures,
            skew = self.skew,
        )
    }
}

/// Installs the process-wide rustls provider (reqwest and the gateway share aws-lc-rs).
pub fn init_crypto() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The demo echo app on a free port.
pub async fn echo() -> SocketAddr {
    portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A gateway served in this process on real sockets, on a manual clock.
pub struct InProcess {
    pub base: String,
    pub clock: ManualClock,
    shutdown: Shutdown,
    gateway: Gateway,
    _tmp: tempfile::TempDir,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.gateway.stop();
    }
}

impl InProcess {
    /// Starts a gateway (memory store) with `max_factor_failures`.
    pub async fn start(max_factor_failures: u32) -> Self {
        init_crypto();
        let tmp = tempfile::tempdir().unwrap();
        let setup = Setup {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            upstream: echo().await,
            sqlite_dir: None,
            max_factor_failures,
            skew: 1,
        };
        let text = setup.config(tmp.path());
        let config = portcullis::config::load_str(&text, &|_| None)
            .unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{text}"))
            .config;
        let clock = ManualClock::new(T0);
        let gateway = Gateway::build_with(config.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let opts = ListenerOptions::main(&config.server);
        tokio::spawn(portcullis::server::serve(
            listener,
            gateway.main_service(),
            opts,
            shutdown.clone(),
        ));
        InProcess {
            base: format!("http://{addr}"),
            clock,
            shutdown,
            gateway,
            _tmp: tmp,
        }
    }

    /// The clock's time.
    pub fn now(&self) -> i64 {
        use portcullis::clock::Clock;
        self.clock.now()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A client that keeps no cookies and follows no redirects.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap()
    }

    /// POSTs JSON to `path` (under the portal prefix) as an API client.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        let res = Self::client()
            .post(self.url(&format!("/_portcullis{path}")))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        Answer::read(res).await
    }

    /// GETs `path` with an optional cookie header.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut req = Self::client()
            .get(self.url(path))
            .header("accept", "application/json");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    /// `POST /api/v1/authn` with the user's password.
    pub async fn authn(&self, user: User) -> Answer {
        self.post(
            "/api/v1/authn",
            &serde_json::json!({ "username": user.username, "password": user.password }),
        )
        .await
    }

    /// A step of a transaction: `POST {path}` with `{stateToken, ...extra}`.
    pub async fn step(&self, path: &str, state_token: &str, extra: Value) -> Answer {
        let mut body = serde_json::json!({ "stateToken": state_token });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.post(path, &body).await
    }

    /// `POST /api/v1/authn/factors/{id}/verify` with a passCode.
    pub async fn verify(&self, state_token: &str, factor_id: &str, code: &str) -> Answer {
        self.step(
            &format!("/api/v1/authn/factors/{factor_id}/verify"),
            state_token,
            serde_json::json!({ "passCode": code }),
        )
        .await
    }

    /// Enrolls TOTP in an `MFA_ENROLL` transaction.
    pub async fn enroll_totp(&self, state_token: &str) -> Answer {
        self.step(
            "/api/v1/authn/factors",
            state_token,
            serde_json::json!({ "factorType": "token:software:totp", "provider": "GOOGLE" }),
        )
        .await
    }

    /// `POST .../lifecycle/activate` with a passCode.
    pub async fn activate(&self, state_token: &str, factor_id: &str, code: &str) -> Answer {
        self.step(
            &format!("/api/v1/authn/factors/{factor_id}/lifecycle/activate"),
            state_token,
            serde_json::json!({ "passCode": code }),
        )
        .await
    }

    /// Gives `user` an active TOTP factor through the API; returns its id and
    /// base32 secret. The code comes from oathtool at the clock's time.
    pub async fn enrolled(&self, user: User) -> (String, String) {
        let a = self.authn(user).await.ok("MFA_ENROLL");
        let e = self.enroll_totp(&a.state_token()).await.ok("MFA_ENROLL_ACTIVATE");
        let id = e.enrolled_factor_id();
        let secret = e.shared_secret();
        let code = oathtool(&secret, self.now());
        self.activate(&a.state_token(), &id, &code).await.ok("SUCCESS");
        (id, secret)
    }
}

/// A JSON answer with its status and headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn read(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Asserts a 200 with `status` and returns self.
    #[track_caller]
    pub fn ok(self, status: &str) -> Self {
        assert_eq!(self.status, 200, "expected 200 {status}, got {self:#?}");
        assert_eq!(self.body["status"], status, "{:#}", self.body);
        self
    }

    /// Asserts an Okta error object with this HTTP status and code.
    #[track_caller]
    pub fn error(&self, http: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["errorCode"].as_str()),
            (http, Some(code)),
            "expected {http} {code}, got {:#}",
            self.body
        );
        for key in ["errorSummary", "errorLink", "errorId", "errorCauses"] {
            assert!(self.body.get(key).is_some(), "{key} missing: {:#}", self.body);
        }
        assert!(
            self.body.get("stateToken").is_none(),
            "an error leaks a stateToken"
        );
        assert!(
            self.body.get("sessionToken").is_none(),
            "an error leaks a sessionToken"
        );
    }

    pub fn state_token(&self) -> String {
        self.body["stateToken"].as_str().unwrap().to_owned()
    }

    pub fn session_token(&self) -> String {
        self.body["sessionToken"].as_str().unwrap().to_owned()
    }

    /// The id of the factor enrolled by an `MFA_ENROLL_ACTIVATE` answer.
    pub fn enrolled_factor_id(&self) -> String {
        self.body["_embedded"]["factor"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The base32 secret of an `MFA_ENROLL_ACTIVATE` answer.
    pub fn shared_secret(&self) -> String {
        self.body["_embedded"]["factor"]["_embedded"]["activation"]["sharedSecret"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The `_embedded.factors` of an answer.
    pub fn factors(&self) -> Vec<Value> {
        self.body["_embedded"]["factors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The id of the listed factor of `factor_type`.
    pub fn factor_of_type(&self, factor_type: &str) -> Option<String> {
        self.factors()
            .iter()
            .find(|f| f["factorType"] == factor_type)
            .map(|f| f["id"].as_str().unwrap().to_owned())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
}

/// The value `name` is set to by the `Set-Cookie` headers of `headers`.
pub fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get_all("set-cookie").iter().find_map(|h| {
        let pair = h.to_str().ok()?.split(';').next()?;
        let (n, v) = pair.split_once('=')?;
        (n.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

// ---- independent tools ------------------------------------------------------

/// True when `program` runs (`--version`).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when oathtool is installed; else prints why the caller skips.
pub fn have_oathtool(test: &str) -> bool {
    if have("oathtool") {
        return true;
    }
    crate::skip::test(test, "oathtool not installed (apt-get install oathtool)");
    false
}

/// The TOTP code of `secret_b32` at Unix time `t`, computed by oathtool (SHA1,
/// 6 digits, 30 s: the gateway's defaults), never by the gateway's code.
pub fn oathtool(secret_b32: &str, t: i64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{t}"), secret_b32])
        .output()
        .expect("oathtool runs");
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code:?}"
    );
    code
}

/// A six-digit code that oathtool does not give for any step within `around`
/// steps of `t`: certainly wrong.
pub fn wrong_code(secret_b32: &str, t: i64, around: i64) -> String {
    let near: Vec<String> = (-around..=around)
        .map(|k| oathtool(secret_b32, t + k * 30))
        .collect();
    (0..)
        .map(|i: u32| format!("{:06}", (123_457 + i * 7_919) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// What an independent parser makes of an `otpauth://` key URI.
#[derive(Debug, serde::Deserialize)]
pub struct KeyUri {
    /// Which implementation parsed it (`pyotp`, or the stdlib fallback).
    pub parser: String,
    pub issuer: String,
    pub account: String,
    pub secret: String,
    pub digits: u32,
    pub period: u32,
    pub algorithm: String,
    /// The parser's own TOTP code at the given time.
    pub code: String,
}

/// Parses a key URI with Python: `pyotp.parse_uri` when pyotp is installed,
/// else the standard library (urllib + hmac), following Google's Key Uri
/// Format. Returns `None` (and says so) without Python.
pub fn parse_key_uri(uri: &str, t: i64) -> Option<KeyUri> {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, json, struct, sys
from urllib.parse import urlsplit, parse_qs, unquote
uri, t = sys.argv[1], int(sys.argv[2])
u = urlsplit(uri)
assert u.scheme == "otpauth", u.scheme
assert u.netloc == "totp", u.netloc
label = unquote(u.path[1:])
label_issuer, account = label.split(":", 1) if ":" in label else ("", label)
q = {k: v[0] for k, v in parse_qs(u.query, strict_parsing=True).items()}
known = {"secret", "issuer", "algorithm", "digits", "period"}
assert set(q) <= known, sorted(set(q) - known)
issuer = q.get("issuer", label_issuer)
assert not label_issuer or label_issuer == issuer, (label_issuer, issuer)
secret = q["secret"]
key = base64.b32decode(secret + "=" * (-len(secret) % 8))
digits, period = int(q.get("digits", 6)), int(q.get("period", 30))
algorithm = q.get("algorithm", "SHA1")
try:
    import pyotp
    p = pyotp.parse_uri(uri)
    code, parser = p.at(t), "pyotp"
    assert p.secret == secret and p.issuer == issuer and p.name == account
except ImportError:
    mac = hmac.new(key, struct.pack(">Q", t // period), getattr(hashlib, algorithm.lower())).digest()
    o = mac[-1] & 15
    code = str((struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF) % 10 ** digits).zfill(digits)
    parser = "python stdlib"
print(json.dumps(dict(parser=parser, issuer=issuer, account=account, secret=secret,
    digits=digits, period=period, algorithm=algorithm, code=code)))
"#;
    let out = match Command::new("python3")
        .args(["-c", SCRIPT, uri, &t.to_string()])
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            crate::skip::part(
                &crate::skip::current_test(),
                "key URI check",
                "python3 not installed",
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "the key URI does not parse as a standard one: {uri}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Decodes the QR code in an image file with zbar's `zbarimg`; `None` (and a
/// note) when zbar is not installed.
pub fn decode_qr(image: &Path) -> Option<String> {
    let out = match Command::new("zbarimg")
        .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable"])
        .arg(image)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            crate::skip::part(
                &crate::skip::current_test(),
                "QR decoding",
                "zbarimg not installed (apt-get install zbar-tools)",
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "zbarimg found no QR code in {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}
