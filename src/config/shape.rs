//! Pass 2 of loading: the shape of each section (serde), with key paths.
//!
//! Each top-level section (each `[[upstreams]]` / `[[rules]]` entry, each
//! `[factors.*]` table) is deserialized on its own into the raw structs of
//! [`super::raw`]. When a section fails, it is deserialized again one key at a
//! time, so every misspelt or mistyped key in it is reported with its full
//! path (`server.listn: unknown key`).

use serde::de::DeserializeOwned;

use super::context::Ctx;
use super::load::{ConfigProblem, TOP_LEVEL_KEYS};

/// Fields whose values are secrets: serde's messages quote the offending value,
/// so for these only the expected type is reported.
const SECRET_FIELDS: [&str; 7] = [
    "secrets",
    "tokens",
    "encryption_keys",
    "secret",
    "password",
    "url",
    "listen_url",
];

/// A serde failure: the path inside the deserialized value and the message.
pub(super) struct ShapeError {
    path: String,
    pub(super) message: String,
}

pub(super) fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, ShapeError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ShapeError {
            path,
            message: e.into_inner().message().trim().to_owned(),
        }
    })
}

/// `prefix` + `path`, where `path` may start with an index (`[0].x`).
fn join_key(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_owned()
    } else if prefix.is_empty() {
        path.to_owned()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

fn report_shape_error(cx: &mut Ctx<'_>, prefix: &str, e: ShapeError) {
    let mut key = join_key(prefix, &e.path);
    let mut message = e.message;
    // The path usually ends at the unknown field already; make sure it does,
    // since the key is where the operator looks for it.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            if key.rsplit('.').next() != Some(field) {
                key = join_key(&key, field);
            }
            let expected = tail.trim_start_matches(',').trim();
            let mut m = if expected.is_empty() || expected.starts_with("there are no fields") {
                "unknown key".to_owned()
            } else {
                format!("unknown key ({expected})")
            };
            if TOP_LEVEL_KEYS.contains(&field) {
                m.push_str("; top-level keys must come before the first [table]");
            }
            message = m;
        }
    } else if is_secret_key(&key) {
        // "invalid type: string \"hunter2\", expected ..." would print the secret.
        message = match message.split_once(", expected ") {
            Some((_, expected)) => format!("invalid value (not shown); expected {expected}"),
            None => "invalid value (not shown)".to_owned(),
        };
    }
    cx.problems.push(ConfigProblem { key, message });
}

fn is_secret_key(key: &str) -> bool {
    key.rsplit('.')
        .find(|segment| !segment.starts_with('['))
        .is_some_and(|last| {
            let name = last.split('[').next().unwrap_or(last);
            SECRET_FIELDS.contains(&name)
        })
}

/// Deserializes one value; on failure, retries key by key so that every bad
/// key of a table is reported, not only the first one serde meets, and
/// returns the table without its bad keys (the load fails regardless).
fn deserialize_reporting<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    prefix: &str,
    value: toml::Value,
) -> Option<T> {
    let whole = match deserialize::<T>(value.clone()) {
        Ok(parsed) => return Some(parsed),
        Err(e) => e,
    };
    let toml::Value::Table(mut table) = value else {
        report_shape_error(cx, prefix, whole);
        return None;
    };
    if !remove_bad_keys::<T>(cx, prefix, &mut Vec::new(), &mut table) {
        report_shape_error(cx, prefix, whole);
        return None;
    }
    // Check the rest of the section too, so that one mistyped key does not
    // hide a bad value next to it.
    deserialize::<T>(toml::Value::Table(table)).ok()
}

/// `inner` placed at `path` inside the section (`["tls"]`, `{cert = 5}`:
/// `{tls = {cert = 5}}`).
fn nest(path: &[String], inner: toml::Table) -> toml::Value {
    path.iter().rev().fold(toml::Value::Table(inner), |value, key| {
        let mut outer = toml::Table::new();
        outer.insert(key.clone(), value);
        toml::Value::Table(outer)
    })
}

