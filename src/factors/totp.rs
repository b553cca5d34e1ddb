//! TOTP (RFC 6238) over totp-rs: secrets, `otpauth://` key URIs, and code
//! checks that return the matched time step.
//!
//! totp-rs compares codes in constant time; what it leaves to us is replay:
//! a code is accepted once per factor, enforced by the store's atomic
//! `claim_totp_step` (so also across replicas).
//!
//! The factor's lifecycle is here too: enrolling a sealed secret,
//! activating and verifying with a code ([`Totp`], its [`FactorKind`]).

use std::net::IpAddr;

use serde_json::Value;
use totp_rs::{Algorithm, Builder, Totp as Generator};

use super::{
    BoxFuture, EnrollError, Enrolled, Factor, FactorKind, Flow, VerifyError, new_factor_id, secret_aad,
};
use crate::audit;
use crate::clock::UnixTime;
use crate::config::{FactorsConfig, TotpAlgorithm, TotpConfig};
use crate::secret::Secret;
use crate::state::Handles;
use crate::store::{FactorRecord, FactorStatus};
use crate::users::User;

/// Okta's factor type for authenticator apps.
pub const TOTP_TYPE: &str = "token:software:totp";

/// Bytes in a new secret: 160 bits, as RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;

/// A new random TOTP secret.
pub fn new_secret() -> Secret {
    Secret::new(crate::crypto::random_bytes(SECRET_BYTES))
}

/// RFC 4648 base32 without padding, as authenticator apps expect.
pub fn base32(secret: &[u8]) -> String {
    base32::encode(base32::Alphabet::Rfc4648 { padding: false }, secret)
}

fn algorithm(a: TotpAlgorithm) -> Algorithm {
    match a {
        TotpAlgorithm::Sha1 => Algorithm::SHA1,
        TotpAlgorithm::Sha256 => Algorithm::SHA256,
        TotpAlgorithm::Sha512 => Algorithm::SHA512,
    }
}

/// The Okta/URI name of the algorithm.
pub fn algorithm_name(a: TotpAlgorithm) -> &'static str {
    match a {
        TotpAlgorithm::Sha1 => "SHA1",
        TotpAlgorithm::Sha256 => "SHA256",
        TotpAlgorithm::Sha512 => "SHA512",
    }
}

/// Builds the generator. Secrets shorter than 128 bits (legacy 80-bit secrets
/// provisioned in the users file, accepted with a warning at load) are built
/// without totp-rs' length check.
fn totp(cfg: &TotpConfig, secret: &[u8], account: &str) -> Generator {
    let digits = u8::try_from(cfg.digits).unwrap_or(6);
    let builder = Builder::new()
        .with_algorithm(algorithm(cfg.algorithm))
        .with_digits(digits)
        .with_skew(u16::from(cfg.skew))
        .with_step_duration(cfg.period)
        .with_secret(secret.to_vec())
        .with_issuer(Some(cfg.issuer.replace(':', "")))
        .with_account_name(account.replace(':', ""));
    builder.build_noncompliant()
}

/// The code for `time` (for tests and tools).
pub fn code_at(cfg: &TotpConfig, secret: &[u8], time: UnixTime) -> String {
    totp(cfg, secret, "x")
        .generate(u64::try_from(time).unwrap_or(0))
        .to_string()
}

/// The time step a code matches at `now` (within `skew` steps), if any.
/// Spaces in the code are ignored; anything but digits fails.
pub fn check(cfg: &TotpConfig, secret: &[u8], code: &str, now: UnixTime) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != usize::try_from(cfg.digits).unwrap_or(6) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = u64::try_from(now).ok()?;
    totp(cfg, secret, "x")
        .check(&code, now)
        .and_then(|step| i64::try_from(step).ok())
}

/// The `otpauth://totp/...` key URI for an authenticator app.
pub fn otpauth_uri(cfg: &TotpConfig, secret: &[u8], account: &str) -> String {
    // to_url fails only for account names with ':', which totp() removed.
    totp(cfg, secret, account).to_url().unwrap_or_default()
}

/// An SVG QR code of `data`, as a `data:` URI for an `<img>` (no external service).
pub fn qr_data_uri(data: &str) -> String {
    let svg = match qrcode::QrCode::new(data.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    };
    format!("data:image/svg+xml;base64,{}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(svg.as_bytes())
    })
}

