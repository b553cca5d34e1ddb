//! The session cookie over the wire: tampering, idle timeout, lifetime,
//! sliding refresh, logout, revocation by epoch, and a second replica.

use std::time::Duration;

use serde_json::Value;

use crate::support::{ALICE, Login, TestGateway, set_cookie};

/// A short revocation check, so tests see other replicas' changes quickly;
/// not shorter: a loaded machine can delay a refresh by a few hundred
/// milliseconds, and a view older than this answers 503 (fail closed).
const FAST_REVOCATION: &str = "[session]\nrevocation_check = \"1s\"\n";

fn assert_clears_cookie(res: &reqwest::Response) {
    let (value, header) = set_cookie(res, "portcullis_session").expect("the cookie is cleared");
    assert_eq!(value, "");
    assert!(header.contains("Max-Age=0"), "{header}");
}

/// GETs `/private` as an API client; returns the response.
async fn private(gw: &TestGateway, session: &str) -> reqwest::Response {
    gw.get_json("/private", Some(&format!("portcullis_session={session}")))
        .await
}

#[tokio::test]
async fn tampered_cookies_are_challenged_and_cleared() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    assert_eq!(private(&gw, &login.session).await.status(), 200);

    let (signed, tag) = login.session.rsplit_once('.').unwrap();
    let flip = |s: &str, i: usize| {
        let mut c: Vec<char> = s.chars().collect();
        c[i] = if c[i] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    let (version, payload) = signed.split_once('.').unwrap();
    for forged in [
        format!("{signed}.{}", flip(tag, 0)),
        format!("{signed}.{}", flip(tag, tag.len() - 2)),
        format!("{version}.{}.{tag}", flip(payload, payload.len() / 2)),
        format!("{signed}."),
        "v1.e30.AAAA".to_owned(),
        "garbage".to_owned(),
    ] {
        let res = private(&gw, &forged).await;
        assert_eq!(res.status(), 401, "{forged}");
        assert_clears_cookie(&res);
        let res = gw
            .client()
            .get(gw.url("/private"))
            .header("accept", "text/html")
            .header("cookie", format!("portcullis_session={forged}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302, "{forged}");
        assert_clears_cookie(&res);
    }
    // The genuine cookie still works.
    assert_eq!(private(&gw, &login.session).await.status(), 200);
}

#[tokio::test]
async fn idle_sessions_expire() {
    let gw = TestGateway::start("[session]\nidle_timeout = \"10m\"\n").await;
    let login = gw.login(ALICE).await;
    gw.clock.advance(10 * 60 - 1);
    assert_eq!(private(&gw, &login.session).await.status(), 200);
    gw.clock.advance(1);
    let res = private(&gw, &login.session).await;
    assert_eq!(res.status(), 401, "idle for idle_timeout");
    assert_clears_cookie(&res);
}

#[tokio::test]
async fn sessions_end_at_their_lifetime_despite_activity() {
    let gw = TestGateway::start("[session]\nlifetime = \"10m\"\nidle_timeout = \"5m\"\n").await;
    let login = gw.login(ALICE).await;
    let mut session = login.session.clone();
    for _ in 0..2 {
        gw.clock.advance(4 * 60);
        let res = private(&gw, &session).await;
        assert_eq!(res.status(), 200);
        session = set_cookie(&res, "portcullis_session")
            .expect("re-issued after a minute of activity")
            .0;
    }
    // 8 minutes in, active 0 s ago; at 10 minutes the lifetime is over.
    gw.clock.advance(2 * 60);
    let res = private(&gw, &session).await;
    assert_eq!(res.status(), 401, "past the lifetime");
    assert_clears_cookie(&res);
}

#[tokio::test]
async fn activity_slides_the_idle_timeout() {
    let gw = TestGateway::start("[session]\nidle_timeout = \"10m\"\n").await;
    let login = gw.login(ALICE).await;
    gw.clock.advance(30);
    let res = private(&gw, &login.session).await;
    assert_eq!(res.status(), 200);
    assert!(set_cookie(&res, "portcullis_session").is_none(), "not yet");
    assert_eq!(
        res.headers().get("cache-control"),
        None,
        "the app's answer as it was"
    );

    gw.clock.advance(31);
    let res = private(&gw, &login.session).await;
    assert_eq!(res.status(), 200);
    let (fresh, header) = set_cookie(&res, "portcullis_session").expect("re-issued after 61 s");
    assert_ne!(fresh, login.session);
    assert!(header.contains(&format!("Max-Age={}", 8 * 3600 - 61)), "{header}");
    assert!(header.contains("HttpOnly"), "{header}");
    // An answer that carries a session cookie is for this browser only.
    assert_eq!(res.headers()["cache-control"], "private");
    // The old cookie keeps working within its idle timeout.
    assert_eq!(private(&gw, &login.session).await.status(), 200);

    // 10m30s after sign-in: the old cookie is idle, the re-issued one is not.
    gw.clock.advance(10 * 60 + 30 - 61);
    assert_eq!(private(&gw, &login.session).await.status(), 401);
    assert_eq!(private(&gw, &fresh).await.status(), 200);
}

async fn logout_form(gw: &TestGateway, login: &Login, csrf_field: &str) -> reqwest::Response {
    gw.client()
        .post(gw.url("/_portcullis/logout"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::support::form(&[("csrf", csrf_field)]))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn logout_form_revokes_the_session() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;

    let res = logout_form(&gw, &login, "wrong-token").await;
    assert_eq!(res.status(), 403, "logout needs the CSRF token");
    assert_eq!(private(&gw, &login.session).await.status(), 200);

    let res = logout_form(&gw, &login, &login.csrf).await;
    assert_eq!(res.status(), 200);
    assert_clears_cookie(&res);
    // Replaying the old cookie value does not bring the session back.
    let res = private(&gw, &login.session).await;
    assert_eq!(res.status(), 401);
    let res = gw
        .get_json("/_portcullis/api/v1/sessions/me", Some(&login.cookie()))
        .await;
    assert_eq!(res.status(), 404);

    // Other sessions of the same user live on.
    let other = gw.login(ALICE).await;
    assert_eq!(private(&gw, &other.session).await.status(), 200);
}

#[tokio::test]
async fn logout_api_revokes_the_session() {
    let gw = TestGateway::start("").await;
    let login = gw.login(ALICE).await;
    let res = gw
        .get_json("/_portcullis/api/v1/sessions/me", Some(&login.cookie()))
        .await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["login"], "alice");
    assert_eq!(me["status"], "ACTIVE");

    let url = gw.url("/_portcullis/api/v1/sessions/me");
    let res = gw
        .client()
        .delete(&url)
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415, "DELETE needs a JSON content type");
    assert_eq!(private(&gw, &login.session).await.status(), 200);

    let res = gw
        .client()
        .delete(&url)
        .header("cookie", login.cookie())
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "cross-site logout refused");
    assert_eq!(private(&gw, &login.session).await.status(), 200);

    let res = gw
        .client()
        .delete(&url)
        .header("cookie", login.cookie())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_clears_cookie(&res);
    assert_eq!(private(&gw, &login.session).await.status(), 401);
}

