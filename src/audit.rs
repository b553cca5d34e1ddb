//! Audit events into the store, for `GET /api/v1/logs` (SPEC section 14).
//!
//! Call sites keep emitting audit events with [`crate::audit!`] (target
//! `portcullis::audit`); [`AuditLayer`], installed beside the log formatter
//! by `telemetry::init`, copies each one into a bounded channel. A
//! background writer ([`start`]) drains it in batches into the store (the
//! shared one, so every replica's events land in one place) and purges
//! events older than `audit.retention` once a minute.
//!
//! Writing never slows or fails a request: the layer only does a
//! non-blocking `try_send`; when the channel is full (the store slower than
//! the traffic) the event is dropped, counted in
//! `portcullis_audit_dropped_total` and the writer logs it once. The log
//! line is still written either way.
//!
//! What is stored is the Okta System Log object ([`to_record`]), built from
//! an allow-list of fields: a field not named there (and so any secret a
//! future call site might pass by mistake) never reaches the store.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::store::{AuditRecord, SharedStore};

/// The target audit events are logged under.
pub const TARGET: &str = "portcullis::audit";
/// Events waiting for the writer, at most.
pub const QUEUE: usize = 8192;
/// Events written in one store call, at most.
const BATCH: usize = 256;
/// How often events past the retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// One audit event as emitted: when, and its fields as text.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Field name to value (`event` is our event name).
    pub fields: BTreeMap<String, String>,
}

/// The writers' channels in this process (normally one: one gateway; a
/// process running several gateways gives every event to each of them).
static SENDERS: RwLock<Vec<mpsc::Sender<RawEvent>>> = RwLock::new(Vec::new());
/// Events dropped because the channel was full (or the store refused them).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Hands an event to the writers without waiting; counts it as dropped when
/// a queue is full.
pub fn submit(event: RawEvent) {
    let mut closed = false;
    {
        let senders = SENDERS.read().unwrap_or_else(|p| p.into_inner());
        for tx in senders.iter() {
            match tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped(1),
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
    }
    if closed {
        // A stopped gateway's writer: forget it.
        SENDERS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| !tx.is_closed());
    }
}

fn dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("portcullis_audit_dropped_total").increment(n);
}

/// The tracing layer that copies audit events to the writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLayer {
    // No `register_callsite` or `enabled`: in tracing-subscriber a layer's
    // `enabled` is a global filter, and saying "no" to other events here
    // would silence the log formatter too. Events are picked in `on_event`.
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut v = Fields::default();
        event.record(&mut v);
        submit(RawEvent {
            at_ms: now_ms(),
            fields: v.0,
        });
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.0.insert(field.name().to_owned(), s);
    }
}

/// Wall-clock Unix milliseconds. Not `crate::clock`: an event is stamped
/// inside the tracing layer, which belongs to no gateway (and so to no
/// gateway's clock); the retention purge uses the same time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A running writer (see [`start`]).
pub struct Writer {
    /// Its channel's sender, as registered: to take it out again.
    tx: mpsc::Sender<RawEvent>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a writer on `store`; events older than `retention` are purged.
pub fn start(store: SharedStore, retention: Duration) -> Writer {
    metrics::counter!("portcullis_audit_dropped_total").increment(0);
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut senders = SENDERS.write().unwrap_or_else(|p| p.into_inner());
    senders.retain(|tx| !tx.is_closed());
    senders.push(tx.clone());
    drop(senders);
    Writer {
        tx,
        task: tokio::spawn(write_loop(store, rx, retention)),
    }
}

impl Writer {
    /// Stops the writer at once (queued events are lost).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Lets this writer store what it was given, then end, waiting up to
    /// `within`: for a process about to exit (a `users` command, `store
    /// rotate-key`, the end of `serve`), whose queued events would otherwise
    /// go with its aborted task. Other writers in the process go on; events
    /// emitted afterwards reach only them (and the log).
    pub async fn finish(self, within: Duration) {
        SENDERS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| !tx.same_channel(&self.tx));
        // The last sender gone, the writer drains its queue and ends.
        drop(self.tx);
        let _ = tokio::time::timeout(within, self.task).await;
    }
}

