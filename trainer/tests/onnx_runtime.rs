//! The exported models, loaded by the real ONNX Runtime, answer what the trainer's own
//! evaluation of the same trees answers.
//!
//! Needs the ONNX Runtime library: `ORT_DYLIB_PATH` (set by `make test`, from `scripts/ort.sh`).

use contract::{ANOMALY_INPUT_COUNT, FEATURE_COUNT, RequestRecord};
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> String {
    repo().join("data/sample").to_string_lossy().into_owned()
}

/// Up to `n` records from the sample, spread over it.
fn records(n: usize) -> Vec<RequestRecord> {
    let mut all = Vec::new();
    for path in trainer::logs::find_files(&sample()).expect("sample logs") {
        trainer::logs::for_each_record(&path, |_, record| {
            all.push(record);
            Ok(())
        })
        .expect("sample records");
    }
    let step = (all.len() / n).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

/// The process's ONNX Runtime environment: the runtime allows one per process, and the tests
/// here run in parallel threads of one process.
fn environment() -> &'static ort::environment::Environment {
    static ENV: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_default();
        assert!(
            Path::new(&path).is_file(),
            "ORT_DYLIB_PATH must name the ONNX Runtime library (got {path:?}); run `make test`, \
             or export ORT_DYLIB_PATH=$(scripts/ort.sh)"
        );
        ort::init_from(&path)
            .expect("load ONNX Runtime")
            .build()
            .expect("environment")
    })
}

fn session(env: &ort::environment::Environment, file: &Path) -> Session {
    Session::builder(env)
        .expect("builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(file)
        .unwrap_or_else(|e| panic!("ONNX Runtime refused {}: {e}", file.display()))
}

fn run(session: &mut Session, rows: Vec<f32>, width: usize, output: &str) -> Vec<f32> {
    let n = rows.len() / width;
    let input = Tensor::from_array(([n, width], rows)).expect("tensor");
    let outputs = session
        .run(ort::inputs![trainer::onnx::INPUT => input])
        .expect("run");
    let (_, values) = outputs[output]
        .try_extract_tensor::<f32>()
        .expect("f32 output");
    values.to_vec()
}

/// The models trained on the committed sample with the default settings, in a temporary folder.
fn train_on_sample() -> (tempfile::TempDir, trainer::train::Outcome) {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = trainer::train::train(&trainer::train::Options::new(sample(), out.path()))
        .expect("training on the committed sample");
    (out, outcome)
}

#[test]
fn onnx_runtime_agrees_with_the_trainers_trees_on_a_thousand_rows() {
    let (out, outcome) = train_on_sample();
    let rows = records(1000);
    assert_eq!(rows.len(), 1000, "the sample holds at least 1000 records");
    // The threshold (0.5% of the unlabelled training rows at or above it) holds on the holdout, and
    // catches some of the stress tests.
    let anomaly = &outcome.manifest.anomaly_holdout;
    assert!(
        anomaly.false_alarm_rate.is_some_and(|r| r <= 0.01),
        "{anomaly:?}"
    );
    assert!(
        anomaly.detection_rate.is_some_and(|r| r > 0.0),
        "{anomaly:?}"
    );
    let env = environment();

    let mut latency = session(env, &out.path().join(&outcome.manifest.latency_model.file));
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.features).collect();
    let got = run(
        &mut latency,
        flat,
        FEATURE_COUNT,
        trainer::onnx::LATENCY_OUTPUT,
    );
    assert_eq!(got.len(), 2 * rows.len());
    let mut worst = 0.0_f32;
    for (i, r) in rows.iter().enumerate() {
        for (q, forest) in outcome.latency.iter().enumerate() {
            worst = worst.max((got[2 * i + q] - forest.eval(&r.features)).abs());
        }
    }
    assert!(worst < 1e-4, "latency model differs by up to {worst}");

    let mut anomaly = session(env, &out.path().join(&outcome.manifest.anomaly_model.file));
    let inputs: Vec<contract::AnomalyInput> = rows
        .iter()
        .map(|r| contract::anomaly_input(&r.features, r.latency_ms, r.status))
        .collect();
    let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
    let got = run(
        &mut anomaly,
        flat,
        ANOMALY_INPUT_COUNT,
        trainer::onnx::ANOMALY_OUTPUT,
    );
    assert_eq!(got.len(), rows.len());
    let worst = inputs
        .iter()
        .zip(&got)
        .map(|(x, g)| (g.exp() - trainer::iforest::score(&outcome.anomaly, x)).abs())
        .fold(0.0_f32, f32::max);
    assert!(worst < 1e-4, "anomaly model differs by up to {worst}");
    // ln of a score in (0, 1].
    assert!(got.iter().all(|s| *s <= 0.0 && s.is_finite()));

    // The metadata the server checks before it trusts a model.
    let metadata = latency.metadata().expect("metadata");
    assert_eq!(
        metadata.custom("schema_fingerprint").as_deref(),
        Some(contract::features::fingerprint_hex().as_str())
    );
    assert_eq!(
        metadata.custom("model_version"),
        Some(outcome.manifest.version.to_string())
    );
}

