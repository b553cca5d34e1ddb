//! `GET /api/v1/logs`: audit events of a real sign-in story (a wrong
//! password, a good one with TOTP, a lockout by wrong codes, an admin
//! unlock) read back in Okta's System Log shape, with since/until/q/limit
//! and Link paging, on SQLite and (when `PORTCULLIS_TEST_POSTGRES_URL` is
//! set) PostgreSQL.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{FACTORS, TOKEN, active_totp, admin, create_user, level2, send, totp};
use crate::support::TestGateway;

const EXTRA: &str = "[regulation]\nmax_factor_failures = 2\n";

/// The audit layer as `telemetry::init` installs it in the binary (without
/// the formatter: the test output stays quiet).
fn audit_layer() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let _ = tracing_subscriber::registry()
            .with(portcullis::audit::AuditLayer)
            .try_init();
    });
}

/// A login no other test uses (events of every gateway in this process
/// reach every store; the tests filter by their own user).
fn unique_login(tag: &str) -> String {
    format!("{tag}-{:08x}@example.com", rand::random::<u32>())
}

async fn logs(gw: &TestGateway, query: &str) -> crate::common::Answer {
    send(
        gw.client()
            .get(gw.admin_url(&format!("/api/v1/logs{query}")))
            .header("Authorization", format!("SSWS {TOKEN}")),
    )
    .await
}

