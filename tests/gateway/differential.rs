//! The differential test: hostile request targets go through the gateway to
//! REAL upstream servers (nginx, Apache httpd and Tomcat 10, as Debian ships
//! them), each answering every path with the path it resolved. For every
//! target, upstream and session, either the gateway did not forward the
//! request, or the session satisfies the rule that our rule set applies to the
//! path the upstream resolved. So no spelling of a path lets a caller reach a
//! place the rules keep from them, as any of these servers reads the path.
//!
//! Black box: requests are raw HTTP/1.1 over a socket (no client-side
//! normalization), and the rule the resolved path falls under is computed by a
//! small table below, not by the gateway's normalizer or policy. On top of
//! the path each server resolved, the table also reads it as the upstreams
//! and frameworks of SPEC section 3 that we cannot install here would: with
//! `;params` removed from each segment (Spring, after the server decoded
//! `%3B`), decoded a second time, with overlong UTF-8 read leniently, with
//! trailing dots and spaces trimmed from segments as IIS does, and each of
//! those without a trailing `/` (Express, Spring MVC up to 5.3). Case is not
//! folded: these servers are case-sensitive.
//!
//! The servers are started once, from configs in temporary folders
//! (`tests/fixtures/differential/`), on free ports, and ended by a drop guard.
//! A missing server is reported as `SKIPPED differential [<server>]: <reason>`;
//! with `CI=true` that is a failure.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::config::{TotpAlgorithm, TotpConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// RFC 6238's SHA-1 seed, provisioned for carol by the users file.
const SEED: &[u8] = b"12345678901234567890";
const SEED_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const PASSWORD: &str = "carol-differential-0451";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/differential")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the upstream servers ---------------------------------------------------

/// A running upstream server; ended (by its process id) when dropped, also
/// when the test panics.
struct Server {
    name: &'static str,
    /// The Host the gateway routes to it.
    host: &'static str,
    port: u16,
    child: Child,
    /// Its console output and error log, shown when it fails.
    logs: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn logs(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(out, "--- {}:", log.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// Waits until it answers a probe with the path it resolved.
    async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "differential: {} exited before it was ready ({status}), in {}:\n{}",
                    self.name,
                    self.dir.path().display(),
                    self.logs()
                );
            }
            let probe = format!(
                "GET /ready/probe HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.host
            );
            if let Some(res) = send(addr, &probe).await
                && resolved(&res.body).as_deref() == Some(b"/ready/probe".as_slice())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "differential: {} did not answer within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reports a server that cannot run here (a failure under CI=true).
fn skipped(server: &str, reason: &str) {
    crate::skip::part("differential", server, reason);
}

/// `program` from PATH, else from the sbin folders (not on a user's PATH).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A temporary folder every user can read (Apache started as root serves as
/// www-data).
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn fill(template: &str, dir: &Path, port: u16) -> String {
    template
        .replace("{dir}", &dir.display().to_string())
        .replace("{port}", &port.to_string())
}

fn spawn(mut cmd: Command, out: &Path) -> Child {
    let log = std::fs::File::create(out).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("differential: cannot start {cmd:?}: {e}"))
}

fn start_nginx() -> Option<Server> {
    let Some(nginx) = find_program("nginx") else {
        skipped("nginx", "nginx is not installed (apt-get install nginx)");
        return None;
    };
    let dir = server_dir();
    let port = free_port();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let conf = dir.path().join("nginx.conf");
    write(&conf, &fill(&fixture("nginx.conf"), dir.path(), port));
    let out = dir.path().join("console.log");
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"));
    let child = spawn(cmd, &out);
    Some(Server {
        name: "nginx",
        host: "nginx.test",
        port,
        child,
        logs: vec![out, dir.path().join("error.log")],
        dir,
    })
}

const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

