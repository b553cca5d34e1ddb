//! `[users.ldap]`: a directory (OpenLDAP, Active Directory) as a source of
//! users, checked by binding as the user (SPEC section 12).
//!
//! The section is read from its own TOML table so that its keys, presets and
//! checks live here; the loader hands it over with a way to resolve secrets
//! (`env:`/`file:`) and gets back the typed [`LdapConfig`] plus every problem
//! found, each with its key (`users.ldap.user_filter: ...`).
//!
//! The two presets fill in what an operator would otherwise copy from a
//! how-to: filters and attribute names. Any key given explicitly wins over
//! the preset.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use crate::secret::Secret;

/// Connect, bind and search timeout when `timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a signed-in user's groups and state are re-read by default.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The shortest `refresh_interval` accepted (a full re-read of the users).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The placeholder for the typed login in `user_filter`.
pub const USERNAME: &str = "{username}";
/// The placeholder for the user's DN in `group_filter`.
pub const DN: &str = "{dn}";
/// Active Directory's "transitive membership" matching rule
/// (LDAP_MATCHING_RULE_IN_CHAIN): nested groups in one search.
pub const MATCHING_RULE_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// Active Directory's `userAccountControl` flag of a disabled account.
pub const AD_ACCOUNTDISABLE: u64 = 0x2;

/// Which directory the defaults are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// OpenLDAP (and 389-ds and other RFC 4519 directories).
    OpenLdap,
    /// Microsoft Active Directory.
    ActiveDirectory,
}

impl Implementation {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::OpenLdap => "openldap",
            Implementation::ActiveDirectory => "active_directory",
        }
    }

    /// The preset's user filter.
    pub fn user_filter(self) -> &'static str {
        match self {
            Implementation::OpenLdap => "(&(objectClass=inetOrgPerson)(uid={username}))",
            Implementation::ActiveDirectory => {
                "(&(objectCategory=person)(objectClass=user)(sAMAccountName={username}))"
            }
        }
    }

    /// The preset's group filter (AD: nested groups through the in-chain rule).
    pub fn group_filter(self) -> String {
        match self {
            Implementation::OpenLdap => "(&(objectClass=groupOfNames)(member={dn}))".into(),
            Implementation::ActiveDirectory => {
                format!("(&(objectClass=group)(member:{MATCHING_RULE_IN_CHAIN}:={{dn}}))")
            }
        }
    }

    /// The preset's attribute names.
    pub fn attributes(self) -> LdapAttributes {
        let (id, username) = match self {
            Implementation::OpenLdap => ("entryUUID", "uid"),
            Implementation::ActiveDirectory => ("objectGUID", "sAMAccountName"),
        };
        LdapAttributes {
            id: id.into(),
            username: username.into(),
            display_name: "displayName".into(),
            email: "mail".into(),
            phone: "telephoneNumber".into(),
            group_name: "cn".into(),
            member_of: "memberOf".into(),
        }
    }
}

/// Attribute names read from user and group entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapAttributes {
    /// The stable id (`entryUUID`, `objectGUID`): what factors are keyed by.
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: String,
    pub phone: String,
    /// The group entry's name attribute (`cn`).
    pub group_name: String,
    /// Read when `group_filter` is empty: the user's groups as DNs.
    pub member_of: String,
}

/// A validated `[users.ldap]`.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    pub start_tls: bool,
    /// The private CA's certificates (`ca`); empty: the webpki roots.
    pub ca: Vec<CertificateDer<'static>>,
    /// Where `ca` came from (for messages).
    pub ca_path: Option<PathBuf>,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    pub implementation: Implementation,
    /// Contains `{username}`.
    pub user_filter: String,
    /// Contains `{dn}` or `{username}`; `None`: groups come from `memberOf`.
    pub group_filter: Option<String>,
    pub attributes: LdapAttributes,
    pub timeout: Duration,
    pub refresh_interval: Duration,
}

