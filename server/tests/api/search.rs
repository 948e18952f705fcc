use crate::helpers::{assert_error, product_names, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;

async fn search(app: &crate::helpers::TestApp, q: &str) -> Vec<String> {
    let response = app
        .client
        .get(app.url("/api/search"))
        .query(&[("q", q)])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK, "q={q}");
    let body: Value = response.json().await.expect("json");
    product_names(&body)
}

#[tokio::test]
async fn search_ranks_the_best_match_first() {
    let app = spawn_app().await;
    assert_eq!(search(&app, "laptop").await, ["Laptop Pro"]);
    assert_eq!(search(&app, "wireless mouse").await, ["Wireless Mouse"]);
    assert_eq!(
        search(&app, "charging cables").await,
        ["USB-C Cable"],
        "stemming matches plural"
    );
    assert_eq!(search(&app, "monitor").await, ["Monitor 4K"]);
    // "mechanical" is in the keyboard's name and description; it outranks nothing else.
    assert_eq!(search(&app, "keyboard").await, ["Keyboard Mechanical"]);
    // Either word: both products match; the keyboard matches twice (name and description).
    let either = search(&app, "mechanical or mouse").await;
    assert_eq!(either.len(), 2);
    assert!(
        either.contains(&"Keyboard Mechanical".to_owned())
            && either.contains(&"Wireless Mouse".to_owned())
    );
    assert!(
        search(&app, "laptop -pro").await.is_empty(),
        "web-search negation works"
    );
    assert!(search(&app, "bicycle").await.is_empty());
}

#[tokio::test]
async fn search_input_is_bounded_and_never_sql() {
    let app = spawn_app().await;
    for q in [
        "'; DROP TABLE products; --",
        "\" OR 1=1 --",
        "laptop' UNION SELECT * FROM users --",
        "&|!():*<->",
        "💻 ñandú 中文 \u{202e}",
    ] {
        search(&app, q).await;
    }
    assert_eq!(app.count("products").await, 5);
    assert_error(
        app.get("/api/search").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.get("/api/search?q=").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_error(
        app.get("/api/search?q=%20%20").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    let long = "a".repeat(201);
    assert_error(
        app.get(&format!("/api/search?q={long}")).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_error(
        app.get("/api/search?q=lap%00top").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_error(
        app.get("/api/search?q=laptop&limit=1000").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
}