fn start_apache() -> Option<Server> {
    let Some(apache) = find_program("apache2") else {
        skipped("apache", "apache2 is not installed (apt-get install apache2)");
        return None;
    };
    for module in ["mod_mpm_event.so", "mod_authz_core.so", "mod_lua.so"] {
        if !Path::new(APACHE_MODULES).join(module).is_file() {
            skipped(
                "apache",
                &format!("{APACHE_MODULES}/{module} is missing (apt-get install apache2)"),
            );
            return None;
        }
    }
    let dir = server_dir();
    let port = free_port();
    let htdocs = dir.path().join("htdocs");
    std::fs::create_dir(&htdocs).unwrap();
    std::fs::set_permissions(&htdocs, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&dir.path().join("resolved.lua"), &fixture("resolved.lua"));
    let conf = dir.path().join("httpd.conf");
    write(&conf, &fill(&fixture("httpd.conf"), dir.path(), port));
    let out = dir.path().join("console.log");
    // -X: one process in the foreground, so killing it by its id ends it all.
    // No envvars file: the config names every folder it uses.
    let mut cmd = Command::new(apache);
    cmd.arg("-f").arg(&conf).arg("-X");
    let child = spawn(cmd, &out);
    Some(Server {
        name: "apache",
        host: "apache.test",
        port,
        child,
        logs: vec![out, dir.path().join("error.log")],
        dir,
    })
}

fn start_tomcat() -> Option<Server> {
    let home = std::env::var_os("CATALINA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/tomcat10"));
    let bootstrap = home.join("bin/bootstrap.jar");
    let juli = home.join("bin/tomcat-juli.jar");
    if !bootstrap.is_file() || !juli.is_file() {
        skipped(
            "tomcat",
            &format!(
                "no Tomcat at {} (apt-get install tomcat10, or set CATALINA_HOME)",
                home.display()
            ),
        );
        return None;
    }
    let java = match std::env::var_os("JAVA_HOME") {
        Some(h) if Path::new(&h).join("bin/java").is_file() => Some(Path::new(&h).join("bin/java")),
        _ => find_program("java"),
    };
    let Some(java) = java else {
        skipped(
            "tomcat",
            "java is not installed (apt-get install default-jre-headless)",
        );
        return None;
    };
    // The default web.xml defines the JSP servlet: Debian keeps it in etc/.
    let Some(default_web_xml) = [
        home.join("etc/web.xml"),
        home.join("conf/web.xml"),
        "/etc/tomcat10/web.xml".into(),
    ]
    .into_iter()
    .find(|p| p.is_file()) else {
        skipped("tomcat", &format!("no default web.xml under {}", home.display()));
        return None;
    };

    let dir = server_dir();
    let port = free_port();
    let base = dir.path();
    for sub in ["conf", "logs", "temp", "work", "webapps/ROOT/WEB-INF"] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    write(
        &base.join("conf/server.xml"),
        &fill(&fixture("server.xml"), base, port),
    );
    std::fs::copy(&default_web_xml, base.join("conf/web.xml")).unwrap();
    write(&base.join("webapps/ROOT/WEB-INF/web.xml"), &fixture("web.xml"));
    write(&base.join("webapps/ROOT/resolved.jsp"), &fixture("resolved.jsp"));
    let out = base.join("console.log");
    let classpath = format!("{}:{}", bootstrap.display(), juli.display());
    let mut cmd = Command::new(java);
    cmd.env_remove("CATALINA_BASE")
        .env_remove("CATALINA_OPTS")
        .env_remove("JAVA_OPTS")
        .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"])
        .arg(format!("-Dcatalina.home={}", home.display()))
        .arg(format!("-Dcatalina.base={}", base.display()))
        .arg(format!("-Djava.io.tmpdir={}", base.join("temp").display()))
        .arg("-cp")
        .arg(classpath)
        .args(["org.apache.catalina.startup.Bootstrap", "start"]);
    let child = spawn(cmd, &out);
    Some(Server {
        name: "tomcat",
        host: "tomcat.test",
        port,
        child,
        logs: vec![out],
        dir,
    })
}

