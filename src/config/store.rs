//! `[store]`: the backend and the keys that seal factor secrets at rest.

use std::path::PathBuf;

use super::context::Ctx;
use super::fields::choice;
use super::raw::RawStore;
use super::secrets::{Absent, NamedSecret, secret, secret_list};
use super::{StoreConfig, StoreKind, defaults};
use crate::secret::Secret;

pub(super) fn convert_store(cx: &mut Ctx<'_>, raw: RawStore) -> StoreConfig {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Memory,
        Sqlite,
        Postgres,
    }
    let kind = choice(
        cx,
        "store.kind",
        raw.kind,
        defaults::STORE_KIND,
        &[
            ("memory", Kind::Memory),
            ("sqlite", Kind::Sqlite),
            ("postgres", Kind::Postgres),
        ],
    );
    if kind != Kind::Sqlite && raw.path.is_some() {
        cx.warn("store.path", "ignored: only used by store.kind = \"sqlite\"");
    }
    if kind != Kind::Postgres && raw.url.is_some() {
        cx.warn("store.url", "ignored: only used by store.kind = \"postgres\"");
    }
    if kind != Kind::Postgres && raw.listen_url.is_some() {
        cx.warn(
            "store.listen_url",
            "ignored: only used by store.kind = \"postgres\"",
        );
    }
    let kind = match kind {
        Kind::Memory => StoreKind::Memory,
        Kind::Sqlite => {
            let path = raw.path.unwrap_or_else(|| defaults::STORE_PATH.to_owned());
            if path.trim().is_empty() {
                cx.error("store.path", "must not be empty");
            }
            StoreKind::Sqlite {
                path: PathBuf::from(path),
            }
        }
        Kind::Postgres => {
            let url = match raw.url {
                None => {
                    cx.error(
                        "store.url",
                        "is required for store.kind = \"postgres\" (e.g. \"env:DATABASE_URL\")",
                    );
                    Secret::default()
                }
                Some(text) => postgres_url(cx, "store.url", &text),
            };
            // A direct URL for the session-level work a pooler in transaction
            // mode cannot carry (LISTEN, advisory locks); see `store::notify`.
            let listen_url = raw
                .listen_url
                .map(|text| postgres_url(cx, "store.listen_url", &text));
            StoreKind::Postgres { url, listen_url }
        }
    };
    let note = default_key_note(&kind);
    let absent = Absent {
        is_error: false,
        unset: &format!(
            "no encryption key ({} is not set): {note}",
            defaults::STORE_KEY_ENV
        ),
        empty: &format!("no encryption key configured: {note}"),
    };
    let mut encryption_keys = Vec::new();
    for NamedSecret { key, label, secret } in secret_list(
        cx,
        "store.encryption_keys",
        raw.encryption_keys,
        defaults::STORE_KEY_ENV,
        absent,
    ) {
        match secret.expose_str().and_then(decode_base64) {
            Some(bytes) if bytes.len() == defaults::STORE_KEY_BYTES => encryption_keys.push(Secret::new(bytes)),
            Some(bytes) => cx.error(
                key,
                format!(
                    "{label}must be base64 of exactly {} bytes (got {} bytes); generate one with `portcullis gen-key`",
                    defaults::STORE_KEY_BYTES,
                    bytes.len()
                ),
            ),
            None => cx.error(
                key,
                format!("{label}is not valid base64; generate a key with `portcullis gen-key`"),
            ),
        }
    }
    StoreConfig {
        kind,
        encryption_keys,
    }
}

/// A `postgres://` URL given as a secret (`env:NAME`, `file:PATH` or the
/// value); its value is never shown in a message.
fn postgres_url(cx: &mut Ctx<'_>, key: &str, text: &str) -> Secret {
    match secret(cx, key, text) {
        Some(url) => {
            let ok = url
                .expose_str()
                .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
            if !ok {
                cx.error(
                    key,
                    "must be a postgres:// or postgresql:// URL (value not shown)",
                );
            } else if let Some(text) = url.expose_str() {
                // What the store will parse at start-up (a bad port, an unknown
                // `sslmode`): found here, not when `serve` opens the store.
                // Not the driver's words: they may quote a part of the URL.
                if text.parse::<sqlx::postgres::PgConnectOptions>().is_err() {
                    cx.error(
                        key,
                        "the PostgreSQL driver cannot read this URL: check the port, the \
                         parameters (such as sslmode) and any %-escapes (value not shown)",
                    );
                }
            }
            url
        }
        None => Secret::default(),
    }
}

