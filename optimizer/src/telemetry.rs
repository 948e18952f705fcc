//! The request log: one JSON line per request under `data/logs/`, for the trainer.
//!
//! The request path only does a `try_send` on a bounded channel; a full channel drops the record
//! and counts it (the request never waits on disk). A dedicated OS thread turns records into
//! [`contract::RequestRecord`] lines, rotates files by size and age, deletes files past the
//! retention, and keeps per-statement aggregates for the metrics endpoint.

use super::admission::Priority;
use super::cache::CacheOutcome;
use super::predictor::Prediction;
use super::queries::{QueryExec, fingerprint, normalize};
use contract::FeatureVector;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the request path hands to the writer: plain values, turned into strings off the path.
#[derive(Debug)]
pub struct Pending {
    /// Unix ms at arrival.
    pub ts_ms: i64,
    /// Route index.
    pub route: usize,
    /// Path and query.
    pub path: String,
    /// Priority admitted with.
    pub priority: Priority,
    /// Features used.
    pub features: FeatureVector,
    /// Prediction used.
    pub prediction: Prediction,
    /// HTTP status.
    pub status: u16,
    /// Total latency (ms).
    pub latency_ms: f32,
    /// Database time (ms).
    pub db_ms: f32,
    /// Admission wait (ms).
    pub queue_ms: f32,
    /// Cache outcome.
    pub cache: CacheOutcome,
    /// Shed by admission.
    pub shed: bool,
    /// Anomaly score.
    pub anomaly_score: f32,
    /// Statements run.
    pub queries: Vec<QueryExec>,
}

/// Aggregates for one statement fingerprint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryAggregate {
    /// Fingerprint.
    pub fingerprint: String,
    /// Normalized statement.
    pub statement: String,
    /// Executions.
    pub calls: u64,
    /// Total time (ms).
    pub total_ms: f64,
    /// Mean time (ms).
    pub mean_ms: f64,
    /// 95th percentile over the last 512 executions (ms).
    pub p95_ms: f64,
    /// Rows returned or affected, total.
    pub rows: u64,
    #[serde(skip)]
    recent: Vec<f32>,
    #[serde(skip)]
    next: usize,
}

const RECENT: usize = 512;

impl QueryAggregate {
    /// An aggregate of no executions yet.
    fn new(fingerprint: String, statement: String) -> Self {
        Self {
            fingerprint,
            statement,
            calls: 0,
            total_ms: 0.0,
            mean_ms: 0.0,
            p95_ms: 0.0,
            rows: 0,
            recent: Vec::new(),
            next: 0,
        }
    }

    fn add(&mut self, ms: f32, rows: u64) {
        self.calls += 1;
        self.total_ms += f64::from(ms);
        self.rows += rows;
        if self.recent.len() < RECENT {
            self.recent.push(ms);
        } else {
            self.recent[self.next] = ms;
            self.next = (self.next + 1) % RECENT;
        }
    }

    /// The 95th percentile of the last `n` executions (at most the 512 kept), in ms.
    fn p95_of_last(&self, n: usize) -> f64 {
        // Oldest first: once the ring is full, `next` is the oldest slot.
        let (newer, older) = self.recent.split_at(self.next.min(self.recent.len()));
        let ordered: Vec<f32> = older.iter().chain(newer).copied().collect();
        let mut last = ordered[ordered.len().saturating_sub(n)..].to_vec();
        p95(&mut last)
    }

    fn finish(&self) -> Self {
        let mut out = self.clone();
        {
            out.mean_ms = if self.calls == 0 {
                0.0
            } else {
                self.total_ms / self.calls as f64
            };
        }
        out.p95_ms = p95(&mut self.recent.clone());
        out
    }
}

