//! The OpenAPI document is kept true: served without a token; its admin and
//! self-service paths equal the route tables the routers are built from;
//! every documented path answers on the real listeners with exactly the
//! documented methods; real answers validate against its schemas; and an
//! independent validator (openapi-spec-validator, when installed) accepts it.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{admin, admin_as, create_user, gateway, send};
use crate::support::TestGateway;

const PREFIX: &str = "/_portcullis";

async fn document(gw: &TestGateway) -> Value {
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

#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let gw = gateway("").await;
    let doc = document(&gw).await;
    let ops = operations(&doc);
    let admin_doc: BTreeSet<_> = ops
        .iter()
        .filter(|(_, p)| !p.starts_with(PREFIX))
        .cloned()
        .collect();
    let admin_table: BTreeSet<_> = portcullis::admin::ROUTES
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(admin_doc, admin_table, "admin routes and document differ");
    let me_doc: BTreeSet<_> = ops
        .iter()
        .filter(|(_, p)| p.starts_with(&format!("{PREFIX}/api/v1/users/me/")))
        .cloned()
        .collect();
    let me_table: BTreeSet<_> = portcullis::portal::me::ROUTES
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), format!("{PREFIX}{}", r.path)))
        .collect();
    assert_eq!(me_doc, me_table, "self-service routes and document differ");

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
        let res = gw.client().patch(&url).send().await.unwrap();
        assert_eq!(res.status(), 405, "PATCH {path}");
        let allow: BTreeSet<String> = res.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(allow, documented, "methods served at {path}");
    }
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
fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
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
        println!("skipped: openapi-spec-validator not installed (pip install openapi-spec-validator)");
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
