//! What the SQL backends ([`super::sqlite`], [`super::postgres`]) share: the
//! statements that are the same for both, with their arguments, the row
//! types and their decoding, and the mapping of driver errors.
//!
//! Both backends take `$N` placeholders, so most statements are one text.
//! Each operation here returns a [`Statement`]: its text, its arguments in
//! order, whether it writes (SQLite sends writes to its single writer
//! connection, reads to its readers; PostgreSQL has one pool) and, as a type
//! parameter, the row it returns. A backend runs it with its own pool and
//! decodes the rows with the functions below.
//!
//! What differs stays in the backend files, on purpose: PostgreSQL does each
//! read-modify-write as one atomic statement (`ON CONFLICT`, data-modifying
//! CTEs, `nextval`, advisory locks) because several replicas share the
//! database, while SQLite runs the same steps as separate statements inside
//! a `BEGIN IMMEDIATE` transaction on its one writer. Where only a word of a
//! shared statement differs (a function name, a cast, the insertion-order
//! column), the [`Dialect`] picks it here.

use std::marker::PhantomData;

use sqlx::{Arguments as _, Database, Encode, Type};

use super::{
    AuditQuery, AuditRecord, CounterKey, FactorRecord, FactorStatus, RevocationBatch, RevocationEvent,
    SealedSecret, StoreError, StoreResult, TransactionRecord, UserChanges, UserRecord, UserStatus,
};
use crate::clock::UnixTime;

/// The SQL dialect a shared statement is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}
// Insertion order, where a statement needs it, is SQLite's `rowid` and the
// identity column `seq` in PostgreSQL.

/// One bound value. Every value either backend binds is text, an integer or
/// bytes, each possibly `NULL` (an `Option` encodes like its inner type).
#[derive(Debug)]
pub(super) enum Arg<'a> {
    Text(Option<std::borrow::Cow<'a, str>>),
    Int(Option<i64>),
    Bytes(Option<&'a [u8]>),
}

/// `From` for each type an operation passes as an argument.
macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl<'a> From<$t> for Arg<'a> {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}
arg_from! {
    &'a str => |v| Arg::Text(Some(v.into()));
    &'a String => |v| Arg::Text(Some(v.as_str().into()));
    String => |v| Arg::Text(Some(v.into()));
    Option<&'a str> => |v| Arg::Text(v.map(Into::into));
    i64 => |v| Arg::Int(Some(v));
    Option<i64> => |v| Arg::Int(v);
    Option<&'a [u8]> => |v| Arg::Bytes(v);
}

/// A statement to run: the operation it belongs to (for error messages), its
/// text, its arguments, whether it writes, and the row type `R` it returns
/// (`()` when it returns none).
#[derive(Debug)]
pub(super) struct Statement<'a, R = ()> {
    pub op: &'static str,
    pub sql: &'static str,
    pub args: Vec<Arg<'a>>,
    pub writes: bool,
    row: PhantomData<fn() -> R>,
}

impl<'a, R> Statement<'a, R> {
    fn read(op: &'static str, sql: &'static str, args: Vec<Arg<'a>>) -> Self {
        Statement {
            op,
            sql,
            args,
            writes: false,
            row: PhantomData,
        }
    }

    fn write(op: &'static str, sql: &'static str, args: Vec<Arg<'a>>) -> Self {
        Statement {
            writes: true,
            ..Statement::read(op, sql, args)
        }
    }

    /// The arguments, bound for the backend `DB` (a value that cannot be
    /// encoded fails like a `.bind()` would, as the driver's encode error).
    pub fn arguments<DB: Database>(&self) -> StoreResult<DB::Arguments>
    where
        for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<&'t [u8]>: Encode<'t, DB> + Type<DB>,
    {
        let mut out = DB::Arguments::default();
        for arg in &self.args {
            let added = match arg {
                Arg::Text(v) => out.add(v.as_deref()),
                Arg::Int(v) => out.add(*v),
                Arg::Bytes(v) => out.add(*v),
            };
            added.map_err(|e| sql_error(self.op, &sqlx::Error::Encode(e)))?;
        }
        Ok(out)
    }
}

/// A one-column row.
pub(super) type One<T> = (T,);

/// `vec![...]` of [`Arg`]s from values of any supported type.
macro_rules! args {
    ($($v:expr),* $(,)?) => { vec![$(Arg::from($v)),*] };
}

