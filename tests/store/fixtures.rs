//! Databases written by earlier schema versions open in this build.
//!
//! `tests/fixtures/schema-vN.sqlite` is a SQLite database as schema version N
//! left it, with a few rows in every table. [`every_fixture_opens_with_the_current_build`]
//! copies each one (the committed file is never opened in place), opens it with
//! the current build, which migrates it to the newest schema, and checks that
//! the rows are still there and mean the same.
//!
//! Adding the fixture of a released schema version N (in the release commit,
//! whose newest migration is N; a released fixture is never regenerated):
//! 1. write a `write_vN` generator below: [`apply_migrations`]`(conn, N)`,
//!    then a few rows in every table, including the ones version N added;
//! 2. run `cargo test --test store -- --ignored fixtures::write_vN` and
//!    commit `tests/fixtures/schema-vN.sqlite`;
//! 3. write `check_vN`, which finds those rows through the current `Store`,
//!    and add `(N, check_vN)` to [`FIXTURES`].

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use portcullis::store::sqlite::SqliteStore;
use portcullis::store::{CounterKey, FactorRecord, FactorStatus, RevocationEvent, Store as _};
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

use crate::harness::{CountingUpstream, Gateway, GatewayConfig, PASSWORD, StoreSpec, uid};

/// Checks what a fixture holds, on the store that opened (and migrated) it.
type Check = fn(SqliteStore) -> BoxFuture<'static, ()>;

/// Each fixture's schema version and the check of its rows.
const FIXTURES: &[(i64, Check)] = &[(1, |s| Box::pin(check_v1(s)))];

/// 2100-01-01T00:00:00Z: locks and revocations in the fixtures last until then.
const FAR: i64 = 4_102_444_800;

/// When the fixtures' counters started (2026-01-01T00:00:00Z).
const T0: i64 = 1_767_225_600;

fn fixture(version: i64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/schema-v{version}.sqlite"))
}

/// A copy of fixture `version` in `dir`.
fn copy_of(version: i64, dir: &Path) -> PathBuf {
    let copy = dir.join(format!("v{version}.db"));
    std::fs::copy(fixture(version), &copy).unwrap_or_else(|e| panic!("{}: {e}", fixture(version).display()));
    copy
}

// ---- checks --------------------------------------------------------------------

async fn check_v1(store: SqliteStore) {
    let (alice, bob) = (uid("alice"), uid("bob"));
    assert_eq!(store.epochs().await.unwrap(), [(alice.clone(), 2)]);
    let events = store.revocations_since(0, T0).await.unwrap().events;
    assert_eq!(
        events,
        [
            RevocationEvent::Session {
                sid: "sid-revoked-by-v1".into(),
                expires_at: FAR
            },
            RevocationEvent::Epoch {
                user_id: alice.clone(),
                epoch: 1
            },
            RevocationEvent::Epoch {
                user_id: alice.clone(),
                epoch: 2
            },
        ]
    );
    assert_eq!(
        store
            .locked_until(&[&format!("lock:user:{alice}")], T0)
            .await
            .unwrap(),
        Some(FAR)
    );
    // The counter goes on counting in its window.
    let counter = CounterKey::for_user(format!("mfa:{bob}"), &bob);
    assert_eq!(store.record_failure(&counter, 3_600, T0 + 60).await.unwrap(), 3);
    // Sequence numbers go on after the old ones.
    store.revoke_session("sid-after-upgrade", FAR).await.unwrap();
    let last = store.revocations_since(0, T0).await.unwrap();
    assert_eq!(last.events.len(), 4);
    assert!(last.cursor > 3);
    // The tables the upgrade added work.
    let f = FactorRecord {
        id: "uftafterupgrade00001".into(),
        user_id: bob.clone(),
        factor_type: "token:software:totp".into(),
        provider: "GOOGLE".into(),
        status: FactorStatus::PendingActivation,
        profile: serde_json::json!({}),
        secret: None,
        created: T0,
        last_updated: T0,
    };
    store.insert_factor(&f).await.unwrap();
    assert_eq!(store.list_factors(&bob).await.unwrap(), [f]);
    assert!(store.claim_totp_step("uftafterupgrade00001", 1).await.unwrap());
    assert!(unlock_clears(&store, &alice).await);
    store.close().await;
}