async fn write_loop(store: SharedStore, mut rx: mpsc::Receiver<RawEvent>, retention: Duration) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(BATCH);
    let mut reported_drops = 0u64;
    let mut failing = false;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    return;
                }
                let records: Vec<AuditRecord> = buf.drain(..).map(|e| to_record(&e)).collect();
                let mut result = store.insert_audit_events(&records).await;
                if result.is_err() {
                    // One retry after a pause; the queue absorbs the wait.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    result = store.insert_audit_events(&records).await;
                }
                match result {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("audit events are written to the store again");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        dropped(records.len() as u64);
                        if !failing {
                            failing = true;
                            tracing::error!(error = %e, "writing audit events to the store failed; they are in the log only");
                        }
                    }
                }
            }
            _ = purge.tick() => {
                if let Err(e) = store.purge_audit_events(now_ms().saturating_sub(retention_ms)).await {
                    tracing::warn!(error = %e, "purging old audit events failed");
                }
            }
        }
        let total = DROPPED.load(Ordering::Relaxed);
        if total > reported_drops && reported_drops == 0 {
            tracing::warn!(
                dropped = total,
                "audit events dropped: the store is slower than the traffic (see portcullis_audit_dropped_total)"
            );
        }
        reported_drops = reported_drops.max(total);
    }
}

// ---- the System Log shape -------------------------------------------------

/// What one of our events is in Okta's terms.
struct Kind {
    event_type: &'static str,
    message: &'static str,
}

/// Our event name to the Okta `eventType` and `displayMessage`. Events
/// without an Okta equivalent keep our name under `portcullis.`.
fn kind(event: &str, fields: &BTreeMap<String, String>) -> Kind {
    let k = |event_type, message| Kind { event_type, message };
    match event {
        "session.started" => k("user.session.start", "User login to Portcullis"),
        "session.revoked" => k("user.session.end", "User logout from Portcullis"),
        "sessions.revoked" => k("user.session.clear", "Clear user session"),
        "signin.password.succeeded" | "signin.password.failed" | "signin.password.refused" => k(
            "user.authentication.verify",
            "Verify user identity with a password",
        ),
        "factor.verified" | "factor.verify.failed" | "factor.verify.refused" | "factor.verified.api" => k(
            "user.authentication.auth_via_mfa",
            "Authentication of user via MFA",
        ),
        "signin.passwordless.succeeded" => {
            k("user.authentication.auth_via_mfa", "Passwordless sign-in via MFA")
        }
        "user.locked" => k("user.account.lock", "Max sign in attempts exceeded"),
        "user.unlocked" => k("user.account.unlock_by_admin", "Unlock user account by admin"),
        "factor.activated" | "factor.activated.api" => {
            k("user.mfa.factor.activate", "Activate factor or authenticator")
        }
        "factor.removed" | "factor.removed.api" => {
            k("user.mfa.factor.deactivate", "Reset factor or authenticator")
        }
        "factors.reset" | "admin.factors.reset" | "user.factors.reset" => {
            k("user.mfa.factor.reset_all", "Reset all factors for user")
        }
        "request.path_refused" | "request.method_refused" | "admin.refused" => {
            k("security.request.blocked", "Request blocked")
        }
        "admin.user.created" => k("user.lifecycle.create", "Create user"),
        "admin.user.deleted" => k("user.lifecycle.delete.completed", "Delete user"),
        "admin.user.updated" => k("user.account.update_profile", "Update user profile"),
        "admin.user.lifecycle" => match fields.get("action").map(String::as_str) {
            Some("activate" | "user.lifecycle.activate") => k("user.lifecycle.activate", "Activate user"),
            Some("suspend" | "user.lifecycle.suspend") => k("user.lifecycle.suspend", "Suspend user"),
            Some("unsuspend" | "user.lifecycle.unsuspend") => k("user.lifecycle.unsuspend", "Unsuspend user"),
            _ => k("portcullis.admin.user.lifecycle", "User lifecycle change"),
        },
        _ => k("", ""),
    }
}

/// SUCCESS, FAILURE or DENY from our event name.
fn result(event: &str) -> &'static str {
    if event.contains("failed") || event.ends_with(".decoy") {
        "FAILURE"
    } else if event.contains("refused") || event.ends_with(".limited") {
        "DENY"
    } else {
        "SUCCESS"
    }
}

/// Fields copied into `debugContext.debugData` (anything else is dropped).
const DEBUG_FIELDS: &[&str] = &[
    "factor_type",
    "level",
    "method",
    "purpose",
    "action",
    "status",
    "count",
    "was_locked",
    "password_changed",
    "decision",
    "result",
    "kind",
    "request_id",
    "path",
];

