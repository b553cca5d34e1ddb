//! The `portcullis` binary: check-config, hash-password, gen-key, and serve
//! with JSON logs and SIGTERM.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis::secret::Secret;
use serde_json::Value;

use crate::support::{
    ALICE, Reap, csrf_field, form, free_port, portcullis_command, set_cookie, toml_str, users_file,
};

fn portcullis(args: &[&str]) -> Command {
    portcullis_command(args)
}

/// A complete config for the binary (JSON logs).
fn good_config(dir: &Path, main: u16, admin: u16, upstream: &str) -> String {
    std::fs::write(dir.join("users.toml"), users_file()).unwrap();
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
secrets = ["{secret}"]
secure = false

[users]
file = {users}

[store]
kind = "memory"
encryption_keys = []

[factors.totp]
enabled = false

[factors.recovery_codes]
enabled = false

[[rules]]
path = "^/public/"
policy = "bypass"

[log]
format = "json"
level = "info"
"#,
        secret = crate::support::SESSION_SECRET,
        users = toml_str(&dir.join("users.toml").display().to_string()),
    )
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn check_config_reports_every_problem_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"default_policy = "sometimes"

[server]
listen = "127.0.0.1:{main}"
header_read_timeout = "10 parsecs"

[admin]
listen = "127.0.0.1:{admin}"

[[upstreams]]
name = "app"
url = "ftp://example.com"

[session]
secrets = ["too-short"]

[store]
kind = "memory"

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "([unclosed"
policy = "bypass"
"#
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let out = portcullis(&["check-config", "--config", p]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "default_policy:",
        "server.header_read_timeout:",
        "upstreams[0].url:",
        "session.secrets[0]:",
        "rules[1].path:",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(key)),
            "{key} missing from:\n{stderr}"
        );
    }
    assert!(!stderr.contains("too-short"), "a secret was printed:\n{stderr}");

    // `serve` with the same file refuses to start and binds nothing.
    let started = Instant::now();
    let out = portcullis(&["serve", "--config", p]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(port_is_free(main) && port_is_free(admin));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rules[1].path:"), "{stderr}");
}

/// `--config` goes before or after the command, or comes from
/// `PORTCULLIS_CONFIG`; a command that needs a config and has none says so
/// and exits 64.
#[test]
fn the_config_option_comes_before_or_after_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9"),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = portcullis(args);
        cmd.env_remove("PORTCULLIS_CONFIG");
        if let Some(file) = env {
            cmd.env("PORTCULLIS_CONFIG", file);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, env) in [
        (vec!["check-config", "--config", p], None),
        (vec!["--config", p, "check-config"], None),
        (vec!["check-config"], Some(p)),
    ] {
        let (code, out, err) = run(&args, env);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        assert!(out.contains(": OK"), "{args:?}: {out}");
    }
    for args in [
        vec!["--config", p, "users", "list"],
        vec!["users", "list", "--config", p],
    ] {
        let (code, out, err) = run(&args, None);
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        assert!(out.contains("alice"), "{args:?}: {out}");
    }
    // Commands that read no config: PORTCULLIS_CONFIG is ignored, a typed
    // --config refused.
    let (code, out, err) = run(&["gen-key"], Some(p));
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = run(&["gen-key", "--config", p], None);
    assert_eq!(code, Some(64));
    assert!(err.contains("reads no config"), "{err}");
    let (code, _, err) = run(&["--config", p, "demo"], None);
    assert_eq!(code, Some(64));
    assert!(err.contains("reads no config"), "{err}");
    for (args, named) in [
        (vec!["check-config"], "portcullis check-config"),
        (vec!["users", "list"], "portcullis users"),
        (vec!["store", "rotate-key"], "portcullis store rotate-key"),
        (vec!["serve"], "portcullis serve"),
    ] {
        let (code, out, err) = run(&args, None);
        assert_eq!(code, Some(64), "{args:?}: {out}{err}");
        assert!(
            err.contains(named) && err.contains("needs --config FILE"),
            "{args:?}: {err}"
        );
    }
}

