//! How the upstreams are reached: one connection pool ([`super::pool`]) per
//! upstream and serving thread, each with its own idle timeout and trust
//! roots. https goes through hyper-rustls with the aws-lc-rs provider named
//! explicitly (two providers in one binary panic at start); the roots are
//! webpki-roots plus the upstream's own `ca` certificates.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;

use super::ProxyError;
use super::pool::{ConnectionBudget, Pool};
use crate::config::{HeaderCase, UpstreamConfig};

/// Builds the rustls client config for one upstream.
fn tls_config(upstream: &UpstreamConfig) -> Result<rustls::ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in &upstream.ca {
        roots.add(cert.clone()).map_err(|source| ProxyError::Tls {
            upstream: upstream.name.clone(),
            source,
        })?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|source| ProxyError::Tls {
                upstream: upstream.name.clone(),
                source,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(config)
}

/// Builds one upstream's connection pool (for one serving thread).
pub fn build(upstream: &UpstreamConfig, target: Uri, budget: ConnectionBudget) -> Result<Pool, ProxyError> {
    let mut http = HttpConnector::new();
    // Small request/response exchanges must not wait for Nagle.
    http.set_nodelay(true);
    // The https connector wraps this one and needs it to accept https URIs.
    http.enforce_http(false);
    // The whole exchange is also bounded by `timeout`; this keeps a black-holed
    // address from holding a connect attempt open past it.
    http.set_connect_timeout(Some(upstream.timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(upstream)?)
        .https_or_http()
        // ALPN http/1.1 only: upstreams are spoken to in HTTP/1.1.
        .enable_http1()
        .wrap_connector(http);

    // Legacy upstreams sometimes compare header names case-sensitively
    // (`Remote-User`), so names go out in title case unless the operator
    // chose lower case (hyper's own spelling, which saves the re-casing).
    let title_case = upstream.header_case == HeaderCase::Title;
    Ok(Pool::new(
        https,
        target,
        upstream.pool_idle_timeout,
        title_case,
        budget,
    ))
}
