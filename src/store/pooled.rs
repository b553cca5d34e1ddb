//! The connection pool of the PostgreSQL store, safe to point at a pooler
//! (PgBouncer) in transaction pooling mode.
//!
//! Such a pooler hands a client's statements to whichever server connection
//! is free *at each transaction boundary*, and outside a transaction every
//! `Sync` is one. sqlx runs a statement with arguments in two round trips
//! (Parse + Describe + Sync, then Bind + Execute + Sync), and by default it
//! names its prepared statements and keeps them per connection. Through such
//! a pooler the second half may land on another server connection, where the
//! statement does not exist or (unnamed) is another client's; named
//! statements also collide between clients (`sqlx_s_1 already exists`).
//!
//! [`Db`] keeps the store's query code unchanged (it is an [`Executor`] like
//! [`PgPool`]) and, in pooled mode, runs every statement that has arguments
//! inside its own `BEGIN ... COMMIT` with an unnamed statement: the pooler
//! keeps one server connection for the whole transaction, and nothing
//! outlives it. Statements without arguments go out as one simple-protocol
//! message and need neither. Transactions the store opens itself ([`Db::begin`])
//! use unnamed statements too. In direct mode everything goes straight to
//! the pool, with sqlx's statement cache.
//!
//! Session state is not available through such a pooler: no `SET` (the
//! schema comes from the pooler's database entry or the role), no session
//! advisory locks, no LISTEN. Those go over `store.listen_url`.

use std::ops::{Deref, DerefMut};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Error, Execute, Executor, Postgres, SqlStr, Transaction};

/// The store's pool, direct or through a transaction-mode pooler.
#[derive(Clone)]
pub(crate) struct Db {
    pool: PgPool,
    pooled: bool,
}

impl std::fmt::Debug for Db {
    // Not derived: the pool's options hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("pooled", &self.pooled)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Wraps `pool`; `pooled` when it leads to a transaction-mode pooler.
    pub(crate) fn new(pool: PgPool, pooled: bool) -> Self {
        Self { pool, pooled }
    }

    /// Starts a transaction (one server connection until commit or drop).
    pub(crate) async fn begin(&self) -> Result<Tx, Error> {
        Ok(Tx(TxConn {
            tx: self.pool.begin().await?,
            pooled: self.pooled,
        }))
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// A statement taken apart: its SQL and its arguments, run unnamed.
struct Unnamed {
    sql: SqlStr,
    arguments: Option<PgArguments>,
}

impl Unnamed {
    fn from<'q, E: Execute<'q, Postgres>>(mut query: E) -> Result<Self, Error> {
        let arguments = query.take_arguments().map_err(Error::Encode)?;
        Ok(Self {
            sql: query.sql(),
            arguments,
        })
    }
}

impl Execute<'_, Postgres> for Unnamed {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Runs `query` through the pooler: in one transaction with an unnamed
/// statement when it has arguments; all rows are read before the commit.
async fn run_pooled(pool: PgPool, query: Unnamed) -> Result<Vec<Either<PgQueryResult, PgRow>>, Error> {
    if query.arguments.is_none() {
        // One simple-protocol message: nothing outlives it.
        return pool.fetch_many(query).try_collect().await;
    }
    let mut tx = pool.begin().await?;
    let items = (&mut *tx).fetch_many(query).try_collect().await?;
    tx.commit().await?;
    Ok(items)
}

fn flatten(
    result: Result<Vec<Either<PgQueryResult, PgRow>>, Error>,
) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Either<PgQueryResult, PgRow>, Error>>> {
    let items: Vec<_> = match result {
        Ok(items) => items.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e)],
    };
    futures_util::stream::iter(items)
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_many(query);
        }
        let query = Unnamed::from(query);
        let pool = self.pool.clone();
        futures_util::stream::once(async move { run_pooled(pool, query?).await })
            .flat_map(flatten)
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_optional(query);
        }
        let query = Unnamed::from(query);
        let pool = self.pool.clone();
        Box::pin(async move {
            let items = run_pooled(pool, query?).await?;
            Ok(items.into_iter().find_map(|item| match item {
                Either::Right(row) => Some(row),
                Either::Left(_) => None,
            }))
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }
}

/// A transaction of [`Db`]; `&mut *tx` is its executor.
pub(crate) struct Tx(TxConn);

/// The connection of a [`Tx`].
pub(crate) struct TxConn {
    tx: Transaction<'static, Postgres>,
    pooled: bool,
}

impl std::fmt::Debug for TxConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxConn")
            .field("pooled", &self.pooled)
            .finish_non_exhaustive()
    }
}

impl Tx {
    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), Error> {
        self.0.tx.commit().await
    }
}

impl Deref for Tx {
    type Target = TxConn;
    fn deref(&self) -> &TxConn {
        &self.0
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut TxConn {
        &mut self.0
    }
}

impl<'c> Executor<'c> for &'c mut TxConn {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return (&mut *self.tx).fetch_many(query);
        }
        match Unnamed::from(query) {
            Ok(query) => (&mut *self.tx).fetch_many(query),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return (&mut *self.tx).fetch_optional(query);
        }
        match Unnamed::from(query) {
            Ok(query) => (&mut *self.tx).fetch_optional(query),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, Error>>
    where
        'c: 'e,
    {
        (&mut *self.tx).prepare_with(sql, parameters)
    }
}
