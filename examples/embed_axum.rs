//! Portcullis' enforcement layer in front of an ordinary axum app, without the
//! reverse proxy: the app's handlers read the signed-in user from the request
//! extensions, and the portal (login, logout) is nested at its prefix.
//!
//! Run it with `cargo run --example embed_axum`, open http://127.0.0.1:3000/
//! and sign in as `alice` with the password printed at start.

use std::net::SocketAddr;

use axum::Extension;
use axum::routing::get;
use portcullis::Gateway;
use portcullis::identity::Principal;

async fn home(Extension(user): Extension<Principal>) -> String {
    format!(
        "Hello, {}! You are in groups {:?} with a level-{} session.\n",
        user.display_name.as_deref().unwrap_or(&user.username),
        user.groups,
        user.level
    )
}

async fn public() -> &'static str {
    "Anyone may read this page.\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("portcullis-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let password = portcullis::crypto::random_id(12);
    let hash = portcullis::passwords::hash_password(password.as_bytes())?;
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\ndisplay_name = \"Alice Example\"\ngroups = [\"staff\"]\n"
        ),
    )?;
    let secret = portcullis::crypto::random_token();
    // The layer needs no upstream, but the config format requires one; it is never contacted.
    let config = format!(
        r#"
default_policy = "one_factor"
[server]
listen = "127.0.0.1:3000"
[admin]
tokens = []
[[upstreams]]
name = "unused"
url = "http://127.0.0.1:9"
[session]
secrets = ["{secret}"]
secure = false
[users]
file = {users:?}
[store]
kind = "memory"
encryption_keys = []
[factors.totp]
enabled = false
[factors.recovery_codes]
enabled = false
[[rules]]
path = "^/public$"
policy = "bypass"
"#
    );
    let loaded = portcullis::config::load_str(&config, &|_| None)?;
    let prefix = loaded.config.portal.prefix.clone();
    let gateway = Gateway::build(loaded.config).await?;

    // Routes added before `.layer` are protected; the portal is nested after it.
    let app = axum::Router::new()
        .route("/", get(home))
        .route("/public", get(public))
        .layer(gateway.mfa_layer())
        .nest(&prefix, gateway.portal_router());

    let addr: SocketAddr = "127.0.0.1:3000".parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("open http://{addr}/ and sign in as alice / {password}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
