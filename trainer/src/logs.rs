//! Reading the server's request logs: every line is checked against the `contract` types and
//! the schema fingerprint, then the records become two polars frames (requests, statements).
//!
//! Parsing goes through serde and `contract::RequestRecord` rather than polars' own NDJSON
//! reader for one reason: a bad line must be reported with its file and line number, and the
//! record type the server wrote is the definition of a good line. Each record is turned into
//! columns at once and dropped, so memory grows with the columns, not with the JSON.

use contract::{FEATURE_COUNT, RequestRecord};
use polars::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Why logs could not be read. Every variant names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The pattern is not a valid glob.
    #[error("invalid log pattern {pattern:?}: {error}")]
    Pattern {
        /// The pattern given.
        pattern: String,
        /// Why it is invalid.
        error: glob::PatternError,
    },
    /// Nothing matched.
    #[error("no log files at {0:?} (expected a folder of *.ndjson files or a glob)")]
    NoFiles(String),
    /// A file could not be read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A line is not a request record (corrupt, truncated, wrong types).
    #[error("{path}:{line}: not a valid request record: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong, with the field's path when the JSON itself was well formed.
        reason: String,
    },
    /// A record was written with another feature schema.
    #[error(
        "{path}:{line}: schema fingerprint {found} differs from this trainer's {expected}; \
         the logs come from another server version (move them away, or train with that version)"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fingerprint in the record.
        found: String,
        /// Fingerprint this build expects.
        expected: String,
    },
    /// The files hold no records at all.
    #[error("no request records in {0} (the log files are empty)")]
    Empty(String),
    /// Building a frame failed (a bug rather than bad input).
    #[error("building the data frame: {0}")]
    Frame(#[from] PolarsError),
}

/// Column names of the feature vector in the requests frame: `f0` … `f15`.
pub fn feature_column(i: usize) -> String {
    format!("f{i}")
}

/// The logs as frames, plus what was dropped on the way.
pub struct Logs {
    /// One row per request: `ts_ms`, `route`, `priority`, `status`, `latency_ms`, `db_ms`,
    /// `queue_ms`, `shed`, `cache`, `source`, `predicted_p50_ms`, `predicted_p90_ms`,
    /// `model_p50_ms`, `model_p90_ms`, `online_p50_ms`, `online_p90_ms` (0 in logs written
    /// before the shadow evaluation), `anomaly_score`, and the features `f0` … `f16`.
    pub requests: DataFrame,
    /// One row per executed statement: `fingerprint`, `route`, `duration_ms`, `rows`.
    pub queries: DataFrame,
    /// Statement text per fingerprint (as the server normalized it).
    pub statements: HashMap<String, String>,
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Records read.
    pub read: u64,
    /// Records left out, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// Resolves `--logs`: one or more comma-separated entries, each a folder (every `*.ndjson` or
/// gzipped `*.ndjson.gz` file below it) or else a glob.
///
/// # Errors
/// An invalid pattern, or nothing found.
pub fn find_files(spec: &str) -> Result<Vec<PathBuf>, LoadError> {
    let mut patterns = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if Path::new(entry).is_dir() {
            let dir = entry.trim_end_matches('/');
            patterns.push(format!("{dir}/**/*.ndjson"));
            patterns.push(format!("{dir}/**/*.ndjson.gz"));
        } else {
            patterns.push(entry.to_owned());
        }
    }
    let mut files = Vec::new();
    for pattern in patterns {
        let paths = glob::glob(&pattern).map_err(|error| LoadError::Pattern {
            pattern: pattern.clone(),
            error,
        })?;
        files.extend(paths.filter_map(Result::ok).filter(|p| p.is_file()));
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(LoadError::NoFiles(spec.to_owned()));
    }
    Ok(files)
}

