//! The OpenAPI document is kept true: served without a token; its paths
//! equal the route tables the routers are built from, for each JSON API
//! (admin, self-service, authentication with sessions and push devices),
//! both ways, so a route added without documentation fails here; every
//! documented path answers on the real listeners with exactly the
//! documented methods (any other: 405 `E0000022` with `Allow`); real answers validate against its schemas (TOTP,
//! SMS, push with pairing, device answers and cancelling, the authn steps);
//! and an independent validator (openapi-spec-validator, when installed)
//! accepts it.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    admin, admin_as, create_user, device_answer, gateway, messages, pairing, push_message, send,
};
use crate::support::TestGateway;

const PREFIX: &str = "/_portcullis";

pub(crate) async fn document(gw: &TestGateway) -> Value {
    let a = admin_as(gw, Method::GET, "/openapi.json", None, None).await;
    a.expect(200, None);
    assert_eq!(a.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(a.body["openapi"], "3.0.3");
    a.body
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// `(METHOD, path)` of a route table, under `prefix`.
fn table<O>(routes: &[portcullis::api::Route<O>], prefix: &str) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), format!("{prefix}{}", r.path)))
        .collect()
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let gw = gateway("").await;
    let doc = document(&gw).await;
    let ops = operations(&doc);
    let (portal_doc, admin_doc): (BTreeSet<_>, BTreeSet<_>) =
        ops.iter().cloned().partition(|(_, p)| p.starts_with(PREFIX));

    // The admin listener: every route, documented, and nothing else.
    let admin_table = table(portcullis::admin::ROUTES, "");
    assert_eq!(admin_doc, admin_table, "admin routes and document differ");

    // Under the prefix, each JSON API separately, both ways.
    let me_table = table(portcullis::portal::me::ROUTES, PREFIX);
    let me_doc: BTreeSet<_> = portal_doc
        .iter()
        .filter(|(_, p)| p.starts_with(&format!("{PREFIX}/api/v1/users/me/")))
        .cloned()
        .collect();
    assert_eq!(me_doc, me_table, "self-service routes and document differ");
    let api_table = table(portcullis::portal::api::ROUTES, PREFIX);
    let api_doc: BTreeSet<_> = portal_doc.difference(&me_doc).cloned().collect();
    assert_eq!(
        api_doc, api_table,
        "authentication, session and push device routes and document differ"
    );
    assert!(me_table.is_disjoint(&api_table), "a route in two tables");
    // The JSON APIs only: no page of the portal is in the document.
    for (_, path) in &portal_doc {
        let rest = &path[PREFIX.len()..];
        assert!(
            rest.starts_with("/api/v1/") || rest == "/session",
            "{path} is not an API route"
        );
    }
    for page in [
        "/login",
        "/mfa",
        "/enroll",
        "/factors",
        "/logout",
        "/push/status",
        "/healthz",
    ] {
        assert!(
            doc["paths"].get(format!("{PREFIX}{page}")).is_none(),
            "the page {page} is documented"
        );
    }
    // The routes named by issue 5's follow-up are there.
    for (method, path) in [
        ("POST", "/api/v1/authn/factors/{factorId}/verify/resend"),
        ("POST", "/api/v1/authn/factors/{factorId}/lifecycle/activate/poll"),
        ("POST", "/api/v1/authn/factors/{factorId}/lifecycle/resend"),
        ("POST", "/api/v1/push/devices"),
        ("POST", "/api/v1/push/transactions/{transactionId}"),
        (
            "DELETE",
            "/api/v1/users/me/factors/{factorId}/transactions/{transactionId}",
        ),
    ] {
        assert!(
            portal_doc.contains(&(method.to_owned(), format!("{PREFIX}{path}"))),
            "{method} {path} undocumented"
        );
    }
    assert!(admin_doc.contains(&(
        "DELETE".to_owned(),
        "/api/v1/users/{id}/factors/{factorId}/transactions/{transactionId}".to_owned()
    )));

    // Every documented path is served with exactly the documented methods:
    // a method nobody uses answers 405 with the methods in `Allow`.
    let uid = TestGateway::uid("alice");
    for (path, item) in doc["paths"].as_object().unwrap() {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "post", "put", "delete"].contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        let concrete = path
            .replace("{id}", &uid)
            .replace("{factorId}", "uftAAAAAAAAAAAAAAAAA")
            .replace("{transactionId}", "tx");
        let url = if path.starts_with(PREFIX) {
            gw.url(&concrete)
        } else {
            gw.admin_url(&concrete)
        };
        let a = send(gw.client().patch(&url)).await;
        a.expect(405, Some("E0000022"));
        method_not_allowed_body(&a, &format!("PATCH {path}"));
        let allow: BTreeSet<String> = a
            .header("allow")
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(allow, documented, "methods served at {path}");
    }
    // The two the review named: GET on the authn step, PATCH with a token.
    let a = send(gw.client().get(gw.url(&format!("{PREFIX}/api/v1/authn")))).await;
    a.expect(405, Some("E0000022"));
    method_not_allowed_body(&a, "GET authn");
    assert_eq!(a.header("allow").as_deref(), Some("POST"));
    let a = admin(&gw, Method::PATCH, "/api/v1/users", None).await;
    a.expect(405, Some("E0000022"));
    method_not_allowed_body(&a, "PATCH users");
}

