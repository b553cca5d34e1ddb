//! Log lines cannot be forged (issue 10): request values that reach the log
//! (a passwordless decoy login, an unknown login, a transaction id in a path)
//! are escaped in the text and JSON formats of the real binary, and the push
//! routes of a gateway without push answer 404 without logging the value.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Reap, free_port, portcullis_command, toml_str, users_file};

/// What an attacker wants to appear as a line of its own.
const FORGED: &str = "event=\"user.unlocked\" user=alice actor=\"admin\"";

/// A marker only the attacker's values carry.
const MARK: &str = "forgedzq";

fn config(dir: &Path, main: u16, admin: u16, echo: &str, format: &str, push: bool) -> String {
    std::fs::write(dir.join("users.toml"), users_file()).unwrap();
    let push = if push {
        "[factors.push]\nenabled = true\ndelivery = { kind = \"webhook\", url = \"http://127.0.0.1:9/push\", secret = \"push-hook-secret-0123456789\" }\n"
    } else {
        "[factors.push]\nenabled = false\n"
    };
    format!(
        r#"default_policy = "one_factor"

[server]
listen = "127.0.0.1:{main}"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin}"
tokens = ["test-admin-token-0123456789abcdef"]

[[upstreams]]
name = "echo"
url = "{echo}"

[session]
secrets = ["{secret}"]
secure = false

[users]
file = {users}
passwordless = true

[store]
kind = "memory"
encryption_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]

[factors.totp]
enabled = true

{push}
[log]
format = "{format}"
level = "info"
"#,
        secret = crate::support::SESSION_SECRET,
        users = toml_str(&dir.join("users.toml").display().to_string()),
    )
}

