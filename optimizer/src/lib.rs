//! The shop's performance optimizer: everything that runs on the request path beside the
//! handlers, and the background work that keeps it honest.
//!
//! The public face is small: [`Optimizer`] (its state is private), built from [`Config`];
//! [`middleware::optimize`], the one middleware that runs the pipeline for every request, over
//! a narrow [`middleware::Host`]; [`Optimizer::spawn`] for the background tasks;
//! [`Optimizer::snapshot`] and the history accessors for `/api/ml-metrics`, `/metrics` and the
//! dashboard. `docs/optimizer.md` describes what it does, `docs/ARCHITECTURE.md` where.
//!
//! - [`config`]: its settings and their defaults.
//! - [`policy`]: the route policy table every per-route rule is read from.
//! - [`middleware`]: the request pipeline: classify, features, predict, admit, cache, handle,
//!   score, learn, respond.
//! - [`stats`]: per-route streaming statistics (the always-on fallback and baseline).
//! - [`predictor`]: predictions and the online predictor.
//! - [`anomaly`]: the online anomaly scorer and alerts; [`healer`]: auto-healing decisions.
//! - [`model`]: the ONNX models with hot reload, health checks, the online fallback, kept
//!   answers and background retraining.
//! - [`admission`]: priorities, the adaptive concurrency limit, load shedding.
//! - [`cache`]: the predictive response cache; [`listen`]: its invalidation across instances.
//! - [`balance`]: adaptive read distribution over the primary and its read replicas.
//! - [`queries`]: per-request statement tracking; [`capture`]: parameters of slow executions.
//! - [`advice`]: the index advisor's passes (suggest, and opt-in build, measure, drop).
//! - [`telemetry`]: the request log for the trainer; [`actions`]: the action log.
//! - [`history`]: a sample every 10 s; [`series`]: its downsampling for the dashboard.
//! - [`snapshot`]: the typed state the metrics endpoints render.

pub mod actions;
pub mod admission;
pub mod advice;
pub mod anomaly;
pub mod arrivals;
pub mod balance;
pub mod cache;
pub mod capture;
pub mod config;
pub mod healer;
pub mod history;
pub mod listen;
pub mod middleware;
pub mod model;
pub mod policy;
pub mod predictor;
pub mod queries;
pub mod redact;
pub mod series;
pub mod snapshot;
pub mod stats;
pub mod telemetry;

pub use config::Config;
pub use snapshot::Snapshot;

use actions::{Action, Actions, Recent};
use admission::Admission;
use anomaly::{ANOMALY_SCORE, Alert};
use cache::{Kind, ResponseCache};
use contract::routes::route_label;
use healer::{Decision, Healer};
use history::{CacheTotals, History, Peak, RouteSample, Sample};
use model::{ModelPredictor, ModelScorer, Models, Stale};
use snapshot::{
    AnomalyState, CacheMemory, CacheRoute, Features, ModelHealth, RequestLog, RouteView,
};
use stats::Stats;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};
use telemetry::{QueryAggregate, Telemetry, WriterConfig};

/// Which optimizer parts are on, and their knobs (from the configuration).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Predict latency.
    pub(crate) prediction: bool,
    /// Score anomalies and auto-heal.
    pub(crate) anomaly: bool,
    /// Cache catalogue reads.
    pub(crate) caching: bool,
    /// Priority admission and shedding.
    pub(crate) priority: bool,
    /// Write request logs.
    pub(crate) telemetry: bool,
    /// Latency target.
    pub(crate) target: Duration,
    /// Confidence needed before acting on a prediction.
    pub(crate) prediction_threshold: f32,
    /// `x-anomaly-reason` for every client, not only the admin.
    pub(crate) explain_public: bool,
}

impl Settings {
    /// Whether the middleware has anything to do beyond the headers.
    pub(crate) fn any(&self) -> bool {
        self.prediction || self.anomaly || self.caching || self.priority || self.telemetry
    }
}

/// What the background tasks need that the request path does not.
struct Background {
    training_interval_minutes: u64,
    log_dir: PathBuf,
    pg: Option<tokio_postgres::Config>,
}

/// Recent anomaly alerts kept.
const MAX_ALERTS: usize = 200;