/// Events about `login` once at least `want` are there (the writer is
/// asynchronous).
/// The events naming `login`, once the story's last event (`last`) is among
/// them: events reach the store through a queue, so a count alone can be met
/// before the last one is written.
async fn events_of(gw: &TestGateway, login: &str, last: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = logs(gw, &format!("?limit=1000&q={}", crate::support::enc(login))).await;
        a.expect(200, None);
        let events = a.body.as_array().unwrap().clone();
        if events.iter().any(|e| e["eventType"] == last) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn link(a: &crate::common::Answer, rel: &str) -> Option<String> {
    a.all("link").into_iter().find_map(|l| {
        let (url, r) = l.split_once(">; rel=")?;
        (r.trim_matches('"') == rel).then(|| url.trim_start_matches('<').to_owned())
    })
}

/// The story, then every check; `gw` is on the store under test.
async fn story(gw: TestGateway) {
    let login = unique_login("logs");
    let password = "Correct-Horse-Battery-42";
    let user = create_user(&gw, &login, Some(password)).await;
    let uid = user["id"].as_str().unwrap().to_owned();

    // A wrong password, then the right one with a TOTP code.
    let wrong = send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/authn"))
            .json(&json!({ "username": login, "password": "Wrong-Password-Guess-1" })),
    )
    .await;
    wrong.expect(401, Some("E0000004"));
    let (fid, secret) = active_totp(&gw, &uid).await;
    let code = totp(&gw, &secret, 0);
    level2(&gw, &login, password, &fid, &secret).await;
    // Locked by wrong codes, then unlocked by an administrator.
    for _ in 0..2 {
        admin(
            &gw,
            Method::POST,
            &format!("/api/v1/users/{uid}/factors/{fid}/verify"),
            Some(json!({ "passCode": "000000" })),
        )
        .await
        .expect(403, Some("E0000068"));
    }
    admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/lifecycle/unlock"),
        None,
    )
    .await
    .expect(200, None);

    // In order, with the right types, outcomes, actors and client.
    let events = events_of(&gw, &login, "user.account.unlock_by_admin").await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap().to_owned(),
                e["outcome"]["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("user.lifecycle.create", "SUCCESS"),
        ("user.authentication.verify", "FAILURE"),
        ("user.mfa.factor.activate", "SUCCESS"),
        ("user.authentication.verify", "SUCCESS"),
        ("user.session.start", "SUCCESS"),
        ("user.authentication.auth_via_mfa", "SUCCESS"),
        ("user.authentication.auth_via_mfa", "FAILURE"),
        ("user.authentication.auth_via_mfa", "FAILURE"),
        ("user.account.lock", "SUCCESS"),
        ("user.account.unlock_by_admin", "SUCCESS"),
    ];
    let mut rest = summary.iter();
    for (t, r) in want {
        assert!(
            rest.any(|(et, res)| et == t && res == r),
            "{t}/{r} missing or out of order in {summary:#?}"
        );
    }
    let find = |t: &str, r: &str| {
        events
            .iter()
            .find(|e| e["eventType"] == t && e["outcome"]["result"] == r)
            .unwrap()
    };
    let failed = find("user.authentication.verify", "FAILURE");
    assert_eq!(failed["actor"]["alternateId"], login.as_str());
    assert_eq!(failed["actor"]["type"], "User");
    assert_eq!(failed["client"]["ipAddress"], "127.0.0.1");
    assert_eq!(failed["outcome"]["reason"], "wrong password");
    assert_eq!(failed["severity"], "WARN");
    let mfa = find("user.authentication.auth_via_mfa", "SUCCESS");
    assert_eq!(mfa["client"]["ipAddress"], "127.0.0.1");
    assert!(mfa["displayMessage"].as_str().is_some_and(|m| !m.is_empty()));
    let unlock = find("user.account.unlock_by_admin", "SUCCESS");
    assert_eq!(unlock["actor"]["type"], "ApiToken");
    assert_eq!(unlock["actor"]["id"], "admin-token-0");
    assert_eq!(unlock["target"][0]["alternateId"], login.as_str());
    assert_eq!(unlock["target"][0]["id"], uid.as_str());
    for e in &events {
        assert_eq!(e["uuid"].as_str().unwrap().len(), 36, "{e}");
        assert!(portcullis::audit::parse_rfc3339_ms(e["published"].as_str().unwrap()).is_some());
    }
    let published: Vec<i64> = events
        .iter()
        .map(|e| portcullis::audit::parse_rfc3339_ms(e["published"].as_str().unwrap()).unwrap())
        .collect();
    assert!(published.windows(2).all(|w| w[0] <= w[1]), "ascending by default");

    // The answers are what the OpenAPI document says.
    let doc = crate::openapi::document(&gw).await;
    let page = logs(&gw, "?limit=1000").await;
    crate::openapi::check(&doc, "GET", "/api/v1/logs", 200, &page.body);
    let bad = logs(&gw, "?since=yesterday").await;
    crate::openapi::check(&doc, "GET", "/api/v1/logs", 400, &bad.body);

    // Nothing secret anywhere: not the password, the wrong one, the code or
    // the TOTP secret, nor the admin token.
    let all = logs(&gw, "?limit=1000").await;
    for secret_text in [
        password,
        "Wrong-Password-Guess-1",
        code.as_str(),
        secret.as_str(),
        TOKEN,
    ] {
        assert!(!all.text.contains(secret_text), "{secret_text} in the log API");
    }

    // q is case-insensitive; since/until bound by publication time.
    let upper = logs(
        &gw,
        &format!("?limit=1000&q={}", crate::support::enc(&login.to_uppercase())),
    )
    .await;
    assert_eq!(upper.body.as_array().unwrap().len(), events.len());
    let lock_at = find("user.account.lock", "SUCCESS")["published"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = logs(
        &gw,
        &format!(
            "?limit=1000&q={}&since={}",
            crate::support::enc(&login),
            crate::support::enc(&lock_at)
        ),
    )
    .await;
    let since = since.body.as_array().unwrap();
    assert!(!since.is_empty() && since.len() < events.len());
    assert!(
        since
            .iter()
            .any(|e| e["eventType"] == "user.account.unlock_by_admin")
    );
    assert!(!since.iter().any(|e| e["eventType"] == "user.lifecycle.create"));
    let until = logs(
        &gw,
        &format!(
            "?limit=1000&q={}&until={}",
            crate::support::enc(&login),
            crate::support::enc(&lock_at)
        ),
    )
    .await;
    let until = until.body.as_array().unwrap();
    assert_eq!(until.len() + since.len(), events.len());
    assert!(!until.iter().any(|e| e["eventType"] == "user.account.lock"));

    // limit, and paging with Link next until exhausted, in both orders.
    for (order, reversed) in [("ASCENDING", false), ("DESCENDING", true)] {
        let mut url = Some(format!(
            "?limit=3&sortOrder={order}&q={}",
            crate::support::enc(&login)
        ));
        let mut seen = Vec::new();
        let mut pages = 0;
        while let Some(q) = url.take() {
            let page = logs(&gw, &q).await;
            page.expect(200, None);
            assert!(link(&page, "self").is_some(), "{:?}", page.headers);
            let items = page.body.as_array().unwrap();
            assert!(items.len() <= 3);
            seen.extend(items.iter().map(|e| e["uuid"].clone()));
            pages += 1;
            url = link(&page, "next").map(|next| {
                let base = gw.admin_url("/api/v1/logs");
                next.strip_prefix(&base).unwrap().to_owned()
            });
            assert!(pages < 20);
        }
        let mut want: Vec<Value> = events.iter().map(|e| e["uuid"].clone()).collect();
        if reversed {
            want.reverse();
        }
        assert_eq!(seen, want, "{order}");
        assert_eq!(pages, events.len().div_ceil(3));
    }

    // Bad parameters are 400 E0000001 naming them; no token is 401.
    for (q, name) in [
        ("?since=yesterday", "since"),
        ("?until=2026-13-40T00:00:00Z", "until"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?sortOrder=SIDEWAYS", "sortOrder"),
        ("?after=%21%21", "after"),
    ] {
        let a = logs(&gw, q).await;
        a.expect(400, Some("E0000001"));
        assert!(a.text.contains(name), "{q}: {}", a.text);
    }
    let anonymous = send(gw.client().get(gw.admin_url("/api/v1/logs"))).await;
    anonymous.expect(401, Some("E0000011"));
    let wrong = send(
        gw.client()
            .get(gw.admin_url("/api/v1/logs"))
            .header("Authorization", "SSWS not-the-token"),
    )
    .await;
    wrong.expect(401, Some("E0000011"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_lockout_and_unlock_are_in_the_system_log_on_sqlite() {
    audit_layer();
    let gw = TestGateway::builder()
        .toml(&format!(
            "{FACTORS}\n{EXTRA}\n[store]\nkind = \"sqlite\"\npath = \"{{tmp}}/portcullis.db\"\n"
        ))
        .start()
        .await;
    story(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_lockout_and_unlock_are_in_the_system_log_on_postgres() {
    let Some(url) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "SKIPPED sign_in_lockout_and_unlock_are_in_the_system_log_on_postgres: PORTCULLIS_TEST_POSTGRES_URL not set"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs PostgreSQL"
        );
        return;
    };
    audit_layer();
    let schema = format!("t_{:016x}", rand::random::<u64>());
    let store = portcullis::store::postgres::PostgresStore::connect_with_schema(&url, &schema)
        .await
        .unwrap();
    let gw = TestGateway::builder()
        .toml(&format!("{FACTORS}\n{EXTRA}"))
        .store(Arc::new(store))
        .start()
        .await;
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(story(gw))).await;
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
