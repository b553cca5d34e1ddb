//! Push approval with number matching (SPEC section 8).
//!
//! **Enrollment.** Enrolling stores a `push` factor `PENDING_ACTIVATION` and
//! returns a one-time activation token (kept in the store only as its
//! SHA-256, valid [`ACTIVATION_TTL`] seconds). The device makes an Ed25519
//! key pair and posts `{activationToken, publicKey, deviceName, address}` to
//! `{prefix}/api/v1/push/devices` ([`register_device`]): the factor becomes
//! `ACTIVE` with the public key and the address in its profile.
//!
//! **Challenge.** [`challenge`] creates a push transaction (store record kind
//! `push`, so every replica can answer a poll) holding the factor, the user,
//! the number the browser shows (10 to 99) and the expiry (`factors.push.ttl`),
//! and sends a message through `factors.push.delivery` only: `to` is the
//! device's address (data for the relay; the gateway never connects to it),
//! with the transaction id, the factor id, the context (user, client address,
//! time), the app's name from configuration (never the request's Host) and
//! `expires_at`, but never the number. The message is sent in the
//! background: the answer does not wait for the relay, so a real push and a
//! passwordless decoy answer alike in time and content.
//!
//! **Answer.** The device posts `{decision, number, signature}` to
//! `{prefix}/api/v1/push/transactions/{tid}` ([`answer`]); the signature is
//! Ed25519 (base64url, 64 bytes) over the UTF-8 bytes of [`signed_bytes`]:
//!
//! ```text
//! portcullis-push-v1\n{tid}\n{factorId}\n{decision}\n{number}\n{expiresAt}
//! ```
//!
//! with `{number}` in decimal without leading zeros and `{expiresAt}` exactly
//! the `expires_at` string of the message (RFC 3339 UTC with milliseconds,
//! `2026-11-18T11:06:40.000Z`). Unsigned and wrongly signed answers are
//! refused; so are answers after the expiry (late) and answers to a
//! transaction already answered (repeated). Approving with a wrong number
//! rejects the transaction (one guess only: number matching is there to stop
//! a user approving a push they did not ask for) and counts as a failed
//! second factor. A deny needs no number (any is accepted, signed like the rest).
//!
//! **Result.** [`status`] answers WAITING, SUCCESS (approved), REJECTED
//! (denied or wrong number) or TIMEOUT (no answer before the expiry); the
//! record stays readable [`KEEP_AFTER`] seconds after the expiry.

use std::net::IpAddr;

use ed25519_dalek::{Signature, VerifyingKey};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    BoxFuture, Challenge, ChallengeContext, ChallengeError, EnrollError, Enrolled, Factor, FactorKind, Flow,
    PushResult, VerifyError,
};
use crate::audit;
use crate::clock::{UnixTime, rfc3339};
use crate::config::FactorsConfig;
use crate::delivery::{self, Kind, Message};
use crate::state::Handles;
use crate::store::{FactorRecord, FactorStatus, StoreError, TransactionRecord};
use crate::users::User;

/// Store record kind of a push transaction.
pub const KIND: &str = "push";
/// Store record kind of an activation token.
pub const ACTIVATION_KIND: &str = "push_activation";
/// How long an activation token is valid.
pub const ACTIVATION_TTL: i64 = 10 * 60;
/// How long a push transaction stays readable after its expiry.
pub const KEEP_AFTER: i64 = 10 * 60;
/// Pushes per user per sliding hour (push bombing stops here).
pub const MAX_PUSHES_PER_HOUR: u32 = 10;
/// The first line of the signed text.
pub const SIGNATURE_CONTEXT: &str = "portcullis-push-v1";
/// Limits on what a device registers.
pub const MAX_DEVICE_NAME: usize = 100;
pub const MAX_ADDRESS: usize = 2048;

/// The exact bytes a device signs.
pub fn signed_bytes(tid: &str, factor_id: &str, decision: &str, number: u32, expires_at: &str) -> Vec<u8> {
    format!("{SIGNATURE_CONTEXT}\n{tid}\n{factor_id}\n{decision}\n{number}\n{expires_at}").into_bytes()
}

/// A push transaction as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushTx {
    pub factor_id: String,
    /// The number the browser shows.
    pub number: u8,
    /// `WAITING`, `APPROVED` or `REJECTED`.
    pub status: String,
    pub expires: UnixTime,
    /// `expires` as sent to the device (the signed form).
    pub expires_at: String,
    pub created: UnixTime,
    /// Why it was rejected (`denied`, `wrong_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The tag of the flow it was started in (see `otp::flow_tag_of`): only
    /// that flow may use its approval. Empty in transactions stored before
    /// pushes were bound to flows: no flow matches.
    #[serde(default)]
    pub flow: String,
}

fn tx_of(rec: &TransactionRecord) -> Option<PushTx> {
    serde_json::from_value(rec.data.clone()).ok()
}

/// The device's public key from a factor profile.
pub fn public_key(factor: &FactorRecord) -> Option<VerifyingKey> {
    let raw = crate::crypto::unb64(factor.profile["publicKey"].as_str()?)?;
    VerifyingKey::from_bytes(&<[u8; 32]>::try_from(raw.as_slice()).ok()?).ok()
}

