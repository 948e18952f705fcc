//! What the optimizer middleware costs per request, in process (no network, no database).
//!
//! Three routers serve the same trivial handler on `GET /api/cart` (a route the cache never
//! touches): without the middleware, with the middleware and every feature off, and with every
//! feature on (features, prediction, admission, anomaly score, statistics, log enqueue). The
//! difference between the first and the last is the optimizer's added latency.

#![allow(missing_docs)]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use server::app::AppState;
use server::auth::Auth;
use server::config::Config;
use server::db::Db;
use server::optimizer::Optimizer;
use server::optimizer::middleware::optimize;
use std::sync::Arc;
use tower::ServiceExt;

fn state(all_on: bool) -> AppState {
    let mut config = Config::default();
    // The pool connects lazily; nothing here touches a database.
    config.database.url = Some("postgres://bench@127.0.0.1:1/bench".into());
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
    AppState {
        db: Db::new(&config).expect("pool"),
        auth: Arc::new(Auth::new(&config.auth).expect("auth")),
        optimizer: Arc::new(Optimizer::new(&config)),
        config: Arc::new(config),
    }
}

fn router(state: Option<AppState>) -> Router {
    let routes: Router<AppState> = Router::new().route("/api/cart", get(|| async { "{}" }));
    match state {
        Some(state) => routes
            .layer(from_fn_with_state(state.clone(), optimize))
            .with_state(state),
        None => routes.with_state(self::state(false)),
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cases = [
        ("no_middleware", router(None)),
        ("features_off", router(Some(state(false)))),
        ("features_on", router(Some(state(true)))),
    ];
    let mut group = c.benchmark_group("request");
    for (name, app) in cases {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let app = app.clone();
                async move {
                    let response = app
                        .oneshot(
                            Request::get("/api/cart")
                                .body(Body::empty())
                                .expect("request"),
                        )
                        .await
                        .expect("infallible");
                    std::hint::black_box(response)
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