/// Tries each key of `table` (at `path` inside the section; every raw
/// struct has defaults, so one key alone deserializes when it is right)
/// and reports and removes those that fail. A key holding a table is
/// searched the same way, so that one bad key deep inside it
/// (`server.tls.kee`) is reported with its own path and does not hide the
/// table's other keys and their checks. Returns whether anything was
/// removed; the removed keys are remembered as malformed.
fn remove_bad_keys<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    prefix: &str,
    path: &mut Vec<String>,
    table: &mut toml::Table,
) -> bool {
    let alone = |path: &[String], key: &str, value: &toml::Value| {
        let mut one = toml::Table::new();
        one.insert(key.to_owned(), value.clone());
        deserialize::<T>(nest(path, one))
    };
    let mut bad = Vec::new();
    let mut found = false;
    for (key, value) in table.iter_mut() {
        let Err(error) = alone(path, key, value) else {
            continue;
        };
        // Searched inside only when the key is one that takes a table (an
        // unknown key, or a table where a string belongs, is one problem).
        let takes_a_table = || alone(path, key, &toml::Value::Table(toml::Table::new())).is_ok();
        if let toml::Value::Table(inner) = value
            && takes_a_table()
        {
            path.push(key.clone());
            let inside = remove_bad_keys::<T>(cx, prefix, path, inner);
            path.pop();
            if inside {
                found = true;
                match alone(path, key, value) {
                    // Kept without its bad keys: the table's own checks run.
                    Ok(_) => continue,
                    Err(rest) => report_shape_error(cx, prefix, rest),
                }
                bad.push(key.clone());
                continue;
            }
        }
        report_shape_error(cx, prefix, error);
        bad.push(key.clone());
    }
    for key in &bad {
        table.remove(key);
        path.push(key.clone());
        cx.malformed.push(join_key(prefix, &path.join(".")));
        path.pop();
    }
    found || !bad.is_empty()
}

/// A table section: absent means all defaults; `None` means it was reported as
/// malformed as a whole (not a table).
pub(super) fn section<T: DeserializeOwned + Default>(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<toml::Value>,
) -> Option<T> {
    match value {
        None => Some(T::default()),
        Some(value) => deserialize_reporting(cx, key, value),
    }
}

