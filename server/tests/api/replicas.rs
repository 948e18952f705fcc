//! Reads spread over a real streaming replica of the test cluster (`make test` starts one with
//! `scripts/pg.sh`, and names it in `TEST_REPLICA_URLS`).
//!
//! The tests here pause the replica's replay or stop it, so they take turns: one at a time,
//! while the rest of the suite (which never uses the replica) runs beside them.

use crate::helpers::{
    ADMIN, TestApp, checkout_body, eventually, execute_from_drop, header, spawn_app_with,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::Config;
use std::time::Duration;

/// One replica test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test cluster's replica, as a URL of its `shop` database.
fn replica_url() -> String {
    let urls = std::env::var("TEST_REPLICA_URLS").unwrap_or_default();
    urls.split(',')
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!("TEST_REPLICA_URLS names no replica; run the tests with `make test`, which starts one")
        })
        .to_owned()
}

/// A server reading from the replica, its cache off (so that every read reaches a database),
/// and a replica more than 300 ms behind taken out of rotation.
fn with_replica(config: &mut Config) {
    config.database.replicas = vec![replica_url()];
    config.database.max_replica_lag_ms = 300;
    config.features.caching = false;
}

/// The replica's entry in `loadDistribution`.
async fn replica_view(app: &TestApp) -> Value {
    app.ml_metrics().await["loadDistribution"][1].clone()
}

async fn wait_for_state(app: &TestApp, state: &str, within: Duration) -> Value {
    eventually(within, &format!("the replica is {state}"), || async {
        let view = replica_view(app).await;
        if view["state"] == state {
            Ok(view)
        } else {
            Err(view.to_string())
        }
    })
    .await
}

/// Product scans the replica itself ran on this test's database (its own statistics: the
/// primary's do not see them).
async fn replica_scans(replica: &tokio_postgres::Client) -> i64 {
    replica
        .query_one(
            "SELECT COALESCE(sum(seq_scan + COALESCE(idx_scan, 0)), 0)::bigint \
             FROM pg_stat_user_tables WHERE relname = 'products'",
            &[],
        )
        .await
        .expect("replica statistics")
        .get(0)
}

/// Resumes the replica's replay however the test ends.
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        execute_from_drop(self.0.clone(), "SELECT pg_wal_replay_resume()".into());
    }
}

#[tokio::test]
async fn catalogue_reads_reach_the_replica_and_writes_stay_on_the_primary() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // One client's reads one after another all go to whichever target answers faster; with the
    // primary's weight at 0 that is the replica whenever it may take them.
    let app = spawn_app_with(|config| {
        with_replica(config);
        config.database.primary_read_weight = 0.0;
    })
    .await;
    wait_for_state(&app, "serving", Duration::from_secs(20)).await;
    let replica = app.connect_on(&replica_url()).await;
    let before = replica_scans(&replica).await;

    for page in 1..=40 {
        let list = app
            .get(&format!("/api/products?limit=2&page={}", page % 3 + 1))
            .await;
        assert_eq!(list.status(), StatusCode::OK, "{:?}", list.text().await);
        let found = app.get("/api/search?q=mouse").await;
        assert_eq!(found.status(), StatusCode::OK);
    }
    let view = replica_view(&app).await;
    assert!(
        view["reads"].as_u64().unwrap_or(0) > 0 && view["share"].as_f64().unwrap_or(0.0) > 0.5,
        "the replica takes a share of the reads: {view}"
    );
    eventually(
        Duration::from_secs(10),
        "the replica's own statistics count product scans",
        || async {
            let scans = replica_scans(&replica).await;
            if scans > before {
                Ok(())
            } else {
                Err(format!("{scans} scans, {before} before"))
            }
        },
    )
    .await;

    let metrics = app.get("/metrics").await.text().await.expect("text");
    let replica_reads = metrics
        .lines()
        .find(|l| l.starts_with("shop_db_reads_total") && l.contains("role=\"replica\""))
        .unwrap_or_else(|| panic!("replica reads in /metrics:\n{metrics}"));
    assert!(!replica_reads.ends_with(" 0"), "{replica_reads}");

    // Writes go to the primary (a replica would refuse them) and tell the client where the
    // primary's WAL was after them.
    let user = app
        .register("replica@example.com", "correct horse battery")
        .await;
    let mouse = app.product_id("Wireless Mouse").await;
    app.add_to_cart(&user, mouse, 1).await;
    let order = app
        .post_json(Some(&user.token), "/api/checkout", &checkout_body())
        .await;
    assert_eq!(order.status(), StatusCode::CREATED);
    let lsn = header(&order, "x-write-lsn").to_owned();
    assert!(optimizer::balance::parse_lsn(&lsn).is_some(), "{lsn}");
    let cookie = header(&order, "set-cookie");
    assert!(cookie.starts_with(&format!("write_lsn={lsn};")), "{cookie}");
}