/// `--help`, `help`, a command's `--help` and `--version` print to stdout and
/// exit 0 (a script reading them must not see a failure); an unknown command
/// or option, or no command at all, is a usage error: exit 64, on stderr.
#[test]
fn help_and_version_exit_zero_and_usage_errors_exit_64() {
    let run = |args: &[&str]| {
        let out = portcullis(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        vec!["--help"],
        vec!["help"],
        vec!["users", "--help"],
        vec!["serve", "--help"],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    for args in [vec!["--version"], vec!["-V"]] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(
            out.trim(),
            format!("portcullis {}", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
    for (args, says) in [
        (vec!["bogus"], "unrecognized subcommand"),
        (vec!["--nope"], "unexpected argument"),
        (vec![], "no command"),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(64), "{args:?}: {out}{err}");
        assert!(out.is_empty() && err.contains(says), "{args:?}: {err}");
    }
}

/// Duplicate upstream names, a second default upstream and a CIDR with host
/// bits come out in one run, next to the other errors and the warnings.
#[test]
fn check_config_shows_upstream_duplicates_host_bits_and_warnings_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"default_policy = "bypass"

[server]
trusted_proxies = ["10.0.0.1/8"]
header_read_timeout = "10 parsecs"

[session]
secrets = ["a-session-secret-long-enough-0123456789abc"]

[store]
kind = "memory"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[upstreams]]
name = "app"
url = "ftp://example.com"

[[rules]]
path = "^/office/"
policy = "one_factor"
networks = ["192.168.1.1/24"]
"#,
    )
    .unwrap();
    let out = portcullis(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "error: upstreams[1].name: \"app\" is already used by upstreams[0]",
        "error: upstreams[1].hosts: only one upstream may leave hosts empty",
        "error: upstreams[1].url:",
        "error: server.header_read_timeout:",
        "error: server.trusted_proxies[0]: \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"",
        "error: rules[0].networks[0]: \"192.168.1.1/24\" has host bits set; did you mean \"192.168.1.0/24\"",
        "warning: default_policy: \"bypass\"",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "{line} missing from:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("6 problem(s), ") && stderr.contains(" warning(s); nothing started"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9"),
    )
    .unwrap();
    let out = portcullis(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK"));
    // It says what it does with hostile paths.
    assert!(
        stdout.contains("paths: ';' parameters are stripped per segment")
            && stdout.contains(
                "%25XX, %3B, control characters, leading spaces, overlong UTF-8 and dot-lookalike segments answer 400"
            )
            && stdout.contains("one spelling per character")
            && stdout.contains("case-sensitive rules (case_insensitive_paths = false)"),
        "{stdout}"
    );
}

