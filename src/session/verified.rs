//! The per-thread cache of verified session cookies behind
//! [`SessionCodec::verify`](super::SessionCodec::verify).
//!
//! A signed-in request's cookie is usually one this thread has verified a
//! moment ago. Checking its HMAC tag and decoding its JSON again is most of
//! what a signed-in request costs over a bypass one, so each serving thread
//! remembers the claims of the last cookie values it verified: [`SLOTS`]
//! slots, each chosen by a keyed hash (foldhash, with this thread's random
//! keys) of the cookie value's length and its last bytes (where its HMAC tag
//! is) and holding the whole value and its claims.
//!
//! A lookup answers only when the slot holds exactly the same value, compared
//! byte for byte in constant time, so a value that differs anywhere (a
//! tampered one) is never answered from the cache and goes through the full
//! verification. Only values that passed it are stored. Each codec has its
//! own [`KeysId`] and the cache remembers whose values it holds: a lookup or
//! a store for another codec (a reload's, with rotated or removed secrets)
//! empties it first. What does not depend on the value alone (lifetime, idle
//! time, revocation, the user's epoch, the user) is not cached: the caller
//! checks it on every request.

use std::cell::RefCell;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SessionClaims;
use crate::secret::ct_eq;

/// Cookie values remembered per thread (direct-mapped). A few thousand
/// bytes each at most (the value and its claims), so tens of kilobytes per
/// serving thread when full.
pub const SLOTS: usize = 128;

/// How many of a value's last bytes choose its slot (a tag is 43).
const HASHED_TAIL: usize = 48;

/// Identifies one codec's keys in the cache; each codec built gets a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeysId(u64);

impl KeysId {
    pub(super) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Entry {
    value: Box<str>,
    claims: Arc<SessionClaims>,
}

struct Cache {
    /// Whose values the slots hold (0: nobody's yet).
    keys: u64,
    hasher: RandomState,
    /// Empty until the first value is stored.
    slots: Vec<Option<Entry>>,
}

impl Cache {
    fn slot(&self, value: &[u8]) -> usize {
        // The value's length and its last bytes, which hold the HMAC tag: of
        // the values stored (verified ones), those differ between any two
        // sessions, and hashing them is a fraction of hashing the whole value.
        // Which slot a value takes only decides where to look; the whole
        // value is compared before anything is answered.
        let tail = &value[value.len().saturating_sub(HASHED_TAIL)..];
        // The modulo of a 64-bit hash by a power of two: its low bits.
        (self.hasher.hash_one((value.len(), tail)) % SLOTS as u64) as usize
    }

    /// Empties the cache if it holds another codec's values.
    fn own(&mut self, keys: &KeysId) {
        if self.keys != keys.0 {
            self.slots.clear();
            self.keys = keys.0;
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        keys: 0,
        hasher: RandomState::default(),
        slots: Vec::new(),
    });
}

/// The claims of `value` if this thread verified exactly this value under
/// `keys` before.
pub(super) fn lookup(keys: &KeysId, value: &[u8]) -> Option<Arc<SessionClaims>> {
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            cache.own(keys);
            let entry = cache.slots.get(cache.slot(value))?.as_ref()?;
            ct_eq(entry.value.as_bytes(), value).then(|| entry.claims.clone())
        })
        .ok()
        .flatten()
}

/// Remembers that `value` verified under `keys` with `claims`.
pub(super) fn remember(keys: &KeysId, value: &str, claims: Arc<SessionClaims>) {
    let _ = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return;
        };
        cache.own(keys);
        if cache.slots.is_empty() {
            cache.slots.resize_with(SLOTS, || None);
        }
        let i = cache.slot(value.as_bytes());
        cache.slots[i] = Some(Entry {
            value: value.into(),
            claims,
        });
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn claims(uid: &str) -> Arc<SessionClaims> {
        Arc::new(SessionClaims::new(
            uid,
            1,
            vec!["pwd".into()],
            1_000,
            None,
            0,
            1_000,
        ))
    }

    /// The slot `value` would take in this thread's cache.
    pub(in crate::session) fn slot_of(value: &str) -> usize {
        CACHE.with(|c| c.borrow().slot(value.as_bytes()))
    }

    /// Puts `claims` for `stored` into the slot of `value` (a collision).
    pub(in crate::session) fn plant(keys: &KeysId, value: &str, stored: &str, claims: Arc<SessionClaims>) {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            c.own(keys);
            if c.slots.is_empty() {
                c.slots.resize_with(SLOTS, || None);
            }
            let i = c.slot(value.as_bytes());
            c.slots[i] = Some(Entry {
                value: stored.into(),
                claims,
            });
        });
    }

    #[test]
    fn answers_only_the_same_value_under_the_same_keys() {
        let keys = KeysId::new();
        let alice = claims("00uALICE");
        remember(&keys, "v1.payload.tag", alice.clone());
        let hit = lookup(&keys, b"v1.payload.tag").expect("a hit");
        assert!(Arc::ptr_eq(&hit, &alice));
        assert!(lookup(&keys, b"v1.payload.taG").is_none());
        assert!(lookup(&keys, b"v1.payload.ta").is_none());
        assert!(lookup(&keys, b"v1.payload.tagg").is_none());
        // Another codec's keys: the cache empties, also for the first keys.
        let other = KeysId::new();
        assert!(lookup(&other, b"v1.payload.tag").is_none());
        assert!(lookup(&keys, b"v1.payload.tag").is_none());
    }

    #[test]
    fn a_value_in_the_same_slot_is_not_taken_for_another() {
        // Whatever the hash says, the stored value must equal the one asked
        // about: plant a different value in the asked one's slot.
        let keys = KeysId::new();
        plant(&keys, "v1.forged.tag", "v1.genuine.tag", claims("00uADMIN"));
        assert!(lookup(&keys, b"v1.forged.tag").is_none());
        // Same length, one byte apart.
        plant(&keys, "v1.genuine.taG", "v1.genuine.tag", claims("00uADMIN"));
        assert!(lookup(&keys, b"v1.genuine.taG").is_none());
    }

    #[test]
    fn bounded() {
        let keys = KeysId::new();
        for i in 0..(SLOTS * 4) {
            remember(&keys, &format!("v1.{i}.t"), claims("00u1"));
        }
        CACHE.with(|c| assert_eq!(c.borrow().slots.len(), SLOTS));
        assert!(slot_of("v1.0.t") < SLOTS);
    }
}
