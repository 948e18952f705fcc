//! The index advisor on the server: periodic (or admin-requested) passes over the statement
//! aggregates, off the request path, one at a time.
//!
//! A pass (1) judges indexes it built earlier from the statement's measured p95 since the build,
//! dropping those that did not help; (2) hands the slow statements, with the parameters
//! captured from their slow executions ([`super::capture`]), to [`advisor::advise`] on a
//! connection of its own (HypoPG's hypothetical indexes live in that session only); (3) logs new
//! suggestions to `logs/ml-optimizer.log`; and (4) only when `optimization.auto_index` is on,
//! builds the best verified suggestion concurrently. Every step is an action in the log and in
//! `/api/ml-metrics`.

use super::capture::Captures;
use super::{Optimizer, unix_ms};
use crate::Config;
use advisor::{Applied, ApplyOptions, Options, Report, SlowQuery};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest the explain-and-verify part of a pass may take; index builds have their own
/// (server-side) statement timeout instead, because abandoning a running build from the client
/// would leave an index nobody tracks.
const ADVISE_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-statement timeout on the advisor's connection while explaining.
const EXPLAIN_TIMEOUT: &str = "5000ms";
/// Index trials remembered for the metrics.
const MAX_TRIALS: usize = 50;

/// The advisor's knobs (copied from `[optimization]`).
#[derive(Debug, Clone)]
pub struct AdviceSettings {
    /// Seconds between passes (0: on request only).
    pub interval: Duration,
    /// Build verified suggestions automatically.
    pub auto_index: bool,
    /// Keep a built index only when p95 fell by at least this factor.
    pub min_speedup: f64,
    /// Index build limits.
    pub apply: ApplyOptions,
    /// Slow-statement rule and verification bar.
    pub options: Options,
}

/// A slow statement as the metrics show it (never its parameters).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowView {
    /// Fingerprint.
    pub fingerprint: String,
    /// Statement text.
    pub statement: String,
    /// Executions.
    pub calls: u64,
    /// p95 over the last 512 executions (ms).
    pub p95_ms: f64,
    /// Total time (ms).
    pub total_ms: f64,
    /// Parameter sets of slow executions captured (without any, a statement with placeholders
    /// is explained with its generic plan).
    pub param_sets_captured: usize,
}

/// An index the advisor built, and what measurement said about it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trial {
    /// What was built.
    #[serde(flatten)]
    pub applied: Applied,
    /// The statement it was built for.
    pub fingerprint: String,
    /// That statement's p95 before the build (ms).
    pub p95_before_ms: f64,
    /// Its calls before the build: later calls are the "after".
    pub calls_before: u64,
    /// When it was built (Unix ms).
    pub applied_ts_ms: i64,
    /// `measuring`, `kept`, `dropped`, or `drop-failed`.
    pub outcome: String,
    /// p95 of the executions after the build (ms), once judged.
    pub p95_after_ms: Option<f64>,
    /// Executions the judgement is based on.
    pub calls_after: u64,
}

/// Everything the advisor shows in `/api/ml-metrics` (`indexAdvice`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdviceView {
    /// Seconds between passes (0: on request only).
    pub interval_secs: u64,
    /// Whether verified suggestions are built automatically.
    pub auto_index: bool,
    /// The slow-statement threshold (ms).
    pub slow_query_p95_ms: f64,
    /// The minimum calls before a statement can be slow.
    pub slow_query_min_calls: u64,
    /// Passes run.
    pub passes: u64,
    /// When the last pass ended (Unix ms).
    pub last_run_ts_ms: Option<i64>,
    /// How long it took (ms).
    pub last_run_ms: Option<f64>,
    /// Why the last pass failed, if it did.
    pub last_error: Option<String>,
    /// Slow statements at the last pass.
    pub slow_queries: Vec<SlowView>,
    /// The last pass's advice.
    #[serde(flatten)]
    pub report: Report,
    /// Indexes built automatically, newest last.
    pub trials: Vec<Trial>,
}