#[tokio::test]
async fn bumping_the_epoch_revokes_every_session_of_the_user() {
    let gw = TestGateway::start(FAST_REVOCATION).await;
    let first = gw.login(ALICE).await;
    let second = gw.login(ALICE).await;
    let bob = gw.login(crate::support::BOB).await;
    assert_eq!(private(&gw, &first.session).await.status(), 200);

    // Written to the store directly, as another replica or the admin API would.
    let epoch = gw
        .gateway
        .state()
        .store
        .bump_epoch(&TestGateway::uid("alice"))
        .await
        .unwrap();
    assert_eq!(epoch, 1);
    for login in [&first, &second] {
        let got = gw
            .wait_status("/private", &login.session_cookie(), 401, Duration::from_secs(5))
            .await;
        assert_eq!(got, 401, "revoked within revocation_check");
    }
    assert_eq!(
        private(&gw, &bob.session).await.status(),
        200,
        "bob is not affected"
    );
    // A new sign-in carries the new epoch.
    let again = gw.login(ALICE).await;
    assert_eq!(private(&gw, &again.session).await.status(), 200);
}

#[tokio::test]
async fn a_second_replica_on_the_same_store_sees_a_logout() {
    let one = TestGateway::start(FAST_REVOCATION).await;
    let two = TestGateway::builder()
        .toml(FAST_REVOCATION)
        .store(one.gateway.state().store.clone())
        .clock(one.clock.clone())
        .start()
        .await;
    let login = one.login(ALICE).await;
    // The same secrets: either replica accepts the cookie.
    assert_eq!(private(&two, &login.session).await.status(), 200);

    let res = one
        .client()
        .delete(one.url("/_portcullis/api/v1/sessions/me"))
        .header("cookie", login.cookie())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        private(&one, &login.session).await.status(),
        401,
        "at once on the replica that did it"
    );
    let got = two
        .wait_status("/private", &login.session_cookie(), 401, Duration::from_secs(5))
        .await;
    assert_eq!(got, 401, "the other replica within revocation_check");

    // A session issued by the second replica works on the first.
    let other = two.login(ALICE).await;
    assert_eq!(private(&one, &other.session).await.status(), 200);
}

