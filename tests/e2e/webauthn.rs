//! Security keys and passkeys in real headless Chromium with its virtual
//! authenticator (WebDriver's extension through chromedriver), against the
//! real binary on `http://localhost` (a secure context): enroll a named key
//! at first sign-in, sign in with it as the second factor, fail with a
//! different authenticator, and sign in with the passkey and no username,
//! reaching a two-factor route.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::browser::{GatewayProcess, Person, browser_at, until, which};
use crate::harness::have;

/// Adds a CTAP2 virtual authenticator with resident keys and user
/// verification to the WebDriver session; answers its id.
async fn virtual_authenticator(driver: &str, b: &fantoccini::Client) -> String {
    let sid = b.session_id().await.unwrap().expect("a session id");
    let r: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{driver}/session/{sid}/webauthn/authenticator"))
        .json(&json!({
            "protocol": "ctap2",
            "transport": "usb",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserPresent": true,
            "isUserVerified": true,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no authenticator: {r}"))
        .to_owned()
}

/// Runs the page's ceremony and waits for the next page (else fails with
/// what the page's status line says).
async fn ceremony(me: &Person) {
    let old = me.b.find(fantoccini::Locator::Css("html")).await.unwrap();
    me.click("#webauthn-start").await;
    let gone = until(std::time::Duration::from_secs(15), async || {
        old.tag_name().await.is_err()
    })
    .await;
    if !gone {
        let status = me.text("#webauthn-status").await;
        panic!(
            "the ceremony did not finish: {status:?}\n{}",
            me.b.source().await.unwrap_or_default()
        );
    }
}

/// The portal's status line on a ceremony page, once it says `want`.
async fn status_says(me: &Person, want: &str) -> String {
    let mut last = String::new();
    let ok = until(std::time::Duration::from_secs(15), async || {
        last = me.text("#webauthn-status").await;
        last.contains(want)
    })
    .await;
    assert!(ok, "the status line says {last:?}, not {want:?}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_security_key_and_passkey() {
    const NAME: &str = "browser_security_key_and_passkey";
    let (Some(chromium), true) = (
        which("chromium").or_else(|| which("chromium-browser")),
        have("chromedriver"),
    ) else {
        crate::skip::test(
            NAME,
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
        );
        return;
    };
    crate::harness::init_crypto();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start_with(dir.path(), |c| {
        let port = c
            .split("listen = \"127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        c.replacen(
            "shutdown_timeout = \"2s\"",
            &format!("shutdown_timeout = \"2s\"\nexternal_url = \"http://localhost:{port}\""),
            1,
        )
        .replacen(
            "enrollment = \"first_login\"",
            "enrollment = \"first_login\"\npasswordless_factors = [\"webauthn\"]",
            1,
        ) + "\n[factors.webauthn]\nenabled = true\nrp_name = \"Portcullis test\"\n"
    })
    .await;
    let base = gw.base.replace("127.0.0.1", "localhost");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (_driver, b, driver) = browser_at(&chromium, profile.path(), &[]).await;
    virtual_authenticator(&driver, &b).await;
    let me = Person {
        b,
        base: base.clone(),
        shots: shots.clone(),
    };

    // First sign-in: no factor yet, so enrollment; choose a security key and name it.
    me.sign_in().await;
    me.on("/_portcullis/enroll").await;
    me.click_and_load("#enroll-webauthn").await;
    me.type_into("#name", "Blue key").await;
    me.screenshot("webauthn-enroll.png").await;
    ceremony(&me).await;
    me.find("#recovery-codes").await;
    me.click_and_load("#continue").await;
    me.at_the_app().await;
    me.goto("/_portcullis/factors").await;
    let table = me.text("#factors").await;
    assert!(table.contains("Blue key"), "{table}");
    // Rename it.
    me.click_and_load("#factors a.rename").await;
    me.type_into("#name", "Red key").await;
    me.click_and_load("form[action$='/rename'] button[type=submit]")
        .await;
    let table = me.text("#factors").await;
    assert!(
        table.contains("Red key") && !table.contains("Blue key"),
        "{table}"
    );

    // Second sign-in: the key as the second factor.
    me.sign_out().await;
    me.sign_in().await;
    me.on("/_portcullis/mfa").await;
    me.click_and_load("form[action$='/mfa/webauthn'] button[type=submit]")
        .await;
    ceremony(&me).await;
    me.at_the_app().await;

    // A different authenticator (another browser) cannot stand in for it.
    let profile2 = tempfile::tempdir().unwrap();
    let (_driver2, b2, driver2) = browser_at(&chromium, profile2.path(), &[]).await;
    virtual_authenticator(&driver2, &b2).await;
    let other = Person {
        b: b2,
        base: base.clone(),
        shots: shots.clone(),
    };
    other.sign_in().await;
    other.on("/_portcullis/mfa").await;
    other
        .click_and_load("form[action$='/mfa/webauthn'] button[type=submit]")
        .await;
    other.click("#webauthn-start").await;
    status_says(&other, "did not work").await;
    other.goto("/hello").await;
    other.on("/_portcullis/mfa").await;
    other.b.clone().close().await.unwrap();

    // No username: the passkey alone (verified by the device) reaches the
    // two-factor app.
    me.sign_out().await;
    me.click_and_load("#passkey-link").await;
    me.on("/_portcullis/login/passkey").await;
    me.screenshot("webauthn-passkey.png").await;
    let csrf = async || {
        me.b.get_named_cookie("portcullis_csrf")
            .await
            .map(|c| c.value().to_owned())
            .ok()
    };
    let before = csrf().await;
    assert!(before.is_some(), "the passkey page sets a CSRF cookie");
    ceremony(&me).await;
    me.at_the_app().await;
    // The token that named the ceremony (and may have been seen before the
    // sign-in) does not carry over into the new session.
    let after = csrf().await;
    assert!(
        after.is_some() && after != before,
        "a passkey sign-in keeps its CSRF token"
    );

    me.b.clone().close().await.unwrap();
    eprintln!(
        "webauthn browser scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
