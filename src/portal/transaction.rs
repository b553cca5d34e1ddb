//! The authentication transaction as a typed state machine: where a
//! transaction stands ([`Status`]), how it began ([`Mode`]), and the
//! transitions between steps as plain functions, tested without a store.
//!
//! | status | may | next |
//! |---|---|---|
//! | `MFA_REQUIRED` | verify a listed factor | `MFA_CHALLENGE` (code sent, push waiting) or done |
//! | `MFA_CHALLENGE` | verify, resend the challenged factor | `MFA_CHALLENGE` or done |
//! | `MFA_ENROLL` | enroll a factor | `MFA_ENROLL_ACTIVATE` |
//! | `MFA_ENROLL_ACTIVATE` | activate the enrolled factor, resend its code | done |
//!
//! "Done" is `SUCCESS`: the transaction is taken from the store, never
//! saved again. A stored transaction keeps the JSON shape it always had
//! (`status` as Okta spells it, `passwordless` and `decoy` flags), so one
//! begun on another replica or before an upgrade continues.

use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;

/// A transaction lives this long after its last step...
pub const STEP_TTL: i64 = 5 * 60;
/// ...and at most this long after it began.
pub const TOTAL_TTL: i64 = 15 * 60;

/// When a transaction saved at `now` expires.
pub(crate) fn expiry(created: UnixTime, now: UnixTime) -> UnixTime {
    (now + STEP_TTL).min(created + TOTAL_TTL)
}

/// Where a transaction stands (Okta's `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Status {
    /// A second factor is needed: verify one of the listed factors.
    #[default]
    #[serde(rename = "MFA_REQUIRED")]
    Required,
    /// A code was sent or a push is waiting.
    #[serde(rename = "MFA_CHALLENGE")]
    Challenge,
    /// The user has no active factor and may enroll one.
    #[serde(rename = "MFA_ENROLL")]
    Enroll,
    /// The factor enrolled in this transaction waits for activation.
    #[serde(rename = "MFA_ENROLL_ACTIVATE")]
    EnrollActivate,
}

impl Status {
    /// Okta's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Required => "MFA_REQUIRED",
            Status::Challenge => "MFA_CHALLENGE",
            Status::Enroll => "MFA_ENROLL",
            Status::EnrollActivate => "MFA_ENROLL_ACTIVATE",
        }
    }

    /// A factor may be verified (or challenged).
    pub(crate) fn may_verify(self) -> bool {
        matches!(self, Status::Required | Status::Challenge)
    }
}

/// How the transaction began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Username and password; the second factor finishes it.
    #[default]
    Password,
    /// A username alone; one possession factor finishes it at level 1.
    Passwordless,
    /// A passwordless sign-in for an unknown user (or one without a
    /// passwordless factor): answers like a real one, never succeeds.
    Decoy,
}

impl Mode {
    /// Passwordless, real or decoy (the answers must not tell them apart).
    pub(crate) fn is_passwordless(self) -> bool {
        matches!(self, Mode::Passwordless | Mode::Decoy)
    }

    pub(crate) fn is_decoy(self) -> bool {
        self == Mode::Decoy
    }
}

/// Where a transaction stands, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub(crate) struct AuthnState {
    pub(crate) status: Status,
    pub(crate) mode: Mode,
    pub(crate) created: UnixTime,
    /// When the first factor was verified.
    pub(crate) auth: UnixTime,
    pub(crate) amr: Vec<String>,
    /// The factor enrolled in this transaction, if any.
    pub(crate) enrolled: Option<String>,
    /// The login as typed (passwordless).
    pub(crate) login: String,
    /// The factor challenged last (code sent, push waiting).
    pub(crate) challenge: Option<Pending>,
    /// The level-1 session the password step issued: its id, retired when
    /// the second factor upgrades it (the verify call need not carry that
    /// cookie), and its sign-in id, which the upgraded session continues.
    pub(crate) session: Option<IssuedSession>,
    /// The user's session epoch when the transaction began: signing the
    /// user out everywhere (or a password change) moves it, and ends the
    /// transactions begun before as it ends their sessions.
    pub(crate) epoch: u64,
}

impl AuthnState {
    /// A challenge was started for a factor: `MFA_CHALLENGE`, remembering it.
    pub(crate) fn challenged(&self, pending: Pending) -> AuthnState {
        AuthnState {
            status: Status::Challenge,
            challenge: Some(pending),
            ..self.clone()
        }
    }

    /// The challenge ended without success (a push rejected or timed out):
    /// the status stays, a verify starts a new one.
    pub(crate) fn challenge_ended(&self) -> AuthnState {
        AuthnState {
            challenge: None,
            ..self.clone()
        }
    }

    /// A factor was enrolled: `MFA_ENROLL_ACTIVATE` for that factor.
    pub(crate) fn enrolled(&self, factor_id: &str) -> AuthnState {
        AuthnState {
            status: Status::EnrollActivate,
            enrolled: Some(factor_id.to_owned()),
            ..self.clone()
        }
    }

    /// True while `factor_id` is the challenge in progress (a resend is for it).
    pub(crate) fn is_challenging(&self, factor_id: &str) -> bool {
        self.status == Status::Challenge
            && self.challenge.as_ref().map(|p| p.factor_id.as_str()) == Some(factor_id)
    }

