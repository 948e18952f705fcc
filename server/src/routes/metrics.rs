//! `/metrics`: the optimizer's numbers in Prometheus' text format, rendered from its snapshot.

use crate::app::AppState;
use crate::routes::Routes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use optimizer::admission::PriorityStats;
use optimizer::model::MemoState;
use optimizer::snapshot::RouteView;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().get("/metrics", prometheus)
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

/// Prometheus text exposition of the optimizer's numbers. Labels are route templates,
/// priorities, cache outcomes, model names and stale reasons only (bounded sets), never ids or
/// users.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.optimizer.snapshot();
    let mut out = String::with_capacity(8 * 1024);
    let routes = &snapshot.routes;
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
    let shadowed = |pick: fn(&optimizer::snapshot::ShadowView) -> f64| {
        routes
            .iter()
            .filter_map(move |r| {
                r.shadow
                    .as_ref()
                    .map(|s| (format!("route=\"{}\"", r.route), pick(s)))
            })
            .collect::<Vec<_>>()
    };
    let mut shadow = shadowed(|s| s.model_mae_log)
        .into_iter()
        .map(|(labels, v)| (format!("{labels},predictor=\"model\""), v))
        .collect::<Vec<_>>();
    shadow.extend(
        shadowed(|s| s.online_mae_log)
            .into_iter()
            .map(|(labels, v)| (format!("{labels},predictor=\"online\""), v)),
    );
    family(
        &mut out,
        "shop_shadow_mae_log",
        "gauge",
        "Mean absolute error of ln latency of the model and of the online statistics on the same recent requests, whichever answered.",
        shadow,
    );
    let priorities = &snapshot.admission;
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
        [(String::new(), snapshot.concurrency_limit)],
    );
    let cache = snapshot.cache.iter().flat_map(|c| {
        [
            ("hit", c.hits),
            ("miss", c.misses),
            ("refresh", c.refreshes),
        ]
        .map(|(outcome, n)| (format!("route=\"{}\",outcome=\"{outcome}\"", c.route), n))
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
        [(String::new(), snapshot.cache_memory.bytes)],
    );
    family(
        &mut out,
        "shop_anomaly_rate",
        "gauge",
        "Anomalous share of recent requests.",
        [(String::new(), snapshot.anomaly.recent_rate)],
    );
    family(
        &mut out,
        "shop_healing",
        "gauge",
        "Auto-healing in force (1) or not (0).",
        [(String::new(), u8::from(snapshot.anomaly.healing))],
    );
    let models = &snapshot.model.onnx;
    let source = snapshot.model.source;
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
        "Requests online statistics answered because the model was stale or absent (not counting busy sessions).",
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
                snapshot.request_log.written,
            ),
            (
                "outcome=\"dropped\"".to_owned(),
                snapshot.request_log.dropped,
            ),
            ("outcome=\"lost\"".to_owned(), snapshot.request_log.lost),
        ],
    );
    family(
        &mut out,
        "shop_request_log_failing",
        "gauge",
        "1 while the request log folder cannot be written (unwritable or full), else 0.",
        [(
            String::new(),
            u64::from(snapshot.request_log.failing_since_ms.is_some()),
        )],
    );
    let logins = &state.auth.failed_logins;
    family(
        &mut out,
        "shop_login_failures_total",
        "counter",
        "Failed logins (wrong password or unknown account) this instance answered.",
        [(String::new(), logins.failures.load(Relaxed))],
    );
    family(
        &mut out,
        "shop_login_throttled_total",
        "counter",
        "Logins refused with 429 because the account or the client was over its hourly failed-login limit.",
        [
            (
                "scope=\"account\"".to_owned(),
                logins.throttled_account.load(Relaxed),
            ),
            (
                "scope=\"client\"".to_owned(),
                logins.throttled_client.load(Relaxed),
            ),
        ],
    );
    family(
        &mut out,
        "shop_login_failure_limit",
        "gauge",
        "Failed logins allowed per hour (auth.failed_logins_per_account_per_hour, auth.failed_logins_per_client_per_hour), shared by every instance.",
        [
            ("scope=\"account\"".to_owned(), logins.per_account),
            ("scope=\"client\"".to_owned(), logins.per_client),
        ],
    );
    load_distribution(&mut out, &snapshot.load_distribution);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The read targets: the primary and each replica (host and port, a set the configuration
/// fixes).
fn load_distribution(out: &mut String, targets: &[optimizer::balance::TargetView]) {
    let by_target = |pick: &dyn Fn(&optimizer::balance::TargetView) -> f64| {
        targets
            .iter()
            .map(|t| {
                (
                    format!("target=\"{}\",role=\"{}\"", escape(&t.target), t.role),
                    pick(t),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        out,
        "shop_db_reads_total",
        "counter",
        "Reads sent to each database target (catalogue, search, analytics).",
        by_target(&|t| t.reads as f64),
    );
    family(
        out,
        "shop_db_read_ewma_ms",
        "gauge",
        "Peak-sensitive EWMA of each target's read time (ms), by which reads are spread.",
        by_target(&|t| t.ewma_ms),
    );
    family(
        out,
        "shop_db_reads_in_flight",
        "gauge",
        "Reads running on each target now.",
        by_target(&|t| f64::from(t.in_flight)),
    );
    family(
        out,
        "shop_db_replica_lag_ms",
        "gauge",
        "How far each replica is behind the primary (ms).",
        targets.iter().filter_map(|t| {
            t.lag_ms
                .map(|lag| (format!("target=\"{}\"", escape(&t.target)), lag))
        }),
    );
    family(
        out,
        "shop_db_target_serving",
        "gauge",
        "1 while the target takes reads, 0 while it is unknown, banned or lagging.",
        by_target(&|t| {
            if t.state == optimizer::balance::TargetState::Serving {
                1.0
            } else {
                0.0
            }
        }),
    );
    family(
        out,
        "shop_db_target_bans_total",
        "counter",
        "Times each replica was banned for failing.",
        by_target(&|t| t.bans as f64),
    );
}