/// Asserts a 405 carries the Okta error object (as every other JSON error).
fn method_not_allowed_body(a: &crate::common::Answer, what: &str) {
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(
        a.body["errorSummary"], "The endpoint does not support the provided HTTP method",
        "{what}"
    );
    assert_eq!(a.body["errorLink"], "E0000022", "{what}");
    assert_eq!(a.body["errorCauses"], json!([]), "{what}");
}

/// Checks `value` against a schema of the document (the subset it uses:
/// `$ref`, `type`, `nullable`, `required`, `properties`, `items`, `enum`,
/// `additionalProperties`, `pattern` as a prefix check is not needed).
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return validate(doc, &doc["components"]["schemas"][name], value, at);
    }
    if value.is_null() {
        assert!(
            schema.get("nullable") == Some(&json!(true)) || schema.get("type").is_none(),
            "{at}: null where {schema} is not nullable"
        );
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        assert!(ok, "{at}: {value} is not of type {t}");
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        assert!(e.contains(value), "{at}: {value} not in {e:?}");
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for k in req {
            assert!(
                value.get(k.as_str().unwrap()).is_some(),
                "{at}: {k} missing in {value}"
            );
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                validate(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(extra), Some(obj)) = (schema.get("additionalProperties"), value.as_object())
        && extra.is_object()
    {
        for (k, v) in obj {
            validate(doc, extra, v, &format!("{at}.{k}"));
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

/// Validates an answer against the documented response of `method path`.
pub(crate) fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let res = &op["responses"][status.to_string()];
    assert!(res.is_object(), "{method} {path} does not document {status}");
    let schema = &res["content"]["application/json"]["schema"];
    validate(doc, schema, body, &format!("{method} {path} {status}"));
}

#[tokio::test]
async fn answers_validate_against_the_schemas() {
    let gw = gateway("").await;
    let doc = document(&gw).await;
    let uid = TestGateway::uid("alice");

    let u = create_user(&gw, "olga@example.com", Some("olga-password-1")).await;
    check(&doc, "POST", "/api/v1/users", 200, &u);
    let id = u["id"].as_str().unwrap().to_owned();
    let a = admin(&gw, Method::GET, "/api/v1/users", None).await;
    check(&doc, "GET", "/api/v1/users", 200, &a.body);
    let a = admin(&gw, Method::GET, &format!("/api/v1/users/{uid}"), None).await;
    check(&doc, "GET", "/api/v1/users/{id}", 200, &a.body);
    let a = admin_as(&gw, Method::GET, "/api/v1/users", None, None).await;
    check(&doc, "GET", "/api/v1/users", 401, &a.body);
    let a = admin(&gw, Method::GET, "/api/v1/users/nobody", None).await;
    check(&doc, "GET", "/api/v1/users/{id}", 404, &a.body);
    let a = admin(
        &gw,
        Method::PUT,
        &format!("/api/v1/users/{uid}"),
        Some(json!({ "profile": { "login": "x" } })),
    )
    .await;
    check(&doc, "PUT", "/api/v1/users/{id}", 403, &a.body);
    let a = admin(&gw, Method::POST, "/api/v1/users", Some(json!({ "profile": {} }))).await;
    check(&doc, "POST", "/api/v1/users", 400, &a.body);

    let base = format!("/api/v1/users/{id}/factors");
    let a = admin(&gw, Method::GET, &format!("{base}/catalog"), None).await;
    check(&doc, "GET", "/api/v1/users/{id}/factors/catalog", 200, &a.body);
    let e = admin(
        &gw,
        Method::POST,
        &base,
        Some(json!({ "factorType": "token:software:totp", "provider": "OKTA" })),
    )
    .await;
    check(&doc, "POST", "/api/v1/users/{id}/factors", 200, &e.body);
    let fid = e.body["id"].as_str().unwrap().to_owned();
    let secret = e.body["_embedded"]["activation"]["sharedSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/lifecycle/activate"),
        Some(json!({ "passCode": crate::common::totp(&gw, &secret, 0) })),
    )
    .await;
    check(
        &doc,
        "POST",
        "/api/v1/users/{id}/factors/{factorId}/lifecycle/activate",
        200,
        &a.body,
    );
    gw.clock.advance(30);
    let a = admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": crate::common::totp(&gw, &secret, 0) })),
    )
    .await;
    check(
        &doc,
        "POST",
        "/api/v1/users/{id}/factors/{factorId}/verify",
        200,
        &a.body,
    );
    let a = admin(
        &gw,
        Method::POST,
        &format!("{base}/{fid}/verify"),
        Some(json!({ "passCode": "000000" })),
    )
    .await;
    check(
        &doc,
        "POST",
        "/api/v1/users/{id}/factors/{factorId}/verify",
        403,
        &a.body,
    );
    let a = admin(&gw, Method::GET, &base, None).await;
    check(&doc, "GET", "/api/v1/users/{id}/factors", 200, &a.body);
    let a = admin(&gw, Method::GET, &format!("{base}/{fid}/transactions/x"), None).await;
    check(
        &doc,
        "GET",
        "/api/v1/users/{id}/factors/{factorId}/transactions/{transactionId}",
        404,
        &a.body,
    );
    let a = admin(
        &gw,
        Method::POST,
        &format!("/api/v1/users/{id}/recovery_codes"),
        None,
    )
    .await;
    check(&doc, "POST", "/api/v1/users/{id}/recovery_codes", 200, &a.body);
    let a = admin(
        &gw,
        Method::GET,
        &format!("/api/v1/users/{id}/recovery_codes"),
        None,
    )
    .await;
    check(&doc, "GET", "/api/v1/users/{id}/recovery_codes", 200, &a.body);

    // The authentication and self-service APIs.
    let a = send(
        gw.client()
            .post(gw.url(&format!("{PREFIX}/api/v1/authn")))
            .json(&json!({ "username": "olga@example.com", "password": "olga-password-1" })),
    )
    .await;
    check(&doc, "POST", &format!("{PREFIX}/api/v1/authn"), 200, &a.body);
    let login = gw.login(crate::support::ALICE).await;
    let a = send(
        gw.client()
            .get(gw.url(&format!("{PREFIX}/api/v1/users/me/factors/catalog")))
            .header("cookie", login.cookie())
            .header("x-csrf-token", &login.csrf),
    )
    .await;
    check(
        &doc,
        "GET",
        &format!("{PREFIX}/api/v1/users/me/factors/catalog"),
        200,
        &a.body,
    );
    let a = send(
        gw.client()
            .get(gw.url(&format!("{PREFIX}/api/v1/users/me/factors")))
            .header("cookie", login.cookie()),
    )
    .await;
    check(
        &doc,
        "GET",
        &format!("{PREFIX}/api/v1/users/me/factors"),
        403,
        &a.body,
    );
}

#[tokio::test]
async fn an_independent_validator_accepts_the_document() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        crate::skip::test(
            "an_independent_validator_accepts_the_document",
            "openapi-spec-validator is not installed (pip install openapi-spec-validator)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, portcullis::admin::openapi::document("/auth")).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(portcullis::admin::openapi::document("/auth").contains("\"/auth/api/v1/authn\""));
}

