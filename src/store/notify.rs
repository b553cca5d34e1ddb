//! Revocations pushed to every replica: PostgreSQL `LISTEN/NOTIFY`.
//!
//! Migration `0005_notify` makes every new row of the revocation log send a
//! NOTIFY from inside the writer's transaction, whichever replica (or tool)
//! wrote it, on a channel per schema ([`CHANNEL_SQL`]). Each replica keeps one
//! dedicated connection to `store.listen_url` (PostgreSQL itself: a pooler in
//! transaction mode cannot carry LISTEN) that receives them, and hands each
//! one to the gateway as a [`Notice`]: a revoked session id it applies at
//! once, or a wake-up that makes it read the log from the store now (also
//! for an epoch change, whose number is never taken from a payload: see
//! [`parse`]).
//!
//! A notification is only a hint that arrives early. Polling the log every
//! half `session.revocation_check` stays, and so does the rule that a replica
//! whose view has not been refreshed from the store for `revocation_check`
//! fails closed. A payload that does not parse is counted, logged (without
//! its content) and answered with a wake-up, never applied; applying one can
//! only refuse sessions, never accept one.
//!
//! The connection is watched: a query every `heartbeat` while nothing
//! arrives, and any error ends it. It is then opened again after a backoff
//! (100 ms doubling to 5 s; back to 100 ms once it worked), and every
//! (re)connection is followed by a wake-up, since notifications sent while
//! not listening are lost. The connection's `application_name` is
//! `portcullis-listen/<pid>` unless the URL sets one, so an operator can find
//! it in `pg_stat_activity`. The URL is never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::sql::db;
use super::{RevocationEvent, StoreError, StoreResult};

/// The channel of the schema where `revocations` lives, as the trigger names it.
pub const CHANNEL_SQL: &str = "SELECT 'portcullis_' || md5(n.nspname) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('revocations')";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting, or a heartbeat, may take before the connection counts as lost.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a notification asks of the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Apply this revocation now.
    Revoked(RevocationEvent),
    /// Read the revocation log from the store now (after a reconnection, or
    /// for a payload that was too large or did not parse).
    Wake,
}

/// What receives the notices (called on the listener task: keep it short).
pub type Sink = Arc<dyn Fn(Notice) + Send + Sync>;

#[derive(Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Payload {
    Session { sid: String, exp: i64 },
    Epoch { uid: String, ep: i64 },
    Wake,
}

/// Parses a payload written by the trigger; `Err` says why it is not one.
///
/// Any role that may connect to the database can NOTIFY on any channel
/// (PostgreSQL checks no privilege for it), so a payload is trusted only
/// where applying a forged one can do nothing but refuse sessions: a session
/// id is applied at once (and an entry is never shortened, see
/// [`crate::session::revocation`]), but an epoch change only wakes the
/// refresher, which reads the epoch from the store. Taken from the payload,
/// a forged epoch far above the store's would become the epoch of sessions
/// issued afterwards, and those would outlive the user's next real
/// revocation ("sign out everywhere", a factor reset).
pub fn parse(payload: &str) -> Result<Notice, &'static str> {
    let parsed: Payload = serde_json::from_str(payload).map_err(|_| "not a revocation payload")?;
    Ok(match parsed {
        Payload::Session { sid, exp } => {
            if sid.is_empty() {
                return Err("empty session id");
            }
            Notice::Revoked(RevocationEvent::Session { sid, expires_at: exp })
        }
        Payload::Epoch { uid, ep } => {
            if uid.is_empty() {
                return Err("empty user id");
            }
            u64::try_from(ep)
                .ok()
                .filter(|e| *e > 0)
                .ok_or("epoch out of range")?;
            Notice::Wake
        }
        Payload::Wake => Notice::Wake,
    })
}

/// The `application_name` of this process's listening connection.
pub fn application_name() -> String {
    format!("portcullis-listen/{}", std::process::id())
}

/// Starts listening on `url` (a direct PostgreSQL URL) for as long as the
/// returned task runs; `heartbeat` is how long the connection may stay quiet
/// before it is checked.
pub fn spawn(url: &str, heartbeat: Duration, sink: Sink) -> StoreResult<tokio::task::AbortHandle> {
    let mut options: PgConnectOptions = url.parse().map_err(db("parse store.listen_url"))?;
    if options.get_application_name().is_none() {
        options = options.application_name(&application_name());
    }
    Ok(tokio::spawn(run(options, heartbeat, sink)).abort_handle())
}

