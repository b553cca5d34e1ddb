//! The signed session cookie and what makes a session invalid.
//!
//! A cookie value is `v1.<payload>.<tag>`: the payload is base64url JSON
//! [`SessionClaims`], the tag HMAC-SHA256 over `v1.<payload>` under a key
//! derived for the purpose "session" from a configured secret. The first
//! secret signs; every secret verifies, so secrets rotate by prepending a new
//! one and dropping the old after `lifetime`.
//!
//! A session is refused when its tag fails, it is older than `lifetime` (from
//! sign-in), idle longer than `idle_timeout`, its id was revoked (logout), or
//! its epoch is older than the user's ([`revocation::RevocationView`]); the
//! last two are answered from memory, refreshed from the store at most
//! `revocation_check` apart, so no request costs a store round trip.
//!
//! Every session id issued along one sign-in (the password step's, each
//! step-up's, the passwordless step's) shares one sign-in id (`sin`). A
//! replaced id is revoked when its successor is issued, and signing out
//! revokes the sign-in id, which ends every id of that sign-in at once (a
//! saved copy of an earlier cookie included). The sign-in id is just another
//! entry of the revocation list, so checking it costs one more hash lookup.

pub mod file_passwords;
#[cfg(test)]
mod proptests;
pub mod revocation;
mod verified;

use std::sync::Arc;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::config::{SameSite, SessionConfig};
use crate::crypto;
use crate::identity::Level;
use crate::secret::Secret;

/// How often (seconds of activity) a cookie is re-issued to slide its idle timeout.
pub const REISSUE_AFTER_SECS: i64 = 60;

const VERSION: &str = "v1";

/// At most this many entries in a session's `amr`: each method is listed
/// once, so repeated step-ups never grow the cookie.
pub const MAX_AMR: usize = 8;

/// Adds `method` to a session's factor list unless it is already there (the
/// list records which methods were used, not how often), keeping at most
/// [`MAX_AMR`] entries.
pub fn add_method(amr: &mut Vec<String>, method: &str) {
    if amr.len() < MAX_AMR && !amr.iter().any(|m| m == method) {
        amr.push(method.to_owned());
    }
}

/// What a session cookie carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Random session id (new at every sign-in step).
    pub sid: String,
    /// Random sign-in id, shared by every session id issued along one
    /// sign-in; signing out revokes it (and so all of them).
    pub sin: String,
    /// User id.
    pub uid: String,
    /// 1 or 2.
    pub lvl: Level,
    /// Factors used (`pwd`, `totp`, `sms`, ...), in order.
    pub amr: Vec<String>,
    /// Sign-in time (first factor).
    pub auth: UnixTime,
    /// Second-factor time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<UnixTime>,
    /// When this cookie was issued.
    pub iat: UnixTime,
    /// Last activity.
    pub last: UnixTime,
    /// The user's session epoch when issued.
    pub ep: u64,
}

impl SessionClaims {
    /// Claims for a session that has just completed a sign-in step (of a
    /// new sign-in; see [`SessionClaims::in_sign_in`] to continue one).
    pub fn new(
        uid: &str,
        lvl: Level,
        amr: Vec<String>,
        auth: UnixTime,
        mfa: Option<UnixTime>,
        ep: u64,
        now: UnixTime,
    ) -> Self {
        Self {
            sid: crypto::random_id(24),
            sin: crypto::random_id(24),
            uid: uid.to_owned(),
            lvl,
            amr,
            auth,
            mfa,
            iat: now,
            last: now,
            ep,
        }
    }

    /// The same claims as a step of the sign-in `sin` (a step-up or upgrade
    /// continues the sign-in whose session it replaces).
    #[must_use]
    pub fn in_sign_in(mut self, sin: &str) -> Self {
        sin.clone_into(&mut self.sin);
        self
    }
}

/// Why a cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionReject {
    #[error("malformed")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("past its lifetime")]
    Expired,
    #[error("idle too long")]
    Idle,
    #[error("revoked")]
    Revoked,
    /// The revocation view is too stale to trust (store unreachable): fail closed.
    #[error("revocation state unavailable")]
    Unavailable,
}

