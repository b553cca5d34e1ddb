//! Listeners: accept TCP (optionally rustls), serve HTTP/1.1 and HTTP/2 with
//! hyper, bound what a client can hold open, and shut down gracefully.
//!
//! Each connection tracks its requests in flight ([`conn::Activity`]), and
//! one watchdog per connection enforces both quiet-time limits from it:
//! `header_read_timeout` bounds how long an HTTP/1 connection (and any
//! connection before its first request) may go without a complete request
//! head, which also bounds how long an idle keep-alive connection waits for
//! its next request; past it the connection is closed. hyper's own header
//! timer is not used: it is armed anew (a boxed timer, a clock read, a timer
//! wheel entry) for every request, the watchdog only wakes at its deadline.
//! hyper has no idle timeout for HTTP/2 (its PINGs only find dead peers), so
//! an HTTP/2 connection is closed gracefully (GOAWAY) after `idle_timeout`
//! without a request in flight. A client that stops reading (the socket
//! takes no more of a response) is closed after `idle_timeout` without
//! progress, in flight or not. Every
//! connection, TLS handshake included, holds a slot of the listener's
//! [`ConnectionLimit`] until its socket closes; over the limit a connection is
//! turned away at once (plain HTTP gets a `503`), and accepting goes on.
//! Each request learns its connection's [`ConnInfo`] (peer address, TLS or
//! not), the only source of the client address the gateway trusts: a service
//! that takes it once per connection ([`ForConnection`], the gateway's) is
//! told it then; any other finds it in every request's extensions.

mod body;
mod conn;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

pub use body::{BodyTimedOut, BodyTimer, TimedBody};
pub use conn::{AddressLimit, AddressSlot, ConnectionLimit, Slot, raise_open_files_limit};

use crate::config::{ServerConfig, defaults};
use crate::context::ConnInfo;
use conn::{Activity, Io, Quiet, Watched};

/// TLS handshakes one client address (an IPv4 address, an IPv6 /64) may have
/// in progress at once on the main listener; `server.max_tls_handshakes` is
/// for all together, and without a share a few addresses holding silent
/// connections (reopened every `tls_handshake_timeout`) would take them all.
/// Peers in `server.trusted_proxies` are not capped.
pub const MAX_TLS_HANDSHAKES_PER_IP: usize = 32;

/// Streams one HTTP/2 connection may have open at once (past it the client
/// is told `REFUSED_STREAM` and may retry).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Request body bytes one HTTP/2 connection, and one stream, may have sent
/// and not yet read by the gateway.
pub const H2_CONNECTION_WINDOW: u32 = 512 * 1024;
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// Settings for one listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Close a connection after this long without a request in flight.
    pub idle_timeout: Duration,
    /// How long a TLS client may take to finish its handshake.
    pub tls_handshake_timeout: Duration,
    /// Open connections, shared by every thread serving the listener.
    pub connections: Arc<ConnectionLimit>,
    /// TLS handshakes in progress, shared likewise.
    pub handshakes: Arc<ConnectionLimit>,
    /// Connections per client address, shared likewise; `None` = no cap.
    pub per_address: Option<Arc<AddressLimit>>,
    /// TLS handshakes per client address, shared likewise; `None` = no cap.
    pub handshakes_per_address: Option<Arc<AddressLimit>>,
    /// How long a request body may take (see [`body`]).
    pub body_read_timeout: Duration,
}

impl ListenerOptions {
    /// The main listener's options, from `[server]`.
    pub fn main(server: &ServerConfig) -> Self {
        Self {
            tls: server.tls.as_ref().map(|t| t.server_config.clone()),
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
            shutdown_timeout: server.shutdown_timeout,
            idle_timeout: server.idle_timeout,
            tls_handshake_timeout: server.tls_handshake_timeout,
            connections: ConnectionLimit::new("main", "connections", server.max_connections),
            handshakes: ConnectionLimit::new("main", "tls_handshakes", server.max_tls_handshakes),
            per_address: AddressLimit::new(
                "main",
                server.max_connections_per_ip,
                server.trusted_proxies.clone(),
            ),
            handshakes_per_address: AddressLimit::counting(
                "main",
                "tls_handshakes_per_ip",
                MAX_TLS_HANDSHAKES_PER_IP,
                server.trusted_proxies.clone(),
            ),
            body_read_timeout: server.body_read_timeout,
        }
    }