/// Enrolls a push factor and returns its activation token.
///
/// Enrolled by a session or a sign-in (not the admin API), the token
/// records the user's session epoch: ending the user's sessions voids it.
pub async fn enroll(st: &Handles, user: &User, provider: &str, flow: &Flow) -> Result<Enrolled, EnrollError> {
    if !st.config.factors.push.enabled || provider != "OKTA" {
        return Err(EnrollError::NotSupported);
    }
    let now = st.clock.now();
    // The epoch recorded below is read after the store's latest, so a view
    // that lags does not void the pairing it hands out.
    let epoch = match flow {
        Flow::Admin => None,
        Flow::Authn(_) | Flow::Session(_) => {
            st.revocations.catch_up(&st.store, now).await?;
            Some(st.revocations.epoch(&user.id))
        }
    };
    let factor = FactorRecord {
        id: super::new_factor_id("push", provider),
        user_id: user.id.clone(),
        factor_type: "push".into(),
        provider: provider.into(),
        status: FactorStatus::PendingActivation,
        profile: json!({}),
        secret: None,
        created: now,
        last_updated: now,
    };
    st.store.insert_factor(&factor).await?;
    let token = crate::crypto::random_token();
    let expires_at = now + ACTIVATION_TTL;
    st.store
        .put_transaction(&TransactionRecord {
            id: crate::crypto::token_id(&token),
            kind: ACTIVATION_KIND.into(),
            user_id: user.id.clone(),
            // Ending the user's sessions voids pairings handed out before
            // (see `register_device`).
            data: json!({ "factor_id": factor.id, "epoch": epoch }),
            version: 0,
            expires_at,
        })
        .await?;
    crate::metrics::factor_event("enrolled", "push");
    audit!("factor.enrolled", user = %user.username, factor_type = "push", factor_id = %factor.id);
    Ok(Enrolled::Push {
        factor,
        activation_token: token,
        expires_at,
    })
}

/// What a device posts to pair itself.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceRegistration {
    #[serde(rename = "activationToken")]
    pub activation_token: String,
    /// 32 bytes, base64url (padding optional).
    #[serde(rename = "publicKey")]
    pub public_key: String,
    #[serde(rename = "deviceName")]
    pub device_name: String,
    /// Opaque: how the relay reaches the device.
    pub address: String,
}

/// Why a device could not pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Unknown, used or expired activation token.
    #[error("invalid or expired activation token")]
    InvalidToken,
    /// A field is wrong (E0000001 with this cause).
    #[error("{0}")]
    Invalid(String),
    #[error("store unavailable")]
    Unavailable,
}

impl From<StoreError> for DeviceError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error during device pairing");
        DeviceError::Unavailable
    }
}

fn printable(s: &str) -> bool {
    !s.chars().any(crate::names::is_hidden_in_label)
}

/// Pairs a device: checks the fields, consumes the activation token and
/// activates the factor with the device's key and address.
pub async fn register_device(st: &Handles, reg: &DeviceRegistration) -> Result<FactorRecord, DeviceError> {
    // Check the fields before using up the token, so a typo can be corrected.
    let key = crate::crypto::unb64(reg.public_key.trim_end_matches('='))
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .filter(|k| !k.is_weak())
        .ok_or_else(|| {
            DeviceError::Invalid("publicKey: must be a 32-byte Ed25519 public key, base64url".into())
        })?;
    let name = reg.device_name.trim();
    if name.is_empty() || name.chars().count() > MAX_DEVICE_NAME || !printable(name) {
        return Err(DeviceError::Invalid(format!(
            "deviceName: 1 to {MAX_DEVICE_NAME} printable characters"
        )));
    }
    if reg.address.is_empty() || reg.address.len() > MAX_ADDRESS || !printable(&reg.address) {
        return Err(DeviceError::Invalid(format!(
            "address: 1 to {MAX_ADDRESS} printable characters"
        )));
    }
    if !st.config.factors.push.enabled {
        return Err(DeviceError::InvalidToken);
    }
    let now = st.clock.now();
    // Before the token is used up: a store that does not answer leaves it
    // for the device's retry.
    st.revocations.catch_up(&st.store, now).await?;
    let Some(token) = st
        .store
        .take_transaction(
            ACTIVATION_KIND,
            &crate::crypto::token_id(&reg.activation_token),
            now,
        )
        .await?
    else {
        return Err(DeviceError::InvalidToken);
    };
    let factor_id = token.data["factor_id"].as_str().unwrap_or_default();
    // The user's sessions were ended since this pairing was handed out (an
    // administrator, "sign out everywhere", on any replica: read from the
    // store now): the code was shown to a session that is over, so it pairs
    // nothing. Tokens from before the epoch was recorded have none.
    if let Some(began) = token.data["epoch"].as_u64()
        && st.revocations.epoch(&token.user_id) > began
    {
        audit!("factor.pairing_refused", user_id = %token.user_id, factor_id = %factor_id, reason = "sessions ended since enrollment");
        return Err(DeviceError::InvalidToken);
    }
    let Some(pending) = st.store.get_factor(&token.user_id, factor_id).await? else {
        return Err(DeviceError::InvalidToken);
    };
    if pending.factor_type != "push" || pending.status != FactorStatus::PendingActivation {
        return Err(DeviceError::InvalidToken);
    }
    let active = FactorRecord {
        status: FactorStatus::Active,
        profile: json!({
            "credentialId": name,
            "deviceName": name,
            "publicKey": crate::crypto::b64(key.as_bytes()),
            "address": reg.address,
        }),
        last_updated: now,
        ..pending
    };
    // The token was taken atomically, and the update only applies to a factor
    // still pending: one device pairs, and a factor removed meanwhile stays gone.
    let updated = st
        .store
        .update_factor_profile(
            &active.user_id,
            &active.id,
            FactorStatus::PendingActivation,
            &active.profile,
            FactorStatus::Active,
            now,
        )
        .await?;
    if !updated {
        return Err(DeviceError::InvalidToken);
    }
    crate::metrics::factor_event("activated", "push");
    audit!("factor.activated", user_id = %active.user_id, factor_type = "push", factor_id = %active.id, device = %name);
    Ok(active)
}

