//! Property tests of the config loader: arbitrary and TOML-shaped text never
//! panics; arbitrary values in every key of the example config never panic;
//! and replacing any one key's value of a valid config with a value of the
//! wrong shape fails with a problem naming that key.

use proptest::prelude::*;

use super::load_str;

const EXAMPLE: &str = include_str!("../../config/portcullis.example.toml");

fn env(name: &str) -> Option<String> {
    match name {
        "PORTCULLIS_SESSION_SECRET" => Some("session-secret-0123456789abcdef0123456789ab".into()),
        "PORTCULLIS_ADMIN_TOKEN" => Some("admin-token-0123456789abcdef0123456789abcdef".into()),
        // base64 of 32 bytes
        "PORTCULLIS_STORE_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        _ => None,
    }
}

/// The example config as a table (it must load as is).
fn example() -> toml::Table {
    EXAMPLE.parse().unwrap()
}

/// Every leaf key of the example config as (path as problems name it, the
/// same path as steps into the table). Arrays of scalars are leaves; arrays
/// of tables (`[[upstreams]]`, `[[rules]]`) are indexed.
fn leaves() -> Vec<(String, Vec<Step>)> {
    fn walk(prefix: &str, steps: &[Step], v: &toml::Value, out: &mut Vec<(String, Vec<Step>)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let mut s = steps.to_vec();
                    s.push(Step::Key(k.clone()));
                    walk(&name, &s, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    let mut s = steps.to_vec();
                    s.push(Step::Index(i));
                    walk(&format!("{prefix}[{i}]"), &s, v, out);
                }
            }
            _ => out.push((prefix.to_owned(), steps.to_vec())),
        }
    }
    let mut out = Vec::new();
    walk("", &[], &toml::Value::Table(example()), &mut out);
    out
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The example config text with the value at `steps` replaced.
fn with_value(steps: &[Step], value: toml::Value) -> String {
    let mut root = toml::Value::Table(example());
    let mut at = &mut root;
    for s in steps {
        at = match s {
            Step::Key(k) => at.get_mut(k.as_str()).unwrap(),
            Step::Index(i) => at.get_mut(*i).unwrap(),
        };
    }
    *at = value;
    toml::to_string(&root).unwrap()
}

/// Any TOML value, a few levels deep.
fn any_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(toml::Value::String),
        "[a-z0-9:/._ -]{0,24}".prop_map(toml::Value::String),
        prop_oneof![
            Just("30s"),
            Just("0s"),
            Just("1d1h"),
            Just("-1s"),
            Just("99999999999999999999d"),
            Just("env:NOPE"),
            Just("env:"),
            Just("file:"),
            Just("file:does/not/exist"),
            Just("^/(a"),
            Just("0.0.0.0:99999"),
            Just("[::1]:1"),
            Just("http://"),
            Just("https://h:0/p?q#f"),
        ]
        .prop_map(|s| toml::Value::String(s.to_owned())),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A value no key of the config accepts: a table, or an array of tables.
fn wrong_shape() -> impl Strategy<Value = toml::Value> {
    let table =
        prop::collection::btree_map("[a-z_]{1,12}", any::<i64>().prop_map(toml::Value::Integer), 0..3)
            .prop_map(|m| toml::Value::Table(m.into_iter().collect()));
    prop_oneof![
        table.clone(),
        prop::collection::vec(table, 1..3).prop_map(toml::Value::Array),
    ]
}

/// A line of TOML-ish text built from the config's own vocabulary.
fn tomlish_line() -> impl Strategy<Value = String> {
    let headers = prop::sample::select(vec![
        "[server]",
        "[admin]",
        "[[upstreams]]",
        "[session]",
        "[identity_headers]",
        "[portal]",
        "[users]",
        "[[users.file_users]]",
        "[store]",
        "[regulation]",
        "[factors.totp]",
        "[factors.sms]",
        "[factors.sms.delivery]",
        "[factors.push]",
        "[[rules]]",
        "[log]",
        "[",
        "[[",
    ]);
    let keys = prop::sample::select(
        leaves()
            .into_iter()
            .filter_map(|(name, _)| name.rsplit('.').next().map(str::to_owned))
            .collect::<Vec<_>>(),
    );
    let values = prop_oneof![
        "\"[^\"\\\\]{0,16}\"",
        "-?[0-9]{1,20}",
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        "\\[\"[a-z0-9/:.]{0,8}\"\\]",
        "[^\n]{0,12}",
    ];
    prop_oneof![
        headers.prop_map(str::to_owned),
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        "[^\n]{0,30}",
    ]
}

#[test]
fn the_example_config_loads_and_has_leaves() {
    if let Err(e) = load_str(EXAMPLE, &env) {
        panic!("the example config must load:\n{e}");
    }
    let leaves = leaves();
    assert!(leaves.len() > 60, "only {} leaves", leaves.len());
    assert!(leaves.iter().any(|(k, _)| k == "upstreams[0].url"));
    assert!(leaves.iter().any(|(k, _)| k == "rules[0].path"));
    assert!(leaves.iter().any(|(k, _)| k == "factors.totp.digits"));
}

#[test]
fn every_key_given_a_table_is_reported_at_that_key() {
    let garbage: toml::Table = "garbage = 1".parse().unwrap();
    for (key, steps) in leaves() {
        let text = with_value(&steps, toml::Value::Table(garbage.clone()));
        match load_str(&text, &env) {
            Ok(_) => panic!("{key} accepted a table"),
            Err(e) => assert!(
                e.problems
                    .iter()
                    .any(|p| p.key == key || p.key.starts_with(&format!("{key}."))),
                "{key} not named in:\n{e}"
            ),
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = load_str(&text, &env);
    }

    #[test]
    fn tomlish_text_never_panics(lines in prop::collection::vec(tomlish_line(), 0..24)) {
        let text = lines.join("\n");
        if let Err(e) = load_str(&text, &env) {
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(!p.key.is_empty() && !p.message.is_empty(), "{:?}", p);
            }
        }
    }

    #[test]
    fn arbitrary_values_in_known_keys_never_panic(
        at in any::<prop::sample::Index>(),
        value in any_value(),
    ) {
        let leaves = leaves();
        let (_, steps) = &leaves[at.index(leaves.len())];
        let _ = load_str(&with_value(steps, value), &env);
    }

    #[test]
    fn a_wrongly_shaped_value_is_reported_at_its_key(
        at in any::<prop::sample::Index>(),
        value in wrong_shape(),
    ) {
        let leaves = leaves();
        let (key, steps) = &leaves[at.index(leaves.len())];
        let text = with_value(steps, value);
        match load_str(&text, &env) {
            Ok(_) => prop_assert!(false, "{} accepted a table:\n{}", key, text),
            Err(e) => prop_assert!(
                e.problems.iter().any(|p| p.key == *key || p.key.starts_with(&format!("{key}."))
                    || p.key.starts_with(&format!("{key}["))),
                "{} not named in:\n{}", key, e
            ),
        }
    }
}
