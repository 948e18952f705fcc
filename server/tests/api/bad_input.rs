//! Each class of bad input gets a clear 4xx JSON error and changes nothing.

use crate::helpers::{assert_error, spawn_app};
use reqwest::StatusCode;

#[tokio::test]
async fn malformed_bodies_get_4xx_and_change_nothing() {
    let app = spawn_app().await;
    let user = app
        .register("fuzz@example.com", "correct horse battery")
        .await;
    let post = |body: Vec<u8>, content_type: &'static str| {
        app.client
            .post(app.url("/api/cart"))
            .bearer_auth(&user.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, &str, StatusCode, &str)> = vec![
        (
            b"{\"productId\": 1,".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"not json at all".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"[1, 2, 3]".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"\"just a string\"".to_vec(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            b"{\"productId\": 1, \"quantity\": 1}".to_vec(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![0xff, 0xfe, 0x00, 0x7b],
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"{\"productId\": 1e999999, \"quantity\": 1}".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"{\"productId\": 18446744073709551616, \"quantity\": 1}".to_vec(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            b"{\"productId\": true, \"quantity\": 1}".to_vec(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            b"{\"productId\": null, \"quantity\": 1}".to_vec(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            format!(
                "{{\"productId\": 1, \"quantity\": 1, \"pad\": \"{}\"}}",
                "x".repeat(20_000)
            )
            .into_bytes(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            format!("{}1{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, content_type, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let response = post(body, content_type).await.expect("request");
        assert_eq!(response.status(), status, "body {shown}");
        assert_error(response, status, code).await;
    }
    assert_eq!(app.count("cart_items").await, 0);
    // The server is still healthy afterwards.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn hostile_strings_are_stored_verbatim_or_refused_never_executed() {
    let app = spawn_app().await;
    let user = app
        .register("o'brien@example.com", "p'; DROP TABLE users; --")
        .await;
    let login = app
        .post_json(None, "/api/auth/login", &serde_json::json!({"email": "o'brien@example.com", "password": "p'; DROP TABLE users; --"}))
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    let body = serde_json::json!({
        "paymentMethod": "credit_card",
        "shippingAddress": {"street": "1'); DELETE FROM orders; --", "city": "Zürich 🏔️", "country": "\u{202e}Switzerland"}
    });
    let order = app
        .post_json(Some(&user.token), "/api/checkout", &body)
        .await;
    assert_eq!(order.status(), StatusCode::CREATED);
    let order: serde_json::Value = order.json().await.expect("json");
    assert_eq!(
        order["shippingAddress"]["street"],
        "1'); DELETE FROM orders; --"
    );
    assert_eq!(order["shippingAddress"]["city"], "Zürich 🏔️");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("users").await, 1);
    let path_injection = app
        .get_as(&user.token, "/api/orders/1%3B%20DELETE%20FROM%20orders")
        .await;
    assert_error(path_injection, StatusCode::BAD_REQUEST, "invalid_path").await;
}
