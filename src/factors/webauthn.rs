//! WebAuthn security keys and passkeys (Okta's factor type `webauthn`,
//! provider `FIDO`), on kanidm's `webauthn-rs`: the ceremonies are the
//! library's, never hand-written checks.
//!
//! Where things live:
//! - a pending factor's sealed secret is the registration ceremony's state
//!   (its challenge); activation replaces it, compare-and-set, with the
//!   credential (public key, signature counter), so a registration answer is
//!   used once;
//! - an authentication ceremony's state is a short-lived transaction record
//!   keyed by the flow (the authn transaction, the session, the admin API)
//!   and the factor: it is taken (deleted) before the answer is checked, so
//!   every challenge is single use and an answer made for one flow cannot
//!   finish another;
//! - the profile holds the name the user gave it (`authenticatorName`) and
//!   the credential id (`credentialId`, base64url), as Okta's does.
//!
//! A signature counter that does not move forward (a cloned key, or a
//! replayed answer) is refused by the library; it is audited
//! (`factor.webauthn.counter_refused`) and counted as a failure.
//!
//! The facade hands proofs around as text (the `code` of [`FactorKind`]);
//! for this type that text is the JSON built by [`proof_from_body`] from
//! Okta's fields (`clientData`, `attestation`; `authenticatorData`,
//! `signatureData`), all base64url.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    AuthenticationResult, CredentialID, DiscoverableAuthentication, DiscoverableKey, Passkey,
    PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration, Uuid, Webauthn, WebauthnBuilder,
    WebauthnError,
};

use super::kind::{BoxFuture, FactorKind};
use super::{
    Challenge, ChallengeContext, ChallengeError, EnrollError, Enrolled, Factor, Flow, VerifyError, secret_aad,
};
use crate::audit;
use crate::clock::UnixTime;
use crate::config::{FactorsConfig, UserVerification};
use crate::state::Handles;
use crate::store::{FactorRecord, FactorStatus, SealedSecret, StoreError, TransactionRecord};
use crate::users::User;

/// Okta's `factorType`.
pub const WEBAUTHN_TYPE: &str = "webauthn";
/// Okta's provider.
pub const PROVIDER: &str = "FIDO";
/// The kind of the transaction records holding authentication ceremonies.
const KIND: &str = "webauthn";
/// How long a ceremony may take (also the browser's timeout).
pub const CEREMONY_SECS: i64 = 300;
/// The longest name a user may give a key.
pub const MAX_NAME_CHARS: usize = 64;
/// The factor id standing for "any of the user's passkeys" in a
/// usernameless (discoverable) ceremony.
const DISCOVERABLE: &str = "discoverable";

// ---- relying party --------------------------------------------------------

/// The library's relying party, built from `[factors.webauthn]` and
/// `server.external_url`; `None` when disabled or not configurable (the
/// config checks refuse that at load).
pub fn relying_party(st: &Handles) -> Option<Webauthn> {
    let cfg = &st.config.factors.webauthn;
    if !cfg.enabled {
        return None;
    }
    let (rp_id, origins) = cfg.relying_party(st.config.server.external_url.as_ref())?;
    let first = origins.first()?;
    let name = cfg
        .rp_name
        .clone()
        .unwrap_or_else(|| st.config.portal.title.clone());
    let mut b = WebauthnBuilder::new(&rp_id, first)
        .ok()?
        .rp_name(&name)
        .timeout(std::time::Duration::from_secs(CEREMONY_SECS as u64));
    for o in &origins[1..] {
        b = b.append_allowed_origin(o);
    }
    match b.build() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "webauthn relying party");
            None
        }
    }
}

fn uv_required(st: &Handles) -> bool {
    st.config.factors.webauthn.user_verification == UserVerification::Required
}

