//! The SQLite store (`store.kind = "sqlite"`, the default): one file, one
//! gateway process.
//!
//! Invariants and the choices behind them:
//! - **One writer.** Every write goes through a pool holding exactly one
//!   connection, so writes queue in the pool (fairly, with a timeout) instead
//!   of racing for SQLite's write lock; read-modify-write statements are
//!   therefore serialized and counters exact. Write transactions start with
//!   `BEGIN IMMEDIATE` so that another process sharing the file (a backup, an
//!   admin tool) is waited for through `busy_timeout` instead of failing on a
//!   lock upgrade.
//! - **Readers beside it.** Queries run on a separate small pool whose
//!   connections are `query_only`. In WAL mode readers never block the writer
//!   nor wait for it, so lock checks at sign-in and revocation refreshes stay
//!   fast while a burst of failed attempts is being written. A reader starts
//!   its snapshot when its statement starts, so it sees every write that
//!   returned before.
//! - **Durability.** `journal_mode = WAL` with `synchronous = FULL`: every
//!   commit is fsynced before the call returns. `NORMAL` would already survive
//!   a killed process (the WAL is in the OS page cache), but a power loss or
//!   kernel crash could then roll back the last commits, which here are
//!   logouts, lockouts and enrollments: security state we do not want to
//!   quietly undo. The cost, one fsync per write, is paid on sign-in events,
//!   never per proxied request.
//! - `busy_timeout` is 5 s and foreign keys are enforced on every connection.
//! - A new database file is created with mode 0600 (it will hold factor
//!   material); SQLite gives its `-wal` and `-shm` files the same mode.
//! - The schema is migrated at [`SqliteStore::open`] (see [`super::migrate`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::migrate;
use super::sql::{self, Dialect, REVOCATION_BATCH_LIMIT, Statement, UserRow, db, sql_error, user_columns};
use super::{
    AuditQuery, AuditRecord, CounterKey, FactorRecord, FactorStatus, RevocationBatch, SealedSecret, Store,
    StoreError, StoreResult, TransactionRecord, UserChanges, UserPatch, UserRecord, UserWrite,
};
use crate::clock::UnixTime;

/// How long a statement waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the read pool.
const READERS: u32 = 4;

/// SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    /// Exactly one connection: the only one that writes.
    writer: SqlitePool,
    /// `query_only` connections for reads.
    reader: SqlitePool,
    /// Rows per `revocations_since` call (lowered by tests).
    batch_limit: i64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database file, creating it (and its parent directories) if
    /// missing, and migrates its schema to this build's version.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        create_file(path).await?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full);
        // WAL is a property of the file, set once by the writer; readers inherit it.
        let writer_options = base.clone().journal_mode(SqliteJournalMode::Wal);
        let reader_options = base.pragma("query_only", "ON");

        // The writer connection is kept for the store's lifetime: no idle
        // timeout, no maximum age. Closing the last connection makes SQLite
        // checkpoint and remove the WAL, which only `close` should do.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(writer_options)
            .await
            .map_err(|e| sql_error(&format!("open {}", path.display()), &e))?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(reader_options)
            .await
            .map_err(|e| sql_error(&format!("open {}", path.display()), &e))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer,
            reader,
            batch_limit: REVOCATION_BATCH_LIMIT,
        })
    }

    /// Closes every connection, checkpointing the WAL into the main file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Creates `path`'s parent directories, and the file itself with mode 0600 if
/// it does not exist yet (SQLite would create it world-readable).
async fn create_file(path: &Path) -> StoreResult<()> {
    let io_error =
        |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what} {}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Folders made here are the owner's only (as for the key file beside
        // the database, `gateway::keys`).
        let mut folders = tokio::fs::DirBuilder::new();
        folders.recursive(true);
        #[cfg(unix)]
        folders.mode(0o700);
        folders
            .create(parent)
            .await
            .map_err(|e| io_error("cannot create the directory of", e))?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error("cannot create", e)),
    }
}

