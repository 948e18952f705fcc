//! The model's health: why it may not answer ([`Stale`]), the live drift check against the
//! online statistics on the same requests, inference error streaks, and the view
//! `/api/ml-metrics` shows.
//!
//! Whether the set may answer is one atomic byte, written by the watcher and by these live
//! checks; the request path reads it with one load.

use super::{Models, memo, onnx, retrain};
use crate::predictor::Prediction;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

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
    /// Its live error is worse than the online statistics' on the same requests.
    Drift = 5,
    /// ONNX Runtime failed repeatedly.
    InferenceErrors = 6,
    /// The only candidate was refused (corrupt file, failed sanity check).
    Rejected = 7,
    /// Every session was busy for this one request (not a model state).
    Busy = 8,
}

pub(super) const SERVING: u8 = 0;

impl Stale {
    pub(super) const ALL: [Self; 8] = [
        Self::NoModel,
        Self::NoRuntime,
        Self::Fingerprint,
        Self::Aged,
        Self::Drift,
        Self::InferenceErrors,
        Self::Rejected,
        Self::Busy,
    ];

    pub(super) fn from_code(code: u8) -> Self {
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
                "the model's live error is worse than the online statistics' on the same requests: online statistics answer (the model keeps predicting in their shadow and serves again once it is better)"
            }
            Self::InferenceErrors => "ONNX Runtime failed repeatedly: online statistics answer",
            Self::Rejected => "the only model found was refused: online statistics answer",
            Self::Busy => "every session was busy: online statistics answered",
        }
    }
}

/// Fewest requests per drift window: the model's live error is judged against the online
/// statistics' over at least this many requests that both predicted (and at least
/// `drift_min_secs`).
const DRIFT_WINDOW: u32 = 512;
/// Consecutive inference failures after which the model is stale.
const MAX_CONSECUTIVE_ERRORS: u32 = 3;

/// The shadow evaluation: the model's and the online statistics' errors of ln latency on the
/// same requests, accumulated in fixed point (micro-units of ln ms) so the request path needs
/// only atomic adds. Window boundaries are approximate under concurrency (a request may land in
/// the next window), which does not matter for a ratio of sums.
#[derive(Default)]
pub(super) struct Drift {
    count: AtomicU32,
    /// When the current window began (Unix ms; 0 before its first request).
    started_ms: AtomicU64,
    model: AtomicU64,
    online: AtomicU64,
    /// Last completed window: the model's and the online mean error (f32 bits each).
    last: AtomicU64,
}

impl Drift {
    /// Starts a new window (a new model is judged on its own predictions only).
    pub(super) fn reset(&self) {
        self.count.store(0, Relaxed);
        self.started_ms.store(0, Relaxed);
        self.model.store(0, Relaxed);
        self.online.store(0, Relaxed);
        self.last.store(0, Relaxed);
    }

    /// The last completed window's mean errors, model and online.
    fn last(&self) -> Option<(f32, f32)> {
        let last = self.last.load(Relaxed);
        (last != 0).then(|| {
            (
                f32::from_bits((last >> 32) as u32),
                f32::from_bits(last as u32),
            )
        })
    }
}

/// |ln actual - ln predicted| in micro-units, capped.
fn micro_error(latency_ms: f64, predicted_ms: f32) -> u64 {
    let error = (latency_ms.max(0.001).ln() - f64::from(predicted_ms).ln()).abs();
    (error.min(100.0) * 1e6) as u64
}

impl Models {
    /// Whether the model answers, or why not.
    pub fn stale(&self) -> Option<Stale> {
        match self.state.load(Relaxed) {
            SERVING => None,
            code => Some(Stale::from_code(code)),
        }
    }

