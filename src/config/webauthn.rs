//! `[factors.webauthn]`: security keys and passkeys.
//!
//! The relying party id defaults to the host of `server.external_url` and
//! the allowed origins to that URL's origin; both are resolved when the
//! ceremonies run ([`WebauthnConfig::relying_party`]), and the cross checks
//! of `load.rs` make sure an enabled factor has them.

use serde::Deserialize;

use super::context::Ctx;
use super::fields::choice;

/// The user verification the ceremonies ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserVerification {
    /// Asked for, not required: a key without a PIN still signs in as a second factor.
    Preferred,
    /// Required: every ceremony must verify the user (PIN, biometrics).
    Required,
    /// Not asked for (treated like `preferred` by the ceremonies; see the README).
    Discouraged,
}

#[derive(Debug, Clone)]
pub struct WebauthnConfig {
    pub enabled: bool,
    /// Explicit relying party id; `None`: the host of `server.external_url`.
    pub rp_id: Option<String>,
    /// Shown by the browser and the authenticator; defaults to the portal title.
    pub rp_name: Option<String>,
    /// Allowed origins; empty: the origin of `server.external_url`.
    pub origins: Vec<url::Url>,
    pub user_verification: UserVerification,
}

impl Default for WebauthnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rp_id: None,
            rp_name: None,
            origins: Vec::new(),
            user_verification: UserVerification::Preferred,
        }
    }
}

impl WebauthnConfig {
    /// The relying party id and the allowed origins with `external_url`
    /// filled in; `None` when neither the section nor `external_url` names them.
    pub fn relying_party(&self, external_url: Option<&url::Url>) -> Option<(String, Vec<url::Url>)> {
        let rp_id = match &self.rp_id {
            Some(id) => id.clone(),
            None => external_url?.host_str()?.to_ascii_lowercase(),
        };
        let origins = if self.origins.is_empty() {
            vec![origin_of(external_url?)?]
        } else {
            self.origins.clone()
        };
        Some((rp_id, origins))
    }
}

fn origin_of(u: &url::Url) -> Option<url::Url> {
    url::Url::parse(&u.origin().ascii_serialization()).ok()
}

/// The raw `[factors.webauthn]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawWebauthn {
    pub enabled: Option<bool>,
    pub rp_id: Option<String>,
    pub rp_name: Option<String>,
    pub origins: Option<Vec<String>>,
    pub user_verification: Option<String>,
    pub attestation: Option<String>,
}

pub(super) fn convert_webauthn(cx: &mut Ctx<'_>, raw: RawWebauthn) -> WebauthnConfig {
    let rp_id = raw.rp_id.map(|s| s.trim().to_ascii_lowercase()).filter(|s| {
        if s.is_empty() {
            return false;
        }
        let ok = !s.contains(['/', ':', ' ']) && s.parse::<std::net::IpAddr>().is_err();
        if !ok {
            cx.error(
                "factors.webauthn.rp_id",
                "must be a host name (no scheme, port or path; an IP address cannot be a relying party id)",
            );
        }
        ok
    });
    let mut origins = Vec::new();
    for (i, o) in raw.origins.unwrap_or_default().into_iter().enumerate() {
        match url::Url::parse(o.trim()) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() && u.path() == "/" => {
                if u.scheme() == "http" && u.host_str() != Some("localhost") {
                    cx.warn(
                        format!("factors.webauthn.origins[{i}]"),
                        "plain http: browsers offer WebAuthn only on https (or http://localhost)",
                    );
                }
                origins.extend(origin_of(&u));
            }
            _ => cx.error(
                format!("factors.webauthn.origins[{i}]"),
                format!("must be an origin like \"https://app.example.com\" (got {o:?})"),
            ),
        }
    }
    if let Some(a) = raw.attestation
        && a != "none"
    {
        cx.error(
            "factors.webauthn.attestation",
            format!("only \"none\" is supported (got {a:?})"),
        );
    }
    let user_verification = choice(
        cx,
        "factors.webauthn.user_verification",
        raw.user_verification,
        "preferred",
        &[
            ("preferred", UserVerification::Preferred),
            ("required", UserVerification::Required),
            ("discouraged", UserVerification::Discouraged),
        ],
    );
    WebauthnConfig {
        enabled: raw.enabled.unwrap_or(false),
        rp_id,
        rp_name: raw.rp_name.filter(|n| !n.trim().is_empty()),
        origins,
        user_verification,
    }
}

/// Cross check: an enabled factor needs a relying party id and an origin,
/// and the relying party id must be the origins' host or a parent of it.
pub(super) fn check(cx: &mut Ctx<'_>, cfg: &WebauthnConfig, external_url: Option<&url::Url>) {
    if !cfg.enabled {
        return;
    }
    let Some((rp_id, origins)) = cfg.relying_party(external_url) else {
        cx.error(
            "factors.webauthn",
            "needs server.external_url (or both factors.webauthn.rp_id and origins): browsers bind credentials to it",
        );
        return;
    };
    if rp_id.parse::<std::net::IpAddr>().is_ok() {
        cx.error(
            "factors.webauthn.rp_id",
            "an IP address cannot be a relying party id: set server.external_url to a host name (http://localhost works for testing)",
        );
        return;
    }
    for (i, o) in origins.iter().enumerate() {
        let host = o.host_str().unwrap_or_default();
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            cx.error(
                format!("factors.webauthn.origins[{i}]"),
                format!("{host} is not {rp_id} or below it: the browser would refuse the relying party id"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn defaults_come_from_external_url_and_bad_values_are_named() {
        let loaded = ok(&with(
            "[server]\nexternal_url = \"https://app.example.com\"\n[factors.webauthn]\nenabled = true\n",
        ));
        let w = &loaded.config.factors.webauthn;
        let (rp, origins) = w
            .relying_party(loaded.config.server.external_url.as_ref())
            .unwrap();
        assert_eq!(rp, "app.example.com");
        assert_eq!(origins[0].as_str(), "https://app.example.com/");
        let errs = errors(&with("[factors.webauthn]\nenabled = true\n"));
        assert_has(&errs, "factors.webauthn", "external_url");
        let errs = errors(&with(
            "[factors.webauthn]\nenabled = true\nrp_id = \"example.com\"\norigins = [\"https://evil.test\", \"nope\"]\nattestation = \"direct\"\nuser_verification = \"always\"\n",
        ));
        assert_has(&errs, "factors.webauthn.origins[0]", "not example.com");
        assert_has(&errs, "factors.webauthn.origins[1]", "must be an origin");
        assert_has(&errs, "factors.webauthn.attestation", "only \"none\"");
        assert_has(&errs, "factors.webauthn.user_verification", "must be one of");
    }
}
