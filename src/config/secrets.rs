//! Secrets: inline, `file:PATH` or `env:NAME`. Messages name the key, the
//! file or the variable, never the value.

use super::context::Ctx;
use crate::secret::Secret;

/// The environment variables named by `env:` secrets (any config loaded by
/// this process), kept out of the programs the gateway starts.
static SECRET_VARIABLES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

pub(crate) fn note_secret_variable(name: &str) {
    let mut names = SECRET_VARIABLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !names.contains(name) {
        names.insert(name.to_owned());
    }
}

/// Whether a child process must not inherit the environment variable
/// `name`: the gateway's own (`PORTCULLIS_*`: session and store keys, admin
/// token) and every variable an `env:` secret of the config named.
pub fn is_secret_variable(name: &str) -> bool {
    name.starts_with("PORTCULLIS_")
        || SECRET_VARIABLES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
}

/// Resolves an inline, `file:PATH` or `env:NAME` secret. Messages name the
/// file or variable, never the value.
pub(super) fn secret(cx: &mut Ctx<'_>, key: &str, value: &str) -> Option<Secret> {
    let bytes = if let Some(path) = value.strip_prefix("file:") {
        if path.is_empty() {
            cx.error(key, "\"file:\" needs a path, e.g. \"file:/run/secrets/name\"");
            return None;
        }
        match std::fs::read(path) {
            Ok(mut bytes) => {
                // Editors and `echo` add a newline the operator did not mean as part of the secret.
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                if bytes.is_empty() {
                    cx.error(key, format!("secret file {path} is empty"));
                    return None;
                }
                bytes
            }
            Err(e) => {
                cx.error(key, format!("cannot read secret file {path}: {e}"));
                return None;
            }
        }
    } else if let Some(name) = value.strip_prefix("env:") {
        if name.is_empty() {
            cx.error(key, "\"env:\" needs a variable name, e.g. \"env:MY_SECRET\"");
            return None;
        }
        note_secret_variable(name);
        match (cx.env)(name) {
            Some(v) if v.is_empty() => {
                cx.error(key, format!("environment variable {name} is empty"));
                return None;
            }
            Some(v) => v.into_bytes(),
            None => {
                cx.error(key, format!("environment variable {name} is not set"));
                return None;
            }
        }
    } else {
        if value.is_empty() {
            cx.error(key, "must not be empty");
            return None;
        }
        value.as_bytes().to_vec()
    };
    Some(Secret::new(bytes))
}

/// A resolved secret with the key and label its messages use.
pub(super) struct NamedSecret {
    pub(super) key: String,
    /// `"PORTCULLIS_SESSION_SECRET: "` for a value taken from a default variable.
    pub(super) label: String,
    pub(super) secret: Secret,
}

/// What an empty secret list means, and how it is reported under the list's key.
pub(super) struct Absent<'m> {
    /// An error (the gateway cannot run without it) rather than a warning.
    pub(super) is_error: bool,
    /// The key is not configured and its default variable is unset.
    pub(super) unset: &'m str,
    /// The key is configured, but no entry of it resolved.
    pub(super) empty: &'m str,
}

