//! Anomaly scoring by online statistics: the fallback when no anomaly model answers.
//!
//! The online scorer is one-sided: only requests slower than the route's baseline (or failing)
//! score high; an unusually fast request is good news, not an anomaly. What the scores lead to
//! is the [`crate::healer`]'s business.

use super::stats::Stats;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What happened to a finished request, as the scorer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Total latency (ms).
    pub latency_ms: f64,
    /// HTTP status.
    pub status: u16,
    /// Shed by admission (a deliberate 503, not a fault).
    pub shed: bool,
}

/// Scores latency against the route's EWMA baseline of ln(latency).
pub struct OnlineScorer {
    stats: Arc<Stats>,
}

impl OnlineScorer {
    /// A scorer over these statistics.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self { stats }
    }
}

/// Samples a route needs before its baseline means anything.
const MIN_BASELINE: u64 = 30;

/// Score for a one-sided z-score: 0 at or below the mean, 0.39 at 1 sd, 0.86 at 2 sd, 0.99 at 3.
pub fn z_to_score(z: f64) -> f32 {
    let z = z.max(0.0);
    (1.0 - (-z * z / 2.0).exp()) as f32
}

impl OnlineScorer {
    /// Rates a finished request on `route` from 0 (normal) to 1 (certainly anomalous).
    pub fn score(&self, route: usize, outcome: &Outcome) -> f32 {
        if outcome.status >= 500 && !outcome.shed {
            return 1.0;
        }
        if outcome.shed {
            return 0.0;
        }
        let snap = self.stats.route(route).snapshot(Instant::now());
        if snap.samples < MIN_BASELINE {
            return 0.0;
        }
        // A floor on the spread: a route with near-constant latency should not flag a request
        // that is a fraction of a millisecond slower.
        let sd = snap.ewma_log_sd.max(0.25);
        z_to_score((outcome.latency_ms.max(0.001).ln() - snap.ewma_log_mean) / sd)
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

/// Score at or above which a request counts as anomalous.
pub const ANOMALY_SCORE: f32 = 0.95;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_one_sided() {
        assert!(z_to_score(-5.0) == 0.0, "fast is not anomalous");
        assert!(z_to_score(0.0) == 0.0);
        assert!(z_to_score(3.0) > 0.98);
        assert!(z_to_score(1.0) < 0.5);
    }
}
