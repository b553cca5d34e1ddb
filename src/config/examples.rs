//! The example files under `config/` load, hold the defaults, and mention
//! every key the loader knows, in the documented order.

use std::collections::BTreeSet;

use argon2::{Argon2, PasswordVerifier};
use serde::de::DeserializeOwned;

use super::PolicyKind;
use super::load::TOP_LEVEL_KEYS;
use super::raw::*;
use super::shape::deserialize;
use super::test_support::*;

const EXAMPLE: &str = include_str!("../../config/portcullis.example.toml");
const USERS_EXAMPLE: &str = include_str!("../../config/users.example.toml");

#[test]
fn example_config_loads_and_its_values_are_the_defaults() {
    let example = ok(EXAMPLE);
    let minimal = ok(MINIMAL);
    let (e, m) = (&example.config, &minimal.config);
    // Debug is a faithful structural dump (secrets are redacted on both sides).
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    assert_eq!(e.default_policy, m.default_policy);
    assert_eq!(e.case_insensitive_paths, m.case_insensitive_paths);
    assert!(same(&e.server, &m.server), "{:?}\n{:?}", e.server, m.server);
    assert!(same(&e.admin, &m.admin));
    assert!(same(&e.upstreams, &m.upstreams));
    assert!(same(&e.session, &m.session));
    assert!(same(&e.identity_headers, &m.identity_headers));
    assert!(same(&e.portal, &m.portal));
    assert!(same(&e.users, &m.users));
    assert!(same(&e.store, &m.store));
    assert!(same(&e.regulation, &m.regulation));
    assert!(same(&e.factors, &m.factors), "{:?}\n{:?}", e.factors, m.factors);
    assert!(same(&e.log, &m.log));
    assert_eq!(e.forward_auth, m.forward_auth);
    assert_eq!(e.rules.len(), 1);
    assert_eq!(e.rules[0].policy, PolicyKind::Bypass);
    assert!(e.rules[0].path.as_ref().unwrap().is_match("/favicon.ico"));
    assert!(!e.rules[0].path.as_ref().unwrap().is_match("/favicon.ico.php"));
    assert!(!e.rules[0].path.as_ref().unwrap().is_match("/app/static/x"));
}

/// The fields of a raw struct, read back from serde's unknown-field message.
fn fields_of<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let mut table = toml::Table::new();
    table.insert("__probe__".into(), toml::Value::Boolean(true));
    let e = deserialize::<T>(toml::Value::Table(table)).unwrap_err();
    let expected = e.message.split_once("expected").unwrap().1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `(section, key)` for every `key =` line, commented out or not.
fn example_keys(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some(end) = header.find(']') {
                section = header[..end].to_owned();
                continue;
            }
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert((section.clone(), key.to_owned()));
            }
        }
    }
    out
}

#[test]
fn example_config_mentions_every_key_in_spec_order() {
    let keys = example_keys(EXAMPLE);
    let sections: Vec<(&str, Vec<String>)> = vec![
        (
            "",
            vec!["default_policy".to_owned(), "case_insensitive_paths".to_owned()],
        ),
        ("server", fields_of::<RawServer>()),
        ("admin", fields_of::<RawAdmin>()),
        ("upstreams", fields_of::<RawUpstream>()),
        ("session", fields_of::<RawSession>()),
        ("identity_headers", fields_of::<RawIdentityHeaders>()),
        ("portal", fields_of::<RawPortal>()),
        ("users", fields_of::<RawUsers>()),
        ("store", fields_of::<RawStore>()),
        ("regulation", fields_of::<RawRegulation>()),
        ("factors.totp", fields_of::<RawTotp>()),
        (
            "factors.sms",
            fields_of::<RawCodeFactor>()
                .into_iter()
                .filter(|f| f != "subject")
                .collect(),
        ),
        (
            "factors.call",
            fields_of::<RawCodeFactor>()
                .into_iter()
                .filter(|f| f != "subject")
                .collect(),
        ),
        ("factors.email", fields_of::<RawCodeFactor>()),
        ("factors.push", fields_of::<RawPush>()),
        ("factors.recovery_codes", fields_of::<RawRecoveryCodes>()),
        ("factors.webauthn", fields_of::<super::webauthn::RawWebauthn>()),
        ("rules", fields_of::<RawRule>()),
        ("log", fields_of::<RawLog>()),
        ("forward_auth", fields_of::<super::forward_auth::RawForwardAuth>()),
    ];
    let mut missing = Vec::new();
    for (section, fields) in &sections {
        assert!(!fields.is_empty(), "{section}");
        for field in fields {
            if !keys.contains(&(section.to_string(), field.clone())) {
                missing.push(format!("{section}.{field}"));
            }
        }
    }
    // Inline tables: mentioned as `name =` somewhere in the file.
    for field in fields_of::<RawTls>()
        .iter()
        .chain(fields_of::<RawDelivery>().iter())
    {
        if !EXAMPLE.contains(&format!("{field} =")) {
            missing.push(format!("(inline) {field}"));
        }
    }
    assert!(missing.is_empty(), "keys missing from the example: {missing:?}");

    // Top-level sections appear in SPEC order, each once as a header.
    let mut last = 0;
    for top in &TOP_LEVEL_KEYS[2..] {
        let header = if *top == "factors" {
            "[factors.totp]".to_owned()
        } else if *top == "upstreams" || *top == "rules" {
            format!("\n[[{top}]]")
        } else {
            format!("\n[{top}]")
        };
        let at = EXAMPLE
            .find(&header)
            .unwrap_or_else(|| panic!("no {header} in the example"));
        assert!(at > last, "{top} is out of order");
        last = at;
    }
    // Top-level keys come before the first table.
    assert!(EXAMPLE.find("default_policy =").unwrap() < EXAMPLE.find("\n[server]").unwrap());
}

#[test]
fn users_example_loads_and_its_password_is_change_me() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    std::fs::write(&path, USERS_EXAMPLE).unwrap();
    let loaded = ok(&with(&format!("[users]\nfile = {}\n", toml_path(&path))));
    let users = &loaded.config.users.file_users;
    assert_eq!(users.len(), 1);
    let alice = &users[0];
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.display_name.as_deref(), Some("Alice Example"));
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert_eq!(alice.phone.as_deref(), Some("+15555550100"));
    assert_eq!(alice.groups, vec!["admins".to_owned()]);
    assert!(alice.totp_secret.is_none());
    let hash = argon2::PasswordHash::new(&alice.password_hash).unwrap();
    assert!(Argon2::default().verify_password(b"change-me", &hash).is_ok());
}