// ---- rows and errors --------------------------------------------------------

/// Most revocation-log rows one `revocations_since` call reads, so a reader
/// far behind catches up in bounded steps instead of one huge answer. It must
/// stay well above [`super::REVOCATION_OVERLAP`], or a reader re-reading the
/// overlap would never advance.
pub(super) const REVOCATION_BATCH_LIMIT: i64 = 10_000;

/// How long a failure counter is kept after its window started. The trait's
/// `purge_expired` does not know each counter's window; this matches the
/// memory store and is far above any configured window.
pub(super) const COUNTER_RETENTION: i64 = 86_400;

/// A revocation-log row: `(seq, kind, sid, user_id, epoch, expires_at)`.
pub(super) type RevocationRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Turns rows read in `seq` order after `cursor` into a batch: expired session
/// events are dropped, but the cursor still moves past them, so a reader does
/// not read them again.
/// `limit` is the most rows the query could return: a batch that reached it
/// says there may be more.
pub(super) fn revocation_batch(
    rows: Vec<RevocationRow>,
    cursor: i64,
    now: UnixTime,
    limit: i64,
) -> StoreResult<RevocationBatch> {
    let mut batch = RevocationBatch {
        events: Vec::with_capacity(rows.len()),
        cursor,
        more: i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit,
    };
    for (seq, kind, sid, user_id, epoch, expires_at) in rows {
        batch.cursor = batch.cursor.max(seq);
        match (kind.as_str(), sid, user_id, epoch, expires_at) {
            ("session", Some(sid), None, None, Some(expires_at)) => {
                if expires_at > now {
                    batch.events.push(RevocationEvent::Session { sid, expires_at });
                }
            }
            ("epoch", None, Some(user_id), Some(epoch), None) => {
                batch.events.push(RevocationEvent::Epoch {
                    user_id,
                    epoch: epoch_from_db(epoch)?,
                });
            }
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "revocation {seq} has an invalid shape"
                )));
            }
        }
    }
    Ok(batch)
}

/// The columns of `factors` every query selects, in [`FactorRow`] order (a
/// macro so that `concat!` keeps each statement a `&'static str`).
macro_rules! factor_columns {
    () => {
        "id, user_id, factor_type, provider, status, profile, secret_key_id, secret_blob, created, last_updated"
    };
}

/// A `factors` row: `(id, user_id, factor_type, provider, status, profile,
/// secret_key_id, secret_blob, created, last_updated)`.
pub(super) type FactorRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<Vec<u8>>,
    i64,
    i64,
);

/// A sealed secret as its two columns, `(secret_key_id, secret_blob)`.
pub(super) fn split_secret(secret: Option<&SealedSecret>) -> (Option<&str>, Option<&[u8]>) {
    match secret {
        Some(s) => (Some(s.key_id.as_str()), Some(s.blob.as_slice())),
        None => (None, None),
    }
}

/// A factor's profile as the JSON text stored.
pub(super) fn factor_profile(factor: &FactorRecord) -> StoreResult<String> {
    profile_text(&factor.profile)
}

/// A profile as the JSON text stored.
pub(super) fn profile_text(profile: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(profile)
        .map_err(|_| StoreError::Corrupt("a factor profile cannot be encoded".into()))
}

/// Decodes a `factors` row; a row this build cannot read is
/// [`StoreError::Corrupt`] (the message names no stored value, not even the id).
pub(super) fn factor_from_row(row: FactorRow) -> StoreResult<FactorRecord> {
    let (id, user_id, factor_type, provider, status, profile, key_id, blob, created, last_updated) = row;
    let status = FactorStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt("a factor has an unknown status".to_owned()))?;
    let profile = serde_json::from_str(&profile)
        .map_err(|_| StoreError::Corrupt("a factor has a profile that is not JSON".to_owned()))?;
    let secret = match (key_id, blob) {
        (Some(key_id), Some(blob)) => Some(SealedSecret { key_id, blob }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Corrupt("a factor has half a sealed secret".into()));
        }
    };
    Ok(FactorRecord {
        id,
        user_id,
        factor_type,
        provider,
        status,
        profile,
        secret,
        created,
        last_updated,
    })
}

/// The columns of `transactions` every query selects, in [`TransactionRow`] order.
macro_rules! transaction_columns {
    () => {
        "id, kind, user_id, data, version, expires_at"
    };
}

