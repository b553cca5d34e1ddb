//! The PostgreSQL store (`store.kind = "postgres"`): one database shared by
//! several gateway replicas.
//!
//! Invariants and the choices behind them:
//! - **Atomic single statements.** Every read-modify-write is one statement
//!   (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, or data-modifying
//!   CTEs), so concurrent callers on any replica serialize on the row lock:
//!   N failures count N and epochs never repeat. `bump_epoch` writes the new
//!   epoch and its revocation event in the same statement, hence the same
//!   transaction; the event's `seq` is drawn while the user's row is locked,
//!   so one user's epoch events appear in `seq` order.
//! - **Out-of-order visibility.** Identity values are allocated before commit,
//!   so a smaller `seq` can become visible after a larger one; readers re-read
//!   [`super::REVOCATION_OVERLAP`] behind their cursor to catch those.
//! - **Schema.** Objects live in the schema first on the connection's
//!   `search_path`: the URL's (`options=-c search_path=...`) with
//!   [`PostgresStore::connect`], or one named explicitly with
//!   [`PostgresStore::connect_with_schema`] (created if missing and set on every
//!   connection).
//! - **Migrations** run at connect, in one transaction holding a
//!   transaction-scoped advisory lock keyed by the schema, so replicas starting
//!   together apply them once (see [`super::migrate`]).
//! - The connection URL holds a password: it never appears in `Debug` output or
//!   in errors.
//! - **Behind a pooler.** [`PostgresStore::connect_pooled`] sends queries to a
//!   pooler in transaction mode (see [`super::pooled`]) and does what needs a
//!   session (the migration's advisory lock) over a direct URL, after checking
//!   that both resolve to the same schema.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::migrate;
use super::pooled::Db;
use super::sql::{self, Dialect, REVOCATION_BATCH_LIMIT, Statement, UserRow, db, sql_error, user_columns};
use super::{
    AuditQuery, AuditRecord, CounterKey, FactorRecord, FactorStatus, RevocationBatch, SealedSecret, Store,
    StoreError, StoreResult, TransactionRecord, UserChanges, UserPatch, UserRecord, UserWrite,
};
use crate::clock::UnixTime;

/// How long a call waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per replica.
const MAX_CONNECTIONS: u32 = 10;

/// PostgreSQL store.
pub struct PostgresStore {
    pool: Db,
    /// The schema given to [`PostgresStore::connect_with_schema`], if any.
    schema: Option<String>,
    /// Rows per `revocations_since` call (lowered by tests).
    batch_limit: i64,
}

