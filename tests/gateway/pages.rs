//! The portal's HTML pages over the wire: rendered under a custom
//! `portal.prefix` (stylesheet, scripts and forms follow it, also on the
//! pages the enforcement layer answers on application hosts), and hostile
//! user data escaped wherever a page shows it.

use crate::support::{TestGateway, csrf_field, form, set_cookie};

/// A users file with one hostile user: quotes and markup in the username,
/// a script in the display name.
const HOSTILE_LOGIN: &str = "o\"brien'<b>x</b>";
const HOSTILE_NAME: &str = "<script>alert(1)</script>";
const HOSTILE_PASSWORD: &str = "hostile-password-1";

fn hostile_users() -> String {
    let hash = portcullis::passwords::hash_password(HOSTILE_PASSWORD.as_bytes()).unwrap();
    format!(
        "[[users]]\nusername = {}\npassword = {}\ndisplay_name = {}\nemail = \"ob@example.com\"\ngroups = []\n",
        crate::support::toml_str(HOSTILE_LOGIN),
        crate::support::toml_str(&hash),
        crate::support::toml_str(HOSTILE_NAME),
    )
}

/// Every `href="..."` and `src="..."` of a page that points below `prefix`
/// (the application's root, where "back to the application" goes, aside).
fn links(page: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\"", "action=\""] {
        for (i, _) in page.match_indices(attr) {
            let start = i + attr.len();
            let end = page[start..].find('"').unwrap() + start;
            let url = &page[start..end];
            if url.starts_with('/') && url != "/" {
                assert!(
                    url.starts_with(&format!("{prefix}/")),
                    "{url} is not under {prefix}:\n{page}"
                );
                out.push(url.to_owned());
            }
        }
    }
    out
}

