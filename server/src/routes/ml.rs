//! The optimizer's admin endpoints, every `/api/ml-metrics*` route: the whole state
//! (`/api/ml-metrics`), the dashboard's time series and action log tail, and the triggers for
//! an index advisor pass and a retraining run. Each renders the optimizer's typed snapshot or
//! history; none reaches into its internals.

use crate::app::AppState;
use crate::auth::{Admin, AdminView};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::routes::Routes;
use crate::routes::dashboard::hardened;
use crate::validate;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use optimizer::actions::Action;
use optimizer::advice::AdviceView;
use optimizer::anomaly::Alert;
use optimizer::history::Sample;
use optimizer::model::retrain::RetrainStatus;
use optimizer::series::{self, MAX_POINTS, Point, SAMPLE_SECS};
use optimizer::snapshot::{
    AnomalyState, CacheMemory, CacheRoute, Features, ModelHealth, RequestLog, RouteView,
};
use optimizer::telemetry::QueryAggregate;
use optimizer::{Snapshot, unix_ms};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/api/ml-metrics", ml_metrics)
        .get("/api/ml-metrics/series", series)
        .get("/api/ml-metrics/log", optimizer_log)
        .post("/api/ml-metrics/index-advice", advise_now)
        .post("/api/ml-metrics/retrain", retrain_now)
        .post("/api/ml-metrics/rollback", rollback)
}

/// Most bytes read from the end of the optimizer log for one answer.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Everything the optimizer knows (admin).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MlMetrics {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Model source and health: `source` (`onnx`, `online` or `off`), `reason`, and `onnx`
    /// (the loaded model's version, holdout and live error, counters, refusals, retraining).
    #[schema(value_type = Object)]
    pub model: ModelHealth,
    /// Which optimizer features are on.
    #[schema(value_type = Object)]
    pub features: Features,
    /// Live accuracy and calibration per route.
    #[schema(value_type = Vec<Object>)]
    pub routes: Vec<RouteView>,
    /// Cache per route: hits, misses, refreshes, hit rate.
    #[schema(value_type = Vec<Object>)]
    pub cache: Vec<CacheRoute>,
    /// Cache memory use (bytes), entries and invalidations.
    #[schema(value_type = Object)]
    pub cache_memory: CacheMemory,
    /// Admission per priority.
    #[schema(value_type = Vec<Object>)]
    pub admission: Vec<optimizer::admission::PriorityStats>,
    /// Current adaptive concurrency limit.
    pub concurrency_limit: u32,
    /// Anomalous share of recent requests and whether auto-healing is in force.
    #[schema(value_type = Object)]
    pub anomaly: AnomalyState,
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
    pub request_log: RequestLog,
    /// The index advisor: slow statements, index suggestions (with their verified planner cost
    /// reduction), statements without one and why, and indexes built automatically.
    #[schema(value_type = Object)]
    pub index_advice: AdviceView,
    /// Where reads went, per target (the primary, each read replica): share of reads, EWMA
    /// latency, in flight, replication lag, state (`serving`, `unknown`, `banned`, `lagging`),
    /// failures and bans.
    #[schema(value_type = Vec<Object>)]
    pub load_distribution: Vec<optimizer::balance::TargetView>,
}

/// Model health, accuracy, cache, admission, anomalies, actions and history (admin token, or
/// the dashboard's session cookie: the dashboard polls it).
#[utoipa::path(get, path = "/api/ml-metrics", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, body = MlMetrics), (status = 401, body = ErrorBody)))]
pub async fn ml_metrics(State(state): State<AppState>, _admin: AdminView) -> Json<MlMetrics> {
    let opt = &state.optimizer;
    let Snapshot {
        uptime_secs,
        model,
        features,
        routes,
        cache,
        cache_memory,
        admission,
        concurrency_limit,
        anomaly,
        request_log,
        load_distribution,
    } = opt.snapshot();
    Json(MlMetrics {
        uptime_secs,
        model,
        features,
        routes,
        cache,
        cache_memory,
        admission,
        concurrency_limit,
        anomaly,
        alerts: opt.alerts(|_| true),
        actions: opt.actions(|_| true),
        history: opt.history(|_| true),
        queries: opt.queries(),
        request_log,
        index_advice: opt.advice(),
        load_distribution,
    })
}

