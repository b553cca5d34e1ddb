//! Code factors: SMS, voice call and e-mail (Okta's `sms`, `call`, `email`).
//!
//! Enrollment takes a profile (`{phoneNumber}` in E.164, or `{email}`),
//! stores the factor `PENDING_ACTIVATION` and sends an activation code;
//! the code activates it. A challenge sends a fresh code.
//!
//! A factor's current code lives in one store record (kind `otp`, id
//! `otp:{factorId}`) so every replica sees it: only an HMAC-SHA256 of the code
//! under a server key derived from the first session secret (purpose `otp`),
//! its expiry (`ttl`), its purpose (activation or sign-in), the flow it was
//! sent in ([`super::Flow`]: an authn transaction, a signed-in session, or
//! the admin API; only that flow can use it, and another flow's attempt
//! leaves it alone), the number of
//! attempts (at most [`MAX_ATTEMPTS`], then the code is dead) and when it was
//! sent (`resend_after` is enforced from it). Every change is a
//! compare-and-set on the record's version, so two replicas checking codes at
//! once cannot exceed the attempts or both accept one code. Comparison is
//! constant time; wrong codes also count through the regulator (lockout)
//! like wrong TOTP codes.
//!
//! Sends are limited per user to `max_sends_per_hour` in a sliding hour
//! ([`take_send_slot`], also used for pushes), kept in a store record too.

use std::net::IpAddr;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Address, BoxFuture, Challenge, ChallengeContext, ChallengeError, EnrollError, Enrolled, Factor,
    FactorKind, Flow, VerifyError,
};
use crate::audit;
use crate::clock::UnixTime;
use crate::config::{CodeFactorConfig, FactorsConfig};
use crate::delivery::{self, Kind, Message};
use crate::secret::{Secret, ct_eq};
use crate::state::Handles;
use crate::store::{FactorRecord, FactorStatus, StoreError, TransactionRecord};
use crate::users::User;

/// Wrong attempts a code survives: the fifth wrong one kills it.
pub const MAX_ATTEMPTS: u32 = 5;
/// Store record kind of a factor's current code.
pub const KIND: &str = "otp";
/// Store record kind of a user's recent sends.
pub const SEND_LOG_KIND: &str = "send_log";
/// The sliding window of `max_sends_per_hour`.
pub const SEND_WINDOW: i64 = 3600;

/// The code factor types.
pub fn is_code_type(factor_type: &str) -> bool {
    matches!(factor_type, "sms" | "call" | "email")
}

/// The config of a code factor type.
pub fn config<'a>(st: &'a Handles, factor_type: &str) -> Option<&'a CodeFactorConfig> {
    let f = &st.config.factors;
    match factor_type {
        "sms" => Some(&f.sms),
        "call" => Some(&f.call),
        "email" => Some(&f.email),
        _ => None,
    }
}

// ---- profiles ---------------------------------------------------------------

/// Normalizes and checks an E.164 phone number: `+`, then 8 to 15 digits, the
/// first not 0. Spaces, dots, dashes and parentheses are dropped first.
pub fn normalize_phone(input: &str) -> Result<String, String> {
    let compact: String = input
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let Some(digits) = compact.strip_prefix('+') else {
        return Err("phoneNumber: must be in E.164 format, starting with + and the country code".into());
    };
    if !(8..=15).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err("phoneNumber: must be in E.164 format: + and 8 to 15 digits".into());
    }
    Ok(compact)
}

/// Checks an e-mail address (a practical subset of RFC 5321: what mail
/// servers accept and no header tricks); returns it trimmed.
pub fn normalize_email(input: &str) -> Result<String, String> {
    let email = input.trim();
    let invalid = || Err("email: must be a valid e-mail address".to_owned());
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid();
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return invalid();
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !local_ok || !domain_ok || email.parse::<lettre::Address>().is_err() {
        return invalid();
    }
    Ok(email.to_owned())
}

/// A phone number as shown before sign-in: country code and the last two
/// digits (`+1 *** *** **00`).
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 6 {
        return "***".into();
    }
    // North America (1) and Russia/Kazakhstan (7) have one-digit codes; most
    // others two or three: showing two never reveals more than the code.
    let cc = if matches!(digits[0], '1' | '7') { 1 } else { 2 };
    let rest = &digits[cc..];
    let masked: Vec<char> = rest
        .iter()
        .enumerate()
        .map(|(i, c)| if i + 2 >= rest.len() { *c } else { '*' })
        .collect();
    let mut groups = Vec::new();
    let mut i = 0;
    // Groups of three, the last one holding the visible digits (4 or 5 long).
    while masked.len() - i >= 7 {
        groups.push(masked[i..i + 3].iter().collect::<String>());
        i += 3;
    }
    groups.push(masked[i..].iter().collect::<String>());
    format!(
        "+{} {}",
        digits[..cc].iter().collect::<String>(),
        groups.join(" ")
    )
}

/// An e-mail address as shown before sign-in: `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// The profile of a code factor with the address masked.
pub fn masked_profile(factor_type: &str, profile: &Value) -> Value {
    match factor_type {
        "sms" | "call" => {
            json!({ "phoneNumber": mask_phone(profile["phoneNumber"].as_str().unwrap_or_default()) })
        }
        "email" => json!({ "email": mask_email(profile["email"].as_str().unwrap_or_default()) }),
        _ => json!({}),
    }
}