/// Stores a new `WAITING` push transaction of `factor_id` of `user_id`,
/// started `now`: its id, expiry and number to pick.
async fn new_tx(
    st: &Handles,
    user_id: &str,
    factor_id: &str,
    flow: &Flow,
    now: UnixTime,
) -> Result<(String, UnixTime, u8), StoreError> {
    let ttl = i64::try_from(st.config.factors.push.ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let expires = now + ttl;
    let number: u8 = rand::rng().random_range(10..=99);
    let tid = format!("ptx{}", crate::crypto::random_id(29));
    let tx = PushTx {
        factor_id: factor_id.to_owned(),
        number,
        status: "WAITING".into(),
        expires,
        expires_at: rfc3339(expires),
        created: now,
        reason: None,
        flow: super::otp::flow_tag_of(st, flow),
    };
    st.store
        .put_transaction(&TransactionRecord {
            id: tid.clone(),
            kind: KIND.into(),
            user_id: user_id.to_owned(),
            data: serde_json::to_value(&tx).unwrap_or(Value::Null),
            version: 0,
            expires_at: expires + KEEP_AFTER,
        })
        .await?;
    Ok((tid, expires, number))
}

/// Starts a push: a transaction and a message through the relay.
pub async fn challenge(
    st: &Handles,
    user: &User,
    factor: &Factor,
    ctx: &ChallengeContext,
) -> Result<Challenge, ChallengeError> {
    let cfg = &st.config.factors.push;
    let Some(delivery) = cfg.delivery.as_ref().filter(|_| cfg.enabled) else {
        return Err(ChallengeError::NotActive);
    };
    let address = factor.record.profile["address"].as_str().map(str::to_owned);
    let (true, Some(address), Some(_)) = (factor.is_active(), address, public_key(&factor.record)) else {
        return Err(ChallengeError::NotActive);
    };
    let unavailable = |e: StoreError| {
        tracing::error!(error = %e, "store error while sending a push");
        ChallengeError::Unavailable
    };
    if let Err(reset) = super::otp::take_send_slot(st, &user.id, "push", MAX_PUSHES_PER_HOUR)
        .await
        .map_err(unavailable)?
    {
        audit!("factor.challenge.refused", user = %user.username, factor_type = "push", reason = "hourly push limit");
        return Err(ChallengeError::RateLimited(reset));
    }
    let now = st.clock.now();
    let (tid, expires, number) = new_tx(st, &user.id, &factor.record.id, &ctx.flow, now)
        .await
        .map_err(unavailable)?;
    let app = super::otp::app_name(st);
    let mut context = serde_json::Map::new();
    context.insert("factor_id".into(), json!(factor.record.id));
    context.insert("client".into(), json!(ctx.client_addr.to_string()));
    context.insert("time".into(), json!(rfc3339(now)));
    let msg = Message {
        kind: Kind::Push,
        to: address,
        text: format!(
            "Sign-in request for {} to {app} from {}. Pick the number shown on the sign-in page.",
            user.username, ctx.client_addr
        ),
        subject: None,
        user: user.username.clone(),
        app,
        expires_at: expires,
        transaction_id: Some(tid.clone()),
        code: None,
        context,
    };
    // Delivered in the background: the answer never waits for the relay
    // and never depends on it, so a real user's push answers in the same
    // time and with the same content as a decoy's (passwordless sign-in
    // must not tell who exists). A failure is logged (`delivery.failed`);
    // the transaction stays WAITING and times out, as a decoy's does, and
    // the user can ask again.
    let delivery = delivery.clone();
    let username = user.username.clone();
    tokio::spawn(async move {
        if let Err(e) = delivery::deliver(&delivery, &msg, now).await {
            tracing::error!(error = %e, user = %username, "sending a push failed");
        }
    });
    crate::metrics::factor_event("challenged", "push");
    audit!("factor.challenge.sent", user = %user.username, factor_type = "push", factor_id = %factor.record.id, transaction = %tid);
    Ok(Challenge::Push {
        transaction_id: tid,
        expires_at: expires,
        correct_answer: number,
    })
}

fn result_of(tx: &PushTx, now: UnixTime) -> PushResult {
    match tx.status.as_str() {
        "APPROVED" => PushResult::Success,
        "REJECTED" => PushResult::Rejected,
        _ if now >= tx.expires => PushResult::Timeout,
        _ => PushResult::Waiting,
    }
}

/// Transaction `tid` when it is one of `factor` of `user` (`None`: no such
/// transaction for this user and factor).
async fn own_tx(
    st: &Handles,
    user: &User,
    factor: &Factor,
    tid: &str,
    now: UnixTime,
) -> Result<Option<(TransactionRecord, PushTx)>, StoreError> {
    let Some(rec) = st.store.get_transaction(KIND, tid, now).await? else {
        return Ok(None);
    };
    Ok(tx_of(&rec)
        .filter(|tx| rec.user_id == user.id && tx.factor_id == factor.record.id)
        .map(|tx| (rec, tx)))
}

/// The state of transaction `tid` of `factor` (`None`: no such transaction
/// for this user and factor).
pub async fn status(
    st: &Handles,
    user: &User,
    factor: &Factor,
    tid: &str,
) -> Result<Option<PushResult>, StoreError> {
    let now = st.clock.now();
    Ok(own_tx(st, user, factor, tid, now)
        .await?
        .map(|(_, tx)| result_of(&tx, now)))
}

/// Why a cancelled push is `REJECTED` (kept in [`PushTx::reason`]).
pub const CANCELLED: &str = "cancelled";

/// Cancels transaction `tid` of `factor` (the requester gave up waiting):
/// a `WAITING` push becomes `REJECTED` with the reason [`CANCELLED`], so
/// polls answer `REJECTED`, the sign-in it was for cannot complete, and the
/// device's answer is refused ([`AnswerError::Cancelled`]). A push that is
/// no longer waiting (approved, rejected, timed out) stays as it is:
/// cancelling is idempotent and answers the state. `None`: no such
/// transaction for this user and factor.
pub async fn cancel(
    st: &Handles,
    user: &User,
    factor: &Factor,
    tid: &str,
) -> Result<Option<PushResult>, StoreError> {
    // Compare-and-set on the transaction's version; a device answering at
    // the same moment makes one retry see its answer.
    for _ in 0..8 {
        let now = st.clock.now();
        let Some((rec, mut tx)) = own_tx(st, user, factor, tid, now).await? else {
            return Ok(None);
        };
        let result = result_of(&tx, now);
        if result != PushResult::Waiting {
            return Ok(Some(result));
        }
        tx.status = "REJECTED".into();
        tx.reason = Some(CANCELLED.into());
        let updated = TransactionRecord {
            data: serde_json::to_value(&tx).unwrap_or(Value::Null),
            ..rec
        };
        if st.store.update_transaction(&updated, now).await? {
            crate::metrics::factor_verification("push", "cancelled");
            audit!("push.cancelled", user = %user.username, factor_id = %tx.factor_id, transaction = %tid);
            return Ok(Some(PushResult::Rejected));
        }
    }
    Err(StoreError::Unavailable(
        "a push transaction kept changing while it was cancelled".into(),
    ))
}

/// The state of transaction `tid`, whoever it belongs to (the portal's
/// polling script; it learns no more than WAITING or not). `None`: unknown.
pub async fn status_by_id(st: &Handles, tid: &str) -> Result<Option<PushResult>, StoreError> {
    let now = st.clock.now();
    Ok(st
        .store
        .get_transaction(KIND, tid, now)
        .await?
        .as_ref()
        .and_then(tx_of)
        .map(|tx| result_of(&tx, now)))
}

/// A push transaction for a decoy factor (passwordless sign-in of an
/// unknown user): rate limited and stored like a real one, so it answers
/// polls the same way (WAITING, then TIMEOUT), but no message is sent.
pub async fn decoy(
    st: &Handles,
    user_id: &str,
    factor_id: &str,
    flow: &Flow,
) -> Result<Challenge, ChallengeError> {
    let unavailable = |e: StoreError| {
        tracing::error!(error = %e, "store error while starting a push");
        ChallengeError::Unavailable
    };
    if let Err(reset) = super::otp::take_send_slot(st, user_id, "push", MAX_PUSHES_PER_HOUR)
        .await
        .map_err(unavailable)?
    {
        return Err(ChallengeError::RateLimited(reset));
    }
    let now = st.clock.now();
    let (tid, expires, number) = new_tx(st, user_id, factor_id, flow, now)
        .await
        .map_err(unavailable)?;
    Ok(Challenge::Push {
        transaction_id: tid,
        expires_at: expires,
        correct_answer: number,
    })
}

/// Uses up an approved transaction (a sign-in completes once): true if it
/// was approved, started in `flow` and this caller took it. A locked user is
/// refused like a wrong code (or told, with `reveal_lockout`). Another
/// flow's approval is not taken: it completes only the sign-in it was
/// started for.
pub async fn consume(
    st: &Handles,
    user: &User,
    factor: &Factor,
    tid: &str,
    flow: &Flow,
) -> Result<bool, VerifyError> {
    let ours = st
        .store
        .get_transaction(KIND, tid, st.clock.now())
        .await?
        .as_ref()
        .and_then(tx_of)
        .is_some_and(|tx| super::otp::is_flow_tag_of(st, flow, &tx.flow));
    if !ours || status(st, user, factor, tid).await? != Some(PushResult::Success) {
        return Ok(false);
    }
    if super::locked(st, user).await? {
        crate::metrics::factor_verification("push", "locked");
        audit!("factor.verify.refused", user = %user.username, factor_type = "push", reason = "user locked");
        return Err(super::locked_answer(st));
    }
    // Approved is final, so what is taken now is the approved transaction.
    let taken = st.store.take_transaction(KIND, tid, st.clock.now()).await?;
    Ok(taken
        .and_then(|r| tx_of(&r).filter(|_| r.user_id == user.id))
        .is_some_and(|tx| tx.status == "APPROVED" && tx.factor_id == factor.record.id))
}

/// Abandons a transaction (a new push replaces it); best effort.
pub async fn abandon(st: &Handles, tid: &str) {
    if let Err(e) = st.store.take_transaction(KIND, tid, st.clock.now()).await {
        tracing::warn!(error = %e, "could not drop an abandoned push transaction");
    }
}

/// A device's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAnswer {
    pub decision: Option<String>,
    pub number: Option<u32>,
    /// Ed25519 signature, base64url.
    pub signature: Option<String>,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No such transaction (E0000191).
    #[error("transaction not found")]
    NotFound,
    /// A field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// Missing or wrong signature.
    #[error("signature invalid")]
    BadSignature,
    /// Answered already (repeated).
    #[error("already answered")]
    Answered,
    /// The requester cancelled the push before the device answered.
    #[error("cancelled")]
    Cancelled,
    /// After the expiry (late).
    #[error("expired")]
    Expired,
    /// Approved with the wrong number: rejected and counted as a failure.
    #[error("wrong number")]
    WrongNumber,
    #[error("store unavailable")]
    Unavailable,
}

