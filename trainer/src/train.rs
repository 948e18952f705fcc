//! `trainer train`: logs in, two ONNX models and a manifest out.
//!
//! 1. Read and validate the logs in parallel ([`crate::ingest`]); leave out shed requests
//!    (their latency is the cost of saying no, not of serving) and copies of a record, and past
//!    `sample_rows` keep a uniform sample, so memory stays bounded.
//! 2. Sort by time; the most recent `holdout` share is never trained on. Rows from the base
//!    logs (`--base-logs`: the corpus the committed models came from, when a server retrains
//!    on its own logs) are all trained on, so that a retrain on a calm hour keeps what the
//!    corpus taught about incidents and overload; the holdout is the own logs' newest share.
//! 3. Fit the latency quantiles (p50, p90) with [`crate::gbdt`] on the older rows, of ln
//!    latency and of its excess over the route's live baseline `route_ewma_log_ms`, and keep
//!    the form with the lower holdout error; fit the anomaly scorer with [`crate::iforest`].
//! 4. Measure both on the holdout beside what the online statistics logged for the same rows.
//! 5. Export ONNX, then write files under new names and the manifest last, each through a
//!    temporary file and a rename: a run that fails anywhere leaves the old models in use.

use crate::forest::Forest;
use crate::ingest;
use crate::{gbdt, iforest, metrics, onnx};
use anyhow::{Context, bail};
use contract::manifest::{
    AnomalyMetrics, LatencyMetrics, MANIFEST_FILE, ModelFile, Probe, RowCounts,
};
use contract::{ANOMALY_INPUT_COUNT, FEATURE_COUNT, FeatureVector, Manifest};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The route whose requests are the labelled anomalies (capture's stress-test bursts).
pub const ANOMALY_ROUTE: &str = "GET /api/stress-test";

/// Training knobs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Log folder or glob.
    pub logs: String,
    /// Logs whose served rows are always trained on and never held out (a corpus from other
    /// runs, such as the committed captures), or none: the holdout, and so the form chosen and
    /// the metrics, come from `logs` alone.
    pub base_logs: Option<String>,
    /// Model folder.
    pub out: PathBuf,
    /// Share of the most recent rows held out (0-0.5).
    pub holdout: f64,
    /// Fewer served rows than this is an error: nothing worth learning.
    pub min_rows: usize,
    /// Most served requests held from each of `logs` and `base_logs`: past it, a uniform
    /// sample of the distinct records ([`ingest`]), so memory is bounded whatever the volume.
    pub sample_rows: usize,
    /// Latency model knobs.
    pub gbdt: gbdt::Params,
    /// Anomaly model knobs.
    pub iforest: iforest::Params,
    /// Share of unlabelled training rows allowed above the anomaly threshold.
    pub false_alarm_rate: f64,
    /// Fit on one thread (background retraining beside a serving server); else the two latency
    /// quantiles are fitted side by side.
    pub one_thread: bool,
    /// What the latency model predicts.
    pub form: Form,
}

/// What the latency model predicts (`trainer train --form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// ln latency outright.
    Absolute,
    /// ln latency's excess over the route's live baseline ([`BASELINE_FEATURE`]).
    Relative,
    /// Both are fitted; the one with the lower error on the holdout is exported.
    Auto,
}

/// The feature a relative latency model corrects: the route's recent mean of ln latency, what
/// the online statistics know about the route's level on this catalogue and machine.
pub const BASELINE_FEATURE: &str = "route_ewma_log_ms";

impl Options {
    /// Defaults for these logs and this output folder.
    pub fn new(logs: impl Into<String>, out: impl Into<PathBuf>) -> Self {
        Self {
            logs: logs.into(),
            base_logs: None,
            out: out.into(),
            holdout: 0.2,
            min_rows: 200,
            sample_rows: ingest::DEFAULT_CAP,
            gbdt: gbdt::Params::default(),
            iforest: iforest::Params::default(),
            false_alarm_rate: 0.005,
            form: Form::Auto,
            one_thread: false,
        }
    }
}

/// The served requests, oldest first, as plain vectors.
struct Rows {
    ts: Vec<i64>,
    route: Vec<String>,
    status: Vec<u16>,
    latency: Vec<f32>,
    /// Of the latency, the wait for admission (ms).
    queue: Vec<f32>,
    features: Vec<FeatureVector>,
    source: Vec<String>,
    predicted_p50: Vec<f32>,
    predicted_p90: Vec<f32>,
    online_p50: Vec<f32>,
    online_p90: Vec<f32>,
    online_score: Vec<f32>,
}

