//! Opt-in application of a suggestion: `CREATE INDEX CONCURRENTLY` under an advisory lock (one
//! index build at a time across every server instance) and a lock timeout (a build that would
//! queue behind, and so block, application writes gives up instead), and the way back.
//!
//! Whether the index helped is judged by the caller from measured latencies ([`helped`]);
//! this module only builds and drops.

use crate::explain::db_message;
use crate::{Error, Suggestion};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// An arbitrary constant naming the advisor's advisory lock.
const INDEX_LOCK: i64 = 0x1dec_5a1e;

/// Limits for building and dropping.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Longest wait for a table lock before giving up (`lock_timeout`).
    pub lock_timeout: Duration,
    /// Longest a build may take (`statement_timeout`).
    pub build_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            build_timeout: Duration::from_secs(600),
        }
    }
}

/// An index the advisor built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Schema of the table (and the index).
    pub schema: String,
    /// Index name.
    pub index_name: String,
    /// What was run.
    pub create_sql: String,
    /// What undoes it.
    pub drop_sql: String,
    /// How long the build took (ms).
    pub build_ms: f64,
}

/// Whether a measured p95 improved enough to keep an index: it must have fallen to at most
/// `1 / min_speedup` of what it was.
pub fn helped(p95_before_ms: f64, p95_after_ms: f64, min_speedup: f64) -> bool {
    p95_after_ms * min_speedup <= p95_before_ms
}

/// Builds the suggested index concurrently. Fails without building when another advisor holds
/// the lock or the name is taken; a failed build's invalid leftover is dropped again.
///
/// # Errors
/// [`Error::Busy`], [`Error::NameTaken`], or the build failed (lock timeout, statement
/// timeout, ...).
pub async fn apply(
    client: &Client,
    suggestion: &Suggestion,
    options: ApplyOptions,
) -> Result<Applied, Error> {
    with_lock(client, options, async {
        if index_exists(client, &suggestion.schema, &suggestion.index_name).await? {
            return Err(Error::NameTaken(suggestion.index_name.clone()));
        }
        let started = Instant::now();
        if let Err(e) = client.batch_execute(&suggestion.create_sql).await {
            // CONCURRENTLY leaves an invalid index behind when it fails part-way; it was ours
            // (the name was free under the lock), so it goes.
            let _ = client.batch_execute(&suggestion.drop_sql).await;
            return Err(Error::Build(db_message(&e)));
        }
        let build_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !index_valid(client, &suggestion.schema, &suggestion.index_name).await? {
            let _ = client.batch_execute(&suggestion.drop_sql).await;
            return Err(Error::Build("the build left an invalid index".into()));
        }
        Ok(Applied {
            schema: suggestion.schema.clone(),
            index_name: suggestion.index_name.clone(),
            create_sql: suggestion.create_sql.clone(),
            drop_sql: suggestion.drop_sql.clone(),
            build_ms,
        })
    })
    .await
}

/// Drops an index the advisor built, concurrently, under the same lock and timeouts.
///
/// # Errors
/// [`Error::Busy`] or the drop failed.
pub async fn drop_index(
    client: &Client,
    applied: &Applied,
    options: ApplyOptions,
) -> Result<(), Error> {
    with_lock(client, options, async {
        client
            .batch_execute(&applied.drop_sql)
            .await
            .map_err(|e| Error::Build(db_message(&e)))
    })
    .await
}

/// Runs `work` holding the advisor's session-level advisory lock, with the timeouts set for
/// this session only, and always gives both back.
async fn with_lock<T>(
    client: &Client,
    options: ApplyOptions,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&INDEX_LOCK])
        .await?
        .get(0);
    if !locked {
        return Err(Error::Busy);
    }
    let result = async {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        client
            .execute(
                "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)",
                &[&ms(options.lock_timeout), &ms(options.build_timeout)],
            )
            .await?;
        work.await
    }
    .await;
    let _ = client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&INDEX_LOCK])
        .await;
    result
}

async fn index_exists(client: &Client, schema: &str, name: &str) -> Result<bool, Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?
        .is_some())
}

async fn index_valid(client: &Client, schema: &str, name: &str) -> Result<bool, Error> {
    Ok(client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?
        .is_some_and(|r| r.get::<_, bool>(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_kept_only_when_p95_fell_by_the_required_factor() {
        assert!(helped(150.0, 15.0, 2.0));
        assert!(helped(10.0, 5.0, 2.0));
        assert!(!helped(10.0, 6.0, 2.0));
        assert!(!helped(10.0, 12.0, 2.0), "slower is never help");
    }
}
