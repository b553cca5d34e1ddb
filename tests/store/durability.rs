//! Durability on SQLite: a gateway killed with SIGKILL in the middle of a
//! stream of writes loses none that it answered.
//!
//! Workers drive a stream of writes through the public APIs and record each
//! one once its answer arrived ([`Answered`]): first-login TOTP enrollments
//! (enrolled, then activated), logouts, and wrong passwords up to a lockout.
//! The process is killed while the workers are mid-request, restarted on the
//! same file, and every recorded write is checked to be in force. To cover a
//! new kind of write, add an [`Answered`] variant, a worker job that records
//! it after its answer, and its check in [`check_in_force`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::store::{FactorStatus, Store as _};

use crate::harness::{
    CountingUpstream, Enrolled, Failure, Gateway, GatewayConfig, PASSWORD, StoreSpec, now, totp, uid,
};

/// A write the gateway answered.
#[derive(Debug, Clone)]
enum Answered {
    /// `POST /api/v1/authn/factors` answered 200 (the factor is stored
    /// pending), and, once `active`, its activation answered `SUCCESS`.
    Enrollment(Enrolled),
    /// `DELETE /api/v1/sessions/me` answered 204.
    Logout { cookie: String },
    /// Wrong passwords until the (user, address) pair was blocked, confirmed
    /// by a correct password answered 401.
    Lockout { username: String },
}

/// What the workers recorded.
#[derive(Debug, Default)]
struct Record {
    answered: Mutex<Vec<Answered>>,
}

impl Record {
    fn push(&self, a: Answered) {
        self.answered.lock().unwrap().push(a);
    }

    fn activated(&self, e: &Enrolled) {
        for a in self.answered.lock().unwrap().iter_mut() {
            if let Answered::Enrollment(x) = a
                && x.factor_id == e.factor_id
            {
                *x = e.clone();
            }
        }
    }

    fn snapshot(&self) -> Vec<Answered> {
        self.answered.lock().unwrap().clone()
    }

    fn count(&self, f: impl Fn(&Answered) -> bool) -> usize {
        self.answered.lock().unwrap().iter().filter(|a| f(a)).count()
    }
}

/// Users per kind of job (more than a stream can use before the kill).
const USERS_PER_KIND: usize = 80;

fn user(kind: &str, n: usize) -> String {
    format!("{kind}{n:03}")
}

/// One job of the stream; `Err(Gone)` once the gateway has been killed.
async fn job(gw: &Gateway, n: usize, record: &Record) -> Result<(), Failure> {
    match n % 3 {
        0 => {
            let e = gw
                .enroll_totp(&user("e", n / 3), |pending| {
                    record.push(Answered::Enrollment(pending.clone()))
                })
                .await?;
            record.activated(&e);
        }
        1 => {
            let cookie = gw.sign_in(&user("s", n / 3)).await?;
            let status = gw.get("/app/x", Some(&cookie)).await?.0;
            if status != 200 {
                return Err(Failure::Status(status, "signed-in GET".into()));
            }
            match gw.logout(&cookie).await? {
                204 => record.push(Answered::Logout { cookie }),
                s => return Err(Failure::Status(s, "logout".into())),
            }
        }
        _ => {
            let username = user("l", n / 3);
            for _ in 0..3 {
                let (status, body, _) = gw.authn(&username, "wrong password").await?;
                if status != 401 {
                    return Err(Failure::Status(status, body.to_string()));
                }
            }
            let (status, body, _) = gw.authn(&username, PASSWORD).await?;
            if status != 401 {
                return Err(Failure::Status(status, format!("blocked pair let in: {body}")));
            }
            record.push(Answered::Lockout { username });
        }
    }
    Ok(())
}

