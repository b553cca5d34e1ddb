//! `[forward_auth]`: the gateway as the auth service of another proxy (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`; SPEC section
//! 11). Its own file so the section's keys, defaults and checks live together.

use serde::Deserialize;

/// Default of `forward_auth.enabled`: the endpoints answer 404 until an
/// operator turns them on.
pub const ENABLED: bool = false;

/// `[forward_auth]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardAuthConfig {
    /// Serve `{prefix}/authz/auth-request` and `{prefix}/authz/forward-auth`.
    pub enabled: bool,
}

/// `[forward_auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    pub enabled: Option<bool>,
}

/// The validated section.
pub(super) fn convert(raw: RawForwardAuth) -> ForwardAuthConfig {
    ForwardAuthConfig {
        enabled: raw.enabled.unwrap_or(ENABLED),
    }
}

/// Problems `(key, message)` that need another section: the endpoints only
/// answer peers in `server.trusted_proxies`, so enabling them without any
/// would refuse every call.
pub(super) fn check(
    fa: &ForwardAuthConfig,
    trusted_proxies: Option<&[ipnet::IpNet]>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if fa.enabled && trusted_proxies.is_some_and(<[_]>::is_empty) {
        problems.push((
            "forward_auth.enabled".to_owned(),
            "needs server.trusted_proxies: only the front proxy's address may call the endpoints, and with none every call is refused".to_owned(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    const BASE: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[admin]
tokens = []
[store]
kind = "memory"
encryption_keys = []
"#;

    fn load(extra: &str) -> Result<crate::config::LoadedConfig, crate::config::ConfigError> {
        crate::config::load_str(&format!("{BASE}{extra}"), &|_| None)
    }

    #[test]
    fn off_by_default_and_on_with_trusted_proxies() {
        assert!(!load("").unwrap().config.forward_auth.enabled);
        let on =
            load("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[forward_auth]\nenabled = true\n").unwrap();
        assert!(on.config.forward_auth.enabled);
    }

    #[test]
    fn enabled_without_trusted_proxies_and_unknown_keys_are_errors() {
        let e = load("[forward_auth]\nenabled = true\n").unwrap_err().to_string();
        assert!(e.contains("forward_auth.enabled"), "{e}");
        assert!(e.contains("trusted_proxies"), "{e}");
        let e = load("[forward_auth]\nenable = true\n").unwrap_err().to_string();
        assert!(e.contains("forward_auth.enable"), "{e}");
        let e = load("[forward_auth]\nenabled = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("forward_auth.enabled"), "{e}");
    }
}
