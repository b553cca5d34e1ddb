//! Password hashing and verification (argon2id) on a bounded blocking pool.
//!
//! Argon2 is deliberately expensive (19 MiB, two passes), so a login flood
//! could starve the proxied traffic sharing the machine. Verifications run on
//! tokio's blocking threads, at most `max(1, cores / 2)` at once, with a
//! bounded queue behind them: past it, logins are refused as busy (429)
//! instead of queueing without end. Unknown users are checked against a dummy
//! hash with the same parameters, so their answers take as long as a wrong
//! password.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier as _};
use tokio::sync::Semaphore;

use crate::secret::Secret;

/// Passwords longer than this are refused (argon2 accepts any length; this
/// bounds the work an anonymous caller can ask for).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// How many verifications may wait for a permit before new ones are refused.
pub const MAX_QUEUED: usize = 256;

/// The pool was full: refuse the login as rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password verification is busy")]
pub struct Busy;

/// Hashes a password as an argon2id PHC string with the default parameters.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies passwords on a bounded pool.
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    dummy_hash: Arc<String>,
}

impl PasswordPool {
    /// A pool running at most `concurrency` verifications at once.
    pub fn new(concurrency: usize) -> Self {
        let dummy = hash_password(&crate::crypto::random_bytes(16)).unwrap_or_default();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            dummy_hash: Arc::new(dummy),
        }
    }

    /// A pool sized for this machine: half its cores, at least one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self::new(cores / 2)
    }

    /// True when `password` matches `hash`. With `hash = None` (unknown user)
    /// the dummy hash is checked, the work is the same, and the answer is false.
    pub async fn verify(&self, hash: Option<&str>, password: Secret) -> Result<bool, Busy> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy);
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let Ok(permit) = permit else { return Err(Busy) };
        let known = hash.is_some();
        let hash = hash
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.expose(), &parsed)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(known && result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_argon2id_hashes() {
        let h = hash_password(b"correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let pool = PasswordPool::new(1);
        assert_eq!(
            pool.verify(Some(&h), Secret::new("correct horse")).await,
            Ok(true)
        );
        assert_eq!(pool.verify(Some(&h), Secret::new("wrong")).await, Ok(false));
        assert_eq!(pool.verify(None, Secret::new("correct horse")).await, Ok(false));
        assert_eq!(pool.verify(Some("not a hash"), Secret::new("x")).await, Ok(false));
    }

    #[tokio::test]
    async fn refuses_past_the_queue_bound() {
        let pool = PasswordPool::new(1);
        pool.queued.store(MAX_QUEUED, Ordering::SeqCst);
        assert_eq!(pool.verify(None, Secret::new("x")).await, Err(Busy));
    }
}
