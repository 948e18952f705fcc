//! The offline half of the optimizer: reads the request logs the server recorded, fits the
//! latency predictor and the anomaly scorer, and exports them as ONNX files plus a manifest the
//! server loads (`docs/models.md`).
//!
//! - [`logs`]: finds and reads log files, checks every line against `contract`, builds polars frames.
//! - [`ingest`]: training's parallel, bounded-memory read: a uniform sample of distinct records.
//! - [`report`]: `trainer report`, per route and per statement.
//! - [`evaluate`]: `trainer evaluate`, the model beside the online statistics on a scenario's logs.
//! - [`gbdt`]: histogram gradient boosting for the latency quantiles.
//! - [`iforest`]: the isolation forest for anomaly scores.
//! - [`forest`]: the plain tree ensemble both become, and its evaluation.
//! - [`onnx`]: ONNX messages as `prost` structs and the two exported graphs.
//! - [`metrics`]: MAE, coverage, ROC AUC.
//! - [`train`]: the training run, from logs to an atomically written model folder.
//! - [`resample`]: synthetic volume from a real capture, for the scale benchmark.

pub mod evaluate;
pub mod forest;
pub mod gbdt;
pub mod iforest;
pub mod ingest;
pub mod logs;
pub mod metrics;
pub mod onnx;
pub mod report;
pub mod resample;
pub mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `trainer` command line.
#[derive(Debug, Parser)]
#[command(
    name = "trainer",
    version,
    about = "Fits the shop API's models from captured logs"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The trainer's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the latency predictor and anomaly scorer and export them as ONNX.
    Train {
        /// Log folders (every *.ndjson and *.ndjson.gz below them) or globs of log files,
        /// comma-separated.
        #[arg(long, default_value = "data/logs")]
        logs: String,
        /// More logs (folders or globs, comma-separated) whose rows are always trained on and
        /// never held out: the holdout, the form chosen and the metrics come from `--logs`.
        #[arg(long)]
        base_logs: Option<String>,
        /// Where the models and manifest go.
        #[arg(long, default_value = "models")]
        out: PathBuf,
        /// Share of the most recent requests held out for the metrics.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Boosting rounds (trees) per quantile of the latency model.
        #[arg(long, default_value_t = gbdt::Params::default().trees)]
        trees: usize,
        /// Depth of each latency tree.
        #[arg(long, default_value_t = gbdt::Params::default().max_depth)]
        depth: usize,
        /// Shrinkage of each latency tree's leaves.
        #[arg(long, default_value_t = gbdt::Params::default().learning_rate)]
        learning_rate: f32,
        /// Trees of the anomaly model (isolation forest).
        #[arg(long, default_value_t = iforest::Params::default().trees)]
        anomaly_trees: usize,
        /// Rows each isolation tree is grown on (ψ; the depth limit is log2 of it).
        #[arg(long, default_value_t = iforest::Params::default().sample)]
        anomaly_sample: usize,
        /// Isolation splits use each feature's N-quantiles and N even steps (0: any value).
        #[arg(long, default_value_t = iforest::Params::default().grid)]
        anomaly_grid: usize,
        /// What the latency model predicts: ln latency (`absolute`), its excess over the
        /// route's live baseline (`relative`), or whichever does better on the holdout (`auto`).
        #[arg(long, value_enum, default_value = "auto")]
        form: train::Form,
        /// Fit on one thread (what background retraining beside a server uses); the logs are
        /// then read on one thread too.
        #[arg(long)]
        one_thread: bool,
        /// Most served requests kept from `--logs` (and from `--base-logs`): past it, a
        /// uniform sample of the distinct records, so memory is bounded whatever the volume.
        #[arg(long, default_value_t = ingest::DEFAULT_CAP)]
        sample_rows: usize,
    },
    /// Summarize what the logs say, per route and per query fingerprint, slowest first.
    Report {
        /// A log folder or a glob of log files.
        #[arg(long, default_value = "data/logs")]
        logs: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also advise indexes for the slow statements, against this database (the one the
        /// logs came from): EXPLAIN with generic plans, verified with HypoPG when installed.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// A statement is slow when its p95 exceeds this (ms)...
        #[arg(long, default_value_t = 100.0)]
        slow_ms: f64,
        /// ...over at least this many calls.
        #[arg(long, default_value_t = 20)]
        min_calls: u64,
    },
    /// The model beside the online statistics on the same logged requests, and how well the
    /// served predictions anticipated latency-target misses (JSON).
    Evaluate {
        /// A log folder or a glob of log files.
        #[arg(long)]
        logs: String,
        /// Only requests that arrived at or after this (Unix ms).
        #[arg(long, default_value_t = 0)]
        since_ms: i64,
        /// Only requests that arrived before this (Unix ms).
        #[arg(long, default_value_t = i64::MAX)]
        until_ms: i64,
        /// Latency target (ms): a slower request missed it.
        #[arg(long, default_value_t = 100.0)]
        target_ms: f64,
        /// Incidents injected during the run: a JSON array of {kind, start_ms, end_ms}.
        #[arg(long)]
        incidents: Option<PathBuf>,
    },
    /// Write `rows` records drawn from real logs, with times stretched to follow on, to measure
    /// training at scale.
    Resample {
        /// The captured logs to draw from.
        #[arg(long)]
        logs: String,
        /// Records to write.
        #[arg(long)]
        rows: usize,
        /// Output file (NDJSON), or with `--files` over 1 the folder the files go to.
        #[arg(long)]
        out: PathBuf,
        /// Files to spread the records over, as a server's rotated logs.
        #[arg(long, default_value_t = 1)]
        files: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Runs one command.
///
/// # Errors
/// Bad input (named by file and line), a failed fit, or an I/O error.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train {
            logs,
            base_logs,
            out,
            holdout,
            trees,
            depth,
            learning_rate,
            anomaly_trees,
            anomaly_sample,
            anomaly_grid,
            form,
            one_thread,
            sample_rows,
        } => {
            let mut opts = train::Options::new(logs, out);
            opts.base_logs = base_logs;
            opts.holdout = holdout;
            opts.gbdt.trees = trees;
            opts.gbdt.max_depth = depth;
            opts.gbdt.learning_rate = learning_rate;
            opts.iforest.trees = anomaly_trees;
            opts.iforest.sample = anomaly_sample;
            opts.iforest.grid = anomaly_grid;
            opts.form = form;
            opts.one_thread = one_thread;
            opts.sample_rows = sample_rows;
            let outcome = train::train(&opts)?;
            print!("{}", summary(&outcome));
        }
        Command::Report {
            logs,
            json,
            database_url,
            slow_ms,
            min_calls,
        } => {
            let logs = logs::load(&logs)?;
            let mut report = report::build(&logs)?;
            if let Some(url) = database_url {
                let options = advisor::Options {
                    slow_p95_ms: slow_ms,
                    min_calls,
                    ..advisor::Options::default()
                };
                report.index_advice = Some(report::advise(&report, &url, &options)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report::render(&report));
            }
        }
        Command::Evaluate {
            logs,
            since_ms,
            until_ms,
            target_ms,
            incidents,
        } => {
            let incidents = match incidents {
                Some(path) => evaluate::read_incidents(&path)?,
                None => Vec::new(),
            };
            let figures = evaluate::evaluate(&evaluate::Options {
                logs,
                since_ms,
                until_ms,
                target_ms,
                incidents,
            })?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
        }
        Command::Resample {
            logs,
            rows,
            out,
            files,
            seed,
        } => {
            let written = resample::resample(&logs, rows, &out, files, seed)?;
            println!("wrote {written} records to {}", out.display());
        }
    }
    Ok(())
}