    /// The admin listener's: the same timeouts, its own TLS, and a budget of
    /// its own ([`defaults::ADMIN_MAX_CONNECTIONS`]) so that a flood of the
    /// main listener never locks out health checks and operators.
    pub fn admin(server: &ServerConfig, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let max = defaults::ADMIN_MAX_CONNECTIONS;
        Self {
            tls,
            connections: ConnectionLimit::new("admin", "connections", max),
            handshakes: ConnectionLimit::new("admin", "tls_handshakes", max.min(server.max_tls_handshakes)),
            // Operators' own listener: its small budget, and a share of it
            // per address.
            per_address: AddressLimit::new(
                "admin",
                defaults::ADMIN_MAX_CONNECTIONS_PER_IP,
                server.trusted_proxies.clone(),
            ),
            handshakes_per_address: None,
            ..Self::main(server)
        }
    }
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
/// (WebSockets) spliced from it end then. Inserted into every request with an
/// `Upgrade` header (nothing else is spliced).
#[derive(Debug, Clone)]
pub struct Drained(watch::Receiver<bool>);

impl Drained {
    /// Resolves once the listener has drained.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// A service [`serve`] runs, which may take each connection's facts once.
pub trait ForConnection: Sized {
    /// This service for the requests of the connection `conn`, or `None` (the
    /// default) to keep it as it is and insert `conn` into every request's
    /// extensions instead, where routers and layers look for it. The
    /// gateway's own service takes it here: an extensions map costs each
    /// request three allocations.
    fn for_connection(&self, _conn: ConnInfo) -> Option<Self> {
        None
    }
}

impl ForConnection for axum::Router {}

impl<F> ForConnection for tower::util::ServiceFn<F> {}

/// Serves `service` on `listener` until `shutdown`, then drains in-flight
/// requests for at most `shutdown_timeout`, closes what is left and returns.
pub async fn serve<S>(listener: TcpListener, service: S, opts: ListenerOptions, shutdown: Shutdown)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Enforced by the connection's watchdog instead (module doc); hyper
        // needs no timer for HTTP/1 then.
        .header_read_timeout(None)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // nginx's default: hyper's 200 lets one connection hold more
        // upstream connections and portal work than a browser ever needs.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // What a client may send before the gateway reads it: hyper's 1 MiB
        // per connection (and per stream) is what 64 HTTP/1.1 connections'
        // buffers hold. An upload still streams at window / round trip.
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (drained_tx, drained_rx) = watch::channel(false);
    let drained = Drained(drained_rx);
    let timeouts = Timeouts {
        head: opts.header_read_timeout,
        idle: opts.idle_timeout,
        handshake: opts.tls_handshake_timeout,
        body: opts.body_read_timeout,
    };
    let mut connections = tokio::task::JoinSet::new();

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
                // One address over its share is refused before it takes a
                // place under the listener's limit.
                let Some(address) = AddressLimit::share(opts.per_address.as_ref(), peer.ip()) else {
                    conn::refuse(stream, &opts.connections, acceptor.is_some());
                    continue;
                };
                let Some(slot) = opts.connections.try_acquire() else {
                    conn::refuse(stream, &opts.connections, acceptor.is_some());
                    continue;
                };
                let tls = match &acceptor {
                    None => None,
                    // The address's share first, then a place of all;
                    // dropping the stream (and the slots) closes it.
                    Some(acceptor) => {
                        let Some(share) = AddressLimit::share(opts.handshakes_per_address.as_ref(), peer.ip())
                        else {
                            continue;
                        };
                        match opts.handshakes.try_acquire() {
                            Some(handshake) => Some((acceptor.clone(), (handshake, share))),
                            None => continue,
                        }
                    }
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(
                    stream,
                    peer,
                    (slot, address),
                    tls,
                    builder.clone(),
                    service.clone(),
                    drained.clone(),
                    timeouts,
                    shutdown.clone(),
                ));
            }
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended && e.is_panic() {
                    tracing::error!("a connection task panicked");
                }
            }
            () = shutdown.wait() => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(opts.shutdown_timeout, drain).await.is_err() {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    connections.shutdown().await;
    // Upgraded connections are not tracked by hyper: end them now.
    let _ = drained_tx.send(true);
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    head: Duration,
    idle: Duration,
    handshake: Duration,
    body: Duration,
}