/// Everything the optimizer keeps. Shared as an `Arc` by the middleware, the handlers that
/// render it and the background tasks.
pub struct Optimizer {
    pub(crate) settings: Settings,
    pub(crate) stats: Arc<Stats>,
    pub(crate) predictor: ModelPredictor,
    pub(crate) scorer: ModelScorer,
    pub(crate) models: Arc<Models>,
    pub(crate) admission: Admission,
    pub(crate) cache: ResponseCache,
    pub(crate) healer: Healer,
    pub(crate) telemetry: Telemetry,
    actions: Arc<Actions>,
    pub(crate) balancer: Arc<balance::Balancer>,
    alerts: Recent<Alert>,
    history: History,
    advice: advice::Advice,
    background: Background,
    started: Instant,
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
            explain_public: o.explain_public,
        };
        let history_len = usize::try_from(config.metrics.retention_hours * 360).unwrap_or(8640);
        let stats = Arc::new(Stats::with_target(o.target_latency_ms as f64));
        let telemetry = if settings.any() {
            Telemetry::start(WriterConfig {
                dir: config.telemetry.log_dir.clone(),
                capacity: config.telemetry.channel_capacity,
                rotate_bytes: config.telemetry.rotate_mb * 1024 * 1024,
                rotate_age: Duration::from_secs(config.telemetry.rotate_minutes * 60),
                retention: Duration::from_secs(config.metrics.retention_hours * 3600),
                write_files: config.telemetry.enabled,
                keep_query_text: config.telemetry.keep_query_text,
                compress_rotated: config.telemetry.compress_rotated,
                instance: telemetry::instance_name(config.telemetry.instance_id.as_deref()),
            })
        } else {
            Telemetry::disabled()
        };
        let models = Arc::new(Models::new(&config.models));
        let actions = Arc::new(Actions::new(config.telemetry.optimizer_log.clone()));
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
                o.target_latency_ms,
            ),
            telemetry,
            balancer: Arc::new(balance::Balancer::new(
                config.balance.clone(),
                actions.clone(),
            )),
            actions,
            alerts: Recent::new(MAX_ALERTS),
            history: History::new(history_len),
            advice: advice::Advice::new(config),
            background: Background {
                training_interval_minutes: config.training_interval,
                log_dir: config.telemetry.log_dir.clone(),
                pg: config.pg.clone(),
            },
            stats,
            settings,
            started: Instant::now(),
        }
    }

    /// Starts the background tasks (the once-a-second housekeeping, the index advisor, the
    /// model watcher, the cache invalidation listener) and stops them when `shutdown`
    /// completes; the returned handle finishes once they are stopped.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let mut tasks = vec![self.spawn_housekeeping()];
        if let Some(advisor) = self.advice.spawn(self.clone()) {
            tasks.push(advisor);
        }
        if self.settings.prediction || self.settings.anomaly {
            tasks.push(self.models.spawn_watcher(
                self.background.training_interval_minutes,
                self.background.log_dir.clone(),
                self.background.pg.clone(),
            ));
        }
        if let Some(pg) = self.background.pg.clone() {
            let optimizer = self.clone();
            tasks.push(listen::spawn(
                pg,
                Arc::new(move |id, lsn| optimizer.invalidate_product_at(id, lsn)),
            ));
        }
        tokio::spawn(async move {
            shutdown.await;
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    }

    /// The once-a-second housekeeping task.
    fn spawn_housekeeping(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
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

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records an optimizer action in memory and in the action log.
    pub(crate) fn record_action(
        &self,
        action: &str,
        reason: String,
        anomaly_rate: f64,
        details: serde_json::Map<String, serde_json::Value>,
    ) {
        self.actions.record(Action {
            ts_ms: unix_ms(),
            action: action.to_owned(),
            reason,
            anomaly_rate,
            details,
        });
    }

    /// Waits (at most `timeout`) until every request record handed to the log writer so far
    /// is written and flushed; true when done. Blocking: for a draining server.
    pub fn flush_request_log(&self, timeout: Duration) -> bool {
        self.telemetry.flush(timeout)
    }

    pub(crate) fn alert(&self, alert: Alert) {
        self.alerts.push(alert);
    }

    /// One second of housekeeping: rates, auto-healing decisions, and every 10 s a history
    /// sample.
    pub fn tick(&self, elapsed: Duration, take_sample: bool) {
        self.stats.sample_rates(elapsed);
        for (action, reason) in self.models.take_events() {
            self.record_action(
                action,
                reason,
                self.healer.recent_rate(),
                Default::default(),
            );
        }
        if self.settings.anomaly {
            match self.healer.tick(self.admission.in_flight()) {
                Decision::Heal { rate, window } => {
                    self.admission.set_low_factor(0.25);
                    let details = serde_json::json!({ "evidence": {
                        "served": window.served,
                        "anomalous": window.anomalous,
                        "stuck": window.stuck,
                        "shed": window.shed,
                    }});
                    self.record_action(
                        "heal",
                        format!(
                            "incident: {:.0}% of served requests anomalous or still served past the target ({} anomalous, {} stuck, {} finished in the last seconds; {} shed), above {:.0}% for the minimum duration: low-priority share cut to a quarter, stress test throttled",
                            rate * 100.0,
                            window.anomalous,
                            window.stuck,
                            window.served,
                            window.shed,
                            self.healer.threshold() * 100.0
                        ),
                        rate,
                        details.as_object().cloned().unwrap_or_default(),
                    );
                }
                Decision::Undo { rate } => {
                    self.admission.set_low_factor(1.0);
                    self.record_action(
                        "undo",
                        format!("healthy again (anomalous share {:.0}%): low-priority share and stress test restored", rate * 100.0),
                        rate,
                        Default::default(),
                    );
                }
                Decision::Hold => {}
            }
        }
        let peak = self.history.peak(
            self.healer.recent_rate(),
            self.healer.is_active(),
            take_sample,
        );
        if take_sample {
            let sample = self.sample(self.history.newest_cache_totals(), peak);
            self.history.samples.push(sample);
        }
    }

    fn sample(&self, since: CacheTotals, peak: Peak) -> Sample {
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
        let cache_hit_rate = snapshot::hit_rate(dh, dt);
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

    /// The optimizer now, as `/api/ml-metrics`, `/metrics` and the dashboard show it.
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.settings;
        let onnx = self.models.view();
        let (source, reason) = model_source(s.prediction, onnx.stale);
        Snapshot {
            uptime_secs: self.uptime().as_secs(),
            model: ModelHealth {
                source,
                reason,
                onnx,
            },
            features: Features {
                performance_prediction: s.prediction,
                anomaly_detection: s.anomaly,
                caching: s.caching,
                priority: s.priority,
                telemetry: s.telemetry,
                target_latency_ms: s.target.as_millis(),
                prediction_threshold: s.prediction_threshold,
            },
            routes: self.route_views(),
            cache: Kind::ALL
                .iter()
                .map(|kind| {
                    let c = self.cache.counters(*kind);
                    let (hits, misses, refreshes) = (
                        c.hits.load(Relaxed),
                        c.misses.load(Relaxed),
                        c.refreshes.load(Relaxed),
                    );
                    CacheRoute {
                        route: kind.route(),
                        hits,
                        misses,
                        refreshes,
                        hit_rate: snapshot::hit_rate(hits, hits + misses + refreshes),
                    }
                })
                .collect(),
            cache_memory: CacheMemory {
                bytes: self.cache.weight(),
                entries: self.cache.len(),
                invalidations: self.cache.invalidations.load(Relaxed),
            },
            admission: self.admission.stats(),
            concurrency_limit: self.admission.limit(),
            anomaly: AnomalyState {
                recent_rate: self.healer.recent_rate(),
                healing: self.healer.is_active(),
                threshold: self.healer.threshold(),
                anomalous_score: ANOMALY_SCORE,
            },
            request_log: {
                let failing = self.telemetry.health.failing();
                RequestLog {
                    written: self.telemetry.written.load(Relaxed),
                    dropped: self.telemetry.dropped.load(Relaxed),
                    lost: self.telemetry.health.lost.load(Relaxed),
                    failing_since_ms: failing.as_ref().map(|f| f.0),
                    error: failing.map(|f| f.1),
                }
            },
            load_distribution: self.balancer.view(),
        }
    }

    /// The optimizer's state now, as a history sample whose cache hit rate covers the time
    /// since the last stored sample. The dashboard appends it to the stored history so its
    /// charts move between the 10-second samples.
    pub fn live_sample(&self) -> Sample {
        let peak = self
            .history
            .peak(self.healer.recent_rate(), self.healer.is_active(), false);
        self.sample(self.history.newest_cache_totals(), peak)
    }

    /// The stored history samples `keep` accepts, oldest first.
    pub fn history(&self, keep: impl Fn(&Sample) -> bool) -> Vec<Sample> {
        self.history.samples.copy_where(keep)
    }

    /// The dashboard's points from `start_ms` on: the stored samples merged into buckets of
    /// `width_ms`, at most `max_points` with the live state last.
    pub fn series(&self, start_ms: i64, width_ms: i64, max_points: usize) -> Vec<series::Point> {
        let live = self.live_sample();
        let capacity = self.history.samples.capacity();
        let mut points = self.history.samples.with(|history| {
            let full = history.len() >= capacity;
            let samples = history.make_contiguous();
            let mut first = samples.partition_point(|s| s.ts_ms < start_ms);
            // Counters start from the sample before the window. When the window reaches the
            // start of a history that retention has already trimmed, the oldest sample only
            // serves as that starting point.
            if first == 0 && full && samples.len() > 1 {
                first = 1;
            }
            let before = first.checked_sub(1).and_then(|i| samples.get(i));
            // One slot for the live point.
            let mut points =
                series::downsample(&samples[first..], before, width_ms, max_points - 1);
            points.extend(series::live_point(&live, samples.last()));
            points
        });
        points.retain(|p| p.ts_ms >= start_ms);
        points
    }

    /// The actions kept in memory that `keep` accepts, oldest first.
    pub fn actions(&self, keep: impl Fn(&Action) -> bool) -> Vec<Action> {
        self.actions.copy_where(keep)
    }

    /// The alerts kept in memory that `keep` accepts, oldest first.
    pub fn alerts(&self, keep: impl Fn(&Alert) -> bool) -> Vec<Alert> {
        self.alerts.copy_where(keep)
    }

    /// Tracked statements, slowest total first.
    pub fn queries(&self) -> Vec<QueryAggregate> {
        self.telemetry.query_aggregates()
    }

    /// The index advisor's current view.
    pub fn advice(&self) -> advice::AdviceView {
        self.advice.view()
    }

    /// Runs one index advisor pass now (after a running one) and returns the resulting view.
    pub async fn advise_now(&self) -> advice::AdviceView {
        self.advice.run(self).await
    }

    /// Where the database layer puts the parameters of slow executions for the advisor.
    pub fn captures(&self) -> Arc<capture::Captures> {
        self.advice.captures()
    }

    /// Drops the cached answers that show product `id`, which changed in a commit the primary's
    /// WAL holds by `lsn` (when known): from then on, an answer read from a replica that has not
    /// replayed it is not cached, so that no cache fill stores the row as it was before.
    pub fn invalidate_product_at(&self, id: i64, lsn: Option<balance::Lsn>) {
        if let Some(lsn) = lsn {
            self.balancer.changed_at(lsn);
        }
        self.invalidate_product(id);
    }

    /// The read balancer the application's database layer asks where a read may go.
    pub fn balancer(&self) -> Arc<balance::Balancer> {
        self.balancer.clone()
    }

    /// Drops the cached answers that show product `id` (it changed).
    pub fn invalidate_product(&self, id: i64) {
        self.cache.invalidate_product(id);
    }

    /// Trains on the server's request logs now, as `training_interval` does, and adopts the
    /// result if it predicts the most recent requests better; the status after the run, or
    /// `Ok(None)` when a run is already in progress.
    ///
    /// # Errors
    /// The training thread panicked (the trainer itself runs as a child process).
    pub async fn retrain_now(&self) -> anyhow::Result<Option<model::retrain::RetrainStatus>> {
        let _lock = match &self.background.pg {
            Some(pg) => match model::retrain::training_lock(pg).await? {
                Some(lock) => Some(lock),
                None => return Ok(None),
            },
            None => None,
        };
        let models = self.models.clone();
        let log_dir = self.background.log_dir.clone();
        Ok(tokio::task::spawn_blocking(move || model::retrain::run(&models, &log_dir)).await?)
    }

    /// Restores the model the last adopted retrain replaced ([`model::retrain::rollback`]).
    ///
    /// # Errors
    /// The rollback thread panicked.
    pub async fn rollback(&self) -> anyhow::Result<Result<String, String>> {
        let models = self.models.clone();
        Ok(tokio::task::spawn_blocking(move || model::retrain::rollback(&models)).await?)
    }

    /// Per-route view for metrics.
    fn route_views(&self) -> Vec<RouteView> {
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
                    shadow: (snap.shadowed > 0).then_some(snapshot::ShadowView {
                        requests: snap.shadowed,
                        model_mae_log: snap.model_mae_log,
                        online_mae_log: snap.online_mae_log,
                        model_p90_coverage: snap.model_coverage,
                        online_p90_coverage: snap.online_coverage,
                    }),
                })
            })
            .collect()
    }
}

/// Who answers predictions (`onnx`, `online` or `off`) and why.
fn model_source(prediction: bool, stale: Option<Stale>) -> (&'static str, &'static str) {
    match (prediction, stale) {
        (false, _) => ("off", "performance prediction is switched off"),
        (true, None) => ("onnx", "the ONNX model answers"),
        (true, Some(stale)) => ("online", stale.describe()),
    }
}
