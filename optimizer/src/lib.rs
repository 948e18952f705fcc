//! The online optimizer on the request path (DESIGN.md, "The data flow of one request").
//!
//! - [`stats`]: per-route streaming statistics (the always-on fallback and baseline).
//! - [`predictor`]: the `Predictor` trait and its online implementation.
//! - [`model`]: the ONNX models (latency, anomaly) with hot reload, staleness checks and the
//!   online fallback; background retraining.
//! - [`anomaly`]: the `AnomalyScorer` trait, its online implementation, and auto-healing.
//! - [`admission`]: priorities, the adaptive concurrency limit, load shedding.
//! - [`cache`]: the predictive response cache for catalogue reads.
//! - [`queries`]: per-request statement tracking.
//! - [`telemetry`]: the request log for the trainer and the optimizer's action log.
//! - [`capture`]: parameters of slow executions, for the index advisor.
//! - [`advice`]: the index advisor's passes (suggest, and opt-in build, measure, drop).
//! - [`series`]: the history downsampled into the dashboard's time series.
//! - [`middleware`]: the one middleware that runs all of the above for every request.

pub mod admission;
pub mod advice;
pub mod anomaly;
pub mod cache;
pub mod capture;
pub mod config;
pub mod middleware;
pub mod model;
pub mod policy;
pub mod predictor;
pub mod queries;
pub mod series;
pub mod stats;
pub mod telemetry;

pub use config::Config;

use admission::{Admission, PriorityStats};
use anomaly::{Action, Decision, Healer};
use cache::ResponseCache;
use contract::routes::route_label;
use model::{ModelPredictor, ModelScorer, Models};
use serde::Serialize;
use stats::Stats;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use telemetry::{ActionLog, Telemetry, WriterConfig};

/// Which optimizer parts are on, and their knobs (copied from the configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Predict latency.
    pub prediction: bool,
    /// Score anomalies and auto-heal.
    pub anomaly: bool,
    /// Cache catalogue reads.
    pub caching: bool,
    /// Priority admission and shedding.
    pub priority: bool,
    /// Write request logs.
    pub telemetry: bool,
    /// Latency target.
    pub target: Duration,
    /// Confidence needed before acting on a prediction.
    pub prediction_threshold: f32,
    /// History samples kept (one per 10 s).
    pub history_len: usize,
}

impl Settings {
    /// Whether the middleware has anything to do beyond the headers.
    pub fn any(&self) -> bool {
        self.prediction || self.anomaly || self.caching || self.priority || self.telemetry
    }
}

/// A recent anomalous request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Unix ms.
    pub ts_ms: i64,
    /// Route label.
    pub route: String,
    /// Latency (ms).
    pub latency_ms: f64,
    /// HTTP status.
    pub status: u16,
    /// Anomaly score.
    pub score: f32,
}

/// One point of the metrics history (every 10 s).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix ms.
    pub ts_ms: i64,
    /// Requests per second.
    pub request_rate: f32,
    /// Adaptive concurrency limit.
    pub limit: u32,
    /// Requests holding permits.
    pub in_flight: u32,
    /// Per-priority allocation and use.
    pub priorities: Vec<PriorityStats>,
    /// Mean confidence over routes with traffic (0-1).
    pub confidence: f64,
    /// Anomalous share of requests.
    pub anomaly_rate: f64,
    /// Auto-healing in force.
    pub healing: bool,
    /// Highest anomalous share seen at any second since the previous sample: an incident
    /// shorter than the 10-second sampling interval still shows.
    pub anomaly_peak: f64,
    /// Auto-healing was in force at any second since the previous sample.
    pub healed: bool,
    /// Cache hits / (hits + misses + refreshes) since the previous sample.
    pub cache_hit_rate: f64,
    /// Cache counters since start, so rates over any span can be derived from two samples.
    /// Served by the time series (`/api/ml-metrics/series`), not by `/api/ml-metrics`.
    #[serde(skip)]
    pub cache_totals: CacheTotals,
    /// Rate and latency of each route that had requests in the statistics windows. Served by
    /// the time series, not by `/api/ml-metrics`, which keeps that answer small.
    #[serde(skip)]
    pub routes: Vec<RouteSample>,
}

/// Cache counters since start, summed over the cached routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTotals {
    /// Answers served from cache.
    pub hits: u64,
    /// Hits, misses and refreshes.
    pub lookups: u64,
    /// Entries refreshed before they expired.
    pub refreshes: u64,
}