/// Handshakes (TLS) and serves one connection until it ends, it idles out,
/// or shutdown drains it.
#[allow(clippy::too_many_arguments)]
async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    (slot, address): (Slot, Option<AddressSlot>),
    tls: Option<(tokio_rustls::TlsAcceptor, (Slot, Option<AddressSlot>))>,
    builder: Arc<Builder<TokioExecutor>>,
    service: S,
    drained: Drained,
    timeouts: Timeouts,
    shutdown: Shutdown,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Activity::new();
    let stream = Watched::new(stream, activity.clone());
    let (io, is_tls) = match tls {
        None => (Io::plain(stream, slot, address), false),
        Some((acceptor, handshake)) => {
            let accepted = tokio::time::timeout(timeouts.handshake, acceptor.accept(stream)).await;
            drop(handshake);
            match accepted {
                Ok(Ok(stream)) => {
                    // The head limit counts from the end of the handshake.
                    activity.touch();
                    (Io::tls(stream, slot, address), true)
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = ConnInfo { peer, tls: is_tls };
    // The service told the connection's facts, or else each request.
    let (service, insert) = match service.for_connection(conn) {
        Some(told) => (told, None),
        None => (service, Some(conn)),
    };
    let svc = hyper_service(service, conn, insert, drained, activity.clone(), timeouts.body);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    // The watchdog (no request head in time, also before the first request:
    // protocol sniffing, an unfinished HTTP/2 preface; or idle: see
    // `Activity::quiet`) and the shutdown signal, in a set that is polled
    // only when one of them was woken: the connection's task wakes a few
    // times per request, and polling a timer and a watch channel each time
    // costs more than the rest of the loop.
    let mut guards = FuturesUnordered::new();
    guards.push(guard(&activity, &shutdown, &timeouts, false));
    let mut closing = false;
    loop {
        tokio::select! {
            // The connection first: a head that completes in the same
            // wake-up as the watchdog's deadline is served, as hyper did.
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            Some(event) = guards.next() => {
                let quiet = match event {
                    Guard::Stop => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        guards.push(guard(&activity, &shutdown, &timeouts, closing));
                        continue;
                    }
                    Guard::Quiet(quiet) => quiet,
                };
                if let Some(why) = quiet.hard_close() {
                    tracing::debug!(%peer, "connection closed: {why}");
                    return;
                }
                if closing {
                    // Asked to close (GOAWAY sent) and still idle a whole
                    // period later: the client is not closing its end.
                    tracing::debug!(%peer, "connection closed: idle after GOAWAY");
                    return;
                }
                tracing::debug!(%peer, "closing a connection idle for server.idle_timeout");
                // HTTP/2: GOAWAY, streams already started finish; HTTP/1:
                // closed between requests.
                conn.as_mut().graceful_shutdown();
                closing = true;
                activity.touch();
                guards.push(guard(&activity, &shutdown, &timeouts, closing));
            }
        }
    }
}

/// What woke a connection's [`guard`].
enum Guard {
    Quiet(Quiet),
    Stop,
}

/// A connection's watchdog, and the shutdown signal unless it is `closing`
/// already.
async fn guard(activity: &Activity, shutdown: &Shutdown, timeouts: &Timeouts, closing: bool) -> Guard {
    let quiet = activity.quiet(timeouts.head, timeouts.idle);
    if closing {
        return Guard::Quiet(quiet.await);
    }
    tokio::select! {
        quiet = quiet => Guard::Quiet(quiet),
        () = shutdown.wait() => Guard::Stop,
    }
}

/// Adapts a tower service over `Body` into a hyper service over `Incoming`,
/// inserting the connection facts (`insert`) into every request unless the
/// service has them already, and keeping the request in flight (for the idle
/// timeout) until its response body is done.
fn hyper_service<S>(
    service: S,
    conn: ConnInfo,
    insert: Option<ConnInfo>,
    drained: Drained,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<conn::Tracked<Body>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<conn::Tracked<Body>>, Infallible>> + Send,
> + Clone
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let busy = activity.begin(req.version());
        // A body that is still to come must keep coming (see `body`).
        let timer = (!http_body::Body::is_end_stream(req.body())).then(|| BodyTimer::new(body_read_timeout));
        // Only a request with a body to come can time out (and needs to know
        // how to say so).
        let (api, version) = (
            timer.is_some() && body::is_api_path(req.uri().path()),
            req.version(),
        );
        let mut req = match &timer {
            None => req.map(Body::new),
            Some(timer) => {
                // In flight until the body has arrived, too: an upload may go
                // on after the upstream has answered.
                let mut req = req.map(|b| Body::new(timer.gap(conn::Tracked::new(b, busy.upload()))));
                req.extensions_mut().insert(timer.clone());
                req
            }
        };
        if let Some(conn) = insert {
            req.extensions_mut().insert(conn);
        }
        // Only an upgrade can outlive its request (a spliced WebSocket), so
        // only an upgrade request carries the drain signal.
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(drained.clone());
        }
        let response = service.clone().oneshot(req);
        async move {
            let mut response = response.await?;
            if timer.is_some_and(|t| t.expired()) {
                tracing::debug!(peer = %conn.peer, "request body timed out (server.body_read_timeout); answering 408");
                response = body::timed_out(api, version);
            }
            let h2 = version == http::Version::HTTP_2;
            // Handed to hyper as it is: boxing it again would cost an
            // allocation and a dynamic call per poll of every answer.
            Ok(response.map(|body| conn::Tracked::answer(body, busy, h2)))
        }
    })
}

