//! The password step shared by the login form and the authentication API,
//! and issuing sessions.
//!
//! Every failure looks the same from outside: unknown user, wrong password,
//! blocked pair and locked user all take one argon2 verification and answer
//! the same generic error, whatever locked the user and whether the password
//! was right (SPEC section 6). Only with `regulation.reveal_lockout` is a
//! locked user told ([`LoginError::LockedRevealed`]), and the right password
//! of a user whom wrong second-factor codes locked is told how long to wait
//! ([`LoginError::FactorLocked`]).

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use crate::audit;
use crate::identity::Level;
use crate::regulation::Blocked;
use crate::secret::Secret;
use crate::session::SessionClaims;
use crate::state::AppState;
use crate::users::User;

/// Logins longer than this cannot exist; they are failed without a lookup
/// and counted under a hash (see [`crate::limits`]).
pub const MAX_LOGIN_LEN: usize = crate::limits::MAX_LOGIN_BYTES;
/// Passwords longer than this are refused (see [`crate::passwords`]).
pub const MAX_PASSWORD_LEN: usize = crate::passwords::MAX_PASSWORD_LEN;

/// Why a password step did not sign anyone in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong credentials, unknown user, or blocked: indistinguishable.
    Failed,
    /// The user is locked and the operator chose to reveal it.
    LockedRevealed,
    /// With `reveal_lockout`: the password was right but wrong second-factor
    /// codes locked the user until then, so they are told how long to wait
    /// (a wrong password never gets this answer; without `reveal_lockout`
    /// nobody does).
    FactorLocked(crate::clock::UnixTime),
    /// The password pool is saturated: try again shortly.
    Busy,
    /// The store could not be reached: fail closed.
    Unavailable,
}

/// Checks a login and password from `addr`, counting failures.
///
/// Users of the users file and of the API are checked here (argon2); a login
/// neither of them holds goes to the directory when `[users.ldap]` is set
/// ([`check_directory_password`]). Source order: file, API, directory.
pub async fn check_password(
    st: &AppState,
    login: &str,
    password: Secret,
    addr: IpAddr,
) -> Result<Arc<User>, LoginError> {
    let login = login.trim();
    let plausible = !login.is_empty() && login.len() <= MAX_LOGIN_LEN;
    let user = if plausible {
        let users = st.enforcer.users.read().unwrap_or_else(|p| p.into_inner());
        users
            .by_login(login)
            .filter(|u| !users.is_directory(&u.id))
            .cloned()
    } else {
        None
    };
    if user.is_none()
        && plausible
        && let Some(dir) = &st.directory
    {
        return check_directory_password(st, dir, login, password, addr).await;
    }
    let user_id = user.as_ref().map(|u| u.id.clone());
    // An unknown (or over-long) login is counted under a keyed hash of fixed
    // length: what an attacker types never becomes part of a stored key.
    let subject = user_id
        .clone()
        .unwrap_or_else(|| st.regulator.anonymous_subject(login));
    // A burst from one address takes turns: each attempt sees the failures
    // counted before it. Too many waiting: refused like a blocked attempt.
    let turn = st.regulator.password_turn(&subject, addr).await;
    let (blocked, counted) = match turn {
        Some(_) => password_attempt(st, user_id.as_deref(), &subject, addr).await?,
        None => (Blocked::Client(st.clock.now()), None),
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
    let password = if password.len() > MAX_PASSWORD_LEN {
        Secret::new("")
    } else {
        password
    };
    let matched = match hash {
        Some(hash) => st.passwords.verify(hash, password).await,
        None => {
            let cost = imitated_cost(st, login);
            st.passwords
                .imitate(cost.as_ref(), password)
                .await
                .map(|()| false)
        }
    }
    .map_err(|_| {
        crate::metrics::login("busy");
        LoginError::Busy
    })?;
    settle(st, user, &subject, (blocked, counted), matched, addr).await
}

/// The hash cost a sign-in for `login`, which names no one with a password,
/// imitates: one the users have, the same for this login each time
/// ([`crate::users::UserDirectory::cost_for_unknown`]).
fn imitated_cost(st: &AppState, login: &str) -> Option<crate::passwords::HashCost> {
    let key = st.regulator.anonymous_subject(login);
    st.enforcer
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .cost_for_unknown(&key)
}

async fn password_attempt(
    st: &AppState,
    user_id: Option<&str>,
    subject: &str,
    addr: IpAddr,
) -> Result<(Blocked, Option<u32>), LoginError> {
    st.regulator
        .password_attempt(user_id, subject, addr)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "regulation check failed");
            crate::metrics::login("error");
            LoginError::Unavailable
        })
}

