//! The admin console over real HTTP: who gets in (no session, a non-member,
//! one factor, two), the users list and search, a user's page, the changes
//! (reset one factor or all, unlock, sign out everywhere, new recovery
//! codes, create and remove API users), each audited with the administrator
//! as actor; a stale second factor steps up first and comes back; a
//! cross-site or token-less post is refused; the events page and filters.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portcullis::clock::Clock as _;
use portcullis::config::{TotpAlgorithm, TotpConfig};
use serde_json::{Value, json};

use crate::support::*;

/// RFC 6238's SHA-1 seed, provisioned by the users file for the administrator.
const SEED: &[u8] = b"12345678901234567890";
const SEED_B32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const PASSWORD: &str = "console-tr0ub4dor-3";
const TOKEN: &str = "test-admin-token-0123456789abcdef";
const CONSOLE: &str = "/_portcullis/console";

/// carol: helpdesk (the console's group); dave: staff with a factor; erin:
/// staff, no provisioned factor (the helpdesk's caller).
fn users_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let hash = toml_str(&portcullis::passwords::hash_password(PASSWORD.as_bytes()).unwrap());
        std::fs::write(
            dir.path().join("users.toml"),
            format!(
                r#"[[users]]
username = "carol"
password = {hash}
display_name = "Carol Helpdesk"
email = "carol@example.com"
groups = ["helpdesk"]
totp = {{ secret = "{SEED_B32}" }}

[[users]]
username = "dave"
password = {hash}
email = "dave@example.com"
groups = ["staff"]
totp = {{ secret = "{SEED_B32}" }}

[[users]]
username = "erin"
password = {hash}
display_name = "Erin Caller"
email = "erin.caller@example.org"
groups = ["staff"]
"#
            ),
        )
        .unwrap();
        dir
    })
}

/// Audit events of this test's thread. Not the binary's global audit layer:
/// that one hands every event of the process to every gateway's store, and
/// other tests here measure their store. This one is the thread's default
/// subscriber (the gateway under test runs on the test's single-threaded
/// runtime), and [`flush`] writes what it caught to one gateway's store.
type Caught = std::sync::Arc<std::sync::Mutex<Vec<portcullis::audit::RawEvent>>>;

thread_local! {
    static CAUGHT: std::cell::RefCell<Option<Caught>> = const { std::cell::RefCell::new(None) };
}

struct Catch(Caught);

#[derive(Default)]
struct Fields(std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Catch {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != portcullis::audit::TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        #[allow(clippy::disallowed_methods)] // audit events carry the wall clock
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        self.0.lock().unwrap().push(portcullis::audit::RawEvent {
            at_ms: i64::try_from(at_ms).unwrap(),
            fields: fields.0,
        });
    }
}

/// Catches this thread's audit events from now on (once per test thread).
fn catch_audit_events() {
    CAUGHT.with(|c| {
        if c.borrow().is_some() {
            return;
        }
        use tracing_subscriber::layer::SubscriberExt as _;
        let caught = Caught::default();
        let subscriber = tracing_subscriber::registry().with(Catch(caught.clone()));
        // For the rest of this test's thread.
        std::mem::forget(tracing::subscriber::set_default(subscriber));
        *c.borrow_mut() = Some(caught);
    });
}

/// Writes the audit events caught so far to `gw`'s store.
async fn flush(gw: &TestGateway) {
    let events: Vec<_> = CAUGHT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|caught| std::mem::take(&mut *caught.lock().unwrap()))
            .unwrap_or_default()
    });
    let records: Vec<_> = events.iter().map(portcullis::audit::to_record).collect();
    gw.gateway
        .state()
        .store
        .insert_audit_events(&records)
        .await
        .unwrap();
}

async fn start_with(admin: &str) -> TestGateway {
    catch_audit_events();
    let users = users_dir().path().join("users.toml");
    TestGateway::start(&format!(
        r#"
[admin]
{admin}

[users]
file = {users}

[factors.totp]
enabled = true

[factors.recovery_codes]
enabled = true

[[rules]]
path = "^/secure(/|$)"
policy = "two_factor"
"#,
        users = toml_str(&users.display().to_string()),
    ))
    .await
}