/// Binds a TCP listener with `SO_REUSEADDR`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How many threads serve the main listener: one per core.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Binds `addr` once per serving thread (see [`serve_threads`]). On Linux the
/// sockets share the port with `SO_REUSEPORT`, so the kernel spreads new
/// connections evenly over the threads (one socket shared by all lets the
/// first thread to wake take a whole burst of connections). Elsewhere the
/// threads share one socket.
///
/// The address behaves as with one socket: already in use is an error (a
/// plain bind is tried first, so a second gateway cannot silently join the
/// group), and port 0 picks one port for all. Call inside a tokio runtime.
pub async fn bind_threads(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let threads = threads.max(1);
    #[cfg(target_os = "linux")]
    {
        let socket = |addr: SocketAddr| {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        };
        if addr.port() != 0 {
            // Fails if anything listens there, reuse-port group or not.
            let probe = socket(addr)?;
            probe.set_reuseaddr(true)?;
            probe.bind(addr)?;
        }
        let mut addr = addr;
        let mut listeners = Vec::with_capacity(threads);
        for _ in 0..threads {
            let s = socket(addr)?;
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            let listener = s.listen(1024)?;
            addr = listener.local_addr()?;
            listeners.push(listener.into_std()?);
        }
        Ok(listeners)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let first = TcpListener::bind(addr).await?.into_std()?;
        let mut listeners = Vec::with_capacity(threads);
        for _ in 1..threads {
            listeners.push(first.try_clone()?);
        }
        listeners.push(first);
        Ok(listeners)
    }
}

