//! The authentication API end to end, with every TOTP code computed by
//! oathtool (an independent RFC 6238 implementation): enroll, activate,
//! exchange the sessionToken, sign in again, replay, wrong code, recovery code.

use serde_json::json;

use crate::harness::{ALICE, InProcess, have_oathtool, oathtool, set_cookie, wrong_code};

#[tokio::test]
async fn authn_api_with_codes_from_oathtool() {
    if !have_oathtool("authn_api_with_codes_from_oathtool") {
        return;
    }
    let gw = InProcess::start(10).await;

    // Password: no factor yet, so MFA_ENROLL with the catalog, and a level-1 cookie.
    let a = gw.authn(ALICE).await.ok("MFA_ENROLL");
    assert_eq!(a.body["_embedded"]["user"]["profile"]["login"], "alice");
    assert!(a.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        a.factors()
            .iter()
            .any(|f| f["factorType"] == "token:software:totp" && f["status"] == "NOT_SETUP"),
        "catalog: {:#}",
        a.body
    );
    assert!(set_cookie(&a.headers, "portcullis_session").is_some());
    assert_eq!(a.header("cache-control").as_deref(), Some("no-store"));
    let st = a.state_token();

    // Enroll TOTP: MFA_ENROLL_ACTIVATE with the activation data.
    let e = gw.enroll_totp(&st).await.ok("MFA_ENROLL_ACTIVATE");
    assert_eq!(e.state_token(), st, "the same transaction goes on");
    let factor = &e.body["_embedded"]["factor"];
    assert_eq!(factor["factorType"], "token:software:totp");
    assert_eq!(factor["status"], "PENDING_ACTIVATION");
    let activation = &factor["_embedded"]["activation"];
    assert_eq!(activation["encoding"], "base32");
    assert_eq!(activation["timeStep"], 30);
    assert!(
        activation["keyLength"].as_u64().unwrap() >= 20,
        "at least 160 bits"
    );
    let secret = e.shared_secret();
    assert_eq!(secret.len(), 32, "160 bits in base32: {secret}");
    let qr = activation["_links"]["qrcode"]["href"].as_str().unwrap();
    assert!(qr.starts_with("data:image/svg+xml;base64,"), "{qr}");
    let factor_id = e.enrolled_factor_id();
    assert_eq!(factor_id.len(), 20, "{factor_id}");

    // Activate with oathtool's code: SUCCESS, a sessionToken and 10 recovery codes.
    let code = oathtool(&secret, gw.now());
    let s = gw.activate(&st, &factor_id, &code).await.ok("SUCCESS");
    assert_eq!(s.header("cache-control").as_deref(), Some("no-store"));
    assert!(s.body.get("stateToken").is_none());
    let codes: Vec<String> = s.body["_embedded"]["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{codes:?}");
    let level2 = set_cookie(&s.headers, "portcullis_session").expect("SUCCESS sets the level-2 cookie");
    assert!(!level2.is_empty());

    // The same stateToken is spent.
    gw.activate(&st, &factor_id, &code).await.error(401, "E0000011");

    // sessionToken exchange: a cookie and a 302 to rd, once.
    let token = s.session_token();
    let path = format!("/_portcullis/session?token={token}&rd=/x");
    let res = gw.get(&path, None).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "/x");
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let cookie = set_cookie(res.headers(), "portcullis_session").expect("the exchange sets the cookie");
    let res = gw.get(&path, None).await;
    assert_eq!(res.status(), 401, "a sessionToken is single use");
    assert!(set_cookie(res.headers(), "portcullis_session").is_none());
    // The exchanged cookie is a level-2 session: the upstream sees alice.
    let res = gw.get("/x", Some(&format!("portcullis_session={cookie}"))).await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.unwrap();
    let user = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "remote-user")
        .map(|h| h[1].clone());
    assert_eq!(user, Some(json!("alice")), "{echo:#}");

    // Sign in again: MFA_REQUIRED listing the factor and the recovery pseudo-factor.
    let a = gw.authn(ALICE).await.ok("MFA_REQUIRED");
    assert_eq!(
        a.factor_of_type("token:software:totp").as_deref(),
        Some(factor_id.as_str())
    );
    let listed = a.factors();
    let totp = listed.iter().find(|f| f["id"] == factor_id.as_str()).unwrap();
    assert_eq!(totp["status"], "ACTIVE");
    let recovery_id = a
        .factor_of_type("recovery_code")
        .expect("recovery codes are listed");
    let st = a.state_token();

    // The code that activated the factor is spent: replay.
    gw.verify(&st, &factor_id, &code).await.error(403, "E0000082");
    // A wrong code.
    gw.verify(&st, &factor_id, &wrong_code(&secret, gw.now(), 2))
        .await
        .error(403, "E0000068");
    // A recovery code through the pseudo-factor.
    let s = gw.verify(&st, &recovery_id, &codes[0]).await.ok("SUCCESS");
    assert!(!s.session_token().is_empty());
    assert!(set_cookie(&s.headers, "portcullis_session").is_some());

    // The same recovery code again is just a wrong code.
    let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
    gw.verify(&st, &recovery_id, &codes[0])
        .await
        .error(403, "E0000068");
    // Written as the user may type it (upper case, no dashes), another code works.
    let typed = codes[1].replace('-', " ").to_uppercase();
    gw.verify(&st, &recovery_id, &typed).await.ok("SUCCESS");

    // Thirty seconds on, oathtool's next code signs in.
    gw.clock.advance(30);
    let st = gw.authn(ALICE).await.ok("MFA_REQUIRED").state_token();
    let next = oathtool(&secret, gw.now());
    assert_ne!(next, code);
    gw.verify(&st, &factor_id, &next).await.ok("SUCCESS");
}

