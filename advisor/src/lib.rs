//! Index advice for slow statements, shared by the server (live traffic) and the trainer
//! (offline logs).
//!
//! Given statements that are slow by measurement ([`SlowQuery`]: fingerprint, text, calls,
//! timings and, when captured, the parameters of a slow execution), [`advise`] explains each
//! with its real parameters, finds the tables it reads and then filters or sorts, proposes single
//! and two-column B-tree indexes that no existing index already covers by prefix, and asks the
//! planner through HypoPG whether each would at least halve the statement's cost. Without HypoPG
//! it says so and marks its suggestions unverified.
//!
//! - [`plan`]: reading `EXPLAIN (FORMAT JSON, VERBOSE)` output.
//! - [`catalog`]: columns and existing indexes, and the quoted names all SQL is built from.
//! - [`candidate`]: candidate indexes for one table access.
//! - [`explain`]: explaining with captured wire-format parameters; HypoPG.
//! - [`apply`]: opt-in `CREATE INDEX CONCURRENTLY` and `DROP INDEX CONCURRENTLY`.
//!
//! Nothing here runs a statement: `EXPLAIN` without `ANALYZE` only plans. A statement without
//! captured parameters (offline logs) is planned generically, which knows nothing of skewed
//! values: such suggestions say `generic_plan`.

pub mod apply;
pub mod candidate;
pub mod catalog;
pub mod explain;
pub mod plan;

pub use apply::{Applied, ApplyOptions, apply, drop_index, helped};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// The advisor's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused something.
    #[error("database error: {}", explain::db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The plan did not have the expected shape.
    #[error("unexpected plan: {0}")]
    Plan(String),
    /// The captured parameters do not fit the statement.
    #[error("the statement takes {expected} parameters but {given} were captured")]
    Params {
        /// Placeholders in the statement.
        expected: usize,
        /// Parameters captured.
        given: usize,
    },
    /// Another advisor is building or dropping an index right now.
    #[error("another advisor holds the index lock")]
    Busy,
    /// Something else already has the index's name.
    #[error("a relation named {0} already exists")]
    NameTaken(String),
    /// The build or drop failed.
    #[error("index build failed: {0}")]
    Build(String),
}

/// One captured parameter: its type and its binary wire-format value, exactly as the
/// application sent it (`None` for SQL NULL). Kept in memory only: parameters can be personal
/// data, so they are never serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's type OID, as the prepared statement declared it.
    pub type_oid: u32,
    /// The encoded value.
    pub value: Option<Vec<u8>>,
}

/// A statement measured as slow.
///
/// `param_sets` holds the parameters of a few of its slow executions (distinct values, say a
/// rare category and an outlier of a common one): costs are summed over them, so the executions
/// the planner expects to be expensive weigh most.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowQuery {
    /// Fingerprint of the normalized statement.
    pub fingerprint: String,
    /// The statement (placeholders, never values).
    pub statement: String,
    /// Executions measured.
    pub calls: u64,
    /// Total time (ms).
    pub total_ms: f64,
    /// 95th percentile (ms).
    pub p95_ms: f64,
    /// Parameters of slow executions, if captured; statements without placeholders need none.
    #[serde(skip)]
    pub param_sets: Vec<Vec<Param>>,
}

/// What counts as slow, and how demanding verification is.
#[derive(Debug, Clone)]
pub struct Options {
    /// A statement is slow when its p95 exceeds this (ms)...
    pub slow_p95_ms: f64,
    /// ...over at least this many calls.
    pub min_calls: u64,
    /// A candidate is suggested only when the planner's cost falls by at least this fraction.
    pub min_cost_reduction: f64,
    /// At most this many statements per pass (slowest total first).
    pub max_queries: usize,
    /// At most this many candidates tried per table access.
    pub max_candidates: usize,
    /// Try `CREATE EXTENSION hypopg` when it is missing.
    pub create_extension: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            slow_p95_ms: 100.0,
            min_calls: 20,
            min_cost_reduction: 0.5,
            max_queries: 20,
            max_candidates: 6,
            create_extension: true,
        }
    }
}

impl Options {
    /// The slow-statement rule: p95 above the threshold over at least the minimum calls.
    pub fn is_slow(&self, p95_ms: f64, calls: u64) -> bool {
        calls >= self.min_calls && p95_ms > self.slow_p95_ms
    }
}

