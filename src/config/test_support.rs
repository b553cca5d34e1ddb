//! Helpers for the config unit tests: a minimal config, an environment that
//! sets the default secrets, and assertions on `key: message` lines.

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

use super::{ConfigError, LoadedConfig, load_str};

pub(super) const SESSION_SECRET: &str = "0123456789abcdef0123456789abcdef-session";
pub(super) const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// base64 of 32 bytes 0..32.
pub(super) const STORE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub(super) const MINIMAL: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"
"#;

pub(super) fn std_env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_SESSION_SECRET" => Some(SESSION_SECRET.into()),
        "PORTCULLIS_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "PORTCULLIS_STORE_KEY" => Some(STORE_KEY.into()),
        _ => None,
    }
}

pub(super) fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
    load_str(text, &std_env)
}

pub(super) fn ok(text: &str) -> LoadedConfig {
    match load(text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("config should load, got:\n{e}"),
    }
}

/// The problems of a config that must fail, as `key: message` lines.
pub(super) fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config should fail:\n{text}"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn warnings(loaded: &LoadedConfig) -> Vec<String> {
    loaded.warnings.iter().map(ToString::to_string).collect()
}

pub(super) fn has(lines: &[String], key: &str, fragment: &str) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with(&format!("{key}: ")) && l.contains(fragment))
}

#[track_caller]
pub(super) fn assert_has(lines: &[String], key: &str, fragment: &str) {
    assert!(
        has(lines, key, fragment),
        "expected `{key}: ...{fragment}...` in:\n{}",
        lines.join("\n")
    );
}

/// `MINIMAL` plus extra text (tables only; top-level keys go before).
pub(super) fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

pub(super) fn cheap_hash(password: &str, algorithm: Algorithm) -> String {
    let params = Params::new(8, 1, 1, None).unwrap();
    Argon2::new(algorithm, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

pub(super) fn toml_path(p: &Path) -> String {
    format!("'{}'", p.display())
}

pub(super) fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}