async fn run(options: PgConnectOptions, heartbeat: Duration, sink: Sink) {
    let mut backoff = MIN_BACKOFF;
    let mut outage: Option<Instant> = None;
    loop {
        let mut connected = false;
        let err = listen(&options, heartbeat, &sink, &mut connected, &mut outage).await;
        metrics::gauge!("portcullis_store_listener_connected").set(0.0);
        if connected {
            backoff = MIN_BACKOFF;
            outage = Some(Instant::now());
            tracing::warn!(error = %err, "revocation notifications: connection lost; reconnecting (polling continues)");
        } else if outage.is_none() {
            outage = Some(Instant::now());
            tracing::error!(error = %err, "revocation notifications: cannot listen; retrying (polling continues)");
        } else {
            tracing::debug!(error = %err, "revocation notifications: still cannot listen");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: returns why it ended; `connected` once it listens.
async fn listen(
    options: &PgConnectOptions,
    heartbeat: Duration,
    sink: &Sink,
    connected: &mut bool,
    outage: &mut Option<Instant>,
) -> StoreError {
    let pool = match PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(TIMEOUT)
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => pool,
        Err(e) => return db("listen: connect")(e),
    };
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(l) => l,
        Err(e) => return db("listen: connect")(e),
    };
    listener.ignore_pool_close_event(true);
    // Reconnecting is done here, with a backoff and a wake-up.
    listener.eager_reconnect(false);
    let channel: Option<String> = match sqlx::query_scalar(CHANNEL_SQL).fetch_one(&mut listener).await {
        Ok(c) => c,
        Err(e) => return db("listen: find the channel")(e),
    };
    let Some(channel) = channel else {
        return StoreError::Unavailable(
            "listen: no revocations table on store.listen_url (not migrated?)".into(),
        );
    };
    if let Err(e) = listener.listen(&channel).await {
        return db("listen")(e);
    }
    *connected = true;
    metrics::gauge!("portcullis_store_listener_connected").set(1.0);
    if let Some(since) = outage.take() {
        tracing::info!(
            down_ms = since.elapsed().as_millis() as u64,
            "revocation notifications: listening again"
        );
    } else {
        tracing::info!("revocation notifications: listening");
    }
    // Whatever was sent while not listening is lost: read the log now.
    sink(Notice::Wake);
    loop {
        tokio::select! {
            got = listener.try_recv() => match got {
                Ok(Some(n)) => deliver(n.payload(), sink),
                Ok(None) => return StoreError::Unavailable("listen: connection closed".into()),
                Err(e) => return db("listen")(e),
            },
            () = tokio::time::sleep(heartbeat) => {
                match tokio::time::timeout(TIMEOUT, sqlx::raw_sql("SELECT 1").execute(&mut listener)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return db("listen: heartbeat")(e),
                    Err(_) => return StoreError::Unavailable("listen: heartbeat timed out".into()),
                }
            }
        }
    }
}

fn deliver(payload: &str, sink: &Sink) {
    match parse(payload) {
        Ok(notice) => {
            metrics::counter!("portcullis_store_notifications_total", "result" => "applied").increment(1);
            sink(notice);
        }
        Err(why) => {
            metrics::counter!("portcullis_store_notifications_total", "result" => "ignored").increment(1);
            // The content is not logged: it may hold a session id.
            tracing::warn!(
                why,
                bytes = payload.len(),
                "ignored a revocation notification; reading the log from the store instead"
            );
            sink(Notice::Wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_payloads_parse() {
        assert_eq!(
            parse(r#"{"k" : "session", "seq" : 7, "sid" : "abc", "exp" : 1700000000}"#),
            Ok(Notice::Revoked(RevocationEvent::Session {
                sid: "abc".into(),
                expires_at: 1_700_000_000
            }))
        );
        // An epoch is read from the store, never taken from the payload.
        assert_eq!(
            parse(r#"{"k" : "epoch", "seq" : 8, "uid" : "00u1", "ep" : 3}"#),
            Ok(Notice::Wake)
        );
        assert_eq!(parse(r#"{"k":"wake"}"#), Ok(Notice::Wake));
        // Fields added later are ignored.
        assert!(parse(r#"{"k":"session","sid":"a","exp":1,"new":true}"#).is_ok());
    }

    #[test]
    fn bad_payloads_are_refused_never_guessed() {
        for bad in [
            "",
            "not json",
            "{}",
            "[]",
            "null",
            r#"{"k":"session"}"#,
            r#"{"k":"session","sid":"","exp":1}"#,
            r#"{"k":"session","sid":5,"exp":1}"#,
            r#"{"k":"session","sid":"a","exp":"soon"}"#,
            r#"{"k":"epoch","uid":"u","ep":0}"#,
            r#"{"k":"epoch","uid":"u","ep":-1}"#,
            r#"{"k":"epoch","uid":"","ep":2}"#,
            r#"{"k":"epoch","uid":"u","ep":1e400}"#,
            r#"{"k":"unlock","uid":"u"}"#,
            "{\"k\":\"session\",\"sid\":\"a\",\"exp\":1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_forged_epoch_only_wakes_the_poll() {
        // Anyone connected to the database may send this: far above the
        // store's epoch, it must not become the epoch of new sessions.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink: Sink = {
            let seen = seen.clone();
            Arc::new(move |n| seen.lock().unwrap().push(n))
        };
        deliver(
            r#"{"k":"epoch","seq":1,"uid":"00uEveEXAMPLE1234567","ep":9223372036854775807}"#,
            &sink,
        );
        assert_eq!(*seen.lock().unwrap(), [Notice::Wake]);
    }

    #[test]
    fn a_bad_payload_wakes_the_poll_and_applies_nothing() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink: Sink = {
            let seen = seen.clone();
            Arc::new(move |n| seen.lock().unwrap().push(n))
        };
        deliver("\u{0}garbage", &sink);
        deliver(r#"{"k":"session","sid":"s1","exp":9}"#, &sink);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Notice::Wake,
                Notice::Revoked(RevocationEvent::Session {
                    sid: "s1".into(),
                    expires_at: 9
                })
            ]
        );
    }
}