impl Rows {
    fn len(&self) -> usize {
        self.ts.len()
    }

    /// `other`'s rows after these.
    fn append(&mut self, other: Self) {
        self.ts.extend(other.ts);
        self.route.extend(other.route);
        self.status.extend(other.status);
        self.latency.extend(other.latency);
        self.queue.extend(other.queue);
        self.features.extend(other.features);
        self.source.extend(other.source);
        self.predicted_p50.extend(other.predicted_p50);
        self.predicted_p90.extend(other.predicted_p90);
        self.online_p50.extend(other.online_p50);
        self.online_p90.extend(other.online_p90);
        self.online_score.extend(other.online_score);
    }

    fn log_latency(&self, i: usize) -> f64 {
        f64::from(self.latency[i].max(0.001)).ln()
    }

    /// The anomaly model's input: the features and the outcome, with the time the request was
    /// being served (its latency less the wait for admission, as the server scores it).
    fn anomaly_input(&self, i: usize) -> contract::AnomalyInput {
        let service = (self.latency[i] - self.queue[i]).max(0.0);
        contract::anomaly_input(&self.features[i], service, self.status[i])
    }

    fn labelled(&self, i: usize) -> bool {
        self.route[i] == ANOMALY_ROUTE
    }

    /// The online statistics' prediction (ln ms, p50 and p90) logged with row `i`, when it had
    /// one: logged beside the model's on every request since the shadow evaluation, and in
    /// older logs the served prediction when the online statistics answered.
    fn online(&self, i: usize) -> Option<(f64, f64)> {
        contract::log::online_answer(
            [self.online_p50[i], self.online_p90[i]],
            &self.source[i],
            [self.predicted_p50[i], self.predicted_p90[i]],
        )
        .map(|[p50, p90]| (f64::from(p50).ln(), f64::from(p90.max(p50)).ln()))
    }
}

/// The sampled served requests (oldest first) as plain vectors.
fn rows_of(served: Vec<ingest::Served>) -> Rows {
    let n = served.len();
    let mut rows = Rows {
        ts: Vec::with_capacity(n),
        route: Vec::with_capacity(n),
        status: Vec::with_capacity(n),
        latency: Vec::with_capacity(n),
        queue: Vec::with_capacity(n),
        features: Vec::with_capacity(n),
        source: Vec::with_capacity(n),
        predicted_p50: Vec::with_capacity(n),
        predicted_p90: Vec::with_capacity(n),
        online_p50: Vec::with_capacity(n),
        online_p90: Vec::with_capacity(n),
        online_score: Vec::with_capacity(n),
    };
    for r in served {
        rows.ts.push(r.ts_ms);
        rows.route.push(r.route);
        rows.status.push(r.status);
        rows.latency.push(r.latency_ms);
        rows.queue.push(r.queue_ms);
        rows.features.push(r.features);
        rows.source.push(r.source);
        rows.predicted_p50.push(r.predicted_ms[0]);
        rows.predicted_p90.push(r.predicted_ms[1]);
        rows.online_p50.push(r.online_ms[0]);
        rows.online_p90.push(r.online_ms[1]);
        rows.online_score.push(r.anomaly_score);
    }
    rows
}

/// Reads `spec` into a sample of at most `opts.sample_rows` served requests, adding what was
/// read and left out to the counts.
fn read_rows(spec: &str, opts: &Options, counts: &mut RowCounts) -> anyhow::Result<Rows> {
    let threads = if opts.one_thread {
        1
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    };
    let sample = ingest::sample(spec, opts.sample_rows, threads)?;
    counts.files += sample.files.len() as u64;
    counts.read += sample.read;
    let sampled_out = sample
        .served
        .saturating_sub(sample.rows.len() as u64 + sample.duplicates);
    for (reason, n) in sample.dropped.into_iter().chain([
        ("shed".to_owned(), sample.shed),
        ("duplicate".to_owned(), sample.duplicates),
        ("sampled_out".to_owned(), sampled_out),
    ]) {
        if n > 0 {
            *counts.dropped.entry(reason).or_default() += n;
        }
    }
    Ok(rows_of(sample.rows))
}