/// A proposed index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suggestion {
    /// Schema of the table.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Key columns, in order.
    pub columns: Vec<String>,
    /// The index's name.
    pub index_name: String,
    /// The statement that builds it.
    pub create_sql: String,
    /// The statement that removes it.
    pub drop_sql: String,
    /// The slow statement it is for (the one it saves most on).
    pub fingerprint: String,
    /// That statement's text.
    pub statement: String,
    /// Every slow statement it was found for.
    pub fingerprints: Vec<String>,
    /// Planner cost of the statement today.
    pub cost_before: f64,
    /// Planner cost with the hypothetical index (verified suggestions only).
    pub cost_after: Option<f64>,
    /// `1 - cost_after / cost_before` (verified suggestions only).
    pub cost_reduction: Option<f64>,
    /// Measured total time of the statements it serves, times the cost reduction (ms): the
    /// estimate suggestions are ranked by.
    pub est_saving_ms: Option<f64>,
    /// Whether HypoPG confirmed the planner would use it and gain at least the minimum.
    pub verified: bool,
    /// Whether the statement was planned generically (no captured parameters, as from offline
    /// logs) rather than with the parameters of a real slow execution.
    pub generic_plan: bool,
}

/// A slow statement that got no suggestion, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// Fingerprint.
    pub fingerprint: String,
    /// Why (never contains parameter values).
    pub reason: String,
}

/// The result of one advisor pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Whether candidates were verified with HypoPG.
    pub hypopg_available: bool,
    /// Why HypoPG is not available, when it is not.
    pub hypopg_note: Option<String>,
    /// Suggestions, largest estimated saving first (unverified ones after, by total time).
    pub suggestions: Vec<Suggestion>,
    /// Slow statements without a suggestion.
    pub skipped: Vec<Skipped>,
}

/// The best candidate for one statement.
struct Best {
    candidate: candidate::Candidate,
    table: catalog::Table,
    cost_after: Option<f64>,
    generic_plan: bool,
}

/// Advises on `slow` statements over `client`'s database. Uses HypoPG hypothetical indexes on
/// this session (reset before and after each candidate), so give it a connection of its own.
/// Statements below the [`Options::is_slow`] rule are ignored, whatever the caller passed.
pub async fn advise(client: &Client, slow: &[SlowQuery], options: &Options) -> Report {
    let mut report = Report::default();
    match explain::hypopg(client, options.create_extension).await {
        Ok(()) => report.hypopg_available = true,
        Err(note) => report.hypopg_note = Some(format!("{note}; suggestions are unverified")),
    }
    let mut queue: Vec<&SlowQuery> = slow
        .iter()
        .filter(|q| options.is_slow(q.p95_ms, q.calls))
        .collect();
    queue.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    queue.truncate(options.max_queries);
    for query in queue {
        match advise_one(client, query, options, report.hypopg_available).await {
            Ok((best, cost_before)) => {
                let cost_reduction = best.cost_after.map(|after| 1.0 - after / cost_before);
                let suggestion = Suggestion {
                    schema: best.table.schema.clone(),
                    table: best.table.name.clone(),
                    columns: best.candidate.columns,
                    index_name: best.candidate.name,
                    create_sql: best.candidate.create_sql,
                    drop_sql: best.candidate.drop_sql,
                    fingerprint: query.fingerprint.clone(),
                    statement: query.statement.clone(),
                    fingerprints: vec![query.fingerprint.clone()],
                    cost_before,
                    cost_after: best.cost_after,
                    cost_reduction,
                    est_saving_ms: cost_reduction.map(|r| r * query.total_ms),
                    verified: best.cost_after.is_some(),
                    generic_plan: best.generic_plan,
                };
                merge(&mut report.suggestions, suggestion);
            }
            Err(reason) => report.skipped.push(Skipped {
                fingerprint: query.fingerprint.clone(),
                reason,
            }),
        }
    }
    report.suggestions.sort_by(|a, b| {
        b.verified.cmp(&a.verified).then(
            b.est_saving_ms
                .unwrap_or(0.0)
                .total_cmp(&a.est_saving_ms.unwrap_or(0.0)),
        )
    });
    report
}

/// One index serving several slow statements is one suggestion, its savings added up.
fn merge(suggestions: &mut Vec<Suggestion>, new: Suggestion) {
    if let Some(old) = suggestions
        .iter_mut()
        .find(|s| s.create_sql == new.create_sql)
    {
        old.fingerprints.push(new.fingerprint.clone());
        let old_saving = old.est_saving_ms.unwrap_or(0.0);
        let new_saving = new.est_saving_ms.unwrap_or(0.0);
        if new_saving > old_saving {
            let fingerprints = std::mem::take(&mut old.fingerprints);
            *old = Suggestion {
                fingerprints,
                ..new
            };
        }
        if old.verified {
            old.est_saving_ms = Some(old_saving + new_saving);
        }
    } else {
        suggestions.push(new);
    }
}

