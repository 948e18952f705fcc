//! The small crate the server and the trainer share, so training and serving never drift
//! (`docs/ARCHITECTURE.md`, "Invariants"; Google's Rules of ML, rule 29).
//!
//! - [`features`]: the fixed-order feature vector, its names, and the schema fingerprint.
//! - [`routes`]: the route templates the server knows, in a fixed order (a feature).
//! - [`log`]: the request and query log records the server writes and the trainer reads.
//! - [`manifest`]: the model manifest the trainer writes and the server checks.
//! - [`onnx`]: the ONNX messages the trainer writes models with, and [`onnx::Splits`], which
//!   reads a tree model's thresholds back (the server keeps answers per cell of them).
//!
//! It depends on serde and prost only.

pub mod features;
pub mod log;
pub mod manifest;
pub mod onnx;
pub mod routes;

pub use features::{
    ANOMALY_INPUT_COUNT, ANOMALY_SCORE, AnomalyInput, FEATURE_COUNT, FEATURE_NAMES, FeatureVector,
    OUTCOME_NAMES, SCHEMA_FINGERPRINT, anomaly_input,
};
pub use log::{QueryRecord, RequestRecord};
pub use manifest::{MANIFEST_FILE, Manifest};
pub use routes::{ROUTES, Route};

/// FNV-1a, 64 bit: a tiny, stable, dependency-free hash for fingerprints (schema and SQL).
/// Not for security; only for telling versions and statements apart.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}
