//! The optimizer's settings: the `[optimization]`, `[features]`, `[metrics]`, `[telemetry]` and
//! `[models]` tables of the server's TOML file, with their defaults, plus what the optimizer
//! needs to know of the rest of the server ([`Config`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything [`crate::Optimizer::new`] is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Minutes between background retraining runs on the request logs (0 = never).
    pub training_interval: u64,
    /// Confidence (0-1) a prediction needs before the optimizer acts on it.
    pub prediction_threshold: f64,
    /// `[optimization]`
    pub optimization: OptimizationConfig,
    /// `[features]`
    pub features: FeaturesConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// `[models]`
    pub models: ModelsConfig,
    /// Connections in the shop's database pool: admission shares them out by priority.
    pub db_pool_size: usize,
    /// Where the index advisor opens its own connection (HypoPG's hypothetical indexes live in
    /// that session); `None` leaves the advisor without a database.
    pub pg: Option<tokio_postgres::Config>,
    /// The read replicas and how reads are spread over them (from `[database]`).
    pub balance: crate::balance::BalanceConfig,
}

/// `[models]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Folder holding `manifest.json` and the model files it names; watched for new versions.
    pub dir: PathBuf,
    /// The ONNX Runtime library (`libonnxruntime.so.1.31.1`); unset: `ORT_DYLIB_PATH`. Missing
    /// or broken: a warning, and online statistics answer.
    pub ort_library: Option<PathBuf>,
    /// A model this server first served longer ago than this (hours) is stale; 0 means no
    /// limit ([`crate::model::ledger`]).
    pub max_age_hours: f64,
    /// Live drift: the model is stale when its mean error of ln latency over recent requests is
    /// above this multiple of the online statistics' on the same requests, and serves again
    /// once it is below theirs divided by it (0 turns the check off).
    pub drift_factor: f64,
    /// Shortest drift window (seconds): a verdict needs at least this long as well as 512
    /// requests, so that at thousands of requests a second the model is not retired and
    /// restored on a fraction of a second's noise (0: 512 requests alone).
    pub drift_min_secs: f64,
    /// How often the manifest is checked for a new version (ms).
    pub reload_interval_ms: u64,
    /// Sessions per model (0: one per CPU core). A request never waits for a busy session.
    pub sessions: usize,
    /// Answers kept per model, one per cell of its thresholds (rows on the same side of every
    /// threshold get the same answer, so a kept one is exact); 0: every row runs ONNX Runtime.
    pub memo_cells: usize,
    /// The trainer binary for `training_interval`; unset: `trainer` next to the server binary.
    pub trainer: Option<PathBuf>,
    /// Longest a background training run may take before it is killed (s).
    pub training_timeout_secs: u64,
    /// Logs every retrain also trains on (folders or files; those that do not exist are left
    /// out): the corpus the committed models came from, so that a retrain on a calm hour of
    /// the server's own traffic does not forget the incidents and overload the corpus holds.
    /// The candidate is still held out and judged on the server's own newest requests only.
    pub base_logs: Vec<PathBuf>,
}

/// `[optimization]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizationConfig {
    /// Latency the optimizer steers toward; requests predicted to miss it by waiting are shed
    /// (lowest priority first).
    pub target_latency_ms: u64,
    /// Memory budget in MiB for the response cache.
    pub max_memory_mb: u64,
    /// Lower and upper bound of the adaptive concurrency limit.
    pub min_concurrency: u32,
    /// Upper bound of the adaptive concurrency limit.
    pub max_concurrency: u32,
    /// Share of the served requests that must be anomalous or still served past the target for a
    /// second to count as one of an incident (`crate::healer`).
    pub anomaly_rate_threshold: f64,
    /// Send `x-anomaly-reason` (why a flagged response scored anomalous) to every client, not
    /// only to the admin token: it describes the server's internal state.
    pub explain_public: bool,
    /// Seconds an incident must last before auto-healing acts (not a single spike): 3, so
    /// that healing acts within 5 s of a stall's start.
    pub anomaly_min_duration_secs: u64,
    /// Healthy seconds before auto-healing undoes its actions.
    pub recovery_secs: u64,
    /// A statement is slow when its p95 over recent executions exceeds this (ms); executions at
    /// least this slow have their parameters captured for the index advisor.
    pub slow_query_p95_ms: f64,
    /// A statement is judged slow only after this many calls.
    pub slow_query_min_calls: u64,
    /// Seconds between background index advisor passes; 0 runs it only on an admin's request.
    pub advisor_interval_secs: u64,
    /// A candidate index is suggested only when the planner's cost falls by at least this
    /// fraction (verified with HypoPG hypothetical indexes).
    pub index_min_cost_reduction: f64,
    /// Build the best verified suggestion automatically. Off by default: an index changes the
    /// schema and slows every write to its table.
    pub auto_index: bool,
    /// An automatically built index is kept only when the statement's measured p95 fell by at
    /// least this factor; otherwise it is dropped again.
    pub auto_index_min_speedup: f64,
    /// How long an index build or drop may wait for a table lock before giving up (ms).
    pub auto_index_lock_timeout_ms: u64,
}