/// One route's numbers in a history sample. Kept compact (an index and `f32`s, 28 bytes)
/// because a day of history holds up to 8,640 samples of up to every route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSample {
    /// Index into `contract::routes::ROUTES`.
    pub route: u16,
    /// Requests per second, recent.
    pub rate: f32,
    /// Actual median latency over the statistics windows (ms).
    pub p50_ms: f32,
    /// Actual 90th percentile (ms).
    pub p90_ms: f32,
    /// Actual 95th percentile (ms).
    pub p95_ms: f32,
    /// Mean predicted p50 of the same requests (ms), 0 when none was predicted.
    pub predicted_p50_ms: f32,
    /// Mean predicted p90 of the same requests (ms), 0 when none was predicted.
    pub predicted_p90_ms: f32,
}

/// Everything the optimizer keeps.
pub struct Optimizer {
    /// Knobs.
    pub settings: Settings,
    /// Per-route statistics.
    pub stats: Arc<Stats>,
    predictor: ModelPredictor,
    scorer: ModelScorer,
    /// The ONNX models and their health (the predictor and scorer ask them first).
    pub models: Arc<Models>,
    /// Admission control.
    pub admission: Admission,
    /// Response cache.
    pub cache: ResponseCache,
    /// Auto-healing.
    pub healer: Healer,
    /// Request log.
    pub telemetry: Telemetry,
    /// `logs/ml-optimizer.log`.
    pub actions_log: ActionLog,
    /// Recent optimizer actions (bounded).
    pub actions: Mutex<VecDeque<Action>>,
    /// Recent anomaly alerts (bounded).
    pub alerts: Mutex<VecDeque<Alert>>,
    /// Metrics history (bounded by `metrics.retention_hours`).
    pub history: Mutex<VecDeque<Sample>>,
    /// The index advisor.
    pub advice: advice::Advice,
    /// The anomalous share's peak and whether healing acted, since the last stored sample.
    /// A std mutex: written once a second by the sampler, read by dashboard polls.
    since_sample: Mutex<Peak>,
    started: Instant,
}

const MAX_ALERTS: usize = 200;
const MAX_ACTIONS: usize = 500;

/// What happened between two history samples that a single reading would miss.
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    anomaly_rate: f64,
    healing: bool,
}

