//! What one accepted connection holds: a slot under the listener's
//! connection limit, its socket (plain or TLS), and how busy it is.
//!
//! Invariants:
//! - A connection counts against [`ConnectionLimit`] from `accept` until its
//!   socket is closed. The slot lives inside the [`Io`] that hyper owns, so an
//!   upgraded connection (WebSocket) keeps counting while it is spliced.
//! - A connection is idle when no request is in flight, and a request is in
//!   flight until its response body has been sent (or dropped) and its
//!   request body has arrived (or been dropped), not only until its headers
//!   are ready: an idle close never cuts a download short, nor an upload
//!   within `idle_timeout` of its answer.
//! - A client that stops reading what the socket takes (a write that cannot
//!   go on) gets `idle_timeout` without progress, in flight or not, then the
//!   connection is closed: a buffered tail is not lost to a shorter limit,
//!   and a client cannot hold a response open by not reading its socket
//!   (HTTP/2 flow control withheld is not caught: socket level only).
//!   Reading never moves the head and idle clock.

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

/// A cap on what one client address holds on a listener (its connections,
/// `server.max_connections_per_ip`; its TLS handshakes in progress), counted
/// by socket peer: an IPv4
/// address, or an IPv6 /64 (one host usually has a whole /64). Peers in
/// `server.trusted_proxies` are exempt (a front proxy carries many users).
///
/// The table only holds addresses with a connection open (an entry goes when
/// its count drops to 0), so it never has more entries than the listener has
/// connections.
#[derive(Debug)]
pub struct AddressLimit {
    listener: &'static str,
    /// What is counted, for the refusal metric and log: `connections_per_ip`
    /// or `tls_handshakes_per_ip`.
    limit: &'static str,
    max: usize,
    /// `server.trusted_proxies`; a reload replaces it ([`AddressLimit::set_exempt`]).
    exempt: arc_swap::ArcSwap<Vec<ipnet::IpNet>>,
    open: Mutex<HashMap<u128, usize>>,
}

impl AddressLimit {
    /// `max` connections per address on `listener`; `None` when `max` is 0 (off).
    pub fn new(listener: &'static str, max: usize, exempt: Vec<ipnet::IpNet>) -> Option<Arc<Self>> {
        Self::counting(listener, "connections_per_ip", max, exempt)
    }