// ---- user handles ----------------------------------------------------------

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The WebAuthn user handle of a user: the 17 characters after `00u` of the
/// user id, as a number (so a discoverable credential names its user
/// without a lookup table); ids of another shape get a hash (they cannot
/// sign in without a username).
pub fn user_handle(user_id: &str) -> Uuid {
    if let Some(rest) = user_id.strip_prefix("00u")
        && rest.len() == 17
    {
        let mut n: u128 = 0;
        let mut ok = true;
        for b in rest.bytes() {
            match ID_ALPHABET.iter().position(|a| *a == b) {
                Some(d) => n = n * 62 + d as u128,
                None => ok = false,
            }
        }
        if ok {
            return Uuid::from_u128(n);
        }
    }
    let d = Sha256::digest(format!("portcullis/webauthn-user/{user_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // The top bit set: never a number of 17 base-62 digits (62^17 < 2^127).
    b[0] |= 0x80;
    Uuid::from_bytes(b)
}

/// The user id a user handle stands for, if it is one [`user_handle`] made
/// from a `00u` id.
pub fn user_of_handle(handle: &[u8]) -> Option<String> {
    let mut n = Uuid::from_slice(handle).ok()?.as_u128();
    if n >> 127 != 0 {
        return None;
    }
    let mut digits = [0u8; 17];
    for d in digits.iter_mut().rev() {
        *d = ID_ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    if n != 0 {
        return None;
    }
    Some(format!("00u{}", String::from_utf8_lossy(&digits)))
}

// ---- the proof text --------------------------------------------------------

/// The fields of an answer, base64url (Okta's names).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Proof {
    #[serde(rename = "clientData", default, skip_serializing_if = "Option::is_none")]
    pub client_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    #[serde(
        rename = "authenticatorData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub authenticator_data: Option<String>,
    #[serde(rename = "signatureData", default, skip_serializing_if = "Option::is_none")]
    pub signature_data: Option<String>,
    /// The credential used (optional for a factor, which has one).
    #[serde(rename = "credentialId", default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The user handle the authenticator returned (usernameless sign-in).
    #[serde(rename = "userHandle", default, skip_serializing_if = "Option::is_none")]
    pub user_handle: Option<String>,
}

/// The proof text of a JSON request body carrying any of Okta's WebAuthn
/// fields; `None` when it carries none (verify then starts a challenge).
/// A field that is not a string is kept as an empty one: refused later
/// like any malformed answer.
pub fn proof_from_body(body: &Value) -> Option<String> {
    let field = |k: &str| {
        body.get(k)
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().unwrap_or_default().to_owned())
    };
    let p = Proof {
        client_data: field("clientData"),
        attestation: field("attestation"),
        authenticator_data: field("authenticatorData"),
        signature_data: field("signatureData"),
        credential_id: field("credentialId"),
        user_handle: field("userHandle"),
    };
    if p.client_data.is_none()
        && p.attestation.is_none()
        && p.authenticator_data.is_none()
        && p.signature_data.is_none()
    {
        return None;
    }
    serde_json::to_string(&p).ok()
}

/// Base64url (padding and the standard alphabet tolerated).
fn unb64(s: &str) -> Option<Vec<u8>> {
    let t: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    crate::crypto::unb64(&t)
}

fn parse_proof(text: &str) -> Option<Proof> {
    serde_json::from_str(text).ok()
}

/// Base64url without padding, of the bytes `s` stands for.
fn canonical(s: &str) -> Option<String> {
    unb64(s).map(|b| crate::crypto::b64(&b))
}

fn registration_of(p: &Proof) -> Option<RegisterPublicKeyCredential> {
    let raw_id = p.credential_id.as_deref().and_then(canonical).unwrap_or_default();
    serde_json::from_value(json!({
        "id": raw_id,
        "rawId": raw_id,
        "response": {
            "attestationObject": canonical(p.attestation.as_deref()?)?,
            "clientDataJSON": canonical(p.client_data.as_deref()?)?,
        },
        "type": "public-key",
        "extensions": {},
    }))
    .ok()
}

fn assertion_of(p: &Proof, cred_id: Option<&[u8]>) -> Option<PublicKeyCredential> {
    let raw_id = match (p.credential_id.as_deref(), cred_id) {
        (Some(given), _) => canonical(given)?,
        (None, Some(id)) => crate::crypto::b64(id),
        (None, None) => return None,
    };
    let user_handle = match p.user_handle.as_deref().filter(|s| !s.is_empty()) {
        Some(h) => Some(canonical(h)?),
        None => None,
    };
    serde_json::from_value(json!({
        "id": raw_id,
        "rawId": raw_id,
        "response": {
            "authenticatorData": canonical(p.authenticator_data.as_deref()?)?,
            "clientDataJSON": canonical(p.client_data.as_deref()?)?,
            "signature": canonical(p.signature_data.as_deref()?)?,
            "userHandle": user_handle,
        },
        "type": "public-key",
        "extensions": {},
    }))
    .ok()
}

// ---- stored state ------------------------------------------------------------

/// A pending factor's registration ceremony (its sealed secret).
#[derive(Serialize, Deserialize)]
enum Registration {
    Passkey(PasskeyRegistration),
    SecurityKey(SecurityKeyRegistration),
}

/// An authentication ceremony in progress (a transaction record).
#[derive(Serialize, Deserialize)]
enum Ceremony {
    Passkey(PasskeyAuthentication),
    SecurityKey(SecurityKeyAuthentication),
    Discoverable(DiscoverableAuthentication),
}

/// A factor's sealed secret: the registration ceremony while pending, the
/// credential once active.
#[derive(Serialize, Deserialize)]
enum Sealed {
    /// Pending, as sealed before registrations recorded when they began:
    /// counted from the factor's creation.
    Registration(Registration),
    /// Pending: the registration ceremony, and when it began (an answer to
    /// it is taken for [`CEREMONY_SECS`]).
    Begun {
        registration: Registration,
        at: UnixTime,
    },
    Credential(Passkey),
}

fn seal(st: &Handles, factor_id: &str, user_id: &str, v: &Sealed) -> Result<SealedSecret, EnrollError> {
    let sealer = st.sealer.as_ref().ok_or(EnrollError::NoKeys)?;
    let bytes = serde_json::to_vec(v).map_err(|_| EnrollError::Seal)?;
    sealer
        .seal(&bytes, &secret_aad(factor_id, user_id))
        .map_err(|_| EnrollError::Seal)
}

fn open(st: &Handles, record: &FactorRecord) -> Option<Sealed> {
    let sealed = record.secret.as_ref()?;
    let sealer = st.sealer.as_ref()?;
    match sealer.open(sealed, &secret_aad(&record.id, &record.user_id)) {
        Ok(s) => serde_json::from_slice(s.expose()).ok(),
        Err(e) => {
            tracing::error!(factor_id = %record.id, error = %e, "cannot open a factor secret");
            None
        }
    }
}

/// The credential of an active factor.
fn credential(st: &Handles, record: &FactorRecord) -> Option<Passkey> {
    match open(st, record)? {
        Sealed::Credential(p) => Some(p),
        Sealed::Registration(_) | Sealed::Begun { .. } => None,
    }
}

/// The same credential in the library's security-key type (both types wrap
/// one credential and serialize alike).
fn as_security_key(p: &Passkey) -> Option<SecurityKey> {
    serde_json::from_value(serde_json::to_value(p).ok()?).ok()
}

fn state_id(flow: &Flow, factor_id: &str) -> String {
    crate::crypto::token_id(&format!("webauthn:{}:{factor_id}", flow.key()))
}

/// The creation options as a browser's `publicKey` wants them (base64url
/// binary fields). The residentKey preference is raised to "preferred" so a
/// key that can hold a passkey does (a usernameless sign-in needs one).
fn creation_options(ccr: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(ccr).unwrap_or(Value::Null);
    let mut pk = v["publicKey"].take();
    if let Some(sel) = pk
        .get_mut("authenticatorSelection")
        .and_then(Value::as_object_mut)
    {
        sel.insert("residentKey".into(), json!("preferred"));
        sel.insert("requireResidentKey".into(), json!(false));
    }
    if let Some(o) = pk.as_object_mut() {
        // A hint would hide platform passkeys from some browsers.
        o.remove("hints");
        // The library leaves the list out when it is empty; Okta's clients
        // (and SPEC section 13) expect it always, `[]` for a user's first key.
        o.entry("excludeCredentials").or_insert_with(|| json!([]));
    }
    if let Some(ext) = pk.get_mut("extensions").and_then(Value::as_object_mut) {
        // Chromium refuses a credProtect request its authenticator cannot
        // keep with NotSupportedError, even when not enforced.
        ext.remove("credentialProtectionPolicy");
        ext.remove("enforceCredentialProtectionPolicy");
    }
    pk
}

fn request_options(rcr: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(rcr).unwrap_or(Value::Null);
    let mut pk = v["publicKey"].take();
    if let Some(o) = pk.as_object_mut() {
        o.remove("hints");
    }
    pk
}

// ---- enrollment and activation ---------------------------------------------

/// The user's other webauthn credential ids (the browser refuses to register one twice).
async fn existing_ids(st: &Handles, user: &User, except: &str) -> Result<Vec<CredentialID>, StoreError> {
    Ok(st
        .store
        .list_factors(&user.id)
        .await?
        .into_iter()
        .filter(|f| f.factor_type == WEBAUTHN_TYPE && f.id != except)
        .filter_map(|f| f.profile["credentialId"].as_str().and_then(unb64))
        .collect())
}

fn new_registration(
    st: &Handles,
    w: &Webauthn,
    user: &User,
    exclude: Vec<CredentialID>,
) -> Result<(Value, Registration), EnrollError> {
    let handle = user_handle(&user.id);
    let display = user.display_name.clone().unwrap_or_else(|| user.username.clone());
    let exclude = (!exclude.is_empty()).then_some(exclude);
    let fail = |e: WebauthnError| {
        tracing::error!(error = %e, "starting a webauthn registration");
        EnrollError::Seal
    };
    if uv_required(st) {
        let (ccr, reg) = w
            .start_passkey_registration(handle, &user.username, &display, exclude)
            .map_err(fail)?;
        Ok((creation_options(&ccr), Registration::Passkey(reg)))
    } else {
        let (ccr, reg) = w
            .start_securitykey_registration(handle, &user.username, &display, exclude, None, None)
            .map_err(fail)?;
        Ok((creation_options(&ccr), Registration::SecurityKey(reg)))
    }
}

/// The name a key is enrolled with (`authenticatorName`, or `name`).
pub fn name_of(profile: &Value) -> Result<String, EnrollError> {
    let raw = profile["authenticatorName"]
        .as_str()
        .or_else(|| profile["name"].as_str())
        .unwrap_or("")
        .trim();
    let name = if raw.is_empty() { "Security key" } else { raw };
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(crate::names::is_hidden_in_label) {
        return Err(EnrollError::Invalid(format!(
            "profile.authenticatorName: at most {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// Enrolls a pending key named by `profile`: answers the creation options
/// the browser's `navigator.credentials.create` takes.
pub async fn enroll(
    st: &Handles,
    user: &User,
    provider: &str,
    profile: &Value,
) -> Result<Enrolled, EnrollError> {
    if provider != PROVIDER {
        return Err(EnrollError::NotSupported);
    }
    let w = relying_party(st).ok_or(EnrollError::NotSupported)?;
    let name = name_of(profile)?;
    let now = st.clock.now();
    let id = super::new_factor_id(WEBAUTHN_TYPE, PROVIDER);
    let (options, reg) = new_registration(st, &w, user, existing_ids(st, user, &id).await?)?;
    let secret = seal(
        st,
        &id,
        &user.id,
        &Sealed::Begun {
            registration: reg,
            at: now,
        },
    )?;
    let factor = FactorRecord {
        id,
        user_id: user.id.clone(),
        factor_type: WEBAUTHN_TYPE.into(),
        provider: PROVIDER.into(),
        status: FactorStatus::PendingActivation,
        profile: json!({ "authenticatorName": name }),
        secret: Some(secret),
        created: now,
        last_updated: now,
    };
    st.store.insert_factor(&factor).await?;
    crate::metrics::factor_event("enrolled", WEBAUTHN_TYPE);
    audit!("factor.enrolled", user = %user.username, factor_type = WEBAUTHN_TYPE, factor_id = %factor.id);
    Ok(Enrolled::WebAuthn {
        factor,
        options,
        expires_at: now + CEREMONY_SECS,
    })
}

/// A new registration ceremony for a pending key (the previous challenge
/// stops working): the creation options.
pub async fn restart_registration(st: &Handles, user: &User, factor: &Factor) -> Result<Value, EnrollError> {
    let w = relying_party(st).ok_or(EnrollError::NotSupported)?;
    let rec = &factor.record;
    let (Some(old), FactorStatus::PendingActivation) = (rec.secret.as_ref(), rec.status) else {
        return Err(EnrollError::NotSupported);
    };
    let (options, reg) = new_registration(st, &w, user, existing_ids(st, user, &rec.id).await?)?;
    let new = seal(
        st,
        &rec.id,
        &user.id,
        &Sealed::Begun {
            registration: reg,
            at: st.clock.now(),
        },
    )?;
    if !st.store.replace_factor_secret(&rec.id, old, &new).await? {
        return Err(EnrollError::Invalid(
            "the key changed meanwhile; try again".into(),
        ));
    }
    Ok(options)
}

/// Activates a pending key with the browser's registration answer
/// (`clientData`, `attestation`). A wrong answer counts as a failure.
pub async fn activate(
    st: &Handles,
    user: &User,
    factor: &Factor,
    proof: &str,
    addr: IpAddr,
) -> Result<(), VerifyError> {
    let rec = &factor.record;
    if rec.status != FactorStatus::PendingActivation || rec.factor_type != WEBAUTHN_TYPE {
        return Err(VerifyError::NotActive);
    }
    let Some(w) = relying_party(st) else {
        return Err(VerifyError::NotActive);
    };
    if super::blocked(st, user, addr).await? {
        crate::metrics::factor_verification(WEBAUTHN_TYPE, "locked");
        audit!("factor.verify.refused", user = %user.username, client = %addr, reason = "user locked");
        return Err(super::locked_answer(st));
    }
    let (old, reg, began) = match (rec.secret.as_ref(), open(st, rec)) {
        (Some(old), Some(Sealed::Begun { registration, at })) => (old, registration, at),
        (Some(old), Some(Sealed::Registration(registration))) => (old, registration, rec.created),
        _ => return Err(VerifyError::Unavailable),
    };
    // The challenge is good for the ceremony's time, as a sign-in's is: an
    // answer kept from an abandoned enrollment does not activate a key
    // later. (A new page, or `restart_registration`, begins a new one.)
    if st.clock.now() - began > CEREMONY_SECS {
        super::failed(st, user, WEBAUTHN_TYPE, addr, "expired").await?;
        return Err(VerifyError::Invalid);
    }
    let Some(answer) = parse_proof(proof).as_ref().and_then(registration_of) else {
        super::failed(st, user, WEBAUTHN_TYPE, addr, "malformed").await?;
        return Err(VerifyError::Invalid);
    };
    let finished = match &reg {
        Registration::Passkey(r) => w.finish_passkey_registration(&answer, r),
        Registration::SecurityKey(r) => w
            .finish_securitykey_registration(&answer, r)
            .and_then(|k| serde_json::to_value(k).map_err(|_| WebauthnError::InvalidUserUniqueId))
            .and_then(|v| {
                serde_json::from_value::<Passkey>(v).map_err(|_| WebauthnError::InvalidUserUniqueId)
            }),
    };
    let passkey = match finished {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, "webauthn registration refused");
            super::failed(st, user, WEBAUTHN_TYPE, addr, "invalid").await?;
            return Err(VerifyError::Invalid);
        }
    };
    let cred_id = crate::crypto::b64(passkey.cred_id().as_ref());
    let others = existing_ids(st, user, &rec.id).await?;
    let mine: &[u8] = passkey.cred_id().as_ref();
    if others.iter().any(|c| AsRef::<[u8]>::as_ref(c) == mine) {
        super::failed(st, user, WEBAUTHN_TYPE, addr, "duplicate").await?;
        return Err(VerifyError::Invalid);
    }
    let new =
        seal(st, &rec.id, &user.id, &Sealed::Credential(passkey)).map_err(|_| VerifyError::Unavailable)?;
    // Compare and set: one registration answer activates the key, once.
    if !st.store.replace_factor_secret(&rec.id, old, &new).await? {
        super::failed(st, user, WEBAUTHN_TYPE, addr, "replayed").await?;
        return Err(VerifyError::Replayed);
    }
    let mut profile = rec.profile.clone();
    profile["credentialId"] = json!(cred_id);
    if !st
        .store
        .update_factor_profile(
            &user.id,
            &rec.id,
            FactorStatus::PendingActivation,
            &profile,
            FactorStatus::Active,
            st.clock.now(),
        )
        .await?
    {
        return Err(VerifyError::NotActive);
    }
    crate::metrics::factor_event("activated", WEBAUTHN_TYPE);
    audit!("factor.activated", user = %user.username, factor_type = WEBAUTHN_TYPE, factor_id = %rec.id);
    Ok(())
}

// ---- authentication ---------------------------------------------------------

async fn put_ceremony(
    st: &Handles,
    user_id: &str,
    flow: &Flow,
    factor_id: &str,
    c: &Ceremony,
) -> Result<UnixTime, ChallengeError> {
    let now = st.clock.now();
    let id = state_id(flow, factor_id);
    let unavailable = |e: StoreError| {
        tracing::error!(error = %e, "storing a webauthn challenge");
        ChallengeError::Unavailable
    };
    // A new challenge replaces the one before (which stops working).
    st.store
        .take_transaction(KIND, &id, now)
        .await
        .map_err(unavailable)?;
    let data = serde_json::to_value(c).map_err(|_| ChallengeError::Unavailable)?;
    st.store
        .put_transaction(&TransactionRecord {
            id,
            kind: KIND.into(),
            user_id: user_id.to_owned(),
            data,
            version: 0,
            expires_at: now + CEREMONY_SECS,
        })
        .await
        .map_err(unavailable)?;
    Ok(now + CEREMONY_SECS)
}

/// Starts an authentication ceremony with an active key: the request
/// options for `navigator.credentials.get`, bound to the flow.
pub async fn challenge(
    st: &Handles,
    user: &User,
    factor: &Factor,
    flow: &Flow,
) -> Result<Challenge, ChallengeError> {
    let Some(w) = relying_party(st) else {
        return Err(ChallengeError::NotActive);
    };
    if !factor.is_active() {
        return Err(ChallengeError::NotActive);
    }
    let Some(pk) = credential(st, &factor.record) else {
        return Err(ChallengeError::Unavailable);
    };
    let started = if uv_required(st) {
        w.start_passkey_authentication(std::slice::from_ref(&pk))
            .map(|(r, s)| (request_options(&r), Ceremony::Passkey(s)))
    } else {
        let sk = as_security_key(&pk).ok_or(ChallengeError::Unavailable)?;
        w.start_securitykey_authentication(&[sk])
            .map(|(r, s)| (request_options(&r), Ceremony::SecurityKey(s)))
    };
    let (options, ceremony) = started.map_err(|e| {
        tracing::error!(error = %e, "starting a webauthn authentication");
        ChallengeError::Unavailable
    })?;
    let expires_at = put_ceremony(st, &user.id, flow, &factor.record.id, &ceremony).await?;
    Ok(Challenge::WebAuthn { options, expires_at })
}

/// Why the library refused an assertion, for the audit trail.
fn refusal(e: &WebauthnError) -> &'static str {
    match e {
        WebauthnError::CredentialPossibleCompromise => "counter_regressed",
        _ => "invalid",
    }
}

/// A credential's stored signature counter.
fn counter_of(pk: &Passkey) -> u64 {
    serde_json::to_value(pk)
        .ok()
        .and_then(|v| v["cred"]["counter"].as_u64())
        .unwrap_or(0)
}

/// Checks the counter against the credential as stored now and stores the
/// new one, compare-and-set on the sealed secret: of two answers carrying
/// the same counter (a cloned key, or one answer raced twice) one is
/// accepted. False: the counter did not move forward.
async fn store_counter(
    st: &Handles,
    user: &User,
    factor_id: &str,
    result: &AuthenticationResult,
) -> Result<bool, VerifyError> {
    for _ in 0..5 {
        let Some(rec) = st.store.get_factor(&user.id, factor_id).await? else {
            return Err(VerifyError::NotActive);
        };
        let (Some(old), Some(mut pk)) = (rec.secret.clone(), credential(st, &rec)) else {
            return Err(VerifyError::Unavailable);
        };
        let stored = counter_of(&pk);
        let counter = u64::from(result.counter());
        if (counter > 0 || stored > 0) && counter <= stored {
            return Ok(false);
        }
        if pk.update_credential(result) != Some(true) {
            return Ok(true);
        }
        let new =
            seal(st, factor_id, &user.id, &Sealed::Credential(pk)).map_err(|_| VerifyError::Unavailable)?;
        if st.store.replace_factor_secret(factor_id, &old, &new).await? {
            return Ok(true);
        }
    }
    Err(VerifyError::Unavailable)
}

async fn refused(
    st: &Handles,
    user: &User,
    factor_id: &str,
    addr: IpAddr,
    why: &'static str,
) -> Result<(), VerifyError> {
    if why == "counter_regressed" {
        audit!("factor.webauthn.counter_refused", user = %user.username, factor_id = %factor_id, client = %addr);
    }
    super::failed(st, user, WEBAUTHN_TYPE, addr, why).await
}

/// Checks an assertion (`clientData`, `authenticatorData`, `signatureData`)
/// for the challenge of this flow; answers whether the authenticator
/// verified the user. The challenge is used up whatever the outcome.
pub async fn verify_assertion(
    st: &Handles,
    user: &User,
    factor: &Factor,
    proof: &str,
    addr: IpAddr,
    flow: &Flow,
) -> Result<bool, VerifyError> {
    let rec = &factor.record;
    if rec.factor_type != WEBAUTHN_TYPE || !factor.is_active() {
        return Err(VerifyError::NotActive);
    }
    let Some(w) = relying_party(st) else {
        return Err(VerifyError::NotActive);
    };
    if super::blocked(st, user, addr).await? {
        crate::metrics::factor_verification(WEBAUTHN_TYPE, "locked");
        audit!("factor.verify.refused", user = %user.username, client = %addr, reason = "user locked");
        return Err(super::locked_answer(st));
    }
    let taken = st
        .store
        .take_transaction(KIND, &state_id(flow, &rec.id), st.clock.now())
        .await?;
    let ceremony = taken
        .filter(|t| t.user_id == user.id)
        .and_then(|t| serde_json::from_value::<Ceremony>(t.data).ok());
    let Some(ceremony) = ceremony else {
        // No challenge (never asked, used already, or expired): a replay.
        super::failed(st, user, WEBAUTHN_TYPE, addr, "replayed").await?;
        return Err(VerifyError::Replayed);
    };
    let Some(pk) = credential(st, rec) else {
        return Err(VerifyError::Unavailable);
    };
    let Some(answer) = parse_proof(proof).and_then(|p| assertion_of(&p, Some(pk.cred_id().as_ref()))) else {
        super::failed(st, user, WEBAUTHN_TYPE, addr, "malformed").await?;
        return Err(VerifyError::Invalid);
    };
    let checked = match &ceremony {
        Ceremony::Passkey(s) => w.finish_passkey_authentication(&answer, s),
        Ceremony::SecurityKey(s) => w.finish_securitykey_authentication(&answer, s),
        Ceremony::Discoverable(_) => Err(WebauthnError::InvalidUserUniqueId),
    };
    let result = match checked {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "webauthn assertion refused");
            refused(st, user, &rec.id, addr, refusal(&e)).await?;
            return Err(VerifyError::Invalid);
        }
    };
    if !store_counter(st, user, &rec.id, &result).await? {
        refused(st, user, &rec.id, addr, "counter_regressed").await?;
        return Err(VerifyError::Invalid);
    }
    crate::metrics::factor_verification(WEBAUTHN_TYPE, "success");
    audit!("factor.verified", user = %user.username, factor_type = WEBAUTHN_TYPE, factor_id = %rec.id, client = %addr, user_verified = result.user_verified());
    Ok(result.user_verified())
}

/// Starts a usernameless ceremony (any passkey of this site), bound to the
/// flow: the request options.
pub async fn challenge_discoverable(st: &Handles, flow: &Flow) -> Result<(Value, UnixTime), ChallengeError> {
    let Some(w) = relying_party(st) else {
        return Err(ChallengeError::NotActive);
    };
    let (rcr, s) = w.start_discoverable_authentication().map_err(|e| {
        tracing::error!(error = %e, "starting a discoverable webauthn authentication");
        ChallengeError::Unavailable
    })?;
    let mut options = request_options(&rcr);
    if let Some(o) = options.as_object_mut() {
        o.remove("mediation");
    }
    let expires = put_ceremony(st, "", flow, DISCOVERABLE, &Ceremony::Discoverable(s)).await?;
    Ok((options, expires))
}

/// Why a usernameless sign-in failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverableError {
    /// No such challenge (used, expired, never asked) or an unreadable
    /// answer that names no known user: nothing to count against.
    Refused,
    /// The answer named a user and failed: counted against that user.
    Verify(VerifyError),
}