impl LdapConfig {
    /// True for `ldaps://`.
    pub fn is_ldaps(&self) -> bool {
        self.url.starts_with("ldaps://")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLdap {
    url: Option<String>,
    start_tls: Option<bool>,
    ca: Option<String>,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    base_dn: Option<String>,
    implementation: Option<String>,
    user_filter: Option<String>,
    group_filter: Option<String>,
    attributes: Option<RawAttributes>,
    timeout: Option<String>,
    refresh_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAttributes {
    id: Option<String>,
    username: Option<String>,
    display_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    group_name: Option<String>,
    member_of: Option<String>,
}

/// The outcome of reading `[users.ldap]`: the section when it is valid, and
/// every problem as `(key, message)`.
#[derive(Debug, Default)]
pub struct Converted {
    pub config: Option<LdapConfig>,
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

const PREFIX: &str = "users.ldap";

fn key(k: &str) -> String {
    format!("{PREFIX}.{k}")
}

/// Reads `[users.ldap]`. `secret(key, value)` resolves an inline, `env:` or
/// `file:` secret and reports its own problems (returning `None`).
pub fn convert(value: toml::Value, secret: &mut dyn FnMut(&str, &str) -> Option<Secret>) -> Converted {
    let mut out = Converted::default();
    let raw: RawLdap = match serde_path_to_error::deserialize(value) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let k = if path == "." || path.is_empty() {
                PREFIX.to_owned()
            } else {
                key(&path)
            };
            let msg = e.into_inner().to_string();
            out.errors.push((k, msg));
            return out;
        }
    };
    let mut err = |k: &str, m: String| out.errors.push((key(k), m));

    let implementation = match raw.implementation.as_deref().map(str::trim) {
        None | Some("openldap") => Implementation::OpenLdap,
        Some("active_directory") => Implementation::ActiveDirectory,
        Some(other) => {
            err(
                "implementation",
                format!("must be \"openldap\" or \"active_directory\" (got {other:?})"),
            );
            Implementation::OpenLdap
        }
    };

    let start_tls = raw.start_tls.unwrap_or(false);
    let url = match raw.url.as_deref().map(str::trim) {
        None | Some("") => {
            err(
                "url",
                "is required, e.g. \"ldaps://dc1.example.com\" or \"ldap://ldap.example.com\" with start_tls"
                    .into(),
            );
            String::new()
        }
        Some(text) => match check_url(text, start_tls) {
            Ok((url, warning)) => {
                if let Some(w) = warning {
                    out.warnings.push((key("url"), w));
                }
                url
            }
            Err(m) => {
                err("url", m);
                String::new()
            }
        },
    };

    let (ca, ca_path) = match raw.ca.as_deref().map(str::trim) {
        None | Some("") => (Vec::new(), None),
        Some(path) => {
            let path = PathBuf::from(path);
            match read_ca(&path) {
                Ok(certs) => (certs, Some(path)),
                Err(m) => {
                    err("ca", m);
                    (Vec::new(), None)
                }
            }
        }
    };
    if !ca.is_empty() && !start_tls && url.starts_with("ldap://") {
        out.warnings.push((
            key("ca"),
            "is only used for ldaps:// or start_tls = true; this connection is not encrypted".into(),
        ));
    }

    let bind_dn = match raw.bind_dn.as_deref().map(str::trim) {
        None | Some("") => {
            err(
                "bind_dn",
                "is required: the service account that searches for users".into(),
            );
            String::new()
        }
        Some(dn) => match check_dn(dn) {
            Ok(()) => dn.to_owned(),
            Err(m) => {
                err("bind_dn", m);
                String::new()
            }
        },
    };
    let bind_password = match raw.bind_password.as_deref() {
        None | Some("") => {
            // An empty simple bind is an anonymous success on many servers:
            // never let the service account be "signed in" that way.
            err(
                "bind_password",
                "is required (an empty password would be an anonymous bind); e.g. \"env:LDAP_BIND_PASSWORD\""
                    .into(),
            );
            None
        }
        Some(v) => secret(&key("bind_password"), v),
    };
    if bind_password.as_ref().is_some_and(|s| s.is_empty()) {
        err("bind_password", "must not be empty".into());
    }
    let base_dn = match raw.base_dn.as_deref().map(str::trim) {
        None | Some("") => {
            err("base_dn", "is required, e.g. \"dc=example,dc=com\"".into());
            String::new()
        }
        Some(dn) => match check_dn(dn) {
            Ok(()) => dn.to_owned(),
            Err(m) => {
                err("base_dn", m);
                String::new()
            }
        },
    };

    let user_filter = raw
        .user_filter
        .map(|f| f.trim().to_owned())
        .unwrap_or_else(|| implementation.user_filter().to_owned());
    if let Err(m) = check_filter(&user_filter, &[USERNAME]) {
        err("user_filter", m);
    }
    let group_filter = match raw.group_filter.map(|f| f.trim().to_owned()) {
        None => Some(implementation.group_filter()),
        Some(f) if f.is_empty() => None,
        Some(f) => Some(f),
    };
    if let Some(f) = &group_filter
        && let Err(m) = check_filter(f, &[DN, USERNAME])
    {
        err("group_filter", m);
    }

    let mut attributes = implementation.attributes();
    if let Some(a) = raw.attributes {
        let pairs = [
            ("id", a.id, &mut attributes.id),
            ("username", a.username, &mut attributes.username),
            ("display_name", a.display_name, &mut attributes.display_name),
            ("email", a.email, &mut attributes.email),
            ("phone", a.phone, &mut attributes.phone),
            ("group_name", a.group_name, &mut attributes.group_name),
            ("member_of", a.member_of, &mut attributes.member_of),
        ];
        for (name, given, slot) in pairs {
            let Some(v) = given else { continue };
            let v = v.trim();
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b';')
            {
                out.errors.push((
                    key(&format!("attributes.{name}")),
                    format!("must be an attribute name (letters, digits, '-') (got {v:?})"),
                ));
            } else {
                *slot = v.to_owned();
            }
        }
    }
    let mut err = |k: &str, m: String| out.errors.push((key(k), m));

    let mut dur = |k: &str, v: Option<String>, default: Duration, min: Duration| match v {
        None => default,
        Some(t) => match super::parse_duration(&t) {
            Ok(d) if d < min => {
                err(k, format!("must be at least {}", humanize(min)));
                default
            }
            Ok(d) => d,
            Err(m) => {
                err(k, m);
                default
            }
        },
    };
    let timeout = dur("timeout", raw.timeout, DEFAULT_TIMEOUT, Duration::from_millis(1));
    let refresh_interval = dur(
        "refresh_interval",
        raw.refresh_interval,
        DEFAULT_REFRESH_INTERVAL,
        MIN_REFRESH_INTERVAL,
    );
    if timeout > Duration::from_secs(60) {
        out.warnings.push((
            key("timeout"),
            "is over a minute: a sign-in waits this long for a slow directory".into(),
        ));
    }

    if out.errors.is_empty()
        && let Some(bind_password) = bind_password
    {
        out.config = Some(LdapConfig {
            url,
            start_tls,
            ca,
            ca_path,
            bind_dn,
            bind_password,
            base_dn,
            implementation,
            user_filter,
            group_filter,
            attributes,
            timeout,
            refresh_interval,
        });
    }
    out
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `ldap://host[:port]` or `ldaps://host[:port]`, nothing else; a warning
/// for passwords that would cross the network in clear.
fn check_url(text: &str, start_tls: bool) -> Result<(String, Option<String>), String> {
    let url = url::Url::parse(text)
        .map_err(|e| format!("not a URL ({e}): expected ldap://host or ldaps://host"))?;
    let scheme = url.scheme();
    if scheme != "ldap" && scheme != "ldaps" {
        return Err(format!(
            "scheme must be ldap or ldaps (got {scheme:?}); ldapi and others are not supported"
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("has no host".into());
    };
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err("must be scheme://host[:port] only: put the search base in base_dn".into());
    }
    if scheme == "ldaps" && start_tls {
        return Err("start_tls = true needs an ldap:// URL (ldaps:// is already TLS)".into());
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let clean = format!("{scheme}://{host}{port}");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let warning = (scheme == "ldap" && !start_tls && !loopback).then(|| {
        "ldap:// without start_tls sends users' passwords in clear: use ldaps:// or start_tls = true"
            .to_owned()
    });
    Ok((clean, warning))
}

fn read_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(c.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?);
    }
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A DN must parse as RFC 4514 (see [`crate::ldap_escape::parse_dn`]).
fn check_dn(dn: &str) -> Result<(), String> {
    crate::ldap_escape::parse_dn(dn)
        .map(|_| ())
        .map_err(|e| format!("not a valid DN: {e}"))
}

/// A filter must name one of `placeholders` and parse once they are filled in.
fn check_filter(filter: &str, placeholders: &[&str]) -> Result<(), String> {
    if !placeholders.iter().any(|p| filter.contains(p)) {
        return Err(format!(
            "must contain {} (where the value is put, escaped)",
            placeholders.join(" or ")
        ));
    }
    let mut probe = filter.to_owned();
    for p in [USERNAME, DN] {
        probe = probe.replace(p, "x");
    }
    if !probe.starts_with('(') || ldap3::parse_filter(&probe).is_err() {
        return Err(format!("is not a valid LDAP filter (RFC 4515): {filter:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Converted {
        let table: toml::Table = toml::from_str(text).unwrap();
        convert(toml::Value::Table(table), &mut |_k, v| {
            Some(Secret::new(
                v.strip_prefix("env:")
                    .map_or(v.to_owned(), |n| format!("from-{n}")),
            ))
        })
    }

    const BASE: &str = "url = \"ldaps://dc1.example.com\"\nbind_dn = \"cn=svc,dc=example,dc=com\"\n\
                        bind_password = \"env:LDAP_PW\"\nbase_dn = \"dc=example,dc=com\"\n";

    #[test]
    fn openldap_defaults_fill_in() {
        let c = run(BASE).config.unwrap();
        assert_eq!(c.implementation, Implementation::OpenLdap);
        assert_eq!(c.user_filter, "(&(objectClass=inetOrgPerson)(uid={username}))");
        assert_eq!(c.attributes.id, "entryUUID");
        assert_eq!(c.bind_password.expose(), b"from-LDAP_PW");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(c.is_ldaps());
    }

    #[test]
    fn active_directory_preset() {
        let c = run(&format!("{BASE}implementation = \"active_directory\"\n"))
            .config
            .unwrap();
        assert_eq!(c.attributes.id, "objectGUID");
        assert_eq!(c.attributes.username, "sAMAccountName");
        assert!(c.user_filter.contains("(sAMAccountName={username})"));
        assert_eq!(
            c.group_filter.as_deref(),
            Some("(&(objectClass=group)(member:1.2.840.113556.1.4.1941:={dn}))")
        );
        // Given keys win over the preset.
        let c = run(&format!(
            "{BASE}implementation = \"active_directory\"\ngroup_filter = \"\"\nattributes = {{ email = \"userPrincipalName\" }}\n"
        ))
        .config
        .unwrap();
        assert_eq!(c.group_filter, None);
        assert_eq!(c.attributes.email, "userPrincipalName");
        assert_eq!(c.attributes.id, "objectGUID");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad_ca = dir.path().join("ca.pem");
        std::fs::write(&bad_ca, "not pem").unwrap();
        let out = run(&format!(
            "url = \"http://dc1\"\nbind_dn = \"cn=svc,,dc=x\"\nbase_dn = \"dc=example,dc\"\n\
             user_filter = \"(uid=alice)\"\ngroup_filter = \"(member=x\"\nca = \"{}\"\n\
             implementation = \"novell\"\ntimeout = \"soon\"\nrefresh_interval = \"10ms\"\n\
             attributes = {{ id = \"entry UUID\" }}\n",
            bad_ca.display()
        ));
        assert!(out.config.is_none());
        let keys: Vec<&str> = out.errors.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "users.ldap.url",
            "users.ldap.bind_dn",
            "users.ldap.bind_password",
            "users.ldap.base_dn",
            "users.ldap.user_filter",
            "users.ldap.group_filter",
            "users.ldap.ca",
            "users.ldap.implementation",
            "users.ldap.timeout",
            "users.ldap.refresh_interval",
            "users.ldap.attributes.id",
        ] {
            assert!(keys.contains(&k), "{k} missing from {:?}", out.errors);
        }
        let missing_ca = run(&format!("{BASE}ca = \"/nonexistent/ca.pem\"\n"));
        assert!(
            missing_ca.errors[0].1.contains("cannot read"),
            "{:?}",
            missing_ca.errors
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let out = run(&format!("{BASE}user_filtre = \"(uid={{username}})\"\n"));
        assert!(out.config.is_none());
        assert_eq!(out.errors[0].0, "users.ldap.user_filtre");
        let out = run(&format!("{BASE}attributes = {{ mail = \"mail\" }}\n"));
        assert_eq!(out.errors[0].0, "users.ldap.attributes.mail");
    }

    #[test]
    fn urls() {
        assert_eq!(check_url("ldaps://dc1:636/", false).unwrap().0, "ldaps://dc1:636");
        assert!(check_url("ldaps://dc1", true).is_err(), "ldaps with start_tls");
        assert!(check_url("ldap://dc1/dc=x", false).is_err(), "a path");
        assert!(check_url("ldapi:///run/slapd", false).is_err());
        assert!(
            check_url("ldap://dc1", false).unwrap().1.is_some(),
            "clear text warns"
        );
        assert!(check_url("ldap://dc1", true).unwrap().1.is_none());
        assert!(check_url("ldap://127.0.0.1:3389", false).unwrap().1.is_none());
    }

    #[test]
    fn filters_need_their_placeholder_and_must_parse() {
        assert!(check_filter("(uid={username})", &[USERNAME]).is_ok());
        assert!(check_filter("(uid=alice)", &[USERNAME]).is_err());
        assert!(check_filter("(&(uid={username})", &[USERNAME]).is_err());
        assert!(check_filter("uid={username}", &[USERNAME]).is_err());
        assert!(check_filter("(member:1.2.840.113556.1.4.1941:={dn})", &[DN, USERNAME]).is_ok());
    }
}
