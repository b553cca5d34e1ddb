//! What the store tests share: the `portcullis` binary run as a child process
//! on a config written to a temporary folder, a client for the APIs the tests
//! drive (authn with TOTP enrollment, logout, admin), TOTP codes, a counting
//! upstream, a PostgreSQL schema per test and a TCP proxy that can cut the
//! gateway off from its store.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
pub const PASSWORD: &str = "store-tests-correct-horse";
pub const ADMIN_TOKEN: &str = "store-tests-admin-token-0123456789abcdef";
const SESSION_SECRET: &str = "store-tests-session-secret-0123456789abcdefgh";
pub const PREFIX: &str = "/_portcullis";

/// A 32-byte store key, base64, filled with `b`.
pub fn key(b: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([b; 32])
}

/// The key id `portcullis` gives the key [`key`]`(b)`.
pub fn key_id(b: u8) -> String {
    portcullis::sealing::key_id(&[b; 32])
}

/// The user id of a users-file user.
pub fn uid(username: &str) -> String {
    portcullis::users::file_user_id(username)
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The current Unix time.
pub fn now() -> i64 {
    portcullis::clock::system().now()
}

// ---- config -----------------------------------------------------------------

/// Where the gateway keeps its state.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Postgres(String),
    /// Queries through a pooler (`url`), LISTEN and migrations direct (`listen_url`).
    Pooled {
        url: String,
        listen_url: String,
    },
}

/// What a gateway process is started with; each start writes a config with
/// fresh ports.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub dir: PathBuf,
    pub upstream: SocketAddr,
    pub store: StoreSpec,
    /// Base64 keys for `store.encryption_keys`.
    pub keys: Vec<String>,
    pub revocation_check: &'static str,
    /// Users-file users (all with [`PASSWORD`]).
    pub users: Vec<String>,
    /// `regulation.max_password_failures`.
    pub max_password_failures: u32,
}

impl GatewayConfig {
    pub fn new(dir: &Path, upstream: SocketAddr, store: StoreSpec, users: Vec<String>) -> Self {
        Self {
            dir: dir.to_owned(),
            upstream,
            store,
            keys: vec![key(0xa)],
            revocation_check: "500ms",
            users,
            max_password_failures: 3,
        }
    }

    /// Writes the users file and the config; returns the config's path.
    pub fn write(&self, main: u16, admin: u16) -> PathBuf {
        let users_path = self.dir.join("users.toml");
        std::fs::write(&users_path, users_file(&self.users)).unwrap();
        let store = match &self.store {
            StoreSpec::Sqlite(path) => format!(
                "kind = \"sqlite\"\npath = {}",
                toml_str(&path.display().to_string())
            ),
            StoreSpec::Postgres(url) => format!("kind = \"postgres\"\nurl = {}", toml_str(url)),
            StoreSpec::Pooled { url, listen_url } => format!(
                "kind = \"postgres\"\nurl = {}\nlisten_url = {}",
                toml_str(url),
                toml_str(listen_url)
            ),
        };
        let keys: Vec<String> = self.keys.iter().map(|k| toml_str(k)).collect();
        let text = format!(
            r#"default_policy = "one_factor"

[server]
listen = "127.0.0.1:{main}"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin}"
tokens = [{admin_token}]

[[upstreams]]
name = "app"
url = "http://{upstream}"
timeout = "5s"

[session]
secrets = [{secret}]
secure = false
revocation_check = "{check}"

[users]
file = {users}
enrollment = "first_login"

[store]
{store}
encryption_keys = [{keys}]

[regulation]
max_password_failures = {max_pw}
max_factor_failures = 5
max_failures_per_ip = 10000
max_password_failures_per_user = 1000

[factors.totp]
enabled = true

[factors.recovery_codes]
enabled = true

[[rules]]
path = "^/public/"
policy = "bypass"

[log]
format = "json"
level = "info"
"#,
            admin_token = toml_str(ADMIN_TOKEN),
            upstream = self.upstream,
            secret = toml_str(SESSION_SECRET),
            check = self.revocation_check,
            users = toml_str(&users_path.display().to_string()),
            keys = keys.join(", "),
            max_pw = self.max_password_failures,
        );
        let n = CONFIGS.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("portcullis-{n}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

/// The users file: every user has [`PASSWORD`] (hashed once per process;
/// argon2 is slow on purpose).
fn users_file(users: &[String]) -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    let hash = HASH.get_or_init(|| portcullis::passwords::hash_password(PASSWORD.as_bytes()).unwrap());
    users
        .iter()
        .map(|u| {
            format!(
                "[[users]]\nusername = {}\npassword = {}\nemail = {}\n\n",
                toml_str(u),
                toml_str(hash),
                toml_str(&format!("{u}@example.com"))
            )
        })
        .collect()
}

include!("../support/ports.rs");

/// `portcullis` with the given arguments and no configuration from the environment.
pub fn portcullis(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_SESSION_SECRET")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_STORE_KEY")
        .env_remove("RUST_LOG");
    c
}

