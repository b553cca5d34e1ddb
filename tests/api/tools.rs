//! Independent clients against the real binary: the official Okta Python
//! SDK (`tests/okta/sdk_check.py`) and newman running the Postman collection
//! (`examples/portcullis.postman_collection.json`), both with SMS and push
//! enabled (a `file` delivery the SDK check reads codes and pushes from).
//! Each reports `SKIPPED` and returns when its tool is missing; `.ci/run`
//! installs both.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "tools-admin-token-0123456789abcdef";
const PREFIX: &str = "/_portcullis";

/// SMS and push on, their messages written to `{messages}` (a development
/// delivery: the codes and pushes are there in clear for the clients under
/// test); a resend is allowed after 2 seconds, so the SDK's 429 retry waits
/// briefly, and a push times out after 5 seconds.
const OOB: &str = r#"
[factors.sms]
enabled = true
delivery = { kind = "file", path = {messages} }
resend_after = "2s"

[factors.push]
enabled = true
ttl = "5s"
delivery = { kind = "file", path = {messages} }
"#;

/// The gateway binary, running until dropped.
struct Binary {
    child: Child,
    main: String,
    admin: String,
    /// Where the `file` delivery writes (see [`OOB`]).
    messages: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One users-file user, `alice` (Okta clients want logins of 5 characters or more).
fn users_file() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let hash = portcullis::passwords::hash_password(crate::support::ALICE.password.as_bytes()).unwrap();
        format!(
            "[[users]]\nusername = \"alice\"\npassword = {}\nemail = \"alice@example.com\"\n",
            crate::support::toml_str(&hash)
        )
    })
}

include!("../support/ports.rs");

/// Starts `portcullis serve` with SQLite, TOTP and recovery codes, the test
/// users file, and `extra` TOML appended (`{messages}` in it is the path of
/// [`Binary::messages`]); waits for both listeners.
fn start(extra: &str) -> Binary {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    let messages = dir.path().join("messages.jsonl");
    let extra = extra.replace(
        "{messages}",
        &crate::support::toml_str(&messages.display().to_string()),
    );
    let (main, admin) = (free_port(), free_port());
    let config = format!(
        r#"default_policy = "one_factor"

[server]
listen = "127.0.0.1:{main}"

[admin]
listen = "127.0.0.1:{admin}"
tokens = ["{TOKEN}"]

[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"

[session]
secrets = ["{secret}"]
secure = false

[users]
file = {users}

[store]
kind = "sqlite"
path = {db}
encryption_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]

[factors.totp]
enabled = true

[factors.recovery_codes]
enabled = true

[log]
level = "warn"
{extra}
"#,
        secret = crate::support::SESSION_SECRET,
        users = crate::support::toml_str(&dir.path().join("users.toml").display().to_string()),
        db = crate::support::toml_str(&dir.path().join("portcullis.db").display().to_string()),
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let bin = Binary {
        child,
        main: format!("http://127.0.0.1:{main}"),
        admin: format!("http://127.0.0.1:{admin}"),
        messages,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", main)).is_ok();
        if up {
            return bin;
        }
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd`, asserts success and returns its output.
fn run(mut cmd: Command, what: &str) -> String {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{what} ({:.1}s):\n{stdout}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_okta_python_sdk_works_against_the_gateway() {
    if !has("python3", &["-c", "import okta"]) {
        crate::skip::test(
            "the_okta_python_sdk_works_against_the_gateway",
            "the okta SDK is not installed (pip install okta pyotp)",
        );
        return;
    }
    let gw = start(OOB);
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/okta/sdk_check.py"))
        .env("PORTCULLIS_ADMIN_URL", &gw.admin)
        .env("PORTCULLIS_ADMIN_TOKEN", TOKEN)
        .env("PORTCULLIS_PORTAL_URL", format!("{}{PREFIX}", gw.main))
        .env("PORTCULLIS_MESSAGES_FILE", &gw.messages)
        .env("PORTCULLIS_REQUIRE_OOB", "1")
        .env("PORTCULLIS_PUSH_TTL", "5")
        .env("OKTA_TESTING_TESTINGDISABLEHTTPSCHECK", "true")
        .env_remove("OKTA_CLIENT_TOKEN")
        .env_remove("OKTA_CLIENT_ORGURL");
    let out = run(cmd, "okta SDK check");
    assert!(!out.contains("skipped"), "every SDK step ran:\n{out}");
}

#[test]
fn the_postman_collection_runs_with_newman() {
    if !has("newman", &["--version"]) {
        crate::skip::test(
            "the_postman_collection_runs_with_newman",
            "newman is not installed (npm install -g newman)",
        );
        return;
    }
    let gw = start(OOB);
    let collection =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/portcullis.postman_collection.json");
    let mut cmd = Command::new("newman");
    cmd.arg("run")
        .arg(&collection)
        .args(["--env-var", &format!("gateway={}", gw.main)])
        .args(["--env-var", &format!("admin={}", gw.admin)])
        .args(["--env-var", &format!("token={TOKEN}")])
        .args(["--env-var", &format!("prefix={PREFIX}")])
        .args(["--bail", "--color", "off", "--disable-unicode"]);
    let out = run(cmd, "newman run");
    assert!(
        !out.contains("skipped: not enabled"),
        "the SMS and push steps ran:\n{out}"
    );
    for step in [
        "Pair a device",
        "Cancel Push Transaction",
        "Resend SMS activation code too soon",
        "List System Log events about the user",
    ] {
        assert!(out.contains(step), "{step} ran:\n{out}");
    }
}
