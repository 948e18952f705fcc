//! The optimizer's state as one typed value: what `/api/ml-metrics`, `/metrics` and the
//! dashboard render. Taking one reads atomics and a few short locks; nothing here is on the
//! request path.

use crate::admission::PriorityStats;
use crate::model::ModelView;
use serde::Serialize;

/// The optimizer now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Who answers predictions, and the model's health.
    pub model: ModelHealth,
    /// Which parts are on, and their knobs.
    pub features: Features,
    /// Live accuracy and calibration of each route that had requests.
    pub routes: Vec<RouteView>,
    /// Cache counters per cached route.
    pub cache: Vec<CacheRoute>,
    /// Cache memory.
    pub cache_memory: CacheMemory,
    /// Admission per priority.
    pub admission: Vec<PriorityStats>,
    /// The adaptive concurrency limit.
    pub concurrency_limit: u32,
    /// Anomalies and auto-healing.
    pub anomaly: AnomalyState,
    /// Request log records.
    pub request_log: RequestLog,
    /// Where reads went: the primary and each read replica.
    pub load_distribution: Vec<crate::balance::TargetView>,
}

/// Which model answers and how healthy it is.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelHealth {
    /// `onnx`, `online` or `off`.
    pub source: &'static str,
    /// Why that source (e.g. "no model found: online statistics answer").
    pub reason: &'static str,
    /// The loaded model (version, holdout and live error), its counters, refusals and
    /// background retraining.
    pub onnx: ModelView,
}

/// Which optimizer parts are on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Latency prediction.
    pub performance_prediction: bool,
    /// Anomaly scoring and auto-healing.
    pub anomaly_detection: bool,
    /// The response cache.
    pub caching: bool,
    /// Priority admission and shedding.
    pub priority: bool,
    /// The request log.
    pub telemetry: bool,
    /// The latency target (ms).
    pub target_latency_ms: u128,
    /// Confidence needed before acting on a prediction.
    pub prediction_threshold: f32,
}

/// Cache counters for one cached route.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRoute {
    /// Route label.
    pub route: String,
    /// Hits.
    pub hits: u64,
    /// Misses (fills).
    pub misses: u64,
    /// Early refreshes.
    pub refreshes: u64,
    /// hits / all.
    pub hit_rate: f64,
}

/// Cache memory use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheMemory {
    /// Bytes held.
    pub bytes: u64,
    /// Entries held.
    pub entries: usize,
    /// Entries dropped because their product changed.
    pub invalidations: u64,
}

/// The anomalous share and auto-healing.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyState {
    /// Anomalous share of recent requests.
    pub recent_rate: f64,
    /// Auto-healing in force.
    pub healing: bool,
    /// The share that counts as an incident.
    pub threshold: f64,
    /// The score at or above which a request is anomalous.
    pub anomalous_score: f32,
}

/// Request log records.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLog {
    /// Written.
    pub written: u64,
    /// Dropped because the writer fell behind.
    pub dropped: u64,
    /// Lost because the log folder would not take them (unwritable, full).
    pub lost: u64,
    /// While writing fails: since when (Unix ms) and why; writing resumes by itself.
    pub failing_since_ms: Option<i64>,
    /// See `failing_since_ms`.
    pub error: Option<String>,
}

/// Share of `hits` in `all`, 0 when there were none.
pub fn hit_rate(hits: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        hits as f64 / all as f64
    }
}

/// A route's live numbers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    /// Route label.
    pub route: String,
    /// Requests ever.
    pub requests: u64,
    /// Requests per second, recent.
    pub rate: f32,
    /// Recent median (ms).
    pub p50_ms: f64,
    /// Recent p90 (ms).
    pub p90_ms: f64,
    /// Recent p99 (ms).
    pub p99_ms: f64,
    /// Requests with a prediction in the window.
    pub predicted_in_window: u32,
    /// Share of them at or under the predicted p90 (calibration; nominal 0.9).
    pub coverage: f64,
    /// Mean |ln actual − ln predicted p50|.
    pub mae_log: f64,
    /// Server errors in the window.
    pub errors_in_window: u32,
    /// The model beside the online statistics on the same requests in the window (the shadow
    /// evaluation), whichever of them answered; absent when the model did not run.
    pub shadow: Option<ShadowView>,
}

/// The model's and the online statistics' errors on the same requests.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowView {
    /// Requests both predicted.
    pub requests: u32,
    /// The model's mean |ln actual − ln predicted p50|.
    pub model_mae_log: f64,
    /// The online statistics' on the same requests.
    pub online_mae_log: f64,
    /// Share at or under the model's p90.
    pub model_p90_coverage: f64,
    /// Share at or under the online p90.
    pub online_p90_coverage: f64,
}
