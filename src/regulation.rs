//! Regulation: counting failures and locking out, so that guessing is slow
//! and strangers cannot cheaply lock anyone out.
//!
//! Wrong passwords count per (user, client address) first: that pair is
//! blocked at `max_password_failures`. The user as a whole is locked only at
//! the much higher `max_password_failures_per_user` (from all addresses
//! together), and one address at `max_failures_per_ip` (IPv6 counted per /64).
//! Wrong second-factor codes lock the user at `max_factor_failures`. All
//! counts and locks live in the store, so replicas share them.
//!
//! Only attempts that were actually checked count toward the user's lock: an
//! attempt refused because its (user, address) pair or its address is
//! already blocked (or the user already locked) is counted for the pair and
//! the address, never for the user, so one address alone can never lock a
//! user out for everyone. Every failure path makes the same number of store
//! writes, so refused, unknown and wrong answers take as long.
//!
//! Counter keys are bounded: a user is counted under their id, a login that
//! names no user under a keyed hash of fixed length
//! ([`Regulator::anonymous_subject`]), an address under its bucket.

use std::net::IpAddr;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::{SharedClock, UnixTime};
use crate::config::RegulationConfig;
use crate::context::address_bucket;
use crate::limits::{AddressLimiter, RateInfo};
use crate::secret::Secret;
use crate::store::{CounterKey, SharedStore, StoreResult};

tokio::task_local! {
    /// Set while a possession factor is the *first* factor (passwordless).
    static FIRST_FACTOR: ();
}

/// Runs `f` with possession-factor failures counted as first-factor
/// failures when `first` is true (passwordless sign-in). Without a password
/// step anyone who knows a login can send codes, so such failures must count
/// like wrong passwords: the (user, address) pair is blocked first and the
/// user only at `max_password_failures_per_user`; a stranger cannot lock the
/// user out with a handful of guesses.
pub async fn as_first_factor<F: std::future::Future>(first: bool, f: F) -> F::Output {
    if first {
        FIRST_FACTOR.scope((), f).await
    } else {
        f.await
    }
}

fn counting_first_factor() -> bool {
    FIRST_FACTOR.try_with(|_| ()).is_ok()
}

/// Counts failures and answers whether a sign-in may proceed.
#[derive(Debug, Clone)]
pub struct Regulator {
    store: SharedStore,
    cfg: RegulationConfig,
    clock: SharedClock,
    /// Keys the hash that unknown logins are counted under.
    subject_key: Secret,
    /// Unauthenticated sign-in transactions per address (this process).
    transactions: Arc<AddressLimiter>,
    /// Attempts at one subject's secret, one at a time (see [`Regulator::one_at_a_time`]).
    attempts: Arc<OneAtATime>,
}

/// Runs password attempts that share a key (a subject and an address
/// bucket) one after the other in this process.
///
/// A password attempt reads the locks, checks the password, then counts a
/// failure: without this, a burst from one address (HTTP/2 streams, many
/// connections) would have every attempt read "not blocked" before the first
/// failure was counted, and `max_password_failures` would allow as many
/// guesses as the burst held. Keyed by address too, so strangers elsewhere
/// never queue a user's own sign-in behind theirs; past [`MAX_WAITING`]
/// attempts on one key the next is refused at once (counted like a blocked
/// one). Second-factor codes need no queue: their attempt is counted before
/// it is checked ([`Regulator::factor_attempt`]).
#[derive(Debug, Default)]
pub struct OneAtATime {
    turns: Mutex<HashMap<String, Waiting>>,
}

/// Attempts running or waiting on one key, waiting ones included.
#[derive(Debug, Default)]
struct Waiting {
    lock: Arc<tokio::sync::Mutex<()>>,
    attempts: usize,
}

/// Attempts one key may have running or waiting at once.
pub const MAX_WAITING: usize = 8;

/// One attempt's place on its key, taken back when dropped (also when the
/// attempt is dropped while it waits).
#[derive(Debug)]
struct Place {
    owner: Arc<OneAtATime>,
    key: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut turns = self.owner.turns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = turns.get_mut(&self.key) {
            w.attempts = w.attempts.saturating_sub(1);
            if w.attempts == 0 {
                turns.remove(&self.key);
            }
        }
    }
}

/// One attempt's turn; the next waiting attempt goes on when it is dropped.
#[derive(Debug)]
pub struct Turn {
    // Released before the place is given back (fields drop in order).
    _held: tokio::sync::OwnedMutexGuard<()>,
    _place: Place,
}

