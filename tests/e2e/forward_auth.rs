//! A person in headless Chromium through nginx running the README's
//! `auth_request` recipe (as printed, ports filled in), with the real
//! `portcullis` binary as its auth service: the app's host sends them to the
//! portal on the same host, they sign in, enroll an authenticator (the code
//! from oathtool), come back to the app with identity headers, sign out, and
//! the app is out of reach again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use crate::browser::{Authenticator, GatewayProcess, Person, browser_with, which};
use crate::front::{APP, skipped, start_nginx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_through_nginx_forward_auth() {
    let Some(chromium) = which("chromium").or_else(|| which("chromium-browser")) else {
        skipped("chromium", "chromium is not installed (apt-get install chromium)");
        return;
    };
    if !crate::harness::have("chromedriver") {
        skipped(
            "chromium",
            "chromedriver is not installed (apt-get install chromium-driver)",
        );
        return;
    }
    if !crate::harness::have_oathtool("browser_through_nginx_forward_auth") {
        return;
    }
    crate::harness::init_crypto();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start_with(dir.path(), |config| {
        config.replacen(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
            1,
        ) + "\n[forward_auth]\nenabled = true\n"
    })
    .await;
    let portcullis: SocketAddr = gw.base.trim_start_matches("http://").parse().unwrap();
    let Some(front) = start_nginx(&["nginx"], portcullis, gw.upstream, None).await else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let (_driver, b) = browser_with(
        &chromium,
        profile.path(),
        &[
            format!("--host-resolver-rules=MAP {APP} 127.0.0.1"),
            // Plain http on a real host name is not a secure context, so
            // Chromium would send no `Sec-Fetch-Site` and (the portal's
            // `Referrer-Policy: no-referrer`) `Origin: null`, which the
            // portal's cross-site check refuses. Behind TLS it is a secure
            // context; this flag stands in for the certificate.
            format!("--unsafely-treat-insecure-origin-as-secure={}", front.origin(APP)),
            "--disable-features=HttpsUpgrades".to_owned(),
        ],
    )
    .await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let me = Person {
        b,
        base: front.origin(APP),
        shots,
    };

    // The app's host sends an anonymous visitor to the portal on that host.
    me.sign_in().await;
    me.on("/_portcullis/enroll").await;
    let host = me.b.current_url().await.unwrap();
    assert_eq!(host.host_str(), Some(APP), "the portal is on the app's host");
    let secret = me
        .find("#secret")
        .await
        .attr("data-secret")
        .await
        .unwrap()
        .expect("data-secret");
    let mut app = Authenticator { secret, last: None };
    let (code, step) = app.code().await;
    me.type_into("#code", &code).await;
    me.click_and_load("form[action$='/enroll/activate'] button[type=submit]")
        .await;
    me.find("#recovery-codes").await;
    app.accepted(step);
    me.screenshot("forward-auth-recovery-codes.png").await;
    me.click_and_load("#continue").await;

    // Back at the app through nginx, which got the identity from Portcullis.
    me.at_the_app().await;
    me.screenshot("forward-auth-app.png").await;

    // Signing out (the portal through nginx) puts the app out of reach.
    assert_eq!(me.sign_out().await, 10);

    me.b.clone().close().await.unwrap();
    eprintln!(
        "forward-auth browser journey took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
