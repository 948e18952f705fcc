//! The optimizer's own endpoints: `/api/ml-metrics` (admin), `/api/stress-test` (admin, low
//! priority), and `/metrics` (Prometheus text format). The index advisor's trigger is in
//! [`super::advice`].

use crate::app::AppState;
use crate::auth::{Admin, AdminView};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::routes::Routes;
use crate::validate;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use optimizer::admission::PriorityStats;
use optimizer::advice::AdviceView;
use optimizer::anomaly::{ANOMALY_SCORE, Action};
use optimizer::cache::Kind;
use optimizer::model::{MemoState, Stale};
use optimizer::telemetry::QueryAggregate;
use optimizer::{Alert, RouteView, Sample};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/api/ml-metrics", ml_metrics)
        .get("/api/stress-test", stress_test)
        .get("/metrics", prometheus)
}

/// Which model answers and how healthy it is.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelHealth {
    /// `onnx`, `online` or `off`.
    pub source: String,
    /// Why that source (e.g. "no model found: online statistics answer").
    pub reason: String,
    /// The loaded model (version, holdout and live error), its counters, refusals and
    /// background retraining.
    #[schema(value_type = Object)]
    pub onnx: optimizer::model::ModelView,
}

/// Cache numbers for one route.
#[derive(Debug, Serialize, ToSchema)]
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

/// Everything the optimizer knows (admin).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MlMetrics {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Model source and health.
    pub model: ModelHealth,
    /// Which optimizer features are on.
    #[schema(value_type = Object)]
    pub features: serde_json::Value,
    /// Live accuracy and calibration per route.
    #[schema(value_type = Vec<Object>)]
    pub routes: Vec<RouteView>,
    /// Cache per route, with totals.
    pub cache: Vec<CacheRoute>,
    /// Cache memory use (bytes) and entries.
    #[schema(value_type = Object)]
    pub cache_memory: serde_json::Value,
    /// Admission per priority.
    #[schema(value_type = Vec<Object>)]
    pub admission: Vec<PriorityStats>,
    /// Current adaptive concurrency limit.
    pub concurrency_limit: u32,
    /// Anomalous share of recent requests and whether auto-healing is in force.
    #[schema(value_type = Object)]
    pub anomaly: serde_json::Value,
    /// Recent anomaly alerts, newest last.
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Alert>,
    /// Optimization actions, newest last.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Action>,
    /// History every 10 s: confidence trend, resource allocation, anomaly rate, cache hit rate.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Sample>,
    /// Tracked statements, slowest total first.
    #[schema(value_type = Vec<Object>)]
    pub queries: Vec<QueryAggregate>,
    /// Request log records written and dropped.
    #[schema(value_type = Object)]
    pub request_log: serde_json::Value,
    /// The index advisor: slow statements, index suggestions (with their verified planner cost
    /// reduction), statements without one and why, and indexes built automatically.
    #[schema(value_type = Object)]
    pub index_advice: AdviceView,
}

/// Model health, accuracy, cache, admission, anomalies, actions and history (admin token, or
/// the dashboard's session cookie: the dashboard polls it).
#[utoipa::path(get, path = "/api/ml-metrics", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, body = MlMetrics), (status = 401, body = ErrorBody)))]
pub async fn ml_metrics(State(state): State<AppState>, _admin: AdminView) -> Json<MlMetrics> {
    let opt = &state.optimizer;
    let s = &opt.settings;
    let cache = Kind::ALL
        .iter()
        .map(|kind| {
            let c = opt.cache.counters(*kind);
            let (hits, misses, refreshes) = (
                c.hits.load(Relaxed),
                c.misses.load(Relaxed),
                c.refreshes.load(Relaxed),
            );
            let all = hits + misses + refreshes;
            CacheRoute {
                route: kind.route(),
                hits,
                misses,
                refreshes,
                hit_rate: if all == 0 {
                    0.0
                } else {
                    hits as f64 / all as f64
                },
            }
        })
        .collect();
    let onnx = opt.models.view();
    let (source, reason) = model_source(s.prediction, onnx.stale);
    Json(MlMetrics {
        uptime_secs: opt.uptime().as_secs(),
        model: ModelHealth {
            source: source.to_owned(),
            reason: reason.to_owned(),
            onnx,
        },
        features: serde_json::json!({
            "performancePrediction": s.prediction, "anomalyDetection": s.anomaly,
            "caching": s.caching, "priority": s.priority, "telemetry": s.telemetry,
            "targetLatencyMs": s.target.as_millis(), "predictionThreshold": s.prediction_threshold,
        }),
        routes: opt.route_views(),
        cache,
        cache_memory: serde_json::json!({ "bytes": opt.cache.weight(), "entries": opt.cache.len(),
            "invalidations": opt.cache.invalidations.load(Relaxed) }),
        admission: opt.admission.stats(),
        concurrency_limit: opt.admission.limit(),
        anomaly: serde_json::json!({ "recentRate": opt.healer.recent_rate(), "healing": opt.healer.is_active(),
            "threshold": opt.healer.threshold(), "anomalousScore": ANOMALY_SCORE }),
        alerts: copy(&opt.alerts),
        actions: copy(&opt.actions),
        history: copy(&opt.history),
        queries: opt.telemetry.query_aggregates(),
        request_log: serde_json::json!({ "written": opt.telemetry.written.load(Relaxed),
            "dropped": opt.telemetry.dropped.load(Relaxed) }),
        index_advice: opt.advice.view(),
    })
}

