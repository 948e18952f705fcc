use crate::helpers::{assert_error, checkout_body, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn users_see_only_their_own_orders() {
    let app = spawn_app().await;
    let alice = app
        .register("alice@example.com", "correct horse battery")
        .await;
    let bob = app
        .register("bob@example.com", "correct horse battery")
        .await;
    let keyboard = app.product_id("Keyboard Mechanical").await;
    app.add_to_cart(&alice, keyboard, 2).await;
    let order: Value = app
        .post_json(Some(&alice.token), "/api/checkout", &checkout_body())
        .await
        .json()
        .await
        .expect("json");
    let id = order["id"].as_i64().expect("id");

    let mine: Value = app
        .get_as(&alice.token, "/api/orders")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(mine["orders"].as_array().expect("orders").len(), 1);
    assert_eq!(mine["orders"][0]["items"][0]["name"], "Keyboard Mechanical");
    assert_eq!(mine["orders"][0]["items"][0]["quantity"], 2);
    assert_eq!(mine["orders"][0]["total"], "299.98");
    let detail: Value = app
        .get_as(&alice.token, &format!("/api/orders/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(detail, order);

    let theirs: Value = app
        .get_as(&bob.token, "/api/orders")
        .await
        .json()
        .await
        .expect("json");
    assert!(theirs["orders"].as_array().expect("orders").is_empty());
    assert_error(
        app.get_as(&bob.token, &format!("/api/orders/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get(&format!("/api/orders/{id}")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn orders_are_paged_newest_first() {
    let app = spawn_app().await;
    let user = app
        .register("many@example.com", "correct horse battery")
        .await;
    let cable = app.product_id("USB-C Cable").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        app.add_to_cart(&user, cable, 1).await;
        let order: Value = app
            .post_json(Some(&user.token), "/api/checkout", &checkout_body())
            .await
            .json()
            .await
            .expect("json");
        ids.push(order["id"].as_i64().expect("id"));
    }
    let page: Value = app
        .get_as(&user.token, "/api/orders?limit=2")
        .await
        .json()
        .await
        .expect("json");
    let got: Vec<i64> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(got, [ids[2], ids[1]]);
    assert_eq!(page["hasMore"], true);
    let last: Value = app
        .get_as(&user.token, "/api/orders?limit=2&page=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(last["orders"][0]["id"], ids[0]);
    assert_error(
        app.get_as(&user.token, "/api/orders?limit=500").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
}