/// Finishes a usernameless ceremony: the user and key the answer names,
/// and whether the user was verified (the library requires it here).
pub async fn verify_discoverable(
    st: &Handles,
    users: &crate::users::SharedUsers,
    proof: &str,
    addr: IpAddr,
    flow: &Flow,
) -> Result<(std::sync::Arc<User>, Factor, bool), DiscoverableError> {
    let Some(w) = relying_party(st) else {
        return Err(DiscoverableError::Refused);
    };
    let taken = st
        .store
        .take_transaction(KIND, &state_id(flow, DISCOVERABLE), st.clock.now())
        .await
        .map_err(|e| DiscoverableError::Verify(e.into()))?;
    let Some(Ceremony::Discoverable(state)) =
        taken.and_then(|t| serde_json::from_value::<Ceremony>(t.data).ok())
    else {
        return Err(DiscoverableError::Refused);
    };
    let Some(answer) = parse_proof(proof).and_then(|p| assertion_of(&p, None)) else {
        return Err(DiscoverableError::Refused);
    };
    let Some(uid) = answer.get_user_unique_id().and_then(user_of_handle) else {
        return Err(DiscoverableError::Refused);
    };
    let user = users.read().unwrap_or_else(|p| p.into_inner()).get(&uid).cloned();
    let Some(user) = user else {
        return Err(DiscoverableError::Refused);
    };
    let v = |e: VerifyError| DiscoverableError::Verify(e);
    let blocked = crate::regulation::as_first_factor(false, super::blocked(st, &user, addr))
        .await
        .map_err(v)?;
    if blocked {
        audit!("factor.verify.refused", user = %user.username, client = %addr, reason = "user locked");
        return Err(v(super::locked_answer(st)));
    }
    let cred_id = crate::crypto::b64(answer.get_credential_id());
    let factors = super::list(st, &user).await.map_err(|e| v(e.into()))?;
    let Some(factor) = factors.into_iter().find(|f| {
        f.is_active()
            && f.record.factor_type == WEBAUTHN_TYPE
            && f.record.profile["credentialId"] == json!(cred_id)
    }) else {
        super::failed(st, &user, WEBAUTHN_TYPE, addr, "unknown_credential")
            .await
            .map_err(v)?;
        return Err(v(VerifyError::Invalid));
    };
    let Some(pk) = credential(st, &factor.record) else {
        return Err(v(VerifyError::Unavailable));
    };
    let result = match w.finish_discoverable_authentication_v2(&answer, state, DiscoverableKey::from(&pk)) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "webauthn assertion refused");
            refused(st, &user, &factor.record.id, addr, refusal(&e))
                .await
                .map_err(v)?;
            return Err(v(VerifyError::Invalid));
        }
    };
    if !store_counter(st, &user, &factor.record.id, &result)
        .await
        .map_err(v)?
    {
        refused(st, &user, &factor.record.id, addr, "counter_regressed")
            .await
            .map_err(v)?;
        return Err(v(VerifyError::Invalid));
    }
    crate::metrics::factor_verification(WEBAUTHN_TYPE, "success");
    audit!("factor.verified", user = %user.username, factor_type = WEBAUTHN_TYPE, factor_id = %factor.record.id, client = %addr, user_verified = result.user_verified(), discoverable = true);
    Ok((user, factor, result.user_verified()))
}