// ---- the gateway process ------------------------------------------------------

/// A `portcullis serve` child process.
pub struct Gateway {
    child: Mutex<Child>,
    pub name: String,
    pub main: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Why an API call did not give the answer a caller needed.
#[derive(Debug)]
pub enum Failure {
    /// No answer: the gateway is gone (killed) or the connection broke.
    Gone(String),
    /// An answer, but not the expected one.
    Status(u16, String),
}

impl Gateway {
    /// Starts `portcullis serve` and waits until both listeners answer.
    /// Ports are picked free and released before the process binds them, so
    /// another process can take one in between: then it starts again on
    /// fresh ports.
    pub async fn start(cfg: &GatewayConfig, name: &str) -> Gateway {
        for attempt in 1..=5 {
            let (main, admin) = (free_port(), free_port());
            let config = cfg.write(main, admin);
            let log = cfg.dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = portcullis(&["serve", "--config", config.to_str().unwrap()])
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let gw = Gateway {
                child: Mutex::new(child),
                name: name.to_owned(),
                main: SocketAddr::from(([127, 0, 0, 1], main)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                log,
                client: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(15))
                    .no_proxy()
                    .build()
                    .unwrap(),
            };
            match gw.wait_listening().await {
                Ok(()) => return gw,
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("{name} exited at start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until both listeners answer; `Err` with the log when the process
    /// exited at start.
    async fn wait_listening(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = self.child.lock().unwrap().try_wait() {
                return Err(self.log_text());
            }
            let main = self.get(&format!("{PREFIX}/healthz"), None).await;
            let admin = self
                .client
                .get(self.admin_url("/healthz"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if matches!((&main, &admin), (Ok((200, _)), Ok(200))) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start listening:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// What the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush, no checkpoint.
    pub fn kill9(&self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the process to end.
    pub fn terminate(&self) {
        let mut child = self.child.lock().unwrap();
        let pid = child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.main)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET `path` as an API client with `cookie`: status and body.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Result<(u16, String), Failure> {
        let mut req = self
            .client
            .get(self.url(path))
            .header("accept", "application/json");
        if let Some(c) = cookie {
            req = req.header("cookie", format!("portcullis_session={c}"));
        }
        let res = req.send().await.map_err(|e| Failure::Gone(e.to_string()))?;
        let status = res.status().as_u16();
        let body = res.text().await.map_err(|e| Failure::Gone(e.to_string()))?;
        Ok((status, body))
    }

    /// The status of a protected GET of `/app` with the session `cookie`.
    pub async fn app_status(&self, cookie: Option<&str>) -> u16 {
        self.get("/app/data", cookie).await.unwrap().0
    }

    /// POSTs JSON to the main listener: status, body, and the session cookie set, if any.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        cookie: Option<&str>,
    ) -> Result<(u16, Value, Option<String>), Failure> {
        let mut req = self
            .client
            .post(self.url(path))
            .header("accept", "application/json")
            .json(body);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("portcullis_session={c}"));
        }
        let res = req.send().await.map_err(|e| Failure::Gone(e.to_string()))?;
        let status = res.status().as_u16();
        let cookie = session_cookie(&res);
        let text = res.text().await.map_err(|e| Failure::Gone(e.to_string()))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value, cookie))
    }

    /// The password step: `POST /api/v1/authn`.
    pub async fn authn(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(u16, Value, Option<String>), Failure> {
        self.post(
            &format!("{PREFIX}/api/v1/authn"),
            &json!({ "username": username, "password": password }),
            None,
        )
        .await
    }

    /// Signs in with the password and returns the (level 1) session cookie.
    pub async fn sign_in(&self, username: &str) -> Result<String, Failure> {
        let (status, body, cookie) = self.authn(username, PASSWORD).await?;
        match (status, cookie) {
            (200, Some(c)) => Ok(c),
            _ => Err(Failure::Status(status, body.to_string())),
        }
    }

    /// Logout: `DELETE /api/v1/sessions/me`; the status.
    pub async fn logout(&self, cookie: &str) -> Result<u16, Failure> {
        let res = self
            .client
            .delete(self.url(&format!("{PREFIX}/api/v1/sessions/me")))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("cookie", format!("portcullis_session={cookie}"))
            .send()
            .await
            .map_err(|e| Failure::Gone(e.to_string()))?;
        Ok(res.status().as_u16())
    }

    /// An admin API call with the admin token; the status.
    pub async fn admin_call(&self, method: reqwest::Method, path: &str) -> u16 {
        self.client
            .request(method, self.admin_url(path))
            .header("authorization", format!("SSWS {ADMIN_TOKEN}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `/readyz` on the admin listener.
    pub async fn readyz(&self) -> u16 {
        self.client
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A first-login TOTP enrollment through the authn API: password, enroll,
    /// activate with a code. `on_pending` sees the factor once the enroll step
    /// was answered 200, before activation.
    pub async fn enroll_totp(
        &self,
        username: &str,
        on_pending: impl FnOnce(&Enrolled),
    ) -> Result<Enrolled, Failure> {
        let (status, body, _) = self.authn(username, PASSWORD).await?;
        if status != 200 || body["status"] != "MFA_ENROLL" {
            return Err(Failure::Status(status, body.to_string()));
        }
        let state_token = body["stateToken"].as_str().unwrap().to_owned();
        let (status, body, _) = self
            .post(
                &format!("{PREFIX}/api/v1/authn/factors"),
                &json!({ "stateToken": state_token, "factorType": "token:software:totp", "provider": "GOOGLE" }),
                None,
            )
            .await?;
        if status != 200 || body["status"] != "MFA_ENROLL_ACTIVATE" {
            return Err(Failure::Status(status, body.to_string()));
        }
        let factor = &body["_embedded"]["factor"];
        let shared = factor["_embedded"]["activation"]["sharedSecret"]
            .as_str()
            .unwrap();
        let mut enrolled = Enrolled {
            username: username.to_owned(),
            factor_id: factor["id"].as_str().unwrap().to_owned(),
            secret: base32::decode(base32::Alphabet::Rfc4648 { padding: false }, shared).unwrap(),
            active: false,
            activation_time: 0,
        };
        on_pending(&enrolled);
        let t = now();
        let (status, body, _) = self
            .post(
                &format!(
                    "{PREFIX}/api/v1/authn/factors/{}/lifecycle/activate",
                    enrolled.factor_id
                ),
                &json!({ "stateToken": state_token, "passCode": totp(&enrolled.secret, t) }),
                None,
            )
            .await?;
        if status != 200 || body["status"] != "SUCCESS" {
            return Err(Failure::Status(status, body.to_string()));
        }
        enrolled.active = true;
        enrolled.activation_time = t;
        Ok(enrolled)
    }

    /// Password, then `passCode` for the user's TOTP factor `factor_id`:
    /// status and body of the verify step (after checking that the factor is
    /// offered).
    pub async fn verify_totp(&self, username: &str, factor_id: &str, code: &str) -> (u16, Value) {
        let (status, body, _) = self.authn(username, PASSWORD).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "MFA_REQUIRED", "{body}");
        let offered: Vec<&str> = body["_embedded"]["factors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["id"].as_str())
            .collect();
        assert!(offered.contains(&factor_id), "{factor_id} not offered: {body}");
        let state_token = body["stateToken"].as_str().unwrap();
        let (status, body, _) = self
            .post(
                &format!("{PREFIX}/api/v1/authn/factors/{factor_id}/verify"),
                &json!({ "stateToken": state_token, "passCode": code }),
                None,
            )
            .await
            .unwrap();
        (status, body)
    }
}

/// The value of the `portcullis_session` cookie a response sets.
fn session_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| {
            let (name, value) = h.split(';').next()?.split_once('=')?;
            (name.trim() == "portcullis_session" && !value.is_empty()).then(|| value.trim().to_owned())
        })
}

/// A TOTP factor enrolled through the API.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub username: String,
    pub factor_id: String,
    pub secret: Vec<u8>,
    /// Activated (answered `SUCCESS`), not only enrolled.
    pub active: bool,
    /// When the activation code was made.
    pub activation_time: i64,
}

/// The 6-digit SHA-1 code (30 s steps) of `secret` at `time`.
pub fn totp(secret: &[u8], time: i64) -> String {
    let cfg = portcullis::config::TotpConfig {
        enabled: true,
        issuer: "Portcullis".into(),
        digits: 6,
        period: 30,
        algorithm: portcullis::config::TotpAlgorithm::Sha1,
        skew: 1,
    };
    portcullis::factors::totp::code_at(&cfg, secret, time)
}

/// Polls `f` until it returns `want`, for at most `within`; the last value
/// and how long it took.
pub async fn wait_for<T, F, Fut>(want: T, within: Duration, mut f: F) -> (T, Duration)
where
    T: PartialEq + Copy,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let start = Instant::now();
    loop {
        let got = f().await;
        if got == want || start.elapsed() >= within {
            return (got, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- upstream -------------------------------------------------------------------

/// An upstream that answers 200 and counts what reached it, by first path segment.
#[derive(Debug, Clone, Default)]
pub struct CountingUpstream {
    pub addr: Option<SocketAddr>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CountingUpstream {
    pub async fn spawn() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = CountingUpstream {
            addr: Some(listener.local_addr().unwrap()),
            ..Default::default()
        };
        let seen = up.seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(req.uri().path().to_owned());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"upstream ok\n"),
                            )))
                        }
                    });
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                });
            }
        });
        up
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    /// How many requests whose path starts with `prefix` arrived.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }
}

