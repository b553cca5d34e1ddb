//! What the SQL backends ([`super::sqlite`], [`super::postgres`]) share: the
//! list of schema migrations and the rules for applying them, plus row
//! decoding and error mapping.
//!
//! Migrations are append-only and numbered from 1 without gaps. Migration `N`
//! has one SQL file per backend, `migrations/<backend>/NNNN_<name>.sql`,
//! embedded at build time, so a binary always carries the whole history and
//! can bring a database of any earlier release up to date. Each backend
//! records what it applied in `schema_migrations(version, name, applied_at)`
//! and applies what is missing inside one transaction at open, so a failed
//! upgrade leaves the database as it was. A database that records a version
//! this build does not know, or a different history, is refused as
//! [`StoreError::Corrupt`] rather than written to.
//!
//! To add a migration: write `migrations/sqlite/000N_x.sql` and
//! `migrations/postgres/000N_x.sql`, then append one entry to both lists
//! below (the tests check that the lists agree and are numbered 1, 2, 3...).

use super::{
    AuditRecord, FactorRecord, FactorStatus, RevocationBatch, RevocationEvent, SealedSecret, StoreError,
    StoreResult, TransactionRecord, UserChanges, UserRecord, UserStatus,
};
use crate::clock::UnixTime;

/// One schema migration: its number, its name and the SQL that applies it.
#[derive(Debug)]
pub(super) struct Migration {
    /// Position in the history, from 1.
    pub version: i64,
    /// A short name, recorded next to the version.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// Every SQLite migration, oldest first.
pub(super) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "factors",
        sql: include_str!("../../migrations/sqlite/0002_factors.sql"),
    },
    Migration {
        version: 3,
        name: "users",
        sql: include_str!("../../migrations/sqlite/0003_users.sql"),
    },
    Migration {
        version: 4,
        name: "audit",
        sql: include_str!("../../migrations/sqlite/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "notify",
        sql: include_str!("../../migrations/sqlite/0005_notify.sql"),
    },
];

/// Every PostgreSQL migration, oldest first.
pub(super) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "factors",
        sql: include_str!("../../migrations/postgres/0002_factors.sql"),
    },
    Migration {
        version: 3,
        name: "users",
        sql: include_str!("../../migrations/postgres/0003_users.sql"),
    },
    Migration {
        version: 4,
        name: "audit",
        sql: include_str!("../../migrations/postgres/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "notify",
        sql: include_str!("../../migrations/postgres/0005_notify.sql"),
    },
];

/// The migrations still to apply to a database that recorded `applied`
/// (`(version, name)` pairs, in increasing version order).
///
/// The recorded history must be a prefix of `known`: a newer version means a
/// newer release wrote the database (refusing it protects that release's data
/// from an older binary), and a gap or a different name means it was not
/// written by this lineage of Portcullis at all.
pub(super) fn pending<'a>(known: &'a [Migration], applied: &[(i64, String)]) -> StoreResult<&'a [Migration]> {
    let newest_known = known.last().map_or(0, |m| m.version);
    if let Some(newest) = applied.iter().map(|(v, _)| *v).max()
        && newest > newest_known
    {
        return Err(StoreError::Corrupt(format!(
            "database schema version {newest} is newer than this build supports (newest known: {newest_known})"
        )));
    }
    for (i, (version, name)) in applied.iter().enumerate() {
        match known.get(i) {
            Some(m) if m.version == *version && m.name == name => {}
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "schema_migrations records version {version} ({name:?}), which does not match \
                     this build's migration history"
                )));
            }
        }
    }
    Ok(&known[applied.len()..])
}

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
pub(super) fn revocation_batch(
    rows: Vec<RevocationRow>,
    cursor: i64,
    now: UnixTime,
) -> StoreResult<RevocationBatch> {
    let mut batch = RevocationBatch {
        events: Vec::with_capacity(rows.len()),
        cursor,
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
pub(super) use factor_columns;

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
pub(super) use transaction_columns;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(v, n)| (*v, (*n).to_owned())).collect()
    }

    const THREE: &[Migration] = &[
        Migration {
            version: 1,
            name: "init",
            sql: "",
        },
        Migration {
            version: 2,
            name: "users",
            sql: "",
        },
        Migration {
            version: 3,
            name: "factors",
            sql: "",
        },
    ];

    #[test]
    fn migration_lists_are_numbered_from_one_and_agree() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1, "migrations must be numbered 1, 2, 3...");
                assert!(!m.sql.trim().is_empty());
            }
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(
            names(SQLITE),
            names(POSTGRES),
            "every backend has every migration"
        );
    }

    #[test]
    fn pending_is_what_follows_the_recorded_prefix() {
        assert_eq!(pending(THREE, &[]).unwrap().len(), 3);
        let rest = pending(THREE, &applied(&[(1, "init")])).unwrap();
        assert_eq!(rest.iter().map(|m| m.version).collect::<Vec<_>>(), [2, 3]);
        assert!(
            pending(THREE, &applied(&[(1, "init"), (2, "users"), (3, "factors")]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let err = pending(
            THREE,
            &applied(&[(1, "init"), (2, "users"), (3, "factors"), (4, "x")]),
        )
        .unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt(m)
            if m.contains("database schema version 4 is newer than this build supports")));
    }

    #[test]
    fn a_foreign_history_is_refused() {
        assert!(matches!(
            pending(THREE, &applied(&[(1, "other")])),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            pending(THREE, &applied(&[(2, "users")])),
            Err(StoreError::Corrupt(_))
        ));
    }

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
        let batch = revocation_batch(rows, 3, 60).unwrap();
        assert_eq!(batch.cursor, 9);
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
        assert!(matches!(revocation_batch(bad, 0, 0), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn driver_details_stay_out_of_errors_and_conversions_saturate() {
        let err = sql_error("op", &sqlx::Error::Protocol("secret-value".into()));
        assert!(!err.to_string().contains("secret-value"));
        assert!(matches!(count_from_db(i64::MAX), Ok(u32::MAX)));
        assert!(epoch_from_db(-1).is_err());
    }
}
