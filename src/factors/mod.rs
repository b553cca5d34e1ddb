//! Second factors: what a user has enrolled, enrolling, activating and
//! verifying, with lockout and replay protection.
//!
//! A user's factors are the stored ones plus, for users-file users with a
//! `totp` secret, one read-only ACTIVE factor provisioned by config (its id is
//! derived from the user id, so it is stable across restarts; its replay
//! protection and lockout go through the store like any other). Secrets of
//! stored factors are sealed at rest (see `sealing`), bound to their row.
//!
//! Every verification checks the user's lock first, counts failures (wrong
//! and replayed codes alike) through the [`crate::regulation::Regulator`], and
//! answers the same way for a wrong code and a locked user unless the
//! operator chose `reveal_lockout`.

mod kind;
pub(crate) mod otp;
pub mod push;
pub(crate) mod recovery;
pub mod totp;
pub mod webauthn;

use std::net::IpAddr;

use crate::audit;
use crate::config::FactorsConfig;
use crate::state::Handles;
use crate::store::{FactorRecord, FactorStatus, StoreError};
use crate::users::User;

pub use kind::{Address, BoxFuture, FactorKind};
pub use recovery::{AMR as RECOVERY_AMR, new_recovery_codes, verify_recovery};
pub use totp::{TOTP_TYPE, TotpEnrollment, activate_totp, enroll_totp, totp_secret, verify_totp};

pub use crate::sealing::factor_secret_aad as secret_aad;

// ---- the registry ----------------------------------------------------------
//
// Adding a factor type: one file in this folder implementing [`FactorKind`],
// its `mod` line above, one variant below with its arm in [`FactorType::kind`],
// and its section in `[factors]` of the config.

/// Every factor type, in the order catalogs list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FactorType {
    Totp,
    Sms,
    Call,
    Email,
    Push,
    WebAuthn,
}

impl FactorType {
    /// Every type, in catalog order.
    pub const ALL: [FactorType; 6] = [
        FactorType::Totp,
        FactorType::Sms,
        FactorType::Call,
        FactorType::Email,
        FactorType::Push,
        FactorType::WebAuthn,
    ];

    /// The registry: the implementation of this type.
    pub fn kind(self) -> &'static dyn FactorKind {
        match self {
            FactorType::Totp => &totp::Totp,
            FactorType::Sms => &otp::SMS,
            FactorType::Call => &otp::CALL,
            FactorType::Email => &otp::EMAIL,
            FactorType::Push => &push::Push,
            FactorType::WebAuthn => &webauthn::WebAuthn,
        }
    }

    /// The type named by Okta's `factorType`, if Portcullis knows it.
    pub fn parse(okta_type: &str) -> Option<FactorType> {
        Self::ALL.into_iter().find(|t| t.as_str() == okta_type)
    }

    /// Okta's `factorType`.
    pub fn as_str(self) -> &'static str {
        self.kind().okta_type()
    }

    /// The types enabled in `[factors.*]`: the registry as this
    /// configuration builds it.
    pub fn enabled(cfg: &FactorsConfig) -> impl Iterator<Item = FactorType> + '_ {
        Self::ALL.into_iter().filter(|t| t.kind().enabled(cfg))
    }
}

/// Registers at zero the factor counters of every type `cfg` enables (and of
/// recovery codes when on): each result its verifications count and each
/// lifecycle event it records. A reload enabling another type adds its own.
pub fn register_metrics(cfg: &FactorsConfig) {
    const EVENTS: &[&str] = &["enrolled", "activated", "removed"];
    const CHALLENGED_TOO: &[&str] = &["enrolled", "activated", "removed", "challenged"];
    for t in FactorType::enabled(cfg) {
        let kind = t.kind();
        let events = if kind.sends_code() || kind.answered_by_device() {
            CHALLENGED_TOO
        } else {
            EVENTS
        };
        crate::metrics::register_factor_type(t.as_str(), kind.verification_results(), events);
    }
    if cfg.recovery_codes.enabled {
        crate::metrics::register_factor_type(recovery::RECOVERY_TYPE, recovery::RESULTS, &[]);
    }
}

