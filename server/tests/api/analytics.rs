use crate::helpers::{ADMIN, assert_error, checkout_body, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn analytics_reports_revenue_orders_and_top_products() {
    let app = spawn_app().await;
    let user = app
        .register("rich@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    let cable = app.product_id("USB-C Cable").await;
    app.add_to_cart(&user, laptop, 1).await;
    app.add_to_cart(&user, cable, 3).await;
    app.post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    app.add_to_cart(&user, cable, 2).await;
    app.post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;

    let response = app.get_as(ADMIN, "/api/analytics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.expect("json");
    assert_eq!(report["orders"], 2);
    assert_eq!(report["revenue"], "1399.94");
    assert_eq!(report["averageOrderValue"], "699.97");
    assert_eq!(report["topProducts"][0]["name"], "Laptop Pro");
    assert_eq!(report["topProducts"][1]["name"], "USB-C Cable");
    assert_eq!(report["topProducts"][1]["unitsSold"], 5);
    assert_eq!(report["topProducts"][1]["revenue"], "99.95");

    let past: Value = app
        .get_as(
            ADMIN,
            "/api/analytics?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z",
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(past["orders"], 0);
    assert_eq!(past["revenue"], "0");
}

#[tokio::test]
async fn analytics_is_admin_only_and_validates_the_period() {
    let app = spawn_app().await;
    let user = app
        .register("nosy@example.com", "correct horse battery")
        .await;
    assert_error(
        app.get("/api/analytics").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        app.get_as(&user.token, "/api/analytics").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let reversed = app
        .get_as(
            ADMIN,
            "/api/analytics?from=2021-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        )
        .await;
    assert_error(reversed, StatusCode::BAD_REQUEST, "invalid_period").await;
    let huge = app
        .get_as(
            ADMIN,
            "/api/analytics?from=2000-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        )
        .await;
    assert_error(huge, StatusCode::BAD_REQUEST, "invalid_period").await;
    assert_error(
        app.get_as(ADMIN, "/api/analytics?from=yesterday").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.get_as(ADMIN, "/api/analytics?top=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "out_of_range",
    )
    .await;
}
