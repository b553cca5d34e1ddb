//! `portcullis demo`: the whole flow on a laptop. Starts a built-in echo app
//! (a page showing the identity headers it received), writes a config and a
//! users file with a fresh demo user into a temporary folder, and runs the
//! gateway in front of the echo app.
//!
//! The echo app is also the dummy upstream of the tests and benchmarks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::Config;

/// Serves the echo app on `addr` (port 0 picks one); returns the bound address.
pub async fn spawn_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(
                        |req| async move { Ok::<_, std::convert::Infallible>(echo(req)) },
                    );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// The echo app's answer: JSON for API clients (`Accept: application/json`),
/// else an HTML page; `/small` answers a fixed tiny body (for benchmarks).
fn echo<B>(req: Request<B>) -> Response<Body> {
    if req.uri().path() == "/small" {
        let mut res = Response::new(Body::from("ok\n"));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return res;
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "headers": headers.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        });
        let mut res = Response::new(Body::from(body.to_string()));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return res;
    }
    let user = req
        .headers()
        .get("remote-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    let rows: Vec<minijinja::Value> = headers
        .iter()
        .map(|(k, v)| {
            minijinja::context! {
                name => k.as_str(),
                value => v.as_str(),
                identity => k.starts_with("remote-"),
            }
        })
        .collect();
    let page = crate::pages::render_app(
        "demo/echo.html",
        minijinja::context! {
            user,
            method => req.method().as_str(),
            path => req.uri().path(),
            headers => rows,
        },
    );
    let mut res = Response::new(Body::from(page));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

/// The demo's temporary folder: private to the user running it (0700, its
/// files 0600: it holds a password hash, the session secret, the store key
/// and the admin token) and removed when this is dropped, which the command
/// line does after the gateway stopped (Ctrl-C, SIGTERM) or failed to start.
#[derive(Debug)]
pub struct DemoDir {
    path: PathBuf,
}

impl DemoDir {
    /// A fresh folder under the system's temporary directory; refuses one
    /// that already exists (a name planted in a shared /tmp).
    pub fn create() -> std::io::Result<DemoDir> {
        let path = std::env::temp_dir().join(format!("portcullis-demo-{}", crate::crypto::random_id(12)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(DemoDir { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new file `name` with mode 0600.
    fn write(&self, name: &str, contents: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path.join(name))?
            .write_all(contents.as_bytes())
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Refuses a busy address before anything is written, naming the option that
/// chooses another one (both are held at once: the same address twice is
/// refused too).
fn check_ports(listen: SocketAddr, admin: SocketAddr) -> Result<(), ExitCode> {
    if listen == admin {
        eprintln!("error: --admin-listen must differ from --listen (both {listen})");
        // EX_USAGE, as for any bad argument (the command line's `EXIT_CONFIG`).
        return Err(ExitCode::from(64));
    }
    let mut held = Vec::new();
    for (addr, option) in [(listen, "--listen"), (admin, "--admin-listen")] {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => held.push(l),
            Err(e) => {
                eprintln!(
                    "error: cannot listen on {addr} ({e}); choose another address with {option}, \
                     e.g. `portcullis demo {option} {}:{}`",
                    addr.ip(),
                    addr.port().wrapping_add(1).max(1024)
                );
                return Err(ExitCode::FAILURE);
            }
        }
    }
    Ok(())
}

/// The demo's config text, for an echo app at `upstream`; `admin_token` is
/// accepted by the admin API.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    dir: &std::path::Path,
    memory: bool,
    admin_token: &str,
) -> String {
    let secret = crate::crypto::b64(&crate::crypto::random_bytes(32));
    let store_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(crate::crypto::random_bytes(32))
    };
    let store = if memory {
        "kind = \"memory\"".to_owned()
    } else {
        format!(
            "kind = \"sqlite\"\npath = {}",
            toml_str(&dir.join("portcullis.db").display().to_string())
        )
    };
    format!(
        r#"# Written by `portcullis demo`.
default_policy = "two_factor"

[server]
listen = "{listen}"
# a laptop needs few connections; the default (10000) asks for more descriptors
# than some shells allow, and the gateway would warn about it
max_connections = 1000

[admin]
listen = "{admin}"
tokens = ["{admin_token}"]

[[upstreams]]
name = "echo"
url = "http://{upstream}"

[session]
secrets = ["{secret}"]
secure = false                      # the demo listens on plain http

[users]
file = {users}

[store]
{store}
encryption_keys = ["{store_key}"]

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/reports/"
policy = "one_factor"               # a password is enough here
"#,
        users = toml_str(&dir.join("users.toml").display().to_string()),
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Sets the demo up (logging, the echo app, a users file and a config in a
/// fresh temporary directory) and returns its config for the command line
/// to serve, with the folder to drop (remove) once the gateway stopped; `Err`
/// is the exit code after the error was printed (the folder is gone then).
pub async fn prepare(
    listen: SocketAddr,
    admin: SocketAddr,
    memory: bool,
) -> Result<(Config, DemoDir), ExitCode> {
    crate::telemetry::init(&crate::config::LogConfig {
        format: crate::config::LogFormat::Text,
        level: "info".into(),
    });
    check_ports(listen, admin)?;
    let dir = match DemoDir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "error: cannot create a folder in {}: {e}",
                std::env::temp_dir().display()
            );
            return Err(ExitCode::FAILURE);
        }
    };
    let upstream = match spawn_echo(
        "127.0.0.1:0"
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot start the echo app: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let password = crate::crypto::random_id(16);
    let hash = match crate::passwords::hash_password(password.as_bytes()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let users = format!(
        "[[users]]\nusername = \"demo\"\npassword = {}\ndisplay_name = \"Demo User\"\nemail = \"demo@example.com\"\ngroups = [\"demo\"]\n",
        toml_str(&hash)
    );
    let admin_token = format!("demo-{}", crate::crypto::random_id(32));
    let config_path = dir.path().join("portcullis.toml");
    let written = dir.write("users.toml", &users).and_then(|_| {
        dir.write(
            "portcullis.toml",
            &demo_config(listen, admin, upstream, dir.path(), memory, &admin_token),
        )
    });
    if let Err(e) = written {
        eprintln!("error: cannot write the demo files: {e}");
        return Err(ExitCode::FAILURE);
    }
    let loaded = match crate::config::load_file(&config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: the demo config is invalid (a bug):\n{e}");
            return Err(ExitCode::FAILURE);
        }
    };
    println!();
    println!("  Portcullis demo");
    println!("  open      http://{listen}/   (the echo app, behind the gateway)");
    println!("  sign in   user: demo   password: {password}");
    println!("  public    http://{listen}/public/   (a bypass rule; /reports/ needs only the password)");
    println!(
        "  factors   http://{listen}/_portcullis/factors   (authenticator app, recovery codes, sign out)"
    );
    println!("  admin     http://{admin}/metrics   and the admin API:");
    println!("            curl -H 'Authorization: SSWS {admin_token}' http://{admin}/api/v1/users");
    println!("  token     {admin_token}   (this run's admin token)");
    println!(
        "  postman   newman run examples/portcullis.postman_collection.json --env-var gateway=http://{listen} \
         --env-var admin=http://{admin} --env-var token={admin_token} --env-var prefix=/_portcullis"
    );
    println!(
        "  files     {}   (removed when the demo stops)",
        dir.path().display()
    );
    println!("  stop      Ctrl-C");
    println!();
    Ok((loaded.config, dir))
}
