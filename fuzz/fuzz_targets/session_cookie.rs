//! Arbitrary bytes as a session cookie value: `SessionCodec::decode` never
//! panics; and a valid cookie with one byte changed (position and XOR mask
//! from the input) never verifies.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::session::{SessionClaims, SessionCodec};

const NOW: i64 = 1_800_000_000;

const CONFIG: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[session]
secrets = ["env:PORTCULLIS_SESSION_SECRET", "an-older-secret-still-verifying-0123456789"]
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

/// The codec, built from config as the gateway builds it (two secrets: the
/// first signs, both verify).
static CODEC: LazyLock<SessionCodec> = LazyLock::new(|| {
    let loaded = portcullis::config::load_str(CONFIG, &env)
        .unwrap_or_else(|e| panic!("the fuzz config must load: {e}"));
    SessionCodec::new(&loaded.config.session)
});

/// A cookie that verifies at `NOW`.
static VALID: LazyLock<String> = LazyLock::new(|| {
    let claims = SessionClaims::new(
        "00u1fuzz",
        2,
        vec!["pwd".into(), "totp".into()],
        NOW - 100,
        Some(NOW - 50),
        7,
        NOW - 10,
    );
    let v = CODEC.encode(&claims);
    assert_eq!(
        CODEC.decode(&v, NOW),
        Ok(claims),
        "the reference cookie must verify"
    );
    v
});

fuzz_target!(|data: &[u8]| {
    // Arbitrary text.
    let _ = CODEC.decode(&String::from_utf8_lossy(data), NOW);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = CODEC.decode(s, NOW);
    }
    // One changed byte of a valid cookie.
    if let [a, b, mask, ..] = data {
        let valid = VALID.as_bytes();
        let at = usize::from(u16::from_le_bytes([*a, *b])) % valid.len();
        let mask = if *mask == 0 { 1 } else { *mask };
        let mut changed = valid.to_vec();
        changed[at] ^= mask;
        if let Ok(s) = String::from_utf8(changed) {
            assert!(
                CODEC.decode(&s, NOW).is_err(),
                "a cookie with byte {at} changed (xor {mask:#04x}) verified"
            );
        }
    }
});