/// An `audit_events` row: `(seq, uuid, published_ms, event_type, search, body)`.
pub(super) type AuditRow = (i64, String, i64, String, String, String);

/// Decodes an `audit_events` row.
pub(super) fn audit_from_row(row: AuditRow) -> StoreResult<AuditRecord> {
    let (seq, uuid, published_ms, event_type, search, body) = row;
    let body =
        serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("audit event {uuid}: {e}")))?;
    Ok(AuditRecord {
        uuid,
        published_ms,
        event_type,
        search,
        body,
        seq,
    })
}

/// An audit query with numbered parameters: $1 since, $2 until, $3 q, $4/$5
/// the cursor, $6 the limit. `int`/`text` are the casts PostgreSQL needs for
/// parameters that may be NULL, `find` the substring test.
macro_rules! audit_query {
    ($int:literal, $text:literal, $find:literal, $cmp:literal, $dir:literal) => {
        concat!(
            "SELECT seq, uuid, published_ms, event_type, search, body FROM audit_events
             WHERE ($1",
            $int,
            " IS NULL OR published_ms >= $1",
            $int,
            ")
               AND ($2",
            $int,
            " IS NULL OR published_ms < $2",
            $int,
            ")
               AND ($3",
            $text,
            " IS NULL OR ",
            $find,
            " > 0)
               AND ($4",
            $int,
            " IS NULL OR published_ms ",
            $cmp,
            " $4",
            $int,
            "
                    OR (published_ms = $4",
            $int,
            " AND seq ",
            $cmp,
            " $5",
            $int,
            "))
             ORDER BY published_ms ",
            $dir,
            ", seq ",
            $dir,
            " LIMIT $6"
        )
    };
}

/// The audit query for a backend (`pg`) and an order.
pub(super) fn audit_query_sql(descending: bool, pg: bool) -> &'static str {
    match (pg, descending) {
        (false, false) => audit_query!("", "", "instr(search, $3)", ">", "ASC"),
        (false, true) => audit_query!("", "", "instr(search, $3)", "<", "DESC"),
        (true, false) => audit_query!("::bigint", "::text", "strpos(search, $3::text)", ">", "ASC"),
        (true, true) => audit_query!("::bigint", "::text", "strpos(search, $3::text)", "<", "DESC"),
    }
}

/// An audit event's body as stored text.
pub(super) fn audit_body(e: &AuditRecord) -> StoreResult<String> {
    serde_json::to_string(&e.body).map_err(|err| StoreError::Corrupt(format!("audit event: {err}")))
}

/// A `transactions` row: `(id, kind, user_id, data, version, expires_at)`.
pub(super) type TransactionRow = (String, String, String, String, i64, i64);

/// A transaction's data as JSON text.
pub(super) fn transaction_data(t: &TransactionRecord) -> StoreResult<String> {
    serde_json::to_string(&t.data)
        .map_err(|_| StoreError::Corrupt("transaction data cannot be encoded".into()))
}

/// Decodes a `transactions` row.
pub(super) fn transaction_from_row(row: TransactionRow) -> StoreResult<TransactionRecord> {
    let (id, kind, user_id, data, version, expires_at) = row;
    let data = serde_json::from_str(&data)
        .map_err(|_| StoreError::Corrupt("a transaction holds data that is not JSON".into()))?;
    Ok(TransactionRecord {
        id,
        kind,
        user_id,
        data,
        version,
        expires_at,
    })
}

/// The columns of `users` every query selects, in [`UserRow`] order.
macro_rules! user_columns {
    () => {
        "id, seq, login, status, profile, password_hash, created, activated, status_changed, last_updated, password_changed"
    };
}
pub(super) use user_columns;

/// A `users` row: `(id, seq, login, status, profile, password_hash, created,
/// activated, status_changed, last_updated, password_changed)`.
pub(super) type UserRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
);

/// A change-log row: `(seq, id, deleted)` followed by the [`UserRow`]
/// columns after `seq`, all `NULL` for a deletion.
pub(super) type UserChangeRow = (
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A user's profile as the JSON text stored.
pub(super) fn user_profile(profile: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(profile)
        .map_err(|_| StoreError::Corrupt("write user: the profile cannot be encoded".into()))
}

/// The key a login is unique by: lower case, Unicode-aware (the same rule as
/// the memory store and the user directory).
pub(super) fn login_key(login: &str) -> String {
    login.to_lowercase()
}

/// Decodes a `users` row (messages name no stored value).
pub(super) fn user_from_row(row: UserRow) -> StoreResult<UserRecord> {
    let (
        id,
        seq,
        login,
        status,
        profile,
        password_hash,
        created,
        activated,
        status_changed,
        last_updated,
        password_changed,
    ) = row;
    let status = UserStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt("a user has an unknown status".into()))?;
    let profile = serde_json::from_str(&profile)
        .map_err(|_| StoreError::Corrupt("a user has a profile that is not JSON".into()))?;
    Ok(UserRecord {
        id,
        login,
        status,
        profile,
        password_hash,
        created,
        activated,
        status_changed,
        last_updated,
        password_changed,
        seq,
    })
}

/// Turns change-log rows read in `seq` order after `cursor` into changes.
pub(super) fn user_changes(rows: Vec<UserChangeRow>, cursor: i64) -> StoreResult<UserChanges> {
    let mut out = UserChanges {
        cursor,
        ..UserChanges::default()
    };
    for row in rows {
        let (seq, id, deleted, login, status, profile, hash, created, activated, changed, updated, pw) = row;
        out.cursor = out.cursor.max(seq);
        if deleted != 0 {
            out.deleted.push((id, seq));
            continue;
        }
        match (login, status, profile, created, updated) {
            (Some(login), Some(status), Some(profile), Some(created), Some(updated)) => {
                out.users.push(user_from_row((
                    id, seq, login, status, profile, hash, created, activated, changed, updated, pw,
                ))?);
            }
            _ => return Err(StoreError::Corrupt("a user change has an invalid shape".into())),
        }
    }
    Ok(out)
}

/// True when `err` is a unique violation on `users.login_key` (the other
/// unique key, the id, is random and never collides in practice).
pub(super) fn is_login_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                && (db.constraint() == Some("users_login_key_key") || db.message().contains("login_key"))
        }
        _ => false,
    }
}

