//! Configuration: raw TOML structs are parsed, then converted into the typed,
//! validated [`Config`] below. Conversion collects every problem with its key
//! path (`session.secrets[0]: ...`) so an operator sees them all at once; a bad
//! config never binds a port (`main` exits 64).
//!
//! Parse, don't validate: everything downstream takes these types (durations,
//! socket addresses, compiled regexes, CIDRs, resolved secrets) and never
//! re-checks them.

pub mod audit;
mod context;
mod delivery;
mod duration;
#[cfg(test)]
mod examples;
mod factors;
mod fields;
mod forward_auth;
pub mod ldap;
mod listeners;
mod load;
mod log;
mod portal;
#[cfg(test)]
mod proptests;
mod raw;
mod regulation;
mod rules;
pub(crate) mod secrets;
mod session;
mod shape;
mod store;
#[cfg(test)]
mod test_support;
mod upstreams;
mod users;
mod webauthn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use crate::secret::Secret;

pub use duration::parse_duration;
pub use forward_auth::ForwardAuthConfig;
pub use listeners::ListenerCert;
pub use load::{ConfigError, ConfigProblem, LoadedConfig, load_file, load_file_with_env, load_str};
pub use users::MAX_LOGIN_BYTES;
pub use webauthn::{UserVerification, WebauthnConfig};

