//! TOML text -> validated [`Config`], with every problem collected.
//!
//! Loading runs in three passes so that one mistake never hides another:
//!
//! 1. **Syntax**: the text is parsed into a `toml::Table`. A syntax error is the
//!    only problem that stops loading early (nothing after it can be trusted);
//!    it is reported with its line and column.
//! 2. **Shape**: each top-level section (each `[[upstreams]]` / `[[rules]]`
//!    entry, each `[factors.*]` table) is deserialized on its own into the raw
//!    structs of [`super::raw`]. When a section fails, it is deserialized again
//!    one key at a time, so every misspelt or mistyped key in it is reported
//!    with its full path (`server.listn: unknown key`).
//! 3. **Meaning**: raw values are converted field by field into typed values
//!    (durations, addresses, regexes, CIDRs, resolved secrets, TLS configs),
//!    then cross-field and cross-section rules are checked. A bad field falls
//!    back to its default only so that checking can go on; any error makes the
//!    whole load fail, so such placeholders never escape.
//!
//! Secret values (session secrets, tokens, keys, passwords, `store.url`) never
//! appear in a message: problems name the key, the file or the variable.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use regex::RegexBuilder;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::raw::{
    RawAdmin, RawCodeFactor, RawDelivery, RawIdentityHeaders, RawLog, RawPortal, RawPush, RawRecoveryCodes,
    RawRegulation, RawRule, RawServer, RawSession, RawStore, RawTls, RawTotp, RawUpstream, RawUser, RawUsers,
};
use super::{
    AdminConfig, CodeFactorConfig, Config, Delivery, Enrollment, FactorsConfig, FileUser, IdentityHeaders,
    LogConfig, LogFormat, PolicyKind, PortalConfig, PushConfig, RecoveryCodesConfig, RegulationConfig,
    RuleConfig, SameSite, ServerConfig, SessionConfig, SmtpConfig, SmtpTls, StoreConfig, StoreKind,
    TlsConfig, TotpAlgorithm, TotpConfig, UpstreamConfig, UsersConfig, defaults,
};
use crate::secret::Secret;

/// One problem (or warning) with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// e.g. `session.secrets[0]` or `rules[2].path`.
    pub key: String,
    /// What is wrong, without the value when the key holds a secret.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// All problems, in the order of the config's sections.
    pub problems: Vec<ConfigProblem>,
    /// The warnings found in the same pass, shown beside the problems.
    pub warnings: Vec<ConfigProblem>,
}

/// A valid config and the warnings found while loading it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// Legal but risky or surprising settings, for `check-config` and the start-up log.
    pub warnings: Vec<ConfigProblem>,
}

/// Loads and validates a config file; `env:NAME` secrets come from the process environment.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    load_file_with_env(path, &|name| std::env::var(name).ok())
}

/// Loads and validates a config file; `env` resolves `env:NAME` secrets.
pub fn load_file_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![ConfigProblem {
            key: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        }],
        warnings: Vec::new(),
    })?;
    load_text(&text, Some(path), env)
}

/// Loads and validates config text; `env` resolves `env:NAME` secrets.
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedConfig, ConfigError> {
    load_text(text, None, env)
}

/// Parses `"30s"`, `"15m"`, `"8h"`, `"1d"`, `"250ms"` and sums like `"1h30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ms, s, m, h, d";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!(
            "empty duration; expected a number and a unit ({UNITS}), e.g. \"30s\""
        ));
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!(
                "invalid duration {s:?}: expected a whole number and a unit ({UNITS}), e.g. \"30s\" or \"1h30m\""
            ));
        }
        let number: u64 = t[start..i]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &t[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if bytes.get(i) == Some(&b'.') => {
                return Err(format!(
                    "invalid duration {s:?}: use whole numbers, e.g. \"1h30m\" or \"1500ms\""
                ));
            }
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit ({UNITS}), e.g. \"{number}s\""
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use {UNITS})"
                ));
            }
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The keys allowed at the top of the config file, in the documented order.
const TOP_LEVEL_KEYS: [&str; 14] = [
    "default_policy",
    "case_insensitive_paths",
    "server",
    "admin",
    "upstreams",
    "session",
    "identity_headers",
    "portal",
    "users",
    "store",
    "regulation",
    "factors",
    "rules",
    "log",
];

/// Fields whose values are secrets: serde's messages quote the offending value,
/// so for these only the expected type is reported.
const SECRET_FIELDS: [&str; 6] = [
    "secrets",
    "tokens",
    "encryption_keys",
    "secret",
    "password",
    "url",
];

/// hyper's smallest read buffer: below it the limit could not be enforced.
const MIN_HEADER_BYTES: u64 = 8192;
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Upper bound of `server.max_connections` and `server.max_tls_handshakes`.
const MAX_CONNECTIONS_LIMIT: u64 = 10_000_000;
/// RFC 4226 requires at least 128 bits and recommends 160; 80-bit secrets are
/// legacy (Google Authenticator era) and accepted only with a warning.
const MIN_TOTP_SECRET_BYTES: usize = 10;
const RECOMMENDED_TOTP_SECRET_BYTES: usize = 16;
/// NIST SP 800-63B 5.2.2: at most 100 consecutive failed attempts per account.
const NIST_MAX_FAILURES: u32 = 100;
/// Below this an admin token is guessable enough to deserve a warning.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;
const MIN_CODE_LENGTH: u32 = 6;
const MAX_CODE_LENGTH: u32 = 10;
const MAX_RECOVERY_CODES: u32 = 50;
const MAX_TOTP_SKEW: u8 = 3;
const TOTP_PERIODS: std::ops::RangeInclusive<u64> = 15..=120;
const TEMPLATE_PLACEHOLDERS: [&str; 4] = ["code", "app", "user", "expires_in"];

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

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Collects problems and warnings, and resolves `env:` references.
struct Ctx<'a> {
    env: Env<'a>,
    problems: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
    /// Keys already reported as malformed: their section is still checked
    /// without them, and what their absence would cause (a missing required
    /// key, a default secret that is not set) is not reported on top.
    malformed: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn new(env: Env<'a>) -> Self {
        Self {
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            malformed: Vec::new(),
        }
    }

    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let follows_from_malformed = self.malformed.iter().any(|bad| {
            key.strip_prefix(bad.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        });
        if !follows_from_malformed {
            self.problems.push(ConfigProblem {
                key,
                message: message.into(),
            });
        }
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn error_count(&self) -> usize {
        self.problems.len()
    }

    /// An environment variable; empty counts as unset (an empty secret is never meant).
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }
}

fn load_text(text: &str, source: Option<&Path>, env: Env<'_>) -> Result<LoadedConfig, ConfigError> {
    let mut table = match toml::from_str::<toml::Table>(text) {
        Ok(table) => table,
        Err(e) => {
            return Err(ConfigError {
                problems: vec![syntax_problem(text, source, &e)],
                warnings: Vec::new(),
            });
        }
    };
    let mut cx = Ctx::new(env);

    let mut take = |key: &str| table.remove(key);
    let raw_default_policy = take("default_policy");
    let raw_case_insensitive = take("case_insensitive_paths");
    let raw_server = take("server");
    let raw_admin = take("admin");
    let raw_upstreams = take("upstreams");
    let raw_session = take("session");
    let raw_identity = take("identity_headers");
    let raw_portal = take("portal");
    let raw_users = take("users");
    let raw_store = take("store");
    let raw_regulation = take("regulation");
    let raw_factors = take("factors");
    let raw_rules = take("rules");
    let raw_log = take("log");
    for key in table.keys() {
        cx.error(
            key.clone(),
            format!("unknown key (top-level keys are: {})", TOP_LEVEL_KEYS.join(", ")),
        );
    }

    let default_policy = convert_default_policy(&mut cx, raw_default_policy);
    let case_insensitive_paths = convert_case_insensitive_paths(&mut cx, raw_case_insensitive);
    let server = section::<RawServer>(&mut cx, "server", raw_server).map(|r| convert_server(&mut cx, r));
    let admin = section::<RawAdmin>(&mut cx, "admin", raw_admin).map(|r| convert_admin(&mut cx, r));
    let upstreams = convert_upstreams(&mut cx, raw_upstreams);
    let session = section::<RawSession>(&mut cx, "session", raw_session).map(|r| convert_session(&mut cx, r));
    let identity_headers = section::<RawIdentityHeaders>(&mut cx, "identity_headers", raw_identity)
        .map(|r| convert_identity_headers(&mut cx, r));
    let portal = section::<RawPortal>(&mut cx, "portal", raw_portal).map(|r| convert_portal(&mut cx, r));
    let users = section::<RawUsers>(&mut cx, "users", raw_users).map(|r| convert_users(&mut cx, r));
    let store = section::<RawStore>(&mut cx, "store", raw_store).map(|r| convert_store(&mut cx, r));
    let regulation = section::<RawRegulation>(&mut cx, "regulation", raw_regulation)
        .map(|r| convert_regulation(&mut cx, r));
    let factors = convert_factors(&mut cx, raw_factors);
    let rules = convert_rules(&mut cx, raw_rules, case_insensitive_paths.unwrap_or(false));
    let log = section::<RawLog>(&mut cx, "log", raw_log).map(|r| convert_log(&mut cx, r));

    cross_checks(
        &mut cx,
        CrossView {
            default_policy: default_policy.as_ref(),
            server: server.as_ref(),
            admin: admin.as_ref(),
            session: session.as_ref(),
            users: users.as_ref(),
            factors: factors.as_ref(),
            rules: rules.as_deref(),
        },
    );

    if !cx.problems.is_empty() {
        return Err(ConfigError {
            problems: cx.problems,
            warnings: cx.warnings,
        });
    }
    let (
        Some(default_policy),
        Some(case_insensitive_paths),
        Some(server),
        Some(admin),
        Some(upstreams),
        Some(session),
        Some(identity_headers),
        Some(portal),
        Some(users),
        Some(store),
        Some(regulation),
        Some(factors),
        Some(rules),
        Some(log),
    ) = (
        default_policy,
        case_insensitive_paths,
        server,
        admin,
        upstreams,
        session,
        identity_headers,
        portal,
        users,
        store,
        regulation,
        factors,
        rules,
        log,
    )
    else {
        // Every `None` above was reported as a problem; this is a safety net.
        return Err(ConfigError {
            problems: vec![ConfigProblem {
                key: "config".into(),
                message: "invalid configuration".into(),
            }],
            warnings: cx.warnings,
        });
    };
    Ok(LoadedConfig {
        config: Config {
            default_policy,
            case_insensitive_paths,
            server,
            admin,
            upstreams,
            session,
            identity_headers,
            portal,
            users,
            store,
            regulation,
            factors,
            rules,
            log,
        },
        warnings: cx.warnings,
    })
}

fn syntax_problem(text: &str, source: Option<&Path>, e: &toml::de::Error) -> ConfigProblem {
    let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
    let key = match source {
        Some(path) => format!("{}:{line}:{column}", path.display()),
        None => format!("line {line}, column {column}"),
    };
    // `message()` rather than `Display`: the latter quotes the offending line,
    // which may hold a secret.
    ConfigProblem {
        key,
        message: format!("TOML syntax error: {}", e.message().trim()),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Pass 2: shape (serde), with key paths.

/// A serde failure: the path inside the deserialized value and the message.
struct ShapeError {
    path: String,
    message: String,
}

fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, ShapeError> {
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
    let mut bad = Vec::new();
    for (k, v) in &table {
        let mut one = toml::Table::new();
        one.insert(k.clone(), v.clone());
        if let Err(e) = deserialize::<T>(toml::Value::Table(one)) {
            report_shape_error(cx, prefix, e);
            bad.push(k.clone());
        }
    }
    if bad.is_empty() {
        report_shape_error(cx, prefix, whole);
        return None;
    }
    // Check the rest of the section too, so that one mistyped key does not
    // hide a bad value next to it.
    for k in bad {
        table.remove(&k);
        cx.malformed.push(join_key(prefix, &k));
    }
    deserialize::<T>(toml::Value::Table(table)).ok()
}

/// A table section: absent means all defaults; `None` means it was reported as
/// malformed as a whole (not a table).
fn section<T: DeserializeOwned + Default>(
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
fn array_section<T: DeserializeOwned>(
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

// ---------------------------------------------------------------------------
// Pass 3: field helpers.

fn duration(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<String>,
    default_secs: u64,
    allow_zero: bool,
) -> Duration {
    let fallback = Duration::from_secs(default_secs);
    let Some(text) = value else { return fallback };
    match parse_duration(&text) {
        Ok(d) if d.is_zero() && !allow_zero => {
            cx.error(key, "must be greater than zero");
            fallback
        }
        Ok(d) => d,
        Err(e) => {
            cx.error(key, e);
            fallback
        }
    }
}

/// One of a fixed set of words (case-insensitive).
fn choice<T: Copy>(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<String>,
    default: &str,
    options: &[(&str, T)],
) -> T {
    let lookup = |word: &str| {
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|(_, v)| *v)
    };
    let fallback = lookup(default).unwrap_or(options[0].1);
    let Some(word) = value else { return fallback };
    match lookup(word.trim()) {
        Some(v) => v,
        None => {
            let names: Vec<String> = options.iter().map(|(name, _)| format!("\"{name}\"")).collect();
            cx.error(key, format!("must be one of {} (got {word:?})", names.join(", ")));
            fallback
        }
    }
}

const POLICIES: [(&str, PolicyKind); 4] = [
    ("bypass", PolicyKind::Bypass),
    ("one_factor", PolicyKind::OneFactor),
    ("two_factor", PolicyKind::TwoFactor),
    ("deny", PolicyKind::Deny),
];

fn listen_addr(cx: &mut Ctx<'_>, key: &str, value: Option<String>, default: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    let text = value.unwrap_or_else(|| default.to_owned());
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            cx.error(
                key,
                format!(
                    "must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:443\" (got {text:?})"
                ),
            );
            fallback
        }
    }
}

/// A CIDR, or a bare address meaning just that address.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        // `10.0.0.1/8` is most likely a typo for a host or for `10.0.0.0/8`:
        // refused rather than silently widened or narrowed.
        if net.trunc() != net {
            return Err(format!(
                "{t:?} has host bits set; did you mean \"{}\" (the network) or \"{}\" (the address alone)?",
                net.trunc(),
                net.addr()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "must be a CIDR like \"10.0.0.0/8\" or an IP address (got {text:?})"
    ))
}

fn cidrs(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in values.unwrap_or_default().iter().enumerate() {
        match parse_cidr(text) {
            Ok(net) => out.push(net),
            Err(e) => cx.error(format!("{key}[{i}]"), e),
        }
    }
    out
}

/// A `Host` name as the gateway compares it: lower-case, no port, no trailing dot.
fn normalize_host(text: &str) -> Result<String, String> {
    let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must not be empty".into());
    }
    if host.contains("://") || host.contains('/') {
        return Err(format!(
            "must be a bare host name, without scheme or path (got {text:?})"
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(host),
            _ => Err(format!(
                "must be a host name or a bracketed IPv6 address, without a port (got {text:?})"
            )),
        };
    }
    if host.contains(':') {
        return Err(format!("must not include a port (got {text:?})"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("is not a valid host name (got {text:?})"));
    }
    Ok(host)
}

fn hosts(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, text) in values.unwrap_or_default().iter().enumerate() {
        match normalize_host(text) {
            Ok(host) if out.contains(&host) => {
                cx.error(format!("{key}[{i}]"), format!("{host:?} is listed twice"))
            }
            Ok(host) => out.push(host),
            Err(e) => cx.error(format!("{key}[{i}]"), e),
        }
    }
    out
}

fn non_empty_strings(cx: &mut Ctx<'_>, key: &str, values: Option<Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, text) in values.unwrap_or_default().into_iter().enumerate() {
        if text.trim().is_empty() {
            cx.error(format!("{key}[{i}]"), "must not be empty");
        } else {
            out.push(text);
        }
    }
    out
}

