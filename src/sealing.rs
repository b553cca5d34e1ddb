//! Factor secrets at rest: AES-256-GCM under `store.encryption_keys`.
//!
//! - **Keys.** The first configured key seals; every key opens. Keys rotate
//!   by prepending a new one, restarting the replicas, and running
//!   `portcullis store rotate-key`, which re-seals under the first key
//!   whatever is sealed under another; the old key can be removed once it has
//!   run.
//! - **Key ids.** Each sealed value names the key that sealed it by a key id:
//!   the first 8 bytes of HMAC-SHA256(key, "portcullis key id"), in hex. It is
//!   a key-check value: it tells keys apart and tells whether a configured key
//!   is the one the database needs, without revealing anything about the key.
//!   [`check_keys`] compares the ids in the database with the configured ones
//!   at start, so a wrong or missing key is a start-up error, never secrets
//!   that fail to open one by one (or, worse, garbage).
//! - **Nonces.** Every seal draws a fresh random 96-bit nonce from the OS
//!   CSPRNG; the blob is nonce || ciphertext || tag. The number of values
//!   sealed under one key stays far below the 2^32 that random nonces allow.
//! - **Binding.** The associated data names the row ([`factor_secret_aad`]:
//!   factor id and user id), so a sealed value copied into another row, or
//!   another user's row, fails to open instead of lending its secret.
//! - Keys and opened secrets never reach `Debug` output, logs or errors; key
//!   ids may (they are what an operator needs to find the right key).

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::secret::Secret;
use crate::store::{SealedSecret, SharedStore, Store, StoreError};

/// Length of an AES-GCM nonce (96 bits).
const NONCE_BYTES: usize = 12;

/// Length of an AES-GCM tag.
const TAG_BYTES: usize = 16;

/// Length of a key in `store.encryption_keys`.
pub const KEY_BYTES: usize = 32;

/// Why sealing or opening failed. Messages name key ids at most, never a
/// key, a secret or a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No `store.encryption_keys` are configured.
    #[error("no store.encryption_keys configured")]
    NoKeys,
    /// A configured key is not 32 bytes.
    #[error("store.encryption_keys: each key must be 32 bytes")]
    BadKey,
    /// The value was sealed under a key that is not configured.
    #[error("sealed with key id {0}, which is not among store.encryption_keys")]
    UnknownKey(String),
    /// The value was altered, truncated, or belongs to another row.
    #[error("sealed value is corrupt or bound to another row")]
    Corrupt,
}

/// The key id of a key: a check value that identifies it without revealing it.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&crate::crypto::hmac_sha256(key, b"portcullis key id")[..8])
}

/// The associated data that binds a factor's sealed secret to its row.
pub fn factor_secret_aad(factor_id: &str, user_id: &str) -> String {
    format!("portcullis/factor-secret/v1|{factor_id}|{user_id}")
}

/// Seals and opens factor secrets.
pub struct Sealer {
    /// (key id, cipher); the first seals.
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Sealer {
    /// A sealer over `keys` (32 bytes each; the first seals, all open).
    pub fn new(keys: &[Secret]) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoKeys);
        }
        let keys = keys
            .iter()
            .map(|k| {
                if k.len() != KEY_BYTES {
                    return Err(SealError::BadKey);
                }
                let cipher = Aes256Gcm::new_from_slice(k.expose()).map_err(|_| SealError::BadKey)?;
                Ok((key_id(k.expose()), cipher))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        self.keys.first().map_or("", |(id, _)| id.as_str())
    }

    /// The ids of every configured key, sealing key first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// True if a configured key has this id.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// Seals `plaintext` under the first key for the row described by `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<SealedSecret, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError::NoKeys)?;
        let nonce_bytes = crate::crypto::random_bytes(NONCE_BYTES);
        let nonce = Nonce::try_from(&nonce_bytes[..]).map_err(|_| SealError::Corrupt)?;
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut blob = nonce_bytes;
        blob.extend_from_slice(&ciphertext);
        Ok(SealedSecret {
            key_id: id.clone(),
            blob,
        })
    }

    /// Opens a value sealed for the row described by `aad`, with the key its
    /// key id names.
    pub fn open(&self, sealed: &SealedSecret, aad: &str) -> Result<Secret, SealError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.blob.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SealError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.blob.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealError::Corrupt)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map(Secret::new)
            .map_err(|_| SealError::Corrupt)
    }

    /// Opens a value sealed for one row and seals it again under the first
    /// key for the same row (key rotation).
    pub fn reseal(&self, sealed: &SealedSecret, aad: &str) -> Result<SealedSecret, SealError> {
        let plaintext = self.open(sealed, aad)?;
        self.seal(plaintext.expose(), aad)
    }
}