/// POSTs JSON to the main listener.
async fn post_main(gw: &TestGateway, path: &str, body: Value) -> crate::common::Answer {
    send(gw.client().post(gw.url(path)).json(&body)).await
}

#[tokio::test]
async fn sms_push_and_authn_answers_validate_against_the_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.jsonl");
    let gw = gateway(&crate::common::sms_and_push(&file)).await;
    let doc = document(&gw).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let pair = |token: &str| pairing(&key, token);
    let u = create_user(&gw, "petra@example.com", Some("petra-password-1")).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/users/{id}/factors");

    // SMS through the admin API: enroll, a resend too soon, activate.
    let e = admin(
        &gw,
        Method::POST,
        &base,
        Some(
            json!({ "factorType": "sms", "provider": "OKTA", "profile": { "phoneNumber": "+15555550100" } }),
        ),
    )
    .await;
    check(&doc, "POST", "/api/v1/users/{id}/factors", 200, &e.body);
    let sms = e.body["id"].as_str().unwrap().to_owned();
    let a = admin(&gw, Method::POST, &format!("{base}/{sms}/resend"), None).await;
    a.expect(429, Some("E0000109"));
    check(
        &doc,
        "POST",
        "/api/v1/users/{id}/factors/{factorId}/resend",
        429,
        &a.body,
    );
    assert_eq!(
        a.body["errorCauses"][0]["errorSummary"], "another code can be sent in 20 seconds",
        "the wait is resend_after"
    );
    for h in ["date", "retry-after", "x-rate-limit-reset", "x-rate-limit-limit"] {
        assert!(a.header(h).is_some(), "429 without {h}");
    }
    let code = messages(&file).last().unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = admin(
        &gw,
        Method::POST,
        &format!("{base}/{sms}/lifecycle/activate"),
        Some(json!({ "passCode": code })),
    )
    .await;
    check(
        &doc,
        "POST",
        "/api/v1/users/{id}/factors/{factorId}/lifecycle/activate",
        200,
        &a.body,
    );

    // Push through the admin API: enroll, pair the device, verify, poll, cancel.
    let e = admin(
        &gw,
        Method::POST,
        &base,
        Some(json!({ "factorType": "push", "provider": "OKTA" })),
    )
    .await;
    check(&doc, "POST", "/api/v1/users/{id}/factors", 200, &e.body);
    let push = e.body["id"].as_str().unwrap().to_owned();
    let token = e.body["_embedded"]["activation"]["activationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let devices = format!("{PREFIX}/api/v1/push/devices");
    let p = post_main(&gw, &devices, pair(&token)).await;
    p.expect(200, None);
    check(&doc, "POST", &devices, 200, &p.body);
    let p = post_main(&gw, &devices, pair(&token)).await;
    p.expect(401, Some("E0000011"));
    check(&doc, "POST", &devices, 401, &p.body);
    let p = post_main(&gw, &devices, json!({ "activationToken": 1 })).await;
    check(&doc, "POST", &devices, 400, &p.body);

    let verify = "/api/v1/users/{id}/factors/{factorId}/verify";
    let tx = "/api/v1/users/{id}/factors/{factorId}/transactions/{transactionId}";
    let answer = format!("{PREFIX}/api/v1/push/transactions/{{transactionId}}");
    let w = admin(&gw, Method::POST, &format!("{base}/{push}/verify"), None).await;
    w.expect(201, None);
    check(&doc, "POST", verify, 201, &w.body);
    let n = w.body["_embedded"]["challenge"]["correctAnswer"]
        .as_u64()
        .unwrap() as u32;
    let cancel = w.body["_links"]["cancel"]["href"].as_str().unwrap().to_owned();
    assert_eq!(w.body["_links"]["cancel"]["hints"]["allow"], json!(["DELETE"]));
    let tid = cancel.rsplit('/').next().unwrap().to_owned();
    let poll = admin(
        &gw,
        Method::GET,
        &format!("{base}/{push}/transactions/{tid}"),
        None,
    )
    .await;
    check(&doc, "GET", tx, 200, &poll.body);
    assert_eq!(poll.body["factorResult"], "WAITING");
    let c = send(
        gw.client()
            .delete(&cancel)
            .header("authorization", format!("SSWS {}", crate::common::TOKEN)),
    )
    .await;
    c.expect(200, None);
    check(&doc, "DELETE", tx, 200, &c.body);
    assert_eq!(c.body["factorResult"], "REJECTED");
    let message = push_message(&file, &w.body).await;
    assert_eq!(message["transaction_id"], tid.as_str());
    let late = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/push/transactions/{tid}"),
        device_answer(&key, &message, "approve", n),
    )
    .await;
    late.expect(403, Some("E0000079"));
    check(&doc, "POST", &answer, 403, &late.body);
    let a = admin(
        &gw,
        Method::DELETE,
        &format!("{base}/{push}/transactions/ptxNOPE"),
        None,
    )
    .await;
    a.expect(404, Some("E0000191"));
    check(&doc, "DELETE", tx, 404, &a.body);
    // A new push, approved by the device.
    let w = admin(&gw, Method::POST, &format!("{base}/{push}/verify"), None).await;
    let n = w.body["_embedded"]["challenge"]["correctAnswer"]
        .as_u64()
        .unwrap() as u32;
    let message = push_message(&file, &w.body).await;
    let ok = post_main(
        &gw,
        &format!(
            "{PREFIX}/api/v1/push/transactions/{}",
            message["transaction_id"].as_str().unwrap()
        ),
        device_answer(&key, &message, "approve", n),
    )
    .await;
    ok.expect(200, None);
    check(&doc, "POST", &answer, 200, &ok.body);
    let ghost = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/push/transactions/ptxNOPE"),
        device_answer(&key, &message, "approve", n),
    )
    .await;
    check(&doc, "POST", &answer, 404, &ghost.body);

    // The authn API: an SMS challenge and a resend too soon, a push and its resend.
    gw.clock.advance(60);
    let a = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/authn"),
        json!({ "username": "petra@example.com", "password": "petra-password-1" }),
    )
    .await;
    assert_eq!(a.body["status"], "MFA_REQUIRED", "{}", a.text);
    let state = a.body["stateToken"].as_str().unwrap().to_owned();
    let authn_verify = format!("{PREFIX}/api/v1/authn/factors/{{factorId}}/verify");
    let authn_resend = format!("{PREFIX}/api/v1/authn/factors/{{factorId}}/verify/resend");
    let c = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/authn/factors/{sms}/verify"),
        json!({ "stateToken": state }),
    )
    .await;
    c.expect(200, None);
    assert_eq!(c.body["status"], "MFA_CHALLENGE");
    check(&doc, "POST", &authn_verify, 200, &c.body);
    let r = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/authn/factors/{sms}/verify/resend"),
        json!({ "stateToken": state }),
    )
    .await;
    r.expect(429, Some("E0000109"));
    check(&doc, "POST", &authn_resend, 429, &r.body);
    let c = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/authn/factors/{push}/verify"),
        json!({ "stateToken": state }),
    )
    .await;
    assert_eq!(c.body["factorResult"], "WAITING", "{}", c.text);
    check(&doc, "POST", &authn_verify, 200, &c.body);
    let r = post_main(
        &gw,
        &format!("{PREFIX}/api/v1/authn/factors/{push}/verify/resend"),
        json!({ "stateToken": state }),
    )
    .await;
    r.expect(200, None);
    check(&doc, "POST", &authn_resend, 200, &r.body);

    // Enrollment in the authn API: an SMS activation code resent too soon,
    // and a push factor polled until its device pairs.
    let lifecycle_resend = format!("{PREFIX}/api/v1/authn/factors/{{factorId}}/lifecycle/resend");
    let activate_poll = format!("{PREFIX}/api/v1/authn/factors/{{factorId}}/lifecycle/activate/poll");
    for (login, factor_type) in [("quinn@example.com", "sms"), ("rosa@example.com", "push")] {
        create_user(&gw, login, Some("enroll-password-1")).await;
        let a = post_main(
            &gw,
            &format!("{PREFIX}/api/v1/authn"),
            json!({ "username": login, "password": "enroll-password-1" }),
        )
        .await;
        assert_eq!(a.body["status"], "MFA_ENROLL", "{}", a.text);
        let state = a.body["stateToken"].as_str().unwrap().to_owned();
        let e = post_main(
            &gw,
            &format!("{PREFIX}/api/v1/authn/factors"),
            json!({ "stateToken": state, "factorType": factor_type, "provider": "OKTA",
                    "profile": { "phoneNumber": "+15555550111" } }),
        )
        .await;
        assert_eq!(e.body["status"], "MFA_ENROLL_ACTIVATE", "{}", e.text);
        check(
            &doc,
            "POST",
            &format!("{PREFIX}/api/v1/authn/factors"),
            200,
            &e.body,
        );
        let fid = e.body["_embedded"]["factor"]["id"].as_str().unwrap().to_owned();
        if factor_type == "sms" {
            let r = post_main(
                &gw,
                &format!("{PREFIX}/api/v1/authn/factors/{fid}/lifecycle/resend"),
                json!({ "stateToken": state }),
            )
            .await;
            r.expect(429, Some("E0000109"));
            check(&doc, "POST", &lifecycle_resend, 429, &r.body);
            gw.clock.advance(31);
            let r = post_main(
                &gw,
                &format!("{PREFIX}/api/v1/authn/factors/{fid}/lifecycle/resend"),
                json!({ "stateToken": state }),
            )
            .await;
            r.expect(200, None);
            check(&doc, "POST", &lifecycle_resend, 200, &r.body);
        } else {
            let poll = format!("{PREFIX}/api/v1/authn/factors/{fid}/lifecycle/activate/poll");
            assert_eq!(e.body["_links"]["next"]["href"], poll.as_str(), "{}", e.text);
            let w = post_main(&gw, &poll, json!({ "stateToken": state })).await;
            assert_eq!(w.body["factorResult"], "WAITING", "{}", w.text);
            check(&doc, "POST", &activate_poll, 200, &w.body);
            let token = e.body["_embedded"]["factor"]["_embedded"]["activation"]["activationToken"]
                .as_str()
                .unwrap();
            post_main(&gw, &devices, pair(token)).await.expect(200, None);
            let done = post_main(&gw, &poll, json!({ "stateToken": state })).await;
            assert_eq!(done.body["status"], "SUCCESS", "{}", done.text);
            check(&doc, "POST", &activate_poll, 200, &done.body);
        }
    }
}