// ---- raw HTTP ----------------------------------------------------------------

struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Sends `request` verbatim and reads until the server closes; `None` when
/// the connection fails or closes without a response.
async fn send(addr: SocketAddr, request: &str) -> Option<Answer> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = buf[end + 4..].to_vec();
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some(Answer { status, body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let start = line_end + 2;
        if size == 0 || data.len() < start + size {
            break;
        }
        out.extend_from_slice(&data[start..start + size]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// The path the upstream app reported (the bytes after `RESOLVED ` up to the
/// end of that line), if the body is the app's answer.
fn resolved(body: &[u8]) -> Option<Vec<u8>> {
    let marker = b"RESOLVED ";
    let start = body.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let len = body[start..]
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(body.len() - start);
    Some(body[start..start + len].to_vec())
}

/// Bytes for a table: printable ASCII as is, everything else `\xNN`.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x21..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
}

// ---- the rule set, evaluated independently of the gateway -------------------

/// The gateway's rules (mirrored in `GATEWAY_TOML`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// `^/public/`: bypass.
    Public,
    /// `^/admin(/|$)`: two_factor, groups = ["admins"].
    Admin,
    /// `^/secret(/|$)`: deny.
    Secret,
    /// `^/reports(/|$)`: one_factor.
    Reports,
    /// `^/odata/\$metadata`: deny.
    OData,
    /// `^/%C3%BCber/` (`/über/`): deny.
    Uber,
    /// `^/vault$`: deny.
    Vault,
    /// No rule: default_policy two_factor.
    Default,
}

const GATEWAY_RULES: &str = r#"
[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/admin(/|$)"
policy = "two_factor"
groups = ["admins"]

[[rules]]
path = "^/secret(/|$)"
policy = "deny"

[[rules]]
path = "^/reports(/|$)"
policy = "one_factor"

[[rules]]
path = "^/odata/\\$metadata"
policy = "deny"

[[rules]]
path = "^/%C3%BCber/"
policy = "deny"

[[rules]]
path = "^/vault$"
policy = "deny"
"#;

fn under(path: &[u8], dir: &[u8]) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

fn rule_for(path: &[u8]) -> Rule {
    if path.starts_with(b"/public/") {
        Rule::Public
    } else if under(path, b"/admin") {
        Rule::Admin
    } else if under(path, b"/secret") {
        Rule::Secret
    } else if under(path, b"/reports") {
        Rule::Reports
    } else if path.starts_with(b"/odata/$metadata") {
        Rule::OData
    } else if path.starts_with("/über/".as_bytes()) {
        Rule::Uber
    } else if path == b"/vault" {
        Rule::Vault
    } else {
        Rule::Default
    }
}

/// Who sends the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No session.
    Anonymous,
    /// carol after her password: level 1, groups ["staff"].
    Level1,
    /// carol after her password and TOTP: level 2, groups ["staff"].
    Level2,
}

const SESSIONS: [Who; 3] = [Who::Anonymous, Who::Level1, Who::Level2];

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::Anonymous => "anon",
            Who::Level1 => "L1",
            Who::Level2 => "L2",
        }
    }
}

/// May `who` reach a path under `rule`? (carol is not in "admins".)
fn allowed(rule: Rule, who: Who) -> bool {
    match rule {
        Rule::Public => true,
        Rule::Reports => who != Who::Anonymous,
        Rule::Default => who == Who::Level2,
        Rule::Admin | Rule::Secret | Rule::OData | Rule::Uber | Rule::Vault => false,
    }
}

