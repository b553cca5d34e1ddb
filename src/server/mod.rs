//! Listeners: accept TCP (optionally rustls), serve HTTP/1.1 and HTTP/2 with
//! hyper, and shut down gracefully.
//!
//! hyper only enforces `header_read_timeout` when a timer is installed, so
//! every connection builder gets a `TokioTimer`; the same timeout bounds how
//! long an idle keep-alive connection may wait for its next request. Each
//! request gets a [`ConnInfo`] extension (peer address, TLS or not), the only
//! source of the client address the gateway trusts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::gateway::prepare::ConnInfo;

/// Settings for one listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_timeout: Duration,
}

/// A shutdown signal shared by every listener.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx: Arc::new(tx), rx }
    }
}

impl Shutdown {
    /// A new, untriggered signal.
    pub fn new() -> Self {
        Self::default()
    }
    /// Triggers shutdown.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    /// Resolves once shutdown is triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
    /// Triggers shutdown on SIGTERM or SIGINT.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        this.trigger();
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("shutdown requested; draining connections");
            this.trigger();
        });
    }
}

/// Fires when a listener has finished draining; upgraded connections
/// (WebSockets) spliced from it end then. Inserted into every request.
#[derive(Debug, Clone)]
pub struct Drained(watch::Receiver<bool>);

impl Drained {
    /// Resolves once the listener has drained.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// Serves `service` on `listener` until `shutdown`, then drains in-flight
/// requests for at most `shutdown_timeout` and returns.
pub async fn serve<S>(listener: TcpListener, service: S, opts: ListenerOptions, shutdown: Shutdown)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let (drained_tx, drained_rx) = watch::channel(false);
    let drained = Drained(drained_rx);
    let first_request = opts.header_read_timeout;
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel();

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handshake_timeout = opts.header_read_timeout;
                let service = service.clone();
                let tx = conn_tx.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => { let _ = tx.send(Conn::Plain(stream, peer, service)); }
                        Some(acceptor) => {
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => { let _ = tx.send(Conn::Tls(Box::new(tls), peer, service)); }
                                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(conn) = conn_rx.recv() => {
                match conn {
                    Conn::Plain(stream, peer, service) => {
                        let seen = Arc::new(AtomicBool::new(false));
                        let svc = hyper_service(service, ConnInfo { peer, tls: false }, drained.clone(), seen.clone());
                        let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        tokio::spawn(run_connection(graceful.watch(c.into_owned()), seen, first_request));
                    }
                    Conn::Tls(stream, peer, service) => {
                        let seen = Arc::new(AtomicBool::new(false));
                        let svc = hyper_service(service, ConnInfo { peer, tls: true }, drained.clone(), seen.clone());
                        let c = builder.serve_connection_with_upgrades(TokioIo::new(*stream), svc);
                        tokio::spawn(run_connection(graceful.watch(c.into_owned()), seen, first_request));
                    }
                }
            }
            () = shutdown.wait() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    // Upgraded connections are not tracked by the graceful watcher: end them now.
    let _ = drained_tx.send(true);
}

/// Drives one connection. hyper's `header_read_timeout` only starts once it
/// knows the protocol; until the first request arrives (protocol sniffing,
/// an unfinished HTTP/2 preface, a silent TLS client) this deadline closes it.
async fn run_connection<F, E>(conn: F, seen: Arc<AtomicBool>, first_request: Duration)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let deadline = async {
        tokio::time::sleep(first_request).await;
        if seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "connection ended with an error");
        },
        () = deadline => tracing::debug!("connection closed: no request within header_read_timeout"),
    }
}

enum Conn<S> {
    Plain(tokio::net::TcpStream, SocketAddr, S),
    Tls(
        Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        SocketAddr,
        S,
    ),
}

/// Adapts a tower service over `Body` into a hyper service over `Incoming`,
/// inserting the connection facts into every request.
fn hyper_service<S>(
    service: S,
    conn: ConnInfo,
    drained: Drained,
    seen: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
> + Clone
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(conn);
        req.extensions_mut().insert(drained.clone());
        service.clone().oneshot(req)
    })
}

/// Binds a TCP listener with `SO_REUSEADDR`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
