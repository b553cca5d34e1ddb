//! `[session]`: the session cookie and the secrets that sign it.

use std::net::IpAddr;

use super::context::Ctx;
use super::duration::duration;
use super::fields::{choice, normalize_host};
use super::raw::RawSession;
use super::secrets::{Absent, NamedSecret, secret_list};
use super::{SameSite, SessionConfig, defaults};

/// RFC 6265 `cookie-name` is an RFC 7230 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn convert_session(cx: &mut Ctx<'_>, raw: RawSession) -> SessionConfig {
    let cookie_name = raw
        .cookie_name
        .unwrap_or_else(|| defaults::COOKIE_NAME.to_owned());
    if !is_token(&cookie_name) {
        cx.error(
            "session.cookie_name",
            format!("must be a cookie name token (letters, digits, !#$%&'*+-.^_`|~), got {cookie_name:?}"),
        );
    }
    let absent = Absent {
        is_error: true,
        unset: &format!(
            "no session secret: set the environment variable {} (generate a value with `portcullis gen-key`) or configure session.secrets",
            defaults::SESSION_SECRET_ENV
        ),
        empty: "at least one secret is required (generate one with `portcullis gen-key`)",
    };
    let mut secrets = Vec::new();
    for NamedSecret { key, label, secret } in secret_list(
        cx,
        "session.secrets",
        raw.secrets,
        defaults::SESSION_SECRET_ENV,
        absent,
    ) {
        if secret.len() < defaults::MIN_SESSION_SECRET_BYTES {
            cx.error(
                key,
                format!(
                    "{label}must be at least {} bytes (got {}); generate one with `portcullis gen-key`",
                    defaults::MIN_SESSION_SECRET_BYTES,
                    secret.len()
                ),
            );
        }
        secrets.push(secret);
    }
    let lifetime = duration(
        cx,
        "session.lifetime",
        raw.lifetime,
        defaults::SESSION_LIFETIME_SECS,
        false,
    );
    let idle_timeout = duration(
        cx,
        "session.idle_timeout",
        raw.idle_timeout,
        defaults::SESSION_IDLE_TIMEOUT_SECS,
        false,
    );
    if idle_timeout > lifetime {
        cx.warn(
            "session.idle_timeout",
            "is longer than session.lifetime, so it never applies",
        );
    }
    // Not zero: each replica reads the revocation log every half of it, and
    // a view older than it fails protected routes closed (503).
    let revocation_check = duration(
        cx,
        "session.revocation_check",
        raw.revocation_check,
        defaults::REVOCATION_CHECK_SECS,
        false,
    );
    let domain = match raw.domain.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match normalize_host(text.trim_start_matches('.')) {
            Ok(d) if d.starts_with('[') || d.parse::<IpAddr>().is_ok() => {
                cx.error(
                    "session.domain",
                    "must be a domain name, not an IP address (leave it empty for a host-only cookie)",
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.error("session.domain", e);
                None
            }
        },
    };
    let secure = raw.secure.unwrap_or(defaults::SESSION_SECURE);
    let same_site = choice(
        cx,
        "session.same_site",
        raw.same_site,
        defaults::SAME_SITE,
        &[
            ("strict", SameSite::Strict),
            ("lax", SameSite::Lax),
            ("none", SameSite::None),
        ],
    );
    if same_site == SameSite::None && !secure {
        cx.error(
            "session.same_site",
            "\"none\" requires session.secure = true (browsers reject it otherwise)",
        );
    }
    // Browsers enforce the cookie prefixes; a config that breaks them would never get a session.
    if cookie_name.starts_with("__Host-") || cookie_name.starts_with("__Secure-") {
        if !secure {
            cx.error(
                "session.cookie_name",
                "a __Host- or __Secure- cookie requires session.secure = true",
            );
        }
        if cookie_name.starts_with("__Host-") && domain.is_some() {
            cx.error("session.domain", "must be empty for a __Host- cookie");
        }
    }
    SessionConfig {
        cookie_name,
        secrets,
        lifetime,
        idle_timeout,
        revocation_check,
        domain,
        secure,
        same_site,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn session_values_are_checked() {
        let loaded = ok(&with(
            "[session]\ndomain = \".Example.com\"\nsame_site = \"strict\"\nsecure = false\ncookie_name = \"gw\"\n",
        ));
        let s = &loaded.config.session;
        assert_eq!(s.domain.as_deref(), Some("example.com"));
        assert_eq!(s.same_site, SameSite::Strict);
        assert_eq!(s.cookie_name, "gw");
        let errs = errors(&with(
            "[session]\ncookie_name = \"my session\"\ndomain = \"example.com:443\"\nsame_site = \"loose\"\n",
        ));
        assert_has(&errs, "session.cookie_name", "cookie name token");
        assert_has(&errs, "session.domain", "port");
        assert_has(&errs, "session.same_site", "must be one of");
        let errs = errors(&with(
            "[session]\ncookie_name = \"__Host-s\"\ndomain = \"example.com\"\n",
        ));
        assert_has(&errs, "session.domain", "__Host-");
        let loaded = ok(&with("[session]\nlifetime = \"1h\"\nidle_timeout = \"2h\"\n"));
        assert_has(&warnings(&loaded), "session.idle_timeout", "never applies");
    }

    #[test]
    fn session_secret_default_requires_the_environment_variable() {
        let env = |name: &str| {
            if name == defaults::SESSION_SECRET_ENV {
                None
            } else {
                std_env(name)
            }
        };
        let e = load_str(MINIMAL, &env).unwrap_err();
        let errs: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert_has(&errs, "session.secrets", "PORTCULLIS_SESSION_SECRET");
        assert_has(&errs, "session.secrets", "portcullis gen-key");
        // Too short from the default variable: named by the variable.
        let env = |name: &str| {
            if name == defaults::SESSION_SECRET_ENV {
                Some("short".into())
            } else {
                std_env(name)
            }
        };
        let e = load_str(MINIMAL, &env).unwrap_err();
        assert_eq!(
            e.problems[0].to_string(),
            "session.secrets: PORTCULLIS_SESSION_SECRET: must be at least 32 bytes (got 5); generate one with `portcullis gen-key`"
        );
        let errs = errors(&with("[session]\nsecrets = []\n"));
        assert_has(&errs, "session.secrets", "at least one");
    }

    #[test]
    fn secure_cookie_warnings_follow_the_transport() {
        let loaded = ok(&with("[server]\nexternal_url = \"http://gw.example.com\"\n"));
        assert_has(&warnings(&loaded), "session.secure", "plain http");
        let loaded = ok(&with(
            "[server]\nexternal_url = \"https://gw.example.com\"\n[session]\nsecure = false\n",
        ));
        assert_has(&warnings(&loaded), "session.secure", "may leak");
    }
}
