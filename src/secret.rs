//! Secrets that never print.
//!
//! [`Secret`] wraps bytes that must not reach a log: its `Debug` and `Display`
//! are redacted, it compares in constant time, and it is zeroed when dropped.

use subtle::ConstantTimeEq;

/// Secret bytes (a key, a password, a token) with a redacted `Debug`.
#[derive(Clone, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The secret bytes; callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The secret as UTF-8 text, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}
impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwritten before the allocation is released (volatile writes
        // the compiler cannot drop).
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Constant-time comparison of two byte strings (length is not hidden).
///
/// The differences of every eight-byte word are folded together with `|`,
/// without a branch on the data, and only the folded word goes through an
/// optimisation barrier and `subtle`'s constant-time test: the time depends
/// on the length only. Folding instead of testing each word lets the
/// compiler vectorise the loop (a session cookie of some 300 bytes is
/// compared on every signed-in request), while the barrier keeps it from
/// turning the fold into an early exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (&x, &y) in a_words.remainder().iter().zip(b_words.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in a_words.zip(b_words) {
        diff |= word(x) ^ word(y);
    }
    bool::from(std::hint::black_box(diff).ct_eq(&0))
}

/// Eight bytes as a word (any byte order: both sides use the same).
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        let base: Vec<u8> = (0..=40u8).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(ct_eq(a, a));
            let copy = a.to_vec();
            assert!(ct_eq(a, &copy));
            // Any one byte, in a whole word or in the tail, any bit.
            for i in 0..len {
                for bit in 0..8 {
                    let mut b = a.to_vec();
                    b[i] ^= 1 << bit;
                    assert!(!ct_eq(a, &b), "len {len}, byte {i}, bit {bit}");
                }
            }
            assert!(!ct_eq(a, &base[..len + 1]));
            assert!(!ct_eq(&base[..len + 1], a));
        }
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn compares_by_value() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
        assert!(ct_eq(b"", b""));
    }
}
