//! The dashboard's time series: the optimizer's 10-second history, downsampled to at most a
//! requested number of points.
//!
//! Nothing here is kept between calls: a request copies the window it asks for out of
//! [`Optimizer::history`](super::Optimizer) and merges neighbouring samples into buckets whose
//! width is a multiple of the sampling interval, aligned to wall-clock time so that a bucket
//! keeps its value from one poll to the next. Memory is bounded by the history itself (one
//! sample per 10 s for `metrics.retention_hours`) and, per request, by [`MAX_POINTS`].
//!
//! How samples merge: gauges (rates, latencies, permits) are averaged, the anomalous share
//! takes the bucket's maximum (a short incident must not vanish in a long bucket), and counters
//! (cache hits, shed requests) are differences of the cumulative counters each sample carries.

use super::admission::PriorityStats;
use super::{Sample, unix_ms};
use contract::routes::route_label;
use serde::Serialize;
use std::collections::BTreeMap;

/// Seconds between two history samples.
pub const SAMPLE_SECS: i64 = 10;
/// Most points one answer may hold.
pub const MAX_POINTS: usize = 720;

/// One point of a chart: one bucket of samples, or the live state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix ms of the newest sample in the bucket.
    pub ts_ms: i64,
    /// The server's state at the time of the request rather than a stored sample.
    pub live: bool,
    /// Samples merged into this point.
    pub samples: u32,
    /// Seconds the point's counts cover (the live point covers only the time since the newest
    /// stored sample), to turn counts into rates.
    pub secs: f64,
    /// Requests per second, all routes.
    pub request_rate: f32,
    /// Mean prediction confidence (0-1) over the samples in which some route had predictions;
    /// `None` when none had (no prediction is not zero confidence).
    pub confidence: Option<f64>,
    /// Cache hits / lookups in the bucket; `None` when there were no lookups.
    pub cache_hit_rate: Option<f64>,
    /// Highest anomalous share of requests at any second of the bucket.
    pub anomaly_rate: f64,
    /// Auto-healing was in force at some second of the bucket.
    pub healing: bool,
    /// Adaptive concurrency limit at the newest sample.
    pub limit: u32,
    /// Mean requests holding permits.
    pub in_flight: f64,
    /// Requests answered from cache in the bucket.
    pub cache_hits: u64,
    /// Cache entries refreshed before expiry in the bucket.
    pub cache_refreshes: u64,
    /// Requests shed (503) in the bucket, all priorities.
    pub shed: u64,
    /// Allocation and use per priority.
    pub priorities: Vec<PriorityPoint>,
    /// Rate and latency per route with traffic.
    pub routes: Vec<RoutePoint>,
}

/// Resource allocation of one priority in one bucket.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityPoint {
    /// `critical`, `high`, `normal` or `low`.
    pub priority: &'static str,
    /// Mean permits this priority was allowed.
    pub permits: f64,
    /// Mean permits it held.
    pub in_use: f64,
    /// Mean requests waiting.
    pub waiting: f64,
    /// Requests that had to wait, per second.
    pub queued_per_sec: f64,
    /// Requests shed, per second.
    pub shed_per_sec: f64,
}

/// Rate and latency of one route in one bucket (means over the samples where it had traffic).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePoint {
    /// Route label, e.g. `GET /api/products`.
    pub route: String,
    /// Requests per second (mean over the whole bucket, idle samples counting as zero).
    pub rate: f64,
    /// Actual median latency (ms).
    pub p50_ms: f64,
    /// Actual 90th percentile (ms).
    pub p90_ms: f64,
    /// Actual 95th percentile (ms).
    pub p95_ms: f64,
    /// Mean predicted p50 (ms); `None` when nothing was predicted.
    pub predicted_p50_ms: Option<f64>,
    /// Mean predicted p90 (ms); `None` when nothing was predicted.
    pub predicted_p90_ms: Option<f64>,
}

/// Bucket width (ms) that fits `window_ms` into at most `max_points` buckets: a whole number
/// of sampling intervals, never less than one.
pub fn bucket_ms(window_ms: i64, max_points: usize) -> i64 {
    let points = i64::try_from(max_points.clamp(1, MAX_POINTS)).unwrap_or(1);
    let interval = SAMPLE_SECS * 1000;
    let per_point = (window_ms.max(1) + points - 1) / points;
    ((per_point + interval - 1) / interval).max(1) * interval
}