/// A secret list whose default is one `env:` reference. Configured
/// references must resolve; an empty result is reported as `absent` says.
pub(super) fn secret_list(
    cx: &mut Ctx<'_>,
    key: &str,
    values: Option<Vec<String>>,
    env_name: &str,
    absent: Absent<'_>,
) -> Vec<NamedSecret> {
    let (out, why) = match values {
        None => {
            let out: Vec<NamedSecret> = cx
                .var(env_name)
                .map(|v| NamedSecret {
                    key: key.to_owned(),
                    label: format!("{env_name}: "),
                    secret: Secret::new(v),
                })
                .into_iter()
                .collect();
            (out, absent.unset)
        }
        Some(list) => {
            let mut out = Vec::new();
            for (i, text) in list.iter().enumerate() {
                let k = format!("{key}[{i}]");
                if let Some(secret) = secret(cx, &k, text) {
                    out.push(NamedSecret {
                        key: k,
                        label: String::new(),
                        secret,
                    });
                }
            }
            (out, absent.empty)
        }
    };
    if out.is_empty() {
        if absent.is_error {
            cx.error(key, why);
        } else {
            cx.warn(key, why);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn secrets_resolve_inline_from_files_and_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file-0123456789abcdef0123456789\n").unwrap();
        let crlf = dir.path().join("secret-crlf");
        std::fs::write(&crlf, "from-a-crlf-file-0123456789abcdef01234\r\n").unwrap();
        let text = with(&format!(
            "[session]\nsecrets = [\"inline-0123456789abcdef0123456789abcdef\", \"file:{}\", \"file:{}\", \"env:OTHER\"]\n",
            file.display(),
            crlf.display()
        ));
        let env = |name: &str| match name {
            "OTHER" => Some("from-the-env-0123456789abcdef0123456789".to_owned()),
            other => std_env(other),
        };
        let loaded = load_str(&text, &env).unwrap();
        let got: Vec<&[u8]> = loaded.config.session.secrets.iter().map(Secret::expose).collect();
        assert_eq!(
            got,
            vec![
                b"inline-0123456789abcdef0123456789abcdef".as_slice(),
                b"from-a-file-0123456789abcdef0123456789",
                b"from-a-crlf-file-0123456789abcdef01234",
                b"from-the-env-0123456789abcdef0123456789",
            ]
        );
    }

    #[test]
    fn unresolvable_secret_references_name_the_key() {
        let errs = errors(&with(
            "[session]\nsecrets = [\"env:NOPE\", \"file:/nonexistent/portcullis-secret\", \"env:\", \"\"]\n\
             [admin]\ntokens = [\"env:ALSO_NOPE\"]\n[store]\nencryption_keys = [\"env:KEY_NOPE\"]\n",
        ));
        assert_has(
            &errs,
            "session.secrets[0]",
            "environment variable NOPE is not set",
        );
        assert_has(
            &errs,
            "session.secrets[1]",
            "cannot read secret file /nonexistent/portcullis-secret",
        );
        assert_has(&errs, "session.secrets[2]", "needs a variable name");
        assert_has(&errs, "session.secrets[3]", "must not be empty");
        assert_has(&errs, "admin.tokens[0]", "ALSO_NOPE is not set");
        assert_has(&errs, "store.encryption_keys[0]", "KEY_NOPE is not set");
    }

    #[test]
    fn secret_values_never_appear_in_messages() {
        let errs = errors(&with(
            "[session]\nsecrets = [\"hunter2-short\"]\n[admin]\ntokens = \"hunter3-not-a-list\"\n\
             [store]\nencryption_keys = [\"hunter4-not-base64!\"]\n",
        ));
        let all = errs.join("\n");
        assert!(!all.contains("hunter"), "{all}");
        assert_has(&errs, "session.secrets[0]", "at least 32 bytes");
        assert_has(&errs, "admin.tokens", "not shown");
        assert_has(&errs, "store.encryption_keys[0]", "not valid base64");
        // Wrong types inside a secret list: serde would quote the value.
        let errs = errors(&with("[session]\nsecrets = [123456789]\n"));
        assert!(!errs.join("\n").contains("123456789"), "{errs:?}");
        // A syntax error on a secret's line does not quote the line.
        let e = load("[session]\nsecrets = [\"hunter5\" \"x\"]\n").unwrap_err();
        assert!(!e.to_string().contains("hunter5"), "{e}");
    }

    #[test]
    fn unset_admin_token_and_store_key_defaults_are_warnings() {
        let env = |name: &str| {
            if name == defaults::SESSION_SECRET_ENV {
                Some(SESSION_SECRET.into())
            } else {
                None
            }
        };
        let loaded = load_str(MINIMAL, &env).unwrap();
        assert!(loaded.config.admin.tokens.is_empty());
        assert!(loaded.config.store.encryption_keys.is_empty());
        let w = warnings(&loaded);
        assert_has(&w, "admin.tokens", "admin API is disabled");
        assert_has(&w, "store.encryption_keys", "PORTCULLIS_STORE_KEY is not set");
    }
}
