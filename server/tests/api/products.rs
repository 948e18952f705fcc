use crate::helpers::{
    ADMIN, assert_error, header, product_names as names, spawn_app, spawn_app_with,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn lists_seed_products_most_popular_first() {
    let app = spawn_app().await;
    let response = app.get("/api/products").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        names(&body),
        [
            "Laptop Pro",
            "USB-C Cable",
            "Wireless Mouse",
            "Monitor 4K",
            "Keyboard Mechanical"
        ]
    );
    let laptop = &body["products"][0];
    assert_eq!(
        laptop["price"], "1299.99",
        "money is an exact decimal string"
    );
    assert_eq!(laptop["category"], "electronics");
    assert_eq!(laptop["stock"], 100);
    assert_eq!(body["hasMore"], false);
}

#[tokio::test]
async fn pagination_pages_and_limits() {
    let app = spawn_app().await;
    let page1: Value = app
        .get("/api/products?page=1&limit=2")
        .await
        .json()
        .await
        .expect("json");
    let page3: Value = app
        .get("/api/products?page=3&limit=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&page1), ["Laptop Pro", "USB-C Cable"]);
    assert_eq!(page1["hasMore"], true);
    assert_eq!(names(&page3), ["Keyboard Mechanical"]);
    assert_eq!(page3["hasMore"], false);

    assert_error(
        app.get("/api/products?limit=101").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
    assert_error(
        app.get("/api/products?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
    assert_error(
        app.get("/api/products?page=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_page",
    )
    .await;
    assert_error(
        app.get("/api/products?page=1000&limit=100").await,
        StatusCode::BAD_REQUEST,
        "page_too_deep",
    )
    .await;
    assert_error(
        app.get("/api/products?page=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.get("/api/products?page=99999999999999999999").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.get("/api/products?sort=price").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
}

#[tokio::test]
async fn filters_by_category() {
    let app = spawn_app().await;
    let created = app
        .client
        .post(app.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Garden Hose", "price": "24.50", "category": "garden", "stock": 3}))
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), StatusCode::CREATED);
    let garden: Value = app
        .get("/api/products?category=garden")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&garden), ["Garden Hose"]);
    let electronics: Value = app
        .get("/api/products?category=electronics&limit=100")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&electronics).len(), 5);
    let none: Value = app
        .get("/api/products?category=nothing")
        .await
        .json()
        .await
        .expect("json");
    assert!(names(&none).is_empty());
}

#[tokio::test]
async fn product_detail_and_not_found() {
    let app = spawn_app().await;
    let id = app.product_id("Monitor 4K").await;
    let body: Value = app
        .get(&format!("/api/products/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["name"], "Monitor 4K");
    assert_eq!(body["description"], "27-inch 4K monitor");
    assert_eq!(body["price"], "599.99");
    assert_error(
        app.get("/api/products/999999").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/api/products/abc").await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    assert_error(
        app.get("/api/products/1%27%20OR%201=1").await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
}

#[tokio::test]
async fn admin_creates_and_updates_products() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&json!({"sku": "DESK-1", "name": "Standing Desk", "description": "Electric sit-stand desk",
                      "price": "499.50", "category": "home", "stock": 7, "popularity": 99}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["price"], "499.50");
    assert_eq!(created["stock"], 7);
    let id = created["id"].as_i64().expect("id");

    let updated: Value = app
        .client
        .patch(app.url(&format!("/api/products/{id}")))
        .bearer_auth(ADMIN)
        .json(&json!({"price": "450.00", "stock": 2}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(updated["price"], "450.00");
    assert_eq!(updated["stock"], 2);
    assert_eq!(updated["name"], "Standing Desk");

    // The listing sees the change, and the new product is now the most popular.
    let list: Value = app
        .get("/api/products?limit=1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["products"][0]["name"], "Standing Desk");

    // Deactivated products disappear from the public catalogue.
    let response = app
        .client
        .patch(app.url(&format!("/api/products/{id}")))
        .bearer_auth(ADMIN)
        .json(&json!({"active": false}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_error(
        app.get(&format!("/api/products/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The admin still sees it (to list it again), and no cache may keep that answer: the
    // public still gets 404 right after.
    let unlisted = app.get_as(ADMIN, &format!("/api/products/{id}")).await;
    assert_eq!(unlisted.status(), StatusCode::OK);
    assert_eq!(header(&unlisted, "cache-control"), "no-store");
    let body: Value = unlisted.json().await.expect("json");
    assert_eq!(body["active"], false);
    assert_error(
        app.get(&format!("/api/products/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let duplicate = app
        .client
        .post(app.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&json!({"sku": "DESK-1", "name": "Copy", "price": "1", "category": "home"}))
        .send()
        .await
        .expect("request");
    assert_error(duplicate, StatusCode::CONFLICT, "sku_taken").await;
}

#[tokio::test]
async fn product_writes_need_the_admin_token() {
    let app = spawn_app().await;
    let body = json!({"name": "Free Stuff", "price": "0.01", "category": "x"});
    let before = app.count("products").await;
    let anonymous = app.post_json(None, "/api/products", &body).await;
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app
        .post_json(Some("not-the-admin-token"), "/api/products", &body)
        .await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let user = app
        .register("shopper@example.com", "correct horse battery")
        .await;
    let as_user = app
        .post_json(Some(&user.token), "/api/products", &body)
        .await;
    assert_error(as_user, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let id = app.product_id("Laptop Pro").await;
    let patch = app
        .patch_json(
            &user.token,
            &format!("/api/products/{id}"),
            &json!({"price": "0.01"}),
        )
        .await;
    assert_error(patch, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.count("products").await, before);
    let laptop: Value = app
        .get(&format!("/api/products/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(laptop["price"], "1299.99");
}

#[tokio::test]
async fn admin_endpoints_are_closed_without_a_configured_token() {
    let app = spawn_app_with(|config| config.auth.admin_token = None).await;
    let response = app
        .client
        .post(app.url("/api/products"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "X", "price": "1", "category": "x"}))
        .send()
        .await
        .expect("request");
    let message = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(message.contains("disabled"), "{message}");
    let analytics = app.get_as(ADMIN, "/api/analytics").await;
    assert_error(analytics, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn admin_input_is_validated() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"name": "X", "price": "19.999", "category": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_price",
        ),
        (
            json!({"name": "X", "price": "-1", "category": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_price",
        ),
        (
            json!({"name": "X", "price": "1e400", "category": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_price",
        ),
        (
            // A price is a decimal string: a JSON number is the wrong type.
            json!({"name": "X", "price": 19.99, "category": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"name": "", "price": "1", "category": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"name": "X\u{0}", "price": "1", "category": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"name": "X", "price": "1", "category": "x", "stock": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_range",
        ),
        (
            json!({"name": "X", "price": "1", "category": "x", "id": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    let before = app.count("products").await;
    for (body, status, code) in cases {
        let response = app.post_json(Some(ADMIN), "/api/products", &body).await;
        assert_error(response, status, code).await;
    }
    assert_eq!(app.count("products").await, before);
}