#[test]
fn check_config_refuses_short_admin_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.toml");
    let good = good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9");
    // 15 bytes: an error naming the key, the token never printed.
    let short = "shorty-15-bytes";
    assert_eq!(short.len(), 15);
    std::fs::write(
        &path,
        good.replace(
            "tokens = []",
            &format!("tokens = [\"a-long-enough-admin-token-0123\", \"{short}\"]"),
        ),
    )
    .unwrap();
    let out = portcullis(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("admin.tokens[1]:") && l.contains("too short")),
        "{stderr}"
    );
    assert!(!stderr.contains("admin.tokens[0]"), "{stderr}");
    assert!(!stderr.contains(short), "a token was printed:\n{stderr}");
    // 16 bytes is enough.
    std::fs::write(
        &path,
        good.replace("tokens = []", "tokens = [\"sixteen-bytes-ok\"]"),
    )
    .unwrap();
    let out = portcullis(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn hash_password_reads_stdin() {
    let mut child = portcullis(&["hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret pass\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let pool = portcullis::passwords::PasswordPool::new(1);
    assert_eq!(pool.verify(&hash, Secret::new("s3cret pass")).await, Ok(true));
    assert_eq!(
        pool.verify(&hash, Secret::new("s3cret pass\n")).await,
        Ok(false),
        "the newline ends the password"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "a long enough password is not warned about"
    );

    // A short one is hashed (users files are the operator's call) with a warning.
    let mut child = portcullis(&["hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fewer than 8 characters"), "{stderr}");
    assert!(!stderr.contains("pw\n") && !stderr.contains("\"pw\""), "{stderr}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(pool.verify(&hash, Secret::new("pw")).await, Ok(true));
}

#[test]
fn gen_key_prints_32_random_bytes() {
    let key = || {
        let out = portcullis(&["gen-key"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap()
    };
    let (a, b) = (key(), key());
    assert_eq!(a.len(), 32);
    assert_eq!(b.len(), 32);
    assert_ne!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let echo = portcullis::demo::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        good_config(dir.path(), main, admin, &format!("http://{echo}")),
    )
    .unwrap();
    let mut child = Reap(
        portcullis(&["serve", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr_pipe = child.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{main}");
    crate::support::wait_until_healthy(&mut child, &client, &base, None).await;
    let res = client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Sign in through the form and use the session.
    let res = client
        .get(format!("{base}/_portcullis/login?rd=/private"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let csrf = csrf_field(&res.text().await.unwrap());
    let res = client
        .post(format!("{base}/_portcullis/login"))
        .header("cookie", format!("portcullis_csrf={csrf}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf),
            ("rd", "/private"),
            ("username", ALICE.username),
            ("password", ALICE.password),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let res = client
        .get(format!("{base}/private?token=query-secret"))
        .header("accept", "application/json")
        .header("cookie", format!("portcullis_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A portal page of the signed-in user.
    let res = client
        .get(format!("{base}/_portcullis/factors"))
        .header("accept", "text/html")
        .header("cookie", format!("portcullis_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let pid = child.0.id().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(4),
            "still running 4 s after SIGTERM (shutdown_timeout = 2s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(TcpProbe::refused(main), "the main port is released");

    let log = stderr.join().unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines in:\n{log}");
    let access = lines
        .iter()
        .find(|l| l["path"] == "/private" && l["method"] == "GET")
        .unwrap_or_else(|| panic!("no access line for GET /private in:\n{log}"));
    assert_eq!(access["status"], 200, "{access}");
    assert_eq!(access["decision"], "allow", "{access}");
    assert_eq!(access["user"], ALICE.username, "{access}");
    // Portal requests name their signed-in user too.
    let page = lines
        .iter()
        .find(|l| l["path"] == "/_portcullis/factors")
        .unwrap_or_else(|| panic!("no access line for the factors page in:\n{log}"));
    assert_eq!(page["user"], ALICE.username, "{page}");
    assert_eq!(page["decision"], "portal", "{page}");
    // Durations in whole microseconds: at most three decimals, no float noise.
    for line in lines.iter().filter(|l| l.get("duration_ms").is_some()) {
        let ms = line["duration_ms"].to_string();
        let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "duration_ms = {ms} in {line}");
    }
    assert_eq!(access["user"], "alice", "{access}");
    let login_line = lines
        .iter()
        .find(|l| l["path"] == "/_portcullis/login" && l["method"] == "POST")
        .unwrap_or_else(|| panic!("no access line for the login in:\n{log}"));
    assert_eq!(login_line["status"], 303);
    for secret in [session.as_str(), ALICE.password, "query-secret"] {
        assert!(!log.contains(secret), "{secret:?} was logged:\n{log}");
    }
}

struct TcpProbe;

impl TcpProbe {
    fn refused(port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .is_err()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_unlock_clears_a_lockout_in_a_shared_store() {
    let gw = crate::support::TestGateway::start(
        r#"
[store]
kind = "sqlite"
path = "{tmp}/portcullis.db"

[regulation]
max_password_failures = 2
max_password_failures_per_user = 2
"#,
    )
    .await;
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    for _ in 0..2 {
        let res = gw.post_login(&client, &csrf, "alice", "wrong", "/", &[]).await;
        assert_eq!(res.status(), 401);
    }
    let res = gw
        .post_login(&client, &csrf, "alice", ALICE.password, "/", &[])
        .await;
    assert_eq!(res.status(), 401, "locked");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &gw.config_text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        portcullis(&["users", "unlock", "alice", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("alice: unlocked"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let res = gw
        .post_login(&client, &csrf, "alice", ALICE.password, "/", &[])
        .await;
    assert_eq!(res.status(), 303, "unlocked by the CLI");
}

/// Runs `portcullis ARGS --config FILE` (stdin given, or closed) off the
/// runtime; returns (exit code, stdout, stderr).
async fn users_cli(args: &[&str], config: &Path, stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    argv.push("--config".into());
    argv.push(config.display().to_string());
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = portcullis(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// True when a log line is the audit event `event` with `actor` cli.
fn audited_by_cli(stderr: &str, event: &str) -> bool {
    stderr.lines().any(|l| {
        l.contains(event)
            && (l.contains("actor=\"cli\"") || l.contains("actor=cli") || l.contains("\"actor\":\"cli\""))
    })
}

#[tokio::test]
async fn users_add_list_show_remove_round_trip_on_sqlite() {
    let gw = crate::support::TestGateway::start(
        r#"
[store]
kind = "sqlite"
path = "{tmp}/portcullis.db"
"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &gw.config_text).unwrap();

    // add: the password from stdin, profile options; audited as the CLI.
    let (code, out, err) = users_cli(
        &[
            "users",
            "add",
            "carol",
            "--email",
            "carol@example.com",
            "--first-name",
            "Carol",
            "--group",
            "staff",
            "--group",
            "ops",
        ],
        &config,
        Some("carol-password-1\n"),
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("carol: created (api user"), "{out}");
    assert!(audited_by_cli(&err, "admin.user.created"), "{err}");
    // A name another source holds is refused, naming the source.
    let (code, _, err) = users_cli(&["users", "add", "alice", "--no-password"], &config, None).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("source: file"), "{err}");
    let (code, _, err) = users_cli(&["users", "add", "Carol", "--no-password"], &config, None).await;
    assert_eq!(code, Some(1), "{err}");
    // A short password is a usage error.
    let (code, _, err) = users_cli(&["users", "add", "dave"], &config, Some("short\n")).await;
    assert_eq!(code, Some(64), "{err}");

    // list --json: every source, with status, factors and lockout.
    let (code, out, err) = users_cli(&["users", "list", "--json"], &config, None).await;
    assert_eq!(code, Some(0), "{err}");
    let rows: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = |login: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["login"] == login)
            .unwrap_or_else(|| panic!("{login} not in {rows}"))
            .clone()
    };
    assert_eq!(row("alice")["source"], "file");
    assert_eq!(row("bob")["source"], "file");
    let carol = row("carol");
    assert_eq!(carol["source"], "api");
    assert_eq!(carol["status"], "ACTIVE");
    assert_eq!(carol["factors"], 0);
    assert!(carol["lockedUntil"].is_null());
    let carol_id = carol["id"].as_str().unwrap().to_owned();
    assert!(carol_id.starts_with("00u"));
    let (code, table, _) = users_cli(&["users", "list"], &config, None).await;
    assert_eq!(code, Some(0));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("carol") && l.contains("api") && l.contains(&carol_id)),
        "{table}"
    );

    // show, by login and by id.
    let (code, out, err) = users_cli(&["users", "show", "carol"], &config, None).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("API user") && out.contains("staff, ops"), "{out}");
    assert!(out.contains("0 active factor(s)"), "{out}");
    let (code, out, _) = users_cli(&["users", "show", &carol_id], &config, None).await;
    assert_eq!(code, Some(0), "{out}");

    // The running gateway follows the store: carol signs in with that password.
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let res = gw
            .post_login(&client, &csrf, "carol", "carol-password-1", "/", &[])
            .await;
        if res.status() == 303 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carol never signed in: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // remove: file users are refused with where to remove them.
    let (code, _, err) = users_cli(&["users", "remove", "alice"], &config, None).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("users file"), "{err}");
    let (code, out, err) = users_cli(&["users", "remove", "carol"], &config, None).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("carol: removed"), "{out}");
    assert!(audited_by_cli(&err, "admin.user.deleted"), "{err}");
    // The commands' audit events are in the store, by the command line.
    let res = gw
        .client()
        .get(gw.admin_url("/api/v1/logs?q=carol&limit=100"))
        .header("authorization", "SSWS test-admin-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events: serde_json::Value = res.json().await.unwrap();
    for kind in ["user.lifecycle.create", "user.lifecycle.delete.completed"] {
        assert!(
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["eventType"] == kind && e["actor"]["id"] == "cli"),
            "no stored {kind} by the command line: {events:#}"
        );
    }

    // Unknown users: exit 2 and a clear message, for every command.
    for args in [
        &["users", "show", "carol"][..],
        &["users", "remove", "carol"],
        &["users", "reset-factors", "carol"],
        &["users", "unlock", "carol"],
    ] {
        let (code, out, err) = users_cli(args, &config, None).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("carol: no such user"), "{args:?}: {err}");
    }
    // And the gateway forgets carol.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let res = gw
            .post_login(&client, &csrf, "carol", "carol-password-1", "/", &[])
            .await;
        if res.status() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carol still signs in: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Bad arguments are a usage error (64), not clap's 2.
    let (code, _, _) = users_cli(&["users", "frobnicate"], &config, None).await;
    assert_eq!(code, Some(64));
}

/// `portcullis users` manages the store: in a root shell without the
/// service's secrets (the session secret, the admin token) it still runs, and
/// it never makes a store key: only the gateway's first start does, so a
/// command cannot leave a second key beside a database sealed with the first.
#[tokio::test]
async fn users_commands_need_no_service_secrets_and_make_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9")
        .replace(
            &format!("secrets = [\"{}\"]\n", crate::support::SESSION_SECRET),
            "",
        )
        .replace("tokens = []", "tokens = [\"env:PORTCULLIS_ADMIN_TOKEN\"]")
        .replace(
            "kind = \"memory\"\nencryption_keys = []",
            &format!(
                "kind = \"sqlite\"\npath = {}",
                toml_str(&dir.path().join("data/portcullis.db").display().to_string())
            ),
        );
    assert!(!text.contains("secrets = ["), "{text}");
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        portcullis(&["users", "list", "--config", config.to_str().unwrap()])
            .env_remove("PORTCULLIS_SESSION_SECRET")
            .env_remove("PORTCULLIS_ADMIN_TOKEN")
            .env_remove("PORTCULLIS_STORE_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("alice"), "{stdout}");
    assert!(
        !dir.path().join("data/portcullis.db.key").exists(),
        "a command made a store key"
    );
}

/// `portcullis users ...` prints libraries' warnings and errors only: no
/// sqlx notice (`relation "schema_migrations" already exists, skipping` on
/// PostgreSQL) and no revocation listener line, run after run. On
/// PostgreSQL when `PORTCULLIS_TEST_POSTGRES_URL` is set, else on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_commands_print_no_library_info_lines() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let schema = format!("t_{:016x}", rand::random::<u64>());
    let store = match &postgres {
        Some(url) => {
            // Created and migrated first: a URL's search_path is not created for us.
            portcullis::store::postgres::PostgresStore::connect_with_schema(url, &schema)
                .await
                .unwrap()
                .close()
                .await;
            let sep = if url.contains('?') { '&' } else { '?' };
            let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
            format!("kind = \"postgres\"\nurl = {}", toml_str(&url))
        }
        None => format!(
            "kind = \"sqlite\"\npath = {}",
            toml_str(&dir.path().join("portcullis.db").display().to_string())
        ),
    };
    let text = good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9")
        .replace("[store]\nkind = \"memory\"\n", &format!("[store]\n{store}\n"));
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, text).unwrap();
    let mut runs = Vec::new();
    for args in [["users", "list"], ["users", "list"]] {
        runs.push(users_cli(&args, &config, None).await);
    }
    if let Some(url) = &postgres {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    for (code, out, err) in runs {
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("alice"), "{out}");
        for line in err.lines() {
            assert!(
                !line.contains("sqlx") && !line.contains("revocation notifications"),
                "{line}"
            );
            // Log lines (JSON here) below WARN are the command's audit events only.
            if let Ok(l) = serde_json::from_str::<Value>(line) {
                assert!(
                    matches!(l["level"].as_str(), Some("WARN" | "ERROR"))
                        || l["target"] == "portcullis::audit",
                    "only warnings and errors: {line}"
                );
            }
        }
    }
}

/// A `SIGHUP` (`systemctl reload`, a certificate renewal hook) while the
/// gateway is still starting (here: waiting for a store that accepts
/// connections and never answers) does not end the process: systemd would
/// not restart one ended by `SIGHUP`.
#[cfg(unix)]
#[tokio::test]
async fn a_sighup_while_starting_does_not_end_the_process() {
    // A "database" that takes connections and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = good_config(dir.path(), free_port(), free_port(), "http://127.0.0.1:9").replace(
        "kind = \"memory\"\nencryption_keys = []",
        &format!(
            "kind = \"postgres\"\nurl = \"postgres://portcullis@{store}/portcullis\"\nencryption_keys = []"
        ),
    );
    assert!(text.contains("postgres://"), "{text}");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Reap(
        portcullis(&["serve", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Well into start-up (the store does not answer) once the process has
    // a handler for SIGHUP: bit 0 of `SigCgt` (or `SigIgn`) in its status.
    let catches_sighup = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().any(|l| {
            (l.starts_with("SigCgt:") || l.starts_with("SigIgn:"))
                && l.split_whitespace()
                    .nth(1)
                    .and_then(|mask| u64::from_str_radix(mask, 16).ok())
                    .is_some_and(|mask| mask & 1 == 1)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !catches_sighup(child.0.id()) {
        assert!(child.0.try_wait().unwrap().is_none(), "ended before the signal");
        assert!(
            std::time::Instant::now() < deadline,
            "no SIGHUP handler after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.0.try_wait().unwrap().is_none(), "ended before the signal");
    let pid = child.0.id().to_string();
    let sent = tokio::task::spawn_blocking(move || Command::new("kill").args(["-HUP", &pid]).status())
        .await
        .unwrap()
        .unwrap();
    assert!(sent.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = child.0.try_wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert!(
            status.is_none_or(|s| s.signal().is_none()),
            "ended by the signal: {status:?}"
        );
    }
    held.abort();
}