/// A stored epoch as the trait's `u64` (the schema keeps it positive).
pub(super) fn epoch_from_db(epoch: i64) -> StoreResult<u64> {
    u64::try_from(epoch).map_err(|_| StoreError::Corrupt("negative session epoch".into()))
}

/// A stored failure count as the trait's `u32`, saturating like the memory store.
pub(super) fn count_from_db(count: i64) -> StoreResult<u32> {
    if count < 0 {
        return Err(StoreError::Corrupt("negative failure count".into()));
    }
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// `map_err` adapter: [`sql_error`] for the operation `op`.
pub(super) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |err| sql_error(op, &err)
}

/// Maps a driver error to a [`StoreError`] whose message names the operation
/// and the kind of failure but never a bound value (keys, session ids and user
/// ids stay out of logs and responses).
///
/// The database's own message is kept only where it cannot quote data: always
/// for SQLite (its messages are fixed texts and column names), and for
/// PostgreSQL only in the SQLSTATE classes about connections, authorization,
/// missing objects, syntax and resources, never for data exceptions (class
/// 22, whose messages may quote the offending value).
pub(super) fn sql_error(op: &str, err: &sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let what = match err {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), also as extended codes.
                let primary = code.parse::<i32>().unwrap_or(0) & 0xff;
                if primary == 11 || primary == 26 {
                    return StoreError::Corrupt(format!("{op}: {} (sqlite code {code})", db.message()));
                }
                format!("{} (sqlite code {code})", db.message())
            } else if ["08", "28", "3D", "3F", "42", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
            {
                format!("{} (SQLSTATE {code})", db.message())
            } else {
                format!("database error (SQLSTATE {code})")
            }
        }
        E::Io(e) => format!("I/O error: {e}"),
        E::Tls(e) => format!("TLS error: {e}"),
        E::Configuration(e) => format!("invalid connection settings: {e}"),
        E::PoolTimedOut => "timed out waiting for a database connection".into(),
        E::PoolClosed => "the connection pool is closed".into(),
        E::Protocol(_) => "unexpected data from the database".into(),
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            return StoreError::Corrupt(format!("{op}: stored data has an unexpected type"));
        }
        _ => "database driver error".into(),
    };
    StoreError::Unavailable(format!("{op}: {what}"))
}