/// A freshly enrolled (pending) TOTP factor and what the user needs to add it.
#[derive(Debug)]
pub struct TotpEnrollment {
    pub factor: FactorRecord,
    pub secret: Secret,
    /// The `otpauth://` key URI.
    pub uri: String,
}

/// Enrolls a new pending TOTP factor for `user` (provider `GOOGLE` or `OKTA`).
pub async fn enroll_totp(st: &Handles, user: &User, provider: &str) -> Result<TotpEnrollment, EnrollError> {
    if !st.config.factors.totp.enabled || !matches!(provider, "GOOGLE" | "OKTA") {
        return Err(EnrollError::NotSupported);
    }
    let sealer = st.sealer.as_ref().ok_or(EnrollError::NoKeys)?;
    let now = st.clock.now();
    let id = new_factor_id(TOTP_TYPE, provider);
    let secret = new_secret();
    let sealed = sealer
        .seal(secret.expose(), &secret_aad(&id, &user.id))
        .map_err(|_| EnrollError::Seal)?;
    let factor = FactorRecord {
        id,
        user_id: user.id.clone(),
        factor_type: TOTP_TYPE.into(),
        provider: provider.into(),
        status: FactorStatus::PendingActivation,
        profile: serde_json::json!({ "credentialId": user.username }),
        secret: Some(sealed),
        created: now,
        last_updated: now,
    };
    st.store.insert_factor(&factor).await?;
    crate::metrics::factor_event("enrolled", TOTP_TYPE);
    audit!("factor.enrolled", user = %user.username, factor_type = TOTP_TYPE, factor_id = %factor.id);
    let uri = otpauth_uri(&st.config.factors.totp, secret.expose(), &user.username);
    Ok(TotpEnrollment { factor, secret, uri })
}

/// The TOTP secret of a factor (config-provided, or unsealed).
pub fn totp_secret(st: &Handles, user: &User, factor: &Factor) -> Option<Secret> {
    if factor.from_config {
        return user.config_totp.clone();
    }
    let sealed = factor.record.secret.as_ref()?;
    let sealer = st.sealer.as_ref()?;
    match sealer.open(sealed, &secret_aad(&factor.record.id, &user.id)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(factor_id = %factor.record.id, error = %e, "cannot open a factor secret");
            None
        }
    }
}

/// Checks a TOTP code against `factor`, once per time step. `pending_ok`
/// allows a `PENDING_ACTIVATION` factor (activation).
pub async fn verify_totp(
    st: &Handles,
    user: &User,
    factor: &Factor,
    code: &str,
    addr: IpAddr,
    pending_ok: bool,
) -> Result<(), VerifyError> {
    if factor.record.factor_type != TOTP_TYPE || !st.config.factors.totp.enabled {
        return Err(VerifyError::NotActive);
    }
    if !factor.is_active() && !pending_ok {
        return Err(VerifyError::NotActive);
    }
    let Some(secret) = totp_secret(st, user, factor) else {
        return Err(VerifyError::Unavailable);
    };
    // Counted before it is checked: guesses sent at once cannot all be
    // checked before the first failure locks the user.
    let Some(attempt) = super::attempt(st, user, TOTP_TYPE, addr).await? else {
        return Err(super::locked_answer(st));
    };
    let Some(step) = check(&st.config.factors.totp, secret.expose(), code, st.clock.now()) else {
        super::attempt_failed(st, attempt, user, TOTP_TYPE, addr, "invalid").await?;
        return Err(VerifyError::Invalid);
    };
    if !st.store.claim_totp_step(&factor.record.id, step).await? {
        super::attempt_failed(st, attempt, user, TOTP_TYPE, addr, "replayed").await?;
        return Err(VerifyError::Replayed);
    }
    super::attempt_succeeded(st, attempt, user).await;
    crate::metrics::factor_verification(TOTP_TYPE, "success");
    audit!("factor.verified", user = %user.username, factor_type = TOTP_TYPE, factor_id = %factor.record.id, client = %addr);
    Ok(())
}

