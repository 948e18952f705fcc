//! Latency prediction: the [`Predictor`] trait and its online-statistics implementation.
//!
//! The ONNX model (a later issue) implements the same trait; the optimizer asks whichever is
//! healthy. Predictions come with a confidence that is measured, not assumed: the share of this
//! route's recent requests whose actual latency fell inside the predicted band (at or under the
//! predicted p90). A route with too little history has confidence 0.

use super::stats::Stats;
use contract::FeatureVector;
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
    /// Header and log spelling.
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
}

impl Prediction {
    /// No prediction (feature off or nothing known).
    pub const NONE: Self = Self {
        p50_ms: 0.0,
        p90_ms: 0.0,
        confidence: 0.0,
        source: Source::Off,
    };

    /// Whether there is a usable estimate.
    pub fn is_known(&self) -> bool {
        self.p50_ms > 0.0
    }
}

/// Predicts a request's latency from its features.
pub trait Predictor: Send + Sync {
    /// Predicts latency for a request on `route` with these features.
    fn predict(&self, route: usize, features: &FeatureVector) -> Prediction;
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

impl Predictor for OnlinePredictor {
    fn predict(&self, route: usize, _features: &FeatureVector) -> Prediction {
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
        #[allow(clippy::cast_possible_truncation)]
        Prediction {
            p50_ms: snap.p50_ms as f32,
            p90_ms: snap.p90_ms as f32,
            confidence: confidence as f32,
            source: Source::Online,
        }
    }
}