/// Encodes, verifies and renders session cookies.
#[derive(Debug, Clone)]
pub struct SessionCodec {
    signing: crypto::HmacKey,
    verifying: Vec<crypto::HmacKey>,
    cookie_name: String,
    /// Searches `Cookie` headers for `cookie_name` ([`find_cookie_with`]);
    /// `None` for a name no cookie pair could have (never found).
    cookie_finder: Option<CookieFinder>,
    lifetime: i64,
    idle: i64,
    domain: Option<String>,
    secure: bool,
    same_site: SameSite,
    /// These keys in the per-thread cache of verified cookies
    /// ([`SessionCodec::verify`]): a cache filled under other keys is emptied
    /// before it answers.
    keys: verified::KeysId,
}

impl SessionCodec {
    /// Builds the codec from validated session settings.
    pub fn new(cfg: &SessionConfig) -> Self {
        let verifying: Vec<crypto::HmacKey> = cfg
            .secrets
            .iter()
            .map(|s| crypto::HmacKey::new(crypto::derive_key(s, "session").expose()))
            .collect();
        let signing = verifying
            .first()
            .cloned()
            .unwrap_or_else(|| crypto::HmacKey::new(Secret::default().expose()));
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let cookie_name = cfg.session_cookie_name();
        Self {
            signing,
            verifying,
            cookie_finder: CookieFinder::new(&cookie_name),
            cookie_name,
            lifetime: secs(cfg.lifetime),
            idle: secs(cfg.idle_timeout),
            domain: cfg.domain.clone(),
            secure: cfg.secure,
            same_site: cfg.same_site,
            keys: verified::KeysId::new(),
        }
    }

    /// The cookie's name on the wire (`__Host-` prefixed when secure and host-only).
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The absolute lifetime in seconds.
    pub fn lifetime(&self) -> i64 {
        self.lifetime
    }

    /// The signed cookie value for `claims`.
    pub fn encode(&self, claims: &SessionClaims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut value = String::with_capacity(json.len() * 4 / 3 + 60);
        value.push_str(VERSION);
        value.push('.');
        value.push_str(&crypto::b64(&json));
        let tag = self.signing.tag(value.as_bytes());
        value.push('.');
        value.push_str(&crypto::b64(&tag));
        value
    }

