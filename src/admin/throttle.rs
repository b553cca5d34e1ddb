//! Wrong admin tokens are throttled per client address (per process): after
//! [`MAX_FAILURES`] wrong tokens within [`WINDOW`] seconds, every admin call
//! from that address answers 429 `E0000047` until the window ends, whatever
//! token it carries (a right token passing would tell a guesser it was
//! right). Calls without a token are not guesses and are not counted.
//!
//! The address is the client address after `server.trusted_proxies` (as
//! on the main listener), so behind a reverse proxy each client counts on
//! its own. IPv6 addresses count per /64, the block one host usually holds.
//!
//! The table is bounded and cheap to keep: expired entries are swept at most
//! once per window. Past [`MAX_ADDRESSES`] entries it is swept once per
//! window down to the throttled addresses; if it is still full, a new
//! address is not tracked (its wrong tokens are not counted) rather than
//! sharing an entry that would throttle everyone. The trade-off: a guesser
//! that already holds 65,536 throttled address blocks gets unthrottled
//! guesses from further blocks until the window ends, instead of locking
//! every administrator out; tokens are at least 16 bytes, so the throttle
//! is a second line, and a right token is never refused because of others.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use crate::clock::UnixTime;

/// Wrong tokens allowed per address and window.
pub const MAX_FAILURES: u32 = 10;

/// The window, in seconds.
pub const WINDOW: i64 = 60;

/// Addresses tracked at once.
const MAX_ADDRESSES: usize = 65_536;

/// Failure counts by address.
#[derive(Debug, Default)]
pub struct TokenThrottle {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Address -> (window start, failures in it).
    failures: HashMap<IpAddr, (UnixTime, u32)>,
    /// When expired entries were last swept.
    swept: UnixTime,
    /// When the full table was last swept down to throttled addresses.
    swept_full: Option<UnixTime>,
}

fn within(since: UnixTime, now: UnixTime) -> bool {
    since <= now && now < since + WINDOW
}

fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl TokenThrottle {
    /// When `addr` is throttled at `now`: the time its window ends. Only the
    /// address's own failures count.
    pub fn blocked(&self, addr: IpAddr, now: UnixTime) -> Option<UnixTime> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .failures
            .get(&key(addr))
            .filter(|(start, n)| *n >= MAX_FAILURES && now < start + WINDOW)
            .map(|(start, _)| start + WINDOW)
    }

    /// Counts a wrong token from `addr` at `now`.
    pub fn failed(&self, addr: IpAddr, now: UnixTime) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let k = key(addr);
        if !within(inner.swept, now) {
            inner.failures.retain(|_, (start, _)| now < *start + WINDOW);
            inner.swept = now;
        }
        if !inner.failures.contains_key(&k) && inner.failures.len() >= MAX_ADDRESSES {
            if !inner.swept_full.is_some_and(|t| within(t, now)) {
                inner
                    .failures
                    .retain(|_, (start, n)| *n >= MAX_FAILURES && now < *start + WINDOW);
                inner.swept_full = Some(now);
            }
            if inner.failures.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let entry = inner.failures.entry(k).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// How many addresses are tracked (tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_in_a_minute_block_the_address_until_the_window_ends() {
        let t = TokenThrottle::default();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        for i in 0..MAX_FAILURES {
            assert_eq!(t.blocked(a, 100 + i64::from(i)), None);
            t.failed(a, 100 + i64::from(i));
        }
        assert_eq!(t.blocked(a, 110), Some(160));
        assert_eq!(t.blocked(b, 110), None, "per address");
        assert_eq!(t.blocked(a, 160), None, "the window ended");
        t.failed(a, 161);
        assert_eq!(t.blocked(a, 161), None, "a new window starts");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = TokenThrottle::default();
        for i in 0..MAX_FAILURES {
            let addr: IpAddr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
            t.failed(addr, 0);
        }
        assert!(t.blocked("2001:db8::ffff".parse().unwrap(), 1).is_some());
        assert!(t.blocked("2001:db8:0:1::1".parse().unwrap(), 1).is_none());
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn expired_entries_are_swept_once_a_window() {
        let t = TokenThrottle::default();
        for i in 0..1000 {
            t.failed(v4(i), 0);
        }
        assert_eq!(t.tracked(), 1000);
        t.failed(v4(0), 59);
        assert_eq!(t.tracked(), 1000, "still live");
        t.failed([192, 0, 2, 1].into(), 60);
        assert_eq!(t.tracked(), 1, "the expired entries are gone");
    }

    #[test]
    fn a_full_table_never_throttles_new_addresses_or_right_tokens() {
        let t = TokenThrottle::default();
        let max = u32::try_from(MAX_ADDRESSES).unwrap();
        let throttled: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..MAX_FAILURES {
            t.failed(throttled, 0);
        }
        // The table filled with addresses that each failed once.
        for i in 1..max {
            t.failed(v4(i), 0);
        }
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        // A new address is tracked after the sweep down to throttled ones.
        let admin: IpAddr = [198, 51, 100, 7].into();
        t.failed(admin, 1);
        assert_eq!(t.tracked(), 2);
        assert_eq!(t.blocked(admin, 1), None);
        assert_eq!(
            t.blocked(throttled, 1),
            Some(60),
            "a throttled address stays throttled"
        );

        // Filled with throttled addresses, new addresses are not tracked,
        // and nobody else is throttled by them (no shared entry).
        let t = TokenThrottle::default();
        for i in 0..max {
            for _ in 0..MAX_FAILURES {
                t.failed(v4(i), 0);
            }
        }
        for i in 0..1000 {
            for _ in 0..MAX_FAILURES {
                t.failed(v4(max + i), 1);
            }
            assert_eq!(t.blocked(v4(max + i), 1), None);
        }
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        assert_eq!(t.blocked(admin, 1), None);
        assert_eq!(t.blocked(v4(0), 1), Some(60));
        // The next window starts afresh.
        t.failed(admin, 60);
        assert_eq!(t.tracked(), 1);
    }
}
