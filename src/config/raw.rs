//! The config file as written: serde structs that mirror the TOML keys.
//!
//! Every field is an `Option` (or defaulted) so that any subset of keys
//! deserializes: `load` applies the named defaults, tells "not configured"
//! apart from "configured" (the secret defaults depend on it), and can
//! deserialize a section one key at a time to report every bad key at once.
//! Required keys (`upstreams[].url`, `rules[].policy`, ...) are checked there
//! too, so that a missing key is reported with the same key path as a bad one.
//!
//! `deny_unknown_fields` everywhere: a misspelt key must be an error, not a
//! silently ignored setting that weakens the gateway.

use serde::Deserialize;

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub trusted_proxies: Option<Vec<String>>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub external_url: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub tls_handshake_timeout: Option<String>,
    pub max_tls_handshakes: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub body_read_timeout: Option<String>,
}

/// `tls = { cert, key }` under `[server]` or `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub tokens: Option<Vec<String>>,
    pub metrics_require_token: Option<bool>,
    pub console_groups: Option<Vec<String>>,
    pub console_max_age: Option<String>,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub name: Option<String>,
    pub url: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub preserve_host: Option<bool>,
    pub timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub ca: Option<String>,
    pub header_case: Option<String>,
}

/// `[session]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSession {
    pub cookie_name: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub lifetime: Option<String>,
    pub idle_timeout: Option<String>,
    pub revocation_check: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
}

/// `[identity_headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawIdentityHeaders {
    pub user: Option<String>,
    pub groups: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// `[portal]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPortal {
    pub prefix: Option<String>,
    pub title: Option<String>,
    pub logo_url: Option<String>,
    pub accent_color: Option<String>,
    pub allowed_redirect_hosts: Option<Vec<String>>,
    pub trusted_origins: Option<Vec<String>>,
}

/// `[users]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUsers {
    pub file: Option<String>,
    pub passwordless: Option<bool>,
    pub passwordless_factors: Option<Vec<String>>,
    pub enrollment: Option<String>,
    /// `[users.ldap]`, read by [`super::ldap`].
    pub ldap: Option<toml::Value>,
}

/// One `[[users]]` entry of the users file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUser {
    pub username: Option<String>,
    pub password: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub groups: Option<Vec<String>>,
    pub totp: Option<RawUserTotp>,
}

/// `totp = { secret }` of a file user.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUserTotp {
    pub secret: Option<String>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawStore {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub listen_url: Option<String>,
    pub encryption_keys: Option<Vec<String>>,
}

/// `[regulation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRegulation {
    pub max_factor_failures: Option<u32>,
    pub max_password_failures: Option<u32>,
    pub max_password_failures_per_user: Option<u32>,
    pub max_failures_per_ip: Option<u32>,
    pub max_transactions_per_ip_per_minute: Option<u32>,
    pub window: Option<String>,
    pub lockout: Option<String>,
    pub reveal_lockout: Option<bool>,
}

/// `[factors.totp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTotp {
    pub enabled: Option<bool>,
    pub issuer: Option<String>,
    pub digits: Option<u32>,
    pub period: Option<u64>,
    pub algorithm: Option<String>,
    pub skew: Option<u8>,
}

/// `[factors.sms]`, `[factors.call]` and `[factors.email]` (`subject`: e-mail only).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawCodeFactor {
    pub enabled: Option<bool>,
    pub delivery: Option<RawDelivery>,
    pub code_length: Option<u32>,
    pub ttl: Option<String>,
    pub resend_after: Option<String>,
    pub max_sends_per_hour: Option<u32>,
    pub template: Option<String>,
    pub subject: Option<String>,
}

/// `[factors.push]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPush {
    pub enabled: Option<bool>,
    pub delivery: Option<RawDelivery>,
    pub ttl: Option<String>,
}

/// `[factors.recovery_codes]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRecoveryCodes {
    pub enabled: Option<bool>,
    pub count: Option<u32>,
}

/// `delivery = { kind = "...", ... }`.
///
/// Flat rather than an internally tagged enum: serde would stop at the first
/// problem and lose the key path inside the buffered variant, while a flat
/// struct lets `load` name each missing or misplaced key for the chosen kind.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub kind: Option<String>,
    /// webhook
    pub url: Option<String>,
    /// webhook
    pub secret: Option<String>,
    /// command
    pub program: Option<String>,
    /// command
    pub args: Option<Vec<String>>,
    /// smtp
    pub host: Option<String>,
    /// smtp
    pub port: Option<u16>,
    /// smtp
    pub tls: Option<String>,
    /// smtp
    pub from: Option<String>,
    /// smtp
    pub username: Option<String>,
    /// smtp
    pub password: Option<String>,
    /// file
    pub path: Option<String>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRule {
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub policy: Option<String>,
    pub groups: Option<Vec<String>>,
    pub max_age: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}
