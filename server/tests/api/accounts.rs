use crate::helpers::{assert_error, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn register_login_me_logout() {
    let app = spawn_app().await;
    let user = app
        .register("Ada@Example.com", "correct horse battery")
        .await;
    let me: Value = app
        .get_as(&user.token, "/api/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["email"], "Ada@Example.com");
    assert_eq!(me["id"], user.id);

    // E-mail matching is case-insensitive.
    let login = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "ada@example.com", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    let session: Value = login.json().await.expect("json");
    let second = session["token"].as_str().expect("token").to_owned();
    assert_ne!(second, user.token);
    assert!(session["expiresAt"].is_string());

    let logout = app
        .client
        .post(app.url("/api/auth/logout"))
        .bearer_auth(&second)
        .send()
        .await
        .expect("request");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get_as(&second, "/api/me").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // The other session is untouched.
    assert_eq!(
        app.get_as(&user.token, "/api/me").await.status(),
        StatusCode::OK
    );
    // Only a hash of the token is stored, never the token itself.
    let row = app
        .db
        .query_one(
            "SELECT count(*) FILTER (WHERE token_hash = convert_to($1, 'UTF8')), \
                    count(*) FILTER (WHERE token_hash = sha256(convert_to($1, 'UTF8'))) FROM sessions",
            &[&user.token],
        )
        .await
        .expect("query");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 1));
}