    /// The same cap on something else an address holds (`limit` names it).
    pub fn counting(
        listener: &'static str,
        limit: &'static str,
        max: usize,
        exempt: Vec<ipnet::IpNet>,
    ) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(Self {
                listener,
                limit,
                max,
                exempt: arc_swap::ArcSwap::from_pointee(exempt),
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
        if self
            .exempt
            .load()
            .iter()
            .any(|net| net.contains(&ip.to_canonical()))
        {
            return Some(AddressSlot(None));
        }
        let key = Self::bucket(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            drop(open);
            crate::metrics::connection_refused(self.listener, self.limit);
            tracing::debug!(listener = self.listener, client = %ip, limit = self.max, kind = self.limit, "connection refused: this address holds as many as it may");
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }

    /// `ip`'s share under `limit`: `Some(None)` when there is no cap,
    /// `None` (counted) when the address holds the maximum already.
    pub fn share(limit: Option<&Arc<Self>>, ip: IpAddr) -> Option<Option<AddressSlot>> {
        match limit {
            None => Some(None),
            Some(limit) => limit.try_acquire(ip).map(Some),
        }
    }

    /// Exempts these peers from now on (a reloaded `server.trusted_proxies`);
    /// connections already open keep the place they have, or had none.
    pub fn set_exempt(&self, exempt: Vec<ipnet::IpNet>) {
        self.exempt.store(Arc::new(exempt));
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

/// The client's socket, telling the connection's [`Activity`] when a write
/// cannot go on and when it goes on again. Under TLS too (rustls writes
/// through it), so progress is seen per system call, not per TLS buffer.
pub(super) struct Watched {
    socket: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    pub(super) fn new(socket: TcpStream, activity: Arc<Activity>) -> Self {
        Self { socket, activity }
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_write(cx, buf);
        this.activity.output(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_write_vectored(cx, bufs);
        this.activity.output(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

/// The socket hyper serves: plain or TLS, holding the connection's slot.
pub(super) struct Io {
    stream: Stream,
    _slot: Slot,
    _address: Option<AddressSlot>,
}

enum Stream {
    Plain(Watched),
    Tls(Box<tokio_rustls::server::TlsStream<Watched>>),
}

impl Io {
    pub(super) fn plain(stream: Watched, slot: Slot, address: Option<AddressSlot>) -> Self {
        Self {
            stream: Stream::Plain(stream),
            _slot: slot,
            _address: address,
        }
    }

    pub(super) fn tls(
        stream: tokio_rustls::server::TlsStream<Watched>,
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

/// How busy one connection is: requests in flight, when the last one ended,
/// and whether its output waits for the client.
#[derive(Debug)]
pub(super) struct Activity {
    origin: Instant,
    /// Requests in flight: answers not yet sent (low 32 bits) and request
    /// bodies still arriving (high 32 bits), in one word so that one atomic
    /// operation moves either.
    in_flight: AtomicU64,
    /// Milliseconds after `origin` of the last change to idle (the end of
    /// the last request, the end of the TLS handshake, a GOAWAY): the clock
    /// of the head and idle limits, which output never moves.
    last_ms: AtomicU64,
    /// Milliseconds after `origin` of the start of the current wait for the
    /// client to read, or of the last progress after one.
    output_ms: AtomicU64,
    /// A write could not go on (the client is not reading) and has not
    /// progressed since.
    blocked: AtomicBool,
    /// A request has begun on this connection.
    served: AtomicBool,
    /// An HTTP/2 request has been seen: the head limit no longer applies.
    h2: AtomicBool,
    /// HTTP/2 answers waiting for hyper to take their next frame, by the
    /// watchdog's look (see [`Offers`]).
    offers: Mutex<Offers>,
}

/// HTTP/2 answers that hyper has not asked for their next frame (a new
/// answer, or one that just gave a frame). Over HTTP/2 the socket need not
/// block for an answer to wait: hyper asks only while the client's
/// flow-control window is open, and a client can keep reading its socket
/// (PINGs, SETTINGS) while it never opens the window, which would hold the
/// stream and its upstream connection for ever. The watchdog looks every
/// `idle_timeout` while HTTP/2 answers are in flight: an answer offered
/// before its previous look and still not taken has waited at least that
/// long (at most twice that). Counted per look rather than timed per
/// answer, so a frame costs no clock reading.
#[derive(Debug, Default)]
struct Offers {
    /// The looks so far (wrapping).
    look: u32,
    /// Answers offered since the last look and not yet taken.
    since: u32,
    /// Answers offered before the last look and not yet taken.
    before: u32,
}

/// Why a connection's watchdog ([`Activity::quiet`]) fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// No complete request head within `header_read_timeout`.
    NoHead,
    /// No request in flight for `idle_timeout`.
    Idle,
    /// Output waiting for the client without progress for `idle_timeout`.
    Stalled,
    /// A request body still arriving `idle_timeout` after its answer was
    /// sent.
    Upload,
    /// An HTTP/2 answer not taken for `idle_timeout` (up to twice that):
    /// the client keeps its flow-control window shut.
    Unread,
}

impl Quiet {
    /// Why the connection is dropped at once, for the log; `None` for
    /// [`Quiet::Idle`], which first closes gracefully.
    pub(super) fn hard_close(self) -> Option<&'static str> {
        match self {
            Quiet::NoHead => Some("no request head within header_read_timeout"),
            Quiet::Stalled => Some("the client read nothing for server.idle_timeout"),
            Quiet::Upload => Some("a request body still arriving server.idle_timeout after its answer"),
            Quiet::Unread => {
                Some("an HTTP/2 answer left unread (flow-control window kept shut) for server.idle_timeout")
            }
            Quiet::Idle => None,
        }
    }
}

/// One answer in flight (see [`Activity::in_flight`]).
const ANSWER: u64 = 1;
/// One request body in flight.
const UPLOAD: u64 = 1 << 32;
/// The answers' part of [`Activity::in_flight`].
const ANSWERS: u64 = UPLOAD - 1;

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            in_flight: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            output_ms: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            offers: Mutex::new(Offers::default()),
        })
    }

    /// A request (its head complete) begins; it is in flight until the
    /// returned guard drops.
    pub(super) fn begin(self: &Arc<Self>, version: http::Version) -> Busy {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(ANSWER, Ordering::SeqCst);
        Busy(self.clone(), ANSWER)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Restarts the idle clock. Requests end on several tasks: a late store
    /// never moves it back.
    pub(super) fn touch(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::SeqCst);
    }

    /// A write to the client could not go on (`waiting`) or went on. Only a
    /// change costs anything (a clock reading): the start of a wait and the
    /// first progress after it both restart the output clock (only the
    /// connection's own task writes, so one writer).
    #[inline]
    pub(super) fn output(&self, waiting: bool) {
        if waiting != self.blocked.load(Ordering::Relaxed) {
            self.output_ms.store(self.now_ms(), Ordering::SeqCst);
            self.blocked.store(waiting, Ordering::SeqCst);
        }
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An HTTP/2 answer waits for hyper to take its next frame; returns the
    /// look it was offered in, for [`Activity::taken`].
    fn offer(&self) -> u32 {
        let mut offers = self.offers();
        offers.since += 1;
        offers.look
    }

    /// Hyper asked for the next frame of an answer offered in `look` (or
    /// dropped it).
    fn taken(&self, look: u32) {
        let mut offers = self.offers();
        if look == offers.look {
            offers.since = offers.since.saturating_sub(1);
        } else {
            // Offered before the last look (never earlier: the look after
            // that would have reported it).
            offers.before = offers.before.saturating_sub(1);
        }
    }

    /// The watchdog's look: true when an answer offered before the previous
    /// look is still not taken.
    fn look(&self) -> bool {
        let mut offers = self.offers();
        if offers.before > 0 {
            return true;
        }
        offers.before = std::mem::take(&mut offers.since);
        offers.look = offers.look.wrapping_add(1);
        false
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.origin + Duration::from_millis(ms.load(Ordering::SeqCst))
    }

    /// Resolves once the connection has been quiet for too long:
    ///
    /// - Output waiting for the client (it is not reading) without progress
    ///   for `idle` (`server.idle_timeout`), whether requests are in flight
    ///   or not: [`Quiet::Stalled`].
    /// - With no request in flight, over HTTP/1 and before the first request
    ///   of any protocol: no complete request head for `head`
    ///   (`server.header_read_timeout`), or `idle` if that is shorter,
    ///   counted from the connection's start or the end of its last request
    ///   (so it also bounds an idle keep-alive connection, and trickling
    ///   bytes does not extend it): [`Quiet::NoHead`].
    /// - Once the connection speaks HTTP/2, no request in flight for `idle`:
    ///   [`Quiet::Idle`].
    /// - Over HTTP/2, an answer whose next frame hyper has not taken (the
    ///   client keeps its flow-control window shut) for between `idle` and
    ///   twice that: [`Quiet::Unread`] (see [`Offers`]).
    ///
    /// The end of an answer still waiting for its client when its request
    /// ended gets up to `idle` after that end instead, once: a client's
    /// reading never moves the head and idle clock, so reading slowly cannot
    /// stretch the time it has to send its next head (or, over HTTP/2,
    /// any request).
    ///
    /// One timer, which wakes only at its deadline: a request costs no timer
    /// of its own.
    pub(super) async fn quiet(&self, head: Duration, idle: Duration) -> Quiet {
        let mut next_look = Instant::now() + idle;
        loop {
            let blocked = self.blocked.load(Ordering::SeqCst);
            let stalled = blocked.then(|| (self.at(&self.output_ms) + idle, Quiet::Stalled));
            let in_flight = self.in_flight.load(Ordering::SeqCst);
            let quiet = if in_flight == 0 {
                let (limit, why) = if self.h2.load(Ordering::Relaxed) {
                    (idle, Quiet::Idle)
                } else {
                    (head.min(idle), Quiet::NoHead)
                };
                let tail = blocked && self.served.load(Ordering::Relaxed);
                Some((
                    self.at(&self.last_ms) + if tail { limit.max(idle) } else { limit },
                    why,
                ))
            } else if in_flight & ANSWERS == 0 {
                // Only request bodies still arriving, their answers sent: an
                // upload may go on after the upstream answered, for `idle`.
                Some((self.at(&self.last_ms) + idle, Quiet::Upload))
            } else {
                None
            };
            // HTTP/2 answers in flight: look at the ones not taken.
            let look = (in_flight & ANSWERS != 0 && self.h2.load(Ordering::Relaxed))
                .then_some((next_look, Quiet::Unread));
            // The earliest.
            let Some((deadline, why)) = stalled
                .into_iter()
                .chain(quiet)
                .chain(look)
                .min_by_key(|(at, _)| *at)
            else {
                // The end of the request (or a blocked write) sets the next
                // deadline; look again later.
                tokio::time::sleep(head.min(idle)).await;
                continue;
            };
            let now = Instant::now();
            if now < deadline {
                tokio::time::sleep_until(deadline).await;
            } else if why != Quiet::Unread || self.look() {
                return why;
            } else {
                next_look = now + idle;
            }
        }
    }
}

/// A request in flight (see [`Activity::begin`]): its answer, or its body.
#[derive(Debug)]
pub(super) struct Busy(Arc<Activity>, u64);

impl Busy {
    /// The same request's body, in flight until the returned guard drops;
    /// once the answer has been sent, for at most `idle_timeout` more.
    pub(super) fn upload(&self) -> Busy {
        self.0.in_flight.fetch_add(UPLOAD, Ordering::SeqCst);
        Busy(self.0.clone(), UPLOAD)
    }
}

impl Drop for Busy {
    /// The last answer out, and any body after it, restarts the idle clock
    /// (before leaving, so the watchdog never sees the connection idle with
    /// an old clock).
    fn drop(&mut self) {
        let (activity, unit) = (&self.0, self.1);
        let mut n = activity.in_flight.load(Ordering::SeqCst);
        loop {
            if (n - unit) & ANSWERS == 0 {
                activity.touch();
            }
            match activity
                .in_flight
                .compare_exchange(n, n - unit, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => n = now,
            }
        }
    }
}

/// A body (a response's, or a request's that is still to come) that keeps
/// its request in flight until it has ended or is dropped: until hyper has
/// sent the response, until the request body has arrived (an upload may go on
/// after the upstream answered). Size and end are passed through, so a body
/// with a known length still gets a `content-length`.
pub(super) struct Tracked<B> {
    inner: B,
    busy: Option<Busy>,
    /// An HTTP/2 answer: offered to hyper (see [`Offers`]) whenever it may
    /// take the next frame.
    h2: bool,
    /// The watchdog's look this answer was offered in, until hyper takes it.
    offered: Option<u32>,
    /// What is left of an HTTP/2 answer's data frame cut into [`PIECE`]s.
    rest: Option<bytes::Bytes>,
}

impl<B> Tracked<B> {
    /// A request body, or an HTTP/1 answer (whose client, when it does not
    /// read, blocks the socket: see [`Watched`]).
    pub(super) fn new(inner: B, busy: Busy) -> Self {
        Self::answer(inner, busy, false)
    }

    /// An answer over HTTP/2: also offered to hyper until it asks for a
    /// frame, so that the watchdog sees a client that keeps its window shut.
    pub(super) fn answer(inner: B, busy: Busy, h2: bool) -> Self {
        let offered = h2.then(|| busy.0.offer());
        Self {
            inner,
            busy: Some(busy),
            h2,
            offered,
            rest: None,
        }
    }

    /// The next [`PIECE`] of a chunk too large to hand to hyper whole, the
    /// rest kept for the next poll. A copy: what h2 holds while the
    /// client's window is shut (the last pieces of an answer, after it has
    /// ended here) never keeps a whole upstream chunk's memory alive.
    fn piece_of(&mut self, mut chunk: bytes::Bytes) -> http_body::Frame<bytes::Bytes> {
        if chunk.len() > PIECE {
            self.rest = Some(chunk.split_off(PIECE));
        }
        http_body::Frame::data(bytes::Bytes::copy_from_slice(&chunk))
    }

    fn take_offer(&mut self) {
        if let (Some(look), Some(busy)) = (self.offered.take(), &self.busy) {
            busy.0.taken(look);
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.take_offer();
    }
}

/// The most of an HTTP/2 answer handed to hyper at once. Hyper asks for
/// frame N+1 as soon as it has handed frame N to h2, and h2 lets it only
/// once the client's window has let frame N-1 out (buffered data counts
/// against the window); a chunk read from the upstream can be hundreds of
/// KiB while the client is slow. Cut into pieces, an answer needs only a
/// little more than this much progress per `idle_timeout` not to count as
/// unread (see [`Offers`]), however large the upstream's chunks, and what h2
/// holds unsent for a stream is at most two pieces. HTTP/2's default frame
/// size.
const PIECE: usize = 16 * 1024;

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.take_offer();
        let frame = match this.rest.take() {
            Some(rest) => this.piece_of(rest),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if this.h2 => match frame.into_data() {
                    Ok(data) if data.len() > PIECE => this.piece_of(data),
                    Ok(data) => http_body::Frame::data(data),
                    Err(frame) => frame,
                },
                Poll::Ready(Some(Ok(frame))) => frame,
                // Waiting for the upstream, not for the client.
                Poll::Pending => return Poll::Pending,
                ended => {
                    this.busy = None;
                    return ended;
                }
            },
        };
        if http_body::Body::is_end_stream(this) {
            // A reader may stop at the end without polling once more.
            this.busy = None;
        } else if this.h2 {
            // Hyper takes the next frame when the client's window allows.
            this.offered = this.busy.as_ref().map(|b| b.0.offer());
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let n = rest.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(n));
            }
            hint.set_lower(hint.lower().saturating_add(n));
        }
        hint
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
    fn a_reloaded_trusted_proxy_list_applies_to_new_connections() {
        let limit = AddressLimit::new("test", 1, Vec::new()).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = limit.try_acquire(ip("10.1.2.3")).unwrap();
        assert!(limit.try_acquire(ip("10.1.2.3")).is_none());
        limit.set_exempt(vec!["10.0.0.0/8".parse().unwrap()]);
        let more: Vec<_> = (0..3)
            .map(|_| limit.try_acquire(ip("10.1.2.3")).unwrap())
            .collect();
        limit.set_exempt(Vec::new());
        assert!(limit.try_acquire(ip("10.1.2.3")).is_none(), "counted again");
        drop((first, more));
        assert_eq!(limit.tracked(), 0);
        assert!(limit.try_acquire(ip("10.1.2.3")).is_some());
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

        // An idle limit shorter than the head limit bounds the head too
        // (a hard close, not a GOAWAY that a trickling client ignores).
        let activity = Activity::new();
        let born = Instant::now();
        assert_eq!(
            activity
                .quiet(Duration::from_secs(10), Duration::from_millis(100))
                .await,
            Quiet::NoHead
        );
        assert!(born.elapsed() < Duration::from_secs(2), "{:?}", born.elapsed());
    }

    /// Starts the watchdog of `activity` while its output waits for the
    /// client, which then reads a little every `every`, `times` times, and
    /// leaves it waiting again.
    async fn watched_while_read_slowly(
        activity: &Arc<Activity>,
        head: Duration,
        idle: Duration,
        every: Duration,
        times: usize,
    ) -> tokio::task::JoinHandle<Quiet> {
        activity.output(true);
        let watch = activity.clone();
        let quiet = tokio::spawn(async move { watch.quiet(head, idle).await });
        for _ in 0..times {
            tokio::time::sleep(every).await;
            activity.output(false);
            activity.output(true);
        }
        quiet
    }

    #[tokio::test]
    async fn output_the_client_does_not_read_is_bounded_by_the_idle_limit() {
        let (head, idle) = (Duration::from_millis(100), Duration::from_millis(400));
        let within = |t: Duration, from: Duration, to: Duration| {
            assert!((from..to).contains(&t), "{t:?} not in {from:?}..{to:?}");
        };

        // In flight: a client that reads nothing of a response is dropped
        // `idle` after the last progress; reading renews it.
        let activity = Activity::new();
        let busy = activity.begin(http::Version::HTTP_11);
        let quiet = watched_while_read_slowly(&activity, head, idle, Duration::from_millis(250), 3).await;
        let last_progress = Instant::now();
        assert_eq!(quiet.await.unwrap(), Quiet::Stalled);
        within(
            last_progress.elapsed(),
            idle - Duration::from_millis(50),
            idle * 3,
        );

        // The end of an answer still waiting once its request ended gets
        // `idle` after that end (not `head`), and reading does not renew it:
        // reading slowly cannot stretch the time to send the next head.
        activity.output(false);
        drop(busy);
        let ended = Instant::now();
        let quiet = watched_while_read_slowly(&activity, head, idle, Duration::from_millis(150), 4).await;
        assert_eq!(quiet.await.unwrap(), Quiet::NoHead);
        within(ended.elapsed(), idle - Duration::from_millis(50), idle * 2);

        // Before any request (HTTP/2 control frames a client does not read):
        // no allowance, the head limit holds.
        let activity = Activity::new();
        let born = Instant::now();
        activity.output(true);
        assert_eq!(activity.quiet(head, idle).await, Quiet::NoHead);
        within(born.elapsed(), head, idle);
    }

    #[tokio::test]
    async fn a_request_body_keeps_its_request_in_flight_until_it_ends() {
        use http_body_util::BodyExt as _;
        let activity = Activity::new();
        let busy = activity.begin(http::Version::HTTP_11);
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let mut body = Tracked::new(axum::body::Body::from_stream(chunks), busy.upload());
        drop(busy); // the answer has been sent
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), UPLOAD);
        tx.send(bytes::Bytes::from_static(b"x")).await.unwrap();
        assert!(body.frame().await.is_some());
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), UPLOAD);
        // Not cut at the head limit, but bounded once answered.
        let answered = Instant::now();
        let (head, idle) = (Duration::from_millis(100), Duration::from_millis(400));
        assert_eq!(activity.quiet(head, idle).await, Quiet::Upload);
        let took = answered.elapsed();
        assert!(
            took >= idle - Duration::from_millis(50) && took < idle * 3,
            "{took:?}"
        );
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(
            activity.in_flight.load(Ordering::SeqCst),
            0,
            "released at its end"
        );
        drop(body);
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0, "once");
    }

    #[tokio::test]
    async fn an_http2_answer_left_untaken_is_bounded_by_the_idle_limit() {
        use http_body_util::BodyExt as _;
        let (head, idle) = (Duration::from_millis(100), Duration::from_millis(300));
        let activity = Activity::new();
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let mut answer = Tracked::answer(
            axum::body::Body::from_stream(chunks),
            activity.begin(http::Version::HTTP_2),
            true,
        );
        let watch = activity.clone();
        let mut quiet = tokio::spawn(async move { watch.quiet(head, idle).await });

        // Taken a frame at a time (the client opens its window now and
        // then), then waiting for its upstream: not cut in four idle times.
        for _ in 0..4 {
            tokio::time::sleep(idle / 2).await;
            tx.send(bytes::Bytes::from_static(b"x")).await.unwrap();
            assert!(answer.frame().await.is_some());
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(10), answer.frame())
                .await
                .is_err(),
            "waits for its upstream"
        );
        tokio::time::sleep(idle * 2).await;
        assert!(!quiet.is_finished());

        // A frame taken, the next never asked for (the window stays shut).
        tx.send(bytes::Bytes::from_static(b"x")).await.unwrap();
        assert!(answer.frame().await.is_some());
        let offered = Instant::now();
        let why = tokio::time::timeout(idle * 4, &mut quiet)
            .await
            .expect("the watchdog sees the untaken answer")
            .unwrap();
        assert_eq!(why, Quiet::Unread);
        let took = offered.elapsed();
        assert!(
            took >= idle - Duration::from_millis(50) && took < idle * 3,
            "{took:?}"
        );

        // An answer dropped (its stream reset) no longer waits; an HTTP/1
        // answer is never offered (its socket blocks instead).
        let activity = Activity::new();
        let answer = Tracked::answer(
            axum::body::Body::from("x"),
            activity.begin(http::Version::HTTP_2),
            true,
        );
        assert_eq!(activity.offers().since, 1);
        drop(answer);
        assert_eq!(activity.offers().since, 0);
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0);
        let answer = Tracked::answer(
            axum::body::Body::from("x"),
            activity.begin(http::Version::HTTP_11),
            false,
        );
        assert_eq!(activity.offers().since, 0);
        drop(answer);
    }

    #[tokio::test]
    async fn an_http2_answer_goes_to_hyper_in_pieces() {
        use http_body::Body as _;
        use http_body_util::BodyExt as _;
        let activity = Activity::new();
        let whole = bytes::Bytes::from(vec![7u8; 2 * PIECE + 100]);
        let mut answer = Tracked::answer(
            http_body_util::Full::new(whole.clone()),
            activity.begin(http::Version::HTTP_2),
            true,
        );
        assert_eq!(answer.size_hint().exact(), Some(whole.len() as u64));
        let mut got = Vec::new();
        while let Some(frame) = answer.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= PIECE);
            got.push(data.len());
            let left = (whole.len() - got.iter().sum::<usize>()) as u64;
            assert_eq!(answer.size_hint().exact(), Some(left));
            assert_eq!(answer.is_end_stream(), left == 0);
            // Between pieces: in flight, and offered for the next one.
            if left > 0 {
                assert_eq!(activity.in_flight.load(Ordering::SeqCst), ANSWER);
                assert_eq!(activity.offers().since, 1);
            }
        }
        assert_eq!(got, [PIECE, PIECE, 100]);
        assert_eq!(
            activity.in_flight.load(Ordering::SeqCst),
            0,
            "released at its end"
        );
        assert_eq!(activity.offers().since, 0);

        // A streamed answer whose end comes with its trailers: every byte
        // in order, the trailers after the last piece, released at the end.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<_, std::convert::Infallible>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from(vec![1u8; PIECE + 1]))),
            Ok(http_body::Frame::data(bytes::Bytes::from(vec![2u8; 10]))),
            Ok(http_body::Frame::trailers(trailers.clone())),
        ];
        let mut answer = Tracked::answer(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            activity.begin(http::Version::HTTP_2),
            true,
        );
        let (mut data, mut got_trailers) = (Vec::new(), None);
        while let Some(frame) = answer.frame().await {
            match frame.unwrap().into_data() {
                Ok(piece) => data.extend_from_slice(&piece),
                Err(frame) => got_trailers = frame.into_trailers().ok(),
            }
        }
        let mut expected = vec![1u8; PIECE + 1];
        expected.extend([2u8; 10]);
        assert_eq!(data, expected);
        assert_eq!(got_trailers, Some(trailers));
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(activity.offers().since, 0);

        // Over HTTP/1 the frame goes whole.
        let mut answer = Tracked::answer(
            http_body_util::Full::new(whole.clone()),
            activity.begin(http::Version::HTTP_11),
            false,
        );
        let frame = answer.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), whole.len());
        assert!(answer.is_end_stream());
    }
}
