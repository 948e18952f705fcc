use crate::helpers::{
    assert_error, checkout_body, eventually, header, server_sessions_waiting_on_locks, spawn_app,
};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn checkout_turns_the_cart_into_a_pending_order() {
    let app = spawn_app().await;
    let user = app
        .register("buyer@example.com", "correct horse battery")
        .await;
    let mouse = app.product_id("Wireless Mouse").await;
    let cable = app.product_id("USB-C Cable").await;
    app.add_to_cart(&user, mouse, 2).await;
    app.add_to_cart(&user, cable, 1).await;

    let response = app
        .post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.expect("json");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["total"], "79.97");
    assert_eq!(order["paymentMethod"], "credit_card");
    assert_eq!(order["shippingAddress"]["city"], "Bangkok");
    assert_eq!(order["items"].as_array().expect("items").len(), 2);

    assert_eq!(app.stock(mouse).await, 98);
    assert_eq!(app.stock(cable).await, 99);
    assert_eq!(app.count("cart_items").await, 0, "the cart is emptied");

    let again = app
        .post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    assert_error(again, StatusCode::UNPROCESSABLE_ENTITY, "cart_empty").await;
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn checkout_never_oversells_the_last_units() {
    let app = spawn_app().await;
    let monitor = app.product_id("Monitor 4K").await;
    app.set_stock(monitor, 10).await;
    let shoppers = app.users_via_db(200).await;
    for shopper in &shoppers {
        app.db
            .execute(
                "INSERT INTO cart_items (user_id, product_id, quantity, price) VALUES ($1, $2, 1, 599.99)",
                &[&shopper.id, &monitor],
            )
            .await
            .expect("fill cart");
    }
    let body = checkout_body();
    let statuses = join_all(shoppers.iter().map(|s| async {
        app.client
            .post(app.url("/api/checkout"))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
            .await
            .expect("request")
            .status()
    }))
    .await;
    let sold = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!(sold, 10, "statuses: {statuses:?}");
    assert_eq!(refused, 190, "everyone else is told it is out of stock");
    assert_eq!(app.stock(monitor).await, 0);
    assert_eq!(app.count("orders").await, 10);
    assert_eq!(app.count("order_items").await, 10);
}

