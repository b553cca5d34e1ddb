//! Message catalogs: every word the portal shows comes from `locales/<lang>.toml`
//! (compiled into the binary), in the language the browser asks for with
//! `Accept-Language` (q-values honoured), else English.
//!
//! A catalog is a TOML file of tables of strings; a message's key is
//! `table.name`. `{name}` in a message is filled in by [`tf`] (and by the
//! templates' `t()` with keyword arguments). English is complete by
//! definition; a test checks that every other catalog has exactly its keys.
//!
//! The language of the request being answered is a task-local set by
//! [`scope`] (the portal's router) or [`sync_scope`] (the pages the
//! enforcement layer answers), so handlers and templates ask [`t`] without
//! passing the language around.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The catalogs: language tag and source. The first is the fallback.
pub const CATALOGS: &[(&str, &str)] = &[
    ("en", include_str!("../locales/en.toml")),
    ("de", include_str!("../locales/de.toml")),
    ("fr", include_str!("../locales/fr.toml")),
];

/// The language used when the browser asks for none we have.
pub const FALLBACK: &str = "en";

type Catalog = HashMap<String, &'static str>;

/// The parsed catalogs, by language.
static PARSED: LazyLock<HashMap<&'static str, Catalog>> = LazyLock::new(|| {
    CATALOGS
        .iter()
        .map(|(lang, src)| (*lang, parse(src).unwrap_or_default()))
        .collect()
});

/// Flattens a catalog into `table.name` keys. The strings are leaked once per
/// process (a few kilobytes) so [`t`] can hand out `&'static str`.
fn parse(src: &str) -> Result<Catalog, String> {
    let table: toml::Table = toml::from_str(src).map_err(|e| e.to_string())?;
    let mut out = Catalog::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Catalog) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::String(s) => {
                out.insert(key, Box::leak(s.clone().into_boxed_str()));
            }
            toml::Value::Table(t) => flatten(&key, t, out)?,
            _ => return Err(format!("{key}: not a string")),
        }
    }
    Ok(())
}

tokio::task_local! {
    static LANG: &'static str;
}

/// Runs `f` answering in the language `accept_language` asks for.
pub async fn scope<F: std::future::Future>(accept_language: Option<&str>, f: F) -> F::Output {
    LANG.scope(negotiate(accept_language), f).await
}

/// Like [`scope`], for synchronous rendering.
pub fn sync_scope<R>(accept_language: Option<&str>, f: impl FnOnce() -> R) -> R {
    LANG.sync_scope(negotiate(accept_language), f)
}

/// The language of the request being answered (English outside a scope).
pub fn lang() -> &'static str {
    LANG.try_with(|l| *l).unwrap_or(FALLBACK)
}

/// The message `key` in the current language (English if that catalog
/// lacks it; the key itself if English does, which the tests rule out).
pub fn t(key: &str) -> &'static str {
    lookup(lang(), key)
}

/// The message `key` in the current language (or English), if any catalog has it.
pub fn t_opt(key: &str) -> Option<&'static str> {
    PARSED
        .get(lang())
        .and_then(|c| c.get(key))
        .or_else(|| PARSED.get(FALLBACK).and_then(|c| c.get(key)))
        .copied()
}

/// The message `key` in `lang`.
pub fn lookup(lang: &str, key: &str) -> &'static str {
    let found = PARSED
        .get(lang)
        .and_then(|c| c.get(key))
        .or_else(|| PARSED.get(FALLBACK).and_then(|c| c.get(key)));
    match found {
        Some(s) => s,
        None => {
            tracing::warn!(key, "no message for this key");
            Box::leak(key.to_owned().into_boxed_str())
        }
    }
}

/// [`t`] with `{name}` placeholders filled from `args`.
pub fn tf(key: &str, args: &[(&str, &dyn std::fmt::Display)]) -> String {
    fill(t(key), args)
}

/// Fills `{name}` placeholders.
pub fn fill(text: &str, args: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in args {
        out = out.replace(&format!("{{{name}}}"), &value.to_string());
    }
    out
}