/// The kind of a stored `factorType`, if Portcullis knows it.
pub fn kind_of(okta_type: &str) -> Option<&'static dyn FactorKind> {
    FactorType::parse(okta_type).map(FactorType::kind)
}

/// A factor of a user, stored or provisioned by config.
#[derive(Debug, Clone)]
pub struct Factor {
    pub record: FactorRecord,
    /// True for the users-file TOTP factor (read-only).
    pub from_config: bool,
}

impl Factor {
    /// True when usable for sign-in.
    pub fn is_active(&self) -> bool {
        self.record.status == FactorStatus::Active
    }
}

/// The id of a users-file user's config-provisioned TOTP factor.
pub fn config_factor_id(user_id: &str) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let d = Sha256::digest(format!("portcullis/config-totp/{user_id}").as_bytes());
    let mut id = String::from("uft");
    id.extend(
        d.iter()
            .take(17)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
    );
    id
}

/// A new factor id with Okta's prefix for the type (20 characters).
pub fn new_factor_id(factor_type: &str, provider: &str) -> String {
    let prefix = kind_of(factor_type).map_or("fac", |k| k.id_prefix(provider));
    format!("{prefix}{}", crate::crypto::random_id(17))
}

/// Every factor of `user`: the config-provisioned one first, then stored ones.
pub async fn list(st: &Handles, user: &User) -> Result<Vec<Factor>, StoreError> {
    let mut out = Vec::new();
    if user.config_totp.is_some() && st.config.factors.totp.enabled {
        out.push(Factor {
            record: FactorRecord {
                id: config_factor_id(&user.id),
                user_id: user.id.clone(),
                factor_type: TOTP_TYPE.into(),
                provider: "GOOGLE".into(),
                status: FactorStatus::Active,
                profile: serde_json::json!({ "credentialId": user.username }),
                secret: None,
                created: 0,
                last_updated: 0,
            },
            from_config: true,
        });
    }
    for record in st.store.list_factors(&user.id).await? {
        out.push(Factor {
            record,
            from_config: false,
        });
    }
    Ok(out)
}

/// The factor `factor_id` of `user`, if it is theirs.
pub async fn find(st: &Handles, user: &User, factor_id: &str) -> Result<Option<Factor>, StoreError> {
    Ok(list(st, user)
        .await?
        .into_iter()
        .find(|f| f.record.id == factor_id))
}

/// The active factors among `factors`, usable for a challenge (enabled types only).
pub fn usable(st: &Handles, factors: &[Factor]) -> Vec<Factor> {
    factors
        .iter()
        .filter(|f| f.is_active() && type_enabled(st, &f.record.factor_type))
        .cloned()
        .collect()
}

/// True when the factor type is enabled in `[factors.*]`.
pub fn type_enabled(st: &Handles, factor_type: &str) -> bool {
    kind_of(factor_type).is_some_and(|k| k.enabled(&st.config.factors))
}

/// The `amr` value a factor type adds (RFC 8176 where it has one).
pub fn amr_of(factor_type: &str) -> &'static str {
    kind_of(factor_type).map_or("otp", |k| k.amr())
}

/// How many codes or pushes of `factor_type` one user may be sent per
/// hour (the rate-limit headers of a refused send).
pub fn send_limit(st: &Handles, factor_type: &str) -> u32 {
    kind_of(factor_type).map_or(1, |k| k.send_limit(&st.config.factors))
}

