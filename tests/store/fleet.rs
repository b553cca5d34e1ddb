//! A fleet of three replicas on one PostgreSQL, one of them behind PgBouncer
//! in transaction pooling mode: revocations are pushed (LISTEN/NOTIFY), so a
//! sign-out on one replica is refused by the others in milliseconds, not at
//! the next poll; lockouts are shared at once; a replica whose notification
//! connection is killed keeps refusing what it must (the poll) and listens
//! again by itself.
//!
//! `session.revocation_check` is 2 s here (a poll every second), so a
//! refusal within a few tens of milliseconds can only come from the push.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    CountingUpstream, Gateway, GatewayConfig, PASSWORD, StoreSpec, free_port, with_postgres_schema,
    with_search_path,
};

const CHECK: Duration = Duration::from_secs(2);

/// PgBouncer 1.18 (Debian) in transaction mode in front of the test server,
/// on a free port, with a config in `dir`. Its database entry sets the
/// schema (PgBouncer 1.18 passes no `options`).
struct Bouncer {
    child: Child,
    port: u16,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer_binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Bouncer {
    async fn start(bin: &Path, server_url: &str, schema: &str, dir: &Path) -> Bouncer {
        use std::os::unix::fs::PermissionsExt as _;
        let server = url::Url::parse(server_url).unwrap();
        let dbname = server.path().trim_start_matches('/').to_owned();
        let user = server.username().to_owned();
        let host = server.host_str().unwrap().to_owned();
        let server_port = server.port().unwrap_or(5432);
        // PgBouncer refuses to run as root; it then switches to `nobody`,
        // who must be able to read its files.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let users = dir.join("pgbouncer-users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).unwrap();
        for attempt in 0..5 {
            let port = free_port();
            let ini = dir.join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n{dbname} = host={host} port={server_port} dbname={dbname} user={user} \
                     connect_query='SET search_path TO {schema}'\n\n\
                     [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                     auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                     default_pool_size = 6\nmax_client_conn = 200\n",
                    users = users.display()
                ),
            )
            .unwrap();
            for f in [&ini, &users] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            let mut cmd = Command::new(bin);
            if running_as_root() {
                cmd.args(["-u", "nobody"]);
            }
            let log = std::fs::File::create(dir.join(format!("pgbouncer-{attempt}.log"))).unwrap();
            let child = cmd.arg(&ini).stdout(Stdio::null()).stderr(log).spawn().unwrap();
            let mut bouncer = Bouncer { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = bouncer.child.try_wait() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return bouncer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = bouncer.child.kill();
        }
        panic!("pgbouncer did not start; see {}", dir.display());
    }

    fn url(&self, server_url: &str) -> String {
        let mut u = url::Url::parse(server_url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Polls `gw` with `cookie` every 2 ms until it is refused; how long that
/// took, or `None` after `within`.
async fn refused_after(gw: &Gateway, cookie: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if gw.app_status(Some(cookie)).await == 401 {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The backend pid of `gw`'s notification connection, once there is one.
async fn listener_backend(url: &str, gw: &Gateway, within: Duration) -> Option<i32> {
    let start = Instant::now();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let name = format!("portcullis-listen/{}", gw.pid());
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
        )
        .bind(&name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if pid.is_some() || start.elapsed() > within {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 15 s) until `gw` has logged `line` `times` times.
async fn wait_logged(gw: &Gateway, line: &str, times: usize) {
    let start = Instant::now();
    while gw.log_text().matches(line).count() < times {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} never logged {line:?}:\n{}",
            gw.name,
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_one_behind_pgbouncer_get_revocations_pushed() {
    let Some(bin) = pgbouncer_binary() else {
        crate::skip::test(
            &crate::skip::current_test(),
            "pgbouncer is not installed (Debian package `pgbouncer`)",
        );
        return;
    };
    with_postgres_schema(|url, schema| async move {
        let dir = tempfile::tempdir().unwrap();
        let bouncer = Bouncer::start(&bin, &url, &schema, dir.path()).await;
        let upstream = CountingUpstream::spawn().await;
        let users: Vec<String> = ["alice", "bob", "carol"].map(str::to_owned).to_vec();
        let direct = with_search_path(&url, &schema);
        let mut cfg = GatewayConfig::new(
            dir.path(),
            upstream.addr(),
            StoreSpec::Postgres(direct.clone()),
            users.clone(),
        );
        cfg.revocation_check = "2s";
        let mut pooled = cfg.clone();
        pooled.store = StoreSpec::Pooled {
            url: bouncer.url(&url),
            listen_url: direct.clone(),
        };
        let (a, b, c) = tokio::join!(
            Gateway::start(&cfg, "replica-a"),
            Gateway::start(&cfg, "replica-b"),
            Gateway::start(&pooled, "replica-c-pgbouncer"),
        );
        let fleet = [&a, &b, &c];
        // A notification sent before a replica runs LISTEN is lost to it (it
        // then learns from the poll): measure pushes once all three listen.
        for gw in fleet {
            wait_logged(gw, "revocation notifications: listening", 1).await;
        }

        // ---- sign-out on one, refused by the other two: 50 trials ----------
        let mut delays = Vec::new();
        for trial in 0..50 {
            let from = fleet[trial % 3];
            let cookie = from.sign_in("alice").await.unwrap();
            for gw in fleet {
                assert_eq!(gw.app_status(Some(&cookie)).await, 200, "{}", gw.name);
            }
            assert_eq!(from.logout(&cookie).await.unwrap(), 204);
            for gw in fleet.iter().filter(|g| g.name != from.name) {
                let took = refused_after(gw, &cookie, CHECK * 3).await.unwrap_or_else(|| {
                    panic!("{} still accepts a session signed out on {}", gw.name, from.name)
                });
                delays.push(took);
            }
        }
        delays.sort();
        let within_50 = delays.iter().filter(|d| **d <= Duration::from_millis(50)).count();
        println!(
            "fleet: sign-out refused by the other replicas after: min {} p50 {} p90 {} p95 {} p99 {} max {} \
             ({within_50}/{} within 50 ms; revocation_check {CHECK:?})",
            ms(delays[0]),
            ms(percentile(&delays, 0.5)),
            ms(percentile(&delays, 0.9)),
            ms(percentile(&delays, 0.95)),
            ms(percentile(&delays, 0.99)),
            ms(*delays.last().unwrap()),
            delays.len()
        );
        assert!(
            percentile(&delays, 0.95) <= Duration::from_millis(250),
            "p95 {} is not a push (the poll runs every {:?})",
            ms(percentile(&delays, 0.95)),
            CHECK / 2
        );

        // ---- lockout on one (behind the pooler), seen by the others ----------
        for _ in 0..3 {
            assert_eq!(c.authn("bob", "wrong").await.unwrap().0, 401);
        }
        for gw in fleet {
            let (status, body, _) = gw.authn("bob", PASSWORD).await.unwrap();
            assert_eq!(status, 401, "{} lets a locked-out pair in: {body}", gw.name);
        }

        // ---- B's notification connection killed --------------------------------
        let old = listener_backend(&url, &b, Duration::from_secs(5))
            .await
            .expect("replica-b has a listening connection named after its pid");
        let cookie = a.sign_in("carol").await.unwrap();
        let survivor = a.sign_in("carol").await.unwrap();
        assert_eq!(b.app_status(Some(&cookie)).await, 200);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        let relistened = b.log_text().matches("revocation notifications: listening again").count();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(old)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(killed);
        // Signed out on A at once: B must refuse it (push once it listens
        // again, else the poll), and never accept it again afterwards.
        assert_eq!(a.logout(&cookie).await.unwrap(), 204);
        let took = refused_after(&b, &cookie, CHECK + Duration::from_secs(1))
            .await
            .expect("replica-b accepts a signed-out session after its listener was killed");
        for _ in 0..20 {
            assert_eq!(b.app_status(Some(&cookie)).await, 401);
        }
        assert_eq!(b.app_status(Some(&survivor)).await, 200, "only that session");
        // It listens again by itself, on a new backend, and pushes work again.
        let start = Instant::now();
        let new = loop {
            let pid = listener_backend(&url, &b, Duration::from_secs(10)).await;
            if pid.is_some_and(|p| p != old) || start.elapsed() > Duration::from_secs(10) {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            new.is_some_and(|p| p != old),
            "replica-b did not listen again:\n{}",
            b.log_text()
        );
        // Its backend shows before it has run LISTEN; the log line comes after.
        wait_logged(&b, "revocation notifications: listening again", relistened + 1).await;
        let relisten = start.elapsed();
        let cookie = a.sign_in("carol").await.unwrap();
        assert_eq!(b.app_status(Some(&cookie)).await, 200);
        assert_eq!(a.logout(&cookie).await.unwrap(), 204);
        let pushed = refused_after(&b, &cookie, CHECK * 3).await.unwrap();
        assert!(
            pushed <= Duration::from_millis(250),
            "after reconnecting, refusal took {}",
            ms(pushed)
        );
        println!(
            "fleet: listener killed: the sign-out during the gap refused after {}, listening again after {} more, \
             next sign-out refused after {}",
            ms(took),
            ms(relisten),
            ms(pushed)
        );
        // The replica behind the pooler wrote sessions, counters, locks and
        // audit events through it without one store error.
        let log = c.log_text();
        for bad in ["prepared statement", "store unavailable", "\"level\":\"ERROR\""] {
            assert!(!log.contains(bad), "{bad} in replica-c's log:\n{log}");
        }
        let audited: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".audit_events"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(audited > 0);
        drop(bouncer);
    })
    .await;
}
