//! Faults seen from outside: a request the database could not serve answers 503 with
//! `Retry-After` and the usual JSON error, never a 500; broken connections are not handed out
//! again; a server told to stop drains without losing a request or its log record.

use crate::helpers::{
    TestApp, eventually, fixed_limit, header, server_sessions_waiting_on_locks, spawn_app_until,
    spawn_app_with,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Asserts a 503 in the shop's error shape with `Retry-After`.
async fn assert_retry_later(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, "retry-after"), "1");
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

/// Ends every session of the server under test, as a database restart or a failover would.
async fn terminate_server_sessions(app: &TestApp) -> i64 {
    let other = app.another_session().await;
    let row = other
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'shop-api'",
            &[],
        )
        .await
        .expect("terminate");
    row.get(0)
}

#[tokio::test]
async fn connections_the_database_dropped_are_not_handed_out_again() {
    let app = spawn_app_with(|c| c.features.caching = false).await;
    // Fill the pool with idle connections.
    let warm: Vec<_> = (0..8).map(|_| app.get("/api/products")).collect();
    for response in futures::future::join_all(warm).await {
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(terminate_server_sessions(&app).await > 0);
    // Every request afterwards is served or told to come back; none is a 500, and the pool
    // replaces the dead connections so that the shop works again at once.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let response = app.get("/api/products").await;
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_retry_later(response).await;
        }
        statuses.push(status);
    }
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        statuses[10..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_statement_the_database_cancelled_is_a_503_not_a_500() {
    let app = spawn_app_with(|c| {
        c.features.caching = false;
        c.database.statement_timeout_ms = 300;
    })
    .await;
    let id = app.product_id("Laptop Pro").await;
    let path = format!("/api/products/{id}");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    // Another session holds the table past the statement timeout: the read is cancelled.
    let locker = app.lock_products().await;
    assert_retry_later(app.get(&path).await).await;
    locker.batch_execute("COMMIT").await.expect("unlock");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_draining_server_leaves_rotation_finishes_what_it_started_and_logs_it() {
    let (signal, signalled) = tokio::sync::oneshot::channel::<bool>();
    let (app, served) = spawn_app_until(
        |c| {
            c.features.caching = false;
            c.server.drain_grace_ms = 500;
            c.server.drain_timeout_ms = 20_000;
            fixed_limit(32)(c);
        },
        async move { signalled.await.unwrap_or(true) },
    )
    .await;
    let id = app.product_id("Laptop Pro").await;
    let path = format!("/api/products/{id}");
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    // Ten requests stall in flight behind another session's lock.
    const STALLED: i64 = 10;
    let locker = app.lock_products().await;
    let stalled: Vec<_> = (0..STALLED)
        .map(|_| {
            tokio::spawn({
                let (client, url) = (app.client.clone(), app.url(&path));
                async move { client.get(&url).send().await.map(|r| r.status()) }
            })
        })
        .collect();
    let watcher = app.another_session().await;
    eventually(
        Duration::from_secs(10),
        "the read waits for the lock",
        || async {
            let waiting = server_sessions_waiting_on_locks(&watcher).await;
            (waiting == STALLED)
                .then_some(())
                .ok_or(format!("{waiting} waiting"))
        },
    )
    .await;

    // SIGTERM: out of rotation at once, but still serving during the grace period.
    signal.send(true).expect("signal");
    eventually(Duration::from_secs(2), "/readyz says draining", || async {
        let status = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .map(|r| r.status());
        (status.as_ref().ok() == Some(&StatusCode::SERVICE_UNAVAILABLE))
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    // The stalled requests finish once the lock goes, and only then does the server stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!served.is_finished(), "it waits for the requests in flight");
    locker.batch_execute("COMMIT").await.expect("unlock");
    for request in stalled {
        assert_eq!(
            request.await.expect("task").expect("answered"),
            StatusCode::OK
        );
    }
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("drained in time")
        .expect("task")
        .expect("served cleanly");
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "no longer listening"
    );

    // Every request made it into the request log, the stalled ones included.
    let (_, records) = app.request_log();
    let logged = records
        .iter()
        .filter(|r| r.route == "GET /api/products/{id}" && r.latency_ms > 1_000.0)
        .count();
    assert_eq!(
        logged,
        STALLED as usize,
        "{} records, {logged} of them stalled reads",
        records.len()
    );
    let readyz = records.iter().filter(|r| r.route == "GET /readyz").count();
    assert!(readyz >= 2, "{readyz} readiness probes logged");
}

#[tokio::test]
async fn a_request_log_that_cannot_be_written_costs_records_not_requests_and_recovers() {
    // The log folder's parent is a plain file: the folder cannot be created, as root too.
    let dir = tempfile::tempdir().expect("tempdir");
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a folder").expect("file");
    let logs = blocked.join("logs");
    let app = spawn_app_with(|c| c.telemetry.log_dir = logs.clone()).await;
    for _ in 0..20 {
        assert_eq!(app.get("/api/products").await.status(), StatusCode::OK);
    }
    // The condition shows in /api/ml-metrics and /metrics, with the records lost.
    let log = eventually(
        Duration::from_secs(10),
        "the log reports it cannot write",
        || async {
            let log = app.ml_metrics().await["requestLog"].clone();
            (log["failingSinceMs"].is_i64() && log["lost"].as_u64() > Some(0))
                .then(|| log.clone())
                .ok_or(format!("{log}"))
        },
    )
    .await;
    assert!(
        log["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{log}"
    );
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("shop_request_log_failing 1"), "{metrics}");

    // Space is back: writing resumes by itself.
    std::fs::remove_file(&blocked).expect("unblock");
    eventually(
        Duration::from_secs(15),
        "the log is written again",
        || async {
            app.get("/api/products").await;
            let log = app.ml_metrics().await["requestLog"].clone();
            (log["failingSinceMs"].is_null() && log["written"].as_u64() > Some(0))
                .then_some(())
                .ok_or(format!("{log}"))
        },
    )
    .await;
    let files = std::fs::read_dir(&logs)
        .expect("log folder now exists")
        .count();
    assert!(files > 0);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("shop_request_log_failing 0"), "{metrics}");
}
