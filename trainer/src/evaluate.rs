//! `trainer evaluate`: how the model and the online statistics did on a scenario's logs.
//!
//! Every request since the shadow evaluation logs both answers (`model_ms`, `online_ms`), so
//! the two are compared on the same requests, whichever of them served: the hard requests the
//! online statistics answered while the model was retired count against the model as well.
//! The figures are the goals of the learning loop (`docs/evaluation.md`): the model's share of
//! answers, its MAE of ln latency beside the online statistics', p90 coverage, and how well the
//! served prediction anticipated requests that missed the latency target; and for the anomaly
//! side, how the logged anomaly scores told the requests incidents hurt from the rest.

use crate::logs::{self, LoadError};
use crate::metrics;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Log folder or glob.
    pub logs: String,
    /// Only requests that arrived at or after this (Unix ms), for example once the forced
    /// retrain finished.
    pub since_ms: i64,
    /// Only requests that arrived before this (Unix ms).
    pub until_ms: i64,
    /// The latency target (ms) a request misses when it takes longer.
    pub target_ms: f64,
    /// Incidents injected during the run.
    pub incidents: Vec<Incident>,
}

/// An incident injected from outside the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incident {
    /// What it was (`lock`, `cpu`, ...).
    pub kind: String,
    /// When it started and ended (Unix ms).
    pub start_ms: i64,
    /// When it ended.
    pub end_ms: i64,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Requests evaluated (arrived since `since_ms`), shed ones included.
    pub requests: u64,
    /// Of them, shed by admission.
    pub shed: u64,
    /// Share of the predictions the model answered (`source` onnx) among served requests.
    pub model_share: f64,
    /// Served requests that both the model and the online statistics predicted.
    pub shadowed: u64,
    /// On those: the model's mean |ln actual - ln p50|.
    pub model_mae_log: Option<f64>,
    /// The online statistics' on the same requests.
    pub online_mae_log: Option<f64>,
    /// 1 - model / online: how much lower the model's error is.
    pub gain: Option<f64>,
    /// Share at or under the model's p90.
    pub model_p90_coverage: Option<f64>,
    /// Share at or under the online p90.
    pub online_p90_coverage: Option<f64>,
    /// Target violations against the served prediction.
    pub violations: Violations,
    /// How the anomaly scores told the requests incidents hurt from the rest.
    pub anomalies: Anomalies,
}

/// How well `x-anomaly-score` (logged as `anomaly_score`) marked the requests incidents hurt:
/// those that arrived inside an incident and were shed, failed with a server error or missed
/// the target. Every request counts, shed ones included: shedding must not hide an incident.
#[derive(Debug, Clone, Serialize)]
pub struct Anomalies {
    /// Share of all requests that scored at or above [`contract::ANOMALY_SCORE`].
    pub flagged_share: Option<f64>,
    /// The same share among the requests outside every incident (healthy traffic).
    pub healthy_flagged_share: Option<f64>,
    /// Requests an incident hurt.
    pub hurt: u64,
    /// Of them, shed.
    pub hurt_shed: u64,
    /// ROC AUC of the score, the hurt requests against all others.
    pub auc: Option<f64>,
    /// ROC AUC inside the incidents alone: the hurt against those served within the target,
    /// so that one incident-wide score on every request cannot pass.
    pub auc_in_incidents: Option<f64>,
    /// Mean score of the hurt requests that were served, and of those shed.
    pub hurt_served_mean: Option<f64>,
    /// See `hurt_served_mean`.
    pub hurt_shed_mean: Option<f64>,
}