/// Applies the migrations this database lacks, all in one transaction.
async fn migrate(writer: &SqlitePool) -> StoreResult<()> {
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db("begin migration"))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            applied_at INTEGER NOT NULL DEFAULT (unixepoch())
        ) STRICT",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("create schema_migrations"))?;
    let applied: Vec<(i64, String)> = sqlx::query_as(migrate::APPLIED)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read schema_migrations"))?;
    for m in migrate::pending(migrate::SQLITE, &applied)? {
        let op = format!("apply migration {:04}_{}", m.version, m.name);
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(&op, &e))?;
        sqlx::query(migrate::RECORD)
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error(&op, &e))?;
    }
    tx.commit().await.map_err(db("commit migration"))
}

/// The dialect of the shared statements this backend runs.
const DIALECT: Dialect = Dialect::Sqlite;

/// What a row type must be to be read from SQLite.
trait SqliteRowType: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin {}
impl<R: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin> SqliteRowType for R {}

/// Running the shared statements of [`super::sql`]: writes on the single
/// writer, reads on the readers.
impl SqliteStore {
    fn pool<R>(&self, statement: &Statement<'_, R>) -> &SqlitePool {
        if statement.writes {
            &self.writer
        } else {
            &self.reader
        }
    }

    /// Runs `s` and answers the number of rows it changed.
    async fn execute(&self, s: Statement<'_>) -> StoreResult<u64> {
        let args = s.arguments::<Sqlite>()?;
        let done = sqlx::query_with(s.sql, args).execute(self.pool(&s)).await;
        Ok(done.map_err(db(s.op))?.rows_affected())
    }

    async fn fetch_one<R: SqliteRowType>(&self, s: Statement<'_, R>) -> StoreResult<R> {
        let args = s.arguments::<Sqlite>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_one(self.pool(&s)).await.map_err(db(s.op))
    }

    async fn fetch_optional<R: SqliteRowType>(&self, s: Statement<'_, R>) -> StoreResult<Option<R>> {
        let args = s.arguments::<Sqlite>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_optional(self.pool(&s)).await.map_err(db(s.op))
    }

    async fn fetch_all<R: SqliteRowType>(&self, s: Statement<'_, R>) -> StoreResult<Vec<R>> {
        let args = s.arguments::<Sqlite>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_all(self.pool(&s)).await.map_err(db(s.op))
    }

    /// Runs the writes `statements` in one `BEGIN IMMEDIATE` transaction.
    async fn execute_all(&self, op: &'static str, statements: Vec<Statement<'_>>) -> StoreResult<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db(op))?;
        for s in statements {
            let args = s.arguments::<Sqlite>()?;
            sqlx::query_with(s.sql, args)
                .execute(&mut *tx)
                .await
                .map_err(db(s.op))?;
        }
        tx.commit().await.map_err(db(op))
    }
}

/// The next position in the users change log, inside the caller's write
/// transaction (the single writer makes it strictly increasing).
async fn next_user_seq(tx: &mut sqlx::SqliteConnection, op: &'static str) -> StoreResult<i64> {
    sqlx::query_scalar("UPDATE user_change_seq SET seq = seq + 1 RETURNING seq")
        .fetch_one(tx)
        .await
        .map_err(db(op))
}

impl SqliteStore {
    /// Deletes a factor of `user_id` (only while `PENDING_ACTIVATION` when
    /// `only_pending`) and its TOTP step record, in one write transaction.
    async fn delete_factor_where(
        &self,
        user_id: &str,
        factor_id: &str,
        only_pending: bool,
    ) -> StoreResult<bool> {
        let statement = if only_pending {
            "DELETE FROM factors WHERE id = $1 AND user_id = $2 AND status = 'PENDING_ACTIVATION'"
        } else {
            "DELETE FROM factors WHERE id = $1 AND user_id = $2"
        };
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("delete factor"))?;
        let deleted = sqlx::query(statement)
            .bind(factor_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("delete factor"))?
            .rows_affected()
            == 1;
        if deleted {
            sqlx::query("DELETE FROM totp_steps WHERE factor_id = $1")
                .bind(factor_id)
                .execute(&mut *tx)
                .await
                .map_err(db("delete factor"))?;
        }
        tx.commit().await.map_err(db("delete factor"))?;
        Ok(deleted)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn health(&self) -> StoreResult<()> {
        // Asked of the writer: if writes are stuck, the store is not healthy.
        sqlx::query("SELECT 1")
            .execute(&self.writer)
            .await
            .map(drop)
            .map_err(db("health check"))
    }