/// Renames a key (its `authenticatorName`).
pub async fn rename(st: &Handles, user: &User, factor: &Factor, name: &str) -> Result<bool, EnrollError> {
    let name = name_of(&json!({ "authenticatorName": name }))?;
    let mut profile = factor.record.profile.clone();
    profile["authenticatorName"] = json!(name);
    let s = factor.record.status;
    Ok(st
        .store
        .update_factor_profile(&user.id, &factor.record.id, s, &profile, s, st.clock.now())
        .await?)
}

/// Security keys and passkeys.
#[derive(Debug)]
pub struct WebAuthn;

impl FactorKind for WebAuthn {
    fn okta_type(&self) -> &'static str {
        WEBAUTHN_TYPE
    }

    fn verification_results(&self) -> &'static [&'static str] {
        &[
            "success",
            "invalid",
            "malformed",
            "duplicate",
            "expired",
            "replayed",
            "counter_regressed",
            "unknown_credential",
            "locked",
        ]
    }

    fn providers(&self) -> &'static [&'static str] {
        &[PROVIDER]
    }

    fn id_prefix(&self, _provider: &str) -> &'static str {
        "fwf"
    }

    fn label(&self) -> &'static str {
        "Security key or passkey"
    }

    fn add_label(&self) -> &'static str {
        "Add a security key or passkey"
    }

    fn describe(&self, profile: &Value) -> String {
        format!(
            "Security key \u{201c}{}\u{201d}",
            profile["authenticatorName"].as_str().unwrap_or("Security key")
        )
    }

    fn amr(&self) -> &'static str {
        "hwk"
    }

    fn enabled(&self, cfg: &FactorsConfig) -> bool {
        cfg.webauthn.enabled
    }

    fn ceremony(&self) -> bool {
        true
    }

    fn enroll<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        provider: &'a str,
        profile: &'a Value,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<Enrolled, EnrollError>> {
        Box::pin(enroll(st, user, provider, profile))
    }

    fn activate<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        code: &'a str,
        addr: IpAddr,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(activate(st, user, factor, code, addr))
    }

    fn challenge<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        ctx: &'a ChallengeContext,
    ) -> BoxFuture<'a, Result<Challenge, ChallengeError>> {
        Box::pin(challenge(st, user, factor, &ctx.flow))
    }

    fn verify<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        code: &'a str,
        addr: IpAddr,
        flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(async move {
            verify_assertion(st, user, factor, code, addr, flow)
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
#[path = "../../tests/support/soft_authenticator.rs"]
pub(crate) mod soft;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::soft::SoftKey;
    use super::*;
    use crate::clock::ManualClock;
    use crate::gateway::Gateway;

    const ORIGIN: &str = "https://app.example.com";
    const RP: &str = "app.example.com";
    const ADDR: &str = "192.0.2.10";

    fn ip() -> IpAddr {
        ADDR.parse().unwrap()
    }

    #[test]
    fn key_names_are_printable_and_show_what_they_are() {
        assert_eq!(
            name_of(&json!({ "authenticatorName": " Zoë's key " })).unwrap(),
            "Zoë's key"
        );
        assert_eq!(name_of(&json!({})).unwrap(), "Security key");
        for hidden in ["a\nb", "\u{202E}yek-nimda", "admin\u{200B}-key"] {
            assert!(
                name_of(&json!({ "authenticatorName": hidden })).is_err(),
                "{hidden:?}"
            );
        }
    }

    async fn gateway(uv: &str, max_failures: u32) -> (Gateway, ManualClock) {
        let text = format!(
            r#"
default_policy = "two_factor"
[server]
external_url = "{ORIGIN}"
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
max_factor_failures = {max_failures}
[factors.webauthn]
enabled = true
user_verification = "{uv}"
"#
        );
        let loaded = crate::config::load_str(&text, &|_| None).expect("config");
        let clock = ManualClock::new(1_800_000_000);
        let gw = Gateway::build_with(loaded.config, Arc::new(clock.clone()))
            .await
            .expect("gateway");
        (gw, clock)
    }

    fn user() -> User {
        User {
            id: "00uEveEXAMPLE1234567".into(),
            username: "eve".into(),
            display_name: Some("Eve Example".into()),
            email: None,
            phone: None,
            groups: vec![],
            password_hash: None,
            from_file: false,
            config_totp: None,
        }
    }

    fn proof(v: &Value) -> String {
        proof_from_body(v).expect("proof fields")
    }

    /// Enrolls and activates a key; answers the active factor.
    async fn enrolled(st: &Handles, u: &User, key: &mut SoftKey) -> Factor {
        let Enrolled::WebAuthn { factor, options, .. } =
            enroll(st, u, PROVIDER, &json!({ "authenticatorName": "Blue key" }))
                .await
                .unwrap()
        else {
            panic!("not a webauthn enrollment")
        };
        assert_eq!(options["rp"]["id"], RP);
        assert!(options["challenge"].as_str().is_some_and(|c| c.len() >= 22));
        let pending = super::super::find(st, u, &factor.id).await.unwrap().unwrap();
        activate(st, u, &pending, &proof(&key.register(&options)), ip())
            .await
            .unwrap();
        let active = super::super::find(st, u, &factor.id).await.unwrap().unwrap();
        assert!(active.is_active());
        assert_eq!(
            active.record.profile["credentialId"],
            json!(soft::b64(&key.cred_id))
        );
        assert_eq!(active.record.profile["authenticatorName"], "Blue key");
        active
    }

    async fn options(st: &Handles, u: &User, f: &Factor, flow: &Flow) -> Value {
        match challenge(st, u, f, flow).await.unwrap() {
            Challenge::WebAuthn { options, .. } => options,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn user_handles_name_their_user() {
        for id in [
            "00uEveEXAMPLE1234567",
            "00u99999999999999999",
            "00uaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(user_of_handle(user_handle(id).as_bytes()).as_deref(), Some(id));
        }
        assert_eq!(user_of_handle(user_handle("someone-else").as_bytes()), None);
        assert_eq!(user_of_handle(b"short"), None);
    }

    #[tokio::test]
    async fn register_then_sign_in_and_the_counter_moves() {
        for uv in ["preferred", "required"] {
            let (gw, _clock) = gateway(uv, 50).await;
            let st = gw.state();
            let u = user();
            let mut key = SoftKey::new(ORIGIN);
            let f = enrolled(st, &u, &mut key).await;
            let flow = Flow::Session("s1".into());
            for _ in 0..2 {
                let o = options(st, &u, &f, &flow).await;
                assert_eq!(o["allowCredentials"][0]["id"], json!(soft::b64(&key.cred_id)));
                let a = key.assert(&o, RP);
                assert_eq!(
                    verify_assertion(st, &u, &f, &proof(&a), ip(), &flow).await,
                    Ok(true),
                    "{uv}"
                );
            }
            let rec = st.store.get_factor(&u.id, &f.record.id).await.unwrap().unwrap();
            let stored = serde_json::to_value(credential(st, &rec).unwrap()).unwrap();
            assert_eq!(stored["cred"]["counter"], 2, "{uv}");
        }
    }

    #[tokio::test]
    async fn replayed_foreign_and_backwards_answers_are_refused() {
        let (gw, _clock) = gateway("preferred", 50).await;
        let st = gw.state();
        let u = user();
        let mut key = SoftKey::new(ORIGIN);
        let f = enrolled(st, &u, &mut key).await;
        let flow = Flow::Authn("tx1".into());
        let o = options(st, &u, &f, &flow).await;
        let a = key.assert(&o, RP);
        // An answer for another flow finds no challenge there.
        let other = Flow::Authn("tx2".into());
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&a), ip(), &other).await,
            Err(VerifyError::Replayed)
        );
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&a), ip(), &flow).await,
            Ok(true)
        );
        // The same answer again: the challenge is used up.
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&a), ip(), &flow).await,
            Err(VerifyError::Replayed)
        );
        // A fresh challenge answered with a counter that went backwards (a clone).
        let o = options(st, &u, &f, &flow).await;
        let cloned = key.assert_with_counter(&o, RP, 1);
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&cloned), ip(), &flow).await,
            Err(VerifyError::Invalid)
        );
        // Another authenticator's signature for the same credential id.
        let o = options(st, &u, &f, &flow).await;
        let mut stranger = SoftKey::new(ORIGIN);
        stranger.cred_id = key.cred_id.clone();
        stranger.counter = 10;
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&stranger.assert(&o, RP)), ip(), &flow).await,
            Err(VerifyError::Invalid)
        );
        // A phishing origin.
        let o = options(st, &u, &f, &flow).await;
        let mut phished = key.assert(&o, RP);
        phished["clientData"] = json!(soft::b64(
            &serde_json::to_vec(
                &json!({"type": "webauthn.get", "challenge": o["challenge"], "origin": "https://evil.test"})
            )
            .unwrap()
        ));
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&phished), ip(), &flow).await,
            Err(VerifyError::Invalid)
        );
        // Malformed.
        let _ = options(st, &u, &f, &flow).await;
        assert_eq!(
            verify_assertion(
                st,
                &u,
                &f,
                &proof(&json!({"clientData": "%%%", "signatureData": 7})),
                ip(),
                &flow
            )
            .await,
            Err(VerifyError::Invalid)
        );
    }

    #[tokio::test]
    async fn bad_answers_count_toward_the_lockout() {
        let (gw, _clock) = gateway("preferred", 3).await;
        let st = gw.state();
        let u = user();
        let mut key = SoftKey::new(ORIGIN);
        let f = enrolled(st, &u, &mut key).await;
        let flow = Flow::Session("s".into());
        for _ in 0..3 {
            let _ = options(st, &u, &f, &flow).await;
            let bad = json!({ "clientData": "AAAA", "authenticatorData": "AAAA", "signatureData": "AAAA" });
            assert_eq!(
                verify_assertion(st, &u, &f, &proof(&bad), ip(), &flow).await,
                Err(VerifyError::Invalid)
            );
        }
        let o = options(st, &u, &f, &flow).await;
        assert_eq!(
            verify_assertion(st, &u, &f, &proof(&key.assert(&o, RP)), ip(), &flow).await,
            Err(VerifyError::Invalid),
            "locked: a good answer is refused like a bad one"
        );
    }

    #[tokio::test]
    async fn a_passkey_signs_in_only_the_user_it_is_registered_to() {
        let (gw, _clock) = gateway("required", 50).await;
        let st = gw.state();
        let eve = user();
        let mallory = User {
            id: "00uMalloryEXAMPLE123".into(),
            username: "mallory".into(),
            display_name: None,
            ..user()
        };
        for u in [&eve, &mallory] {
            st.users.write().unwrap().insert(u.clone());
        }
        let mut eve_key = SoftKey::new(ORIGIN);
        let eve_factor = enrolled(st, &eve, &mut eve_key).await;
        let mut mallory_key = SoftKey::new(ORIGIN);
        enrolled(st, &mallory, &mut mallory_key).await;
        let flow = Flow::Authn("passkey:test".into());
        let eve_handle = json!(soft::b64(user_handle(&eve.id).as_bytes()));
        // The user handle is not covered by the signature: Mallory's own
        // answer claiming Eve's handle, with her own credential id and then
        // with Eve's, signs nobody in.
        for eves_credential in [false, true] {
            let (o, _) = challenge_discoverable(st, &flow).await.unwrap();
            let mut a = mallory_key.assert(&o, RP);
            a["userHandle"] = eve_handle.clone();
            if eves_credential {
                a["credentialId"] = json!(soft::b64(&eve_key.cred_id));
            }
            assert_eq!(
                verify_discoverable(st, &st.users, &proof(&a), ip(), &flow)
                    .await
                    .err(),
                Some(DiscoverableError::Verify(VerifyError::Invalid)),
                "Eve's credential: {eves_credential}"
            );
        }
        // Eve's own answer signs Eve in, with her key, once.
        let (o, _) = challenge_discoverable(st, &flow).await.unwrap();
        let a = proof(&eve_key.assert(&o, RP));
        let (who, key, uv) = verify_discoverable(st, &st.users, &a, ip(), &flow).await.unwrap();
        assert_eq!(
            (who.id.as_str(), key.record.id.as_str(), uv),
            (eve.id.as_str(), eve_factor.record.id.as_str(), true)
        );
        assert_eq!(
            verify_discoverable(st, &st.users, &a, ip(), &flow).await.err(),
            Some(DiscoverableError::Refused),
            "the challenge is used up"
        );
        // An answer made for another browser's ceremony finds no challenge here.
        let (o, _) = challenge_discoverable(st, &Flow::Authn("passkey:other".into()))
            .await
            .unwrap();
        let a = proof(&eve_key.assert(&o, RP));
        assert_eq!(
            verify_discoverable(st, &st.users, &a, ip(), &flow).await.err(),
            Some(DiscoverableError::Refused)
        );
    }

    #[tokio::test]
    async fn a_registration_answer_activates_once_and_pending_keys_cannot_sign_in() {
        let (gw, _clock) = gateway("required", 50).await;
        let st = gw.state();
        let u = user();
        let Enrolled::WebAuthn {
            factor, options: o, ..
        } = enroll(st, &u, PROVIDER, &json!({})).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(factor.profile["authenticatorName"], "Security key");
        let pending = super::super::find(st, &u, &factor.id).await.unwrap().unwrap();
        assert_eq!(
            challenge(st, &u, &pending, &Flow::Admin).await,
            Err(ChallengeError::NotActive)
        );
        let mut key = SoftKey::new(ORIGIN);
        key.uv = false;
        // Required user verification: a key that did not verify is refused.
        assert_eq!(
            activate(st, &u, &pending, &proof(&key.register(&o)), ip()).await,
            Err(VerifyError::Invalid)
        );
        key.uv = true;
        let answer = proof(&key.register(&o));
        activate(st, &u, &pending, &answer, ip()).await.unwrap();
        assert_eq!(
            activate(st, &u, &pending, &answer, ip()).await,
            Err(VerifyError::Replayed),
            "the registration answer is used up"
        );
        assert!(matches!(
            enroll(st, &u, PROVIDER, &json!({ "authenticatorName": "x".repeat(65) })).await,
            Err(EnrollError::Invalid(_))
        ));
        assert!(matches!(
            enroll(st, &u, "OKTA", &json!({})).await,
            Err(EnrollError::NotSupported)
        ));
    }
}