/// The password step of a directory user: search with the service account,
/// then bind as the user's DN. An unknown user, a disabled account and a
/// blocked attempt bind as a decoy DN instead, and every path runs the same
/// argon2 work as a users-file sign-in, so answers and timing agree. The
/// directory down, slow or answering garbage: 503, never another source.
async fn check_directory_password(
    st: &AppState,
    dir: &crate::users::ldap::LdapDirectory,
    login: &str,
    password: Secret,
    addr: IpAddr,
) -> Result<Arc<User>, LoginError> {
    let unavailable = |e: crate::users::ldap::DirError| {
        tracing::error!(error = %e, "directory sign-in could not be checked");
        crate::metrics::login("error");
        LoginError::Unavailable
    };
    let found = dir.find(login).await.map_err(unavailable)?;
    if found.as_ref().is_some_and(|e| e.disabled) {
        tracing::info!(user = %login, "directory account is disabled");
    }
    let found = found.filter(|e| !e.disabled).map(|e| e.to_user());
    let user_id = found.as_ref().map(|(u, _)| u.id.clone());
    let subject = user_id
        .clone()
        .unwrap_or_else(|| st.regulator.anonymous_subject(login));
    // A burst from one address takes turns: each attempt sees the failures
    // counted before it. Too many waiting: refused like a blocked attempt.
    let turn = st.regulator.password_turn(&subject, addr).await;
    let (blocked, counted) = match turn {
        Some(_) => password_attempt(st, user_id.as_deref(), &subject, addr).await?,
        None => (Blocked::Client(st.clock.now()), None),
    };
    let password = if password.len() > MAX_PASSWORD_LEN {
        Secret::new("")
    } else {
        password
    };
    // The work a users-file sign-in does, so a directory user is not told
    // apart by timing (the answer is not used).
    let cost = imitated_cost(st, login);
    st.passwords
        .imitate(cost.as_ref(), password.clone())
        .await
        .map_err(|_| {
            crate::metrics::login("busy");
            LoginError::Busy
        })?;
    let dn = found
        .as_ref()
        .filter(|_| blocked == Blocked::No)
        .map(|(_, at)| at.dn.as_str());
    // An empty password never reaches a bind (anonymous success on many servers).
    let matched = dir.check_password(dn, &password).await.map_err(unavailable)?;
    let user = match found {
        Some((user, at)) if matched => {
            let mirrored = st
                .enforcer
                .users
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .upsert_directory_user(user.clone(), at);
            if !mirrored {
                tracing::warn!(user = %user.username, "a directory user's login is also a users-file or API user; that one wins");
            }
            Some((Arc::new(user), mirrored))
        }
        Some((user, _)) => Some((Arc::new(user), true)),
        None => None,
    };
    let matched = matched && user.as_ref().is_some_and(|(_, m)| *m);
    settle(
        st,
        user.map(|(u, _)| u),
        &subject,
        (blocked, counted),
        matched,
        addr,
    )
    .await
}

