//! What an end user sees in the portal, over real HTTP: the access-denied and
//! factors pages lead back to the application (never off-site) and offer
//! sign-out; enrollment offers an `otpauth://` link and recovery codes that can
//! be copied and downloaded without inline script; branding keys are checked
//! and applied; pages follow the browser's language.

use portcullis::clock::Clock;
use portcullis::config::{TotpAlgorithm, TotpConfig};

use crate::support::*;

/// GETs `path` as a browser with `cookie` and `Accept-Language: lang`.
async fn browse(gw: &TestGateway, path: &str, cookie: &str, lang: &str) -> reqwest::Response {
    let mut req = gw
        .client()
        .get(gw.url(path))
        .header("accept", "text/html")
        .header("cookie", cookie);
    if !lang.is_empty() {
        req = req.header("accept-language", lang);
    }
    req.send().await.unwrap()
}

/// The `href` of the element with `id`.
fn href_of(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let tag_start = html[..at].rfind('<').unwrap();
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>').unwrap()];
    let start = tag.find("href=\"").expect("an href") + 6;
    tag[start..start + tag[start..].find('"').unwrap()].to_owned()
}

fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in:\n{html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn the_denied_page_links_back_and_signs_out_with_a_csrf_form() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let res = browse(&gw, "/denied/x", &login.cookie(), "").await;
    assert_eq!(res.status(), 403);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("<h1>Access denied</h1>"), "{html}");
    assert_eq!(href_of(&html, "back-to-app"), "/");
    assert!(html.contains("action=\"/_portcullis/logout\""), "{html}");
    // The token is the browser's own CSRF cookie: the form posts as is.
    assert_eq!(field(&html, "csrf"), login.csrf);
    let res = gw
        .client()
        .post(gw.url("/_portcullis/logout"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &login.csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gw.status("/other", Some(&login.cookie())).await, 401);

    // Where the way back goes when "/" itself is refused (and the 404 page's
    // link): the account page.
    let res = browse(&gw, "/_portcullis/", "", "").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/_portcullis");

    // Signed out (no session): still a way back, no sign-out button.
    let html = browse(&gw, "/denied", "", "de-DE,de;q=0.9")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<html lang=\"de\">") && html.contains("Zugriff verweigert"),
        "{html}"
    );
    assert!(html.contains("Zurück zur Anwendung"), "{html}");
    assert!(!html.contains("/logout"), "{html}");
}

#[tokio::test]
async fn the_factors_page_links_back_only_on_this_origin() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    for (rd, want) in [
        ("/app/page?x=1", "/app/page?x=1"),
        ("https://evil.example/phish", "/"),
        ("//evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/\\evil.example", "/"),
    ] {
        let res = browse(
            &gw,
            &format!("/_portcullis/factors?rd={}", enc(rd)),
            &login.cookie(),
            "",
        )
        .await;
        assert_eq!(res.status(), 200, "{rd}");
        let html = res.text().await.unwrap();
        assert_eq!(href_of(&html, "back-to-app").replace("&amp;", "&"), want, "{rd}");
        assert!(html.contains("id=\"sign-out\""), "{html}");
        assert!(html.contains("action=\"/_portcullis/logout\""));
    }
    // Its own host in an absolute URL becomes a path (same scheme and port).
    let own = gw.url("/app/");
    let html = browse(
        &gw,
        &format!("/_portcullis/factors?rd={}", enc(&own)),
        &login.cookie(),
        "",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(href_of(&html, "back-to-app"), "/app/");
}

/// The TOTP enrollment page for `/secure/`: its HTML, the secret it shows
/// and the code for it now.
async fn totp_enrollment(gw: &TestGateway, login: &Login) -> (String, String, String) {
    let html = browse(gw, "/_portcullis/enroll?rd=/secure/", &login.cookie(), "")
        .await
        .text()
        .await
        .unwrap();
    let marker = "data-secret=\"";
    let start = html.find(marker).unwrap() + marker.len();
    let secret = html[start..start + html[start..].find('"').unwrap()].to_owned();
    let seed = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, &secret).unwrap();
    let cfg = TotpConfig {
        enabled: true,
        issuer: "Portcullis".into(),
        digits: 6,
        period: 30,
        algorithm: TotpAlgorithm::Sha1,
        skew: 1,
    };
    let code = portcullis::factors::totp::code_at(&cfg, &seed, gw.clock.now());
    (html, secret, code)
}