/// `[features]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Latency prediction (and the confidence header).
    pub performance_prediction: bool,
    /// Anomaly scoring and auto-healing.
    pub anomaly_detection: bool,
    /// Predictive response cache.
    pub caching: bool,
    /// Priority admission and load shedding.
    pub priority: bool,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Hours of history kept (metrics history and request logs).
    pub retention_hours: u64,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Write request logs at all.
    pub enabled: bool,
    /// Folder for request logs.
    pub log_dir: PathBuf,
    /// The optimizer's action log (JSON lines).
    pub optimizer_log: PathBuf,
    /// Records buffered between the request path and the writer; beyond it records are dropped
    /// (and counted) rather than slowing requests.
    pub channel_capacity: usize,
    /// Start a new log file after this many MiB.
    pub rotate_mb: u64,
    /// Start a new log file after this many minutes.
    pub rotate_minutes: u64,
    /// Log search terms and other free text in paths as they came; by default they are
    /// replaced by a keyed hash (`crate::redact`).
    pub keep_query_text: bool,
    /// Gzip each log file once it is rotated (about a fifth of its size; the trainer and the
    /// retrain comparison read both forms).
    pub compress_rotated: bool,
    /// This instance's name in its log file names (`requests-<ms>-<instance>-<pid>.ndjson`), so
    /// that the logs of many instances can share one folder and be told apart; unset: the
    /// host name. Letters, digits, `.`, `_` and `-` only (anything else becomes `_`).
    pub instance_id: Option<String>,
}

impl Default for Config {
    /// The defaults of every table, a pool of 32 connections and no database for the advisor.
    fn default() -> Self {
        Self {
            training_interval: 10,
            prediction_threshold: 0.7,
            optimization: OptimizationConfig::default(),
            features: FeaturesConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
            models: ModelsConfig::default(),
            db_pool_size: 32,
            pg: None,
            balance: crate::balance::BalanceConfig::default(),
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: "models".into(),
            ort_library: None,
            max_age_hours: 24.0 * 7.0,
            drift_factor: 1.05,
            drift_min_secs: 10.0,
            reload_interval_ms: 2_000,
            sessions: 0,
            memo_cells: 16_384,
            trainer: None,
            training_timeout_secs: 600,
            base_logs: vec!["data/sample".into(), "data/capture".into()],
        }
    }
}

impl Default for OptimizationConfig {
    fn default() -> Self {
        Self {
            target_latency_ms: 100,
            max_memory_mb: 256,
            min_concurrency: 8,
            max_concurrency: 512,
            anomaly_rate_threshold: 0.2,
            anomaly_min_duration_secs: 3,
            explain_public: false,
            recovery_secs: 10,
            slow_query_p95_ms: 100.0,
            slow_query_min_calls: 20,
            advisor_interval_secs: 300,
            index_min_cost_reduction: 0.5,
            auto_index: false,
            auto_index_min_speedup: 2.0,
            auto_index_lock_timeout_ms: 2_000,
        }
    }
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            performance_prediction: true,
            anomaly_detection: true,
            caching: true,
            priority: true,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            retention_hours: 24,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            log_dir: "data/logs".into(),
            optimizer_log: "logs/ml-optimizer.log".into(),
            channel_capacity: 16_384,
            rotate_mb: 64,
            rotate_minutes: 60,
            keep_query_text: false,
            compress_rotated: true,
            instance_id: None,
        }
    }
}
