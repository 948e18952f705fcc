//! The trained ONNX models on the request path, with the real ONNX Runtime (`ORT_DYLIB_PATH`,
//! set by `make test`): a good model answers, a foreign, aged or corrupt one does not, and a new
//! version is swapped in under load without a failed request.

use crate::helpers::{ADMIN, TestApp, eventually, header, spawn_app_with};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_runtime() {
    let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_default();
    assert!(
        Path::new(&path).is_file(),
        "ORT_DYLIB_PATH must name the ONNX Runtime library (got {path:?}); run `make test`, \
         or export ORT_DYLIB_PATH=$(scripts/ort.sh)"
    );
}

fn manifest(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest json")
}

/// Copies a model folder's files, the manifest last and through a rename, as the trainer does.
fn install(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("model folder");
    let m = manifest(from);
    for key in ["latency_model", "anomaly_model"] {
        let file = m[key]["file"].as_str().expect("file name");
        std::fs::copy(from.join(file), to.join(file)).expect("copy model");
    }
    let tmp = to.join(".manifest.json.tmp");
    std::fs::copy(from.join("manifest.json"), &tmp).expect("copy manifest");
    std::fs::rename(&tmp, to.join("manifest.json")).expect("rename manifest");
}

/// A second, newer model version, trained once per test run on the committed sample.
fn fresh_version() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let sample = repo().join("data/sample").to_string_lossy().into_owned();
        let out = dir.path().to_path_buf();
        // On a thread of its own: polars must not run inside the test's tokio runtime.
        std::thread::spawn(move || {
            trainer::train::train(&trainer::train::Options::new(sample, out))
                .expect("training on the committed sample");
        })
        .join()
        .expect("training thread");
        dir
    })
    .path()
}

/// A server whose model folder starts as a copy of the committed models.
async fn app_with_models(adjust: impl FnOnce(&Path, &mut server::Config)) -> (TestApp, PathBuf) {
    require_runtime();
    let dir = std::env::temp_dir().join(format!("shop-models-{}", uuid::Uuid::new_v4().simple()));
    install(&repo().join("models"), &dir);
    let models = dir.clone();
    let app = spawn_app_with(move |config| {
        config.models.dir.clone_from(&models);
        // The committed models are as old as the commit; only the ageing test limits age.
        config.models.max_age_hours = 0.0;
        config.models.reload_interval_ms = 100;
        adjust(&models, config);
    })
    .await;
    (app, dir)
}

/// Polls `/api/ml-metrics` until `done` holds, for at most 10 s, and returns that answer.
async fn metrics_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let done = &done;
    eventually(Duration::from_secs(10), what, || async move {
        let m = app.ml_metrics().await;
        if done(&m) {
            Ok(m)
        } else {
            Err(format!("model {} actions {}", m["model"], m["actions"]))
        }
    })
    .await
}