/// Which part of the history to chart.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// The last this many minutes (1-525,600, default 60); more than the history holds
    /// (`metrics.retention_hours`) gives the whole history.
    #[param(minimum = 1, maximum = 525_600)]
    pub minutes: Option<u32>,
    /// At most this many points (10-720, default 240); neighbouring samples are merged.
    #[param(minimum = 10, maximum = 720)]
    pub points: Option<u32>,
}

/// The dashboard's time series.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// Seconds between stored samples.
    pub sample_secs: i64,
    /// Seconds one point covers.
    pub bucket_secs: i64,
    /// Minutes covered.
    pub window_minutes: u32,
    /// How long samples are kept (`metrics.retention_hours`).
    pub retention_hours: u64,
    /// Oldest first; the last point is the live state (`live: true`).
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<Point>,
    /// Optimizer actions in the window, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Action>,
    /// Anomaly alerts in the window, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Alert>,
}

/// The optimizer's history, downsampled: request rate and latency (actual and predicted) per
/// route, confidence, cache hit rate, anomalous share, optimizations, allocation per priority.
#[utoipa::path(get, path = "/api/ml-metrics/series", tag = "optimizer", params(SeriesParams),
    security(("admin" = [])),
    responses((status = 200, body = Series), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn series(
    State(state): State<AppState>,
    _admin: AdminView,
    Query(params): Query<SeriesParams>,
) -> Result<Json<Series>, ApiError> {
    let retention_hours = state.config.metrics.retention_hours;
    let longest = u32::try_from(retention_hours.saturating_mul(60))
        .unwrap_or(u32::MAX)
        .max(1);
    let minutes =
        validate::range("minutes", params.minutes.unwrap_or(60), 1, 525_600)?.min(longest);
    let max_points = validate::range(
        "points",
        params.points.unwrap_or(240),
        10,
        u32::try_from(MAX_POINTS).unwrap_or(u32::MAX),
    )?;
    let max_points = usize::try_from(max_points).unwrap_or(MAX_POINTS);
    let opt = &state.optimizer;
    let start = series::window_start_ms(minutes);
    let width = series::bucket_ms(i64::from(minutes) * 60_000, max_points);
    let points = opt.series(start, width, max_points);
    let in_window = |ts: i64| ts >= start && ts <= unix_ms();
    let actions = opt.actions(|a| in_window(a.ts_ms));
    let alerts = opt.alerts(|a| in_window(a.ts_ms));
    Ok(Json(Series {
        sample_secs: SAMPLE_SECS,
        bucket_secs: width / 1000,
        window_minutes: minutes,
        retention_hours,
        points,
        actions,
        alerts,
    }))
}

/// How much of the log to show.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// The last this many lines (1-2000, default 200), from at most the last 64 KiB.
    #[param(minimum = 1, maximum = 2000)]
    pub lines: Option<u32>,
}

/// The tail of the optimizer's action log (`telemetry.optimizer_log`, by default
/// `logs/ml-optimizer.log`): one JSON object per line, newest last. Empty until the optimizer
/// has acted. The file's path is in the `x-log-file` header.
#[utoipa::path(get, path = "/api/ml-metrics/log", tag = "optimizer", params(LogParams),
    security(("admin" = [])),
    responses((status = 200, description = "The last lines, text/plain"), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn optimizer_log(
    State(state): State<AppState>,
    _admin: AdminView,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let lines = validate::range("lines", params.lines.unwrap_or(200), 1, 2000)?;
    let path = state.config.telemetry.optimizer_log.clone();
    let shown = path.display().to_string();
    let text = tokio::task::spawn_blocking(move || tail(&path, lines))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(ApiError::Internal)?;
    let mut response = hardened(StatusCode::OK, "text/plain; charset=utf-8", text);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&shown) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-log-file"), value);
    }
    Ok(response)
}