    /// Verifies a cookie value's signature, lifetime and idle time at `now`.
    /// Revocation is checked separately against the revocation view.
    pub fn decode(&self, value: &str, now: UnixTime) -> Result<SessionClaims, SessionReject> {
        let claims = self.authenticate(value)?;
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    /// [`SessionCodec::decode`] for the request path: the same checks, with
    /// the signature check and the claims' decoding remembered per thread.
    ///
    /// A cookie value this thread has verified under these keys before is
    /// found again (its slot chosen by a keyed hash of its length and tag)
    /// and confirmed by a constant-time comparison of every byte, and its
    /// claims are shared instead of decoded again; any other value (a new
    /// cookie, a tampered one, one under keys a reload replaced) is verified
    /// in full. Only the signature and the decoding are remembered: the
    /// lifetime and idle time are checked at `now` on every call, and
    /// revocation, the user's epoch and the user are for the caller to
    /// check, as after `decode`.
    pub fn verify(&self, value: &str, now: UnixTime) -> Result<Arc<SessionClaims>, SessionReject> {
        self.verify_bytes(value.as_bytes(), now)
    }

    /// [`SessionCodec::verify`] of a value found as bytes ([`SessionCodec::find_bytes`]):
    /// one this thread verified before is confirmed without reading it as
    /// text first (a few hundred bytes fewer to check on every signed-in
    /// request); any other is read as UTF-8 and verified in full.
    pub fn verify_bytes(&self, value: &[u8], now: UnixTime) -> Result<Arc<SessionClaims>, SessionReject> {
        if let Some(claims) = verified::lookup(&self.keys, value) {
            self.check_times(&claims, now)?;
            return Ok(claims);
        }
        let value = std::str::from_utf8(value).map_err(|_| SessionReject::Malformed)?;
        let claims = Arc::new(self.authenticate(value)?);
        // Remembered only once it is good now: an expired cookie would only
        // take a slot.
        self.check_times(&claims, now)?;
        verified::remember(&self.keys, value, claims.clone());
        Ok(claims)
    }

    /// The signature, the claims' decoding and their shape; no time check.
    fn authenticate(&self, value: &str) -> Result<SessionClaims, SessionReject> {
        let (signed, tag) = value.rsplit_once('.').ok_or(SessionReject::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(SessionReject::Malformed)?;
        if version != VERSION {
            return Err(SessionReject::Malformed);
        }
        // A tag is 32 bytes (43 characters): decoded on the stack; anything
        // longer the usual way (it then fails the check, as before).
        let mut tag_bytes = [0u8; 32];
        let long_tag;
        let tag = {
            use base64::Engine;
            match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(tag, &mut tag_bytes) {
                Ok(n) => &tag_bytes[..n],
                Err(_) => {
                    long_tag = crypto::unb64(tag).ok_or(SessionReject::Malformed)?;
                    &long_tag[..]
                }
            }
        };
        // Check every key (no early exit) so timing does not reveal which one matched.
        let ok = self
            .verifying
            .iter()
            .fold(false, |ok, k| k.verify(signed.as_bytes(), tag) | ok);
        if !ok {
            return Err(SessionReject::BadSignature);
        }
        let json = crypto::unb64(payload).ok_or(SessionReject::Malformed)?;
        let claims: SessionClaims = serde_json::from_slice(&json).map_err(|_| SessionReject::Malformed)?;
        if !(1..=2).contains(&claims.lvl) {
            return Err(SessionReject::Malformed);
        }
        Ok(claims)
    }

    /// The absolute lifetime (from sign-in, with a minute of clock skew for
    /// a sign-in time ahead of ours) and the idle timeout at `now`.
    fn check_times(&self, claims: &SessionClaims, now: UnixTime) -> Result<(), SessionReject> {
        if now >= claims.auth.saturating_add(self.lifetime) || claims.auth > now + 60 {
            return Err(SessionReject::Expired);
        }
        if now >= claims.last.saturating_add(self.idle) {
            return Err(SessionReject::Idle);
        }
        Ok(())
    }

    /// True when the cookie should be re-issued to slide the idle timeout.
    pub fn needs_refresh(&self, claims: &SessionClaims, now: UnixTime) -> bool {
        now - claims.last > REISSUE_AFTER_SECS
    }

    /// A `Set-Cookie` value carrying `claims`, expiring with the session's lifetime.
    pub fn set_cookie(&self, claims: &SessionClaims, now: UnixTime) -> HeaderValue {
        let max_age = (claims.auth + self.lifetime - now).max(0);
        self.header(self.encode(claims), max_age)
    }

    /// A `Set-Cookie` value that deletes the cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        self.header(String::new(), 0)
    }

    fn header(&self, value: String, max_age: i64) -> HeaderValue {
        let mut c = cookie::Cookie::build((self.cookie_name.as_str(), value))
            .max_age(cookie::time::Duration::seconds(max_age))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(match self.same_site {
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::None => cookie::SameSite::None,
            });
        if let Some(d) = &self.domain {
            c = c.domain(d.as_str());
        }
        set_cookie_header(&c.build())
    }

    /// Finds this gateway's session cookie value in a request's `Cookie` headers.
    pub fn find<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        find_cookie(headers, &self.cookie_name)
    }

    /// [`SessionCodec::find`] as bytes (visible ASCII), for [`SessionCodec::verify_bytes`].
    pub fn find_bytes<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a [u8]> {
        find_cookie_with(headers, self.cookie_finder.as_ref()?)
    }
}

