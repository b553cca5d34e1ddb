//! Factor secrets at rest: AES-256-GCM under `store.encryption_keys`.
//!
//! The first key seals; every key opens, so keys rotate by prepending a new
//! one and running `portcullis store rotate-key`. Each sealed value names the
//! key that sealed it by a key id (the first 8 bytes of HMAC-SHA256(key,
//! "portcullis key id"), hex): a check value that identifies a key without
//! revealing it, so a wrong or missing key is a clear error, never garbage.
//! Associated data binds each value to its row (factor id and user id): a
//! secret copied to another row fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::secret::Secret;
use crate::store::SealedSecret;

const NONCE_BYTES: usize = 12;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no store.encryption_keys configured")]
    NoKeys,
    #[error("store.encryption_keys: each key must be 32 bytes")]
    BadKey,
    #[error("sealed with key id {0}, which is not among store.encryption_keys")]
    UnknownKey(String),
    #[error("sealed value is corrupt or bound to another row")]
    Corrupt,
}

/// The key id of a 32-byte key.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&crate::crypto::hmac_sha256(key, b"portcullis key id")[..8])
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
    /// A sealer over `keys` (32 bytes each; the first seals).
    pub fn new(keys: &[Secret]) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoKeys);
        }
        let keys = keys
            .iter()
            .map(|k| {
                let cipher = Aes256Gcm::new_from_slice(k.expose()).map_err(|_| SealError::BadKey)?;
                if k.len() != 32 {
                    return Err(SealError::BadKey);
                }
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

    /// Seals `plaintext` for the row described by `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<SealedSecret, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError::NoKeys)?;
        let nonce_bytes = crate::crypto::random_bytes(NONCE_BYTES);
        let nonce = Nonce::try_from(&nonce_bytes[..]).map_err(|_| SealError::Corrupt)?;
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut blob = nonce_bytes;
        blob.extend_from_slice(&ct);
        Ok(SealedSecret {
            key_id: id.clone(),
            blob,
        })
    }

    /// Opens a sealed value for the row described by `aad`.
    pub fn open(&self, sealed: &SealedSecret, aad: &str) -> Result<Secret, SealError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.blob.len() < NONCE_BYTES + 16 {
            return Err(SealError::Corrupt);
        }
        let (nonce, ct) = sealed.blob.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealError::Corrupt)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Secret::new)
            .map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Secret {
        Secret::new(vec![b; 32])
    }

    #[test]
    fn round_trips_and_binds_to_the_row() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal(b"totp secret", "row-a").unwrap();
        assert_eq!(s.open(&sealed, "row-a").unwrap().expose(), b"totp secret");
        assert_eq!(s.open(&sealed, "row-b").unwrap_err(), SealError::Corrupt);
        let mut tampered = sealed.clone();
        let last = tampered.blob.len() - 1;
        tampered.blob[last] ^= 1;
        assert_eq!(s.open(&tampered, "row-a").unwrap_err(), SealError::Corrupt);
        assert_ne!(
            s.seal(b"totp secret", "row-a").unwrap().blob,
            sealed.blob,
            "fresh nonce per seal"
        );
    }

    #[test]
    fn rotation_and_unknown_keys() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let sealed = old.seal(b"x", "r").unwrap();
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        assert_eq!(rotated.open(&sealed, "r").unwrap().expose(), b"x");
        assert_eq!(rotated.seal(b"x", "r").unwrap().key_id, key_id(&[2; 32]));
        let only_new = Sealer::new(&[key(2)]).unwrap();
        assert_eq!(
            only_new.open(&sealed, "r").unwrap_err(),
            SealError::UnknownKey(key_id(&[1; 32]))
        );
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(Sealer::new(&[]).unwrap_err(), SealError::NoKeys);
        assert_eq!(
            Sealer::new(&[Secret::new(vec![0; 16])]).unwrap_err(),
            SealError::BadKey
        );
    }
}
