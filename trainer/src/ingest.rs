//! Training ingest with bounded memory: the served requests of any volume of logs, parsed in
//! parallel and reduced to a uniform sample of at most `cap` distinct records.
//!
//! Each worker takes whole files (a server rotates its log every 64 MB or hour, so a day is
//! dozens of files) and keeps its own bottom-`cap` sample: every record gets a key, a hash of
//! its line, and a worker keeps the `cap` smallest keys it has seen. The `cap` smallest keys of
//! the workers' samples together are the `cap` smallest of all records, so the result does not
//! depend on how files were shared out, and each distinct record is equally likely to be in
//! it. A record read twice (the same file copied into two folders) has the same key and is kept
//! once: a sample of logs with overlapping copies is the sample of the logs without them.
//! Memory is the sample's, whatever the volume; under `cap` records nothing is left out.
//!
//! A line that does not parse, or a record of another schema, still fails the whole run naming
//! its file and line, as [`logs::load`] does.

use crate::logs::{self, LoadError};
use contract::{FeatureVector, RequestRecord};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default bound on the records a training run holds (`trainer train --sample-rows`). A
/// latency tree is grown on at most 100,000 of them, so a million leaves every tree fresh rows.
pub const DEFAULT_CAP: usize = 1_000_000;

/// A served request, as much of it as training uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// Arrival (Unix ms).
    pub ts_ms: i64,
    /// Route template.
    pub route: String,
    /// HTTP status.
    pub status: u16,
    /// Total latency (ms).
    pub latency_ms: f32,
    /// Of it, the wait for admission (ms).
    pub queue_ms: f32,
    /// The request's features.
    pub features: FeatureVector,
    /// Who answered the logged prediction (`onnx`, `online`, ...).
    pub source: String,
    /// The served prediction, p50 and p90 (ms).
    pub predicted_ms: [f32; 2],
    /// The online statistics' prediction beside it (ms; 0 in older logs).
    pub online_ms: [f32; 2],
    /// The anomaly score the server gave.
    pub anomaly_score: f32,
}

/// What [`sample`] read and kept.
#[derive(Debug, Default)]
pub struct Sample {
    /// The kept served requests, oldest first.
    pub rows: Vec<Served>,
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Records read (copies included).
    pub read: u64,
    /// Served requests read (copies included), of which `rows` is the sample.
    pub served: u64,
    /// Shed requests, left out (their latency is the cost of saying no).
    pub shed: u64,
    /// Records found twice among those the sample kept or met while they could still be kept.
    pub duplicates: u64,
    /// Records left out, by reason (implausible values).
    pub dropped: BTreeMap<String, u64>,
}

/// One worker's bottom-`cap` sample: the rows, a max-heap of their keys (to know which to
/// evict) and the slot of each key (to see a copy coming).
struct Reservoir {
    cap: usize,
    rows: Vec<(u64, Served)>,
    heap: BinaryHeap<(u64, usize)>,
    slots: HashMap<u64, usize>,
    duplicates: u64,
}

impl Reservoir {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            rows: Vec::new(),
            heap: BinaryHeap::new(),
            slots: HashMap::new(),
            duplicates: 0,
        }
    }

    /// Whether a record with this key could be kept (so is worth building).
    fn wants(&mut self, key: u64) -> bool {
        if self.slots.contains_key(&key) {
            // Two distinct lines share a 64-bit key about once in 10^5 runs of 20 million
            // records; a copy of a line is far likelier.
            self.duplicates += 1;
            return false;
        }
        self.rows.len() < self.cap || self.heap.peek().is_some_and(|&(top, _)| key < top)
    }

    /// Keeps `row` (after [`Reservoir::wants`] said so), evicting the largest key when full.
    fn keep(&mut self, key: u64, row: Served) {
        if self.rows.len() < self.cap {
            self.slots.insert(key, self.rows.len());
            self.heap.push((key, self.rows.len()));
            self.rows.push((key, row));
        } else if let Some((top, slot)) = self.heap.pop() {
            self.slots.remove(&top);
            self.slots.insert(key, slot);
            self.heap.push((key, slot));
            self.rows[slot] = (key, row);
        }
    }

    fn offer(&mut self, key: u64, row: Served) {
        if self.wants(key) {
            self.keep(key, row);
        }
    }
}