/// The 95th percentile (nearest rank) of `values`; 0 when empty.
fn p95(values: &mut [f32]) -> f64 {
    values.sort_by(f32::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let idx = ((values.len() as f64 * 0.95).ceil() as usize).saturating_sub(1);
    values.get(idx).map_or(0.0, |v| f64::from(*v))
}

/// Telemetry state shared with the request path.
pub struct Telemetry {
    sender: Option<SyncSender<Pending>>,
    /// Records dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Records written.
    pub written: Arc<AtomicU64>,
    queries: Arc<Mutex<HashMap<String, QueryAggregate>>>,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Folder for log files.
    pub dir: PathBuf,
    /// Bounded channel size.
    pub capacity: usize,
    /// Rotate after this many bytes.
    pub rotate_bytes: u64,
    /// Rotate after this long.
    pub rotate_age: Duration,
    /// Delete files older than this.
    pub retention: Duration,
    /// Write files at all (aggregates are kept either way).
    pub write_files: bool,
}

impl Telemetry {
    /// Starts the writer thread.
    pub fn start(config: WriterConfig) -> Self {
        let (sender, receiver) = sync_channel(config.capacity);
        let written = Arc::new(AtomicU64::new(0));
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let (w, q) = (written.clone(), queries.clone());
        let spawned = std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || writer(receiver, config, w, q));
        if let Err(err) = &spawned {
            tracing::error!(error = %err, "cannot start the request log writer; request logs are off");
        }
        Self {
            sender: spawned.ok().map(|_| sender),
            dropped: AtomicU64::new(0),
            written,
            queries,
        }
    }

    /// No telemetry at all (features off).
    pub fn disabled() -> Self {
        Self {
            sender: None,
            dropped: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
            queries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Hands a record to the writer without waiting; a full channel drops it and counts it.
    pub fn send(&self, pending: Pending) {
        let Some(sender) = &self.sender else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(pending)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Executions of `fingerprint` after its first `calls_before`, and their p95 (ms), once
    /// there are any; counts only the last 512 executions.
    pub fn p95_since(&self, fingerprint: &str, calls_before: u64) -> Option<(u64, f64)> {
        let map = self
            .queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let agg = map.get(fingerprint)?;
        let since = agg.calls.checked_sub(calls_before).filter(|n| *n > 0)?;
        let n = usize::try_from(since).unwrap_or(usize::MAX);
        Some((since, agg.p95_of_last(n)))
    }

    /// Statement aggregates, slowest total first.
    pub fn query_aggregates(&self) -> Vec<QueryAggregate> {
        let map = self
            .queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<QueryAggregate> = map.values().map(QueryAggregate::finish).collect();
        all.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        all
    }
}

/// One log line, borrowing from the pending record: the same JSON shape as
/// [`contract::RequestRecord`] (the integration tests parse it back), built without copying.
#[derive(Serialize)]
struct Line<'a> {
    ts_ms: i64,
    schema: &'a str,
    route: &'a str,
    path: &'a str,
    priority: &'a str,
    features: &'a contract::FeatureVector,
    predicted_p50_ms: f32,
    predicted_p90_ms: f32,
    confidence: f32,
    source: &'a str,
    model_ms: [f32; 2],
    online_ms: [f32; 2],
    status: u16,
    latency_ms: f32,
    db_ms: f32,
    queue_ms: f32,
    cache: &'a str,
    shed: bool,
    anomaly_score: f32,
    queries: Vec<LineQuery<'a>>,
}

#[derive(Serialize)]
struct LineQuery<'a> {
    fingerprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<&'a str>,
    duration_ms: f32,
    rows: u64,
}

/// A statement's normalized text and fingerprint, computed once per distinct statement.
struct Known {
    normalized: String,
    fingerprint: String,
}

/// Writer-side state that turns pending records into lines cheaply.
struct Encoder {
    schema: String,
    labels: Vec<String>,
    known: HashMap<String, Known>,
}

impl Encoder {
    fn new() -> Self {
        Self {
            schema: contract::features::fingerprint_hex(),
            labels: (0..contract::ROUTES.len())
                .map(contract::routes::route_label)
                .collect(),
            known: HashMap::new(),
        }
    }

    fn known(&mut self, statement: &str) {
        if !self.known.contains_key(statement) {
            let normalized = normalize(statement);
            let fingerprint = fingerprint(&normalized);
            self.known.insert(
                statement.to_owned(),
                Known {
                    normalized,
                    fingerprint,
                },
            );
        }
    }
}

struct LogFile {
    out: BufWriter<File>,
    bytes: u64,
    opened: Instant,
    /// Fingerprints whose statement text this file already holds.
    statements_written: std::collections::HashSet<String>,
}

/// Counts bytes on their way into the buffered file (for size-based rotation).
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn open_log(dir: &Path) -> std::io::Result<LogFile> {
    fs::create_dir_all(dir)?;
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("requests-{ms}-{}.ndjson", std::process::id()));
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(LogFile {
        out: BufWriter::with_capacity(256 * 1024, file),
        bytes: 0,
        opened: Instant::now(),
        statements_written: std::collections::HashSet::new(),
    })
}

