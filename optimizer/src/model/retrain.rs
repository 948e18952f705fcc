//! `training_interval`: retrain on the server's own recent request logs, in the background.
//!
//! Runs the trainer binary (a separate process, so its memory and CPU spikes never share the
//! server's heap, and a crash costs nothing) on the log folder, with `models.base_logs` (the
//! corpus the committed models came from) always trained on and never held out, so that a
//! retrain on calm traffic keeps what the corpus knows of incidents, into a fresh temporary folder,
//! niced and on one thread so that it never looks like an incident to the server beside it, and
//! bounded by `models.training_timeout_secs`. The candidate is then loaded and checked like any
//! model, and it, the serving model and the online statistics (their answer logged with each
//! request) are judged on the most recent logged requests (the rows the trainer held out, so the
//! candidate never saw them). Only when the candidate's error is lower than both are its files
//! copied into the model folder, the manifest last and atomically, where the watcher picks them
//! up. One run at a time; the watcher does not start another while one runs, nor one before
//! [`MIN_NEW_ROWS`] requests were logged since the last.

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

/// The PostgreSQL advisory lock a training run holds, so that of all the instances sharing one
/// database (and, behind a load balancer, one log folder and one model folder) one trains at a
/// time: `pg_try_advisory_lock(TRAINING_LOCK)`.
pub const TRAINING_LOCK: i64 = 0x7368_6f70_5f74_726e;

/// The training lock, held while this lives (on a session of its own: closing it releases the
/// lock, however the run ends).
pub struct TrainingLock {
    _session: tokio_postgres::Client,
}

/// Takes the training lock if no other instance holds it: `Ok(None)` when one does.
///
/// # Errors
/// The database cannot be reached.
pub async fn training_lock(
    pg: &tokio_postgres::Config,
) -> Result<Option<TrainingLock>, tokio_postgres::Error> {
    let (session, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = session
        .query_one("SELECT pg_try_advisory_lock($1)", &[&TRAINING_LOCK])
        .await?;
    Ok(row
        .get::<_, bool>(0)
        .then_some(TrainingLock { _session: session }))
}

/// Most recent logged requests compared on.
const MAX_COMPARE_ROWS: usize = 5_000;
/// Requests logged since the last run before the next scheduled one trains.
pub const MIN_NEW_ROWS: usize = 1_000;

/// One logged request a model is judged on.
struct Row {
    ts_ms: i64,
    features: contract::FeatureVector,
    latency_ms: f32,
    /// The online statistics' p50 for it (ms), when logged.
    online_p50_ms: Option<f32>,
}

/// One training run, start to finish (blocking), and the status after it; `None` without
/// running when another run is in progress.
pub fn run(models: &Models, log_dir: &Path) -> Option<RetrainStatus> {
    run_if(models, log_dir, false)
}

/// [`run`], skipped (`None`) when `scheduled` and fewer than [`MIN_NEW_ROWS`] requests were
/// logged since the last run.
pub fn run_if(models: &Models, log_dir: &Path, scheduled: bool) -> Option<RetrainStatus> {
    if scheduled
        && let Some(last) = models.retrain_status().last_ms
        && recent_rows(log_dir, MIN_NEW_ROWS)
            .iter()
            .filter(|r| r.ts_ms > last)
            .count()
            < MIN_NEW_ROWS
    {
        return None;
    }
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
    // Niced (when `nice` is there) and on one thread: the server beside it comes first.
    let mut command = match which_nice() {
        Some(nice) => {
            let mut c = Command::new(nice);
            c.arg("-n").arg("19").arg(trainer);
            c
        }
        None => Command::new(trainer),
    };
    command
        .env("POLARS_MAX_THREADS", "1")
        .arg("train")
        .arg("--one-thread")
        .arg("--logs")
        .arg(log_dir)
        .arg("--out")
        .arg(out);
    let base: Vec<String> = models
        .config()
        .base_logs
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if !base.is_empty() {
        command.arg("--base-logs").arg(base.join(","));
    }
    let mut child = command
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
    let new = errors(&candidate, &rows)?;
    let current = models.current();
    let old = current.as_deref().map(|c| errors(c, &rows)).transpose()?;
    // The online statistics, on the rows that logged their answer (not a route's first
    // request after a restart), against the candidate on the same rows.
    let (online, new_there): (Vec<f64>, Vec<f64>) = rows
        .iter()
        .zip(&new)
        .filter_map(|(r, n)| {
            r.online_p50_ms
                .map(|p| (log_error(r.latency_ms, p.ln()), *n))
        })
        .unzip();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let new_mae = mean(&new).unwrap_or(f64::INFINITY);
    let old_mae = old.as_deref().and_then(mean);
    let (online_mae, new_online_mae) = (mean(&online), mean(&new_there));
    let figure = |v: Option<f64>, what: &str| {
        v.map_or_else(|| format!("{what} none"), |v| format!("{what} {v:.3}"))
    };
    let rows_of = &candidate.manifest.rows;
    let compared = format!(
        "trained on {} own and {} base rows; on the {} most recent requests (the candidate never saw them): MAE(ln ms) new {new_mae:.3}, {}; on the {} of them with an online answer: {}, {}",
        rows_of.train - rows_of.base,
        rows_of.base,
        rows.len(),
        figure(old_mae, "serving"),
        online.len(),
        figure(new_online_mae, "new"),
        figure(online_mae, "online"),
    );
    let beats_serving = old_mae.is_none_or(|o| new_mae < o);
    let beats_online = match (new_online_mae, online_mae) {
        (Some(n), Some(o)) => n < o,
        _ => true,
    };
    if !(beats_serving && beats_online) {
        return Err(compared);
    }
    let serving = models.current();
    // The serving model stays as the rollback (`POST /api/ml-metrics/rollback`).
    if let Some(serving) = &serving {
        keep_previous(&models.config().dir, serving)?;
    }
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

/// The most recent `n` (at most [`MAX_COMPARE_ROWS`]) requests from the server's own logs that
/// a model can be judged on: this schema, not shed, no server error.
fn recent_rows(log_dir: &Path, n: usize) -> Vec<Row> {
    let want = n.min(MAX_COMPARE_ROWS);
    let schema = contract::features::fingerprint_hex();
    let names: std::collections::BTreeSet<PathBuf> = std::fs::read_dir(log_dir)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    // Plain files and rotated ones gzipped by the writer; while a file is being replaced by its
    // gzipped copy both may be listed, and the plain one is read.
    let files: Vec<&PathBuf> = names
        .iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".ndjson")
                || (name.ends_with(".ndjson.gz") && !names.contains(&p.with_extension("")))
        })
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    // Newest files first, until enough rows (the names start with the time they were opened).
    for path in files.iter().rev() {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
                file,
            )))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        for line in reader.lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<RequestRecord>(&line)
                && r.schema == schema
                && !r.shed
                && r.status < 500
                && r.latency_ms.is_finite()
            {
                let online = r.online_answer().map(|[p50, _]| p50);
                rows.push(Row {
                    ts_ms: r.ts_ms,
                    features: r.features,
                    latency_ms: r.latency_ms,
                    online_p50_ms: online,
                });
            }
        }
        if rows.len() >= want {
            break;
        }
    }
    rows.sort_by_key(|r| r.ts_ms);
    let skip = rows.len().saturating_sub(want);
    rows.drain(..skip);
    rows
}