async fn unlock_clears(store: &SqliteStore, user: &str) -> bool {
    store.unlock_user(user).await.unwrap()
        && store
            .locked_until(&[&format!("lock:user:{user}")], T0)
            .await
            .unwrap()
            .is_none()
}

// ---- tests -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_opens_with_the_current_build() {
    for (version, check) in FIXTURES {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_of(*version, dir.path());
        let store = SqliteStore::open(&path)
            .await
            .unwrap_or_else(|e| panic!("schema v{version}: {e}"));
        check(store).await;
        // Opening again finds nothing left to migrate, and the rows unchanged.
        SqliteStore::open(&path).await.unwrap().close().await;
        let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let newest = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite"))
            .unwrap()
            .count();
        assert_eq!(
            applied,
            (1..=newest as i64).collect::<Vec<_>>(),
            "schema v{version} is migrated to the newest"
        );
        conn.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_serves_on_a_schema_v1_database_and_its_lock_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(1, dir.path());
    let upstream = CountingUpstream::spawn().await;
    let cfg = GatewayConfig::new(
        dir.path(),
        upstream.addr(),
        StoreSpec::Sqlite(path),
        vec!["alice".into(), "bob".into()],
    );
    let gw = Gateway::start(&cfg, "upgraded").await;
    let (status, body, _) = gw.authn("alice", PASSWORD).await.unwrap();
    assert_eq!(status, 401, "alice's lock from schema v1 is in force: {body}");
    let (status, body, _) = gw.authn("bob", PASSWORD).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

// ---- generators (run by hand, see the module docs) ---------------------------------

/// Applies migrations 1..=`version` from `migrations/sqlite/` and records them
/// in `schema_migrations` as the migration runner does.
async fn apply_migrations(conn: &mut SqliteConnection, version: i64) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            applied_at INTEGER NOT NULL DEFAULT (unixepoch())
        ) STRICT",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let stem = file.file_stem().unwrap().to_str().unwrap().to_owned();
        let (number, name) = stem.split_once('_').unwrap();
        let number: i64 = number.parse().unwrap();
        if number > version {
            break;
        }
        let sql = std::fs::read_to_string(&file).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(number)
            .bind(name)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// A new single-file database (no WAL left beside it) at fixture `version`'s path.
async fn create(version: i64) -> SqliteConnection {
    let path = fixture(version);
    assert!(
        !path.exists(),
        "{} exists: released fixtures are never regenerated",
        path.display()
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete),
    )
    .await
    .unwrap()
}

#[tokio::test]
#[ignore = "writes tests/fixtures/schema-v1.sqlite; run by hand once, see the module docs"]
async fn write_v1() {
    let mut conn = create(1).await;
    apply_migrations(&mut conn, 1).await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let rows = [
        (
            "INSERT INTO revocations (kind, sid, expires_at) VALUES ('session', 'sid-revoked-by-v1', $1)",
            vec![FAR.to_string()],
        ),
        (
            "INSERT INTO revocations (kind, user_id, epoch) VALUES ('epoch', $1, 1)",
            vec![alice.clone()],
        ),
        (
            "INSERT INTO revocations (kind, user_id, epoch) VALUES ('epoch', $1, 2)",
            vec![alice.clone()],
        ),
        (
            "INSERT INTO user_epochs (user_id, epoch) VALUES ($1, 2)",
            vec![alice.clone()],
        ),
        (
            "INSERT INTO failure_counters (key, user_id, window_start, count) VALUES ($1, $2, $3, 2)",
            vec![format!("mfa:{bob}"), bob.clone(), T0.to_string()],
        ),
        (
            "INSERT INTO locks (key, user_id, until) VALUES ($1, $2, $3)",
            vec![format!("lock:user:{alice}"), alice.clone(), FAR.to_string()],
        ),
    ];
    for (sql, binds) in rows {
        let mut q = sqlx::query(sql);
        for b in binds {
            // Integers stay integers in the STRICT tables.
            q = match b.parse::<i64>() {
                Ok(n) => q.bind(n),
                Err(_) => q.bind(b),
            };
        }
        q.execute(&mut conn).await.unwrap();
    }
    sqlx::raw_sql("VACUUM").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}
