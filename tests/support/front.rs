//! The front proxies of the forward-auth tests (nginx and Caddy, as Debian
//! packages them) running the README's recipes exactly as printed: the recipe
//! is read from README.md between `<!-- recipe:NAME:begin -->` and
//! `<!-- recipe:NAME:end -->`, only its documented placeholders (ports; Caddy's
//! site address gets `http://` and the port) are replaced, and it runs inside a
//! minimal wrapper (nginx's `http {}`, Caddy's global options) that keeps every
//! file in a temporary folder. Self-contained: shared by the gateway and e2e
//! test binaries. A missing server prints `SKIPPED forward_auth <server>: ...`;
//! with `CI=true` that is a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The host names the recipes are written for (clients resolve them to
/// 127.0.0.1 themselves).
pub const APP: &str = "app.example.com";
pub const AUTH: &str = "auth.example.com";

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

include!("ports.rs");

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

pub fn skipped(server: &str, reason: &str) {
    eprintln!("SKIPPED forward_auth {server}: {reason}");
    assert!(!in_ci(), "forward_auth {server} skipped under CI=true: {reason}");
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The fenced block between `<!-- recipe:NAME:begin -->` and `...:end -->` in
/// README.md, without its fence lines.
pub fn recipe(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let begin = format!("<!-- recipe:{name}:begin -->");
    let end = format!("<!-- recipe:{name}:end -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("no {begin} in README.md"))
        + begin.len();
    let stop = readme[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("no {end} in README.md"))
        + start;
    let block = readme[start..stop].trim();
    let mut lines: Vec<&str> = block.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("```")) && lines.last() == Some(&"```"),
        "recipe {name} is not one fenced block"
    );
    lines.remove(0);
    lines.pop();
    lines.join("\n") + "\n"
}

/// Replaces `from` (which must be there) everywhere.
fn placeholder(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the recipe lost its placeholder {from:?}");
    text.replace(from, to)
}

/// A front proxy started by the test, ended (by its process id) when dropped.
pub struct Front {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    logs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `http://HOST:PORT`.
    pub fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {}:\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until the portal answers through it.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.logs());
            }
            let probe = format!(
                "GET /_portcullis/healthz HTTP/1.1\r\nHost: {APP}:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            if let Some(res) = try_raw(self.addr(), &probe).await
                && res.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn(mut cmd: Command, out: &Path) -> Child {
    let log = std::fs::File::create(out).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// nginx with the README's recipes `names` inside a minimal `http {}`: one
/// process, no daemon, everything in a temporary folder.
/// `port`: where it listens (else a free port).
pub async fn start_nginx(
    names: &[&str],
    portcullis: SocketAddr,
    app: SocketAddr,
    port: Option<u16>,
) -> Option<Front> {
    let Some(nginx) = find_program("nginx") else {
        skipped("nginx", "nginx is not installed (apt-get install nginx)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = port.unwrap_or_else(free_port);
    let mut recipes = String::new();
    for name in names {
        let text = recipe(name);
        let text = placeholder(&text, "listen 80;", &format!("listen 127.0.0.1:{port};"));
        let text = if text.contains("127.0.0.1:9091") {
            placeholder(&text, "127.0.0.1:9091", &portcullis.to_string())
        } else {
            text
        };
        let text = if text.contains("127.0.0.1:3000") {
            placeholder(&text, "127.0.0.1:3000", &app.to_string())
        } else {
            text
        };
        recipes.push_str(&text);
    }
    std::fs::write(dir.path().join("recipes.conf"), recipes).unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let d = dir.path().display();
    let conf = format!(
        "master_process off;\ndaemon off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/tmp;\n    proxy_temp_path {d}/tmp;\n    fastcgi_temp_path {d}/tmp;\n    uwsgi_temp_path {d}/tmp;\n    scgi_temp_path {d}/tmp;\n    include {d}/recipes.conf;\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let out = dir.path().join("console.log");
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"));
    let child = spawn(cmd, &out);
    let mut front = Front {
        name: "nginx",
        port,
        child,
        logs: vec![out, dir.path().join("error.log")],
        _dir: dir,
    };
    front.wait_ready().await;
    Some(front)
}

/// Caddy with the README's site block, its address made `http://…:PORT`.
pub async fn start_caddy(portcullis: SocketAddr, app: SocketAddr) -> Option<Front> {
    let Some(caddy) = find_program("caddy") else {
        skipped("caddy", "caddy is not installed (apt-get install caddy)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = recipe("caddy");
    let text = placeholder(&text, &format!("{APP} {{"), &format!("http://{APP}:{port} {{"));
    let text = placeholder(&text, "127.0.0.1:9091", &portcullis.to_string());
    let text = placeholder(&text, "127.0.0.1:3000", &app.to_string());
    let d = dir.path().display();
    let caddyfile = format!(
        "{{\n\tadmin off\n\tstorage file_system {d}/data\n\tlog {{\n\t\toutput file {d}/caddy.log\n\t}}\n}}\n\n{text}"
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let out = dir.path().join("console.log");
    let mut cmd = Command::new(caddy);
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"));
    let child = spawn(cmd, &out);
    let mut front = Front {
        name: "caddy",
        port,
        child,
        logs: vec![out, dir.path().join("caddy.log")],
        _dir: dir,
    };
    front.wait_ready().await;
    Some(front)
}

/// Raw HTTP/1.1 that tolerates a server closing without an answer.
pub async fn try_raw(addr: SocketAddr, request: &str) -> Option<Raw> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Raw {
        status,
        head,
        body: buf[end + 4..].to_vec(),
    })
}