fn copy<T: Clone>(m: &std::sync::Mutex<std::collections::VecDeque<T>>) -> Vec<T> {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// How hard to push.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StressParams {
    /// Work multiplier, 1-1000 (default 10).
    pub complexity: Option<u32>,
}

/// What the stress test did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StressReport {
    /// The complexity run.
    pub complexity: u32,
    /// CPU time spent hashing (ms).
    pub cpu_ms: f64,
    /// Database time (ms).
    pub db_ms: f64,
    /// Rows the database matched (so the work cannot be optimized away).
    pub matched: i64,
}

/// Real CPU and database work that grows with `complexity`, to provoke anomalies (admin).
#[utoipa::path(get, path = "/api/stress-test", tag = "optimizer", params(StressParams), security(("admin" = [])),
    responses((status = 200, body = StressReport), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn stress_test(
    State(state): State<AppState>,
    _admin: Admin,
    Query(params): Query<StressParams>,
) -> Result<Json<StressReport>, ApiError> {
    let complexity = validate::range("complexity", params.complexity.unwrap_or(10), 1, 1000)?;
    let cpu = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut digest = [0_u8; 32];
        for _ in 0..complexity * 2_000 {
            digest = Sha256::digest(digest).into();
        }
        std::hint::black_box(digest);
        started.elapsed()
    })
    .await
    .map_err(anyhow::Error::from)?;
    let conn = state.db.conn().await?;
    let started = Instant::now();
    let n = i32::try_from(complexity * 2_000).unwrap_or(i32::MAX);
    let row = conn
        .query_one(
            "SELECT count(*) FROM generate_series(1, $1) g WHERE md5(g::text) LIKE 'a%'",
            &[&n],
        )
        .await?;
    Ok(Json(StressReport {
        complexity,
        cpu_ms: cpu.as_secs_f64() * 1000.0,
        db_ms: started.elapsed().as_secs_f64() * 1000.0,
        matched: row.get(0),
    }))
}

/// Writes one metric family: its HELP and TYPE lines, then a sample per (labels, value).
fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Who answers predictions (`onnx`, `online` or `off`) and why.
fn model_source(prediction: bool, stale: Option<Stale>) -> (&'static str, &'static str) {
    match (prediction, stale) {
        (false, _) => ("off", "performance prediction is switched off"),
        (true, None) => ("onnx", "the ONNX model answers"),
        (true, Some(stale)) => ("online", stale.describe()),
    }
}