impl std::fmt::Debug for PostgresStore {
    // Not derived: the pool's options hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` and migrates the schema first on its `search_path`.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::open(url, None, None).await
    }

    /// Connects to `pooled_url`, a pooler (PgBouncer) in transaction mode, for
    /// every query, and to `direct_url`, PostgreSQL itself, to migrate. Both
    /// must lead to the same database and schema (the schema comes from the
    /// pooler's database entry or the role's `search_path`: a pooler passes
    /// no `options`); a mismatch is refused.
    pub async fn connect_pooled(pooled_url: &str, direct_url: &str) -> StoreResult<PostgresStore> {
        Self::open(pooled_url, None, Some(direct_url)).await
    }

    /// Connects to `url` and uses `schema` (created if missing) on every
    /// connection; `schema` is an unquoted identifier (letters, digits, `_`).
    pub async fn connect_with_schema(url: &str, schema: &str) -> StoreResult<PostgresStore> {
        if !is_identifier(schema) {
            return Err(StoreError::Unavailable(format!(
                "invalid PostgreSQL schema name {schema:?}: use letters, digits and _"
            )));
        }
        Self::open(url, Some(schema.to_owned()), None).await
    }

    async fn open(url: &str, schema: Option<String>, direct: Option<&str>) -> StoreResult<PostgresStore> {
        let mut options: PgConnectOptions = url.parse().map_err(db("parse store.url"))?;
        if direct.is_some() {
            // Through a pooler: no statement outlives its transaction (see
            // `pooled`), and no startup parameter the pooler does not know
            // (PgBouncer refuses `extra_float_digits`; no floats are stored).
            options = options.statement_cache_capacity(0).extra_float_digits(None);
        }
        let mut pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if let Some(schema) = &schema {
            // Validated as an identifier above, so quoting it is enough. The
            // schema may not exist yet on the first connection: PostgreSQL
            // skips missing schemas and resolves the path again once it is
            // created by the migration below.
            let set: Arc<str> = format!("SET search_path TO \"{schema}\"").into();
            pool = pool.after_connect(move |conn, _meta| {
                let set = Arc::clone(&set);
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                        .execute(conn)
                        .await
                        .map(drop)
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(db("connect"))?;
        let pool = match direct {
            None => {
                migrate(&pool, schema.as_deref()).await?;
                Db::new(pool, false)
            }
            Some(direct) => {
                let direct: PgConnectOptions = direct.parse().map_err(db("parse store.listen_url"))?;
                let direct = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(direct)
                    .await
                    .map_err(db("connect (store.listen_url)"))?;
                let checked = async {
                    migrate(&direct, None).await?;
                    same_schema(&pool, &direct).await
                }
                .await;
                direct.close().await;
                checked?;
                Db::new(pool, true)
            }
        };
        Ok(PostgresStore {
            pool,
            schema,
            batch_limit: REVOCATION_BATCH_LIMIT,
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Refuses a pooled URL and a direct URL that lead to different schemas (or
/// databases): the replicas would write in one and listen to the other.
async fn same_schema(pooled: &PgPool, direct: &PgPool) -> StoreResult<()> {
    const WHERE: &str = "SELECT current_database() || '.' || coalesce(current_schema(), '')";
    let via_pooler: String = sqlx::query_scalar(WHERE)
        .fetch_one(pooled)
        .await
        .map_err(db("check store.url"))?;
    let direct: String = sqlx::query_scalar(WHERE)
        .fetch_one(direct)
        .await
        .map_err(db("check store.listen_url"))?;
    if via_pooler != direct {
        return Err(StoreError::Unavailable(format!(
            "store.url leads to schema {via_pooler:?} but store.listen_url to {direct:?}: \
             set the schema in the pooler's database entry (connect_query) or with \
             ALTER ROLE ... SET search_path, as in the direct URL"
        )));
    }
    Ok(())
}

/// True for a name that is safe to quote into SQL as an identifier.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// Applies the migrations this database lacks, in one transaction that holds
/// an advisory lock for the schema, so concurrent replicas take turns.
async fn migrate(pool: &PgPool, schema: Option<&str>) -> StoreResult<()> {
    let mut tx = pool.begin().await.map_err(db("begin migration"))?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('portcullis.migrate.' || coalesce($1::text, current_schema(), '')))",
    )
    .bind(schema)
    .execute(&mut *tx)
    .await
    .map_err(db("lock for migration"))?;
    if let Some(schema) = schema {
        // Inside the lock: two replicas creating it at once would otherwise
        // collide on a unique violation.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut *tx)
        .await
        .map_err(db("create schema"))?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT      PRIMARY KEY,
            name       TEXT        NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("create schema_migrations"))?;
    let applied: Vec<(i64, String)> = sqlx::query_as(migrate::APPLIED)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read schema_migrations"))?;
    for m in migrate::pending(migrate::POSTGRES, &applied)? {
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
const DIALECT: Dialect = Dialect::Postgres;

/// What a row type must be to be read from PostgreSQL.
trait PgRowType: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {}
impl<R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin> PgRowType for R {}

/// Running the shared statements of [`super::sql`], all on the one pool.
impl PostgresStore {
    /// Runs `s` and answers the number of rows it changed.
    async fn execute(&self, s: Statement<'_>) -> StoreResult<u64> {
        let args = s.arguments::<Postgres>()?;
        let done = sqlx::query_with(s.sql, args).execute(&self.pool).await;
        Ok(done.map_err(db(s.op))?.rows_affected())
    }

    async fn fetch_one<R: PgRowType>(&self, s: Statement<'_, R>) -> StoreResult<R> {
        let args = s.arguments::<Postgres>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_one(&self.pool).await.map_err(db(s.op))
    }

    async fn fetch_optional<R: PgRowType>(&self, s: Statement<'_, R>) -> StoreResult<Option<R>> {
        let args = s.arguments::<Postgres>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_optional(&self.pool).await.map_err(db(s.op))
    }

    async fn fetch_all<R: PgRowType>(&self, s: Statement<'_, R>) -> StoreResult<Vec<R>> {
        let args = s.arguments::<Postgres>()?;
        let query = sqlx::query_as_with::<_, R, _>(s.sql, args);
        query.fetch_all(&self.pool).await.map_err(db(s.op))
    }

    /// Runs `statements` in one transaction.
    async fn execute_all(&self, op: &'static str, statements: Vec<Statement<'_>>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db(op))?;
        for s in statements {
            let args = s.arguments::<Postgres>()?;
            sqlx::query_with(s.sql, args)
                .execute(&mut *tx)
                .await
                .map_err(db(s.op))?;
        }
        tx.commit().await.map_err(db(op))
    }

    /// Deletes a factor (only while pending activation, with `only_pending`)
    /// and its TOTP step record in one statement, one transaction.
    async fn delete_factor_where(
        &self,
        user_id: &str,
        factor_id: &str,
        only_pending: bool,
    ) -> StoreResult<bool> {
        let statement = if only_pending {
            "WITH f AS (DELETE FROM factors
                        WHERE id = $1 AND user_id = $2 AND status = 'PENDING_ACTIVATION' RETURNING id),
                  s AS (DELETE FROM totp_steps WHERE factor_id IN (SELECT id FROM f))
             SELECT count(*) FROM f"
        } else {
            "WITH f AS (DELETE FROM factors WHERE id = $1 AND user_id = $2 RETURNING id),
                  s AS (DELETE FROM totp_steps WHERE factor_id IN (SELECT id FROM f))
             SELECT count(*) FROM f"
        };
        let deleted: i64 = sqlx::query_scalar(statement)
            .bind(factor_id)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db("delete factor"))?;
        Ok(deleted == 1)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn health(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db("health check"))
    }

    async fn revoke_session(&self, sid: &str, expires_at: UnixTime) -> StoreResult<()> {
        self.execute(sql::revoke_session(sid, expires_at)).await.map(drop)
    }

    async fn bump_epoch(&self, user_id: &str) -> StoreResult<u64> {
        let epoch: i64 = sqlx::query_scalar(
            "WITH bumped AS (
                 INSERT INTO user_epochs (user_id, epoch) VALUES ($1, 1)
                 ON CONFLICT (user_id) DO UPDATE SET epoch = user_epochs.epoch + 1
                 RETURNING epoch
             )
             INSERT INTO revocations (kind, user_id, epoch)
             SELECT 'epoch', $1, epoch FROM bumped
             RETURNING epoch",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("bump epoch"))?;
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
        sqlx::query_scalar("SELECT max(until) FROM locks WHERE until > $1 AND key = ANY($2)")
            .bind(now)
            .bind(keys)
            .fetch_one(&self.pool)
            .await
            .map_err(db("locked until"))
    }

    async fn unlock_user(&self, user_id: &str) -> StoreResult<bool> {
        let removed: i64 = sqlx::query_scalar(
            "WITH l AS (DELETE FROM locks WHERE user_id = $1 RETURNING 1),
                  c AS (DELETE FROM failure_counters WHERE user_id = $1 RETURNING 1)
             SELECT (SELECT count(*) FROM l) + (SELECT count(*) FROM c)",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("unlock user"))?;
        Ok(removed > 0)
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
        let mut tx = self.pool.begin().await.map_err(db("replace recovery codes"))?;
        // Two replacements for one user at once must not leave the union of
        // both sets (under READ COMMITTED the second DELETE would not see the
        // first one's inserts): they take turns on a per-user advisory lock.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('portcullis.recovery.' || $1))")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("replace recovery codes"))?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db("replace recovery codes"))?;
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, hash, created)
             SELECT $1, h, $3 FROM unnest($2::text[]) AS h
             ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(hashes)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("replace recovery codes"))?;
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
        // Concurrent creates of one login on any replica race for the unique
        // index: one inserts, the others get the violation, answered as taken.
        let row: Result<UserRow, sqlx::Error> = sqlx::query_as(concat!(
            "INSERT INTO users (id, seq, login, login_key, status, profile, password_hash, created,
                                activated, status_changed, last_updated, password_changed)
             VALUES ($1, nextval('user_change_seq'), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING ",
            user_columns!()
        ))
        .bind(&user.id)
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
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok(row) => Ok(UserWrite::Written(sql::user_from_row(row)?)),
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
        // One statement; every SET expression reads the row as it was, so the
        // status comparisons see the old status.
        let row: Result<Option<UserRow>, sqlx::Error> = sqlx::query_as(concat!(
            "UPDATE users SET
                 login = coalesce($2::text, login),
                 login_key = coalesce($3::text, login_key),
                 profile = coalesce($4::text, profile),
                 password_hash = coalesce($5::text, password_hash),
                 password_changed = CASE WHEN $5::text IS NULL THEN password_changed ELSE $7::bigint END,
                 status_changed = CASE WHEN $6::text IS NULL OR $6::text = status
                                       THEN status_changed ELSE $7::bigint END,
                 activated = CASE WHEN $6::text = 'ACTIVE' AND activated IS NULL THEN $7::bigint ELSE activated END,
                 status = coalesce($6::text, status),
                 last_updated = $7::bigint,
                 seq = nextval('user_change_seq')
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
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(row)) => Ok(UserWrite::Written(sql::user_from_row(row)?)),
            Ok(None) => Ok(UserWrite::NotFound),
            Err(e) if sql::is_login_conflict(&e) => Ok(UserWrite::LoginTaken),
            Err(e) => Err(sql_error("update user", &e)),
        }
    }

    async fn delete_user(&self, id: &str, now: UnixTime) -> StoreResult<bool> {
        // One statement, one transaction: the user, the deletion entry, and
        // everything the user owned.
        let deleted: i64 = sqlx::query_scalar(
            "WITH u AS (DELETE FROM users WHERE id = $1 RETURNING id),
                  d AS (INSERT INTO deleted_users (id, seq, deleted_at)
                        SELECT id, nextval('user_change_seq'), $2 FROM u),
                  f AS (DELETE FROM factors WHERE user_id IN (SELECT id FROM u) RETURNING id),
                  s AS (DELETE FROM totp_steps WHERE factor_id IN (SELECT id FROM f)),
                  r AS (DELETE FROM recovery_codes WHERE user_id IN (SELECT id FROM u))
             SELECT count(*) FROM u",
        )
        .bind(id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db("delete user"))?;
        Ok(deleted == 1)
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
    use crate::store::conformance::with_postgres_schema;

    async fn migrations(store: &PostgresStore) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT version, name FROM schema_migrations ORDER BY version")
            .fetch_all(&store.pool)
            .await
            .unwrap()
    }

    fn known() -> Vec<(i64, String)> {
        migrate::POSTGRES
            .iter()
            .map(|m| (m.version, m.name.to_owned()))
            .collect()
    }

    #[test]
    fn schema_names_must_be_plain_identifiers() {
        assert!(is_identifier("t_0123abc"));
        assert!(is_identifier("portcullis"));
        for bad in ["", "1abc", "a-b", "a\"b", "a b", "ä", &"x".repeat(64)] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn migrations_are_recorded_and_reconnecting_is_a_no_op() {
        with_postgres_schema(|url, schema| async move {
            let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
            assert_eq!(migrations(&store).await, known());
            store.bump_epoch("alice").await.unwrap();
            store.close().await;
            let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
            assert_eq!(migrations(&store).await, known());
            assert_eq!(
                store.epochs().await.unwrap(),
                [("alice".to_owned(), 1)],
                "data kept"
            );
            store.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn replicas_starting_together_migrate_once() {
        with_postgres_schema(|url, schema| async move {
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let (url, schema) = (url.clone(), schema.clone());
                    tokio::spawn(async move { PostgresStore::connect_with_schema(&url, &schema).await })
                })
                .collect();
            let mut stores = Vec::new();
            for start in starts {
                stores.push(start.await.unwrap().unwrap());
            }
            assert_eq!(migrations(&stores[0]).await, known());
            for store in stores {
                store.close().await;
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_database_from_a_newer_release_is_refused() {
        with_postgres_schema(|url, schema| async move {
            let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
                .execute(&store.pool)
                .await
                .unwrap();
            store.close().await;
            let err = PostgresStore::connect_with_schema(&url, &schema)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt(m)
                    if m.contains("database schema version 999 is newer than this build supports")),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_url_search_path_is_honoured() {
        with_postgres_schema(|url, schema| async move {
            // Create the schema first: a URL's search_path is not created for us.
            PostgresStore::connect_with_schema(&url, &schema)
                .await
                .unwrap()
                .close()
                .await;
            let sep = if url.contains('?') { '&' } else { '?' };
            let with_path = format!("{url}{sep}options=-c%20search_path%3D{schema}");
            let store = PostgresStore::connect(&with_path).await.unwrap();
            let current: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(current, schema);
            assert_eq!(migrations(&store).await, known());
            store.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn errors_and_debug_output_never_show_the_password() {
        with_postgres_schema(|url, schema| async move {
            let mut wrong = url::Url::parse(&url).unwrap();
            wrong.set_password(Some("hunter2-secret")).unwrap();
            wrong.set_path("/portcullis_no_such_database");
            let err = PostgresStore::connect(wrong.as_str()).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");

            let mut right = url::Url::parse(&url).unwrap();
            right.set_password(Some("hunter2-secret")).unwrap();
            let store = PostgresStore::connect_with_schema(right.as_str(), &schema)
                .await
                .unwrap();
            let debug = format!("{store:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            store.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn revocations_are_read_in_bounded_batches() {
        with_postgres_schema(|url, schema| async move {
            let mut store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
            store.batch_limit = 3;
            for i in 0..7 {
                store
                    .revoke_session(&format!("s{i}"), if i % 2 == 0 { 50 } else { 500 })
                    .await
                    .unwrap();
            }
            let mut cursor = 0;
            let mut sizes = Vec::new();
            loop {
                let batch = store.revocations_since(cursor, 100).await.unwrap();
                if batch.cursor == cursor {
                    break;
                }
                sizes.push(batch.events.len());
                cursor = batch.cursor;
            }
            assert_eq!(sizes, [1, 2, 0]);
            store.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn purge_drops_superseded_epoch_events() {
        with_postgres_schema(|url, schema| async move {
            let store = PostgresStore::connect_with_schema(&url, &schema).await.unwrap();
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
            store.close().await;
        })
        .await;
    }
}
