//! A pool of kept-alive HTTP/1.1 connections to one upstream, for one serving
//! thread.
//!
//! Every serving thread builds its own proxy, so a pool is only ever used by
//! the thread that owns it: its lock is never contended, its connections are
//! driven by tasks on that thread, and there is no pool key to hash. (This
//! replaced hyper-util's legacy client, whose shared pool hashed its key three
//! times, took its mutex twice and spawned a task per request to put a
//! connection back; see `bench/results/`.)
//!
//! - A request takes the most recently used idle connection that takes a
//!   request now (last in, first out: the warm ones stay warm, the rest idle
//!   out), skipping any that closed or idled longer than `pool_idle_timeout`
//!   and never waiting for one still busy; without one it connects.
//! - A connection goes back when the response body has been read to its end
//!   (at once for an empty body). A body dropped early, a body error or a
//!   `101 Switching Protocols` never give it back: hyper closes it, or hands it
//!   to the upgrade.
//! - A request that was never written because the kept-alive connection had
//!   just closed (the upstream's keep-alive timeout, a restart) is sent again
//!   on the next connection. So, once and on a new connection, is a GET,
//!   HEAD or OPTIONS without a body that was written to a connection idle for
//!   a second or more which then closed without any answer (see
//!   [`STALE_AFTER`]). Any other failure is the answer (502): the request may
//!   have had effects upstream, and a fresh connection's failure is never
//!   retried.
//! - A sweeper task, running only while connections are idle, closes those
//!   idle for longer than `pool_idle_timeout`, so none is held open once traffic
//!   stops.
//! - Every upstream connection, idle, busy or switched to a WebSocket tunnel,
//!   holds a place in the process-wide [`ConnectionBudget`]. When it is spent,
//!   the connection idle longest in any pool (any thread's) is closed to make
//!   room; a request is refused (503) only when none is idle.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

/// How upstream connections are made: TCP, and TLS for https upstreams.
pub type Connector = HttpsConnector<HttpConnector>;

/// Idle connections kept per upstream and thread. A benchmark showed small
/// idle pools cost 3x throughput under concurrency (every request beyond the
/// pool opens a new connection); `pool_idle_timeout` still closes them when
/// traffic stops.
pub const MAX_IDLE: usize = 4096;

/// A connection idle this long may be closed by the upstream just as a request
/// goes out on it (its keep-alive timeout, a restart). Requests that are safe
/// to repeat (GET, HEAD or OPTIONS, no body) are then copied before they are
/// sent on it, and sent again on another connection if it closes without an
/// answer. Under load connections idle for microseconds, so the copy is rare.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// A copy of `req` to send again, if repeating it is safe: GET, HEAD or
/// OPTIONS (safe methods, RFC 9110, section 9.2.1) and no body.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    use http::Method;
    // Safe methods only: PUT and DELETE are idempotent by the RFC, not
    // always in a legacy app.
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// How many upstream connections the whole process may hold open at once,
/// all upstreams and serving threads together (`server.max_connections`: the
/// open-file budget counts one upstream connection per client connection).
/// An HTTP/2 client multiplies its requests over one connection, and a
/// request never waits for a busy upstream connection, so without this bound
/// a few clients could open upstream sockets until the process runs out of
/// descriptors (and the store, the logs and new clients with it).
#[derive(Clone)]
pub struct ConnectionBudget {
    max: usize,
    counter: Arc<Counter>,
}

struct Counter {
    open: AtomicUsize,
    /// Told when a place is given back, for a request waiting on an idle
    /// connection it had closed.
    freed: tokio::sync::Notify,
    /// Requests waiting on `freed`: without any, a place given back tells
    /// nobody (no lock taken per closed connection).
    waiting: AtomicUsize,
    /// Every pool drawing on the budget, to find idle connections to close.
    pools: Mutex<Vec<Weak<Shared>>>,
}

/// What [`ConnectionBudget::oldest_idle`] found.
enum Found<T> {
    /// The connection idle longest that can close at once, taken out of its pool.
    Closable(T),
    /// Idle connections whose last exchange hyper has not seen end yet.
    NotYet,
    /// No idle connection anywhere.
    None,
}

/// How long a request waits, at most, before looking again at idle
/// connections that were not closable yet (a place given back ends it early).
const NOT_YET_WAIT: Duration = Duration::from_millis(5);

