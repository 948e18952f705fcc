//! Parameters of slow executions, kept so the index advisor can explain a statement with the
//! values it really ran with.
//!
//! `db.rs` asks [`Captures::wants`] after every statement: one comparison of durations, so the
//! hot path pays nothing unless the execution was at least as slow as the slow-query threshold
//! (a statement whose p95 exceeds the threshold has at least 5% of its executions there). Only
//! then are the parameters encoded, with the prepared statement's own parameter types, into
//! wire-format bytes that are sent back verbatim by the advisor; nothing is ever turned into SQL
//! text. Per statement the [`SETS`] slowest distinct parameter sets are kept, so that one noisy
//! outlier of a common value cannot hide the value that is slow every time. Memory is bounded:
//! at most [`MAX_FINGERPRINTS`] statements × [`SETS`] sets × [`MAX_BYTES`]. The values stay in
//! memory and are never logged or shown: they can be personal data.

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
/// Parameter sets kept per statement.
pub const SETS: usize = 4;
/// Largest encoded parameter set kept.
pub const MAX_BYTES: usize = 8 * 1024;
/// A kept set may be replaced by a faster execution's parameters once it is this old, so the
/// sets follow today's traffic rather than outliers from long ago.
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
    by_fingerprint: Mutex<HashMap<String, Vec<Captured>>>,
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
        self.keep(fingerprint(&normalize(sql)), encoded, elapsed);
    }

    /// Keeps `encoded` among the statement's slowest distinct parameter sets.
    fn keep(&self, key: String, encoded: Vec<Param>, elapsed: Duration) {
        let mut map = self
            .by_fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !map.contains_key(&key) && map.len() >= MAX_FINGERPRINTS {
            return;
        }
        let sets = map.entry(key).or_default();
        let now = Instant::now();
        if let Some(same) = sets.iter_mut().find(|c| c.params == encoded) {
            same.duration = same.duration.max(elapsed);
            same.at = now;
            return;
        }
        let new = Captured {
            params: encoded,
            duration: elapsed,
            at: now,
        };
        if sets.len() < SETS {
            sets.push(new);
            return;
        }
        // Replace the fastest set, or a stale one, if this execution is slower or it is stale.
        let victim = sets
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (c.at.elapsed() < REFRESH_AFTER, c.duration))
            .map(|(i, _)| i);
        if let Some(i) = victim
            && (elapsed >= sets[i].duration || sets[i].at.elapsed() >= REFRESH_AFTER)
        {
            sets[i] = new;
        }
    }

    /// The kept parameter sets of a statement, slowest first (empty when none).
    pub fn param_sets(&self, fingerprint: &str) -> Vec<Vec<Param>> {
        let map = self
            .by_fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(sets) = map.get(fingerprint) else {
            return Vec::new();
        };
        let mut sorted: Vec<&Captured> = sets.iter().collect();
        sorted.sort_by_key(|c| std::cmp::Reverse(c.duration));
        sorted.into_iter().map(|c| c.params.clone()).collect()
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

    fn set(value: &str) -> Vec<Param> {
        vec![Param {
            type_oid: 25,
            value: Some(value.as_bytes().to_vec()),
        }]
    }

    #[test]
    fn the_slowest_distinct_parameter_sets_are_kept_slowest_first() {
        let captures = Captures::new(Duration::ZERO);
        let ms = Duration::from_millis;
        captures.keep("f".into(), set("rare"), ms(40));
        for (i, t) in [30, 10, 12, 11].into_iter().enumerate() {
            captures.keep("f".into(), set(&format!("common{i}")), ms(t));
        }
        // The same value again only updates its duration.
        captures.keep("f".into(), set("rare"), ms(45));
        let sets = captures.param_sets("f");
        assert_eq!(sets.len(), SETS);
        assert_eq!(sets[0], set("rare"));
        assert_eq!(sets[1], set("common0"));
        assert!(!sets.contains(&set("common1")), "the fastest was replaced");
        assert!(captures.param_sets("unknown").is_empty());
    }

    #[test]
    fn fast_executions_are_never_captured_and_off_captures_nothing() {
        let captures = Captures::new(Duration::from_millis(100));
        assert!(!captures.wants(Duration::from_millis(99)));
        assert!(captures.wants(Duration::from_millis(100)));
        assert!(!Captures::off().wants(Duration::from_secs(3600)));
    }
}