#[tokio::test]
async fn a_stale_revocation_view_fails_closed() {
    let gw = TestGateway::start(FAST_REVOCATION).await;
    let login = gw.login(ALICE).await;
    assert_eq!(private(&gw, &login.session).await.status(), 200);
    let ready = gw.client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Without its refresher the view cannot know about revocations made
    // elsewhere: once older than revocation_check it must not be trusted.
    gw.gateway.stop();
    let got = gw
        .wait_status("/private", &login.session_cookie(), 503, Duration::from_secs(5))
        .await;
    assert_eq!(got, 503, "protected routes fail closed");
    let res = gw
        .client()
        .get(gw.url("/private"))
        .header("accept", "text/html")
        .header("cookie", login.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "browsers too, never forwarded");
    assert_eq!(
        gw.status("/public/x", None).await,
        200,
        "bypass does not need the view"
    );
    let ready = gw.client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

/// The users file with alice's password hash replaced by one of `password`.
fn users_with_alice_password(password: &str) -> String {
    let text = crate::support::users_file();
    let start = text.find("$argon2").expect("alice's hash comes first");
    let end = start + text[start..].find('"').unwrap();
    let hash = portcullis::passwords::hash_password(password.as_bytes()).unwrap();
    format!("{}{hash}{}", &text[..start], &text[end..])
}

#[tokio::test]
async fn a_password_changed_in_the_users_file_ends_old_sessions_at_restart() {
    // Four gateways poll one store here: at 400ms a loaded machine (a CI run
    // beside other builds) could miss a refresh and see 503 (fail closed).
    const CHECK: &str = "[session]\nrevocation_check = \"2s\"\n";
    let one = TestGateway::start(CHECK).await;
    let alice = one.login(ALICE).await;
    let bob = one.login(crate::support::BOB).await;
    let store = one.gateway.state().store.clone();
    let restart = |users: Option<String>| {
        let b = TestGateway::builder()
            .toml(CHECK)
            .store(store.clone())
            .clock(one.clock.clone());
        async move {
            match users {
                Some(u) => b.users(&u).start().await,
                None => b.start().await,
            }
        }
    };
    // Restarted with the same file: sessions carry on.
    let same = restart(None).await;
    assert_eq!(private(&same, &alice.session).await.status(), 200);

    // Restarted with a new hash for alice: her old sessions end (on the new
    // process at once, on a replica still running within revocation_check);
    // bob's do not.
    let new_users = users_with_alice_password("alice-new-passphrase");
    let changed = restart(Some(new_users.clone())).await;
    let res = private(&changed, &alice.session).await;
    assert_eq!(res.status(), 401, "the old password's session ended");
    assert_clears_cookie(&res);
    assert_eq!(private(&changed, &bob.session).await.status(), 200);
    let got = one
        .wait_status("/private", &alice.session_cookie(), 401, Duration::from_secs(6))
        .await;
    assert_eq!(got, 401, "the other replica within revocation_check");
    // The new password signs in, and restarting again with it changes nothing.
    let fresh = changed
        .login(crate::support::TestUser {
            password: "alice-new-passphrase",
            ..ALICE
        })
        .await;
    assert_eq!(private(&changed, &fresh.session).await.status(), 200);
    let again = restart(Some(new_users)).await;
    assert_eq!(private(&again, &fresh.session).await.status(), 200);
    assert_eq!(private(&again, &bob.session).await.status(), 200);
}