/// Removes `.` and `..` segments and merges empty ones, as a server resolving
/// a path would (never above the root).
fn remove_dots(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::new();
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || (path.ends_with(b"/") && !segments.is_empty()) {
        out.push(b'/');
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// One more percent-decoding (an app that decodes what the server decoded).
fn decode_again(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(h), Some(l)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

/// Overlong UTF-8 spellings of `.`, `/` and `\` read as those characters (a
/// lenient decoder).
fn lenient_utf8(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let two = path.get(i..i + 2);
        let three = path.get(i..i + 3);
        let (ch, len) = match (two, three) {
            (Some([0xC0, 0xAE]), _) => (b'.', 2),
            (Some([0xC0, 0xAF]), _) => (b'/', 2),
            (Some([0xC1, 0x9C]), _) => (b'/', 2),
            (_, Some([0xE0, 0x80, 0xAE])) => (b'.', 3),
            (_, Some([0xE0, 0x80, 0xAF])) => (b'/', 3),
            _ => (path[i], 1),
        };
        out.push(ch);
        i += len;
    }
    out
}

/// `;params` removed from every segment, as Spring does after the server
/// decoded the path (so a `%3B` the server decoded starts parameters too).
fn strip_params(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, seg) in path.split(|&b| b == b'/').enumerate() {
        if n > 0 {
            out.push(b'/');
        }
        let end = seg.iter().position(|&b| b == b';').unwrap_or(seg.len());
        out.extend_from_slice(&seg[..end]);
    }
    out
}

/// As IIS reads a path: `\` separates, and trailing dots and spaces are
/// trimmed from each segment (a segment of dots and spaces with two or more
/// dots is `..`).
fn iis_trim(path: &[u8]) -> Vec<u8> {
    let swapped: Vec<u8> = path.iter().map(|&b| if b == b'\\' { b'/' } else { b }).collect();
    let mut out = Vec::new();
    for (n, seg) in swapped.split(|&b| b == b'/').enumerate() {
        if n > 0 {
            out.push(b'/');
        }
        let dots = seg.iter().filter(|&&b| b == b'.').count();
        if !seg.is_empty() && seg.iter().all(|&b| b == b'.' || b == b' ') {
            out.extend_from_slice(if dots >= 2 { b".." } else { b"." });
        } else {
            let end = seg
                .iter()
                .rposition(|&b| b != b'.' && b != b' ')
                .map_or(0, |p| p + 1);
            out.extend_from_slice(&seg[..end]);
        }
    }
    out
}

/// The readings of a resolved path: as the server resolved it, then as
/// upstreams we cannot install would read it, each also without a trailing
/// `/` (Express and Spring MVC up to 5.3 route `/vault/` as `/vault`); only
/// readings that differ.
fn readings(path: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("as resolved", path.to_vec())];
    for (name, f) in [
        (";params removed (Spring)", strip_params as fn(&[u8]) -> Vec<u8>),
        ("decoded again", decode_again),
        ("overlong UTF-8 read leniently", lenient_utf8),
        ("trailing dots/spaces trimmed (IIS)", iis_trim),
    ] {
        let read = remove_dots(&f(path));
        if read != path && !out.iter().any(|(_, p)| *p == read) {
            out.push((name, read));
        }
    }
    for k in 0..out.len() {
        let (name, read) = &out[k];
        if read.len() > 1
            && let Some(cut) = read.strip_suffix(b"/")
        {
            let name = match *name {
                "as resolved" => "trailing slash removed (Express, Spring MVC)",
                _ => "and trailing slash removed",
            };
            let cut = cut.to_vec();
            if !out.iter().any(|(_, p)| *p == cut) {
                out.push((name, cut));
            }
        }
    }
    out
}

// ---- the corpus -------------------------------------------------------------

