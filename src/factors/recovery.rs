//! Recovery codes: single-use codes shown once after enrollment, for when the
//! authenticator is lost. Stored only as hashes; each is consumed atomically.
//!
//! A code is 12 characters from a 32-letter alphabet without look-alikes (60
//! bits), shown as `xxxx-xxxx-xxxx`. With that much entropy a salted SHA-256
//! is enough at rest (no slow hash needed), and it lets the store look a code
//! up by its hash.

use std::net::IpAddr;

use rand::RngExt;
use sha2::{Digest, Sha256};

use super::VerifyError;
use crate::audit;
use crate::state::Handles;
use crate::store::StoreError;
use crate::users::User;

/// The `factorType` under which the authn API offers recovery codes (a
/// pseudo-factor: not a Factor object of the Factors API).
pub const RECOVERY_TYPE: &str = "recovery_code";

/// Every `result` [`verify_recovery`] counts (see
/// [`super::FactorKind::verification_results`]).
pub const RESULTS: &[&str] = &["success", "invalid", "locked"];

/// The `amr` value a recovery code adds to a session.
pub const AMR: &str = "recovery";

/// Letters used in codes (no 0/o, 1/l/i).
const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

/// Generates `n` new codes (display form).
pub fn generate(n: u32) -> Vec<String> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let raw: String = (0..12)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect();
            format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12])
        })
        .collect()
}

/// The canonical form of what a user typed: lower case, no spaces or dashes.
pub fn canonical(input: &str) -> String {
    input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The stored hash of a code for `user_id`.
pub fn hash(user_id: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis/recovery-code/v1\0");
    h.update(user_id.as_bytes());
    h.update(b"\0");
    h.update(canonical(code).as_bytes());
    hex::encode(h.finalize())
}

/// Checks and consumes a recovery code.
pub async fn verify_recovery(st: &Handles, user: &User, code: &str, addr: IpAddr) -> Result<(), VerifyError> {
    if !st.config.factors.recovery_codes.enabled {
        return Err(VerifyError::NotActive);
    }
    let Some(attempt) = super::attempt(st, user, RECOVERY_TYPE, addr).await? else {
        return Err(super::locked_answer(st));
    };
    if canonical(code).len() != 12
        || !st
            .store
            .use_recovery_code(&user.id, &hash(&user.id, code))
            .await?
    {
        super::attempt_failed(st, attempt, user, RECOVERY_TYPE, addr, "invalid").await?;
        return Err(VerifyError::Invalid);
    }
    super::attempt_succeeded(st, attempt, user).await;
    crate::metrics::factor_verification(RECOVERY_TYPE, "success");
    audit!("factor.verified", user = %user.username, factor_type = RECOVERY_TYPE, client = %addr);
    Ok(())
}

/// Replaces `user`'s recovery codes with new ones and returns them (shown once).
pub async fn new_recovery_codes(st: &Handles, user: &User) -> Result<Vec<String>, StoreError> {
    let codes = generate(st.config.factors.recovery_codes.count);
    let hashes: Vec<String> = codes.iter().map(|c| hash(&user.id, c)).collect();
    st.store
        .replace_recovery_codes(&user.id, &hashes, st.clock.now())
        .await?;
    audit!("recovery_codes.generated", user = %user.username, count = codes.len());
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let codes = generate(10);
        assert_eq!(codes.len(), 10);
        let mut dedup = codes.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 10);
        for c in &codes {
            assert_eq!(c.len(), 14);
            assert_eq!(canonical(c).len(), 12);
        }
    }

    #[test]
    fn hashing_ignores_formatting_but_binds_the_user() {
        assert_eq!(hash("u1", "abcd-efgh-jkmn"), hash("u1", " ABCD EFGH JKMN "));
        assert_ne!(hash("u1", "abcd-efgh-jkmn"), hash("u2", "abcd-efgh-jkmn"));
    }
}