/// Deletes request logs older than the retention.
fn prune(dir: &Path, retention: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_log = name
            .to_str()
            .is_some_and(|n| n.starts_with("requests-") && n.ends_with(".ndjson"));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > retention);
        if is_log && old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn writer(
    receiver: Receiver<Pending>,
    config: WriterConfig,
    written: Arc<AtomicU64>,
    queries: Arc<Mutex<HashMap<String, QueryAggregate>>>,
) {
    let mut file: Option<LogFile> = None;
    let mut encoder = Encoder::new();
    let mut last_flush = Instant::now();
    let mut warned = false;
    loop {
        // Drain, then sleep: the writer polls instead of blocking in `recv`, so a sender never
        // has to wake it (a futex wake and a context switch per request on a busy 2-core box).
        let pending = match receiver.try_recv() {
            Ok(p) => Some(p),
            Err(TryRecvError::Empty) => {
                if let Some(f) = file.as_mut() {
                    let _ = f.out.flush();
                }
                std::thread::sleep(Duration::from_millis(50));
                None
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if let Some(pending) = pending {
            for q in &pending.queries {
                encoder.known(&q.statement);
            }
            let durations: Vec<f32> = pending
                .queries
                .iter()
                .map(|q| (q.duration.as_secs_f64() * 1000.0) as f32)
                .collect();
            {
                let mut map = queries
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (q, ms) in pending.queries.iter().zip(&durations) {
                    let Some(k) = encoder.known.get(&q.statement) else {
                        continue;
                    };
                    if let Some(agg) = map.get_mut(&k.fingerprint) {
                        agg.add(*ms, q.rows);
                    } else {
                        let mut agg =
                            QueryAggregate::new(k.fingerprint.clone(), k.normalized.clone());
                        agg.add(*ms, q.rows);
                        map.insert(k.fingerprint.clone(), agg);
                    }
                }
            }
            if config.write_files {
                let rotate = file.as_ref().is_some_and(|f| {
                    f.bytes >= config.rotate_bytes || f.opened.elapsed() >= config.rotate_age
                });
                if rotate {
                    if let Some(mut f) = file.take() {
                        let _ = f.out.flush();
                    }
                    prune(&config.dir, config.retention);
                }
                if file.is_none() {
                    match open_log(&config.dir) {
                        Ok(f) => file = Some(f),
                        Err(err) if !warned => {
                            tracing::warn!(error = %err, dir = %config.dir.display(), "cannot open request log");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                }
                if let Some(f) = file.as_mut() {
                    let mut line_queries = Vec::with_capacity(pending.queries.len());
                    for (q, ms) in pending.queries.iter().zip(&durations) {
                        let Some(k) = encoder.known.get(&q.statement) else {
                            continue;
                        };
                        let first = f.statements_written.insert(k.fingerprint.clone());
                        line_queries.push(LineQuery {
                            fingerprint: &k.fingerprint,
                            statement: first.then_some(k.normalized.as_str()),
                            duration_ms: *ms,
                            rows: q.rows,
                        });
                    }
                    let p = &pending;
                    let line = Line {
                        ts_ms: p.ts_ms,
                        schema: &encoder.schema,
                        route: encoder.labels.get(p.route).map_or("other", String::as_str),
                        path: &p.path,
                        priority: p.priority.as_str(),
                        features: &p.features,
                        predicted_p50_ms: p.prediction.p50_ms,
                        predicted_p90_ms: p.prediction.p90_ms,
                        confidence: p.prediction.confidence,
                        source: p.prediction.source.as_str(),
                        model_ms: p.prediction.model_ms,
                        online_ms: p.prediction.online_ms,
                        status: p.status,
                        latency_ms: p.latency_ms,
                        db_ms: p.db_ms,
                        queue_ms: p.queue_ms,
                        cache: p.cache.as_str(),
                        shed: p.shed,
                        anomaly_score: p.anomaly_score,
                        queries: line_queries,
                    };
                    let mut counter = CountingWriter {
                        inner: &mut f.out,
                        bytes: 0,
                    };
                    if serde_json::to_writer(&mut counter, &line).is_ok()
                        && counter.write_all(b"\n").is_ok()
                    {
                        f.bytes += counter.bytes;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(500) {
            if let Some(f) = file.as_mut() {
                let _ = f.out.flush();
            }
            last_flush = Instant::now();
        }
    }
    if let Some(mut f) = file {
        let _ = f.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(values: impl IntoIterator<Item = f32>) -> QueryAggregate {
        let mut agg = QueryAggregate::new(String::new(), String::new());
        for v in values {
            agg.add(v, 1);
        }
        agg
    }

    #[test]
    fn p95_of_the_last_executions_ignores_older_ones_even_after_the_ring_wraps() {
        // 600 slow executions, then 100 fast ones: the ring has wrapped.
        let agg = aggregate((0..600).map(|_| 150.0).chain((0..100).map(|_| 15.0)));
        assert!((agg.p95_of_last(100) - 15.0).abs() < 1e-9);
        assert!((agg.p95_of_last(200) - 150.0).abs() < 1e-9);
        assert!((agg.finish().p95_ms - 150.0).abs() < 1e-9);
    }
}