/// Why enrolling failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("factor type not enabled or not supported")]
    NotSupported,
    /// The profile is invalid (E0000001 with this cause).
    #[error("{0}")]
    Invalid(String),
    /// Sending the activation code or push failed.
    #[error("delivery failed")]
    Delivery,
    /// The activation code was not sent: the user's sends are limited (429,
    /// like a resend; [`ChallengeError::RateLimited`] or `TooSoon`).
    #[error("too many codes sent")]
    Limited(ChallengeError),
    #[error(
        "no store.encryption_keys configured: factor secrets cannot be stored (with PostgreSQL every replica needs the same key: `portcullis gen-key`)"
    )]
    NoKeys,
    #[error("sealing the secret failed")]
    Seal,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a code was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Wrong code (or locked, when lockouts are not revealed).
    Invalid,
    /// The code was already used (E0000082).
    Replayed,
    /// The user is locked and the operator reveals it (E0000069).
    LockedRevealed,
    /// The factor is not active (E0000154).
    NotActive,
    /// The store could not be reached.
    Unavailable,
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error during factor verification");
        VerifyError::Unavailable
    }
}

async fn locked(st: &Handles, user: &User) -> Result<bool, VerifyError> {
    Ok(st.regulator.user_locked(&user.id).await?.is_some())
}

/// Whether this attempt is blocked, counted as a first or second factor
/// (see [`crate::regulation::as_first_factor`]).
async fn blocked(st: &Handles, user: &User, addr: IpAddr) -> Result<bool, VerifyError> {
    Ok(st.regulator.possession_blocked(&user.id, addr).await?)
}

async fn failed(
    st: &Handles,
    user: &User,
    factor_type: &str,
    addr: IpAddr,
    why: &'static str,
) -> Result<(), VerifyError> {
    let locked = st.regulator.possession_failed(&user.id, addr).await?;
    report_failure(user, factor_type, addr, why, locked);
    Ok(())
}

/// Metrics and audit events of a wrong second-factor attempt (`locked`: it
/// locked the user).
fn report_failure(user: &User, factor_type: &str, addr: IpAddr, why: &'static str, locked: bool) {
    crate::metrics::factor_verification(factor_type, why);
    audit!("factor.verify.failed", user = %user.username, factor_type = factor_type, client = %addr, reason = why);
    if locked {
        crate::metrics::lockout("user");
        audit!("user.locked", user = %user.username, reason = "factor failures");
    }
}

/// Takes an attempt at a guessable factor (TOTP, recovery codes) before it
/// is checked ([`crate::regulation::Regulator::factor_attempt`]); `None`:
/// blocked (counted as such), answer [`locked_answer`].
async fn attempt(
    st: &Handles,
    user: &User,
    factor_type: &str,
    addr: IpAddr,
) -> Result<Option<crate::regulation::FactorAttempt>, VerifyError> {
    let attempt = st.regulator.factor_attempt(&user.id, addr).await?;
    if attempt.is_none() {
        crate::metrics::factor_verification(factor_type, "locked");
        audit!("factor.verify.refused", user = %user.username, factor_type = factor_type, client = %addr, reason = "user locked");
    }
    Ok(attempt)
}

/// The attempt taken by [`attempt`] was wrong (`why`).
async fn attempt_failed(
    st: &Handles,
    attempt: crate::regulation::FactorAttempt,
    user: &User,
    factor_type: &str,
    addr: IpAddr,
    why: &'static str,
) -> Result<(), VerifyError> {
    let locked = st
        .regulator
        .factor_attempt_failed(attempt, &user.id, addr)
        .await?;
    report_failure(user, factor_type, addr, why, locked);
    Ok(())
}

/// The attempt taken by [`attempt`] was right.
async fn attempt_succeeded(st: &Handles, attempt: crate::regulation::FactorAttempt, user: &User) {
    st.regulator.factor_attempt_succeeded(attempt, &user.id).await;
}

fn locked_answer(st: &Handles) -> VerifyError {
    if st.config.regulation.reveal_lockout {
        VerifyError::LockedRevealed
    } else {
        VerifyError::Invalid
    }
}

// ---- the facade: one entry point per lifecycle step ----
//
// The portal, the authn API and the Factors API call these; each asks the
// factor's kind ([`FactorKind`], found through the registry above).