    async fn revoke_session(&self, sid: &str, expires_at: UnixTime) -> StoreResult<()> {
        self.execute(sql::revoke_session(sid, expires_at)).await.map(drop)
    }

    async fn bump_epoch(&self, user_id: &str) -> StoreResult<u64> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("bump epoch"))?;
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO user_epochs (user_id, epoch) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET epoch = user_epochs.epoch + 1
             RETURNING epoch",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("bump epoch"))?;
        sqlx::query("INSERT INTO revocations (kind, user_id, epoch) VALUES ('epoch', $1, $2)")
            .bind(user_id)
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(db("bump epoch"))?;
        tx.commit().await.map_err(db("bump epoch"))?;
        sql::epoch_from_db(epoch)
    }

    async fn epochs(&self) -> StoreResult<Vec<(String, u64)>> {
        let rows = self.fetch_all(sql::epochs()).await?;
        rows.into_iter()
            .map(|(user, epoch)| Ok((user, sql::epoch_from_db(epoch)?)))
            .collect()
    }

    async fn revocations_since(&self, cursor: i64, now: UnixTime) -> StoreResult<RevocationBatch> {
        let rows = self
            .fetch_all(sql::revocations_since(cursor, self.batch_limit))
            .await?;
        sql::revocation_batch(rows, cursor, now, self.batch_limit)
    }

    async fn record_failure(&self, key: &CounterKey, window: i64, now: UnixTime) -> StoreResult<u32> {
        let (count,) = self.fetch_one(sql::record_failure(key, window, now)).await?;
        sql::count_from_db(count)
    }

    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        self.execute(sql::clear_failures(key)).await.map(drop)
    }

    async fn forgive_failure(&self, key: &str) -> StoreResult<()> {
        self.execute_all("forgive failure", sql::forgive_failure(key))
            .await
    }

    async fn lock(&self, key: &CounterKey, until: UnixTime) -> StoreResult<()> {
        self.execute(sql::lock(DIALECT, key, until)).await.map(drop)
    }

    async fn locked_until(&self, keys: &[&str], now: UnixTime) -> StoreResult<Option<UnixTime>> {
        if keys.is_empty() {
            return Ok(None);
        }
        // The keys travel as one JSON array, so the statement text is fixed
        // (prepared once, cached) whatever the number of keys.
        let keys = serde_json::to_string(keys)
            .map_err(|_| StoreError::Unavailable("locked until: cannot encode keys".into()))?;
        sqlx::query_scalar(
            "SELECT max(until) FROM locks
             WHERE until > $1 AND key IN (SELECT value FROM json_each($2))",
        )
        .bind(now)
        .bind(keys)
        .fetch_one(&self.reader)
        .await
        .map_err(db("locked until"))
    }

    async fn unlock_user(&self, user_id: &str) -> StoreResult<bool> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("unlock user"))?;
        let locks = sqlx::query("DELETE FROM locks WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("unlock user"))?
            .rows_affected();
        let counters = sqlx::query("DELETE FROM failure_counters WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("unlock user"))?
            .rows_affected();
        tx.commit().await.map_err(db("unlock user"))?;
        Ok(locks + counters > 0)
    }

    // ---- factors --------------------------------------------------------

    async fn insert_factor(&self, factor: &FactorRecord) -> StoreResult<()> {
        self.execute(sql::insert_factor(factor)?).await.map(drop)
    }

    async fn get_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<Option<FactorRecord>> {
        let row = self.fetch_optional(sql::get_factor(user_id, factor_id)).await?;
        row.map(sql::factor_from_row).transpose()
    }

    async fn list_factors(&self, user_id: &str) -> StoreResult<Vec<FactorRecord>> {
        let rows = self.fetch_all(sql::list_factors(DIALECT, user_id)).await?;
        rows.into_iter().map(sql::factor_from_row).collect()
    }

    async fn activate_factor(&self, user_id: &str, factor_id: &str, now: UnixTime) -> StoreResult<bool> {
        Ok(self
            .execute(sql::activate_factor(user_id, factor_id, now))
            .await?
            == 1)
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
        let statement = sql::update_factor_profile(user_id, factor_id, expected, profile, status, now)?;
        Ok(self.execute(statement).await? == 1)
    }

    async fn delete_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool> {
        self.delete_factor_where(user_id, factor_id, false).await
    }

    async fn delete_pending_factor(&self, user_id: &str, factor_id: &str) -> StoreResult<bool> {
        self.delete_factor_where(user_id, factor_id, true).await
    }

    async fn claim_totp_step(&self, factor_id: &str, step: i64) -> StoreResult<bool> {
        Ok(self.execute(sql::claim_totp_step(factor_id, step)).await? == 1)
    }

    async fn secret_key_ids(&self) -> StoreResult<Vec<String>> {
        let rows = self.fetch_all(sql::secret_key_ids()).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn factors_sealed_with_other_keys(
        &self,
        key_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<FactorRecord>> {
        let rows = self
            .fetch_all(sql::factors_sealed_with_other_keys(DIALECT, key_id, limit))
            .await?;
        rows.into_iter().map(sql::factor_from_row).collect()
    }

    async fn replace_factor_secret(
        &self,
        factor_id: &str,
        old: &SealedSecret,
        new: &SealedSecret,
    ) -> StoreResult<bool> {
        Ok(self
            .execute(sql::replace_factor_secret(factor_id, old, new))
            .await?
            == 1)
    }

    // ---- recovery codes -------------------------------------------------

    async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("replace recovery codes"))?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("replace recovery codes"))?;
        for hash in hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, hash, created) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(user_id)
            .bind(hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("replace recovery codes"))?;
        }
        tx.commit().await.map_err(db("replace recovery codes"))
    }

    async fn use_recovery_code(&self, user_id: &str, hash: &str) -> StoreResult<bool> {
        Ok(self.execute(sql::use_recovery_code(user_id, hash)).await? == 1)
    }

    async fn recovery_codes_left(&self, user_id: &str) -> StoreResult<u32> {
        let (count,) = self.fetch_one(sql::recovery_codes_left(user_id)).await?;
        sql::count_from_db(count)
    }

    // ---- transactions ---------------------------------------------------

    async fn put_transaction(&self, t: &TransactionRecord) -> StoreResult<()> {
        self.execute(sql::put_transaction(t)?).await.map(drop)
    }

    async fn get_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>> {
        let row = self.fetch_optional(sql::get_transaction(kind, id, now)).await?;
        row.map(sql::transaction_from_row).transpose()
    }

    async fn update_transaction(&self, t: &TransactionRecord, now: UnixTime) -> StoreResult<bool> {
        Ok(self.execute(sql::update_transaction(t, now)?).await? == 1)
    }

    async fn take_transaction(
        &self,
        kind: &str,
        id: &str,
        now: UnixTime,
    ) -> StoreResult<Option<TransactionRecord>> {
        let row = self.fetch_optional(sql::take_transaction(kind, id, now)).await?;
        row.map(sql::transaction_from_row).transpose()
    }

    // ---- users ----------------------------------------------------------

    async fn create_user(&self, user: &UserRecord) -> StoreResult<UserWrite> {
        let profile = sql::user_profile(&user.profile)?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("create user"))?;
        let seq = next_user_seq(&mut tx, "create user").await?;
        let row: Result<UserRow, sqlx::Error> = sqlx::query_as(concat!(
            "INSERT INTO users (id, seq, login, login_key, status, profile, password_hash, created,
                                activated, status_changed, last_updated, password_changed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING ",
            user_columns!()
        ))
        .bind(&user.id)
        .bind(seq)
        .bind(&user.login)
        .bind(sql::login_key(&user.login))
        .bind(user.status.as_str())
        .bind(profile)
        .bind(user.password_hash.as_deref())
        .bind(user.created)
        .bind(user.activated)
        .bind(user.status_changed)
        .bind(user.last_updated)
        .bind(user.password_changed)
        .fetch_one(&mut *tx)
        .await;
        match row {
            Ok(row) => {
                tx.commit().await.map_err(db("create user"))?;
                Ok(UserWrite::Written(sql::user_from_row(row)?))
            }
            Err(e) if sql::is_login_conflict(&e) => Ok(UserWrite::LoginTaken),
            Err(e) => Err(sql_error("create user", &e)),
        }
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let row = self.fetch_optional(sql::get_user(id)).await?;
        row.map(sql::user_from_row).transpose()
    }

    async fn get_user_by_login(&self, login: &str) -> StoreResult<Option<UserRecord>> {
        let row = self.fetch_optional(sql::get_user_by_login(login)).await?;
        row.map(sql::user_from_row).transpose()
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRecord>> {
        let rows = self.fetch_all(sql::list_users(DIALECT, after, limit)).await?;
        rows.into_iter().map(sql::user_from_row).collect()
    }

    async fn update_user(&self, id: &str, patch: &UserPatch, now: UnixTime) -> StoreResult<UserWrite> {
        let profile = patch.profile.as_ref().map(sql::user_profile).transpose()?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("update user"))?;
        let seq = next_user_seq(&mut tx, "update user").await?;
        // Every SET expression reads the row as it was, so the status
        // comparisons below see the old status.
        let row: Result<Option<UserRow>, sqlx::Error> = sqlx::query_as(concat!(
            "UPDATE users SET
                 login = coalesce($2, login),
                 login_key = coalesce($3, login_key),
                 profile = coalesce($4, profile),
                 password_hash = coalesce($5, password_hash),
                 password_changed = CASE WHEN $5 IS NULL THEN password_changed ELSE $7 END,
                 status_changed = CASE WHEN $6 IS NULL OR $6 = status THEN status_changed ELSE $7 END,
                 activated = CASE WHEN $6 = 'ACTIVE' AND activated IS NULL THEN $7 ELSE activated END,
                 status = coalesce($6, status),
                 last_updated = $7,
                 seq = $8
             WHERE id = $1
             RETURNING ",
            user_columns!()
        ))
        .bind(id)
        .bind(patch.login.as_deref())
        .bind(patch.login.as_deref().map(sql::login_key))
        .bind(profile)
        .bind(patch.password_hash.as_deref())
        .bind(patch.status.map(|s| s.as_str()))
        .bind(now)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await;
        match row {
            Ok(Some(row)) => {
                tx.commit().await.map_err(db("update user"))?;
                Ok(UserWrite::Written(sql::user_from_row(row)?))
            }
            Ok(None) => Ok(UserWrite::NotFound),
            Err(e) if sql::is_login_conflict(&e) => Ok(UserWrite::LoginTaken),
            Err(e) => Err(sql_error("update user", &e)),
        }
    }

    async fn delete_user(&self, id: &str, now: UnixTime) -> StoreResult<bool> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("delete user"))?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("delete user"))?
            .rows_affected()
            == 1;
        if !deleted {
            return Ok(false);
        }
        let seq = next_user_seq(&mut tx, "delete user").await?;
        for statement in [
            "INSERT INTO deleted_users (id, seq, deleted_at) VALUES ($1, $2, $3)",
            "DELETE FROM totp_steps WHERE factor_id IN (SELECT id FROM factors WHERE user_id = $1)",
            "DELETE FROM factors WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
        ] {
            let mut q = sqlx::query(statement).bind(id);
            if statement.contains("$2") {
                q = q.bind(seq).bind(now);
            }
            q.execute(&mut *tx).await.map_err(db("delete user"))?;
        }
        tx.commit().await.map_err(db("delete user"))?;
        Ok(true)
    }

    async fn users_changed_since(&self, cursor: i64, limit: u32) -> StoreResult<UserChanges> {
        let rows = self
            .fetch_all(sql::users_changed_since(DIALECT, cursor, limit))
            .await?;
        sql::user_changes(rows, cursor)
    }

    // ---- housekeeping ---------------------------------------------------

    async fn insert_audit_events(&self, events: &[AuditRecord]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.execute_all("insert audit events", sql::insert_audit_events(events)?)
            .await
    }

    async fn query_audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let rows = self.fetch_all(sql::query_audit_events(DIALECT, query)).await?;
        rows.into_iter().map(sql::audit_from_row).collect()
    }

    async fn purge_audit_events(&self, before_ms: i64) -> StoreResult<u64> {
        self.execute(sql::purge_audit_events(before_ms)).await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<()> {
        self.execute_all("purge", sql::purge_expired(DIALECT, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RevocationEvent;

    async fn open_in(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("data/portcullis.db"))
            .await
            .unwrap()
    }

    async fn migrations(store: &SqliteStore) -> Vec<(i64, String, i64)> {
        sqlx::query_as("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            .fetch_all(&store.reader)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn data_survives_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        store.revoke_session("sid-1", 2_000).await.unwrap();
        assert_eq!(store.bump_epoch("alice").await.unwrap(), 1);
        let key = CounterKey::for_user("mfa:alice", "alice");
        assert_eq!(store.record_failure(&key, 300, 1_000).await.unwrap(), 1);
        store.lock(&key, 1_900).await.unwrap();
        store.close().await;
        drop(store);

        let store = open_in(&dir).await;
        assert_eq!(store.epochs().await.unwrap(), [("alice".to_owned(), 1)]);
        assert_eq!(store.bump_epoch("alice").await.unwrap(), 2);
        let batch = store.revocations_since(0, 1_000).await.unwrap();
        assert_eq!(batch.events.len(), 3);
        assert!(batch.events.contains(&RevocationEvent::Session {
            sid: "sid-1".into(),
            expires_at: 2_000
        }));
        assert_eq!(store.record_failure(&key, 300, 1_010).await.unwrap(), 2);
        assert_eq!(
            store.locked_until(&["mfa:alice"], 1_000).await.unwrap(),
            Some(1_900)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn answered_writes_are_in_the_files_a_killed_process_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        assert_eq!(store.bump_epoch("alice").await.unwrap(), 1);
        store
            .lock(&CounterKey::for_user("user:alice", "alice"), 5_000)
            .await
            .unwrap();
        // Copy the files as they are now, with the store still open and never
        // closed or checkpointed: what a SIGKILL at this point leaves behind.
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).unwrap();
        for name in ["portcullis.db", "portcullis.db-wal"] {
            std::fs::copy(dir.path().join("data").join(name), crashed.join(name)).unwrap();
        }
        let recovered = SqliteStore::open(&crashed.join("portcullis.db")).await.unwrap();
        assert_eq!(recovered.epochs().await.unwrap(), [("alice".to_owned(), 1)]);
        assert_eq!(
            recovered.locked_until(&["user:alice"], 0).await.unwrap(),
            Some(5_000)
        );
        recovered.close().await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn migrations_are_recorded_and_reopening_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        let first = migrations(&store).await;
        let expected: Vec<_> = migrate::SQLITE
            .iter()
            .map(|m| (m.version, m.name.to_owned()))
            .collect();
        assert_eq!(
            first.iter().map(|(v, n, _)| (*v, n.clone())).collect::<Vec<_>>(),
            expected
        );
        assert!(
            first.iter().all(|(_, _, at)| *at > 1_600_000_000),
            "applied_at is a Unix time"
        );
        store.close().await;

        let store = open_in(&dir).await;
        assert_eq!(migrations(&store).await, first, "nothing re-applied");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_database_from_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;

        let err = SqliteStore::open(&dir.path().join("data/portcullis.db"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m)
                if m.contains("database schema version 999 is newer than this build supports")),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connections_use_wal_full_sync_busy_timeout_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        for pool in [&store.writer, &store.reader] {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(busy, 5_000);
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(fk, 1);
        }
        let write = sqlx::query("DELETE FROM locks").execute(&store.reader).await;
        assert!(write.is_err(), "readers are query_only");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(dir.path().join("data/portcullis.db")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            // The folder the store made for it is the owner's only too.
            let meta = std::fs::metadata(dir.path().join("data")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn revocations_are_read_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_in(&dir).await;
        store.batch_limit = 3;
        for i in 0..7 {
            // Every other event has expired: skipped, but still counted in the batch.
            store
                .revoke_session(&format!("s{i}"), if i % 2 == 0 { 50 } else { 500 })
                .await
                .unwrap();
        }
        let mut cursor = 0;
        let mut sizes = Vec::new();
        let mut sids = Vec::new();
        loop {
            let batch = store.revocations_since(cursor, 100).await.unwrap();
            if batch.cursor == cursor {
                break;
            }
            sizes.push(batch.events.len());
            sids.extend(batch.events.into_iter().map(|e| match e {
                RevocationEvent::Session { sid, .. } => sid,
                RevocationEvent::Epoch { .. } => unreachable!(),
            }));
            cursor = batch.cursor;
        }
        assert_eq!(sizes, [1, 2, 0]);
        assert_eq!(sids, ["s1", "s3", "s5"]);
    }

    /// A revocation view far behind a long log (a new replica) reads every
    /// page before it calls itself fresh: it read only the oldest batch, and
    /// accepted the newest signed-out sessions while looking fresh.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_view_behind_a_long_log_reads_every_page() {
        use crate::session::revocation::RevocationView;
        use crate::store::{REVOCATION_OVERLAP, SharedStore};
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_in(&dir).await;
        // Pages that move on (the limit must exceed the overlap re-read).
        let limit = REVOCATION_OVERLAP + 100;
        store.batch_limit = limit;
        let rows = 3 * limit;
        let writer = store.writer.clone();
        let revoke = |from: i64, to: i64| {
            let writer = writer.clone();
            async move {
                let mut tx = writer.begin().await.unwrap();
                for i in from..to {
                    sqlx::query(
                        "INSERT INTO revocations (kind, sid, expires_at) VALUES ('session', $1, 10000)",
                    )
                    .bind(format!("s{i}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            }
        };
        revoke(0, rows).await;
        let store: SharedStore = std::sync::Arc::new(store);
        let view = RevocationView::new(std::time::Duration::from_secs(2));
        let t0 = std::time::Instant::now();
        view.refresh(&store, 100, t0).await.unwrap();
        assert!(view.is_fresh(t0));
        let claims = |n: i64| crate::session::revocation::tests::claims(&format!("s{n}"), "u", 0);
        let newest = claims(rows - 1);
        assert_eq!(
            view.check(&newest, t0),
            Err(crate::session::SessionReject::Revoked),
            "the newest signed-out session is accepted by a fresh view"
        );
        // A catch-up reads every page too.
        revoke(rows, 2 * rows).await;
        view.catch_up(&store, 100).await.unwrap();
        let newest = claims(2 * rows - 1);
        assert_eq!(
            view.check(&newest, t0),
            Err(crate::session::SessionReject::Revoked)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn purge_drops_superseded_epoch_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        for _ in 0..3 {
            store.bump_epoch("alice").await.unwrap();
        }
        store.purge_expired(1_000).await.unwrap();
        let batch = store.revocations_since(0, 1_000).await.unwrap();
        assert_eq!(
            batch.events,
            [RevocationEvent::Epoch {
                user_id: "alice".into(),
                epoch: 3
            }]
        );
    }
}
