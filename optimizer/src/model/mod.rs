//! The trained models on the request path, with the online statistics as the fallback.
//!
//! - [`onnx`]: the ONNX Runtime environment and the per-model session pools.
//! - [`load`]: loading a model folder and checking it before it may serve.
//! - [`memo`]: answers kept per cell of a model's thresholds, so a row in a cell seen before
//!   needs no ONNX Runtime call.
//! - [`retrain`]: `training_interval`, retraining on the server's own recent logs.
//!
//! [`Models`] holds the serving [`ModelSet`] behind an `ArcSwapOption`: every request reads it
//! without a lock, and the watcher swaps in a new set atomically after checking it off the
//! request path. Whether the set may answer is one atomic byte ([`Stale`] or serving), written
//! by the watcher and by the live checks (drift, inference errors). When it may not, the online
//! statistics answer and the reason shows in `x-ml-source`, in `/api/ml-metrics` and in the
//! optimizer log. A newly loaded good model serves again by itself.

pub mod load;
pub mod memo;
pub mod onnx;
pub mod retrain;

use super::anomaly::{ANOMALY_SCORE, AnomalyScorer, OnlineScorer, Outcome};
use super::predictor::{OnlinePredictor, Prediction, Predictor, Source};
use super::stats::Stats;
use crate::config::ModelsConfig;
use arc_swap::ArcSwapOption;
use contract::FeatureVector;
pub use load::ModelSet;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why the model is not answering (the online statistics are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Stale {
    /// No model folder or manifest.
    NoModel = 1,
    /// The ONNX Runtime library is missing or broken.
    NoRuntime = 2,
    /// The model was trained on another feature schema.
    Fingerprint = 3,
    /// The model is older than `models.max_age_hours`.
    Aged = 4,
    /// Its live error drifted well above its holdout error.
    Drift = 5,
    /// ONNX Runtime failed repeatedly.
    InferenceErrors = 6,
    /// The only candidate was refused (corrupt file, failed sanity check).
    Rejected = 7,
    /// Every session was busy for this one request (not a model state).
    Busy = 8,
}

const SERVING: u8 = 0;

impl Stale {
    const ALL: [Self; 8] = [
        Self::NoModel,
        Self::NoRuntime,
        Self::Fingerprint,
        Self::Aged,
        Self::Drift,
        Self::InferenceErrors,
        Self::Rejected,
        Self::Busy,
    ];

    fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| *s as u8 == code)
            .unwrap_or(Self::NoModel)
    }

    /// Stable spelling for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoModel => "no-model",
            Self::NoRuntime => "no-runtime",
            Self::Fingerprint => "fingerprint",
            Self::Aged => "aged",
            Self::Drift => "drift",
            Self::InferenceErrors => "inference-errors",
            Self::Rejected => "rejected",
            Self::Busy => "busy",
        }
    }

    /// The `x-ml-source` value when online statistics answer for this reason.
    pub fn header(self) -> &'static str {
        match self {
            Self::NoModel => "online; stale=no-model",
            Self::NoRuntime => "online; stale=no-runtime",
            Self::Fingerprint => "online; stale=fingerprint",
            Self::Aged => "online; stale=aged",
            Self::Drift => "online; stale=drift",
            Self::InferenceErrors => "online; stale=inference-errors",
            Self::Rejected => "online; stale=rejected",
            Self::Busy => "online; stale=busy",
        }
    }

    /// In words, for `/api/ml-metrics`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoModel => "no model found: online statistics answer",
            Self::NoRuntime => "ONNX Runtime is not available: online statistics answer",
            Self::Fingerprint => {
                "the model was trained on another feature schema: online statistics answer"
            }
            Self::Aged => "the model is older than models.max_age_hours: online statistics answer",
            Self::Drift => {
                "the model's live error drifted well above its holdout error: online statistics answer"
            }
            Self::InferenceErrors => "ONNX Runtime failed repeatedly: online statistics answer",
            Self::Rejected => "the only model found was refused: online statistics answer",
            Self::Busy => "every session was busy: online statistics answered",
        }
    }
}