// ---- revocations, counters, locks ----------------------------------------

pub(super) fn revoke_session(sid: &str, expires_at: UnixTime) -> Statement<'_> {
    Statement::write(
        "revoke session",
        "INSERT INTO revocations (kind, sid, expires_at) VALUES ('session', $1, $2)",
        args![sid, expires_at],
    )
}

pub(super) fn epochs() -> Statement<'static, (String, i64)> {
    Statement::read("read epochs", "SELECT user_id, epoch FROM user_epochs", args![])
}

pub(super) fn revocations_since(cursor: i64, limit: i64) -> Statement<'static, RevocationRow> {
    Statement::read(
        "read revocations",
        "SELECT seq, kind, sid, user_id, epoch, expires_at FROM revocations
         WHERE seq > $1 ORDER BY seq LIMIT $2",
        args![cursor, limit],
    )
}

/// One statement, so the read of the old count and the write of the new one
/// cannot interleave with another caller's (SQLite: the single writer;
/// PostgreSQL: concurrent callers serialize on the row, or on the speculative
/// insert of a new key, and each sees its own count). `$4` is the latest
/// window start that has run out, computed here saturating, so no SQL
/// arithmetic can overflow.
pub(super) fn record_failure(key: &CounterKey, window: i64, now: UnixTime) -> Statement<'_, One<i64>> {
    Statement::write(
        "record failure",
        "INSERT INTO failure_counters (key, user_id, window_start, count) VALUES ($1, $2, $3, 1)
         ON CONFLICT (key) DO UPDATE SET
             window_start = CASE WHEN failure_counters.window_start <= $4
                                 THEN excluded.window_start ELSE failure_counters.window_start END,
             count = CASE WHEN failure_counters.window_start <= $4
                          THEN 1 ELSE failure_counters.count + 1 END
         RETURNING count",
        args![&key.key, key.user_id.as_deref(), now, now.saturating_sub(window)],
    )
}

/// Takes one failure back: a count of one goes (the table holds positive
/// counts only), a larger one drops by one. Run together, in one transaction.
pub(super) fn forgive_failure(key: &str) -> Vec<Statement<'_>> {
    vec![
        Statement::write(
            "forgive failure",
            "DELETE FROM failure_counters WHERE key = $1 AND count <= 1",
            args![key],
        ),
        Statement::write(
            "forgive failure",
            "UPDATE failure_counters SET count = count - 1 WHERE key = $1 AND count > 1",
            args![key],
        ),
    ]
}

pub(super) fn clear_failures(key: &str) -> Statement<'_> {
    Statement::write(
        "clear failures",
        "DELETE FROM failure_counters WHERE key = $1",
        args![key],
    )
}

pub(super) fn lock(dialect: Dialect, key: &CounterKey, until: UnixTime) -> Statement<'_> {
    // SQLite's two-argument max() is PostgreSQL's GREATEST().
    let sql = match dialect {
        Dialect::Sqlite => {
            "INSERT INTO locks (key, user_id, until) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET until = max(locks.until, excluded.until)"
        }
        Dialect::Postgres => {
            "INSERT INTO locks (key, user_id, until) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET until = GREATEST(locks.until, excluded.until)"
        }
    };
    Statement::write("lock", sql, args![&key.key, key.user_id.as_deref(), until])
}

// ---- factors ----------------------------------------------------------------

pub(super) fn insert_factor(factor: &FactorRecord) -> StoreResult<Statement<'_>> {
    let (key_id, blob) = split_secret(factor.secret.as_ref());
    Ok(Statement::write(
        "insert factor",
        "INSERT INTO factors (id, user_id, factor_type, provider, status, profile,
                              secret_key_id, secret_blob, created, last_updated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        args![
            &factor.id,
            &factor.user_id,
            &factor.factor_type,
            &factor.provider,
            factor.status.as_str(),
            factor_profile(factor)?,
            key_id,
            blob,
            factor.created,
            factor.last_updated,
        ],
    ))
}

pub(super) fn get_factor<'a>(user_id: &'a str, factor_id: &'a str) -> Statement<'a, FactorRow> {
    Statement::read(
        "get factor",
        concat!(
            "SELECT ",
            factor_columns!(),
            " FROM factors WHERE id = $1 AND user_id = $2"
        ),
        args![factor_id, user_id],
    )
}