/// What an enrollment produced, for the caller to show or return.
#[derive(Debug)]
pub enum Enrolled {
    /// An authenticator app: the secret and key URI to show once.
    Totp(TotpEnrollment),
    /// A code factor (sms, call, email): an activation code was sent.
    Code {
        factor: FactorRecord,
        expires_at: crate::clock::UnixTime,
    },
    /// A push device to pair: the one-time activation token (shown as text and QR).
    Push {
        factor: FactorRecord,
        activation_token: String,
        expires_at: crate::clock::UnixTime,
    },
    /// A security key or passkey to register: the browser's creation
    /// options (`navigator.credentials.create({publicKey})`).
    WebAuthn {
        factor: FactorRecord,
        options: serde_json::Value,
        expires_at: crate::clock::UnixTime,
    },
}

impl Enrolled {
    /// The enrolled factor.
    pub fn factor(&self) -> &FactorRecord {
        match self {
            Enrolled::Totp(t) => &t.factor,
            Enrolled::Code { factor, .. }
            | Enrolled::Push { factor, .. }
            | Enrolled::WebAuthn { factor, .. } => factor,
        }
    }
}

/// Enrolls a factor of `factor_type`/`provider` with a type-specific
/// `profile` (`{phoneNumber}` for sms/call, `{email}` for email, `{}` for
/// totp and push). The factor starts `PENDING_ACTIVATION`, and replaces any
/// factor of the same type and provider the user still has
/// `PENDING_ACTIVATION` (an abandoned enrollment): enrolling again and again
/// leaves one pending factor per type, not one per attempt. Active factors
/// are never touched. The authn API, the self-service and admin Factors
/// APIs and the portal all enroll here.
pub async fn enroll(
    st: &Handles,
    user: &User,
    factor_type: &str,
    provider: &str,
    profile: &serde_json::Value,
    flow: &Flow,
) -> Result<Enrolled, EnrollError> {
    let enrolled = match kind_of(factor_type) {
        Some(k) => k.enroll(st, user, provider, profile, flow).await?,
        None => return Err(EnrollError::NotSupported),
    };
    replace_pending(st, user, enrolled.factor()).await;
    Ok(enrolled)
}

/// Removes `user`'s other `PENDING_ACTIVATION` factors of the type and
/// provider of `enrolled`, the new factor that replaces them. Only while
/// still pending (a factor activated meanwhile stays); best effort: a
/// failure is logged, the new enrollment stands.
async fn replace_pending(st: &Handles, user: &User, enrolled: &FactorRecord) {
    let stale = match st.store.list_factors(&user.id).await {
        Ok(all) => all.into_iter().filter(|f| {
            f.id != enrolled.id
                && f.status == FactorStatus::PendingActivation
                && f.factor_type == enrolled.factor_type
                && f.provider == enrolled.provider
        }),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the pending factors an enrollment replaces");
            return;
        }
    };
    for f in stale {
        match st.store.delete_pending_factor(&user.id, &f.id).await {
            Ok(true) => {
                audit!("factor.pending.replaced", user = %user.username, factor_type = %f.factor_type, factor_id = %f.id, replaced_by = %enrolled.id);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, factor_id = %f.id, "could not remove a replaced pending factor")
            }
        }
    }
}

/// Activates a pending factor: a code for totp/sms/call/email (push
/// devices activate themselves through the device API).
pub async fn activate(
    st: &Handles,
    user: &User,
    factor: &Factor,
    pass_code: &str,
    addr: IpAddr,
    flow: &Flow,
) -> Result<(), VerifyError> {
    match kind_of(&factor.record.factor_type) {
        Some(k) => k.activate(st, user, factor, pass_code, addr, flow).await,
        None => Err(VerifyError::NotActive),
    }
}

/// Where a challenge comes from, for push context. Messages name the app
/// from configuration ([`otp::app_name`]), never from the request.
#[derive(Debug, Clone)]
pub struct ChallengeContext {
    pub client_addr: IpAddr,
    /// The flow a code sent now belongs to.
    pub flow: Flow,
}