/// Predictions per drift window: the live error is judged over this many model predictions.
const DRIFT_WINDOW: u32 = 512;
/// Consecutive inference failures after which the model is stale.
const MAX_CONSECUTIVE_ERRORS: u32 = 3;

/// Live error against holdout error, accumulated in fixed point (micro-units of ln ms) so the
/// request path needs only atomic adds. Window boundaries are approximate under concurrency (a
/// request may land in the next window), which does not matter for a ratio of sums.
#[derive(Default)]
struct Drift {
    count: AtomicU32,
    error: AtomicU64,
    reference: AtomicU64,
    /// Last completed window: live and holdout mean error (f32 bits each).
    last: AtomicU64,
}

/// Counters since start.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Predictions answered by the model.
    pub predictions: AtomicU64,
    /// Anomaly scores answered by the model.
    pub scores: AtomicU64,
    /// Requests answered by online statistics because the model was stale or absent.
    pub fallbacks: AtomicU64,
    /// Requests answered by online statistics because every session was busy.
    pub busy: AtomicU64,
    /// Inference failures.
    pub errors: AtomicU64,
    /// Models loaded (the first one included).
    pub loads: AtomicU64,
    /// Candidate models refused.
    pub rejections: AtomicU64,
}

/// What the watcher knows (a std mutex: touched by the watcher every few seconds and by metric
/// reads, never by requests).
#[derive(Default)]
struct Status {
    /// The manifest text last acted on, so an unchanged or already refused one is not reloaded.
    seen: Option<String>,
    last_rejection: Option<(i64, String)>,
    loaded_at_ms: Option<i64>,
    retrain: retrain::RetrainStatus,
}

