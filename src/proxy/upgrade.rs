//! Splicing an upgraded (WebSocket) connection between client and upstream.
//!
//! Invariant: a splice starts only after the upstream answered `101 Switching
//! Protocols` to a request that asked to upgrade and whose connection can upgrade
//! (hyper put an `OnUpgrade` in its extensions). Anything else is an ordinary
//! response and no bytes ever flow outside HTTP framing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Waits for both sides to finish switching protocols, then copies bytes both
/// ways until either side closes, no byte has crossed in either direction for
/// `idle` (as nginx's `proxy_read_timeout` ends a quiet WebSocket; the
/// connection's own watchdog ended with hyper's part of it), or the listener
/// that accepted the client has drained (`drained`): upgraded connections are
/// outside hyper's graceful shutdown, so they end when the drain does. Runs on
/// its own task so the 101 can be sent. `place` is the upstream socket's
/// place in the connection budget, held for as long as the tunnel is open.
#[allow(clippy::too_many_arguments)]
pub fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    upstream_name: metrics::SharedString,
    errors: crate::metrics::UpstreamErrors,
    request_id: crate::context::RequestId,
    drained: Option<crate::server::Drained>,
    idle: Duration,
    place: Option<super::pool::TunnelPlace>,
) {
    tokio::spawn(async move {
        // Given back when the tunnel ends, however it ends.
        let _place = place;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::warn!(upstream = %upstream_name, %request_id, %error, "upgrade failed before splicing");
                errors.count(crate::metrics::UpstreamError::Upgrade);
                return;
            }
        };
        let crossed = LastCrossing::new();
        let mut client = Counted(TokioIo::new(client), crossed.clone());
        let mut upstream = Counted(TokioIo::new(upstream), crossed.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let idled = crossed.outlasting(idle);
        let drain = async {
            match drained {
                Some(d) => d.wait().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = copy => r,
            () = idled => {
                tracing::debug!(upstream = %upstream_name, %request_id, "closing an upgraded connection quiet for idle_timeout");
                return;
            }
            () = drain => {
                tracing::debug!(upstream = %upstream_name, %request_id, "closing an upgraded connection at shutdown");
                return;
            }
        };
        match result {
            Ok((to_upstream, to_client)) => {
                tracing::debug!(upstream = %upstream_name, %request_id, to_upstream, to_client, "upgraded connection closed");
            }
            // Resets on either side are the normal end of many WebSockets.
            Err(error) => {
                tracing::debug!(upstream = %upstream_name, %request_id, %error, "upgraded connection ended with an error");
            }
        }
    });
}

/// When a byte last crossed a tunnel, either way.
#[derive(Clone)]
struct LastCrossing {
    origin: Instant,
    /// Milliseconds after `origin`.
    last_ms: Arc<AtomicU64>,
}

impl LastCrossing {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends once nothing has crossed for `idle` (looked at when the last
    /// crossing would have run out, so a busy tunnel costs no timer per byte).
    async fn outlasting(&self, idle: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let Some(until) = last.checked_add(idle) else {
                return std::future::pending().await;
            };
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// One side of a tunnel, noting each byte read from it.
struct Counted<T>(T, LastCrossing);

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.1.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