/// Resolves an inline, `file:PATH` or `env:NAME` secret. Messages name the
/// file or variable, never the value.
fn secret(cx: &mut Ctx<'_>, key: &str, value: &str) -> Option<Secret> {
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
struct NamedSecret {
    key: String,
    /// `"PORTCULLIS_SESSION_SECRET: "` for a value taken from a default variable.
    label: String,
    secret: Secret,
}

/// A secret list whose default is one `env:` reference: `None` when the key
/// is not configured and the variable is unset (the caller decides whether
/// that is an error or a warning). Configured references must resolve.
fn secret_list(
    cx: &mut Ctx<'_>,
    key: &str,
    values: Option<Vec<String>>,
    env_name: &str,
) -> Option<Vec<NamedSecret>> {
    match values {
        None => cx.var(env_name).map(|v| {
            vec![NamedSecret {
                key: key.to_owned(),
                label: format!("{env_name}: "),
                secret: Secret::new(v),
            }]
        }),
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
            Some(out)
        }
    }
}

fn load_certs(cx: &mut Ctx<'_>, key: &str, path: &str) -> Option<Vec<CertificateDer<'static>>> {
    match CertificateDer::pem_file_iter(path).and_then(|items| items.collect::<Result<Vec<_>, _>>()) {
        Ok(certs) if certs.is_empty() => {
            cx.error(key, format!("no PEM certificate found in {path}"));
            None
        }
        Ok(certs) => Some(certs),
        Err(e) => {
            cx.error(key, format!("cannot read PEM certificates from {path}: {e}"));
            None
        }
    }
}

fn convert_tls(cx: &mut Ctx<'_>, prefix: &str, raw: RawTls) -> Option<TlsConfig> {
    let cert_key = format!("{prefix}.tls.cert");
    let key_key = format!("{prefix}.tls.key");
    let cert_path = raw.cert.filter(|p| !p.trim().is_empty());
    let key_path = raw.key.filter(|p| !p.trim().is_empty());
    if cert_path.is_none() {
        cx.error(&cert_key, "is required (a PEM certificate chain file)");
    }
    if key_path.is_none() {
        cx.error(&key_key, "is required (a PEM private key file)");
    }
    let certs = cert_path.as_deref().and_then(|p| load_certs(cx, &cert_key, p));
    let key = key_path
        .as_deref()
        .and_then(|p| match PrivateKeyDer::from_pem_file(p) {
            Ok(key) => Some(key),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                cx.error(&key_key, format!("no PEM private key found in {p}"));
                None
            }
            Err(e) => {
                cx.error(&key_key, format!("cannot read the PEM private key from {p}: {e}"));
                None
            }
        });
    let (certs, key, cert_path, key_path) = (certs?, key?, cert_path?, key_path?);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let built = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key));
    match built {
        Ok(mut server_config) => {
            server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(TlsConfig {
                cert_path: PathBuf::from(cert_path),
                key_path: PathBuf::from(key_path),
                server_config: Arc::new(server_config),
            })
        }
        Err(e) => {
            cx.error(
                format!("{prefix}.tls"),
                format!("unusable certificate and key: {e}"),
            );
            None
        }
    }
}

/// An `http`/`https` URL with a host and without credentials, query or fragment.
fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("invalid URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme must be http or https (got {:?})", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url)
}

fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Pass 3: sections.

fn convert_default_policy(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<PolicyKind> {
    let word = match value {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            cx.error(
                "default_policy",
                format!("must be a string, not a {}", other.type_str()),
            );
            return None;
        }
    };
    let policy = choice(cx, "default_policy", word, defaults::DEFAULT_POLICY, &POLICIES);
    if policy == PolicyKind::Bypass {
        cx.warn(
            "default_policy",
            "\"bypass\" lets every path no rule matches through without signing in; \
             prefer \"two_factor\" (or \"deny\") with bypass rules for the public paths",
        );
    }
    Some(policy)
}

fn convert_case_insensitive_paths(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<bool> {
    match value {
        None => Some(defaults::CASE_INSENSITIVE_PATHS),
        Some(toml::Value::Boolean(b)) => Some(b),
        Some(other) => {
            cx.error(
                "case_insensitive_paths",
                format!("must be true or false, not a {}", other.type_str()),
            );
            None
        }
    }
}

fn convert_server(cx: &mut Ctx<'_>, raw: RawServer) -> ServerConfig {
    let listen = listen_addr(cx, "server.listen", raw.listen, defaults::LISTEN);
    let tls = raw.tls.and_then(|t| convert_tls(cx, "server", t));
    let trusted_proxies = cidrs(cx, "server.trusted_proxies", raw.trusted_proxies);
    let header_read_timeout = duration(
        cx,
        "server.header_read_timeout",
        raw.header_read_timeout,
        defaults::HEADER_READ_TIMEOUT_SECS,
        false,
    );
    let max_header_bytes = match raw.max_header_bytes {
        None => defaults::MAX_HEADER_BYTES,
        Some(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) => {
            usize::try_from(n).unwrap_or(defaults::MAX_HEADER_BYTES)
        }
        Some(n) => {
            cx.error(
                "server.max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} (got {n})"),
            );
            defaults::MAX_HEADER_BYTES
        }
    };
    // Zero is meaningful here: close remaining connections right away.
    let shutdown_timeout = duration(
        cx,
        "server.shutdown_timeout",
        raw.shutdown_timeout,
        defaults::SHUTDOWN_TIMEOUT_SECS,
        true,
    );
    let external_url = match raw.external_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match http_url(text) {
            Ok(url) if url.path() != "/" => {
                cx.error(
                    "server.external_url",
                    "must not have a path (scheme and host only, e.g. \"https://app.example.com\")",
                );
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                cx.error("server.external_url", e);
                None
            }
        },
    };
    let idle_timeout = duration(
        cx,
        "server.idle_timeout",
        raw.idle_timeout,
        defaults::IDLE_TIMEOUT_SECS,
        false,
    );
    let max_connections = count(
        cx,
        "server.max_connections",
        raw.max_connections,
        defaults::MAX_CONNECTIONS,
    );
    let tls_handshake_timeout = duration(
        cx,
        "server.tls_handshake_timeout",
        raw.tls_handshake_timeout,
        defaults::TLS_HANDSHAKE_TIMEOUT_SECS,
        false,
    );
    let max_tls_handshakes = count(
        cx,
        "server.max_tls_handshakes",
        raw.max_tls_handshakes,
        defaults::MAX_TLS_HANDSHAKES,
    );
    // 0 is meaningful here: no per-address cap.
    let max_connections_per_ip = match raw.max_connections_per_ip {
        None => defaults::MAX_CONNECTIONS_PER_IP,
        Some(n) if n <= MAX_CONNECTIONS_LIMIT => {
            usize::try_from(n).unwrap_or(defaults::MAX_CONNECTIONS_PER_IP)
        }
        Some(n) => {
            cx.error(
                "server.max_connections_per_ip",
                format!("must be between 0 (no cap) and {MAX_CONNECTIONS_LIMIT} (got {n})"),
            );
            defaults::MAX_CONNECTIONS_PER_IP
        }
    };
    let body_read_timeout = duration(
        cx,
        "server.body_read_timeout",
        raw.body_read_timeout,
        defaults::BODY_READ_TIMEOUT_SECS,
        false,
    );
    ServerConfig {
        listen,
        tls,
        trusted_proxies,
        header_read_timeout,
        max_header_bytes,
        shutdown_timeout,
        external_url,
        idle_timeout,
        max_connections,
        tls_handshake_timeout,
        max_tls_handshakes,
        max_connections_per_ip,
        body_read_timeout,
    }
}

/// A connection count: at least 1, at most [`MAX_CONNECTIONS_LIMIT`].
fn count(cx: &mut Ctx<'_>, key: &str, value: Option<u64>, default: usize) -> usize {
    match value {
        None => default,
        Some(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => usize::try_from(n).unwrap_or(default),
        Some(n) => {
            cx.error(
                key,
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT} (got {n})"),
            );
            default
        }
    }
}

fn convert_admin(cx: &mut Ctx<'_>, raw: RawAdmin) -> AdminConfig {
    let listen = listen_addr(cx, "admin.listen", raw.listen, defaults::ADMIN_LISTEN);
    let tls = raw.tls.and_then(|t| convert_tls(cx, "admin", t));
    let tokens = match secret_list(cx, "admin.tokens", raw.tokens, defaults::ADMIN_TOKEN_ENV) {
        None => {
            cx.warn(
                "admin.tokens",
                format!(
                    "no admin token ({} is not set): the admin API is disabled",
                    defaults::ADMIN_TOKEN_ENV
                ),
            );
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            cx.warn(
                "admin.tokens",
                "no admin token configured: the admin API is disabled",
            );
            Vec::new()
        }
        Some(list) => {
            let mut tokens = Vec::new();
            for NamedSecret { key, label, secret } in list {
                if secret
                    .expose()
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    cx.error(
                        &key,
                        format!("{label}must not contain whitespace or control characters"),
                    );
                } else if secret.len() < MIN_ADMIN_TOKEN_BYTES {
                    // A short token can be guessed: refused, not merely warned about.
                    cx.error(
                        &key,
                        format!(
                            "{label}too short ({} bytes; at least {MIN_ADMIN_TOKEN_BYTES}): use a random one, e.g. from `portcullis gen-key`",
                            secret.len()
                        ),
                    );
                }
                tokens.push(secret);
            }
            tokens
        }
    };
    let metrics_require_token = raw
        .metrics_require_token
        .unwrap_or(defaults::METRICS_REQUIRE_TOKEN);
    if metrics_require_token && tokens.is_empty() {
        cx.warn(
            "admin.metrics_require_token",
            "no admin token is configured, so /metrics cannot be scraped",
        );
    }
    AdminConfig {
        listen,
        tls,
        tokens,
        metrics_require_token,
    }
}

fn convert_upstreams(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<Vec<UpstreamConfig>> {
    let absent = value.is_none();
    let items = array_section::<RawUpstream>(cx, "upstreams", value)?;
    if absent || items.is_empty() {
        cx.error("upstreams", "at least one [[upstreams]] entry is required");
        return None;
    }
    let before = cx.error_count();
    let malformed = items.iter().any(Option::is_none);
    let mut out: Vec<UpstreamConfig> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut host_owner: HashMap<String, usize> = HashMap::new();
    let mut default_upstream: Option<usize> = None;
    for (i, raw) in items.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        // Names and the default are checked on the raw entry, so an entry with
        // another problem (a bad URL, say) is still compared in the same pass.
        let name = raw.name.as_deref().map(str::trim).unwrap_or_default().to_owned();
        if !name.is_empty() {
            if let Some(first) = names.get(&name) {
                cx.error(
                    format!("upstreams[{i}].name"),
                    format!("{name:?} is already used by upstreams[{first}]"),
                );
            } else {
                names.insert(name, i);
            }
        }
        if raw.hosts.as_ref().is_none_or(Vec::is_empty) {
            match default_upstream {
                Some(first) => cx.error(
                    format!("upstreams[{i}].hosts"),
                    format!("only one upstream may leave hosts empty (the default), and upstreams[{first}] already does"),
                ),
                None => default_upstream = Some(i),
            }
        }
        let Some(upstream) = convert_upstream(cx, i, raw) else {
            continue;
        };
        for host in &upstream.hosts {
            if let Some(first) = host_owner.get(host) {
                cx.error(
                    format!("upstreams[{i}].hosts"),
                    format!("{host:?} is already routed to upstreams[{first}]"),
                );
            } else {
                host_owner.insert(host.clone(), i);
            }
        }
        out.push(upstream);
    }
    (!malformed && cx.error_count() == before).then_some(out)
}

fn convert_upstream(cx: &mut Ctx<'_>, i: usize, raw: RawUpstream) -> Option<UpstreamConfig> {
    let k = |field: &str| format!("upstreams[{i}].{field}");
    let name = match raw.name {
        None => {
            cx.error(k("name"), "is required");
            String::new()
        }
        Some(n) if n.trim().is_empty() => {
            cx.error(k("name"), "must not be empty");
            String::new()
        }
        Some(n) => n.trim().to_owned(),
    };
    let url = match raw.url {
        None => {
            cx.error(k("url"), "is required, e.g. \"http://127.0.0.1:3000\"");
            None
        }
        Some(text) => http_url(&text).map_err(|e| cx.error(k("url"), e)).ok(),
    };
    let hosts = hosts(cx, &k("hosts"), raw.hosts);
    let timeout = duration(
        cx,
        &k("timeout"),
        raw.timeout,
        defaults::UPSTREAM_TIMEOUT_SECS,
        false,
    );
    let pool_idle_timeout = duration(
        cx,
        &k("pool_idle_timeout"),
        raw.pool_idle_timeout,
        defaults::POOL_IDLE_TIMEOUT_SECS,
        false,
    );
    let ca = match raw.ca.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(path) => {
            if url.as_ref().is_some_and(|u| u.scheme() == "http") {
                cx.warn(k("ca"), "ignored: the upstream URL is plain http");
            }
            load_certs(cx, &k("ca"), path).unwrap_or_default()
        }
    };
    Some(UpstreamConfig {
        name,
        url: url?,
        hosts,
        preserve_host: raw.preserve_host.unwrap_or(defaults::PRESERVE_HOST),
        timeout,
        pool_idle_timeout,
        ca,
    })
}