/// Serves the listeners from [`bind_threads`], one per OS thread, each thread
/// running its own single-threaded tokio runtime with its own service from
/// `make_service` (called on that thread, so per-thread state such as
/// upstream connection pools stays there). Returns once shutdown has drained
/// every thread; an error when no thread could be started.
///
/// Why not one multi-threaded runtime: a proxied request wakes the client
/// connection's task and the upstream connection's task in turn; on a
/// work-stealing runtime these often sit on different workers, and every
/// hand-over is a cross-thread wake-up (futex, context switch) plus contention
/// on the shared upstream pool. Here a connection and everything it causes
/// stay on one thread.
pub async fn serve_threads<F, S>(
    listeners: Vec<std::net::TcpListener>,
    make_service: F,
    opts: ListenerOptions,
    shutdown: Shutdown,
) -> std::io::Result<()>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + ForConnection
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let make_service = Arc::new(make_service);
    let mut running = Vec::with_capacity(listeners.len());
    let mut last_error = None;
    for (i, socket) in listeners.into_iter().enumerate() {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let make_service = make_service.clone();
        let opts = opts.clone();
        let shutdown = shutdown.clone();
        // A socket whose thread does not run is dropped with the closure, so the
        // kernel stops handing it connections.
        let spawned = std::thread::Builder::new()
            .name(format!("portcullis-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a serving thread's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Freed memory back to the system when this thread goes quiet.
                    let upkeep = tokio::spawn(crate::memory::upkeep());
                    match TcpListener::from_std(socket) {
                        Ok(listener) => serve(listener, make_service(), opts, shutdown).await,
                        Err(e) => tracing::error!(error = %e, "cannot register the listener"),
                    }
                    upkeep.abort();
                });
                // Connections still open after the drain are closed with the runtime.
                drop(runtime);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => running.push(finished),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a serving thread");
                last_error = Some(e);
            }
        }
    }
    if running.is_empty() {
        return Err(last_error.unwrap_or_else(|| std::io::Error::other("no listener to serve")));
    }
    for finished in running {
        // An error means the thread ended early (logged there) or panicked.
        let _ = finished.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_options(max_connections: usize) -> ListenerOptions {
        ListenerOptions {
            tls: None,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16384,
            shutdown_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(5),
            connections: ConnectionLimit::new("test", "connections", max_connections),
            handshakes: ConnectionLimit::new("test", "tls_handshakes", 16),
            per_address: None,
            handshakes_per_address: None,
            body_read_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn serving_threads_share_one_port_that_nobody_else_gets() {
        let listeners = bind_threads("127.0.0.1:0".parse().unwrap(), 3).await.unwrap();
        assert_eq!(listeners.len(), 3);
        let addr = listeners[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap(), addr, "one port for every thread");
        }
        // A second gateway on the same address is refused, as with one socket.
        let again = bind_threads(addr, 2).await;
        assert_eq!(again.err().map(|e| e.kind()), Some(std::io::ErrorKind::AddrInUse));
    }

    /// Writes `raw` on `stream` and reads until the server closes it.
    async fn exchange(stream: &mut TcpStream, raw: &[u8]) -> String {
        tokio::io::AsyncWriteExt::write_all(stream, raw).await.unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(stream, &mut answer)
            .await
            .unwrap();
        answer
    }

    /// A service that answers what it knows of the connection: what it was
    /// told once (`told`), and what the request's extensions say.
    #[derive(Clone)]
    struct Teller {
        takes: bool,
        told: Option<ConnInfo>,
    }

    impl ForConnection for Teller {
        fn for_connection(&self, conn: ConnInfo) -> Option<Self> {
            self.takes.then_some(Self {
                takes: true,
                told: Some(conn),
            })
        }
    }

    impl Service<http::Request<Body>> for Teller {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let told = self.told.map(|c| c.peer.to_string());
            let carried = req.extensions().get::<ConnInfo>().map(|c| c.peer.to_string());
            let text = format!("told={told:?} carried={carried:?}");
            std::future::ready(Ok(http::Response::new(Body::from(text))))
        }
    }

    #[tokio::test]
    async fn a_service_learns_the_connection_once_or_from_every_request() {
        for takes in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shutdown = Shutdown::new();
            let served = tokio::spawn(serve(
                listener,
                Teller { takes, told: None },
                test_options(10),
                shutdown.clone(),
            ));
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let me = stream.local_addr().unwrap().to_string();
            // Two requests on one connection: the second is told as well.
            let answer = exchange(
                &mut stream,
                b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            let expected = if takes {
                format!("told=Some(\"{me}\") carried=None")
            } else {
                format!("told=None carried=Some(\"{me}\")")
            };
            assert_eq!(answer.matches(&expected).count(), 2, "{answer}");
            shutdown.trigger();
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn every_thread_serves_until_shutdown() {
        let listeners = bind_threads("127.0.0.1:0".parse().unwrap(), 2).await.unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let service = tower::service_fn(|_req: http::Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::from("hello")))
        });
        let opts = test_options(100);
        let shutdown = Shutdown::new();
        let served = tokio::spawn(serve_threads(listeners, move || service, opts, shutdown.clone()));
        // Enough connections that both sockets get some.
        for _ in 0..16 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let answer = exchange(
                &mut stream,
                b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("hello"), "{answer}");
        }
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("drained in time")
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }

    #[tokio::test]
    async fn the_connection_limit_spans_every_serving_thread() {
        let listeners = bind_threads("127.0.0.1:0".parse().unwrap(), 2).await.unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let service = tower::service_fn(|_req: http::Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::from("hello")))
        });
        let opts = test_options(3);
        let limit = opts.connections.clone();
        let shutdown = Shutdown::new();
        let served = tokio::spawn(serve_threads(listeners, move || service, opts, shutdown.clone()));
        let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        // Three kept-alive connections, wherever the kernel puts them.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, get)
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                .await
                .unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(stream);
        }
        assert_eq!(limit.open(), 3);
        // Every further one is turned away, whichever thread accepts it.
        for _ in 0..6 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, get)
                .await
                .unwrap();
            let mut answer = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await;
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        }
        drop(held);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while limit.open() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slots were not given back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.trigger();
        served.await.unwrap().unwrap();
    }
}