impl OneAtATime {
    /// Waits until no other attempt for `key` runs here; `None` (at once)
    /// when [`MAX_WAITING`] attempts already run or wait on it.
    pub async fn turn(self: &Arc<Self>, key: String) -> Option<Turn> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            let w = turns.entry(key.clone()).or_default();
            if w.attempts >= MAX_WAITING {
                return None;
            }
            w.attempts += 1;
            w.lock.clone()
        };
        let place = Place {
            owner: self.clone(),
            key,
        };
        let held = lock.lock_owned().await;
        Some(Turn {
            _held: held,
            _place: place,
        })
    }

    /// Keys with an attempt running or waiting.
    pub fn keys(&self) -> usize {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A possession-factor attempt that may be checked: it was counted toward
/// the user's lock before the check (see [`Regulator::factor_attempt`]).
#[derive(Debug)]
pub struct FactorAttempt {
    counted: Counted,
    _turn: Option<Turn>,
}

/// The user's count with the attempt in it.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// Wrong second-factor codes (`mfa:`).
    SecondFactor(u32),
    /// As a first factor: the user-wide count of wrong passwords (`pwuser:`).
    FirstFactor(u32),
}

/// Whether a sign-in attempt may be checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Not blocked.
    No,
    /// The user is locked (from all addresses), until the given time.
    User(UnixTime),
    /// This (user, address) pair or this address is blocked, until the given time.
    Client(UnixTime),
}

fn user_lock(uid: &str) -> String {
    format!("lock:user:{uid}")
}
/// The count of a user's wrong second-factor codes.
fn mfa_key(uid: &str) -> String {
    format!("mfa:{uid}")
}
/// Set beside the user's lock when wrong second-factor codes locked the user:
/// a correct password may then be told to wait (it proved who is asking) on
/// the challenge page, and at the password step with `reveal_lockout`.
fn factor_lock(uid: &str) -> String {
    format!("lock:mfa:{uid}")
}
fn pair_key(subject: &str, bucket: &str) -> String {
    format!("pw:{subject}:{bucket}")
}
fn ip_key(bucket: &str) -> String {
    format!("ip:{bucket}")
}
/// The user-wide count of checked wrong passwords (it locks the user).
fn user_count_key(subject: &str) -> String {
    format!("pwuser:{subject}")
}
/// Where refused attempts are written instead, so that a refused attempt
/// costs the same store writes as a checked one but never locks the user.
fn refused_key(subject: &str) -> String {
    format!("pwrefused:{subject}")
}

impl Regulator {
    /// A regulator over `store`.
    pub fn new(store: SharedStore, cfg: RegulationConfig, clock: SharedClock) -> Self {
        let transactions = Arc::new(AddressLimiter::new(cfg.max_transactions_per_ip_per_minute));
        Self {
            store,
            cfg,
            clock,
            subject_key: Secret::default(),
            transactions,
            attempts: Arc::default(),
        }
    }

    /// Waits for the turn of a password attempt for `subject` (a user id,
    /// or an unknown login's [`Self::anonymous_subject`]) from `addr`:
    /// attempts of one subject from one address run one at a time in this
    /// process, so each sees the failures counted before it ([`OneAtATime`]).
    /// `None` when too many wait already: refuse the attempt.
    pub async fn password_turn(&self, subject: &str, addr: IpAddr) -> Option<Turn> {
        let key = format!("password:{subject}:{}", address_bucket(addr));
        self.attempts.turn(key).await
    }

    /// Waits for the turn of an operation on `uid`'s factors that reads
    /// them and then changes them (removing one, activating a first one), so
    /// two at once cannot both act on what the other is about to change.
    /// `None` when too many wait already.
    pub async fn factor_change_turn(&self, uid: &str) -> Option<Turn> {
        self.attempts.turn(format!("factors:{uid}")).await
    }

    /// Takes one attempt at a guessable second factor (a TOTP code, a
    /// recovery code) of `uid` before it is checked. As a second factor the
    /// attempt is counted toward the user's lock first, so however many
    /// arrive at once (on any replica) at most `max_factor_failures` are
    /// checked per window; `None` when the user is locked or this attempt is
    /// past the limit (then the user is locked). Report the outcome with
    /// [`Self::factor_attempt_failed`] or [`Self::factor_attempt_succeeded`].
    /// As a first factor ([`as_first_factor`]) it is counted like a
    /// password: attempts from one address take turns.
    pub async fn factor_attempt(&self, uid: &str, addr: IpAddr) -> StoreResult<Option<FactorAttempt>> {
        let now = self.clock.now();
        if counting_first_factor() {
            let Some(turn) = self.password_turn(uid, addr).await else {
                let why = Blocked::Client(now);
                self.password_refused(Some(uid), uid, addr, why).await?;
                return Ok(None);
            };
            if self.possession_blocked(uid, addr).await? {
                return Ok(None);
            }
            // The user-wide count first, as for a second factor: attempts
            // from many addresses at once are not all checked.
            let key = CounterKey::for_user(user_count_key(uid), uid);
            let Some(n) = self
                .count_first(&key, self.cfg.max_password_failures_per_user)
                .await?
            else {
                self.password_refused(Some(uid), uid, addr, Blocked::Client(now))
                    .await?;
                return Ok(None);
            };
            return Ok(Some(FactorAttempt {
                counted: Counted::FirstFactor(n),
                _turn: Some(turn),
            }));
        }
        if self.user_locked(uid).await?.is_some() {
            return Ok(None);
        }
        // Past the limit while others are still being checked: refused
        // unchecked (the one that reached the limit locks the user if wrong).
        let key = CounterKey::for_user(mfa_key(uid), uid);
        let Some(n) = self.count_first(&key, self.cfg.max_factor_failures).await? else {
            return Ok(None);
        };
        Ok(Some(FactorAttempt {
            counted: Counted::SecondFactor(n),
            _turn: None,
        }))
    }

