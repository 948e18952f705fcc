//! The model manifest (`models/manifest.json`), written by the trainer, checked by the server.
//!
//! It says what the models were trained on and how good they were on data they never saw, so
//! the server can decide whether to trust them and report an honest confidence.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File name of the manifest inside a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Input of both ONNX models: `[N, width]` floats.
pub const MODEL_INPUT: &str = "features";
/// Output of the latency model: `[N, 2]`, ln(latency ms) at p50 and p90.
pub const LATENCY_OUTPUT: &str = "log_latency";
/// Output of the anomaly model: `[N, 1]`, the natural log of the anomaly score (0-1, so at
/// most 0). The exponential is the reader's: one more graph node costs ~0.7 µs per ONNX Runtime
/// call, an `exp` in Rust a few nanoseconds.
pub const ANOMALY_OUTPUT: &str = "log_score";

/// Removes exported model files (`latency-*.onnx`, `anomaly-*.onnx`) in `dir` other than
/// `keep`: whoever installs a new manifest keeps its files and the previous manifest's (a server
/// may still be loading those), and older exports go. Errors are ignored: a file left behind
/// costs disk space, not correctness.
pub fn prune_model_files(dir: &std::path::Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("latency-") || name.starts_with("anomaly-"))
            && name.ends_with(".onnx");
        if ours && !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Metadata about the exported models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema fingerprint the models were trained with (16 hex digits).
    pub schema_fingerprint: String,
    /// Feature names in order (the latency model's inputs).
    pub feature_names: Vec<String>,
    /// The anomaly model's input names: the features, then the outcome.
    pub anomaly_input_names: Vec<String>,
    /// Model version: milliseconds since the Unix epoch when training finished, so newer is
    /// larger.
    pub version: u64,
    /// When training finished (RFC 3339, UTC).
    pub trained_at: String,
    /// Version of the trainer that wrote this.
    pub trainer_version: String,
    /// First and last log timestamps used (Unix ms).
    pub data_window_ms: [i64; 2],
    /// Rows: read, dropped (and why), used for training, held out.
    pub rows: RowCounts,
    /// Latency model file, relative to the manifest.
    pub latency_model: ModelFile,
    /// The feature the latency model's output is relative to: ln latency is the output plus
    /// that feature (a correction on the route's live baseline, which carries over between
    /// catalogues and machines). Absent: the output is ln latency itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_baseline: Option<String>,
    /// Anomaly model file, relative to the manifest.
    pub anomaly_model: ModelFile,
    /// Latency model quality on the time-ordered holdout, beside the online baseline.
    pub latency_holdout: LatencyMetrics,
    /// Per route label: the same metrics on that route's holdout rows, the calibration the
    /// server uses for the confidence it reports.
    pub latency_by_route: BTreeMap<String, LatencyMetrics>,
    /// Anomaly model quality on the holdout, beside the online z-score baseline.
    pub anomaly_holdout: AnomalyMetrics,
    /// Anomaly score at or above which a request counts as anomalous.
    pub anomaly_threshold: f64,
    /// Rows with their expected outputs, for the server's sanity check before it swaps in a model.
    pub probes: Vec<Probe>,
}

impl Manifest {
    /// Index of [`Manifest::latency_baseline`] in the feature vector: `Ok(None)` without one,
    /// `Err` naming it when it is not a feature.
    pub fn baseline_index(&self) -> Result<Option<usize>, String> {
        self.latency_baseline
            .as_deref()
            .map(|name| {
                crate::FEATURE_NAMES
                    .iter()
                    .position(|f| *f == name)
                    .ok_or_else(|| format!("latency_baseline {name:?} is not a feature"))
            })
            .transpose()
    }
}

/// Row counts of a training run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowCounts {
    /// Log files read.
    pub files: u64,
    /// Records read.
    pub read: u64,
    /// Records left out, by reason: `implausible_values`, `shed`, `duplicate` (a record read
    /// twice), `sampled_out` (past `trainer train --sample-rows`).
    pub dropped: BTreeMap<String, u64>,
    /// Rows the models were fitted on.
    pub train: u64,
    /// Of those, the rows from the base logs (`trainer train --base-logs`), always trained on
    /// and never held out; absent in manifests written before there were base logs.
    #[serde(default)]
    pub base: u64,
    /// Rows held out (the most recent ones) for the metrics.
    pub holdout: u64,
}

/// One exported model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// File name, relative to the manifest.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of trees.
    pub trees: u64,
    /// Number of tree nodes, leaves included.
    pub nodes: u64,
}

/// Latency prediction quality on a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyMetrics {
    /// Rows measured.
    pub rows: u64,
    /// Mean absolute error of ln(latency ms), model p50.
    pub mae_log: f64,
    /// The same for the online statistics' prediction logged with each row; absent when no
    /// row had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_mae_log: Option<f64>,
    /// Share of latencies at or below the model's predicted p90 (target 0.9).
    pub p90_coverage: f64,
    /// The same for the online statistics' p90; absent when no row had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_p90_coverage: Option<f64>,
}

/// Anomaly scoring quality on a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyMetrics {
    /// Rows measured.
    pub rows: u64,
    /// Of them, labelled anomalous (stress-test requests).
    pub labelled: u64,
    /// ROC AUC of the model's score against the labels; absent when the holdout has no
    /// labelled rows, or only labelled ones (nothing to rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// ROC AUC of the online z-score logged with each row; absent as `auc` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_auc: Option<f64>,
    /// Share of the unlabelled rows scoring at or above the threshold (false alarms), server
    /// errors (anomalous by rule) left out; absent when there are no such rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_alarm_rate: Option<f64>,
    /// Share of the labelled rows scoring at or above the threshold (anomalies caught), server
    /// errors left out; absent when there are no labelled rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_rate: Option<f64>,
}

/// A probe row: inputs and what the exported models must answer for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Anomaly model input (the latency model takes the leading features).
    pub input: Vec<f32>,
    /// Expected ln(latency ms) at p50 and p90.
    pub log_latency: [f32; 2],
    /// Expected anomaly score.
    pub anomaly_score: f32,
}
