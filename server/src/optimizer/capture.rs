//! Parameters of slow executions, kept so the index advisor can explain a statement with the
//! values it really ran with.
//!
//! `db.rs` asks [`Captures::wants`] after every statement: one comparison of durations, so the
//! hot path pays nothing unless the execution was at least as slow as the slow-query threshold
//! (a statement whose p95 exceeds the threshold has at least 5% of its executions there). Only
//! then are the parameters encoded, with the prepared statement's own parameter types, into
//! wire-format bytes that are sent back verbatim by the advisor; nothing is ever turned into SQL
//! text. Memory is bounded: at most [`MAX_FINGERPRINTS`] statements, at most [`MAX_BYTES`] of
//! parameters each. The values stay in memory and are never logged or shown: they can be personal
//! data.

use super::queries::{fingerprint, normalize};
use advisor::Param;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::Statement;
use tokio_postgres::types::{IsNull, ToSql};

/// Statements whose parameters are kept at most.
pub const MAX_FINGERPRINTS: usize = 256;
/// Largest encoded parameter set kept for one statement.
pub const MAX_BYTES: usize = 16 * 1024;
/// A kept capture is replaced by a faster execution's parameters once it is this old, so the
/// parameters follow today's traffic rather than one outlier from long ago.
const REFRESH_AFTER: Duration = Duration::from_secs(600);

struct Captured {
    params: Vec<Param>,
    duration: Duration,
    at: Instant,
}

/// The kept parameters, by statement fingerprint.
///
/// A std mutex: held only for a map lookup and insert, never across `.await`, and taken only
/// on the rare slow execution.
pub struct Captures {
    threshold: Option<Duration>,
    by_fingerprint: Mutex<HashMap<String, Captured>>,
}

impl Captures {
    /// Captures executions at or over `threshold`.
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold: Some(threshold),
            by_fingerprint: Mutex::new(HashMap::new()),
        }
    }

    /// Captures nothing.
    pub fn off() -> Self {
        Self {
            threshold: None,
            by_fingerprint: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an execution this slow should be captured.
    #[inline]
    pub fn wants(&self, elapsed: Duration) -> bool {
        self.threshold.is_some_and(|t| elapsed >= t)
    }

    /// Keeps the parameters of a slow execution of `sql`: the slowest recent one per statement.
    pub fn capture(
        &self,
        sql: &str,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        elapsed: Duration,
    ) {
        if !explainable(sql) {
            return;
        }
        let Some(encoded) = encode(statement, params) else {
            return;
        };
        let key = fingerprint(&normalize(sql));
        let mut map = self
            .by_fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let replace = match map.get(&key) {
            Some(old) => elapsed >= old.duration || old.at.elapsed() >= REFRESH_AFTER,
            None => map.len() < MAX_FINGERPRINTS,
        };
        if replace {
            map.insert(
                key,
                Captured {
                    params: encoded,
                    duration: elapsed,
                    at: Instant::now(),
                },
            );
        }
    }

    /// The kept parameters of a statement, if any.
    pub fn params(&self, fingerprint: &str) -> Option<Vec<Param>> {
        self.by_fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(fingerprint)
            .map(|c| c.params.clone())
    }
}

/// Statements an index could speed up; inserts and utility statements are not worth keeping.
fn explainable(sql: &str) -> bool {
    let head: String = sql
        .trim_start()
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_lowercase();
    ["select", "with", "update", "delete"]
        .iter()
        .any(|k| head.starts_with(k))
}

/// Each parameter in the binary format of the type the statement declared for it.
fn encode(statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Option<Vec<Param>> {
    let types = statement.params();
    if types.len() != params.len() {
        return None;
    }
    let mut total = 0;
    let mut out = Vec::with_capacity(params.len());
    for (param, ty) in params.iter().zip(types) {
        let mut buf = BytesMut::new();
        let value = match param.to_sql_checked(ty, &mut buf).ok()? {
            IsNull::Yes => None,
            IsNull::No => Some(buf.to_vec()),
        };
        total += value.as_ref().map_or(0, Vec::len);
        if total > MAX_BYTES {
            return None;
        }
        out.push(Param {
            type_oid: ty.oid(),
            value,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_updates_and_deletes_are_worth_capturing() {
        assert!(explainable("  SELECT 1"));
        assert!(explainable("with x as (select 1) select * from x"));
        assert!(explainable("UPDATE inventory SET quantity = 1"));
        assert!(!explainable("INSERT INTO users VALUES ($1)"));
        assert!(!explainable("COPY products FROM STDIN"));
    }

    #[test]
    fn fast_executions_are_never_captured_and_off_captures_nothing() {
        let captures = Captures::new(Duration::from_millis(100));
        assert!(!captures.wants(Duration::from_millis(99)));
        assert!(captures.wants(Duration::from_millis(100)));
        assert!(!Captures::off().wants(Duration::from_secs(3600)));
    }
}
