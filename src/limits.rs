//! Bounds on what an unauthenticated client can make the gateway hold:
//! request bodies, login names, and how many sign-in transactions one
//! address may open.
//!
//! - Bodies: the portal (forms, authentication and self-service JSON API) reads
//!   at most [`PORTAL_BODY_LIMIT`] bytes, the admin listener at most
//!   [`ADMIN_BODY_LIMIT`]; a larger body is answered 413 with an Okta error
//!   object before any handler runs ([`body_limit`]). The whole body must also
//!   arrive within `server.body_read_timeout` of the request head (else `408`,
//!   see [`crate::server::BodyTimer`]).
//! - Logins: a login longer than [`MAX_LOGIN_BYTES`] cannot exist; it is
//!   never stored, echoed or logged, and it is counted under a keyed hash
//!   (see [`crate::regulation::Regulator::anonymous_subject`]).
//! - Transactions: [`AddressLimiter`] admits at most
//!   `regulation.max_transactions_per_ip_per_minute` unauthenticated
//!   (passwordless, username-only) sign-in transactions per address bucket
//!   (IPv4 address, IPv6 /64) and minute. It lives in this process: each
//!   replica counts on its own, which is enough for a rate limit (the failure
//!   counters that lock users out are the store's, shared by replicas).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::clock::UnixTime;
use crate::error::{ApiError, ErrorCode};
use crate::server::BodyTimer;

/// The longest login (bytes, after trimming) that can sign in; longer ones
/// fail like an unknown user and are never stored or logged.
pub const MAX_LOGIN_BYTES: usize = 256;

/// The largest request body the portal reads (forms, authn and self-service API).
pub const PORTAL_BODY_LIMIT: usize = 16 * 1024;

/// The largest request body the admin listener reads.
pub const ADMIN_BODY_LIMIT: usize = 256 * 1024;

/// A login as it may be shown or logged: itself when it is of a possible
/// length, else empty (an over-long login names nobody).
pub fn shown_login(login: &str) -> &str {
    let trimmed = login.trim();
    if trimmed.len() > MAX_LOGIN_BYTES {
        ""
    } else {
        trimmed
    }
}

/// The body-limit layers of a router: axum's extractors refuse a body over
/// `max` bytes, and the plain-text 413 they answer becomes an Okta error; and
/// the body must arrive in time (a deadline for the whole body, from the
/// [`BodyTimer`] the listener put on the request).
pub fn body_limit(router: axum::Router, max: usize) -> axum::Router {
    router
        .layer(axum::middleware::map_response(move |res: Response| async move {
            too_large(res, max)
        }))
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::map_request(|req: Request| async move {
            match req.extensions().get::<BodyTimer>().cloned() {
                Some(timer) => req.map(|body| Body::new(timer.deadline(body))),
                None => req,
            }
        }))
}

fn too_large(res: Response, max: usize) -> Response {
    if res.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return res;
    }
    let mut out = ApiError::new(ErrorCode::E0000003)
        .cause(format!("The request body is larger than {max} bytes."))
        .into_response();
    *out.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    out
}

/// Where one address bucket stands in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in this window.
    pub remaining: u32,
    /// When the window ends (Unix seconds).
    pub reset: UnixTime,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: UnixTime,
    count: u32,
}

/// Fixed one-minute windows per address bucket, in memory.
///
/// Memory is bounded: expired windows are dropped once more than
/// [`Self::PRUNE_AT`] buckets are tracked, and beyond [`Self::MAX_TRACKED`]
/// live buckets new addresses are refused (fail closed) until windows end.
#[derive(Debug)]
pub struct AddressLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<String, Window>>,
}

impl AddressLimiter {
    /// The window length.
    pub const WINDOW: i64 = 60;
    /// Tracked buckets above which expired ones are dropped.
    pub const PRUNE_AT: usize = 4096;
    /// Live buckets tracked at most.
    pub const MAX_TRACKED: usize = 100_000;

    /// A limiter admitting `per_minute` requests per address bucket and minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request from `addr` at `now`: `Ok` if admitted, `Err` (with
    /// the window's end) if over the limit. A refused request is not counted.
    pub fn check(&self, addr: IpAddr, now: UnixTime) -> Result<RateInfo, RateInfo> {
        let bucket = crate::regulation::address_bucket(addr);
        let limit = self.per_minute;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= Self::PRUNE_AT && !windows.contains_key(&bucket) {
            windows.retain(|_, w| w.start + Self::WINDOW > now);
            if windows.len() >= Self::MAX_TRACKED {
                return Err(RateInfo {
                    limit,
                    remaining: 0,
                    reset: now + Self::WINDOW,
                });
            }
        }
        let w = windows.entry(bucket).or_insert(Window { start: now, count: 0 });
        if w.start + Self::WINDOW <= now || w.start > now {
            *w = Window { start: now, count: 0 };
        }
        let reset = w.start + Self::WINDOW;
        if w.count >= limit {
            return Err(RateInfo {
                limit,
                remaining: 0,
                reset,
            });
        }
        w.count += 1;
        Ok(RateInfo {
            limit,
            remaining: limit - w.count,
            reset,
        })
    }

    /// How many buckets are tracked (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn admits_the_limit_per_address_and_minute() {
        let l = AddressLimiter::new(3);
        for left in [2, 1, 0] {
            assert_eq!(l.check(ip("192.0.2.1"), 100).unwrap().remaining, left);
        }
        let refused = l.check(ip("192.0.2.1"), 130).unwrap_err();
        assert_eq!(refused.reset, 160);
        // Another address is counted on its own; one /64 is one bucket.
        assert!(l.check(ip("192.0.2.2"), 130).is_ok());
        for _ in 0..3 {
            assert!(l.check(ip("2001:db8::1"), 130).is_ok());
        }
        assert!(l.check(ip("2001:db8::ffff"), 130).is_err());
        // The next window admits again.
        assert!(l.check(ip("192.0.2.1"), 160).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let l = AddressLimiter::new(1);
        for i in 0..(AddressLimiter::PRUNE_AT as u32 + 10) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(a, 0).is_ok());
        }
        // A minute later the old windows are dropped when a new address comes.
        assert!(l.check(ip("192.0.2.1"), 61).is_ok());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn over_long_logins_are_not_shown() {
        assert_eq!(shown_login("  alice "), "alice");
        assert_eq!(shown_login(&"a".repeat(MAX_LOGIN_BYTES)).len(), MAX_LOGIN_BYTES);
        assert_eq!(shown_login(&"a".repeat(MAX_LOGIN_BYTES + 1)), "");
    }
}
