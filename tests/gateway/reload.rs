//! `SIGHUP` reloads the config and users files of the real binary: rules and
//! users change at once (also on kept-alive connections), a broken file is
//! refused with every problem and the old config keeps serving, sessions
//! survive, and settings bound at start-up are logged as needing a restart.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    ALICE, Reap, SESSION_SECRET, csrf_field, form, free_port, portcullis_command, set_cookie, toml_str,
    users_file,
};

pub(crate) fn config(dir: &Path, main: u16, admin: u16, upstream: &str, public_policy: &str) -> String {
    format!(
        r#"default_policy = "one_factor"

[server]
listen = "127.0.0.1:{main}"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin}"
tokens = []

[[upstreams]]
name = "echo"
url = "{upstream}"

[session]
secrets = ["{SESSION_SECRET}"]
secure = false

[users]
file = {users}

[store]
kind = "memory"
encryption_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]

[factors.totp]
enabled = true

[factors.recovery_codes]
enabled = false

[[rules]]
path = "^/public/"
policy = "{public_policy}"

[log]
format = "json"
level = "info"
"#,
        users = toml_str(&dir.join("users.toml").display().to_string()),
    )
}

pub(crate) struct Running {
    child: Reap,
    log: Arc<Mutex<String>>,
    client: reqwest::Client,
    base: String,
    admin: String,
}