#[tokio::test]
async fn a_lagging_replica_leaves_rotation_and_nobody_reads_a_change_older_than_their_own() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Reads stay off the primary whenever the replica may take them; the cache is on.
    let app = spawn_app_with(|config| {
        with_replica(config);
        config.database.primary_read_weight = 0.0;
        config.features.caching = true;
    })
    .await;
    wait_for_state(&app, "serving", Duration::from_secs(20)).await;
    let mouse = app.product_id("Wireless Mouse").await;

    // The replica stops replaying: from now on it serves the catalogue as it was.
    let replica = app.connect_on(&replica_url()).await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    let _resume = Resume(replica_url());

    // The admin renames the product; its response says where the write is.
    let renamed = app
        .patch_json(
            ADMIN,
            &format!("/api/products/{mouse}"),
            &json!({"name": "Renamed Mouse"}),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let lsn = header(&renamed, "x-write-lsn").to_owned();

    // Without the write position a read may go to the replica and show the old name, but the
    // cache never keeps that answer for anyone else.
    let detail = format!("/api/products/{mouse}");
    let mut stale = 0;
    for _ in 0..5 {
        let response = app.get(&detail).await;
        let applied = header(&response, "x-optimization-applied").to_owned();
        let body: Value = response.json().await.expect("json");
        if body["name"] == "Wireless Mouse" {
            stale += 1;
            assert_ne!(applied, "cache", "a stale answer was cached");
        }
    }
    assert!(stale > 0, "the paused replica answered plain reads");
    // With it, at once, the change is seen: the replica has not replayed it.
    for _ in 0..20 {
        let with = app
            .client
            .get(app.url(&detail))
            .header("x-write-lsn", &lsn)
            .send()
            .await
            .expect("request");
        let body: Value = with.json().await.expect("json");
        assert_eq!(
            body["name"], "Renamed Mouse",
            "a read after one's own write"
        );
    }

    // The primary moves on; the paused replica falls behind past the limit and leaves rotation.
    let user = app
        .register("lag@example.com", "correct horse battery")
        .await;
    let view = eventually(
        Duration::from_secs(10),
        "the replica is lagging",
        || async {
            app.add_to_cart(&user, mouse, 1).await;
            let view = replica_view(&app).await;
            if view["state"] == "lagging" {
                Ok(view)
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;
    assert!(view["lagMs"].as_u64().unwrap_or(0) > 300, "{view}");
    let reads_before = view["reads"].as_u64().unwrap_or(0);
    for page in 1..=20 {
        // A page each: the cache is on, and each is a read of its own.
        let list = app.get(&format!("/api/products?page={page}")).await;
        assert_eq!(list.status(), StatusCode::OK);
    }
    assert_eq!(
        replica_view(&app).await["reads"].as_u64(),
        Some(reads_before),
        "no read goes to a lagging replica"
    );

    // Replay resumes: the replica catches up and takes reads again.
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    wait_for_state(&app, "serving", Duration::from_secs(10)).await;
    let body: Value = app.get(&detail).await.json().await.expect("json");
    assert_eq!(
        body["name"], "Renamed Mouse",
        "no stale copy outlived the change"
    );
    let actions: Vec<String> = app.ml_metrics().await["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| a["action"].as_str().map(str::to_owned))
        .collect();
    for expected in ["replica-lagging", "replica-caught-up"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn a_replica_stopped_under_load_fails_no_request_and_returns() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(|config| {
        with_replica(config);
        config.database.replica_ban_max_ms = 2_000;
    })
    .await;
    wait_for_state(&app, "serving", Duration::from_secs(20)).await;

    // Four shoppers browse without pause while the replica goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shoppers: Vec<_> = (0..4)
        .map(|n| {
            let (client, base, stop) = (app.client.clone(), app.address.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                {
                    let path = if n % 2 == 0 {
                        "/api/products?limit=3"
                    } else {
                        "/api/search?q=cable"
                    };
                    let status = client
                        .get(format!("{base}{path}"))
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();

    pg_script(&["replica-stop", "1"]).await;
    let banned = wait_for_state(&app, "banned", Duration::from_secs(10)).await;
    assert!(banned["bans"].as_u64().unwrap_or(0) >= 1, "{banned}");
    pg_script(&["replica-start", "1"]).await;
    let back = std::time::Instant::now();
    wait_for_state(&app, "serving", Duration::from_secs(10)).await;
    let returned_after = back.elapsed();
    let reads_back = replica_view(&app).await["reads"].as_u64().unwrap_or(0);
    eventually(
        Duration::from_secs(10),
        "the returned replica takes reads",
        || async {
            let reads = replica_view(&app).await["reads"].as_u64().unwrap_or(0);
            if reads > reads_back {
                Ok(())
            } else {
                Err(format!("{reads} reads"))
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut statuses = Vec::new();
    for shopper in shoppers {
        statuses.extend(shopper.await.expect("shopper"));
    }
    let failed: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(statuses.len() > 20, "{} requests", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(
        returned_after < Duration::from_secs(10),
        "{returned_after:?}"
    );
}

/// Runs `scripts/pg.sh` on the test cluster (the environment `make test` gave the tests), off
/// the test's runtime so that the shoppers keep going meanwhile.
async fn pg_script(args: &'static [&'static str]) {
    let status = tokio::task::spawn_blocking(move || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh");
        std::process::Command::new(script)
            .args(args)
            .status()
            .expect("scripts/pg.sh runs")
    })
    .await
    .expect("script task");
    assert!(status.success(), "scripts/pg.sh {args:?}");
}
