//! Arbitrary bytes as a request path: `normalize` never panics, is idempotent,
//! and a re-encoding of a path (an unreserved character percent-encoded, a
//! `./` or `x/../` segment added, a slash doubled, `;params` on a segment)
//! never gets a laxer requirement from a fixed rule set than the path itself
//! (or it is refused, which is the strictest answer).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::PolicyKind;
use portcullis::policy::normalize::normalize;
use portcullis::policy::{Policy, RequestFacts, Requirement};

const CONFIG: &str = r#"
default_policy = "one_factor"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[rules]]
path = "^/(static/|favicon\\.ico$)"
methods = ["GET", "HEAD"]
policy = "bypass"

[[rules]]
path = "^/public(/|$)"
policy = "bypass"

[[rules]]
path = "^/admin/"
policy = "two_factor"
groups = ["admins"]

[[rules]]
path = "^/secret(/|$)"
policy = "deny"

[[rules]]
path = "^/(private|billing)/"
policy = "two_factor"
max_age = "15m"

[[rules]]
path = "^/api/"
policy = "one_factor"
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_SESSION_SECRET" => Some("fuzz-secret-0123456789abcdef0123456789abcdef".into()),
        "PORTCULLIS_ADMIN_TOKEN" => Some("fuzz-admin-token-0123456789abcdef0123456789".into()),
        // base64 of 32 bytes
        "PORTCULLIS_STORE_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        _ => None,
    }
}

/// The rule set, built the way the gateway builds it: from config text.
static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let loaded = portcullis::config::load_str(CONFIG, &env)
        .unwrap_or_else(|e| panic!("the fuzz config must load: {e}"));
    Policy::new(loaded.config.rules.clone(), loaded.config.default_policy)
});

/// How strict a requirement is: bypass < one factor < two factors < two
/// factors for some groups or recently < deny.
fn strictness(r: &Requirement<'_>) -> u8 {
    match r.policy {
        PolicyKind::Bypass => 0,
        PolicyKind::OneFactor => 1 + u8::from(!r.groups.is_empty() || r.max_age.is_some()),
        PolicyKind::TwoFactor => 3 + u8::from(!r.groups.is_empty() || r.max_age.is_some()),
        PolicyKind::Deny => 5,
    }
}

fn requirement(path: &str) -> (u8, Option<usize>) {
    let method = http::Method::GET;
    let facts = RequestFacts {
        host: "app.example.com",
        path,
        method: &method,
        client_addr: std::net::IpAddr::from([192, 0, 2, 7]),
    };
    // The gateway decides on the strictest of the path's readings (the path
    // itself, without `;params`, with trailing dots and spaces trimmed).
    POLICY
        .evaluate(&facts)
        .requirements()
        .map(|r| (strictness(r), r.rule))
        .max_by_key(|(s, _)| *s)
        .unwrap_or((u8::MAX, None))
}

/// Byte offsets of the slashes of `path` (segment starts).
fn slashes(path: &str) -> Vec<usize> {
    path.match_indices('/').map(|(i, _)| i).collect()
}

/// One re-encoding of the normalized path `n`, chosen by `op` and `at`.
fn variant(n: &str, op: u8, at: usize) -> Option<String> {
    let s = slashes(n);
    let slash = *s.get(at % s.len().max(1))?;
    let mut v = n.to_owned();
    match op % 6 {
        // Percent-encode one unreserved character (upper or lower hex).
        0 | 1 => {
            let (i, c) = n
                .char_indices()
                .cycle()
                .skip(at % n.len().max(1))
                .take(n.len())
                .find(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))?;
            let enc = if op % 6 == 0 {
                format!("%{:02X}", c as u32)
            } else {
                format!("%{:02x}", c as u32)
            };
            v.replace_range(i..i + 1, &enc);
        }
        // A `./` segment after a slash.
        2 => v.insert_str(slash + 1, "./"),
        // A `x/../` detour after a slash.
        3 => v.insert_str(slash + 1, "x/../"),
        // A doubled slash.
        4 => v.insert(slash, '/'),
        // `;params` at the end of the segment that starts at this slash.
        _ => {
            let end = n[slash + 1..].find('/').map_or(n.len(), |e| slash + 1 + e);
            v.insert_str(end, if at % 2 == 0 { ";x" } else { ";jsessionid=1" });
        }
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let (op, at, raw) = match data {
        [op, at, rest @ ..] => (*op, usize::from(*at), rest),
        _ => (0, 0, data),
    };
    let text = String::from_utf8_lossy(raw);
    let path = if text.starts_with('/') {
        text.into_owned()
    } else {
        format!("/{text}")
    };
    let Ok(n) = normalize(&path) else {
        return; // refused: 400, nothing reaches the upstream
    };
    let n = n.into_owned();
    match normalize(&n) {
        Ok(again) => assert_eq!(again, n.as_str(), "normalize is not idempotent on {path:?}"),
        Err(e) => panic!("the normalized form {n:?} of {path:?} is refused: {e}"),
    }
    let base = requirement(&n);
    let Some(v) = variant(&n, op, at) else {
        return;
    };
    if let Ok(vn) = normalize(&v) {
        let got = requirement(&vn);
        assert!(
            got.0 >= base.0,
            "{v:?} (normalized {vn:?}, rule {:?}) gets a laxer requirement than {n:?} (rule {:?})",
            got.1,
            base.1
        );
    }
});