/// Where a code factor's messages go.
fn destination(factor: &FactorRecord) -> Option<String> {
    let key = if factor.factor_type == "email" {
        "email"
    } else {
        "phoneNumber"
    };
    factor.profile[key].as_str().map(str::to_owned)
}

// ---- codes ------------------------------------------------------------------

/// A random code of `len` decimal digits from the CSPRNG.
pub fn generate_code(len: u32) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// The keys codes are MACed under, one per session secret: a code is sent
/// under the first and checked under the one its flow tag was made with, so a
/// code sent before a secret rotation still works.
fn server_keys(st: &Handles) -> crate::crypto::KeyRing {
    crate::crypto::KeyRing::derive(&st.config.session.secrets, "otp")
}

/// The stored form of a code: HMAC-SHA256 bound to the factor, the purpose
/// and the flow it was sent in.
pub fn code_mac(key: &[u8], factor_id: &str, purpose: &str, flow: &Flow, code: &str) -> [u8; 32] {
    crate::crypto::hmac_sha256(
        key,
        format!("portcullis/otp/v2|{factor_id}|{purpose}|{}|{code}", flow.key()).as_bytes(),
    )
}

/// What is stored of a flow: its MAC (a session id is never stored as such).
fn flow_tag(key: &[u8], flow: &Flow) -> String {
    hex::encode(
        &crate::crypto::hmac_sha256(key, format!("portcullis/otp-flow/v1|{}", flow.key()).as_bytes())[..16],
    )
}

/// [`flow_tag`] under the server's first key: what a push transaction
/// stores of the flow it was started in.
pub(crate) fn flow_tag_of(st: &Handles, flow: &Flow) -> String {
    flow_tag(server_keys(st).first(), flow)
}

/// True when `stored` is `flow`'s tag under any of the server's keys (one
/// made before a secret rotation included).
pub(crate) fn is_flow_tag_of(st: &Handles, flow: &Flow, stored: &str) -> bool {
    server_keys(st)
        .all()
        .any(|k| ct_eq(flow_tag(k, flow).as_bytes(), stored.as_bytes()))
}

/// What the `otp` record holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeState {
    /// Hex HMAC of the live code; `None` once used, dead or never sent.
    pub mac: Option<String>,
    /// `activate` or `verify`.
    pub purpose: String,
    /// [`flow_tag`] of the flow the code was sent in (empty in records
    /// written before codes were bound to flows: no flow matches).
    #[serde(default)]
    pub flow: String,
    pub code_expires: UnixTime,
    /// Attempts made against the live code.
    pub attempts: u32,
    pub sent_at: UnixTime,
}

/// The record id of a factor's current code.
pub fn record_id(factor_id: &str) -> String {
    format!("otp:{factor_id}")
}

fn purpose(factor: &FactorRecord) -> &'static str {
    if factor.status == FactorStatus::Active {
        "verify"
    } else {
        "activate"
    }
}

/// Reads the record `kind`/`id`, lets `f` decide the new data and expiry (or
/// refuse with `E`), and writes it back with compare-and-set, retrying when
/// another writer won. An expired row that is not purged yet blocks a new
/// one with the same id, so a failed insert purges once and tries again.
pub(crate) async fn upsert<T, E>(
    st: &Handles,
    kind: &str,
    id: &str,
    user_id: &str,
    mut f: impl FnMut(Option<&TransactionRecord>, UnixTime) -> Result<(Value, UnixTime, T), E>,
) -> Result<Result<T, E>, StoreError> {
    let mut purged = false;
    let mut last = String::from("too much contention");
    for _ in 0..8 {
        let now = st.clock.now();
        let cur = st.store.get_transaction(kind, id, now).await?;
        let (data, expires_at, out) = match f(cur.as_ref(), now) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        match cur {
            Some(c) => {
                let rec = TransactionRecord {
                    data,
                    expires_at,
                    ..c
                };
                if st.store.update_transaction(&rec, now).await? {
                    return Ok(Ok(out));
                }
            }
            None => {
                let rec = TransactionRecord {
                    id: id.to_owned(),
                    kind: kind.to_owned(),
                    user_id: user_id.to_owned(),
                    data,
                    version: 0,
                    expires_at,
                };
                match st.store.put_transaction(&rec).await {
                    Ok(()) => return Ok(Ok(out)),
                    Err(e) => {
                        last = e.to_string();
                        if !purged {
                            purged = true;
                            st.store.purge_expired(now).await?;
                        }
                    }
                }
            }
        }
    }
    Err(StoreError::Unavailable(last))
}

/// Takes one of `user_id`'s `limit` sends per sliding hour for `what`
/// (`otp`, `push`); `Err(reset)` says when the oldest send leaves the window.
pub async fn take_send_slot(
    st: &Handles,
    user_id: &str,
    what: &str,
    limit: u32,
) -> Result<Result<(), UnixTime>, StoreError> {
    let id = format!("sends:{what}:{user_id}");
    upsert(st, SEND_LOG_KIND, &id, user_id, |cur, now| {
        let mut times: Vec<UnixTime> = cur
            .and_then(|c| serde_json::from_value::<Vec<UnixTime>>(c.data["times"].clone()).ok())
            .unwrap_or_default();
        times.retain(|t| *t > now - SEND_WINDOW);
        times.sort_unstable();
        if times.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(times.first().copied().unwrap_or(now) + SEND_WINDOW);
        }
        times.push(now);
        Ok((json!({ "times": times }), now + SEND_WINDOW, ()))
    })
    .await
}