/// Why [`check_keys`] refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// The configured keys cannot open what the database holds.
    #[error("{0}")]
    Mismatch(String),
    /// The store could not be asked.
    #[error("cannot check store.encryption_keys against the database: {0}")]
    Store(#[from] StoreError),
}

/// Checks that the configured keys can open every secret the store holds:
/// each key id found in the database must be a configured key's id. `sealer`
/// is `None` when no keys are configured.
pub async fn check_keys(store: &dyn Store, sealer: Option<&Sealer>) -> Result<(), KeyCheckError> {
    let stored = store.secret_key_ids().await?;
    let missing: Vec<&str> = stored
        .iter()
        .map(String::as_str)
        .filter(|id| !sealer.is_some_and(|s| s.has_key(id)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let (ids, that) = if missing.len() == 1 {
        ("key id", "that id")
    } else {
        ("key ids", "those ids")
    };
    let configured = match sealer {
        None => "store.encryption_keys is empty".to_owned(),
        Some(s) => format!(
            "none of the configured keys (key ids {}) has {that}",
            s.key_ids().join(", ")
        ),
    };
    Err(KeyCheckError::Mismatch(format!(
        "store.encryption_keys: the database holds secrets sealed with {ids} {}; {configured} \
         (wrong or missing key: add the key that was used, or restore its value)",
        missing.join(", ")
    )))
}

/// [`check_keys`] for a gateway that started while the store was
/// unreachable: retries until the store answers, then logs the outcome (a
/// mismatch as an error naming the key ids; secrets under those keys will
/// not open).
pub async fn check_keys_when_reachable(store: SharedStore, sealer: Option<Arc<Sealer>>) {
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        match check_keys(store.as_ref(), sealer.as_deref()).await {
            Ok(()) => {
                tracing::info!("store.encryption_keys match the database");
                return;
            }
            Err(KeyCheckError::Mismatch(m)) => {
                tracing::error!(error = %m, "store.encryption_keys do not match the database");
                return;
            }
            Err(KeyCheckError::Store(_)) => wait = (wait * 2).min(Duration::from_secs(30)),
        }
    }
}

/// Factors read per batch by [`rotate`].
const ROTATE_BATCH: u32 = 100;

/// Batches in a row without progress after which [`rotate`] gives up.
const ROTATE_MAX_STALLS: u32 = 5;

/// Why [`rotate`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The store failed; what was re-sealed so far stays re-sealed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A stored secret does not open with the configured keys.
    #[error("factor {factor_id}: {error}; nothing was changed for it")]
    Open {
        /// The factor whose secret did not open.
        factor_id: String,
        /// Why.
        error: SealError,
    },
    /// Secrets kept changing under the rotation.
    #[error(
        "{0} factor secret(s) kept changing while being re-sealed (is another rotate-key \
         running with different keys?)"
    )]
    Contended(usize),
}

