//! Arbitrary bytes as config text: the loader behind `check-config` and
//! start-up (`config::load_str`, which `load_file` uses on the file's text)
//! never panics, and a config it accepts has the invariants the gateway
//! relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_SESSION_SECRET" => Some("fuzz-secret-0123456789abcdef0123456789abcdef".into()),
        "PORTCULLIS_ADMIN_TOKEN" => Some("fuzz-admin-token-0123456789abcdef0123456789".into()),
        // base64 of 32 bytes
        "PORTCULLIS_STORE_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        _ => None,
    }
}

/// True when some string in the document could name a device or a kernel
/// file: the loader reads `file:` secrets, TLS and users files, and reading
/// `/dev/zero` or `/dev/stdin` would hang the fuzzer, not find a bug.
fn names_special_files(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => ["dev", "proc", "sys", "fd"].iter().any(|w| s.contains(w)),
        toml::Value::Array(a) => a.iter().any(names_special_files),
        toml::Value::Table(t) => t.iter().any(|(k, v)| k.contains("dev") || names_special_files(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // `load_file` refuses non-UTF-8 before parsing
    };
    if let Ok(table) = text.parse::<toml::Table>()
        && names_special_files(&toml::Value::Table(table))
    {
        return;
    }
    match portcullis::config::load_str(text, &env) {
        Ok(loaded) => {
            let c = &loaded.config;
            // Forward-auth alone forwards nothing: only then may there be none.
            assert!(
                !c.upstreams.is_empty() || c.forward_auth.enabled,
                "a config without upstreams loaded"
            );
            assert!(
                !c.session.secrets.is_empty(),
                "a config without session secrets loaded"
            );
            assert!(
                c.portal.prefix.starts_with('/'),
                "portal prefix {:?}",
                c.portal.prefix
            );
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without problems");
            for p in &e.problems {
                assert!(
                    !p.key.is_empty() && !p.message.is_empty(),
                    "problem without key or message: {p:?}"
                );
            }
        }
    }
});