/// How well the served prediction (its p90 above the target) anticipated target misses.
#[derive(Debug, Clone, Serialize)]
pub struct Violations {
    /// The target (ms).
    pub target_ms: f64,
    /// Served requests slower than the target.
    pub missed: u64,
    /// Served requests predicted to miss it.
    pub predicted: u64,
    /// Both.
    pub predicted_and_missed: u64,
    /// Shed requests that were predicted to miss it (their outcome is never seen).
    pub shed_predicted: u64,
    /// Share of the misses that were predicted.
    pub recall: Option<f64>,
    /// Share of the predicted misses that missed.
    pub precision: Option<f64>,
    /// Per incident: recall over the misses that arrived in its first 2 s, and the lead time
    /// (ms) of the first predicted miss before the first miss finished (negative: after).
    pub incidents: Vec<IncidentFigures>,
}

/// One incident's figures.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentFigures {
    /// The incident.
    pub kind: String,
    /// Misses that arrived in its first 2 s.
    pub early_misses: u64,
    /// Share of them predicted.
    pub early_recall: Option<f64>,
    /// First miss finished minus first predicted miss arrived (ms), in the incident.
    pub lead_ms: Option<i64>,
}

#[derive(Default)]
struct Sums {
    n: u64,
    model_error: f64,
    online_error: f64,
    model_covered: u64,
    online_covered: u64,
}

/// Reads the logs and computes the figures.
///
/// # Errors
/// Unreadable or invalid logs.
pub fn evaluate(opts: &Options) -> Result<Evaluation, LoadError> {
    let mut requests = 0_u64;
    let mut shed = 0_u64;
    let mut served = 0_u64;
    let mut by_model = 0_u64;
    let mut sums = Sums::default();
    let (mut missed, mut predicted, mut both, mut shed_predicted) = (0, 0, 0, 0);
    // Per incident: early misses, early predicted misses, first predicted arrival, first miss end.
    let mut per_incident = vec![(0_u64, 0_u64, None::<i64>, None::<i64>); opts.incidents.len()];
    // Anomaly scores: (score, hurt) over every request, and over those inside incidents.
    let (mut scores, mut hurt) = (Vec::new(), Vec::new());
    let (mut inside_scores, mut inside_hurt) = (Vec::new(), Vec::new());
    let (mut flagged, mut healthy, mut healthy_flagged) = (0_u64, 0_u64, 0_u64);
    let (mut hurt_served, mut hurt_shed) = ((0_u64, 0.0_f64), (0_u64, 0.0_f64));
    for path in logs::find_files(&opts.logs)? {
        logs::for_each_record(&path, |_, r| {
            if r.ts_ms < opts.since_ms || r.ts_ms >= opts.until_ms {
                return Ok(());
            }
            requests += 1;
            let inside = opts
                .incidents
                .iter()
                .any(|i| (i.start_ms..=i.end_ms).contains(&r.ts_ms));
            let harmed =
                inside && (r.shed || r.status >= 500 || f64::from(r.latency_ms) > opts.target_ms);
            let score = f64::from(r.anomaly_score);
            let high = r.anomaly_score >= contract::ANOMALY_SCORE;
            flagged += u64::from(high);
            if !inside {
                healthy += 1;
                healthy_flagged += u64::from(high);
            }
            scores.push(score);
            hurt.push(harmed);
            if inside {
                inside_scores.push(score);
                inside_hurt.push(harmed);
            }
            if harmed {
                let sums = if r.shed {
                    &mut hurt_shed
                } else {
                    &mut hurt_served
                };
                sums.0 += 1;
                sums.1 += score;
            }
            let predicts_miss = f64::from(r.predicted_p90_ms) > opts.target_ms;
            if r.shed {
                shed += 1;
                shed_predicted += u64::from(predicts_miss);
                return Ok(());
            }
            served += 1;
            by_model += u64::from(r.source == "onnx");
            let latency = f64::from(r.latency_ms.max(0.001));
            let [m50, m90] = r.model_ms.map(f64::from);
            let [o50, o90] = r.online_ms.map(f64::from);
            if m50 > 0.0 && o50 > 0.0 {
                sums.n += 1;
                sums.model_error += (latency.ln() - m50.ln()).abs();
                sums.online_error += (latency.ln() - o50.ln()).abs();
                sums.model_covered += u64::from(latency <= m90);
                sums.online_covered += u64::from(latency <= o90);
            }
            let misses = latency > opts.target_ms;
            missed += u64::from(misses);
            predicted += u64::from(predicts_miss);
            both += u64::from(misses && predicts_miss);
            for (k, incident) in opts.incidents.iter().enumerate() {
                if r.ts_ms < incident.start_ms || r.ts_ms > incident.end_ms {
                    continue;
                }
                let figures = &mut per_incident[k];
                if misses && r.ts_ms < incident.start_ms + 2_000 {
                    figures.0 += 1;
                    figures.1 += u64::from(predicts_miss);
                }
                if predicts_miss {
                    figures.2 = Some(figures.2.map_or(r.ts_ms, |t| t.min(r.ts_ms)));
                }
                if misses {
                    let end = r.ts_ms + latency as i64;
                    figures.3 = Some(figures.3.map_or(end, |t| t.min(end)));
                }
            }
            Ok(())
        })?;
    }
    let share = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    let model_mae = share_f(sums.model_error, sums.n);
    let online_mae = share_f(sums.online_error, sums.n);
    let anomalies = Anomalies {
        flagged_share: share(flagged, requests),
        healthy_flagged_share: share(healthy_flagged, healthy),
        hurt: hurt_served.0 + hurt_shed.0,
        hurt_shed: hurt_shed.0,
        auc: metrics::auc(&scores, &hurt),
        auc_in_incidents: metrics::auc(&inside_scores, &inside_hurt),
        hurt_served_mean: share_f(hurt_served.1, hurt_served.0),
        hurt_shed_mean: share_f(hurt_shed.1, hurt_shed.0),
    };
    Ok(Evaluation {
        anomalies,
        requests,
        shed,
        model_share: share(by_model, served).unwrap_or(0.0),
        shadowed: sums.n,
        model_mae_log: model_mae,
        online_mae_log: online_mae,
        gain: model_mae
            .zip(online_mae)
            .filter(|(_, o)| *o > 0.0)
            .map(|(m, o)| 1.0 - m / o),
        model_p90_coverage: share(sums.model_covered, sums.n),
        online_p90_coverage: share(sums.online_covered, sums.n),
        violations: Violations {
            target_ms: opts.target_ms,
            missed,
            predicted,
            predicted_and_missed: both,
            shed_predicted,
            recall: share(both, missed),
            precision: share(both, predicted),
            incidents: opts
                .incidents
                .iter()
                .zip(per_incident)
                .map(
                    |(incident, (early, early_hit, first_predicted, first_miss))| IncidentFigures {
                        kind: incident.kind.clone(),
                        early_misses: early,
                        early_recall: share(early_hit, early),
                        lead_ms: first_predicted.zip(first_miss).map(|(p, m)| m - p),
                    },
                )
                .collect(),
        },
    })
}