/// Latency metrics on `rows`, compared with the online statistics on the rows that had an
/// online prediction (all of `rows` when none had one).
fn latency_metrics(data: &Rows, rows: &[usize], predicted: &[(f64, f64)]) -> LatencyMetrics {
    let with_online: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&i| data.online(i).is_some())
        .collect();
    let compared = if with_online.is_empty() {
        rows
    } else {
        &with_online
    };
    let actual = |i: usize| data.log_latency(i);
    let model = |i: usize| predicted[i];
    LatencyMetrics {
        rows: compared.len() as u64,
        mae_log: metrics::mae(compared.iter().map(|&i| (actual(i), model(i).0)))
            .unwrap_or(f64::NAN),
        online_mae_log: metrics::mae(
            compared
                .iter()
                .filter_map(|&i| data.online(i).map(|o| (actual(i), o.0))),
        ),
        p90_coverage: metrics::coverage(compared.iter().map(|&i| (actual(i), model(i).1)))
            .unwrap_or(f64::NAN),
        online_p90_coverage: metrics::coverage(
            compared
                .iter()
                .filter_map(|&i| data.online(i).map(|o| (actual(i), o.1))),
        ),
    }
}

/// The two latency quantiles (p50, p90) on the training rows, of ln latency or (with
/// `baseline`) of its excess over that feature.
fn fit_latency(
    data: &Rows,
    train_idx: &[usize],
    columns: &[Vec<f32>],
    baseline: Option<usize>,
    opts: &Options,
) -> anyhow::Result<(Forest, Forest)> {
    let y: Vec<f32> = train_idx
        .iter()
        .map(|&i| data.log_latency(i) as f32 - baseline.map_or(0.0, |b| data.features[i][b]))
        .collect();
    // The two quantiles are independent: one per core, unless asked for one thread.
    let fit = |q: f64| gbdt::fit_quantile(columns, &y, q, opts.gbdt);
    let (p50, p90) = if opts.one_thread {
        (fit(0.5), fit(0.9))
    } else {
        std::thread::scope(|scope| {
            let p90 = scope.spawn(|| fit(0.9));
            let p50 = fit(0.5);
            (
                p50,
                p90.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        })
    };
    Ok((
        p50.context("fitting the p50 model")?,
        p90.context("fitting the p90 model")?,
    ))
}

/// Writes `bytes` to `dir/name` through a temporary file, flushed to disk before the rename.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))?;
    Ok(())
}

