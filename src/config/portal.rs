//! `[portal]` (the sign-in pages' prefix, title, redirect hosts and origins)
//! and `[identity_headers]` (the headers that tell upstreams who signed in).

use super::context::Ctx;
use super::fields::{each, hosts, http_url};
use super::raw::{RawIdentityHeaders, RawPortal};
use super::{IdentityHeaders, PortalConfig, defaults};

/// Headers the gateway manages itself: using one as an identity header would
/// make the proxy strip or overwrite it, breaking requests or trust.
const RESERVED_HEADERS: [&str; 19] = [
    "host",
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "origin",
];

pub(super) fn convert_identity_headers(cx: &mut Ctx<'_>, raw: RawIdentityHeaders) -> IdentityHeaders {
    let mut header = |field: &str, value: Option<String>, default: &'static str| {
        let key = format!("identity_headers.{field}");
        let fallback = http::HeaderName::from_static(static_lower(default));
        let Some(text) = value else { return fallback };
        match http::HeaderName::from_bytes(text.trim().as_bytes()) {
            Ok(name) if RESERVED_HEADERS.contains(&name.as_str()) => {
                cx.error(key, format!("{text:?} is a header the gateway manages itself"));
                fallback
            }
            Ok(name) => name,
            Err(_) => {
                cx.error(key, format!("is not a valid HTTP header name (got {text:?})"));
                fallback
            }
        }
    };
    let user = header("user", raw.user, defaults::USER_HEADER);
    let groups = header("groups", raw.groups, defaults::GROUPS_HEADER);
    let email = header("email", raw.email, defaults::EMAIL_HEADER);
    let name = header("name", raw.name, defaults::NAME_HEADER);
    let all = [
        ("user", &user),
        ("groups", &groups),
        ("email", &email),
        ("name", &name),
    ];
    for (i, (field, h)) in all.iter().enumerate() {
        if let Some((other, _)) = all[..i].iter().find(|(_, earlier)| earlier == h) {
            cx.error(
                format!("identity_headers.{field}"),
                format!("{:?} is already used by identity_headers.{other}", h.as_str()),
            );
        }
    }
    IdentityHeaders {
        user,
        groups,
        email,
        name,
    }
}

/// `HeaderName::from_static` needs lower case; the defaults are spelled canonically.
fn static_lower(name: &'static str) -> &'static str {
    match name {
        defaults::USER_HEADER => "remote-user",
        defaults::GROUPS_HEADER => "remote-groups",
        defaults::EMAIL_HEADER => "remote-email",
        defaults::NAME_HEADER => "remote-name",
        _ => "x-portcullis-identity",
    }
}

pub(super) fn convert_portal(cx: &mut Ctx<'_>, raw: RawPortal) -> PortalConfig {
    let prefix = raw.prefix.unwrap_or_else(|| defaults::PORTAL_PREFIX.to_owned());
    if let Err(e) = check_prefix(&prefix) {
        cx.error("portal.prefix", e);
    }
    let title = raw.title.unwrap_or_else(|| defaults::PORTAL_TITLE.to_owned());
    let allowed_redirect_hosts = hosts(cx, "portal.allowed_redirect_hosts", raw.allowed_redirect_hosts);
    let trusted_origins = each(cx, "portal.trusted_origins", raw.trusted_origins, origin);
    if title.trim().is_empty() || title.chars().count() > 100 || title.chars().any(char::is_control) {
        cx.error(
            "portal.title",
            "must be 1 to 100 characters without control characters",
        );
    }
    let logo_url = raw.logo_url.and_then(|v| match logo_url(&v) {
        Ok(u) => Some(u),
        Err(e) => {
            cx.error("portal.logo_url", e);
            None
        }
    });
    let accent_color = raw.accent_color.and_then(|v| match accent_color(&v) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.error("portal.accent_color", e);
            None
        }
    });
    PortalConfig {
        prefix,
        title,
        logo_url,
        accent_color,
        allowed_redirect_hosts,
        trusted_origins,
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("must start with \"/\" (got {prefix:?})"));
    }
    if prefix == "/" {
        return Err("must not be \"/\" alone: the portal needs its own path, e.g. \"/_portcullis\"".into());
    }
    if prefix.ends_with('/') {
        return Err(format!("must not end with \"/\" (got {prefix:?})"));
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-/.".contains(c))
    {
        return Err(format!(
            "may contain only letters, digits, \"_\", \"-\", \".\" and \"/\" (got {prefix:?})"
        ));
    }
    if prefix[1..]
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "must not contain empty, \".\" or \"..\" segments (got {prefix:?})"
        ));
    }
    Ok(())
}