/// The flow a one-time code (sms, call, email) is sent in: the code can be
/// used in that flow only, so a code sent for one sign-in cannot finish
/// another one, or an admin or self-service verification, and the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// An authentication API transaction (its record id).
    Authn(String),
    /// A signed-in session: the portal's pages and the self-service API
    /// (the session id).
    Session(String),
    /// The admin API.
    Admin,
}

impl Flow {
    /// A stable text naming the flow (MACed before it is stored).
    pub fn key(&self) -> String {
        match self {
            Flow::Authn(id) => format!("authn:{id}"),
            Flow::Session(sid) => format!("session:{sid}"),
            Flow::Admin => "admin".into(),
        }
    }
}

/// What starting a challenge produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// A code was sent; it expires then.
    CodeSent { expires_at: crate::clock::UnixTime },
    /// A push was sent; the browser shows `correct_answer`, the device sends it back.
    Push {
        transaction_id: String,
        expires_at: crate::clock::UnixTime,
        correct_answer: u8,
    },
    /// A WebAuthn ceremony: the browser's request options
    /// (`navigator.credentials.get({publicKey})`), single use, until then.
    WebAuthn {
        options: serde_json::Value,
        expires_at: crate::clock::UnixTime,
    },
}

/// Why a challenge could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The factor type has no challenge (totp: the user reads the app).
    #[error("this factor type is not challenged")]
    NotChallenged,
    #[error("factor not active")]
    NotActive,
    /// Sent too recently: retry after this time (E0000109).
    #[error("sent too recently")]
    TooSoon(crate::clock::UnixTime),
    /// Too many sends in the period (E0000047), until this time.
    #[error("too many sends")]
    RateLimited(crate::clock::UnixTime),
    /// The delivery failed (webhook down, SMTP refused...): a clear error to the caller.
    #[error("delivery failed")]
    Delivery,
    #[error("store unavailable")]
    Unavailable,
}

/// Starts a challenge: sends a code (sms, call, email) or a push. For a
/// code factor still `PENDING_ACTIVATION` this (re)sends its activation code.
pub async fn challenge(
    st: &Handles,
    user: &User,
    factor: &Factor,
    ctx: &ChallengeContext,
) -> Result<Challenge, ChallengeError> {
    match kind_of(&factor.record.factor_type) {
        Some(k) if k.enabled(&st.config.factors) => k.challenge(st, user, factor, ctx).await,
        _ => Err(ChallengeError::NotActive),
    }
}

/// Verifies a passcode for an active factor (totp, or the code sent for sms/call/email).
pub async fn verify(
    st: &Handles,
    user: &User,
    factor: &Factor,
    pass_code: &str,
    addr: IpAddr,
    flow: &Flow,
) -> Result<(), VerifyError> {
    match kind_of(&factor.record.factor_type) {
        Some(k) => k.verify(st, user, factor, pass_code, addr, flow).await,
        None => Err(VerifyError::NotActive),
    }
}

/// The state of a push transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    Waiting,
    Success,
    Rejected,
    Timeout,
}

impl PushResult {
    /// Okta's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PushResult::Waiting => "WAITING",
            PushResult::Success => "SUCCESS",
            PushResult::Rejected => "REJECTED",
            PushResult::Timeout => "TIMEOUT",
        }
    }
}

/// Polls a push transaction of `factor`; `None` when there is no such
/// transaction for this user and factor (E0000191).
pub async fn push_status(
    st: &Handles,
    user: &User,
    factor: &Factor,
    transaction_id: &str,
) -> Result<Option<PushResult>, StoreError> {
    match kind_of(&factor.record.factor_type) {
        Some(k) => k.status(st, user, factor, transaction_id).await,
        None => Ok(None),
    }
}

