//! The feature vector: the one definition of what a model sees for a request.
//!
//! The server fills a [`FeatureVector`] from the request and its live state, logs the exact
//! array it used, and the trainer learns from those logged arrays. [`SCHEMA_FINGERPRINT`] hashes
//! the names, their order and the route list; a model carrying another fingerprint is refused.

use crate::routes::ROUTES;

/// Number of features.
pub const FEATURE_COUNT: usize = 16;

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
];

const fn schema_text_hash() -> u64 {
    // Hash names then routes, each followed by a separator, so reordering changes the result.
    let mut hash = crate::fnv1a64(b"shop-features-v1");
    let mut i = 0;
    while i < FEATURE_COUNT {
        hash ^= crate::fnv1a64(FEATURE_NAMES[i].as_bytes()).rotate_left((i % 63) as u32 + 1);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
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

/// Fingerprint of the feature schema (names, order, routes). Models must carry the same.
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
        assert_eq!(fingerprint_hex(), "c601d49246dc93fd");
    }

    #[test]
    fn names_are_unique() {
        let mut names = FEATURE_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FEATURE_COUNT);
    }
}