    /// True while `factor_id` is the factor enrolled here, awaiting activation.
    pub(crate) fn is_activating(&self, factor_id: &str) -> bool {
        self.status == Status::EnrollActivate && self.enrolled.as_deref() == Some(factor_id)
    }
}

/// A session id issued along a transaction, and its sign-in id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct IssuedSession {
    pub(crate) sid: String,
    pub(crate) sin: String,
}

/// An out-of-band challenge in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) factor_id: String,
    /// Push: the transaction and the number the browser shows.
    #[serde(default)]
    pub(crate) transaction_id: Option<String>,
    #[serde(default)]
    pub(crate) correct_answer: Option<u8>,
    pub(crate) expires_at: UnixTime,
}

/// The stored shape (`epoch` added; a transaction stored without it reads
/// as epoch 0, so it ends if the user's epoch ever moved).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    status: Status,
    created: UnixTime,
    auth: UnixTime,
    amr: Vec<String>,
    enrolled: Option<String>,
    #[serde(default)]
    passwordless: bool,
    #[serde(default)]
    decoy: bool,
    #[serde(default)]
    login: String,
    #[serde(default)]
    challenge: Option<Pending>,
    #[serde(default)]
    session: Option<IssuedSession>,
    #[serde(default)]
    epoch: u64,
}

impl From<Stored> for AuthnState {
    fn from(s: Stored) -> Self {
        let mode = match (s.passwordless, s.decoy) {
            (_, true) => Mode::Decoy,
            (true, false) => Mode::Passwordless,
            (false, false) => Mode::Password,
        };
        AuthnState {
            status: s.status,
            mode,
            created: s.created,
            auth: s.auth,
            amr: s.amr,
            enrolled: s.enrolled,
            login: s.login,
            challenge: s.challenge,
            session: s.session,
            epoch: s.epoch,
        }
    }
}

impl From<AuthnState> for Stored {
    fn from(s: AuthnState) -> Self {
        Stored {
            status: s.status,
            created: s.created,
            auth: s.auth,
            amr: s.amr,
            enrolled: s.enrolled,
            passwordless: s.mode.is_passwordless(),
            decoy: s.mode.is_decoy(),
            login: s.login,
            challenge: s.challenge,
            session: s.session,
            epoch: s.epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pending(id: &str) -> Pending {
        Pending {
            factor_id: id.into(),
            transaction_id: None,
            correct_answer: None,
            expires_at: 100,
        }
    }

    #[test]
    fn a_challenge_is_remembered_and_ends_without_leaving_the_status() {
        let s = AuthnState::default();
        assert!(s.status.may_verify() && !s.is_challenging("f1"));
        let c = s.challenged(pending("f1"));
        assert_eq!(c.status, Status::Challenge);
        assert!(c.is_challenging("f1") && !c.is_challenging("f2") && c.status.may_verify());
        let ended = c.challenge_ended();
        assert_eq!(ended.status, Status::Challenge);
        assert!(!ended.is_challenging("f1"));
    }

    #[test]
    fn enrolling_waits_for_that_factor_only() {
        let s = AuthnState {
            status: Status::Enroll,
            ..AuthnState::default()
        };
        assert!(!s.status.may_verify() && !s.is_activating("f1"));
        let e = s.enrolled("f1");
        assert_eq!(e.status, Status::EnrollActivate);
        assert!(e.is_activating("f1") && !e.is_activating("f2") && !e.status.may_verify());
    }

    #[test]
    fn the_stored_shape_is_unchanged() {
        let s = AuthnState {
            status: Status::EnrollActivate,
            mode: Mode::Decoy,
            login: "Dana".into(),
            ..AuthnState::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], json!("MFA_ENROLL_ACTIVATE"));
        assert_eq!(
            (v["passwordless"].clone(), v["decoy"].clone()),
            (json!(true), json!(true))
        );
        let old =
            json!({ "status": "MFA_CHALLENGE", "created": 1, "auth": 1, "amr": ["pwd"], "enrolled": null });
        let back: AuthnState = serde_json::from_value(old).unwrap();
        assert_eq!((back.status, back.mode), (Status::Challenge, Mode::Password));
        let pl: AuthnState = serde_json::from_value(json!({ "status": "MFA_REQUIRED", "created": 1, "auth": 1, "amr": [], "enrolled": null, "passwordless": true })).unwrap();
        assert_eq!(pl.mode, Mode::Passwordless);
        assert!(
            serde_json::from_value::<AuthnState>(
                json!({ "status": "SUCCESS", "created": 1, "auth": 1, "amr": [], "enrolled": null })
            )
            .is_err()
        );
        for st in [
            Status::Required,
            Status::Challenge,
            Status::Enroll,
            Status::EnrollActivate,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), json!(st.as_str()));
        }
    }

    #[test]
    fn a_transaction_expires_after_its_step_or_its_total() {
        assert_eq!(expiry(0, 0), STEP_TTL);
        assert_eq!(expiry(0, TOTAL_TTL - 10), TOTAL_TTL);
    }
}
