use crate::helpers::{assert_error, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn cart_add_change_remove_clear() {
    let app = spawn_app().await;
    let user = app
        .register("cart@example.com", "correct horse battery")
        .await;
    let mouse = app.product_id("Wireless Mouse").await;
    let cable = app.product_id("USB-C Cable").await;

    let empty: Value = app
        .get_as(&user.token, "/api/cart")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["total"], "0");

    // The README's example body.
    let response = app
        .post_json(
            Some(&user.token),
            "/api/cart",
            &json!({"productId": mouse, "quantity": 2}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.add_to_cart(&user, cable, 1).await;
    app.add_to_cart(&user, cable, 2).await;
    let cart: Value = app
        .get_as(&user.token, "/api/cart")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cart["items"][0]["productId"], mouse);
    assert_eq!(cart["items"][0]["lineTotal"], "59.98");
    assert_eq!(
        cart["items"][1]["quantity"], 3,
        "adding again adds to the quantity"
    );
    assert_eq!(cart["itemCount"], 5);
    assert_eq!(cart["total"], "119.95", "2 × 29.99 + 3 × 19.99, exactly");

    let changed: Value = app
        .patch_json(
            &user.token,
            &format!("/api/cart/{cable}"),
            &json!({"quantity": 1}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(changed["total"], "79.97");

    let removed = app
        .delete_as(&user.token, &format!("/api/cart/{mouse}"))
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    let again = app
        .delete_as(&user.token, &format!("/api/cart/{mouse}"))
        .await;
    assert_error(again, StatusCode::NOT_FOUND, "not_found").await;

    let cleared = app.delete_as(&user.token, "/api/cart").await;
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.count("cart_items").await, 0);
}

#[tokio::test]
async fn cart_refuses_bad_quantities_and_products() {
    let app = spawn_app().await;
    let user = app
        .register("cart2@example.com", "correct horse battery")
        .await;
    let mouse = app.product_id("Wireless Mouse").await;
    let cases = [
        (
            json!({"productId": mouse, "quantity": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_range",
        ),
        (
            json!({"productId": mouse, "quantity": -3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_range",
        ),
        (
            json!({"productId": mouse, "quantity": 100}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_range",
        ),
        (
            json!({"productId": mouse, "quantity": 1e12}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"productId": mouse, "quantity": 99_999_999_999_i64}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"productId": "1; DROP TABLE cart_items", "quantity": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"productId": mouse, "quantity": 1, "price": "0.01"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"productId": mouse, "quantity": 1, "userId": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"quantity": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"productId": 987_654, "quantity": 1}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.post_json(Some(&user.token), "/api/cart", &body).await;
        assert_error(response, status, code).await;
    }
    assert_eq!(app.count("cart_items").await, 0);

    app.add_to_cart(&user, mouse, 60).await;
    let over = app
        .post_json(
            Some(&user.token),
            "/api/cart",
            &json!({"productId": mouse, "quantity": 60}),
        )
        .await;
    assert_error(over, StatusCode::UNPROCESSABLE_ENTITY, "quantity_limit").await;

    app.set_stock(mouse, 61).await;
    let short = app
        .post_json(
            Some(&user.token),
            "/api/cart",
            &json!({"productId": mouse, "quantity": 5}),
        )
        .await;
    assert_error(short, StatusCode::CONFLICT, "insufficient_stock").await;
    let cart: Value = app
        .get_as(&user.token, "/api/cart")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        cart["items"][0]["quantity"], 60,
        "a refused add changes nothing"
    );
}

#[tokio::test]
async fn one_user_cannot_touch_another_users_cart() {
    let app = spawn_app().await;
    let alice = app
        .register("alice@example.com", "correct horse battery")
        .await;
    let bob = app
        .register("bob@example.com", "correct horse battery")
        .await;
    let laptop = app.product_id("Laptop Pro").await;
    app.add_to_cart(&alice, laptop, 1).await;

    let bobs: Value = app
        .get_as(&bob.token, "/api/cart")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(bobs["items"], json!([]));
    let steal = app
        .delete_as(&bob.token, &format!("/api/cart/{laptop}"))
        .await;
    assert_error(steal, StatusCode::NOT_FOUND, "not_found").await;
    let change = app
        .patch_json(
            &bob.token,
            &format!("/api/cart/{laptop}"),
            &json!({"quantity": 9}),
        )
        .await;
    assert_error(change, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        app.delete_as(&bob.token, "/api/cart").await.status(),
        StatusCode::NO_CONTENT
    );

    let alices: Value = app
        .get_as(&alice.token, "/api/cart")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        alices["items"][0]["quantity"], 1,
        "Alice's cart is untouched"
    );
}
