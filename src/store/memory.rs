//! The in-memory store (`store.kind = "memory"`): for tests, the demo and
//! single-process deployments that accept losing state on restart.
//!
//! Maps are `DashMap`s; no `Ref` is ever held across an `.await` (there are no
//! awaits inside) or while inserting into the same map.

use std::sync::Mutex;

use async_trait::async_trait;
use dashmap::DashMap;

use super::{
    AuditQuery, AuditRecord, CounterKey, FactorRecord, FactorStatus, RevocationBatch, RevocationEvent,
    SealedSecret, Store, StoreError, StoreResult, TransactionRecord, UserChanges, UserPatch, UserRecord,
    UserStatus, UserWrite,
};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
struct Counter {
    user_id: Option<String>,
    window_start: UnixTime,
    count: u32,
}

#[derive(Debug, Clone)]
struct Lock {
    user_id: Option<String>,
    until: UnixTime,
}

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    epochs: DashMap<String, u64>,
    /// The revocation log: (seq, event), seq increasing from 1.
    revocations: Mutex<Vec<(i64, RevocationEvent)>>,
    counters: DashMap<String, Counter>,
    locks: DashMap<String, Lock>,
    /// Factors in insertion order (small per user; scans are fine here).
    factors: Mutex<Vec<FactorRecord>>,
    totp_steps: DashMap<String, i64>,
    /// user id -> recovery code hashes.
    recovery: DashMap<String, Vec<String>>,
    transactions: DashMap<String, TransactionRecord>,
    /// Stored users and their change log, under one lock.
    users: Mutex<Users>,
    /// Audit events in insertion (`seq`) order, and the last `seq` given.
    /// The audit log, its last sequence number, and the uuids it holds (a
    /// duplicate is refused, as the SQL stores' unique key does, without a
    /// scan of the whole log per insert).
    audit: Mutex<(Vec<AuditRecord>, i64, std::collections::HashSet<String>)>,
}

/// Users by id, deletion entries, and the last change sequence number.
#[derive(Debug, Default)]
struct Users {
    by_id: std::collections::BTreeMap<String, UserRecord>,
    deleted: std::collections::BTreeMap<String, i64>,
    seq: i64,
}

impl Users {
    fn login_taken(&self, login: &str, except: Option<&str>) -> bool {
        let key = login.to_lowercase();
        self.by_id
            .values()
            .any(|u| u.login.to_lowercase() == key && Some(u.id.as_str()) != except)
    }
}

impl MemoryStore {
    /// A new empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self, event: RevocationEvent) {
        let mut log = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        let seq = log.last().map_or(1, |(s, _)| s + 1);
        log.push((seq, event));
    }

    /// Deletes a factor of `user_id` whose status passes `status_ok` (and its
    /// TOTP step record).
    fn delete_factor_if(
        &self,
        user_id: &str,
        factor_id: &str,
        status_ok: impl Fn(FactorStatus) -> bool,
    ) -> StoreResult<bool> {
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        let before = f.len();
        f.retain(|f| !(f.id == factor_id && f.user_id == user_id && status_ok(f.status)));
        let deleted = f.len() != before;
        drop(f);
        if deleted {
            self.totp_steps.remove(factor_id);
        }
        Ok(deleted)
    }
}