/// Model files of the current manifest in `dir`, if there is one that parses.
fn files_of_current(dir: &Path) -> BTreeSet<String> {
    std::fs::read(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        .map(|m| BTreeSet::from([m.latency_model.file, m.anomaly_model.file]))
        .unwrap_or_default()
}

/// What a training run did, for the command line.
pub struct Outcome {
    /// The manifest written.
    pub manifest: Manifest,
    /// Seconds spent loading, fitting and exporting.
    pub seconds: [f64; 3],
    /// Where it was written.
    pub path: PathBuf,
    /// The latency trees as exported: p50 and p90 of ln(latency ms).
    pub latency: [Forest; 2],
    /// The anomaly trees as exported (score = exp of their sum).
    pub anomaly: Forest,
}

/// Trains, evaluates and exports; see the module docs.
///
/// # Errors
/// Bad or too few logs, a failed fit, or an I/O error writing the models. In every case the
/// model folder is as it was (apart from stray temporary files of this run's model files).
#[allow(clippy::too_many_lines)]
pub fn train(opts: &Options) -> anyhow::Result<Outcome> {
    if !(0.05..=0.5).contains(&opts.holdout) {
        bail!("holdout must be between 0.05 and 0.5, got {}", opts.holdout);
    }
    let started = Instant::now();
    let mut counts = RowCounts::default();
    let own = read_rows(&opts.logs, opts, &mut counts)?;
    let own_n = own.len();
    if own_n < opts.min_rows {
        bail!(
            "only {own_n} served requests in {} (need at least {}); capture more traffic (make capture)",
            opts.logs,
            opts.min_rows
        );
    }
    // The base corpus first, then the own rows: the holdout is the newest share of the own.
    let data = match &opts.base_logs {
        None => own,
        Some(base_logs) => {
            let mut data =
                read_rows(base_logs, opts, &mut counts).context("reading the base logs")?;
            data.append(own);
            data
        }
    };
    let n = data.len();
    let base_n = n - own_n;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let cut = base_n + ((own_n as f64) * (1.0 - opts.holdout)).round() as usize;
    let (train_idx, holdout_idx): (Vec<usize>, Vec<usize>) =
        ((0..cut).collect(), (cut..n).collect());
    let loaded = started.elapsed().as_secs_f64();

    // Latency: two quantile models of ln(latency), or of its excess over the route's baseline;
    // with `Form::Auto` both, and the one with the lower holdout error is kept.
    let fit_started = Instant::now();
    let baseline_index = contract::FEATURE_NAMES
        .iter()
        .position(|f| *f == BASELINE_FEATURE)
        .expect("the baseline is a feature");
    let columns: Vec<Vec<f32>> = (0..FEATURE_COUNT)
        .map(|f| train_idx.iter().map(|&i| data.features[i][f]).collect())
        .collect();
    let candidates: Vec<Option<usize>> = match opts.form {
        Form::Absolute => vec![None],
        Form::Relative => vec![Some(baseline_index)],
        Form::Auto => vec![None, Some(baseline_index)],
    };
    let mut fitted_forms = Vec::new();
    for baseline in candidates {
        let (p50, p90) = fit_latency(&data, &train_idx, &columns, baseline, opts)?;
        let base = |i: usize| baseline.map_or(0.0, |b| data.features[i][b]);
        let error = metrics::mae(holdout_idx.iter().map(|&i| {
            (
                data.log_latency(i),
                f64::from(p50.eval(&data.features[i]) + base(i)),
            )
        }))
        .unwrap_or(f64::INFINITY);
        fitted_forms.push((error, baseline, p50, p90));
    }
    drop(columns);
    let (_, baseline, p50, p90) = fitted_forms
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("at least one form");
    let base = |i: usize| baseline.map_or(0.0, |b| data.features[i][b]);

    // Anomaly: isolation forest over features plus outcome.
    let inputs: Vec<Vec<f32>> = (0..n).map(|i| data.anomaly_input(i).to_vec()).collect();
    let train_inputs: Vec<Vec<f32>> = train_idx.iter().map(|&i| inputs[i].clone()).collect();
    let forest = iforest::fit(&train_inputs, opts.iforest);
    drop(train_inputs);
    let fitted = fit_started.elapsed().as_secs_f64();

    // Holdout evaluation with the trees as exported (f32), the same numbers ONNX gives.
    let export_started = Instant::now();
    let predict = |i: usize| -> (f64, f64) {
        let x = &data.features[i];
        let lo = f64::from(p50.eval(x) + base(i));
        (lo, f64::from(p90.eval(x) + base(i)).max(lo))
    };
    let mut predicted = vec![(0.0, 0.0); n];
    for &i in &holdout_idx {
        predicted[i] = predict(i);
    }
    let latency_holdout = latency_metrics(&data, &holdout_idx, &predicted);
    let mut by_route: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in &holdout_idx {
        by_route.entry(data.route[i].clone()).or_default().push(i);
    }
    let latency_by_route = by_route
        .iter()
        .map(|(route, rows)| (route.clone(), latency_metrics(&data, rows, &predicted)))
        .collect();

    // Server errors are anomalous by rule, for the model as for the online scorer.
    let model_score = |i: usize| -> f64 {
        if data.status[i] >= 500 {
            1.0
        } else {
            f64::from(iforest::score(&forest, &inputs[i]))
        }
    };
    let labels: Vec<bool> = holdout_idx.iter().map(|&i| data.labelled(i)).collect();
    let scores: Vec<f64> = holdout_idx.iter().map(|&i| model_score(i)).collect();
    let online: Vec<f64> = holdout_idx
        .iter()
        .map(|&i| f64::from(data.online_score[i]))
        .collect();
    let mut normal_scores: Vec<f64> = train_idx
        .iter()
        .filter(|&&i| !data.labelled(i))
        .map(|&i| f64::from(iforest::score(&forest, &inputs[i])))
        .collect();
    let anomaly_threshold =
        metrics::quantile(&mut normal_scores, 1.0 - opts.false_alarm_rate).unwrap_or(1.0);
    // Share of the holdout rows labelled `label` that the threshold flags; server errors are
    // left out, as in the threshold itself (the rule, not the model, flags them).
    let flagged = |label: bool| {
        let (mut all, mut hit) = (0_u32, 0_u32);
        for (k, &i) in holdout_idx.iter().enumerate() {
            if labels[k] == label && data.status[i] < 500 {
                all += 1;
                hit += u32::from(scores[k] >= anomaly_threshold);
            }
        }
        (all > 0).then(|| f64::from(hit) / f64::from(all))
    };
    let anomaly_holdout = AnomalyMetrics {
        rows: holdout_idx.len() as u64,
        labelled: labels.iter().filter(|&&l| l).count() as u64,
        auc: metrics::auc(&scores, &labels),
        online_auc: metrics::auc(&online, &labels),
        false_alarm_rate: flagged(false),
        detection_rate: flagged(true),
    };

    // Probes: rows spread over the holdout, plus its first labelled anomaly.
    let mut probe_rows: Vec<usize> = (0..8)
        .map(|k| holdout_idx[k * holdout_idx.len() / 8])
        .collect();
    if let Some(&i) = holdout_idx.iter().find(|&&i| data.labelled(i)) {
        probe_rows.push(i);
    }
    let probes = probe_rows
        .into_iter()
        .map(|i| Probe {
            input: inputs[i].to_vec(),
            log_latency: [p50.eval(&data.features[i]), p90.eval(&data.features[i])],
            anomaly_score: iforest::score(&forest, &inputs[i]),
        })
        .collect();

    let trained_at = chrono::Utc::now();
    let version = u64::try_from(trained_at.timestamp_millis()).unwrap_or(0);
    let fingerprint = contract::features::fingerprint_hex();
    let metadata = BTreeMap::from([
        ("schema_fingerprint".to_owned(), fingerprint.clone()),
        ("model_version".to_owned(), version.to_string()),
        ("trained_at".to_owned(), trained_at.to_rfc3339()),
    ]);
    let latency_bytes = onnx::latency_model(
        &p50,
        &p90,
        FEATURE_COUNT,
        &onnx::ModelInfo {
            kind: "latency",
            version,
            doc: "ln(latency ms) at p50 and p90 from the request features (gradient-boosted trees)",
            metadata: metadata.clone(),
        },
    );
    let anomaly_bytes = onnx::anomaly_model(
        &forest,
        ANOMALY_INPUT_COUNT,
        &onnx::ModelInfo {
            kind: "anomaly",
            version,
            doc: "anomaly score 0-1 from the request features and outcome (isolation forest)",
            metadata,
        },
    );
    let model_file = |file: String, bytes: &[u8], forests: &[&Forest]| ModelFile {
        file,
        bytes: bytes.len() as u64,
        trees: forests.iter().map(|f| f.trees.len() as u64).sum(),
        nodes: forests.iter().map(|f| f.node_count() as u64).sum(),
    };
    let manifest = Manifest {
        schema_fingerprint: fingerprint,
        feature_names: contract::FEATURE_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        anomaly_input_names: contract::FEATURE_NAMES
            .iter()
            .chain(contract::OUTCOME_NAMES.iter())
            .map(|s| (*s).to_owned())
            .collect(),
        version,
        trained_at: trained_at.to_rfc3339(),
        trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
        data_window_ms: [
            data.ts.iter().copied().min().unwrap_or(0),
            data.ts.iter().copied().max().unwrap_or(0),
        ],
        rows: RowCounts {
            train: train_idx.len() as u64,
            base: base_n as u64,
            holdout: holdout_idx.len() as u64,
            ..counts
        },
        latency_model: model_file(
            format!("latency-{version}.onnx"),
            &latency_bytes,
            &[&p50, &p90],
        ),
        latency_baseline: baseline.map(|_| BASELINE_FEATURE.to_owned()),
        anomaly_model: model_file(
            format!("anomaly-{version}.onnx"),
            &anomaly_bytes,
            &[&forest],
        ),
        latency_holdout,
        latency_by_route,
        anomaly_holdout,
        anomaly_threshold,
        probes,
    };

    // Write: model files under new names first, the manifest last (the switch).
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let previous = files_of_current(&opts.out);
    write_atomically(&opts.out, &manifest.latency_model.file, &latency_bytes)?;
    write_atomically(&opts.out, &manifest.anomaly_model.file, &anomaly_bytes)?;
    let json = serde_json::to_vec_pretty(&manifest).context("serializing the manifest")?;
    write_atomically(&opts.out, MANIFEST_FILE, &json)?;
    // Keep the files of the new and the previous manifest (a server may still be loading the
    // previous ones); older exports go.
    let keep: Vec<&str> = previous
        .iter()
        .map(String::as_str)
        .chain([
            manifest.latency_model.file.as_str(),
            manifest.anomaly_model.file.as_str(),
        ])
        .collect();
    contract::manifest::prune_model_files(&opts.out, &keep);
    Ok(Outcome {
        path: opts.out.join(MANIFEST_FILE),
        manifest,
        seconds: [loaded, fitted, export_started.elapsed().as_secs_f64()],
        latency: [p50, p90],
        anomaly: forest,
    })
}