/// RFC 6265 `cookie-name` is an RFC 7230 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn convert_session(cx: &mut Ctx<'_>, raw: RawSession) -> SessionConfig {
    let cookie_name = raw
        .cookie_name
        .unwrap_or_else(|| defaults::COOKIE_NAME.to_owned());
    if !is_token(&cookie_name) {
        cx.error(
            "session.cookie_name",
            format!("must be a cookie name token (letters, digits, !#$%&'*+-.^_`|~), got {cookie_name:?}"),
        );
    }
    let secrets = match secret_list(cx, "session.secrets", raw.secrets, defaults::SESSION_SECRET_ENV) {
        None => {
            cx.error(
                "session.secrets",
                format!(
                    "no session secret: set the environment variable {} (generate a value with `portcullis gen-key`) or configure session.secrets",
                    defaults::SESSION_SECRET_ENV
                ),
            );
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            cx.error(
                "session.secrets",
                "at least one secret is required (generate one with `portcullis gen-key`)",
            );
            Vec::new()
        }
        Some(list) => {
            let mut secrets = Vec::new();
            for NamedSecret { key, label, secret } in list {
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
            secrets
        }
    };
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
    // Zero is meaningful: consult the store on every request.
    let revocation_check = duration(
        cx,
        "session.revocation_check",
        raw.revocation_check,
        defaults::REVOCATION_CHECK_SECS,
        true,
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

fn convert_identity_headers(cx: &mut Ctx<'_>, raw: RawIdentityHeaders) -> IdentityHeaders {
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

fn convert_portal(cx: &mut Ctx<'_>, raw: RawPortal) -> PortalConfig {
    let prefix = raw.prefix.unwrap_or_else(|| defaults::PORTAL_PREFIX.to_owned());
    if let Err(e) = check_prefix(&prefix) {
        cx.error("portal.prefix", e);
    }
    let title = raw.title.unwrap_or_else(|| defaults::PORTAL_TITLE.to_owned());
    let allowed_redirect_hosts = hosts(cx, "portal.allowed_redirect_hosts", raw.allowed_redirect_hosts);
    let mut trusted_origins = Vec::new();
    for (i, text) in raw.trusted_origins.unwrap_or_default().iter().enumerate() {
        match origin(text) {
            Ok(o) => trusted_origins.push(o),
            Err(e) => cx.error(format!("portal.trusted_origins[{i}]"), e),
        }
    }
    PortalConfig {
        prefix,
        title,
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

fn convert_users(cx: &mut Ctx<'_>, raw: RawUsers) -> UsersConfig {
    let (file, file_users) = match raw.file.as_deref().map(str::trim) {
        // Explicitly empty: no users file, on purpose.
        Some("") => (None, Vec::new()),
        Some(path) => {
            let path = PathBuf::from(path);
            if path.exists() {
                let users = users_file(cx, &path);
                (Some(path), users)
            } else {
                cx.error("users.file", format!("{} does not exist", path.display()));
                (None, Vec::new())
            }
        }
        None => {
            let path = PathBuf::from(defaults::USERS_FILE);
            if path.exists() {
                let users = users_file(cx, &path);
                (Some(path), users)
            } else {
                cx.warn(
                    "users.file",
                    format!("{} does not exist: no users from a file (users can still be created through the admin API)", path.display()),
                );
                (None, Vec::new())
            }
        }
    };
    let passwordless = raw.passwordless.unwrap_or(defaults::PASSWORDLESS);
    let passwordless_factors = match raw.passwordless_factors {
        None => defaults::PASSWORDLESS_FACTORS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (i, f) in list.into_iter().enumerate() {
                if !defaults::PASSWORDLESS_FACTORS.contains(&f.as_str()) {
                    cx.error(
                        format!("users.passwordless_factors[{i}]"),
                        format!("must be one of {:?} (got {f:?})", defaults::PASSWORDLESS_FACTORS),
                    );
                } else if !out.contains(&f) {
                    out.push(f);
                }
            }
            if passwordless && out.is_empty() {
                cx.error(
                    "users.passwordless_factors",
                    "must list at least one factor when users.passwordless = true",
                );
            }
            out
        }
    };
    let enrollment = choice(
        cx,
        "users.enrollment",
        raw.enrollment,
        defaults::ENROLLMENT,
        &[
            ("first_login", Enrollment::FirstLogin),
            ("admin_only", Enrollment::AdminOnly),
        ],
    );
    let ldap = raw.ldap.and_then(|v| {
        let out = super::ldap::convert(v, &mut |k, v| secret(cx, k, v));
        out.warnings.into_iter().for_each(|(k, m)| cx.warn(k, m));
        out.errors.into_iter().for_each(|(k, m)| cx.error(k, m));
        out.config
    });
    UsersConfig {
        file,
        passwordless,
        passwordless_factors,
        enrollment,
        file_users,
        ldap,
    }
}

/// Parses the users file; its problems are reported under `users.file` with
/// the path inside the file in the message (`users.file: users[3].password: ...`).
fn users_file(cx: &mut Ctx<'_>, path: &Path) -> Vec<FileUser> {
    let mut sub = Ctx::new(cx.env);
    let users = parse_users_file(&mut sub, path);
    for p in sub.problems {
        cx.error("users.file", p.to_string());
    }
    for w in sub.warnings {
        cx.warn("users.file", w.to_string());
    }
    users
}

fn parse_users_file(cx: &mut Ctx<'_>, path: &Path) -> Vec<FileUser> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            cx.error(shown, format!("cannot read: {e}"));
            return Vec::new();
        }
    };
    let mut table = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table,
        Err(e) => {
            let p = syntax_problem(&text, Some(path), &e);
            cx.error(p.key, p.message);
            return Vec::new();
        }
    };
    let list = table.remove("users");
    for key in table.keys() {
        cx.error(
            key.clone(),
            "unknown key (the users file holds only [[users]] tables)",
        );
    }
    if list.is_none() {
        cx.warn(shown, "defines no [[users]]");
    }
    let Some(items) = array_section::<RawUser>(cx, "users", list) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in items.into_iter().enumerate() {
        let Some(user) = raw.and_then(|raw| file_user(cx, i, raw)) else {
            continue;
        };
        // Sign-in names are matched case-insensitively, so "Alice" and "alice" would collide.
        let folded = user.username.to_lowercase();
        if let Some(first) = seen.get(&folded) {
            cx.error(
                format!("users[{i}].username"),
                format!("{:?} is already used by users[{first}]", user.username),
            );
            continue;
        }
        seen.insert(folded, i);
        out.push(user);
    }
    out
}

fn file_user(cx: &mut Ctx<'_>, i: usize, raw: RawUser) -> Option<FileUser> {
    let k = |field: &str| format!("users[{i}].{field}");
    let before = cx.error_count();
    let username = raw.username.unwrap_or_default();
    if username.is_empty() {
        cx.error(k("username"), "is required and must not be empty");
    } else if username.len() > crate::limits::MAX_LOGIN_BYTES {
        cx.error(
            k("username"),
            format!(
                "is {} bytes long; a login has at most {} bytes",
                username.len(),
                crate::limits::MAX_LOGIN_BYTES
            ),
        );
    } else if username.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error(
            k("username"),
            format!("must not contain whitespace or control characters (got {username:?})"),
        );
    }
    let password_hash = raw.password.unwrap_or_default();
    if password_hash.is_empty() {
        cx.error(
            k("password"),
            "is required: an argon2id PHC string from `portcullis hash-password`",
        );
    } else if let Err(e) = check_password_hash(&password_hash) {
        cx.error(k("password"), e);
    }
    let display_name = raw.display_name.filter(|s| !s.trim().is_empty());
    let email = raw.email.filter(|s| !s.trim().is_empty());
    if let Some(e) = &email
        && !is_email(e)
    {
        cx.error(k("email"), format!("is not an e-mail address (got {e:?})"));
    }
    let phone = raw.phone.filter(|s| !s.trim().is_empty());
    if let Some(p) = &phone
        && !is_e164(p)
    {
        cx.error(
            k("phone"),
            format!("must be E.164: \"+\" then 8 to 15 digits, e.g. \"+15555550100\" (got {p:?})"),
        );
    }
    let groups = non_empty_strings(cx, &k("groups"), raw.groups);
    let totp_secret = raw.totp.and_then(|totp| {
        let key = k("totp.secret");
        let Some(text) = totp.secret else {
            cx.error(key, "is required in a totp table (base32)");
            return None;
        };
        let encoded = secret(cx, &key, &text)?;
        let Some(bytes) = encoded.expose_str().and_then(base32_decode) else {
            cx.error(key, "is not valid base32 (RFC 4648: A-Z and 2-7)");
            return None;
        };
        if bytes.len() < MIN_TOTP_SECRET_BYTES {
            cx.error(
                key,
                format!(
                    "must be at least {} bits (got {} bits)",
                    MIN_TOTP_SECRET_BYTES * 8,
                    bytes.len() * 8
                ),
            );
            return None;
        }
        if bytes.len() < RECOMMENDED_TOTP_SECRET_BYTES {
            cx.warn(
                key,
                format!(
                    "legacy {}-bit secret accepted; {} bits or more is recommended (RFC 4226)",
                    bytes.len() * 8,
                    RECOMMENDED_TOTP_SECRET_BYTES * 8
                ),
            );
        }
        Some(Secret::new(bytes))
    });
    (cx.error_count() == before).then_some(FileUser {
        username,
        password_hash,
        display_name,
        email,
        phone,
        groups,
        totp_secret,
    })
}