/// A logo: `https://host/...` (any host: it is only an image) or a path on
/// the gateway's own origin (`/static/logo.svg`); never `http:`, `data:`,
/// `javascript:` or a protocol-relative `//host`.
fn logo_url(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '"')
    {
        return Err(format!(
            "must not contain spaces, quotes or backslashes (got {text:?})"
        ));
    }
    if t.starts_with('/') && !t.starts_with("//") {
        return Ok(t.to_owned());
    }
    let url = url::Url::parse(t)
        .map_err(|_| format!("must be an https:// URL or a path starting with \"/\" (got {text:?})"))?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "must be an https:// URL or a path starting with \"/\" (got {text:?})"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    Ok(url.to_string())
}

/// `#rgb` or `#rrggbb`, lower-cased.
fn accent_color(text: &str) -> Result<String, String> {
    let t = text.trim();
    let hex = t.strip_prefix('#').unwrap_or("");
    if (hex.len() == 3 || hex.len() == 6) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(format!(
            "must be a colour like \"#1d4ed8\" or \"#15c\" (got {text:?})"
        ))
    }
}

/// `scheme://host[:port]`, serialized the way browsers send `Origin`.
fn origin(text: &str) -> Result<String, String> {
    let url = http_url(text)?;
    // A lone trailing "/" is tolerated (the URL parser adds it anyway).
    if url.path() != "/" {
        return Err(format!(
            "must be scheme://host[:port] without a path (got {text:?})"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn identity_headers_are_checked() {
        let loaded = ok(&with("[identity_headers]\nuser = \"X-Auth-User\"\n"));
        assert_eq!(loaded.config.identity_headers.user.as_str(), "x-auth-user");
        let errs = errors(&with(
            "[identity_headers]\nuser = \"bad header\"\ngroups = \"Cookie\"\nemail = \"Remote-Name\"\n",
        ));
        assert_has(&errs, "identity_headers.user", "not a valid HTTP header name");
        assert_has(&errs, "identity_headers.groups", "manages itself");
        assert_has(
            &errs,
            "identity_headers.name",
            "already used by identity_headers.email",
        );
    }

    #[test]
    fn portal_values_are_checked() {
        let loaded = ok(&with(
            "[portal]\nprefix = \"/auth\"\nallowed_redirect_hosts = [\"Other.Example.com\"]\n\
             trusted_origins = [\"https://SPA.example.com\", \"http://localhost:5173/\"]\n",
        ));
        let p = &loaded.config.portal;
        assert_eq!(p.prefix, "/auth");
        assert_eq!(p.allowed_redirect_hosts, ["other.example.com"]);
        assert_eq!(
            p.trusted_origins,
            ["https://spa.example.com", "http://localhost:5173"]
        );
        for bad in ["auth", "/", "/auth/", "/a uth", "/a//b", "/a/../b"] {
            let errs = errors(&with(&format!("[portal]\nprefix = \"{bad}\"\n")));
            assert_has(&errs, "portal.prefix", "");
        }
        let errs = errors(&with(
            "[portal]\ntrusted_origins = [\"https://a.example.com/path\", \"a.example.com\"]\n\
             allowed_redirect_hosts = [\"https://x.example.com\"]\n",
        ));
        assert_has(&errs, "portal.trusted_origins[0]", "without a path");
        assert_has(&errs, "portal.trusted_origins[1]", "invalid URL");
        assert_has(&errs, "portal.allowed_redirect_hosts[0]", "bare host name");
    }

    #[test]
    fn branding_is_checked() {
        let loaded = ok(&with(
            "[portal]\ntitle = \"Acme sign-in\"\nlogo_url = \"https://cdn.example.com/logo.svg\"\naccent_color = \"#0A7\"\n",
        ));
        let p = &loaded.config.portal;
        assert_eq!(p.logo_url.as_deref(), Some("https://cdn.example.com/logo.svg"));
        assert_eq!(p.accent_color.as_deref(), Some("#0a7"));
        assert!(
            ok(&with("[portal]\nlogo_url = \"/static/logo.png\"\n"))
                .config
                .portal
                .logo_url
                .is_some()
        );
        for bad in [
            "http://x.example/l.png",
            "//x.example/l.png",
            "javascript:alert(1)",
            "data:image/png;base64,AA",
            "logo.png",
        ] {
            let errs = errors(&with(&format!("[portal]\nlogo_url = \"{bad}\"\n")));
            assert_has(&errs, "portal.logo_url", "");
        }
        for bad in ["red", "#12", "#1234567", "#ggg", "1d4ed8", "#1d4ed8;x"] {
            let errs = errors(&with(&format!("[portal]\naccent_color = \"{bad}\"\n")));
            assert_has(&errs, "portal.accent_color", "");
        }
        let errs = errors(&with("[portal]\ntitle = \"\"\n"));
        assert_has(&errs, "portal.title", "");
    }
}