impl From<StoreError> for AnswerError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error during a push answer");
        AnswerError::Unavailable
    }
}

/// Records a device's signed answer to transaction `tid`; `addr` is the
/// device's client address (counted on a wrong number).
pub async fn answer(
    st: &Handles,
    tid: &str,
    ans: &DeviceAnswer,
    addr: IpAddr,
) -> Result<PushResult, AnswerError> {
    let decision = match ans.decision.as_deref() {
        Some(d @ ("approve" | "deny")) => d,
        _ => {
            return Err(AnswerError::Invalid(
                "decision: must be \"approve\" or \"deny\"".into(),
            ));
        }
    };
    let Some(number) = ans.number else {
        return Err(AnswerError::Invalid("number: required".into()));
    };
    let Some(signature) = ans
        .signature
        .as_deref()
        .and_then(|s| crate::crypto::unb64(s.trim_end_matches('=')))
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b))
    else {
        audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "unsigned");
        return Err(AnswerError::BadSignature);
    };
    for _ in 0..8 {
        let now = st.clock.now();
        let Some(rec) = st.store.get_transaction(KIND, tid, now).await? else {
            return Err(AnswerError::NotFound);
        };
        let Some(mut tx) = tx_of(&rec) else {
            return Err(AnswerError::NotFound);
        };
        let factor = st.store.get_factor(&rec.user_id, &tx.factor_id).await?;
        // No key (a decoy transaction, or the factor was removed): nothing
        // can be signed for it, and the answer says no more than that.
        let Some(key) = factor
            .as_ref()
            .filter(|f| f.status == FactorStatus::Active)
            .and_then(public_key)
        else {
            audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "no device key");
            return Err(AnswerError::BadSignature);
        };
        let bytes = signed_bytes(tid, &tx.factor_id, decision, number, &tx.expires_at);
        if key.verify_strict(&bytes, &signature).is_err() {
            audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "bad signature");
            return Err(AnswerError::BadSignature);
        }
        if tx.reason.as_deref() == Some(CANCELLED) {
            audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "cancelled");
            return Err(AnswerError::Cancelled);
        }
        if tx.status != "WAITING" {
            audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "repeated");
            return Err(AnswerError::Answered);
        }
        if now >= tx.expires {
            audit!("push.answer.refused", transaction = %tid, client = %addr, reason = "late");
            return Err(AnswerError::Expired);
        }
        let wrong_number = decision == "approve" && number != u32::from(tx.number);
        if decision == "approve" && !wrong_number {
            tx.status = "APPROVED".into();
        } else {
            tx.status = "REJECTED".into();
            tx.reason = Some(if wrong_number { "wrong_number" } else { "denied" }.into());
        }
        let updated = TransactionRecord {
            data: serde_json::to_value(&tx).unwrap_or(Value::Null),
            ..rec.clone()
        };
        if !st.store.update_transaction(&updated, now).await? {
            continue;
        }
        let username = st
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.user_id)
            .map(|u| u.username.clone())
            .unwrap_or_else(|| rec.user_id.clone());
        if wrong_number {
            crate::metrics::factor_verification("push", "wrong_number");
            audit!("factor.verify.failed", user = %username, factor_type = "push", client = %addr, reason = "wrong number");
            if st.regulator.factor_failed(&rec.user_id, addr).await? {
                crate::metrics::lockout("user");
                audit!("user.locked", user = %username, reason = "second-factor failures");
            }
            return Err(AnswerError::WrongNumber);
        }
        let result = result_of(&tx, now);
        crate::metrics::factor_verification(
            "push",
            if result == PushResult::Success {
                "success"
            } else {
                "rejected"
            },
        );
        audit!("push.answered", user = %username, factor_id = %tx.factor_id, transaction = %tid, decision = decision);
        return Ok(result);
    }
    Err(AnswerError::Unavailable)
}