/// Standard or URL-safe base64, padded or not: operators paste keys from many tools.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(t).ok())
}

/// What the gateway does without `store.encryption_keys` (see `gateway::keys`).
fn default_key_note(kind: &StoreKind) -> String {
    match kind {
        StoreKind::Memory => "factor secrets are sealed with a key generated for each process".into(),
        StoreKind::Sqlite { path } => {
            let mut file = path.as_os_str().to_owned();
            file.push(".key");
            format!(
                "factor secrets are sealed with the key in {} (generated, mode 0600, if missing); back it up with the database",
                std::path::Path::new(&file).display()
            )
        }
        StoreKind::Postgres { .. } => "factor enrollment is refused: with PostgreSQL every replica must be configured with the same key; generate one with `portcullis gen-key`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn store_keys_must_be_32_bytes_of_base64() {
        let errs = errors(&with(
            "[store]\nencryption_keys = [\"AAECAwQFBgcICQoLDA0ODw==\"]\n",
        ));
        assert_has(
            &errs,
            "store.encryption_keys[0]",
            "exactly 32 bytes (got 16 bytes)",
        );
        // Unpadded and URL-safe spellings are accepted; the first key comes first.
        let loaded = ok(&with(
            "[store]\nencryption_keys = [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\", \"_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-8=\"]\n",
        ));
        assert_eq!(loaded.config.store.encryption_keys.len(), 2);
        assert_eq!(
            loaded.config.store.encryption_keys[0].expose(),
            (0u8..32).collect::<Vec<_>>()
        );
        let env = |name: &str| {
            if name == defaults::STORE_KEY_ENV {
                Some("c2hvcnQ=".into())
            } else {
                std_env(name)
            }
        };
        let e = load_str(MINIMAL, &env).unwrap_err();
        assert_eq!(e.problems[0].key, "store.encryption_keys");
        assert!(e.problems[0].message.starts_with("PORTCULLIS_STORE_KEY: "), "{e}");
    }

    #[test]
    fn postgres_requires_a_url_and_hides_it() {
        let errs = errors(&with("[store]\nkind = \"postgres\"\n"));
        assert_has(&errs, "store.url", "is required");
        let errs = errors(&with(
            "[store]\nkind = \"postgres\"\nurl = \"mysql://secret-password@db\"\n",
        ));
        assert_has(&errs, "store.url", "postgres://");
        // What the store would refuse at start-up is refused here, secret kept.
        for bad in [
            "postgres://u:hunter2@db:99999/x",
            "postgres://u:hunter2@db:5432/x?sslmode=bogus",
        ] {
            let errs = errors(&with(&format!("[store]\nkind = \"postgres\"\nurl = \"{bad}\"\n")));
            assert_has(&errs, "store.url", "value not shown");
            assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:#?}");
        }
        assert!(!errs.join("\n").contains("secret-password"));
        let env = |name: &str| match name {
            "DATABASE_URL" => Some("postgres://u:p@db/portcullis".to_owned()),
            other => std_env(other),
        };
        let loaded = load_str(
            &with("[store]\nkind = \"postgres\"\nurl = \"env:DATABASE_URL\"\n"),
            &env,
        )
        .unwrap();
        assert!(
            matches!(&loaded.config.store.kind, StoreKind::Postgres { url, listen_url: None } if url.expose() == b"postgres://u:p@db/portcullis")
        );
        let errs = errors(&with(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://db/x\"\nlisten_url = \"mysql://other-secret@db\"\n",
        ));
        assert_has(&errs, "store.listen_url", "postgres://");
        assert!(!errs.join("\n").contains("other-secret"));
        let loaded = ok(&with(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://pooler:6432/x\"\nlisten_url = \"postgres://db:5432/x\"\n",
        ));
        assert!(
            matches!(&loaded.config.store.kind, StoreKind::Postgres { listen_url: Some(l), .. } if l.expose() == b"postgres://db:5432/x")
        );
        let loaded = ok(&with(
            "[store]\nkind = \"sqlite\"\nlisten_url = \"postgres://db/x\"\n",
        ));
        assert_has(&warnings(&loaded), "store.listen_url", "ignored");
        let loaded = ok(&with("[store]\nkind = \"memory\"\npath = \"x.db\"\n"));
        assert!(matches!(loaded.config.store.kind, StoreKind::Memory));
        assert_has(&warnings(&loaded), "store.path", "ignored");
    }
}