    /// The attempt was wrong: counts it for the address (and, as a first
    /// factor, for the pair like a wrong password); true if it locked the user.
    pub async fn factor_attempt_failed(
        &self,
        attempt: FactorAttempt,
        uid: &str,
        addr: IpAddr,
    ) -> StoreResult<bool> {
        match attempt.counted {
            Counted::FirstFactor(n) => {
                self.count_password_failure(Some(uid), uid, addr, Blocked::No, Some(n))
                    .await
            }
            Counted::SecondFactor(n) => {
                let now = self.clock.now();
                let ip = CounterKey::anonymous(ip_key(&address_bucket(addr)));
                if self
                    .store
                    .record_failure(&ip, Self::secs(self.cfg.window), now)
                    .await?
                    >= self.cfg.max_failures_per_ip
                {
                    self.store.lock(&ip, now + Self::secs(self.cfg.lockout)).await?;
                }
                if n >= self.cfg.max_factor_failures {
                    self.lock_user_for_factors(uid).await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// The attempt was right: it takes back the failure it was counted as
    /// (best effort: a store error leaves it counted, the stricter way).
    pub async fn factor_attempt_succeeded(&self, attempt: FactorAttempt, uid: &str) {
        match attempt.counted {
            Counted::FirstFactor(_) => self.give_back(&user_count_key(uid)).await,
            Counted::SecondFactor(_) => self.give_back(&mfa_key(uid)).await,
        }
    }

    /// Takes one failure back from `key`; a store error leaves it counted.
    async fn give_back(&self, key: &str) {
        if let Err(e) = self.store.forgive_failure(key).await {
            tracing::warn!(error = %e, "an attempt counted before its check stays counted");
        }
    }

    async fn lock_user_for_factors(&self, uid: &str) -> StoreResult<()> {
        let until = self.clock.now() + Self::secs(self.cfg.lockout);
        self.store
            .lock(&CounterKey::for_user(user_lock(uid), uid), until)
            .await?;
        self.store
            .lock(&CounterKey::for_user(factor_lock(uid), uid), until)
            .await
    }

    /// Sets the key of [`Self::anonymous_subject`]. Replicas sharing a store
    /// must share it (the gateway derives it from the first session secret).
    pub fn with_subject_key(mut self, key: Secret) -> Self {
        self.subject_key = key;
        self
    }

    /// Keeps counting where `old` (the regulator a reload replaces) left
    /// off: sign-in transactions per address (when the limit is unchanged; a
    /// new limit starts a new count), and attempts taking turns.
    pub fn carrying_counts_of(mut self, old: &Regulator) -> Self {
        if old.cfg.max_transactions_per_ip_per_minute == self.cfg.max_transactions_per_ip_per_minute {
            self.transactions = old.transactions.clone();
        }
        // Attempts in flight in the old gateway still take turns with new ones.
        self.attempts = old.attempts.clone();
        self
    }

    /// What a login that names no user is counted under: a keyed hash of
    /// fixed length of the case-folded login, so an attacker-chosen login of
    /// any length never becomes part of a stored key.
    pub fn anonymous_subject(&self, login: &str) -> String {
        let mac = crate::crypto::hmac_sha256(self.subject_key.expose(), login.to_lowercase().as_bytes());
        format!("h:{}", hex::encode(&mac[..16]))
    }

    /// Admits one unauthenticated sign-in transaction from `addr` (at most
    /// `max_transactions_per_ip_per_minute` per address bucket and minute,
    /// counted in this process). `Err` says when the window ends.
    pub fn transaction_admitted(&self, addr: IpAddr) -> Result<RateInfo, RateInfo> {
        self.transactions.check(addr, self.clock.now())
    }

    fn secs(d: std::time::Duration) -> i64 {
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
    }

    /// The settings in force.
    pub fn config(&self) -> &RegulationConfig {
        &self.cfg
    }

    /// Whether a password attempt for `subject` (the user id, or the login for
    /// an unknown user) from `addr` is blocked.
    pub async fn password_blocked(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
    ) -> StoreResult<Blocked> {
        let now = self.clock.now();
        let bucket = address_bucket(addr);
        if let Some(uid) = user_id
            && let Some(until) = self.store.locked_until(&[&user_lock(uid)], now).await?
        {
            return Ok(Blocked::User(until));
        }
        let pair = pair_key(subject, &bucket);
        let ip = ip_key(&bucket);
        Ok(match self.store.locked_until(&[&pair, &ip], now).await? {
            Some(until) => Blocked::Client(until),
            None => Blocked::No,
        })
    }

    /// Takes a password attempt for `subject` (the user id, or an unknown
    /// login's [`Self::anonymous_subject`]) from `addr`: whether it is
    /// blocked and, when it may be checked, the user-wide count with it in:
    /// the attempt is counted toward `max_password_failures_per_user` before
    /// the password is checked, so attempts from many addresses at once are
    /// not all checked (past the limit one is refused as
    /// [`Blocked::Client`], not left counted). Report a right password with
    /// [`Self::password_attempt_succeeded`], a wrong one with
    /// [`Self::password_attempt_failed`].
    pub async fn password_attempt(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
    ) -> StoreResult<(Blocked, Option<u32>)> {
        let blocked = self.password_blocked(user_id, subject, addr).await?;
        if blocked != Blocked::No {
            return Ok((blocked, None));
        }
        let now = self.clock.now();
        let name = user_count_key(user_id.unwrap_or(subject));
        let key = match user_id {
            Some(uid) => CounterKey::for_user(name, uid),
            None => CounterKey::anonymous(name),
        };
        Ok(
            match self
                .count_first(&key, self.cfg.max_password_failures_per_user)
                .await?
            {
                Some(n) => (Blocked::No, Some(n)),
                None => (Blocked::Client(now), None),
            },
        )
    }

    /// Counts an attempt on `key` before it is checked: the count with it in
    /// while within `limit`; past it `None`, and the attempt is not left
    /// counted (it will not be checked).
    async fn count_first(&self, key: &CounterKey, limit: u32) -> StoreResult<Option<u32>> {
        let window = Self::secs(self.cfg.window);
        let n = self.store.record_failure(key, window, self.clock.now()).await?;
        if n > limit {
            self.give_back(&key.key).await;
            return Ok(None);
        }
        Ok(Some(n))
    }

    /// A password attempt taken with [`Self::password_attempt`] (user-wide
    /// count `counted`) was wrong; true if it locked the user.
    pub async fn password_attempt_failed(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
        counted: Option<u32>,
    ) -> StoreResult<bool> {
        self.count_password_failure(user_id, subject, addr, Blocked::No, counted)
            .await
    }

    /// A password attempt taken with [`Self::password_attempt`] was right:
    /// the pair's count is cleared and the user-wide count given back.
    pub async fn password_attempt_succeeded(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
        counted: Option<u32>,
    ) -> StoreResult<()> {
        self.password_succeeded(subject, addr).await?;
        if counted.is_some() {
            self.give_back(&user_count_key(user_id.unwrap_or(subject))).await;
        }
        Ok(())
    }

    /// Counts a checked, failed password attempt (it was not blocked);
    /// returns true if it locked the user.
    pub async fn password_failed(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
    ) -> StoreResult<bool> {
        self.count_password_failure(user_id, subject, addr, Blocked::No, None)
            .await
    }

    /// Counts a password attempt refused because of `why` (what
    /// [`Self::password_blocked`] answered), with the same store writes as
    /// [`Self::password_failed`] so the answer takes as long. It counts for
    /// the (user, address) pair and the address (a blocked client keeps
    /// itself blocked), never toward the user's lock: one address alone
    /// cannot lock a user out, and attempts against a locked user do not
    /// extend the lockout.
    pub async fn password_refused(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
        why: Blocked,
    ) -> StoreResult<()> {
        let why = if why == Blocked::No {
            // Refused for another reason: still never toward the user.
            Blocked::Client(self.clock.now())
        } else {
            why
        };
        self.count_password_failure(user_id, subject, addr, why, None)
            .await
            .map(|_| ())
    }

    /// `user_counted`: the user-wide count already taken before the check
    /// (with this attempt in it), so it is not counted twice.
    async fn count_password_failure(
        &self,
        user_id: Option<&str>,
        subject: &str,
        addr: IpAddr,
        blocked: Blocked,
        user_counted: Option<u32>,
    ) -> StoreResult<bool> {
        let now = self.clock.now();
        let window = Self::secs(self.cfg.window);
        let until = now + Self::secs(self.cfg.lockout);
        let bucket = address_bucket(addr);
        let tie = |k: String| match user_id {
            Some(uid) => CounterKey::for_user(k, uid),
            None => CounterKey::anonymous(k),
        };
        // A locked user takes no new lock of any kind; a blocked client may
        // extend its own block.
        let lock_client = !matches!(blocked, Blocked::User(_));
        let pair = tie(pair_key(subject, &bucket));
        if self.store.record_failure(&pair, window, now).await? >= self.cfg.max_password_failures
            && lock_client
        {
            self.store.lock(&pair, until).await?;
        }
        let ip = CounterKey::anonymous(ip_key(&bucket));
        if self.store.record_failure(&ip, window, now).await? >= self.cfg.max_failures_per_ip && lock_client {
            self.store.lock(&ip, until).await?;
        }
        // Unknown logins get the same per-user write as real users, so the
        // answer's timing does not tell whether the login exists; refused
        // attempts write to a key that locks nobody.
        let subject = user_id.unwrap_or(subject);
        if blocked != Blocked::No {
            self.store
                .record_failure(&tie(refused_key(subject)), window, now)
                .await?;
            return Ok(false);
        }
        let count = match user_counted {
            Some(n) => n,
            None => {
                self.store
                    .record_failure(&tie(user_count_key(subject)), window, now)
                    .await?
            }
        };
        if let Some(uid) = user_id
            && count >= self.cfg.max_password_failures_per_user
        {
            self.store
                .lock(&CounterKey::for_user(user_lock(uid), uid), until)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Clears the (user, address) pair's count after a correct password.
    pub async fn password_succeeded(&self, subject: &str, addr: IpAddr) -> StoreResult<()> {
        self.store
            .clear_failures(&pair_key(subject, &address_bucket(addr)))
            .await
    }

    /// Whether `uid` is locked (for second-factor attempts).
    pub async fn user_locked(&self, uid: &str) -> StoreResult<Option<UnixTime>> {
        self.store
            .locked_until(&[&user_lock(uid)], self.clock.now())
            .await
    }

    /// Until when `uid` is locked because of wrong second-factor codes (not
    /// passwords): only then may someone who gave the right password be told
    /// to wait (the challenge page; the password step only with
    /// `reveal_lockout`), since a stranger guessing passwords cannot cause
    /// such a lock.
    /// A lock from password failures stays unrevealed, so a locked account is
    /// no oracle for guessing its password. The later of the two locks counts.
    pub async fn factor_locked(&self, uid: &str) -> StoreResult<Option<UnixTime>> {
        let now = self.clock.now();
        if self
            .store
            .locked_until(&[&factor_lock(uid)], now)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        self.store
            .locked_until(&[&user_lock(uid), &factor_lock(uid)], now)
            .await
    }

    /// Whether the (user, address) pair or the address is blocked, whatever
    /// the user's own lock says.
    pub async fn client_blocked(&self, subject: &str, addr: IpAddr) -> StoreResult<bool> {
        let bucket = address_bucket(addr);
        let (pair, ip) = (pair_key(subject, &bucket), ip_key(&bucket));
        Ok(self
            .store
            .locked_until(&[&pair, &ip], self.clock.now())
            .await?
            .is_some())
    }

    /// Counts a failed second-factor attempt (and one for the address);
    /// returns true if it locked the user.
    pub async fn factor_failed(&self, uid: &str, addr: IpAddr) -> StoreResult<bool> {
        let now = self.clock.now();
        let window = Self::secs(self.cfg.window);
        let until = now + Self::secs(self.cfg.lockout);
        let ip = CounterKey::anonymous(ip_key(&address_bucket(addr)));
        if self.store.record_failure(&ip, window, now).await? >= self.cfg.max_failures_per_ip {
            self.store.lock(&ip, until).await?;
        }
        let key = CounterKey::for_user(mfa_key(uid), uid);
        if self.store.record_failure(&key, window, now).await? >= self.cfg.max_factor_failures {
            self.lock_user_for_factors(uid).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a possession-factor attempt by `uid` from `addr` is blocked:
    /// the user's lock for a second factor; as a first factor (see
    /// [`as_first_factor`]) also the (user, address) pair and address blocks.
    ///
    /// A refused first-factor attempt is counted here (like a refused
    /// password: for the pair and the address, never toward the user), so
    /// that it costs the same store writes as a wrong code.
    pub async fn possession_blocked(&self, uid: &str, addr: IpAddr) -> StoreResult<bool> {
        if counting_first_factor() {
            let why = self.password_blocked(Some(uid), uid, addr).await?;
            if why == Blocked::No {
                return Ok(false);
            }
            self.password_refused(Some(uid), uid, addr, why).await?;
            return Ok(true);
        }
        Ok(self.user_locked(uid).await?.is_some())
    }

    /// Counts a failed possession-factor attempt: as a second factor towards
    /// the user's lock, as a first factor like a wrong password. True if it
    /// locked the user.
    pub async fn possession_failed(&self, uid: &str, addr: IpAddr) -> StoreResult<bool> {
        if counting_first_factor() {
            return self.password_failed(Some(uid), uid, addr).await;
        }
        self.factor_failed(uid, addr).await
    }

    /// Clears every lock and count tied to `uid`; true if there were any.
    pub async fn unlock(&self, uid: &str) -> StoreResult<bool> {
        self.store.unlock_user(uid).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;

    fn regulator(clock: &ManualClock) -> Regulator {
        let cfg = RegulationConfig {
            max_factor_failures: 3,
            max_password_failures: 3,
            max_password_failures_per_user: 6,
            max_failures_per_ip: 10,
            max_transactions_per_ip_per_minute: 5,
            window: Duration::from_secs(300),
            lockout: Duration::from_secs(900),
            reveal_lockout: false,
        };
        Regulator::new(Arc::new(MemoryStore::new()), cfg, Arc::new(clock.clone()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Attempts in flight at once: each is counted before it is checked,
    /// so only `max_factor_failures` of them are checked at all.
    #[tokio::test]
    async fn factor_attempts_are_counted_before_they_are_checked() {
        let clock = ManualClock::new(1_000);
        let r = regulator(&clock);
        let mut in_flight = Vec::new();
        for _ in 0..10 {
            in_flight.push(r.factor_attempt("u1", ip("192.0.2.1")).await.unwrap());
        }
        assert_eq!(in_flight.iter().filter(|a| a.is_some()).count(), 3);
        assert!(
            r.factor_attempt("u2", ip("192.0.2.1")).await.unwrap().is_some(),
            "per user"
        );
        // The three checked turn out wrong: the last locks the user.
        let mut locked = Vec::new();
        for a in in_flight.into_iter().flatten() {
            locked.push(r.factor_attempt_failed(a, "u1", ip("192.0.2.1")).await.unwrap());
        }
        assert_eq!(locked, [false, false, true]);
        assert!(r.factor_attempt("u1", ip("192.0.2.1")).await.unwrap().is_none());
    }

    /// As a first factor (passwordless), attempts from many addresses at
    /// once are counted user-wide before they are checked: at most
    /// `max_password_failures_per_user` of them are checked.
    #[tokio::test]
    async fn first_factor_attempts_from_many_addresses_are_counted_first() {
        let clock = ManualClock::new(1_000);
        let r = regulator(&clock);
        as_first_factor(true, async {
            let mut in_flight = Vec::new();
            for i in 0..10 {
                let from = ip(&format!("198.51.100.{i}"));
                in_flight.push((r.factor_attempt("u1", from).await.unwrap(), from));
            }
            assert_eq!(in_flight.iter().filter(|(a, _)| a.is_some()).count(), 6);
            let mut locked = false;
            for (a, from) in in_flight {
                if let Some(a) = a {
                    locked = r.factor_attempt_failed(a, "u1", from).await.unwrap();
                }
            }
            assert!(locked, "the sixth wrong one locked the user");
            assert!(r.user_locked("u1").await.unwrap().is_some());
        })
        .await;
    }

    /// Password attempts from many addresses at once are counted user-wide
    /// before they are checked: at most `max_password_failures_per_user` are
    /// checked; a right one takes its count back.
    #[tokio::test]
    async fn password_attempts_are_counted_user_wide_before_they_are_checked() {
        let clock = ManualClock::new(1_000);
        let r = regulator(&clock);
        let mut in_flight = Vec::new();
        for i in 0..10 {
            let from = ip(&format!("198.51.100.{i}"));
            in_flight.push((r.password_attempt(Some("u1"), "u1", from).await.unwrap(), from));
        }
        let checked: Vec<_> = in_flight.iter().filter(|((b, _), _)| *b == Blocked::No).collect();
        assert_eq!(checked.len(), 6);
        assert!(
            in_flight
                .iter()
                .all(|((b, n), _)| (*b == Blocked::No) == n.is_some())
        );
        // Five wrong, then the sixth right: it gives its count back, so the
        // next attempt is checked, and locks the user when wrong.
        let mut locked = Vec::new();
        let checked: Vec<_> = checked.into_iter().map(|((_, n), from)| (*n, *from)).collect();
        for (n, from) in &checked[..5] {
            locked.push(
                r.password_attempt_failed(Some("u1"), "u1", *from, *n)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(locked, [false; 5]);
        let (n, from) = checked[5];
        r.password_attempt_succeeded(Some("u1"), "u1", from, n)
            .await
            .unwrap();
        let from = ip("203.0.113.1");
        let (blocked, n) = r.password_attempt(Some("u1"), "u1", from).await.unwrap();
        assert_eq!((blocked, n), (Blocked::No, Some(6)));
        assert!(
            r.password_attempt_failed(Some("u1"), "u1", from, n)
                .await
                .unwrap()
        );
    }

    /// A right code gives back the failure it was counted as: a user who
    /// signs in often is never locked by it; wrong ones still lock.
    #[tokio::test]
    async fn a_right_attempt_takes_its_count_back() {
        let clock = ManualClock::new(1_000);
        let r = regulator(&clock);
        for _ in 0..10 {
            let a = r.factor_attempt("u1", ip("192.0.2.1")).await.unwrap().unwrap();
            r.factor_attempt_succeeded(a, "u1").await;
        }
        assert!(r.user_locked("u1").await.unwrap().is_none());
        for i in 0..3 {
            let a = r.factor_attempt("u1", ip("192.0.2.1")).await.unwrap().unwrap();
            assert_eq!(
                r.factor_attempt_failed(a, "u1", ip("192.0.2.1")).await.unwrap(),
                i == 2
            );
        }
        assert!(r.factor_attempt("u1", ip("192.0.2.1")).await.unwrap().is_none());
    }

    /// At most `MAX_WAITING` attempts run or wait on one key; one given up
    /// while it waits gives its place back, and the table empties.
    #[tokio::test]
    async fn turns_are_capped_and_given_back_by_attempts_given_up() {
        let q = Arc::new(OneAtATime::default());
        let first = q.turn("k".into()).await.unwrap();
        let waiting: Vec<_> = (1..MAX_WAITING)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.turn("k".into()).await.is_some() })
            })
            .collect();
        while q.turns.lock().unwrap().get("k").map_or(0, |w| w.attempts) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        assert!(q.turn("k".into()).await.is_none(), "one too many");
        assert!(q.turn("other".into()).await.is_some(), "per key");
        let mut waiting = waiting.into_iter();
        let next = waiting.next().unwrap();
        for w in waiting {
            w.abort();
            assert!(w.await.unwrap_err().is_cancelled());
        }
        drop(first);
        assert!(next.await.unwrap(), "the next one went on");
        assert_eq!(q.keys(), 0, "nothing left behind");
    }

    #[tokio::test]
    async fn blocks_the_pair_before_the_user() {
        let clock = ManualClock::new(1_000);
        let r = regulator(&clock);
        for _ in 0..3 {
            assert!(
                !r.password_failed(Some("u1"), "u1", ip("192.0.2.1"))
                    .await
                    .unwrap()
            );
        }
        assert!(matches!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.1"))
                .await
                .unwrap(),
            Blocked::Client(_)
        ));
        // The same user from elsewhere is not blocked: a stranger cannot lock them out.
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.2"))
                .await
                .unwrap(),
            Blocked::No
        );
        for _ in 0..2 {
            assert!(
                !r.password_failed(Some("u1"), "u1", ip("192.0.2.2"))
                    .await
                    .unwrap()
            );
        }
        // The sixth failure overall locks the user everywhere.
        assert!(
            r.password_failed(Some("u1"), "u1", ip("192.0.2.3"))
                .await
                .unwrap()
        );
        assert!(matches!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.9"))
                .await
                .unwrap(),
            Blocked::User(_)
        ));
        // Lockouts end.
        clock.advance(901);
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.9"))
                .await
                .unwrap(),
            Blocked::No
        );
    }

    #[tokio::test]
    async fn blocks_a_noisy_address() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        for i in 0..10 {
            r.password_failed(None, &format!("nobody{i}"), ip("2001:db8::1"))
                .await
                .unwrap();
        }
        // Another address in the same /64 is the same bucket.
        assert!(matches!(
            r.password_blocked(None, "x", ip("2001:db8::2")).await.unwrap(),
            Blocked::Client(_)
        ));
        assert_eq!(
            r.password_blocked(None, "x", ip("2001:db9::1")).await.unwrap(),
            Blocked::No
        );
    }

    #[tokio::test]
    async fn success_clears_the_pair_and_unlock_clears_the_user() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        for _ in 0..2 {
            r.password_failed(Some("u1"), "u1", ip("192.0.2.1"))
                .await
                .unwrap();
        }
        r.password_succeeded("u1", ip("192.0.2.1")).await.unwrap();
        r.password_failed(Some("u1"), "u1", ip("192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.1"))
                .await
                .unwrap(),
            Blocked::No
        );
        for _ in 0..3 {
            r.factor_failed("u1", ip("192.0.2.1")).await.unwrap();
        }
        assert!(r.user_locked("u1").await.unwrap().is_some());
        assert!(r.unlock("u1").await.unwrap());
        assert!(r.user_locked("u1").await.unwrap().is_none());
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("192.0.2.1"))
                .await
                .unwrap(),
            Blocked::No
        );
    }

    #[tokio::test]
    async fn attempts_against_a_locked_user_do_not_extend_the_lock() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        for i in 0..6 {
            r.password_failed(Some("u1"), "u1", ip(&format!("192.0.2.{i}")))
                .await
                .unwrap();
        }
        let Blocked::User(until) = r
            .password_blocked(Some("u1"), "u1", ip("198.51.100.1"))
            .await
            .unwrap()
        else {
            panic!("locked")
        };
        clock.advance(600);
        r.password_refused(Some("u1"), "u1", ip("198.51.100.1"), Blocked::User(until))
            .await
            .unwrap();
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("198.51.100.1"))
                .await
                .unwrap(),
            Blocked::User(until)
        );
        clock.set(until);
        assert_eq!(
            r.password_blocked(Some("u1"), "u1", ip("198.51.100.1"))
                .await
                .unwrap(),
            Blocked::No
        );
    }

    #[tokio::test]
    async fn first_factor_failures_count_like_passwords() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        // As a first factor: three failures block only this (user, address) pair...
        for _ in 0..3 {
            as_first_factor(true, r.possession_failed("u1", ip("192.0.2.1")))
                .await
                .unwrap();
        }
        assert!(
            as_first_factor(true, r.possession_blocked("u1", ip("192.0.2.1")))
                .await
                .unwrap()
        );
        assert!(
            !as_first_factor(true, r.possession_blocked("u1", ip("192.0.2.2")))
                .await
                .unwrap()
        );
        // ...and the user is not locked: their password and second factor still work.
        assert!(r.user_locked("u1").await.unwrap().is_none());
        assert!(!r.possession_blocked("u1", ip("192.0.2.1")).await.unwrap());
        // As a second factor the same three failures lock the user.
        for _ in 0..3 {
            r.possession_failed("u2", ip("192.0.2.1")).await.unwrap();
        }
        assert!(r.user_locked("u2").await.unwrap().is_some());
    }

    /// What the sign-in paths do: check, then count as failed or refused.
    async fn wrong_password(r: &Regulator, uid: &str, from: &str) -> Blocked {
        let addr = ip(from);
        let why = r.password_blocked(Some(uid), uid, addr).await.unwrap();
        if why == Blocked::No {
            r.password_failed(Some(uid), uid, addr).await.unwrap();
        } else {
            r.password_refused(Some(uid), uid, addr, why).await.unwrap();
        }
        why
    }

    #[tokio::test]
    async fn one_address_alone_never_locks_the_user() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        // Far more than the per-user limit (6), from one address, and again
        // after every lockout ends.
        for round in 0..3 {
            for _ in 0..60 {
                wrong_password(&r, "u1", "192.0.2.66").await;
            }
            assert!(
                matches!(
                    r.password_blocked(Some("u1"), "u1", ip("192.0.2.66"))
                        .await
                        .unwrap(),
                    Blocked::Client(_)
                ),
                "round {round}: the attacker's pair stays blocked"
            );
            assert!(r.user_locked("u1").await.unwrap().is_none(), "round {round}");
            assert_eq!(
                r.password_blocked(Some("u1"), "u1", ip("198.51.100.7"))
                    .await
                    .unwrap(),
                Blocked::No,
                "round {round}: the user signs in from elsewhere"
            );
            clock.advance(901);
        }
    }

    #[tokio::test]
    async fn a_noisy_address_adds_nothing_once_blocked() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        // Three checked failures from .1 block that pair; more from .1 are refused.
        for _ in 0..20 {
            wrong_password(&r, "u1", "192.0.2.1").await;
        }
        // Two checked failures elsewhere: 5 checked in all, below 6.
        for from in ["192.0.2.2", "192.0.2.3"] {
            assert_eq!(wrong_password(&r, "u1", from).await, Blocked::No);
        }
        assert!(r.user_locked("u1").await.unwrap().is_none());
        // The sixth checked failure locks the user everywhere.
        assert_eq!(wrong_password(&r, "u1", "192.0.2.4").await, Blocked::No);
        assert!(r.user_locked("u1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn distributed_guessing_still_locks() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        for i in 0..6 {
            assert_eq!(
                wrong_password(&r, "u1", &format!("203.0.113.{i}")).await,
                Blocked::No
            );
        }
        assert!(r.user_locked("u1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn refused_first_factor_attempts_do_not_count_toward_the_user() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock);
        // Passwordless codes from one address: after 3 the pair is blocked,
        // and the refused ones never reach the user's count.
        for _ in 0..30 {
            as_first_factor(true, async {
                if !r.possession_blocked("u1", ip("192.0.2.1")).await.unwrap() {
                    r.possession_failed("u1", ip("192.0.2.1")).await.unwrap();
                }
            })
            .await;
        }
        for from in ["192.0.2.2", "192.0.2.3"] {
            assert_eq!(wrong_password(&r, "u1", from).await, Blocked::No);
        }
        assert!(r.user_locked("u1").await.unwrap().is_none());
    }

    #[test]
    fn unknown_logins_are_counted_under_a_keyed_hash() {
        let clock = ManualClock::new(0);
        let r = regulator(&clock).with_subject_key(Secret::new("k1"));
        let huge = "x".repeat(1_500_000);
        let h = r.anonymous_subject(&huge);
        assert_eq!(h.len(), 34, "{h}");
        assert!(!h.contains("xxxx"));
        assert_eq!(r.anonymous_subject("Nobody"), r.anonymous_subject("nobody"));
        assert_ne!(r.anonymous_subject("nobody"), r.anonymous_subject("nobody2"));
        let other = regulator(&clock).with_subject_key(Secret::new("k2"));
        assert_ne!(r.anonymous_subject("nobody"), other.anonymous_subject("nobody"));
    }

    #[test]
    fn buckets_addresses() {
        assert_eq!(address_bucket(ip("192.0.2.1")), "192.0.2.1");
        assert_eq!(address_bucket(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(address_bucket(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
    }
}