/// Posts the enrollment page's activation form with `code`.
async fn activate(gw: &TestGateway, login: &Login, html: &str, code: &str) -> reqwest::Response {
    gw.client()
        .post(gw.url("/_portcullis/enroll/activate"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("csrf", &csrf_field(html)),
            ("rd", "/secure/"),
            ("factor", &field(html, "factor")),
            ("code", code),
        ]))
        .send()
        .await
        .unwrap()
}

/// A sign-in whose sessions were ended elsewhere a moment ago (another
/// replica, an administrator; this gateway's view has not heard of it, as
/// `revocation_check` is long) cannot finish enrolling a factor in the
/// portal: the factor would outlive the ended session.
#[tokio::test]
async fn enrollment_asks_the_store_whether_the_session_was_ended_elsewhere() {
    let gw = TestGateway::start(
        "[factors.totp]\nenabled = true\n\n[factors.recovery_codes]\nenabled = true\n\n\
         [session]\nrevocation_check = \"120s\"\n\n\
         [[rules]]\npath = \"^/secure(/|$)\"\npolicy = \"two_factor\"\n",
    )
    .await;
    let login = gw.login_rd(ALICE.username, ALICE.password, "/secure/").await;
    let (html, _, code) = totp_enrollment(&gw, &login).await;
    // Another replica ends alice's sessions: only the store knows.
    let store = gw.gateway.state().store.clone();
    let uid = TestGateway::uid("alice");
    store.bump_epoch(&uid).await.unwrap();
    let res = activate(&gw, &login, &html, &code).await;
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()
            .get("set-cookie")
            .is_none_or(|c| !c.to_str().unwrap().starts_with("portcullis_session=v1."))
    );
    let factors = store.list_factors(&uid).await.unwrap();
    assert!(
        factors
            .iter()
            .all(|f| f.status != portcullis::store::FactorStatus::Active),
        "a factor was activated: {factors:?}"
    );
    // The gateway learned of it on the way: the session is over here too.
    let after = browse(&gw, "/secure/", &login.cookie(), "").await;
    let to = after
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        to.contains("/_portcullis/login"),
        "a session still good here goes to the second factor: {to}"
    );
}

#[tokio::test]
async fn enrollment_offers_an_otpauth_link_and_recovery_codes_to_copy_and_download() {
    let gw = TestGateway::start(
        "[factors.totp]\nenabled = true\n\n[factors.recovery_codes]\nenabled = true\n\n\
         [[rules]]\npath = \"^/secure(/|$)\"\npolicy = \"two_factor\"\n",
    )
    .await;
    let login = gw.login_rd(ALICE.username, ALICE.password, "/secure/").await;
    let (html, secret, code) = totp_enrollment(&gw, &login).await;
    let link = href_of(&html, "otpauth-link").replace("&amp;", "&");
    assert!(link.starts_with("otpauth://totp/"), "{link}");
    assert!(link.contains(&format!("secret={secret}")), "{link}");
    let res = activate(&gw, &login, &html, &code).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("<ul id=\"recovery-codes\">"), "{page}");
    let codes: Vec<&str> = page
        .split("<li><code>")
        .skip(1)
        .map(|s| &s[..s.find("</code>").unwrap()])
        .collect();
    assert!(codes.len() >= 5, "{page}");
    // Copy needs the script (hidden until it runs); download works without it.
    assert!(page.contains("id=\"copy-codes\""), "{page}");
    let download = href_of(&page, "download-codes");
    assert!(
        download.starts_with("data:text/plain;charset=utf-8,"),
        "{download}"
    );
    assert!(
        download.contains(&codes[0].replace('-', "%2D")),
        "{download} {codes:?}"
    );
    assert!(page.contains("download=\"recovery-codes.txt\""));
    assert!(page.contains("<script src=\"/_portcullis/static/codes.js\"></script>"));
    assert!(
        !page.contains("<script>") && !page.contains("style=\""),
        "no inline script or style"
    );
    let js = browse(&gw, "/_portcullis/static/codes.js", "", "").await;
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text().await.unwrap().contains("clipboard"));
}

