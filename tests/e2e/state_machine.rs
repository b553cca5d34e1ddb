//! The authentication API's state machine refuses every out-of-order step,
//! other users' factor ids, and spent, cancelled or expired tokens. Codes come
//! from oathtool; time moves on the gateway's manual clock.

use serde_json::json;

use crate::harness::{ALICE, BOB, InProcess, have_oathtool, oathtool};

#[tokio::test]
async fn verify_is_refused_before_enrolling() {
    if !have_oathtool("verify_is_refused_before_enrolling") {
        return;
    }
    let gw = InProcess::start(10).await;
    let a = gw.authn(ALICE).await.ok("MFA_ENROLL");
    let st = a.state_token();
    // In MFA_ENROLL there is nothing to verify, not even recovery codes.
    let recovery_id =
        portcullis::portal::authn::recovery_factor_id(&portcullis::users::file_user_id("alice"));
    gw.verify(&st, &recovery_id, "abcd-efgh-jkmn")
        .await
        .error(403, "E0000079");

    // Enrolled but not activated: verifying the pending factor, even with its
    // right code, is out of order; activation is the only way on.
    let e = gw.enroll_totp(&st).await.ok("MFA_ENROLL_ACTIVATE");
    let (id, secret) = (e.enrolled_factor_id(), e.shared_secret());
    let code = oathtool(&secret, gw.now());
    gw.verify(&st, &id, &code).await.error(403, "E0000079");
    // Enrolling twice in one transaction is out of order too.
    gw.enroll_totp(&st).await.error(403, "E0000079");
    // The refusals consumed nothing: the same code activates.
    gw.activate(&st, &id, &code).await.ok("SUCCESS");
}

#[tokio::test]
async fn enroll_is_refused_when_a_factor_is_active() {
    if !have_oathtool("enroll_is_refused_when_a_factor_is_active") {
        return;
    }
    let gw = InProcess::start(10).await;
    // Two transactions start in MFA_ENROLL; the first activates a factor.
    let late = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    gw.enrolled(ALICE).await;
    // The other may no longer enroll (the state is re-checked against the store).
    gw.enroll_totp(&late).await.error(403, "E0000079");
    // A new transaction is MFA_REQUIRED, where enrolling is out of order.
    let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
    gw.enroll_totp(&st).await.error(403, "E0000079");
    // Nor can it activate anything.
    let (bob_factor, _) = gw.enrolled(BOB).await;
    let alice_factor = gw
        .authn(ALICE)
        .await
        .ok("MFA_REQUIRED")
        .factor_of_type("token:software:totp")
        .unwrap();
    gw.activate(&st, &alice_factor, "123456")
        .await
        .error(403, "E0000079");
    // Someone else's factor id is not found, whatever the state.
    gw.verify(&st, &bob_factor, "123456").await.error(404, "E0000007");
    gw.activate(&st, &bob_factor, "123456")
        .await
        .error(404, "E0000007");
}

#[tokio::test]
async fn activate_only_the_factor_enrolled_in_this_transaction() {
    if !have_oathtool("activate_only_the_factor_enrolled_in_this_transaction") {
        return;
    }
    let gw = InProcess::start(10).await;
    // Two transactions of alice each enroll a factor; the second replaces the
    // first's, still pending (an abandoned enrollment leaves nothing behind).
    let st1 = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    let e1 = gw.enroll_totp(&st1).await.ok("MFA_ENROLL_ACTIVATE");
    let st2 = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    let e2 = gw.enroll_totp(&st2).await.ok("MFA_ENROLL_ACTIVATE");
    let (f1, s1) = (e1.enrolled_factor_id(), e1.shared_secret());
    let (f2, s2) = (e2.enrolled_factor_id(), e2.shared_secret());
    assert_ne!(f1, f2);
    // Activating the other transaction's factor (hers, so found) is out of order.
    let c2 = oathtool(&s2, gw.now());
    gw.activate(&st1, &f2, &c2).await.error(403, "E0000079");
    // The replaced one is gone.
    gw.activate(&st1, &f1, &oathtool(&s1, gw.now()))
        .await
        .error(404, "E0000007");

    // Bob's factor id in alice's transaction: not found.
    let bob_st = gw.authn(BOB).await.ok("MFA_ENROLL").state_token();
    let bob_factor = gw.enroll_totp(&bob_st).await.ok("MFA_ENROLL_ACTIVATE");
    let (bf, bs) = (bob_factor.enrolled_factor_id(), bob_factor.shared_secret());
    gw.activate(&st2, &bf, &oathtool(&bs, gw.now()))
        .await
        .error(404, "E0000007");
    // ...and alice's in bob's.
    gw.activate(&bob_st, &f2, &c2).await.error(404, "E0000007");

    // None of that consumed anything: each transaction activates its own.
    gw.activate(&st2, &f2, &c2).await.ok("SUCCESS");
    gw.activate(&bob_st, &bf, &oathtool(&bs, gw.now()))
        .await
        .ok("SUCCESS");
}