#[tokio::test]
async fn idempotent_retry_creates_one_order() {
    let app = spawn_app().await;
    let user = app
        .register("retry@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    let send = |key: &'static str, body: Value| {
        let request = app
            .client
            .post(app.url("/api/checkout"))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", key);
        async move { request.json(&body).send().await.expect("request") }
    };

    let first = send("order-42", checkout_body()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");

    let retry = send("order-42", checkout_body()).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(retry, first, "the same response, byte for byte in content");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.stock(laptop).await, 99);

    let mut other = checkout_body();
    other["paymentMethod"] = json!("paypal");
    assert_error(
        send("order-42", other).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // A failure is remembered too: the same key keeps answering "cart empty" even if the cart
    // is filled again, and a new key places a new order.
    let empty = send("order-43", checkout_body()).await;
    assert_error(empty, StatusCode::UNPROCESSABLE_ENTITY, "cart_empty").await;
    app.add_to_cart(&user, laptop, 1).await;
    assert_error(
        send("order-43", checkout_body()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "cart_empty",
    )
    .await;
    assert_eq!(
        send("order-44", checkout_body()).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.count("orders").await, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let app = spawn_app().await;
    let user = app
        .register("double@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    let body = checkout_body();
    let responses = join_all((0..8).map(|_| {
        app.client
            .post(app.url("/api/checkout"))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", "k-1")
            .json(&body)
            .send()
    }))
    .await;
    let statuses: Vec<StatusCode> = responses
        .into_iter()
        .map(|r| r.expect("request").status())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::CREATED));
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn a_key_still_in_progress_answers_409() {
    let app = spawn_app().await;
    let user = app
        .register("busy@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    // First, learn the fingerprint the server stores for this body by using another key.
    let probe = app
        .client
        .post(app.url("/api/checkout"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "probe");
    assert_eq!(
        probe
            .json(&checkout_body())
            .send()
            .await
            .expect("request")
            .status(),
        StatusCode::CREATED
    );
    // Then make "busy" look like a request that is running right now.
    app.db
        .execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash) \
             SELECT user_id, 'busy', request_hash FROM idempotency_keys WHERE key = 'probe'",
            &[],
        )
        .await
        .expect("insert");
    app.add_to_cart(&user, laptop, 1).await;
    let busy = app
        .client
        .post(app.url("/api/checkout"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "busy");
    let response = busy.json(&checkout_body()).send().await.expect("request");
    assert_error(
        response,
        StatusCode::CONFLICT,
        "idempotency_key_in_progress",
    )
    .await;
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn checkout_body_is_validated() {
    let app = spawn_app().await;
    let user = app
        .register("strict@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    let address = json!({"street": "1 Rd", "city": "Oslo", "country": "Norway"});
    let cases = [
        (
            json!({"paymentMethod": "bitcoin", "shippingAddress": address}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"paymentMethod": "credit_card"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": address, "total": "0.01"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": address, "status": "paid"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": address, "userId": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": {"street": "", "city": "Oslo", "country": "NO"}}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": {"street": "x", "city": "O\u{7}slo", "country": "NO"}}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"paymentMethod": "credit_card", "shippingAddress": {"street": "x", "city": "Oslo", "country": "NO", "zip": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(
            app.post_json(Some(&user.token), "/api/checkout", &body)
                .await,
            status,
            code,
        )
        .await;
    }
    let bad_key = app
        .client
        .post(app.url("/api/checkout"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "  ");
    assert_error(
        bad_key
            .json(&checkout_body())
            .send()
            .await
            .expect("request"),
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    )
    .await;
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.stock(laptop).await, 100);
    assert_eq!(app.count("cart_items").await, 1, "nothing was lost");
}

#[tokio::test]
async fn checkout_refuses_products_out_of_stock_and_keeps_the_cart() {
    let app = spawn_app().await;
    let user = app
        .register("late@example.com", "correct horse battery")
        .await;
    let mouse = app.product_id("Wireless Mouse").await;
    let cable = app.product_id("USB-C Cable").await;
    app.add_to_cart(&user, mouse, 1).await;
    app.add_to_cart(&user, cable, 3).await;
    app.set_stock(cable, 2).await;
    let response = app
        .post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    assert_error(response, StatusCode::CONFLICT, "out_of_stock").await;
    assert_eq!(
        app.stock(mouse).await,
        100,
        "the whole transaction rolled back"
    );
    assert_eq!(app.count("cart_items").await, 2);
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn a_key_whose_request_died_is_free_again_at_once() {
    let app = spawn_app().await;
    let user = app
        .register("phoenix@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&user, laptop, 1).await;
    // Another server's checkout with key "k-9" is in the middle of its transaction: it holds the
    // key's claim, uncommitted.
    let other = app.another_session().await;
    other
        .batch_execute(&format!(
            "BEGIN; INSERT INTO idempotency_keys (user_id, key, request_hash) \
             VALUES ({}, 'k-9', '\\x00')",
            user.id
        ))
        .await
        .expect("claim");
    // The client's retry waits for it...
    let retry = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/checkout"))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", "k-9")
            .json(&checkout_body());
        async move { request.send().await }
    });
    let watcher = app.another_session().await;
    eventually(
        Duration::from_secs(10),
        "the retry waits on the key",
        || async {
            let waiting = server_sessions_waiting_on_locks(&watcher).await;
            (waiting > 0)
                .then_some(())
                .ok_or(format!("{waiting} waiting"))
        },
    )
    .await;
    // ...and when that server dies (its transaction rolls back with its connection), the retry
    // places the order itself, at once: no lock to wait out, no "in progress".
    drop(other);
    let response = retry.await.expect("task").expect("answered");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("orders").await, 1);
    // The next retry replays it.
    let again = app
        .client
        .post(app.url("/api/checkout"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "k-9")
        .json(&checkout_body())
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(app.count("orders").await, 1);
}
