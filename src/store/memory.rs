//! The in-memory store (`store.kind = "memory"`): for tests, the demo and
//! single-process deployments that accept losing state on restart.
//!
//! Maps are `DashMap`s; no `Ref` is ever held across an `.await` (there are no
//! awaits inside) or while inserting into the same map.

use std::sync::Mutex;

use async_trait::async_trait;
use dashmap::DashMap;

use super::{CounterKey, RevocationBatch, RevocationEvent, Store, StoreResult};
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

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<()> {
        self.locks.retain(|_, l| l.until > now);
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