pub(super) fn list_factors(dialect: Dialect, user_id: &str) -> Statement<'_, FactorRow> {
    // Ties in `created` go by insertion order (`rowid` / `seq`).
    let sql = match dialect {
        Dialect::Sqlite => concat!(
            "SELECT ",
            factor_columns!(),
            " FROM factors WHERE user_id = $1 ORDER BY created, rowid"
        ),
        Dialect::Postgres => concat!(
            "SELECT ",
            factor_columns!(),
            " FROM factors WHERE user_id = $1 ORDER BY created, seq"
        ),
    };
    Statement::read("list factors", sql, args![user_id])
}

pub(super) fn activate_factor<'a>(user_id: &'a str, factor_id: &'a str, now: UnixTime) -> Statement<'a> {
    Statement::write(
        "activate factor",
        "UPDATE factors SET status = 'ACTIVE', last_updated = $3
         WHERE id = $1 AND user_id = $2 AND status = 'PENDING_ACTIVATION'",
        args![factor_id, user_id, now],
    )
}

pub(super) fn update_factor_profile<'a>(
    user_id: &'a str,
    factor_id: &'a str,
    expected: FactorStatus,
    profile: &serde_json::Value,
    status: FactorStatus,
    now: UnixTime,
) -> StoreResult<Statement<'a>> {
    Ok(Statement::write(
        "update factor profile",
        "UPDATE factors SET profile = $4, status = $5, last_updated = $6
         WHERE id = $1 AND user_id = $2 AND status = $3",
        args![
            factor_id,
            user_id,
            expected.as_str(),
            profile_text(profile)?,
            status.as_str(),
            now
        ],
    ))
}

/// One statement: the comparison with the last step and the write of the new
/// one cannot interleave with another claim (concurrent claims on any
/// PostgreSQL replica serialize on the row, or on the speculative insert of
/// the first one). A refused claim changes no row.
pub(super) fn claim_totp_step(factor_id: &str, step: i64) -> Statement<'_> {
    Statement::write(
        "claim totp step",
        "INSERT INTO totp_steps (factor_id, last_step) VALUES ($1, $2)
         ON CONFLICT (factor_id) DO UPDATE SET last_step = excluded.last_step
         WHERE totp_steps.last_step < excluded.last_step",
        args![factor_id, step],
    )
}

pub(super) fn secret_key_ids() -> Statement<'static, One<String>> {
    Statement::read(
        "read secret key ids",
        "SELECT DISTINCT secret_key_id FROM factors
         WHERE secret_key_id IS NOT NULL ORDER BY secret_key_id",
        args![],
    )
}

pub(super) fn factors_sealed_with_other_keys(
    dialect: Dialect,
    key_id: &str,
    limit: u32,
) -> Statement<'_, FactorRow> {
    let sql = match dialect {
        Dialect::Sqlite => concat!(
            "SELECT ",
            factor_columns!(),
            " FROM factors WHERE secret_key_id IS NOT NULL AND secret_key_id <> $1
             ORDER BY rowid LIMIT $2"
        ),
        Dialect::Postgres => concat!(
            "SELECT ",
            factor_columns!(),
            " FROM factors WHERE secret_key_id IS NOT NULL AND secret_key_id <> $1
             ORDER BY seq LIMIT $2"
        ),
    };
    Statement::read("read factors to re-seal", sql, args![key_id, i64::from(limit)])
}

pub(super) fn replace_factor_secret<'a>(
    factor_id: &'a str,
    old: &'a SealedSecret,
    new: &'a SealedSecret,
) -> Statement<'a> {
    Statement::write(
        "replace factor secret",
        "UPDATE factors SET secret_key_id = $4, secret_blob = $5
         WHERE id = $1 AND secret_key_id = $2 AND secret_blob = $3",
        args![
            factor_id,
            &old.key_id,
            Some(old.blob.as_slice()),
            &new.key_id,
            Some(new.blob.as_slice())
        ],
    )
}

// ---- recovery codes ---------------------------------------------------------

pub(super) fn use_recovery_code<'a>(user_id: &'a str, hash: &'a str) -> Statement<'a> {
    Statement::write(
        "use recovery code",
        "DELETE FROM recovery_codes WHERE user_id = $1 AND hash = $2",
        args![user_id, hash],
    )
}

