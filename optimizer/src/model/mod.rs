//! The trained models on the request path, with the online statistics as the fallback.
//!
//! - [`health`]: why the model may not answer ([`Stale`]), drift and error streaks, its view.
//! - [`watch`]: the watcher: manifest polling, loading, age checks, `training_interval`.
//! - [`ledger`]: when this server first served each version (the start of its age).
//! - [`load`]: loading a model folder and checking it before it may serve.
//! - [`fallback`]: predictions from the model first, online statistics otherwise; scores from both.
//! - [`onnx`]: the ONNX Runtime environment and the per-model session pools.
//! - [`memo`]: answers kept per cell of a model's thresholds, so a row in a cell seen before
//!   needs no ONNX Runtime call.
//! - [`retrain`]: retraining on the server's own recent logs.
//!
//! [`Models`] holds the serving [`ModelSet`] behind an `ArcSwapOption`: every request reads it
//! without a lock, and the watcher swaps in a new set atomically after checking it off the
//! request path. Whether the set may answer is one atomic byte ([`Stale`] or serving), written
//! by the watcher and by the live checks (drift, inference errors). When it may not, the online
//! statistics answer and the reason shows in `x-ml-source`, in `/api/ml-metrics` and in the
//! optimizer log. A newly loaded good model serves again by itself.

pub mod fallback;
pub mod health;
pub mod ledger;
pub mod load;
pub mod memo;
pub mod onnx;
pub mod retrain;
pub mod watch;

use crate::anomaly::{ANOMALY_SCORE, Outcome};
use crate::config::ModelsConfig;
use crate::predictor::{Prediction, Source};
use crate::stats::Stats;
use arc_swap::ArcSwapOption;
use contract::FeatureVector;
pub use fallback::{ModelPredictor, ModelScorer};
use health::{Drift, SERVING};
pub use health::{MemoState, ModelView, Stale};
pub use load::ModelSet;
use serde::Serialize;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// First-served times per version (where a model's age counts from), opened with the
    /// first load.
    ledger: Option<ledger::Ledger>,
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

    /// The serving set, if any (whether or not it is stale).
    pub fn current(&self) -> Option<Arc<ModelSet>> {
        self.current.load_full()
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

    /// The set to predict with: the serving one, or the one retired for drift, which keeps
    /// predicting in the shadow of the online statistics ([`Models::observe`]).
    fn predicting_set(&self) -> Result<(Arc<ModelSet>, Option<Stale>), Stale> {
        match self.serving_set() {
            Ok(set) => Ok((set, None)),
            Err(Stale::Drift) => self
                .current
                .load_full()
                .map(|set| (set, Some(Stale::Drift)))
                .ok_or(Stale::NoModel),
            Err(stale) => Err(stale),
        }
    }

    /// The model's latency prediction for one request, with a confidence of the route's live
    /// p90 coverage once enough predictions have been checked, else the holdout's. With `join`
    /// the row shares a run with concurrent requests ([`onnx::Pool::run_joined`]). A model
    /// retired for drift still predicts, with `stale` set: the caller serves the online
    /// statistics and keeps the model's answer as the shadow.
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
        let (set, stale) = self.predicting_set()?;
        let out = self
            .infer(&set.latency, set.latency_memo.as_ref().ok(), features, join)
            .await?;
        let [lo, hi] = set.log_latency([out[0], out[1]], features);
        let (p50, p90) = (lo.exp(), lo.max(hi).exp());
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
        if stale.is_none() {
            self.counters.predictions.fetch_add(1, Relaxed);
        }
        Ok(Prediction {
            p50_ms: p50,
            p90_ms: p90,
            confidence,
            source: Source::Onnx,
            stale,
            model_ms: [p50, p90],
            online_ms: [0.0; 2],
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
        let input = contract::anomaly_input(features, outcome.service_ms() as f32, outcome.status);
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