/// How long a request waits for the place of an idle connection it closed:
/// the connection's task (on its own serving thread) ends as soon as it sees
/// its sender gone, so this is only reached when that thread is stalled.
const FREED_WAIT: Duration = Duration::from_millis(250);

impl ConnectionBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counter: Arc::new(Counter {
                open: AtomicUsize::new(0),
                freed: tokio::sync::Notify::new(),
                waiting: AtomicUsize::new(0),
                pools: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A place for one more connection, if there is one.
    fn take(&self) -> Option<BudgetSlot> {
        // SeqCst with `waiting` (see `BudgetSlot::drop`): a place given back
        // is either seen here or announced to a waiter.
        self.counter
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| BudgetSlot(self.counter.clone()))
    }

    /// A place, closing idle connections (the longest idle first, in any
    /// pool) to make one when the budget is spent; `None` when every
    /// connection is in use. A few rounds at most: another request may take a
    /// place freed for this one.
    async fn take_or_make_room(&self) -> Option<BudgetSlot> {
        // Places given back are announced only while someone waits here.
        self.counter.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.counter);
        for _ in 0..4 {
            let freed = self.counter.freed.notified();
            tokio::pin!(freed);
            // Listening before closing, so the place given back is not missed.
            freed.as_mut().enable();
            if let Some(slot) = self.take() {
                return Some(slot);
            }
            let wait = match self.oldest_idle() {
                // Dropped outside every lock: hyper then closes the connection
                // and its task (on its own thread) gives the place back.
                Found::Closable(sender) => {
                    drop(sender);
                    FREED_WAIT
                }
                // Back in a pool, but hyper has yet to see its exchange end
                // (or it is still sending a body): closable soon, or its place
                // comes back when it ends.
                Found::NotYet => NOT_YET_WAIT,
                // Every connection is in use.
                Found::None => return None,
            };
            let _ = tokio::time::timeout(wait, freed).await;
        }
        self.take()
    }

    /// Removes the connection idle longest that can be closed at once, from
    /// whichever pool holds it: open, and its last exchange over (one still
    /// sending a request body would give its place back only when the upload
    /// ends). Closed ones met on the way are dropped: their places are
    /// already given back.
    fn oldest_idle(&self) -> Found<SendRequest<Body>> {
        /// Where the oldest closable connection of a pool is, pruning closed ones.
        fn oldest(idle: &mut Idle) -> Option<(usize, Instant)> {
            idle.conns.retain(|c| !c.sender.is_closed());
            idle.conns
                .iter()
                .position(|c| c.sender.is_ready())
                .map(|at| (at, idle.conns[at].since))
        }
        let live: Vec<Arc<Shared>> = lock(&self.counter.pools)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut not_yet = false;
        let pool = live
            .iter()
            .filter_map(|pool| {
                let mut idle = pool.idle();
                let found = oldest(&mut idle);
                not_yet |= found.is_none() && !idle.conns.is_empty();
                Some((found?.1, pool))
            })
            .min_by_key(|(since, _)| *since);
        let Some((_, pool)) = pool else {
            return if not_yet { Found::NotYet } else { Found::None };
        };
        let mut idle = pool.idle();
        // Looked at again: another request may have taken it meanwhile.
        match oldest(&mut idle) {
            Some((at, _)) => Found::Closable(idle.conns.remove(at).sender),
            None => Found::NotYet,
        }
    }

    /// True when both count the same connections (one process-wide budget).
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.counter, &other.counter)
    }

    /// A place for a connection already counted, for as long as it outlives
    /// its HTTP exchange (a WebSocket tunnel after the 101, when hyper's part
    /// of the connection, which held the first place, ends). Counted even past
    /// the limit: the socket is already open, and its first place is about to
    /// be given back.
    fn hold(&self) -> BudgetSlot {
        self.counter.open.fetch_add(1, Ordering::AcqRel);
        BudgetSlot(self.counter.clone())
    }

    fn register(&self, pool: &Arc<Shared>) {
        let mut pools = lock(&self.counter.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// Upstream connections open now (for tests).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.counter.open.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for ConnectionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionBudget")
            .field("max", &self.max)
            .field("open", &self.counter.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Nothing is left half-changed under these locks, so a panic elsewhere does
/// not make their contents unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One upstream connection's place in the [`ConnectionBudget`], given back
/// when dropped (its connection has ended, or was never made).
struct BudgetSlot(Arc<Counter>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        // A waiter counts itself before it looks at `open`: either it sees
        // this place, or this sees it waiting.
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// A request's turn in [`ConnectionBudget::take_or_make_room`], ended when
/// dropped (however the wait ends).
struct Waiting<'a>(&'a Counter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The budget place of an upstream connection switched to a tunnel by a
/// `101 Switching Protocols`, in that response's extensions: whoever runs
/// the tunnel keeps it until the tunnel ends.
#[derive(Clone)]
pub struct TunnelPlace {
    _held: Arc<BudgetSlot>,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP, TLS or the HTTP/1.1 set-up).
    #[error(transparent)]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request or the response head was on it.
    #[error(transparent)]
    Request(hyper::Error),
    /// No connection was made: the [`ConnectionBudget`] is spent.
    #[error("as many upstream connections are open as server.max_connections allows")]
    Busy,
}

impl SendError {
    /// True when no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// One upstream's pool (see the module doc).
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// `scheme://authority` of the upstream: where the connector connects.
    target: Uri,
    builder: http1::Builder,
    idle_timeout: Duration,
    idle: Mutex<Idle>,
    budget: ConnectionBudget,
}

#[derive(Default)]
struct Idle {
    /// Oldest first; requests take from the end.
    conns: Vec<IdleConn>,
    /// A sweeper task is running.
    sweeping: bool,
}

struct IdleConn {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, Idle> {
        lock(&self.idle)
    }
}

impl Pool {
    /// A pool connecting to `target` (`scheme://authority`) through `connector`.
    /// `title_case` writes header names in title case (`Remote-User`), for
    /// legacy upstreams that compare them case-sensitively.
    pub fn new(
        connector: Connector,
        target: Uri,
        idle_timeout: Duration,
        title_case: bool,
        budget: ConnectionBudget,
    ) -> Self {
        let mut builder = http1::Builder::new();
        builder.title_case_headers(title_case);
        let shared = Arc::new(Shared {
            connector,
            target,
            builder,
            idle_timeout,
            idle: Mutex::new(Idle::default()),
            budget,
        });
        shared.budget.register(&shared);
        Self { shared }
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the response
    /// head. `now` is the time the caller started, to judge idle connections.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        now: Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        // At most one replay, and on a new connection: a request that kills
        // its upstream worker must not be sent once per idle connection.
        let mut replayed = false;
        loop {
            let checked = if replayed { None } else { self.checkout(now) };
            let (mut sender, idle_for) = match checked {
                Some((sender, idle_for)) => (sender, Some(idle_for)),
                // Boxed: connecting (TCP, TLS, hand-shake) is rare, and its
                // large state would otherwise be moved with every request's
                // future.
                None => (Box::pin(self.connect()).await?, None),
            };
            // `checkout` hands out only connections that take a request now.
            let reused = idle_for.is_some();
            // After a replay nothing is reused, so nothing is replayed twice.
            let replay = match idle_for {
                Some(idle_for) if idle_for >= STALE_AFTER => replayable(&req),
                _ => None,
            };
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.respond(res, sender)),
                Err(mut error) => match (error.take_message(), replay) {
                    // Never written: the kept-alive connection had closed.
                    (Some(unsent), _) if reused => req = unsent,
                    // Written, and the connection closed without a word: the
                    // upstream closed it as it went out. Safe to send again.
                    (None, Some(copy)) if error.error().is_incomplete_message() => {
                        tracing::info!(
                            "kept-alive upstream connection closed under the request; sending it again on a new connection"
                        );
                        replayed = true;
                        req = copy;
                    }
                    _ => return Err(SendError::Request(error.into_error())),
                },
            }
        }
    }

    /// How many idle connections the pool holds (for tests).
    pub fn idle_count(&self) -> usize {
        self.shared.idle().conns.len()
    }

    /// The most recently used idle connection that is open and takes a
    /// request now, and how long it idled. One whose exchange is not over yet
    /// (it went back when its response ended, but hyper has yet to see that,
    /// or the request body is still being sent, an upstream having answered
    /// early) stays where it is: waiting for it could take as long as the
    /// upload. Only the newest few are looked at; the sweeper clears the rest.
    fn checkout(&self, now: Instant) -> Option<(SendRequest<Body>, Duration)> {
        const LOOK_AT: usize = 8;
        let mut idle = self.shared.idle();
        let mut at = idle.conns.len();
        let oldest = at.saturating_sub(LOOK_AT);
        while at > oldest {
            at -= 1;
            let conn = &idle.conns[at];
            let idle_for = now.saturating_duration_since(conn.since);
            if idle_for >= self.shared.idle_timeout || conn.sender.is_closed() {
                idle.conns.remove(at);
            } else if conn.sender.is_ready() {
                return Some((idle.conns.remove(at).sender, idle_for));
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let shared = &self.shared;
        // Held by the connection's task until the connection ends.
        let slot = match shared.budget.take() {
            Some(slot) => slot,
            None => shared.budget.take_or_make_room().await.ok_or(SendError::Busy)?,
        };
        let io = shared
            .connector
            .clone()
            .oneshot(shared.target.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = shared
            .builder
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn respond(&self, res: Response<Incoming>, mut sender: SendRequest<Body>) -> Response<PooledBody> {
        let pool = Arc::downgrade(&self.shared);
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // hyper hands the connection to the upgrade once its sender is
            // done with; until then the sender lives here, never in the pool.
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| sender.poll_ready(cx)).await;
            });
            let mut res = res.map(|inner| PooledBody { inner, slot: None });
            res.extensions_mut().insert(TunnelPlace {
                _held: Arc::new(self.shared.budget.hold()),
            });
            return res;
        }
        if res.body().is_end_stream() {
            give_back(&pool, sender);
            return res.map(|inner| PooledBody { inner, slot: None });
        }
        res.map(|inner| PooledBody {
            inner,
            slot: Some(Slot { pool, sender }),
        })
    }
}

/// Puts a connection whose exchange is over back into its pool, if the pool
/// still exists and the connection is still open.
fn give_back(pool: &Weak<Shared>, sender: SendRequest<Body>) {
    let Some(shared) = pool.upgrade() else { return };
    if sender.is_closed() {
        return;
    }
    // The sweeper needs a runtime; without one (never, on a serving thread)
    // the connection is closed rather than kept without a limit.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut idle = shared.idle();
    if idle.conns.len() >= MAX_IDLE {
        // The oldest goes, not the warmest.
        idle.conns.remove(0);
    }
    idle.conns.push(IdleConn {
        sender,
        since: Instant::now(),
    });
    if !idle.sweeping {
        idle.sweeping = true;
        runtime.spawn(sweep(Arc::downgrade(&shared), shared.idle_timeout));
    }
}

/// Closes connections idle longer than `timeout`, until none is idle (or the
/// pool is gone).
async fn sweep(pool: Weak<Shared>, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(15));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = shared.idle();
        // Dropping a sender lets hyper close its idle connection.
        idle.conns
            .retain(|c| now.saturating_duration_since(c.since) < timeout && !c.sender.is_closed());
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// An upstream response body that gives its connection back to the pool once
/// read to its end.
pub struct PooledBody {
    inner: Incoming,
    slot: Option<Slot>,
}

struct Slot {
    pool: Weak<Shared>,
    sender: SendRequest<Body>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(slot) = self.slot.take() {
            give_back(&slot.pool, slot.sender);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // The connection is broken: it closes with its sender.
            Some(Err(_)) => this.slot = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// How a scripted upstream answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Script {
        /// `ok`, kept alive.
        KeepAlive,
        /// `ok`, then the socket closes without saying so (no `Connection:
        /// close`), as an upstream whose keep-alive timeout is shorter than
        /// the pool's does.
        CloseSilently,
        /// `Connection: close`, `ok`, then closes.
        ConnectionClose,
        /// Reads the request, then closes without answering.
        Hangup,
        /// A 1 MiB body, kept alive.
        Large,
        /// `101 Switching Protocols`, then the socket stays open, unread.
        Switch,
    }

    /// A raw HTTP/1.1 upstream: counts connections, requests, and connections
    /// it saw closed by the client.
    struct Upstream {
        target: Uri,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        closed_by_client: Arc<AtomicUsize>,
    }

    async fn upstream(script: Script) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (c, r, e) = (connections.clone(), requests.clone(), closed_by_client.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script, r.clone(), e.clone()));
            }
        });
        Upstream {
            target: format!("http://{addr}/").parse().unwrap(),
            connections,
            requests,
            closed_by_client,
        }
    }

    async fn serve(
        mut stream: TcpStream,
        script: Script,
        requests: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    ) {
        let mut buf = Vec::new();
        loop {
            // One request head (the tests send no bodies).
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            buf.drain(..end);
            requests.fetch_add(1, Ordering::SeqCst);
            let answer: Vec<u8> = match script {
                Script::KeepAlive | Script::CloseSilently => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
                }
                Script::ConnectionClose => {
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()
                }
                Script::Hangup => return,
                Script::Switch => {
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                        .to_vec()
                }
                Script::Large => {
                    let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                    a.resize(a.len() + (1 << 20), b'x');
                    a
                }
            };
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            if matches!(script, Script::CloseSilently | Script::ConnectionClose) {
                return;
            }
            if matches!(script, Script::Switch) {
                // The tunnel: open until the client closes it.
                let mut rest = [0u8; 64];
                while !matches!(stream.read(&mut rest).await, Ok(0) | Err(_)) {}
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }

    fn pool(target: &Uri, idle_timeout: Duration) -> Pool {
        pool_in(target, idle_timeout, ConnectionBudget::new(usize::MAX))
    }

    fn pool_in(target: &Uri, idle_timeout: Duration, budget: ConnectionBudget) -> Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(connector, target.clone(), idle_timeout, true, budget)
    }

    fn get() -> Request<Body> {
        Request::builder()
            .uri("/")
            .header("host", "upstream")
            .body(Body::empty())
            .unwrap()
    }

    /// A POST whose body never ends (the upstream answers without reading it).
    fn endless_upload() -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "upstream")
            .body(Body::from_stream(futures_util::stream::pending::<
                Result<Bytes, std::io::Error>,
            >()))
            .unwrap()
    }

    async fn get_ok(pool: &Pool) -> Bytes {
        let res = pool.send(get(), Instant::now()).await.expect("a response");
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap().to_bytes()
    }

    /// Waits (up to 5 s) until `check` holds.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let up = upstream(Script::KeepAlive).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        for _ in 0..10 {
            assert_eq!(get_ok(&pool).await, "ok");
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 10);
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            1,
            "every request on the kept-alive connection"
        );
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_that_are_then_reused() {
        let up = upstream(Script::KeepAlive).await;
        let pool = Arc::new(pool(&up.target, Duration::from_secs(30)));
        for _ in 0..3 {
            let all = (0..8).map(|_| {
                let pool = pool.clone();
                async move { get_ok(&pool).await }
            });
            for body in futures_util::future::join_all(all).await {
                assert_eq!(body, "ok");
            }
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 24);
        let opened = up.connections.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&opened),
            "at most one connection per concurrent request: {opened}"
        );
        assert_eq!(pool.idle_count(), opened);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_a_failed_request() {
        let up = upstream(Script::CloseSilently).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        // Straight after the answer (the close may not be seen yet: the
        // request goes out again on a new connection) and after a pause (the
        // closed connection is skipped).
        for pause in [0, 0, 0, 50, 0, 50] {
            assert_eq!(get_ok(&pool).await, "ok");
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        assert_eq!(
            up.requests.load(Ordering::SeqCst),
            6,
            "each request reached the upstream once"
        );
        assert_eq!(up.connections.load(Ordering::SeqCst), 6);
    }

    /// Sends a first GET, has the upstream close that connection silently
    /// while this runtime is blocked (the upstream runs on its own thread), and
    /// then sends `second` at `now`: the pool takes a connection that looks
    /// open and ready, writes the request, and only then reads the close.
    /// Returns the second answer's body and the (connections, requests) the
    /// upstream saw.
    async fn closed_under_the_request(
        second: Request<Body>,
        idle_for: Duration,
    ) -> (Option<Bytes>, (usize, usize)) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target: Uri = format!("http://{addr}/").parse().unwrap();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let served = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut connections, mut requests) = (0, 0);
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                    head.push(byte[0]);
                }
                if head.is_empty() {
                    break; // the test's wake-up call: no second request came
                }
                connections += 1;
                requests += 1;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
                if connections == 1 {
                    // Kept alive until told, then closed without a word.
                    closing.recv().unwrap();
                }
            }
            (connections, requests)
        });
        let pool = pool(&target, Duration::from_secs(30));
        assert_eq!(get_ok(&pool).await, "ok");
        // Let the connection's task take up the idle state: ready for the next.
        tokio::time::sleep(Duration::from_millis(50)).await;
        close.send(()).unwrap();
        // Block this thread while the FIN arrives, unseen by the runtime.
        std::thread::sleep(Duration::from_millis(100));
        let body = match pool.send(second, Instant::now() + idle_for).await {
            Ok(res) => Some(res.into_body().collect().await.unwrap().to_bytes()),
            Err(_) => {
                drop(std::net::TcpStream::connect(addr));
                None
            }
        };
        (body, served.join().unwrap())
    }

    #[tokio::test]
    async fn an_idempotent_request_on_a_connection_that_closes_under_it_goes_out_again() {
        // The connection idled for two seconds: it may have been closed.
        let (body, seen) = closed_under_the_request(get(), Duration::from_secs(2)).await;
        assert_eq!(
            body.as_deref(),
            Some(&b"ok"[..]),
            "sent again on a new connection"
        );
        assert_eq!(seen, (2, 2), "one request on each connection");
    }

    #[tokio::test]
    async fn a_put_without_a_body_is_not_sent_again() {
        let put = Request::builder()
            .method("PUT")
            .uri("/")
            .header("host", "upstream")
            .body(Body::empty())
            .unwrap();
        let (body, seen) = closed_under_the_request(put, Duration::from_secs(2)).await;
        assert_eq!(body, None, "only GET, HEAD and OPTIONS are sent again");
        assert_eq!(seen, (1, 1));
    }

    #[tokio::test]
    async fn a_request_with_a_body_is_never_sent_twice() {
        let post = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "upstream")
            .body(Body::from("transfer=100"))
            .unwrap();
        let (body, seen) = closed_under_the_request(post, Duration::from_secs(2)).await;
        assert_eq!(body, None, "a failure (502), not a second attempt");
        assert_eq!(seen, (1, 1));
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_request_body_is_not_waited_for() {
        // The upstream answers at once without reading the body, and the body
        // never ends: the response is over, the connection is not.
        let up = upstream(Script::KeepAlive).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        let upload = endless_upload();
        let res = pool.send(upload, Instant::now()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // The next request goes out on another connection at once.
        let next = tokio::time::timeout(Duration::from_secs(2), get_ok(&pool)).await;
        assert_eq!(next.expect("not stuck behind the upload"), "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_from_the_upstream_is_honoured() {
        let up = upstream(Script::ConnectionClose).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(get_ok(&pool).await, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
        eventually("no closed connection is kept", || pool.idle_count() == 0).await;
    }

    #[tokio::test]
    async fn a_fresh_connection_that_fails_is_not_tried_again() {
        let up = upstream(Script::Hangup).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        let error = pool.send(get(), Instant::now()).await.err().expect("no answer");
        assert!(!error.is_connect(), "connected, then failed: {error}");
        // The request may have had effects upstream: it is not repeated.
        assert_eq!(up.requests.load(Ordering::SeqCst), 1);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let pool = pool(&target, Duration::from_secs(30));
        let error = pool.send(get(), Instant::now()).await.err().expect("refused");
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let up = upstream(Script::KeepAlive).await;
        let pool = pool(&up.target, Duration::from_millis(200));
        assert_eq!(get_ok(&pool).await, "ok");
        assert_eq!(pool.idle_count(), 1);
        // Closed by the sweeper, with no further request to notice it.
        eventually("the upstream sees the idle connection closed", || {
            up.closed_by_client.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(pool.idle_count(), 0);
        // And the pool carries on with a new connection.
        assert_eq!(get_ok(&pool).await, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_past_its_timeout_is_not_used() {
        let up = upstream(Script::KeepAlive).await;
        // The sweeper runs every 2.5 s here; the request comes before.
        let pool = pool(&up.target, Duration::from_secs(10));
        assert_eq!(get_ok(&pool).await, "ok");
        let later = Instant::now() + Duration::from_secs(11);
        let res = pool.send(get(), later).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "the stale connection was passed over"
        );
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_never_goes_back_into_the_pool() {
        let up = upstream(Script::Large).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        let res = pool.send(get(), Instant::now()).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        // The next request gets a new connection and the whole body.
        let res = pool.send(get(), Instant::now()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes().len(), 1 << 20);
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 1, "read to its end: back in the pool");
    }

    /// Two serving threads' pools on one budget: a connection left idle in
    /// one is closed to make room for the other's request, instead of a 503
    /// until it idles out.
    #[tokio::test]
    async fn an_idle_connection_anywhere_makes_room_when_the_budget_is_spent() {
        let up = upstream(Script::KeepAlive).await;
        let budget = ConnectionBudget::new(1);
        let one = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let other = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        assert_eq!(get_ok(&one).await, "ok");
        assert_eq!(one.idle_count(), 1);
        assert_eq!(budget.open(), 1);
        assert_eq!(get_ok(&other).await, "ok", "served, not Busy");
        assert_eq!(one.idle_count(), 0, "the idle one was closed for it");
        eventually("the upstream sees the idle connection closed", || {
            up.closed_by_client.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(budget.open(), 1);
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        // And back: the other pool's idle connection makes room in turn.
        assert_eq!(get_ok(&one).await, "ok");
        assert_eq!((one.idle_count(), other.idle_count()), (1, 0));
    }

    /// Only idle connections are closed: one still carrying a response is
    /// not, and the request that found no room is refused at once.
    #[tokio::test]
    async fn a_connection_in_use_is_never_closed_to_make_room() {
        let up = upstream(Script::Large).await;
        let budget = ConnectionBudget::new(1);
        let one = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let other = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let res = one.send(get(), Instant::now()).await.unwrap();
        let started = Instant::now();
        let refused = other.send(get(), Instant::now()).await.err();
        assert!(matches!(refused, Some(SendError::Busy)), "{refused:?}");
        assert!(started.elapsed() < FREED_WAIT, "{:?}", started.elapsed());
        // The first response is whole.
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes().len(), 1 << 20);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    /// An idle connection still sending a request body (the upstream
    /// answered early) would give its place back only when the upload ends:
    /// the one closed to make room is the oldest that can close at once.
    #[tokio::test]
    async fn a_connection_still_uploading_is_not_the_one_closed_to_make_room() {
        let up = upstream(Script::KeepAlive).await;
        let budget = ConnectionBudget::new(2);
        let one = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let other = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let upload = endless_upload();
        let res = one.send(upload, Instant::now()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(get_ok(&one).await, "ok");
        assert_eq!((one.idle_count(), budget.open()), (2, 2));
        assert_eq!(get_ok(&other).await, "ok", "served, not Busy");
        // Had the upload's connection been closed first, its place would not
        // have come back, and the next round would have closed the other too.
        assert_eq!(one.idle_count(), 1, "the upload's connection is left alone");
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    }

    /// After a `101` hyper's part of the connection ends and gives its place
    /// back, but the socket lives on as a tunnel: the place the response
    /// carries keeps it counted until the tunnel is done with.
    #[tokio::test]
    async fn a_switched_connection_keeps_its_place_while_its_tunnel_lives() {
        let up = upstream(Script::Switch).await;
        let budget = ConnectionBudget::new(1);
        let pool = pool_in(&up.target, Duration::from_secs(30), budget.clone());
        let upgrade = Request::builder()
            .uri("/ws")
            .header("host", "upstream")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Body::empty())
            .unwrap();
        let mut res = pool.send(upgrade, Instant::now()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let place = res.extensions_mut().remove::<TunnelPlace>().expect("a place");
        let tunnel = hyper::upgrade::on(&mut res).await.expect("upgraded");
        // hyper's connection task has ended with the hand-over.
        eventually("only the tunnel's place is held", || budget.open() == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.open(), 1, "the tunnel's socket is still counted");
        let refused = pool.send(get(), Instant::now()).await.err();
        assert!(matches!(refused, Some(SendError::Busy)), "{refused:?}");
        drop((place, tunnel));
        assert_eq!(budget.open(), 0);
        eventually("the upstream sees the tunnel closed", || {
            up.closed_by_client.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn connections_close_when_the_pool_is_dropped() {
        let up = upstream(Script::KeepAlive).await;
        let pool = pool(&up.target, Duration::from_secs(30));
        assert_eq!(get_ok(&pool).await, "ok");
        drop(pool);
        eventually("the upstream sees the connection closed", || {
            up.closed_by_client.load(Ordering::SeqCst) == 1
        })
        .await;
    }
}