/// The best candidate for one statement and its cost today, or why there is none.
async fn advise_one(
    client: &Client,
    query: &SlowQuery,
    options: &Options,
    verify: bool,
) -> Result<(Best, f64), String> {
    // Captured parameters when there are some; a statement without placeholders needs none;
    // otherwise (offline logs) the generic plan.
    let mut plannings: Vec<explain::Planning<'_>> = if query.param_sets.is_empty() {
        vec![explain::Planning::Captured(&[])]
    } else {
        query
            .param_sets
            .iter()
            .map(|set| explain::Planning::Captured(set))
            .collect()
    };
    let mut plans = Vec::with_capacity(plannings.len());
    let mut generic_plan = false;
    for planning in &plannings {
        match explain::explain(client, &query.statement, *planning).await {
            Ok(plan) => plans.push(plan),
            Err(Error::Params { .. }) if query.param_sets.is_empty() => {
                generic_plan = true;
                break;
            }
            Err(e) => return Err(format!("cannot explain: {e}")),
        }
    }
    if generic_plan {
        plannings = vec![explain::Planning::Generic];
        plans = vec![
            explain::explain(client, &query.statement, explain::Planning::Generic)
                .await
                .map_err(|e| format!("cannot explain (generic plan): {e}"))?,
        ];
    }
    let cost_before: f64 = plans.iter().filter_map(plan::total_cost).sum();
    if cost_before <= 0.0 {
        return Err("the plan has no cost".into());
    }
    let mut accesses: Vec<plan::Access> = Vec::new();
    for access in plans.iter().flat_map(plan::accesses) {
        if !accesses.contains(&access) {
            accesses.push(access);
        }
    }
    if accesses.is_empty() {
        return Err("no filtered or sorted table read that an index could serve".into());
    }
    let mut tried = Vec::new();
    let mut covered = Vec::new();
    for access in &accesses {
        let table = match catalog::table(client, &access.schema, &access.table).await {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => return Err(format!("cannot read the catalog: {e}")),
        };
        match candidate::candidates(access, &table, options.max_candidates) {
            Ok(list) => {
                for c in list {
                    if !tried
                        .iter()
                        .any(|(t, _): &(candidate::Candidate, _)| t.create_sql == c.create_sql)
                    {
                        tried.push((c, table.clone()));
                    }
                }
            }
            Err(c) => covered.push(c.index),
        }
    }
    if tried.is_empty() {
        return Err(if covered.is_empty() {
            "no candidate index on a known column".into()
        } else {
            format!("already served by existing index {}", covered.join(", "))
        });
    }
    if !verify {
        // Without the planner's word, the first idea (the first equality column, else the
        // leading sort or range column) is the best guess.
        let (candidate, table) = tried.swap_remove(0);
        return Ok((
            Best {
                candidate,
                table,
                cost_after: None,
                generic_plan,
            },
            cost_before,
        ));
    }
    let mut best: Option<Best> = None;
    let mut lowest = f64::INFINITY;
    for (candidate, table) in tried {
        let cost = explain::cost_with(
            client,
            &candidate.hypothetical_sql,
            &query.statement,
            &plannings,
        )
        .await
        .map_err(|e| format!("HypoPG check of {} failed: {e}", candidate.name))?;
        lowest = lowest.min(cost);
        // A wider index must be clearly cheaper (10%) to beat a narrower one found earlier:
        // narrower indexes are smaller and cheaper to keep up on every write.
        let better = best.as_ref().is_none_or(|b| {
            let b_cost = b.cost_after.unwrap_or(f64::INFINITY);
            if candidate.columns.len() > b.candidate.columns.len() {
                cost < b_cost * 0.9
            } else {
                cost < b_cost
            }
        });
        if cost <= cost_before * (1.0 - options.min_cost_reduction) && better {
            best = Some(Best {
                candidate,
                table,
                cost_after: Some(cost),
                generic_plan,
            });
        }
    }
    best.map(|b| (b, cost_before)).ok_or_else(|| {
        format!(
            "no candidate cuts the planner cost by {:.0}% (best: {:.0}%)",
            options.min_cost_reduction * 100.0,
            (1.0 - lowest / cost_before).max(0.0) * 100.0
        )
    })
}