/// Counts, audits and answers a checked password step.
/// `attempt`: what [`crate::regulation::Regulator::password_attempt`] answered (blocked, and
/// the user-wide count taken before the check).
async fn settle(
    st: &AppState,
    user: Option<Arc<User>>,
    subject: &str,
    attempt: (Blocked, Option<u32>),
    matched: bool,
    addr: IpAddr,
) -> Result<Arc<User>, LoginError> {
    let (blocked, counted) = attempt;
    let user_id = user.as_ref().map(|u| u.id.clone());
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "recording a sign-in failed");
        LoginError::Unavailable
    };
    match (user, blocked) {
        (Some(user), Blocked::No) if matched => {
            st.regulator
                .password_attempt_succeeded(user_id.as_deref(), subject, addr, counted)
                .await
                .map_err(unavailable)?;
            crate::metrics::login("success");
            audit!("signin.password.succeeded", user = %user.username, client = %addr);
            Ok(user)
        }
        (user, Blocked::User(_)) => {
            crate::metrics::login("locked");
            let name = user.as_ref().map_or("-", |u| u.username.as_str());
            audit!("signin.password.refused", user = %name, client = %addr, reason = "user locked");
            let reveal = st.config.regulation.reveal_lockout;
            // Asked before this attempt is counted, so the attempt that blocks
            // a client is not the one told.
            let client_blocked = if reveal && matched {
                st.regulator
                    .client_blocked(subject, addr)
                    .await
                    .map_err(unavailable)?
            } else {
                true
            };
            st.regulator
                .password_refused(user_id.as_deref(), subject, addr, blocked)
                .await
                .map_err(unavailable)?;
            if !reveal {
                // SPEC section 6: a locked user answers like a wrong password,
                // whatever locked them and whether this password was right.
                return Err(LoginError::Failed);
            }
            if let Some(uid) = user_id.as_deref().filter(|_| matched && !client_blocked)
                && let Some(until) = st.regulator.factor_locked(uid).await.map_err(unavailable)?
            {
                return Err(LoginError::FactorLocked(until));
            }
            Err(LoginError::LockedRevealed)
        }
        (user, blocked) => {
            crate::metrics::login(if blocked == Blocked::No {
                "failure"
            } else {
                "locked"
            });
            let name = user.as_ref().map_or("-", |u| u.username.as_str());
            let reason = match (&user, blocked) {
                (_, Blocked::Client(_)) => "client blocked",
                (None, _) => "unknown user",
                _ => "wrong password",
            };
            audit!("signin.password.failed", user = %name, client = %addr, reason = reason);
            // Only a checked attempt counts toward the user's lock; one
            // refused because its pair or address is blocked does not.
            let locked_now = if blocked == Blocked::No {
                st.regulator
                    .password_attempt_failed(user_id.as_deref(), subject, addr, counted)
                    .await
                    .map_err(unavailable)?
            } else {
                st.regulator
                    .password_refused(user_id.as_deref(), subject, addr, blocked)
                    .await
                    .map_err(unavailable)?;
                false
            };
            if locked_now {
                crate::metrics::lockout("user");
                audit!("user.locked", user = %name, reason = "password failures");
            }
            Err(LoginError::Failed)
        }
    }
}

/// Issues a new session (always a new id: no fixation) for `user` at `level`.
/// `prior` is the session being upgraded: its sign-in time and sign-in id
/// carry over (the caller retires its session id with [`retire`]).
pub fn issue_session(
    st: &AppState,
    user: &User,
    level: Level,
    amr: Vec<String>,
    prior: Option<&SessionClaims>,
) -> (SessionClaims, HeaderValue) {
    let now = st.clock.now();
    let prior = prior.filter(|p| p.uid == user.id);
    let auth = prior.map_or(now, |p| p.auth);
    let mfa = (level >= 2).then_some(now);
    // An upgrade keeps the epoch its sign-in began at: a revocation that
    // lands while it is under way ends the upgraded session too.
    let epoch = prior.map_or_else(|| st.enforcer.revocations.epoch(&user.id), |p| p.ep);
    let method = amr.join(" ");
    let mut claims = SessionClaims::new(&user.id, level, amr, auth, mfa, epoch, now);
    if let Some(p) = prior {
        claims = claims.in_sign_in(&p.sin);
    }
    let cookie = st.enforcer.sessions.set_cookie(&claims, now);
    if prior.is_none() {
        audit!("session.started", user = %user.username, user_id = %user.id, level = level, method = %method);
    }
    (claims, cookie)
}

/// Re-issues the current session after this user's own change (a factor
/// removed), with the epoch that change `moved` it to, so the session that
/// made the change carries on while every other one ends. Same session and
/// sign-in ids. `None` (no cookie: the session ends) when the epoch moved
/// further than this change alone could have moved it.
pub fn reissue(
    st: &AppState,
    claims: &SessionClaims,
    moved: Option<crate::factors::EpochMoved>,
) -> Option<HeaderValue> {
    let ep = match moved {
        None => claims.ep,
        // Only this session's own change moved the epoch: it goes on.
        Some(crate::factors::EpochMoved(e)) if Some(e) == claims.ep.checked_add(1) => e,
        // Something else ended the user's sessions too: this one ends with
        // them (never re-issued past an administrator's revocation).
        Some(_) => return None,
    };
    let now = st.clock.now();
    let mut c = claims.clone();
    c.ep = ep;
    c.iat = now;
    c.last = now;
    Some(st.enforcer.sessions.set_cookie(&c, now))
}

