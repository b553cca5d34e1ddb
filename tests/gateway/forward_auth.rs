//! Forward-auth (SPEC section 11) through the REAL front proxies the README's
//! recipes are for: nginx (`auth_request`) and Caddy (`forward_auth`), as
//! Debian packages them. Each recipe is read from README.md and run exactly as
//! printed, only its documented placeholders (ports) replaced, inside a
//! minimal wrapper (nginx's `http {}`, Caddy's global options) that keeps every
//! file in a temporary folder.
//!
//! Through the front proxy: an anonymous browser is sent to the portal and
//! comes back to the original URL after signing in with TOTP; an API client
//! gets 401; a signed-in user reaches the app with identity headers (and is
//! stepped up on a `max_age` route once the second factor is old); spoofed
//! identity headers never arrive (any case, `_` spellings); hostile paths never
//! reach a protected place (checked against the path the app received, read by
//! a small table of our own, not the gateway's code); a password-only session
//! is refused on a two-factor route; group rules give 403; signing out ends
//! access. Directly: an untrusted peer is refused, garbage original URLs get
//! 400. A missing server prints `SKIPPED forward_auth <server>: ...`; with
//! `CI=true` that is a failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{TotpAlgorithm, TotpConfig};
use reqwest::cookie::CookieStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::front::{APP, AUTH, Front, start_caddy, start_nginx, try_raw};
use crate::support::*;

/// RFC 6238's SHA-1 seed, provisioned for alice and bob by the users file.
const SEED: &[u8] = b"12345678901234567890";
const SEED_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const ALICE_PASSWORD: &str = "alice-forward-auth-0451";
const BOB_PASSWORD: &str = "bob-forward-auth-0451";

const RULES: &str = r#"
default_policy = "one_factor"
case_insensitive_paths = true

[server]
trusted_proxies = ["127.0.0.1/32"]

[forward_auth]
enabled = true

[factors.totp]
enabled = true

[[rules]]
path = "^/public/"
policy = "bypass"

[[rules]]
path = "^/denied(/|$)"
policy = "deny"

[[rules]]
path = "^/admin(/|$)"
policy = "one_factor"
groups = ["admins"]

[[rules]]
path = "^/two(/|$)"
policy = "two_factor"

[[rules]]
path = "^/fresh(/|$)"
policy = "two_factor"
max_age = "1m"

[[rules]]
hosts = ["app.example.com"]
path = "^/hostonly(/|$)"
policy = "two_factor"
"#;

fn users() -> String {
    let hash = |p: &str| toml_str(&portcullis::passwords::hash_password(p.as_bytes()).unwrap());
    format!(
        "[[users]]\nusername = \"alice\"\npassword = {}\ndisplay_name = \"Alice Zoë\"\nemail = \"alice@example.com\"\ngroups = [\"admins\", \"dev\"]\ntotp = {{ secret = \"{SEED_B32}\" }}\n\n\
         [[users]]\nusername = \"bob\"\npassword = {}\ngroups = [\"staff\"]\ntotp = {{ secret = \"{SEED_B32}\" }}\n",
        hash(ALICE_PASSWORD),
        hash(BOB_PASSWORD),
    )
}