/// Opens a log file for reading by lines, decompressing `.gz` files on the fly.
///
/// # Errors
/// The file cannot be opened.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>, LoadError> {
    let file = File::open(path).map_err(|error| LoadError::Io {
        path: path.to_owned(),
        error,
    })?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    })
}

/// Parses one log line as a request record; a type error names the field (`latency_ms: invalid
/// type ...`).
///
/// # Errors
/// [`LoadError::Parse`] with the file and line.
pub fn parse(line: &str, path: &Path, line_no: usize) -> Result<RequestRecord, LoadError> {
    let mut json = serde_json::Deserializer::from_str(line);
    serde_path_to_error::deserialize(&mut json).map_err(|e| LoadError::Parse {
        path: path.to_owned(),
        line: line_no,
        reason: if e.path().iter().next().is_some() {
            format!("{}: {}", e.path(), e.inner())
        } else {
            e.inner().to_string()
        },
    })
}

/// Calls `each(line_no, record)` for every non-empty line of one log file, in order.
///
/// # Errors
/// The file cannot be read, a line is not a record, or `each` fails.
pub fn for_each_record(
    path: &Path,
    mut each: impl FnMut(usize, RequestRecord) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    for (index, line) in open(path)?.lines().enumerate() {
        let line = line.map_err(|error| LoadError::Io {
            path: path.to_owned(),
            error,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        each(index + 1, parse(&line, path, index + 1)?)?;
    }
    Ok(())
}

/// Column builders, filled one record at a time.
#[derive(Default)]
struct Columns {
    ts_ms: Vec<i64>,
    route: Vec<String>,
    priority: Vec<String>,
    status: Vec<i32>,
    latency_ms: Vec<f32>,
    db_ms: Vec<f32>,
    queue_ms: Vec<f32>,
    shed: Vec<bool>,
    cache: Vec<String>,
    source: Vec<String>,
    predicted_p50_ms: Vec<f32>,
    predicted_p90_ms: Vec<f32>,
    model_p50_ms: Vec<f32>,
    model_p90_ms: Vec<f32>,
    online_p50_ms: Vec<f32>,
    online_p90_ms: Vec<f32>,
    anomaly_score: Vec<f32>,
    features: Vec<Vec<f32>>,
    q_fingerprint: Vec<String>,
    q_route: Vec<String>,
    q_duration_ms: Vec<f32>,
    q_rows: Vec<u64>,
}

impl Columns {
    fn push(&mut self, record: RequestRecord) {
        for q in &record.queries {
            self.q_fingerprint.push(q.fingerprint.clone());
            self.q_route.push(record.route.clone());
            self.q_duration_ms.push(q.duration_ms);
            self.q_rows.push(q.rows);
        }
        self.ts_ms.push(record.ts_ms);
        self.route.push(record.route);
        self.priority.push(record.priority);
        self.status.push(i32::from(record.status));
        self.latency_ms.push(record.latency_ms);
        self.db_ms.push(record.db_ms);
        self.queue_ms.push(record.queue_ms);
        self.shed.push(record.shed);
        self.cache.push(record.cache);
        self.source.push(record.source);
        self.predicted_p50_ms.push(record.predicted_p50_ms);
        self.predicted_p90_ms.push(record.predicted_p90_ms);
        self.model_p50_ms.push(record.model_ms[0]);
        self.model_p90_ms.push(record.model_ms[1]);
        self.online_p50_ms.push(record.online_ms[0]);
        self.online_p90_ms.push(record.online_ms[1]);
        self.anomaly_score.push(record.anomaly_score);
        for (column, value) in self.features.iter_mut().zip(record.features) {
            column.push(value);
        }
    }

    fn into_frames(self) -> Result<(DataFrame, DataFrame), PolarsError> {
        let mut columns = vec![
            Column::new("ts_ms".into(), self.ts_ms),
            Column::new("route".into(), self.route),
            Column::new("priority".into(), self.priority),
            Column::new("status".into(), self.status),
            Column::new("latency_ms".into(), self.latency_ms),
            Column::new("db_ms".into(), self.db_ms),
            Column::new("queue_ms".into(), self.queue_ms),
            Column::new("shed".into(), self.shed),
            Column::new("cache".into(), self.cache),
            Column::new("source".into(), self.source),
            Column::new("predicted_p50_ms".into(), self.predicted_p50_ms),
            Column::new("predicted_p90_ms".into(), self.predicted_p90_ms),
            Column::new("model_p50_ms".into(), self.model_p50_ms),
            Column::new("model_p90_ms".into(), self.model_p90_ms),
            Column::new("online_p50_ms".into(), self.online_p50_ms),
            Column::new("online_p90_ms".into(), self.online_p90_ms),
            Column::new("anomaly_score".into(), self.anomaly_score),
        ];
        for (i, values) in self.features.into_iter().enumerate() {
            columns.push(Column::new(feature_column(i).into(), values));
        }
        let requests = DataFrame::new_infer_height(columns)?;
        let queries = DataFrame::new_infer_height(vec![
            Column::new("fingerprint".into(), self.q_fingerprint),
            Column::new("route".into(), self.q_route),
            Column::new("duration_ms".into(), self.q_duration_ms),
            Column::new("rows".into(), self.q_rows),
        ])?;
        Ok((requests, queries))
    }
}

/// Whether every number a model would learn from is finite and in range.
pub fn plausible(record: &RequestRecord) -> bool {
    record.latency_ms.is_finite()
        && record.latency_ms >= 0.0
        && record.db_ms.is_finite()
        && record.queue_ms.is_finite()
        && record.features.iter().all(|v| v.is_finite())
        && (100..600).contains(&record.status)
}

/// Reads every file `spec` names.
///
/// Records that parse but carry numbers no model should learn from (non-finite values, a status
/// outside 100-599) are dropped and counted; a line that does not parse, or a record written
/// with another schema, fails the whole load, naming file and line.
///
/// # Errors
/// See [`LoadError`].
pub fn load(spec: &str) -> Result<Logs, LoadError> {
    let files = find_files(spec)?;
    let expected = contract::features::fingerprint_hex();
    let mut columns = Columns {
        features: vec![Vec::new(); FEATURE_COUNT],
        ..Columns::default()
    };
    let mut statements = HashMap::new();
    let mut dropped = BTreeMap::new();
    let mut read = 0_u64;
    for path in &files {
        for_each_record(path, |line_no, record| {
            read += 1;
            if record.schema != expected {
                return Err(LoadError::Schema {
                    path: path.clone(),
                    line: line_no,
                    found: record.schema,
                    expected: expected.clone(),
                });
            }
            for q in &record.queries {
                if let Some(text) = &q.statement {
                    statements
                        .entry(q.fingerprint.clone())
                        .or_insert_with(|| text.clone());
                }
            }
            if plausible(&record) {
                columns.push(record);
            } else {
                *dropped.entry("implausible_values".to_owned()).or_insert(0) += 1;
            }
            Ok(())
        })?;
    }
    if read == 0 {
        return Err(LoadError::Empty(spec.to_owned()));
    }
    let (requests, queries) = columns.into_frames()?;
    Ok(Logs {
        requests,
        queries,
        statements,
        files,
        read,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_folders_and_globs_are_read_as_one() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        for (dir, name) in [
            (&a, "x.ndjson"),
            (&a, "nested/y.ndjson.gz"),
            (&b, "z.ndjson"),
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
            std::fs::write(path, b"").expect("file");
        }
        let spec = format!(
            "{}, {}/*.ndjson,{}",
            a.path().display(),
            b.path().display(),
            a.path().display()
        );
        let files = find_files(&spec).expect("files");
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(matches!(
            find_files(&b.path().join("none-*.ndjson").to_string_lossy()),
            Err(LoadError::NoFiles(_))
        ));
    }
}
