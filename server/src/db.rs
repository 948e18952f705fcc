//! The connection pool and the one path every statement takes to PostgreSQL.
//!
//! Handlers get a [`Conn`] (or a [`Tx`] from it) instead of a raw client. Every call prepares its
//! SQL through the per-connection statement cache, so a statement is parsed once per connection
//! and parameters always travel separately from the SQL text: nothing a client sends can be
//! spliced into a statement. This single path is also where query tracking hooks in, and where
//! the parameters of slow executions are captured for the index advisor.

use crate::config::Config;
use crate::error::ApiError;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use optimizer::capture::Captures;
use optimizer::queries;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Statement parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The shared pool. Cloning is cheap (an `Arc` inside).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    captures: Arc<Captures>,
}

impl Db {
    /// Builds the pool; connections open lazily on first use.
    ///
    /// # Errors
    /// Invalid connection settings.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let manager = Manager::from_config(
            config.pg_config()?,
            NoTls,
            // `Fast` skips a round trip per checkout; a broken connection still surfaces as an
            // error on its next use and is then dropped by the pool.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.database.pool_size)
            .wait_timeout(Some(Duration::from_millis(config.database.pool_timeout_ms)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .context("building the database pool")?;
        Ok(Self {
            pool,
            captures: Arc::new(Captures::off()),
        })
    }

    /// Captures the parameters of slow executions into `captures` (for the index advisor).
    #[must_use]
    pub fn with_captures(mut self, captures: Arc<Captures>) -> Self {
        self.captures = captures;
        self
    }

    /// A pooled connection; waits at most the configured time, then a 503.
    ///
    /// # Errors
    /// Pool timeout (503) or a failed connection (500).
    pub async fn conn(&self) -> Result<Conn, ApiError> {
        Ok(Conn {
            inner: self.pool.get().await?,
            captures: self.captures.clone(),
        })
    }

    /// Pool size and idle connections, for readiness and metrics.
    pub fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

/// A pooled connection.
pub struct Conn {
    inner: deadpool_postgres::Object,
    captures: Arc<Captures>,
}

/// A transaction on a pooled connection; rolled back if dropped without [`Tx::commit`].
pub struct Tx<'a> {
    inner: deadpool_postgres::Transaction<'a>,
    captures: Arc<Captures>,
}

impl Conn {
    /// Starts a transaction.
    ///
    /// # Errors
    /// The database refused to begin.
    pub async fn transaction(&mut self) -> Result<Tx<'_>, tokio_postgres::Error> {
        Ok(Tx {
            inner: self.inner.transaction().await?,
            captures: self.captures.clone(),
        })
    }

    /// Starts a transaction whose commit is acknowledged only once it is on disk
    /// (`synchronous_commit = on`), whatever the cluster's setting: for anything that moves
    /// money or stock, so that an acknowledged order survives a crash of PostgreSQL.
    ///
    /// # Errors
    /// The database refused to begin.
    pub async fn durable_transaction(&mut self) -> Result<Tx<'_>, tokio_postgres::Error> {
        let tx = self.transaction().await?;
        tx.inner
            .batch_execute("SET LOCAL synchronous_commit = on")
            .await?;
        Ok(tx)
    }
}

impl Tx<'_> {
    /// Commits the transaction.
    ///
    /// # Errors
    /// The commit failed; nothing was written.
    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.inner.commit().await
    }
}

/// The same four statement methods on both connection kinds, each through the statement cache
/// and timed into the current request's query log.
macro_rules! statements {
    ($ty:ty) => {
        impl $ty {
            /// Records a finished statement; keeps its parameters when it was slow.
            fn done(
                &self,
                sql: &str,
                statement: &tokio_postgres::Statement,
                params: Params<'_>,
                started: Instant,
                rows: u64,
            ) {
                let elapsed = started.elapsed();
                queries::record(sql, elapsed, rows);
                if self.captures.wants(elapsed) {
                    self.captures.capture(sql, statement, params, elapsed);
                }
            }

            /// Runs a statement and returns its rows.
            ///
            /// # Errors
            /// Any database error.
            pub async fn query(
                &self,
                sql: &str,
                params: Params<'_>,
            ) -> Result<Vec<Row>, tokio_postgres::Error> {
                let started = Instant::now();
                let statement = self.inner.prepare_cached(sql).await?;
                let rows = self.inner.query(&statement, params).await?;
                self.done(sql, &statement, params, started, rows.len() as u64);
                Ok(rows)
            }

            /// Runs a statement that returns exactly one row.
            ///
            /// # Errors
            /// Any database error, or not exactly one row.
            pub async fn query_one(
                &self,
                sql: &str,
                params: Params<'_>,
            ) -> Result<Row, tokio_postgres::Error> {
                let started = Instant::now();
                let statement = self.inner.prepare_cached(sql).await?;
                let row = self.inner.query_one(&statement, params).await;
                self.done(sql, &statement, params, started, u64::from(row.is_ok()));
                row
            }

            /// Runs a statement that returns at most one row.
            ///
            /// # Errors
            /// Any database error, or more than one row.
            pub async fn query_opt(
                &self,
                sql: &str,
                params: Params<'_>,
            ) -> Result<Option<Row>, tokio_postgres::Error> {
                let started = Instant::now();
                let statement = self.inner.prepare_cached(sql).await?;
                let row = self.inner.query_opt(&statement, params).await?;
                self.done(sql, &statement, params, started, u64::from(row.is_some()));
                Ok(row)
            }

            /// Runs a statement and returns how many rows it touched.
            ///
            /// # Errors
            /// Any database error.
            pub async fn execute(
                &self,
                sql: &str,
                params: Params<'_>,
            ) -> Result<u64, tokio_postgres::Error> {
                let started = Instant::now();
                let statement = self.inner.prepare_cached(sql).await?;
                let n = self.inner.execute(&statement, params).await?;
                self.done(sql, &statement, params, started, n);
                Ok(n)
            }
        }
    };
}

statements!(Conn);
statements!(Tx<'_>);