/// Cancels a push transaction of `factor` (`_links.cancel` of a push
/// verify): a waiting push becomes `REJECTED` and the device's answer is
/// refused; one no longer waiting keeps its state. Answers the state after,
/// or `None` when there is no such transaction for this user and factor
/// (E0000191). See [`push::cancel`].
pub async fn cancel_push(
    st: &Handles,
    user: &User,
    factor: &Factor,
    transaction_id: &str,
) -> Result<Option<PushResult>, StoreError> {
    match kind_of(&factor.record.factor_type) {
        Some(k) => k.cancel(st, user, factor, transaction_id).await,
        None => Ok(None),
    }
}

/// True when the policy anywhere requires two factors (so the last factor of
/// a user must not be removed).
pub fn policy_requires_two(st: &Handles) -> bool {
    use crate::config::PolicyKind;
    st.config.default_policy == PolicyKind::TwoFactor
        || st.config.rules.iter().any(|r| r.policy == PolicyKind::TwoFactor)
}

/// Why a factor could not be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveError {
    NotFound,
    /// Provisioned by the users file.
    ReadOnly,
    /// The user's last active factor, while policy requires two.
    LastFactor,
    Unavailable,
}

/// Removes a stored factor of `user`, for the user themselves: the last
/// active factor stays while policy requires two. See [`remove_by`].
pub async fn remove(
    st: &Handles,
    user: &User,
    factor_id: &str,
    actor: &str,
) -> Result<Option<EpochMoved>, RemoveError> {
    remove_by(st, user, factor_id, actor, Remover::User).await
}

/// The user's session epoch after a removal moved it (what the store
/// answered, other changes made meanwhile included). A session that goes on
/// after it ([`crate::portal::login::reissue`]) may do so only if this is
/// its own epoch plus one: else something else ended the user's sessions
/// too (an administrator, a password change) and this one ends with them.
/// The Factors API also hands it on in its response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochMoved(pub u64);

/// Who removes a factor: the user may not remove their last active factor
/// while policy requires two; an administrator (the admin API, the command
/// line) may (the helpdesk's "lost phone"), and the user then enrolls again
/// at the next sign-in when `users.enrollment = "first_login"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remover {
    User,
    Administrator,
}