async fn start() -> TestGateway {
    start_with(r#"console_groups = ["helpdesk"]"#).await
}

fn code(gw: &TestGateway) -> String {
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

/// A browser's answer: status, `Location`, body, headers.
struct Page {
    status: u16,
    location: String,
    body: String,
    headers: reqwest::header::HeaderMap,
}

async fn page(res: reqwest::Response) -> Page {
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let headers = res.headers().clone();
    Page {
        status,
        location,
        headers,
        body: res.text().await.unwrap(),
    }
}

async fn browse(gw: &TestGateway, path: &str, cookie: &str) -> Page {
    let mut req = gw.client().get(gw.url(path)).header("accept", "text/html");
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    page(req.send().await.unwrap()).await
}

/// Posts a console form the way a browser on the console page does.
async fn submit(gw: &TestGateway, path: &str, admin: &Login, fields: &[(&str, &str)]) -> Page {
    submit_with(
        gw,
        path,
        admin,
        &admin.csrf,
        fields,
        &[("sec-fetch-site", "same-origin")],
    )
    .await
}

async fn submit_with(
    gw: &TestGateway,
    path: &str,
    admin: &Login,
    csrf: &str,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Page {
    let mut pairs = vec![("csrf", csrf)];
    pairs.extend_from_slice(fields);
    let mut req = gw
        .client()
        .post(gw.url(path))
        .header("accept", "text/html")
        .header("cookie", admin.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&pairs));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    page(req.send().await.unwrap()).await
}

/// Answers the portal's second-factor challenge for `rd` with carol's or
/// dave's provisioned factor; returns the upgraded sign-in and where it went.
async fn second_factor(gw: &TestGateway, login: &Login, username: &str, rd: &str) -> (Login, String) {
    let challenge = browse(
        gw,
        &format!("/_portcullis/mfa?fresh=1&rd={}", enc(rd)),
        &login.cookie(),
    )
    .await;
    assert_eq!(challenge.status, 200, "{}", challenge.body);
    let factor = portcullis::factors::config_factor_id(&TestGateway::uid(username));
    let fields = [
        ("csrf", login.csrf.clone()),
        ("rd", rd.to_owned()),
        ("fresh", "1".to_owned()),
        ("factor", factor),
        ("code", code(gw)),
    ];
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = gw
        .client()
        .post(gw.url("/_portcullis/mfa/verify"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&pairs))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "the code was accepted");
    let (session, header) = set_cookie(&res, "portcullis_session").expect("an upgraded session");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    // The code's time step is used up: the next one is fresh.
    gw.clock.advance(30);
    (
        Login {
            session,
            csrf: login.csrf.clone(),
            set_cookie: header,
            location: location.clone(),
        },
        location,
    )
}

/// A two-factor sign-in of `username` (carol or dave) that started at the console.
async fn two_factor(gw: &TestGateway, username: &str) -> Login {
    let rd = format!("{CONSOLE}/");
    let one = gw.login_rd(username, PASSWORD, &rd).await;
    let (two, location) = second_factor(gw, &one, username, &rd).await;
    assert_eq!(location, rd);
    two
}

async fn admin_api(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = gw
        .client()
        .request(method, gw.admin_url(path))
        .header("authorization", format!("SSWS {TOKEN}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Enrolls and activates a TOTP factor for `uid` through the admin API.
async fn stored_totp(gw: &TestGateway, uid: &str) -> String {
    let (status, e) = admin_api(
        gw,
        reqwest::Method::POST,
        &format!("/api/v1/users/{uid}/factors"),
        Some(json!({ "factorType": "token:software:totp", "provider": "GOOGLE" })),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let fid = e["id"].as_str().unwrap().to_owned();
    let shared = e["_embedded"]["activation"]["sharedSecret"].as_str().unwrap();
    let secret = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, shared).unwrap();
    let cfg = gw.gateway.state().config.factors.totp.clone();
    let code = portcullis::factors::totp::code_at(&cfg, &secret, gw.clock.now());
    let (status, a) = admin_api(
        gw,
        reqwest::Method::POST,
        &format!("/api/v1/users/{uid}/factors/{fid}/lifecycle/activate"),
        Some(json!({ "passCode": code })),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    fid
}

/// The authn API's status for a password sign-in of erin.
async fn erin_signs_in(gw: &TestGateway) -> String {
    let res = gw
        .client()
        .post(gw.url("/_portcullis/api/v1/authn"))
        .json(&json!({ "username": "erin", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

/// Audit events (System Log objects) matching `q` once `pred` holds for one.
async fn audited(gw: &TestGateway, q: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        flush(gw).await;
        let (status, events) = admin_api(
            gw,
            reqwest::Method::GET,
            &format!("/api/v1/logs?limit=1000&q={}", enc(q)),
            None,
        )
        .await;
        assert_eq!(status, 200);
        if let Some(e) = events.as_array().unwrap().iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such audit event about {q}: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_carol(e: &Value) -> bool {
    e["actor"]["type"] == "User" && e["actor"]["alternateId"] == "carol"
}

fn erin_path() -> String {
    format!("{CONSOLE}/users/{}", TestGateway::uid("erin"))
}

#[tokio::test]
async fn only_two_factor_members_get_in() {
    let gw = start().await;
    // No session: to the sign-in page, coming back to the console (302, as
    // on any protected route); a client that is no browser gets 401.
    let p = browse(&gw, &format!("{CONSOLE}/"), "").await;
    assert_eq!(p.status, 302);
    assert_eq!(
        p.location,
        format!("/_portcullis/login?rd={}", enc(&format!("{CONSOLE}/")))
    );
    let res = gw
        .client()
        .get(gw.url(&format!("{CONSOLE}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    assert!(res.text().await.unwrap().contains("E0000011"));
    // Bare /console goes to /console/.
    let p = browse(&gw, CONSOLE, "").await;
    assert_eq!((p.status, p.location.as_str()), (303, "/_portcullis/console/"));

    // A member with the password only: to the second-factor challenge.
    let one = gw.login_rd("carol", PASSWORD, &format!("{CONSOLE}/")).await;
    let p = browse(&gw, &format!("{CONSOLE}/"), &one.cookie()).await;
    assert_eq!(p.status, 302);
    assert_eq!(
        p.location,
        format!("/_portcullis/mfa?fresh=1&rd={}", enc(&format!("{CONSOLE}/")))
    );

    // A non-member, even with two factors: 403, an HTML page.
    let dave = two_factor(&gw, "dave").await;
    for path in [format!("{CONSOLE}/"), erin_path(), format!("{CONSOLE}/events")] {
        let p = browse(&gw, &path, &dave.cookie()).await;
        assert_eq!(p.status, 403, "{path}");
        assert!(
            p.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(p.body.contains("Access denied"), "{}", p.body);
        assert!(!p.body.contains("erin"), "nothing about users leaks");
    }
    let p = submit(&gw, &format!("{}/revoke", erin_path()), &dave, &[]).await;
    assert_eq!(p.status, 403);

    // The member with two factors: the users, with their source.
    let carol = two_factor(&gw, "carol").await;
    let p = browse(&gw, &format!("{CONSOLE}/"), &carol.cookie()).await;
    assert_eq!(p.status, 200, "{}", p.body);
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(p.headers[name], value, "{name}");
    }
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
    for login in ["carol", "dave", "erin"] {
        assert!(p.body.contains(&format!(">{login}</a>")), "{login}: {}", p.body);
    }
    assert!(p.body.contains("<td>users file</td>"));
    assert!(p.body.contains("/_portcullis/console/static/console.css"));
    let css = browse(&gw, "/_portcullis/console/static/console.css", "").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // Search by name, by e-mail; nothing found.
    let p = browse(&gw, &format!("{CONSOLE}/?q=Caller"), &carol.cookie()).await;
    assert!(
        p.body.contains(">erin</a>") && !p.body.contains(">dave</a>"),
        "{}",
        p.body
    );
    let p = browse(&gw, &format!("{CONSOLE}/?q=DAVE%40example"), &carol.cookie()).await;
    assert!(p.body.contains(">dave</a>") && !p.body.contains(">erin</a>"));
    let p = browse(&gw, &format!("{CONSOLE}/?q=%3Cscript%3E"), &carol.cookie()).await;
    assert!(p.body.contains("No user matches") && p.body.contains("value=\"&lt;script&gt;\""));

    // A user's page: profile, groups, factors, lockout, codes, sign-ins.
    let p = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert_eq!(p.status, 200, "{}", p.body);
    for text in [
        "erin.caller@example.org",
        "Erin Caller",
        "<span class=\"badge\">staff</span>",
        "id=\"no-factors\"",
        "Not locked",
        "id=\"codes-left\">0<",
        "keeps no list of open sessions",
        "id=\"revoke\"",
        "name=\"csrf\"",
    ] {
        assert!(p.body.contains(text), "{text}: {}", p.body);
    }
    let p = browse(&gw, &format!("{CONSOLE}/users/00uNobody"), &carol.cookie()).await;
    assert_eq!(p.status, 404);

    // Without `admin.console_groups`, nobody gets in.
    let closed = start_with("").await;
    let carol = two_factor(&closed, "carol").await;
    assert_eq!(
        browse(&closed, &format!("{CONSOLE}/"), &carol.cookie())
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn resetting_the_last_factor_makes_the_user_enroll_again() {
    let gw = start().await;
    let uid = TestGateway::uid("erin");
    let fid = stored_totp(&gw, &uid).await;
    gw.clock.advance(30);
    assert_eq!(erin_signs_in(&gw).await, "MFA_REQUIRED");
    let erin = gw.login_rd("erin", PASSWORD, "/").await;
    assert_eq!(gw.status("/other", Some(&erin.cookie())).await, 200);

    let carol = two_factor(&gw, "carol").await;
    let p = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert!(p.body.contains(&format!("id=\"reset-{fid}\"")), "{}", p.body);
    assert!(p.body.contains("badge ok\">active"));
    assert!(p.body.contains("id=\"reset-all\""));

    // A factor of another user, or one that does not exist: nothing changes.
    let p = submit(
        &gw,
        &format!("{}/reset", erin_path()),
        &carol,
        &[("factor", "uftNoSuchFactor00000")],
    )
    .await;
    assert_eq!(p.status, 409, "{}", p.body);
    // Carol's own factor is provisioned by the users file: read-only.
    let carol_factor = portcullis::factors::config_factor_id(&TestGateway::uid("carol"));
    let p = submit(
        &gw,
        &format!("{CONSOLE}/users/{}/reset", TestGateway::uid("carol")),
        &carol,
        &[("factor", &carol_factor)],
    )
    .await;
    assert_eq!(p.status, 409);
    assert!(p.body.contains("users file"), "{}", p.body);

    let p = submit(
        &gw,
        &format!("{}/reset", erin_path()),
        &carol,
        &[("factor", &fid)],
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location, format!("{}?done=reset", erin_path()));
    let p = browse(&gw, &p.location, &carol.cookie()).await;
    assert!(p.body.contains("id=\"notice\""), "{}", p.body);
    assert!(p.body.contains("id=\"no-factors\""));

    // The user's sessions ended, and the next sign-in asks to enroll.
    assert_eq!(
        gw.wait_status("/other", &erin.cookie(), 401, Duration::from_secs(5))
            .await,
        401
    );
    assert_eq!(erin_signs_in(&gw).await, "MFA_ENROLL");

    // Audited with the administrator as actor, the user as target.
    let e = audited(&gw, "erin", |e| {
        e["eventType"] == "user.mfa.factor.reset_all" && by_carol(e)
    })
    .await;
    assert_eq!(e["target"][0]["alternateId"], "erin");
    audited(&gw, "erin", |e| {
        e["eventType"] == "user.mfa.factor.deactivate" && by_carol(e)
    })
    .await;
    // The same operation as the API: the API sees no factor either.
    let (status, list) = admin_api(
        &gw,
        reqwest::Method::GET,
        &format!("/api/v1/users/{uid}/factors"),
        None,
    )
    .await;
    assert_eq!((status, list), (200, json!([])));
}

#[tokio::test]
async fn reset_all_unlock_revoke_and_new_recovery_codes() {
    let gw = start().await;
    let st = gw.gateway.state().clone();
    let uid = TestGateway::uid("erin");
    stored_totp(&gw, &uid).await;
    gw.clock.advance(30);
    stored_totp(&gw, &uid).await;
    let carol = two_factor(&gw, "carol").await;

    // Reset all.
    let p = submit(&gw, &format!("{}/reset", erin_path()), &carol, &[]).await;
    assert_eq!(
        (p.status, p.location.clone()),
        (303, format!("{}?done=reset-all", erin_path()))
    );
    let (_, list) = admin_api(
        &gw,
        reqwest::Method::GET,
        &format!("/api/v1/users/{uid}/factors"),
        None,
    )
    .await;
    assert_eq!(list, json!([]));

    // Unlock.
    for _ in 0..10 {
        st.regulator
            .factor_failed(&uid, "192.0.2.1".parse().unwrap())
            .await
            .unwrap();
    }
    assert!(st.regulator.user_locked(&uid).await.unwrap().is_some());
    let p = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert!(p.body.contains("badge bad\">Locked"), "{}", p.body);
    assert!(p.body.contains("id=\"unlock\""));
    let p = submit(&gw, &format!("{}/unlock", erin_path()), &carol, &[]).await;
    assert_eq!(p.location, format!("{}?done=unlocked", erin_path()));
    assert!(st.regulator.user_locked(&uid).await.unwrap().is_none());
    let p = submit(&gw, &format!("{}/unlock", erin_path()), &carol, &[]).await;
    assert_eq!(p.location, format!("{}?done=not-locked", erin_path()));
    audited(&gw, "erin", |e| {
        e["eventType"] == "user.account.unlock_by_admin" && by_carol(e)
    })
    .await;

    // Sign out everywhere.
    let erin = gw.login_rd("erin", PASSWORD, "/").await;
    assert_eq!(gw.status("/other", Some(&erin.cookie())).await, 200);
    let p = submit(&gw, &format!("{}/revoke", erin_path()), &carol, &[]).await;
    assert_eq!(p.location, format!("{}?done=revoked", erin_path()));
    assert_eq!(
        gw.wait_status("/other", &erin.cookie(), 401, Duration::from_secs(5))
            .await,
        401
    );
    audited(&gw, "erin", |e| {
        e["eventType"] == "user.session.clear" && by_carol(e)
    })
    .await;

    // New recovery codes, shown once on the answer.
    let p = submit(&gw, &format!("{}/recovery-codes", erin_path()), &carol, &[]).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.headers["cache-control"], "no-store");
    let shown = p.body.matches("<li><code>").count();
    assert_eq!(shown, st.config.factors.recovery_codes.count as usize);
    assert_eq!(st.store.recovery_codes_left(&uid).await.unwrap() as usize, shown);
    let again = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert!(again.body.contains(&format!("id=\"codes-left\">{shown}<")));
    assert!(
        !again.body.contains("<li><code>"),
        "the codes are not shown again"
    );
    audited(&gw, "erin", |e| {
        e["debugContext"]["debugData"]["portcullisEvent"] == "admin.recovery_codes.generated" && by_carol(e)
    })
    .await;
}

#[tokio::test]
async fn a_stale_second_factor_steps_up_first_and_comes_back() {
    let gw = start().await;
    let uid = TestGateway::uid("erin");
    stored_totp(&gw, &uid).await;
    let carol = two_factor(&gw, "carol").await;
    gw.clock.advance(16 * 60);
    // Reading is fine, with a word about what a change will ask.
    let p = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("ask for your second factor again"), "{}", p.body);
    // A change is sent to step up, and nothing changes.
    let p = submit(&gw, &format!("{}/reset", erin_path()), &carol, &[]).await;
    assert_eq!(p.status, 303);
    let rd = erin_path();
    assert_eq!(p.location, format!("/_portcullis/mfa?fresh=1&rd={}", enc(&rd)));
    assert_eq!(erin_signs_in(&gw).await, "MFA_REQUIRED", "not reset");
    // The step-up comes back to the user's page; then the change goes through.
    let (fresh, location) = second_factor(&gw, &carol, "carol", &rd).await;
    assert_eq!(location, rd);
    let p = submit(&gw, &format!("{}/reset", erin_path()), &fresh, &[]).await;
    assert_eq!(p.location, format!("{}?done=reset-all", erin_path()));
    assert_eq!(erin_signs_in(&gw).await, "MFA_ENROLL");

    // A shorter console_max_age is honoured.
    let strict = start_with("console_groups = [\"helpdesk\"]\nconsole_max_age = \"1m\"").await;
    let carol = two_factor(&strict, "carol").await;
    strict.clock.advance(90);
    let p = submit(&strict, &format!("{}/revoke", erin_path()), &carol, &[]).await;
    assert!(
        p.location.starts_with("/_portcullis/mfa?fresh=1&rd="),
        "{}",
        p.location
    );
}

#[tokio::test]
async fn cross_site_and_tokenless_posts_are_refused() {
    let gw = start().await;
    let uid = TestGateway::uid("erin");
    stored_totp(&gw, &uid).await;
    let carol = two_factor(&gw, "carol").await;
    let path = format!("{}/reset", erin_path());
    let refusals: [(&str, Vec<(&str, &str)>); 4] = [
        // A page of another site posting with the victim's cookies.
        (
            carol.csrf.as_str(),
            vec![
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
        ),
        (carol.csrf.as_str(), vec![("origin", "https://evil.example")]),
        // No token, or one that is not the cookie's.
        ("", vec![("sec-fetch-site", "same-origin")]),
        ("forged.token", vec![("sec-fetch-site", "same-origin")]),
    ];
    for (csrf, headers) in refusals {
        let p = submit_with(&gw, &path, &carol, csrf, &[], &headers).await;
        assert_eq!(p.status, 403, "{headers:?}: {}", p.body);
        assert!(p.body.contains("Change refused"));
    }
    assert_eq!(erin_signs_in(&gw).await, "MFA_REQUIRED", "nothing was reset");
    // The same post from the console itself goes through.
    let p = submit(&gw, &path, &carol, &[]).await;
    assert_eq!(p.status, 303);
}

#[tokio::test]
async fn api_users_are_created_and_removed() {
    let gw = start().await;
    let carol = two_factor(&gw, "carol").await;
    let p = browse(&gw, &format!("{CONSOLE}/new-user"), &carol.cookie()).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("id=\"create\""));
    let login = format!("frank-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let fields = [
        ("login", login.as_str()),
        ("email", "frank@example.com"),
        ("first_name", "Frank"),
        ("last_name", ""),
        ("groups", "staff, helpdesk-trainee"),
        ("password", "frank-long-password"),
    ];
    // Invalid values come back with what is wrong (the password is never echoed).
    let mut bad = fields;
    bad[0] = ("login", "has space");
    bad[5] = ("password", "short");
    let p = submit(&gw, &format!("{CONSOLE}/users"), &carol, &bad).await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("login: must not contain spaces"), "{}", p.body);
    assert!(p.body.contains("at least 8 characters"));
    assert!(!p.body.contains("value=\"short\""));
    // A login another source has.
    let mut taken = fields;
    taken[0] = ("login", "erin");
    let p = submit(&gw, &format!("{CONSOLE}/users"), &carol, &taken).await;
    assert_eq!(p.status, 409);
    assert!(p.body.contains("already exists"), "{}", p.body);

    let p = submit(&gw, &format!("{CONSOLE}/users"), &carol, &fields).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location.ends_with("?done=created"), "{}", p.location);
    let (status, u) = admin_api(&gw, reqwest::Method::GET, &format!("/api/v1/users/{login}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(u["profile"]["groups"], json!(["staff", "helpdesk-trainee"]));
    let id = u["id"].as_str().unwrap().to_owned();
    let detail = browse(&gw, &p.location, &carol.cookie()).await;
    assert!(detail.body.contains("id=\"source\">API<"), "{}", detail.body);
    assert!(detail.body.contains("id=\"delete\""));
    let list = browse(&gw, &format!("{CONSOLE}/?q={login}"), &carol.cookie()).await;
    assert!(list.body.contains("<td>API</td>"));
    // The new user signs in with the password set here.
    gw.login_rd(&login, "frank-long-password", "/").await;
    audited(&gw, &login, |e| {
        e["eventType"] == "user.lifecycle.create" && by_carol(e)
    })
    .await;

    // Users-file users cannot be removed here.
    let erin = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert!(!erin.body.contains("id=\"delete\""));
    let p = submit(&gw, &format!("{}/delete", erin_path()), &carol, &[]).await;
    assert_eq!(p.status, 409);

    let p = submit(&gw, &format!("{CONSOLE}/users/{id}/delete"), &carol, &[]).await;
    assert_eq!(
        (p.status, p.location.as_str()),
        (303, "/_portcullis/console/?deleted=1")
    );
    let (status, _) = admin_api(&gw, reqwest::Method::GET, &format!("/api/v1/users/{id}"), None).await;
    assert_eq!(status, 404);
    audited(&gw, &login, |e| {
        e["eventType"] == "user.lifecycle.delete.completed" && by_carol(e)
    })
    .await;
}

#[tokio::test]
async fn the_events_page_lists_and_filters_the_audit_log() {
    let gw = start().await;
    let uid = TestGateway::uid("erin");
    let st = gw.gateway.state().clone();
    for _ in 0..10 {
        st.regulator
            .factor_failed(&uid, "192.0.2.1".parse().unwrap())
            .await
            .unwrap();
    }
    let carol = two_factor(&gw, "carol").await;
    let p = submit(&gw, &format!("{}/unlock", erin_path()), &carol, &[]).await;
    assert_eq!(p.status, 303);
    audited(&gw, "erin", |e| {
        e["eventType"] == "user.account.unlock_by_admin" && by_carol(e)
    })
    .await;

    let p = browse(&gw, &format!("{CONSOLE}/events?q=erin"), &carol.cookie()).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("Unlock user account by admin"), "{}", p.body);
    assert!(
        p.body.contains(&format!("href=\"{}\"", erin_path())),
        "targets link to the user"
    );
    // Filters: by kind and by result.
    let p = browse(
        &gw,
        &format!("{CONSOLE}/events?q=erin&kind=signin"),
        &carol.cookie(),
    )
    .await;
    assert!(!p.body.contains("Unlock user account by admin"));
    let p = browse(
        &gw,
        &format!("{CONSOLE}/events?q=erin&kind=lockout&result=SUCCESS&period=1h"),
        &carol.cookie(),
    )
    .await;
    assert!(p.body.contains("Unlock user account by admin"));
    assert!(p.body.contains("<option value=\"lockout\" selected>"));
    let p = browse(
        &gw,
        &format!("{CONSOLE}/events?q=erin&result=DENY"),
        &carol.cookie(),
    )
    .await;
    assert!(!p.body.contains("Unlock user account by admin"));
    // Unknown filter values are "all", never an error.
    let p = browse(
        &gw,
        &format!("{CONSOLE}/events?kind=%3Cx%3E&before=nope"),
        &carol.cookie(),
    )
    .await;
    assert_eq!(p.status, 200);
    // The user's page shows the latest events about them.
    let p = browse(&gw, &erin_path(), &carol.cookie()).await;
    assert!(p.body.contains("Unlock user account by admin"), "{}", p.body);
}

/// Sessions ended on another replica a moment ago (this gateway's view
/// has not heard of it: `revocation_check` is long) change nothing: not new
/// recovery codes on the portal's factors page, not a console reset in the
/// administrator's name. The gateway asks the store first.
#[tokio::test]
async fn a_session_ended_elsewhere_changes_nothing() {
    let gw = start_with("console_groups = [\"helpdesk\"]\n\n[session]\nrevocation_check = \"120s\"\n").await;
    let uid = TestGateway::uid("erin");
    stored_totp(&gw, &uid).await;
    let store = gw.gateway.state().store.clone();
    let carol_id = TestGateway::uid("carol");

    // The portal: new recovery codes.
    let carol = two_factor(&gw, "carol").await;
    store.bump_epoch(&carol_id).await.unwrap();
    let p = submit(&gw, "/_portcullis/factors/recovery", &carol, &[]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location.contains("/login?"), "{}", p.location);
    assert!(!p.body.contains("recovery-codes"), "{}", p.body);

    // The console: a reset of erin's factors.
    let carol = two_factor(&gw, "carol").await;
    store.bump_epoch(&carol_id).await.unwrap();
    let p = submit(&gw, &format!("{}/reset", erin_path()), &carol, &[]).await;
    assert_eq!(p.status, 303);
    assert!(p.location.contains("/login?"), "{}", p.location);
    let (_, list) = admin_api(
        &gw,
        reqwest::Method::GET,
        &format!("/api/v1/users/{uid}/factors"),
        None,
    )
    .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}
