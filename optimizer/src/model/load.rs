//! Loading and checking a model folder before it may serve.
//!
//! A candidate is refused unless: the manifest parses and names this server's schema
//! fingerprint; both files exist with the sizes the manifest gives; ONNX Runtime accepts them;
//! their embedded metadata repeats the fingerprint and the manifest's version; and on every probe
//! row embedded in the manifest they answer what the trainer's own evaluation answered. All of
//! it runs off the request path (on a blocking thread), before the swap.

use super::memo::Memo;
use super::onnx::Pool;
use crate::stats::ROUTE_COUNT;
use contract::manifest::{ANOMALY_OUTPUT, LATENCY_OUTPUT, MANIFEST_FILE, Manifest};
use contract::routes::route_label;
use contract::{ANOMALY_INPUT_COUNT, FEATURE_COUNT};
use ort::environment::Environment;
use std::path::{Path, PathBuf};

/// Largest probe disagreement accepted (ln ms for latency, score units for anomaly): float
/// rounding between the trainer's trees and ONNX Runtime is far below it, a different model far
/// above.
const PROBE_TOLERANCE: f32 = 1e-3;

/// Why a candidate model was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No manifest in the folder.
    #[error("no {MANIFEST_FILE} in {0}")]
    Missing(PathBuf),
    /// The manifest is unreadable or malformed.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Trained on another feature schema.
    #[error("schema fingerprint {found} differs from this server's {expected}")]
    Fingerprint {
        /// The model's.
        found: String,
        /// The server's.
        expected: String,
    },
    /// No ONNX Runtime.
    #[error("{0}")]
    Runtime(String),
    /// A model file is missing, has the wrong size, or ONNX Runtime refused it.
    #[error("model file {file}: {message}")]
    File {
        /// File name.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The model answers differently from what the manifest recorded.
    #[error("sanity check failed: {0}")]
    Probe(String),
}

impl LoadError {
    /// The staleness reason this refusal leaves behind when nothing else serves.
    pub fn reason(&self) -> super::Stale {
        match self {
            Self::Missing(_) => super::Stale::NoModel,
            Self::Fingerprint { .. } => super::Stale::Fingerprint,
            Self::Runtime(_) => super::Stale::NoRuntime,
            Self::Manifest { .. } | Self::File { .. } | Self::Probe(_) => super::Stale::Rejected,
        }
    }
}

/// A checked pair of models with what the server needs to trust them.
pub struct ModelSet {
    /// The manifest they came with.
    pub manifest: Manifest,
    /// Latency model sessions (17 features in, ln ms at p50 and p90 out).
    pub latency: Pool,
    /// Anomaly model sessions (20 inputs in, a 0-1 score out).
    pub anomaly: Pool,
    /// The latency model's answers per cell, or why they are not kept.
    pub latency_memo: Result<Memo, String>,
    /// The anomaly model's answers per cell, or why they are not kept.
    pub anomaly_memo: Result<Memo, String>,
    /// Per route index: holdout p90 coverage (the calibration the confidence starts from).
    pub calibration: [f32; ROUTE_COUNT],
    /// Anomaly score the trainer counts as anomalous.
    pub threshold: f32,
    /// The feature the latency model's output is relative to ([`Manifest::latency_baseline`]).
    pub baseline: Option<usize>,
}

impl ModelSet {
    /// ln latency (p50, p90) from the latency model's raw output for `features`.
    pub fn log_latency(&self, raw: [f32; 2], features: &[f32]) -> [f32; 2] {
        let base = self.baseline.map_or(0.0, |i| features[i]);
        [raw[0] + base, raw[1] + base]
    }
}

/// Reads the manifest of a model folder.
///
/// # Errors
/// Missing or malformed.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), LoadError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::Missing(dir.to_path_buf()));
        }
        Err(e) => {
            return Err(LoadError::Manifest {
                path,
                message: e.to_string(),
            });
        }
    };
    let manifest = serde_json::from_str(&text).map_err(|e| LoadError::Manifest {
        path,
        message: e.to_string(),
    })?;
    Ok((manifest, text))
}

fn read_model(dir: &Path, file: &contract::manifest::ModelFile) -> Result<Vec<u8>, LoadError> {
    let fail = |message: String| LoadError::File {
        file: file.file.clone(),
        message,
    };
    // The manifest names a file beside it, never a path elsewhere.
    if file.file.contains(['/', '\\']) || file.file.starts_with('.') {
        return Err(fail("not a plain file name".into()));
    }
    let bytes = std::fs::read(dir.join(&file.file)).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 != file.bytes {
        return Err(fail(format!(
            "{} bytes, the manifest says {}",
            bytes.len(),
            file.bytes
        )));
    }
    Ok(bytes)
}

fn check_metadata(pool: &Pool, file: &str, manifest: &Manifest) -> Result<(), LoadError> {
    let fail = |message: String| LoadError::File {
        file: file.to_owned(),
        message,
    };
    let fingerprint = pool.metadata("schema_fingerprint");
    if fingerprint.as_deref() != Some(manifest.schema_fingerprint.as_str()) {
        return Err(fail(format!(
            "embedded schema fingerprint {fingerprint:?} differs from the manifest's"
        )));
    }
    let version = pool.metadata("model_version");
    if version != Some(manifest.version.to_string()) {
        return Err(fail(format!(
            "embedded version {version:?} differs from the manifest's {}",
            manifest.version
        )));
    }
    Ok(())
}

