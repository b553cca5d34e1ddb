//! The end-to-end harness: a real gateway on real sockets in front of the demo
//! echo app, with a [`ManualClock`] so tests move time instead of sleeping.
//!
//! [`TestGateway::start`] takes TOML that is deep-merged over a base config
//! (tables merge key by key; arrays, such as `[[rules]]` or `[[upstreams]]`,
//! are replaced whole). `{echo}` in that text is the echo app's URL and
//! `{tmp}` the gateway's temporary folder.

#![allow(dead_code)]

pub mod front;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use portcullis::Gateway;
use portcullis::clock::ManualClock;
use portcullis::config::LoadedConfig;
use portcullis::server::{ListenerOptions, Shutdown};
use portcullis::store::SharedStore;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where the manual clock starts (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600;

/// A 40-byte session secret.
pub const SESSION_SECRET: &str = "test-session-secret-0123456789abcdefghijk";

/// A user of the users file, with the password in clear.
#[derive(Debug, Clone, Copy)]
pub struct TestUser {
    pub username: &'static str,
    pub password: &'static str,
    pub display_name: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
}

/// Alice: a comma inside a group name and a non-ASCII display name, to check
/// the identity header encoding.
pub const ALICE: TestUser = TestUser {
    username: "alice",
    password: "alice-correct-horse",
    display_name: "Alice Zoë Example",
    email: "alice@example.com",
    groups: &["admins", "dev,ops"],
};

pub const BOB: TestUser = TestUser {
    username: "bob",
    password: "bob-battery-staple",
    display_name: "Bob Example",
    email: "bob@example.com",
    groups: &["staff"],
};

pub const USERS: [TestUser; 2] = [ALICE, BOB];

/// The users file text, hashed once per process (argon2 is slow on purpose).
pub fn users_file() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut out = String::new();
        for u in USERS {
            let hash = portcullis::passwords::hash_password(u.password.as_bytes()).unwrap();
            let groups: Vec<String> = u.groups.iter().map(|g| toml_str(g)).collect();
            out.push_str(&format!(
                "[[users]]\nusername = {}\npassword = {}\ndisplay_name = {}\nemail = {}\ngroups = [{}]\n\n",
                toml_str(u.username),
                toml_str(&hash),
                toml_str(u.display_name),
                toml_str(u.email),
                groups.join(", "),
            ));
        }
        out
    })
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The rustls provider, installed once (reqwest and the gateway both use aws-lc-rs).
pub fn init_crypto() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The base config every test starts from.
const BASE: &str = r#"
default_policy = "one_factor"

[server]
listen = "127.0.0.1:1"
header_read_timeout = "5s"
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:2"
tokens = ["test-admin-token-0123456789abcdef"]

[[upstreams]]
name = "echo"
url = "{echo}"
timeout = "3s"

[session]
secrets = ["{secret}"]
secure = false
lifetime = "8h"
idle_timeout = "30m"
revocation_check = "2s"

[users]
file = "{tmp}/users.toml"

[store]
kind = "memory"
encryption_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]

[factors.totp]
enabled = false

[factors.recovery_codes]
enabled = false

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/denied(/|$)"
policy = "deny"
"#;

/// Deep-merges `over` into `base`: tables key by key, everything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Builds the config text: the base with `extra` merged over it.
pub fn config_text(extra: &str, echo: &str, tmp: &std::path::Path) -> String {
    let subst = |s: &str| {
        s.replace("{echo}", echo)
            .replace("{tmp}", &tmp.display().to_string())
            .replace("{secret}", SESSION_SECRET)
    };
    let mut base: toml::Table = toml::from_str(&subst(BASE)).unwrap();
    let over: toml::Table =
        toml::from_str(&subst(extra)).unwrap_or_else(|e| panic!("bad test TOML: {e}\n{extra}"));
    merge(&mut base, over);
    toml::to_string(&base).unwrap()
}

/// Loads config text (no environment: every secret is inline).
pub fn load(text: &str) -> LoadedConfig {
    portcullis::config::load_str(text, &|_| None)
        .unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{text}"))
}

/// How to start a gateway.
#[derive(Default)]
pub struct Builder {
    extra: String,
    store: Option<SharedStore>,
    clock: Option<ManualClock>,
    tls: bool,
    users: Option<String>,
}