/// "about N minutes" (or "about a minute") until `until`, for a lockout.
pub fn wait_minutes(now: i64, until: i64) -> String {
    let secs = (until - now).max(1);
    let minutes = (secs + 59) / 60;
    if minutes <= 1 {
        t("common.about_one_minute").to_owned()
    } else {
        tf("common.about_minutes", &[("n", &minutes)])
    }
}

/// The best catalog for an `Accept-Language` value: the highest q-value
/// among the languages we have (by primary subtag, `de-AT` is `de`), earlier
/// entries first on ties, `q=0` never; else English.
pub fn negotiate(accept_language: Option<&str>) -> &'static str {
    let Some(header) = accept_language else {
        return FALLBACK;
    };
    let mut best: Option<(u16, &'static str)> = None;
    for item in header.split(',').take(32) {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let mut q = 1000u16;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = parse_q(v.trim()).unwrap_or(0);
            }
        }
        if q == 0 {
            continue;
        }
        let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
        let found = if primary == "*" {
            Some(FALLBACK)
        } else {
            CATALOGS.iter().map(|(l, _)| *l).find(|l| *l == primary)
        };
        if let Some(l) = found
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, l));
        }
    }
    best.map_or(FALLBACK, |(_, l)| l)
}

/// A q-value as thousandths (`0.8` is 800); `None` if malformed.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    match int {
        "0" => {
            let digits = format!("{frac:0<3}");
            digits.parse().ok()
        }
        "1" if frac.chars().all(|c| c == '0') => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_parses_and_has_exactly_the_english_keys() {
        let en = parse(CATALOGS[0].1).unwrap();
        assert!(en.len() > 50, "{}", en.len());
        for (lang, src) in CATALOGS {
            let c = parse(src).unwrap_or_else(|e| panic!("{lang}: {e}"));
            let mut missing: Vec<_> = en.keys().filter(|k| !c.contains_key(*k)).collect();
            let mut extra: Vec<_> = c.keys().filter(|k| !en.contains_key(*k)).collect();
            missing.sort();
            extra.sort();
            assert!(missing.is_empty(), "{lang} lacks {missing:?}");
            assert!(extra.is_empty(), "{lang} has unknown keys {extra:?}");
            // The same placeholders in every language.
            for (k, v) in &c {
                let holes = |s: &str| {
                    let mut h: Vec<String> = s
                        .split('{')
                        .skip(1)
                        .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_owned()))
                        .collect();
                    h.sort();
                    h
                };
                assert_eq!(holes(v), holes(en[k]), "{lang}: {k}");
            }
        }
    }

    #[test]
    fn negotiation_honours_q_values_and_falls_back_to_english() {
        assert_eq!(negotiate(None), "en");
        assert_eq!(negotiate(Some("de-DE,de;q=0.9,en;q=0.8")), "de");
        assert_eq!(negotiate(Some("en;q=0.5, fr-CH")), "fr");
        assert_eq!(negotiate(Some("fr;q=0.4, de;q=0.7, en;q=0.6")), "de");
        assert_eq!(negotiate(Some("de;q=0, fr;q=0.1")), "fr");
        assert_eq!(negotiate(Some("ja, zh-CN;q=0.9")), "en");
        assert_eq!(negotiate(Some("*")), "en");
        assert_eq!(negotiate(Some("de;q=bogus, fr;q=0.2")), "fr");
        assert_eq!(negotiate(Some("")), "en");
    }

    #[test]
    fn lookups_use_the_scope_and_fill_placeholders() {
        assert_eq!(t("login.sign_in"), "Sign in");
        sync_scope(Some("de"), || {
            assert_eq!(lang(), "de");
            assert_eq!(t("login.sign_in"), "Anmelden");
            assert_eq!(wait_minutes(0, 600), "in etwa 10 Minuten");
        });
        assert_eq!(wait_minutes(0, 61), "in about 2 minutes");
        assert_eq!(wait_minutes(0, 30), "in about a minute");
    }
}