/// A cookie as a `Set-Cookie` value; an empty value (never sent) if it cannot
/// be one, which only a name or value with control characters could cause.
pub fn set_cookie_header(c: &cookie::Cookie<'_>) -> HeaderValue {
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Finds a cookie by exact name across all `Cookie` headers. When a name
/// appears more than once (a sibling subdomain can plant a second cookie) the
/// first is returned, which browsers send for the most specific path. Pairs
/// that do not parse (no `=`, an empty name) are skipped; spaces around names
/// and values are not part of them; a value in double quotes is returned
/// without them. When the first pair of that name has a value that is not
/// visible ASCII, the header it is in is skipped (a later header may still
/// hold the cookie); bytes outside ASCII elsewhere in a header do not hide it.
///
/// The same reading as the `cookie` crate's `Cookie::split_parse` (without
/// percent-decoding), which the property tests hold it to, without building
/// a cookie per pair or checking a whole header as text: it runs on every
/// signed-in request.
pub fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    find_cookie_bytes(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// [`find_cookie`]'s value as bytes, all of them visible ASCII.
pub fn find_cookie_bytes<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    find_cookie_with(headers, &CookieFinder::new(name)?)
}

/// A searcher for one cookie name ([`find_cookie_with`]). Only a name some
/// cookie pair could have gets one: not empty, without `;` or `=` (a pair's
/// name ends at its first `=`), and without spaces around it (they are not
/// part of a name).
#[derive(Debug, Clone)]
pub struct CookieFinder(memchr::memmem::Finder<'static>);

impl CookieFinder {
    /// The searcher for `name`, or `None` if no pair could have that name.
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        let (first, last) = (bytes.first()?, bytes.last()?);
        if first.is_ascii_whitespace()
            || last.is_ascii_whitespace()
            || bytes.iter().any(|&b| b == b';' || b == b'=')
        {
            return None;
        }
        Some(Self(memchr::memmem::Finder::new(bytes).into_owned()))
    }
}

/// [`find_cookie_bytes`] with the name's searcher built beforehand (the
/// session codec keeps its own).
///
/// Rather than splitting every pair, it looks for the name itself and takes
/// an occurrence only where a pair's name is: after the header's start or a
/// `;` and spaces, and before spaces and `=`. That is the first pair of that
/// name, as splitting would find it: pairs hold no `;`, and a pair's name
/// ends at its first `=` (a [`CookieFinder`] name holds neither and has no
/// spaces around it).
pub fn find_cookie_with<'a>(headers: &'a http::HeaderMap, name: &CookieFinder) -> Option<&'a [u8]> {
    use crate::proxy::headers::find_byte;
    let (finder, needle) = (&name.0, name.0.needle());
    'headers: for header in headers.get_all(http::header::COOKIE) {
        let bytes = header.as_bytes();
        let mut from = 0;
        while let Some(found) = bytes.get(from..).and_then(|rest| finder.find(rest)) {
            let at = from + found;
            from = at + 1;
            let before = bytes[..at].trim_ascii_end();
            if !(before.is_empty() || before.ends_with(b";")) {
                continue;
            }
            let Some(value) = bytes[at + needle.len()..].trim_ascii_start().strip_prefix(b"=") else {
                continue;
            };
            let value = match find_byte(value, b';') {
                Some(end) => &value[..end],
                None => value,
            }
            .trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|inner| inner.strip_suffix(b"\""))
                .unwrap_or(value);
            // A header value holds no control bytes but tabs (hyper and
            // `http` refuse them), so ASCII is visible ASCII here.
            if !value.is_ascii() {
                continue 'headers;
            }
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(secrets: &[&str]) -> SessionConfig {
        SessionConfig {
            cookie_name: "portcullis_session".into(),
            secrets: secrets
                .iter()
                .map(|s| Secret::new(s.as_bytes().to_vec()))
                .collect(),
            lifetime: Duration::from_secs(8 * 3600),
            idle_timeout: Duration::from_secs(1800),
            revocation_check: Duration::from_secs(2),
            domain: None,
            secure: true,
            same_site: SameSite::Lax,
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn claims(now: i64) -> SessionClaims {
        SessionClaims::new(
            "00u1",
            2,
            vec!["pwd".into(), "totp".into()],
            now,
            Some(now),
            3,
            now,
        )
    }

    #[test]
    fn round_trips() {
        let c = SessionCodec::new(&cfg(&[A]));
        let cl = claims(1_000);
        assert_eq!(c.decode(&c.encode(&cl), 1_001), Ok(cl));
    }

    #[test]
    fn refuses_tampering() {
        let c = SessionCodec::new(&cfg(&[A]));
        let v = c.encode(&claims(1_000));
        let (signed, tag) = v.rsplit_once('.').unwrap();
        // Forge a level or user by re-encoding the payload with the old tag.
        let mut forged = claims(1_000);
        forged.uid = "00uADMIN".into();
        let forged_payload = crypto::b64(&serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            c.decode(&format!("v1.{forged_payload}.{tag}"), 1_001),
            Err(SessionReject::BadSignature)
        );
        // Flip one tag character.
        let mut t: Vec<char> = tag.chars().collect();
        t[0] = if t[0] == 'A' { 'B' } else { 'A' };
        let t: String = t.into_iter().collect();
        assert_eq!(
            c.decode(&format!("{signed}.{t}"), 1_001),
            Err(SessionReject::BadSignature)
        );
        assert_eq!(c.decode("garbage", 1_001), Err(SessionReject::Malformed));
        assert_eq!(
            c.decode(&v.replacen("v1", "v2", 1), 1_001),
            Err(SessionReject::Malformed)
        );
        // A cookie signed with another secret.
        let other = SessionCodec::new(&cfg(&[B]));
        assert_eq!(other.decode(&v, 1_001), Err(SessionReject::BadSignature));
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = SessionCodec::new(&cfg(&[A]));
        let rotated = SessionCodec::new(&cfg(&[B, A]));
        let v_old = old.encode(&claims(1_000));
        assert!(rotated.decode(&v_old, 1_001).is_ok());
        let v_new = rotated.encode(&claims(1_000));
        assert_eq!(old.decode(&v_new, 1_001), Err(SessionReject::BadSignature));
        assert!(SessionCodec::new(&cfg(&[B])).decode(&v_new, 1_001).is_ok());
    }

    #[test]
    fn lifetime_and_idle_use_the_given_time() {
        let c = SessionCodec::new(&cfg(&[A]));
        let mut cl = claims(0);
        let v = c.encode(&cl);
        assert!(c.decode(&v, 1_799).is_ok());
        assert_eq!(c.decode(&v, 1_800), Err(SessionReject::Idle));
        // Active sessions still end at the absolute lifetime.
        cl.last = 8 * 3600 - 10;
        let v = c.encode(&cl);
        assert!(c.decode(&v, 8 * 3600 - 1).is_ok());
        assert_eq!(c.decode(&v, 8 * 3600), Err(SessionReject::Expired));
    }

    #[test]
    fn verify_remembers_a_verified_value_and_its_claims() {
        let c = SessionCodec::new(&cfg(&[A]));
        let cl = claims(1_000);
        let v = c.encode(&cl);
        let first = c.verify(&v, 1_001).unwrap();
        assert_eq!(*first, cl);
        // The second time from the cache: the same claims, shared.
        let second = c.verify(&v, 1_002).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(c.decode(&v, 1_002).as_ref(), Ok(&*second));
        // A clone of the codec has the same keys and the same cache.
        assert!(Arc::ptr_eq(&c.clone().verify(&v, 1_003).unwrap(), &first));
    }

    #[test]
    fn verify_never_answers_a_tampered_value_from_the_cache() {
        let c = SessionCodec::new(&cfg(&[A]));
        let v = c.encode(&claims(1_000));
        assert!(c.verify(&v, 1_001).is_ok());
        // Every single-byte change of a cached value, even one planted in the
        // cached value's own slot, is verified in full and refused.
        let bytes = v.as_bytes();
        for i in 0..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            verified::tests::plant(&c.keys, &t, &v, c.verify(&v, 1_001).unwrap());
            assert!(c.verify(&t, 1_001).is_err(), "byte {i} changed: {t}");
        }
        // A forged payload with the cached tag.
        let (_, tag) = v.rsplit_once('.').unwrap();
        let mut forged = claims(1_000);
        forged.uid = "00uADMIN".into();
        let forged = format!("v1.{}.{tag}", crypto::b64(&serde_json::to_vec(&forged).unwrap()));
        assert_eq!(c.verify(&forged, 1_001), Err(SessionReject::BadSignature));
        // One character more or fewer (the tag no longer decodes).
        assert!(c.verify(&format!("{v}x"), 1_001).is_err());
        assert!(c.verify(&v[..v.len() - 1], 1_001).is_err());
        assert!(verified::tests::slot_of(&v) < verified::SLOTS);
    }

    #[test]
    fn verify_checks_lifetime_and_idle_time_on_every_call() {
        let c = SessionCodec::new(&cfg(&[A]));
        let mut cl = claims(0);
        let v = c.encode(&cl);
        assert!(c.verify(&v, 10).is_ok());
        assert!(c.verify(&v, 1_799).is_ok());
        assert_eq!(c.verify(&v, 1_800), Err(SessionReject::Idle));
        cl.last = 8 * 3600 - 10;
        let v = c.encode(&cl);
        assert!(c.verify(&v, 8 * 3600 - 1).is_ok());
        assert_eq!(c.verify(&v, 8 * 3600), Err(SessionReject::Expired));
        // Issued in the future (beyond the minute of skew), cached or not.
        assert_eq!(c.verify(&v, -61), Err(SessionReject::Expired));
        // An expired value is not remembered: verifying it again fails again.
        assert_eq!(c.verify(&v, 8 * 3600), Err(SessionReject::Expired));
    }

    #[test]
    fn verify_under_new_keys_forgets_the_old_ones() {
        // A reload that drops secret A: cookies signed with A stop verifying,
        // although this thread cached them under the old codec.
        let old = SessionCodec::new(&cfg(&[B, A]));
        let v = SessionCodec::new(&cfg(&[A])).encode(&claims(1_000));
        assert!(old.verify(&v, 1_001).is_ok());
        assert!(old.verify(&v, 1_001).is_ok());
        let new = SessionCodec::new(&cfg(&[B]));
        assert_eq!(new.verify(&v, 1_001), Err(SessionReject::BadSignature));
        // Even a reload with the same secrets starts from an empty cache.
        let same = SessionCodec::new(&cfg(&[B, A]));
        let a = same.verify(&v, 1_001).unwrap();
        let b = same.verify(&v, 1_001).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &old.verify(&v, 1_001).unwrap()));
    }

    /// A `Set-Cookie` value's `name=value` and its attributes, sorted.
    fn parts(h: &HeaderValue) -> (String, Vec<String>) {
        let mut it = h.to_str().unwrap().split(';').map(|p| p.trim().to_owned());
        let pair = it.next().unwrap();
        let mut attrs: Vec<String> = it.collect();
        attrs.sort();
        (pair, attrs)
    }

    #[test]
    fn cookie_headers_carry_the_attributes() {
        let c = SessionCodec::new(&cfg(&[A]));
        let (pair, attrs) = parts(&c.set_cookie(&claims(100), 100));
        // Secure and host-only: the `__Host-` prefix, Path=/, no Domain.
        assert!(pair.starts_with("__Host-portcullis_session=v1."), "{pair}");
        assert_eq!(
            attrs,
            ["HttpOnly", "Max-Age=28800", "Path=/", "SameSite=Lax", "Secure"]
        );
        let (pair, attrs) = parts(&c.clear_cookie());
        assert_eq!(pair, "__Host-portcullis_session=");
        assert_eq!(
            attrs,
            ["HttpOnly", "Max-Age=0", "Path=/", "SameSite=Lax", "Secure"]
        );
        // Not secure, or a domain: the plain name.
        let mut plain = cfg(&[A]);
        plain.secure = false;
        plain.same_site = SameSite::None;
        let c = SessionCodec::new(&plain);
        let (pair, attrs) = parts(&c.set_cookie(&claims(100), 100));
        assert!(pair.starts_with("portcullis_session=v1."), "{pair}");
        // `SameSite=None` without `secure` stays without Secure (as configured).
        assert_eq!(attrs, ["HttpOnly", "Max-Age=28800", "Path=/", "SameSite=None"]);
        let mut shared = cfg(&[A]);
        shared.domain = Some("example.com".into());
        shared.same_site = SameSite::Strict;
        let c = SessionCodec::new(&shared);
        let (pair, attrs) = parts(&c.set_cookie(&claims(100), 100));
        assert!(pair.starts_with("portcullis_session=v1."), "{pair}");
        assert_eq!(
            attrs,
            [
                "Domain=example.com",
                "HttpOnly",
                "Max-Age=28800",
                "Path=/",
                "SameSite=Strict",
                "Secure"
            ]
        );
    }

    #[test]
    fn cookie_names_take_the_host_prefix_when_secure_and_host_only() {
        let mut c = cfg(&[A]);
        assert_eq!(c.session_cookie_name(), "__Host-portcullis_session");
        assert_eq!(c.csrf_cookie_name(), "__Host-portcullis_csrf");
        // A configured name gets the prefix too, unless it has one already.
        c.cookie_name = "gw".into();
        assert_eq!(c.session_cookie_name(), "__Host-gw");
        c.cookie_name = "__Host-gw".into();
        assert_eq!(c.session_cookie_name(), "__Host-gw");
        c.cookie_name = "__Secure-gw".into();
        assert_eq!(c.session_cookie_name(), "__Secure-gw");
        // The proxy strips every spelling.
        c.cookie_name = "gw".into();
        let names = c.gateway_cookie_names();
        for n in ["gw", "__Host-gw", "portcullis_csrf", "__Host-portcullis_csrf"] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        c.secure = false;
        assert_eq!(c.session_cookie_name(), "gw");
        assert_eq!(c.csrf_cookie_name(), "portcullis_csrf");
    }

    #[test]
    fn amr_lists_each_method_once_and_is_bounded() {
        let mut amr = vec!["pwd".to_owned()];
        for _ in 0..100 {
            add_method(&mut amr, "otp");
            add_method(&mut amr, "pwd");
        }
        assert_eq!(amr, ["pwd", "otp"]);
        for i in 0..100 {
            add_method(&mut amr, &format!("m{i}"));
        }
        assert_eq!(amr.len(), MAX_AMR);
    }

    #[test]
    fn claims_without_a_sign_in_id_are_refused() {
        // Cookies from before sign-in ids existed do not verify as sessions.
        let c = SessionCodec::new(&cfg(&[A]));
        let mut v = serde_json::to_value(claims(1_000)).unwrap();
        v.as_object_mut().unwrap().remove("sin");
        let mut value = format!("v1.{}", crypto::b64(&serde_json::to_vec(&v).unwrap()));
        let tag = crypto::hmac_sha256(
            crypto::derive_key(&Secret::new(A.as_bytes().to_vec()), "session").expose(),
            value.as_bytes(),
        );
        value = format!("{value}.{}", crypto::b64(&tag));
        assert_eq!(c.decode(&value, 1_001), Err(SessionReject::Malformed));
        // A continued sign-in keeps its id; a new one gets a fresh one.
        let first = claims(1_000);
        let next = claims(1_001).in_sign_in(&first.sin);
        assert_eq!(next.sin, first.sin);
        assert_ne!(next.sid, first.sid);
        assert_ne!(claims(1_000).sin, first.sin);
    }

    #[test]
    fn finds_cookies_across_headers() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; portcullis_sessionx=no"),
        );
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("b=2;portcullis_session=yes"),
        );
        assert_eq!(find_cookie(&h, "portcullis_session"), Some("yes"));
        assert_eq!(find_cookie(&h, "c"), None);
    }

    #[test]
    fn hostile_cookie_headers() {
        let h = |values: &[&'static str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::COOKIE, HeaderValue::from_static(v));
            }
            h
        };
        // Duplicates (a sibling subdomain planted one): the first wins, also
        // across headers.
        let dup = h(&["s=first; s=second", "s=third"]);
        assert_eq!(find_cookie(&dup, "s"), Some("first"));
        // Odd spacing and empty pairs; broken pairs are skipped, not fatal.
        let odd = h(&[";;  ; junk ; =nameless;  s  =  spaced  ;t=\"quoted\";u=\"half"]);
        assert_eq!(find_cookie(&odd, "s"), Some("spaced"));
        assert_eq!(find_cookie(&odd, "t"), Some("quoted"));
        assert_eq!(find_cookie(&odd, "u"), Some("\"half"));
        assert_eq!(find_cookie(&odd, ""), None);
        assert_eq!(find_cookie(&odd, "junk"), None);
        // Names are exact: no prefix, case or substring match.
        let near = h(&["S=1; ss=2; s_x=3"]);
        assert_eq!(find_cookie(&near, "s"), None);
        // A header that is not text is ignored; the next one still counts.
        let mut bad = http::HeaderMap::new();
        bad.append(http::header::COOKIE, HeaderValue::from_bytes(b"s=\xff").unwrap());
        bad.append(http::header::COOKIE, HeaderValue::from_static("s=ok"));
        assert_eq!(find_cookie(&bad, "s"), Some("ok"));
        // Bytes outside ASCII in another pair do not hide the cookie.
        let mut mixed = http::HeaderMap::new();
        mixed.append(
            http::header::COOKIE,
            HeaderValue::from_bytes(b"x=\xff; s=mine").unwrap(),
        );
        assert_eq!(find_cookie(&mixed, "s"), Some("mine"));
        // Values keep `=` after the first one.
        assert_eq!(find_cookie(&h(&["s=a=b=="]), "s"), Some("a=b=="));
    }
}