/// Default values, named so the example config, the docs and the code agree.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
    pub const MAX_HEADER_BYTES: usize = 16_384;
    pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
    /// `server.idle_timeout`: a connection with no request in flight for this
    /// long is closed (HTTP/2: GOAWAY).
    pub const IDLE_TIMEOUT_SECS: u64 = 60;
    /// `server.max_connections`: open connections (TLS handshakes included)
    /// over all serving threads of the main listener.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// `server.tls_handshake_timeout`.
    pub const TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
    /// `server.max_tls_handshakes`: TLS handshakes in progress at once.
    pub const MAX_TLS_HANDSHAKES: usize = 1_024;
    /// `server.max_connections_per_ip`: open connections per client address
    /// (IPv6: per /64) on the main listener; 0 turns the cap off.
    pub const MAX_CONNECTIONS_PER_IP: usize = 256;
    /// `server.body_read_timeout`: the whole body of a portal or admin
    /// request, and the longest pause in any other (proxied) request body.
    pub const BODY_READ_TIMEOUT_SECS: u64 = 10;
    /// The admin listener's own connection budget (not configurable): a flood
    /// on the main listener never locks out health checks and operators.
    pub const ADMIN_MAX_CONNECTIONS: usize = 256;
    /// Of those, what one client address (not a trusted proxy) may hold, so
    /// that one address cannot lock operators and health checks out.
    pub const ADMIN_MAX_CONNECTIONS_PER_IP: usize = 32;
    pub const UPSTREAM_TIMEOUT_SECS: u64 = 30;
    pub const POOL_IDLE_TIMEOUT_SECS: u64 = 4;
    pub const COOKIE_NAME: &str = "portcullis_session";
    /// The double-submit CSRF cookie's base name.
    pub const CSRF_COOKIE_NAME: &str = "portcullis_csrf";
    pub const SESSION_LIFETIME_SECS: u64 = 8 * 3600;
    pub const SESSION_IDLE_TIMEOUT_SECS: u64 = 30 * 60;
    pub const REVOCATION_CHECK_SECS: u64 = 2;
    pub const MIN_SESSION_SECRET_BYTES: usize = 32;
    pub const USER_HEADER: &str = "Remote-User";
    pub const GROUPS_HEADER: &str = "Remote-Groups";
    pub const EMAIL_HEADER: &str = "Remote-Email";
    pub const NAME_HEADER: &str = "Remote-Name";
    pub const PORTAL_PREFIX: &str = "/_portcullis";
    pub const PORTAL_TITLE: &str = "Sign in";
    pub const USERS_FILE: &str = "config/users.toml";
    pub const PASSWORDLESS_FACTORS: [&str; 2] = ["push", "token:software:totp"];
    pub const STORE_PATH: &str = "data/portcullis.db";
    pub const MAX_FACTOR_FAILURES: u32 = 5;
    pub const MAX_PASSWORD_FAILURES: u32 = 5;
    pub const MAX_PASSWORD_FAILURES_PER_USER: u32 = 50;
    pub const MAX_FAILURES_PER_IP: u32 = 50;
    pub const MAX_TRANSACTIONS_PER_IP_PER_MINUTE: u32 = 60;
    pub const REGULATION_WINDOW_SECS: u64 = 5 * 60;
    pub const LOCKOUT_SECS: u64 = 15 * 60;
    pub const TOTP_ISSUER: &str = "Portcullis";
    pub const TOTP_DIGITS: u32 = 6;
    pub const TOTP_PERIOD: u64 = 30;
    pub const TOTP_SKEW: u8 = 1;
    pub const CODE_LENGTH: u32 = 6;
    pub const CODE_TTL_SECS: u64 = 5 * 60;
    pub const RESEND_AFTER_SECS: u64 = 30;
    pub const MAX_SENDS_PER_HOUR: u32 = 10;
    pub const SMS_TEMPLATE: &str = "Your {app} sign-in code is {code}. It expires in {expires_in}.";
    pub const EMAIL_SUBJECT: &str = "Your {app} sign-in code";
    pub const PUSH_TTL_SECS: u64 = 60;
    pub const RECOVERY_CODES: u32 = 10;

    // Added with the loader: the remaining defaults, so every key has a named one.
    /// Policy for requests no rule matches (`default_policy`).
    pub const DEFAULT_POLICY: &str = "two_factor";
    /// Environment variable behind the default `session.secrets`.
    pub const SESSION_SECRET_ENV: &str = "PORTCULLIS_SESSION_SECRET";
    /// Environment variable behind the default `admin.tokens`.
    pub const ADMIN_TOKEN_ENV: &str = "PORTCULLIS_ADMIN_TOKEN";
    /// Environment variable behind the default `store.encryption_keys`.
    pub const STORE_KEY_ENV: &str = "PORTCULLIS_STORE_KEY";
    /// Length of a `store.encryption_keys` entry once base64-decoded.
    pub const STORE_KEY_BYTES: usize = 32;
    /// Whether `/metrics` on the admin listener needs a token.
    pub const METRICS_REQUIRE_TOKEN: bool = false;
    /// `admin.console_max_age` in seconds.
    pub const CONSOLE_MAX_AGE_SECS: u64 = 15 * 60;
    /// Forward the client's `Host` to upstreams.
    pub const PRESERVE_HOST: bool = true;
    /// The session cookie's `Secure` attribute.
    pub const SESSION_SECURE: bool = true;
    /// The session cookie's `SameSite` attribute.
    pub const SAME_SITE: &str = "lax";
    /// Username plus one possession factor instead of a password.
    pub const PASSWORDLESS: bool = false;
    /// Whether a user without factors may enroll at sign-in.
    pub const ENROLLMENT: &str = "first_login";
    /// Store backend.
    pub const STORE_KIND: &str = "sqlite";
    /// Tell a locked user so instead of the generic failure.
    pub const REVEAL_LOCKOUT: bool = false;
    /// Authenticator apps are on by default.
    pub const TOTP_ENABLED: bool = true;
    /// The only algorithm every authenticator app supports.
    pub const TOTP_ALGORITHM: &str = "SHA1";
    /// `enabled` of `[factors.sms]`, `[factors.call]` and `[factors.email]`.
    pub const CODE_FACTOR_ENABLED: bool = false;
    /// Text spoken by a voice call; repeated so it can be written down.
    pub const CALL_TEMPLATE: &str = "Your {app} sign-in code is {code}. Again, your code is {code}.";
    /// Body of a code e-mail.
    pub const EMAIL_TEMPLATE: &str = "Your {app} sign-in code is {code}. It expires in {expires_in}.\n\nIf you did not try to sign in, you can ignore this message.";
    /// Push approval needs a delivery, so it is off by default.
    pub const PUSH_ENABLED: bool = false;
    /// Recovery codes are on by default.
    pub const RECOVERY_CODES_ENABLED: bool = true;
    /// Human-readable logs by default.
    pub const LOG_FORMAT: &str = "text";
    /// A tracing `EnvFilter` directive.
    pub const LOG_LEVEL: &str = "info";
    /// Rule paths match case-sensitively unless the upstream ignores case.
    pub const CASE_INSENSITIVE_PATHS: bool = false;
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Policy for requests no rule matches.
    pub default_policy: PolicyKind,
    /// Rules match paths ignoring case (for IIS and Windows file servers).
    pub case_insensitive_paths: bool,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub session: SessionConfig,
    pub identity_headers: IdentityHeaders,
    pub portal: PortalConfig,
    pub users: UsersConfig,
    pub store: StoreConfig,
    pub regulation: RegulationConfig,
    pub factors: FactorsConfig,
    pub rules: Vec<RuleConfig>,
    pub log: LogConfig,
    /// `[forward_auth]` (SPEC section 11).
    pub forward_auth: ForwardAuthConfig,
    /// `[audit]`.
    pub audit: audit::AuditConfig,
}

