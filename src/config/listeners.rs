//! `[server]` and `[admin]`: the two listeners, their TLS and their limits.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::context::Ctx;
use super::duration::duration;
use super::fields::{cidrs, http_url, in_range, listen_addr, non_empty_strings};
use super::raw::{RawAdmin, RawServer, RawTls};
use super::secrets::{Absent, NamedSecret, secret_list};
use super::{AdminConfig, ServerConfig, TlsConfig, defaults};

/// hyper's smallest read buffer: below it the limit could not be enforced.
const MIN_HEADER_BYTES: u64 = 8192;
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Upper bound of `server.max_connections` and `server.max_tls_handshakes`.
const MAX_CONNECTIONS_LIMIT: u64 = 10_000_000;

/// Below this an admin token is guessable enough to deserve a warning.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// A listener's certificate and key, replaceable while it serves: a reload
/// (`SIGHUP`) puts a renewed certificate in, and the next handshake uses it;
/// connections already open keep the one they were made with.
#[derive(Debug)]
pub struct ListenerCert(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl ListenerCert {
    fn new(certified: Arc<rustls::sign::CertifiedKey>) -> Self {
        Self(arc_swap::ArcSwap::new(certified))
    }

    /// Serves `certified` from the next handshake on.
    pub fn replace(&self, certified: Arc<rustls::sign::CertifiedKey>) {
        self.0.store(certified);
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.load_full()
    }
}

impl rustls::server::ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

pub(super) fn convert_server(cx: &mut Ctx<'_>, raw: RawServer) -> ServerConfig {
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
    let header_bytes = MIN_HEADER_BYTES..=MAX_HEADER_BYTES;
    let max_header_bytes = raw
        .max_header_bytes
        .and_then(|n| in_range(cx, "server.max_header_bytes", n, header_bytes, ""))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(defaults::MAX_HEADER_BYTES);
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
        Some(text) => {
            const NO_PATH: &str =
                "must not have a path (scheme and host only, e.g. \"https://app.example.com\")";
            match http_url(text) {
                Ok(url) if url.path() != "/" => {
                    cx.error("server.external_url", NO_PATH);
                    None
                }
                Ok(url) => Some(url),
                Err(e) => {
                    // Every problem at once: a URL with a query and a path
                    // names both, not the path only after the query is gone.
                    let with_path = url::Url::parse(text)
                        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.path() != "/");
                    if with_path {
                        cx.error("server.external_url", format!("{e}; it also {NO_PATH}"));
                    } else {
                        cx.error("server.external_url", e);
                    }
                    None
                }
            }
        }
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
    value
        .and_then(|n| in_range(cx, key, n, 1..=MAX_CONNECTIONS_LIMIT, ""))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(default)
}

pub(super) fn convert_admin(cx: &mut Ctx<'_>, raw: RawAdmin) -> AdminConfig {
    let listen = listen_addr(cx, "admin.listen", raw.listen, defaults::ADMIN_LISTEN);
    let tls = raw.tls.and_then(|t| convert_tls(cx, "admin", t));
    let absent = Absent {
        is_error: false,
        unset: &format!(
            "no admin token ({} is not set): the admin API is disabled",
            defaults::ADMIN_TOKEN_ENV
        ),
        empty: "no admin token configured: the admin API is disabled",
    };
    let mut tokens = Vec::new();
    for NamedSecret { key, label, secret } in
        secret_list(cx, "admin.tokens", raw.tokens, defaults::ADMIN_TOKEN_ENV, absent)
    {
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
    let metrics_require_token = raw
        .metrics_require_token
        .unwrap_or(defaults::METRICS_REQUIRE_TOKEN);
    if metrics_require_token && tokens.is_empty() {
        cx.warn(
            "admin.metrics_require_token",
            "no admin token is configured, so /metrics cannot be scraped",
        );
    }
    let console_groups = non_empty_strings(cx, "admin.console_groups", raw.console_groups);
    let console_max_age = duration(
        cx,
        "admin.console_max_age",
        raw.console_max_age,
        defaults::CONSOLE_MAX_AGE_SECS,
        false,
    );
    AdminConfig {
        listen,
        tls,
        tokens,
        metrics_require_token,
        console_groups,
        console_max_age,
    }
}

pub(super) fn load_certs(cx: &mut Ctx<'_>, key: &str, path: &str) -> Option<Vec<CertificateDer<'static>>> {
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
    // The key must belong to the certificate (checked here, so a mismatch is a
    // config problem rather than failed handshakes).
    let built = rustls::sign::CertifiedKey::from_der(certs, key, &provider).and_then(|certified| {
        let certified = Arc::new(certified);
        let cert = Arc::new(ListenerCert::new(certified.clone()));
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(cert.clone() as Arc<dyn rustls::server::ResolvesServerCert>)
            })
            .map(|config| (config, cert, certified))
    });
    match built {
        Ok((mut server_config, cert, certified)) => {
            server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(TlsConfig {
                cert_path: PathBuf::from(cert_path),
                key_path: PathBuf::from(key_path),
                server_config: Arc::new(server_config),
                cert,
                certified,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

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
        let errs = errors(&with(
            "[server]\nexternal_url = \"https://example.com/app?x=1\"\n",
        ));
        assert_has(&errs, "server.external_url", "must not have a query");
        assert_has(&errs, "server.external_url", "also must not have a path");
        // Not an http URL at all (`localhost:8080` has the scheme
        // `localhost`): the scheme is the problem, not a path.
        let errs = errors(&with("[server]\nexternal_url = \"localhost:8080\"\n"));
        assert_has(&errs, "server.external_url", "scheme must be http or https");
        assert!(!has(&errs, "server.external_url", "path"), "{errs:#?}");
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
}