fn check_password_hash(phc: &str) -> Result<(), String> {
    const HINT: &str = "generate one with `portcullis hash-password`";
    let hash = argon2::PasswordHash::new(phc).map_err(|e| format!("is not a PHC string ({e}); {HINT}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "must be argon2id (got {}); {HINT}",
            hash.algorithm.as_str()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(format!("is missing its salt or hash; {HINT}"));
    }
    argon2::Params::try_from(&hash).map_err(|e| format!("has invalid argon2 parameters ({e}); {HINT}"))?;
    Ok(())
}

fn is_email(s: &str) -> bool {
    let mut parts = s.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(local), Some(domain), None)
        if !local.is_empty() && !domain.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|digits| (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 4648 base32, case-insensitive; whitespace and `=` padding are ignored
/// because authenticator apps display secrets in groups.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        if c.is_whitespace() || c == '=' {
            continue;
        }
        let value = match c.to_ascii_uppercase() {
            u @ 'A'..='Z' => u32::from(u) - u32::from('A'),
            d @ '2'..='7' => u32::from(d) - u32::from('2') + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn convert_store(cx: &mut Ctx<'_>, raw: RawStore) -> StoreConfig {
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
                Some(text) => match secret(cx, "store.url", &text) {
                    Some(url) => {
                        let ok = url
                            .expose_str()
                            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
                        if !ok {
                            cx.error(
                                "store.url",
                                "must be a postgres:// or postgresql:// URL (value not shown)",
                            );
                        }
                        url
                    }
                    None => Secret::default(),
                },
            };
            StoreKind::Postgres { url }
        }
    };
    let encryption_keys = match secret_list(
        cx,
        "store.encryption_keys",
        raw.encryption_keys,
        defaults::STORE_KEY_ENV,
    ) {
        None => {
            cx.warn(
                "store.encryption_keys",
                format!(
                    "no encryption key ({} is not set): factor secrets cannot be encrypted at rest; generate a key with `portcullis gen-key`",
                    defaults::STORE_KEY_ENV
                ),
            );
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            cx.warn(
                "store.encryption_keys",
                "no encryption key configured: factor secrets cannot be encrypted at rest; generate a key with `portcullis gen-key`",
            );
            Vec::new()
        }
        Some(list) => {
            let mut keys = Vec::new();
            for NamedSecret { key, label, secret } in list {
                match secret.expose_str().and_then(decode_base64) {
                    Some(bytes) if bytes.len() == defaults::STORE_KEY_BYTES => keys.push(Secret::new(bytes)),
                    Some(bytes) => cx.error(
                        key,
                        format!(
                            "{label}must be base64 of exactly {} bytes (got {} bytes); generate one with `portcullis gen-key`",
                            defaults::STORE_KEY_BYTES,
                            bytes.len()
                        ),
                    ),
                    None => cx.error(key, format!("{label}is not valid base64; generate a key with `portcullis gen-key`")),
                }
            }
            keys
        }
    };
    StoreConfig {
        kind,
        encryption_keys,
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

fn convert_regulation(cx: &mut Ctx<'_>, raw: RawRegulation) -> RegulationConfig {
    let mut count = |field: &str, value: Option<u32>, default: u32| match value {
        None => default,
        Some(0) => {
            cx.error(format!("regulation.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
    };
    let max_factor_failures = count(
        "max_factor_failures",
        raw.max_factor_failures,
        defaults::MAX_FACTOR_FAILURES,
    );
    let max_password_failures = count(
        "max_password_failures",
        raw.max_password_failures,
        defaults::MAX_PASSWORD_FAILURES,
    );
    let max_password_failures_per_user = count(
        "max_password_failures_per_user",
        raw.max_password_failures_per_user,
        defaults::MAX_PASSWORD_FAILURES_PER_USER,
    );
    let max_failures_per_ip = count(
        "max_failures_per_ip",
        raw.max_failures_per_ip,
        defaults::MAX_FAILURES_PER_IP,
    );
    let max_transactions_per_ip_per_minute = count(
        "max_transactions_per_ip_per_minute",
        raw.max_transactions_per_ip_per_minute,
        defaults::MAX_TRANSACTIONS_PER_IP_PER_MINUTE,
    );
    if max_password_failures_per_user < max_password_failures {
        cx.error(
            "regulation.max_password_failures_per_user",
            format!(
                "must be at least regulation.max_password_failures ({max_password_failures}): otherwise a stranger locks the user before the (user, address) block applies"
            ),
        );
    }
    if max_password_failures_per_user > NIST_MAX_FAILURES {
        cx.warn(
            "regulation.max_password_failures_per_user",
            format!(
                "above {NIST_MAX_FAILURES}, the limit NIST SP 800-63B sets for failed attempts per account"
            ),
        );
    }
    if max_factor_failures > NIST_MAX_FAILURES {
        cx.warn(
            "regulation.max_factor_failures",
            format!(
                "above {NIST_MAX_FAILURES}, the limit NIST SP 800-63B sets for failed attempts per account"
            ),
        );
    }
    let window = duration(
        cx,
        "regulation.window",
        raw.window,
        defaults::REGULATION_WINDOW_SECS,
        false,
    );
    let lockout = duration(
        cx,
        "regulation.lockout",
        raw.lockout,
        defaults::LOCKOUT_SECS,
        false,
    );
    RegulationConfig {
        max_factor_failures,
        max_password_failures,
        max_password_failures_per_user,
        max_failures_per_ip,
        max_transactions_per_ip_per_minute,
        window,
        lockout,
        reveal_lockout: raw.reveal_lockout.unwrap_or(defaults::REVEAL_LOCKOUT),
    }
}

const FACTOR_KEYS: [&str; 6] = ["totp", "sms", "call", "email", "push", "recovery_codes"];

fn convert_factors(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<FactorsConfig> {
    let mut table = match value {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(other) => {
            cx.error("factors", format!("must be a table, not a {}", other.type_str()));
            return None;
        }
    };
    let mut take = |key: &str| table.remove(key);
    let (totp, sms, call, email, push, recovery) = (
        take("totp"),
        take("sms"),
        take("call"),
        take("email"),
        take("push"),
        take("recovery_codes"),
    );
    for key in table.keys() {
        cx.error(
            format!("factors.{key}"),
            format!("unknown key (factor types are: {})", FACTOR_KEYS.join(", ")),
        );
    }
    let totp = section::<RawTotp>(cx, "factors.totp", totp).map(|r| convert_totp(cx, r));
    let sms = section::<RawCodeFactor>(cx, "factors.sms", sms).map(|r| convert_code_factor(cx, "sms", r));
    let call = section::<RawCodeFactor>(cx, "factors.call", call).map(|r| convert_code_factor(cx, "call", r));
    let email =
        section::<RawCodeFactor>(cx, "factors.email", email).map(|r| convert_code_factor(cx, "email", r));
    let push = section::<RawPush>(cx, "factors.push", push).map(|r| convert_push(cx, r));
    let recovery_codes =
        section::<RawRecoveryCodes>(cx, "factors.recovery_codes", recovery).map(|r| convert_recovery(cx, r));
    Some(FactorsConfig {
        totp: totp?,
        sms: sms?,
        call: call?,
        email: email?,
        push: push?,
        recovery_codes: recovery_codes?,
    })
}

fn convert_totp(cx: &mut Ctx<'_>, raw: RawTotp) -> TotpConfig {
    let issuer = raw.issuer.unwrap_or_else(|| defaults::TOTP_ISSUER.to_owned());
    if issuer.trim().is_empty() {
        cx.error("factors.totp.issuer", "must not be empty");
    } else if issuer.contains(':') {
        // The otpauth label is "issuer:account"; a colon in the issuer breaks it.
        cx.error("factors.totp.issuer", "must not contain \":\"");
    }
    let digits = match raw.digits {
        None => defaults::TOTP_DIGITS,
        Some(6) => 6,
        Some(8) => {
            cx.warn(
                "factors.totp.digits",
                "8 digits: many authenticator apps show only 6 and ignore this setting",
            );
            8
        }
        Some(n) => {
            cx.error("factors.totp.digits", format!("must be 6 or 8 (got {n})"));
            defaults::TOTP_DIGITS
        }
    };
    let period = match raw.period {
        None => defaults::TOTP_PERIOD,
        Some(p) if TOTP_PERIODS.contains(&p) => p,
        Some(p) => {
            cx.error(
                "factors.totp.period",
                format!(
                    "must be between {} and {} seconds (got {p})",
                    TOTP_PERIODS.start(),
                    TOTP_PERIODS.end()
                ),
            );
            defaults::TOTP_PERIOD
        }
    };
    let algorithm = choice(
        cx,
        "factors.totp.algorithm",
        raw.algorithm,
        defaults::TOTP_ALGORITHM,
        &[
            ("SHA1", TotpAlgorithm::Sha1),
            ("SHA256", TotpAlgorithm::Sha256),
            ("SHA512", TotpAlgorithm::Sha512),
        ],
    );
    if algorithm != TotpAlgorithm::Sha1 {
        cx.warn(
            "factors.totp.algorithm",
            "many authenticator apps support only SHA1 and silently produce wrong codes",
        );
    }
    let skew = match raw.skew {
        None => defaults::TOTP_SKEW,
        Some(s) if s <= MAX_TOTP_SKEW => s,
        Some(s) => {
            cx.error(
                "factors.totp.skew",
                format!("must be between 0 and {MAX_TOTP_SKEW} steps (got {s})"),
            );
            defaults::TOTP_SKEW
        }
    };
    TotpConfig {
        enabled: raw.enabled.unwrap_or(defaults::TOTP_ENABLED),
        issuer,
        digits,
        period,
        algorithm,
        skew,
    }
}

/// Checks `{placeholder}`s; a `{` without a closing `}` is literal text.
fn check_template(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (allowed: {})",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn convert_code_factor(cx: &mut Ctx<'_>, which: &str, raw: RawCodeFactor) -> CodeFactorConfig {
    let k = |field: &str| format!("factors.{which}.{field}");
    let enabled = raw.enabled.unwrap_or(defaults::CODE_FACTOR_ENABLED);
    let delivery = raw
        .delivery
        .and_then(|d| convert_delivery(cx, &k("delivery"), d, which == "email", enabled));
    if enabled && delivery.is_none() && !cx.problems.iter().any(|p| p.key.starts_with(&k("delivery"))) {
        cx.error(
            k("delivery"),
            "is required when enabled (webhook, command, smtp for email, or log/file for development)",
        );
    }
    let code_length = match raw.code_length {
        None => defaults::CODE_LENGTH,
        Some(n) if (MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&n) => n,
        Some(n) => {
            cx.error(
                k("code_length"),
                format!("must be between {MIN_CODE_LENGTH} and {MAX_CODE_LENGTH} (got {n})"),
            );
            defaults::CODE_LENGTH
        }
    };
    let ttl = duration(cx, &k("ttl"), raw.ttl, defaults::CODE_TTL_SECS, false);
    let resend_after = duration(
        cx,
        &k("resend_after"),
        raw.resend_after,
        defaults::RESEND_AFTER_SECS,
        true,
    );
    let max_sends_per_hour = match raw.max_sends_per_hour {
        None => defaults::MAX_SENDS_PER_HOUR,
        Some(0) => {
            cx.error(
                k("max_sends_per_hour"),
                "must be at least 1 (disable the factor instead)",
            );
            defaults::MAX_SENDS_PER_HOUR
        }
        Some(n) => n,
    };
    let default_template = match which {
        "call" => defaults::CALL_TEMPLATE,
        "email" => defaults::EMAIL_TEMPLATE,
        _ => defaults::SMS_TEMPLATE,
    };
    let template = raw.template.unwrap_or_else(|| default_template.to_owned());
    if let Err(e) = check_template(&template) {
        cx.error(k("template"), e);
    } else if !template.contains("{code}") {
        cx.error(k("template"), "must contain {code}");
    }
    let subject = match raw.subject {
        Some(_) if which != "email" => {
            cx.error(k("subject"), "only used by factors.email");
            String::new()
        }
        Some(s) => s,
        None => defaults::EMAIL_SUBJECT.to_owned(),
    };
    if let Err(e) = check_template(&subject) {
        cx.error(k("subject"), e);
    }
    CodeFactorConfig {
        enabled,
        delivery,
        code_length,
        ttl,
        resend_after,
        max_sends_per_hour,
        template,
        subject,
    }
}

fn convert_push(cx: &mut Ctx<'_>, raw: RawPush) -> PushConfig {
    let enabled = raw.enabled.unwrap_or(defaults::PUSH_ENABLED);
    let delivery = raw
        .delivery
        .and_then(|d| convert_delivery(cx, "factors.push.delivery", d, false, enabled));
    if enabled
        && delivery.is_none()
        && !cx
            .problems
            .iter()
            .any(|p| p.key.starts_with("factors.push.delivery"))
    {
        cx.error(
            "factors.push.delivery",
            "is required when enabled (webhook, command, or log/file for development)",
        );
    }
    let ttl = duration(cx, "factors.push.ttl", raw.ttl, defaults::PUSH_TTL_SECS, false);
    PushConfig {
        enabled,
        delivery,
        ttl,
    }
}

fn convert_recovery(cx: &mut Ctx<'_>, raw: RawRecoveryCodes) -> RecoveryCodesConfig {
    let count = match raw.count {
        None => defaults::RECOVERY_CODES,
        Some(n) if (1..=MAX_RECOVERY_CODES).contains(&n) => n,
        Some(n) => {
            cx.error(
                "factors.recovery_codes.count",
                format!("must be between 1 and {MAX_RECOVERY_CODES} (got {n})"),
            );
            defaults::RECOVERY_CODES
        }
    };
    RecoveryCodesConfig {
        enabled: raw.enabled.unwrap_or(defaults::RECOVERY_CODES_ENABLED),
        count,
    }
}

fn convert_delivery(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: RawDelivery,
    allow_smtp: bool,
    enabled: bool,
) -> Option<Delivery> {
    let k = |field: &str| format!("{key}.{field}");
    let kinds: &[&str] = if allow_smtp {
        &["webhook", "command", "smtp", "log", "file"]
    } else {
        &["webhook", "command", "log", "file"]
    };
    let Some(kind) = raw.kind.as_deref().map(|k| k.trim().to_owned()) else {
        cx.error(k("kind"), format!("is required (one of {})", kinds.join(", ")));
        return None;
    };
    let kind = kind.as_str();
    if kind == "smtp" && !allow_smtp {
        cx.error(k("kind"), "\"smtp\" is only valid for factors.email");
        return None;
    }
    if !kinds.contains(&kind) {
        cx.error(
            k("kind"),
            format!("must be one of {} (got {kind:?})", kinds.join(", ")),
        );
        return None;
    }
    let used: &[&str] = match kind {
        "webhook" => &["url", "secret"],
        "command" => &["program", "args"],
        "smtp" => &["host", "port", "tls", "from", "username", "password"],
        "file" => &["path"],
        _ => &[],
    };
    let present = [
        ("url", raw.url.is_some()),
        ("secret", raw.secret.is_some()),
        ("program", raw.program.is_some()),
        ("args", raw.args.is_some()),
        ("host", raw.host.is_some()),
        ("port", raw.port.is_some()),
        ("tls", raw.tls.is_some()),
        ("from", raw.from.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("path", raw.path.is_some()),
    ];
    let before = cx.error_count();
    for (field, set) in present {
        if set && !used.contains(&field) {
            cx.error(k(field), format!("not used by kind \"{kind}\""));
        }
    }
    let delivery = match kind {
        "webhook" => {
            let url = match raw.url {
                None => {
                    cx.error(k("url"), "is required for a webhook");
                    None
                }
                Some(text) => {
                    match http_url(&text) {
                        Ok(url) => {
                            if url.scheme() == "http" && !is_loopback_url(&url) {
                                cx.warn(k("url"), "plain http to a remote host: messages (which carry codes) travel in clear");
                            }
                            Some(url)
                        }
                        Err(e) => {
                            cx.error(k("url"), e);
                            None
                        }
                    }
                }
            };
            let secret = match raw.secret {
                None => {
                    cx.error(k("secret"), "is required for a webhook (it signs each request)");
                    None
                }
                Some(text) => secret(cx, &k("secret"), &text),
            };
            Delivery::Webhook {
                url: url?,
                secret: secret?,
            }
        }
        "command" => {
            let program = raw.program.unwrap_or_default();
            if program.trim().is_empty() {
                cx.error(k("program"), "is required for a command");
            }
            Delivery::Command {
                program: PathBuf::from(program),
                args: raw.args.unwrap_or_default(),
            }
        }
        "smtp" => Delivery::Smtp(convert_smtp(cx, key, raw)?),
        "file" => {
            let path = raw.path.unwrap_or_default();
            if path.trim().is_empty() {
                cx.error(k("path"), "is required for a file delivery");
            }
            Delivery::File {
                path: PathBuf::from(path),
            }
        }
        _ => Delivery::Log,
    };
    if enabled && matches!(delivery, Delivery::Log | Delivery::File { .. }) {
        cx.warn(
            k("kind"),
            format!("\"{kind}\" writes codes in clear; development only"),
        );
    }
    (cx.error_count() == before).then_some(delivery)
}

fn convert_smtp(cx: &mut Ctx<'_>, key: &str, raw: RawDelivery) -> Option<SmtpConfig> {
    let k = |field: &str| format!("{key}.{field}");
    let host = raw.host.map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        cx.error(k("host"), "is required for smtp");
    }
    let tls = choice(
        cx,
        &k("tls"),
        raw.tls,
        "starttls",
        &[
            ("starttls", SmtpTls::StartTls),
            ("tls", SmtpTls::Tls),
            ("none", SmtpTls::None),
        ],
    );
    // The well-known port for each mode (RFC 8314 for implicit TLS).
    let port = raw.port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    if port == 0 {
        cx.error(k("port"), "must not be 0");
    }
    let from = raw.from.unwrap_or_default();
    if !from.contains('@') {
        cx.error(
            k("from"),
            "is required: the sender address, e.g. \"Portcullis <noreply@example.com>\"",
        );
    }
    let username = raw.username.filter(|u| !u.is_empty());
    let password = match raw.password {
        None => None,
        Some(text) => secret(cx, &k("password"), &text),
    };
    if username.is_some() != password.is_some() && cx.problems.iter().all(|p| p.key != k("password")) {
        cx.error(k("username"), "username and password must be given together");
    }
    if tls == SmtpTls::None && password.is_some() {
        cx.warn(k("tls"), "\"none\" sends the SMTP password in clear");
    }
    Some(SmtpConfig {
        host,
        port,
        tls,
        from,
        username,
        password,
    })
}

fn convert_rules(
    cx: &mut Ctx<'_>,
    value: Option<toml::Value>,
    case_insensitive: bool,
) -> Option<Vec<RuleConfig>> {
    let items = array_section::<RawRule>(cx, "rules", value)?;
    let before = cx.error_count();
    let malformed = items.iter().any(Option::is_none);
    let mut out = Vec::new();
    let mut catch_all: Option<usize> = None;
    for (i, raw) in items.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let Some(rule) = convert_rule(cx, i, raw, case_insensitive) else {
            continue;
        };
        if let Some(first) = catch_all {
            cx.warn(
                format!("rules[{i}]"),
                format!("unreachable: rules[{first}] has no conditions and matches every request"),
            );
        } else if rule.hosts.is_empty()
            && rule.path.is_none()
            && rule.methods.is_empty()
            && rule.networks.is_empty()
        {
            catch_all = Some(i);
        }
        out.push(rule);
    }
    (!malformed && cx.error_count() == before).then_some(out)
}

/// Spellings in a rule's path regex that a normalized path never contains
/// (see [`crate::policy::normalize`]), so the rule could never match there: a
/// raw non-ASCII character (paths carry it percent-encoded, upper-case hex),
/// an escape with lower-case hex (unless matching ignores case), and an
/// escape of a character that is decoded (`%24` is always `$`).
fn never_matching_spellings(pattern: &str, case_insensitive: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = pattern.chars().find(|c| !c.is_ascii()) {
        let mut buf = [0; 4];
        let encoded: String = c
            .encode_utf8(&mut buf)
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        out.push(format!(
            "contains the raw non-ASCII character {c:?}, which never matches: paths are matched \
             percent-encoded with upper-case hex, so write {encoded} (in {pattern:?})"
        ));
    }
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).copied().filter(u8::is_ascii_hexdigit);
        let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
            i += 1;
            continue;
        };
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let text = &pattern[i..i + 3];
        let hex_val = |d: u8| {
            char::from(d)
                .to_digit(16)
                .and_then(|v| u8::try_from(v).ok())
                .unwrap_or(0)
        };
        let v = hex_val(h) * 16 + hex_val(l);
        if crate::policy::normalize::decodes(v) {
            let c = char::from(v);
            out.push(format!(
                "the escape {text} never matches: paths are matched with it decoded, so write {c:?} \
                 (escaped for the regex if needed) (in {pattern:?})"
            ));
        } else if !case_insensitive && text.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push(format!(
                "the lower-case escape {text} never matches: paths are matched with upper-case hex, \
                 so write {} (in {pattern:?})",
                text.to_ascii_uppercase()
            ));
        }
        i += 3;
    }
    out
}