/// Runs the binary with `format` logs, sends the hostile requests, stops it
/// with SIGTERM and returns everything it logged, and the `X-Request-Id` of
/// an upstream path's answer (`/app/request-id-probe`).
async fn hostile_run(format: &str, push: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        config(dir.path(), main, admin, &format!("http://{echo}"), format, push),
    )
    .unwrap();
    let mut child = Reap(
        portcullis_command(&["serve", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut pipe = child.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{main}/_portcullis");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(client.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        assert!(child.0.try_wait().unwrap().is_none(), "the gateway exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An upstream path without a session: refused (401), with the id its
    // access line has.
    let res = client
        .get(format!("http://127.0.0.1:{main}/app/request-id-probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    // A transaction id that ends a line, then a well-formed audit line: a
    // control character in a path is refused before any route sees it.
    let ended = format!("x{MARK}%0A{}", crate::support::enc(FORGED));
    let res = client
        .post(format!("{base}/api/v1/push/transactions/{ended}"))
        .header("content-type", "application/json")
        .body(json!({ "decision": "approve", "number": 42 }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a line feed in the path");
    // C1 and Unicode line separators, which JSON does not escape, reach the
    // route.
    let tid = format!("x{MARK}%C2%85%E2%80%A8{}", crate::support::enc(FORGED));
    let res = client
        .post(format!("{base}/api/v1/push/transactions/{tid}"))
        .header("content-type", "application/json")
        .body(json!({ "decision": "approve", "number": 42 }).to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 404, "push answer with a forged id: {body}");
    let want = if push { "E0000191" } else { "E0000007" };
    assert_eq!(body["errorCode"], want, "{body}");
    if !push {
        // Disabled: the device routes are not there at all.
        let res = client
            .post(format!("{base}/api/v1/push/devices"))
            .header("content-type", "application/json")
            .body(json!({ "activationToken": MARK }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        let res = client
            .post(format!("{base}/push/status"))
            .header("content-type", "application/json")
            .body(json!({ "transactionId": MARK }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }

    // The passwordless decoy login, and an unknown login with a password.
    let login = format!("{MARK}\n{FORGED}\u{85}\u{2028}\u{7f}\r\u{1b}[2J");
    let res = client
        .post(format!("{base}/api/v1/authn"))
        .header("content-type", "application/json")
        .body(json!({ "username": login }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a passwordless start answers for anyone");
    let res = client
        .post(format!("{base}/api/v1/authn"))
        .header("content-type", "application/json")
        .body(json!({ "username": login, "password": "wrong-password" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Admin calls with the first token: a user API event and a Factors API
    // event name the actor and the token the same way.
    let admin_base = format!("http://127.0.0.1:{admin}/api/v1/users");
    let res = client
        .post(format!("{admin_base}?activate=true"))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .header("content-type", "application/json")
        .body(json!({ "profile": { "login": "tokenlog" } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let uid = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = client
        .get(format!("{admin_base}/{uid}/factors"))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (stderr.join().unwrap(), request_id)
}

/// No raw control character (but the line ends), no Unicode line
/// separator, and no line of the attacker's making.
fn assert_unforged(log: &str) {
    for (i, c) in log.char_indices() {
        assert!(
            c == '\n' || !(c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
            "raw {c:?} at byte {i} of the log:\n{log}"
        );
    }
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with(FORGED) && !line.contains(&format!(" {FORGED}")),
            "a forged line or field:\n{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_cannot_be_forged() {
    let (log, request_id) = hostile_run("text", false).await;
    assert_unforged(&log);
    let access = log
        .lines()
        .find(|l| l.contains("portcullis::access") && l.contains("/app/request-id-probe"))
        .unwrap_or_else(|| panic!("no access line for the probe in:\n{log}"));
    assert!(
        access.contains(&format!("request_id={request_id} ")),
        "{request_id}: {access}"
    );
    // The values are there, escaped inside one quoted field.
    let decoy = log
        .lines()
        .find(|l| l.contains("signin.passwordless.decoy"))
        .unwrap_or_else(|| panic!("no decoy audit line in:\n{log}"));
    assert!(
        decoy.contains(&format!(r#"login="{MARK}\nevent=\"user.unlocked\" user=alice"#)),
        "{decoy}"
    );
    // The admin token's index is a plain number and the actor a bare word,
    // in every audit line.
    for event in ["admin.user.created", "factors.listed"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} line in:\n{log}"));
        assert!(
            line.contains(" actor=admin ") && line.contains(" token=0"),
            "{line}"
        );
        assert!(!line.contains("Some(") && !line.contains("actor=\""), "{line}");
    }
    // Push is disabled: its routes logged nothing but the access line, whose
    // path keeps the percent-encoding.
    for line in log.lines().filter(|l| l.contains(MARK) && !l.contains("signin.")) {
        assert!(line.contains("portcullis::access"), "push value logged:\n{line}");
        assert!(line.contains("%0A") || line.contains("%E2%80%A8"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_cannot_be_forged() {
    let (log, request_id) = hostile_run("json", true).await;
    assert_unforged(&log);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // The answer's id is its access line's: 16 random letters and digits.
    assert!(
        request_id.len() == 16 && request_id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{request_id}"
    );
    let access = lines
        .iter()
        .find(|l| l["target"] == "portcullis::access" && l["path"] == "/app/request-id-probe")
        .unwrap_or_else(|| panic!("no access line for the probe in:\n{log}"));
    assert_eq!(access["request_id"], request_id.as_str(), "{access}");
    // Nothing lost: the decoy login reads back whole.
    let decoy = lines
        .iter()
        .find(|l| l["event"] == "signin.passwordless.decoy")
        .unwrap_or_else(|| panic!("no decoy audit line in:\n{log}"));
    assert!(
        decoy["login"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{MARK}\n{FORGED}\u{85}\u{2028}")),
        "{decoy}"
    );
    for event in ["admin.user.created", "factors.listed"] {
        let line = lines
            .iter()
            .find(|l| l["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line in:\n{log}"));
        assert_eq!(
            (&line["actor"], &line["token"]),
            (&json!("admin"), &json!(0)),
            "{line}"
        );
    }
    // An invalid transaction id is refused before it is used or logged.
    for l in lines.iter().filter(|l| l.to_string().contains(MARK)) {
        assert!(
            l["target"] == "portcullis::access" || l["event"].as_str().unwrap_or("").starts_with("signin."),
            "push value logged: {l}"
        );
    }
}
