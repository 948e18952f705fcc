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
}

impl Prediction {
    /// No prediction (feature off or nothing known).
    pub const NONE: Self = Self {
        p50_ms: 0.0,
        p90_ms: 0.0,
        confidence: 0.0,
        source: Source::Off,
        stale: None,
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
        Prediction {
            p50_ms: snap.p50_ms as f32,
            p90_ms: snap.p90_ms as f32,
            confidence: confidence as f32,
            source: Source::Online,
            stale: None,
        }
    }
}
