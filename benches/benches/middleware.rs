//! What the optimizer middleware costs per request, in process (no network, no database).
//!
//! Five routers serve the same trivial handler on `GET /api/cart` (a route the cache never
//! touches): without the middleware, with the middleware and every feature off, with every
//! feature on and online statistics answering (no model), and with every feature on and the
//! committed ONNX models answering (features, prediction, admission, anomaly score, statistics,
//! log enqueue), once with every request running both models and once answered from the answers
//! kept per cell (`models.memo_cells`). The difference between the first and the last three is
//! the optimizer's added latency. The ONNX cases need `ORT_DYLIB_PATH` (`make bench` sets it).

#![allow(missing_docs)]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use optimizer::middleware::{Host, Pipeline, PoolStatus, optimize};
use optimizer::{Config, Optimizer};
use std::sync::Arc;
use tower::ServiceExt;

/// A shop with an idle pool of 32 connections and no admin: nothing here touches a database.
#[derive(Clone)]
struct Idle;

impl Host for Idle {
    fn pool(&self) -> PoolStatus {
        PoolStatus {
            waiting: 0,
            available: 32,
        }
    }

    fn is_admin(&self, _headers: &axum::http::HeaderMap) -> bool {
        false
    }
}

fn state(all_on: bool) -> Pipeline<Idle> {
    state_with(all_on, false, 0).1
}

/// `memo_cells` as the configuration key: 0 runs both models on every request.
fn state_with(all_on: bool, onnx: bool, memo_cells: usize) -> (Arc<Optimizer>, Pipeline<Idle>) {
    let mut config = Config::default();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    config.models.dir = if onnx {
        repo.join("models")
    } else {
        repo.join("no-models-here")
    };
    // The committed model's age and its error on this trivial handler do not matter here.
    config.models.max_age_hours = 0.0;
    config.models.drift_factor = 0.0;
    config.models.memo_cells = memo_cells;
    let scratch = std::env::temp_dir().join(format!("shop-bench-{}", std::process::id()));
    config.telemetry.log_dir = scratch.join("logs");
    config.telemetry.optimizer_log = scratch.join("ml-optimizer.log");
    let f = &mut config.features;
    (
        f.performance_prediction,
        f.anomaly_detection,
        f.caching,
        f.priority,
    ) = (all_on, all_on, all_on, all_on);
    config.telemetry.enabled = all_on;
    let optimizer = Arc::new(Optimizer::new(&config));
    (optimizer.clone(), Pipeline::new(optimizer, Idle))
}

fn router(state: Option<Pipeline<Idle>>) -> Router {
    let routes = Router::new().route("/api/cart", get(|| async { "{}" }));
    match state {
        Some(state) => routes.layer(from_fn_with_state(state, optimize::<Idle>)),
        None => routes,
    }
}

/// `GET /api/cart` through `app`.
async fn get_cart(app: Router) -> axum::response::Response {
    app.oneshot(
        Request::get("/api/cart")
            .body(Body::empty())
            .expect("request"),
    )
    .await
    .expect("infallible")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let onnx = state_with(true, true, 0);
    let kept = state_with(true, true, Config::default().models.memo_cells);
    for (optimizer, _) in [&onnx, &kept] {
        assert_eq!(
            optimizer.snapshot().model.onnx.stale,
            None,
            "the committed models must load (is ORT_DYLIB_PATH set?)"
        );
    }
    let onnx = router(Some(onnx.1));
    let cases = [
        ("no_middleware", router(None)),
        ("features_off", router(Some(state(false)))),
        ("features_on", router(Some(state(true)))),
        // Both models run on every request.
        ("features_on_onnx", onnx.clone()),
        // The same request again and again: after the first, both answers are kept ones.
        ("features_on_onnx_kept", router(Some(kept.1))),
    ];
    let mut group = c.benchmark_group("request");
    for (name, app) in cases {
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| async { std::hint::black_box(get_cart(app.clone()).await) });
        });
    }
    group.finish();
    let response = runtime.block_on(get_cart(onnx));
    assert_eq!(
        response.headers()["x-ml-source"],
        "onnx",
        "the ONNX case was answered by the model"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
