//! The schema migrations of the SQL backends ([`super::sqlite`],
//! [`super::postgres`]) and the rules for applying them (their statements,
//! row decoding and error mapping are in [`super::sql`]).
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
//!
//! ## Why not `sqlx::migrate!`
//!
//! sqlx's migrator (0.9) was weighed against this runner and not adopted,
//! because it would lose properties we rely on:
//! - **Existing databases.** It keeps its own table (`_sqlx_migrations`:
//!   `version, description, installed_on, success, checksum,
//!   execution_time`) and validates a SHA-384 checksum of every applied
//!   script. Databases migrated by this runner record
//!   `schema_migrations(version, name, applied_at)`; pointing the migrator
//!   at that table (`dangerous_set_table_name`) fails on the missing
//!   columns, and adopting it would need a one-off conversion that invents
//!   checksums and success flags for every deployed database.
//! - **All or nothing.** It runs each migration in its own transaction, so
//!   an upgrade failing at step 3 of 4 leaves steps 1 and 2 applied. This
//!   runner applies every pending migration in one transaction (PostgreSQL
//!   and SQLite both have transactional DDL), so a failed upgrade leaves the
//!   database exactly as the previous release left it.
//! - **The lock.** On PostgreSQL it takes a session-level advisory lock
//!   keyed by `current_database()` only; this runner takes a
//!   transaction-scoped one keyed by the schema, so replicas starting
//!   together apply the migrations once per schema, deployments in other
//!   schemas of the same database do not wait for each other, and the lock
//!   cannot outlive a connection returned to the pool. The named schema is
//!   created inside that lock. On SQLite its lock is a no-op and it begins
//!   with a deferred `BEGIN`; this runner uses `BEGIN IMMEDIATE` on the one
//!   writer connection.
//! - **Build.** `migrate!` needs sqlx's `macros` feature, which this crate
//!   leaves off (runtime queries only).
//!
//! What it would give (embedded files, refusing a database newer than the
//! build) this runner already does, in a few dozen lines per backend.

use super::{StoreError, StoreResult};

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

/// The versions and names a database recorded, oldest first (both backends).
pub(super) const APPLIED: &str = "SELECT version, name FROM schema_migrations ORDER BY version";

/// Records one applied migration, `$1` its version and `$2` its name (both backends).
pub(super) const RECORD: &str = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";

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
}