/// Appends to a bounded in-memory log, dropping the oldest entries beyond `max`.
fn push_bounded<T>(log: &Mutex<VecDeque<T>>, item: T, max: usize) {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.push_back(item);
    while log.len() > max {
        log.pop_front();
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl Optimizer {
    /// Builds the optimizer from configuration, starts its log writer thread, and loads the
    /// models (blocking: reads the model files once at start-up; a missing or bad model only
    /// means online statistics answer).
    pub fn new(config: &Config) -> Self {
        let f = &config.features;
        let o = &config.optimization;
        let settings = Settings {
            prediction: f.performance_prediction,
            anomaly: f.anomaly_detection,
            caching: f.caching,
            priority: f.priority,
            telemetry: config.telemetry.enabled,
            target: Duration::from_millis(o.target_latency_ms),
            prediction_threshold: config.prediction_threshold as f32,
            history_len: usize::try_from(config.metrics.retention_hours * 360).unwrap_or(8640),
        };
        let stats = Arc::new(Stats::default());
        let telemetry = if settings.any() {
            Telemetry::start(WriterConfig {
                dir: config.telemetry.log_dir.clone(),
                capacity: config.telemetry.channel_capacity,
                rotate_bytes: config.telemetry.rotate_mb * 1024 * 1024,
                rotate_age: Duration::from_secs(config.telemetry.rotate_minutes * 60),
                retention: Duration::from_secs(config.metrics.retention_hours * 3600),
                write_files: config.telemetry.enabled,
            })
        } else {
            Telemetry::disabled()
        };
        let models = Arc::new(Models::new(&config.models));
        if settings.prediction || settings.anomaly {
            models.poll();
        }
        Self {
            predictor: ModelPredictor::new(models.clone(), stats.clone()),
            scorer: ModelScorer::new(models.clone(), stats.clone()),
            models,
            admission: Admission::new(o.min_concurrency, o.max_concurrency)
                .with_db_slots(u32::try_from(config.db_pool_size).unwrap_or(u32::MAX)),
            // Half the memory budget for cached responses; the rest is headroom for the
            // statistics, history and the request log buffer.
            cache: ResponseCache::new(o.max_memory_mb * 1024 * 1024 / 2),
            healer: Healer::new(
                o.anomaly_rate_threshold,
                o.anomaly_min_duration_secs,
                o.recovery_secs,
            ),
            telemetry,
            actions_log: ActionLog::new(config.telemetry.optimizer_log.clone()),
            actions: Mutex::new(VecDeque::new()),
            alerts: Mutex::new(VecDeque::new()),
            history: Mutex::new(VecDeque::new()),
            advice: advice::Advice::new(config),
            since_sample: Mutex::new(Peak::default()),
            stats,
            settings,
            started: Instant::now(),
        }
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records an optimizer action in memory and in `logs/ml-optimizer.log`.
    pub fn record_action(&self, action: &str, reason: String, anomaly_rate: f64) {
        let entry = Action {
            ts_ms: unix_ms(),
            action: action.to_owned(),
            reason,
            anomaly_rate,
        };
        tracing::info!(action = %entry.action, reason = %entry.reason, "optimizer action");
        self.actions_log.write(&entry);
        push_bounded(&self.actions, entry, MAX_ACTIONS);
    }

    fn alert(&self, alert: Alert) {
        push_bounded(&self.alerts, alert, MAX_ALERTS);
    }

    /// One second of housekeeping: rates, auto-healing decisions, and every 10 s a history
    /// sample.
    pub fn tick(&self, elapsed: Duration, take_sample: bool) {
        self.stats.sample_rates(elapsed);
        for (action, reason) in self.models.take_events() {
            self.record_action(action, reason, self.healer.recent_rate());
        }
        if self.settings.anomaly {
            match self.healer.tick() {
                Decision::Heal { rate } => {
                    self.admission.set_low_factor(0.25);
                    self.record_action(
                        "heal",
                        format!(
                            "anomalous share {:.0}% above {:.0}% for the minimum duration: low-priority share cut to a quarter, stress test throttled",
                            rate * 100.0,
                            self.healer.threshold() * 100.0
                        ),
                        rate,
                    );
                }
                Decision::Undo { rate } => {
                    self.admission.set_low_factor(1.0);
                    self.record_action(
                        "undo",
                        format!("healthy again (anomalous share {:.0}%): low-priority share and stress test restored", rate * 100.0),
                        rate,
                    );
                }
                Decision::Hold => {}
            }
        }
        let peak = {
            let mut peak = self.peak();
            peak.anomaly_rate = peak.anomaly_rate.max(self.healer.recent_rate());
            peak.healing |= self.healer.is_active();
            let seen = *peak;
            if take_sample {
                *peak = Peak::default();
            }
            seen
        };
        if take_sample {
            let sample = self.sample(self.newest_cache_totals(), peak);
            push_bounded(&self.history, sample, self.settings.history_len.max(1));
        }
    }

    /// The optimizer's state now, as a history sample whose cache hit rate covers the time
    /// since the last stored sample. The dashboard appends it to the stored history so its
    /// charts move between the 10-second samples.
    pub fn live_sample(&self) -> Sample {
        let peak = *self.peak();
        self.sample(self.newest_cache_totals(), peak)
    }

    fn peak(&self) -> std::sync::MutexGuard<'_, Peak> {
        self.since_sample
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn newest_cache_totals(&self) -> CacheTotals {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .back()
            .map(|s| s.cache_totals)
            .unwrap_or_default()
    }

    fn sample(&self, since: CacheTotals, peak: Peak) -> Sample {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        let mut weighted = 0.0;
        let mut weight = 0.0;
        let mut routes = Vec::new();
        for (i, r) in self.stats.routes.iter().enumerate() {
            let snap = r.snapshot(now);
            if snap.predicted > 0 {
                weighted += snap.coverage * f64::from(snap.predicted);
                weight += f64::from(snap.predicted);
            }
            if snap.window_requests > 0 {
                routes.push(RouteSample {
                    route: u16::try_from(i).unwrap_or(0),
                    rate: r.rate(),
                    p50_ms: snap.p50_ms as f32,
                    p90_ms: snap.p90_ms as f32,
                    p95_ms: snap.p95_ms as f32,
                    predicted_p50_ms: snap.predicted_p50_ms as f32,
                    predicted_p90_ms: snap.predicted_p90_ms as f32,
                });
            }
        }
        let totals = self
            .cache
            .counters
            .iter()
            .fold(CacheTotals::default(), |acc, c| {
                let (hits, refreshes) = (c.hits.load(Relaxed), c.refreshes.load(Relaxed));
                CacheTotals {
                    hits: acc.hits + hits,
                    lookups: acc.lookups + hits + c.misses.load(Relaxed) + refreshes,
                    refreshes: acc.refreshes + refreshes,
                }
            });
        let (dh, dt) = (
            totals.hits.saturating_sub(since.hits),
            totals.lookups.saturating_sub(since.lookups),
        );
        let cache_hit_rate = if dt == 0 { 0.0 } else { dh as f64 / dt as f64 };
        Sample {
            ts_ms: unix_ms(),
            request_rate: self.stats.total_rate(),
            limit: self.admission.limit(),
            in_flight: self.admission.in_flight(),
            priorities: self.admission.stats(),
            confidence: if weight == 0.0 {
                0.0
            } else {
                weighted / weight
            },
            anomaly_rate: self.healer.recent_rate(),
            healing: self.healer.is_active(),
            anomaly_peak: peak.anomaly_rate.max(self.healer.recent_rate()),
            healed: peak.healing || self.healer.is_active(),
            cache_hit_rate,
            cache_totals: totals,
            routes,
        }
    }

    /// Starts the model watcher (hot reload, age checks, `training_interval`), unless neither
    /// prediction nor anomaly scoring is on.
    pub fn spawn_models(
        self: &Arc<Self>,
        training_interval_minutes: u64,
        log_dir: std::path::PathBuf,
    ) -> Option<tokio::task::JoinHandle<()>> {
        (self.settings.prediction || self.settings.anomaly).then(|| {
            self.models
                .spawn_watcher(training_interval_minutes, log_dir)
        })
    }

    /// Trains on the request logs in `log_dir` now, as `training_interval` does, and adopts the
    /// result if it predicts the most recent requests better; the status after the run, or
    /// `Ok(None)` when a run is already in progress.
    ///
    /// # Errors
    /// The training thread panicked (the trainer itself runs as a child process).
    pub async fn retrain_now(
        self: &Arc<Self>,
        log_dir: std::path::PathBuf,
    ) -> anyhow::Result<Option<model::retrain::RetrainStatus>> {
        let models = self.models.clone();
        Ok(tokio::task::spawn_blocking(move || model::retrain::run(&models, &log_dir)).await?)
    }

    /// Starts the once-a-second housekeeping task.
    pub fn spawn_sampler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let optimizer = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let now = Instant::now();
                optimizer.tick(now - last, n % 10 == 9);
                last = now;
                n += 1;
            }
        })
    }

    /// Listens for product changes from every instance (PostgreSQL `NOTIFY shop_cache`) and
    /// invalidates this instance's cache. Reconnects with a bounded back-off.
    pub fn spawn_listener(
        self: &Arc<Self>,
        pg: tokio_postgres::Config,
    ) -> tokio::task::JoinHandle<()> {
        let optimizer = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                match pg.connect(tokio_postgres::NoTls).await {
                    Ok((client, mut connection)) => {
                        let cache_owner = optimizer.clone();
                        let driver = tokio::spawn(async move {
                            while let Some(message) =
                                futures::future::poll_fn(|cx| connection.poll_message(cx)).await
                            {
                                match message {
                                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                        if let Ok(id) = n.payload().parse::<i64>() {
                                            cache_owner.cache.invalidate_product(id);
                                        }
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        if client.batch_execute("LISTEN shop_cache").await.is_ok() {
                            backoff = Duration::from_millis(500);
                            let _ = driver.await;
                        } else {
                            driver.abort();
                        }
                        drop(client);
                        tracing::warn!("cache invalidation listener disconnected; reconnecting");
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cache invalidation listener cannot connect")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
    }

    /// Per-route view for metrics.
    pub fn route_views(&self) -> Vec<RouteView> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        self.stats
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let snap = r.snapshot(now);
                let total = r.finished.load(Relaxed);
                (total > 0).then(|| RouteView {
                    route: route_label(i),
                    requests: total,
                    rate: r.rate(),
                    p50_ms: snap.p50_ms,
                    p90_ms: snap.p90_ms,
                    p99_ms: snap.p99_ms,
                    predicted_in_window: snap.predicted,
                    coverage: snap.coverage,
                    mae_log: snap.mae_log,
                    errors_in_window: snap.errors,
                })
            })
            .collect()
    }
}

/// A route's live numbers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    /// Route label.
    pub route: String,
    /// Requests ever.
    pub requests: u64,
    /// Requests per second, recent.
    pub rate: f32,
    /// Recent median (ms).
    pub p50_ms: f64,
    /// Recent p90 (ms).
    pub p90_ms: f64,
    /// Recent p99 (ms).
    pub p99_ms: f64,
    /// Requests with a prediction in the window.
    pub predicted_in_window: u32,
    /// Share of them at or under the predicted p90 (calibration; nominal 0.9).
    pub coverage: f64,
    /// Mean |ln actual − ln predicted p50|.
    pub mae_log: f64,
    /// Server errors in the window.
    pub errors_in_window: u32,
}