/// The application name used in messages (SMS, call, e-mail, push), from
/// configuration only, never from the request (its Host is the requester's
/// to choose): `server.external_url`'s host, else the default upstream's
/// name, else the first host name an upstream is configured for, else the
/// portal title.
pub fn app_name(st: &Handles) -> String {
    let cfg = &st.config;
    cfg.server
        .external_url
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .or_else(|| {
            cfg.upstreams
                .iter()
                .find(|u| u.hosts.is_empty())
                .map(|u| u.name.clone())
        })
        .or_else(|| cfg.upstreams.iter().find_map(|u| u.hosts.first().cloned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| cfg.portal.title.clone())
}

/// Sends a new code for `factor` (an activation code while it is pending).
/// Returns when the code expires.
pub async fn send_code(
    st: &Handles,
    user: &User,
    factor: &FactorRecord,
    app: &str,
    flow: &Flow,
) -> Result<UnixTime, ChallengeError> {
    let Some(cfg) = config(st, &factor.factor_type).filter(|c| c.enabled) else {
        return Err(ChallengeError::NotActive);
    };
    let (Some(delivery), Some(kind), Some(to)) = (
        cfg.delivery.as_ref(),
        Kind::for_factor_type(&factor.factor_type),
        destination(factor),
    ) else {
        return Err(ChallengeError::NotActive);
    };
    let unavailable = |e: StoreError| {
        tracing::error!(error = %e, "store error while sending a code");
        ChallengeError::Unavailable
    };
    let ttl = i64::try_from(cfg.ttl.as_secs()).unwrap_or(i64::MAX);
    let resend_after = i64::try_from(cfg.resend_after.as_secs()).unwrap_or(i64::MAX);
    let now = st.clock.now();
    // Cheap refusals first, so a refused resend does not use up the hour.
    if let Some(cur) = st
        .store
        .get_transaction(KIND, &record_id(&factor.id), now)
        .await
        .map_err(unavailable)?
        && let Ok(state) = serde_json::from_value::<CodeState>(cur.data)
        && state.sent_at + resend_after > now
    {
        return Err(ChallengeError::TooSoon(state.sent_at + resend_after));
    }
    if let Err(reset) = take_send_slot(st, &user.id, "otp", cfg.max_sends_per_hour)
        .await
        .map_err(unavailable)?
    {
        audit!("factor.challenge.refused", user = %user.username, factor_type = %factor.factor_type, reason = "hourly send limit");
        return Err(ChallengeError::RateLimited(reset));
    }
    let code = generate_code(cfg.code_length);
    let keys = server_keys(st);
    let purpose = purpose(factor);
    let mac = hex::encode(code_mac(keys.first(), &factor.id, purpose, flow, &code));
    let tag = flow_tag(keys.first(), flow);
    let claimed = upsert(st, KIND, &record_id(&factor.id), &user.id, |cur, now| {
        if let Some(state) = cur.and_then(|c| serde_json::from_value::<CodeState>(c.data.clone()).ok())
            && state.sent_at + resend_after > now
        {
            return Err(state.sent_at + resend_after);
        }
        let state = CodeState {
            mac: Some(mac.clone()),
            purpose: purpose.into(),
            flow: tag.clone(),
            code_expires: now + ttl,
            attempts: 0,
            sent_at: now,
        };
        let expires = (now + ttl).max(now + resend_after);
        Ok((
            serde_json::to_value(&state).unwrap_or(Value::Null),
            expires,
            now + ttl,
        ))
    })
    .await
    .map_err(unavailable)?;
    let code_expires = match claimed {
        Ok(t) => t,
        Err(retry_at) => return Err(ChallengeError::TooSoon(retry_at)),
    };
    let in_text = if kind == Kind::Call {
        delivery::spoken(&code)
    } else {
        code.clone()
    };
    let expires_in = delivery::human_duration(cfg.ttl);
    let text = delivery::render(&cfg.template, &in_text, app, &user.username, &expires_in);
    let subject = (kind == Kind::Email)
        .then(|| delivery::render(&cfg.subject, &in_text, app, &user.username, &expires_in));
    let msg = Message {
        kind,
        to,
        text,
        subject,
        user: user.username.clone(),
        app: app.to_owned(),
        expires_at: code_expires,
        transaction_id: None,
        code: Some(Secret::new(code)),
        context: Default::default(),
    };
    if let Err(e) = delivery::deliver(delivery, &msg, now).await {
        tracing::error!(error = %e, factor_type = %factor.factor_type, user = %user.username, "sending a code failed");
        // Let the user try again at once: the code never arrived.
        let _ = upsert(st, KIND, &record_id(&factor.id), &user.id, |cur, now| {
            let Some(mut state) = cur.and_then(|c| serde_json::from_value::<CodeState>(c.data.clone()).ok())
            else {
                return Err(());
            };
            state.mac = None;
            state.sent_at = 0;
            Ok((serde_json::to_value(&state).unwrap_or(Value::Null), now + 1, ()))
        })
        .await;
        return Err(ChallengeError::Delivery);
    }
    crate::metrics::factor_event("challenged", &factor.factor_type);
    audit!("factor.challenge.sent", user = %user.username, factor_type = %factor.factor_type, factor_id = %factor.id, purpose = purpose);
    Ok(code_expires)
}

/// Checks a code sent for `factor`; `pending_ok` allows a pending factor
/// (activation).
pub async fn check_code(
    st: &Handles,
    user: &User,
    factor: &Factor,
    code: &str,
    addr: IpAddr,
    pending_ok: bool,
    flow: &Flow,
) -> Result<(), VerifyError> {
    let ft = factor.record.factor_type.as_str();
    if !config(st, ft).is_some_and(|c| c.enabled) {
        return Err(VerifyError::NotActive);
    }
    if !factor.is_active() && !pending_ok {
        return Err(VerifyError::NotActive);
    }
    if super::locked(st, user).await? {
        crate::metrics::factor_verification(ft, "locked");
        audit!("factor.verify.refused", user = %user.username, client = %addr, reason = "user locked");
        return Err(super::locked_answer(st));
    }
    let code: String = code.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let purpose = purpose(&factor.record);
    // Under each key: the flow's tag, and the MAC of the code presented.
    let candidates: Vec<(String, [u8; 32])> = server_keys(st)
        .all()
        .map(|k| {
            (
                flow_tag(k, flow),
                code_mac(k, &factor.record.id, purpose, flow, &code),
            )
        })
        .collect();
    let outcome = upsert(st, KIND, &record_id(&factor.record.id), &user.id, |cur, now| {
        let Some(cur) = cur else { return Err("no_code") };
        let Ok(mut state) = serde_json::from_value::<CodeState>(cur.data.clone()) else {
            return Err("no_code");
        };
        let Some(mac) = state.mac.as_deref().and_then(|m| hex::decode(m).ok()) else {
            return Err("no_code");
        };
        // A code of another flow is no code for this one, and this attempt
        // leaves it alone (its own flow can still use it).
        let Some((_, presented)) = candidates
            .iter()
            .find(|(tag, _)| ct_eq(state.flow.as_bytes(), tag.as_bytes()))
        else {
            return Err("no_code");
        };
        if state.purpose != purpose || now >= state.code_expires {
            return Err("expired");
        }
        if state.attempts >= MAX_ATTEMPTS {
            return Err("too_many_attempts");
        }
        let matched = ct_eq(presented, &mac);
        state.attempts += 1;
        if matched || state.attempts >= MAX_ATTEMPTS {
            // Used, or dead after its last attempt.
            state.mac = None;
        }
        if matched {
            // A used code is no reason to wait before the next one.
            state.sent_at = 0;
        }
        Ok((
            serde_json::to_value(&state).unwrap_or(Value::Null),
            cur.expires_at,
            matched,
        ))
    })
    .await?;
    match outcome {
        Ok(true) => {
            crate::metrics::factor_verification(ft, "success");
            audit!("factor.verified", user = %user.username, factor_type = ft, factor_id = %factor.record.id, client = %addr);
            Ok(())
        }
        Ok(false) => {
            super::failed(st, user, ft, addr, "invalid").await?;
            Err(VerifyError::Invalid)
        }
        Err(why) => {
            super::failed(st, user, ft, addr, why).await?;
            Err(VerifyError::Invalid)
        }
    }
}

/// Enrolls a code factor: validates the profile, stores it pending, sends
/// the activation code. A failed send removes the factor again.
pub async fn enroll(
    st: &Handles,
    user: &User,
    factor_type: &str,
    provider: &str,
    profile: &Value,
    flow: &Flow,
) -> Result<Enrolled, EnrollError> {
    if !config(st, factor_type).is_some_and(|c| c.enabled) || provider != "OKTA" {
        return Err(EnrollError::NotSupported);
    }
    let profile = if factor_type == "email" {
        let given = profile["email"]
            .as_str()
            .or(user.email.as_deref())
            .unwrap_or_default();
        json!({ "email": normalize_email(given).map_err(EnrollError::Invalid)? })
    } else {
        let given = profile["phoneNumber"].as_str().unwrap_or_default();
        json!({ "phoneNumber": normalize_phone(given).map_err(EnrollError::Invalid)? })
    };
    let now = st.clock.now();
    let factor = FactorRecord {
        id: super::new_factor_id(factor_type, provider),
        user_id: user.id.clone(),
        factor_type: factor_type.into(),
        provider: provider.into(),
        status: FactorStatus::PendingActivation,
        profile,
        secret: None,
        created: now,
        last_updated: now,
    };
    st.store.insert_factor(&factor).await?;
    match send_code(st, user, &factor, &app_name(st), flow).await {
        Ok(expires_at) => {
            crate::metrics::factor_event("enrolled", factor_type);
            audit!("factor.enrolled", user = %user.username, factor_type = factor_type, factor_id = %factor.id);
            Ok(Enrolled::Code { factor, expires_at })
        }
        Err(e) => {
            if let Err(de) = st.store.delete_factor(&user.id, &factor.id).await {
                tracing::warn!(error = %de, "could not remove a factor whose activation code was not sent");
            }
            Err(match e {
                e @ (ChallengeError::RateLimited(_) | ChallengeError::TooSoon(_)) => EnrollError::Limited(e),
                ChallengeError::Unavailable => {
                    EnrollError::Store(StoreError::Unavailable("sending the activation code".into()))
                }
                _ => EnrollError::Delivery,
            })
        }
    }
}

/// Activates a pending code factor with the code sent to it.
pub async fn activate(
    st: &Handles,
    user: &User,
    factor: &Factor,
    code: &str,
    addr: IpAddr,
    flow: &Flow,
) -> Result<(), VerifyError> {
    if factor.record.status != FactorStatus::PendingActivation {
        return Err(VerifyError::NotActive);
    }
    check_code(st, user, factor, code, addr, true, flow).await?;
    if !st
        .store
        .activate_factor(&user.id, &factor.record.id, st.clock.now())
        .await?
    {
        return Err(VerifyError::NotActive);
    }
    crate::metrics::factor_event("activated", &factor.record.factor_type);
    audit!("factor.activated", user = %user.username, factor_type = %factor.record.factor_type, factor_id = %factor.record.id);
    Ok(())
}

/// A factor that is sent a one-time code: text message, voice call or
/// e-mail. The three differ in name, address and wording only.
#[derive(Debug)]
pub struct CodeKind {
    okta_type: &'static str,
    id_prefix: &'static str,
    label: &'static str,
    enroll_label: &'static str,
    add_label: &'static str,
    address: Address,
    amr: &'static str,
    config: fn(&FactorsConfig) -> &CodeFactorConfig,
}

/// Codes by text message.
pub const SMS: CodeKind = CodeKind {
    okta_type: "sms",
    id_prefix: "mbl",
    label: "Text message",
    enroll_label: "Text message to your phone",
    add_label: "Add a phone for text messages",
    address: Address::Phone,
    amr: "sms",
    config: sms_config,
};
/// Codes read out by a voice call.
pub const CALL: CodeKind = CodeKind {
    okta_type: "call",
    id_prefix: "clf",
    label: "Voice call",
    enroll_label: "Voice call to your phone",
    add_label: "Add a phone for voice calls",
    address: Address::Phone,
    amr: "tel",
    config: call_config,
};
/// Codes by e-mail.
pub const EMAIL: CodeKind = CodeKind {
    okta_type: "email",
    id_prefix: "emf",
    label: "E-mail",
    enroll_label: "E-mail",
    add_label: "Add an e-mail address",
    address: Address::Email,
    amr: "email",
    config: email_config,
};

fn sms_config(f: &FactorsConfig) -> &CodeFactorConfig {
    &f.sms
}

fn call_config(f: &FactorsConfig) -> &CodeFactorConfig {
    &f.call
}

fn email_config(f: &FactorsConfig) -> &CodeFactorConfig {
    &f.email
}

impl FactorKind for CodeKind {
    fn okta_type(&self) -> &'static str {
        self.okta_type
    }

    fn verification_results(&self) -> &'static [&'static str] {
        &[
            "success",
            "invalid",
            "no_code",
            "expired",
            "too_many_attempts",
            "locked",
        ]
    }

    fn id_prefix(&self, _provider: &str) -> &'static str {
        self.id_prefix
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn enroll_label(&self) -> &'static str {
        self.enroll_label
    }

    fn add_label(&self) -> &'static str {
        self.add_label
    }

    fn address(&self) -> Option<Address> {
        Some(self.address)
    }

    fn describe(&self, profile: &Value) -> String {
        let a = self.address;
        let value = profile[a.profile_key()].as_str().unwrap_or_default();
        format!("{} to {}", self.label, a.mask(value))
    }

    fn amr(&self) -> &'static str {
        self.amr
    }

    fn enabled(&self, cfg: &FactorsConfig) -> bool {
        (self.config)(cfg).enabled
    }

    fn send_limit(&self, cfg: &FactorsConfig) -> u32 {
        (self.config)(cfg).max_sends_per_hour
    }

    fn sends_code(&self) -> bool {
        true
    }

    fn enroll<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        provider: &'a str,
        profile: &'a Value,
        flow: &'a Flow,
    ) -> BoxFuture<'a, Result<Enrolled, EnrollError>> {
        Box::pin(enroll(st, user, self.okta_type, provider, profile, flow))
    }

    fn activate<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        code: &'a str,
        addr: IpAddr,
        flow: &'a Flow,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(activate(st, user, factor, code, addr, flow))
    }

    fn challenge<'a>(
        &'a self,
        st: &'a Handles,
        user: &'a User,
        factor: &'a Factor,
        ctx: &'a ChallengeContext,
    ) -> BoxFuture<'a, Result<Challenge, ChallengeError>> {
        Box::pin(async move {
            let app = app_name(st);
            send_code(st, user, &factor.record, &app, &ctx.flow)
                .await
                .map(|expires_at| Challenge::CodeSent { expires_at })
        })
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
        Box::pin(check_code(st, user, factor, code, addr, false, flow))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::gateway::Gateway;

    pub(crate) const ADDR: &str = "192.0.2.10";

    /// A gateway on a memory store and a manual clock whose sms, call, email
    /// and push messages go to `messages.jsonl` in the returned folder.
    pub(crate) async fn gateway(extra: &str) -> (Gateway, ManualClock, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("messages.jsonl");
        let delivery = format!("{{ kind = \"file\", path = {:?} }}", file.display().to_string());
        let text = format!(
            r#"
default_policy = "two_factor"
[server]
external_url = "https://app.example.com"
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
max_factor_failures = 50
[factors.sms]
enabled = true
delivery = {delivery}
max_sends_per_hour = 4
[factors.call]
enabled = true
delivery = {delivery}
[factors.email]
enabled = true
delivery = {delivery}
[factors.push]
enabled = true
delivery = {delivery}
ttl = "60s"
{extra}
"#
        );
        let loaded = crate::config::load_str(&text, &|_| None).expect("config");
        let clock = ManualClock::new(1_800_000_000);
        let gw = Gateway::build_with(loaded.config, Arc::new(clock.clone()))
            .await
            .expect("gateway");
        (gw, clock, dir)
    }

    /// A gateway like `gw` with a changed config, on the same clock.
    pub(crate) async fn rebuild(
        gw: &Gateway,
        clock: &ManualClock,
        change: impl FnOnce(&mut crate::config::Config),
    ) -> Gateway {
        let mut config = (*gw.state().config).clone();
        change(&mut config);
        Gateway::build_with(config, Arc::new(clock.clone()))
            .await
            .unwrap()
    }

    /// Every message delivered so far.
    pub(crate) fn messages(dir: &tempfile::TempDir) -> Vec<Value> {
        std::fs::read_to_string(dir.path().join("messages.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub(crate) fn last_code(dir: &tempfile::TempDir) -> String {
        messages(dir).last().unwrap()["code"].as_str().unwrap().to_owned()
    }

    pub(crate) fn user() -> User {
        User {
            id: "00uDAVE".into(),
            username: "dave".into(),
            display_name: None,
            email: Some("dave@example.com".into()),
            phone: None,
            groups: vec![],
            password_hash: None,
            from_file: false,
            config_totp: None,
        }
    }

    fn ip() -> IpAddr {
        ADDR.parse().unwrap()
    }

    fn ctx() -> super::super::ChallengeContext {
        super::super::ChallengeContext {
            client_addr: ip(),
            flow: flow(),
        }
    }

    /// The flow the tests send and check codes in.
    fn flow() -> Flow {
        Flow::Admin
    }

    async fn active_sms(st: &Handles, dir: &tempfile::TempDir, clock: &ManualClock) -> Factor {
        let u = user();
        let e = super::super::enroll(
            st,
            &u,
            "sms",
            "OKTA",
            &json!({"phoneNumber": "+1 555 555 0100"}),
            &flow(),
        )
        .await
        .unwrap();
        let f = super::super::find(st, &u, &e.factor().id).await.unwrap().unwrap();
        super::super::activate(st, &u, &f, &last_code(dir), ip(), &flow())
            .await
            .unwrap();
        clock.advance(30);
        super::super::find(st, &u, &f.record.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn enrollment_validates_sends_and_activates_with_the_code() {
        let (gw, _clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let bad = super::super::enroll(
            st,
            &u,
            "sms",
            "OKTA",
            &json!({"phoneNumber": "555-0100"}),
            &flow(),
        )
        .await;
        assert!(matches!(bad, Err(EnrollError::Invalid(c)) if c.starts_with("phoneNumber")));
        assert!(matches!(
            super::super::enroll(
                st,
                &u,
                "sms",
                "GOOGLE",
                &json!({"phoneNumber": "+15555550100"}),
                &flow()
            )
            .await,
            Err(EnrollError::NotSupported)
        ));
        let e = super::super::enroll(
            st,
            &u,
            "sms",
            "OKTA",
            &json!({"phoneNumber": "+1 555 555 0100"}),
            &flow(),
        )
        .await
        .unwrap();
        let Enrolled::Code { factor, expires_at } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(factor.status, FactorStatus::PendingActivation);
        assert_eq!(factor.profile["phoneNumber"], "+15555550100");
        assert_eq!(*expires_at, 1_800_000_000 + 300);
        let m = messages(&dir);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["kind"], "sms");
        assert_eq!(m[0]["to"], "+15555550100");
        let code = last_code(&dir);
        assert_eq!(code.len(), 6);
        assert!(m[0]["text"].as_str().unwrap().contains(&code));
        assert!(m[0]["text"].as_str().unwrap().contains("5 minutes"));
        // Only a MAC is stored.
        let rec = st
            .store
            .get_transaction(KIND, &record_id(&factor.id), st.clock.now())
            .await
            .unwrap()
            .unwrap();
        assert!(!rec.data.to_string().contains(&code));
        let pending = super::super::find(st, &u, &factor.id).await.unwrap().unwrap();
        assert_eq!(
            super::super::verify(st, &u, &pending, &code, ip(), &flow()).await,
            Err(VerifyError::NotActive),
            "a pending factor cannot sign in"
        );
        assert_eq!(
            super::super::activate(st, &u, &pending, "000000", ip(), &flow()).await,
            Err(VerifyError::Invalid)
        );
        super::super::activate(st, &u, &pending, &code, ip(), &flow())
            .await
            .unwrap();
        assert!(
            super::super::find(st, &u, &factor.id)
                .await
                .unwrap()
                .unwrap()
                .is_active()
        );
    }

    #[tokio::test]
    async fn a_code_is_bound_to_the_flow_that_sent_it() {
        let (gw, clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let f = active_sms(st, &dir, &clock).await;
        let one = Flow::Authn("tx-one".into());
        let sent_in = super::super::ChallengeContext {
            flow: one.clone(),
            ..ctx()
        };
        super::super::challenge(st, &u, &f, &sent_in).await.unwrap();
        let code = last_code(&dir);
        // Every other flow: refused, more often than the attempts allow...
        for other in [
            Flow::Authn("tx-two".into()),
            Flow::Session("sid".into()),
            Flow::Admin,
            Flow::Authn("tx-two".into()),
            Flow::Session("sid".into()),
            Flow::Admin,
        ] {
            assert_eq!(
                super::super::verify(st, &u, &f, &code, ip(), &other).await,
                Err(VerifyError::Invalid),
                "{other:?}"
            );
        }
        // ...and the code still works in its own flow.
        super::super::verify(st, &u, &f, &code, ip(), &one).await.unwrap();
    }

    /// `session.secrets` with a new secret put first, as a rotation does.
    pub(crate) fn rotated(gw: &Gateway) -> crate::config::Config {
        let mut config = (*gw.state().config).clone();
        let new = Secret::new("fedcba9876543210fedcba9876543210");
        config.session.secrets.insert(0, new);
        config
    }

    #[tokio::test]
    async fn a_code_sent_before_a_secret_rotation_works_after_the_reload() {
        let (gw, clock, dir) = gateway("").await;
        let u = user();
        let f = active_sms(gw.state(), &dir, &clock).await;
        let one = Flow::Authn("tx-one".into());
        let sent_in = super::super::ChallengeContext {
            flow: one.clone(),
            ..ctx()
        };
        super::super::challenge(gw.state(), &u, &f, &sent_in)
            .await
            .unwrap();
        let code = last_code(&dir);
        let after = gw.rebuild(rotated(&gw)).await.unwrap();
        let st = after.state();
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &Flow::Authn("tx-two".into())).await,
            Err(VerifyError::Invalid),
            "still bound to its flow"
        );
        super::super::verify(st, &u, &f, &code, ip(), &one).await.unwrap();
        // New codes are made under the new secret: a gateway that knows only
        // the old one finds no code for the flow.
        clock.advance(30);
        super::super::challenge(st, &u, &f, &sent_in).await.unwrap();
        let code = last_code(&dir);
        let old_only = after.rebuild((*gw.state().config).clone()).await.unwrap();
        assert_eq!(
            super::super::verify(old_only.state(), &u, &f, &code, ip(), &one).await,
            Err(VerifyError::Invalid)
        );
        super::super::verify(st, &u, &f, &code, ip(), &one).await.unwrap();
    }

    #[tokio::test]
    async fn a_code_works_once_expires_and_resends_wait() {
        let (gw, clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let f = active_sms(st, &dir, &clock).await;
        let sent = super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        assert_eq!(
            sent,
            super::super::Challenge::CodeSent {
                expires_at: clock.now() + 300
            }
        );
        assert_eq!(
            super::super::challenge(st, &u, &f, &ctx()).await,
            Err(ChallengeError::TooSoon(clock.now() + 30))
        );
        let code = last_code(&dir);
        assert!(
            messages(&dir).last().unwrap()["text"]
                .as_str()
                .unwrap()
                .contains("app.example.com")
        );
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &flow()).await,
            Ok(())
        );
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &flow()).await,
            Err(VerifyError::Invalid),
            "used"
        );
        // A used code does not hold the next one back.
        super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        let code = last_code(&dir);
        clock.advance(300);
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &flow()).await,
            Err(VerifyError::Invalid),
            "expired"
        );
    }

    #[tokio::test]
    async fn five_wrong_attempts_kill_the_code() {
        let (gw, clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let f = active_sms(st, &dir, &clock).await;
        super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        let code = last_code(&dir);
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(
                super::super::verify(st, &u, &f, wrong, ip(), &flow()).await,
                Err(VerifyError::Invalid)
            );
        }
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &flow()).await,
            Err(VerifyError::Invalid),
            "dead after five attempts"
        );
        // A new code (after resend_after) works again.
        clock.advance(30);
        super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        assert_eq!(
            super::super::verify(st, &u, &f, &last_code(&dir), ip(), &flow()).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn wrong_codes_lock_the_user() {
        let (gw, clock, dir) = gateway("").await;
        let gw = rebuild(&gw, &clock, |c| c.regulation.max_factor_failures = 3).await;
        let st = gw.state();
        let u = user();
        let f = active_sms(st, &dir, &clock).await;
        super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        let code = last_code(&dir);
        for _ in 0..3 {
            let _ = super::super::verify(st, &u, &f, "999999x", ip(), &flow()).await;
        }
        assert_eq!(
            super::super::verify(st, &u, &f, &code, ip(), &flow()).await,
            Err(VerifyError::Invalid),
            "locked: refused like a wrong code"
        );
        assert!(st.regulator.user_locked(&u.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sends_per_hour_are_limited_per_user() {
        let (gw, clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        let first = clock.now();
        let f = active_sms(st, &dir, &clock).await; // send 1 (activation)
        for _ in 0..3 {
            clock.advance(30);
            super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
        }
        clock.advance(30);
        assert_eq!(
            super::super::challenge(st, &u, &f, &ctx()).await,
            Err(ChallengeError::RateLimited(first + SEND_WINDOW))
        );
        clock.set(first + SEND_WINDOW + 1);
        super::super::challenge(st, &u, &f, &ctx()).await.unwrap();
    }

    #[tokio::test]
    async fn calls_speak_and_emails_have_a_subject() {
        let (gw, _clock, dir) = gateway("").await;
        let st = gw.state();
        let u = user();
        super::super::enroll(
            st,
            &u,
            "call",
            "OKTA",
            &json!({"phoneNumber": "+15555550100"}),
            &flow(),
        )
        .await
        .unwrap();
        let m = messages(&dir).pop().unwrap();
        assert_eq!(m["kind"], "call");
        let spoken_code = crate::delivery::spoken(m["code"].as_str().unwrap());
        assert!(m["text"].as_str().unwrap().contains(&spoken_code), "{m}");
        // The e-mail address defaults to the user's own.
        super::super::enroll(st, &u, "email", "OKTA", &json!({}), &flow())
            .await
            .unwrap();
        let m = messages(&dir).pop().unwrap();
        assert_eq!(m["kind"], "email");
        assert_eq!(m["to"], "dave@example.com");
        assert!(m["subject"].as_str().unwrap().contains("sign-in code"));
        assert!(matches!(
            super::super::enroll(st, &u, "email", "OKTA", &json!({"email": "nope"}), &flow()).await,
            Err(EnrollError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_delivery_is_an_error_and_leaves_no_factor() {
        let (gw, clock, _dir) = gateway("").await;
        let gw = rebuild(&gw, &clock, |c| {
            c.factors.sms.delivery = Some(crate::config::Delivery::Command {
                program: "/bin/false".into(),
                args: vec![],
            })
        })
        .await;
        let st = gw.state();
        let u = user();
        assert!(matches!(
            super::super::enroll(
                st,
                &u,
                "sms",
                "OKTA",
                &json!({"phoneNumber": "+15555550100"}),
                &flow()
            )
            .await,
            Err(EnrollError::Delivery)
        ));
        assert!(super::super::list(st, &u).await.unwrap().is_empty());
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert_eq!(normalize_phone("+1 (555) 555-0100").unwrap(), "+15555550100");
        assert_eq!(normalize_phone("+4915112345678").unwrap(), "+4915112345678");
        assert_eq!(normalize_phone("+12345678").unwrap(), "+12345678", "8 digits");
        assert!(normalize_phone("+1234567").is_err(), "7 digits");
        assert!(normalize_phone("+1234567890123456").is_err(), "16 digits");
        assert!(normalize_phone("15555550100").is_err(), "no +");
        assert!(normalize_phone("+05555550100").is_err(), "no country code 0");
        assert!(normalize_phone("+1555555010x").is_err());
        assert!(normalize_phone("").is_err());
        assert!(normalize_phone("++15555550100").is_err());
    }

    #[test]
    fn email_addresses_are_checked() {
        assert_eq!(
            normalize_email(" alice@example.com ").unwrap(),
            "alice@example.com"
        );
        assert!(normalize_email("a.b+tag@mail.example.co.uk").is_ok());
        for bad in [
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "al ice@example.com",
            "alice@exa_mple.com",
            "alice@example.com\r\nBcc: x@y.z",
            "<alice@example.com>",
            "a..b@example.com",
            "alice@-example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masks_keep_only_what_the_user_recognizes() {
        assert_eq!(mask_phone("+15555550100"), "+1 *** *** **00");
        assert_eq!(mask_phone("+4915112345678"), "+49 *** *** ***78");
        assert_eq!(mask_phone("+447700900123"), "+44 *** *** **23");
        assert_eq!(mask_phone("+12"), "***");
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
        assert_eq!(
            masked_profile("sms", &json!({"phoneNumber": "+15555550100"})),
            json!({"phoneNumber": "+1 *** *** **00"})
        );
    }

    #[test]
    fn codes_are_random_digits_and_macs_bind_factor_purpose_and_flow() {
        let a = generate_code(6);
        assert_eq!(a.len(), 6);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        let codes: std::collections::HashSet<String> = (0..50).map(|_| generate_code(8)).collect();
        assert!(codes.len() > 45, "codes repeat too often");
        let k = b"k";
        let f = Flow::Admin;
        let mac = code_mac(k, "f1", "verify", &f, "123456");
        assert_ne!(mac, code_mac(k, "f2", "verify", &f, "123456"));
        assert_ne!(mac, code_mac(k, "f1", "activate", &f, "123456"));
        assert_ne!(mac, code_mac(b"k2", "f1", "verify", &f, "123456"));
        let t1 = Flow::Authn("t1".into());
        let m1 = code_mac(k, "f1", "verify", &t1, "123456");
        assert_ne!(mac, m1);
        assert_ne!(
            m1,
            code_mac(k, "f1", "verify", &Flow::Authn("t2".into()), "123456")
        );
        assert_ne!(
            m1,
            code_mac(k, "f1", "verify", &Flow::Session("t1".into()), "123456")
        );
        assert_ne!(flow_tag(k, &t1), flow_tag(k, &Flow::Session("t1".into())));
    }
}