/// The stored record of an event: the System Log object and its index text.
pub fn to_record(e: &RawEvent) -> AuditRecord {
    let f = &e.fields;
    let get = |k: &str| f.get(k).map(|v| unquote(v)).filter(|v| !v.is_empty());
    let event = get("event").unwrap_or_else(|| "unknown".into());
    let kind = kind(&event, f);
    let event_type = if kind.event_type.is_empty() {
        format!("portcullis.{event}")
    } else {
        kind.event_type.to_owned()
    };
    let message = if kind.message.is_empty() {
        event.replace(['.', '_'], " ")
    } else {
        kind.message.to_owned()
    };
    let result = result(&event);
    let severity = match result {
        "SUCCESS" if event_type != "user.account.lock" => "INFO",
        _ => "WARN",
    };
    let login = get("user").or_else(|| get("login"));
    let user_id = get("user_id");
    let user = login.as_ref().map(|l| {
        json!({
            "id": user_id.clone().unwrap_or_else(|| l.clone()),
            "type": "User",
            "alternateId": l,
            "displayName": l,
        })
    });
    // An admin token acted (admin API, or a factor call with a token).
    let token = get("token").and_then(|t| t.parse::<usize>().ok());
    let by_admin = token.is_some() || get("actor").as_deref() == Some("admin");
    let admin_actor = |n: Option<usize>| {
        let id = n.map_or_else(|| "admin".to_owned(), |n| format!("admin-token-{n}"));
        json!({ "id": id, "type": "ApiToken", "alternateId": id, "displayName": "Admin API token" })
    };
    let system_actor = json!({
        "id": "portcullis", "type": "SystemPrincipal", "alternateId": "system", "displayName": "Portcullis",
    });
    // `portcullis users ...` on the command line acted on the user.
    let by_cli = get("actor").as_deref() == Some("cli");
    let cli_actor = json!({
        "id": "cli", "type": "SystemPrincipal", "alternateId": "cli", "displayName": "portcullis command line",
    });
    // An administrator signed in to the admin console acted (`console:<login>`).
    let console_admin = get("actor").and_then(|a| a.strip_prefix("console:").map(str::to_owned));
    let console_actor =
        |login: &str| json!({ "id": login, "type": "User", "alternateId": login, "displayName": login });
    let (actor, mut target) = match (&user, by_admin) {
        (Some(u), _) if console_admin.is_some() => (
            console_actor(console_admin.as_deref().unwrap_or_default()),
            vec![u.clone()],
        ),
        (None, _) if console_admin.is_some() => (
            console_actor(console_admin.as_deref().unwrap_or_default()),
            Vec::new(),
        ),
        (Some(u), _) if by_cli => (cli_actor, vec![u.clone()]),
        (None, _) if by_cli => (cli_actor, Vec::new()),
        (Some(u), true) => (admin_actor(token), vec![u.clone()]),
        (Some(u), false) => (u.clone(), Vec::new()),
        (None, true) => (admin_actor(token), Vec::new()),
        (None, false) if event.starts_with("admin.") => (admin_actor(None), Vec::new()),
        (None, false) => (system_actor, Vec::new()),
    };
    if let Some(fid) = get("factor_id") {
        target.push(json!({
            "id": fid,
            "type": "AuthenticatorEnrollment",
            "alternateId": get("factor_type").unwrap_or_default(),
            "displayName": get("factor_type").unwrap_or_else(|| "factor".into()),
        }));
    }
    let mut debug = serde_json::Map::new();
    debug.insert("portcullisEvent".into(), Value::String(event.clone()));
    for k in DEBUG_FIELDS {
        if let Some(v) = get(k) {
            debug.insert((*k).into(), Value::String(v));
        }
    }
    let reason = get("reason");
    let uuid = new_uuid();
    let published = rfc3339_ms(e.at_ms);
    let body = json!({
        "uuid": uuid,
        "published": published,
        "eventType": event_type,
        "version": "0",
        "displayMessage": message,
        "severity": severity,
        "legacyEventType": Value::Null,
        "outcome": { "result": result, "reason": reason },
        "actor": actor,
        "client": {
            "ipAddress": get("client"),
            "userAgent": { "rawUserAgent": get("user_agent") },
            "zone": "null",
        },
        "authenticationContext": { "externalSessionId": Value::Null },
        "target": target,
        "transaction": { "type": "WEB", "id": get("request_id"), "detail": {} },
        "debugContext": { "debugData": debug },
    });
    let mut search = format!("{event_type} {message} {event}");
    for v in [&body["actor"], &body["target"]] {
        let _ = write!(search, " {v}");
    }
    if let Some(r) = &reason {
        let _ = write!(search, " {r}");
    }
    AuditRecord {
        uuid,
        published_ms: e.at_ms,
        event_type,
        search: search.to_lowercase(),
        body,
        seq: 0,
    }
}