/// What happened between two samples (or since start when there is no earlier sample).
struct Interval<'a> {
    sample: &'a Sample,
    secs: f64,
    hits: u64,
    lookups: u64,
    refreshes: u64,
    queued: [u64; 4],
    shed: [u64; 4],
}

fn interval<'a>(previous: Option<&Sample>, sample: &'a Sample) -> Interval<'a> {
    let counter = |pick: fn(&PriorityStats) -> u64, i: usize| {
        let now = sample.priorities.get(i).map_or(0, pick);
        let before = previous.and_then(|p| p.priorities.get(i)).map_or(0, pick);
        now.saturating_sub(before)
    };
    let totals = sample.cache_totals;
    let before = previous.map(|p| p.cache_totals).unwrap_or_default();
    let secs = previous.map_or(SAMPLE_SECS as f64, |p| {
        (sample.ts_ms - p.ts_ms).max(1) as f64 / 1000.0
    });
    Interval {
        sample,
        secs,
        hits: totals.hits.saturating_sub(before.hits),
        lookups: totals.lookups.saturating_sub(before.lookups),
        refreshes: totals.refreshes.saturating_sub(before.refreshes),
        queued: std::array::from_fn(|i| counter(|p| p.queued, i)),
        shed: std::array::from_fn(|i| counter(|p| p.shed, i)),
    }
}