/// The stylesheet link of a page, asserted to be under `prefix` and to load.
async fn assert_styled(gw: &TestGateway, page: &str, prefix: &str) {
    let css = format!("{prefix}/static/portal.css");
    assert!(
        page.contains(&format!("<link rel=\"stylesheet\" href=\"{css}\">")),
        "no stylesheet under {prefix}:\n{page}"
    );
    links(page, prefix);
    let res = gw.client().get(gw.url(&css)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{css}");
    assert_eq!(res.headers()["content-type"], "text/css; charset=utf-8");
}

#[tokio::test]
async fn pages_under_a_custom_prefix_load_their_stylesheet_and_scripts() {
    let prefix = "/auth/gw";
    let gw = TestGateway::start(
        "default_policy = \"two_factor\"\n[portal]\nprefix = \"/auth/gw\"\n\
         [factors.push]\nenabled = true\ndelivery = { kind = \"log\" }\n",
    )
    .await;
    let client = gw.client();
    let html = |req: reqwest::RequestBuilder| req.header("accept", "text/html").send();

    // The login page.
    let res = html(client.get(gw.url(&format!("{prefix}/login?rd=/app"))))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (csrf, _) = set_cookie(&res, "portcullis_csrf").unwrap();
    let page = res.text().await.unwrap();
    assert_styled(&gw, &page, prefix).await;
    assert!(page.contains(&format!("action=\"{prefix}/login\"")), "{page}");
    assert_eq!(csrf_field(&page), csrf);

    // A page the enforcement layer answers on the application's host.
    let res = html(client.get(gw.url("/denied"))).await.unwrap();
    assert_eq!(res.status(), 403);
    let page = res.text().await.unwrap();
    assert!(page.contains("Access denied"), "{page}");
    assert_styled(&gw, &page, prefix).await;

    // A message page of the portal (an expired sign-out form).
    let res = html(
        client
            .post(gw.url(&format!("{prefix}/logout")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("portcullis_csrf={csrf}"))
            .body(form(&[("csrf", "forged")])),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let page = res.text().await.unwrap();
    assert!(page.contains("Sign-out failed"), "{page}");
    assert_styled(&gw, &page, prefix).await;

    // Sign in, then pair a push device: a page with the polling script.
    let res = html(
        client
            .post(gw.url(&format!("{prefix}/login")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("portcullis_csrf={csrf}"))
            .body(form(&[
                ("csrf", &csrf),
                ("rd", "/app"),
                ("username", crate::support::ALICE.username),
                ("password", crate::support::ALICE.password),
            ])),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{prefix}/mfa?rd="))
    );
    let (session, _) = set_cookie(&res, "portcullis_session").unwrap();
    let (csrf, _) = set_cookie(&res, "portcullis_csrf").unwrap();
    let cookie = format!("portcullis_session={session}; portcullis_csrf={csrf}");
    let res = html(
        client
            .get(gw.url(&format!("{prefix}/enroll?type=push&rd=/app")))
            .header("cookie", &cookie),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("Pair your device"), "{page}");
    assert_styled(&gw, &page, prefix).await;
    let script = format!("{prefix}/static/push.js");
    assert!(
        page.contains(&format!("<script src=\"{script}\"></script>")),
        "{page}"
    );
    assert!(
        page.contains(&format!("data-poll=\"{prefix}/push/status\"")),
        "{page}"
    );
    assert_eq!(csrf_field(&page), csrf, "every form carries the CSRF token");
    let res = client.get(gw.url(&script)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");

    // The account page and the factors page.
    for path in ["", "/factors"] {
        let res = html(
            client
                .get(gw.url(&format!("{prefix}{path}")))
                .header("cookie", &cookie),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let page = res.text().await.unwrap();
        assert_styled(&gw, &page, prefix).await;
        assert!(page.contains(&format!("action=\"{prefix}/logout\"")), "{page}");
    }

    // The default prefix no longer answers.
    let res = client
        .get(gw.url("/_portcullis/static/portal.css"))
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), 200);
}

#[tokio::test]
async fn hostile_user_data_is_escaped_on_every_page() {
    let gw = TestGateway::builder().users(&hostile_users()).start().await;
    let client = gw.client();
    let escaped_login = "o&quot;brien&#39;&lt;b&gt;x&lt;/b&gt;";

    // A failed sign-in shows the login back in the form.
    let csrf = gw.login_page(&client, "/").await;
    let res = gw
        .post_login(&client, &csrf, HOSTILE_LOGIN, "wrong", "/", &[])
        .await;
    assert_eq!(res.status(), 401);
    let page = res.text().await.unwrap();
    assert!(page.contains(&format!("value=\"{escaped_login}\"")), "{page}");
    assert!(!page.contains("<b>") && !page.contains("brien'"), "{page}");

    // Signed in: the account and factors pages name the user.
    let login = gw.login_rd(HOSTILE_LOGIN, HOSTILE_PASSWORD, "/").await;
    for path in ["/_portcullis", "/_portcullis/factors"] {
        let res = client
            .get(gw.url(path))
            .header("accept", "text/html")
            .header("cookie", login.cookie())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let page = res.text().await.unwrap();
        assert!(
            page.contains(&format!("<span class=\"user\">{escaped_login}</span>")),
            "{path}: {page}"
        );
        assert!(!page.contains("<b>"), "{path}: {page}");
    }

    // The demo app shows the identity headers, display name included.
    let res = client
        .get(gw.url("/app"))
        .header("accept", "text/html")
        .header("cookie", login.session_cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains(HOSTILE_NAME), "{page}");
    assert!(
        page.contains(&format!("<h1>Hello, {escaped_login}</h1>")),
        "{page}"
    );
}

/// An unknown path under the prefix: a styled HTML 404 with a way back for a
/// browser, the API's JSON `E0000007` for other clients.
#[tokio::test]
async fn unknown_portal_paths_answer_html_to_browsers_and_json_to_clients() {
    let prefix = "/auth/gw";
    let gw = TestGateway::start("[portal]\nprefix = \"/auth/gw\"\n").await;
    let client = gw.client();
    let url = gw.url(&format!("{prefix}/no-such-page"));

    let res = client
        .get(&url)
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let page = res.text().await.unwrap();
    assert!(page.contains("Page not found"), "{page}");
    assert!(page.contains(&format!("href=\"{prefix}/\"")), "{page}");
    assert_styled(&gw, &page, prefix).await;

    let res = client
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body = res.text().await.unwrap();
    assert!(body.contains("E0000007"), "{body}");
}
