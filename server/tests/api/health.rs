use crate::helpers::{assert_error, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ok");
    }
}

#[tokio::test]
async fn openapi_describes_every_endpoint() {
    let app = spawn_app().await;
    let spec: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    let paths = spec["paths"].as_object().expect("paths");
    let expected = [
        ("/api/products", &["get", "post"][..]),
        ("/api/products/{id}", &["get", "patch"]),
        ("/api/search", &["get"]),
        ("/api/auth/register", &["post"]),
        ("/api/auth/login", &["post"]),
        ("/api/auth/logout", &["post"]),
        ("/api/me", &["get"]),
        ("/api/cart", &["get", "post", "delete"]),
        ("/api/cart/{product_id}", &["patch", "delete"]),
        ("/api/checkout", &["post"]),
        ("/api/orders", &["get"]),
        ("/api/orders/{id}", &["get"]),
        ("/api/analytics", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ];
    for (path, methods) in expected {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for method in methods {
            assert!(item.get(*method).is_some(), "{method} {path} missing");
        }
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    assert_error(
        app.get("/api/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app
        .client
        .put(app.url("/api/products"))
        .send()
        .await
        .expect("request");
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

/// The cluster `make run` and `make test` create (scripts/pg.sh) keeps PostgreSQL's durable
/// defaults, so an acknowledged order survives a crash; `SHOP_PG_UNSAFE=1` is the one way to
/// turn them off, and then all three are off. A `DATABASE_URL` of your own must be durable too.
#[tokio::test]
async fn the_database_is_durable_unless_asked_not_to_be() {
    let app = spawn_app().await;
    let unsafe_mode = std::env::var("SHOP_PG_UNSAFE").is_ok_and(|v| v == "1");
    let expected = if unsafe_mode { "off" } else { "on" };
    for setting in ["fsync", "full_page_writes", "synchronous_commit"] {
        let value: String = app
            .db
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!(
            value, expected,
            "{setting} (SHOP_PG_UNSAFE={unsafe_mode}); restart the cluster with scripts/pg.sh start"
        );
    }
}
