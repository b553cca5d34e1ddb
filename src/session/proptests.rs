//! Property tests of the session cookie: any changed byte or bit of a valid
//! cookie never verifies (also once the valid one is in the thread's cache of
//! verified cookies), arbitrary text never panics (and never verifies),
//! arbitrary claims round-trip, the cookie is found in `Cookie` headers
//! as the `cookie` crate reads them, and one the gateway would read is never
//! forwarded upstream.

use proptest::prelude::*;

use super::{SessionClaims, SessionCodec};

const NOW: i64 = 1_800_000_000;
const LIFETIME: i64 = 8 * 3600;
const IDLE: i64 = 30 * 60;

/// The codec as the gateway builds it: from config, with a rotated secret
/// (the first signs, both verify).
fn codec() -> SessionCodec {
    let text = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[session]
secrets = ["a-new-session-secret-0123456789abcdef0123", "an-old-session-secret-0123456789abcdef012"]
lifetime = "8h"
idle_timeout = "30m"
"#;
    let loaded = crate::config::load_str(text, &|_| None).unwrap();
    SessionCodec::new(&loaded.config.session)
}

/// Claims that are valid at `NOW`.
fn claims() -> impl Strategy<Value = SessionClaims> {
    (
        (any::<String>(), any::<String>(), any::<String>(), 1u8..=2),
        prop::collection::vec(any::<String>(), 0..4),
        (NOW - LIFETIME + 1..=NOW, NOW - IDLE + 1..=NOW),
        (any::<Option<i64>>(), any::<i64>(), any::<u64>()),
    )
        .prop_map(
            |((sid, sin, uid, lvl), amr, (auth, last), (mfa, iat, ep))| SessionClaims {
                sid,
                sin,
                uid,
                lvl,
                amr,
                auth,
                mfa,
                iat,
                last,
                ep,
            },
        )
}