/// The serving models, their health and the online fallback's decisions.
pub struct Models {
    current: ArcSwapOption<ModelSet>,
    state: AtomicU8,
    config: ModelsConfig,
    sessions: usize,
    drift: Drift,
    consecutive_errors: AtomicU32,
    /// Counters since start.
    pub counters: Counters,
    status: Mutex<Status>,
    /// Optimizer actions waiting for the once-a-second sampler to log them.
    events: Mutex<Vec<(&'static str, String)>>,
    /// A background training run is in progress (one at a time).
    retraining: std::sync::atomic::AtomicBool,
}

impl Models {
    /// The models named by `config`; nothing is loaded until [`Models::poll`].
    pub fn new(config: &ModelsConfig) -> Self {
        let sessions = if config.sessions == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            config.sessions
        };
        Self {
            current: ArcSwapOption::empty(),
            state: AtomicU8::new(Stale::NoModel as u8),
            config: config.clone(),
            sessions: sessions.min(16),
            drift: Drift::default(),
            consecutive_errors: AtomicU32::new(0),
            counters: Counters::default(),
            status: Mutex::new(Status::default()),
            events: Mutex::new(Vec::new()),
            retraining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelsConfig {
        &self.config
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn event(&self, action: &'static str, reason: String) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((action, reason));
    }

    /// Optimizer actions since the last call (model loaded, refused, stale, serving again).
    pub fn take_events(&self) -> Vec<(&'static str, String)> {
        std::mem::take(
            &mut *self
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether the model answers, or why not.
    pub fn stale(&self) -> Option<Stale> {
        match self.state.load(Relaxed) {
            SERVING => None,
            code => Some(Stale::from_code(code)),
        }
    }

    /// The serving set, if any (whether or not it is stale).
    pub fn current(&self) -> Option<Arc<ModelSet>> {
        self.current.load_full()
    }

    fn set_state(&self, state: Option<Stale>, why: String) {
        let code = state.map_or(SERVING, |s| s as u8);
        let old = self.state.swap(code, Relaxed);
        if old == code {
            return;
        }
        match state {
            None => self.event("model-serving", why),
            Some(s) => {
                tracing::warn!(reason = s.as_str(), %why, "model stale; online statistics answer");
                self.event("model-stale", format!("{}: {why}", s.as_str()));
            }
        }
    }

    /// The set to ask, or why not (hot path: one atomic load and an `ArcSwap` guard).
    fn serving(&self) -> Result<arc_swap::Guard<Option<Arc<ModelSet>>>, Stale> {
        let code = self.state.load(Relaxed);
        if code != SERVING {
            return Err(Stale::from_code(code));
        }
        let guard = self.current.load();
        if guard.is_none() {
            return Err(Stale::NoModel);
        }
        Ok(guard)
    }

    fn failed(&self, message: &str) -> Stale {
        self.counters.errors.fetch_add(1, Relaxed);
        let n = self.consecutive_errors.fetch_add(1, Relaxed) + 1;
        if n >= MAX_CONSECUTIVE_ERRORS {
            self.set_state(
                Some(Stale::InferenceErrors),
                format!("{n} inference failures in a row, the last: {message}"),
            );
        }
        Stale::InferenceErrors
    }

    fn succeeded(&self) {
        // Read first: writing a shared cache line on every request would cost more.
        if self.consecutive_errors.load(Relaxed) != 0 {
            self.consecutive_errors.store(0, Relaxed);
        }
    }

    /// What a run's outcome means for the model's health.
    fn ran<T>(&self, result: Result<T, onnx::RunError>) -> Result<T, Stale> {
        match result {
            Ok(answer) => {
                self.succeeded();
                Ok(answer)
            }
            Err(onnx::RunError::Busy) => {
                self.counters.busy.fetch_add(1, Relaxed);
                Err(Stale::Busy)
            }
            Err(onnx::RunError::Failed { message, first }) => {
                // A failed shared run is one failure, however many requests were in it: a
                // single bad batch must not count as several failures in a row.
                if first.swap(false, Relaxed) {
                    Err(self.failed(&message))
                } else {
                    self.counters.errors.fetch_add(1, Relaxed);
                    Err(Stale::InferenceErrors)
                }
            }
        }
    }

    /// One row through `pool`, alone or (`join`) in a run shared with concurrent requests;
    /// answered from `memo` instead when a row in the same cell ran before.
    async fn infer(
        &self,
        pool: &onnx::Pool,
        memo: Option<&memo::Memo>,
        row: &[f32],
        join: bool,
    ) -> Result<[f32; onnx::MAX_OUTPUTS], Stale> {
        let cell = memo.map(|m| (m, m.cell(row)));
        if let Some(answer) = cell.as_ref().and_then(|(m, cell)| m.get(cell)) {
            // Answered, so any streak of runtime failures is broken, as by a good run.
            self.succeeded();
            return Ok(answer);
        }
        let answer = self.ran(if join {
            pool.run_joined(row).await
        } else {
            pool.run_one(row)
        })?;
        // A non-finite answer is not kept: it goes on counting as a failure.
        if let Some((m, cell)) = cell
            && answer.iter().all(|v| v.is_finite())
        {
            m.insert(cell, answer);
        }
        Ok(answer)
    }

    /// The serving set as an owned handle (held across an `.await`).
    fn serving_set(&self) -> Result<Arc<ModelSet>, Stale> {
        self.serving()?.as_ref().cloned().ok_or(Stale::NoModel)
    }

    /// The model's latency prediction for one request, with a confidence of the route's live
    /// p90 coverage once enough predictions have been checked, else the holdout's. With `join`
    /// the row shares a run with concurrent requests ([`onnx::Pool::run_joined`]).
    ///
    /// # Errors
    /// Why the model cannot answer.
    pub async fn predict(
        &self,
        route: usize,
        features: &FeatureVector,
        stats: &Stats,
        join: bool,
    ) -> Result<Prediction, Stale> {
        let set = self.serving_set()?;
        let out = self
            .infer(&set.latency, set.latency_memo.as_ref().ok(), features, join)
            .await?;
        let (p50, p90) = (out[0].exp(), out[0].max(out[1]).exp());
        if !(p50.is_finite() && p90.is_finite()) {
            return Err(self.failed("non-finite prediction"));
        }
        let route = route.min(set.calibration.len() - 1);
        let snap = stats.route(route).snapshot(Instant::now());
        let confidence = if snap.predicted >= 20 {
            snap.coverage as f32
        } else {
            set.calibration[route]
        };
        self.counters.predictions.fetch_add(1, Relaxed);
        Ok(Prediction {
            p50_ms: p50,
            p90_ms: p90,
            confidence,
            source: Source::Onnx,
            stale: None,
        })
    }

    /// The model's anomaly score for a finished request, rescaled so that the manifest's
    /// threshold lands on the server's [`ANOMALY_SCORE`] (linear on each side of it, so the
    /// order of scores is kept). Server errors score 1 and shed requests 0 by rule, as online.
    /// `join` as for [`Models::predict`].
    ///
    /// # Errors
    /// Why the model cannot answer.
    pub async fn score(
        &self,
        features: &FeatureVector,
        outcome: &Outcome,
        join: bool,
    ) -> Result<f32, Stale> {
        if outcome.shed {
            return Ok(0.0);
        }
        if outcome.status >= 500 {
            return Ok(1.0);
        }
        let set = self.serving_set()?;
        let input = contract::anomaly_input(features, outcome.latency_ms as f32, outcome.status);
        let log_score = self
            .infer(&set.anomaly, set.anomaly_memo.as_ref().ok(), &input, join)
            .await?;
        let score = log_score[0].exp();
        if !score.is_finite() {
            return Err(self.failed("non-finite anomaly score"));
        }
        self.counters.scores.fetch_add(1, Relaxed);
        Ok(rescale(score.min(1.0), set.threshold))
    }

    /// Records a finished request's actual latency against the model's prediction, and marks
    /// the model stale when its error over the last window is well above its holdout error.
    pub fn observe(&self, route: usize, prediction: &Prediction, latency_ms: f64) {
        let factor = self.config.drift_factor;
        if prediction.source != Source::Onnx || factor == 0.0 || prediction.p50_ms <= 0.0 {
            return;
        }
        let set = self.current.load();
        let Some(set) = set.as_ref() else { return };
        let reference = f64::from(set.holdout_mae[route.min(set.holdout_mae.len() - 1)]);
        let error = (latency_ms.max(0.001).ln() - f64::from(prediction.p50_ms).ln()).abs();
        {
            self.drift
                .error
                .fetch_add((error.min(100.0) * 1e6) as u64, Relaxed);
            self.drift
                .reference
                .fetch_add((reference * 1e6) as u64, Relaxed);
        }
        if self.drift.count.fetch_add(1, Relaxed) + 1 < DRIFT_WINDOW {
            return;
        }
        self.drift.count.store(0, Relaxed);
        let (live, holdout) = (
            self.drift.error.swap(0, Relaxed) as f64 / 1e6 / f64::from(DRIFT_WINDOW),
            self.drift.reference.swap(0, Relaxed) as f64 / 1e6 / f64::from(DRIFT_WINDOW),
        );
        let packed =
            (u64::from((live as f32).to_bits()) << 32) | u64::from((holdout as f32).to_bits());
        self.drift.last.store(packed, Relaxed);
        if live > factor * holdout {
            self.set_state(
                Some(Stale::Drift),
                format!(
                    "mean |ln error| {live:.2} over the last {DRIFT_WINDOW} predictions, more than {factor} x the holdout's {holdout:.2}"
                ),
            );
        }
    }

    /// Checks the manifest and the serving model's age (blocking: reads files and may load a
    /// model; the watcher runs it on a blocking thread).
    pub fn poll(&self) {
        let dir = self.config.dir.clone();
        let text = std::fs::read_to_string(dir.join(contract::manifest::MANIFEST_FILE)).ok();
        let changed = {
            let mut status = self.status();
            let changed = text != status.seen;
            status.seen.clone_from(&text);
            changed
        };
        if changed {
            match text {
                Some(_) => self.load(&dir),
                None => {
                    if self.current.load().is_none() {
                        self.set_state(
                            Some(Stale::NoModel),
                            format!("no manifest in {}", dir.display()),
                        );
                    }
                }
            }
        }
        self.check_age();
    }

    fn load(&self, dir: &std::path::Path) {
        let runtime = onnx::runtime(self.config.ort_library.as_deref());
        if let Err(e) = &runtime {
            tracing::warn!(error = %e, "ONNX Runtime unavailable; online statistics answer");
        }
        let started = Instant::now();
        match load::load(dir, runtime, self.sessions, self.config.memo_cells) {
            Ok(set) => {
                let version = set.manifest.version;
                let trained = set.manifest.trained_at.clone();
                self.current.store(Some(Arc::new(set)));
                self.drift.count.store(0, Relaxed);
                self.drift.error.store(0, Relaxed);
                self.drift.reference.store(0, Relaxed);
                self.consecutive_errors.store(0, Relaxed);
                self.counters.loads.fetch_add(1, Relaxed);
                self.status().loaded_at_ms = Some(super::unix_ms());
                tracing::info!(version, "model loaded");
                self.event(
                    "model-loaded",
                    format!(
                        "version {version} (trained {trained}) from {} checked and swapped in ({} ms)",
                        dir.display(),
                        started.elapsed().as_millis()
                    ),
                );
                self.set_state(None, format!("version {version} serving"));
            }
            Err(e) => {
                self.counters.rejections.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "model refused; the previous one (if any) keeps serving");
                self.status().last_rejection = Some((super::unix_ms(), e.to_string()));
                let keeps = self.current.load().is_some();
                self.event(
                    "model-rejected",
                    format!(
                        "{}: {e}; {}",
                        dir.display(),
                        if keeps {
                            "the previous model keeps serving"
                        } else {
                            "online statistics answer"
                        }
                    ),
                );
                if !keeps {
                    self.set_state(Some(e.reason()), e.to_string());
                }
            }
        }
    }

    fn check_age(&self) {
        let Some(set) = self.current.load_full() else {
            return;
        };
        let max = self.config.max_age_hours;
        let age_hours = (super::unix_ms() as f64 - set.manifest.version as f64) / 3_600_000.0;
        let aged = max > 0.0 && age_hours > max;
        match self.stale() {
            None if aged => self.set_state(
                Some(Stale::Aged),
                format!(
                    "version {} is {age_hours:.2} h old, the limit is {max} h",
                    set.manifest.version
                ),
            ),
            Some(Stale::Aged) if !aged => {
                self.set_state(None, format!("version {} serving", set.manifest.version));
            }
            _ => {}
        }
    }

    /// Starts the watcher: polls the manifest every `reload_interval_ms`, and retrains every
    /// `training_interval` minutes when that is set.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        training_interval_minutes: u64,
        log_dir: PathBuf,
    ) -> tokio::task::JoinHandle<()> {
        let models = self.clone();
        tokio::spawn(async move {
            let period = std::time::Duration::from_millis(models.config.reload_interval_ms);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let training = (training_interval_minutes > 0)
                .then(|| std::time::Duration::from_secs(training_interval_minutes * 60));
            let mut last_training = Instant::now();
            loop {
                tick.tick().await;
                let polled = models.clone();
                let _ = tokio::task::spawn_blocking(move || polled.poll()).await;
                if let Some(every) = training
                    && last_training.elapsed() >= every
                    && !models.retraining.load(Relaxed)
                {
                    last_training = Instant::now();
                    let (m, logs) = (models.clone(), log_dir.clone());
                    // In the background, bounded by training_timeout_secs; `retrain::run`
                    // refuses to start a second run beside an admin-triggered one.
                    drop(tokio::task::spawn_blocking(move || retrain::run(&m, &logs)));
                }
            }
        })
    }

    /// The model's state for `/api/ml-metrics`.
    pub fn view(&self) -> ModelView {
        let set = self.current.load_full();
        let status = self.status();
        let last = self.drift.last.load(Relaxed);
        let (live, holdout) = (
            f32::from_bits((last >> 32) as u32),
            f32::from_bits(last as u32),
        );
        ModelView {
            stale: self.stale(),
            dir: self.config.dir.display().to_string(),
            version: set.as_ref().map(|s| s.manifest.version),
            trained_at: set.as_ref().map(|s| s.manifest.trained_at.clone()),
            loaded_at_ms: status.loaded_at_ms,
            holdout_mae_log: set.as_ref().map(|s| s.manifest.latency_holdout.mae_log),
            holdout_p90_coverage: set
                .as_ref()
                .map(|s| s.manifest.latency_holdout.p90_coverage),
            anomaly_threshold: set.as_ref().map(|s| s.manifest.anomaly_threshold),
            sessions: self.sessions,
            live_mae_log: (last != 0).then_some(live),
            live_reference_mae_log: (last != 0).then_some(holdout),
            drift_factor: self.config.drift_factor,
            max_age_hours: self.config.max_age_hours,
            predictions: self.counters.predictions.load(Relaxed),
            scores: self.counters.scores.load(Relaxed),
            runtime_calls: set.as_ref().map(|s| (s.latency.calls(), s.anomaly.calls())),
            memo: set.as_ref().map(|s| {
                let view = |m: &Result<memo::Memo, String>| match m {
                    Ok(m) => MemoState::On(m.view()),
                    Err(why) => MemoState::Off { off: why.clone() },
                };
                (view(&s.latency_memo), view(&s.anomaly_memo))
            }),
            fallbacks: self.counters.fallbacks.load(Relaxed),
            busy: self.counters.busy.load(Relaxed),
            errors: self.counters.errors.load(Relaxed),
            loads: self.counters.loads.load(Relaxed),
            rejections: self.counters.rejections.load(Relaxed),
            last_rejection: status
                .last_rejection
                .as_ref()
                .map(|(ts, m)| serde_json::json!({ "tsMs": ts, "reason": m })),
            retrain: status.retrain.clone(),
        }
    }

    /// What background training has done so far.
    pub fn retrain_status(&self) -> retrain::RetrainStatus {
        self.status().retrain.clone()
    }

    pub(crate) fn set_retrain(&self, update: impl FnOnce(&mut retrain::RetrainStatus)) {
        update(&mut self.status().retrain);
    }

    pub(crate) fn note(&self, action: &'static str, reason: String) {
        self.event(action, reason);
    }
}

/// Maps a model score in 0-1 so that `threshold` becomes [`ANOMALY_SCORE`], linearly below and
/// above it.
pub fn rescale(score: f32, threshold: f32) -> f32 {
    let score = score.clamp(0.0, 1.0);
    if score < threshold {
        score / threshold * ANOMALY_SCORE
    } else {
        ANOMALY_SCORE + (score - threshold) / (1.0 - threshold) * (1.0 - ANOMALY_SCORE)
    }
}

/// A model's memo in `/api/ml-metrics`: its counters, or why answers are not kept.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum MemoState {
    /// Kept.
    On(memo::MemoView),
    /// Not kept, and why.
    Off {
        /// The reason.
        off: String,
    },
}

/// The model's state as `/api/ml-metrics` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    /// Why the model is not answering; absent while it serves.
    pub stale: Option<Stale>,
    /// The watched folder.
    pub dir: String,
    /// Version of the loaded model (ms since the epoch when it was trained).
    pub version: Option<u64>,
    /// When it was trained.
    pub trained_at: Option<String>,
    /// When it was loaded (Unix ms).
    pub loaded_at_ms: Option<i64>,
    /// Holdout MAE of ln latency, from its manifest.
    pub holdout_mae_log: Option<f64>,
    /// Holdout p90 coverage, from its manifest.
    pub holdout_p90_coverage: Option<f64>,
    /// Raw model score counted anomalous (rescaled to the server's 0.95).
    pub anomaly_threshold: Option<f64>,
    /// Sessions per model.
    pub sessions: usize,
    /// Mean |ln error| of the model over the last drift window.
    pub live_mae_log: Option<f32>,
    /// The holdout error of the same requests' routes.
    pub live_reference_mae_log: Option<f32>,
    /// Drift factor.
    pub drift_factor: f64,
    /// Age limit (hours, 0 none).
    pub max_age_hours: f64,
    /// Predictions by the model.
    pub predictions: u64,
    /// Anomaly scores by the model.
    pub scores: u64,
    /// ONNX Runtime calls the serving models made since they were loaded, latency and anomaly
    /// (probe checks included); fewer than predictions and scores when concurrent requests
    /// shared calls.
    pub runtime_calls: Option<(u64, u64)>,
    /// Latency and anomaly model: answers kept per cell of the model's thresholds, and how
    /// many rows they answered without an ONNX Runtime call ([`memo`]).
    pub memo: Option<(MemoState, MemoState)>,
    /// Requests the online statistics answered instead.
    pub fallbacks: u64,
    /// Of those, because every session was busy.
    pub busy: u64,
    /// Inference failures.
    pub errors: u64,
    /// Models loaded.
    pub loads: u64,
    /// Candidates refused.
    pub rejections: u64,
    /// The latest refusal.
    pub last_rejection: Option<serde_json::Value>,
    /// Background retraining.
    pub retrain: retrain::RetrainStatus,
}

/// Predicts with the model, or with online statistics when it is stale or absent.
pub struct ModelPredictor {
    models: Arc<Models>,
    online: OnlinePredictor,
    stats: Arc<Stats>,
}

impl ModelPredictor {
    /// A predictor asking `models` first.
    pub fn new(models: Arc<Models>, stats: Arc<Stats>) -> Self {
        Self {
            models,
            online: OnlinePredictor::new(stats.clone()),
            stats,
        }
    }