/// What a rule (or the default) requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Bypass,
    OneFactor,
    TwoFactor,
    Deny,
}

/// TLS material: PEM file paths, already read and parsed at load time.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The parsed server config (rustls, aws-lc-rs provider, h2 + http/1.1 ALPN),
    /// serving its certificate from `cert`.
    pub server_config: std::sync::Arc<rustls::ServerConfig>,
    /// The certificate the listener serves; a reload replaces what it holds.
    pub cert: std::sync::Arc<ListenerCert>,
    /// The certificate and key read from the files when this config was loaded.
    pub certified: std::sync::Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Parsed `external_url` (scheme + authority, no trailing slash), if set.
    pub external_url: Option<url::Url>,
    /// Close a connection after this long without a request in flight.
    pub idle_timeout: Duration,
    /// Open connections allowed on the main listener (all threads together).
    pub max_connections: usize,
    /// How long a TLS client may take to complete its handshake.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at once.
    pub max_tls_handshakes: usize,
    /// Open connections per client address (0 = no cap).
    pub max_connections_per_ip: usize,
    /// Deadline for a portal/admin request body; longest pause in a proxied one.
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Accepted bearer tokens, in config order (audit events name the index).
    pub tokens: Vec<Secret>,
    pub metrics_require_token: bool,
    /// Groups whose members may use the admin console (`{prefix}/console/`);
    /// empty: nobody may.
    pub console_groups: Vec<String>,
    /// How old the second factor may be for a change made in the console.
    pub console_max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http` or `https` base URL; its path, if any, is a prefix for forwarded paths.
    pub url: url::Url,
    /// Lower-cased host names (no port) routed here; empty = the default upstream.
    pub hosts: Vec<String>,
    pub preserve_host: bool,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Extra CA certificates (PEM, already parsed) for an https upstream.
    pub ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// How header names are spelled on the way upstream.
    pub header_case: HeaderCase,
}

/// `upstreams[].header_case`: how the gateway spells header names in the
/// requests it sends upstream (HTTP/1.1 names are case-insensitive, but some
/// legacy apps compare them case-sensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCase {
    /// `Remote-User`, `X-Forwarded-For` (the default, for legacy apps).
    Title,
    /// `remote-user`, as HTTP/2 clients send them; a little cheaper per request.
    Lower,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie_name: String,
    /// At least 32 bytes each; the first signs, all verify.
    pub secrets: Vec<Secret>,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub revocation_check: Duration,
    /// Cookie `Domain`; `None` = host-only.
    pub domain: Option<String>,
    pub secure: bool,
    pub same_site: SameSite,
}

/// The cookie prefix browsers reserve for `Secure`, `Path=/`, host-only cookies.
pub const HOST_PREFIX: &str = "__Host-";

impl SessionConfig {
    /// True when the gateway's cookies take the `__Host-` prefix: `secure` and
    /// host-only (no `domain`), so a sibling subdomain cannot plant them.
    pub fn host_prefixed(&self) -> bool {
        self.secure && self.domain.is_none()
    }

    /// The name `base` takes on the wire: `__Host-<base>` when
    /// [`SessionConfig::host_prefixed`], unless `base` already carries a
    /// `__Host-` or `__Secure-` prefix (then it is used as configured).
    pub fn wire_name(&self, base: &str) -> String {
        if self.host_prefixed() && !base.starts_with(HOST_PREFIX) && !base.starts_with("__Secure-") {
            format!("{HOST_PREFIX}{base}")
        } else {
            base.to_owned()
        }
    }

    /// The session cookie's name on the wire (see [`SessionConfig::wire_name`]).
    pub fn session_cookie_name(&self) -> String {
        self.wire_name(&self.cookie_name)
    }

    /// The CSRF cookie's name on the wire (see [`SessionConfig::wire_name`]).
    pub fn csrf_cookie_name(&self) -> String {
        self.wire_name(defaults::CSRF_COOKIE_NAME)
    }

    /// Every name the gateway's own cookies may have arrived under (with and
    /// without the prefix), which the proxy strips from requests and from
    /// upstream `Set-Cookie`s.
    pub fn gateway_cookie_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for base in [self.cookie_name.as_str(), defaults::CSRF_COOKIE_NAME] {
            let plain = base.strip_prefix(HOST_PREFIX).unwrap_or(base);
            for n in [
                plain.to_owned(),
                format!("{HOST_PREFIX}{plain}"),
                self.wire_name(base),
            ] {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }
}

/// Header names sent upstream (canonical spelling as configured).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: http::HeaderName,
    pub groups: http::HeaderName,
    pub email: http::HeaderName,
    pub name: http::HeaderName,
}

#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Starts with `/`, no trailing slash.
    pub prefix: String,
    pub title: String,
    /// A logo above every page: an `https://` URL or a path on this origin.
    pub logo_url: Option<String>,
    /// The buttons' and links' colour, `#rgb` or `#rrggbb` (lower case).
    pub accent_color: Option<String>,
    /// Lower-cased host names `rd=` may point at besides the request's own host.
    pub allowed_redirect_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) allowed to call the JSON APIs with cookies.
    pub trusted_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    FirstLogin,
    AdminOnly,
}