/// Re-seals, under the sealer's first key, every factor secret the store
/// holds under another key, in batches; returns how many were re-sealed.
///
/// Safe while gateways keep running: each replacement is a compare-and-set on
/// the old sealed value, so a factor that changed or was deleted meanwhile is
/// left alone (and read again if it still needs re-sealing), and two
/// rotations at once re-seal each secret once. Every replica must already
/// have the new key configured, or it cannot open what this writes.
pub async fn rotate(store: &dyn Store, sealer: &Sealer) -> Result<usize, RotateError> {
    let current = sealer.current_key_id();
    let mut resealed = 0;
    let mut stalls = 0;
    loop {
        let batch = store
            .factors_sealed_with_other_keys(current, ROTATE_BATCH)
            .await?;
        if batch.is_empty() {
            return Ok(resealed);
        }
        let mut lost = 0;
        for factor in &batch {
            let Some(old) = &factor.secret else { continue };
            let new = sealer
                .reseal(old, &factor_secret_aad(&factor.id, &factor.user_id))
                .map_err(|error| RotateError::Open {
                    factor_id: factor.id.clone(),
                    error,
                })?;
            if store.replace_factor_secret(&factor.id, old, &new).await? {
                resealed += 1;
            } else {
                // Changed, deleted or re-sealed by someone else since it was
                // read: the next batch reads it again if it still needs us.
                lost += 1;
            }
        }
        if lost == batch.len() {
            stalls += 1;
            if stalls >= ROTATE_MAX_STALLS {
                return Err(RotateError::Contended(lost));
            }
        } else {
            stalls = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{FactorRecord, FactorStatus};

    fn key(b: u8) -> Secret {
        Secret::new(vec![b; KEY_BYTES])
    }

    fn aad() -> String {
        factor_secret_aad("ufthf1abcdefghijklmn", "00uabcdefghijklmnopq")
    }

    #[test]
    fn round_trips() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal(b"totp secret", &aad()).unwrap();
        assert_eq!(sealed.key_id, key_id(&[1; KEY_BYTES]));
        assert_eq!(sealed.blob.len(), NONCE_BYTES + b"totp secret".len() + TAG_BYTES);
        assert!(!sealed.blob.windows(4).any(|w| w == b"totp"), "not in clear");
        assert_eq!(s.open(&sealed, &aad()).unwrap().expose(), b"totp secret");
        let empty = s.seal(b"", &aad()).unwrap();
        assert_eq!(s.open(&empty, &aad()).unwrap().expose(), b"");
    }

    #[test]
    fn every_seal_draws_a_fresh_nonce() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let a = s.seal(b"same", &aad()).unwrap();
        let b = s.seal(b"same", &aad()).unwrap();
        assert_ne!(a.blob[..NONCE_BYTES], b.blob[..NONCE_BYTES]);
        assert_ne!(a.blob, b.blob);
    }

    #[test]
    fn a_value_copied_to_another_row_does_not_open() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal(b"x", &factor_secret_aad("factor-a", "user-1")).unwrap();
        for other in [
            factor_secret_aad("factor-b", "user-1"),
            factor_secret_aad("factor-a", "user-2"),
            String::new(),
        ] {
            assert_eq!(s.open(&sealed, &other).unwrap_err(), SealError::Corrupt);
        }
        assert!(s.open(&sealed, &factor_secret_aad("factor-a", "user-1")).is_ok());
    }

    #[test]
    fn tampered_or_truncated_values_do_not_open() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal(b"secret", &aad()).unwrap();
        for i in [0, NONCE_BYTES, sealed.blob.len() - 1] {
            let mut bad = sealed.clone();
            bad.blob[i] ^= 1;
            assert_eq!(s.open(&bad, &aad()).unwrap_err(), SealError::Corrupt, "byte {i}");
        }
        for len in [0, NONCE_BYTES, NONCE_BYTES + TAG_BYTES, sealed.blob.len() - 1] {
            let short = SealedSecret {
                blob: sealed.blob[..len].to_vec(),
                ..sealed.clone()
            };
            assert_eq!(
                s.open(&short, &aad()).unwrap_err(),
                SealError::Corrupt,
                "len {len}"
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named_by_its_id() {
        let sealed = Sealer::new(&[key(1)]).unwrap().seal(b"x", &aad()).unwrap();
        let other = Sealer::new(&[key(2)]).unwrap();
        assert_eq!(
            other.open(&sealed, &aad()).unwrap_err(),
            SealError::UnknownKey(key_id(&[1; KEY_BYTES]))
        );
        // A forged key id of a configured key does not help either.
        let relabelled = SealedSecret {
            key_id: other.current_key_id().to_owned(),
            ..sealed
        };
        assert_eq!(other.open(&relabelled, &aad()).unwrap_err(), SealError::Corrupt);
    }

    #[test]
    fn rotation_opens_with_the_old_key_and_seals_with_the_new() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let sealed = old.seal(b"x", &aad()).unwrap();
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        assert_eq!(rotated.current_key_id(), key_id(&[2; KEY_BYTES]));
        assert_eq!(
            rotated.key_ids(),
            [key_id(&[2; KEY_BYTES]), key_id(&[1; KEY_BYTES])]
        );
        assert_eq!(rotated.open(&sealed, &aad()).unwrap().expose(), b"x");
        let resealed = rotated.reseal(&sealed, &aad()).unwrap();
        assert_eq!(resealed.key_id, key_id(&[2; KEY_BYTES]));
        let only_new = Sealer::new(&[key(2)]).unwrap();
        assert_eq!(only_new.open(&resealed, &aad()).unwrap().expose(), b"x");
        assert_eq!(
            only_new.open(&sealed, &aad()).unwrap_err(),
            SealError::UnknownKey(key_id(&[1; KEY_BYTES]))
        );
    }

    #[test]
    fn key_ids_are_stable_check_values() {
        // Known answer: a change here would orphan every stored secret.
        assert_eq!(key_id(&[0; KEY_BYTES]), "6474fb3aa489cb78");
        let k = [7u8; KEY_BYTES];
        assert_eq!(key_id(&k).len(), 16);
        assert!(!key_id(&k).contains(&hex::encode(&k[..4])));
        assert_ne!(key_id(&[1; KEY_BYTES]), key_id(&[2; KEY_BYTES]));
    }

    #[test]
    fn bad_key_sets_are_refused_and_keys_never_print() {
        assert_eq!(Sealer::new(&[]).unwrap_err(), SealError::NoKeys);
        assert_eq!(
            Sealer::new(&[Secret::new(vec![0; 16])]).unwrap_err(),
            SealError::BadKey
        );
        assert_eq!(
            Sealer::new(&[key(1), Secret::new(vec![0; 33])]).unwrap_err(),
            SealError::BadKey
        );
        let s = Sealer::new(&[Secret::new(*b"0123456789abcdef0123456789abcdef")]).unwrap();
        let debug = format!("{s:?}");
        assert!(debug.contains(s.current_key_id()));
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    fn totp_factor(id: &str, user_id: &str, secret: Option<SealedSecret>) -> FactorRecord {
        FactorRecord {
            id: id.into(),
            user_id: user_id.into(),
            factor_type: "token:software:totp".into(),
            provider: "GOOGLE".into(),
            status: FactorStatus::Active,
            profile: serde_json::json!({}),
            secret,
            created: 0,
            last_updated: 0,
        }
    }

    /// 250 factors sealed with key A (more than a batch), one without a
    /// secret and one already under B; returns the store and the plaintexts.
    async fn sealed_with_a() -> (Arc<MemoryStore>, Vec<(String, String, Vec<u8>)>) {
        let a = Sealer::new(&[key(0xa)]).unwrap();
        let store = Arc::new(MemoryStore::new());
        let mut plain = Vec::new();
        for i in 0..250 {
            let (id, user) = (format!("f{i:03}"), format!("u{}", i % 7));
            let secret = format!("secret-{i}").into_bytes();
            let sealed = a.seal(&secret, &factor_secret_aad(&id, &user)).unwrap();
            store
                .insert_factor(&totp_factor(&id, &user, Some(sealed)))
                .await
                .unwrap();
            plain.push((id, user, secret));
        }
        store
            .insert_factor(&totp_factor("nosecret", "u0", None))
            .await
            .unwrap();
        let b = Sealer::new(&[key(0xb)]).unwrap();
        let under_b = b.seal(b"already", &factor_secret_aad("underb", "u1")).unwrap();
        store
            .insert_factor(&totp_factor("underb", "u1", Some(under_b)))
            .await
            .unwrap();
        plain.push(("underb".into(), "u1".into(), b"already".to_vec()));
        (store, plain)
    }

    async fn assert_open_with_b_only(store: &MemoryStore, plain: &[(String, String, Vec<u8>)]) {
        let b_only = Sealer::new(&[key(0xb)]).unwrap();
        for (id, user, secret) in plain {
            let f = store.get_factor(user, id).await.unwrap().unwrap();
            let sealed = f.secret.unwrap();
            assert_eq!(sealed.key_id, b_only.current_key_id());
            let opened = b_only.open(&sealed, &factor_secret_aad(id, user)).unwrap();
            assert_eq!(opened.expose(), secret.as_slice(), "{id}");
        }
        assert_eq!(store.secret_key_ids().await.unwrap(), [b_only.current_key_id()]);
        check_keys(store, Some(&b_only)).await.unwrap();
    }

    #[tokio::test]
    async fn rotate_reseals_everything_under_the_first_key() {
        let (store, plain) = sealed_with_a().await;
        let rotating = Sealer::new(&[key(0xb), key(0xa)]).unwrap();
        assert_eq!(rotate(store.as_ref(), &rotating).await.unwrap(), 250);
        assert_open_with_b_only(&store, &plain).await;
        assert_eq!(
            rotate(store.as_ref(), &rotating).await.unwrap(),
            0,
            "running it again finds nothing to do"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_rotations_reseal_each_secret_once() {
        let (store, plain) = sealed_with_a().await;
        let rotating = Arc::new(Sealer::new(&[key(0xb), key(0xa)]).unwrap());
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let (store, sealer) = (store.clone(), rotating.clone());
                tokio::spawn(async move { rotate(store.as_ref(), &sealer).await })
            })
            .collect();
        let mut total = 0;
        for run in runs {
            total += run.await.unwrap().unwrap();
        }
        assert_eq!(total, 250);
        assert_open_with_b_only(&store, &plain).await;
    }

    #[tokio::test]
    async fn rotate_stops_at_a_secret_that_does_not_open() {
        let (store, _) = sealed_with_a().await;
        let a = Sealer::new(&[key(0xa)]).unwrap();
        // A value sealed for another row, copied here.
        let moved = a.seal(b"x", &factor_secret_aad("elsewhere", "u9")).unwrap();
        store
            .insert_factor(&totp_factor("f000-copy", "u0", Some(moved)))
            .await
            .unwrap();
        let rotating = Sealer::new(&[key(0xb), key(0xa)]).unwrap();
        let err = rotate(store.as_ref(), &rotating).await.unwrap_err();
        assert!(
            matches!(&err, RotateError::Open { factor_id, error: SealError::Corrupt } if factor_id == "f000-copy"),
            "{err}"
        );
        let without_a = Sealer::new(&[key(0xb)]).unwrap();
        let err = rotate(store.as_ref(), &without_a).await.unwrap_err();
        assert!(
            matches!(
                &err,
                RotateError::Open {
                    error: SealError::UnknownKey(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    async fn store_with_secrets(key_ids: &[&str]) -> MemoryStore {
        let store = MemoryStore::new();
        for (i, id) in key_ids.iter().enumerate() {
            store
                .insert_factor(&FactorRecord {
                    id: format!("f{i}"),
                    user_id: "u".into(),
                    factor_type: "token:software:totp".into(),
                    provider: "GOOGLE".into(),
                    status: FactorStatus::Active,
                    profile: serde_json::json!({}),
                    secret: Some(SealedSecret {
                        key_id: (*id).to_owned(),
                        blob: vec![0; 40],
                    }),
                    created: 0,
                    last_updated: 0,
                })
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn check_keys_passes_when_every_stored_key_id_is_configured() {
        let sealer = Sealer::new(&[key(2), key(1)]).unwrap();
        let empty = MemoryStore::new();
        check_keys(&empty, Some(&sealer)).await.unwrap();
        check_keys(&empty, None).await.unwrap();
        let (k1, k2) = (key_id(&[1; KEY_BYTES]), key_id(&[2; KEY_BYTES]));
        check_keys(&store_with_secrets(&[&k1]).await, Some(&sealer))
            .await
            .unwrap();
        check_keys(&store_with_secrets(&[&k1, &k2, &k1]).await, Some(&sealer))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn check_keys_names_the_key_ids_the_database_needs() {
        let (k1, k2, k3) = (
            key_id(&[1; KEY_BYTES]),
            key_id(&[2; KEY_BYTES]),
            key_id(&[3; KEY_BYTES]),
        );
        let store = store_with_secrets(&[&k1, &k3]).await;
        let sealer = Sealer::new(&[key(2), key(1)]).unwrap();
        let err = check_keys(&store, Some(&sealer)).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KeyCheckError::Mismatch(_)));
        assert!(
            msg.starts_with(&format!(
                "store.encryption_keys: the database holds secrets sealed with key id {k3}; \
                 none of the configured keys (key ids {k2}, {k1}) has that id"
            )),
            "{msg}"
        );
        assert!(msg.contains("wrong or missing key"), "{msg}");

        let sealer = Sealer::new(&[key(2)]).unwrap();
        let msg = check_keys(&store, Some(&sealer)).await.unwrap_err().to_string();
        assert!(msg.contains("sealed with key ids "), "{msg}");
        assert!(msg.contains(&k1) && msg.contains(&k3), "{msg}");
        assert!(msg.contains("has those ids"), "{msg}");

        let msg = check_keys(&store, None).await.unwrap_err().to_string();
        assert!(msg.contains("store.encryption_keys is empty"), "{msg}");
    }
}
