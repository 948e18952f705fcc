//! The trainer never writes a manifest the server cannot load: on logs where a metric has
//! nothing to measure (no labelled anomalies, one route, barely enough rows, no online
//! prediction logged), the manifest it writes is loaded by the server's own loader with the
//! real ONNX Runtime (`ORT_DYLIB_PATH`, set by `make test`).

use contract::{Manifest, RequestRecord};
use std::io::Write as _;
use std::path::{Path, PathBuf};

fn sample() -> Vec<RequestRecord> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample");
    let mut all = Vec::new();
    for path in trainer::logs::find_files(&dir.to_string_lossy()).expect("sample logs") {
        trainer::logs::for_each_record(&path, |_, record| {
            all.push(record);
            Ok(())
        })
        .expect("sample records");
    }
    all
}

/// Trains on `records` and loads the result as the server does; returns the manifest.
fn round_trip(records: &[RequestRecord]) -> Manifest {
    let logs = tempfile::tempdir().expect("tempdir");
    let mut file =
        std::fs::File::create(logs.path().join("requests.ndjson")).expect("create log file");
    for r in records {
        serde_json::to_writer(&mut file, r).expect("write record");
        file.write_all(b"\n").expect("newline");
    }
    drop(file);
    let out = tempfile::tempdir().expect("tempdir");
    trainer::train::train(&trainer::train::Options::new(
        logs.path().to_string_lossy(),
        out.path(),
    ))
    .expect("training");
    let library = std::env::var("ORT_DYLIB_PATH").map(PathBuf::from).ok();
    let runtime = optimizer::model::onnx::runtime(library.as_deref());
    assert!(
        runtime.is_ok(),
        "ORT_DYLIB_PATH must name the ONNX Runtime library; run `make test`, or export \
         ORT_DYLIB_PATH=$(scripts/ort.sh): {runtime:?}"
    );
    let set = optimizer::model::load::load(out.path(), runtime, 1, 0)
        .unwrap_or_else(|e| panic!("the server refused the manifest: {e}"));
    let text = std::fs::read_to_string(out.path().join("manifest.json")).expect("manifest");
    assert!(!text.contains("null") && !text.contains("NaN"), "{text}");
    set.manifest
}

#[test]
fn no_labelled_anomalies() {
    let records: Vec<_> = sample()
        .into_iter()
        .filter(|r| r.route != trainer::train::ANOMALY_ROUTE)
        .collect();
    let m = round_trip(&records);
    assert_eq!(m.anomaly_holdout.labelled, 0);
    assert_eq!(m.anomaly_holdout.auc, None);
    assert_eq!(m.anomaly_holdout.detection_rate, None);
    assert!(m.anomaly_holdout.false_alarm_rate.is_some());
}

#[test]
fn one_route() {
    let records: Vec<_> = sample()
        .into_iter()
        .filter(|r| r.route == "GET /api/products")
        .collect();
    let m = round_trip(&records);
    assert_eq!(m.latency_by_route.len(), 1);
}

#[test]
fn barely_enough_rows() {
    let all = sample();
    let step = all.len() / 210;
    let records: Vec<_> = all.into_iter().step_by(step).take(210).collect();
    let m = round_trip(&records);
    assert!(m.rows.holdout < 50, "{:?}", m.rows);
}

#[test]
fn no_online_prediction_logged() {
    // Every request answered by a model: nothing of the online statistics to compare with.
    let records: Vec<_> = sample()
        .into_iter()
        .map(|mut r| {
            r.source = "onnx".to_owned();
            r
        })
        .collect();
    let m = round_trip(&records);
    assert_eq!(m.latency_holdout.online_mae_log, None);
    assert_eq!(m.latency_holdout.online_p90_coverage, None);
}