#[derive(Default)]
struct State {
    view: AdviceView,
    /// Indexes dropped for not helping: never built again by this process.
    rejected: HashSet<String>,
    /// Suggestions already written to the log.
    logged: HashSet<String>,
    hypopg_note_logged: bool,
}

/// The server's advisor.
pub struct Advice {
    settings: AdviceSettings,
    pg: Option<tokio_postgres::Config>,
    captures: Arc<Captures>,
    /// One pass at a time; a tokio mutex because a pass holds it across `.await`.
    running: tokio::sync::Mutex<()>,
    /// The view and bookkeeping; a std mutex, never held across `.await`.
    state: Mutex<State>,
}

impl Advice {
    /// Builds the advisor from `[optimization]`.
    pub fn new(config: &Config) -> Self {
        let o = &config.optimization;
        let settings = AdviceSettings {
            interval: Duration::from_secs(o.advisor_interval_secs),
            auto_index: o.auto_index,
            min_speedup: o.auto_index_min_speedup,
            apply: ApplyOptions {
                lock_timeout: Duration::from_millis(o.auto_index_lock_timeout_ms),
                ..ApplyOptions::default()
            },
            options: Options {
                slow_p95_ms: o.slow_query_p95_ms,
                min_calls: o.slow_query_min_calls,
                min_cost_reduction: o.index_min_cost_reduction,
                ..Options::default()
            },
        };
        let view = AdviceView {
            interval_secs: o.advisor_interval_secs,
            auto_index: o.auto_index,
            slow_query_p95_ms: o.slow_query_p95_ms,
            slow_query_min_calls: o.slow_query_min_calls,
            ..AdviceView::default()
        };
        let threshold = Duration::from_micros((o.slow_query_p95_ms * 1000.0) as u64);
        Self {
            settings,
            pg: config.pg.clone(),
            captures: Arc::new(Captures::new(threshold)),
            running: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                view,
                ..State::default()
            }),
        }
    }

    /// Where `db.rs` puts the parameters of slow executions.
    pub fn captures(&self) -> Arc<Captures> {
        self.captures.clone()
    }

    /// The advisor's current view.
    pub fn view(&self) -> AdviceView {
        self.lock().view.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Advice {
    /// Runs one advisor pass now (waiting for a running one to finish first) and returns the
    /// resulting view.
    pub(crate) async fn run(&self, opt: &Optimizer) -> AdviceView {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let result = self.pass(opt).await;
        let mut state = self.lock();
        let view = &mut state.view;
        view.passes += 1;
        view.last_run_ts_ms = Some(unix_ms());
        view.last_run_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        view.last_error = result.err();
        if let Some(error) = &view.last_error {
            tracing::warn!(error = %error, "index advisor pass failed");
        }
        view.clone()
    }

    /// Starts the periodic pass, unless its interval is 0.
    pub(crate) fn spawn(&self, optimizer: Arc<Optimizer>) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.settings.interval;
        if period.is_zero() {
            return None;
        }
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                optimizer.advise_now().await;
            }
        }))
    }

    async fn pass(&self, opt: &Optimizer) -> Result<(), String> {
        let advice = self;
        let pg = advice
            .pg
            .as_ref()
            .ok_or("no usable database configuration")?;
        // A connection of its own: hypothetical indexes are per session and must never be
        // seen by request traffic, and a pass must not hold one of the pool's connections.
        let (client, connection) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let driver = tokio::spawn(connection);
        let result = self.pass_on(opt, &client).await;
        drop(client);
        let _ = driver.await;
        result
    }

    async fn pass_on(
        &self,
        opt: &Optimizer,
        client: &tokio_postgres::Client,
    ) -> Result<(), String> {
        let advice = self;
        let settings = &advice.settings;
        self.judge_trials(opt, client).await;

        let aggregates = opt.telemetry.query_aggregates();
        let slow: Vec<SlowQuery> = aggregates
            .iter()
            .filter(|a| settings.options.is_slow(a.p95_ms, a.calls))
            .map(|a| SlowQuery {
                fingerprint: a.fingerprint.clone(),
                statement: a.statement.clone(),
                calls: a.calls,
                total_ms: a.total_ms,
                p95_ms: a.p95_ms,
                param_sets: advice.captures.param_sets(&a.fingerprint),
            })
            .collect();
        client
            .execute(
                "SELECT set_config('statement_timeout', $1, false)",
                &[&EXPLAIN_TIMEOUT],
            )
            .await
            .map_err(|e| format!("cannot set the statement timeout: {e}"))?;
        let report = tokio::time::timeout(
            ADVISE_TIMEOUT,
            advisor::advise(client, &slow, &settings.options),
        )
        .await
        .map_err(|_| format!("advice took longer than {ADVISE_TIMEOUT:?}; abandoned"))?;
        client
            .batch_execute("RESET statement_timeout")
            .await
            .map_err(|e| format!("cannot reset the statement timeout: {e}"))?;

        let (new_suggestions, hypopg_note) = {
            let mut state = advice.lock();
            let new: Vec<_> = report
                .suggestions
                .iter()
                .filter(|s| state.logged.insert(s.create_sql.clone()))
                .cloned()
                .collect();
            let note = match (&report.hypopg_note, state.hypopg_note_logged) {
                (Some(note), false) => {
                    state.hypopg_note_logged = true;
                    Some(note.clone())
                }
                _ => None,
            };
            state.view.slow_queries = slow
                .iter()
                .map(|q| SlowView {
                    fingerprint: q.fingerprint.clone(),
                    statement: q.statement.clone(),
                    calls: q.calls,
                    p95_ms: q.p95_ms,
                    total_ms: q.total_ms,
                    param_sets_captured: q.param_sets.len(),
                })
                .collect();
            state.view.report = report.clone();
            (new, note)
        };
        if let Some(note) = hypopg_note {
            act(
                opt,
                "index-advisor-unverified",
                &note,
                serde_json::json!({}),
            );
        }
        for s in &new_suggestions {
            let reason = match (s.cost_reduction, s.verified) {
                (Some(r), true) => format!(
                    "slow statement {} (p95 over {} ms): {} would cut its planner cost by {:.0}% ({:.1} -> {:.1}), an estimated {:.0} ms saved over the calls measured",
                    s.fingerprint,
                    settings.options.slow_p95_ms,
                    s.create_sql,
                    r * 100.0,
                    s.cost_before,
                    s.cost_after.unwrap_or_default(),
                    s.est_saving_ms.unwrap_or_default()
                ),
                _ => format!(
                    "slow statement {}: {} might help (unverified: no HypoPG)",
                    s.fingerprint, s.create_sql
                ),
            };
            act(
                opt,
                "index-suggested",
                &reason,
                serde_json::json!({ "suggestion": s }),
            );
        }

        if settings.auto_index {
            self.try_apply(opt, client, &report, &slow).await;
        }
        Ok(())
    }

    /// Builds the best verified suggestion not tried before, when no other trial is still
    /// being measured (one at a time, so each measurement is about one index).
    async fn try_apply(
        &self,
        opt: &Optimizer,
        client: &tokio_postgres::Client,
        report: &Report,
        slow: &[SlowQuery],
    ) {
        let advice = self;
        let pick = {
            let state = advice.lock();
            if state.view.trials.iter().any(|t| t.outcome == "measuring") {
                return;
            }
            report
                .suggestions
                .iter()
                .find(|s| s.verified && !state.rejected.contains(&s.create_sql))
                .cloned()
        };
        let Some(suggestion) = pick else { return };
        let Some(query) = slow
            .iter()
            .find(|q| q.fingerprint == suggestion.fingerprint)
        else {
            return;
        };
        act(
            opt,
            "index-apply",
            &format!(
                "building {} for statement {} (p95 {:.1} ms over {} calls)",
                suggestion.create_sql, query.fingerprint, query.p95_ms, query.calls
            ),
            serde_json::json!({ "suggestion": &suggestion }),
        );
        match advisor::apply(client, &suggestion, advice.settings.apply).await {
            Ok(applied) => {
                act(
                    opt,
                    "index-applied",
                    &format!(
                        "built {} in {:.0} ms; measuring p95 of statement {} over its next {} calls",
                        applied.index_name,
                        applied.build_ms,
                        query.fingerprint,
                        advice.settings.options.min_calls
                    ),
                    serde_json::json!({ "applied": &applied }),
                );
                // Calls until the build finished ran without the index: "after" starts here.
                let calls_before = opt
                    .telemetry
                    .p95_since(&query.fingerprint, 0)
                    .map_or(query.calls, |(calls, _)| calls);
                let mut state = advice.lock();
                state.view.trials.push(Trial {
                    applied,
                    fingerprint: query.fingerprint.clone(),
                    p95_before_ms: query.p95_ms,
                    calls_before,
                    applied_ts_ms: unix_ms(),
                    outcome: "measuring".into(),
                    p95_after_ms: None,
                    calls_after: 0,
                });
                let excess = state.view.trials.len().saturating_sub(MAX_TRIALS);
                state.view.trials.drain(..excess);
            }
            Err(e) => {
                advice.lock().rejected.insert(suggestion.create_sql.clone());
                act(
                    opt,
                    "index-apply-failed",
                    &format!("{} was not built: {e}", suggestion.index_name),
                    serde_json::json!({ "suggestion": &suggestion }),
                );
            }
        }
    }

    /// Keeps or drops each index still being measured, once its statement has run at least
    /// the minimum number of calls since the build.
    async fn judge_trials(&self, opt: &Optimizer, client: &tokio_postgres::Client) {
        let advice = self;
        let measuring: Vec<Trial> = advice
            .lock()
            .view
            .trials
            .iter()
            .filter(|t| t.outcome == "measuring")
            .cloned()
            .collect();
        for trial in measuring {
            let Some((calls, p95_after)) = opt
                .telemetry
                .p95_since(&trial.fingerprint, trial.calls_before)
            else {
                continue;
            };
            if calls < advice.settings.options.min_calls {
                continue;
            }
            let kept = advisor::helped(trial.p95_before_ms, p95_after, advice.settings.min_speedup);
            let measured = format!(
                "p95 of statement {} went from {:.1} ms to {:.1} ms over {} calls (at least {}x needed)",
                trial.fingerprint,
                trial.p95_before_ms,
                p95_after,
                calls,
                advice.settings.min_speedup
            );
            let details = serde_json::json!({ "applied": &trial.applied, "p95BeforeMs": trial.p95_before_ms, "p95AfterMs": p95_after });
            let outcome = if kept {
                act(
                    opt,
                    "index-kept",
                    &format!("{}: {measured}", trial.applied.index_name),
                    details,
                );
                "kept"
            } else {
                let dropped =
                    advisor::drop_index(client, &trial.applied, advice.settings.apply).await;
                advice
                    .lock()
                    .rejected
                    .insert(trial.applied.create_sql.clone());
                let (action, outcome, how) = match &dropped {
                    Ok(()) => ("index-dropped", "dropped", "dropped".to_owned()),
                    Err(e) => (
                        "index-drop-failed",
                        "drop-failed",
                        format!("drop failed: {e}"),
                    ),
                };
                act(
                    opt,
                    action,
                    &format!(
                        "{} did not help: {measured}; {how}",
                        trial.applied.index_name
                    ),
                    details,
                );
                outcome
            };
            let mut state = advice.lock();
            if let Some(t) = state.view.trials.iter_mut().find(|t| {
                t.applied.index_name == trial.applied.index_name && t.outcome == "measuring"
            }) {
                t.outcome = outcome.to_owned();
                t.p95_after_ms = Some(p95_after);
                t.calls_after = calls;
            }
        }
    }
}

/// Records an advisor action, with its details, in the action log.
fn act(opt: &Optimizer, action: &str, reason: &str, details: serde_json::Value) {
    let details = match details {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    opt.record_action(action, reason.to_owned(), opt.healer.recent_rate(), details);
}
