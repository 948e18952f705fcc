//! `training_interval`: retrain on the server's own recent request logs, in the background.
//!
//! Runs the trainer binary (a separate process, so its memory and CPU spikes never share the
//! server's heap, and a crash costs nothing) on the log folder into a fresh temporary folder,
//! bounded by `models.training_timeout_secs`. The candidate is then loaded and checked like any
//! model, and both it and the serving model predict the most recent logged requests (the rows
//! the trainer held out, so the candidate never saw them). Only when the candidate's error is
//! lower are its files copied into the model folder, the manifest last and atomically, where the
//! watcher picks them up. One run at a time; the watcher does not start another while one runs.

use super::Models;
use super::load::{self, ModelSet};
use contract::manifest::MANIFEST_FILE;
use contract::{FEATURE_COUNT, RequestRecord};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The last background training run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrainStatus {
    /// Runs started.
    pub runs: u64,
    /// Candidates adopted.
    pub adopted: u64,
    /// When the last run finished (Unix ms).
    pub last_ms: Option<i64>,
    /// What it concluded.
    pub last_outcome: Option<String>,
}

/// Most recent logged requests compared on.
const MAX_COMPARE_ROWS: usize = 5_000;

/// One training run, start to finish (blocking), and the status after it; `None` without
/// running when another run is in progress.
pub fn run(models: &Models, log_dir: &Path) -> Option<RetrainStatus> {
    if models
        .retraining
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return None;
    }
    // Cleared however the run ends, a panic included.
    struct Running<'a>(&'a AtomicBool);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _running = Running(&models.retraining);
    models.set_retrain(|s| s.runs += 1);
    let outcome = match attempt(models, log_dir) {
        Ok(message) => message,
        Err(message) => format!("not adopted: {message}"),
    };
    tracing::info!(%outcome, "background training");
    models.note("retrain", outcome.clone());
    models.set_retrain(|s| {
        s.last_ms = Some(crate::unix_ms());
        s.last_outcome = Some(outcome);
    });
    Some(models.retrain_status())
}

fn trainer_path(models: &Models) -> Result<PathBuf, String> {
    if let Some(path) = &models.config().trainer {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(exe.with_file_name("trainer"))
}

fn attempt(models: &Models, log_dir: &Path) -> Result<String, String> {
    let trainer = trainer_path(models)?;
    if !trainer.is_file() {
        return Err(format!("no trainer binary at {}", trainer.display()));
    }
    let out = std::env::temp_dir().join(format!(
        "shop-retrain-{}-{}",
        std::process::id(),
        crate::unix_ms()
    ));
    let result = train_and_compare(models, &trainer, log_dir, &out);
    let _ = std::fs::remove_dir_all(&out);
    result
}

fn train_and_compare(
    models: &Models,
    trainer: &Path,
    log_dir: &Path,
    out: &Path,
) -> Result<String, String> {
    let mut child = Command::new(trainer)
        .arg("train")
        .arg("--logs")
        .arg(log_dir)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", trainer.display()))?;
    let limit = Duration::from_secs(models.config().training_timeout_secs);
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the trainer ran past {} s and was stopped",
                    limit.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let tail: String = stderr
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        return Err(format!("the trainer failed ({status}): {tail}"));
    }
    let runtime = super::onnx::runtime(models.config().ort_library.as_deref());
    let candidate =
        load::load(out, runtime, 1, 0).map_err(|e| format!("the new model was refused: {e}"))?;
    let rows = recent_rows(log_dir, candidate.manifest.rows.holdout as usize);
    if rows.len() < 30 {
        return Err(format!(
            "only {} recent logged requests to compare on",
            rows.len()
        ));
    }
    let new_mae = mae(&candidate, &rows)?;
    let (verdict, old) = match models.current() {
        Some(current) => {
            let old_mae = mae(&current, &rows)?;
            (new_mae < old_mae, Some(old_mae))
        }
        None => (true, None),
    };
    let compared = match old {
        Some(old) => format!(
            "on the {} most recent requests: new MAE(ln ms) {new_mae:.3}, current {old:.3}",
            rows.len()
        ),
        None => format!(
            "on the {} most recent requests: new MAE(ln ms) {new_mae:.3}, no current model",
            rows.len()
        ),
    };
    if !verdict {
        return Err(compared);
    }
    let serving = models.current();
    install(out, &models.config().dir, &candidate)?;
    // The new files and the serving ones stay (the watcher has not switched yet).
    let mut keep = vec![
        candidate.manifest.latency_model.file.as_str(),
        candidate.manifest.anomaly_model.file.as_str(),
    ];
    if let Some(serving) = &serving {
        keep.push(&serving.manifest.latency_model.file);
        keep.push(&serving.manifest.anomaly_model.file);
    }
    contract::manifest::prune_model_files(&models.config().dir, &keep);
    models.set_retrain(|s| s.adopted += 1);
    Ok(format!(
        "adopted version {} ({compared}); the watcher loads it",
        candidate.manifest.version
    ))
}

/// The most recent `n` (at least a few hundred, at most [`MAX_COMPARE_ROWS`]) requests from the
/// server's own logs that a model can be judged on: this schema, not shed, no server error.
fn recent_rows(log_dir: &Path, n: usize) -> Vec<(contract::FeatureVector, f32)> {
    let want = n.clamp(300, MAX_COMPARE_ROWS);
    let schema = contract::features::fingerprint_hex();
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut rows: Vec<(i64, contract::FeatureVector, f32)> = Vec::new();
    // Newest files first, until enough rows.
    for path in files.iter().rev() {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<RequestRecord>(&line)
                && r.schema == schema
                && !r.shed
                && r.status < 500
                && r.latency_ms.is_finite()
            {
                rows.push((r.ts_ms, r.features, r.latency_ms));
            }
        }
        if rows.len() >= want {
            break;
        }
    }
    rows.sort_by_key(|r| r.0);
    let skip = rows.len().saturating_sub(want);
    rows.into_iter()
        .skip(skip)
        .map(|(_, f, l)| (f, l))
        .collect()
}

fn mae(set: &ModelSet, rows: &[(contract::FeatureVector, f32)]) -> Result<f64, String> {
    let mut sum = 0.0;
    let mut out = [0.0_f32; 2];
    for (features, latency) in rows {
        set.latency
            .run_waiting(&features[..FEATURE_COUNT], &mut out)?;
        sum += f64::from((latency.max(0.001).ln() - out[0]).abs());
    }
    Ok(sum / rows.len() as f64)
}

/// Copies the model files, then the manifest through a temporary file and a rename, so the
/// watcher never sees a manifest naming files that are not there yet.
fn install(from: &Path, dir: &Path, set: &ModelSet) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for file in [
        &set.manifest.latency_model.file,
        &set.manifest.anomaly_model.file,
    ] {
        std::fs::copy(from.join(file), dir.join(file))
            .map_err(|e| format!("copying {file}: {e}"))?;
    }
    let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
    std::fs::copy(from.join(MANIFEST_FILE), &tmp).map_err(|e| format!("copying manifest: {e}"))?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(|e| format!("installing manifest: {e}"))
}
