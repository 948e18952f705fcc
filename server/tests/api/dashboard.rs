//! The dashboard over plain HTTP: who may see it, the sign-in cookie, and the data endpoints
//! behind the page. The page itself, in a browser, is tested in `browser.rs`.

use crate::helpers::{ADMIN, TestApp, assert_error, spawn_app, spawn_app_with};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const DATA: [&str; 4] = [
    "/dashboard",
    "/api/ml-metrics",
    "/api/ml-metrics/series",
    "/api/ml-metrics/log",
];

/// A client that shows redirects instead of following them.
fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in through the form; returns the `Set-Cookie` header and the `name=value` pair.
async fn sign_in(app: &TestApp) -> (String, String) {
    let response = no_redirects()
        .post(app.url("/dashboard/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/dashboard");
    let set_cookie = response.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    let pair = set_cookie.split(';').next().expect("name=value").to_owned();
    (set_cookie, pair)
}

async fn get_with_cookie(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn the_page_and_its_data_answer_401_without_the_admin_token() {
    let app = spawn_app().await;
    for path in DATA {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let forged = get_with_cookie(&app, path, "shop_dashboard=shop_forged").await;
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "{path} forged");
        let wrong = app.get_as("not-the-admin-token-000", path).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path} wrong");
    }
    // What a browser sees instead: a sign-in form that shows no data.
    let page = app.get("/dashboard").await;
    assert!(
        page.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let html = page.text().await.expect("text");
    assert!(html.contains("name=\"token\"") && !html.contains("dashboard.js"));

    let wrong = no_redirects()
        .post(app.url("/dashboard/login"))
        .form(&[("token", "not-the-admin-token-000")])
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    assert!(
        wrong
            .text()
            .await
            .expect("text")
            .contains("not the admin token")
    );
}

#[tokio::test]
async fn a_session_opened_on_one_instance_works_on_every_instance_and_they_stay_bounded() {
    let app = spawn_app().await;
    let peer = app.spawn_peer().await;
    let (_, first) = sign_in(&app).await;
    // Behind a round-robin load balancer the next poll lands on the other instance.
    let on_peer = app
        .client
        .get(format!("{peer}/api/ml-metrics"))
        .header(COOKIE, &first)
        .send()
        .await
        .expect("request");
    assert_eq!(
        on_peer.status(),
        StatusCode::OK,
        "the peer accepts the session"
    );

    // Signing in again and again keeps at most 64 sessions; the oldest makes room.
    let mut last = String::new();
    for _ in 0..64 {
        last = sign_in(&app).await.1;
    }
    assert_eq!(app.count("dashboard_sessions").await, 64);
    assert_eq!(
        get_with_cookie(&app, "/api/ml-metrics", &first)
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "the oldest session made room"
    );
    // Signing out on the peer ends the session everywhere.
    let out = no_redirects()
        .post(format!("{peer}/dashboard/logout"))
        .header(COOKIE, &last)
        .send()
        .await
        .expect("request");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get_with_cookie(&app, "/api/ml-metrics", &last)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn signing_in_once_opens_the_page_and_its_data_for_that_browser_session() {
    let app = spawn_app().await;
    let (set_cookie, cookie) = sign_in(&app).await;
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains("Max-Age") && !set_cookie.contains("Expires"),
        "a session cookie ends with the browser: {set_cookie}"
    );
    assert!(
        !cookie.contains(ADMIN),
        "the token itself is not the cookie"
    );

    let page = get_with_cookie(&app, "/dashboard", &cookie).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .expect("text")
            .contains("/dashboard/assets/dashboard.js")
    );
    for path in DATA {
        assert_eq!(
            get_with_cookie(&app, path, &cookie).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // The cookie only reads: changing anything still takes the bearer token.
    let create = app
        .client
        .post(app.url("/api/products"))
        .header(COOKIE, &cookie)
        .json(&json!({"name": "x", "price": "1.00", "category": "x", "stock": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(create.status(), StatusCode::UNAUTHORIZED);
    let stress = get_with_cookie(&app, "/api/stress-test?complexity=1", &cookie).await;
    assert_eq!(stress.status(), StatusCode::UNAUTHORIZED);

    // Signing out ends the session on the server, not just in the browser.
    let out = no_redirects()
        .post(app.url("/dashboard/logout"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    assert_eq!(
        get_with_cookie(&app, "/api/ml-metrics", &cookie)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn without_an_admin_token_configured_nobody_can_sign_in() {
    let app = spawn_app_with(|c| c.auth.admin_token = None).await;
    let response = no_redirects()
        .post(app.url("/dashboard/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert!(response.text().await.expect("text").contains("disabled"));
}

#[tokio::test]
async fn the_page_assets_are_served_with_their_types() {
    let app = spawn_app().await;
    for (name, kind) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = app.get(&format!("/dashboard/assets/{name}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert!(
            response.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(
        app.get("/dashboard/assets/../Cargo.toml").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/dashboard/assets/secret.txt").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_series_shows_each_routes_actual_and_predicted_latency_live() {
    let app = spawn_app().await;
    for _ in 0..30 {
        assert_eq!(app.get("/api/products").await.status(), StatusCode::OK);
    }
    let series: Value = app
        .get_as(ADMIN, "/api/ml-metrics/series?minutes=5&points=30")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(series["sampleSecs"], 10);
    assert_eq!(series["windowMinutes"], 5);
    let points = series["points"].as_array().expect("points");
    assert!(!points.is_empty() && points.len() <= 30);
    let live = points.last().expect("live point");
    assert_eq!(live["live"], true, "the newest point is the live state");
    let route = live["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == "GET /api/products")
        .unwrap_or_else(|| panic!("the list route is in the live point: {live}"));
    assert!(route["p50Ms"].as_f64().expect("p50") > 0.0);
    assert!(route["p95Ms"].as_f64().expect("p95") >= route["p50Ms"].as_f64().expect("p50"));
    assert!(
        route["predictedP50Ms"].as_f64().expect("predicted") > 0.0,
        "requests after the first had predictions: {route}"
    );
    assert!(live["cacheHits"].as_u64().expect("hits") > 0, "{live}");
    assert_eq!(live["priorities"].as_array().expect("priorities").len(), 4);

    for bad in [
        "/api/ml-metrics/series?points=5",
        "/api/ml-metrics/series?minutes=0",
        "/api/ml-metrics/log?lines=0",
    ] {
        assert_error(
            app.get_as(ADMIN, bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "out_of_range",
        )
        .await;
    }
    // More minutes than the history holds: the whole history.
    let all = app
        .get_as(ADMIN, "/api/ml-metrics/series?minutes=100000")
        .await;
    assert_eq!(all.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_log_endpoint_tails_the_optimizer_log() {
    let app = spawn_app().await;
    let empty = app.get_as(ADMIN, "/api/ml-metrics/log").await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert!(
        empty.text().await.expect("text").is_empty(),
        "no action yet"
    );

    let path = app.scratch.join("logs/ml-optimizer.log");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    let lines: String = (0..50)
        .map(|i| format!("{{\"action\":\"heal\",\"n\":{i}}}\n"))
        .collect();
    std::fs::write(&path, lines).expect("write log");
    let response = app.get_as(ADMIN, "/api/ml-metrics/log?lines=2").await;
    assert!(
        response.headers()["x-log-file"]
            .to_str()
            .expect("ascii")
            .ends_with("logs/ml-optimizer.log")
    );
    assert_eq!(
        response.text().await.expect("text"),
        "{\"action\":\"heal\",\"n\":48}\n{\"action\":\"heal\",\"n\":49}\n"
    );
}
