//! The connection pool and the one path every statement takes to PostgreSQL.
//!
//! Handlers get a [`Conn`] (or a [`Tx`] from it) instead of a raw client. Every call prepares its
//! SQL through the per-connection statement cache, so a statement is parsed once per connection
//! and parameters always travel separately from the SQL text: nothing a client sends can be
//! spliced into a statement. This single path is also where query tracking hooks in, and where
//! the parameters of slow executions are captured for the index advisor.
//!
//! Reads that may see a slightly older state (catalogue, search, analytics) go through
//! [`Db::read`], which asks the optimizer's balancer for a target among the primary and the
//! read replicas (`database.replicas`), runs them there, and retries them on the primary when
//! the replica failed; everything else uses [`Db::conn`], the primary. [`Db::probe`] feeds the
//! balancer each replica's replay position, from which it knows lag and health.

use crate::config::Config;
use crate::error::ApiError;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use optimizer::balance::{self, Balancer, Lsn, PRIMARY};
use optimizer::capture::Captures;
use optimizer::queries;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Statement parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The shared pools: the primary's and one per read replica. Cloning is cheap (`Arc`s inside).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// One pool per read replica, in the order of `database.replicas`.
    replicas: Arc<[Pool]>,
    balancer: Arc<Balancer>,
    captures: Arc<Captures>,
    probe_every: Duration,
}

/// A pool of `size` connections made with `pg`.
fn new_pool(
    pg: tokio_postgres::Config,
    size: usize,
    wait: Duration,
    create: Duration,
) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        pg,
        NoTls,
        // `Fast` skips a round trip per checkout; a broken connection still surfaces as an
        // error on its next use and is then dropped by the pool.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(create))
        .runtime(Runtime::Tokio1)
        .build()
        .context("building a database pool")
}

/// What a read must see, and what it is expected to cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadFrom {
    /// The WAL position of the caller's own last write (0: none known).
    pub lsn: Lsn,
    /// The optimizer's prediction of the request's time (ms), when it made one.
    pub predicted_ms: Option<f32>,
}

impl ReadFrom {
    /// A read that must see everything committed so far: the primary's.
    pub const PRIMARY: Self = Self {
        lsn: Lsn::MAX,
        predicted_ms: None,
    };
}

/// What to do with a read that failed on a replica.
enum OnReplicaError {
    /// The replica is away (or its connection broke): ban it, run the read on the primary.
    Ban,
    /// The replica refused it for a reason of its own (a conflict with WAL replay, anything a
    /// standby may say that a primary would not): run it on the primary.
    Retry,
    /// The read itself is wrong (invalid data or SQL) or ran out of time: the primary would
    /// fail it too.
    Fail,
}

/// Reads are idempotent, so on a replica anything but the read's own fault goes again to the
/// primary: a replica shutting down can fail a statement in more ways than the primary's
/// outage path classifies, and none of them should reach the client.
fn on_replica_error(err: &tokio_postgres::Error) -> OnReplicaError {
    match err.as_db_error().map(|db| db.code().code()) {
        Some("57014") => OnReplicaError::Fail,
        Some(code) if code.starts_with("22") || code.starts_with("42") => OnReplicaError::Fail,
        _ if crate::error::database_away(err) || err.as_db_error().is_none() => OnReplicaError::Ban,
        _ => OnReplicaError::Retry,
    }
}

impl Db {
    /// Builds the pool; connections open lazily on first use.
    ///
    /// # Errors
    /// Invalid connection settings.
    pub fn new(config: &Config, balancer: Arc<Balancer>) -> anyhow::Result<Self> {
        let db = &config.database;
        let pool = new_pool(
            config.pg_config()?,
            db.pool_size,
            Duration::from_millis(db.pool_timeout_ms),
            Duration::from_secs(5),
        )?;
        // A replica is one choice among several: a read waits for it briefly, then goes to the
        // primary.
        let replicas = (0..db.replicas.len())
            .map(|i| {
                new_pool(
                    config.replica_pg_config(i)?,
                    db.pool_size,
                    Duration::from_millis(db.pool_timeout_ms.min(500)),
                    Duration::from_secs(2),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            pool,
            replicas: replicas.into(),
            balancer,
            captures: Arc::new(Captures::off()),
            probe_every: Duration::from_millis(db.replica_probe_ms),
        })
    }

    /// Captures the parameters of slow executions into `captures` (for the index advisor).
    #[must_use]
    pub fn with_captures(mut self, captures: Arc<Captures>) -> Self {
        self.captures = captures;
        self
    }

    /// Whether reads are spread over replicas (and writes must tell the client their position).
    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// A connection for reads that may see a slightly older state, on the target the
    /// balancer picks; a replica that fails a statement (away, or cancelling it for WAL replay)
    /// hands it, and the rest of the request's reads, to the primary, so a replica's death
    /// fails no request.
    ///
    /// # Errors
    /// No connection to the primary either (503).
    pub async fn read(&self, from: ReadFrom) -> Result<ReadConn<'_>, ApiError> {
        let mut read = self.balancer.choose(from.lsn, from.predicted_ms);
        if read.target() != PRIMARY {
            match self.replicas[read.target() - 1].get().await {
                Ok(inner) => {
                    read.connected();
                    if read.behind_changes() {
                        optimizer::balance::mark_behind_changes();
                    }
                    let conn = Conn {
                        inner,
                        captures: self.captures.clone(),
                    };
                    return Ok(ReadConn {
                        db: self,
                        conn,
                        read,
                    });
                }
                // Every connection to it busy: not a failure, but the wait counts as the read's
                // time there, so that the balancer sends less its way.
                Err(deadpool_postgres::PoolError::Timeout(_)) => {}
                Err(err) => read.failed(&format!("no connection: {err}")),
            }
            drop(read);
            read = self.balancer.start(PRIMARY);
        }
        let conn = self.conn().await?;
        read.connected();
        Ok(ReadConn {
            db: self,
            conn,
            read,
        })
    }