/// Exhaustive over one cookie: every bit of every byte flipped, and every
/// character replaced by every other base64url character (which catches a
/// decoder that ignores the unused low bits of the last character).
#[test]
fn no_single_change_of_a_cookie_verifies() {
    let codec = codec();
    let c = SessionClaims::new(
        "00u1",
        2,
        vec!["pwd".into(), "totp".into()],
        NOW - 60,
        Some(NOW - 30),
        1,
        NOW - 5,
    );
    let valid = codec.encode(&c);
    assert_eq!(codec.decode(&valid, NOW), Ok(c.clone()));
    assert_eq!(codec.verify(&valid, NOW).as_deref(), Ok(&c));
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";
    for i in 0..valid.len() {
        let mut changes: Vec<u8> = (0..8).map(|bit| valid.as_bytes()[i] ^ (1 << bit)).collect();
        changes.extend(ALPHABET.iter().copied().filter(|&b| b != valid.as_bytes()[i]));
        for b in changes {
            let mut bytes = valid.clone().into_bytes();
            bytes[i] = b;
            if let Ok(s) = String::from_utf8(bytes) {
                assert!(
                    codec.decode(&s, NOW).is_err(),
                    "byte {i} set to {b:#04x} verified: {s}"
                );
                // The valid value is cached; the changed one is not taken for it.
                assert!(
                    codec.verify(&s, NOW).is_err(),
                    "byte {i} set to {b:#04x} verified from the cache: {s}"
                );
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_claims_round_trip(c in claims()) {
        let codec = codec();
        prop_assert_eq!(codec.decode(&codec.encode(&c), NOW), Ok(c));
    }

    #[test]
    fn a_changed_byte_never_verifies(
        c in claims(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let codec = codec();
        let valid = codec.encode(&c);
        prop_assert!(codec.verify(&valid, NOW).is_ok());
        let mut bytes = valid.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        // A value that is not text never reaches `decode` (header values are
        // read with `to_str`).
        if let Ok(s) = String::from_utf8(bytes) {
            prop_assert!(codec.decode(&s, NOW).is_err(), "byte {} xor {:#04x} verified: {}", i, mask, s);
            prop_assert!(codec.verify(&s, NOW).is_err(), "byte {} xor {:#04x} verified from the cache: {}", i, mask, s);
        }
    }

    #[test]
    fn a_flipped_bit_never_verifies(c in claims(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let codec = codec();
        let mut bytes = codec.encode(&c).into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(s) = String::from_utf8(bytes) {
            prop_assert!(codec.decode(&s, NOW).is_err(), "bit {} of byte {} flipped verified: {}", bit, i, s);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_or_verifies(s in any::<String>()) {
        prop_assert!(codec().decode(&s, NOW).is_err());
        prop_assert!(codec().verify(&s, NOW).is_err());
    }

    #[test]
    fn cookies_are_found_as_the_cookie_crate_reads_them(
        headers in prop::collection::vec("[ \t;=\"a-c_\\x21-\\x7e\\x80-\\xff]{0,40}", 0..4),
        name in "[ \"a-c_=]{0,3}",
    ) {
        let mut h = http::HeaderMap::new();
        for v in &headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.append(http::header::COOKIE, v);
            }
        }
        prop_assert_eq!(super::find_cookie(&h, &name).map(str::to_owned), oracle(&h, &name));
    }

    #[test]
    fn cookie_pairs_are_found_as_the_cookie_crate_reads_them(
        headers in prop::collection::vec(
            "([ \t]{0,2}(a|b|ab|aa|a a|\"a\"|=|)[ \t]{0,2}(=[ \t]{0,2}[ab\"=\\x80]{0,4}[ \t]{0,2})?;?){0,6}",
            0..4,
        ),
        name in "a|b|ab|aa|a a|\"a\"|",
    ) {
        let mut h = http::HeaderMap::new();
        for v in &headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.append(http::header::COOKIE, v);
            }
        }
        prop_assert_eq!(super::find_cookie(&h, &name).map(str::to_owned), oracle(&h, &name));
    }

    /// Whatever the gateway would read as its cookie, from any arrangement
    /// of `Cookie` headers, is gone from what goes upstream.
    #[test]
    fn a_cookie_the_gateway_reads_is_never_forwarded(
        headers in prop::collection::vec(
            "([ \t]{0,2}(portcullis_session|Portcullis_Session|__Host-portcullis_session|xportcullis_session|portcullis_session_x|a|)[ \t]{0,2}(=[ \t]{0,2}[ab\"=;\\x80]{0,4}[ \t]{0,2})?;?){0,6}",
            0..4,
        ),
    ) {
        let gateway = vec![
            "portcullis_session".to_owned(),
            "__Host-portcullis_session".to_owned(),
        ];
        let mut h = http::HeaderMap::new();
        for v in &headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.append(http::header::COOKIE, v);
            }
        }
        let mut forwarded = h.clone();
        crate::proxy::headers::strip_gateway_cookies(&mut forwarded, &gateway);
        for name in &gateway {
            prop_assert_eq!(super::find_cookie(&forwarded, name), None, "{:?}", h);
            // Nor any spelling of the name, read as a server might.
            let lowered = name.to_ascii_lowercase();
            for header in forwarded.get_all(http::header::COOKIE) {
                for pair in header.as_bytes().split(|&b| b == b';') {
                    let n = pair.split(|&b| b == b'=').next().unwrap_or_default().trim_ascii();
                    prop_assert!(!n.eq_ignore_ascii_case(lowered.as_bytes()), "{:?} -> {:?}", h, forwarded);
                }
            }
        }
    }

    #[test]
    fn cookie_shaped_text_never_verifies(
        version in "v[0-9]|v1",
        payload in "[A-Za-z0-9_=-]{0,200}",
        tag in "[A-Za-z0-9_=-]{0,60}",
        now in any::<i32>(),
    ) {
        let value = format!("{version}.{payload}.{tag}");
        prop_assert!(codec().decode(&value, i64::from(now)).is_err());
    }
}

/// `find_cookie` written with the `cookie` crate: the first pair of that
/// name in the first header that has one with a visible-ASCII value. Each
/// byte outside ASCII stands as U+FFFD (no name looked up has one, and a
/// value with one is not text).
fn oracle(headers: &http::HeaderMap, name: &str) -> Option<String> {
    for header in headers.get_all(http::header::COOKIE) {
        let text: String = header
            .as_bytes()
            .iter()
            .map(|&b| if b.is_ascii() { char::from(b) } else { '\u{FFFD}' })
            .collect();
        let found = cookie::Cookie::split_parse(text.as_str())
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .and_then(|c| {
                c.value_raw().map(|v| {
                    v.strip_prefix('"')
                        .and_then(|inner| inner.strip_suffix('"'))
                        .unwrap_or(v)
                        .to_owned()
                })
            });
        match found {
            Some(v) if v.is_ascii() => return Some(v),
            _ => {}
        }
    }
    None
}