impl Builder {
    /// TOML merged over the base config.
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra = extra.to_owned();
        self
    }
    /// Shares an existing store (a second replica).
    pub fn store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }
    /// Shares a clock.
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Another users file text instead of [`users_file`].
    pub fn users(mut self, text: &str) -> Self {
        self.users = Some(text.to_owned());
        self
    }
    /// Serves the main listener over TLS with a fresh self-signed certificate
    /// for `localhost`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub async fn start(self) -> TestGateway {
        init_crypto();
        let tmp = tempfile::tempdir().unwrap();
        let users = self.users.as_deref().unwrap_or_else(|| users_file());
        std::fs::write(tmp.path().join("users.toml"), users).unwrap();
        let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut extra = self.extra.clone();
        let mut cert_pem = None;
        if self.tls {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let cert = tmp.path().join("cert.pem");
            let key = tmp.path().join("key.pem");
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
            extra.push_str(&format!(
                "\n[server.tls]\ncert = {}\nkey = {}\n",
                toml_str(&cert.display().to_string()),
                toml_str(&key.display().to_string())
            ));
            cert_pem = Some(ck.cert.pem());
        }
        let text = config_text(&extra, &format!("http://{echo}"), tmp.path());
        let loaded = load(&text);
        let config = loaded.config;
        let clock = self.clock.unwrap_or_else(|| ManualClock::new(T0));
        let shared: portcullis::clock::SharedClock = Arc::new(clock.clone());
        let gateway = match self.store {
            Some(store) => Gateway::build_with_store(config.clone(), shared, store).await,
            None => Gateway::build_with(config.clone(), shared).await,
        }
        .unwrap();

        let main_opts = ListenerOptions::main(&config.server);
        let admin_opts = ListenerOptions::admin(&config.server, None);
        let shutdown = Shutdown::new();
        let main_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let main = main_listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let main_task = tokio::spawn(portcullis::server::serve(
            main_listener,
            gateway.main_service(),
            main_opts,
            shutdown.clone(),
        ));
        let admin_task = tokio::spawn(portcullis::server::serve(
            admin_listener,
            gateway.admin_router(),
            admin_opts,
            shutdown.clone(),
        ));
        TestGateway {
            main,
            admin,
            echo,
            clock,
            shutdown,
            gateway,
            tls_cert: cert_pem,
            main_task: Some(main_task),
            admin_task: Some(admin_task),
            config_text: text,
            _tmp: tmp,
        }
    }
}

/// A running gateway.
pub struct TestGateway {
    pub main: SocketAddr,
    pub admin: SocketAddr,
    pub echo: SocketAddr,
    pub clock: ManualClock,
    pub shutdown: Shutdown,
    pub gateway: Gateway,
    /// The main listener's certificate (PEM), when serving TLS.
    pub tls_cert: Option<String>,
    pub main_task: Option<JoinHandle<()>>,
    pub admin_task: Option<JoinHandle<()>>,
    pub config_text: String,
    _tmp: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.gateway.stop();
    }
}

/// The echo app's JSON answer.
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    /// Every value the upstream received for `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_owned())
            .collect()
    }
    /// The single value the upstream received for `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "{name} arrived {} times: {all:?}", all.len());
        all.into_iter().next()
    }
    /// Header names the upstream received.
    pub fn names(&self) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[0].as_str().unwrap().to_owned())
            .collect()
    }
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }
}

/// A signed-in browser's cookies.
#[derive(Debug, Clone)]
pub struct Login {
    /// The session cookie's value.
    pub session: String,
    /// The CSRF cookie's value (also the form token).
    pub csrf: String,
    /// The whole session `Set-Cookie` header.
    pub set_cookie: String,
    /// Where the login sent the browser.
    pub location: String,
}

impl Login {
    /// A `Cookie` header with both gateway cookies.
    pub fn cookie(&self) -> String {
        format!(
            "portcullis_session={}; portcullis_csrf={}",
            self.session, self.csrf
        )
    }
    /// A `Cookie` header with only the session.
    pub fn session_cookie(&self) -> String {
        format!("portcullis_session={}", self.session)
    }
}

/// The value `name` is set to by the `Set-Cookie` headers of `res`, with the
/// whole header.
pub fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find_map(|h| {
            let pair = h.split(';').next().unwrap();
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| (v.trim().to_owned(), h.clone()))
        })
}

