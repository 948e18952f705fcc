//! The feature vector: the one definition of what a model sees for a request.
//!
//! The server fills a [`FeatureVector`] from the request and its live state, logs the exact
//! array it used, and the trainer learns from those logged arrays. [`SCHEMA_FINGERPRINT`] hashes
//! the names, their order and the route list; a model carrying another fingerprint is refused.

use crate::routes::ROUTES;

/// Number of features.
pub const FEATURE_COUNT: usize = 17;

/// Feature names in vector order.
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = [
    "route",             // index into ROUTES
    "priority",          // 0 critical, 1 high, 2 normal, 3 low
    "in_flight",         // requests in flight when this one arrived
    "route_in_flight",   // of them, on the same route
    "route_ewma_log_ms", // route's recent mean of ln(latency ms)
    "route_p90_ms",      // route's recent 90th percentile latency
    "request_rate",      // requests per second, all routes, recent
    "route_rate",        // requests per second on this route, recent
    "pool_waiting",      // requests waiting for a database connection
    "pool_available",    // idle database connections
    "hour_of_day",       // 0-23 UTC
    "page_limit",        // requested page size (0 if none)
    "page_depth",        // requested page number (0 if none)
    "complexity",        // stress-test complexity (0 elsewhere)
    "body_bytes",        // request body size from Content-Length
    "authenticated",     // 1 if a bearer token was sent
    "cached",            // 1 if a fresh cached response exists for it (cacheable reads only)
];

/// Number of inputs of the anomaly model: the features, then the request's outcome.
pub const ANOMALY_INPUT_COUNT: usize = FEATURE_COUNT + 3;

/// Names of the outcome inputs appended to the features for the anomaly model.
pub const OUTCOME_NAMES: [&str; 3] = [
    "log_latency_ms",     // ln(total latency ms)
    "log_latency_excess", // ln(latency) minus the route's recent mean of ln(latency)
    "status_class",       // HTTP status / 100 (2 success, 4 client error, 5 server error)
];

/// Score at or above which a request counts as anomalous: the server flags and heals on it
/// (`x-anomaly-score`), and the trainer's evaluation counts flagged requests with it.
pub const ANOMALY_SCORE: f32 = 0.95;

/// The anomaly model's input: a request's features followed by its outcome.
pub type AnomalyInput = [f32; ANOMALY_INPUT_COUNT];

/// Builds the anomaly model's input from the logged features and the request's outcome, the one
/// definition both the server (scoring live) and the trainer (fitting on logs) use. The latency
/// both pass is the time the request was being served: its latency less its wait for admission
/// (`queue_ms`), so that queueing admission chose under load is not scored as a fault (the
/// input keeps its name, `log_latency_ms`, so that earlier logs stay readable).
pub fn anomaly_input(features: &FeatureVector, latency_ms: f32, status: u16) -> AnomalyInput {
    let mut input = [0.0; ANOMALY_INPUT_COUNT];
    input[..FEATURE_COUNT].copy_from_slice(features);
    // A floor of 1 µs keeps ln finite for a request timed at zero.
    let log_latency = latency_ms.max(0.001).ln();
    input[FEATURE_COUNT] = log_latency;
    input[FEATURE_COUNT + 1] = log_latency - features[ROUTE_EWMA_LOG_MS];
    input[FEATURE_COUNT + 2] = f32::from(status / 100);
    input
}

/// Index of `route_ewma_log_ms` in the feature vector.
const ROUTE_EWMA_LOG_MS: usize = 4;

const fn schema_text_hash() -> u64 {
    // Hash names then routes, each followed by a separator, so reordering changes the result.
    let mut hash = crate::fnv1a64(b"shop-features-v1");
    let mut i = 0;
    while i < FEATURE_COUNT {
        hash ^= crate::fnv1a64(FEATURE_NAMES[i].as_bytes()).rotate_left((i % 63) as u32 + 1);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let mut k = 0;
    while k < OUTCOME_NAMES.len() {
        hash ^= crate::fnv1a64(OUTCOME_NAMES[k].as_bytes()).rotate_left((k % 63) as u32 + 17);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        k += 1;
    }
    let mut j = 0;
    while j < ROUTES.len() {
        hash ^=
            crate::fnv1a64(ROUTES[j].path.as_bytes()) ^ crate::fnv1a64(ROUTES[j].method.as_bytes());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(7);
        j += 1;
    }
    hash
}

/// Fingerprint of the feature schema (feature and outcome names, their order, routes). Models must carry the same.
pub const SCHEMA_FINGERPRINT: u64 = schema_text_hash();

/// The fingerprint as the manifest and logs spell it (16 hex digits).
pub fn fingerprint_hex() -> String {
    format!("{SCHEMA_FINGERPRINT:016x}")
}

/// One request's features, in [`FEATURE_NAMES`] order.
pub type FeatureVector = [f32; FEATURE_COUNT];

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: if this fails, the feature schema changed. That invalidates every trained model;
    /// update the pin only on purpose, together with retraining.
    #[test]
    fn schema_fingerprint_is_pinned() {
        assert_eq!(fingerprint_hex(), "0dbf8283d188ce60");
    }

    #[test]
    fn route_ewma_index_matches_its_name() {
        assert_eq!(FEATURE_NAMES[ROUTE_EWMA_LOG_MS], "route_ewma_log_ms");
    }

    #[test]
    fn anomaly_input_appends_the_outcome_relative_to_the_route_baseline() {
        let mut features = [0.0; FEATURE_COUNT];
        features[ROUTE_EWMA_LOG_MS] = 1.0;
        let input = anomaly_input(&features, std::f32::consts::E.powi(3), 503);
        assert!((input[FEATURE_COUNT] - 3.0).abs() < 1e-5);
        assert!((input[FEATURE_COUNT + 1] - 2.0).abs() < 1e-5);
        assert_eq!(input[FEATURE_COUNT + 2], 5.0);
    }

    #[test]
    fn names_are_unique() {
        let mut names = FEATURE_NAMES.to_vec();
        names.extend(OUTCOME_NAMES);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ANOMALY_INPUT_COUNT);
    }
}