/// Push to a paired device (the approver app): the device pairs itself
/// and answers each push with a signature.
#[derive(Debug)]
pub struct Push;

impl FactorKind for Push {
    fn okta_type(&self) -> &'static str {
        "push"
    }

    fn verification_results(&self) -> &'static [&'static str] {
        &["success", "rejected", "wrong_number", "cancelled", "locked"]
    }

    fn id_prefix(&self, _provider: &str) -> &'static str {
        "opf"
    }

    fn label(&self) -> &'static str {
        "Push"
    }

    fn enroll_label(&self) -> &'static str {
        "Push to a device (approver app)"
    }

    fn add_label(&self) -> &'static str {
        "Add a push device"
    }

    fn describe(&self, profile: &Value) -> String {
        format!(
            "Push to {}",
            profile["deviceName"].as_str().unwrap_or("your device")
        )
    }

    fn amr(&self) -> &'static str {
        "push"
    }

    fn enabled(&self, cfg: &FactorsConfig) -> bool {
        cfg.push.enabled
    }

    fn send_limit(&self, _cfg: &FactorsConfig) -> u32 {
        MAX_PUSHES_PER_HOUR
    }

    fn activated_by_code(&self) -> bool {
        false
    }

    fn answered_by_device(&self) -> bool {
        true
    }

    fn enroll<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        provider: &'a str,
        _profile: &'a Value,
        flow: &'a Flow,
    ) -> BoxFuture<'a, Result<Enrolled, EnrollError>> {
        Box::pin(enroll(st, user, provider, flow))
    }

    fn challenge<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        ctx: &'a ChallengeContext,
    ) -> BoxFuture<'a, Result<Challenge, ChallengeError>> {
        Box::pin(challenge(st, user, factor, ctx))
    }

    fn status<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PushResult>, StoreError>> {
        Box::pin(status(st, user, factor, transaction_id))
    }

    fn cancel<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PushResult>, StoreError>> {
        Box::pin(cancel(st, user, factor, transaction_id))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::super::otp::tests::{ADDR, gateway, messages, user};
    use super::*;
    use crate::clock::ManualClock;

    fn ip() -> IpAddr {
        ADDR.parse().unwrap()
    }

    fn ctx() -> ChallengeContext {
        ChallengeContext {
            client_addr: ip(),
            flow: super::super::Flow::Admin,
        }
    }

    fn device_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// A push factor enrolled for `u`, pending, and its activation token.
    async fn pending(st: &Handles, u: &User) -> (FactorRecord, String) {
        let Enrolled::Push {
            factor,
            activation_token,
            ..
        } = enroll(st, u, "OKTA", &Flow::Admin).await.unwrap()
        else {
            panic!("not a push enrollment")
        };
        (factor, activation_token)
    }

    /// A pairing request with [`device_key`].
    fn registration(activation_token: String, device_name: &str, address: &str) -> DeviceRegistration {
        DeviceRegistration {
            activation_token,
            public_key: crate::crypto::b64(device_key().verifying_key().as_bytes()),
            device_name: device_name.into(),
            address: address.into(),
        }
    }

    /// `f` under another id.
    fn other_factor(f: &Factor) -> Factor {
        Factor {
            record: FactorRecord {
                id: "opfOTHER".into(),
                ..f.record.clone()
            },
            from_config: false,
        }
    }

    async fn paired(st: &Handles) -> Factor {
        let (factor, activation_token) = pending(st, &user()).await;
        let reg = registration(activation_token, "Dave's phone", "relay:device-1");
        let active = register_device(st, &reg).await.unwrap();
        assert_eq!(active.id, factor.id);
        Factor {
            record: active,
            from_config: false,
        }
    }

    fn signed(
        tid: &str,
        f: &Factor,
        decision: &str,
        number: u32,
        expires_at: &str,
        key: &SigningKey,
    ) -> DeviceAnswer {
        let sig = key.sign(&signed_bytes(tid, &f.record.id, decision, number, expires_at));
        DeviceAnswer {
            decision: Some(decision.into()),
            number: Some(number),
            signature: Some(crate::crypto::b64(&sig.to_bytes())),
        }
    }

    async fn push(st: &Handles, f: &Factor) -> (String, u8, String) {
        let Challenge::Push {
            transaction_id,
            correct_answer,
            expires_at,
        } = challenge(st, &user(), f, &ctx()).await.unwrap()
        else {
            panic!("not a push")
        };
        (transaction_id, correct_answer, rfc3339(expires_at))
    }

    #[tokio::test]
    async fn pairing_checks_fields_and_uses_the_token_once() {
        let (gw, _clock, _dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let (factor, activation_token) = pending(st, &u).await;
        assert_eq!(factor.status, FactorStatus::PendingActivation);
        let mut reg = DeviceRegistration {
            activation_token: activation_token.clone(),
            public_key: "short".into(),
            device_name: "Phone".into(),
            address: "relay:1".into(),
        };
        assert!(
            matches!(register_device(st, &reg).await, Err(DeviceError::Invalid(c)) if c.starts_with("publicKey"))
        );
        reg.public_key = crate::crypto::b64(device_key().verifying_key().as_bytes());
        reg.device_name = " ".into();
        assert!(matches!(
            register_device(st, &reg).await,
            Err(DeviceError::Invalid(_))
        ));
        reg.device_name = "Phone".into();
        reg.activation_token = "wrong".into();
        assert_eq!(register_device(st, &reg).await, Err(DeviceError::InvalidToken));
        reg.activation_token = activation_token;
        let active = register_device(st, &reg).await.unwrap();
        assert_eq!(active.status, FactorStatus::Active);
        assert_eq!(active.profile["deviceName"], "Phone");
        assert_eq!(active.profile["address"], "relay:1");
        assert!(public_key(&active).is_some());
        assert_eq!(
            register_device(st, &reg).await,
            Err(DeviceError::InvalidToken),
            "used"
        );
    }

    #[tokio::test]
    async fn pairing_updates_the_pending_row_in_place() {
        let (gw, clock, _dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let (factor, activation_token) = pending(st, &u).await;
        // A factor enrolled in the same second, after it.
        let later = crate::factors::enroll_totp(st, &u, "GOOGLE").await.unwrap();
        clock.advance(5);
        let reg = registration(activation_token, "Phone", "relay:1");
        register_device(st, &reg).await.unwrap();
        let listed = st.store.list_factors(&u.id).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            [factor.id.as_str(), later.factor.id.as_str()],
            "the same row, in its place (not deleted and inserted again)"
        );
        let paired = &listed[0];
        assert_eq!(paired.status, FactorStatus::Active);
        assert_eq!(
            (paired.created, paired.last_updated),
            (factor.created, factor.created + 5)
        );
        assert_eq!(paired.profile["deviceName"], "Phone");
    }

    #[tokio::test]
    async fn a_factor_removed_before_pairing_stays_removed() {
        let (gw, _clock, _dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let (factor, activation_token) = pending(st, &u).await;
        assert!(st.store.delete_factor(&u.id, &factor.id).await.unwrap());
        let reg = registration(activation_token, "Phone", "relay:1");
        assert_eq!(register_device(st, &reg).await, Err(DeviceError::InvalidToken));
        assert!(st.store.list_factors(&u.id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_message_carries_context_but_never_the_number() {
        let (gw, _clock, dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, number, expires_at) = push(st, &f).await;
        assert!((10..=99).contains(&number));
        // Delivered in the background: wait for it.
        let mut waited = 0;
        while messages(&dir).is_empty() && waited < 500 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        let m = messages(&dir).pop().unwrap();
        assert_eq!(m["kind"], "push");
        assert_eq!(m["to"], "relay:device-1");
        assert_eq!(m["transaction_id"], tid.as_str());
        assert_eq!(m["factor_id"], f.record.id.as_str());
        assert_eq!(m["client"], ADDR);
        assert_eq!(m["app"], "app.example.com");
        assert_eq!(m["user"], "dave");
        assert_eq!(m["expires_at"], expires_at.as_str());
        assert!(m.get("code").is_none() && m.get("number").is_none());
        assert!(
            m.as_object()
                .unwrap()
                .values()
                .all(|v| v.as_u64() != Some(u64::from(number))),
            "no field carries the number"
        );
        assert_eq!(
            status(st, &user(), &f, &tid).await.unwrap(),
            Some(PushResult::Waiting)
        );
    }

    #[tokio::test]
    async fn approve_with_the_right_number_succeeds_once() {
        let (gw, _clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, number, exp) = push(st, &f).await;
        let ans = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &ans, ip()).await, Ok(PushResult::Success));
        assert_eq!(
            answer(st, &tid, &ans, ip()).await,
            Err(AnswerError::Answered),
            "repeated"
        );
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Success));
        // Not by another flow (another sign-in), which leaves it to its own.
        let other = super::super::Flow::Session("another sign-in".into());
        assert!(!consume(st, &user(), &f, &tid, &other).await.unwrap());
        assert!(consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap());
        assert!(
            !consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap(),
            "a sign-in completes once"
        );
    }

    #[tokio::test]
    async fn a_push_started_before_a_secret_rotation_completes_after_the_reload() {
        let (gw, _clock, _dir) = gateway("").await;
        let f = paired(gw.state()).await;
        let (tid, number, exp) = push(gw.state(), &f).await;
        let after = gw.rebuild(super::super::otp::tests::rotated(&gw)).await.unwrap();
        let st = after.state();
        let ans = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &ans, ip()).await, Ok(PushResult::Success));
        let other = super::super::Flow::Session("another sign-in".into());
        assert!(!consume(st, &user(), &f, &tid, &other).await.unwrap());
        assert!(consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap());
        // One started after it is tagged under the new secret only.
        let (tid, number, exp) = push(st, &f).await;
        let ans = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &ans, ip()).await, Ok(PushResult::Success));
        let old_only = after.rebuild((*gw.state().config).clone()).await.unwrap();
        assert!(
            !consume(old_only.state(), &user(), &f, &tid, &ctx().flow)
                .await
                .unwrap()
        );
        assert!(consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap());
    }

    async fn push_status(st: &Handles, f: &Factor, tid: &str) -> Option<PushResult> {
        status(st, &user(), f, tid).await.unwrap()
    }

    #[tokio::test]
    async fn forged_and_malformed_answers_are_refused() {
        let (gw, _clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, number, exp) = push(st, &f).await;
        let n = u32::from(number);
        let unsigned = DeviceAnswer {
            decision: Some("approve".into()),
            number: Some(n),
            signature: None,
        };
        assert_eq!(
            answer(st, &tid, &unsigned, ip()).await,
            Err(AnswerError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let forged = signed(&tid, &f, "approve", n, &exp, &other);
        assert_eq!(
            answer(st, &tid, &forged, ip()).await,
            Err(AnswerError::BadSignature)
        );
        // Signed for deny, presented as approve.
        let mut swapped = signed(&tid, &f, "deny", n, &exp, &device_key());
        swapped.decision = Some("approve".into());
        assert_eq!(
            answer(st, &tid, &swapped, ip()).await,
            Err(AnswerError::BadSignature)
        );
        // Signed over another expiry (or another transaction).
        let stale = signed(&tid, &f, "approve", n, "2020-01-01T00:00:00.000Z", &device_key());
        assert_eq!(
            answer(st, &tid, &stale, ip()).await,
            Err(AnswerError::BadSignature)
        );
        let mut bad = signed(&tid, &f, "approve", n, &exp, &device_key());
        bad.decision = Some("maybe".into());
        assert!(matches!(
            answer(st, &tid, &bad, ip()).await,
            Err(AnswerError::Invalid(_))
        ));
        assert_eq!(
            answer(
                st,
                "ptxNOPE",
                &signed("ptxNOPE", &f, "approve", n, &exp, &device_key()),
                ip()
            )
            .await,
            Err(AnswerError::NotFound)
        );
        assert_eq!(
            push_status(st, &f, &tid).await,
            Some(PushResult::Waiting),
            "nothing changed"
        );
        // Another factor's poll does not see it.
        assert_eq!(push_status(st, &other_factor(&f), &tid).await, None);
    }

    #[tokio::test]
    async fn a_wrong_number_rejects_and_counts_as_a_failure() {
        let (gw, _clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, number, exp) = push(st, &f).await;
        let wrong = if number == 99 { 10 } else { u32::from(number) + 1 };
        let ans = signed(&tid, &f, "approve", wrong, &exp, &device_key());
        assert_eq!(answer(st, &tid, &ans, ip()).await, Err(AnswerError::WrongNumber));
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Rejected));
        let right = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(
            answer(st, &tid, &right, ip()).await,
            Err(AnswerError::Answered),
            "one guess only"
        );
        assert!(!consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap());
        // The failure was counted (50 allowed in this config: not locked).
        assert!(st.regulator.user_locked(&user().id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn deny_rejects_and_late_answers_time_out() {
        let (gw, clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, _number, exp) = push(st, &f).await;
        let deny = signed(&tid, &f, "deny", 0, &exp, &device_key());
        assert_eq!(answer(st, &tid, &deny, ip()).await, Ok(PushResult::Rejected));
        let (tid, number, exp) = push(st, &f).await;
        clock.advance(60);
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Timeout));
        let late = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &late, ip()).await, Err(AnswerError::Expired));
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Timeout));
        clock.advance(KEEP_AFTER);
        assert_eq!(push_status(st, &f, &tid).await, None, "forgotten after a while");
        let _ = ManualClock::new(0);
    }

    #[tokio::test]
    async fn a_cancelled_push_is_rejected_and_the_device_refused() {
        let (gw, clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        let (tid, number, exp) = push(st, &f).await;
        assert_eq!(
            cancel(st, &user(), &other_factor(&f), &tid).await.unwrap(),
            None,
            "another factor's transaction"
        );
        assert_eq!(cancel(st, &user(), &f, "ptxNOPE").await.unwrap(), None);
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Waiting));
        assert_eq!(
            cancel(st, &user(), &f, &tid).await.unwrap(),
            Some(PushResult::Rejected)
        );
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Rejected));
        let late = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &late, ip()).await, Err(AnswerError::Cancelled));
        assert_eq!(push_status(st, &f, &tid).await, Some(PushResult::Rejected));
        assert!(!consume(st, &user(), &f, &tid, &ctx().flow).await.unwrap());
        assert_eq!(
            cancel(st, &user(), &f, &tid).await.unwrap(),
            Some(PushResult::Rejected),
            "idempotent"
        );

        // An approved push stays approved; a timed-out one stays timed out.
        let (tid, number, exp) = push(st, &f).await;
        let ok = signed(&tid, &f, "approve", u32::from(number), &exp, &device_key());
        assert_eq!(answer(st, &tid, &ok, ip()).await, Ok(PushResult::Success));
        assert_eq!(
            cancel(st, &user(), &f, &tid).await.unwrap(),
            Some(PushResult::Success)
        );
        let (tid, _, _) = push(st, &f).await;
        clock.advance(61);
        assert_eq!(
            cancel(st, &user(), &f, &tid).await.unwrap(),
            Some(PushResult::Timeout)
        );
    }

    #[tokio::test]
    async fn pushes_per_hour_are_limited() {
        let (gw, clock, _dir) = gateway("").await;
        let st = gw.state();
        let f = paired(st).await;
        for _ in 0..MAX_PUSHES_PER_HOUR {
            push(st, &f).await;
        }
        assert!(matches!(
            challenge(st, &user(), &f, &ctx()).await,
            Err(ChallengeError::RateLimited(_))
        ));
        clock.advance(3600);
        push(st, &f).await;
    }

    #[test]
    fn the_signed_text_is_exactly_specified() {
        assert_eq!(
            signed_bytes("ptxT", "opfF", "approve", 42, "2026-11-18T11:06:40.000Z"),
            b"portcullis-push-v1\nptxT\nopfF\napprove\n42\n2026-11-18T11:06:40.000Z".to_vec()
        );
    }
}