#[tokio::test]
async fn cancelled_state_token_is_refused() {
    let gw = InProcess::start(10).await;
    let st = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    let c = gw.step("/api/v1/authn/cancel", &st, json!({})).await;
    assert_eq!(c.status, 200, "{:#}", c.body);
    assert_eq!(c.body["status"], "UNAUTHENTICATED");
    gw.enroll_totp(&st).await.error(401, "E0000011");
    gw.step("/api/v1/authn/cancel", &st, json!({}))
        .await
        .error(401, "E0000011");
    // A token that never existed, and none at all.
    gw.enroll_totp("00abc-not-a-token").await.error(401, "E0000011");
    gw.post(
        "/api/v1/authn/factors",
        &json!({ "factorType": "token:software:totp" }),
    )
    .await
    .error(401, "E0000011");
}

#[tokio::test]
async fn expired_state_tokens_are_refused() {
    if !have_oathtool("expired_state_tokens_are_refused") {
        return;
    }
    let gw = InProcess::start(10).await;

    // 15 minutes after it began, a transaction is over (here: 16).
    let st = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    gw.clock.advance(16 * 60);
    gw.enroll_totp(&st).await.error(401, "E0000011");

    // 5 minutes without a step end it too...
    let st = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    gw.clock.advance(5 * 60 + 1);
    gw.enroll_totp(&st).await.error(401, "E0000011");

    // ...but each step slides that: 4 + 4 minutes with a step between is fine.
    let st = gw.authn(ALICE).await.ok("MFA_ENROLL").state_token();
    gw.clock.advance(4 * 60);
    let e = gw.enroll_totp(&st).await.ok("MFA_ENROLL_ACTIVATE");
    gw.clock.advance(4 * 60);
    let code = oathtool(&e.shared_secret(), gw.now());
    gw.activate(&st, &e.enrolled_factor_id(), &code)
        .await
        .ok("SUCCESS");

    // An MFA_REQUIRED transaction 16 minutes on: refused, and the code it
    // carried was not consumed by the refusal.
    let (id, secret) = (
        gw.authn(ALICE)
            .await
            .ok("MFA_REQUIRED")
            .factor_of_type("token:software:totp")
            .unwrap(),
        e.shared_secret(),
    );
    let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
    gw.clock.advance(16 * 60);
    let code = oathtool(&secret, gw.now());
    gw.verify(&st, &id, &code).await.error(401, "E0000011");
    let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
    gw.verify(&st, &id, &code).await.ok("SUCCESS");
}

#[tokio::test]
async fn session_token_lives_sixty_seconds() {
    if !have_oathtool("session_token_lives_sixty_seconds") {
        return;
    }
    let gw = InProcess::start(10).await;
    let (id, secret) = gw.enrolled(ALICE).await;
    let sign_in = |at: i64| {
        let gw = &gw;
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            gw.clock.set(at);
            let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
            gw.verify(&st, &id, &oathtool(&secret, at))
                .await
                .ok("SUCCESS")
                .session_token()
        }
    };
    let exchange = |token: String| {
        let gw = &gw;
        async move {
            gw.get(&format!("/_portcullis/session?token={token}&rd=/"), None)
                .await
                .status()
                .as_u16()
        }
    };
    let t = crate::harness::T0 + 300;
    // 59 seconds old: still good.
    let token = sign_in(t).await;
    gw.clock.advance(59);
    assert_eq!(exchange(token).await, 302);
    // 61 seconds old: refused, and no cookie.
    let token = sign_in(t + 60).await;
    gw.clock.advance(61);
    let res = gw
        .get(&format!("/_portcullis/session?token={token}&rd=/"), None)
        .await;
    assert_eq!(res.status(), 401);
    assert!(crate::harness::set_cookie(res.headers(), "portcullis_session").is_none());
    // A made-up one, and none.
    assert_eq!(exchange("not-a-session-token".into()).await, 401);
    assert_eq!(gw.get("/_portcullis/session?rd=/", None).await.status(), 401);
}