/// An array of tables (`[[key]]`), element by element; malformed elements are `None`.
pub(super) fn array_section<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<toml::Value>,
) -> Option<Vec<Option<T>>> {
    match value {
        None => Some(Vec::new()),
        Some(toml::Value::Array(items)) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| deserialize_reporting(cx, &format!("{key}[{i}]"), item))
                .collect(),
        ),
        Some(other) => {
            cx.error(
                key,
                format!(
                    "must be an array of tables ([[{key}]]), not a {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn unknown_keys_are_reported_with_their_paths() {
        let errs = errors(&format!(
            "colour = \"blue\"\n{MINIMAL}\nbogus = 1\n\n[server]\nlistn = \"x\"\n\
             tls = {{ cert = \"a\", key = \"b\", chain = \"c\" }}\n\
             [factors.sms]\ndelivery = {{ kind = \"log\", tone = 1 }}\n[factors.fax]\nenabled = true\n"
        ));
        assert_has(&errs, "colour", "unknown key");
        assert_has(&errs, "upstreams[0].bogus", "unknown key");
        assert_has(&errs, "server.listn", "expected one of");
        assert_has(&errs, "server.tls.chain", "unknown key");
        assert_has(&errs, "factors.sms.delivery.tone", "unknown key");
        assert_has(&errs, "factors.fax", "unknown key");
    }

    #[test]
    fn a_bad_key_inside_a_nested_table_hides_neither_its_neighbours_nor_their_checks() {
        // Inline and as a [table]: the misspelt key, a second unknown key
        // beside it (with a value of no string type either), and what the
        // table's own checks find in the rest (no cert: the key alone is not
        // enough).
        for tls in [
            "[server]\ntls = { kee = \"a\", chain = 5, key = \"/nonexistent/key.pem\" }\n",
            "[server.tls]\nkee = \"a\"\nchain = 5\nkey = \"/nonexistent/key.pem\"\n",
        ] {
            let errs = errors(&with(tls));
            assert_has(&errs, "server.tls.kee", "unknown key");
            assert_has(&errs, "server.tls.chain", "unknown key");
            assert_has(&errs, "server.tls.cert", "is required");
            assert_has(&errs, "server.tls.key", "/nonexistent/key.pem");
            assert!(!has(&errs, "server.tls", "invalid type"), "{errs:#?}");
        }
        // An unknown key holding a table, and a table where a string
        // belongs, are one problem each (not one per key inside).
        let errs = errors(&with(
            "[server]\nlisten = { a = \"x\", b = \"y\" }\n[server.tlss]\ncert = \"a\"\nkey = \"b\"\n",
        ));
        assert_eq!(
            errs.iter().filter(|e| e.starts_with("server.listen: ")).count(),
            1,
            "{errs:#?}"
        );
        assert_eq!(
            errs.iter().filter(|e| e.starts_with("server.tlss")).count(),
            1,
            "{errs:#?}"
        );
        assert_has(&errs, "server.tlss", "unknown key");
        // Two levels down, with a mistyped value beside the unknown key.
        let errs = errors(&with(
            "[factors.sms]\ndelivery = { kind = \"log\", tone = 1, url = 5 }\n",
        ));
        assert_has(&errs, "factors.sms.delivery.tone", "unknown key");
        assert_has(&errs, "factors.sms.delivery.url", "invalid value");
    }

    #[test]
    fn a_top_level_key_after_a_table_gets_a_hint() {
        let errs = errors(&with("[log]\nlevel = \"info\"\ndefault_policy = \"deny\"\n"));
        assert_has(
            &errs,
            "log.default_policy",
            "top-level keys must come before the first [table]",
        );
    }

    #[test]
    fn every_bad_key_of_one_section_is_reported() {
        let errs = errors(&with(
            "[server]\nlisten = 8080\nmax_header_bytes = \"big\"\ntrusted_proxies = [1]\n",
        ));
        assert_has(&errs, "server.listen", "invalid type");
        assert_has(&errs, "server.max_header_bytes", "invalid type");
        assert_has(&errs, "server.trusted_proxies[0]", "invalid type");
    }

    #[test]
    fn a_mistyped_key_does_not_hide_its_neighbours_nor_cause_follow_ups() {
        let env = |name: &str| {
            if name == defaults::SESSION_SECRET_ENV {
                None
            } else {
                std_env(name)
            }
        };
        let text = "[server]\nlisten = \"localhost\"\nlistn = 1\n[session]\nsecrets = \"not-a-list\"\n\
                    [[upstreams]]\nname = \"app\"\nurl = 3000\ntimeout = \"soon\"\n";
        let e = load_str(text, &env).unwrap_err();
        let errs: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert_has(&errs, "server.listn", "unknown key");
        assert_has(&errs, "server.listen", "IP address and port");
        assert_has(&errs, "session.secrets", "invalid value (not shown)");
        assert_has(&errs, "upstreams[0].url", "invalid value");
        assert_has(&errs, "upstreams[0].timeout", "invalid duration");
        // The missing-secret and missing-url follow-ups are not piled on.
        assert!(
            !has(&errs, "session.secrets", "PORTCULLIS_SESSION_SECRET"),
            "{errs:#?}"
        );
        assert!(!has(&errs, "upstreams[0].url", "is required"), "{errs:#?}");
        assert_eq!(errs.len(), 5, "{errs:#?}");
    }
}
