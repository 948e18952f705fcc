//! The request log: one JSON line per request under `data/logs/`, for the trainer.
//!
//! The request path only does a `try_send` on a bounded channel; a full channel drops the record
//! and counts it (the request never waits on disk). A dedicated OS thread turns records into
//! [`contract::RequestRecord`] lines, rotates files by size and age, deletes files past the
//! retention, and keeps per-statement aggregates for the metrics endpoint. A rotated file is
//! gzipped beside it by another thread (`telemetry.compress_rotated`), a fifth of its size: the
//! trainer and the retrain comparison read both forms.

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

/// Flushes asked of the writer and done by it: the writer marks a request done once it found
/// the channel empty after the request and flushed its file.
#[derive(Default)]
struct Flushes {
    requested: AtomicU64,
    done: AtomicU64,
}

/// The request log's trouble with its folder (unwritable, full): records lost to it, and the
/// error while it lasts. Requests never wait for the log, so trouble costs records, not time.
#[derive(Default)]
pub struct LogHealth {
    /// Records lost because they could not be written.
    pub lost: AtomicU64,
    /// Since when (Unix ms) and why writing fails, while it does.
    failing: Mutex<Option<(i64, String)>>,
}

impl LogHealth {
    /// Since when (Unix ms) and why writing fails, while it does.
    pub fn failing(&self) -> Option<(i64, String)> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, lost: u64, error: &std::io::Error, dir: &Path) {
        self.lost.fetch_add(lost, Ordering::Relaxed);
        let mut failing = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failing.is_none() {
            tracing::warn!(%error, dir = %dir.display(), "cannot write the request log; records are dropped and counted until it can");
        }
        let since = failing.as_ref().map_or_else(crate::unix_ms, |f| f.0);
        *failing = Some((since, error.to_string()));
    }

    fn fine(&self, dir: &Path) {
        let mut failing = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failing.take().is_some() {
            tracing::info!(dir = %dir.display(), "the request log is written again");
        }
    }
}

/// How long the writer waits after an I/O error before it tries its folder again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Telemetry state shared with the request path.
pub struct Telemetry {
    sender: Option<SyncSender<Pending>>,
    flushes: Arc<Flushes>,
    /// The log folder's trouble, if any.
    pub health: Arc<LogHealth>,
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
    /// Log free text in paths as it came (`telemetry.keep_query_text`).
    pub keep_query_text: bool,
    /// Gzip each file once it is rotated (`telemetry.compress_rotated`).
    pub compress_rotated: bool,
    /// This instance's name in file names ([`instance_name`]).
    pub instance: String,
}

/// The instance's name for its log files: `configured` or the host name, with every character
/// outside `[A-Za-z0-9._-]` replaced by `_`, at most 64 characters.
pub fn instance_name(configured: Option<&str>) -> String {
    let host = || {
        fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    };
    let name = configured.map_or_else(host, str::to_owned);
    let name: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() { "host".into() } else { name }
}

impl Telemetry {
    /// Starts the writer thread.
    pub fn start(config: WriterConfig) -> Self {
        let (sender, receiver) = sync_channel(config.capacity);
        let written = Arc::new(AtomicU64::new(0));
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let flushes = Arc::new(Flushes::default());
        let health = Arc::new(LogHealth::default());
        let (w, q, f, h) = (
            written.clone(),
            queries.clone(),
            flushes.clone(),
            health.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || writer(receiver, config, w, q, &f, &h));
        if let Err(err) = &spawned {
            tracing::error!(error = %err, "cannot start the request log writer; request logs are off");
        }
        Self {
            sender: spawned.ok().map(|_| sender),
            flushes,
            health,
            dropped: AtomicU64::new(0),
            written,
            queries,
        }
    }

