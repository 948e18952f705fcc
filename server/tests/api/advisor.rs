//! The index advisor against real PostgreSQL with HypoPG: the slow category filter found and its
//! index suggested (a generated catalogue, smaller than `make seed-large`'s million rows, with
//! one rare category, where the planner still prefers the index), no suggestion for what an
//! index already serves or from too few calls, nothing built unless asked, and a built index
//! that does not help dropped again.

use crate::helpers::{ADMIN, TestApp, eventually, spawn_app_with, statements_with};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Generated products in each test's catalogue.
const PRODUCTS: u64 = 20_000;
/// Calls before a statement can be judged slow (`optimization.slow_query_min_calls`).
const MIN_CALLS: u64 = 10;
/// The category list, as the products route runs it.
const CATEGORY_PAGE: &str = "/api/products?category=collectibles";

/// A server that counts every statement as slow once it has `MIN_CALLS` calls (threshold 0 ms:
/// these tests are about what the advisor proposes, not about timing), without the response
/// cache (every request reaches the database) and without the periodic pass (tests trigger it).
async fn spawn(adjust: impl FnOnce(&mut server::Config)) -> TestApp {
    let app = spawn_app_with(|c| {
        c.features.caching = false;
        c.optimization.slow_query_p95_ms = 0.0;
        c.optimization.slow_query_min_calls = MIN_CALLS;
        c.optimization.advisor_interval_secs = 0;
        adjust(c);
    })
    .await;
    app.seed_products(PRODUCTS).await;
    // One product in a thousand moves to a rare category: the listing then has to read the
    // whole table (or walk the popularity index) to find a page of them.
    app.db
        .batch_execute(
            "UPDATE products SET category = 'collectibles' WHERE id % 1000 = 0; ANALYZE products",
        )
        .await
        .expect("rare category");
    app
}