/// A share as a percentage, or "n/a".
fn share(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", 100.0 * r))
}

/// A number with three decimals, or "n/a".
fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"))
}

fn summary(outcome: &train::Outcome) -> String {
    let m = &outcome.manifest;
    let l = &m.latency_holdout;
    let a = &m.anomaly_holdout;
    let gain = l.online_mae_log.map_or_else(
        || "no online predictions logged".to_owned(),
        |online| format!("{:.1}% lower", 100.0 * (1.0 - l.mae_log / online)),
    );
    format!(
        "wrote {path} (version {version})\n\
         rows: {read} read, {train} train ({base} of them base), {holdout} holdout, dropped {dropped:?}\n\
         latency: {lf} ({lb} bytes, {lt} trees), holdout MAE ln(ms) {mae:.3} vs online {omae} \
         ({gain}), p90 coverage {cov:.1}% vs online {ocov}\n\
         anomaly: {af} ({ab} bytes, {at} trees), holdout ROC AUC {auc} vs online z-score \
         {oauc} ({labelled} labelled of {arows}), threshold {thr:.3} flags {caught} of the \
         labelled and {alarms} of the rest\n\
         time: load {t0:.1} s, fit {t1:.1} s, evaluate and export {t2:.1} s{memory}\n",
        path = outcome.path.display(),
        version = m.version,
        read = m.rows.read,
        train = m.rows.train,
        base = m.rows.base,
        holdout = m.rows.holdout,
        dropped = m.rows.dropped,
        lf = m.latency_model.file,
        lb = m.latency_model.bytes,
        lt = m.latency_model.trees,
        mae = l.mae_log,
        omae = figure(l.online_mae_log),
        cov = 100.0 * l.p90_coverage,
        ocov = share(l.online_p90_coverage),
        af = m.anomaly_model.file,
        ab = m.anomaly_model.bytes,
        at = m.anomaly_model.trees,
        auc = figure(a.auc),
        oauc = figure(a.online_auc),
        labelled = a.labelled,
        arows = a.rows,
        thr = m.anomaly_threshold,
        caught = share(a.detection_rate),
        alarms = share(a.false_alarm_rate),
        t0 = outcome.seconds[0],
        t1 = outcome.seconds[1],
        t2 = outcome.seconds[2],
        memory = peak_memory_mb().map_or_else(String::new, |mb| format!("; peak memory {mb} MB")),
    )
}

/// This process's peak resident memory so far (MB), where the system says (Linux).
fn peak_memory_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}