/// The rules above with `extra` merged over them (tables key by key).
async fn gateway(extra: &str) -> TestGateway {
    let mut base: toml::Table = toml::from_str(RULES).unwrap();
    let over: toml::Table = toml::from_str(extra).unwrap();
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => b.extend(o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    TestGateway::builder()
        .toml(&toml::to_string(&base).unwrap())
        .users(&users())
        .start()
        .await
}

// ---- the recipes and the servers --------------------------------------------

// ---- clients -----------------------------------------------------------------

/// A browser: a cookie jar, no redirects followed, the recipe's host names
/// resolved to the front proxy.
struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    fn new(front: &Front) -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .resolve(APP, front.addr())
            .resolve(AUTH, front.addr())
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap();
        Self { client, jar }
    }

    /// The `Cookie` header the jar sends to `url`.
    fn cookies(&self, url: &str) -> String {
        self.jar
            .cookies(&url.parse().unwrap())
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    async fn page(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .header("accept", "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap()
    }

    async fn api(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(url).header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn post_form(&self, url: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
        let origin = {
            let u = url::Url::parse(url).unwrap();
            u.origin().ascii_serialization()
        };
        self.client
            .post(url)
            .header("accept", "text/html")
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .unwrap()
    }
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in {res:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `location` made absolute against `base` (a URL).
fn absolute(base: &str, location: &str) -> String {
    url::Url::parse(base).unwrap().join(location).unwrap().to_string()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

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

/// Follows a challenge from `original` through the portal: the password,
/// then, if the portal asks, the TOTP code. Returns where the portal finally
/// sent the browser. `portal` is the origin the challenge must point to.
async fn sign_in(
    gw: &TestGateway,
    browser: &Browser,
    original: &str,
    portal: &str,
    username: &str,
    password: &str,
) -> String {
    let res = browser.page(original).await;
    assert_eq!(
        res.status(),
        302,
        "an anonymous browser at {original} is redirected"
    );
    let login = location(&res);
    assert!(
        login.starts_with(&format!("{portal}/_portcullis/login?rd=")),
        "to the portal's sign-in page: {login}"
    );
    assert_eq!(
        query_param(&login, "rd").as_deref(),
        Some(original),
        "rd is the original URL"
    );
    let page = browser.page(&login).await;
    assert_eq!(page.status(), 200, "the sign-in page through the front proxy");
    let csrf = csrf_field(&page.text().await.unwrap());
    let res = browser
        .post_form(
            &format!("{portal}/_portcullis/login"),
            &[
                ("csrf", &csrf),
                ("rd", original),
                ("username", username),
                ("password", password),
            ],
        )
        .await;
    assert_eq!(res.status(), 303, "the password is accepted");
    let next = absolute(&login, &location(&res));
    if !next.contains("/_portcullis/mfa") {
        return next;
    }
    let page = browser.page(&next).await;
    assert_eq!(page.status(), 200, "the second-factor page");
    let html = page.text().await.unwrap();
    // Each code is single use: move to a fresh time step.
    gw.clock.advance(30);
    let factor = portcullis::factors::config_factor_id(&TestGateway::uid(username));
    let res = browser
        .post_form(
            &format!("{portal}/_portcullis/mfa/verify"),
            &[
                ("csrf", &csrf_field(&html)),
                ("rd", original),
                ("factor", &factor),
                ("code", &totp_code(gw)),
            ],
        )
        .await;
    assert_eq!(res.status(), 303, "the TOTP code is accepted");
    absolute(&next, &location(&res))
}

async fn echo_of(res: reqwest::Response) -> Echo {
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "the app answers: {body}");
    Echo(serde_json::from_str(&body).unwrap_or_else(|e| panic!("not the app's answer ({e}): {body}")))
}

/// Identity headers spelt every way a client might try, and httpoxy's `Proxy`
/// (which the recipes clear).
const SPOOFED: [(&str, &str); 9] = [
    ("Proxy", "http://mallory.example:3128"),
    ("Remote-User", "mallory"),
    ("remote-user", "mallory2"),
    ("REMOTE-GROUPS", "admins"),
    ("Remote_User", "mallory3"),
    ("remote_groups", "admins"),
    ("Remote-Email", "mallory@evil.example"),
    ("Remote-Name", "Mallory"),
    ("REMOTE_NAME", "Mallory"),
];

fn assert_no_spoof(echo: &Echo) {
    for name in echo.names() {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        assert_ne!(
            folded, "proxy",
            "a client's Proxy header reached the app (httpoxy)"
        );
        if folded.starts_with("remote-") {
            for value in echo.header_all(&name) {
                assert!(
                    !value.contains("mallory") && !value.contains("Mallory") && value != "admins",
                    "a spoofed {name}: {value:?} reached the app"
                );
            }
            assert!(!name.contains('_'), "{name} reached the app");
        }
    }
}

// ---- path tricks --------------------------------------------------------------

/// Request targets that spell protected paths differently (the hostile-requests
/// set, through the front proxy).
const TRICKS: [&str; 53] = [
    "/public/x",
    "/private",
    "/admin/x",
    "/ADMIN/x",
    "/Admin/x",
    "/admin",
    "/admin/",
    "/admin;x/x",
    "/admin;/x",
    "/;x/admin/x",
    "/admin;jsessionid=1/x",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/public/.%2e/admin/x",
    "/public%2f..%2fadmin/x",
    "/public/..%2fadmin/x",
    "/public/..%5cadmin/x",
    "//admin/x",
    "/public//../admin/x",
    "/public/..;/admin/x",
    "/public/.;/../admin/x",
    "/admin./x",
    "/admin%20/x",
    "/admin.%20/x",
    "/%61dmin/x",
    "/%2561dmin/x",
    "/admin%3bx/x",
    "/public/%c0%ae%c0%ae/admin/x",
    "/public/%252e%252e/admin/x",
    "/admin::$INDEX_ALLOCATION/x",
    "/ADMINI~1/x",
    "/two/x",
    "/TWO/x",
    "/two;jsessionid=1/x",
    "/public/../two/x",
    "/tw%6f/x",
    "/denied",
    "/denied/",
    "/DENIED",
    "/denied;x",
    "/public/../denied",
    "/public/..\\admin/x",
    "/public/x?/../../admin",
    // Away from the protected path: the front proxy forwards the path as
    // sent, and an app that resolves no dot segments, merges no slashes or
    // decodes nothing routes these by their first segment.
    "/admin/../public/x",
    "/admin//../public/x",
    "/admin/%2e%2e/public/x",
    "/admin/..",
    "/two/./../public/x",
    "/denied/../private",
    "/%70ublic/x",
    "/admin//public/x",
    "//public/x",
];

/// The strictest reading of a path an app received, by our own small rules:
/// decoded three times (overlong dots and slashes read leniently), `\` as `/`,
/// lower case, `;params` and Windows stream suffixes cut, trailing dots and
/// spaces trimmed, dot segments resolved, empty segments dropped.
fn strictest(path: &str) -> String {
    let mut s = path.to_owned();
    for _ in 0..3 {
        let lower = s.to_ascii_lowercase();
        let lenient = lower
            .replace("%c0%ae", ".")
            .replace("%e0%80%ae", ".")
            .replace("%c0%af", "/");
        s = percent_encoding::percent_decode_str(&lenient)
            .decode_utf8_lossy()
            .into_owned();
    }
    let s = s.replace('\\', "/").to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for seg in s.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        let seg = seg.split(':').next().unwrap_or("");
        let seg = if seg == "." || seg == ".." {
            seg
        } else {
            seg.trim_end_matches(['.', ' '])
        };
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    format!("/{}", out.join("/"))
}

fn under(path: &str, top: &str) -> bool {
    path == top || path.starts_with(&format!("{top}/"))
}

/// Sends every trick as `who` (a `Cookie` header or none) and returns the
/// violations: the app received a path this caller may not reach, read the
/// strictest way or as written. Also returns how many reached the app.
async fn tricks(
    front: &Front,
    cookie: Option<&str>,
    may_reach: &dyn Fn(&str) -> bool,
) -> (Vec<String>, usize) {
    let mut violations = Vec::new();
    let mut reached = 0;
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    for target in TRICKS {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {APP}:{}\r\nAccept: application/json\r\n{cookie}Connection: close\r\n\r\n",
            front.port
        );
        let Some(res) = try_raw(front.addr(), &request).await else {
            continue;
        };
        let body = if res
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            // Small bodies: the first chunk is the whole body.
            let text = res.text();
            text.split_once("\r\n")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or(text)
        } else {
            res.text()
        };
        let Some(path) = serde_json::from_str::<serde_json::Value>(body.trim_end_matches("\r\n0\r\n\r\n"))
            .ok()
            .and_then(|v| v["path"].as_str().map(str::to_owned))
        else {
            continue;
        };
        reached += 1;
        // Read the strictest way, and as written (an app that decodes,
        // resolves and merges nothing, in any case).
        for read in [strictest(&path), path.to_ascii_lowercase()] {
            if !may_reach(&read) {
                violations.push(format!(
                    "{} {target}: {} reached the app as {path:?} (read as {read})",
                    front.name, res.status
                ));
            }
        }
    }
    (violations, reached)
}

// ---- the scenario -------------------------------------------------------------

/// Everything the issue asks of a front proxy running the app-host recipe.
async fn through(gw: &TestGateway, front: &Front) {
    let app = front.origin(APP);
    let name = front.name;

    // An API client without a session: 401, the app never asked.
    let anon = Browser::new(front);
    let res = anon.api(&format!("{app}/private"), &[]).await;
    assert_eq!(res.status(), 401, "{name}: an API client without a session");
    assert!(res.text().await.unwrap().contains("E0000011"));

    // Bypass routes pass without identity, whatever the client sends.
    let echo = echo_of(anon.api(&format!("{app}/public/x"), &SPOOFED).await).await;
    assert_eq!(echo.path(), "/public/x");
    assert_no_spoof(&echo);
    assert_eq!(echo.header("remote-user"), None);

    // An anonymous browser: to the portal and back after the password and TOTP.
    let alice = Browser::new(front);
    let original = format!("{app}/two/page?x=1&y=%C3%A9");
    let back = sign_in(gw, &alice, &original, &app, "alice", ALICE_PASSWORD).await;
    assert_eq!(back, original, "{name}: back to the original URL");
    let echo = echo_of(alice.api(&back, &[]).await).await;
    assert_eq!(echo.path(), "/two/page");
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    assert_eq!(echo.header("remote-groups").as_deref(), Some("admins,dev"));
    assert_eq!(echo.header("remote-email").as_deref(), Some("alice@example.com"));
    assert_eq!(echo.header("remote-name").as_deref(), Some("Alice Zo%C3%AB"));
    // Spoofed identity headers never arrive next to the real ones.
    let echo = echo_of(alice.api(&format!("{app}/admin/x"), &SPOOFED).await).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    assert_eq!(echo.header("remote-groups").as_deref(), Some("admins,dev"));
    assert_no_spoof(&echo);

    // max_age step-up: a second factor older than a minute is sent back to
    // the challenge for that route only.
    assert_eq!(alice.api(&format!("{app}/fresh/x"), &[]).await.status(), 200);
    gw.clock.advance(120);
    let res = alice.page(&format!("{app}/fresh/x")).await;
    assert_eq!(res.status(), 302, "{name}: step-up");
    assert!(
        location(&res).starts_with(&format!("{app}/_portcullis/mfa?rd=")),
        "{name}: step-up goes to the challenge: {}",
        location(&res)
    );
    assert_eq!(alice.api(&format!("{app}/fresh/x"), &[]).await.status(), 401);
    assert_eq!(alice.api(&format!("{app}/two/page"), &[]).await.status(), 200);

    // bob: a password-only session. One-factor routes pass, two-factor routes
    // ask for the second factor, group rules and deny rules answer 403.
    let bob = Browser::new(front);
    let back = sign_in(gw, &bob, &format!("{app}/private"), &app, "bob", BOB_PASSWORD).await;
    assert_eq!(back, format!("{app}/private"));
    let echo = echo_of(bob.api(&format!("{app}/private"), &SPOOFED).await).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("bob"));
    assert_no_spoof(&echo);
    assert_eq!(
        bob.api(&format!("{app}/two/x"), &[]).await.status(),
        401,
        "{name}: level 1 on a two-factor route"
    );
    let res = bob.page(&format!("{app}/two/x")).await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with(&format!("{app}/_portcullis/mfa?rd=")),
        "{name}: straight to the second factor: {}",
        location(&res)
    );
    assert_eq!(
        bob.api(&format!("{app}/admin/x"), &[]).await.status(),
        403,
        "{name}: outside the group"
    );
    assert_eq!(bob.api(&format!("{app}/denied"), &[]).await.status(), 403);
    assert_eq!(alice.api(&format!("{app}/denied"), &[]).await.status(), 403);

    // The endpoints themselves are not reachable through the front proxy.
    let res = anon
        .api(
            &format!("{app}/_portcullis/authz/auth-request"),
            &[
                ("x-original-method", "GET"),
                ("x-original-url", "http://x/public/"),
            ],
        )
        .await;
    assert_eq!(
        res.status(),
        404,
        "{name}: clients cannot call the auth endpoints"
    );

    // Path tricks: the app never receives a path its caller may not reach.
    let bob_cookie = bob.cookies(&app);
    let (mut violations, reached_anon) = tricks(front, None, &|p| under(p, "/public")).await;
    let (more, reached_bob) = tricks(front, Some(&bob_cookie), &|p| {
        !under(p, "/admin") && !under(p, "/two") && !under(p, "/denied")
    })
    .await;
    violations.extend(more);
    assert!(violations.is_empty(), "{name}: {violations:#?}");

    // A rule for the app's host holds whatever Host a client sends beside an
    // absolute-form target (the front proxy serves the target's host).
    for host in ["other.example.net", "APP.example.com", ""] {
        let request = format!(
            "GET {app}/hostonly/x HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nCookie: {bob_cookie}\r\nConnection: close\r\n\r\n"
        );
        if let Some(res) = try_raw(front.addr(), &request).await {
            assert!(
                !res.text().contains("\"path\""),
                "{name}: Host {host:?} beside {app}/hostonly/x reached the app ({})",
                res.status
            );
        }
    }
    assert_eq!(bob.api(&format!("{app}/hostonly/x"), &[]).await.status(), 401);
    // A method spelled in lower case never reaches the app: a rule's
    // `methods` would not see it (nginx refuses it itself; behind Caddy the
    // auth call refuses the original method), while the same request in
    // upper case does.
    for (method, reaches) in [("GET", true), ("get", false), ("Delete", false)] {
        let host = app.trim_start_matches("http://");
        let request = format!(
            "{method} /public/x HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        let reached = try_raw(front.addr(), &request)
            .await
            .is_some_and(|res| res.text().contains("\"path\""));
        assert_eq!(reached, reaches, "{name}: {method} {app}/public/x");
    }
    assert!(
        reached_anon >= 1 && reached_bob >= 2,
        "{name}: the controls reach the app"
    );

    // Signing out ends access, also for a copy of the cookie kept from before.
    let alice_cookie = alice.cookies(&app);
    let factors = alice.page(&format!("{app}/_portcullis/factors")).await;
    assert_eq!(factors.status(), 200);
    let csrf = csrf_field(&factors.text().await.unwrap());
    let res = alice
        .post_form(&format!("{app}/_portcullis/logout"), &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status(), 200, "{name}: sign-out");
    assert!(res.text().await.unwrap().contains("Signed out"));
    assert_eq!(alice.page(&format!("{app}/two/page")).await.status(), 302);
    let replay = Browser::new(front);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = replay
            .api(&format!("{app}/private"), &[("cookie", &alice_cookie)])
            .await
            .status();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the old cookie still works ({status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The recipes run the gateway as README's forward-auth snippet has it: no
/// `[[upstreams]]` (the front proxy forwards to the app itself).
const NO_UPSTREAMS: &str = "upstreams = []\n";

#[tokio::test]
async fn nginx_auth_request_recipe() {
    let gw = gateway(NO_UPSTREAMS).await;
    // Asked directly, it has nothing to forward to.
    let res = reqwest::get(gw.url("/private")).await.unwrap();
    assert_eq!(res.status(), 404);
    let Some(front) = start_nginx(&["nginx"], gw.main, gw.echo, None).await else {
        return;
    };
    through(&gw, &front).await;
}

#[tokio::test]
async fn caddy_forward_auth_recipe() {
    let gw = gateway(NO_UPSTREAMS).await;
    let Some(front) = start_caddy(gw.main, gw.echo).await else {
        return;
    };
    through(&gw, &front).await;
}

/// The portal on its own host: the cookie on the parent domain, `rd` back to
/// the app's host (an allowed redirect host) after signing in with TOTP.
#[tokio::test]
async fn nginx_with_a_separate_sign_in_host() {
    let gw = gateway(&format!(
        "[session]\ndomain = \"example.com\"\n[portal]\nallowed_redirect_hosts = [\"{APP}\"]\n"
    ))
    .await;
    let Some(front) = start_nginx(&["nginx", "nginx-signin"], gw.main, gw.echo, None).await else {
        return;
    };
    // Without external_url the challenge points to the app's own host; the
    // sign-in host is reached by following an explicit link to it.
    let browser = Browser::new(&front);
    let app = front.origin(APP);
    let auth = front.origin(AUTH);
    let original = format!("{app}/two/report?q=1");
    let login = format!("{auth}/_portcullis/login?rd={}", enc(&original));
    let page = browser.page(&login).await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_field(&page.text().await.unwrap());
    let res = browser
        .post_form(
            &format!("{auth}/_portcullis/login"),
            &[
                ("csrf", &csrf),
                ("rd", &original),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let mfa = absolute(&login, &location(&res));
    assert!(mfa.starts_with(&format!("{auth}/_portcullis/mfa")), "{mfa}");
    let html = browser.page(&mfa).await.text().await.unwrap();
    gw.clock.advance(30);
    let factor = portcullis::factors::config_factor_id(&TestGateway::uid("alice"));
    let res = browser
        .post_form(
            &format!("{auth}/_portcullis/mfa/verify"),
            &[
                ("csrf", &csrf_field(&html)),
                ("rd", &original),
                ("factor", &factor),
                ("code", &totp_code(&gw)),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), original, "rd leads back to the app's host");
    let echo = echo_of(browser.api(&original, &[]).await).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
    // An rd to a host that is not allowed goes to `/` instead.
    let evil = format!("{auth}/_portcullis/login?rd={}", enc("http://evil.example.net/"));
    let res = browser.page(&evil).await;
    assert_eq!(res.status(), 303, "signed in: straight on");
    assert_eq!(location(&res), "/");
}

/// With `external_url` on the sign-in host, challenges point there, and the
/// whole round trip works with TOTP.
#[tokio::test]
async fn nginx_challenges_point_to_the_sign_in_host() {
    // nginx must know its port before Portcullis's config names it: reserve
    // one, start Portcullis, then nginx on it.
    let port = free_port();
    let gw = gateway(&format!(
        "[server]\nexternal_url = \"http://{AUTH}:{port}\"\n[session]\ndomain = \"example.com\"\n[portal]\nallowed_redirect_hosts = [\"{APP}\"]\n"
    ))
    .await;
    let Some(front) = start_nginx(&["nginx", "nginx-signin"], gw.main, gw.echo, Some(port)).await else {
        return;
    };
    let browser = Browser::new(&front);
    let original = format!("{}/two/page", front.origin(APP));
    let back = sign_in(
        &gw,
        &browser,
        &original,
        &front.origin(AUTH),
        "alice",
        ALICE_PASSWORD,
    )
    .await;
    assert_eq!(back, original);
    let echo = echo_of(browser.api(&original, &[]).await).await;
    assert_eq!(echo.header("remote-user").as_deref(), Some("alice"));
}

// ---- the endpoints, called directly ----------------------------------------------

/// A raw request from a chosen local address.
async fn raw_from(local: &str, to: SocketAddr, request: &str) -> RawResponse {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut conn = socket.connect(to).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    RawResponse {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head,
        body: buf[end + 4..].to_vec(),
    }
}

fn call(path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!("GET /_portcullis/authz/{path} HTTP/1.1\r\nHost: portcullis\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// A GET asked about through the auth-request endpoint, from a trusted peer.
async fn asked_about(gw: &TestGateway, url: &str) -> RawResponse {
    let headers = [("X-Original-Method", "GET"), ("X-Original-URL", url)];
    raw_from("127.0.0.1", gw.main, &call("auth-request", &headers)).await
}

#[tokio::test]
async fn direct_calls_untrusted_peers_and_garbage() {
    let gw = gateway("").await;
    let good = [
        ("X-Original-Method", "GET"),
        ("X-Original-URL", "http://app.example.com/public/x"),
    ];
    // A trusted peer (127.0.0.1) gets its answer; 127.0.0.2 is refused.
    let res = raw_from("127.0.0.1", gw.main, &call("auth-request", &good)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = raw_from("127.0.0.2", gw.main, &call("auth-request", &good)).await;
    assert_eq!(res.status, 403, "an untrusted peer: {}", res.text());
    let fwd = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Uri", "/public/x"),
    ];
    assert_eq!(
        raw_from("127.0.0.1", gw.main, &call("forward-auth", &fwd))
            .await
            .status,
        200
    );
    assert_eq!(
        raw_from("127.0.0.2", gw.main, &call("forward-auth", &fwd))
            .await
            .status,
        403
    );

    // `rd` is the original URL as the client sent it (the front proxy
    // forwards that, not the normal form the decision also covered).
    let original = "http://app.example.com/two/%70age?x=%41";
    let res = asked_about(&gw, original).await;
    assert_eq!(res.status, 401, "{}", res.text());
    let location = res
        .head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_else(|| panic!("no Location in {}", res.head))
        .to_owned();
    assert_eq!(
        query_param(&location, "rd").as_deref(),
        Some(original),
        "{location}"
    );

    // Garbage or hostile original URLs: 400, never 200.
    for url in [
        "",
        "garbage",
        "/public/x",
        "http:///public/x",
        "ftp://app.example.com/public/x",
        "http://user@app.example.com/public/x",
        "http://app.example.com/public/%2e%2e%2fadmin",
        "http://app.example.com/public/%252e%252e/admin",
        "http://app.example.com/public/..;/admin",
        "http://app.example.com/public/%c0%ae%c0%ae/admin",
        "http://app.example.com/public/x#frag",
        "http://app.example.com:80http://app.example.com/public/x",
        // Dot segments, which the front proxy would forward unresolved.
        "http://app.example.com/admin/../public/x",
        "http://app.example.com/admin/%2E%2e/public/x",
        "http://app.example.com/public/./x",
        "http://app.example.com/public/x/..",
    ] {
        let res = asked_about(&gw, url).await;
        assert_eq!(res.status, 400, "X-Original-URL {url:?}: {}", res.text());
    }
    for uri in [
        "",
        "public/x",
        "http://app.example.com/public/x",
        "/public/%2fx",
        "/public/..;/x",
        "/admin/../public/x",
        "/admin/.%2e/public/x",
    ] {
        let mut h = fwd.to_vec();
        h[3] = ("X-Forwarded-Uri", uri);
        let res = raw_from("127.0.0.1", gw.main, &call("forward-auth", &h)).await;
        assert_eq!(res.status, 400, "X-Forwarded-Uri {uri:?}: {}", res.text());
    }
    // Decided on the path as sent as well as on its normal form: a bypass
    // only when both are on the bypass route (an app that decodes or merges
    // nothing reads `/%70ublic/x` and `//public/x` as other routes).
    for (url, status) in [
        ("http://app.example.com/public//x", 200),
        ("http://app.example.com/PUBLIC/x", 200),
        ("http://app.example.com/%70ublic/x", 401),
        ("http://app.example.com//public/x", 401),
        ("http://app.example.com/public%2Dx/../x", 400),
        // Raw UTF-8 in the path as sent, at its end too.
        ("http://app.example.com/public/caf\u{e9}", 200),
        ("http://app.example.com/two/r\u{e9}sum\u{e9}", 401),
    ] {
        let res = asked_about(&gw, url).await;
        assert_eq!(res.status, status, "X-Original-URL {url:?}: {}", res.text());
    }
    // A WebDAV Destination is decided on as well, and must be of the host.
    for (destination, status) in [
        ("http://app.example.com/public/y", 200),
        ("http://app.example.com/two/y", 401),
        ("/two/y", 401),
        ("http://other.example/public/y", 400),
        ("http://app.example.com/public/../two/y", 400),
    ] {
        let res = raw_from(
            "127.0.0.1",
            gw.main,
            &call(
                "auth-request",
                &[
                    ("X-Original-Method", "MOVE"),
                    ("X-Original-URL", "http://app.example.com/public/x"),
                    ("Destination", destination),
                ],
            ),
        )
        .await;
        assert_eq!(res.status, status, "Destination {destination:?}: {}", res.text());
    }
    // Missing method, two URLs.
    let res = raw_from(
        "127.0.0.1",
        gw.main,
        &call(
            "auth-request",
            &[("X-Original-URL", "http://app.example.com/public/x")],
        ),
    )
    .await;
    assert_eq!(res.status, 400);
    let res = raw_from(
        "127.0.0.1",
        gw.main,
        &call(
            "auth-request",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URL", "http://app.example.com/public/x"),
                ("X-Original-URL", "http://app.example.com/admin"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, 400);

    // A challenge: auth-request 401 with Location; forward-auth 302 or 401.
    let res = raw_from(
        "127.0.0.1",
        gw.main,
        &call(
            "auth-request",
            &[
                ("X-Original-Method", "POST"),
                ("X-Original-URL", "https://app.example.com/two/x?a=b"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("location").as_deref(),
        Some(
            "https://app.example.com/_portcullis/login?rd=https%3A%2F%2Fapp%2Eexample%2Ecom%2Ftwo%2Fx%3Fa%3Db"
        )
    );
    let mut browser = fwd.to_vec();
    browser[3] = ("X-Forwarded-Uri", "/two/x");
    browser.push(("Accept", "text/html"));
    let res = raw_from("127.0.0.1", gw.main, &call("forward-auth", &browser)).await;
    assert_eq!(res.status, 302);
    assert!(
        res.header("location")
            .unwrap()
            .starts_with("https://app.example.com/_portcullis/login?rd=")
    );
    browser[0] = ("X-Forwarded-Method", "POST");
    assert_eq!(
        raw_from("127.0.0.1", gw.main, &call("forward-auth", &browser))
            .await
            .status,
        303
    );
    browser.pop();
    let res = raw_from("127.0.0.1", gw.main, &call("forward-auth", &browser)).await;
    assert_eq!(res.status, 401);
    assert!(res.header("www-authenticate").is_some());
    // HEAD answers like GET, without a body.
    let head = call("auth-request", &good).replacen("GET", "HEAD", 1);
    let res = raw_from("127.0.0.1", gw.main, &head).await;
    assert_eq!(res.status, 200);

    // Counted like inline decisions, and audited refusals are in the log.
    let metrics = gw.metrics().await;
    // Every kind of answer above under its own decision (each comes beside
    // the check's response, not in its extensions).
    for decision in ["untrusted", "bypass", "invalid", "challenge"] {
        assert!(
            metrics.contains(&format!("decision=\"{decision}\"")),
            "{decision}: {metrics}"
        );
    }
    assert!(!metrics.contains("decision=\"error\""), "{metrics}");
}

#[tokio::test]
async fn disabled_endpoints_answer_404() {
    let gw = TestGateway::builder()
        .toml("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n")
        .start()
        .await;
    let res = raw_from(
        "127.0.0.1",
        gw.main,
        &call(
            "auth-request",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URL", "http://a.example/public/x"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, 404);
}