    /// The model's prediction, else the online one with the reason; `join` as for
    /// [`Models::predict`].
    pub async fn predict(&self, route: usize, features: &FeatureVector, join: bool) -> Prediction {
        match self
            .models
            .predict(route, features, &self.stats, join)
            .await
        {
            Ok(prediction) => prediction,
            Err(stale) => {
                if stale != Stale::Busy {
                    self.models.counters.fallbacks.fetch_add(1, Relaxed);
                }
                Prediction {
                    stale: Some(stale),
                    ..self.online.predict(route, features)
                }
            }
        }
    }
}

/// Scores with the model, or with online statistics when it is stale or absent.
pub struct ModelScorer {
    models: Arc<Models>,
    online: OnlineScorer,
}

impl ModelScorer {
    /// A scorer asking `models` first.
    pub fn new(models: Arc<Models>, stats: Arc<Stats>) -> Self {
        Self {
            models,
            online: OnlineScorer::new(stats),
        }
    }

    /// The model's score, else the online one; `join` as for [`Models::predict`].
    pub async fn score(
        &self,
        route: usize,
        features: &FeatureVector,
        outcome: &Outcome,
        join: bool,
    ) -> f32 {
        match self.models.score(features, outcome, join).await {
            Ok(score) => score,
            Err(_) => self.online.score(route, features, outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn rescaling_puts_the_threshold_on_the_servers_anomaly_score() {
        assert!((rescale(0.7, 0.7) - ANOMALY_SCORE).abs() < 1e-6);
        assert!(rescale(0.69, 0.7) < ANOMALY_SCORE);
        assert!(rescale(0.71, 0.7) > ANOMALY_SCORE);
        assert!((rescale(1.0, 0.7) - 1.0).abs() < 1e-6);
        assert!(rescale(0.0, 0.7).abs() < 1e-6);
    }

    #[test]
    fn reasons_round_trip_through_their_code() {
        for s in Stale::ALL {
            assert_eq!(Stale::from_code(s as u8), s);
            assert!(s.header().ends_with(s.as_str()));
        }
    }

    #[test]
    fn a_missing_folder_leaves_no_model_and_online_answers() {
        let config = ModelsConfig {
            dir: "/nonexistent/models".into(),
            ..ModelsConfig::default()
        };
        let models = Models::new(&config);
        models.poll();
        assert_eq!(models.stale(), Some(Stale::NoModel));
        let stats = Stats::default();
        assert_eq!(
            models
                .predict(1, &[0.0; contract::FEATURE_COUNT], &stats, false)
                .now_or_never()
                .expect("answers without waiting"),
            Err(Stale::NoModel)
        );
    }
}
