//! Passwordless push timing (issue 10): a real user's push must not wait for
//! the relay, or its answer time tells real users from decoys. The relay
//! here sleeps 1.5 s before answering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{authn, eventually, gateway, post};
use crate::push_approver::Device;
use crate::support::{ALICE, spawn_upstream};

/// Long enough that no answer of a loaded machine's debug build comes near
/// it unless it waited for the relay.
const RELAY_DELAY: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;

/// Starts a passwordless sign-in of `login` and its push; returns the time
/// the push verify took and its answer.
async fn push_once(gw: &crate::support::TestGateway, login: &str) -> Option<(Duration, Value)> {
    let a = authn(gw, login, None).await;
    assert_eq!(a.json["status"], "MFA_REQUIRED", "{}", a.json);
    let factor = a.json["_embedded"]["factors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["factorType"] == "push")?
        .clone();
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let verify = factor["_links"]["verify"]["href"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let w = post(gw, &verify, json!({ "stateToken": token }), None).await;
    let took = started.elapsed();
    assert_eq!(w.status, 200, "{}", w.json);
    Some((took, w.json))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The shape of an answer: its keys, recursively, and the values that are
/// not per-request (status, factorResult).
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let keep = matches!(k.as_str(), "status" | "factorResult" | "factorType");
                    (k.clone(), if keep { x.clone() } else { shape(x) })
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("s"),
        Value::Number(_) => json!(0),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_and_decoy_pushes_answer_alike_with_a_slow_relay() {
    let received = Arc::new(Mutex::new(0usize));
    let seen = received.clone();
    let relay = spawn_upstream(move |_req| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(RELAY_DELAY).await;
            *seen.lock().unwrap() += 1;
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        }
    })
    .await;
    let gw = gateway(&format!(
        "default_policy = \"two_factor\"\n[users]\npasswordless = true\n\
         [factors.push]\nenabled = true\nttl = \"60s\"\n\
         delivery = {{ kind = \"webhook\", url = \"http://{relay}/push\", secret = \"push-hook-secret-0123456789\" }}\n"
    ))
    .await;
    // Alice pairs a device (pairing sends nothing through the relay).
    let a = authn(&gw, "alice", Some(ALICE.password)).await;
    assert_eq!(a.json["status"], "MFA_ENROLL", "{}", a.json);
    let token = a.json["stateToken"].as_str().unwrap().to_owned();
    let e = post(
        &gw,
        "/_portcullis/api/v1/authn/factors",
        json!({ "stateToken": token, "factorType": "push", "provider": "OKTA" }),
        None,
    )
    .await;
    let activation = e.json["_embedded"]["factor"]["_embedded"]["activation"]["activationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut device = Device::generate(&gw.url("/_portcullis")).unwrap();
    device
        .pair(&activation, "Test phone", &format!("http://{relay}/push"))
        .await
        .unwrap();
    // A decoy login whose decoy factors include push.
    let mut decoy_login = None;
    for i in 0..50 {
        let login = format!("nobody-{i}@example.com");
        let a = authn(&gw, &login, None).await;
        if a.json["_embedded"]["factors"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["factorType"] == "push"))
        {
            decoy_login = Some(login);
            break;
        }
    }
    let decoy_login = decoy_login.expect("some decoy lists push");

    let (mut real, mut fake) = (Vec::new(), Vec::new());
    let (mut real_shape, mut fake_shape) = (None, None);
    for _ in 0..ROUNDS {
        let (t, v) = push_once(&gw, "alice").await.expect("alice has a push factor");
        real.push(t);
        real_shape.get_or_insert_with(|| shape(&v));
        let (t, v) = push_once(&gw, &decoy_login).await.expect("the decoy lists push");
        fake.push(t);
        fake_shape.get_or_insert_with(|| shape(&v));
    }
    let (mr, mf) = (median(real.clone()), median(fake.clone()));
    println!(
        "push verify medians with a {RELAY_DELAY:?} relay: real {mr:?}, decoy {mf:?} (real {real:?}, decoy {fake:?})"
    );
    assert_eq!(real_shape, fake_shape, "the answers differ in shape");
    assert_eq!(real_shape.unwrap()["factorResult"], "WAITING");
    let gap = mr.abs_diff(mf);
    assert!(gap < Duration::from_millis(250), "real {mr:?} vs decoy {mf:?}");
    // An answer that waited for the relay takes at least RELAY_DELAY.
    assert!(
        mr < RELAY_DELAY && mf < RELAY_DELAY,
        "an answer waited for the relay: real {mr:?}, decoy {mf:?}"
    );
    // The real pushes were still delivered (in the background); the decoy's
    // never were.
    eventually(Duration::from_secs(10), "the real pushes", || {
        let n = *received.lock().unwrap();
        async move { (n == ROUNDS).then_some(()) }
    })
    .await;
    tokio::time::sleep(RELAY_DELAY * 2).await;
    assert_eq!(
        *received.lock().unwrap(),
        ROUNDS,
        "a decoy push reached the relay"
    );
}
