//! Inference cost per request row: the ONNX models through ONNX Runtime (the session pool the
//! server uses), the same trees evaluated natively in Rust, and the online statistics fallback.
//!
//! Needs the ONNX Runtime library (`ORT_DYLIB_PATH`; `make bench` sets it from
//! `scripts/ort.sh`). The ONNX cases use the committed models in `models/`; the native case
//! trains the same kind of trees on `data/sample` in its setup (the committed files are not
//! parsed back into Rust trees), so its figures describe an ensemble of the same size and depth.

#![allow(missing_docs)]

use contract::{ANOMALY_INPUT_COUNT, FEATURE_COUNT, FeatureVector, RequestRecord};
use criterion::{BatchSize, Bencher, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use optimizer::anomaly::Outcome;
use optimizer::config::ModelsConfig;
use optimizer::model::Models;
use optimizer::predictor::OnlinePredictor;
use optimizer::stats::Stats;
use std::hint::black_box;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A few hundred real logged rows from the sample, so trees take realistic paths.
fn rows() -> Vec<RequestRecord> {
    let sample = repo().join("data/sample").to_string_lossy().into_owned();
    let mut all = Vec::new();
    for path in trainer::logs::find_files(&sample).expect("sample logs") {
        for line in trainer::logs::open(&path).expect("open").lines() {
            all.push(serde_json::from_str::<RequestRecord>(&line.expect("line")).expect("record"));
        }
    }
    let step = (all.len() / 256).max(1);
    all.into_iter().step_by(step).take(256).collect()
}

/// The committed models as the server serves them; `memo_cells` 0 sends every row to ONNX
/// Runtime, otherwise a row in a cell seen before gets the kept answer.
fn serving(memo_cells: usize) -> Models {
    let config = ModelsConfig {
        dir: repo().join("models"),
        max_age_hours: 0.0,
        drift_factor: 0.0,
        memo_cells,
        ..ModelsConfig::default()
    };
    let models = Models::new(&config);
    models.poll();
    assert_eq!(
        models.stale(),
        None,
        "the committed models must load (is ORT_DYLIB_PATH set?)"
    );
    models
}

/// Times `call` with the caches cold, as under load when PostgreSQL, the kernel's network stack
/// and the load generator share the cores: `scratch` (16 MiB) is written before each timed call
/// (not timed), evicting the model and the runtime from L1/L2 and most of L3.
fn cold<T>(b: &mut Bencher<'_>, scratch: &mut [u8], mut call: impl FnMut() -> T) {
    b.iter_batched(
        || {
            for line in scratch.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            black_box(&mut *scratch);
        },
        |()| black_box(call()),
        BatchSize::PerIteration,
    );
}

fn bench(c: &mut Criterion) {
    let rows = rows();
    let features: Vec<FeatureVector> = rows.iter().map(|r| r.features).collect();
    let inputs: Vec<[f32; ANOMALY_INPUT_COUNT]> = rows
        .iter()
        .map(|r| contract::anomaly_input(&r.features, r.latency_ms, r.status))
        .collect();
    // The finished requests as the scorers see them (served, so the model is asked).
    let outcomes: Vec<Outcome> = rows
        .iter()
        .map(|r| Outcome {
            latency_ms: f64::from(r.latency_ms),
            queue_ms: 0.0,
            status: 200,
            shed: false,
        })
        .collect();
    let models = serving(0);
    let kept = serving(ModelsConfig::default().memo_cells);
    let set = models.current().expect("loaded");
    let stats = Stats::default();
    let now = Instant::now();
    // Warm statistics, so the online cases compute real quantiles.
    for r in &rows {
        let route = r.features[0] as usize;
        for _ in 0..30 {
            stats
                .route(route)
                .record(f64::from(r.latency_ms), None, None, false, now);
        }
    }

    let mut group = c.benchmark_group("inference");
    let mut i = 0;
    let mut out2 = [0.0_f32; 2];
    group.bench_function("ort_latency_row", |b| {
        b.iter(|| {
            i = (i + 1) % features.len();
            set.latency
                .run(black_box(&features[i][..FEATURE_COUNT]), &mut out2)
                .expect("run");
            black_box(out2)
        });
    });
    let mut out1 = [0.0_f32; 1];
    group.bench_function("ort_anomaly_row", |b| {
        b.iter(|| {
            i = (i + 1) % inputs.len();
            set.anomaly
                .run(black_box(&inputs[i]), &mut out1)
                .expect("run");
            black_box(out1)
        });
    });
    let mut scratch = vec![0_u8; 16 << 20];
    group.bench_function("ort_latency_row_cold", |b| {
        cold(b, &mut scratch, || {
            i = (i + 1) % features.len();
            set.latency
                .run(black_box(&features[i][..FEATURE_COUNT]), &mut out2)
                .expect("run");
            black_box(out2)
        });
    });
    group.bench_function("ort_anomaly_row_cold", |b| {
        cold(b, &mut scratch, || {
            i = (i + 1) % inputs.len();
            set.anomaly
                .run(black_box(&inputs[i]), &mut out1)
                .expect("run");
            black_box(out1)
        });
    });
    // Through `Models` as a request calls it: every row runs ONNX Runtime...
    group.bench_function("model_predict", |b| {
        b.iter(|| {
            i = (i + 1) % features.len();
            let route = features[i][0] as usize;
            // Alone (not joined with other requests' rows), so it answers on the first poll.
            black_box(
                models
                    .predict(route, black_box(&features[i]), &stats, false)
                    .now_or_never(),
            )
        });
    });
    group.bench_function("model_score", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            black_box(
                models
                    .score(black_box(&features[i]), &outcomes[i], false)
                    .now_or_never(),
            )
        });
    });
    // ...or, after the first pass over the rows, answers from the kept ones.
    group.bench_function("model_predict_kept", |b| {
        b.iter(|| {
            i = (i + 1) % features.len();
            let route = features[i][0] as usize;
            // The 256 rows' cells are all kept after the first pass: the cost of a hit.
            black_box(
                kept.predict(route, black_box(&features[i]), &stats, false)
                    .now_or_never(),
            )
        });
    });
    group.bench_function("model_score_kept", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            black_box(
                kept.score(black_box(&features[i]), &outcomes[i], false)
                    .now_or_never(),
            )
        });
    });
    let stats = std::sync::Arc::new(stats);
    let online = OnlinePredictor::new(stats.clone());
    group.bench_function("online_predict", |b| {
        b.iter(|| {
            i = (i + 1) % features.len();
            let route = features[i][0] as usize;
            black_box(online.predict(black_box(route)))
        });
    });
    let scorer = optimizer::anomaly::OnlineScorer::new(stats.clone());
    group.bench_function("online_score", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            black_box(scorer.score(features[i][0] as usize, black_box(&outcomes[i])))
        });
    });

    // The same kind of trees (same trainer, same sample), evaluated natively.
    let out = std::env::temp_dir().join(format!("shop-bench-trees-{}", std::process::id()));
    let sample = repo().join("data/sample").to_string_lossy().into_owned();
    let outcome =
        trainer::train::train(&trainer::train::Options::new(sample, &out)).expect("train");
    let _ = std::fs::remove_dir_all(&out);
    group.bench_function("native_latency_row", |b| {
        b.iter(|| {
            i = (i + 1) % features.len();
            let x = black_box(&features[i]);
            black_box([outcome.latency[0].eval(x), outcome.latency[1].eval(x)])
        });
    });
    group.bench_function("native_latency_row_cold", |b| {
        cold(b, &mut scratch, || {
            i = (i + 1) % features.len();
            let x = black_box(&features[i]);
            black_box([outcome.latency[0].eval(x), outcome.latency[1].eval(x)])
        });
    });
    group.bench_function("native_anomaly_row_cold", |b| {
        cold(b, &mut scratch, || {
            i = (i + 1) % inputs.len();
            black_box(trainer::iforest::score(
                &outcome.anomaly,
                black_box(&inputs[i]),
            ))
        });
    });
    group.bench_function("native_anomaly_row", |b| {
        b.iter(|| {
            i = (i + 1) % inputs.len();
            black_box(trainer::iforest::score(
                &outcome.anomaly,
                black_box(&inputs[i]),
            ))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
