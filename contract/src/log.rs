//! Log records: one [`RequestRecord`] per request, one JSON object per line in `data/logs/`.

use crate::features::FeatureVector;
use serde::{Deserialize, Serialize};

/// One database statement executed while serving a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// Fingerprint of the normalized statement (16 hex digits).
    pub fingerprint: String,
    /// The normalized statement text (parameters are `$n` placeholders, never values). Written
    /// with the first occurrence of a fingerprint in each log file and omitted after that, to
    /// keep records small; a reader maps fingerprints to text per file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Execution time in milliseconds (prepare + execute).
    pub duration_ms: f32,
    /// Rows returned or affected.
    pub rows: u64,
}

/// One served (or shed) request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: i64,
    /// Schema fingerprint of `features` (16 hex digits).
    pub schema: String,
    /// Route label, e.g. `GET /api/products/{id}`.
    pub route: String,
    /// The request's path and query string (what the response cache keys on), with search
    /// terms and other free text replaced by `~` and a keyed hash unless the server ran with
    /// `telemetry.keep_query_text`.
    pub path: String,
    /// Priority it was admitted with: `critical`, `high`, `normal` or `low`.
    pub priority: String,
    /// The exact feature vector the prediction used.
    pub features: FeatureVector,
    /// Predicted median latency (ms).
    pub predicted_p50_ms: f32,
    /// Predicted 90th percentile latency (ms).
    pub predicted_p90_ms: f32,
    /// Confidence reported to the client (0-1).
    pub confidence: f32,
    /// Which predictor answered: `onnx` or `online`.
    pub source: String,
    /// The model's own p50 and p90 (ms) for this request, whether or not it answered (0 when it
    /// could not run; absent in logs written before the shadow evaluation).
    #[serde(default)]
    pub model_ms: [f32; 2],
    /// The online statistics' p50 and p90 (ms) for this request, whether or not they answered
    /// (0 when unknown; absent in older logs).
    #[serde(default)]
    pub online_ms: [f32; 2],
    /// HTTP status.
    pub status: u16,
    /// Total time in the server (ms), queueing included.
    pub latency_ms: f32,
    /// Time spent in database statements (ms).
    pub db_ms: f32,
    /// Time spent waiting for admission (ms).
    pub queue_ms: f32,
    /// Cache outcome: `hit`, `miss`, `refresh`, `bypass` (not cacheable) or `off`.
    pub cache: String,
    /// Whether admission shed the request (503).
    pub shed: bool,
    /// Anomaly score (0-1).
    pub anomaly_score: f32,
    /// Statements executed.
    pub queries: Vec<QueryRecord>,
}

/// The online statistics' p50 and p90 (ms) logged with a request, when it has them: `online_ms`
/// since the shadow evaluation, and in older logs the served prediction when the online
/// statistics answered. The one reading the trainer and the server's retrain judge by.
pub fn online_answer(online_ms: [f32; 2], source: &str, predicted: [f32; 2]) -> Option<[f32; 2]> {
    if online_ms[0] > 0.0 {
        Some(online_ms)
    } else if source == "online" && predicted[0] > 0.0 {
        Some(predicted)
    } else {
        None
    }
}

impl RequestRecord {
    /// [`online_answer`] of this record.
    pub fn online_answer(&self) -> Option<[f32; 2]> {
        online_answer(
            self.online_ms,
            &self.source,
            [self.predicted_p50_ms, self.predicted_p90_ms],
        )
    }
}
