//! Ends the sessions of a users-file user whose password changed in the file.
//!
//! The users file is read at start-up (and on a reload, where one exists), so
//! a password changed there is noticed when the file is loaded: the store
//! keeps a fingerprint of each file user's password hash, and a fingerprint
//! that differs from the stored one moves the user's session epoch, which
//! ends every session the old password opened, on every replica.
//!
//! The fingerprint is the SHA-256 of the PHC string under a fixed label. The
//! PHC string carries a random salt, so the fingerprint says nothing about
//! the password; it is not keyed, so rotating the session secrets does not
//! look like a password change. It is kept as a store record of kind
//! [`KIND`] (one per file user, id `pwfp-<user id>`) that never expires: the
//! shared record type every backend already has, so no schema change.
//! A user seen for the first time is recorded without moving the epoch.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::revocation::RevocationView;
use crate::clock::UnixTime;
use crate::store::{SharedStore, StoreResult, TransactionRecord};
use crate::users::User;

/// The store record kind of a password fingerprint.
pub const KIND: &str = "file_password";

/// Records of this kind are kept "forever" (31 Dec 9999).
const NEVER: UnixTime = 253_402_300_799;

/// How often a fingerprint update is retried when another replica wrote the
/// same record meanwhile.
const ATTEMPTS: usize = 4;

/// The fingerprint of a password hash (`-` for a user without a password).
pub fn fingerprint(password_hash: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis/file-password/v1\n");
    match password_hash {
        Some(p) => {
            h.update(b"1");
            h.update(p.as_bytes());
        }
        None => h.update(b"0"),
    }
    hex::encode(h.finalize())
}

fn record_id(user_id: &str) -> String {
    format!("pwfp-{user_id}")
}

/// Compares every users-file user's password fingerprint with the stored one
/// and moves the epoch of each user whose password changed (in the store and
/// in `view`). Returns how many users' epochs moved. On a store error nothing
/// is lost: the caller retries (until it succeeds, sessions are not trusted).
pub async fn sync(
    store: &SharedStore,
    users: &[std::sync::Arc<User>],
    view: &RevocationView,
    now: UnixTime,
) -> StoreResult<usize> {
    let mut moved = 0;
    for user in users.iter().filter(|u| u.from_file) {
        let fp = fingerprint(user.password_hash.as_deref());
        if sync_one(store, &user.id, &fp, view, now).await? {
            crate::audit!("session.revoked", user = %user.username, reason = "password changed in the users file");
            moved += 1;
        }
    }
    Ok(moved)
}

/// True when the user's epoch moved.
async fn sync_one(
    store: &SharedStore,
    user_id: &str,
    fp: &str,
    view: &RevocationView,
    now: UnixTime,
) -> StoreResult<bool> {
    let id = record_id(user_id);
    for _ in 0..ATTEMPTS {
        let Some(cur) = store.get_transaction(KIND, &id, now).await? else {
            // First sight: remember it. A concurrent first write wins alike.
            let rec = TransactionRecord {
                id: id.clone(),
                kind: KIND.into(),
                user_id: user_id.to_owned(),
                data: json!({ "fp": fp }),
                version: 0,
                expires_at: NEVER,
            };
            if store.put_transaction(&rec).await.is_ok() {
                return Ok(false);
            }
            continue;
        };
        if cur.data["fp"].as_str() == Some(fp) {
            return Ok(false);
        }
        // Changed: end the old sessions first, then remember the new hash (if
        // the second write fails, the next load moves the epoch again, which
        // is harmless).
        let epoch = store.bump_epoch(user_id).await?;
        view.note_epoch(user_id, epoch);
        let rec = TransactionRecord {
            data: json!({ "fp": fp }),
            ..cur
        };
        if store.update_transaction(&rec, now).await? {
            return Ok(true);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::session::SessionClaims;
    use crate::session::SessionReject;
    use crate::store::memory::MemoryStore;

    fn user(hash: &str) -> Arc<User> {
        Arc::new(User {
            id: "00uFILE".into(),
            username: "file".into(),
            display_name: None,
            email: None,
            phone: None,
            groups: Vec::new(),
            password_hash: Some(hash.into()),
            from_file: true,
            config_totp: None,
        })
    }

    #[tokio::test]
    async fn a_changed_hash_moves_the_epoch_once() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let view = RevocationView::new(Duration::from_secs(2));
        let t0 = Instant::now();
        view.refresh(&store, 0, t0).await.unwrap();
        assert_eq!(sync(&store, &[user("$argon2id$a")], &view, 10).await.unwrap(), 0);
        assert_eq!(sync(&store, &[user("$argon2id$a")], &view, 11).await.unwrap(), 0);
        let old = SessionClaims::new(
            "00uFILE",
            1,
            vec!["pwd".into()],
            10,
            None,
            view.epoch("00uFILE"),
            10,
        );
        assert_eq!(view.check(&old, t0), Ok(()));
        assert_eq!(sync(&store, &[user("$argon2id$b")], &view, 12).await.unwrap(), 1);
        assert_eq!(view.check(&old, t0), Err(SessionReject::Revoked));
        // Another replica sees it after its refresh; the next load is quiet.
        let other = RevocationView::new(Duration::from_secs(2));
        other.refresh(&store, 12, t0).await.unwrap();
        assert_eq!(other.check(&old, t0), Err(SessionReject::Revoked));
        assert_eq!(sync(&store, &[user("$argon2id$b")], &view, 13).await.unwrap(), 0);
    }

    #[test]
    fn fingerprints_differ_by_hash_and_presence() {
        assert_ne!(fingerprint(Some("a")), fingerprint(Some("b")));
        assert_ne!(fingerprint(None), fingerprint(Some("")));
        assert_eq!(fingerprint(Some("a")).len(), 64);
    }
}