/// Revokes one session id (one replaced by a later step of its sign-in) in
/// the store and in this replica's view. `auth` is the sign-in time, which
/// bounds how long the entry matters.
pub async fn retire(
    st: &AppState,
    sid: &str,
    auth: crate::clock::UnixTime,
) -> Result<(), crate::store::StoreError> {
    let expires_at = auth + st.enforcer.sessions.lifetime();
    st.store.revoke_session(sid, expires_at).await?;
    st.enforcer.revocations.note_revoked(sid, expires_at);
    Ok(())
}

/// [`revoke`] on a task of its own: a client that hangs up while it runs
/// drops its request, not the sign-out, which still reaches the store.
pub async fn sign_out(st: &Arc<AppState>, claims: &SessionClaims) -> Result<(), crate::store::StoreError> {
    let (st, claims) = (st.clone(), claims.clone());
    tokio::spawn(async move { revoke(&st, &claims).await })
        .await
        .unwrap_or_else(|_| {
            Err(crate::store::StoreError::Unavailable(
                "sign-out did not finish".into(),
            ))
        })
}

/// Signs out: revokes the session id and its whole sign-in (every id issued
/// along it: the password step's, each step-up's) in the store and in this
/// replica's view; other replicas learn it within `revocation_check`.
pub async fn revoke(st: &AppState, claims: &SessionClaims) -> Result<(), crate::store::StoreError> {
    retire(st, &claims.sin, claims.auth).await?;
    retire(st, &claims.sid, claims.auth).await
}

/// A new sign-in replaces the one of the session cookie the request carried,
/// if that cookie is still valid: its whole sign-in is revoked (in the store,
/// so on every replica, as at sign-out), so a saved copy of the older cookie
/// stops working and signing out of the new sign-in leaves nothing behind.
/// Best effort, like [`retire`]: the new sign-in goes on if the store fails.
/// Call it when the new sign-in's session cookie is issued.
pub async fn end_prior_sign_in(st: &AppState, headers: &HeaderMap) {
    if let crate::enforce::SessionState::Valid(old) = st.enforcer.session(headers)
        && let Err(e) = revoke(st, &old.claims).await
    {
        tracing::warn!(error = %e, "could not revoke the sign-in a new one replaces");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;
    use crate::factors::EpochMoved;

    fn claims(ep: u64, now: crate::clock::UnixTime) -> SessionClaims {
        SessionClaims {
            sid: "sid".into(),
            sin: "sin".into(),
            uid: "u1".into(),
            lvl: 2,
            amr: vec!["pwd".into(), "otp".into()],
            auth: now,
            mfa: Some(now),
            iat: now,
            last: now,
            ep,
        }
    }

    /// The session that removed a factor carries on at the epoch its own
    /// removal moved to; an epoch moved further (an administrator ended the
    /// user's sessions meanwhile) ends it.
    #[tokio::test]
    async fn a_session_is_reissued_only_past_its_own_change() {
        let (gw, clock, _dir) = crate::factors::otp::tests::gateway("").await;
        let st = gw.state();
        let value = |cookie: HeaderValue| {
            let text = cookie.to_str().unwrap().to_owned();
            let pair = text.split(';').next().unwrap().to_owned();
            pair.split_once('=').unwrap().1.to_owned()
        };
        let now = clock.now();
        let claims = |ep| claims(ep, now);
        let same = reissue(st, &claims(3), None).expect("no epoch moved: re-issued as it is");
        assert_eq!(st.enforcer.sessions.decode(&value(same), now).unwrap().ep, 3);
        let own = reissue(st, &claims(3), Some(EpochMoved(4))).expect("its own change");
        let own = st.enforcer.sessions.decode(&value(own), now).unwrap();
        assert_eq!((own.ep, own.sid.as_str(), own.sin.as_str()), (4, "sid", "sin"));
        assert!(
            reissue(st, &claims(3), Some(EpochMoved(5))).is_none(),
            "moved twice"
        );
        assert!(
            reissue(st, &claims(3), Some(EpochMoved(3))).is_none(),
            "not moved by it"
        );
        assert!(reissue(st, &claims(u64::MAX), Some(EpochMoved(0))).is_none());
    }
}