/// Hostile request targets (`{host}` becomes the upstream's host name).
const HOSTILE: &[&str] = &[
    // Path parameters: Tomcat drops `;params` from every segment.
    "/admin;x/secret",
    "/admin;/secret",
    "/admin;jsessionid=1/secret",
    "/admin%3Bjsessionid=1/secret",
    "/admin%3bx/secret",
    "/admin;x",
    "/%61dmin;x/x",
    "/secret;x/x",
    "/secret;/x",
    "/public;x/../admin/x",
    "/public/..;/admin/x",
    "/public/..;x/admin/x",
    "/public/%2e%2e;/admin/x",
    "/;x/admin/x",
    "/public/x;/../../admin/x",
    // Double encoding.
    "/%2561dmin/x",
    "/public/%252e%252e/admin/x",
    "/public/%252E%252E/secret/x",
    "/public/%25%32%65%25%32%65/admin/x",
    "/public/..%252F..%252Fadmin/x",
    // Overlong UTF-8.
    "/public/%C0%AE%C0%AE/admin/x",
    "/public/%c0%ae%c0%ae/secret/x",
    "/public/%C0%AE%C0%AE%C0%AFadmin/x",
    "/public/%E0%80%AE%E0%80%AE/admin/x",
    // Trailing dots and spaces (IIS).
    "/admin./x",
    "/admin%20/x",
    "/admin.%20/x",
    "/secret./x",
    "/public/..%20/admin/x",
    "/public/.../admin/x",
    "/public/..%2e/admin/x",
    // Case.
    "/ADMIN/x",
    "/Admin/x",
    "/SECRET/x",
    // Dot segments.
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/.%2e/admin/x",
    "/./admin/x",
    "/public/./../secret/x",
    "/public/x/../../admin/x",
    "//admin/x",
    // Encoded slashes.
    "/admin%2Fx",
    "/public%2F..%2Fadmin/x",
    "/public/..%2fadmin/x",
    // Backslashes.
    "/public\\..\\admin\\x",
    "/public%5C..%5Cadmin/x",
    "/public/..\\admin/x",
    // Fragments.
    "/public/x#/../admin",
    "/public#/../admin/x",
    // One spelling per character: sub-delims and non-ASCII, raw or encoded.
    "/odata/%24metadata",
    "/odata/%24%6detadata",
    "/odata/$metadata",
    "/%C3%BCber/x",
    "/%c3%bcber/x",
    "/über/x",
    "/public/../über/x",
    "/public/%2e%2e/%C3%BCber/x",
    // Trailing slash on an anchored rule (Express, Spring MVC).
    "/vault",
    "/vault/",
    "/vault;x/",
    "/vault./",
    "/vault%2F",
    "/public/../vault/",
    "/secret/",
    // Absolute-form.
    "http://{host}/admin/x",
    "http://{host}/public/../admin/x",
    "http://{host}/admin;x/secret",
];

/// Benign controls, with the sessions that must get through to every
/// upstream (so the harness cannot pass by forwarding nothing).
const CONTROLS: &[(&str, &[Who])] = &[
    ("/public/x", &[Who::Anonymous, Who::Level1, Who::Level2]),
    ("/admin/x", &[]),
    ("/secret/x", &[]),
    ("/reports/x", &[Who::Level1, Who::Level2]),
    ("/reports/x;jsessionid=ABC", &[Who::Level1, Who::Level2]),
    ("/x", &[Who::Level2]),
    ("/vault/x", &[Who::Level2]),
    ("/public/caf%C3%A9", &[Who::Anonymous, Who::Level1, Who::Level2]),
    ("/public/café", &[Who::Anonymous, Who::Level1, Who::Level2]),
    ("/public/$top", &[Who::Anonymous, Who::Level1, Who::Level2]),
];

// ---- the gateway and its sessions -------------------------------------------

fn totp_code(gw: &TestGateway) -> String {
    use portcullis::clock::Clock;
    let cfg = TotpConfig {
        enabled: true,
        issuer: "Portcullis".into(),
        digits: 6,
        period: 30,
        algorithm: TotpAlgorithm::Sha1,
        skew: 1,
    };
    portcullis::factors::totp::code_at(&cfg, SEED, gw.clock.now())
}

