//! The online optimizer seen from outside: headers, shedding, caching, the request log, and
//! auto-healing.

use crate::helpers::{
    ADMIN, TestApp, admission_of, checkout_body, eventually, fixed_limit, header, spawn_app,
    spawn_app_with, statements_with,
};
use contract::RequestRecord;
use futures::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// A header the server writes with two decimals (`0.00`, `0.04`); its value.
fn two_decimals(response: &Response, name: &str) -> f32 {
    let text = header(response, name);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    assert!(
        text.split_once('.')
            .is_some_and(|(whole, fraction)| digits(whole)
                && digits(fraction)
                && fraction.len() == 2),
        "{name} is not a number with two decimals: {text:?}"
    );
    text.parse().expect("a number")
}

#[tokio::test]
async fn every_response_carries_the_ml_headers_in_their_documented_format() {
    let app = spawn_app().await;
    let id = app.product_id("Laptop Pro").await;
    let paths = [
        "/api/products".to_owned(),
        format!("/api/products/{id}"),
        "/api/search?q=mouse".to_owned(),
        "/api/nope".to_owned(),
    ];
    for round in 0..40 {
        for path in &paths {
            let response = app.get(path).await;
            header(&response, "x-ml-prediction-confidence")
                .parse::<u32>()
                .expect("integer confidence");
            two_decimals(&response, "x-anomaly-score");
            let predicted = two_decimals(&response, "x-ml-predicted-latency-ms");
            // No model folder where the tests run: online statistics answer, and say why.
            assert_eq!(header(&response, "x-ml-source"), "online; stale=no-model");
            let applied = header(&response, "x-optimization-applied");
            assert!(
                ["none", "cache", "cache-refresh"].contains(&applied),
                "{applied}"
            );
            if round == 0 {
                // Each path is a route of its own, seen for the first time: nothing to predict
                // from and no baseline to score against yet.
                let first = [
                    "x-ml-prediction-confidence",
                    "x-ml-predicted-latency-ms",
                    "x-anomaly-score",
                ]
                .map(|name| header(&response, name));
                assert_eq!(
                    first,
                    ["0", "0.00", "0.00"],
                    "a route's first request ({path})"
                );
            }
            if round > 30 {
                assert!(
                    predicted > 0.0,
                    "after some traffic the route has a prediction ({path})"
                );
            }
        }
    }
    // Errors carry them too.
    let response = app.get("/api/products/abc").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    header(&response, "x-ml-prediction-confidence");
}

#[tokio::test]
async fn with_every_feature_off_only_the_headers_remain() {
    let app = spawn_app_with(|c| {
        c.features.performance_prediction = false;
        c.features.anomaly_detection = false;
        c.features.caching = false;
        c.features.priority = false;
        c.telemetry.enabled = false;
    })
    .await;
    for _ in 0..3 {
        let response = app.get("/api/products").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ml-source"), "off");
        assert_eq!(header(&response, "x-optimization-applied"), "none");
        assert_eq!(header(&response, "x-ml-prediction-confidence"), "0");
    }
    let metrics: Value = app.ml_metrics().await;
    assert_eq!(metrics["routes"], json!([]), "no statistics are kept");
    assert!(
        !app.scratch.join("data/logs").exists(),
        "no request log is written"
    );
}

/// A stress test slow enough to hold low priority's single permit while the test probes.
fn slow_stress_test(app: &TestApp) -> impl std::future::Future<Output = reqwest::Result<Response>> {
    app.client
        .get(app.url("/api/stress-test?complexity=300"))
        .bearer_auth(ADMIN)
        .send()
}