fn convert_rule(cx: &mut Ctx<'_>, i: usize, raw: RawRule, case_insensitive: bool) -> Option<RuleConfig> {
    let k = |field: &str| format!("rules[{i}].{field}");
    let before = cx.error_count();
    let hosts = hosts(cx, &k("hosts"), raw.hosts);
    // With `case_insensitive_paths` the upstream ignores case, so must the rules.
    let compiled = |pattern: &str| {
        RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .build()
    };
    if let Some(pattern) = raw.path.as_deref() {
        for problem in never_matching_spellings(pattern, case_insensitive) {
            cx.error(k("path"), problem);
        }
    }
    let path = raw.path.as_deref().and_then(|pattern| match compiled(pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            // regex's message draws a caret under the pattern over several
            // lines; keep one problem per line and name the pattern instead.
            let detail = e.to_string();
            let last = detail.lines().last().unwrap_or_default();
            let last = last.strip_prefix("error: ").unwrap_or(last);
            cx.error(k("path"), format!("invalid regex: {last} (in {pattern:?})"));
            None
        }
    });
    let mut methods = Vec::new();
    for (j, m) in raw.methods.unwrap_or_default().iter().enumerate() {
        match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
            Ok(method) if !m.trim().is_empty() => methods.push(method),
            _ => cx.error(
                format!("rules[{i}].methods[{j}]"),
                format!("is not an HTTP method (got {m:?})"),
            ),
        }
    }
    let networks = cidrs(cx, &k("networks"), raw.networks);
    let policy = match raw.policy {
        None => {
            cx.error(
                k("policy"),
                "is required (bypass, one_factor, two_factor or deny)",
            );
            None
        }
        some => Some(choice(
            cx,
            &k("policy"),
            some,
            defaults::DEFAULT_POLICY,
            &POLICIES,
        )),
    };
    let groups = non_empty_strings(cx, &k("groups"), raw.groups);
    let max_age = raw.max_age.and_then(|text| match parse_duration(&text) {
        Ok(d) if d < Duration::from_secs(1) => {
            cx.error(k("max_age"), "must be at least 1s");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(k("max_age"), e);
            None
        }
    });
    if let Some(p @ (PolicyKind::Bypass | PolicyKind::Deny)) = policy {
        let name = if p == PolicyKind::Bypass { "bypass" } else { "deny" };
        if !groups.is_empty() {
            cx.error(
                k("groups"),
                format!("has no effect on a {name} rule (nobody signs in)"),
            );
        }
        if max_age.is_some() {
            cx.error(
                k("max_age"),
                format!("has no effect on a {name} rule (nobody signs in)"),
            );
        }
    }
    if policy == Some(PolicyKind::Bypass)
        && let Some(pattern) = &raw.path
        && !pattern.starts_with('^')
    {
        cx.warn(
            k("path"),
            "unanchored bypass path matches anywhere in the path; start it with \"^\"",
        );
    }
    let policy = policy?;
    (cx.error_count() == before).then_some(RuleConfig {
        hosts,
        path,
        methods,
        networks,
        policy,
        groups,
        max_age,
    })
}

fn convert_log(cx: &mut Ctx<'_>, raw: RawLog) -> LogConfig {
    let format = choice(
        cx,
        "log.format",
        raw.format,
        defaults::LOG_FORMAT,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    if level.trim().is_empty() {
        cx.error(
            "log.level",
            "must not be empty, e.g. \"info\" or \"portcullis=debug,info\"",
        );
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        cx.error("log.level", format!("is not a valid filter directive: {e}"));
    }
    LogConfig { format, level }
}

/// The sections cross checks look at; a section that failed to parse is `None`
/// and its checks are skipped (its own problems are already reported).
struct CrossView<'c> {
    default_policy: Option<&'c PolicyKind>,
    server: Option<&'c ServerConfig>,
    admin: Option<&'c AdminConfig>,
    session: Option<&'c SessionConfig>,
    users: Option<&'c UsersConfig>,
    factors: Option<&'c FactorsConfig>,
    rules: Option<&'c [RuleConfig]>,
}

