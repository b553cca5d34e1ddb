//! What one accepted connection holds: a slot under the listener's
//! connection limit, its socket (plain or TLS), and how busy it is.
//!
//! Invariants:
//! - A connection counts against [`ConnectionLimit`] from `accept` until its
//!   socket is closed. The slot lives inside the [`Io`] that hyper owns, so an
//!   upgraded connection (WebSocket) keeps counting while it is spliced.
//! - A connection is idle when no request is in flight, and a request is in
//!   flight until its response body has been sent (or dropped), not only
//!   until its headers are ready: an idle close never cuts a download short.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connections being refused (answered 503) at once per listener, beyond
/// which new ones over the limit are closed without an answer.
const MAX_REFUSING: usize = 64;

/// How long a refusal may take: write the 503, then read what the client
/// sent until it closes (closing with unread data would reset the
/// connection and lose the answer).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What an over-limit plain-HTTP client gets.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// A cap on things open at once (connections, TLS handshakes), shared by
/// every thread serving one listener.
#[derive(Debug)]
pub struct ConnectionLimit {
    listener: &'static str,
    kind: &'static str,
    max: usize,
    open: AtomicUsize,
    refusing: AtomicUsize,
    /// Set when the limit was hit, cleared once usage falls to 90 %: one
    /// warning per episode instead of one per refused connection.
    saturated: AtomicBool,
}

impl ConnectionLimit {
    /// A limit of `max` (at least 1) on `kind` (`connections`,
    /// `tls_handshakes`) of `listener` (`main`, `admin`), as logs and
    /// metrics name them.
    pub fn new(listener: &'static str, kind: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            listener,
            kind,
            max: max.max(1),
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            saturated: AtomicBool::new(false),
        })
    }

    /// How many are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot, or `None` (counted and logged) when all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= self.max {
                crate::metrics::connection_refused(self.listener, self.kind);
                if !self.saturated.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        listener = self.listener,
                        limit = self.max,
                        "{} limit reached; refusing new ones until some close",
                        self.kind
                    );
                }
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    fn try_refuse(self: &Arc<Self>) -> Option<Refusing> {
        let n = self.refusing.fetch_add(1, Ordering::AcqRel);
        let permit = Refusing(self.clone());
        (n < MAX_REFUSING).then_some(permit)
    }
}

/// One taken place under a [`ConnectionLimit`], given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        let limit = &self.0;
        let before = limit.open.fetch_sub(1, Ordering::AcqRel);
        if limit.saturated.load(Ordering::Relaxed)
            && before.saturating_sub(1) <= limit.max / 10 * 9
            && limit.saturated.swap(false, Ordering::Relaxed)
        {
            tracing::info!(
                listener = limit.listener,
                limit = limit.max,
                open = before - 1,
                "{} below the limit again",
                limit.kind
            );
        }
    }
}

struct Refusing(Arc<ConnectionLimit>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cap on the connections one client address holds open on a listener
/// (`server.max_connections_per_ip`), counted by socket peer: an IPv4
/// address, or an IPv6 /64 (one host usually has a whole /64). Peers in
/// `server.trusted_proxies` are exempt (a front proxy carries many users).
///
/// The table only holds addresses with a connection open (an entry goes when
/// its count drops to 0), so it never has more entries than the listener has
/// connections.
#[derive(Debug)]
pub struct AddressLimit {
    listener: &'static str,
    max: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<HashMap<u128, usize>>,
}

impl AddressLimit {
    /// `max` connections per address on `listener`; `None` when `max` is 0 (off).
    pub fn new(listener: &'static str, max: usize, exempt: Vec<ipnet::IpNet>) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(Self {
                listener,
                max,
                exempt,
                open: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The table key of `ip`: IPv4 as its IPv4-mapped form, IPv6 cut to its
    /// /64 (whose low half is zero, so the two never collide).
    fn bucket(ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
        }
    }

    /// Takes a place for a connection from `ip`, or `None` (counted) when
    /// that address already holds the maximum.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.exempt.iter().any(|net| net.contains(&ip.to_canonical())) {
            return Some(AddressSlot(None));
        }
        let key = Self::bucket(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            drop(open);
            crate::metrics::connection_refused(self.listener, "connections_per_ip");
            tracing::debug!(listener = self.listener, client = %ip, limit = self.max, "connection refused: server.max_connections_per_ip reached for this address");
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }

    /// Addresses with a connection open (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One connection's place under an [`AddressLimit`] (empty for an exempt
/// peer), given back on drop.
#[derive(Debug)]
pub struct AddressSlot(Option<(Arc<AddressLimit>, u128)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((limit, key)) = self.0.take() else {
            return;
        };
        let mut open = limit.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Turns away a connection accepted over the limit. Plain HTTP gets a short
/// `503` (bounded in number and time); TLS is closed at once, since answering
/// would need the handshake the limit is there to save.
pub(super) fn refuse(stream: TcpStream, limit: &Arc<ConnectionLimit>, tls: bool) {
    if tls {
        return;
    }
    let Some(permit) = limit.try_refuse() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            if stream.write_all(BUSY).await.is_err() {
                return;
            }
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 2048];
            let mut read = 0usize;
            while read < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
    });
}