/// Removes a stored factor of `user`. Removing an active factor moves the
/// user's session epoch first, so every session of the user ends (a factor
/// reset, by an administrator or by the user: a session that a lost or stolen
/// factor helped open must not outlive the factor). A caller acting for the
/// user's own session re-issues it with the new epoch (see [`EpochMoved`]).
pub async fn remove_by(
    st: &Handles,
    user: &User,
    factor_id: &str,
    actor: &str,
    by: Remover,
) -> Result<Option<EpochMoved>, RemoveError> {
    // Two removals at once must not both count the other's factor as the
    // one left (this process; see `Regulator::factor_change_turn`).
    let Some(_turn) = st.regulator.factor_change_turn(&user.id).await else {
        return Err(RemoveError::Unavailable);
    };
    let factors = list(st, user).await.map_err(|_| RemoveError::Unavailable)?;
    let Some(factor) = factors.iter().find(|f| f.record.id == factor_id) else {
        return Err(RemoveError::NotFound);
    };
    if factor.from_config {
        return Err(RemoveError::ReadOnly);
    }
    let active_left = factors
        .iter()
        .filter(|f| f.is_active() && f.record.id != factor_id)
        .count();
    if by == Remover::User && factor.is_active() && active_left == 0 && policy_requires_two(st) {
        return Err(RemoveError::LastFactor);
    }
    let mut moved = None;
    if factor.is_active() {
        // Before the delete: if the epoch cannot move, nothing is removed.
        let epoch = st.store.bump_epoch(&user.id).await.map_err(|e| {
            tracing::error!(error = %e, "moving the session epoch failed");
            RemoveError::Unavailable
        })?;
        st.revocations.note_epoch(&user.id, epoch);
        moved = Some(EpochMoved(epoch));
    }
    match st.store.delete_factor(&user.id, factor_id).await {
        Ok(true) => {
            crate::metrics::factor_event("removed", &factor.record.factor_type);
            audit!("factor.removed", user = %user.username, factor_type = %factor.record.factor_type, factor_id = %factor_id, actor = %actor);
            Ok(moved)
        }
        Ok(false) => Err(RemoveError::NotFound),
        Err(_) => Err(RemoveError::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::gateway::Gateway;
    use crate::secret::Secret;

    fn config(reveal: bool) -> String {
        format!(
            r#"
default_policy = "two_factor"
[admin]
tokens = []
[[upstreams]]
name = "unused"
url = "http://127.0.0.1:9"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[store]
kind = "memory"
encryption_keys = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]
[regulation]
max_factor_failures = 3
reveal_lockout = {reveal}
"#
        )
    }

    fn user(totp: Option<&[u8]>) -> User {
        User {
            id: "00uCAROL".into(),
            username: "carol".into(),
            display_name: None,
            email: None,
            phone: None,
            groups: vec![],
            password_hash: None,
            from_file: totp.is_some(),
            config_totp: totp.map(|t| Secret::new(t.to_vec())),
        }
    }

    async fn setup(reveal: bool) -> (Gateway, ManualClock) {
        let loaded = crate::config::load_str(&config(reveal), &|_| None).expect("config");
        let clock = ManualClock::new(1_800_000_000);
        let gw = Gateway::build_with(loaded.config, Arc::new(clock.clone()))
            .await
            .expect("gateway");
        (gw, clock)
    }

    const ADDR: &str = "192.0.2.10";

    #[test]
    fn factor_ids_are_path_ids() {
        for t in FactorType::ALL {
            for p in t.kind().providers() {
                let id = new_factor_id(t.as_str(), p);
                assert!(crate::ids::is_id(&id) && id.len() == 20, "{id}");
            }
        }
    }

    #[tokio::test]
    async fn enroll_activate_verify_once_per_step() {
        let (gw, clock) = setup(false).await;
        let st = gw.state();
        let u = user(None);
        let e = enroll_totp(st, &u, "GOOGLE").await.unwrap();
        assert_eq!(e.factor.status, FactorStatus::PendingActivation);
        assert!(
            e.factor
                .secret
                .as_ref()
                .is_some_and(|s| !s.blob.windows(20).any(|w| w == e.secret.expose()))
        );
        let pending = find(st, &u, &e.factor.id).await.unwrap().unwrap();
        let cfg = &st.config.factors.totp;
        let code = totp::code_at(cfg, e.secret.expose(), clock.now());
        // A pending factor cannot sign anyone in.
        assert_eq!(
            verify_totp(st, &u, &pending, &code, ADDR.parse().unwrap(), false).await,
            Err(VerifyError::NotActive)
        );
        activate_totp(st, &u, &pending, &code, ADDR.parse().unwrap())
            .await
            .unwrap();
        let active = find(st, &u, &e.factor.id).await.unwrap().unwrap();
        assert!(active.is_active());
        // The activation code's step is used up.
        assert_eq!(
            verify_totp(st, &u, &active, &code, ADDR.parse().unwrap(), false).await,
            Err(VerifyError::Replayed)
        );
        clock.advance(30);
        let next = totp::code_at(cfg, e.secret.expose(), clock.now());
        assert_eq!(
            verify_totp(st, &u, &active, &next, ADDR.parse().unwrap(), false).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn wrong_codes_lock_and_locked_looks_like_wrong() {
        let (gw, clock) = setup(false).await;
        let st = gw.state();
        let secret = b"12345678901234567890";
        let u = user(Some(secret));
        let f = list(st, &u).await.unwrap().remove(0);
        assert!(f.from_config && f.is_active());
        for _ in 0..3 {
            assert_eq!(
                verify_totp(st, &u, &f, "000000", ADDR.parse().unwrap(), false).await,
                Err(VerifyError::Invalid)
            );
        }
        let good = totp::code_at(&st.config.factors.totp, secret, clock.now());
        assert_eq!(
            verify_totp(st, &u, &f, &good, ADDR.parse().unwrap(), false).await,
            Err(VerifyError::Invalid),
            "locked: the right code is refused exactly like a wrong one"
        );
        clock.advance(15 * 60 + 1);
        let good = totp::code_at(&st.config.factors.totp, secret, clock.now());
        assert_eq!(
            verify_totp(st, &u, &f, &good, ADDR.parse().unwrap(), false).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn reveal_lockout_says_locked() {
        let (gw, _clock) = setup(true).await;
        let st = gw.state();
        let u = user(Some(b"12345678901234567890"));
        let f = list(st, &u).await.unwrap().remove(0);
        for _ in 0..3 {
            let _ = verify_totp(st, &u, &f, "000000", ADDR.parse().unwrap(), false).await;
        }
        assert_eq!(
            verify_totp(st, &u, &f, "123456", ADDR.parse().unwrap(), false).await,
            Err(VerifyError::LockedRevealed)
        );
    }

    #[tokio::test]
    async fn recovery_codes_are_single_use_and_replaced() {
        let (gw, _clock) = setup(false).await;
        let st = gw.state();
        let u = user(None);
        let codes = new_recovery_codes(st, &u).await.unwrap();
        assert_eq!(codes.len(), 10);
        assert_eq!(
            verify_recovery(st, &u, &codes[0].to_uppercase(), ADDR.parse().unwrap()).await,
            Ok(())
        );
        assert_eq!(
            verify_recovery(st, &u, &codes[0], ADDR.parse().unwrap()).await,
            Err(VerifyError::Invalid)
        );
        assert_eq!(st.store.recovery_codes_left(&u.id).await.unwrap(), 9);
        let fresh = new_recovery_codes(st, &u).await.unwrap();
        assert_eq!(
            verify_recovery(st, &u, &codes[1], ADDR.parse().unwrap()).await,
            Err(VerifyError::Invalid),
            "old codes die"
        );
        assert_eq!(
            verify_recovery(st, &u, &fresh[1], ADDR.parse().unwrap()).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_last_factor_stays_while_policy_needs_two() {
        let (gw, clock) = setup(false).await;
        let st = gw.state();
        let u = user(None);
        let cfg = st.config.factors.totp.clone();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let e = enroll_totp(st, &u, "GOOGLE").await.unwrap();
            let f = find(st, &u, &e.factor.id).await.unwrap().unwrap();
            clock.advance(30);
            activate_totp(
                st,
                &u,
                &f,
                &totp::code_at(&cfg, e.secret.expose(), clock.now()),
                ADDR.parse().unwrap(),
            )
            .await
            .unwrap();
            ids.push(e.factor.id);
        }
        assert_eq!(remove(st, &u, &ids[0], "test").await, Ok(Some(EpochMoved(1))));
        assert_eq!(
            remove(st, &u, &ids[1], "test").await,
            Err(RemoveError::LastFactor)
        );
        assert_eq!(remove(st, &u, "nope", "test").await, Err(RemoveError::NotFound));
        let cu = user(Some(b"12345678901234567890"));
        assert_eq!(
            remove(st, &cu, &config_factor_id(&cu.id), "test").await,
            Err(RemoveError::ReadOnly)
        );
    }

    #[tokio::test]
    async fn a_secret_copied_to_another_row_does_not_open() {
        let (gw, _clock) = setup(false).await;
        let st = gw.state();
        let u = user(None);
        let a = enroll_totp(st, &u, "GOOGLE").await.unwrap();
        let b = enroll_totp(st, &u, "GOOGLE").await.unwrap();
        let mut forged = find(st, &u, &b.factor.id).await.unwrap().unwrap();
        forged.record.secret = a.factor.secret.clone();
        assert!(totp_secret(st, &u, &forged).is_none());
        assert!(totp_secret(st, &u, &find(st, &u, &a.factor.id).await.unwrap().unwrap()).is_some());
    }
}