fn probe(manifest: &Manifest, latency: &Pool, anomaly: &Pool) -> Result<(), LoadError> {
    if manifest.probes.is_empty() {
        return Err(LoadError::Probe("the manifest has no probe rows".into()));
    }
    // Nothing else uses a candidate yet, so its sessions are never busy.
    let run = |pool: &Pool, row: &[f32], out: &mut [f32]| {
        pool.run_waiting(row, out).map_err(LoadError::Probe)
    };
    for (i, p) in manifest.probes.iter().enumerate() {
        if p.input.len() != ANOMALY_INPUT_COUNT {
            return Err(LoadError::Probe(format!(
                "probe {i} has {} inputs, expected {ANOMALY_INPUT_COUNT}",
                p.input.len()
            )));
        }
        let mut log_latency = [0.0_f32; 2];
        run(latency, &p.input[..FEATURE_COUNT], &mut log_latency)?;
        let mut log_score = [0.0_f32; 1];
        run(anomaly, &p.input, &mut log_score)?;
        let score = log_score[0].exp();
        let worst = (log_latency[0] - p.log_latency[0])
            .abs()
            .max((log_latency[1] - p.log_latency[1]).abs());
        // NaN must fail too (`f32::max` would skip it), hence the explicit finiteness check.
        if !log_latency.iter().all(|v| v.is_finite()) || worst.is_nan() || worst > PROBE_TOLERANCE {
            return Err(LoadError::Probe(format!(
                "probe {i}: latency model answered {log_latency:?}, the manifest expects {:?}",
                p.log_latency
            )));
        }
        let off = (score - p.anomaly_score).abs();
        if off.is_nan() || off > PROBE_TOLERANCE {
            return Err(LoadError::Probe(format!(
                "probe {i}: anomaly model answered {score}, the manifest expects {}",
                p.anomaly_score
            )));
        }
    }
    Ok(())
}

/// Loads and checks the models in `dir` with `sessions` sessions each, keeping up to
/// `memo_cells` answers per model ([`Memo`]; 0 keeps none).
///
/// # Errors
/// Whatever makes the candidate untrustworthy (see the module docs). A model whose answers
/// cannot be kept per cell still loads; the reason is in its memo slot.
pub fn load(
    dir: &Path,
    env: Result<&'static Environment, String>,
    sessions: usize,
    memo_cells: usize,
) -> Result<ModelSet, LoadError> {
    let (manifest, _) = read_manifest(dir)?;
    let expected = contract::features::fingerprint_hex();
    if manifest.schema_fingerprint != expected {
        return Err(LoadError::Fingerprint {
            found: manifest.schema_fingerprint,
            expected,
        });
    }
    let env = env.map_err(LoadError::Runtime)?;
    let session = |file: &contract::manifest::ModelFile, width: usize, output: (&str, usize)| {
        let bytes = read_model(dir, file)?;
        let pool =
            Pool::new(env, &bytes, sessions, width, output).map_err(|e| LoadError::File {
                file: file.file.clone(),
                message: e.to_string(),
            })?;
        check_metadata(&pool, &file.file, &manifest)?;
        let memo = if memo_cells == 0 {
            Err("[models] memo_cells = 0".to_owned())
        } else {
            Memo::new(&bytes, width, memo_cells).inspect_err(|why| {
                tracing::info!(file = %file.file, %why, "every row of this model runs ONNX Runtime");
            })
        };
        Ok::<_, LoadError>((pool, memo))
    };
    let (latency, latency_memo) =
        session(&manifest.latency_model, FEATURE_COUNT, (LATENCY_OUTPUT, 2))?;
    let (anomaly, anomaly_memo) = session(
        &manifest.anomaly_model,
        ANOMALY_INPUT_COUNT,
        (ANOMALY_OUTPUT, 1),
    )?;
    probe(&manifest, &latency, &anomaly)?;

    let mut calibration = [manifest.latency_holdout.p90_coverage as f32; ROUTE_COUNT];
    for (route, calibrated) in calibration.iter_mut().enumerate() {
        // A route with only a handful of holdout rows keeps the overall figure.
        if let Some(m) = manifest
            .latency_by_route
            .get(&route_label(route))
            .filter(|m| m.rows >= 30)
        {
            *calibrated = m.p90_coverage as f32;
        }
    }
    let baseline = manifest
        .baseline_index()
        .map_err(|message| LoadError::Manifest {
            path: dir.join(MANIFEST_FILE),
            message,
        })?;
    let threshold = manifest.anomaly_threshold as f32;
    if threshold.is_nan() || threshold <= 0.0 || threshold >= 1.0 {
        return Err(LoadError::Manifest {
            path: dir.join(MANIFEST_FILE),
            message: format!("anomaly_threshold {threshold} is not between 0 and 1"),
        });
    }
    Ok(ModelSet {
        manifest,
        latency,
        anomaly,
        latency_memo,
        anomaly_memo,
        calibration,
        threshold,
        baseline,
    })
}
