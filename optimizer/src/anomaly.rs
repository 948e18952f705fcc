//! Anomaly scoring by online statistics: the fallback when no anomaly model answers.
//!
//! The online scorer is one-sided: only requests slower than the route's baseline (or failing)
//! score high; an unusually fast request is good news, not an anomaly. What the scores lead to
//! is the [`crate::healer`]'s business.

use super::stats::{RouteSnapshot, Stats};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What happened to a finished request, as the scorer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Total latency (ms).
    pub latency_ms: f64,
    /// Of it, the wait for admission (ms): the cost of load, which admission chose, not of a
    /// fault. Scores judge the rest, the time the request was being served.
    pub queue_ms: f64,
    /// HTTP status.
    pub status: u16,
    /// Shed by admission (a deliberate 503, not a fault).
    pub shed: bool,
}

impl Outcome {
    /// The time the request was being served: its latency less the wait for admission.
    pub fn service_ms(&self) -> f64 {
        (self.latency_ms - self.queue_ms).max(0.0)
    }
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
        self.judge(route, outcome).unwrap_or(0.0)
    }

    /// [`OnlineScorer::score`], or `None` while the route has too few samples for a baseline
    /// (server errors and shed requests are judged by rule all the same).
    pub fn judge(&self, route: usize, outcome: &Outcome) -> Option<f32> {
        if outcome.status >= 500 && !outcome.shed {
            return Some(1.0);
        }
        if outcome.shed {
            return Some(0.0);
        }
        let snap = self.stats.route(route).snapshot(Instant::now());
        if snap.samples < MIN_BASELINE {
            return None;
        }
        // A floor on the spread: a route with near-constant latency should not flag a request
        // that is a fraction of a millisecond slower.
        let sd = snap.ewma_log_sd.max(0.25);
        Some(z_to_score(
            (outcome.service_ms().max(0.001).ln() - snap.ewma_log_mean) / sd,
        ))
    }
}

/// The score of a finished request from the model's and the online statistics' verdicts
/// (either may be missing): a request is anomalous only when both say so. The model judges how
/// unusual the request is given everything it knows, its load features included, so a request
/// whose only oddity is its load (hundreds in flight, a rate it never saw) scores high with it;
/// the online statistics judge whether it was served slower than its route's live level, which
/// rises with load within a few hundred requests. Taking the lower of the two keeps the model's
/// knowledge (a cache miss on a route of hits is no anomaly) and asks that an anomaly be slow
/// for the load the server is under. The requests a stall held stay slow for their route when
/// they finish together: the route learns from only a few outliers past the latency target a
/// second (`stats`), while a burst's queueing within the target raises its level freely.
pub fn combine(model: Option<f32>, online: Option<f32>) -> f32 {
    match (model, online) {
        (Some(model), Some(online)) => model.min(online),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => 0.0,
    }
}

/// Feature positions the explanation reads (checked against `contract::FEATURE_NAMES` in the
/// tests).
const IN_FLIGHT: usize = 2;
const POOL_WAITING: usize = 8;

/// Why a flagged request scored as it did: how it departed from what its route leads one to
/// expect, each part with its value and the expected one, the most telling first (for example
/// `latency 48x route p50 (240 ms, expected 5.0 ms); pool waiters 31 (expected 0)`). Built only
/// for flagged requests: `x-anomaly-reason` and the alert.
pub fn explain(
    snap: &RouteSnapshot,
    features: &contract::FeatureVector,
    outcome: &Outcome,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if outcome.shed {
        parts.push(
            "shed during an incident (the served requests are anomalous or stalled)".to_owned(),
        );
    } else if outcome.status >= 500 {
        parts.push(format!(
            "server error {} (expected 2xx-4xx)",
            outcome.status
        ));
    }
    let expected = if snap.p50_ms > 0.0 {
        snap.p50_ms
    } else {
        snap.ewma_log_mean.exp()
    };
    let service = outcome.service_ms();
    if !outcome.shed && expected > 0.0 && service > expected {
        parts.push(format!(
            "latency {:.0}x route p50 ({service:.1} ms, expected {expected:.1} ms)",
            service / expected
        ));
    }
    let waiting = features[POOL_WAITING];
    if waiting >= 1.0 {
        parts.push(format!("pool waiters {waiting:.0} (expected 0)"));
    }
    if outcome.queue_ms >= 1.0 {
        parts.push(format!("waited {:.0} ms for admission", outcome.queue_ms));
    }
    if parts.is_empty() {
        parts.push(format!(
            "latency {service:.1} ms with {:.0} requests in flight",
            features[IN_FLIGHT]
        ));
    }
    parts.join("; ")
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
    /// Why ([`explain`]).
    pub reason: String,
}

pub use contract::ANOMALY_SCORE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explanation_reads_the_features_it_names() {
        assert_eq!(contract::FEATURE_NAMES[IN_FLIGHT], "in_flight");
        assert_eq!(contract::FEATURE_NAMES[POOL_WAITING], "pool_waiting");
    }

    #[test]
    fn a_stalled_request_is_explained_by_its_latency_and_the_pool() {
        let snap = RouteSnapshot {
            p50_ms: 5.0,
            ..RouteSnapshot::default()
        };
        let mut features = [0.0; contract::FEATURE_COUNT];
        features[POOL_WAITING] = 31.0;
        let outcome = Outcome {
            latency_ms: 240.0,
            queue_ms: 0.0,
            status: 200,
            shed: false,
        };
        assert_eq!(
            explain(&snap, &features, &outcome),
            "latency 48x route p50 (240.0 ms, expected 5.0 ms); pool waiters 31 (expected 0)"
        );
        let shed = Outcome {
            shed: true,
            status: 503,
            ..outcome
        };
        assert!(explain(&snap, &features, &shed).starts_with("shed during an incident"));
    }

    #[test]
    fn a_request_is_anomalous_only_when_the_model_and_its_routes_live_level_agree() {
        // Unusual only for its load: the model flags it, the route's live level does not.
        assert!(combine(Some(0.99), Some(0.10)) < ANOMALY_SCORE);
        // A cache miss on a route of hits: slow for the route, expected by the model.
        assert!(combine(Some(0.20), Some(0.99)) < ANOMALY_SCORE);
        assert!(combine(Some(0.99), Some(0.97)) >= ANOMALY_SCORE);
        // A route without a baseline yet: the model alone; no model: the online score.
        assert!(combine(Some(0.99), None) >= ANOMALY_SCORE);
        assert!(combine(None, Some(0.99)) >= ANOMALY_SCORE);
        assert!(combine(None, None) == 0.0);
    }

    #[test]
    fn scores_are_one_sided() {
        assert!(z_to_score(-5.0) == 0.0, "fast is not anomalous");
        assert!(z_to_score(0.0) == 0.0);
        assert!(z_to_score(3.0) > 0.98);
        assert!(z_to_score(1.0) < 0.5);
    }
}