fn actions(m: &Value, action: &str) -> Vec<String> {
    m["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["action"] == action)
        .map(|a| a["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_trained_model_answers_requests() {
    let (app, dir) = app_with_models(|_, _| {}).await;
    let version = manifest(&dir)["version"].as_u64().expect("version");
    let id = app.product_id("Laptop Pro").await;
    for _ in 0..20 {
        let response = app.get(&format!("/api/products/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ml-source"), "onnx");
        let predicted: f32 = header(&response, "x-ml-predicted-latency-ms")
            .parse()
            .expect("number");
        assert!(predicted > 0.0, "the model predicts a positive latency");
        let confidence: u32 = header(&response, "x-ml-prediction-confidence")
            .parse()
            .expect("integer");
        assert!(confidence > 0, "calibrated from the manifest's holdout");
    }
    let m = app.ml_metrics().await;
    assert_eq!(m["model"]["source"], "onnx");
    assert_eq!(m["model"]["onnx"]["version"], version);
    assert!(m["model"]["onnx"]["predictions"].as_u64() >= Some(20));
    assert!(m["model"]["onnx"]["scores"].as_u64() >= Some(20));
    let _ = std::fs::remove_dir_all(dir);
}

/// Requests in a cell of the thresholds seen before are answered from the kept answer, without
/// an ONNX Runtime call; `memo_cells = 0` runs every row.
#[tokio::test]
async fn kept_answers_spare_runtime_calls_and_can_be_turned_off() {
    for cells in [server::config::ModelsConfig::default().memo_cells, 0] {
        let (app, dir) = app_with_models(|_, config| config.models.memo_cells = cells).await;
        let probes = manifest(&dir)["probes"].as_array().expect("probes").len() as u64;
        let id = app.product_id("Laptop Pro").await;
        for _ in 0..60 {
            let response = app.get(&format!("/api/products/{id}")).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, "x-ml-source"), "onnx");
        }
        let m = app.ml_metrics().await;
        let onnx = &m["model"]["onnx"];
        let predictions = onnx["predictions"].as_u64().expect("predictions");
        let scores = onnx["scores"].as_u64().expect("scores");
        let calls = |i: usize| onnx["runtimeCalls"][i].as_u64().expect("calls");
        // One client, one request at a time: no shared runs, so every prediction is either a
        // kept answer or its own call (after the load's probe rows).
        if cells > 0 {
            let hits = |i: usize| onnx["memo"][i]["hits"].as_u64().expect("hits");
            assert!(
                hits(0) > 0 && hits(1) > 0,
                "nothing answered from kept answers: {onnx}"
            );
            assert_eq!(calls(0), probes + predictions - hits(0), "{onnx}");
            assert_eq!(calls(1), probes + scores - hits(1), "{onnx}");
            assert!(onnx["memo"][0]["cells"].as_u64() > Some(0), "{onnx}");
            let text = app.get("/metrics").await.text().await.expect("text");
            assert!(text.contains("shop_model_serving 1"), "{text}");
            let kept: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("shop_model_kept_answers_total{model=\"latency\"} "))
                .and_then(|v| v.parse().ok())
                .expect("kept answers in /metrics");
            assert!(kept >= hits(0), "{text}");
        } else {
            assert!(onnx["memo"][0]["off"].as_str().is_some(), "{onnx}");
            assert_eq!(calls(0), probes + predictions, "{onnx}");
            assert_eq!(calls(1), probes + scores, "{onnx}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn a_model_with_another_fingerprint_is_refused_and_online_answers() {
    let (app, dir) = app_with_models(|dir, _| {
        let mut m = manifest(dir);
        m["schema_fingerprint"] = Value::from("0123456789abcdef");
        std::fs::write(dir.join("manifest.json"), m.to_string()).expect("rewrite manifest");
    })
    .await;
    let response = app.get("/api/products").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-ml-source"),
        "online; stale=fingerprint"
    );
    let m = metrics_until(&app, "the refusal is logged", |m| {
        !actions(m, "model-rejected").is_empty()
    })
    .await;
    assert_eq!(m["model"]["source"], "online");
    assert_eq!(m["model"]["onnx"]["stale"], "fingerprint");
    assert!(m["model"]["onnx"]["version"].is_null(), "nothing loaded");
    let refusals = actions(&m, "model-rejected");
    assert!(
        refusals.iter().any(|r| r.contains("fingerprint")),
        "the optimizer log says why: {refusals:?}"
    );
    let text = app.get("/metrics").await.text().await.expect("text");
    assert!(
        text.contains("shop_model_serving 0")
            && text.contains("shop_model_stale{reason=\"fingerprint\"} 1"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_committed_model_serves_a_fresh_checkout_whatever_the_date() {
    // The default age limit (a week) counted from when this server first served the model,
    // not from when it was trained: a newcomer never starts on `stale=aged`.
    let (app, dir) = app_with_models(|_, config| {
        config.models.max_age_hours = server::Config::default().models.max_age_hours;
    })
    .await;
    let response = app.get("/api/products").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ml-source"), "onnx");
    let ledger: Value = serde_json::from_slice(
        &std::fs::read(dir.join(".served.json")).expect("the first service is recorded"),
    )
    .expect("ledger json");
    let version = manifest(&dir)["version"].as_u64().expect("version");
    assert!(ledger[version.to_string()].is_i64(), "{ledger}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_model_first_served_more_than_a_week_ago_is_stale() {
    let (app, dir) = app_with_models(|dir, config| {
        config.models.max_age_hours = server::Config::default().models.max_age_hours;
        // This server first served the committed version eight days ago.
        let version = manifest(dir)["version"].as_u64().expect("version");
        let eight_days_ago = chrono::Utc::now().timestamp_millis() - 8 * 24 * 3_600_000;
        std::fs::write(
            dir.join(".served.json"),
            serde_json::json!({ version.to_string(): eight_days_ago }).to_string(),
        )
        .expect("write ledger");
    })
    .await;
    let response = app.get("/api/products").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ml-source"), "online; stale=aged");
    let m = metrics_until(&app, "the stale model is logged", |m| {
        !actions(m, "model-stale").is_empty()
    })
    .await;
    assert_eq!(m["model"]["onnx"]["stale"], "aged");
    assert!(
        m["model"]["onnx"]["version"].is_u64(),
        "loaded, but not trusted"
    );
    assert!(
        actions(&m, "model-stale")
            .iter()
            .any(|r| r.starts_with("aged") && r.contains("first served here 19")),
        "{:?}",
        actions(&m, "model-stale")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_corrupt_model_is_refused_while_the_old_one_keeps_serving() {
    let (app, dir) = app_with_models(|_, _| {}).await;
    let old = manifest(&dir);
    // A newer version whose files are garbage of exactly the announced size.
    let mut bad = old.clone();
    let garbage = b"this is not an ONNX model".repeat(40);
    for (key, file) in [
        ("latency_model", "latency-9999999999999.onnx"),
        ("anomaly_model", "anomaly-9999999999999.onnx"),
    ] {
        std::fs::write(dir.join(file), &garbage).expect("write garbage");
        bad[key]["file"] = Value::from(file);
        bad[key]["bytes"] = Value::from(garbage.len());
    }
    bad["version"] = Value::from(9_999_999_999_999_u64);
    std::fs::write(dir.join(".manifest.json.tmp"), bad.to_string()).expect("write manifest");
    std::fs::rename(dir.join(".manifest.json.tmp"), dir.join("manifest.json")).expect("rename");

    let m = metrics_until(&app, "the corrupt version is refused", |m| {
        m["model"]["onnx"]["rejections"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(m["model"]["onnx"]["version"], old["version"]);
    assert_eq!(m["model"]["source"], "onnx");
    let response = app.get("/api/products").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-ml-source"),
        "onnx",
        "the old model keeps serving"
    );
    let m = metrics_until(&app, "the refusal is logged", |m| {
        !actions(m, "model-rejected").is_empty()
    })
    .await;
    let refusals = actions(&m, "model-rejected");
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("latency-9999999999999.onnx")),
        "{refusals:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn replacing_the_files_hot_swaps_without_a_failed_request() {
    let fresh = fresh_version();
    let (app, dir) = app_with_models(|_, config| {
        // A debug-build server under this load is far slower than the one the sample was
        // captured from: the drift check would (rightly) retire the model mid-test.
        config.models.drift_factor = 0.0;
    })
    .await;
    let old_version = manifest(&dir)["version"].as_u64().expect("version");
    let new_version = manifest(fresh)["version"].as_u64().expect("version");
    assert_ne!(old_version, new_version);
    let id = app.product_id("Laptop Pro").await;

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let failures = std::sync::Arc::new(AtomicU64::new(0));
    let served = std::sync::Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url) = (app.client.clone(), app.url(&format!("/api/products/{id}")));
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r)
                        if r.status() == StatusCode::OK
                            && r.headers().contains_key("x-ml-source") =>
                    {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The swap happens under load: the workers are being answered before it...
    let count: &AtomicU64 = &served;
    let answered = move |n: u64, what: &'static str| {
        eventually(Duration::from_secs(10), what, move || async move {
            let got = count.load(Ordering::Relaxed);
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} answered"))
            }
        })
    };
    answered(8, "the load is under way").await;
    install(fresh, &dir);
    metrics_until(&app, "the new version serves", |m| {
        m["model"]["onnx"]["version"] == new_version
    })
    .await;
    // ...and keep being answered after it.
    let at_swap = served.load(Ordering::Relaxed);
    answered(at_swap + 50, "the load keeps going after the swap").await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed during the swap"
    );
    let response = app.get(&format!("/api/products/{id}")).await;
    assert_eq!(header(&response, "x-ml-source"), "onnx");
    // The swap reaches the action history with the optimizer's next tick.
    metrics_until(&app, "the optimizer log records the swap", |m| {
        actions(m, "model-loaded")
            .iter()
            .any(|r| r.contains(&new_version.to_string()))
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A copy of the committed models in a folder of its own, loaded with `config` (its `dir` is
/// set here), for the shadow drift rule's tests.
fn drift_models(
    config: server::config::ModelsConfig,
) -> (
    optimizer::model::Models,
    PathBuf,
    server::config::ModelsConfig,
) {
    require_runtime();
    let dir = std::env::temp_dir().join(format!("shop-models-{}", uuid::Uuid::new_v4().simple()));
    install(&repo().join("models"), &dir);
    let config = server::config::ModelsConfig {
        dir: dir.clone(),
        max_age_hours: 0.0,
        ..config
    };
    let models = optimizer::model::Models::new(&config);
    models.poll();
    (models, dir, config)
}

/// A request that took 100 ms, as the shadow evaluation sees it: `model` and `online` are what
/// each predicted for it (p50; p90 twice that).
fn shadowed(model: f32, online: f32) -> optimizer::predictor::Prediction {
    optimizer::predictor::Prediction {
        p50_ms: model,
        p90_ms: model * 2.0,
        confidence: 0.9,
        source: optimizer::predictor::Source::Onnx,
        stale: None,
        model_ms: [model, model * 2.0],
        online_ms: [online, online * 2.0],
    }
}

#[tokio::test]
async fn the_shadow_drift_rule_judges_the_model_against_online_statistics() {
    use optimizer::model::Stale;
    let (models, dir, _) = drift_models(server::config::ModelsConfig {
        // Windows of 512 requests however fast they come (the time floor has its own test).
        drift_min_secs: 0.0,
        ..server::config::ModelsConfig::default()
    });
    assert_eq!(models.stale(), None);
    // Requests take 100 ms. `model` and `online` are what each predicted for them.
    let request = shadowed;
    // Far off (ln error 2.3), but the online statistics are further off (3.0): it keeps serving.
    for _ in 0..1100 {
        models.observe(&request(10.0, 5.0), 100.0);
    }
    assert_eq!(
        models.stale(),
        None,
        "worse than its holdout, better than online"
    );
    // Now the model is off by 2x and the online statistics are right: retired.
    for _ in 0..600 {
        models.observe(&request(200.0, 100.0), 100.0);
    }
    assert_eq!(models.stale(), Some(Stale::Drift));
    let m = models.view();
    assert!(
        m.live_mae_log.expect("model error") > m.live_online_mae_log.expect("online error"),
        "{m:?}"
    );
    // Retired, it keeps predicting in the shadow; once it is clearly better, it serves again.
    for _ in 0..600 {
        models.observe(&request(100.0, 300.0), 100.0);
    }
    assert_eq!(models.stale(), None, "better than online again");
    let events = models.take_events();
    assert!(
        events
            .iter()
            .any(|(a, r)| *a == "model-stale" && r.starts_with("drift")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(a, r)| *a == "model-serving" && r.contains("better than the online")),
        "{events:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn at_thousands_of_requests_a_second_drift_is_judged_over_seconds_not_a_moment() {
    use optimizer::model::Stale;
    let (models, dir, config) = drift_models(server::config::ModelsConfig::default());
    assert!(config.drift_min_secs >= 5.0, "{config:?}");
    let request = shadowed;
    let start = optimizer::unix_ms();
    // 5,000 requests in one second (a faked clock), the model 2x off and online right: a
    // moment's worth, however many requests, is no verdict.
    for i in 0..5_000 {
        models.observe_at(&request(200.0, 100.0), 100.0, start + i / 5);
    }
    assert_eq!(models.stale(), None, "retired on one second of requests");
    // The same error sustained past the floor retires it.
    let later = start + (config.drift_min_secs * 1000.0) as i64 + 1;
    models.observe_at(&request(200.0, 100.0), 100.0, later);
    assert_eq!(models.stale(), Some(Stale::Drift));
    let events = models.take_events();
    assert!(
        events
            .iter()
            .any(|(a, r)| *a == "model-stale" && r.contains("5001 requests")),
        "{events:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_request_is_predicted_by_both_the_model_and_online_statistics() {
    let (app, dir) = app_with_models(|_, _| {}).await;
    let id = app.product_id("Laptop Pro").await;
    for _ in 0..30 {
        let response = app.get(&format!("/api/products/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Both predicted every request: the route shows both errors side by side.
    let m = app.ml_metrics().await;
    let route = m["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == "GET /api/products/{id}")
        .expect("the product route")
        .clone();
    let shadow = &route["shadow"];
    assert!(shadow["requests"].as_u64() >= Some(20), "{route}");
    assert!(
        shadow["modelMaeLog"].is_f64() && shadow["onlineMaeLog"].is_f64(),
        "{route}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The trainer binary the server runs to retrain: `cargo test --workspace` (what `make test`
/// runs) builds it beside this test's binary, for the trainer's own CLI tests.
fn trainer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder")
        .join("trainer");
    assert!(
        path.is_file(),
        "no trainer binary at {}; run `make test` (cargo test --workspace), or `cargo build -p \
         trainer` first",
        path.display()
    );
    path
}

/// Writes the committed sample's records as one plain NDJSON request log in `logs`, as the
/// server's telemetry would have.
fn seed_request_logs(logs: &Path) {
    seed_request_logs_where(logs, |_| true);
}

/// [`seed_request_logs`], keeping only the lines `keep` accepts.
fn seed_request_logs_where(logs: &Path, keep: impl Fn(&str) -> bool) {
    use std::io::{BufRead, Write};
    std::fs::create_dir_all(logs).expect("log folder");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(logs.join("requests-1-1.ndjson")).expect("log file"),
    );
    let sample = repo().join("data/sample").to_string_lossy().into_owned();
    for file in trainer::logs::find_files(&sample).expect("sample logs") {
        for line in trainer::logs::open(&file).expect("open sample").lines() {
            let line = line.expect("sample line");
            if keep(&line) {
                writeln!(out, "{line}").expect("write log");
            }
        }
    }
    out.flush().expect("flush log");
}

#[tokio::test]
async fn retraining_adopts_a_better_model_and_keeps_the_serving_one_otherwise() {
    let (app, dir) = app_with_models(|dir, config| {
        // The serving model is a weak one: a single split per quantile.
        let weak = dir.join("weak");
        let sample = repo().join("data/sample").to_string_lossy().into_owned();
        let out = weak.clone();
        std::thread::spawn(move || {
            let mut options = trainer::train::Options::new(sample, out);
            options.gbdt.trees = 1;
            options.gbdt.max_depth = 1;
            options.iforest.trees = 5;
            trainer::train::train(&options).expect("training the weak model");
        })
        .join()
        .expect("training thread");
        install(&weak, dir);
        // The server's request logs are the sample; no new ones, so both runs see the same data.
        seed_request_logs(&config.telemetry.log_dir);
        config.telemetry.enabled = false;
        config.models.trainer = Some(trainer_binary());
    })
    .await;
    let weak_version = manifest(&dir)["version"].as_u64().expect("version");

    let anonymous = app
        .post_json(None, "/api/ml-metrics/retrain", &serde_json::json!({}))
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let first = app
        .post_json(
            Some(ADMIN),
            "/api/ml-metrics/retrain",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let status: Value = first.json().await.expect("status json");
    let outcome = status["lastOutcome"].as_str().expect("outcome").to_owned();
    assert!(outcome.starts_with("adopted version"), "{status}");
    assert_eq!(status["adopted"], 1, "{status}");
    let adopted = manifest(&dir)["version"].as_u64().expect("version");
    assert_ne!(adopted, weak_version, "the new manifest is installed");
    assert!(outcome.contains(&adopted.to_string()), "{outcome}");
    // Old exports are pruned: the adopted files and the weak ones (still serving until the
    // watcher switches) stay, the committed ones the folder started with go.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("model folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".onnx"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = [adopted, weak_version]
        .iter()
        .flat_map(|v| [format!("anomaly-{v}.onnx"), format!("latency-{v}.onnx")])
        .collect();
    expected.sort();
    assert_eq!(files, expected);

    // The watcher loads it, and it answers requests.
    let m = metrics_until(&app, "the adopted version serves", |m| {
        m["model"]["onnx"]["version"] == adopted
    })
    .await;
    assert_eq!(m["model"]["onnx"]["retrain"]["adopted"], 1);
    assert_eq!(
        header(&app.get("/api/products").await, "x-ml-source"),
        "onnx"
    );
    let m = metrics_until(&app, "the retraining is logged", |m| {
        !actions(m, "retrain").is_empty()
    })
    .await;
    assert!(
        actions(&m, "retrain")
            .iter()
            .any(|r| r.starts_with("adopted version")),
        "the optimizer log has the verdict: {:?}",
        actions(&m, "retrain")
    );

    // Same logs, same trainer: the candidate is no better than what serves, so it is not
    // adopted. Two runs asked for at once: one runs, the other is told one is in progress.
    let empty = serde_json::json!({});
    let (a, b) = tokio::join!(
        app.post_json(Some(ADMIN), "/api/ml-metrics/retrain", &empty),
        app.post_json(Some(ADMIN), "/api/ml-metrics/retrain", &empty),
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let (ran, refused) = if a.status() == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    let refused: Value = refused.json().await.expect("error json");
    assert_eq!(
        refused["error"]["code"], "training_in_progress",
        "{refused}"
    );
    let status: Value = ran.json().await.expect("status json");
    assert_eq!(status["runs"], 2, "{status}");
    assert_eq!(status["adopted"], 1, "{status}");
    let outcome = status["lastOutcome"].as_str().expect("outcome");
    assert!(outcome.starts_with("not adopted"), "{status}");
    assert_eq!(
        manifest(&dir)["version"],
        adopted,
        "the serving model stays"
    );
    assert_eq!(
        header(&app.get("/api/products").await, "x-ml-source"),
        "onnx"
    );

    // The adoption kept the weak model as the rollback: the admin restores it, and the adopted
    // one becomes the previous, so the rollback can itself be undone.
    let anonymous = app
        .post_json(None, "/api/ml-metrics/rollback", &empty)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let back = app
        .post_json(Some(ADMIN), "/api/ml-metrics/rollback", &empty)
        .await;
    assert_eq!(back.status(), StatusCode::OK);
    let outcome: Value = back.json().await.expect("rollback json");
    assert!(
        outcome["outcome"]
            .as_str()
            .is_some_and(|o| o.contains(&weak_version.to_string())),
        "{outcome}"
    );
    assert_eq!(manifest(&dir)["version"], weak_version);
    assert_eq!(manifest(&dir.join("previous"))["version"], adopted);
    metrics_until(&app, "the weak model serves again", |m| {
        m["model"]["onnx"]["version"] == weak_version
    })
    .await;
    let again = app
        .post_json(Some(ADMIN), "/api/ml-metrics/rollback", &empty)
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(manifest(&dir)["version"], adopted, "undone");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn retraining_on_logs_without_anomalies_is_adopted_against_online_statistics() {
    // No model yet, and logs of ordinary traffic only: no stress-test (labelled) rows, so the
    // trainer has no anomaly AUC to measure. Its manifest must still load, and the candidate
    // must beat the online statistics on the newest rows to be adopted.
    let (app, dir) = app_with_models(|dir, config| {
        for entry in std::fs::read_dir(dir).expect("model folder") {
            std::fs::remove_file(entry.expect("entry").path()).expect("remove model file");
        }
        seed_request_logs_where(&config.telemetry.log_dir, |line| {
            !line.contains(trainer::train::ANOMALY_ROUTE)
        });
        // The base corpus holds the stress tests the own logs lack; a base path that does not
        // exist is left out, not an error.
        let base = dir.join("base");
        seed_request_logs_where(&base, |line| line.contains(trainer::train::ANOMALY_ROUTE));
        config.models.base_logs = vec![dir.join("no-such-corpus"), base];
        // The retrain answers with its verdict however long it trains: the request limit is
        // for shop requests, the trainer has its own.
        config.server.request_timeout_ms = 500;
        config.telemetry.enabled = false;
        config.models.trainer = Some(trainer_binary());
    })
    .await;
    assert_eq!(
        header(&app.get("/api/products").await, "x-ml-source"),
        "online; stale=no-model"
    );
    let nothing = app
        .post_json(
            Some(ADMIN),
            "/api/ml-metrics/rollback",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(
        nothing.status(),
        StatusCode::CONFLICT,
        "no previous model yet"
    );
    let response = app
        .post_json(
            Some(ADMIN),
            "/api/ml-metrics/retrain",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.expect("status json");
    let outcome = status["lastOutcome"].as_str().expect("outcome");
    assert!(outcome.starts_with("adopted version"), "{status}");
    assert!(
        outcome.contains("serving none") && outcome.contains(", online "),
        "the verdict gives the figures it was judged on: {outcome}"
    );
    let m = manifest(&dir);
    assert!(m["anomaly_holdout"].get("auc").is_none(), "{m}");
    let base_rows = m["rows"]["base"].as_u64().expect("base rows");
    assert!(base_rows > 50, "the stress tests were trained on: {m}");
    assert!(
        outcome.contains(&format!(" and {base_rows} base rows")),
        "{outcome}"
    );
    metrics_until(&app, "the adopted version serves", |m| {
        m["model"]["onnx"]["version"] == manifest(&dir)["version"]
    })
    .await;
    assert_eq!(
        header(&app.get("/api/products").await, "x-ml-source"),
        "onnx"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The committed latency model in a pool of one session, and the manifest's probe rows.
fn latency_pool() -> (optimizer::model::onnx::Pool, Vec<Vec<f32>>) {
    use optimizer::model::{load, onnx};
    require_runtime();
    let dir = repo().join("models");
    let (manifest, _) = load::read_manifest(&dir).expect("committed manifest");
    let bytes = std::fs::read(dir.join(&manifest.latency_model.file)).expect("latency model");
    let env = onnx::runtime(None).expect("ONNX Runtime");
    let output = (contract::manifest::LATENCY_OUTPUT, 2);
    let pool =
        onnx::Pool::new(env, &bytes, 1, contract::FEATURE_COUNT, output).expect("latency pool");
    let rows = manifest
        .probes
        .iter()
        .map(|p| p.input[..contract::FEATURE_COUNT].to_vec())
        .collect();
    (pool, rows)
}

fn alone(pool: &optimizer::model::onnx::Pool, row: &[f32]) -> [f32; 2] {
    let mut out = [0.0; 2];
    pool.run(row, &mut out).expect("run");
    out
}

#[tokio::test]
async fn concurrent_requests_share_one_model_run_and_each_gets_its_own_answer() {
    let (pool, rows) = latency_pool();
    assert!(
        rows.len() >= 8,
        "the manifest has {} probe rows",
        rows.len()
    );
    let expected: Vec<[f32; 2]> = rows.iter().map(|r| alone(&pool, r)).collect();
    let before = pool.calls();
    let answers = futures::future::join_all(rows.iter().map(|row| pool.run_joined(row))).await;
    assert_eq!(
        pool.calls() - before,
        1,
        "one ONNX Runtime call for all rows"
    );
    for (i, (answer, expected)) in answers.into_iter().zip(&expected).enumerate() {
        let answer = answer.expect("joined run");
        assert!(
            (answer[0] - expected[0]).abs() < 1e-5 && (answer[1] - expected[1]).abs() < 1e-5,
            "row {i}: joined {answer:?}, alone {expected:?}"
        );
    }
}

#[tokio::test]
async fn a_request_that_goes_away_still_answers_the_requests_that_joined_its_run() {
    let (pool, rows) = latency_pool();
    let expected = alone(&pool, &rows[1]);
    // The first request opens a batch and yields; the second joins it; then the first is
    // dropped (its client hung up) before running the batch.
    let mut first = Box::pin(pool.run_joined(&rows[0]));
    assert!(futures::poll!(&mut first).is_pending());
    let mut second = Box::pin(pool.run_joined(&rows[1]));
    assert!(futures::poll!(&mut second).is_pending());
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the joined request was answered")
        .expect("joined run");
    assert!(
        (answer[0] - expected[0]).abs() < 1e-5,
        "{answer:?} vs {expected:?}"
    );
}

/// A copy of the committed models whose latency model answers one row but fails on two or more
/// (its answers are reshaped to exactly one row), so every shared run of several requests fails
/// inside ONNX Runtime while the load's single-row probe checks pass.
fn models_failing_in_batches() -> PathBuf {
    use contract::onnx::{AttributeProto, ModelProto, NodeProto, attr_type};
    use prost::Message;
    let dir = std::env::temp_dir().join(format!("shop-models-{}", uuid::Uuid::new_v4().simple()));
    install(&repo().join("models"), &dir);
    let mut m = manifest(&dir);
    let file = m["latency_model"]["file"]
        .as_str()
        .expect("file")
        .to_owned();
    let bytes = std::fs::read(dir.join(&file)).expect("latency model");
    let mut model = ModelProto::decode(bytes.as_slice()).expect("ONNX");
    let graph = model.graph.as_mut().expect("graph");
    let output = contract::manifest::LATENCY_OUTPUT;
    for name in graph.node.iter_mut().flat_map(|n| n.output.iter_mut()) {
        if name == output {
            *name = "per_row".into();
        }
    }
    graph.node.push(NodeProto {
        op_type: Some("Constant".into()),
        output: vec!["one_row".into()],
        attribute: vec![AttributeProto {
            name: Some("value_ints".into()),
            ints: vec![1, 2],
            r#type: Some(attr_type::INTS),
            ..AttributeProto::default()
        }],
        ..NodeProto::default()
    });
    graph.node.push(NodeProto {
        op_type: Some("Reshape".into()),
        input: vec!["per_row".into(), "one_row".into()],
        output: vec![output.into()],
        ..NodeProto::default()
    });
    let bytes = model.encode_to_vec();
    std::fs::write(dir.join(&file), &bytes).expect("write model");
    m["latency_model"]["bytes"] = Value::from(bytes.len());
    std::fs::write(dir.join("manifest.json"), m.to_string()).expect("write manifest");
    dir
}

#[tokio::test]
async fn a_failed_shared_run_counts_as_one_failure_not_one_per_request() {
    use optimizer::model::{Models, Stale};
    require_runtime();
    let dir = models_failing_in_batches();
    let models = Models::new(&server::config::ModelsConfig {
        dir: dir.clone(),
        max_age_hours: 0.0,
        drift_factor: 0.0,
        ..server::config::ModelsConfig::default()
    });
    models.poll();
    assert_eq!(
        models.stale(),
        None,
        "one row at a time the model answers, so it loads"
    );
    let stats = optimizer::stats::Stats::default();
    let rows: Vec<contract::FeatureVector> = manifest(&dir)["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .take(3)
        .map(|p| {
            let input: Vec<f32> = serde_json::from_value(p["input"].clone()).expect("input");
            input[..contract::FEATURE_COUNT]
                .try_into()
                .expect("features")
        })
        .collect();
    // Three concurrent requests share one run, which fails: each falls back, and it is one
    // failure, not three in a row.
    let shared_run =
        || futures::future::join_all(rows.iter().map(|r| models.predict(0, r, &stats, true)));
    let answers = shared_run().await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(Stale::InferenceErrors))),
        "{answers:?}"
    );
    assert_eq!(
        models.stale(),
        None,
        "one failed run does not retire the model"
    );
    assert_eq!(
        models.view().errors,
        3,
        "every request that fell back is counted"
    );
    // A request alone is answered, which breaks the streak...
    assert!(models.predict(0, &rows[0], &stats, false).await.is_ok());
    // ...and only three failed runs in a row retire the model.
    shared_run().await;
    shared_run().await;
    assert_eq!(models.stale(), None);
    shared_run().await;
    assert_eq!(models.stale(), Some(Stale::InferenceErrors));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn one_instance_of_many_trains_at_a_time() {
    let (app, _models) = app_with_models(|_, config| {
        seed_request_logs(&config.telemetry.log_dir);
        config.telemetry.enabled = false;
        config.models.trainer = Some(trainer_binary());
    })
    .await;
    // Another instance on the same database holds the training lock, as while it trains.
    let other = app.another_session().await;
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&optimizer::model::retrain::TRAINING_LOCK],
        )
        .await
        .expect("lock");
    let empty = serde_json::json!({});
    let refused = app
        .post_json(Some(ADMIN), "/api/ml-metrics/retrain", &empty)
        .await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "training_in_progress", "{body}");
    let m = app.ml_metrics().await;
    assert_eq!(m["model"]["onnx"]["retrain"]["runs"], 0, "no run started");

    // Once it is done, this one may train.
    other
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&optimizer::model::retrain::TRAINING_LOCK],
        )
        .await
        .expect("unlock");
    let ran = app
        .post_json(Some(ADMIN), "/api/ml-metrics/retrain", &empty)
        .await;
    assert_eq!(ran.status(), StatusCode::OK);
    let status: Value = ran.json().await.expect("json");
    assert_eq!(status["runs"], 1, "{status}");
}
