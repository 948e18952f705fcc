//! The model manifest (`models/manifest.json`), written by the trainer, checked by the server.

use serde::{Deserialize, Serialize};

/// Metadata about the exported models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema fingerprint the models were trained with (16 hex digits).
    pub schema_fingerprint: String,
    /// Feature names in order.
    pub feature_names: Vec<String>,
    /// Model version (monotonic).
    pub version: u64,
    /// When training finished (RFC 3339).
    pub trained_at: String,
    /// First and last log timestamps used (Unix ms).
    pub data_window_ms: [i64; 2],
    /// Rows used for training and holdout.
    pub rows_train: u64,
    /// Rows in the holdout.
    pub rows_holdout: u64,
    /// Latency model file, relative to the manifest.
    pub latency_model: String,
    /// Anomaly model file, relative to the manifest.
    pub anomaly_model: String,
    /// Holdout mean absolute error of ln(latency).
    pub holdout_mae_log: f64,
    /// Holdout share of latencies at or below the predicted p90.
    pub holdout_p90_coverage: f64,
    /// Anomaly score above which a request counts as anomalous.
    pub anomaly_threshold: f64,
}