    pub(super) fn set_state(&self, state: Option<Stale>, why: String) {
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

    pub(super) fn failed(&self, message: &str) -> Stale {
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

    pub(super) fn succeeded(&self) {
        // Read first: writing a shared cache line on every request would cost more.
        if self.consecutive_errors.load(Relaxed) != 0 {
            self.consecutive_errors.store(0, Relaxed);
        }
    }

    /// What a run's outcome means for the model's health.
    pub(super) fn ran<T>(&self, result: Result<T, onnx::RunError>) -> Result<T, Stale> {
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

    /// Records a finished request's actual latency against what the model and the online
    /// statistics predicted for it (whichever answered). Over each window of requests both
    /// predicted, the model is retired for drift when its mean error of ln latency is above
    /// `drift_factor` x the online statistics', and serves again when it is below theirs
    /// divided by the same factor (hysteresis, so it does not flap).
    pub fn observe(&self, prediction: &Prediction, latency_ms: f64) {
        self.observe_at(prediction, latency_ms, crate::unix_ms());
    }

    /// [`Models::observe`] at `now_ms` (Unix ms): a window closes once it holds 512 requests
    /// and has lasted `drift_min_secs`.
    pub fn observe_at(&self, prediction: &Prediction, latency_ms: f64, now_ms: i64) {
        let factor = self.config.drift_factor;
        let [model, _] = prediction.model_ms;
        let [online, _] = prediction.online_ms;
        if factor == 0.0 || model <= 0.0 || online <= 0.0 {
            return;
        }
        let now = u64::try_from(now_ms).unwrap_or(0).max(1);
        // A plain load on the request path; the compare-exchange only opens a window.
        let started = match self.drift.started_ms.load(Relaxed) {
            0 => match self
                .drift
                .started_ms
                .compare_exchange(0, now, Relaxed, Relaxed)
            {
                Ok(_) => now,
                Err(started) => started,
            },
            started => started,
        };
        self.drift
            .model
            .fetch_add(micro_error(latency_ms, model), Relaxed);
        self.drift
            .online
            .fetch_add(micro_error(latency_ms, online), Relaxed);
        if self.drift.count.fetch_add(1, Relaxed) + 1 < DRIFT_WINDOW {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let lasted_secs = now.saturating_sub(started) as f64 / 1000.0;
        if lasted_secs < self.config.drift_min_secs {
            return;
        }
        // One request closes the window: the one that moves its start on (always forward, so
        // that two requests in the same millisecond cannot both close it).
        if self
            .drift
            .started_ms
            .compare_exchange(started, now.max(started + 1), Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let count = self.drift.count.swap(0, Relaxed).max(1);
        let (model, online) = (
            self.drift.model.swap(0, Relaxed) as f64 / 1e6 / f64::from(count),
            self.drift.online.swap(0, Relaxed) as f64 / 1e6 / f64::from(count),
        );
        let packed =
            (u64::from((model as f32).to_bits()) << 32) | u64::from((online as f32).to_bits());
        self.drift.last.store(packed.max(1), Relaxed);
        let figures = format!(
            "mean |ln error| {model:.3} against the online statistics' {online:.3} on the last {count} requests ({lasted_secs:.1} s)"
        );
        match self.stale() {
            None if model > factor * online => self.set_state(
                Some(Stale::Drift),
                format!("{figures}, more than {factor} x theirs"),
            ),
            Some(Stale::Drift) if model * factor < online => self.set_state(
                None,
                format!("better than the online statistics again: {figures}"),
            ),
            _ => {}
        }
    }

    /// The model's state for `/api/ml-metrics`.
    pub fn view(&self) -> ModelView {
        let set = self.current.load_full();
        let status = self.status();
        let last = self.drift.last();
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
            live_mae_log: last.map(|l| l.0),
            live_online_mae_log: last.map(|l| l.1),
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
    /// Mean |ln error| of the model over the last drift window (also while it is retired: it
    /// keeps predicting in the online statistics' shadow).
    pub live_mae_log: Option<f32>,
    /// The online statistics' mean |ln error| on the same requests.
    pub live_online_mae_log: Option<f32>,
    /// Drift factor: retired above this multiple of the online error, serving again below it
    /// divided by the factor.
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
    /// Requests online statistics answered because every session was busy (not among the
    /// fallbacks).
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