pub(super) fn recovery_codes_left(user_id: &str) -> Statement<'_, One<i64>> {
    Statement::read(
        "count recovery codes",
        "SELECT count(*) FROM recovery_codes WHERE user_id = $1",
        args![user_id],
    )
}

// ---- transactions -----------------------------------------------------------

pub(super) fn put_transaction(t: &TransactionRecord) -> StoreResult<Statement<'_>> {
    Ok(Statement::write(
        "put transaction",
        "INSERT INTO transactions (id, kind, user_id, data, version, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            &t.id,
            &t.kind,
            &t.user_id,
            transaction_data(t)?,
            t.version,
            t.expires_at
        ],
    ))
}

pub(super) fn get_transaction<'a>(
    kind: &'a str,
    id: &'a str,
    now: UnixTime,
) -> Statement<'a, TransactionRow> {
    Statement::read(
        "get transaction",
        concat!(
            "SELECT ",
            transaction_columns!(),
            " FROM transactions WHERE id = $1 AND kind = $2 AND expires_at > $3"
        ),
        args![id, kind, now],
    )
}

pub(super) fn update_transaction(t: &TransactionRecord, now: UnixTime) -> StoreResult<Statement<'_>> {
    Ok(Statement::write(
        "update transaction",
        "UPDATE transactions SET user_id = $4, data = $5, expires_at = $6, version = version + 1
         WHERE id = $1 AND kind = $2 AND version = $3 AND expires_at > $7",
        args![
            &t.id,
            &t.kind,
            t.version,
            &t.user_id,
            transaction_data(t)?,
            t.expires_at,
            now
        ],
    ))
}

pub(super) fn take_transaction<'a>(
    kind: &'a str,
    id: &'a str,
    now: UnixTime,
) -> Statement<'a, TransactionRow> {
    Statement::write(
        "take transaction",
        concat!(
            "DELETE FROM transactions WHERE id = $1 AND kind = $2 AND expires_at > $3 RETURNING ",
            transaction_columns!()
        ),
        args![id, kind, now],
    )
}

// ---- users ------------------------------------------------------------------

pub(super) fn get_user(id: &str) -> Statement<'_, UserRow> {
    Statement::read(
        "get user",
        concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
        args![id],
    )
}

pub(super) fn get_user_by_login(login: &str) -> Statement<'static, UserRow> {
    Statement::read(
        "get user by login",
        concat!("SELECT ", user_columns!(), " FROM users WHERE login_key = $1"),
        args![login_key(login)],
    )
}

pub(super) fn list_users(dialect: Dialect, after: Option<&str>, limit: u32) -> Statement<'_, UserRow> {
    let sql = match dialect {
        Dialect::Sqlite => concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE $1 IS NULL OR id > $1 ORDER BY id LIMIT $2"
        ),
        // Byte order (COLLATE "C"), as the other backends and the directory
        // sort, whatever the database's collation; the casts type the
        // parameter that may be NULL.
        Dialect::Postgres => concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE $1::text IS NULL OR id COLLATE \"C\" > $1::text
             ORDER BY id COLLATE \"C\" LIMIT $2"
        ),
    };
    Statement::read("list users", sql, args![after, i64::from(limit)])
}

pub(super) fn users_changed_since(
    dialect: Dialect,
    cursor: i64,
    limit: u32,
) -> Statement<'static, UserChangeRow> {
    let sql = match dialect {
        Dialect::Sqlite => {
            "SELECT seq, id, 0, login, status, profile, password_hash, created, activated,
                    status_changed, last_updated, password_changed
             FROM users WHERE seq > $1
             UNION ALL
             SELECT seq, id, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM deleted_users WHERE seq > $1
             ORDER BY 1 LIMIT $2"
        }
        // PostgreSQL needs the types of the constant columns spelled out.
        Dialect::Postgres => {
            "SELECT seq, id, 0::bigint, login, status, profile, password_hash, created, activated,
                    status_changed, last_updated, password_changed
             FROM users WHERE seq > $1
             UNION ALL
             SELECT seq, id, 1::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint
             FROM deleted_users WHERE seq > $1
             ORDER BY 1 LIMIT $2"
        }
    };
    Statement::read("read user changes", sql, args![cursor, i64::from(limit)])
}

// ---- housekeeping -----------------------------------------------------------