#[derive(Debug, Clone)]
pub struct UsersConfig {
    pub file: Option<PathBuf>,
    pub passwordless: bool,
    pub passwordless_factors: Vec<String>,
    pub enrollment: Enrollment,
    /// The users file, parsed and validated at load time.
    pub file_users: Vec<FileUser>,
    /// `[users.ldap]`: a directory as a further source of users.
    pub ldap: Option<ldap::LdapConfig>,
}

/// A user from the users file.
#[derive(Debug, Clone)]
pub struct FileUser {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub groups: Vec<String>,
    /// A config-provisioned TOTP secret (decoded from base32).
    pub totp_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Memory,
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        /// Where queries go: PostgreSQL itself, or a pooler (PgBouncer) in
        /// transaction mode when `listen_url` is set.
        url: Secret,
        /// `store.listen_url`: a direct connection for LISTEN, migrations and
        /// advisory locks; `None` when `url` is direct and serves for all.
        listen_url: Option<Secret>,
    },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// 32-byte keys; the first encrypts, all decrypt.
    pub encryption_keys: Vec<Secret>,
}

#[derive(Debug, Clone)]
pub struct RegulationConfig {
    pub max_factor_failures: u32,
    pub max_password_failures: u32,
    pub max_password_failures_per_user: u32,
    pub max_failures_per_ip: u32,
    /// Unauthenticated (passwordless) sign-in transactions one address bucket
    /// may open per minute (counted per process).
    pub max_transactions_per_ip_per_minute: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub reveal_lockout: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone)]
pub struct TotpConfig {
    pub enabled: bool,
    pub issuer: String,
    pub digits: u32,
    pub period: u64,
    pub algorithm: TotpAlgorithm,
    pub skew: u8,
}

/// How codes and push challenges leave the gateway.
#[derive(Debug, Clone)]
pub enum Delivery {
    Webhook {
        url: url::Url,
        secret: Secret,
    },
    Command {
        program: PathBuf,
        args: Vec<String>,
    },
    Smtp(SmtpConfig),
    /// Development only: writes messages (codes in clear) to the log.
    Log,
    /// Development only: appends messages (codes in clear) as JSON lines to a file.
    File {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// SMS, voice call or e-mail codes.
#[derive(Debug, Clone)]
pub struct CodeFactorConfig {
    pub enabled: bool,
    pub delivery: Option<Delivery>,
    pub code_length: u32,
    pub ttl: Duration,
    pub resend_after: Duration,
    pub max_sends_per_hour: u32,
    pub template: String,
    /// E-mail only.
    pub subject: String,
}

#[derive(Debug, Clone)]
pub struct PushConfig {
    pub enabled: bool,
    pub delivery: Option<Delivery>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct RecoveryCodesConfig {
    pub enabled: bool,
    pub count: u32,
}

#[derive(Debug, Clone)]
pub struct FactorsConfig {
    pub totp: TotpConfig,
    pub sms: CodeFactorConfig,
    pub call: CodeFactorConfig,
    pub email: CodeFactorConfig,
    pub push: PushConfig,
    pub recovery_codes: RecoveryCodesConfig,
    pub webauthn: WebauthnConfig,
}

impl FactorsConfig {
    /// True when at least one second-factor type can be used.
    pub fn any_second_factor(&self) -> bool {
        self.totp.enabled
            || self.sms.enabled
            || self.call.enabled
            || self.email.enabled
            || self.push.enabled
            || self.webauthn.enabled
    }
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Lower-cased host names; empty = any host.
    pub hosts: Vec<String>,
    pub path: Option<Regex>,
    /// Empty = any method.
    pub methods: Vec<http::Method>,
    /// Empty = any client address.
    pub networks: Vec<IpNet>,
    pub policy: PolicyKind,
    pub groups: Vec<String>,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `portcullis=debug`.
    pub level: String,
}
