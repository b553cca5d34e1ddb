//! Bounds on how slowly a request body may arrive (`server.body_read_timeout`).
//!
//! A request counts as in flight while its body arrives, so neither
//! `header_read_timeout` nor `idle_timeout` applies then; without a bound, a
//! client trickling a body holds its connection slot for as long as it likes.
//!
//! - Every request body is read with an inactivity bound ([`BodyTimer::gap`]):
//!   no body bytes for `body_read_timeout` and the body fails. This is what
//!   proxied uploads get: they may be long and slow, but not stalled.
//! - The portal and admin routers, whose bodies are small, add a deadline for
//!   the whole body ([`BodyTimer::deadline`], counted from the request head).
//!
//! Either way the timer is marked expired; the listener then answers `408`
//! (whatever the handler or the proxy made of the failed body) and closes the
//! connection ([`timed_out`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, ErrorCode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a timed-out body fails with.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received within server.body_read_timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

/// One request's body clock: inserted as a request extension by the listener
/// for every request with a body.
#[derive(Debug, Clone)]
pub struct BodyTimer {
    timeout: Duration,
    started: Instant,
    expired: Arc<AtomicBool>,
}

impl BodyTimer {
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            started: Instant::now(),
            expired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a body bound of this request ran out.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// `body`, failing once no bytes came for the timeout.
    pub(super) fn gap<B>(&self, body: B) -> TimedBody<B> {
        TimedBody {
            inner: body,
            sleep: None,
            armed: false,
            mode: Mode::Gap(self.timeout),
            expired: self.expired.clone(),
            failed: false,
        }
    }

    /// `body`, failing unless it has all arrived within the timeout of the
    /// request head.
    pub fn deadline<B>(&self, body: B) -> TimedBody<B> {
        TimedBody {
            inner: body,
            sleep: None,
            armed: false,
            mode: Mode::Deadline(self.started + self.timeout),
            expired: self.expired.clone(),
            failed: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// At most this long between frames.
    Gap(Duration),
    /// Everything by then.
    Deadline(Instant),
}

/// A request body under a [`BodyTimer`]. The timer is only allocated once the
/// body has to be waited for.
pub struct TimedBody<B> {
    inner: B,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is set for the current wait.
    armed: bool,
    mode: Mode,
    expired: Arc<AtomicBool>,
    /// Timed out: every further poll fails too.
    failed: bool,
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Mode::Gap(_) = this.mode {
                // Progress: the next wait gets a fresh gap.
                this.armed = false;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = match this.mode {
            Mode::Gap(gap) => Instant::now() + gap,
            Mode::Deadline(at) => at,
        };
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if !this.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => this.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.armed = true;
        ready!(sleep.as_mut().poll(cx));
        this.expired.store(true, Ordering::Relaxed);
        this.failed = true;
        Poll::Ready(Some(Err(BodyTimedOut.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `path` is an API path (`/api/...`, or `/<prefix>/api/...` as the
/// portal's `/_portcullis/api/v1/authn`), answered with JSON errors.
pub(super) fn is_api_path(path: &str) -> bool {
    let mut segments = path.split('/').skip(1);
    segments.next() == Some("api") || segments.next() == Some("api")
}

/// The answer to a request whose body did not arrive in time: an Okta error
/// for API paths, a line of text otherwise; HTTP/1 connections are closed
/// after it (the rest of the body is not worth waiting for).
pub(super) fn timed_out(api: bool, version: http::Version) -> axum::response::Response {
    let mut res = if api {
        let mut res = ApiError::new(ErrorCode::E0000003)
            .cause("The request body did not arrive in time.")
            .into_response();
        *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
        res
    } else {
        let mut res = (StatusCode::REQUEST_TIMEOUT, "request body timed out\n").into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    };
    if version < http::Version::HTTP_2 {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn trickle(every: Duration, chunks: usize) -> axum::body::Body {
        let stream = futures_util::stream::unfold(0usize, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), i + 1))
        });
        axum::body::Body::from_stream(stream)
    }

    #[test]
    fn api_paths() {
        assert!(is_api_path("/api/v1/users"));
        assert!(is_api_path("/_portcullis/api/v1/authn"));
        assert!(!is_api_path("/_portcullis/login"));
        assert!(!is_api_path("/upload/files/api/x"));
        assert!(!is_api_path("/apis"));
    }

    #[tokio::test]
    async fn a_gap_resets_on_progress_and_fails_a_stall() {
        let timer = BodyTimer::new(Duration::from_millis(300));
        // 6 chunks 150 ms apart: 900 ms in all, never 300 ms without progress.
        let body = timer.gap(trickle(Duration::from_millis(150), 6));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 6);
        assert!(!timer.expired());
        let body = timer.gap(trickle(Duration::from_millis(500), 2));
        assert!(body.collect().await.is_err());
        assert!(timer.expired());
    }

    #[tokio::test]
    async fn a_deadline_bounds_the_whole_body() {
        let timer = BodyTimer::new(Duration::from_millis(500));
        let body = timer.deadline(trickle(Duration::from_millis(100), 3));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
        let timer = BodyTimer::new(Duration::from_millis(500));
        let started = Instant::now();
        let err = timer
            .deadline(trickle(Duration::from_millis(100), 20))
            .collect()
            .await
            .unwrap_err();
        assert!(err.is::<BodyTimedOut>());
        assert!(timer.expired());
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_millis(1000));
    }
}