#[tokio::test]
async fn pages_follow_accept_language_with_q_values() {
    let gw = TestGateway::start("").await;
    for (lang, want, html_lang) in [
        ("de-DE,de;q=0.9,en;q=0.8", "Anmelden", "de"),
        ("en;q=0.4, fr-CH;q=0.9", "Se connecter", "fr"),
        ("ja, de;q=0", "Sign in", "en"),
        ("", "Sign in", "en"),
    ] {
        let res = browse(&gw, "/_portcullis/login", "", lang).await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["vary"]
                .to_str()
                .unwrap()
                .contains("Accept-Language")
        );
        let html = res.text().await.unwrap();
        assert!(html.contains(&format!("<h1>{want}</h1>")), "{lang}: {html}");
        assert!(html.contains(&format!("<html lang=\"{html_lang}\">")), "{lang}");
    }
    // A wrong password, in German.
    let client = gw.client();
    let csrf = gw.login_page(&client, "/").await;
    let res = gw
        .post_login(
            &client,
            &csrf,
            "alice",
            "wrong",
            "/",
            &[("accept-language", "de")],
        )
        .await;
    assert_eq!(res.status(), 401);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Benutzername oder Passwort ist falsch.")
    );
    // The 404 page too.
    let html = browse(&gw, "/_portcullis/nothing-here", "", "fr")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("Page introuvable"), "{html}");
}

#[tokio::test]
async fn branding_is_applied_without_inline_style() {
    let gw = TestGateway::start(
        "[portal]\ntitle = \"Acme Corp\"\nlogo_url = \"https://cdn.example.com/acme.svg\"\naccent_color = \"#0A7F3C\"\n",
    )
    .await;
    let res = browse(&gw, "/_portcullis/login", "", "de").await;
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("img-src 'self' data: https://cdn.example.com;"),
        "{csp}"
    );
    assert!(csp.contains("style-src 'self';"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(
        html.contains("<h1>Acme Corp</h1>"),
        "a custom title is not translated: {html}"
    );
    assert!(
        html.contains("src=\"https://cdn.example.com/acme.svg\""),
        "{html}"
    );
    assert!(html.contains("href=\"/_portcullis/static/brand.css\""), "{html}");
    assert!(!html.contains("style=\""), "{html}");
    let css = browse(&gw, "/_portcullis/static/brand.css", "", "").await;
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(css.text().await.unwrap(), ":root{--accent:#0a7f3c}\n");
    let main = browse(&gw, "/_portcullis/static/portal.css", "", "")
        .await
        .text()
        .await
        .unwrap();
    assert!(main.contains("var(--accent)"));
}

#[test]
fn bad_branding_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_file()).unwrap();
    for (extra, key) in [
        ("logo_url = \"http://cdn.example.com/l.svg\"", "portal.logo_url:"),
        ("logo_url = \"javascript:alert(1)\"", "portal.logo_url:"),
        (
            "accent_color = \"red; background:url(x)\"",
            "portal.accent_color:",
        ),
        ("accent_color = \"#12345\"", "portal.accent_color:"),
    ] {
        let text = config_text(&format!("[portal]\n{extra}\n"), "http://127.0.0.1:9", dir.path());
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = portcullis_command(&["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{extra}: {stderr}");
        assert!(
            stderr.lines().any(|l| l.contains(key)),
            "{key} missing from:\n{stderr}"
        );
    }
}
