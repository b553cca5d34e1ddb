//! Resetting factors: an administrator may remove a user's last factor (the
//! helpdesk's "lost phone", through the API or `portcullis users
//! reset-factors`); the user's sessions end and they enroll again at the next
//! sign-in. The user themselves keeps their last factor.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Answer, active_totp, admin, create_user, gateway, level2, send};
use crate::support::{ALICE, TestGateway};

/// The authn API's answer to a password sign-in.
async fn authn(gw: &TestGateway, login: &str, password: &str) -> Answer {
    let a = send(
        gw.client()
            .post(gw.url("/_portcullis/api/v1/authn"))
            .json(&json!({ "username": login, "password": password })),
    )
    .await;
    a.expect(200, None);
    a
}

#[tokio::test]
async fn an_admin_removes_the_last_factor_the_user_cannot() {
    let gw = gateway("").await;
    let uid = TestGateway::uid("alice");
    let (fid, secret) = active_totp(&gw, &uid).await;
    let csrf = gw.login(ALICE).await.csrf.clone();
    let session = level2(&gw, "alice", ALICE.password, &fid, &secret).await;
    let cookies = format!("portcullis_session={session}; portcullis_csrf={csrf}");
    assert_eq!(gw.status("/secure/x", Some(&cookies)).await, 200);

    // Self-service keeps the last factor, even with a fresh second factor.
    let own = send(
        gw.client()
            .delete(gw.url(&format!("/_portcullis/api/v1/users/me/factors/{fid}")))
            .header("cookie", &cookies)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/json"),
    )
    .await;
    own.expect(403, Some("E0000006"));
    assert!(own.text.contains("last active factor"), "{}", own.text);

    // The administrator may: 204, the session ends, the user enrolls again.
    admin(
        &gw,
        Method::DELETE,
        &format!("/api/v1/users/{uid}/factors/{fid}"),
        None,
    )
    .await
    .expect(204, None);
    assert_eq!(
        gw.wait_status("/secure/x", &cookies, 401, Duration::from_secs(5))
            .await,
        401,
        "the old session is refused"
    );
    let a = authn(&gw, "alice", ALICE.password).await;
    assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);

    // Okta's lifecycle/reset_factors removes every factor, the last included.
    let (_, _) = active_totp(&gw, &uid).await;
    let (_, _) = active_totp(&gw, &uid).await;
    let r = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{uid}/lifecycle/reset_factors"),
        None,
    )
    .await;
    r.expect(200, None);
    let list = admin(&gw, Method::GET, &format!("/api/v1/users/{uid}/factors"), None).await;
    list.expect(200, None);
    assert_eq!(list.body, Value::Array(vec![]), "{}", list.text);
    admin(
        &gw,
        Method::POST,
        "/api/v1/users/nobody/lifecycle/reset_factors",
        None,
    )
    .await
    .expect(404, Some("E0000007"));
}

#[tokio::test]
async fn cli_reset_factors_ends_sessions_and_the_user_enrolls_again() {
    let gw = gateway("[store]\nkind = \"sqlite\"\npath = \"{tmp}/portcullis.db\"\n").await;
    let user = create_user(&gw, "erin", Some("erin-password-1")).await;
    let uid = user["id"].as_str().unwrap().to_owned();
    let (fid, secret) = active_totp(&gw, &uid).await;
    let session = level2(&gw, "erin", "erin-password-1", &fid, &secret).await;
    let cookie = format!("portcullis_session={session}");
    assert_eq!(gw.status("/secure/x", Some(&cookie)).await, 200);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &gw.config_text).unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(&args)
                .arg("--config")
                .arg(&config)
                .env_remove("PORTCULLIS_CONFIG")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    // An unknown factor id: exit 2.
    let (code, _, err) = run(vec![
        "users".into(),
        "reset-factors".into(),
        "erin".into(),
        "--factor".into(),
        "nope".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) = run(vec!["users".into(), "reset-factors".into(), "erin".into()])
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("erin: 1 factor(s) removed"), "{out}");
    assert!(
        err.lines()
            .any(|l| l.contains("user.factors.reset") && l.contains("cli")),
        "an audit line names the actor: {err}"
    );
    // The running gateway refuses the old session (the epoch moved in the store).
    assert_eq!(
        gw.wait_status("/secure/x", &cookie, 401, Duration::from_secs(8))
            .await,
        401,
        "the old session is refused"
    );
    let a = authn(&gw, "erin", "erin-password-1").await;
    assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);
    let (code, out, _) = run(vec!["users".into(), "show".into(), "erin".into()])
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains("0 active factor(s)"), "{out}");
}