/// Checks on the restarted gateway that `a` is still in force.
async fn check_in_force(gw: &Gateway, a: &Answered) {
    match a {
        Answered::Enrollment(e) if e.active => {
            // The TOTP step used at activation is still claimed: the same code
            // is a replay (while it is inside the skew window at all).
            if (now() / 30 - e.activation_time / 30) <= 1 {
                let (status, body) = gw
                    .verify_totp(&e.username, &e.factor_id, &totp(&e.secret, e.activation_time))
                    .await;
                assert_eq!(status, 403, "{}: {body}", e.username);
                assert_eq!(body["errorCode"], "E0000082", "{}: {body}", e.username);
            }
            // The factor is active and its sealed secret opens: the next code verifies.
            let (status, body) = gw
                .verify_totp(&e.username, &e.factor_id, &totp(&e.secret, now() + 30))
                .await;
            assert_eq!(status, 200, "{}: {body}", e.username);
            assert_eq!(body["status"], "SUCCESS", "{}: {body}", e.username);
        }
        // Pending ones are checked in the file (the API does not list them).
        Answered::Enrollment(_) => {}
        Answered::Logout { cookie } => {
            assert_eq!(
                gw.app_status(Some(cookie)).await,
                401,
                "a logged-out session is refused"
            );
        }
        Answered::Lockout { username } => {
            let (status, body, _) = gw.authn(username, PASSWORD).await.unwrap();
            assert_eq!(status, 401, "{username} is still blocked: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answered_writes_survive_sigkill_and_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/portcullis.db");
    let upstream = CountingUpstream::spawn().await;
    let mut users: Vec<String> = Vec::new();
    for kind in ["e", "s", "l"] {
        users.extend((0..USERS_PER_KIND).map(|n| user(kind, n)));
    }
    users.push("control".into());
    let cfg = GatewayConfig::new(dir.path(), upstream.addr(), StoreSpec::Sqlite(db.clone()), users);

    let first = Arc::new(Gateway::start(&cfg, "first").await);
    // A session that nobody logs out: still valid after the restart, so the
    // refusals below are revocations, not a gateway that refuses everything.
    let control = first.sign_in("control").await.unwrap();

    let record = Arc::new(Record::default());
    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (gw, record, next, killed) = (first.clone(), record.clone(), next.clone(), killed.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    assert!(
                        n / 3 < USERS_PER_KIND,
                        "the stream ran out of users before the kill"
                    );
                    match job(&gw, n, &record).await {
                        Ok(()) => {}
                        Err(_) if killed.load(Ordering::SeqCst) => return,
                        Err(e) => panic!("job {n} failed before the kill: {e:?}"),
                    }
                }
            })
        })
        .collect();

    // Kill in the middle of the stream, once enough writes were answered.
    let deadline = Instant::now() + Duration::from_secs(120);
    while record.count(|a| matches!(a, Answered::Enrollment(e) if e.active)) < 10
        || record.count(|a| matches!(a, Answered::Logout { .. })) < 6
        || record.count(|a| matches!(a, Answered::Lockout { .. })) < 6
    {
        assert!(Instant::now() < deadline, "the stream is too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.store(true, Ordering::SeqCst);
    first.kill9();
    let stream_time = started.elapsed();
    for w in workers {
        w.await.unwrap();
    }
    let answered = record.snapshot();
    assert!(
        next.load(Ordering::SeqCst) > answered.len(),
        "the kill interrupted jobs in flight"
    );

    // Restart on the same file: every answered write is in force.
    let second = Gateway::start(&cfg, "second").await;
    assert_eq!(
        second.app_status(Some(&control)).await,
        200,
        "sessions survive restarts"
    );
    for a in &answered {
        check_in_force(&second, a).await;
    }
    second.terminate();

    // Every answered enrollment is in the file, at least as far as answered.
    let store = portcullis::store::sqlite::SqliteStore::open(&db).await.unwrap();
    let mut enrollments = 0;
    for a in &answered {
        if let Answered::Enrollment(e) = a {
            enrollments += 1;
            let f = store
                .get_factor(&uid(&e.username), &e.factor_id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}'s answered enrollment is lost", e.username));
            assert_eq!(f.factor_type, "token:software:totp");
            if e.active {
                assert_eq!(f.status, FactorStatus::Active);
            }
        }
    }
    store.close().await;
    println!(
        "durability: {} answered writes ({enrollments} enrollments) before SIGKILL at {:.1?}; all in force after restart; total {:.1?}",
        answered.len(),
        stream_time,
        started.elapsed()
    );
}