/// One worker's counts and sample.
struct Part {
    reservoir: Reservoir,
    read: u64,
    served: u64,
    shed: u64,
    implausible: u64,
}

fn key_of(line: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    line.trim_end().hash(&mut hasher);
    hasher.finish()
}

/// Parses a line: the fast path without error paths, and on failure the same line again
/// through [`logs::parse`] for a message that names the field.
fn parse(line: &str, path: &Path, line_no: usize) -> Result<RequestRecord, LoadError> {
    serde_json::from_str(line).or_else(|_| logs::parse(line, path, line_no))
}

fn read_file(path: &Path, expected: &str, part: &mut Part) -> Result<(), LoadError> {
    let mut reader = logs::open(path)?;
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|error| LoadError::Io {
            path: path.to_owned(),
            error,
        })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record = parse(&line, path, line_no)?;
        part.read += 1;
        if record.schema != expected {
            return Err(LoadError::Schema {
                path: path.to_owned(),
                line: line_no,
                found: record.schema,
                expected: expected.to_owned(),
            });
        }
        if !logs::plausible(&record) {
            part.implausible += 1;
            continue;
        }
        if record.shed {
            part.shed += 1;
            continue;
        }
        part.served += 1;
        let key = key_of(&line);
        if part.reservoir.wants(key) {
            part.reservoir.keep(
                key,
                Served {
                    ts_ms: record.ts_ms,
                    route: record.route,
                    status: record.status,
                    latency_ms: record.latency_ms,
                    queue_ms: record.queue_ms,
                    features: record.features,
                    source: record.source,
                    predicted_ms: [record.predicted_p50_ms, record.predicted_p90_ms],
                    online_ms: record.online_ms,
                    anomaly_score: record.anomaly_score,
                },
            );
        }
    }
}

