//! The dashboard in a real browser: headless Chromium from Debian (`chromium`,
//! `chromium-driver`; `scripts/setup.sh` installs both), driven over WebDriver by `fantoccini`.
//!
//! The test signs in with the admin token, drives catalogue traffic and an anomaly spike
//! through the server, waits (bounded) until every chart has drawn data, checks the browser
//! console stayed free of errors, and writes a screenshot to `<target>/dashboard.png`.

use crate::helpers::{ADMIN, TestApp, eventually, spawn_app_with};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use futures::future::join_all;
use serde_json::{Value, json};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The whole browser test, start to finish, may take at most this long.
const TEST_BUDGET: Duration = Duration::from_secs(240);

/// A chromedriver process on a free loopback port, killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The Chromium binary itself: Debian's `/usr/bin/chromium` is a wrapper script around it.
fn chromium_binary() -> PathBuf {
    let real = Path::new("/usr/lib/chromium/chromium");
    if real.is_file() {
        return real.to_owned();
    }
    on_path(&["chromium", "chromium-browser", "google-chrome"]).unwrap_or_else(|| {
        panic!(
            "Chromium not found: install the Debian packages `chromium` and `chromium-driver` \
             (`make setup` or `scripts/setup.sh` does it); this test does not download browsers"
        )
    })
}