/// One statement per event, run by the backend in one transaction.
pub(super) fn insert_audit_events(events: &[AuditRecord]) -> StoreResult<Vec<Statement<'_>>> {
    events
        .iter()
        .map(|e| {
            Ok(Statement::write(
                "insert audit events",
                "INSERT INTO audit_events (uuid, published_ms, event_type, search, body)
                 VALUES ($1, $2, $3, $4, $5)",
                args![&e.uuid, e.published_ms, &e.event_type, &e.search, audit_body(e)?],
            ))
        })
        .collect()
}

pub(super) fn query_audit_events(dialect: Dialect, query: &AuditQuery) -> Statement<'_, AuditRow> {
    Statement::read(
        "query audit events",
        audit_query_sql(query.descending, dialect == Dialect::Postgres),
        args![
            query.since_ms,
            query.until_ms,
            query.q.as_deref(),
            query.after.map(|a| a.published_ms),
            query.after.map(|a| a.seq),
            i64::from(query.limit),
        ],
    )
}

pub(super) fn purge_audit_events(before_ms: i64) -> Statement<'static> {
    Statement::write(
        "purge audit events",
        "DELETE FROM audit_events WHERE published_ms < $1",
        args![before_ms],
    )
}

/// What `purge_expired` deletes, in order, run by the backend in one
/// transaction.
pub(super) fn purge_expired(dialect: Dialect, now: UnixTime) -> Vec<Statement<'static>> {
    // An epoch event is superseded once the user's epoch has moved past it:
    // readers keep the maximum, so the newest event says it all. (In
    // PostgreSQL the newest event commits together with the epoch row, so it
    // is always visible.) SQLite has no DELETE ... USING.
    let superseded_epochs = match dialect {
        Dialect::Sqlite => {
            "DELETE FROM revocations WHERE kind = 'epoch' AND epoch <
                 (SELECT e.epoch FROM user_epochs e WHERE e.user_id = revocations.user_id)"
        }
        Dialect::Postgres => {
            "DELETE FROM revocations r USING user_epochs e
             WHERE r.kind = 'epoch' AND e.user_id = r.user_id AND r.epoch < e.epoch"
        }
    };
    vec![
        Statement::write("purge", "DELETE FROM locks WHERE until <= $1", args![now]),
        Statement::write(
            "purge",
            "DELETE FROM failure_counters WHERE window_start <= $1",
            args![now.saturating_sub(COUNTER_RETENTION)],
        ),
        Statement::write(
            "purge",
            "DELETE FROM revocations WHERE kind = 'session' AND expires_at <= $1",
            args![now],
        ),
        Statement::write(
            "purge",
            "DELETE FROM transactions WHERE expires_at <= $1",
            args![now],
        ),
        Statement::write("purge", superseded_epochs, args![]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_skip_expired_sessions_but_advance_the_cursor() {
        let rows = vec![
            (
                5,
                "session".to_owned(),
                Some("a".to_owned()),
                None,
                None,
                Some(100),
            ),
            (7, "epoch".to_owned(), None, Some("u".to_owned()), Some(2), None),
            (
                9,
                "session".to_owned(),
                Some("b".to_owned()),
                None,
                None,
                Some(50),
            ),
        ];
        let batch = revocation_batch(rows.clone(), 3, 60, 10).unwrap();
        assert_eq!(batch.cursor, 9);
        assert!(!batch.more, "3 rows of at most 10");
        assert!(
            revocation_batch(rows, 3, 60, 3).unwrap().more,
            "3 rows of at most 3"
        );
        assert_eq!(
            batch.events,
            [
                RevocationEvent::Session {
                    sid: "a".into(),
                    expires_at: 100
                },
                RevocationEvent::Epoch {
                    user_id: "u".into(),
                    epoch: 2
                },
            ]
        );
        let bad = vec![(1, "session".to_owned(), None, None, None, Some(1))];
        assert!(matches!(
            revocation_batch(bad, 0, 0, 10),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn driver_details_stay_out_of_errors_and_conversions_saturate() {
        let err = sql_error("op", &sqlx::Error::Protocol("secret-value".into()));
        assert!(!err.to_string().contains("secret-value"));
        assert!(matches!(count_from_db(i64::MAX), Ok(u32::MAX)));
        assert!(epoch_from_db(-1).is_err());
    }
}