/// What the SQL backends answer for a primary key that exists (a unique
/// violation), so callers see the same failure from every backend.
fn duplicate(op: &str) -> StoreError {
    StoreError::Unavailable(format!("{op}: the id exists already"))
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn revoke_session(&self, sid: &str, expires_at: UnixTime) -> StoreResult<()> {
        self.log(RevocationEvent::Session {
            sid: sid.to_owned(),
            expires_at,
        });
        Ok(())
    }

    async fn bump_epoch(&self, user_id: &str) -> StoreResult<u64> {
        let epoch = {
            let mut e = self.epochs.entry(user_id.to_owned()).or_insert(0);
            *e += 1;
            *e
        };
        self.log(RevocationEvent::Epoch {
            user_id: user_id.to_owned(),
            epoch,
        });
        Ok(epoch)
    }

    async fn epochs(&self) -> StoreResult<Vec<(String, u64)>> {
        Ok(self
            .epochs
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect())
    }

    async fn revocations_since(&self, cursor: i64, now: UnixTime) -> StoreResult<RevocationBatch> {
        let log = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = RevocationBatch {
            events: Vec::new(),
            cursor,
            more: false,
        };
        for (seq, ev) in log.iter().filter(|(s, _)| *s > cursor) {
            batch.cursor = *seq;
            match ev {
                RevocationEvent::Session { expires_at, .. } if *expires_at <= now => {}
                _ => batch.events.push(ev.clone()),
            }
        }
        Ok(batch)
    }

    async fn record_failure(&self, key: &CounterKey, window: i64, now: UnixTime) -> StoreResult<u32> {
        let mut c = self.counters.entry(key.key.clone()).or_insert(Counter {
            user_id: key.user_id.clone(),
            window_start: now,
            count: 0,
        });
        if c.window_start + window <= now {
            c.window_start = now;
            c.count = 0;
        }
        c.count = c.count.saturating_add(1);
        Ok(c.count)
    }

    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        self.counters.remove(key);
        Ok(())
    }

    async fn forgive_failure(&self, key: &str) -> StoreResult<()> {
        // As in SQL: a count of one goes, a larger one drops by one.
        self.counters.remove_if_mut(key, |_, c| {
            c.count = c.count.saturating_sub(1);
            c.count == 0
        });
        Ok(())
    }

    async fn lock(&self, key: &CounterKey, until: UnixTime) -> StoreResult<()> {
        let mut l = self.locks.entry(key.key.clone()).or_insert(Lock {
            user_id: key.user_id.clone(),
            until,
        });
        l.until = l.until.max(until);
        Ok(())
    }

    async fn locked_until(&self, keys: &[&str], now: UnixTime) -> StoreResult<Option<UnixTime>> {
        Ok(keys
            .iter()
            .filter_map(|k| self.locks.get(*k).map(|l| l.until))
            .filter(|until| *until > now)
            .max())
    }

    async fn unlock_user(&self, user_id: &str) -> StoreResult<bool> {
        let mine = |u: &Option<String>| u.as_deref() == Some(user_id);
        let before = self.locks.len() + self.counters.len();
        self.locks.retain(|_, l| !mine(&l.user_id));
        self.counters.retain(|_, c| !mine(&c.user_id));
        Ok(self.locks.len() + self.counters.len() != before)
    }

    async fn insert_factor(&self, factor: &FactorRecord) -> StoreResult<()> {
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        if f.iter().any(|f| f.id == factor.id) {
            return Err(duplicate("insert factor"));
        }
        f.push(factor.clone());
        Ok(())
    }

    async fn get_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<Option<FactorRecord>> {
        let f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f.iter()
            .find(|f| f.id == factor_id && f.user_id == user_id)
            .cloned())
    }

    async fn list_factors(&self, user_id: &str) -> StoreResult<Vec<FactorRecord>> {
        let f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        let mut mine: Vec<FactorRecord> = f.iter().filter(|f| f.user_id == user_id).cloned().collect();
        // Stable: insertion order among factors created in the same second.
        mine.sort_by_key(|f| f.created);
        Ok(mine)
    }

    async fn activate_factor(&self, user_id: &str, factor_id: &str, now: UnixTime) -> StoreResult<bool> {
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        match f.iter_mut().find(|f| {
            f.id == factor_id && f.user_id == user_id && f.status == FactorStatus::PendingActivation
        }) {
            Some(f) => {
                f.status = FactorStatus::Active;
                f.last_updated = now;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn update_factor_profile(
        &self,
        user_id: &str,
        factor_id: &str,
        expected: FactorStatus,
        profile: &serde_json::Value,
        status: FactorStatus,
        now: UnixTime,
    ) -> StoreResult<bool> {
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        match f
            .iter_mut()
            .find(|f| f.id == factor_id && f.user_id == user_id && f.status == expected)
        {
            Some(f) => {
                f.profile = profile.clone();
                f.status = status;
                f.last_updated = now;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool> {
        self.delete_factor_if(user_id, factor_id, |_| true)
    }

    async fn delete_pending_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool> {
        self.delete_factor_if(user_id, factor_id, |s| s == FactorStatus::PendingActivation)
    }

    async fn claim_totp_step(&self, factor_id: &str, step: i64) -> StoreResult<bool> {
        Ok(match self.totp_steps.entry(factor_id.to_owned()) {
            dashmap::Entry::Vacant(v) => {
                v.insert(step);
                true
            }
            dashmap::Entry::Occupied(mut last) if step > *last.get() => {
                last.insert(step);
                true
            }
            dashmap::Entry::Occupied(_) => false,
        })
    }

    async fn secret_key_ids(&self) -> StoreResult<Vec<String>> {
        let f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = f
            .iter()
            .filter_map(|f| f.secret.as_ref().map(|s| s.key_id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn factors_sealed_with_other_keys(
        &self,
        key_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<FactorRecord>> {
        let f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f.iter()
            .filter(|f| f.secret.as_ref().is_some_and(|s| s.key_id != key_id))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn replace_factor_secret(
        &self,
        factor_id: &str,
        old: &SealedSecret,
        new: &SealedSecret,
    ) -> StoreResult<bool> {
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        match f
            .iter_mut()
            .find(|f| f.id == factor_id && f.secret.as_ref() == Some(old))
        {
            Some(f) => {
                f.secret = Some(new.clone());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
        _now: UnixTime,
    ) -> StoreResult<()> {
        let mut hashes = hashes.to_vec();
        // A set, as in the SQL backends (the hash is part of the key).
        hashes.sort();
        hashes.dedup();
        self.recovery.insert(user_id.to_owned(), hashes);
        Ok(())
    }

    async fn use_recovery_code(&self, user_id: &str, hash: &str) -> StoreResult<bool> {
        Ok(match self.recovery.get_mut(user_id) {
            Some(mut codes) => {
                let before = codes.len();
                codes.retain(|h| h != hash);
                codes.len() != before
            }
            None => false,
        })
    }

    async fn recovery_codes_left(&self, user_id: &str) -> StoreResult<u32> {
        Ok(self
            .recovery
            .get(user_id)
            .map_or(0, |c| u32::try_from(c.len()).unwrap_or(u32::MAX)))
    }

    async fn put_transaction(&self, t: &TransactionRecord) -> StoreResult<()> {
        match self.transactions.entry(t.id.clone()) {
            dashmap::Entry::Occupied(_) => Err(duplicate("put transaction")),
            dashmap::Entry::Vacant(v) => {
                v.insert(t.clone());
                Ok(())
            }
        }
    }

    async fn get_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>> {
        Ok(self
            .transactions
            .get(id)
            .filter(|t| t.kind == kind && t.expires_at > now)
            .map(|t| t.clone()))
    }

    async fn update_transaction(&self, t: &TransactionRecord, now: UnixTime) -> StoreResult<bool> {
        Ok(match self.transactions.get_mut(&t.id) {
            Some(mut cur) if cur.kind == t.kind && cur.version == t.version && cur.expires_at > now => {
                *cur = TransactionRecord {
                    version: t.version + 1,
                    ..t.clone()
                };
                true
            }
            _ => false,
        })
    }

    async fn take_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>> {
        Ok(self
            .transactions
            .remove_if(id, |_, t| t.kind == kind)
            .map(|(_, t)| t)
            .filter(|t| t.expires_at > now))
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<UserWrite> {
        let mut u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if u.by_id.contains_key(&user.id) || u.deleted.contains_key(&user.id) {
            return Err(duplicate("create user"));
        }
        if u.login_taken(&user.login, None) {
            return Ok(UserWrite::LoginTaken);
        }
        u.seq += 1;
        let stored = UserRecord {
            seq: u.seq,
            ..user.clone()
        };
        u.by_id.insert(stored.id.clone(), stored.clone());
        Ok(UserWrite::Written(stored))
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        Ok(u.by_id.get(id).cloned())
    }

    async fn get_user_by_login(&self, login: &str) -> StoreResult<Option<UserRecord>> {
        let key = login.to_lowercase();
        let u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        Ok(u.by_id.values().find(|r| r.login.to_lowercase() == key).cloned())
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRecord>> {
        let u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let take = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(match after {
            Some(a) => u
                .by_id
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .map(|(_, r)| r.clone())
                .take(take)
                .collect(),
            None => u.by_id.values().take(take).cloned().collect(),
        })
    }

    async fn update_user(&self, id: &str, patch: &UserPatch, now: UnixTime) -> StoreResult<UserWrite> {
        let mut u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !u.by_id.contains_key(id) {
            return Ok(UserWrite::NotFound);
        }
        if let Some(login) = &patch.login
            && u.login_taken(login, Some(id))
        {
            return Ok(UserWrite::LoginTaken);
        }
        u.seq += 1;
        let seq = u.seq;
        let Some(r) = u.by_id.get_mut(id) else {
            return Ok(UserWrite::NotFound);
        };
        if let Some(login) = &patch.login {
            r.login = login.clone();
        }
        if let Some(profile) = &patch.profile {
            r.profile = profile.clone();
        }
        if let Some(hash) = &patch.password_hash {
            r.password_hash = Some(hash.clone());
            r.password_changed = Some(now);
        }
        if let Some(status) = patch.status
            && status != r.status
        {
            r.status = status;
            r.status_changed = Some(now);
            if status == UserStatus::Active && r.activated.is_none() {
                r.activated = Some(now);
            }
        }
        r.last_updated = now;
        r.seq = seq;
        Ok(UserWrite::Written(r.clone()))
    }

    async fn delete_user(&self, id: &str, _now: UnixTime) -> StoreResult<bool> {
        let mut u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if u.by_id.remove(id).is_none() {
            return Ok(false);
        }
        u.seq += 1;
        let seq = u.seq;
        u.deleted.insert(id.to_owned(), seq);
        drop(u);
        let mut f = self.factors.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = f
            .iter()
            .filter(|f| f.user_id == id)
            .map(|f| f.id.clone())
            .collect();
        f.retain(|f| f.user_id != id);
        drop(f);
        for factor_id in gone {
            self.totp_steps.remove(&factor_id);
        }
        self.recovery.remove(id);
        Ok(true)
    }

    async fn users_changed_since(&self, cursor: i64, limit: u32) -> StoreResult<UserChanges> {
        let u = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries: Vec<(i64, Option<&UserRecord>, &str)> = u
            .by_id
            .values()
            .filter(|r| r.seq > cursor)
            .map(|r| (r.seq, Some(r), r.id.as_str()))
            .chain(
                u.deleted
                    .iter()
                    .filter(|(_, s)| **s > cursor)
                    .map(|(id, s)| (*s, None, id.as_str())),
            )
            .collect();
        entries.sort_by_key(|e| e.0);
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut out = UserChanges {
            cursor,
            ..UserChanges::default()
        };
        for (seq, record, id) in entries {
            out.cursor = seq;
            match record {
                Some(r) => out.users.push(r.clone()),
                None => out.deleted.push((id.to_owned(), seq)),
            }
        }
        Ok(out)
    }

    async fn insert_audit_events(&self, events: &[AuditRecord]) -> StoreResult<()> {
        let mut audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let (log, seq, uuids) = &mut *audit;
        let mut batch = std::collections::HashSet::with_capacity(events.len());
        if events
            .iter()
            .any(|e| uuids.contains(&e.uuid) || !batch.insert(e.uuid.as_str()))
        {
            return Err(StoreError::Unavailable("audit event uuid exists".into()));
        }
        for e in events {
            uuids.insert(e.uuid.clone());
            *seq += 1;
            log.push(AuditRecord {
                seq: *seq,
                ..e.clone()
            });
        }
        Ok(())
    }

    async fn query_audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let key = |e: &AuditRecord| (e.published_ms, e.seq);
        let order = |a: &&AuditRecord, b: &&AuditRecord| {
            let o = key(a).cmp(&key(b));
            if query.descending { o.reverse() } else { o }
        };
        let mut hits: Vec<&AuditRecord> = audit
            .0
            .iter()
            .filter(|e| query.since_ms.is_none_or(|s| e.published_ms >= s))
            .filter(|e| query.until_ms.is_none_or(|u| e.published_ms < u))
            .filter(|e| query.q.as_deref().is_none_or(|q| e.search.contains(q)))
            .filter(|e| {
                query.after.is_none_or(|a| {
                    let c = (a.published_ms, a.seq);
                    if query.descending { key(e) < c } else { key(e) > c }
                })
            })
            .collect();
        // Only the page is sorted and copied, not every matching event (keys
        // are unique: `seq` is).
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        if limit == 0 {
            hits.clear();
        } else if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, order);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(order);
        Ok(hits.into_iter().cloned().collect())
    }

    async fn purge_audit_events(&self, before_ms: i64) -> StoreResult<u64> {
        let mut audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let (log, _, uuids) = &mut *audit;
        let n = log.len();
        log.retain(|e| {
            let keep = e.published_ms >= before_ms;
            if !keep {
                uuids.remove(&e.uuid);
            }
            keep
        });
        Ok((n - log.len()) as u64)
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<()> {
        self.locks.retain(|_, l| l.until > now);
        self.transactions.retain(|_, t| t.expires_at > now);
        // Counters whose window ended long ago carry nothing.
        self.counters.retain(|_, c| c.window_start + 86_400 > now);
        let mut log = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the newest entry so sequence numbers keep increasing.
        let last = log.last().map(|(s, _)| *s);
        log.retain(|(s, ev)| {
            Some(*s) == last
                || !matches!(ev, RevocationEvent::Session { expires_at, .. } if *expires_at <= now)
        });
        Ok(())
    }
}