async fn start_chromedriver() -> ChromeDriver {
    let driver = on_path(&["chromedriver"]).unwrap_or_else(|| {
        panic!(
            "chromedriver not found on PATH: install the Debian packages `chromium` and \
             `chromium-driver` (`make setup` or `scripts/setup.sh` does it)"
        )
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = ChromeDriver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status_url = format!("{}/status", driver.url);
    eventually(
        Duration::from_secs(20),
        "chromedriver becomes ready",
        || async {
            let response = reqwest::get(&status_url).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let status: Value = response.json().await.expect("status json");
            if status["value"]["ready"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    driver
}

async fn open_browser(driver: &ChromeDriver) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium_binary(),
            // --no-sandbox: CI and this machine run as root, where Chromium's sandbox refuses
            // to start. The page is our own, served from loopback.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,2600", "--hide-scrollbars"],
        },
        // Console messages are kept by chromedriver and read with `BrowserLog`.
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session (is the `chromium` package installed?)")
}

/// Chromedriver's log endpoint: the browser console since the last read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// Console entries since the last read, as (level, message).
async fn console(browser: &Client) -> Vec<(String, String)> {
    let entries = browser
        .issue_cmd(BrowserLog)
        .await
        .expect("browser log (chromedriver's se/log)");
    entries
        .as_array()
        .expect("log entries")
        .iter()
        .map(|e| {
            (
                e["level"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Where people find the screenshot: the cargo target folder.
fn screenshot_path() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp` for integration tests.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_owned)
        .join("dashboard.png")
}

/// What the page shows, read in one script: each chart's drawn values, the markers, tables
/// and texts.
const PAGE_STATE: &str = r#"
const charts = {};
for (const svg of document.querySelectorAll('svg[data-chart]')) {
  charts[svg.dataset.chart] = { points: Number(svg.dataset.points || 0), max: Number(svg.dataset.max || 0),
    paths: svg.querySelectorAll('path').length };
}
const text = (id) => (document.getElementById(id) || {}).textContent || '';
return {
  charts,
  alertMarkers: document.querySelectorAll('svg[data-chart="anomaly"] [data-marker]').length,
  healMarkers: [...document.querySelectorAll('svg[data-chart="actions"] [data-event]')]
    .map((e) => e.getAttribute('data-event')),
  queryRows: document.querySelectorAll('#queries tbody tr').length,
  accuracyRows: document.querySelectorAll('#accuracy tbody tr').length,
  targetRows: document.querySelectorAll('#targets tbody tr').length,
  modelSource: text('model-source'),
  modelReason: text('model-reason'),
  modelAnswers: text('model-answers'),
  suggestionsNote: text('suggestions-note'),
  log: text('log'),
  status: text('status'),
};
"#;

async fn page_state(browser: &Client) -> Value {
    browser
        .execute(PAGE_STATE, vec![])
        .await
        .expect("page state")
}

/// Which expectations the page does not meet yet (empty when all are met).
fn missing(state: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    let charts = state["charts"].as_object().cloned().unwrap_or_default();
    let expected = [
        "rate",
        "latency",
        "confidence",
        "cache",
        "anomaly",
        "actions",
        "priority-critical",
        "priority-high",
        "priority-normal",
        "priority-low",
        "load",
    ];
    for name in expected {
        let chart = &charts.get(name).cloned().unwrap_or(Value::Null);
        // Three points per line (two stored samples and the live one: the chart has moved),
        // and something above zero: a flat zero is no data.
        let lines = chart["paths"].as_u64().unwrap_or(0).max(1);
        if chart["points"].as_u64().unwrap_or(0) < 3 * lines
            || chart["max"].as_f64().unwrap_or(0.0) <= 0.0
        {
            missing.push(format!("chart {name}: {chart}"));
        }
        if chart["paths"].as_u64().unwrap_or(0) == 0 {
            missing.push(format!("chart {name} has no line"));
        }
    }
    if state["alertMarkers"].as_u64().unwrap_or(0) == 0 {
        missing.push("no anomaly alert marker".into());
    }
    let heal = state["healMarkers"].as_array().is_some_and(|m| {
        m.iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("heal")))
    });
    if !heal {
        missing.push("no heal marker on the actions timeline".into());
    }
    if state["queryRows"].as_u64().unwrap_or(0) == 0 {
        missing.push("no slow-query rows".into());
    }
    if state["accuracyRows"].as_u64().unwrap_or(0) == 0 {
        missing.push("no per-route accuracy rows".into());
    }
    if state["targetRows"].as_u64().unwrap_or(0) == 0 {
        missing.push("no database target rows".into());
    }
    if state["modelSource"] != "online" || state["modelReason"].as_str().unwrap_or("").is_empty() {
        missing.push("model source and reason not shown".into());
    }
    // This server has no model folder: the page says so rather than showing empty counters.
    if state["modelAnswers"] != "no model loaded" {
        missing.push(format!("model answers: {}", state["modelAnswers"]));
    }
    if !state["log"]
        .as_str()
        .unwrap_or("")
        .contains("\"action\":\"heal\"")
    {
        missing.push("the optimizer log tail shows no heal".into());
    }
    if !state["status"].as_str().unwrap_or("").starts_with("live") {
        missing.push("status is not live".into());
    }
    missing
}

/// An anomaly spike, then shop traffic, as a misbehaving stress test and `make loadtest` would
/// cause: stress tests whose sudden twentyfold cost makes auto-healing act (alone, as in the
/// auto-healing test, so that other traffic does not dilute the anomalous share), then
/// catalogue reads (cache hits and misses, searches) until `stop`.
async fn drive_traffic(app: Arc<TestApp>, stop: Arc<AtomicBool>) {
    let stress = |complexity: u32| {
        app.client
            .get(app.url(&format!("/api/stress-test?complexity={complexity}")))
            .bearer_auth(ADMIN)
            // Raised from low (the admin may), so that when other tests load the machine the
            // spike is served and scored rather than shed (a shed request is never anomalous).
            .header("x-priority", "high")
            .send()
    };
    for _ in 0..40 {
        let _ = stress(1).await;
    }
    // Up to 30 s of the same route at twenty times the work, until healing throttles it. A
    // panic here ends only this task, before the catalogue reads below: the page then lacks the
    // heal and what those reads draw, and the test fails on that.
    eventually(
        Duration::from_secs(30),
        "auto-healing throttles the spike",
        || async {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let batch = join_all((0..6).map(|_| stress(20))).await;
            let applied: Vec<Option<String>> = batch
                .into_iter()
                .map(|r| {
                    r.ok().and_then(|r| {
                        r.headers()
                            .get("x-optimization-applied")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                })
                .collect();
            if applied.iter().flatten().any(|a| a == "throttle") {
                Ok(())
            } else {
                Err(format!("the last spike batch applied {applied:?}"))
            }
        },
    )
    .await;
    let mut i = 0_u64;
    // Catalogue reads at an easy pace until the page has everything: this keeps the charts
    // moving for as long as the browser waits (stored samples come every 10 s); the sleep
    // spaces the load out and orders nothing.
    while !stop.load(Ordering::Relaxed) {
        let path = match i % 4 {
            0 => "/api/products".to_owned(),
            1 => format!("/api/products/{}", 1 + i % 5),
            2 => "/api/search?q=laptop".to_owned(),
            _ => "/api/products?category=electronics".to_owned(),
        };
        let _ = app.client.get(app.url(&path)).send().await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn browse(app: Arc<TestApp>, browser: &Client) {
    // Signing in: the page answers 401 with a form; the token goes in once.
    browser.goto(&app.url("/dashboard")).await.expect("open");
    let field = browser
        .find(Locator::Css("input[name=token]"))
        .await
        .expect("the sign-in form");
    field.send_keys(ADMIN).await.expect("type the token");
    browser
        .find(Locator::Css("#sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign in");
    eventually(
        Duration::from_secs(15),
        "the dashboard opens after signing in",
        || async {
            browser
                .find(Locator::Css("svg[data-chart]"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    // The only console complaint allowed so far is the 401 of the sign-in page itself.
    let sign_in_console = console(browser).await;
    for (level, message) in &sign_in_console {
        assert!(
            level != "SEVERE" || message.contains("401"),
            "console error while signing in: {message}"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(drive_traffic(app.clone(), stop.clone()));
    // Stored samples come every 10 s; healing needs the spike to last 2 s.
    let started = Instant::now();
    let reported = &Cell::new(started);
    let drawn = AssertUnwindSafe(eventually(
        Duration::from_secs(90),
        "the dashboard draws everything",
        || async move {
            let state = page_state(browser).await;
            let missing = missing(&state);
            if missing.is_empty() {
                return Ok(());
            }
            if reported.get().elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "after {:?} still waiting for: {missing:?}",
                    started.elapsed()
                );
                reported.set(Instant::now());
            }
            Err(format!(
                "it still lacks {missing:#?}\npage state: {state:#}"
            ))
        },
    ))
    .catch_unwind()
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;

    // The screenshot is written whatever happened, for people to look at.
    let png = browser.screenshot().await.expect("screenshot");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("target folder");
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    if let Err(panic) = drawn {
        std::panic::resume_unwind(panic);
    }
    // A probe proves the console is really being read, so "no errors" means something.
    browser
        .execute("console.warn('console-probe')", vec![])
        .await
        .expect("probe");
    let entries = console(browser).await;
    assert!(
        entries.iter().any(|(_, m)| m.contains("console-probe")),
        "the browser console cannot be read: {entries:#?}"
    );
    let errors: Vec<_> = entries
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "browser console errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_every_chart_from_live_traffic_in_headless_chromium() {
    let driver = start_chromedriver().await;
    let app = Arc::new(
        spawn_app_with(|c| {
            c.optimization.anomaly_min_duration_secs = 2;
            c.optimization.recovery_secs = 2;
            c.optimization.anomaly_rate_threshold = 0.2;
        })
        .await,
    );
    let browser = open_browser(&driver).await;
    let outcome = tokio::time::timeout(
        TEST_BUDGET,
        AssertUnwindSafe(browse(app.clone(), &browser)).catch_unwind(),
    )
    .await;
    // Close the browser before reporting, so a failure leaves no Chromium behind.
    let _ = browser.close().await;
    drop(driver);
    match outcome {
        Err(_) => panic!("the browser test ran past {TEST_BUDGET:?}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(())) => {}
    }
}