// ---- PostgreSQL -------------------------------------------------------------------

/// The test server's URL, or `None` (with a note) when
/// `PORTCULLIS_TEST_POSTGRES_URL` is not set.
pub fn postgres_url() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            crate::skip::test(
                &crate::skip::current_test(),
                "PostgreSQL: PORTCULLIS_TEST_POSTGRES_URL is not set (.ci/run starts one)",
            );
            None
        }
    }
}

/// `url` with `options=-c search_path=<schema>`: what a gateway is given to
/// keep its tables in that schema.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs `test(server_url, schema)` with a fresh, migrated schema `t_<random>`
/// on the test server and drops it afterwards, also when `test` panics. Does
/// nothing when no test server is configured.
pub async fn with_postgres_schema<F, Fut>(test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = postgres_url() else { return };
    let schema = format!("t_{:016x}", rand::random::<u64>());
    // Created and migrated up front: a URL's search_path is not created for us.
    portcullis::store::postgres::PostgresStore::connect_with_schema(&url, &schema)
        .await
        .unwrap()
        .close()
        .await;
    let outcome = AssertUnwindSafe(test(url.clone(), schema.clone()))
        .catch_unwind()
        .await;
    drop_schema(&url, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// A TCP proxy between the gateway and PostgreSQL that the test can cut:
/// while down it closes every open connection and refuses new ones (accepts
/// and closes them at once, as a dead database host behind a load balancer
/// would look).
pub struct SwitchableProxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl SwitchableProxy {
    pub async fn spawn(target: SocketAddr) -> SwitchableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        SwitchableProxy { addr, up, cut }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The host and port of a PostgreSQL URL.
pub fn postgres_addr(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    let host = u.host_str().unwrap();
    let port = u.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .unwrap()
        .next()
        .unwrap()
}

/// `url` with its host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.to_string()
}