/// Activates a pending factor after a correct code.
pub async fn activate_totp(
    st: &Handles,
    user: &User,
    factor: &Factor,
    code: &str,
    addr: IpAddr,
) -> Result<(), VerifyError> {
    if factor.record.status != FactorStatus::PendingActivation {
        return Err(VerifyError::NotActive);
    }
    verify_totp(st, user, factor, code, addr, true).await?;
    if !st
        .store
        .activate_factor(&user.id, &factor.record.id, st.clock.now())
        .await?
    {
        return Err(VerifyError::NotActive);
    }
    crate::metrics::factor_event("activated", TOTP_TYPE);
    audit!("factor.activated", user = %user.username, factor_type = TOTP_TYPE, factor_id = %factor.record.id);
    Ok(())
}

/// Authenticator apps.
#[derive(Debug)]
pub struct Totp;

impl FactorKind for Totp {
    fn okta_type(&self) -> &'static str {
        TOTP_TYPE
    }

    fn verification_results(&self) -> &'static [&'static str] {
        &["success", "invalid", "replayed", "locked"]
    }

    fn providers(&self) -> &'static [&'static str] {
        &["GOOGLE", "OKTA"]
    }

    fn id_prefix(&self, provider: &str) -> &'static str {
        if provider == "GOOGLE" { "uft" } else { "ost" }
    }

    fn label(&self) -> &'static str {
        "Authenticator app"
    }

    fn short_name(&self) -> &'static str {
        "totp"
    }

    fn add_label(&self) -> &'static str {
        "Add an authenticator app"
    }

    fn enabled(&self, cfg: &FactorsConfig) -> bool {
        cfg.totp.enabled
    }

    fn shows_secret(&self) -> bool {
        true
    }

    fn enroll<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        provider: &'a str,
        _profile: &'a Value,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<Enrolled, EnrollError>> {
        Box::pin(async move { enroll_totp(st, user, provider).await.map(Enrolled::Totp) })
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
        Box::pin(activate_totp(st, user, factor, code, addr))
    }

    fn verify<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        code: &'a str,
        addr: IpAddr,
        _flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(verify_totp(st, user, factor, code, addr, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(digits: u32, algorithm: TotpAlgorithm) -> TotpConfig {
        TotpConfig {
            enabled: true,
            issuer: "Portcullis".into(),
            digits,
            period: 30,
            algorithm,
            skew: 1,
        }
    }

    #[test]
    fn rfc6238_test_vectors() {
        // RFC 6238 appendix B: the seeds are ASCII digits of each hash's length.
        let sha1 = b"12345678901234567890";
        let sha256 = b"12345678901234567890123456789012";
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        let cases: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        for (t, c1, c256, c512) in cases {
            assert_eq!(code_at(&cfg(8, TotpAlgorithm::Sha1), sha1, t), c1, "SHA1 at {t}");
            assert_eq!(
                code_at(&cfg(8, TotpAlgorithm::Sha256), sha256, t),
                c256,
                "SHA256 at {t}"
            );
            assert_eq!(
                code_at(&cfg(8, TotpAlgorithm::Sha512), sha512, t),
                c512,
                "SHA512 at {t}"
            );
        }
    }

    #[test]
    fn checks_within_the_skew_and_returns_the_step() {
        let c = cfg(6, TotpAlgorithm::Sha1);
        let s = new_secret();
        let now = 1_800_000_015;
        let code = code_at(&c, s.expose(), now);
        assert_eq!(check(&c, s.expose(), &code, now), Some(now / 30));
        assert_eq!(
            check(&c, s.expose(), &code, now + 30),
            Some(now / 30),
            "one step late"
        );
        assert_eq!(check(&c, s.expose(), &code, now + 60), None, "two steps late");
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(check(&c, s.expose(), &spaced, now), Some(now / 30));
        assert_eq!(check(&c, s.expose(), "12345", now), None);
        assert_eq!(check(&c, s.expose(), "abcdef", now), None);
    }

    #[test]
    fn key_uri_has_the_standard_shape() {
        let c = cfg(6, TotpAlgorithm::Sha1);
        let uri = otpauth_uri(&c, b"12345678901234567890", "alice@example.com");
        assert!(
            uri.starts_with("otpauth://totp/Portcullis:alice%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), "{uri}");
        assert!(uri.contains("issuer=Portcullis"), "{uri}");
        assert!(qr_data_uri(&uri).starts_with("data:image/svg+xml;base64,"));
    }

    #[test]
    fn new_secrets_are_160_bits() {
        assert_eq!(new_secret().len(), 20);
        assert_eq!(base32(new_secret().expose()).len(), 32);
    }
}