/// Waits until a request holds low priority's permit (with a fixed limit of 4 there is one), as
/// `/api/ml-metrics` shows it.
async fn low_priority_permit_held(app: &TestApp) {
    eventually(
        Duration::from_secs(10),
        "a stress test holds the low-priority permit",
        || async move {
            let metrics = app.ml_metrics().await;
            let low = admission_of(&metrics, "low");
            if low["inUse"].as_u64() >= Some(1) {
                Ok(())
            } else {
                Err(low.to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn low_priority_is_shed_before_checkout_under_saturation() {
    // A fixed limit of 4: low priority may hold 1 permit, checkout all 4.
    let app = spawn_app_with(fixed_limit(4)).await;
    let shoppers = app.users_via_db(3).await;
    let cable = app.product_id("USB-C Cable").await;
    for s in &shoppers {
        app.add_to_cart(s, cable, 1).await;
    }
    let stress = (0..6).map(|_| async {
        let r = app
            .client
            .get(app.url("/api/stress-test?complexity=200"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request");
        (
            r.status(),
            r.headers().get("retry-after").is_some(),
            r.headers().get("x-optimization-applied").cloned(),
        )
    });
    // The checkouts go in while a stress test holds the low-priority permit.
    let checkouts = async {
        low_priority_permit_held(&app).await;
        join_all(shoppers.iter().map(|s| async {
            app.post_json(Some(&s.token), "/api/checkout", &checkout_body())
                .await
                .status()
        }))
        .await
    };
    let (stress, checkouts) = tokio::join!(join_all(stress), checkouts);
    assert!(
        checkouts.iter().all(|s| *s == StatusCode::CREATED),
        "every checkout goes through: {checkouts:?}"
    );
    let shed: Vec<_> = stress
        .iter()
        .filter(|(s, ..)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!shed.is_empty(), "low priority is shed: {stress:?}");
    assert!(
        shed.iter()
            .all(|(_, retry, applied)| *retry && applied.as_ref().is_some_and(|v| v == "shed"))
    );
    assert!(
        stress.iter().any(|(s, ..)| *s == StatusCode::OK),
        "one low-priority request still runs"
    );

    let metrics: Value = app.ml_metrics().await;
    let low = admission_of(&metrics, "low");
    assert!(low["shed"].as_u64().expect("shed") >= 1);
    let critical = admission_of(&metrics, "critical");
    assert_eq!(critical["shed"], 0);
}

#[tokio::test]
async fn a_client_may_lower_but_not_raise_its_priority() {
    let app = spawn_app_with(fixed_limit(4)).await;
    // Hold the single low-priority permit with a slow stress test...
    let slow = slow_stress_test(&app);
    let probe = async {
        low_priority_permit_held(&app).await;
        // ...then a catalogue read that volunteers to be low priority is shed,
        let lowered = app
            .client
            .get(app.url("/api/products"))
            .header("x-priority", "low")
            .send()
            .await
            .expect("request");
        // while one claiming critical without the admin token keeps its normal priority (admitted).
        let raised = app
            .client
            .get(app.url("/api/products?limit=2"))
            .header("x-priority", "critical")
            .send()
            .await
            .expect("request");
        (lowered.status(), raised.status())
    };
    let (slow, (lowered, raised)) = tokio::join!(slow, probe);
    assert_eq!(slow.expect("request").status(), StatusCode::OK);
    assert_eq!(lowered, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(raised, StatusCode::OK);
}

#[tokio::test]
async fn the_operator_can_roll_back_while_the_server_sheds() {
    // Under an overload the suite measured, the admin's retrain was shed with 503 like the
    // load it was meant to remedy. The low-priority permit is held, so a request at low
    // priority is shed, unless it is the operator's.
    let app = spawn_app_with(fixed_limit(4)).await;
    let slow = slow_stress_test(&app);
    let probe = async {
        low_priority_permit_held(&app).await;
        let at_low = |method: reqwest::Method, path: &str| {
            app.client
                .request(method, app.url(path))
                .bearer_auth(ADMIN)
                .header("x-priority", "low")
                .json(&json!({}))
                .send()
        };
        let read = at_low(reqwest::Method::GET, "/api/products")
            .await
            .expect("read");
        let rollback = at_low(reqwest::Method::POST, "/api/ml-metrics/rollback")
            .await
            .expect("rollback");
        let body: Value = rollback.json().await.expect("rollback json");
        (read.status(), body)
    };
    let (slow, (read, rollback)) = tokio::join!(slow, probe);
    assert_eq!(slow.expect("request").status(), StatusCode::OK);
    assert_eq!(
        read,
        StatusCode::SERVICE_UNAVAILABLE,
        "low priority is shed"
    );
    assert_eq!(
        rollback["error"]["code"], "no_rollback",
        "the rollback is answered (there is nothing to roll back to): {rollback}"
    );
}

#[tokio::test]
async fn cache_hits_after_a_miss_and_serves_fresh_data_after_an_update() {
    let app = spawn_app().await;
    let id = app.product_id("Wireless Mouse").await;
    let path = format!("/api/products/{id}");
    let first = app.get(&path).await;
    assert_eq!(header(&first, "x-optimization-applied"), "none");
    let second = app.get(&path).await;
    assert_eq!(header(&second, "x-optimization-applied"), "cache");
    let body: Value = second.json().await.expect("json");
    assert_eq!(body["price"], "29.99");
    let list = app.get("/api/products").await;
    assert_eq!(header(&list, "x-optimization-applied"), "none");
    assert_eq!(
        header(&app.get("/api/products").await, "x-optimization-applied"),
        "cache"
    );

    let updated = app
        .patch_json(
            ADMIN,
            &path,
            &json!({"price": "24.99", "name": "Wireless Mouse 2"}),
        )
        .await;
    assert_eq!(updated.status(), StatusCode::OK);
    let fresh: Value = app.get(&path).await.json().await.expect("json");
    assert_eq!(fresh["price"], "24.99", "the update is visible at once");
    let list: Value = app.get("/api/products").await.json().await.expect("json");
    assert!(
        list["products"]
            .as_array()
            .expect("products")
            .iter()
            .any(|p| p["name"] == "Wireless Mouse 2")
    );

    // Per-user data is never cached.
    let user = app
        .register("cache@example.com", "correct horse battery")
        .await;
    let cart = app.get_as(&user.token, "/api/cart").await;
    assert_eq!(header(&cart, "x-optimization-applied"), "none");
    let cart = app.get_as(&user.token, "/api/cart").await;
    assert_eq!(header(&cart, "x-optimization-applied"), "none");
}

#[tokio::test]
async fn a_product_change_on_one_instance_invalidates_the_cache_of_another() {
    let app = spawn_app().await;
    let peer = app.spawn_peer().await;
    let id = app.product_id("USB-C Cable").await;
    let detail = format!("{peer}/api/products/{id}");
    let get = || async { app.client.get(&detail).send().await.expect("request") };
    assert_eq!(header(&get().await, "x-optimization-applied"), "none");
    let cached = get().await;
    assert_eq!(header(&cached, "x-optimization-applied"), "cache");
    assert_eq!(
        cached.json::<Value>().await.expect("json")["price"],
        "19.99"
    );

    // The change is made through the first instance; the peer hears of it via NOTIFY. The
    // deadline is shorter than the shortest cache TTL (2 s), so expiry cannot pass this test.
    let updated = app
        .patch_json(
            ADMIN,
            &format!("/api/products/{id}"),
            &json!({"price": "17.50"}),
        )
        .await;
    assert_eq!(updated.status(), StatusCode::OK);
    eventually(
        Duration::from_millis(1500),
        "the peer serves the new price instead of its cached copy",
        || async {
            let price = get().await.json::<Value>().await.expect("json")["price"].clone();
            if price == "17.50" {
                Ok(())
            } else {
                Err(format!("price {price}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_hundred_concurrent_misses_fill_the_cache_once() {
    let app = spawn_app_with(fixed_limit(512)).await;
    let responses = join_all((0..100).map(|_| app.get("/api/search?q=laptop"))).await;
    let mut applied = Vec::new();
    for r in responses {
        assert_eq!(r.status(), StatusCode::OK);
        applied.push(header(&r, "x-optimization-applied").to_owned());
    }
    let fills = applied.iter().filter(|a| *a == "none").count();
    assert_eq!(
        fills, 1,
        "one request computes, 99 wait for it: {applied:?}"
    );
    let metrics: Value = app.ml_metrics().await;
    let search = metrics["cache"]
        .as_array()
        .expect("cache")
        .iter()
        .find(|c| c["route"] == "GET /api/search")
        .expect("search")
        .clone();
    assert_eq!(search["misses"], 1);
    assert_eq!(search["hits"], 99);
}

#[tokio::test]
async fn request_log_records_parse_back_into_the_contract() {
    let app = spawn_app().await;
    let user = app
        .register("log@example.com", "correct horse battery")
        .await;
    let id = app.product_id("Monitor 4K").await;
    app.get(&format!("/api/products/{id}")).await;
    app.add_to_cart(&user, id, 1).await;
    app.post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    let dir = app.scratch.join("data/logs");
    let records: Vec<RequestRecord> =
        eventually(Duration::from_secs(10), "checkout was logged", || async {
            let mut records = Vec::new();
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).expect("read log");
                for line in text.lines() {
                    records.push(
                        serde_json::from_str::<RequestRecord>(line)
                            .unwrap_or_else(|e| panic!("bad record {line}: {e}")),
                    );
                }
            }
            if records.iter().any(|r| r.route == "POST /api/checkout") {
                Ok(records)
            } else {
                let routes: Vec<&str> = records.iter().map(|r| r.route.as_str()).collect();
                Err(format!("records of {routes:?}"))
            }
        })
        .await;
    let checkout = records
        .iter()
        .find(|r| r.route == "POST /api/checkout")
        .expect("found above");
    assert_eq!(checkout.status, 201);
    assert_eq!(checkout.priority, "critical");
    assert_eq!(checkout.schema, contract::features::fingerprint_hex());
    assert!(
        checkout.queries.len() >= 5,
        "statements are tracked: {:?}",
        checkout.queries
    );
    // Statement text comes with the first occurrence of a fingerprint in a file.
    let texts: std::collections::HashMap<&str, &str> = records
        .iter()
        .flat_map(|r| &r.queries)
        .filter_map(|q| q.statement.as_deref().map(|s| (q.fingerprint.as_str(), s)))
        .collect();
    assert!(
        checkout
            .queries
            .iter()
            .all(|q| q.fingerprint.len() == 16 && texts.contains_key(q.fingerprint.as_str()))
    );
    assert!(
        checkout
            .queries
            .iter()
            .any(|q| texts[q.fingerprint.as_str()].starts_with("UPDATE inventory"))
    );
    assert!(
        texts.values().all(|s| !s.contains("Bangkok")),
        "no values in statements"
    );
    assert!(checkout.db_ms > 0.0 && checkout.latency_ms >= checkout.db_ms);
    let detail = records
        .iter()
        .find(|r| r.route == "GET /api/products/{id}")
        .expect("detail was logged");
    assert_eq!(detail.cache, "miss");
    assert!(
        (detail.features[0] - 2.0).abs() < f32::EPSILON,
        "route feature is the route's index"
    );
}

#[tokio::test]
async fn auto_healing_acts_on_a_sustained_spike_and_undoes_itself() {
    let app = spawn_app_with(|c| {
        c.optimization.anomaly_min_duration_secs = 2;
        c.optimization.recovery_secs = 2;
        c.optimization.anomaly_rate_threshold = 0.2;
    })
    .await;
    let stress = |complexity: u32| {
        app.client
            .get(app.url(&format!("/api/stress-test?complexity={complexity}")))
            .bearer_auth(ADMIN)
            .send()
    };
    // A baseline of cheap stress tests.
    for _ in 0..40 {
        assert_eq!(stress(1).await.expect("request").status(), StatusCode::OK);
    }
    // A sustained spike: the same route, twenty times the work, for up to 20 s.
    eventually(
        Duration::from_secs(20),
        "auto-healing throttles the stress test",
        || async {
            let batch: Vec<_> = join_all((0..6).map(|_| stress(20)))
                .await
                .into_iter()
                .map(|r| r.expect("request"))
                .collect();
            let applied = |r: &Response| r.headers().get("x-optimization-applied").cloned();
            if batch.iter().any(|r| {
                r.status() == StatusCode::SERVICE_UNAVAILABLE
                    && applied(r).is_some_and(|v| v == "throttle")
            }) {
                return Ok(());
            }
            let seen: Vec<String> = batch
                .iter()
                .map(|r| {
                    let score = r.headers().get("x-anomaly-score").cloned();
                    format!("{} {:?} score {score:?}", r.status(), applied(r))
                })
                .collect();
            Err(format!("the last spike batch answered {seen:?}"))
        },
    )
    .await;
    let metrics: Value = app.ml_metrics().await;
    assert!(
        metrics["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["action"] == "heal")
    );
    assert!(!metrics["alerts"].as_array().expect("alerts").is_empty());

    // Healthy traffic afterwards: healing is undone by itself. Generous: on a loaded machine
    // (tests run in parallel) even health checks can look anomalous for a while. Each probe
    // reads the metrics first and then sends the health checks, so the pause between probes
    // comes before the metrics read, as it always did here. With the pause before the health
    // checks instead, the anomalous share stayed at 11-14%, above the 10% an undo needs, and
    // healing was never undone (a health check takes a fraction of a millisecond: the first
    // one after an idle pause is likely slow enough to score as anomalous).
    eventually(
        Duration::from_secs(45),
        "healing was undone after recovery",
        || async {
            let metrics: Value = app.ml_metrics().await;
            let actions = metrics["actions"].as_array().expect("actions");
            if actions.iter().any(|a| a["action"] == "undo") {
                return Ok(());
            }
            for _ in 0..10 {
                app.get("/healthz").await;
            }
            Err(format!(
                "actions {actions:?}, anomaly {}",
                metrics["anomaly"]
            ))
        },
    )
    .await;
    assert_eq!(
        stress(1).await.expect("request").status(),
        StatusCode::OK,
        "the stress test runs again"
    );
    let log =
        std::fs::read_to_string(app.scratch.join("logs/ml-optimizer.log")).expect("optimizer log");
    let actions: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        actions.iter().any(|a| a["action"] == "heal")
            && actions.iter().any(|a| a["action"] == "undo")
    );
}

/// The optimizer's actions named `name`, from `/api/ml-metrics`.
fn actions_named(metrics: &Value, name: &str) -> Vec<Value> {
    metrics["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["action"] == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_burst_within_the_target_is_not_an_incident() {
    // A debug build answers a burst of 64 in tens of milliseconds, its slowest in a few hundred:
    // a target of a second keeps every burst within it on any machine this runs on.
    let app = spawn_app_with(|c| {
        c.features.caching = false;
        c.optimization.target_latency_ms = 1_000;
    })
    .await;
    let id = app.product_id("Laptop Pro").await;
    let path = format!("/api/products/{id}");
    // A calm baseline, one request at a time, then bursts of 64 at once for five seconds.
    for _ in 0..200 {
        assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    }
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut answered, mut flagged) = (0_u32, 0_u32);
    while started.elapsed() < Duration::from_secs(5) {
        let sent = std::time::Instant::now();
        let responses = join_all((0..64).map(|_| app.get(&path))).await;
        slowest = slowest.max(sent.elapsed());
        for r in &responses {
            assert_eq!(r.status(), StatusCode::OK);
            answered += 1;
            flagged += u32::from(two_decimals(r, "x-anomaly-score") >= 0.95);
        }
    }
    assert!(
        slowest < Duration::from_millis(1_000),
        "the bursts stayed within the target: slowest {slowest:?}"
    );
    let share = f64::from(flagged) / f64::from(answered);
    assert!(
        share < 0.03,
        "{flagged} of {answered} burst responses scored anomalous (slowest {slowest:?})"
    );
    // Past the healer's minimum duration and a tick: it has judged every burst second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let metrics = app.ml_metrics().await;
    assert!(
        actions_named(&metrics, "heal").is_empty() && metrics["anomaly"]["healing"] == false,
        "a burst within the target healed (slowest {slowest:?}, {flagged} of {answered} \
         flagged): {} {:?}",
        metrics["anomaly"],
        metrics["actions"]
    );
}

#[tokio::test]
async fn a_database_stall_heals_in_its_window_and_stays_an_incident_until_it_ends() {
    let app = spawn_app_with(|c| {
        fixed_limit(12)(c);
        c.features.caching = false;
        c.optimization.recovery_secs = 2;
    })
    .await;
    let id = app.product_id("Laptop Pro").await;
    let path = format!("/api/products/{id}");
    for _ in 0..100 {
        assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    }
    // Another session takes the products table: every product read waits for it.
    let locker = app.lock_products().await;
    // Shoppers keep asking (as the admin, so every flagged answer says why): twelve requests
    // stall holding the permits, the rest are shed, again and again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shoppers: Vec<_> = (0..24)
        .map(|_| {
            let (client, url, stop) = (app.client.clone(), app.url(&path), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < deadline
                {
                    let Ok(r) = client.get(&url).bearer_auth(ADMIN).send().await else {
                        continue;
                    };
                    let value = |name: &str| {
                        r.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    seen.push((
                        r.status(),
                        value("x-anomaly-score"),
                        value("x-anomaly-reason"),
                    ));
                }
                seen
            })
        })
        .collect();
    // Healing acts while the stall lasts, before any stalled request has finished, and counts
    // the shed requests.
    let heal = eventually(
        Duration::from_secs(8),
        "healing acts in the stall",
        || async {
            let metrics = app.ml_metrics().await;
            actions_named(&metrics, "heal")
                .pop()
                .ok_or_else(|| format!("anomaly {}", metrics["anomaly"]))
        },
    )
    .await;
    assert!(heal["evidence"]["stuck"].as_u64() > Some(0), "{heal}");
    assert!(heal["evidence"]["shed"].as_u64() > Some(0), "{heal}");
    // The flood of shed requests keeps the incident open for as long as the stall lasts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Internal state is for the admin: an anonymous client gets the score, not the reason.
    let anonymous = app.get(&path).await;
    assert!(two_decimals(&anonymous, "x-anomaly-score") >= 0.95);
    assert!(anonymous.headers().get("x-anomaly-reason").is_none());
    let metrics = app.ml_metrics().await;
    assert_eq!(
        metrics["anomaly"]["healing"], true,
        "{}",
        metrics["anomaly"]
    );
    assert!(
        actions_named(&metrics, "undo").is_empty(),
        "{:?}",
        metrics["actions"]
    );
    locker.batch_execute("COMMIT").await.expect("unlock");
    let unlocked_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    // Served requests are healthy again: healing undoes itself.
    let undo = eventually(Duration::from_secs(20), "healing is undone", || async {
        app.get(&path).await;
        let metrics = app.ml_metrics().await;
        actions_named(&metrics, "undo")
            .pop()
            .ok_or_else(|| format!("anomaly {}", metrics["anomaly"]))
    })
    .await;
    assert!(
        undo["tsMs"].as_i64() >= Some(unlocked_ms),
        "{undo} before {unlocked_ms}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<_> = join_all(shoppers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("shopper"))
        .collect();
    // A shed request during the incident says it is part of it; a stalled one that was served
    // names its latency.
    let flagged =
        |s: &Option<String>| s.as_deref().and_then(|v| v.parse::<f32>().ok()) >= Some(0.95);
    assert!(
        seen.iter().any(
            |(status, score, reason)| *status == StatusCode::SERVICE_UNAVAILABLE
                && flagged(score)
                && reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("shed during an incident"))
        ),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(status, score, reason)| *status == StatusCode::OK
                && flagged(score)
                && reason.as_deref().is_some_and(|r| r.contains("latency"))),
        "{seen:?}"
    );
    // The alert says why as well.
    let alerts = app.ml_metrics().await["alerts"].clone();
    assert!(
        alerts
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["reason"].as_str().is_some_and(|r| r.contains("latency"))),
        "{alerts}"
    );
}

#[tokio::test]
async fn prometheus_metrics_and_ml_metrics_are_served() {
    let app = spawn_app().await;
    for _ in 0..5 {
        app.get("/api/products").await;
    }
    let text = app.get("/metrics").await.text().await.expect("text");
    assert!(
        text.contains("shop_requests_total{route=\"GET /api/products\"} 5"),
        "{text}"
    );
    assert!(text.contains("shop_cache_total{route=\"GET /api/products\",outcome=\"hit\"} 4"));
    assert!(text.contains("shop_admission_total{priority=\"normal\",outcome=\"admitted\"}"));
    assert!(app.get("/api/ml-metrics").await.status() == StatusCode::UNAUTHORIZED);
    // Statement aggregates come from the log writer thread, which drains every 50 ms.
    let metrics: Value = eventually(
        Duration::from_secs(5),
        "the list's statements are aggregated",
        || async {
            let metrics: Value = app.ml_metrics().await;
            let seen = !statements_with(&metrics, "FROM products").is_empty();
            if seen {
                Ok(metrics)
            } else {
                Err(format!("queries {}", metrics["queries"]))
            }
        },
    )
    .await;
    assert_eq!(metrics["model"]["source"], "online");
    // The list's statements ran once: the other four requests were answered from the cache.
    let list = statements_with(&metrics, "FROM products");
    assert!(list.iter().all(|q| q["calls"] == 1), "{list:#?}");
}
