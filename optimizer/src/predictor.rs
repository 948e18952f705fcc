//! Latency prediction by online statistics: the [`Prediction`] every request carries, and the
//! [`OnlinePredictor`] that answers whenever the model should not be trusted
//! ([`crate::model::fallback`] asks the model first).
//!
//! Predictions come with a confidence that is measured, not assumed: the share of this route's
//! recent requests whose actual latency fell inside the predicted band (at or under the
//! predicted p90). A route with too little history has confidence 0.

use super::model::Stale;
use super::stats::Stats;
use std::sync::Arc;
use std::time::Instant;

/// Where a prediction came from (the `x-ml-source` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A loaded ONNX model.
    Onnx,
    /// Online statistics.
    Online,
    /// Prediction is switched off.
    Off,
}

impl Source {
    /// Log spelling (the header adds the stale reason, see [`Prediction::header`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Online => "online",
            Self::Off => "off",
        }
    }
}

/// A latency prediction for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted median latency (ms); 0 when unknown.
    pub p50_ms: f32,
    /// Predicted 90th percentile latency (ms); 0 when unknown.
    pub p90_ms: f32,
    /// Measured probability (0-1) that the latency lands at or under `p90_ms`.
    pub confidence: f32,
    /// Who predicted.
    pub source: Source,
    /// Why the model did not answer, when online statistics did in its place.
    pub stale: Option<Stale>,
    /// The model's own p50 and p90 (ms) for this request, whether or not it answered (the
    /// shadow evaluation: a model retired for drift keeps predicting beside the online
    /// statistics, so it can earn its place back); 0 when it could not run.
    pub model_ms: [f32; 2],
    /// The online statistics' p50 and p90 (ms) for this request, computed beside the model on
    /// every request; 0 when unknown.
    pub online_ms: [f32; 2],
}

impl Prediction {
    /// No prediction (feature off or nothing known).
    pub const NONE: Self = Self {
        p50_ms: 0.0,
        p90_ms: 0.0,
        confidence: 0.0,
        source: Source::Off,
        stale: None,
        model_ms: [0.0; 2],
        online_ms: [0.0; 2],
    };

    /// The `x-ml-source` value: `onnx`, `off`, `online`, or `online; stale=<reason>` when the
    /// online statistics answered because the model could not.
    pub fn header(&self) -> &'static str {
        match (self.source, self.stale) {
            (Source::Online, Some(stale)) => stale.header(),
            (source, _) => source.as_str(),
        }
    }

    /// Whether there is a usable estimate.
    pub fn is_known(&self) -> bool {
        self.p50_ms > 0.0
    }
}

/// Requests a route must have had predicted (in the windows) before its confidence is trusted.
const MIN_CALIBRATION: u32 = 20;

/// Predicts from each route's streaming quantiles.
pub struct OnlinePredictor {
    stats: Arc<Stats>,
}

impl OnlinePredictor {
    /// A predictor over these statistics.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self { stats }
    }
}

impl OnlinePredictor {
    /// The latency of a request on `route`, from the route's streaming quantiles.
    pub fn predict(&self, route: usize) -> Prediction {
        let snap = self.stats.route(route).snapshot(Instant::now());
        if snap.samples == 0 {
            return Prediction {
                source: Source::Online,
                ..Prediction::NONE
            };
        }
        let confidence = if snap.predicted >= MIN_CALIBRATION {
            snap.coverage
        } else {
            0.0
        };
        let (p50, p90) = (snap.p50_ms as f32, snap.p90_ms as f32);
        Prediction {
            p50_ms: p50,
            p90_ms: p90,
            confidence: confidence as f32,
            source: Source::Online,
            stale: None,
            model_ms: [0.0; 2],
            online_ms: [p50, p90],
        }
    }
}