/// A row with every value moved somewhere else inside the same cell of `splits`.
fn twin(splits: &contract::onnx::Splits, row: &[f32], rng: &mut impl rand::Rng) -> Vec<f32> {
    let cell = splits.cell(row);
    let mut moved = row.to_vec();
    for (i, thresholds) in splits.thresholds.iter().enumerate() {
        let k = usize::from(cell[i]);
        if thresholds.is_empty() || row[i].is_nan() {
            continue;
        }
        // Rule::Less: cell k holds t[k-1] <= x < t[k].
        let low = if k == 0 {
            row[i] - 100.0
        } else {
            thresholds[k - 1]
        };
        let high = if k == thresholds.len() {
            row[i] + 100.0
        } else {
            thresholds[k]
        };
        let candidate = low + rng.random::<f32>() * (high - low);
        if candidate >= low && candidate < high {
            moved[i] = candidate;
        }
    }
    assert_eq!(splits.cell(&moved), cell);
    moved
}

#[test]
fn rows_in_the_same_cell_get_the_same_answers_from_onnx_runtime() {
    use rand::SeedableRng;
    let (out, outcome) = train_on_sample();
    let rows = records(500);
    let env = environment();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let models = [
        (
            &outcome.manifest.latency_model.file,
            FEATURE_COUNT,
            trainer::onnx::LATENCY_OUTPUT,
        ),
        (
            &outcome.manifest.anomaly_model.file,
            ANOMALY_INPUT_COUNT,
            trainer::onnx::ANOMALY_OUTPUT,
        ),
    ];
    for (file, width, output) in models {
        let path = out.path().join(file);
        let splits = contract::onnx::Splits::read(&std::fs::read(&path).expect("model"), width)
            .expect("the trainer's models are plain tree ensembles");
        assert_eq!(splits.rule, contract::onnx::Rule::Less);
        let originals: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| contract::anomaly_input(&r.features, r.latency_ms, r.status)[..width].to_vec())
            .collect();
        let twins: Vec<Vec<f32>> = originals
            .iter()
            .map(|r| twin(&splits, r, &mut rng))
            .collect();
        let moved = originals.iter().zip(&twins).filter(|(a, b)| a != b).count();
        assert!(
            moved > rows.len() * 9 / 10,
            "{file}: only {moved} rows moved"
        );
        let mut session = session(env, &path);
        let a = run(&mut session, originals.concat(), width, output);
        let b = run(&mut session, twins.concat(), width, output);
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(differ, 0, "{file}: {differ} answers changed within a cell");
        // The server runs rows alone as well as in shared batches: the same bits either way.
        let outputs = a.len() / twins.len();
        for (i, row) in twins.iter().enumerate().take(100) {
            let alone = run(&mut session, row.clone(), width, output);
            let batched = &b[i * outputs..(i + 1) * outputs];
            assert!(
                alone
                    .iter()
                    .zip(batched)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{file}: row {i} answered {alone:?} alone, {batched:?} in the batch"
            );
        }
        // And the cells do tell answers apart: rows in different cells mostly differ.
        let distinct: std::collections::BTreeSet<u32> = a.iter().map(|v| v.to_bits()).collect();
        assert!(
            distinct.len() > 20,
            "{file}: only {} distinct answers",
            distinct.len()
        );
    }
}