/// The last `lines` complete lines of the file, reading at most [`LOG_TAIL_BYTES`]; empty when
/// the file does not exist yet.
fn tail(path: &PathBuf, lines: u32) -> anyhow::Result<String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(err.into()),
    };
    let len = file.metadata()?.len();
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // A read that starts mid-file starts mid-line: drop that partial first line.
    let text = if from > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    let all: Vec<&str> = text.lines().collect();
    let keep = usize::try_from(lines).unwrap_or(usize::MAX).min(all.len());
    let mut out = all[all.len() - keep..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// Runs an index advisor pass now (after any running one) and returns the advisor's view: slow
/// statements, suggestions with their verified cost reduction, skipped statements and why, and
/// automatically built indexes with their measured outcome. The same view is `indexAdvice` in
/// `/api/ml-metrics`.
#[utoipa::path(post, path = "/api/ml-metrics/index-advice", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, description = "The advisor's view after the pass (as `indexAdvice` in /api/ml-metrics)"),
        (status = 401, body = ErrorBody)))]
pub async fn advise_now(State(state): State<AppState>, _admin: Admin) -> Json<AdviceView> {
    Json(state.optimizer.advise_now().await)
}

/// Runs the trainer on the server's request logs and waits for it (at most
/// `training_timeout_secs`). The new model is adopted only if it predicts the most recent logged
/// requests (the ones it was not trained on) better than the serving model; the model watcher
/// then loads it. Answers with the training status (also `model.retrain` in /api/ml-metrics).
#[utoipa::path(post, path = "/api/ml-metrics/retrain", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, description = "The training status after the run: runs, adopted, lastOutcome"),
        (status = 401, body = ErrorBody),
        (status = 409, description = "A training run is already in progress", body = ErrorBody)))]
pub async fn retrain_now(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<RetrainStatus>, ApiError> {
    state
        .optimizer
        .retrain_now()
        .await?
        .map(Json)
        .ok_or(ApiError::Conflict {
            code: "training_in_progress",
            message: "a training run is already in progress, on this instance or another".into(),
        })
}

/// What a rollback did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RollbackOutcome {
    /// The version restored and the one kept as the new previous.
    pub outcome: String,
}

/// Restores the model the last adopted retrain replaced (kept in the model folder's
/// `previous/`), checked like any model; the one serving now becomes the previous, so a rollback
/// can be undone the same way. The model watcher then loads it.
#[utoipa::path(post, path = "/api/ml-metrics/rollback", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, body = RollbackOutcome),
        (status = 401, body = ErrorBody),
        (status = 409, description = "No previous model, or it was refused", body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<RollbackOutcome>, ApiError> {
    match state.optimizer.rollback().await? {
        Ok(outcome) => Ok(Json(RollbackOutcome { outcome })),
        Err(message) => Err(ApiError::Conflict {
            code: "no_rollback",
            message: message.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_tail_keeps_the_last_whole_lines() {
        let dir = std::env::temp_dir().join(format!("dash-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ml-optimizer.log");
        let mut file = std::fs::File::create(&path).expect("file");
        for i in 0..10_000 {
            writeln!(file, "{{\"n\":{i}}}").expect("write");
        }
        drop(file);
        let text = tail(&path, 3).expect("tail");
        assert_eq!(text, "{\"n\":9997}\n{\"n\":9998}\n{\"n\":9999}\n");
        let long = tail(&path, 2000).expect("tail");
        assert!(long.len() <= usize::try_from(LOG_TAIL_BYTES).unwrap_or(usize::MAX));
        assert!(
            long.lines()
                .all(|l| l.starts_with("{\"n\":") && l.ends_with('}')),
            "no partial line"
        );
        assert_eq!(
            tail(&dir.join("missing.log"), 10).expect("tail"),
            "",
            "no log yet, no lines"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
