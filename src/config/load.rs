//! TOML text -> validated [`Config`], with every problem collected.
//!
//! Loading runs in three passes so that one mistake never hides another:
//!
//! 1. **Syntax**: the text is parsed into a `toml::Table`. A syntax error is the
//!    only problem that stops loading early (nothing after it can be trusted);
//!    it is reported with its line and column.
//! 2. **Shape**: each top-level section is deserialized on its own into the raw
//!    structs of [`super::raw`] (see [`super::shape`]), so every misspelt or
//!    mistyped key is reported with its full path.
//! 3. **Meaning**: raw values are converted field by field into typed values
//!    (durations, addresses, regexes, CIDRs, resolved secrets, TLS configs) by
//!    the section modules, then cross-field and cross-section rules are checked
//!    here. A bad field falls back to its default only so that checking can go
//!    on; any error makes the whole load fail, so such placeholders never escape.
//!
//! Secret values (session secrets, tokens, keys, passwords, `store.url`) never
//! appear in a message: problems name the key, the file or the variable.

use std::path::Path;

use super::context::{Ctx, Env};
use super::factors::convert_factors;
use super::listeners::{convert_admin, convert_server};
use super::log::convert_log;
use super::portal::{convert_identity_headers, convert_portal};
use super::raw::{
    RawAdmin, RawIdentityHeaders, RawLog, RawPortal, RawRegulation, RawServer, RawSession, RawStore, RawUsers,
};
use super::regulation::convert_regulation;
use super::rules::{convert_case_insensitive_paths, convert_default_policy, convert_rules};
use super::session::convert_session;
use super::shape::section;
use super::store::convert_store;
use super::upstreams::convert_upstreams;
use super::users::convert_users;
use super::{
    AdminConfig, Config, FactorsConfig, PolicyKind, RuleConfig, ServerConfig, SessionConfig, UsersConfig,
};

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

/// The keys allowed at the top of the config file, in the documented order.
pub(super) const TOP_LEVEL_KEYS: [&str; 16] = [
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
    "forward_auth",
    "audit",
];

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
    let raw_forward_auth = take("forward_auth");
    let raw_audit = take("audit");
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
    let forward_auth =
        section::<super::forward_auth::RawForwardAuth>(&mut cx, "forward_auth", raw_forward_auth)
            .map(super::forward_auth::convert);
    // A gateway that only answers another proxy's checks forwards nothing.
    let forward_auth_only = forward_auth.as_ref().is_some_and(|fa| fa.enabled);
    let upstreams = convert_upstreams(&mut cx, raw_upstreams, forward_auth_only);
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
    let audit = super::audit::convert(raw_audit, &mut |k, m| cx.error(k, m));
    for (key, message) in forward_auth.as_ref().map_or_else(Vec::new, |fa| {
        super::forward_auth::check(fa, server.as_ref().map(|s| s.trusted_proxies.as_slice()))
    }) {
        cx.error(key, message);
    }

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
            forward_auth: forward_auth.unwrap_or_default(),
            audit,
        },
        warnings: cx.warnings,
    })
}

pub(super) fn syntax_problem(text: &str, source: Option<&Path>, e: &toml::de::Error) -> ConfigProblem {
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
        const WHY: &str = "requires a second factor, but none is enabled (enable factors.totp, sms, call, email, push or webauthn)";
        if v.default_policy == Some(&PolicyKind::TwoFactor) {
            cx.error("default_policy", WHY);
        }
        for (i, rule) in v.rules.unwrap_or_default().iter().enumerate() {
            if rule.policy == PolicyKind::TwoFactor {
                cx.error(format!("rules[{i}].policy"), WHY);
            }
        }
    }
    if let (Some(factors), Some(server)) = (v.factors, v.server) {
        super::webauthn::check(cx, &factors.webauthn, server.external_url.as_ref());
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
                "webauthn" => factors.webauthn.enabled,
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
    use std::fmt::Write as _;

    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

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
        assert_has(&errs, "upstreams", "[forward_auth] enabled = true");
        let errs = errors("upstreams = []\n[forward_auth]\nenabled = false\n");
        assert_has(&errs, "upstreams", "at least one");
    }

    /// Behind nginx or Caddy the front proxy forwards to the app: a gateway
    /// that only answers their checks needs no upstream of its own.
    #[test]
    fn forward_auth_alone_needs_no_upstream() {
        let only = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[forward_auth]\nenabled = true\n";
        assert!(ok(only).config.upstreams.is_empty());
        assert!(ok(&format!("upstreams = []\n{only}")).config.upstreams.is_empty());
        // Its other problems are still every one reported.
        let errs = errors("[server]\n[forward_auth]\nenabled = true\n[log]\nformat = \"xml\"\n");
        assert_has(&errs, "log.format", "must be one of");
        assert!(!has(&errs, "upstreams", ""), "{errs:#?}");
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