/// The `value` of the hidden `csrf` field of a portal page.
pub fn csrf_field(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A gateway with `extra` TOML merged over the base config.
    pub async fn start(extra: &str) -> Self {
        Self::builder().toml(extra).start().await
    }

    /// The scheme and authority of the main listener.
    pub fn base(&self) -> String {
        if self.tls_cert.is_some() {
            format!("https://localhost:{}", self.main.port())
        } else {
            format!("http://{}", self.main)
        }
    }

    /// A URL on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin listener's `/metrics` text (Prometheus exposition format);
    /// fails the test unless it answers 200.
    pub async fn metrics(&self) -> String {
        let res = self
            .client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// A client that does not follow redirects and keeps no cookies (tests
    /// send cookies explicitly); trusts the gateway's certificate when TLS.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .no_proxy();
        if let Some(pem) = &self.tls_cert {
            b = b
                .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
                .resolve("localhost", self.main);
        }
        b
    }

    /// The user id of a users-file user.
    pub fn uid(username: &str) -> String {
        portcullis::users::file_user_id(username)
    }

    /// GETs the login page; returns the CSRF cookie (= form token).
    pub async fn login_page(&self, client: &reqwest::Client, rd: &str) -> String {
        let res = client
            .get(self.url(&format!("/_portcullis/login?rd={}", enc(rd))))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let (cookie, _) = set_cookie(&res, "portcullis_csrf").expect("the login page sets a CSRF cookie");
        let field = csrf_field(&res.text().await.unwrap());
        assert_eq!(
            cookie, field,
            "double submit: cookie and field carry the same token"
        );
        field
    }

    /// POSTs the login form with the given CSRF token and extra headers.
    pub async fn post_login(
        &self,
        client: &reqwest::Client,
        csrf: &str,
        username: &str,
        password: &str,
        rd: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = client
            .post(self.url("/_portcullis/login"))
            .header("accept", "text/html")
            .header("cookie", format!("portcullis_csrf={csrf}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("csrf", csrf),
                ("rd", rd),
                ("username", username),
                ("password", password),
            ]));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// The whole form login flow; asserts success (303 with a session cookie).
    pub async fn login_rd(&self, username: &str, password: &str, rd: &str) -> Login {
        let client = self.client();
        let csrf = self.login_page(&client, rd).await;
        let res = self.post_login(&client, &csrf, username, password, rd, &[]).await;
        assert_eq!(res.status(), 303, "login of {username} failed");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let (session, header) = set_cookie(&res, "portcullis_session").expect("a session cookie");
        let (csrf, _) = set_cookie(&res, "portcullis_csrf").expect("a fresh CSRF cookie");
        Login {
            session,
            csrf,
            set_cookie: header,
            location,
        }
    }

    pub async fn login(&self, user: TestUser) -> Login {
        self.login_rd(user.username, user.password, "/").await
    }

    /// GET `path` as an API client with `cookie`; returns the response.
    pub async fn get_json(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client()
            .get(self.url(path))
            .header("accept", "application/json");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    /// GET `path` with `cookie`, asserting 200, and returns what the echo app saw.
    pub async fn echo(&self, path: &str, cookie: Option<&str>) -> Echo {
        let res = self.get_json(path, cookie).await;
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        Echo(serde_json::from_str(&body).unwrap())
    }

    /// The status of an API-client GET of `path` with `cookie`.
    pub async fn status(&self, path: &str, cookie: Option<&str>) -> u16 {
        self.get_json(path, cookie).await.status().as_u16()
    }

    /// Polls until an API-client GET of `path` with `cookie` answers `want`.
    pub async fn wait_status(&self, path: &str, cookie: &str, want: u16, within: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.status(path, Some(cookie)).await;
            if got == want || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `application/x-www-form-urlencoded` body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn echo(&self) -> Echo {
        Echo(serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text())))
    }
}

/// Sends `request` verbatim (it should say `Connection: close`) and reads the
/// response until the server closes.
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("the server closes after Connection: close")
        .unwrap();
    parse_raw(&buf)
}

/// A GET with `Connection: close` for a raw request target.
pub async fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> RawResponse {
    raw(
        addr,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{extra_headers}Connection: close\r\n\r\n"
        ),
    )
    .await
}

fn parse_raw(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = buf[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    RawResponse { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

include!("ports.rs");

/// A one-route hyper upstream answering with `f`.
pub async fn spawn_upstream<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, std::convert::Infallible>(f(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The `portcullis` binary of this build with `args`, without the config and
/// secret variables of the test's environment.
pub fn portcullis_command(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_SESSION_SECRET")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_STORE_KEY");
    c
}

/// A child process that is killed and reaped when dropped (also on panic).
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most 15 s) until the gateway `child` answers
/// `GET {base}/_portcullis/healthz` with 200; fails the test if it exits
/// first, with its standard error when `stderr` names the file it goes to.
pub async fn wait_until_healthy(
    child: &mut Reap,
    client: &reqwest::Client,
    base: &str,
    stderr: Option<&std::path::Path>,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(res) = client.get(format!("{base}/_portcullis/healthz")).send().await
            && res.status() == 200
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not come up"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the gateway exited: {}",
            stderr
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