impl Running {
    pub(crate) fn hup(&self) {
        let pid = self.child.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `needle` occurs `count` times in the log.
    pub(crate) async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{count} not logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn status(&self, path: &str, session: Option<&str>) -> u16 {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", "application/json");
        if let Some(s) = session {
            req = req.header("cookie", format!("portcullis_session={s}"));
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// Signs in through the form; the session cookie, or `None` if refused.
    pub(crate) async fn sign_in(&self, username: &str, password: &str) -> Option<String> {
        let res = self
            .client
            .get(format!("{}/_portcullis/login?rd=/private", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let csrf = csrf_field(&res.text().await.unwrap());
        let res = self
            .client
            .post(format!("{}/_portcullis/login", self.base))
            .header("cookie", format!("portcullis_csrf={csrf}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("csrf", &csrf),
                ("rd", "/private"),
                ("username", username),
                ("password", password),
            ]))
            .send()
            .await
            .unwrap();
        (res.status() == 303)
            .then(|| set_cookie(&res, "portcullis_session").map(|(v, _)| v))
            .flatten()
    }

    async fn metrics(&self) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }
}

/// `portcullis serve --config path`, its stderr gathered into a string.
fn serve_logged(path: &Path) -> (Reap, Arc<Mutex<String>>) {
    let mut child = Reap(
        portcullis_command(&["serve", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut pipe = child.0.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, log)
}

pub(crate) async fn start(path: &Path, main: u16, admin: u16) -> Running {
    let (child, log) = serve_logged(path);
    // One client, one pool: requests after a reload reuse kept-alive connections.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let running = Running {
        child,
        log,
        client,
        base: format!("http://127.0.0.1:{main}"),
        admin: format!("http://127.0.0.1:{admin}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(res) = running
            .client
            .get(format!("{}/_portcullis/healthz", running.base))
            .send()
            .await
            && res.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not come up:\n{}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

fn counter(metrics: &str, result: &str) -> u64 {
    let prefix = format!("portcullis_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_users_keeps_sessions_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let upstream = format!("http://{echo}");
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    std::fs::write(&path, config(dir.path(), main, admin, &upstream, "bypass")).unwrap();
    let gw = start(&path, main, admin).await;

    let m = gw.metrics().await;
    assert_eq!((counter(&m, "success"), counter(&m, "failure")), (0, 0));
    assert_eq!(gw.status("/public/page", None).await, 200);
    let session = gw
        .sign_in(ALICE.username, ALICE.password)
        .await
        .expect("alice signs in");
    assert_eq!(gw.status("/private", Some(&session)).await, 200);
    assert!(gw.sign_in("carol", "carol-new-password").await.is_none());

    // A rule changes: /public/ goes from bypass to two_factor, at once, on the
    // same kept-alive connection.
    std::fs::write(&path, config(dir.path(), main, admin, &upstream, "two_factor")).unwrap();
    gw.hup();
    gw.wait_log("configuration reloaded", 1).await;
    assert_ne!(gw.status("/public/page", None).await, 200, "the new rule applies");
    assert_ne!(
        gw.status("/public/page", Some(&session)).await,
        200,
        "a one-factor session is not enough any more"
    );
    assert_eq!(
        gw.status("/private", Some(&session)).await,
        200,
        "the session survives the reload"
    );

    // A user is added to the users file and can sign in after the reload.
    let hash = portcullis::passwords::hash_password(b"carol-new-password").unwrap();
    let carol = format!(
        "{}[[users]]\nusername = \"carol\"\npassword = {}\ndisplay_name = \"Carol\"\nemail = \"carol@example.com\"\ngroups = []\n",
        users_file(),
        toml_str(&hash)
    );
    std::fs::write(dir.path().join("users.toml"), carol).unwrap();
    gw.hup();
    gw.wait_log("configuration reloaded", 2).await;
    let carol_session = gw
        .sign_in("carol", "carol-new-password")
        .await
        .expect("carol signs in");
    assert_eq!(gw.status("/private", Some(&carol_session)).await, 200);

    // A broken file is refused with every problem; the running config stays.
    let broken = config(dir.path(), main, admin, &upstream, "bypass")
        .replace(
            "default_policy = \"one_factor\"",
            "default_policy = \"sometimes\"",
        )
        .replace("path = \"^/public/\"", "path = \"([unclosed\"");
    std::fs::write(&path, broken).unwrap();
    gw.hup();
    gw.wait_log("reload refused; the running configuration stays", 1)
        .await;
    let log = gw.log();
    for key in ["default_policy:", "rules[0].path:"] {
        assert!(
            log.lines()
                .any(|l| l.contains("reload refused") && l.contains(key)),
            "{key} not logged:\n{log}"
        );
    }
    assert_ne!(
        gw.status("/public/page", None).await,
        200,
        "the reloaded rule still holds"
    );
    assert_eq!(gw.status("/private", Some(&session)).await, 200);
    assert_eq!(gw.status("/private", Some(&carol_session)).await, 200);

    // A new listen address needs a restart: logged, and the old one keeps serving;
    // the rest of the file (the rule back to bypass) applies.
    let other = free_port();
    std::fs::write(&path, config(dir.path(), other, admin, &upstream, "bypass")).unwrap();
    gw.hup();
    gw.wait_log("configuration reloaded", 3).await;
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("needs a restart") && l.contains("server.listen")),
        "{log}"
    );
    assert_eq!(gw.status("/public/page", None).await, 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", other)).is_err(),
        "nothing listens on the new address"
    );

    let m = gw.metrics().await;
    assert_eq!((counter(&m, "success"), counter(&m, "failure")), (3, 1));
    for secret in [
        session.as_str(),
        ALICE.password,
        "carol-new-password",
        SESSION_SECRET,
    ] {
        assert!(!log.contains(secret), "{secret:?} was logged");
    }
}

/// Without `store.encryption_keys` the memory store seals factor secrets with
/// a key of its own: TOTP enrollment works (it used to answer 503).
#[tokio::test]
async fn the_memory_store_without_keys_enrolls_totp() {
    use serde_json::{Value, json};
    let gw = crate::support::TestGateway::start(
        r#"
[store]
kind = "memory"
encryption_keys = []

[users]
enrollment = "first_login"

[factors.totp]
enabled = true
"#,
    )
    .await;
    let authn = |path: &str, body: Value| {
        let req = gw
            .client()
            .post(gw.url(&format!("/_portcullis/api/v1/authn{path}")))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string());
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, a) = authn(
        "",
        json!({ "username": ALICE.username, "password": ALICE.password }),
    )
    .await;
    assert_eq!((status, a["status"].as_str()), (200, Some("MFA_ENROLL")), "{a}");
    let state = a["stateToken"].as_str().unwrap().to_owned();
    let (status, e) = authn(
        "/factors",
        json!({ "stateToken": state, "factorType": "token:software:totp", "provider": "GOOGLE" }),
    )
    .await;
    assert_eq!(
        (status, e["status"].as_str()),
        (200, Some("MFA_ENROLL_ACTIVATE")),
        "{e}"
    );
    let fid = e["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
    let shared = e["_embedded"]["factor"]["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap();
    let secret = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, shared).unwrap();
    let cfg = gw.gateway.state().config.factors.totp.clone();
    use portcullis::clock::Clock;
    let code = portcullis::factors::totp::code_at(&cfg, &secret, gw.clock.now());
    let (status, done) = authn(
        &format!("/factors/{fid}/lifecycle/activate"),
        json!({ "stateToken": state, "passCode": code }),
    )
    .await;
    assert_eq!(
        (status, done["status"].as_str()),
        (200, Some("SUCCESS")),
        "{done}"
    );
}

/// `portcullis_rule_decisions_total{rule,path,decision}` of one series.
fn rule_count(metrics: &str, rule: &str, path: &str, decision: &str) -> Option<u64> {
    let prefix = format!(
        "portcullis_rule_decisions_total{{rule=\"{rule}\",path=\"{path}\",decision=\"{decision}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_per_rule_at_zero_counted_inline_and_forward_auth_and_reset_by_a_rule_change() {
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let upstream = format!("http://{echo}");
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    let with_authz = |policy: &str| {
        config(dir.path(), main, admin, &upstream, policy)
            .replace(
                "shutdown_timeout = \"2s\"\n",
                "shutdown_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
            )
            .replace("[log]\n", "[forward_auth]\nenabled = true\n\n[log]\n")
    };
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    std::fs::write(&path, with_authz("bypass")).unwrap();
    let gw = start(&path, main, admin).await;

    // Every configured rule and the default, every decision, at zero.
    let m = gw.metrics().await;
    for decision in ["bypass", "allow", "challenge", "forbidden", "deny"] {
        assert_eq!(rule_count(&m, "0", "^/public/", decision), Some(0), "{m}");
        assert_eq!(rule_count(&m, "default", "", decision), Some(0), "{m}");
    }

    // Inline: two bypasses under rule 0, a challenge and an allow under the default.
    assert_eq!(gw.status("/public/a", None).await, 200);
    assert_eq!(gw.status("/public/b", None).await, 200);
    assert_eq!(gw.status("/private", None).await, 401);
    let session = gw
        .sign_in(ALICE.username, ALICE.password)
        .await
        .expect("alice signs in");
    assert_eq!(gw.status("/private", Some(&session)).await, 200);
    // Forward-auth: one more bypass under rule 0, one more allow under the default.
    for (uri, cookie) in [("/public/c", None), ("/private", Some(&session))] {
        let mut req = gw
            .client
            .get(format!("{}/_portcullis/authz/forward-auth", gw.base))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", format!("127.0.0.1:{main}"))
            .header("x-forwarded-uri", uri)
            .header("accept", "application/json");
        if let Some(s) = cookie {
            req = req.header("cookie", format!("portcullis_session={s}"));
        }
        assert_eq!(req.send().await.unwrap().status(), 200, "forward-auth {uri}");
    }
    let m = gw.metrics().await;
    assert_eq!(rule_count(&m, "0", "^/public/", "bypass"), Some(3), "{m}");
    assert_eq!(rule_count(&m, "default", "", "challenge"), Some(1), "{m}");
    assert_eq!(rule_count(&m, "default", "", "allow"), Some(2), "{m}");

    // A reload with the same rules keeps counting in the same series.
    gw.hup();
    gw.wait_log("configuration reloaded", 1).await;
    let m = gw.metrics().await;
    assert_eq!(rule_count(&m, "0", "^/public/", "bypass"), Some(3), "{m}");

    // A rule change starts the rule set's series again at zero.
    std::fs::write(&path, with_authz("deny")).unwrap();
    gw.hup();
    gw.wait_log("configuration reloaded", 2).await;
    assert_eq!(gw.status("/public/a", None).await, 403);
    let m = gw.metrics().await;
    assert_eq!(rule_count(&m, "0", "^/public/", "bypass"), Some(0), "{m}");
    assert_eq!(rule_count(&m, "0", "^/public/", "deny"), Some(1), "{m}");
    assert_eq!(rule_count(&m, "default", "", "allow"), Some(0), "{m}");
    assert_eq!(
        m.matches("portcullis_rule_decisions_total{").count(),
        10,
        "one rule and the default, five decisions each:\n{m}"
    );
}

/// A TLS certificate renewed in place (certbot's way: same files, new
/// contents) is served after `SIGHUP` to new connections, while connections
/// already open keep theirs; a certificate whose key does not match is refused
/// with the running one kept; turning TLS off needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_tls_certificate_to_new_connections() {
    crate::support::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (main, admin) = (free_port(), free_port());
    let upstream = format!(
        "http://{}",
        portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    );
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write_cert = || {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert_path, ck.cert.pem()).unwrap();
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    };
    let tls_config = |tls: bool| {
        let mut text = config(dir.path(), main, admin, &upstream, "bypass");
        if tls {
            text.push_str(&format!(
                "\n[server.tls]\ncert = {}\nkey = {}\n",
                toml_str(&cert_path.display().to_string()),
                toml_str(&key_path.display().to_string())
            ));
        }
        text
    };
    let (first, _) = write_cert();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, tls_config(true)).unwrap();
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(1)
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
            .resolve("localhost", ([127, 0, 0, 1], main).into())
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{main}/public/page");
    let (child, log) = serve_logged(&path);
    let gw = Running {
        child,
        log,
        client: trusting(&first),
        base: format!("https://localhost:{main}"),
        admin: format!("http://127.0.0.1:{admin}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    // The body is read to its end, so the connection stays open in the pool
    // (hyper closes one whose answer was dropped unread).
    let answered = || async {
        let res = gw.client.get(&url).send().await.ok()?;
        let status = res.status().as_u16();
        res.bytes().await.ok()?;
        Some(status)
    };
    while answered().await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not come up:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `gw.client` keeps its connection (made with the first certificate) open.

    let (second, _) = write_cert();
    gw.hup();
    gw.wait_log("configuration reloaded", 1).await;
    gw.wait_log("TLS certificate reloaded", 1).await;
    let res = trusting(&second).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200, "a new connection gets the renewed certificate");
    assert!(
        trusting(&first).get(&url).send().await.is_err(),
        "a new connection no longer gets the old certificate"
    );
    assert_eq!(
        answered().await,
        Some(200),
        "an open connection keeps the certificate it was made with"
    );

    // A key that does not belong to the certificate: refused, the running one stays.
    let (_, other_key) = {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    };
    std::fs::write(&key_path, other_key).unwrap();
    gw.hup();
    gw.wait_log("reload refused; the running configuration stays", 1)
        .await;
    assert!(gw.log().contains("server.tls"), "{}", gw.log());
    assert_eq!(trusting(&second).get(&url).send().await.unwrap().status(), 200);

    // Turning TLS off needs a restart: the listener keeps serving TLS.
    std::fs::write(&path, tls_config(false)).unwrap();
    gw.hup();
    gw.wait_log("configuration reloaded", 2).await;
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("needs a restart") && l.contains("server.tls")),
        "{log}"
    );
    assert_eq!(trusting(&second).get(&url).send().await.unwrap().status(), 200);
    assert_eq!(log.matches("TLS certificate reloaded").count(), 1, "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// A reloaded `server.trusted_proxies` reaches the listener's per-address
/// connection cap: a front proxy added to the list is no longer held to
/// `max_connections_per_ip` (it was until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_trusted_proxies_to_the_per_address_cap() {
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let upstream = format!("http://{echo}");
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    let write = |proxies: &str| {
        let text = config(dir.path(), main, admin, &upstream, "bypass").replace(
            "shutdown_timeout = \"2s\"",
            &format!("shutdown_timeout = \"2s\"\nmax_connections_per_ip = 3\ntrusted_proxies = [{proxies}]"),
        );
        std::fs::write(&path, text).unwrap();
    };
    write("");
    let gw = start(&path, main, admin).await;
    // Connections that have each had an answer are surely counted; the
    // harness client's own pooled connection may or may not be, so open
    // answered ones until the cap refuses one (at most 3 fit).
    let mut held = Vec::new();
    let refused = loop {
        let (status, conn) = answered_connection(main);
        if status != 200 {
            break status;
        }
        held.push(conn);
        assert!(
            held.len() <= 3,
            "more than 3 connections from 127.0.0.1 were served"
        );
    };
    assert!(
        [0, 503].contains(&refused),
        "a connection over the cap from 127.0.0.1: {refused}"
    );
    write("\"127.0.0.1/32\"");
    gw.hup();
    gw.wait_log("configuration reloaded", 1).await;
    // More than the cap at once: a freed place cannot explain these.
    for n in 0..4 {
        let (status, conn) = answered_connection(main);
        assert_eq!(status, 200, "connection {n} after trusting 127.0.0.1");
        held.push(conn);
    }
    assert!(
        !gw.log().contains("server.trusted_proxies"),
        "not logged as needing a restart"
    );
}

/// A kept-alive connection to 127.0.0.1:`port` that has sent one request
/// for `/public/x`, and the answer's status (0: closed without one).
fn answered_connection(port: u16) -> (u16, std::net::TcpStream) {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = conn.write_all(format!("GET /public/x HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, conn)
}
