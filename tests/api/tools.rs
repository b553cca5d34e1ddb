//! Independent clients against the real binary: the official Okta Python
//! SDK (`tests/okta/sdk_check.py`) and newman running the Postman collection
//! (`examples/portcullis.postman_collection.json`). Each says "skipped" and
//! returns when its tool is missing; `.ci/run` installs both.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "tools-admin-token-0123456789abcdef";
const PREFIX: &str = "/_portcullis";

/// The gateway binary, running until dropped.
struct Binary {
    child: Child,
    main: String,
    admin: String,
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `portcullis serve` with SQLite, TOTP and recovery codes, the test
/// users file, and `extra` TOML appended; waits for `/healthz`.
fn start(extra: &str) -> Binary {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
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

fn run(mut cmd: Command, what: &str) {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{what} ({:.1}s):\n{stdout}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
}

#[test]
fn the_okta_python_sdk_works_against_the_gateway() {
    if !has("python3", &["-c", "import okta"]) {
        println!("skipped: okta SDK not installed (pip install okta pyotp)");
        return;
    }
    let gw = start("");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/okta/sdk_check.py"))
        .env("PORTCULLIS_ADMIN_URL", &gw.admin)
        .env("PORTCULLIS_ADMIN_TOKEN", TOKEN)
        .env("OKTA_TESTING_TESTINGDISABLEHTTPSCHECK", "true")
        .env_remove("OKTA_CLIENT_TOKEN")
        .env_remove("OKTA_CLIENT_ORGURL");
    run(cmd, "okta SDK check");
}

#[test]
fn the_postman_collection_runs_with_newman() {
    if !has("newman", &["--version"]) {
        println!("skipped: newman not installed (npm install -g newman)");
        return;
    }
    let gw = start("");
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
    run(cmd, "newman run");
}