/// The QR code the API returns holds a standard `otpauth://` key URI: zbar
/// reads it off the SVG, Python (pyotp, or the standard library) parses it,
/// and its secret gives oathtool's codes.
#[tokio::test]
async fn key_uri_in_the_qr_code_is_standard() {
    if !have_oathtool("key_uri_in_the_qr_code_is_standard") {
        return;
    }
    if !crate::harness::have("zbarimg") {
        crate::skip::test(
            "key_uri_in_the_qr_code_is_standard",
            "zbarimg not installed (apt-get install zbar-tools)",
        );
        return;
    }
    let gw = InProcess::start(10).await;
    let a = gw.authn(ALICE).await.ok("MFA_ENROLL");
    let e = gw.enroll_totp(&a.state_token()).await.ok("MFA_ENROLL_ACTIVATE");
    let secret = e.shared_secret();
    let href = e.body["_embedded"]["factor"]["_embedded"]["activation"]["_links"]["qrcode"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let svg = {
        use base64::Engine;
        let b64 = href.strip_prefix("data:image/svg+xml;base64,").unwrap();
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
    };
    assert!(String::from_utf8_lossy(&svg).contains("<svg"), "not an SVG");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qr.svg");
    std::fs::write(&file, &svg).unwrap();
    let Some(uri) = crate::harness::decode_qr(&file) else {
        return;
    };
    check_key_uri(&uri, &secret, "alice", gw.now());
}

/// Asserts that `uri` is a standard TOTP key URI for `account` with `secret`
/// whose code (from the independent parser) equals oathtool's.
pub fn check_key_uri(uri: &str, secret: &str, account: &str, t: i64) {
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let Some(parsed) = crate::harness::parse_key_uri(uri, t) else {
        return;
    };
    eprintln!("key URI parsed by {}", parsed.parser);
    assert_eq!(parsed.secret, secret, "{uri}");
    assert_eq!(parsed.issuer, "Portcullis", "{uri}");
    assert_eq!(parsed.account, account, "{uri}");
    assert_eq!(
        (parsed.digits, parsed.period, parsed.algorithm.as_str()),
        (6, 30, "SHA1"),
        "{uri}"
    );
    assert_eq!(
        parsed.code,
        oathtool(secret, t),
        "{} and oathtool disagree",
        parsed.parser
    );
}
