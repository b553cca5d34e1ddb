//! Wrong admin tokens are throttled per client address (per process): after
//! [`MAX_FAILURES`] wrong tokens within [`WINDOW`] seconds, every admin call
//! from that address answers 429 `E0000047` until the window ends, whatever
//! token it carries (a right token passing would tell a guesser it was
//! right). Calls without a token are not guesses and are not counted.
//!
//! IPv6 addresses count per /64, the block one host usually holds. The
//! table is bounded: past [`MAX_ADDRESSES`] live entries, new addresses share
//! one overflow entry (so a flood from many addresses throttles itself
//! rather than growing memory).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use crate::clock::UnixTime;

/// Wrong tokens allowed per address and window.
pub const MAX_FAILURES: u32 = 10;

/// The window, in seconds.
pub const WINDOW: i64 = 60;

/// Addresses tracked at once before the overflow entry is used.
const MAX_ADDRESSES: usize = 65_536;

/// The key of the shared overflow entry.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Failure counts by address.
#[derive(Debug, Default)]
pub struct TokenThrottle {
    /// Address -> (window start, failures in it).
    failures: Mutex<HashMap<IpAddr, (UnixTime, u32)>>,
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
    /// When `addr` is throttled at `now`: the time its window ends.
    pub fn blocked(&self, addr: IpAddr, now: UnixTime) -> Option<UnixTime> {
        let map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.get(&key(addr)).or_else(|| {
            // An address that never failed may still be in the overflow.
            (map.len() >= MAX_ADDRESSES).then(|| map.get(&OVERFLOW)).flatten()
        });
        entry
            .filter(|(start, n)| *n >= MAX_FAILURES && now < start + WINDOW)
            .map(|(start, _)| start + WINDOW)
    }

    /// Counts a wrong token from `addr` at `now`.
    pub fn failed(&self, addr: IpAddr, now: UnixTime) {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let mut k = key(addr);
        if !map.contains_key(&k) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| now < *start + WINDOW);
            if map.len() >= MAX_ADDRESSES {
                k = OVERFLOW;
            }
        }
        let entry = map.entry(k).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
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
}
