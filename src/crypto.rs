//! Small cryptographic helpers shared by the session, CSRF and token code:
//! random identifiers, per-purpose key derivation and HMAC tags.

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use crate::secret::{Secret, ct_eq};

type HmacSha256 = Hmac<Sha256>;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Lookup id of a bearer token: its SHA-256, so stored ids cannot be replayed.
pub fn token_id(token: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A random identifier of `len` characters from `[a-zA-Z0-9]` (5.95 bits each).
pub fn random_id(len: usize) -> String {
    let mut out = vec![0u8; len];
    fill_id(&mut out);
    // ASCII from the alphabet: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Fills `out` with random characters from `[a-zA-Z0-9]` (5.95 bits each).
///
/// Each random 64-bit word gives ten 6-bit values; the two past the
/// alphabet are skipped, so every character is uniform (a draw and a range
/// reduction per character cost more: this runs for every request's id).
pub fn fill_id(out: &mut [u8]) {
    const _: () = assert!(ID_ALPHABET.len() == 62);
    let mut rng = rand::rng();
    let (mut bits, mut left) = (0u64, 0);
    for slot in out {
        loop {
            if left == 0 {
                bits = rng.random();
                left = 10;
            }
            let c = ID_ALPHABET.get((bits & 63) as usize);
            bits >>= 6;
            left -= 1;
            if let Some(&c) = c {
                *slot = c;
                break;
            }
        }
    }
}

/// `n` random bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

/// A random token of 32 bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    b64(&random_bytes(32))
}

/// Base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Derives a key for one purpose from a configured secret, so that a MAC made
/// for one purpose (say, CSRF) is never valid for another (say, sessions).
pub fn derive_key(secret: &Secret, purpose: &str) -> Secret {
    let label = format!("portcullis/v1/{purpose}");
    Secret::new(hmac_sha256(secret.expose(), label.as_bytes()).to_vec())
}

/// The keys for one purpose derived from every configured session secret:
/// new values are MACed under the first, values already handed out are
/// accepted under any. Prepending a secret (a rotation, then a reload) so
/// keeps forms already open, codes already sent and pushes already started
/// working, as sessions do.
#[derive(Debug, Clone, Default)]
pub struct KeyRing(Vec<Secret>);

impl KeyRing {
    /// One key per secret, in order, for `purpose` (see [`derive_key`]).
    pub fn derive(secrets: &[Secret], purpose: &str) -> Self {
        Self(secrets.iter().map(|s| derive_key(s, purpose)).collect())
    }

    /// The key new values are made under (empty without secrets).
    pub fn first(&self) -> &[u8] {
        self.0.first().map_or(&[], |k| k.expose())
    }

    /// Every key, the first first.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Secret::expose)
    }
}

/// An HMAC-SHA256 key with its padded key blocks already hashed: a tag then
/// costs the message's blocks and one more, not two more for the key (the
/// session cookie is verified on every signed-in request).
#[derive(Clone)]
pub struct HmacKey(HmacSha256);

impl HmacKey {
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        Self(<HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    /// HMAC-SHA256 of `data` (the same as [`hmac_sha256`] under this key).
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Checks a tag of `data` in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        ct_eq(&self.tag(data), tag)
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// Checks an HMAC tag in constant time.
pub fn verify_hmac(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    ct_eq(&hmac_sha256(key, data), tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_use_every_character_evenly() {
        // 124 000 characters: 2 000 expected per character, standard
        // deviation about 44; folding the two spare 6-bit values onto
        // others (`% 62`: `a` and `b` twice as often, checked to fail here),
        // a byte taken `% 62` (+13 % for eight characters) or a lost
        // character falls outside.
        let mut counts = [0u32; 128];
        for _ in 0..200 {
            let id = random_id(620);
            assert_eq!(id.len(), 620);
            for b in id.bytes() {
                counts[usize::from(b)] += 1;
            }
        }
        for &c in ID_ALPHABET {
            let n = counts[usize::from(c)];
            assert!((1_780..=2_220).contains(&n), "{} came {n} times", char::from(c));
        }
        assert_eq!(counts.iter().sum::<u32>(), 124_000);
        assert_eq!(random_id(0), "");
        assert_eq!(random_id(1).len(), 1);
    }

    #[test]
    fn random_ids_have_the_requested_shape() {
        let a = random_id(17);
        assert_eq!(a.len(), 17);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_id(17), a);
        assert_eq!(random_token().len(), 43);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac(b"Jefe", b"what do ya want for nothing?", &tag));
        assert!(!verify_hmac(b"Jefe", b"what do ya want for nothing!", &tag));
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let s = Secret::new(vec![7u8; 32]);
        assert_ne!(derive_key(&s, "session"), derive_key(&s, "csrf"));
        assert_eq!(derive_key(&s, "session"), derive_key(&s, "session"));
    }
}
