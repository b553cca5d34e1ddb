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

/// The longest login (bytes, after trimming) that can sign in; owned by the
/// config, whose users file must not hold a longer one.
pub use crate::config::MAX_LOGIN_BYTES;

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

/// The counts of one fixed window.
#[derive(Debug, Default)]
struct Table {
    /// The window's index (`now / WINDOW`).
    window: i64,
    /// Requests admitted per address bucket in this window.
    counts: HashMap<String, u32>,
    /// Requests admitted in this window from buckets not in `counts`
    /// (the table was full).
    overflow: u32,
    /// Whether the table was swept at capacity in this window.
    swept: bool,
}

/// Fixed one-minute windows (aligned on the minute) per address bucket, in
/// memory.
///
/// Expiry is cheap: the whole table is cleared when the window rolls. Memory
/// is bounded by [`Self::MAX_TRACKED`] buckets. When the table is full, it is
/// swept once per window, keeping only the buckets already at their limit
/// (they stay refused); if it is still full, new buckets are not tracked but
/// share [`Self::OVERFLOW_BUDGET`] admissions until the window rolls. The
/// trade-off: a client with more than 100,000 address buckets can spend that
/// shared budget and so refuse addresses first seen later in the same window
/// (at most one minute), but it never refuses addresses already tracked, and
/// it can never exceed the per-address limit from a tracked address.
#[derive(Debug)]
pub struct AddressLimiter {
    per_minute: u32,
    table: Mutex<Table>,
}

impl AddressLimiter {
    /// The window length.
    pub const WINDOW: i64 = 60;
    /// Buckets tracked at most per window.
    pub const MAX_TRACKED: usize = 100_000;
    /// Admissions per window shared by untracked buckets once the table is full.
    pub const OVERFLOW_BUDGET: u32 = 10_000;

    /// A limiter admitting `per_minute` requests per address bucket and minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            table: Mutex::new(Table::default()),
        }
    }

    /// Counts a request from `addr` at `now`: `Ok` if admitted, `Err` (with
    /// the window's end) if over the limit. A refused request is not counted.
    pub fn check(&self, addr: IpAddr, now: UnixTime) -> Result<RateInfo, RateInfo> {
        let bucket = crate::context::address_bucket(addr);
        let limit = self.per_minute;
        let window = now.div_euclid(Self::WINDOW);
        let reset = (window + 1) * Self::WINDOW;
        let refused = RateInfo {
            limit,
            remaining: 0,
            reset,
        };
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.window != window {
            *t = Table {
                window,
                ..Table::default()
            };
        }
        if !t.counts.contains_key(&bucket) && t.counts.len() >= Self::MAX_TRACKED {
            if !t.swept {
                t.swept = true;
                t.counts.retain(|_, n| *n >= limit);
            }
            if t.counts.len() >= Self::MAX_TRACKED {
                if t.overflow >= Self::OVERFLOW_BUDGET || limit == 0 {
                    return Err(refused);
                }
                t.overflow += 1;
                return Ok(RateInfo {
                    limit,
                    remaining: limit - 1,
                    reset,
                });
            }
        }
        let n = t.counts.entry(bucket).or_insert(0);
        if *n >= limit {
            return Err(refused);
        }
        *n += 1;
        Ok(RateInfo {
            limit,
            remaining: limit - *n,
            reset,
        })
    }

    /// How many buckets are tracked (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn admits_the_limit_per_address_and_minute() {
        let l = AddressLimiter::new(3);
        for left in [2, 1, 0] {
            assert_eq!(l.check(ip("192.0.2.1"), 100).unwrap().remaining, left);
        }
        // Windows are aligned on the minute: [60, 120).
        let refused = l.check(ip("192.0.2.1"), 110).unwrap_err();
        assert_eq!(refused.reset, 120);
        // Another address is counted on its own; one /64 is one bucket.
        assert!(l.check(ip("192.0.2.2"), 110).is_ok());
        for _ in 0..3 {
            assert!(l.check(ip("2001:db8::1"), 110).is_ok());
        }
        assert!(l.check(ip("2001:db8::ffff"), 110).is_err());
        // The next window admits again.
        assert!(l.check(ip("192.0.2.1"), 120).is_ok());
    }

    #[test]
    fn the_table_is_cleared_when_the_window_rolls() {
        let l = AddressLimiter::new(1);
        for i in 0..5000 {
            assert!(l.check(v4(i), 0).is_ok());
        }
        assert!(l.check(v4(0), 59).is_err());
        assert_eq!(l.tracked(), 5000);
        // The first request of the next window starts an empty table.
        assert!(l.check(ip("192.0.2.1"), 60).is_ok());
        assert_eq!(l.tracked(), 1);
        assert!(l.check(v4(0), 61).is_ok());
        // A clock stepping back also starts a new table (never a stuck one).
        assert!(l.check(v4(0), 0).is_ok());
    }

    #[test]
    fn a_full_table_keeps_only_addresses_over_their_limit() {
        let l = AddressLimiter::new(2);
        let max = u32::try_from(AddressLimiter::MAX_TRACKED).unwrap();
        // One address at its limit, then the table filled with addresses under it.
        for _ in 0..2 {
            assert!(l.check(ip("192.0.2.1"), 0).is_ok());
        }
        for i in 1..max {
            assert!(l.check(v4(i), 0).is_ok());
        }
        assert_eq!(l.tracked(), AddressLimiter::MAX_TRACKED);
        // A new address is admitted: the sweep dropped those under their limit.
        assert!(l.check(ip("192.0.2.2"), 1).is_ok());
        assert_eq!(l.tracked(), 2);
        assert!(l.check(ip("192.0.2.1"), 1).is_err(), "still over its limit");
    }

    #[test]
    fn at_capacity_new_addresses_share_an_overflow_budget_until_the_window_rolls() {
        let l = AddressLimiter::new(1);
        let max = u32::try_from(AddressLimiter::MAX_TRACKED).unwrap();
        for i in 0..max {
            assert!(l.check(v4(i), 0).is_ok());
        }
        // Every tracked address is at its limit: new ones are not refused
        // outright but share the overflow budget.
        for i in 0..AddressLimiter::OVERFLOW_BUDGET {
            assert!(l.check(v4(max + i), 1).is_ok(), "overflow admission {i}");
        }
        assert_eq!(l.tracked(), AddressLimiter::MAX_TRACKED);
        let refused = l.check(ip("192.0.2.200"), 2).unwrap_err();
        assert_eq!(refused.reset, 60);
        assert!(l.check(v4(0), 2).is_err(), "a tracked address stays at its limit");
        // The next window starts afresh.
        assert!(l.check(ip("192.0.2.200"), 60).is_ok());
        assert!(l.check(v4(0), 60).is_ok());
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn over_long_logins_are_not_shown() {
        assert_eq!(shown_login("  alice "), "alice");
        assert_eq!(shown_login(&"a".repeat(MAX_LOGIN_BYTES)).len(), MAX_LOGIN_BYTES);
        assert_eq!(shown_login(&"a".repeat(MAX_LOGIN_BYTES + 1)), "");
    }
}