/// Lists the rare category `n` times.
async fn browse(app: &TestApp, n: u64) {
    for _ in 0..n {
        let response = app.get(CATEGORY_PAGE).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Waits until the request log writer has counted `calls` executions of the category listing.
async fn wait_for_calls(app: &TestApp, calls: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{calls} calls of the category listing counted"),
        || async {
            let m = app.ml_metrics().await;
            let counted = statements_with(&m, "p.category = $1")
                .iter()
                .filter_map(|q| q["calls"].as_u64())
                .sum::<u64>();
            if counted >= calls {
                Ok(())
            } else {
                Err(format!("only {counted} counted"))
            }
        },
    )
    .await;
}

/// Runs an advisor pass through the admin endpoint.
async fn advise(app: &TestApp) -> Value {
    let response = app
        .client
        .post(app.url("/api/ml-metrics/index-advice"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let view: Value = response.json().await.expect("advice json");
    assert!(view["lastError"].is_null(), "pass failed: {view}");
    view
}

async fn indexes_on_category(app: &TestApp) -> Vec<String> {
    app.db
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'products' AND indexdef LIKE '%(category%'",
            &[],
        )
        .await
        .expect("pg_indexes")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn optimizer_log(app: &TestApp) -> String {
    std::fs::read_to_string(app.scratch.join("logs/ml-optimizer.log")).unwrap_or_default()
}

#[tokio::test]
async fn slow_category_filter_gets_a_verified_category_index_suggestion_and_nothing_is_built() {
    let app = spawn(|_| {}).await;

    browse(&app, MIN_CALLS - 1).await;
    wait_for_calls(&app, MIN_CALLS - 1).await;
    let early = advise(&app).await;
    assert_eq!(early["suggestions"], Value::Array(vec![]), "{early}");
    assert_eq!(early["slowQueries"], Value::Array(vec![]), "too few calls");

    browse(&app, 1).await;
    wait_for_calls(&app, MIN_CALLS).await;
    let view = advise(&app).await;
    assert_eq!(view["hypopgAvailable"], true, "{view}");
    let suggestions = view["suggestions"].as_array().expect("suggestions");
    assert_eq!(suggestions.len(), 1, "{view}");
    let s = &suggestions[0];
    assert_eq!(s["table"], "products");
    assert_eq!(s["columns"][0], "category", "{s}");
    assert_eq!(s["verified"], true);
    assert!(
        s["statement"]
            .as_str()
            .expect("statement")
            .contains("p.category = $1")
    );
    let reduction = s["costReduction"].as_f64().expect("cost reduction");
    assert!(reduction >= 0.5, "{s}");
    assert!(s["costAfter"].as_f64() < s["costBefore"].as_f64());
    assert!(
        s["createSql"]
            .as_str()
            .expect("create sql")
            .starts_with("CREATE INDEX CONCURRENTLY idx_products_category")
    );

    // Suggested in the metrics and the optimizer log, but not built: auto_index is off.
    let m = app.ml_metrics().await;
    assert_eq!(m["indexAdvice"]["autoIndex"], false);
    assert_eq!(
        m["indexAdvice"]["suggestions"][0]["createSql"],
        s["createSql"]
    );
    assert!(optimizer_log(&app).contains("\"action\":\"index-suggested\""));
    assert!(indexes_on_category(&app).await.is_empty());
    assert_eq!(m["indexAdvice"]["trials"], Value::Array(vec![]));
}

#[tokio::test]
async fn no_suggestion_when_an_existing_index_already_serves_the_filter() {
    let app = spawn(|_| {}).await;
    app.db
        .batch_execute(
            "CREATE INDEX products_category_idx ON products (category); ANALYZE products",
        )
        .await
        .expect("index");

    browse(&app, MIN_CALLS).await;
    wait_for_calls(&app, MIN_CALLS).await;
    let view = advise(&app).await;
    // The statement was judged (it is slow by the test's threshold), and found served.
    assert_eq!(
        view["slowQueries"].as_array().map(Vec::len),
        Some(1),
        "{view}"
    );
    assert_eq!(view["suggestions"], Value::Array(vec![]), "{view}");
    assert_eq!(view["skipped"].as_array().map(Vec::len), Some(1), "{view}");
}

#[tokio::test]
async fn an_auto_built_index_that_does_not_help_enough_is_dropped_and_not_built_again() {
    // A required speed-up no index can reach makes "did not help" certain without relying on
    // timing.
    let app = spawn(|c| {
        c.optimization.auto_index = true;
        c.optimization.auto_index_min_speedup = 1.0e9;
    })
    .await;

    browse(&app, MIN_CALLS).await;
    wait_for_calls(&app, MIN_CALLS).await;
    let built = advise(&app).await;
    let trial = &built["trials"][0];
    assert_eq!(trial["outcome"], "measuring", "{built}");
    let name = trial["indexName"].as_str().expect("index name");
    assert_eq!(indexes_on_category(&app).await, [name]);

    browse(&app, MIN_CALLS).await;
    wait_for_calls(&app, 2 * MIN_CALLS).await;
    let judged = advise(&app).await;
    let trial = &judged["trials"][0];
    assert_eq!(trial["outcome"], "dropped", "{judged}");
    assert!(trial["p95AfterMs"].as_f64().is_some());
    assert_eq!(
        judged["trials"].as_array().map(Vec::len),
        Some(1),
        "not rebuilt"
    );
    assert!(indexes_on_category(&app).await.is_empty());

    let log = optimizer_log(&app);
    for step in ["index-apply", "index-applied", "index-dropped"] {
        assert!(
            log.contains(&format!("\"action\":\"{step}\"")),
            "{step} missing: {log}"
        );
    }
}

#[tokio::test]
async fn advisor_trigger_is_closed_without_the_admin_token() {
    let app = spawn_app_with(|_| {}).await;
    let response = app
        .client
        .post(app.url("/api/ml-metrics/index-advice"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
