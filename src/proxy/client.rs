//! Pooled HTTP/1.1 clients for the upstreams.
//!
//! One hyper-util legacy `Client` per upstream, so each upstream gets its own
//! pool, idle timeout and trust roots. https goes through hyper-rustls with the
//! aws-lc-rs provider named explicitly (two providers in one binary panic at
//! start); the roots are webpki-roots plus the upstream's own `ca` certificates.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::TryFutureExt;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyError;
use crate::config::UpstreamConfig;

/// The client type every upstream uses (plain http passes through the https
/// connector untouched).
pub type UpstreamClient = Client<Bare<HttpsConnector<HttpConnector>>, Body>;

/// Idle connections kept per upstream host. A benchmark showed small idle pools
/// cost 3x throughput under concurrency (every request beyond the pool opens a
/// new connection); `pool_idle_timeout` still closes them when traffic stops.
pub const POOL_MAX_IDLE_PER_HOST: usize = 4096;

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

/// Builds the pooled client for one upstream.
pub fn build(upstream: &UpstreamConfig) -> Result<UpstreamClient, ProxyError> {
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

    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(upstream.pool_idle_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        // Without a timer the idle timeout is only noticed lazily at checkout.
        .pool_timer(TokioTimer::new())
        // Legacy upstreams sometimes compare header names case-sensitively
        // (`Remote-User`); hyper otherwise writes them lower-case.
        .http1_title_case_headers(true)
        .build(Bare(https));
    Ok(client)
}

/// A connector whose connections report no extra facts. hyper-util copies a
/// connection's extras (the socket addresses) into every response's
/// extensions, which costs three allocations per request; the proxy never
/// passes upstream extensions on, so there is nothing to copy.
#[derive(Debug, Clone)]
pub struct Bare<C>(C);

impl<C> tower::Service<Uri> for Bare<C>
where
    C: tower::Service<Uri>,
{
    type Response = BareIo<C::Response>;
    type Error = C::Error;
    type Future = futures_util::future::MapOk<C::Future, fn(C::Response) -> BareIo<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.0.call(uri).map_ok(|io| BareIo { io })
    }
}

pin_project_lite::pin_project! {
    /// A connection of [`Bare`]: the inner one, minus its extras.
    #[derive(Debug)]
    pub struct BareIo<T> {
        #[pin]
        io: T,
    }
}

impl<T: Connection> Connection for BareIo<T> {
    fn connected(&self) -> Connected {
        // Only the extras go: proxy and ALPN facts stay as the connection says.
        let inner = self.io.connected();
        let bare = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            bare.negotiated_h2()
        } else {
            bare
        }
    }
}

impl<T: Read> Read for BareIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: Write> Write for BareIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