/// A value as logged with `?` is quoted; the text is wanted.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `2026-01-02T03:04:05.678Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 time to Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawEvent {
        RawEvent {
            at_ms: 1_767_323_045_678,
            fields: pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn events_map_to_the_system_log_shape() {
        let r = to_record(&raw(&[
            ("event", "signin.password.failed"),
            ("user", "alice"),
            ("client", "10.1.2.3"),
            ("reason", "invalid"),
        ]));
        let b = &r.body;
        assert_eq!(b["eventType"], "user.authentication.verify");
        assert_eq!(b["outcome"]["result"], "FAILURE");
        assert_eq!(b["outcome"]["reason"], "invalid");
        assert_eq!(b["actor"]["alternateId"], "alice");
        assert_eq!(b["actor"]["type"], "User");
        assert_eq!(b["client"]["ipAddress"], "10.1.2.3");
        assert_eq!(b["published"], "2026-01-02T03:04:05.678Z");
        assert_eq!(b["severity"], "WARN");
        assert_eq!(r.published_ms, 1_767_323_045_678);
        assert!(r.search.contains("alice") && r.search.contains("user.authentication.verify"));
        assert_eq!(b["uuid"].as_str().unwrap().len(), 36);

        let r = to_record(&raw(&[
            ("event", "user.unlocked"),
            ("user", "bob"),
            ("actor", "\"admin\""),
            ("token", "1"),
            ("was_locked", "true"),
        ]));
        assert_eq!(r.body["eventType"], "user.account.unlock_by_admin");
        assert_eq!(r.body["actor"]["id"], "admin-token-1");
        assert_eq!(r.body["target"][0]["alternateId"], "bob");
        assert_eq!(r.body["debugContext"]["debugData"]["was_locked"], "true");

        // An administrator in the admin console: the actor is that user.
        let r = to_record(&raw(&[
            ("event", "user.factors.reset"),
            ("user", "bob"),
            ("actor", "console:carol"),
            ("token", "None"),
        ]));
        assert_eq!(r.body["actor"]["type"], "User");
        assert_eq!(r.body["actor"]["alternateId"], "carol");
        assert_eq!(r.body["target"][0]["alternateId"], "bob");
        assert!(r.search.contains("carol"));

        let r = to_record(&raw(&[("event", "factor.qr.shown"), ("user", "c")]));
        assert_eq!(r.body["eventType"], "portcullis.factor.qr.shown");
    }

    #[test]
    fn fields_outside_the_allow_list_are_never_stored() {
        let r = to_record(&raw(&[
            ("event", "factor.verified"),
            ("user", "alice"),
            ("code", "123456"),
            ("password", "hunter2hunter2"),
            ("secret", "JBSWY3DPEHPK3PXP"),
            ("transaction", "tx-secret-id"),
            ("error", "smtp said 123456"),
        ]));
        let text = r.body.to_string();
        for s in ["123456", "hunter2", "JBSWY3DP", "tx-secret-id"] {
            assert!(
                !text.contains(s) && !r.search.contains(&s.to_lowercase()),
                "{s} in {text}"
            );
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        SENDERS.write().unwrap().push(tx);
        let before = DROPPED.load(Ordering::Relaxed);
        let e = raw(&[("event", "session.started"), ("user", "queue-test")]);
        submit(e.clone());
        submit(e.clone());
        assert!(DROPPED.load(Ordering::Relaxed) > before, "the second did not fit");
        assert_eq!(rx.try_recv().unwrap().fields["user"], "queue-test");
        assert!(rx.try_recv().is_err());
        // A stopped writer is forgotten at the next event.
        drop(rx);
        submit(e);
        assert!(SENDERS.read().unwrap().iter().all(|tx| !tx.is_closed()));
    }

    #[test]
    fn the_layer_leaves_other_events_to_the_formatter() {
        use std::sync::atomic::AtomicUsize;
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;

        static SEEN: AtomicUsize = AtomicUsize::new(0);
        struct Count;
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
                SEEN.fetch_add(1, Ordering::Relaxed);
            }
        }
        let filter = tracing_subscriber::filter::LevelFilter::INFO;
        let sub = tracing_subscriber::registry()
            .with(Count.with_filter(filter))
            .with(AuditLayer);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("an ordinary line");
            tracing::warn!(target: "portcullis::server", "another");
            tracing::debug!("filtered out by the formatter's level");
            crate::audit!("session.started", user = "layer-test");
        });
        assert_eq!(SEEN.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(
            parse_rfc3339_ms("2026-01-02T03:04:05.678Z"),
            Some(1_767_323_045_678)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-02T04:04:05.678+01:00"),
            Some(1_767_323_045_678)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