fn merge(bucket: &[Interval<'_>], live: bool) -> Option<Point> {
    let newest = bucket.last()?.sample;
    let n = bucket.len() as f64;
    let mean =
        |pick: &dyn Fn(&Sample) -> f64| bucket.iter().map(|i| pick(i.sample)).sum::<f64>() / n;
    let secs: f64 = bucket.iter().map(|i| i.secs).sum();
    let hits: u64 = bucket.iter().map(|i| i.hits).sum();
    let lookups: u64 = bucket.iter().map(|i| i.lookups).sum();
    let priorities = newest
        .priorities
        .iter()
        .enumerate()
        .map(|(p, stats)| {
            let gauge = |pick: fn(&PriorityStats) -> u32| {
                mean(&|s| s.priorities.get(p).map_or(0.0, |x| f64::from(pick(x))))
            };
            let per_sec = |counts: fn(&Interval<'_>) -> [u64; 4]| {
                bucket
                    .iter()
                    .map(|i| counts(i).get(p).copied().unwrap_or(0))
                    .sum::<u64>() as f64
                    / secs.max(1e-3)
            };
            PriorityPoint {
                priority: stats.priority.as_str(),
                permits: gauge(|x| x.permits),
                in_use: gauge(|x| x.in_use),
                waiting: gauge(|x| x.waiting),
                queued_per_sec: per_sec(|i| i.queued),
                shed_per_sec: per_sec(|i| i.shed),
            }
        })
        .collect();
    // Per route: sums over the samples where the route had traffic, and how many those were.
    #[derive(Default)]
    struct Acc {
        seen: f64,
        rate: f64,
        p50: f64,
        p90: f64,
        p95: f64,
        predicted: f64,
        predicted_p50: f64,
        predicted_p90: f64,
    }
    let mut routes: BTreeMap<u16, Acc> = BTreeMap::new();
    for r in bucket.iter().flat_map(|i| &i.sample.routes) {
        let acc = routes.entry(r.route).or_default();
        acc.seen += 1.0;
        acc.rate += f64::from(r.rate);
        acc.p50 += f64::from(r.p50_ms);
        acc.p90 += f64::from(r.p90_ms);
        acc.p95 += f64::from(r.p95_ms);
        if r.predicted_p50_ms > 0.0 {
            acc.predicted += 1.0;
            acc.predicted_p50 += f64::from(r.predicted_p50_ms);
            acc.predicted_p90 += f64::from(r.predicted_p90_ms);
        }
    }
    let routes = routes
        .into_iter()
        .map(|(route, a)| RoutePoint {
            route: route_label(usize::from(route)),
            rate: a.rate / n,
            p50_ms: a.p50 / a.seen,
            p90_ms: a.p90 / a.seen,
            p95_ms: a.p95 / a.seen,
            predicted_p50_ms: (a.predicted > 0.0).then(|| a.predicted_p50 / a.predicted),
            predicted_p90_ms: (a.predicted > 0.0).then(|| a.predicted_p90 / a.predicted),
        })
        .collect();
    Some(Point {
        ts_ms: newest.ts_ms,
        live,
        samples: u32::try_from(bucket.len()).unwrap_or(u32::MAX),
        secs,
        request_rate: mean(&|s| f64::from(s.request_rate)) as f32,
        confidence: {
            let predicted: Vec<f64> = bucket
                .iter()
                .filter(|i| i.sample.routes.iter().any(|r| r.predicted_p50_ms > 0.0))
                .map(|i| i.sample.confidence)
                .collect();
            (!predicted.is_empty()).then(|| predicted.iter().sum::<f64>() / predicted.len() as f64)
        },
        cache_hit_rate: if lookups == 0 {
            None
        } else {
            Some(hits as f64 / lookups as f64)
        },
        anomaly_rate: bucket
            .iter()
            .map(|i| i.sample.anomaly_peak)
            .fold(0.0, f64::max),
        healing: bucket.iter().any(|i| i.sample.healed),
        limit: newest.limit,
        in_flight: mean(&|s| f64::from(s.in_flight)),
        cache_hits: hits,
        cache_refreshes: bucket.iter().map(|i| i.refreshes).sum(),
        shed: bucket.iter().map(|i| i.shed.iter().sum::<u64>()).sum(),
        priorities,
        routes,
    })
}

/// Merges `samples` (oldest first) into buckets of `bucket_ms`, at most `max_points` of them
/// (the newest). `before` is the sample just before the first one, whose counters the first
/// bucket's counts start from; without it they count from zero, which is right while the
/// history still reaches back to the server's start.
pub fn downsample(
    samples: &[Sample],
    before: Option<&Sample>,
    bucket_ms: i64,
    max_points: usize,
) -> Vec<Point> {
    let bucket_ms = bucket_ms.max(1);
    let mut points = Vec::new();
    let mut previous = before;
    let mut bucket: Vec<Interval<'_>> = Vec::new();
    let mut current_key = None;
    for sample in samples {
        let key = sample.ts_ms.div_euclid(bucket_ms);
        if current_key.is_some_and(|k| k != key) {
            points.extend(merge(&bucket, false));
            bucket.clear();
        }
        current_key = Some(key);
        bucket.push(interval(previous, sample));
        previous = Some(sample);
    }
    points.extend(merge(&bucket, false));
    let max_points = max_points.clamp(1, MAX_POINTS);
    if points.len() > max_points {
        points.drain(..points.len() - max_points);
    }
    points
}

/// The live point: `now` against the newest stored sample.
pub fn live_point(now: &Sample, newest_stored: Option<&Sample>) -> Option<Point> {
    merge(&[interval(newest_stored, now)], true)
}

/// Unix ms at which a window of the last `minutes` starts.
pub fn window_start_ms(minutes: u32) -> i64 {
    unix_ms() - i64::from(minutes) * 60_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Priority;
    use crate::{CacheTotals, RouteSample};

    fn sample(ts_ms: i64, hits: u64, lookups: u64, low_shed: u64, anomaly: f64) -> Sample {
        let priority = |priority, shed| PriorityStats {
            priority,
            permits: 8,
            in_use: 2,
            waiting: 0,
            admitted: 100,
            queued: 0,
            shed,
        };
        Sample {
            ts_ms,
            request_rate: 10.0,
            limit: 32,
            in_flight: 2,
            priorities: vec![
                priority(Priority::Critical, 0),
                priority(Priority::High, 0),
                priority(Priority::Normal, 0),
                priority(Priority::Low, low_shed),
            ],
            confidence: 0.9,
            anomaly_rate: anomaly / 2.0,
            healing: false,
            anomaly_peak: anomaly,
            healed: false,
            cache_hit_rate: 0.0,
            cache_totals: CacheTotals {
                hits,
                lookups,
                refreshes: 0,
            },
            routes: vec![RouteSample {
                route: 1,
                rate: 10.0,
                p50_ms: 2.0,
                p90_ms: 4.0,
                p95_ms: 5.0,
                predicted_p50_ms: 2.5,
                predicted_p90_ms: 4.5,
            }],
        }
    }

    #[test]
    fn a_day_of_samples_fits_in_the_requested_number_of_points() {
        let day: Vec<Sample> = (0..8640)
            .map(|i| sample(i * 10_000, 0, 0, 0, 0.0))
            .collect();
        let width = bucket_ms(24 * 3600 * 1000, 240);
        let points = downsample(&day, None, width, 240);
        assert!(points.len() <= 240, "{} points", points.len());
        assert!(points.len() >= 200, "{} points", points.len());
        assert_eq!(
            points.iter().map(|p| p.samples).sum::<u32>(),
            8640,
            "every sample lands in a bucket"
        );
    }

    #[test]
    fn buckets_are_whole_sampling_intervals_and_never_narrower_than_one() {
        assert_eq!(bucket_ms(60_000, 240), 10_000);
        assert_eq!(bucket_ms(3_600_000, 240), 20_000);
        assert_eq!(bucket_ms(24 * 3_600_000, 240), 360_000);
    }

    #[test]
    fn counters_become_counts_per_bucket_and_rates_per_second() {
        // Two buckets of 20 s: cumulative hits 10, 30 | 60, 100 out of lookups 10, 40 | 80, 120.
        let samples = [
            sample(20_000, 10, 10, 0, 0.0),
            sample(30_000, 30, 40, 20, 0.5),
            sample(40_000, 60, 80, 20, 0.1),
            sample(50_000, 100, 120, 20, 0.0),
        ];
        let before = sample(10_000, 0, 0, 0, 0.0);
        let points = downsample(&samples, Some(&before), 20_000, 10);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].cache_hits, 30);
        assert!((points[0].secs - 20.0).abs() < 1e-9);
        assert_eq!(points[0].cache_hit_rate, Some(0.75));
        assert_eq!(points[1].cache_hits, 70);
        assert_eq!(points[1].cache_hit_rate, Some(70.0 / 80.0));
        assert_eq!(points[0].shed, 20);
        assert_eq!(points[1].shed, 0);
        let low = &points[0].priorities[3];
        assert_eq!(low.priority, "low");
        assert!((low.shed_per_sec - 1.0).abs() < 1e-9, "20 shed in 20 s");
        assert!(
            (points[0].anomaly_rate - 0.5).abs() < 1e-9,
            "a bucket keeps its worst anomalous share"
        );
        assert_eq!(points[1].ts_ms, 50_000);
    }

    #[test]
    fn routes_carry_actual_and_predicted_latency() {
        let points = downsample(&[sample(10_000, 0, 0, 0, 0.0)], None, 10_000, 10);
        let route = &points[0].routes[0];
        assert_eq!(route.route, "GET /api/products");
        assert!((route.p95_ms - 5.0).abs() < 1e-6);
        assert_eq!(route.predicted_p50_ms, Some(2.5));
        assert_eq!(points[0].cache_hit_rate, None, "no lookups, no hit rate");
        assert_eq!(points[0].confidence, Some(0.9));
        let mut idle = sample(20_000, 0, 0, 0, 0.0);
        idle.routes.clear();
        let points = downsample(&[idle], None, 10_000, 10);
        assert_eq!(points[0].confidence, None, "no prediction, no confidence");
    }

    #[test]
    fn only_the_newest_points_are_kept_when_there_are_too_many() {
        let samples: Vec<Sample> = (0..50).map(|i| sample(i * 10_000, 0, 0, 0, 0.0)).collect();
        let points = downsample(&samples, None, 10_000, 20);
        assert_eq!(points.len(), 20);
        assert_eq!(points[19].ts_ms, 490_000);
    }

    #[test]
    fn the_live_point_counts_from_the_newest_stored_sample() {
        let stored = sample(10_000, 10, 20, 0, 0.0);
        let now = sample(14_000, 14, 24, 0, 0.0);
        let live = live_point(&now, Some(&stored)).expect("point");
        assert!(live.live);
        assert_eq!(live.cache_hits, 4);
        assert_eq!(live.cache_hit_rate, Some(1.0));
    }
}