#[tokio::test]
async fn bad_credentials_and_registrations_are_refused() {
    let app = spawn_app().await;
    app.register("bob@example.com", "correct horse battery")
        .await;
    let wrong = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "bob@example.com", "password": "wrong password"}),
        )
        .await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let unknown = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "nobody@example.com", "password": "whatever1"}),
        )
        .await;
    assert_error(unknown, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let duplicate = app
        .post_json(
            None,
            "/api/auth/register",
            &json!({"email": "BOB@example.com", "password": "another password"}),
        )
        .await;
    assert_error(duplicate, StatusCode::CONFLICT, "email_taken").await;
    let weak = app
        .post_json(
            None,
            "/api/auth/register",
            &json!({"email": "c@example.com", "password": "short"}),
        )
        .await;
    assert_error(weak, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
    let bad_email = app
        .post_json(
            None,
            "/api/auth/register",
            &json!({"email": "not-an-email", "password": "long enough pw"}),
        )
        .await;
    assert_error(bad_email, StatusCode::UNPROCESSABLE_ENTITY, "invalid_email").await;
    let extra = app
        .post_json(
            None,
            "/api/auth/register",
            &json!({"email": "d@example.com", "password": "long enough pw", "role": "admin"}),
        )
        .await;
    assert_error(extra, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    assert_eq!(app.count("users").await, 1);

    for token in [
        "garbage",
        "shop_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_error(
            app.get_as(token, "/api/me").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    assert_error(
        app.get("/api/cart").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn login_attempts_are_rate_limited() {
    let app = spawn_app().await;
    app.register("eve@example.com", "correct horse battery")
        .await;
    let attempt = json!({"email": "eve@example.com", "password": "guess guess"});
    for _ in 0..10 {
        let response = app.post_json(None, "/api/auth/login", &attempt).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = app.post_json(None, "/api/auth/login", &attempt).await;
    assert!(
        limited.headers().get("retry-after").is_some(),
        "429 says when to retry"
    );
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // Even the right password waits: the limit is per account, before any check.
    let right = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "EVE@example.com", "password": "correct horse battery"}),
        )
        .await;
    assert_error(right, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    // Another account is not affected.
    app.register("frank@example.com", "correct horse battery")
        .await;
    let other = app
        .post_json(
            None,
            "/api/auth/login",
            &json!({"email": "frank@example.com", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(other.status(), StatusCode::OK);
}

/// Hourly failed-login limits small enough to reach in a test, the per-minute ones out of the way.
fn hourly_limits(config: &mut server::config::Config) {
    config.auth.login_attempts_per_minute = 1_000;
    config.auth.failed_logins_per_account_per_hour = 6;
    config.auth.failed_logins_per_client_per_hour = 10;
}

#[tokio::test]
async fn failed_logins_are_limited_per_account_across_instances_and_per_client() {
    let app = spawn_app_with(hourly_limits).await;
    let peer = app.spawn_peer_with(hourly_limits).await;
    app.register("gus@example.com", "correct horse battery")
        .await;
    let login = |base: &str, email: &str, password: &str| {
        app.client
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    // Three wrong passwords on each instance: six for the account, wherever they landed.
    for base in [
        &app.address,
        &peer,
        &app.address,
        &peer,
        &app.address,
        &peer,
    ] {
        let r = login(base, "gus@example.com", "guess")
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for base in [&app.address, &peer] {
        let r = login(base, "gus@example.com", "correct horse battery")
            .await
            .expect("request");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((3_000..=3_600).contains(&wait), "retry after {wait} s");
        assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    }

    // The same client trying other accounts (credential stuffing) runs into its own limit:
    // four more failures make ten from this address, and then even an untried account waits.
    app.register("hal@example.com", "correct horse battery")
        .await;
    for n in 0..4 {
        let r = login(&peer, &format!("stuffed{n}@example.com"), "guess")
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&app.address, "hal@example.com", "correct horse battery")
        .await
        .expect("request");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;

    // The limits and the refusals are in /metrics.
    let metrics = app.get("/metrics").await.text().await.expect("text");
    for line in [
        "shop_login_failure_limit{scope=\"account\"} 6",
        "shop_login_failure_limit{scope=\"client\"} 10",
        "shop_login_throttled_total{scope=\"account\"} 1",
        "shop_login_throttled_total{scope=\"client\"} 1",
        "shop_login_failures_total 3",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_successful_login_clears_the_accounts_failures() {
    let app = spawn_app_with(|c| {
        hourly_limits(c);
        c.auth.failed_logins_per_client_per_hour = 100;
    })
    .await;
    app.register("ida@example.com", "correct horse battery")
        .await;
    let app = &app;
    let attempt = |password: &'static str| async move {
        app.post_json(
            None,
            "/api/auth/login",
            &json!({"email": "ida@example.com", "password": password}),
        )
        .await
    };
    // Five typos, the right password, five more typos: never six failures in a row, never 429.
    for round in 0..2 {
        for _ in 0..5 {
            assert_eq!(attempt("typo").await.status(), StatusCode::UNAUTHORIZED);
        }
        if round == 0 {
            assert_eq!(
                attempt("correct horse battery").await.status(),
                StatusCode::OK
            );
        }
    }
    assert_eq!(
        attempt("correct horse battery").await.status(),
        StatusCode::OK
    );
}

/// Sign-ups from `client` (as `X-Forwarded-For` names it) until one is refused; how many passed.
async fn sign_ups_until_refused(app: &crate::helpers::TestApp, client: &str, tag: &str) -> usize {
    for n in 0..10 {
        let response = app
            .client
            .post(app.url("/api/auth/register"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": format!("{tag}{n}@example.com"), "password": "correct horse battery"}))
            .send()
            .await
            .expect("request");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return n;
        }
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    10
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let limited = |config: &mut server::config::Config| {
        config.auth.login_attempts_per_ip_per_minute = 3;
    };
    // The load balancer (here: loopback) is trusted: two clients it forwards get three each.
    let behind = spawn_app_with(|config| {
        limited(config);
        config.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    assert_eq!(sign_ups_until_refused(&behind, "203.0.113.1", "a").await, 3);
    assert_eq!(sign_ups_until_refused(&behind, "203.0.113.2", "b").await, 3);

    // Without trusting anyone, the header is the client's own claim: ignored, one budget.
    let direct = spawn_app_with(limited).await;
    assert_eq!(sign_ups_until_refused(&direct, "203.0.113.1", "c").await, 3);
    assert_eq!(sign_ups_until_refused(&direct, "203.0.113.2", "d").await, 0);
}