fn share_f(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// Incidents from a JSON file (an array of [`Incident`]); none when the file does not exist.
///
/// # Errors
/// A file that exists but does not parse.
pub fn read_incidents(path: &Path) -> anyhow::Result<Vec<Incident>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use contract::RequestRecord;
    use std::io::Write as _;

    /// A logged request on `GET /api/products`; the other tests' records start from it.
    pub(crate) fn record(
        ts_ms: i64,
        latency_ms: f32,
        model: f32,
        online: f32,
        shed: bool,
    ) -> RequestRecord {
        RequestRecord {
            ts_ms,
            schema: contract::features::fingerprint_hex(),
            route: "GET /api/products".into(),
            path: "/api/products".into(),
            priority: "normal".into(),
            features: [0.0; contract::FEATURE_COUNT],
            predicted_p50_ms: model,
            predicted_p90_ms: model * 2.0,
            confidence: 0.9,
            source: "onnx".into(),
            model_ms: [model, model * 2.0],
            online_ms: [online, online * 2.0],
            status: if shed { 503 } else { 200 },
            latency_ms,
            db_ms: 0.0,
            queue_ms: 0.0,
            cache: "bypass".into(),
            shed,
            anomaly_score: 0.0,
            queries: Vec::new(),
        }
    }

    #[test]
    fn the_model_and_online_are_compared_on_the_same_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = std::fs::File::create(dir.path().join("r.ndjson")).expect("file");
        let rows = [
            // Before `since`: left out.
            record(0, 10.0, 1.0, 1.0, false),
            // The model is right, online is off by e.
            record(100, 10.0, 10.0, 10.0 / std::f32::consts::E, false),
            // A 300 ms request, predicted p90 600 ms: a predicted miss that missed.
            record(200, 300.0, 300.0, 300.0 / std::f32::consts::E, false),
            // Predicted to miss and shed.
            record(300, 1.0, 400.0, 1.0, true),
        ];
        for r in rows {
            serde_json::to_writer(&mut file, &r).expect("write");
            file.write_all(b"\n").expect("newline");
        }
        drop(file);
        let e = evaluate(&Options {
            logs: dir.path().to_string_lossy().into_owned(),
            since_ms: 50,
            until_ms: i64::MAX,
            target_ms: 100.0,
            incidents: vec![Incident {
                kind: "lock".into(),
                start_ms: 150,
                end_ms: 250,
            }],
        })
        .expect("evaluate");
        assert_eq!((e.requests, e.shed, e.shadowed), (3, 1, 2));
        assert!(e.model_mae_log.expect("model") < 1e-6);
        assert!((e.online_mae_log.expect("online") - 1.0).abs() < 1e-6);
        assert!((e.gain.expect("gain") - 1.0).abs() < 1e-6);
        let v = &e.violations;
        assert_eq!((v.missed, v.predicted, v.shed_predicted), (1, 1, 1));
        assert_eq!((v.recall, v.precision), (Some(1.0), Some(1.0)));
        assert_eq!(v.incidents[0].early_recall, Some(1.0));
        assert_eq!(v.incidents[0].lead_ms, Some(300));
    }

    #[test]
    fn anomaly_scores_are_judged_on_the_requests_incidents_hurt_shed_ones_included() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = std::fs::File::create(dir.path().join("r.ndjson")).expect("file");
        let scored = |ts, latency, shed, score| RequestRecord {
            anomaly_score: score,
            ..record(ts, latency, 1.0, 1.0, shed)
        };
        let rows = [
            // Healthy, before the incident: one of two flagged.
            scored(0, 1.0, false, 0.1),
            scored(10, 1.0, false, 0.96),
            // Inside it: a slow request and a shed one, both hurt; one within target.
            scored(150, 300.0, false, 0.99),
            scored(160, 1.0, true, 0.97),
            scored(170, 2.0, false, 0.2),
        ];
        for r in rows {
            serde_json::to_writer(&mut file, &r).expect("write");
            file.write_all(b"\n").expect("newline");
        }
        drop(file);
        let e = evaluate(&Options {
            logs: dir.path().to_string_lossy().into_owned(),
            since_ms: 0,
            until_ms: i64::MAX,
            target_ms: 100.0,
            incidents: vec![Incident {
                kind: "lock".into(),
                start_ms: 100,
                end_ms: 200,
            }],
        })
        .expect("evaluate");
        let a = &e.anomalies;
        assert_eq!((a.hurt, a.hurt_shed), (2, 1));
        assert_eq!(a.healthy_flagged_share, Some(0.5));
        assert_eq!(a.flagged_share, Some(0.6));
        // Hurt 0.99 and 0.97 against 0.1, 0.96 and 0.2: every pair in order.
        assert_eq!(a.auc, Some(1.0));
        assert_eq!(a.auc_in_incidents, Some(1.0));
        assert!((a.hurt_shed_mean.expect("shed mean") - 0.97).abs() < 1e-6);
    }
}