/// carol signs in with her password and her TOTP code through the portal;
/// returns the level-2 session cookie.
async fn level2_cookie(gw: &TestGateway) -> String {
    let login = gw.login_rd("carol", PASSWORD, "/x").await;
    let client = gw.client();
    let page = client
        .get(gw.url(&format!("/_portcullis/mfa?rd={}", enc("/x"))))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the challenge page");
    let html = page.text().await.unwrap();
    let factor = portcullis::factors::config_factor_id(&TestGateway::uid("carol"));
    let res = client
        .post(gw.url("/_portcullis/mfa/verify"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf_field(&html)),
            ("rd", "/x"),
            ("factor", &factor),
            ("code", &totp_code(gw)),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "carol's second factor");
    let (session, _) = set_cookie(&res, "portcullis_session").expect("a level-2 session cookie");
    format!("portcullis_session={session}")
}

/// One cell of the table.
struct Outcome {
    status: Option<u16>,
    resolved: Option<Vec<u8>>,
    violation: bool,
}

impl Outcome {
    fn cell(&self) -> String {
        let status = self.status.map_or_else(|| "closed".to_owned(), |s| s.to_string());
        match &self.resolved {
            Some(path) => format!(
                "{status} {}{}",
                show(path),
                if self.violation { " !!" } else { "" }
            ),
            None => status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_never_reach_a_place_the_rules_keep_from_the_caller() {
    let started = Instant::now();
    // All three boot while the gateway hashes passwords.
    let mut servers: Vec<Server> = [start_nginx(), start_apache(), start_tomcat()]
        .into_iter()
        .flatten()
        .collect();
    if servers.is_empty() {
        crate::skip::test("differential", "no upstream server is installed");
        return;
    }

    let users = tempfile::tempdir().unwrap();
    let users_file = users.path().join("users.toml");
    std::fs::write(
        &users_file,
        format!(
            "[[users]]\nusername = \"carol\"\npassword = {}\ngroups = [\"staff\"]\ntotp = {{ secret = \"{SEED_B32}\" }}\n",
            toml_str(&portcullis::passwords::hash_password(PASSWORD.as_bytes()).unwrap())
        ),
    )
    .unwrap();
    let mut toml = format!(
        "default_policy = \"two_factor\"\n\n[users]\nfile = {}\n\n[factors.totp]\nenabled = true\n",
        toml_str(&users_file.display().to_string())
    );
    for s in &servers {
        let _ = write!(
            toml,
            "\n[[upstreams]]\nname = \"{}\"\nurl = \"http://127.0.0.1:{}\"\nhosts = [\"{}\"]\npreserve_host = true\ntimeout = \"15s\"\n",
            s.name, s.port, s.host
        );
    }
    toml.push_str(GATEWAY_RULES);
    let gw = TestGateway::start(&toml).await;
    let l2 = level2_cookie(&gw).await;
    let l1 = {
        let login = gw.login_rd("carol", PASSWORD, "/reports/").await;
        login.session_cookie()
    };

    for s in &mut servers {
        let within = if s.name == "tomcat" { 60 } else { 20 };
        s.wait_ready(Duration::from_secs(within)).await;
    }
    println!(
        "differential: {} up after {:.1?}",
        servers.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        started.elapsed()
    );

    let targets: Vec<(&str, &[Who])> = HOSTILE
        .iter()
        .map(|t| (*t, &[][..]))
        .chain(CONTROLS.iter().copied())
        .collect();
    let mut table = String::new();
    let mut violations = Vec::new();
    let mut rows = 0;
    let mut forwarded = 0;
    let _ = writeln!(
        table,
        "{:<38} {:<7} | {:<30} | {:<30} | {:<30}",
        "target", "server", "anonymous", "level 1 (carol)", "level 2 (carol, not admin)"
    );
    for (target, must_forward) in &targets {
        for s in &servers {
            let target = target.replace("{host}", s.host);
            let mut cells = Vec::new();
            for who in SESSIONS {
                let cookie = match who {
                    Who::Anonymous => String::new(),
                    Who::Level1 => format!("Cookie: {l1}\r\n"),
                    Who::Level2 => format!("Cookie: {l2}\r\n"),
                };
                let request = format!(
                    "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n{cookie}Connection: close\r\n\r\n",
                    s.host
                );
                let answer = send(gw.main, &request).await;
                let status = answer.as_ref().map(|a| a.status);
                let path = answer.as_ref().and_then(|a| resolved(&a.body));
                let mut violation = false;
                if let Some(path) = &path {
                    forwarded += 1;
                    for (reading, read) in readings(path) {
                        let rule = rule_for(&read);
                        if !allowed(rule, who) {
                            violation = true;
                            violations.push(format!(
                                "{target} via {} as {}: the gateway forwarded it ({}), {} resolved {}, \
                                 {reading}: {} falls under {rule:?}, which {who:?} does not satisfy",
                                s.name,
                                who.label(),
                                status.unwrap_or(0),
                                s.name,
                                show(path),
                                show(&read),
                            ));
                        }
                    }
                }
                if must_forward.contains(&who) && (status != Some(200) || path.is_none()) {
                    violations.push(format!(
                        "{target} via {} as {}: a control that must get through answered {:?} without \
                         reaching the app",
                        s.name,
                        who.label(),
                        status
                    ));
                }
                rows += 1;
                cells.push(Outcome {
                    status,
                    resolved: path,
                    violation,
                });
            }
            let _ = writeln!(
                table,
                "{:<38} {:<7} | {:<30} | {:<30} | {:<30}",
                show(target.as_bytes()),
                s.name,
                cells[0].cell(),
                cells[1].cell(),
                cells[2].cell()
            );
        }
    }
    println!("{table}");
    println!(
        "differential: {} targets x {} servers x {} sessions = {rows} requests, {forwarded} reached the app, \
         {} violations, {:.1?}",
        targets.len(),
        servers.len(),
        SESSIONS.len(),
        violations.len(),
        started.elapsed()
    );
    assert!(
        violations.is_empty(),
        "{} violations (in the table above, a cell shows the gateway's status, then the path the app \
         resolved; !! marks a violation):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn the_independent_evaluator_reads_paths_as_documented() {
    assert_eq!(rule_for(b"/admin"), Rule::Admin);
    assert_eq!(rule_for(b"/admin/x"), Rule::Admin);
    assert_eq!(rule_for(b"/administrator"), Rule::Default);
    assert_eq!(rule_for(b"/public"), Rule::Default);
    assert_eq!(remove_dots(b"/public/../admin/x"), b"/admin/x");
    assert_eq!(remove_dots(b"/../../x/"), b"/x/");
    let read = |p: &[u8]| readings(p).into_iter().map(|(_, r)| r).collect::<Vec<_>>();
    assert_eq!(
        read(b"/%61dmin/x"),
        [b"/%61dmin/x".to_vec(), b"/admin/x".to_vec()]
    );
    assert!(read(b"/public/\xC0\xAE\xC0\xAE/admin/x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/admin./x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/public/.. /admin/x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/public/.../admin/x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/public\\..\\admin\\x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/admin;jsessionid=1/x").contains(&b"/admin/x".to_vec()));
    assert!(read(b"/public/..;x/admin/x").contains(&b"/admin/x".to_vec()));
    assert_eq!(read(b"/public/x"), [b"/public/x".to_vec()]);
    assert_eq!(read(b"/vault/"), [b"/vault/".to_vec(), b"/vault".to_vec()]);
    assert!(read(b"/vault;x/").contains(&b"/vault".to_vec()));
    assert_eq!(read(b"/"), [b"/".to_vec()]);
    assert_eq!(rule_for(b"/vault"), Rule::Vault);
    assert_eq!(rule_for(b"/vault/x"), Rule::Default);
    assert_eq!(rule_for("/über/x".as_bytes()), Rule::Uber);
    assert_eq!(rule_for(b"/odata/$metadata"), Rule::OData);
    assert!(!allowed(Rule::Admin, Who::Level2));
    assert!(allowed(Rule::Default, Who::Level2));
    assert!(!allowed(Rule::Default, Who::Level1));
    assert!(allowed(Rule::Public, Who::Anonymous));
}