/// Prometheus text exposition of the optimizer's numbers. Labels are route templates,
/// priorities, cache outcomes, model names and stale reasons only (bounded sets), never ids or
/// users.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    let opt = &state.optimizer;
    let mut out = String::with_capacity(8 * 1024);
    let routes = opt.route_views();
    let by_route = |pick: fn(&RouteView) -> f64| {
        routes
            .iter()
            .map(move |r| (format!("route=\"{}\"", r.route), pick(r)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "shop_requests_total",
        "counter",
        "Requests finished, by route.",
        by_route(|r| r.requests as f64),
    );
    family(
        &mut out,
        "shop_latency_p50_ms",
        "gauge",
        "Recent median latency (ms).",
        by_route(|r| r.p50_ms),
    );
    family(
        &mut out,
        "shop_latency_p90_ms",
        "gauge",
        "Recent 90th percentile latency (ms).",
        by_route(|r| r.p90_ms),
    );
    family(
        &mut out,
        "shop_latency_p99_ms",
        "gauge",
        "Recent 99th percentile latency (ms).",
        by_route(|r| r.p99_ms),
    );
    family(
        &mut out,
        "shop_prediction_coverage",
        "gauge",
        "Share of recent requests at or under their predicted p90.",
        by_route(|r| r.coverage),
    );
    family(
        &mut out,
        "shop_prediction_mae_log",
        "gauge",
        "Mean absolute error of ln latency of recent predictions.",
        by_route(|r| r.mae_log),
    );
    let priorities = opt.admission.stats();
    let per_priority = |label: &str, pick: fn(&PriorityStats) -> u64, value: &str| {
        priorities
            .iter()
            .map(|p| {
                (
                    format!("priority=\"{}\",{label}=\"{value}\"", p.priority.as_str()),
                    pick(p),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut admission = per_priority("outcome", |p| p.admitted, "admitted");
    admission.extend(per_priority("outcome", |p| p.queued, "queued"));
    admission.extend(per_priority("outcome", |p| p.shed, "shed"));
    family(
        &mut out,
        "shop_admission_total",
        "counter",
        "Admission outcomes by priority.",
        admission,
    );
    let mut permits = per_priority("state", |p| u64::from(p.permits), "allowed");
    permits.extend(per_priority("state", |p| u64::from(p.in_use), "in_use"));
    permits.extend(per_priority("state", |p| u64::from(p.waiting), "waiting"));
    family(
        &mut out,
        "shop_permits",
        "gauge",
        "Permits by priority.",
        permits,
    );
    family(
        &mut out,
        "shop_concurrency_limit",
        "gauge",
        "Adaptive concurrency limit.",
        [(String::new(), opt.admission.limit())],
    );
    let cache = Kind::ALL.iter().flat_map(|kind| {
        let c = opt.cache.counters(*kind);
        [
            ("hit", &c.hits),
            ("miss", &c.misses),
            ("refresh", &c.refreshes),
        ]
        .map(|(outcome, n)| {
            (
                format!("route=\"{}\",outcome=\"{outcome}\"", kind.route()),
                n.load(Relaxed),
            )
        })
    });
    family(
        &mut out,
        "shop_cache_total",
        "counter",
        "Cache outcomes by route.",
        cache,
    );
    family(
        &mut out,
        "shop_cache_bytes",
        "gauge",
        "Bytes held by the response cache.",
        [(String::new(), opt.cache.weight())],
    );
    family(
        &mut out,
        "shop_anomaly_rate",
        "gauge",
        "Anomalous share of recent requests.",
        [(String::new(), opt.healer.recent_rate())],
    );
    family(
        &mut out,
        "shop_healing",
        "gauge",
        "Auto-healing in force (1) or not (0).",
        [(String::new(), u8::from(opt.healer.is_active()))],
    );
    let models = opt.models.view();
    let (source, _) = model_source(opt.settings.prediction, models.stale);
    family(
        &mut out,
        "shop_model_serving",
        "gauge",
        "1 while the ONNX models answer, 0 while online statistics answer (or prediction is off).",
        [(String::new(), u8::from(source == "onnx"))],
    );
    family(
        &mut out,
        "shop_model_stale",
        "gauge",
        "1, labelled with the reason, while the model cannot answer.",
        models
            .stale
            .map(|stale| (format!("reason=\"{}\"", stale.as_str()), 1)),
    );
    let by_model = |(latency, anomaly): (u64, u64)| {
        [
            ("model=\"latency\"".to_owned(), latency),
            ("model=\"anomaly\"".to_owned(), anomaly),
        ]
    };
    family(
        &mut out,
        "shop_model_runtime_calls_total",
        "counter",
        "ONNX Runtime calls of the serving models (a run shared by several requests counts once; restarts at 0 when a new model loads).",
        by_model(models.runtime_calls.unwrap_or_default()),
    );
    let hits = |state: &MemoState| match state {
        MemoState::On(view) => view.hits,
        MemoState::Off { .. } => 0,
    };
    family(
        &mut out,
        "shop_model_kept_answers_total",
        "counter",
        "Rows the serving models answered with a kept answer (a cell seen before), without a runtime call (restarts at 0 when a new model loads).",
        by_model(
            models
                .memo
                .as_ref()
                .map_or((0, 0), |(l, a)| (hits(l), hits(a))),
        ),
    );
    family(
        &mut out,
        "shop_model_fallbacks_total",
        "counter",
        "Requests online statistics answered because the model was stale, absent or busy.",
        [(String::new(), models.fallbacks)],
    );
    family(
        &mut out,
        "shop_request_log_total",
        "counter",
        "Request log records by outcome.",
        [
            (
                "outcome=\"written\"".to_owned(),
                opt.telemetry.written.load(Relaxed),
            ),
            (
                "outcome=\"dropped\"".to_owned(),
                opt.telemetry.dropped.load(Relaxed),
            ),
        ],
    );
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
}