    /// The primary's WAL position now: at or past every commit acknowledged before the call.
    ///
    /// # Errors
    /// The primary is away.
    pub async fn position(&self) -> Result<Lsn, ApiError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let text: String = row.get(0);
        balance::parse_lsn(&text)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unreadable WAL position {text}")))
    }

    /// Probes the primary's WAL position and each replica's replay position, every
    /// `database.replica_probe_ms`, forever: the balancer learns lag, failures and returns.
    pub async fn probe(self) {
        if self.replicas.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.probe_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self.probe_every.max(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Ok(Ok(lsn)) = tokio::time::timeout(limit, self.position()).await {
                self.balancer.primary_at(lsn);
            }
            let balancer = &self.balancer;
            let probes = self
                .replicas
                .iter()
                .enumerate()
                .map(|(i, pool)| async move {
                    let replay = tokio::time::timeout(limit, async {
                        let client = pool.get().await.map_err(|e| e.to_string())?;
                        let row = client
                            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                            .await
                            .map_err(|e| e.to_string())?;
                        let text: Option<String> = row.get(0);
                        text.as_deref()
                            .and_then(balance::parse_lsn)
                            .ok_or_else(|| "not a streaming replica".to_owned())
                    })
                    .await
                    .unwrap_or_else(|_| Err("probe timed out".into()));
                    match replay {
                        Ok(lsn) => balancer.probed(i + 1, lsn),
                        Err(why) => balancer.failed(i + 1, &format!("probe: {why}")),
                    }
                });
            futures::future::join_all(probes).await;
        }
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

/// A connection for reads ([`Db::read`]): on a replica or the primary, counted as a read in
/// flight there until dropped.
pub struct ReadConn<'a> {
    db: &'a Db,
    conn: Conn,
    read: balance::Read<'a>,
}

/// The read statements of [`Conn`], each moved to the primary when the replica fails it.
macro_rules! reads {
    ($($name:ident -> $out:ty),*) => {
        impl ReadConn<'_> {
            $(
                /// As on [`Conn`]; on the primary when the replica fails it.
                ///
                /// # Errors
                /// The statement's error on the primary, or the replica's own when the
                /// primary would fail it too.
                pub async fn $name(&mut self, sql: &str, params: Params<'_>) -> Result<$out, ApiError> {
                    match self.conn.$name(sql, params).await {
                        Ok(out) => Ok(out),
                        Err(err) => {
                            self.move_to_primary(err).await?;
                            Ok(self.conn.$name(sql, params).await?)
                        }
                    }
                }
            )*
        }
    };
}

reads!(query -> Vec<Row>, query_one -> Row, query_opt -> Option<Row>);

impl ReadConn<'_> {
    /// After `err` on this connection: moves to the primary when that can help, else `err`.
    async fn move_to_primary(&mut self, err: tokio_postgres::Error) -> Result<(), ApiError> {
        if self.read.target() == PRIMARY {
            return Err(err.into());
        }
        match on_replica_error(&err) {
            OnReplicaError::Fail => return Err(err.into()),
            OnReplicaError::Retry => {}
            OnReplicaError::Ban => self.read.failed(&err.to_string()),
        }
        self.conn = self.db.conn().await?;
        self.read = self.db.balancer.start(PRIMARY);
        self.read.connected();
        Ok(())
    }

    /// Which target the reads run on: 0 the primary, `k` the `k`-th replica.
    pub fn target(&self) -> usize {
        self.read.target()
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