    /// No telemetry at all (features off).
    pub fn disabled() -> Self {
        Self {
            sender: None,
            flushes: Arc::new(Flushes::default()),
            health: Arc::new(LogHealth::default()),
            dropped: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
            queries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Waits (at most `timeout`) until every record handed over before the call is written and
    /// flushed to its file: what a draining server does before it exits. True when done (or
    /// when there is no writer).
    pub fn flush(&self, timeout: Duration) -> bool {
        if self.sender.is_none() {
            return true;
        }
        let asked = self.flushes.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = Instant::now() + timeout;
        while self.flushes.done.load(Ordering::Acquire) < asked {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
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
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    /// Records in the buffer since the last flush that succeeded (lost if the next fails).
    unflushed: u64,
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

fn open_log(dir: &Path, instance: &str) -> std::io::Result<LogFile> {
    fs::create_dir_all(dir)?;
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // A file rotated within the same millisecond (or its gzipped copy) is not reopened.
    let pid = std::process::id();
    let mut path = dir.join(format!("requests-{ms}-{instance}-{pid}.ndjson"));
    for n in 1.. {
        if !path.exists() && !path.with_extension("ndjson.gz").exists() {
            break;
        }
        path = dir.join(format!("requests-{ms}-{instance}-{pid}-{n}.ndjson"));
    }
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    Ok(LogFile {
        path,
        out: BufWriter::with_capacity(256 * 1024, file),
        bytes: 0,
        unflushed: 0,
        opened: Instant::now(),
        statements_written: std::collections::HashSet::new(),
    })
}

/// Gzips a closed log file to `<name>.gz` beside it, through a temporary name so that no
/// reader sees half a file, then removes the original (a reader that listed both meanwhile
/// prefers the plain one; the trainer keeps one copy of a record read twice).
///
/// # Errors
/// An I/O error; the original is then left as it was.
pub fn compress(path: &Path) -> std::io::Result<PathBuf> {
    let gz = path.with_extension("ndjson.gz");
    let tmp = path.with_extension("ndjson.gz.tmp");
    let mut input = File::open(path)?;
    let out = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let written = std::io::copy(&mut input, &mut encoder)
        .and_then(|_| encoder.finish())
        .and_then(|out| {
            out.into_inner()
                .map_err(std::io::IntoInnerError::into_error)
        })
        .and_then(|file| file.sync_all());
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)?;
    Ok(gz)
}

/// Starts the thread that gzips rotated files, or none when it cannot start (files then stay
/// plain).
fn compressor() -> Option<std::sync::mpsc::Sender<PathBuf>> {
    let (sender, receiver) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::Builder::new()
        .name("request-log-gzip".into())
        .spawn(move || {
            for path in receiver {
                if let Err(err) = compress(&path) {
                    tracing::warn!(path = %path.display(), error = %err, "cannot gzip a rotated request log; it stays plain");
                }
            }
        })
        .map_err(|err| tracing::warn!(error = %err, "cannot start the request log compressor; rotated logs stay plain"))
        .ok()
        .map(|_| sender)
}

/// Deletes request logs older than the retention.
fn prune(dir: &Path, retention: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_log = name.to_str().is_some_and(|n| {
            n.starts_with("requests-")
                && [".ndjson", ".ndjson.gz", ".ndjson.gz.tmp"]
                    .iter()
                    .any(|end| n.ends_with(end))
        });
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
    flushes: &Flushes,
    health: &LogHealth,
) {
    let mut file: Option<LogFile> = None;
    let gzip = if config.compress_rotated && config.write_files {
        compressor()
    } else {
        None
    };
    let mut encoder = Encoder::new();
    let redactor = crate::redact::Redactor::new(config.keep_query_text);
    let mut last_flush = Instant::now();
    // After an I/O error the folder is tried again only from then on.
    let mut retry_at: Option<Instant> = None;
    // Flushes `file`; on an error, the records in its buffer are lost and counted, and the file
    // is dropped (the next record opens a new one once the folder may take it again).
    let flush = |file: &mut Option<LogFile>, retry_at: &mut Option<Instant>| {
        if let Some(f) = file.as_mut() {
            match f.out.flush() {
                Ok(()) => {
                    if f.unflushed > 0 {
                        health.fine(&config.dir);
                    }
                    f.unflushed = 0;
                }
                Err(err) => {
                    // They were counted as written when they went into the buffer.
                    written.fetch_sub(f.unflushed, Ordering::Relaxed);
                    health.fail(f.unflushed, &err, &config.dir);
                    *file = None;
                    *retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
                }
            }
        }
    };
    loop {
        // Read before looking at the channel: when it is then empty, every record sent before
        // that flush was asked for has been taken.
        let asked = flushes.requested.load(Ordering::Acquire);
        // Drain, then sleep: the writer polls instead of blocking in `recv`, so a sender never
        // has to wake it (a futex wake and a context switch per request on a busy 2-core box).
        let pending = match receiver.try_recv() {
            Ok(p) => Some(p),
            Err(TryRecvError::Empty) => {
                flush(&mut file, &mut retry_at);
                flushes.done.store(asked, Ordering::Release);
                if flushes.requested.load(Ordering::Acquire) == asked {
                    std::thread::sleep(Duration::from_millis(50));
                }
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
                    let closed = file.as_ref().map(|f| f.path.clone());
                    flush(&mut file, &mut retry_at);
                    file = None;
                    if let (Some(gzip), Some(closed)) = (&gzip, closed) {
                        let _ = gzip.send(closed);
                    }
                    prune(&config.dir, config.retention);
                }
                if file.is_none() && retry_at.is_none_or(|at| Instant::now() >= at) {
                    match open_log(&config.dir, &config.instance) {
                        Ok(f) => {
                            file = Some(f);
                            retry_at = None;
                        }
                        Err(err) => {
                            health.fail(0, &err, &config.dir);
                            retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
                        }
                    }
                }
                if file.is_none() {
                    health.lost.fetch_add(1, Ordering::Relaxed);
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
                    let path = redactor.apply(&p.path);
                    let line = Line {
                        ts_ms: p.ts_ms,
                        schema: &encoder.schema,
                        route: encoder.labels.get(p.route).map_or("other", String::as_str),
                        path: &path,
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
                    let result = serde_json::to_writer(&mut counter, &line)
                        .map_err(std::io::Error::from)
                        .and_then(|()| counter.write_all(b"\n"));
                    let bytes = counter.bytes;
                    match result {
                        Ok(()) => {
                            f.bytes += bytes;
                            f.unflushed += 1;
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            // The buffer spilled into a file that would not take it: the
                            // records in it, counted as written, are lost with this one.
                            written.fetch_sub(f.unflushed, Ordering::Relaxed);
                            health.fail(f.unflushed + 1, &err, &config.dir);
                            file = None;
                            retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
                        }
                    }
                }
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(500) {
            flush(&mut file, &mut retry_at);
            last_flush = Instant::now();
        }
    }
    flush(&mut file, &mut retry_at);
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

    fn pending(ts_ms: i64) -> Pending {
        Pending {
            ts_ms,
            route: 0,
            path: "/api/products".to_owned(),
            priority: Priority::Normal,
            features: [0.0; contract::FEATURE_COUNT],
            prediction: Prediction::NONE,
            status: 200,
            latency_ms: 1.5,
            db_ms: 1.0,
            queue_ms: 0.0,
            cache: CacheOutcome::Off,
            shed: false,
            anomaly_score: 0.0,
            queries: Vec::new(),
        }
    }

    /// The log folder's file names ending in `end`.
    fn named(dir: &Path, end: &str) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .expect("log folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().ends_with(end))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotated_logs_are_gzipped_and_every_record_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let telemetry = Telemetry::start(WriterConfig {
            dir: dir.path().to_owned(),
            capacity: 64,
            // Every record goes to a file of its own: the next one rotates it.
            rotate_bytes: 1,
            rotate_age: Duration::from_secs(3_600),
            retention: Duration::from_secs(3_600),
            write_files: true,
            keep_query_text: false,
            compress_rotated: true,
            instance: "test-instance".into(),
        });
        for ts in 1..=3 {
            telemetry.send(pending(ts));
            assert!(
                telemetry.flush(Duration::from_secs(10)),
                "record {ts} written"
            );
        }
        // The two rotated files are gzipped by another thread: wait for it, within a bound.
        let deadline = Instant::now() + Duration::from_secs(20);
        while named(dir.path(), ".ndjson.gz").len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let gz = named(dir.path(), ".ndjson.gz");
        let plain = named(dir.path(), ".ndjson");
        assert_eq!((gz.len(), plain.len()), (2, 1), "{gz:?} {plain:?}");
        assert!(named(dir.path(), ".tmp").is_empty());
        let pid = format!("-test-instance-{}", std::process::id());
        for path in gz.iter().chain(&plain) {
            let name = path.file_name().expect("name").to_string_lossy();
            assert!(name.contains(&pid), "{name} names the instance and its pid");
        }
        let mut stamps = Vec::new();
        for path in gz.iter().chain(&plain) {
            let file = File::open(path).expect("open");
            let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
                Box::new(flate2::read::MultiGzDecoder::new(file))
            } else {
                Box::new(file)
            };
            for line in std::io::BufRead::lines(std::io::BufReader::new(reader)) {
                let record: contract::RequestRecord =
                    serde_json::from_str(&line.expect("line")).expect("a request record");
                stamps.push(record.ts_ms);
            }
        }
        stamps.sort_unstable();
        assert_eq!(stamps, [1, 2, 3]);
    }

    #[test]
    fn instance_names_are_safe_in_file_names() {
        assert_eq!(instance_name(Some("web-1.eu")), "web-1.eu");
        assert_eq!(instance_name(Some("a/b c")), "a_b_c");
        assert_eq!(instance_name(Some("")), "host");
        assert_eq!(instance_name(Some(&"x".repeat(100))).len(), 64);
        assert!(!instance_name(None).is_empty());
    }

    #[test]
    fn compressing_leaves_one_complete_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("requests-1-1.ndjson");
        let text: String = (0..1_000).map(|i| format!("{{\"line\":{i}}}\n")).collect();
        fs::write(&path, &text).expect("write");
        let gz = compress(&path).expect("compress");
        assert_eq!(gz, dir.path().join("requests-1-1.ndjson.gz"));
        assert!(!path.exists());
        let mut back = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(File::open(&gz).expect("open")),
            &mut back,
        )
        .expect("gunzip");
        assert_eq!(back, text);
        assert!(fs::metadata(&gz).expect("size").len() * 3 < text.len() as u64);
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