/// The socket hyper serves: plain or TLS, holding the connection's slot.
pub(super) struct Io {
    stream: Stream,
    _slot: Slot,
    _address: Option<AddressSlot>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    pub(super) fn plain(stream: TcpStream, slot: Slot, address: Option<AddressSlot>) -> Self {
        Self {
            stream: Stream::Plain(stream),
            _slot: slot,
            _address: address,
        }
    }

    pub(super) fn tls(
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        slot: Slot,
        address: Option<AddressSlot>,
    ) -> Self {
        Self {
            stream: Stream::Tls(Box::new(stream)),
            _slot: slot,
            _address: address,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How busy one connection is: requests in flight and when the last one
/// ended.
#[derive(Debug)]
pub(super) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `origin` of the last change to idle.
    last_ms: AtomicU64,
    started: AtomicBool,
    /// An HTTP/2 request has been seen: the head limit no longer applies.
    h2: AtomicBool,
}

/// Why a connection's watchdog ([`Activity::quiet`]) fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// No complete request head within `header_read_timeout`.
    NoHead,
    /// No request in flight for `idle_timeout`.
    Idle,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            started: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        })
    }

    /// A request (its head complete) begins; it is in flight until the
    /// returned guard drops.
    pub(super) fn begin(self: &Arc<Self>, version: http::Version) -> Busy {
        self.started.store(true, Ordering::Relaxed);
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether any request has arrived yet.
    #[cfg(test)]
    pub(super) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Restarts the idle clock.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::SeqCst);
    }

    /// Since when the connection has been idle; `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| self.origin + Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }

    /// Resolves once the connection has had no request in flight for too
    /// long: `head` (`server.header_read_timeout`) over HTTP/1 and before
    /// the first request of any protocol, the time a client has to send a
    /// complete request head, counted from the connection's start or the
    /// end of its last request (so it also bounds an idle keep-alive
    /// connection, and trickling bytes does not extend it); `idle`
    /// (`server.idle_timeout`) when that is shorter, or once the connection
    /// speaks HTTP/2. One timer, which wakes only at its deadline: a request
    /// costs no timer of its own.
    pub(super) async fn quiet(&self, head: Duration, idle: Duration) -> Quiet {
        loop {
            let (limit, why) = if self.h2.load(Ordering::Relaxed) || idle < head {
                (idle, Quiet::Idle)
            } else {
                (head, Quiet::NoHead)
            };
            match self.idle_since() {
                Some(since) => {
                    let deadline = since + limit;
                    if Instant::now() >= deadline {
                        return why;
                    }
                    tokio::time::sleep_until(deadline).await;
                }
                // The end of the request restarts the clock; look again later.
                None => tokio::time::sleep(limit).await,
            }
        }
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight until hyper is done
/// with it (sent or dropped). Size and end are passed through, so a body
/// with a known length still gets a `content-length`.
pub(super) struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl Tracked {
    pub(super) fn new(inner: axum::body::Body, busy: Busy) -> Self {
        Self { inner, _busy: busy }
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Raises this process's open-file soft limit to its hard limit and logs
/// the result; warns when `max_connections` (each of which may hold an
/// upstream connection too) does not fit. Returns the soft limit, if known.
pub fn raise_open_files_limit(max_connections: usize) -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok();
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            before.map(|(soft, _)| soft)?
        }
    };
    let hard = rlimit::Resource::NOFILE.get().ok().map(|(_, hard)| hard);
    tracing::info!(
        soft = soft,
        hard = ?hard,
        was = ?before.map(|(soft, _)| soft),
        "open-file limit (RLIMIT_NOFILE)"
    );
    // Client connection + its upstream connection each, the admin listener's
    // budget, and some for the store, logs and delivery.
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(crate::config::defaults::ADMIN_MAX_CONNECTIONS as u64)
        .saturating_add(256);
    if needed > soft {
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            "server.max_connections may need about {needed} descriptors (one per client and one per upstream connection) but the open-file limit is {soft}; lower server.max_connections or raise the hard limit (e.g. LimitNOFILE= in the systemd unit)"
        );
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_refuses_when_full_and_recovers() {
        let limit = ConnectionLimit::new("test", "connections", 2);
        let a = limit.try_acquire().unwrap();
        let b = limit.try_acquire().unwrap();
        assert_eq!(limit.open(), 2);
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert_eq!(limit.open(), 1);
        let c = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn an_address_limit_counts_per_address_and_forgets_closed_ones() {
        let exempt = vec!["10.0.0.0/8".parse().unwrap()];
        let limit = AddressLimit::new("test", 2, exempt).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = limit.try_acquire(ip("192.0.2.1")).unwrap();
        let b = limit.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(limit.try_acquire(ip("192.0.2.1")).is_none());
        // The IPv4-mapped form is the same address.
        assert!(limit.try_acquire(ip("::ffff:192.0.2.1")).is_none());
        let other = limit.try_acquire(ip("192.0.2.2")).unwrap();
        // One IPv6 /64 is one client.
        let v6 = limit.try_acquire(ip("2001:db8::1")).unwrap();
        let v6b = limit.try_acquire(ip("2001:db8::ffff:1")).unwrap();
        assert!(limit.try_acquire(ip("2001:db8::2")).is_none());
        assert!(limit.try_acquire(ip("2001:db8:0:1::2")).is_some());
        // Trusted proxies are not capped and not tracked.
        let proxied: Vec<_> = (0..5)
            .map(|_| limit.try_acquire(ip("10.1.2.3")).unwrap())
            .collect();
        assert_eq!(limit.tracked(), 3);
        drop(a);
        let c = limit.try_acquire(ip("192.0.2.1")).unwrap();
        drop((b, c, other, v6, v6b, proxied));
        assert_eq!(limit.tracked(), 0, "entries go when their count drops to 0");
        assert!(AddressLimit::new("test", 0, Vec::new()).is_none(), "0 is off");
    }

    #[test]
    fn refusals_are_bounded() {
        let limit = ConnectionLimit::new("test", "connections", 1);
        let held: Vec<_> = (0..MAX_REFUSING).map(|_| limit.try_refuse().unwrap()).collect();
        assert!(limit.try_refuse().is_none());
        drop(held);
        assert!(limit.try_refuse().is_some());
    }

    #[tokio::test]
    async fn idle_waits_for_requests_in_flight() {
        let activity = Activity::new();
        let busy = activity.begin(http::Version::HTTP_2);
        let (head, idle) = (Duration::from_secs(10), Duration::from_millis(200));
        // Busy for longer than the idle time: never idle meanwhile.
        assert!(
            tokio::time::timeout(Duration::from_millis(600), activity.quiet(head, idle))
                .await
                .is_err()
        );
        drop(busy);
        let ended = Instant::now();
        assert_eq!(activity.quiet(head, idle).await, Quiet::Idle);
        assert!(ended.elapsed() >= idle);
        assert!(ended.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_head_limit_holds_before_the_first_request_and_over_http1_only() {
        let (head, idle) = (Duration::from_millis(150), Duration::from_millis(450));
        let activity = Activity::new();
        let born = Instant::now();
        assert!(!activity.started());
        assert_eq!(activity.quiet(head, idle).await, Quiet::NoHead);
        assert!((head..idle).contains(&born.elapsed()), "{:?}", born.elapsed());

        // HTTP/1: counted from the end of the last request.
        drop(activity.begin(http::Version::HTTP_11));
        let ended = Instant::now();
        assert_eq!(activity.quiet(head, idle).await, Quiet::NoHead);
        assert!((head..idle).contains(&ended.elapsed()), "{:?}", ended.elapsed());

        // HTTP/2 streams come and go: only the idle limit applies.
        drop(activity.begin(http::Version::HTTP_2));
        let ended = Instant::now();
        assert_eq!(activity.quiet(head, idle).await, Quiet::Idle);
        assert!(ended.elapsed() >= idle);

        // An idle limit shorter than the head limit comes first.
        let activity = Activity::new();
        assert_eq!(
            activity
                .quiet(Duration::from_secs(10), Duration::from_millis(100))
                .await,
            Quiet::Idle
        );
    }
}
