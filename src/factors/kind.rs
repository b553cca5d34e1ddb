//! [`FactorKind`]: what one factor type is and does. Everything
//! type-specific that the faces need (labels, `amr`, Okta provider names, id
//! prefixes, send limits, which lifecycle steps exist) is asked of the kind,
//! never spelt out by type name outside this folder. The registry that maps
//! a [`FactorType`] to its kind is in the folder's `mod.rs`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use serde_json::Value;

use super::{
    Challenge, ChallengeContext, ChallengeError, EnrollError, Enrolled, Factor, Flow, PushResult, VerifyError,
};
use crate::config::FactorsConfig;
use crate::state::Handles;
use crate::store::StoreError;
use crate::users::User;

/// The kind of address a factor is enrolled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// A phone number, in E.164 once normalized.
    Phone,
    /// An e-mail address.
    Email,
}

impl Address {
    /// The factor profile's key for it (Okta's).
    pub fn profile_key(self) -> &'static str {
        match self {
            Address::Phone => "phoneNumber",
            Address::Email => "email",
        }
    }

    /// The label of the form field that asks for it.
    pub fn field_label(self) -> &'static str {
        match self {
            Address::Phone => "Phone number (with country code, e.g. +1 555 555 0100)",
            Address::Email => "E-mail address",
        }
    }

    /// The HTML input type of that field.
    pub fn input_type(self) -> &'static str {
        match self {
            Address::Phone => "tel",
            Address::Email => "email",
        }
    }

    /// The user's own address of this kind (the form's default), if known.
    pub fn of_user(self, user: &User) -> Option<&str> {
        match self {
            Address::Phone => user.phone.as_deref(),
            Address::Email => user.email.as_deref(),
        }
    }

    /// The address as pages show it (most of it hidden).
    pub fn mask(self, value: &str) -> String {
        match self {
            Address::Phone => super::otp::mask_phone(value),
            Address::Email => super::otp::mask_email(value),
        }
    }
}

/// A boxed future, so the kinds can sit behind one trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One factor type: what it is called, how it is enrolled, activated,
/// challenged and verified. The lifecycle steps take the narrow
/// [`Handles`] (store, sealer, regulator, clock, config), not the faces'
/// state. A step a type does not have answers as the facade always has
/// (`NotActive`, `NotChallenged`, no transaction).
pub trait FactorKind: Sync {
    /// Okta's `factorType`.
    fn okta_type(&self) -> &'static str;

    /// The Okta providers it is enrolled with, the default first.
    fn providers(&self) -> &'static [&'static str] {
        &["OKTA"]
    }

    /// The prefix of a new factor id for `provider` (Okta's prefixes).
    fn id_prefix(&self, provider: &str) -> &'static str;

    /// Every `result` its verifications (and activations) count in
    /// `portcullis_factor_verifications_total`: registered at zero at
    /// start-up, so the list must name each value the code records.
    fn verification_results(&self) -> &'static [&'static str];

    /// A short name for pages ("Text message").
    fn label(&self) -> &'static str;

    /// The short name pages use for the type (the enrollment chooser's
    /// `?type=`); the Okta type unless that is long.
    fn short_name(&self) -> &'static str {
        self.okta_type()
    }

    /// The type's entry in the portal's enrollment chooser.
    fn enroll_label(&self) -> &'static str {
        self.label()
    }

    /// The invitation to enroll one more of this type (the portal's factor
    /// list, and the title of its address form).
    fn add_label(&self) -> &'static str;

    /// The address a user types to enroll it (sms, call, email), if any.
    fn address(&self) -> Option<Address> {
        None
    }

    /// How one enrolled factor is named on pages, from its `profile`
    /// ("Text message to +1 *** *** **00").
    fn describe(&self, _profile: &Value) -> String {
        self.label().to_owned()
    }

    /// The `amr` value a verification adds (RFC 8176 where it has one).
    fn amr(&self) -> &'static str {
        "otp"
    }

    /// True when `[factors.*]` enables it.
    fn enabled(&self, cfg: &FactorsConfig) -> bool;

    /// Codes or pushes one user may be sent per hour (1 for a type that
    /// sends nothing).
    fn send_limit(&self, _cfg: &FactorsConfig) -> u32 {
        1
    }

    /// True when a challenge sends a code the user types back (sms, call,
    /// email): verifying without a code sends one, and a pending factor's
    /// activation code can be sent again.
    fn sends_code(&self) -> bool {
        false
    }

    /// True when a pending factor is activated with a code (false: the
    /// device pairs itself, like push).
    fn activated_by_code(&self) -> bool {
        true
    }

    /// True when a verification is a device's answer rather than a code
    /// (push): verifying always starts or polls a challenge.
    fn answered_by_device(&self) -> bool {
        false
    }

    /// True when proving possession is a WebAuthn ceremony: enrolling
    /// answers creation options, verifying without an answer starts a
    /// challenge (request options), and the "code" of activation and
    /// verification is the answer (see `webauthn::proof_from_body`).
    fn ceremony(&self) -> bool {
        false
    }

    /// True when a pending factor's secret may be shown as a QR code (totp).
    fn shows_secret(&self) -> bool {
        false
    }

    /// Enrolls a pending factor with a type-specific `profile`.
    fn enroll<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        provider: &'a str,
        profile: &'a Value,
        flow: &'a Flow,
    ) -> BoxFuture<'a, Result<Enrolled, EnrollError>>;

    /// Activates a pending factor with a code.
    fn activate<'a>(
        &'a self,
        _st: &'a Handles,
        _user: &'a User,
        _factor: &'a Factor,
        _code: &'a str,
        _addr: IpAddr,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(async { Err(VerifyError::NotActive) })
    }

    /// Starts a challenge (sends a code or a push).
    fn challenge<'a>(
        &'a self,
        _st: &'a Handles,
        _user: &'a User,
        _factor: &'a Factor,
        _ctx: &'a ChallengeContext,
    ) -> BoxFuture<'a, Result<Challenge, ChallengeError>> {
        Box::pin(async { Err(ChallengeError::NotChallenged) })
    }

    /// Verifies a code for an active factor.
    fn verify<'a>(
        &'a self,
        _st: &'a Handles,
        _user: &'a User,
        _factor: &'a Factor,
        _code: &'a str,
        _addr: IpAddr,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(async { Err(VerifyError::NotActive) })
    }

    /// The state of a challenge transaction (push); `None`: no such
    /// transaction for this user and factor.
    fn status<'a>(
        &'a self,
        _st: &'a Handles,
        _user: &'a User,
        _factor: &'a Factor,
        _transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PushResult>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// Cancels a challenge transaction (push); `None` as for [`Self::status`].
    fn cancel<'a>(
        &'a self,
        _st: &'a Handles,
        _user: &'a User,
        _factor: &'a Factor,
        _transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PushResult>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use crate::factors::{FactorType, kind_of};

    #[test]
    fn every_type_parses_back_and_has_a_distinct_prefix() {
        let mut prefixes = std::collections::HashSet::new();
        for t in FactorType::ALL {
            assert_eq!(FactorType::parse(t.as_str()), Some(t));
            let kind = t.kind();
            assert!(!kind.providers().is_empty() && !kind.label().is_empty());
            for p in kind.providers() {
                assert!(prefixes.insert(kind.id_prefix(p)), "{t:?} {p}");
            }
        }
        assert_eq!(FactorType::parse("question"), None);
        assert!(kind_of("recovery_code").is_none());
    }
}