/// Reads every file `spec` names on `threads` workers and keeps a uniform sample of at most
/// `cap` distinct served requests, oldest first (ties in the order of their keys).
///
/// # Errors
/// See [`LoadError`]; with several failing files, the first in file order is reported.
pub fn sample(spec: &str, cap: usize, threads: usize) -> Result<Sample, LoadError> {
    let files = logs::find_files(spec)?;
    let expected = contract::features::fingerprint_hex();
    let cap = cap.max(1);
    let next = AtomicUsize::new(0);
    let workers = threads.clamp(1, files.len());
    let results: Vec<Result<Part, (usize, LoadError)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut part = Part {
                        reservoir: Reservoir::new(cap),
                        read: 0,
                        served: 0,
                        shed: 0,
                        implausible: 0,
                    };
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(index) else {
                            return Ok(part);
                        };
                        read_file(path, &expected, &mut part).map_err(|e| (index, e))?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut parts = Vec::new();
    let mut first_error: Option<(usize, LoadError)> = None;
    for result in results {
        match result {
            Ok(part) => parts.push(part),
            Err((index, e)) => {
                if first_error.as_ref().is_none_or(|(i, _)| index < *i) {
                    first_error = Some((index, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let mut merged = Reservoir::new(cap);
    let mut out = Sample {
        files,
        ..Sample::default()
    };
    let mut implausible = 0;
    for part in parts {
        out.read += part.read;
        out.served += part.served;
        out.shed += part.shed;
        implausible += part.implausible;
        merged.duplicates += part.reservoir.duplicates;
        for (key, row) in part.reservoir.rows {
            merged.offer(key, row);
        }
    }
    if out.read == 0 {
        return Err(LoadError::Empty(spec.to_owned()));
    }
    if implausible > 0 {
        out.dropped
            .insert("implausible_values".to_owned(), implausible);
    }
    out.duplicates = merged.duplicates;
    let mut rows = merged.rows;
    rows.sort_by_key(|(key, row)| (row.ts_ms, *key));
    out.rows = rows.into_iter().map(|(_, row)| row).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A valid record line of `route` at `ts_ms` with `latency_ms`.
    fn line(ts_ms: i64, route: &str, latency_ms: f32) -> String {
        let record = RequestRecord {
            route: route.to_owned(),
            ..crate::evaluate::tests::record(ts_ms, latency_ms, 1.0, 1.0, false)
        };
        serde_json::to_string(&record).expect("json")
    }

    fn write(path: &Path, lines: &[String]) {
        let mut file = std::fs::File::create(path).expect("file");
        for l in lines {
            writeln!(file, "{l}").expect("write");
        }
    }

    /// Four files of 2,500 records each.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in 0..4_i64 {
            let lines: Vec<String> = (0..2_500_i64)
                .map(|i| {
                    let n = f * 2_500 + i;
                    #[allow(clippy::cast_precision_loss)]
                    line(1_000 + n, ["GET /a", "GET /b"][(n % 2) as usize], n as f32)
                })
                .collect();
            write(&dir.path().join(format!("requests-{f}.ndjson")), &lines);
        }
        dir
    }

    #[test]
    fn under_the_bound_every_record_is_kept_oldest_first() {
        let dir = folder();
        let s = sample(&dir.path().to_string_lossy(), 1_000_000, 2).expect("sample");
        assert_eq!((s.read, s.served, s.rows.len()), (10_000, 10_000, 10_000));
        assert!(s.rows.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms));
    }

    #[test]
    fn over_the_bound_the_sample_is_bounded_uniform_and_independent_of_the_workers() {
        let dir = folder();
        let spec = dir.path().to_string_lossy().into_owned();
        let one = sample(&spec, 1_000, 1).expect("sample");
        let two = sample(&spec, 1_000, 2).expect("sample");
        assert_eq!(one.rows.len(), 1_000);
        assert_eq!(one.served, 10_000);
        assert_eq!(one.rows, two.rows, "the workers do not change the sample");
        // Uniform over time: each file's quarter of the span holds about a quarter.
        for f in 0..4 {
            let lo = 1_000 + f * 2_500;
            let n = one
                .rows
                .iter()
                .filter(|r| (lo..lo + 2_500).contains(&r.ts_ms))
                .count();
            assert!((175..=325).contains(&n), "quarter {f}: {n} of 1000");
        }
    }

    #[test]
    fn copies_of_a_file_are_read_once() {
        let dir = folder();
        let copy = tempfile::tempdir().expect("tempdir");
        for f in 0..2 {
            let name = format!("requests-{f}.ndjson");
            std::fs::copy(dir.path().join(&name), copy.path().join(&name)).expect("copy");
        }
        let spec = dir.path().to_string_lossy().into_owned();
        let both = format!("{spec},{}", copy.path().display());
        for cap in [1_000, 1_000_000] {
            let alone = sample(&spec, cap, 2).expect("sample");
            let with_copies = sample(&both, cap, 2).expect("sample");
            assert_eq!(with_copies.read, 15_000);
            assert_eq!(alone.rows, with_copies.rows, "cap {cap}");
            assert!(with_copies.duplicates > 0);
        }
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_line_on_any_worker() {
        let dir = folder();
        let mut lines: Vec<String> = (0..10).map(|i| line(i, "GET /a", 1.0)).collect();
        lines[6] = lines[6].replace("\"latency_ms\":1.0", "\"latency_ms\":\"slow\"");
        let bad = dir.path().join("requests-9.ndjson");
        write(&bad, &lines);
        for threads in [1, 2, 4] {
            let message = sample(&dir.path().to_string_lossy(), 100, threads)
                .expect_err("a bad line fails the run")
                .to_string();
            assert!(
                message.starts_with(&format!(
                    "{}:7: not a valid request record: latency_ms:",
                    bad.display()
                )),
                "{message}"
            );
        }
    }
}