fn log_error(latency_ms: f32, predicted_log: f32) -> f64 {
    f64::from((latency_ms.max(0.001).ln() - predicted_log).abs())
}

/// The model's |ln error| on each row.
fn errors(set: &ModelSet, rows: &[Row]) -> Result<Vec<f64>, String> {
    let mut out = [0.0_f32; 2];
    rows.iter()
        .map(|r| {
            set.latency
                .run_waiting(&r.features[..FEATURE_COUNT], &mut out)?;
            let [p50, _] = set.log_latency(out, &r.features);
            Ok(log_error(r.latency_ms, p50))
        })
        .collect()
}

/// Folder (inside the model folder) holding the model an adoption replaced.
pub const PREVIOUS_DIR: &str = "previous";

/// Copies the serving set's files and manifest into `dir/previous`, replacing what was there.
fn keep_previous(dir: &Path, serving: &ModelSet) -> Result<(), String> {
    let previous = dir.join(PREVIOUS_DIR);
    let staging = dir.join(format!(".{PREVIOUS_DIR}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    copy_model_files(dir, &staging, serving)
        .map_err(|e| format!("keeping the serving model for rollback: {e}"))?;
    let manifest = serde_json::to_vec_pretty(&serving.manifest).map_err(|e| e.to_string())?;
    std::fs::write(staging.join(MANIFEST_FILE), manifest)
        .map_err(|e| format!("keeping the manifest for rollback: {e}"))?;
    let _ = std::fs::remove_dir_all(&previous);
    std::fs::rename(&staging, &previous)
        .map_err(|e| format!("installing {}: {e}", previous.display()))
}

/// Restores the model the last adoption replaced (`dir/previous`), checked like any model, and
/// keeps the one serving now as the new previous, so a rollback can be undone. Blocking.
///
/// # Errors
/// No previous model, or it was refused, or the files could not be copied.
pub fn rollback(models: &Models) -> Result<String, String> {
    let dir = &models.config().dir;
    let previous = dir.join(PREVIOUS_DIR);
    if !previous.join(MANIFEST_FILE).is_file() {
        return Err(
            "no previous model to roll back to (one is kept when a retrain adopts a new model)"
                .into(),
        );
    }
    let runtime = super::onnx::runtime(models.config().ort_library.as_deref());
    let restored = load::load(&previous, runtime, 1, 0)
        .map_err(|e| format!("the previous model was refused: {e}"))?;
    // Out of the folder first: keeping the serving set replaces `previous`.
    let staging = std::env::temp_dir().join(format!(
        "shop-rollback-{}-{}",
        std::process::id(),
        crate::unix_ms()
    ));
    copy_set(&previous, &staging, &restored)?;
    let serving = models.current();
    if let Some(serving) = &serving {
        keep_previous(dir, serving)?;
    }
    let result = install(&staging, dir, &restored);
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    let message = format!(
        "rolled back to version {}{}; the watcher loads it",
        restored.manifest.version,
        serving.map_or_else(String::new, |s| format!(
            " (version {} is kept as the previous one)",
            s.manifest.version
        ))
    );
    models.note("rollback", message.clone());
    Ok(message)
}

/// Copies a set's files and manifest from one folder into a new one.
fn copy_set(from: &Path, to: &Path, set: &ModelSet) -> Result<(), String> {
    copy_model_files(from, to, set)?;
    std::fs::copy(from.join(MANIFEST_FILE), to.join(MANIFEST_FILE))
        .map_err(|e| format!("copying {MANIFEST_FILE}: {e}"))?;
    Ok(())
}

/// Copies a set's two model files from one folder into another (created when missing).
fn copy_model_files(from: &Path, to: &Path, set: &ModelSet) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    for file in [
        &set.manifest.latency_model.file,
        &set.manifest.anomaly_model.file,
    ] {
        std::fs::copy(from.join(file), to.join(file))
            .map_err(|e| format!("copying {file}: {e}"))?;
    }
    Ok(())
}

/// `nice`, when it is on the usual paths.
fn which_nice() -> Option<PathBuf> {
    ["/usr/bin/nice", "/bin/nice"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Copies the model files, then the manifest through a temporary file and a rename, so the
/// watcher never sees a manifest naming files that are not there yet.
fn install(from: &Path, dir: &Path, set: &ModelSet) -> Result<(), String> {
    copy_model_files(from, dir, set)?;
    let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
    std::fs::copy(from.join(MANIFEST_FILE), &tmp).map_err(|e| format!("copying manifest: {e}"))?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(|e| format!("installing manifest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A log file of served requests arriving at `stamps`, gzipped when the name says so.
    fn write_log(path: &Path, stamps: std::ops::Range<i64>) {
        let mut text = String::new();
        for ts_ms in stamps {
            let record = RequestRecord {
                ts_ms,
                schema: contract::features::fingerprint_hex(),
                route: "GET /api/products".to_owned(),
                path: "/api/products".to_owned(),
                priority: "normal".to_owned(),
                features: [0.0; FEATURE_COUNT],
                predicted_p50_ms: 1.0,
                predicted_p90_ms: 2.0,
                confidence: 0.5,
                source: "online".to_owned(),
                model_ms: [1.0, 2.0],
                online_ms: [1.0, 2.0],
                status: 200,
                latency_ms: 1.5,
                db_ms: 1.0,
                queue_ms: 0.0,
                cache: "miss".to_owned(),
                shed: false,
                anomaly_score: 0.0,
                queries: Vec::new(),
            };
            text.push_str(&serde_json::to_string(&record).expect("json"));
            text.push('\n');
        }
        let file = std::fs::File::create(path).expect("create");
        if path.extension().is_some_and(|e| e == "gz") {
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            gz.write_all(text.as_bytes()).expect("write");
            gz.finish().expect("finish");
        } else {
            let mut file = file;
            file.write_all(text.as_bytes()).expect("write");
        }
    }

    #[test]
    fn recent_rows_come_from_plain_and_gzipped_logs_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_log(&d.join("requests-1000-1.ndjson.gz"), 0..100);
        // Caught while the writer replaces it by its gzipped copy: both are there.
        write_log(&d.join("requests-2000-1.ndjson"), 100..200);
        write_log(&d.join("requests-2000-1.ndjson.gz"), 100..200);
        write_log(&d.join("requests-3000-1.ndjson"), 200..300);
        let stamps = |n| -> Vec<i64> { recent_rows(d, n).iter().map(|r| r.ts_ms).collect() };
        assert_eq!(stamps(300), (0..300).collect::<Vec<_>>());
        assert_eq!(stamps(150), (150..300).collect::<Vec<_>>());
    }
}