fn cross_checks(cx: &mut Ctx<'_>, v: CrossView<'_>) {
    if let Some(factors) = v.factors
        && !factors.any_second_factor()
    {
        const WHY: &str =
            "requires a second factor, but none is enabled (enable factors.totp, sms, call, email or push)";
        if v.default_policy == Some(&PolicyKind::TwoFactor) {
            cx.error("default_policy", WHY);
        }
        for (i, rule) in v.rules.unwrap_or_default().iter().enumerate() {
            if rule.policy == PolicyKind::TwoFactor {
                cx.error(format!("rules[{i}].policy"), WHY);
            }
        }
    }
    if let (Some(server), Some(admin)) = (v.server, v.admin)
        && server.listen == admin.listen
    {
        cx.error("admin.listen", "must differ from server.listen");
    }
    if let (Some(session), Some(server)) = (v.session, v.server) {
        let https_url = server
            .external_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https");
        let https = server.tls.is_some() || https_url;
        if session.secure && !https {
            cx.warn(
                "session.secure",
                "the main listener is plain http and server.external_url is not https: browsers will not send a Secure cookie over http (set server.tls or an https external_url, e.g. behind a TLS proxy)",
            );
        } else if !session.secure && https {
            cx.warn(
                "session.secure",
                "false while the gateway is served over https: the session cookie may leak over plain http",
            );
        }
    }
    if let (Some(users), Some(factors)) = (v.users, v.factors)
        && users.passwordless
    {
        for f in &users.passwordless_factors {
            let on = match f.as_str() {
                "push" => factors.push.enabled,
                _ => factors.totp.enabled,
            };
            if !on {
                cx.warn(
                    "users.passwordless_factors",
                    format!("{f:?} is listed but that factor is not enabled"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Write as _;

    use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

    use super::*;

    const SESSION_SECRET: &str = "0123456789abcdef0123456789abcdef-session";
    const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
    /// base64 of 32 bytes 0..32.
    const STORE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    const MINIMAL: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"
"#;

    fn std_env(name: &str) -> Option<String> {
        match name {
            "PORTCULLIS_SESSION_SECRET" => Some(SESSION_SECRET.into()),
            "PORTCULLIS_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
            "PORTCULLIS_STORE_KEY" => Some(STORE_KEY.into()),
            _ => None,
        }
    }

    fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
        load_str(text, &std_env)
    }

    fn ok(text: &str) -> LoadedConfig {
        match load(text) {
            Ok(loaded) => loaded,
            Err(e) => panic!("config should load, got:\n{e}"),
        }
    }

    /// The problems of a config that must fail, as `key: message` lines.
    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("config should fail:\n{text}"),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn warnings(loaded: &LoadedConfig) -> Vec<String> {
        loaded.warnings.iter().map(ToString::to_string).collect()
    }

    fn has(lines: &[String], key: &str, fragment: &str) -> bool {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{key}: ")) && l.contains(fragment))
    }

    #[track_caller]
    fn assert_has(lines: &[String], key: &str, fragment: &str) {
        assert!(
            has(lines, key, fragment),
            "expected `{key}: ...{fragment}...` in:\n{}",
            lines.join("\n")
        );
    }

    /// `MINIMAL` plus extra text (tables only; top-level keys go before).
    fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }

    fn cheap_hash(password: &str, algorithm: Algorithm) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn toml_path(p: &Path) -> String {
        format!("'{}'", p.display())
    }

    // --- defaults -----------------------------------------------------------

    #[test]
    fn rule_paths_that_can_never_match_a_normalized_path_are_refused() {
        let errs = errors(&with(
            r#"
[[rules]]
path = "^/über/"
policy = "deny"

[[rules]]
path = "^/caf%c3%a9/"
policy = "deny"

[[rules]]
path = "^/odata/%24metadata"
policy = "deny"

[[rules]]
path = "^/a%3ab"
policy = "deny"
"#,
        ));
        assert_has(&errs, "rules[0].path", "raw non-ASCII character 'ü'");
        assert_has(&errs, "rules[0].path", "write %C3%BC");
        assert_has(&errs, "rules[1].path", "lower-case escape %c3 never matches");
        assert_has(&errs, "rules[1].path", "write %A9");
        assert_has(&errs, "rules[2].path", "the escape %24 never matches");
        assert_has(&errs, "rules[3].path", "the escape %3a never matches");
        // The spellings a normalized path has load, and so does a kept escape.
        ok(&with(
            r#"
[[rules]]
path = "^/%C3%BCber/"
policy = "deny"

[[rules]]
path = "^/odata/\\$metadata(/|$)"
policy = "deny"

[[rules]]
path = "^/a%20b%3F%25/"
policy = "deny"
"#,
        ));
        // Matching that ignores case matches lower-case escapes too.
        ok(&format!(
            "case_insensitive_paths = true\n{}",
            with("[[rules]]\npath = \"^/caf%c3%a9/\"\npolicy = \"deny\"\n")
        ));
    }

    #[test]
    fn minimal_config_loads_with_every_default() {
        let loaded = ok(MINIMAL);
        let c = &loaded.config;
        assert_eq!(c.default_policy, PolicyKind::TwoFactor);
        assert_eq!(c.server.listen, defaults::LISTEN.parse::<SocketAddr>().unwrap());
        assert!(c.server.tls.is_none());
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(
            c.server.header_read_timeout,
            Duration::from_secs(defaults::HEADER_READ_TIMEOUT_SECS)
        );
        assert_eq!(c.server.max_header_bytes, defaults::MAX_HEADER_BYTES);
        assert_eq!(
            c.server.shutdown_timeout,
            Duration::from_secs(defaults::SHUTDOWN_TIMEOUT_SECS)
        );
        assert!(c.server.external_url.is_none());

        assert_eq!(
            c.admin.listen,
            defaults::ADMIN_LISTEN.parse::<SocketAddr>().unwrap()
        );
        assert!(c.admin.tls.is_none());
        assert_eq!(c.admin.tokens, vec![Secret::new(ADMIN_TOKEN)]);
        assert_eq!(c.admin.metrics_require_token, defaults::METRICS_REQUIRE_TOKEN);

        assert_eq!(c.upstreams.len(), 1);
        let u = &c.upstreams[0];
        assert_eq!(u.name, "app");
        assert_eq!(u.url.as_str(), "http://127.0.0.1:3000/");
        assert!(u.hosts.is_empty());
        assert_eq!(u.preserve_host, defaults::PRESERVE_HOST);
        assert_eq!(u.timeout, Duration::from_secs(defaults::UPSTREAM_TIMEOUT_SECS));
        assert_eq!(
            u.pool_idle_timeout,
            Duration::from_secs(defaults::POOL_IDLE_TIMEOUT_SECS)
        );
        assert!(u.ca.is_empty());

        let s = &c.session;
        assert_eq!(s.cookie_name, defaults::COOKIE_NAME);
        assert_eq!(s.secrets, vec![Secret::new(SESSION_SECRET)]);
        assert_eq!(s.lifetime, Duration::from_secs(defaults::SESSION_LIFETIME_SECS));
        assert_eq!(
            s.idle_timeout,
            Duration::from_secs(defaults::SESSION_IDLE_TIMEOUT_SECS)
        );
        assert_eq!(
            s.revocation_check,
            Duration::from_secs(defaults::REVOCATION_CHECK_SECS)
        );
        assert_eq!(s.domain, None);
        assert_eq!(s.secure, defaults::SESSION_SECURE);
        assert_eq!(s.same_site, SameSite::Lax);
        assert_eq!(defaults::SAME_SITE, "lax");

        let h = &c.identity_headers;
        assert!(h.user.as_str().eq_ignore_ascii_case(defaults::USER_HEADER));
        assert!(h.groups.as_str().eq_ignore_ascii_case(defaults::GROUPS_HEADER));
        assert!(h.email.as_str().eq_ignore_ascii_case(defaults::EMAIL_HEADER));
        assert!(h.name.as_str().eq_ignore_ascii_case(defaults::NAME_HEADER));

        assert_eq!(c.portal.prefix, defaults::PORTAL_PREFIX);
        assert_eq!(c.portal.title, defaults::PORTAL_TITLE);
        assert!(c.portal.allowed_redirect_hosts.is_empty());
        assert!(c.portal.trusted_origins.is_empty());

        assert_eq!(c.users.passwordless, defaults::PASSWORDLESS);
        assert_eq!(
            c.users.passwordless_factors,
            defaults::PASSWORDLESS_FACTORS.to_vec()
        );
        assert_eq!(c.users.enrollment, Enrollment::FirstLogin);
        if Path::new(defaults::USERS_FILE).exists() {
            assert_eq!(c.users.file.as_deref(), Some(Path::new(defaults::USERS_FILE)));
        } else {
            assert_eq!(c.users.file, None);
            assert!(c.users.file_users.is_empty());
            assert_has(&warnings(&loaded), "users.file", "does not exist");
        }

        assert!(
            matches!(&c.store.kind, StoreKind::Sqlite { path } if path == Path::new(defaults::STORE_PATH)),
            "{:?}",
            c.store.kind
        );
        assert_eq!(
            c.store.encryption_keys,
            vec![Secret::new((0u8..32).collect::<Vec<_>>())]
        );

        let r = &c.regulation;
        assert_eq!(r.max_factor_failures, defaults::MAX_FACTOR_FAILURES);
        assert_eq!(r.max_password_failures, defaults::MAX_PASSWORD_FAILURES);
        assert_eq!(
            r.max_password_failures_per_user,
            defaults::MAX_PASSWORD_FAILURES_PER_USER
        );
        assert_eq!(r.max_failures_per_ip, defaults::MAX_FAILURES_PER_IP);
        assert_eq!(
            r.max_transactions_per_ip_per_minute,
            defaults::MAX_TRANSACTIONS_PER_IP_PER_MINUTE
        );
        assert_eq!(r.window, Duration::from_secs(defaults::REGULATION_WINDOW_SECS));
        assert_eq!(r.lockout, Duration::from_secs(defaults::LOCKOUT_SECS));
        assert_eq!(r.reveal_lockout, defaults::REVEAL_LOCKOUT);

        let t = &c.factors.totp;
        assert_eq!(t.enabled, defaults::TOTP_ENABLED);
        assert_eq!(t.issuer, defaults::TOTP_ISSUER);
        assert_eq!(t.digits, defaults::TOTP_DIGITS);
        assert_eq!(t.period, defaults::TOTP_PERIOD);
        assert_eq!(t.algorithm, TotpAlgorithm::Sha1);
        assert_eq!(t.skew, defaults::TOTP_SKEW);
        for (f, template) in [
            (&c.factors.sms, defaults::SMS_TEMPLATE),
            (&c.factors.call, defaults::CALL_TEMPLATE),
            (&c.factors.email, defaults::EMAIL_TEMPLATE),
        ] {
            assert_eq!(f.enabled, defaults::CODE_FACTOR_ENABLED);
            assert!(f.delivery.is_none());
            assert_eq!(f.code_length, defaults::CODE_LENGTH);
            assert_eq!(f.ttl, Duration::from_secs(defaults::CODE_TTL_SECS));
            assert_eq!(f.resend_after, Duration::from_secs(defaults::RESEND_AFTER_SECS));
            assert_eq!(f.max_sends_per_hour, defaults::MAX_SENDS_PER_HOUR);
            assert_eq!(f.template, template);
        }
        assert_eq!(c.factors.email.subject, defaults::EMAIL_SUBJECT);
        assert_eq!(c.factors.push.enabled, defaults::PUSH_ENABLED);
        assert!(c.factors.push.delivery.is_none());
        assert_eq!(c.factors.push.ttl, Duration::from_secs(defaults::PUSH_TTL_SECS));
        assert_eq!(c.factors.recovery_codes.enabled, defaults::RECOVERY_CODES_ENABLED);
        assert_eq!(c.factors.recovery_codes.count, defaults::RECOVERY_CODES);
        assert!(c.factors.any_second_factor());

        assert!(c.rules.is_empty());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, defaults::LOG_LEVEL);

        // Plain http with secure cookies: the one warning a laptop setup gets.
        assert_has(&warnings(&loaded), "session.secure", "plain http");
    }

    #[test]
    fn string_defaults_name_valid_choices() {
        // The word constants must be accepted by their own keys.
        let text = format!(
            "default_policy = \"{}\"\n{MINIMAL}\n[session]\nsame_site = \"{}\"\n[users]\nenrollment = \"{}\"\n\
             [store]\nkind = \"{}\"\n[factors.totp]\nalgorithm = \"{}\"\n[log]\nformat = \"{}\"\nlevel = \"{}\"\n",
            defaults::DEFAULT_POLICY,
            defaults::SAME_SITE,
            defaults::ENROLLMENT,
            defaults::STORE_KIND,
            defaults::TOTP_ALGORITHM,
            defaults::LOG_FORMAT,
            defaults::LOG_LEVEL,
        );
        ok(&text);
    }

    // --- the example files --------------------------------------------------

    const EXAMPLE: &str = include_str!("../../config/portcullis.example.toml");
    const USERS_EXAMPLE: &str = include_str!("../../config/users.example.toml");

    #[test]
    fn example_config_loads_and_its_values_are_the_defaults() {
        let example = ok(EXAMPLE);
        let minimal = ok(MINIMAL);
        let (e, m) = (&example.config, &minimal.config);
        // Debug is a faithful structural dump (secrets are redacted on both sides).
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        assert_eq!(e.default_policy, m.default_policy);
        assert_eq!(e.case_insensitive_paths, m.case_insensitive_paths);
        assert!(same(&e.server, &m.server), "{:?}\n{:?}", e.server, m.server);
        assert!(same(&e.admin, &m.admin));
        assert!(same(&e.upstreams, &m.upstreams));
        assert!(same(&e.session, &m.session));
        assert!(same(&e.identity_headers, &m.identity_headers));
        assert!(same(&e.portal, &m.portal));
        assert!(same(&e.users, &m.users));
        assert!(same(&e.store, &m.store));
        assert!(same(&e.regulation, &m.regulation));
        assert!(same(&e.factors, &m.factors), "{:?}\n{:?}", e.factors, m.factors);
        assert!(same(&e.log, &m.log));
        assert_eq!(e.rules.len(), 1);
        assert_eq!(e.rules[0].policy, PolicyKind::Bypass);
        assert!(e.rules[0].path.as_ref().unwrap().is_match("/favicon.ico"));
        assert!(!e.rules[0].path.as_ref().unwrap().is_match("/favicon.ico.php"));
        assert!(!e.rules[0].path.as_ref().unwrap().is_match("/app/static/x"));
    }

    /// The fields of a raw struct, read back from serde's unknown-field message.
    fn fields_of<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let mut table = toml::Table::new();
        table.insert("__probe__".into(), toml::Value::Boolean(true));
        let e = deserialize::<T>(toml::Value::Table(table)).unwrap_err();
        let expected = e.message.split_once("expected").unwrap().1;
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// `(section, key)` for every `key =` line, commented out or not.
    fn example_keys(text: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                let header = header.trim_start_matches('[');
                if let Some(end) = header.find(']') {
                    section = header[..end].to_owned();
                    continue;
                }
            }
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert((section.clone(), key.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn example_config_mentions_every_key_in_spec_order() {
        let keys = example_keys(EXAMPLE);
        let sections: Vec<(&str, Vec<String>)> = vec![
            (
                "",
                vec!["default_policy".to_owned(), "case_insensitive_paths".to_owned()],
            ),
            ("server", fields_of::<RawServer>()),
            ("admin", fields_of::<RawAdmin>()),
            ("upstreams", fields_of::<RawUpstream>()),
            ("session", fields_of::<RawSession>()),
            ("identity_headers", fields_of::<RawIdentityHeaders>()),
            ("portal", fields_of::<RawPortal>()),
            ("users", fields_of::<RawUsers>()),
            ("store", fields_of::<RawStore>()),
            ("regulation", fields_of::<RawRegulation>()),
            ("factors.totp", fields_of::<RawTotp>()),
            (
                "factors.sms",
                fields_of::<RawCodeFactor>()
                    .into_iter()
                    .filter(|f| f != "subject")
                    .collect(),
            ),
            (
                "factors.call",
                fields_of::<RawCodeFactor>()
                    .into_iter()
                    .filter(|f| f != "subject")
                    .collect(),
            ),
            ("factors.email", fields_of::<RawCodeFactor>()),
            ("factors.push", fields_of::<RawPush>()),
            ("factors.recovery_codes", fields_of::<RawRecoveryCodes>()),
            ("rules", fields_of::<RawRule>()),
            ("log", fields_of::<RawLog>()),
        ];
        let mut missing = Vec::new();
        for (section, fields) in &sections {
            assert!(!fields.is_empty(), "{section}");
            for field in fields {
                if !keys.contains(&(section.to_string(), field.clone())) {
                    missing.push(format!("{section}.{field}"));
                }
            }
        }
        // Inline tables: mentioned as `name =` somewhere in the file.
        for field in fields_of::<RawTls>()
            .iter()
            .chain(fields_of::<RawDelivery>().iter())
        {
            if !EXAMPLE.contains(&format!("{field} =")) {
                missing.push(format!("(inline) {field}"));
            }
        }
        assert!(missing.is_empty(), "keys missing from the example: {missing:?}");

        // Top-level sections appear in SPEC order, each once as a header.
        let mut last = 0;
        for top in &TOP_LEVEL_KEYS[2..] {
            let header = if *top == "factors" {
                "[factors.totp]".to_owned()
            } else if *top == "upstreams" || *top == "rules" {
                format!("\n[[{top}]]")
            } else {
                format!("\n[{top}]")
            };
            let at = EXAMPLE
                .find(&header)
                .unwrap_or_else(|| panic!("no {header} in the example"));
            assert!(at > last, "{top} is out of order");
            last = at;
        }
        // Top-level keys come before the first table.
        assert!(EXAMPLE.find("default_policy =").unwrap() < EXAMPLE.find("\n[server]").unwrap());
    }

    #[test]
    fn users_example_loads_and_its_password_is_change_me() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, USERS_EXAMPLE).unwrap();
        let loaded = ok(&with(&format!("[users]\nfile = {}\n", toml_path(&path))));
        let users = &loaded.config.users.file_users;
        assert_eq!(users.len(), 1);
        let alice = &users[0];
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.display_name.as_deref(), Some("Alice Example"));
        assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
        assert_eq!(alice.phone.as_deref(), Some("+15555550100"));
        assert_eq!(alice.groups, vec!["admins".to_owned()]);
        assert!(alice.totp_secret.is_none());
        let hash = argon2::PasswordHash::new(&alice.password_hash).unwrap();
        assert!(Argon2::default().verify_password(b"change-me", &hash).is_ok());
    }

    // --- shape errors -------------------------------------------------------

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

    #[test]
    fn problems_in_different_sections_are_all_reported() {
        let text = r#"
default_policy = "sometimes"

[server]
listen = "localhost"
max_header_bytes = 100

[[upstreams]]
name = "app"
url = "ftp://files.example.com"

[session]
secrets = ["too-short-12"]
same_site = "none"
secure = false

[identity_headers]
user = "X-User"
groups = "x-user"

[portal]
prefix = "/portal/"

[regulation]
max_password_failures = 10
max_password_failures_per_user = 5

[factors.totp]
digits = 7

[[rules]]
path = "^/a"
policy = "bypass"

[[rules]]
path = "^/b"
policy = "one_factor"

[[rules]]
path = "^/(unclosed"
policy = "two_factor"

[log]
format = "xml"
"#;
        let errs = errors(text);
        assert_has(&errs, "default_policy", "must be one of");
        assert_has(&errs, "server.listen", "IP address and port");
        assert_has(&errs, "server.max_header_bytes", "between 8192 and 1048576");
        assert_has(&errs, "upstreams[0].url", "scheme must be http or https");
        assert_has(&errs, "session.secrets[0]", "must be at least 32 bytes (got 12)");
        assert_has(&errs, "session.same_site", "requires session.secure = true");
        assert_has(
            &errs,
            "identity_headers.groups",
            "already used by identity_headers.user",
        );
        assert_has(&errs, "portal.prefix", "must not end with");
        assert_has(
            &errs,
            "regulation.max_password_failures_per_user",
            "at least regulation.max_password_failures",
        );
        assert_has(&errs, "factors.totp.digits", "must be 6 or 8");
        assert_has(
            &errs,
            "rules[2].path",
            "invalid regex: unclosed group (in \"^/(unclosed\")",
        );
        assert!(errs.iter().all(|l| !l.contains('\n')), "{errs:#?}");
        assert_has(&errs, "log.format", "must be one of");
        assert!(errs.len() >= 12, "{errs:#?}");
        // The error's Display lists them all, one per line.
        let e = load(text).unwrap_err();
        assert!(e.to_string().lines().filter(|l| l.contains(": ")).count() >= 12);
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_line_and_column() {
        let e = load("default_policy = \"two_factor\"\n[server]\nlisten = \n").unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].key.starts_with("line 3, column"),
            "{:?}",
            e.problems
        );
        assert!(e.problems[0].message.starts_with("TOML syntax error"));
    }

    #[test]
    fn a_malformed_section_does_not_hide_others() {
        let errs = errors(&with(
            "[server]\nlisten = 1\n[log]\nformat = \"xml\"\n[[rules]]\npolicy = 3\n[[rules]]\npolicy = \"nope\"\n",
        ));
        assert_has(&errs, "server.listen", "invalid type");
        assert_has(&errs, "log.format", "must be one of");
        assert_has(&errs, "rules[0].policy", "invalid type");
        assert_has(&errs, "rules[1].policy", "must be one of");
    }

    #[test]
    fn missing_upstreams_is_an_error() {
        let errs = errors("[server]\nlisten = \"127.0.0.1:8080\"\n");
        assert_has(&errs, "upstreams", "at least one");
    }

    // --- secrets ------------------------------------------------------------

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
            matches!(&loaded.config.store.kind, StoreKind::Postgres { url } if url.expose() == b"postgres://u:p@db/portcullis")
        );
        let loaded = ok(&with("[store]\nkind = \"memory\"\npath = \"x.db\"\n"));
        assert!(matches!(loaded.config.store.kind, StoreKind::Memory));
        assert_has(&warnings(&loaded), "store.path", "ignored");
    }

    #[test]
    fn admin_tokens_are_checked() {
        let errs = errors(&with("[admin]\ntokens = [\"has space in it 0123456789\"]\n"));
        assert_has(&errs, "admin.tokens[0]", "whitespace");
        let errs = errors(&with(
            "[admin]\ntokens = [\"long-enough-token-0123456789\", \"short\"]\n",
        ));
        assert_has(&errs, "admin.tokens[1]", "too short (5 bytes; at least 16)");
        assert!(!errs.iter().any(|e| e.contains("admin.tokens[0]")), "{errs:?}");
        assert!(
            !errs.iter().any(|e| e.contains("short\"")),
            "the token was printed: {errs:?}"
        );
        let loaded = ok(&with("[admin]\ntokens = []\nmetrics_require_token = true\n"));
        assert_has(&warnings(&loaded), "admin.tokens", "disabled");
        assert_has(
            &warnings(&loaded),
            "admin.metrics_require_token",
            "cannot be scraped",
        );
        let errs = errors(&with("[admin]\nlisten = \"127.0.0.1:8080\"\n"));
        assert_has(&errs, "admin.listen", "must differ from server.listen");
    }

    // --- durations ----------------------------------------------------------

    #[test]
    fn durations_parse() {
        let d = |s: &str| parse_duration(s).unwrap();
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("15m"), Duration::from_secs(900));
        assert_eq!(d("8h"), Duration::from_secs(8 * 3600));
        assert_eq!(d("1d"), Duration::from_secs(86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1m30s500ms"), Duration::from_millis(90_500));
        assert_eq!(d(" 0s "), Duration::ZERO);
        for bad in [
            "",
            "30",
            "-5s",
            "5 s",
            "1.5h",
            "5sec",
            "s",
            "abc",
            "99999999999999999999s",
            "10000000000000000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("1.5h").unwrap_err().contains("whole numbers"));
    }

    #[test]
    fn zero_durations_are_rejected_where_they_make_no_sense() {
        let errs = errors(&with(
            "[session]\nlifetime = \"0s\"\nidle_timeout = \"0m\"\n[server]\nheader_read_timeout = \"0s\"\n\
             [regulation]\nwindow = \"0s\"\n",
        ));
        assert_has(&errs, "session.lifetime", "greater than zero");
        assert_has(&errs, "session.idle_timeout", "greater than zero");
        assert_has(&errs, "server.header_read_timeout", "greater than zero");
        assert_has(&errs, "regulation.window", "greater than zero");
        // Zero is meaningful for these.
        let loaded = ok(&with(
            "[server]\nshutdown_timeout = \"0s\"\n[session]\nrevocation_check = \"0s\"\n",
        ));
        assert_eq!(loaded.config.server.shutdown_timeout, Duration::ZERO);
        let errs = errors(&with("[session]\nlifetime = \"8 hours\"\n"));
        assert_has(&errs, "session.lifetime", "invalid duration");
    }

    #[test]
    fn connection_limits_have_defaults_and_name_their_key() {
        let loaded = ok(MINIMAL);
        let s = &loaded.config.server;
        assert_eq!(s.idle_timeout, Duration::from_secs(defaults::IDLE_TIMEOUT_SECS));
        assert_eq!(s.max_connections, defaults::MAX_CONNECTIONS);
        assert_eq!(
            s.tls_handshake_timeout,
            Duration::from_secs(defaults::TLS_HANDSHAKE_TIMEOUT_SECS)
        );
        assert_eq!(s.max_tls_handshakes, defaults::MAX_TLS_HANDSHAKES);

        let loaded = ok(&with(
            "[server]\nidle_timeout = \"90s\"\nmax_connections = 5\ntls_handshake_timeout = \"3s\"\nmax_tls_handshakes = 2\n",
        ));
        let s = &loaded.config.server;
        assert_eq!(s.idle_timeout, Duration::from_secs(90));
        assert_eq!(s.max_connections, 5);
        assert_eq!(s.tls_handshake_timeout, Duration::from_secs(3));
        assert_eq!(s.max_tls_handshakes, 2);

        let errs = errors(&with(
            "[server]\nidle_timeout = \"0s\"\nmax_connections = 0\ntls_handshake_timeout = \"soon\"\nmax_tls_handshakes = 20000000\n",
        ));
        assert_has(&errs, "server.idle_timeout", "greater than zero");
        assert_has(&errs, "server.max_connections", "between 1 and");
        assert_has(&errs, "server.tls_handshake_timeout", "");
        assert_has(&errs, "server.max_tls_handshakes", "between 1 and");
        let errs = errors(&with("[server]\nmax_connections = -3\n"));
        assert_has(&errs, "server.max_connections", "");
    }

    #[test]
    fn body_timeout_and_per_address_cap_have_defaults_and_name_their_key() {
        let loaded = ok(MINIMAL);
        let s = &loaded.config.server;
        assert_eq!(s.max_connections_per_ip, defaults::MAX_CONNECTIONS_PER_IP);
        assert_eq!(
            s.body_read_timeout,
            Duration::from_secs(defaults::BODY_READ_TIMEOUT_SECS)
        );
        let loaded = ok(&with(
            "[server]\nmax_connections_per_ip = 0\nbody_read_timeout = \"1500ms\"\n",
        ));
        let s = &loaded.config.server;
        assert_eq!(s.max_connections_per_ip, 0, "0 turns the cap off");
        assert_eq!(s.body_read_timeout, Duration::from_millis(1500));
        let errs = errors(&with(
            "[server]\nmax_connections_per_ip = 20000000\nbody_read_timeout = \"0s\"\n",
        ));
        assert_has(&errs, "server.max_connections_per_ip", "between 0");
        assert_has(&errs, "server.body_read_timeout", "greater than zero");
        let errs = errors(&with("[server]\nbody_read_timeout = \"slowly\"\n"));
        assert_has(&errs, "server.body_read_timeout", "");
    }

    // --- users file ---------------------------------------------------------

    fn users_config(dir: &Path, users: &str) -> String {
        let path = dir.join("users.toml");
        std::fs::write(&path, users).unwrap();
        with(&format!("[users]\nfile = {}\n", toml_path(&path)))
    }

    #[test]
    fn users_file_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let hash = cheap_hash("pw", Algorithm::Argon2id);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\ngroups = [\"admins\", \"ops\"]\n\
                 totp = {{ secret = \"JBSW Y3DP EHPK 3PXP jbsw y3dp ehpk 3pxp\" }}\n\
                 [[users]]\nusername = \"bob\"\npassword = \"{hash}\"\ntotp = {{ secret = \"env:BOB_TOTP\" }}\n"
            ),
        );
        let env = |name: &str| match name {
            "BOB_TOTP" => Some("JBSWY3DPEHPK3PXP".to_owned()), // 80 bits: legacy
            other => std_env(other),
        };
        let loaded = load_str(&text, &env).unwrap();
        let users = &loaded.config.users.file_users;
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].username, "alice");
        assert_eq!(users[0].groups, vec!["admins".to_owned(), "ops".to_owned()]);
        assert_eq!(
            users[0].totp_secret.as_ref().unwrap().expose(),
            b"Hello!\xde\xad\xbe\xefHello!\xde\xad\xbe\xef"
        );
        assert_eq!(users[1].totp_secret.as_ref().unwrap().len(), 10);
        assert!(users[0].display_name.is_none());
        let w = warnings(&loaded);
        assert_has(&w, "users.file", "users[1].totp.secret: legacy 80-bit secret");
        assert!(!w.iter().any(|l| l.contains("users[0].totp")), "{w:?}");
    }

    #[test]
    fn over_long_logins_and_a_zero_transaction_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = cheap_hash("pw", Algorithm::Argon2id);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"{}\"\npassword = \"{good}\"\n",
                "a".repeat(crate::limits::MAX_LOGIN_BYTES + 1)
            ),
        );
        let text = format!("{text}\n[regulation]\nmax_transactions_per_ip_per_minute = 0\n");
        let errs = errors(&text);
        assert_has(&errs, "users.file", "users[0].username: is 257 bytes long");
        assert_has(
            &errs,
            "regulation.max_transactions_per_ip_per_minute",
            "must be at least 1",
        );
    }

    #[test]
    fn users_file_problems_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = cheap_hash("pw", Algorithm::Argon2id);
        let argon2i = cheap_hash("pw", Algorithm::Argon2i);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"alice\"\npassword = \"{good}\"\n\
                 [[users]]\nusername = \"Alice\"\npassword = \"{good}\"\n\
                 [[users]]\nusername = \"bad name\"\npassword = \"{argon2i}\"\n\
                 [[users]]\nusername = \"carol\"\npassword = \"plaintext\"\nphone = \"555-0100\"\nemail = \"carol\"\n\
                 [[users]]\nusername = \"dave\"\npassword = \"{good}\"\ntotp = {{ secret = \"JBSWY3DPEHPK3\" }}\n\
                 [[users]]\nusername = \"erin\"\npassword = \"{good}\"\ntotp = {{ secret = \"not base32!\" }}\n\
                 [[users]]\nusername = \"frank\"\npasword = \"{good}\"\n\
                 [[users]]\npassword = \"{good}\"\n"
            ),
        );
        let errs = errors(&text);
        assert_has(
            &errs,
            "users.file",
            "users[1].username: \"Alice\" is already used by users[0]",
        );
        assert_has(
            &errs,
            "users.file",
            "users[2].username: must not contain whitespace",
        );
        assert_has(
            &errs,
            "users.file",
            "users[2].password: must be argon2id (got argon2i)",
        );
        assert_has(&errs, "users.file", "users[3].password: is not a PHC string");
        assert_has(&errs, "users.file", "users[3].phone: must be E.164");
        assert_has(&errs, "users.file", "users[3].email: is not an e-mail address");
        assert_has(
            &errs,
            "users.file",
            "users[4].totp.secret: must be at least 80 bits",
        );
        assert_has(&errs, "users.file", "users[5].totp.secret: is not valid base32");
        assert_has(&errs, "users.file", "users[6].pasword: unknown key");
        assert_has(&errs, "users.file", "users[7].username: is required");
    }

    #[test]
    fn users_file_presence_rules() {
        let errs = errors(&with("[users]\nfile = \"/nonexistent/users.toml\"\n"));
        assert_has(&errs, "users.file", "does not exist");
        let loaded = ok(&with("[users]\nfile = \"\"\n"));
        assert!(loaded.config.users.file.is_none());
        assert!(!warnings(&loaded).iter().any(|w| w.starts_with("users.file")));
        let dir = tempfile::tempdir().unwrap();
        let errs = errors(&users_config(dir.path(), "[[users]\nusername = \"x\"\n"));
        assert_has(&errs, "users.file", "TOML syntax error");
        let errs = errors(&users_config(dir.path(), "admins = [\"x\"]\n"));
        assert_has(&errs, "users.file", "admins: unknown key");
    }

    #[test]
    fn passwordless_factors_are_checked() {
        let errs = errors(&with(
            "[users]\npasswordless_factors = [\"sms\"]\nenrollment = \"never\"\n",
        ));
        assert_has(&errs, "users.passwordless_factors[0]", "must be one of");
        assert_has(&errs, "users.enrollment", "must be one of");
        let loaded = ok(&with("[users]\npasswordless = true\n"));
        assert_has(
            &warnings(&loaded),
            "users.passwordless_factors",
            "\"push\" is listed but that factor is not enabled",
        );
    }

    #[test]
    fn base32_decodes_rfc_4648_vectors() {
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytb").unwrap(), b"fooba");
        assert_eq!(base32_decode("MZ XW 6").unwrap(), b"foo");
        assert_eq!(base32_decode("").unwrap(), b"");
        assert!(base32_decode("MZXW1").is_none());
    }

    // --- TLS ----------------------------------------------------------------

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join(format!("{name}-cert.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn tls_files_are_loaded_into_a_rustls_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "server");
        let loaded = ok(&with(&format!(
            "[server]\ntls = {{ cert = {}, key = {} }}\n[admin]\ntls = {{ cert = {}, key = {} }}\n",
            toml_path(&cert),
            toml_path(&key),
            toml_path(&cert),
            toml_path(&key)
        )));
        let tls = loaded.config.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert_path, cert);
        assert_eq!(
            tls.server_config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(loaded.config.admin.tls.is_some());
        // TLS on the listener: no warning about Secure cookies over http.
        assert!(
            !warnings(&loaded).iter().any(|w| w.starts_with("session.secure")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn tls_problems_name_the_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_cert(dir.path(), "a");
        let (_, other_key) = write_cert(dir.path(), "b");
        let errs = errors(&with(&format!(
            "[server]\ntls = {{ cert = \"/nonexistent/cert.pem\", key = {} }}\n\
             [admin]\ntls = {{ cert = {}, key = {} }}\n",
            toml_path(&cert),
            toml_path(&cert),
            toml_path(&other_key)
        )));
        assert_has(&errs, "server.tls.cert", "/nonexistent/cert.pem");
        assert_has(&errs, "server.tls.key", "no PEM private key found");
        assert_has(&errs, "admin.tls", "unusable certificate and key");
        let errs = errors(&with("[server]\ntls = { cert = \"x.pem\" }\n"));
        assert_has(&errs, "server.tls.key", "is required");
    }

    #[test]
    fn upstream_ca_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "ca");
        let loaded = ok(&format!(
            "[[upstreams]]\nname = \"app\"\nurl = \"https://app.internal\"\nca = {}\n",
            toml_path(&cert)
        ));
        assert_eq!(loaded.config.upstreams[0].ca.len(), 1);
        let errs = errors(&format!(
            "[[upstreams]]\nname = \"app\"\nurl = \"https://app.internal\"\nca = {}\n",
            toml_path(&key)
        ));
        assert_has(&errs, "upstreams[0].ca", "no PEM certificate found");
    }

    // --- server, session, headers, portal -----------------------------------

    #[test]
    fn server_values_are_parsed() {
        let loaded = ok(&with(
            "[server]\nlisten = \"[::1]:8443\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\", \"10.1.0.0/16\"]\n\
             external_url = \"https://App.Example.com/\"\nmax_header_bytes = 65536\n",
        ));
        let s = &loaded.config.server;
        assert_eq!(s.listen, "[::1]:8443".parse::<SocketAddr>().unwrap());
        let nets: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "10.1.0.0/16"]);
        assert_eq!(
            s.external_url.as_ref().unwrap().host_str(),
            Some("app.example.com")
        );
        assert_eq!(s.max_header_bytes, 65536);
        assert!(!warnings(&loaded).iter().any(|w| w.starts_with("session.secure")));

        let errs = errors(&with(
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\nexternal_url = \"https://example.com/app\"\n",
        ));
        assert_has(&errs, "server.trusted_proxies[0]", "CIDR");
        assert_has(&errs, "server.external_url", "must not have a path");
        let errs = errors(&with(
            "[server]\nexternal_url = \"ftp://example.com\"\nmax_header_bytes = 2000000\n",
        ));
        assert_has(&errs, "server.external_url", "scheme must be http or https");
        assert_has(&errs, "server.max_header_bytes", "between 8192 and 1048576");
    }

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
    fn secure_cookie_warnings_follow_the_transport() {
        let loaded = ok(&with("[server]\nexternal_url = \"http://gw.example.com\"\n"));
        assert_has(&warnings(&loaded), "session.secure", "plain http");
        let loaded = ok(&with(
            "[server]\nexternal_url = \"https://gw.example.com\"\n[session]\nsecure = false\n",
        ));
        assert_has(&warnings(&loaded), "session.secure", "may leak");
    }

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

    // --- check-config gaps: one pass, host bits, a bypass default -------------

    #[test]
    fn cidrs_with_host_bits_are_refused_with_the_network_suggested() {
        let errs = errors(&with(
            "[server]\ntrusted_proxies = [\"10.0.0.1/8\", \"fd00::1/8\", \"10.0.0.0/8\", \"192.168.1.7\"]\n\
             [[rules]]\npath = \"^/intranet/\"\npolicy = \"one_factor\"\nnetworks = [\"192.168.1.1/24\"]\n",
        ));
        assert_has(&errs, "server.trusted_proxies[0]", "did you mean \"10.0.0.0/8\"");
        assert_has(&errs, "server.trusted_proxies[1]", "did you mean \"fd00::/8\"");
        assert_has(&errs, "rules[0].networks[0]", "did you mean \"192.168.1.0/24\"");
        assert!(
            !errs
                .iter()
                .any(|e| e.starts_with("server.trusted_proxies[2]")
                    || e.starts_with("server.trusted_proxies[3]")),
            "{errs:#?}"
        );
    }

    #[test]
    fn upstream_duplicates_are_reported_beside_other_errors_and_warnings() {
        let Err(err) = load(
            r#"
default_policy = "bypass"
[[upstreams]]
name = "app"
url = "ftp://nowhere"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3001"

[[upstreams]]
name = "other"
url = "not a url"

[server]
trusted_proxies = ["10.0.0.1/8"]
"#,
        ) else {
            panic!("the config has errors");
        };
        let errs: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        // Entries with their own errors still take part in the name and
        // default checks, in the same pass as the other sections' errors.
        assert_has(&errs, "upstreams[0].url", "scheme");
        assert_has(&errs, "upstreams[1].name", "already used by upstreams[0]");
        assert_has(
            &errs,
            "upstreams[1].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(
            &errs,
            "upstreams[2].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(&errs, "server.trusted_proxies[0]", "host bits");
        let warns: Vec<String> = err.warnings.iter().map(ToString::to_string).collect();
        assert_has(&warns, "default_policy", "bypass");
    }

    #[test]
    fn a_bypass_default_policy_warns() {
        let loaded = ok(&format!("default_policy = \"bypass\"\n{MINIMAL}"));
        assert_has(&warnings(&loaded), "default_policy", "without signing in");
        let loaded = ok(&format!("default_policy = \"deny\"\n{MINIMAL}"));
        assert!(
            !warnings(&loaded).iter().any(|w| w.starts_with("default_policy")),
            "{:?}",
            warnings(&loaded)
        );
    }

    // --- upstreams ----------------------------------------------------------

    #[test]
    fn upstreams_are_checked() {
        let loaded = ok(r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[upstreams]]
name = "wiki"
url = "https://wiki.internal:8443/base"
hosts = ["Wiki.Example.com", "docs.example.com."]
preserve_host = false
timeout = "5s"
"#);
        let u = &loaded.config.upstreams[1];
        assert_eq!(u.hosts, ["wiki.example.com", "docs.example.com"]);
        assert_eq!(u.url.path(), "/base");
        assert!(!u.preserve_host);
        assert_eq!(u.timeout, Duration::from_secs(5));

        let errs = errors(
            r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:3000"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:3001"

[[upstreams]]
name = "a"
url = "http://127.0.0.1:3002"
hosts = ["a.example.com", "b.example.com:80"]

[[upstreams]]
name = ""
url = "http://user:pw@127.0.0.1:3003"
hosts = ["A.example.com"]

[[upstreams]]
hosts = ["c.example.com"]
"#,
        );
        assert_has(&errs, "upstreams[1].name", "already used by upstreams[0]");
        assert_has(
            &errs,
            "upstreams[1].hosts",
            "only one upstream may leave hosts empty",
        );
        assert_has(&errs, "upstreams[2].hosts[1]", "must not include a port");
        assert_has(&errs, "upstreams[3].name", "must not be empty");
        assert_has(&errs, "upstreams[3].url", "credentials");
        assert_has(&errs, "upstreams[4].name", "is required");
        assert_has(&errs, "upstreams[4].url", "is required");
        let errs = errors(
            "[[upstreams]]\nname = \"a\"\nurl = \"http://a\"\nhosts = [\"x.example.com\"]\n\
             [[upstreams]]\nname = \"b\"\nurl = \"http://b\"\nhosts = [\"X.example.com\"]\n",
        );
        assert_has(&errs, "upstreams[1].hosts", "already routed to upstreams[0]");
    }

    // --- regulation and factors ---------------------------------------------

    #[test]
    fn regulation_is_checked() {
        let errs = errors(&with(
            "[regulation]\nmax_factor_failures = 0\nlockout = \"-1m\"\n",
        ));
        assert_has(&errs, "regulation.max_factor_failures", "at least 1");
        assert_has(&errs, "regulation.lockout", "negative");
        let loaded = ok(&with("[regulation]\nmax_password_failures_per_user = 500\n"));
        assert_has(
            &warnings(&loaded),
            "regulation.max_password_failures_per_user",
            "NIST SP 800-63B",
        );
    }

    #[test]
    fn totp_settings_are_checked() {
        let loaded = ok(&with(
            "[factors.totp]\ndigits = 8\nalgorithm = \"SHA256\"\nperiod = 60\nskew = 0\n",
        ));
        let t = &loaded.config.factors.totp;
        assert_eq!(
            (t.digits, t.period, t.algorithm, t.skew),
            (8, 60, TotpAlgorithm::Sha256, 0)
        );
        let w = warnings(&loaded);
        assert_has(&w, "factors.totp.digits", "only 6");
        assert_has(&w, "factors.totp.algorithm", "only SHA1");
        let errs = errors(&with(
            "[factors.totp]\nperiod = 10\nskew = 4\nalgorithm = \"MD5\"\nissuer = \"A:B\"\n",
        ));
        assert_has(&errs, "factors.totp.period", "between 15 and 120");
        assert_has(&errs, "factors.totp.skew", "between 0 and 3");
        assert_has(&errs, "factors.totp.algorithm", "must be one of");
        assert_has(&errs, "factors.totp.issuer", ":");
    }

    #[test]
    fn code_factors_and_deliveries_are_checked() {
        let text = with(
            r#"
[factors.sms]
enabled = true
delivery = { kind = "webhook", url = "https://relay.example.com/sms", secret = "hook-secret-0123456789" }
code_length = 8
ttl = "10m"
template = "{code} is your {app} code"

[factors.call]
enabled = true
delivery = { kind = "command", program = "/usr/local/bin/call", args = ["--fast"] }

[factors.email]
enabled = true
delivery = { kind = "smtp", host = "smtp.example.com", tls = "tls", from = "gw@example.com", username = "gw", password = "env:SMTP_PW" }
subject = "{code} for {app}"

[factors.push]
enabled = true
delivery = { kind = "file", path = "data/messages.jsonl" }
"#,
        );
        let env = |name: &str| match name {
            "SMTP_PW" => Some("smtp-password".to_owned()),
            other => std_env(other),
        };
        let loaded = load_str(&text, &env).unwrap();
        let f = &loaded.config.factors;
        assert!(
            matches!(&f.sms.delivery, Some(Delivery::Webhook { url, secret }) if url.host_str() == Some("relay.example.com") && secret.expose() == b"hook-secret-0123456789")
        );
        assert_eq!((f.sms.code_length, f.sms.ttl), (8, Duration::from_secs(600)));
        assert!(
            matches!(&f.call.delivery, Some(Delivery::Command { program, args }) if program == Path::new("/usr/local/bin/call") && args == &["--fast"])
        );
        match &f.email.delivery {
            Some(Delivery::Smtp(smtp)) => {
                assert_eq!(
                    (smtp.host.as_str(), smtp.port, smtp.tls),
                    ("smtp.example.com", 465, SmtpTls::Tls)
                );
                assert_eq!(smtp.username.as_deref(), Some("gw"));
                assert_eq!(
                    smtp.password.as_ref().map(Secret::expose),
                    Some(b"smtp-password".as_slice())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.email.subject, "{code} for {app}");
        assert!(
            matches!(&f.push.delivery, Some(Delivery::File { path }) if path == Path::new("data/messages.jsonl"))
        );
        assert_has(
            &warnings(&loaded),
            "factors.push.delivery.kind",
            "writes codes in clear; development only",
        );

        let errs = errors(&with(
            r#"
[factors.sms]
enabled = true
template = "Code: {pin}"
subject = "x"
code_length = 4

[factors.call]
enabled = true
delivery = { kind = "smtp", host = "h", from = "a@b" }
template = "no code here"

[factors.email]
delivery = { kind = "webhook", url = "https://x.example.com", program = "/bin/true" }
max_sends_per_hour = 0

[factors.push]
enabled = true
delivery = { kind = "carrier-pigeon" }
ttl = "0s"

[factors.recovery_codes]
count = 51
"#,
        ));
        assert_has(&errs, "factors.sms.delivery", "is required when enabled");
        assert_has(&errs, "factors.sms.template", "unknown placeholder {pin}");
        assert_has(&errs, "factors.sms.subject", "only used by factors.email");
        assert_has(&errs, "factors.sms.code_length", "between 6 and 10");
        assert_has(
            &errs,
            "factors.call.delivery.kind",
            "only valid for factors.email",
        );
        assert_has(&errs, "factors.call.template", "must contain {code}");
        assert_has(
            &errs,
            "factors.email.delivery.program",
            "not used by kind \"webhook\"",
        );
        assert_has(
            &errs,
            "factors.email.delivery.secret",
            "is required for a webhook",
        );
        assert_has(&errs, "factors.email.max_sends_per_hour", "at least 1");
        assert_has(&errs, "factors.push.delivery.kind", "must be one of");
        assert_has(&errs, "factors.push.ttl", "greater than zero");
        assert_has(&errs, "factors.recovery_codes.count", "between 1 and 50");
        assert!(
            !has(&errs, "factors.push.delivery", "is required when enabled"),
            "{errs:#?}"
        );

        let errs = errors(&with(
            "[factors.email]\ndelivery = { kind = \"smtp\", host = \"h\", from = \"nobody\", username = \"u\" }\n",
        ));
        assert_has(&errs, "factors.email.delivery.from", "sender address");
        assert_has(&errs, "factors.email.delivery.username", "together");
    }

    // --- rules --------------------------------------------------------------

    #[test]
    fn rules_are_parsed() {
        let loaded = ok(&with(
            r#"
[[rules]]
hosts = ["App.Example.com"]
path = "^/static/"
methods = ["get", "HEAD"]
networks = ["10.0.0.0/8", "::1"]
policy = "bypass"

[[rules]]
path = "^/admin/"
policy = "two_factor"
groups = ["admins"]
max_age = "15m"
"#,
        ));
        let r = &loaded.config.rules;
        assert_eq!(r[0].hosts, ["app.example.com"]);
        assert_eq!(r[0].methods, [http::Method::GET, http::Method::HEAD]);
        assert_eq!(r[0].networks.len(), 2);
        assert_eq!(r[1].policy, PolicyKind::TwoFactor);
        assert_eq!(r[1].groups, ["admins"]);
        assert_eq!(r[1].max_age, Some(Duration::from_secs(900)));
        assert!(
            loaded.warnings.iter().all(|w| !w.key.starts_with("rules")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn rules_are_checked() {
        let errs = errors(&with(
            r#"
[[rules]]
path = "^/health"
policy = "bypass"
groups = ["ops"]

[[rules]]
path = "^/old"
policy = "deny"
max_age = "5m"

[[rules]]
methods = ["GE T"]
networks = ["10.0.0.0/40"]
policy = "two_factor"
max_age = "500ms"

[[rules]]
hosts = ["x.example.com"]
"#,
        ));
        assert_has(&errs, "rules[0].groups", "no effect on a bypass rule");
        assert_has(&errs, "rules[1].max_age", "no effect on a deny rule");
        assert_has(&errs, "rules[2].methods[0]", "not an HTTP method");
        assert_has(&errs, "rules[2].networks[0]", "CIDR");
        assert_has(&errs, "rules[2].max_age", "at least 1s");
        assert_has(&errs, "rules[3].policy", "is required");
        let errs = errors(&with("rules = 5\n"));
        assert_has(&errs, "upstreams[0].rules", "unknown key");
        let errs = errors(&format!("rules = 5\n{MINIMAL}"));
        assert_has(&errs, "rules", "array of tables");
    }

    #[test]
    fn rule_warnings() {
        let loaded = ok(&with(
            "[[rules]]\npath = \"/static/\"\npolicy = \"bypass\"\n[[rules]]\npolicy = \"one_factor\"\n\
             [[rules]]\npath = \"^/x\"\npolicy = \"deny\"\n",
        ));
        let w = warnings(&loaded);
        assert_has(
            &w,
            "rules[0].path",
            "unanchored bypass path matches anywhere in the path",
        );
        assert_has(&w, "rules[2]", "unreachable: rules[1]");
    }

    #[test]
    fn two_factor_needs_an_enabled_second_factor() {
        let errs = errors(&with(
            "[factors.totp]\nenabled = false\n[[rules]]\npath = \"^/a\"\npolicy = \"two_factor\"\n",
        ));
        assert_has(&errs, "default_policy", "none is enabled");
        assert_has(&errs, "rules[0].policy", "none is enabled");
        ok(&format!(
            "default_policy = \"one_factor\"\n{MINIMAL}\n[factors.totp]\nenabled = false\n"
        ));
    }

    #[test]
    fn log_is_checked() {
        let loaded = ok(&with(
            "[log]\nformat = \"json\"\nlevel = \"portcullis=debug,info\"\n",
        ));
        assert_eq!(loaded.config.log.format, LogFormat::Json);
        let errs = errors(&with("[log]\nlevel = \"\"\n"));
        assert_has(&errs, "log.level", "must not be empty");
        let errs = errors(&with("[log]\nlevel = \"info,[[[\"\n"));
        assert_has(&errs, "log.level", "not a valid filter directive");
    }

    #[test]
    fn load_file_reads_from_disk_and_names_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let loaded = load_file_with_env(&path, &std_env).unwrap();
        assert_eq!(loaded.config.upstreams[0].name, "app");
        std::fs::write(&path, "[server\n").unwrap();
        let e = load_file_with_env(&path, &std_env).unwrap_err();
        assert!(
            e.problems[0].key.starts_with(&format!("{}:1:", path.display())),
            "{e}"
        );
        let missing = dir.path().join("missing.toml");
        let e = load_file_with_env(&missing, &std_env).unwrap_err();
        assert_eq!(e.problems[0].key, missing.display().to_string());
        let mut text = String::new();
        let _ = write!(text, "{e}");
        assert!(text.contains("cannot read the config file"));
    }
}
