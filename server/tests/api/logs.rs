//! What the request log keeps: no credentials, no search terms.

use crate::helpers::{eventually, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_request_log_holds_no_credentials_and_no_search_terms() {
    let app = spawn_app().await;
    let user = app
        .register("lin@example.com", "quartz walrus lantern")
        .await;
    let login = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "lin@example.com", "password": "quartz walrus lantern"}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    let search = app
        .get("/api/search?q=crimson%20velvet%20slippers&page=1")
        .await;
    assert_eq!(search.status(), StatusCode::OK);
    // A token pasted into a URL by a careless client.
    app.get(&format!("/api/products?access_token={}", user.token))
        .await;
    assert_eq!(
        app.get_as(&user.token, "/api/cart").await.status(),
        StatusCode::OK
    );

    let (text, records) = eventually(
        Duration::from_secs(10),
        "the requests are in the log",
        || async {
            let (text, records) = app.request_log();
            (records
                .iter()
                .filter(|r| r.route == "GET /api/cart")
                .count()
                == 1)
                .then(|| (text, records.clone()))
                .ok_or(format!("{} records", records.len()))
        },
    )
    .await;
    for secret in [
        "quartz",
        "walrus",
        "crimson",
        "velvet",
        &user.token,
        "lin@example",
    ] {
        assert!(!text.contains(secret), "the log holds {secret:?}");
    }
    // What stays is what the trainer and the cache need: the route, page numbers, and the same
    // token for the same search.
    let search = records
        .iter()
        .find(|r| r.route == "GET /api/search")
        .expect("search logged");
    assert!(
        search.path.starts_with("/api/search?q=~") && search.path.ends_with("&page=1"),
        "{}",
        search.path
    );
    app.get("/api/search?q=crimson%20velvet%20slippers&page=1")
        .await;
    let again = eventually(
        Duration::from_secs(10),
        "the second search is in the log",
        || async {
            let (_, records) = app.request_log();
            let paths: Vec<String> = records
                .iter()
                .filter(|r| r.route == "GET /api/search")
                .map(|r| r.path.clone())
                .collect();
            if paths.len() == 2 {
                Ok(paths)
            } else {
                Err(format!("{paths:?}"))
            }
        },
    )
    .await;
    assert_eq!(again[0], again[1]);
}
