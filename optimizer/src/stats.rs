//! Online statistics per route: the always-on fallback predictor's memory and the baseline any
//! model must beat.
//!
//! Each route keeps a log-scale latency histogram over two rotating 10-second windows (for
//! quantiles), an exponentially weighted mean and variance of ln(latency) (for anomaly
//! z-scores), and how often recent latencies fell inside the predicted band (for an honest
//! confidence). All of it sits behind one `std::sync::Mutex` per route: it is held for well
//! under a microsecond, never across an `.await`, and routes do not contend with each other.
//! Request rates are counted with atomics and turned into rates by the once-a-second sampler.

use contract::routes::ROUTES;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Histogram buckets: bucket `i` holds latencies up to `BASE_MS × GROWTH^i` (50 µs to ~60 s).
const BUCKETS: usize = 64;
const BASE_MS: f64 = 0.05;
const GROWTH: f64 = 1.25;
/// Length of one statistics window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Weight of a new sample in the exponentially weighted mean/variance.
const EWMA_ALPHA: f64 = 0.05;
/// Fewer samples than this in the windows: quantiles come from the EWMA instead.
const MIN_SAMPLES: u32 = 20;
/// Outliers past the latency target (and past 3 sd) the EWMA learns from per route and second;
/// the rest of that second's such outliers leave it as it is. The requests a stall held finish
/// together, hundreds at once: each would widen the spread by about 4%, so that the last of them
/// looked ordinary. A lasting new level past the target is still learned, from ten of its
/// requests a second, within half a minute. Outliers within the target (a burst's queueing the
/// server absorbs) are learned from without a cap, so the route's level follows its load.
const OUTLIERS_PER_SECOND: u32 = 10;
/// The latency target [`Stats::default`] assumes (`optimization.target_latency_ms`'s default).
pub const DEFAULT_TARGET_MS: f64 = 100.0;

/// Number of routes tracked.
pub const ROUTE_COUNT: usize = ROUTES.len();

fn bucket_of(ms: f64) -> usize {
    if ms <= BASE_MS {
        return 0;
    }
    let i = ((ms / BASE_MS).ln() / GROWTH.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> f64 {
    let exp = i as i32;
    BASE_MS * GROWTH.powi(exp)
}

#[derive(Clone, Copy)]
struct Window {
    counts: [u32; BUCKETS],
    total: u32,
    /// Requests that had a prediction, and of those, how many landed at or under the p90.
    predicted: u32,
    covered: u32,
    /// Sum of |ln(actual) - ln(predicted p50)| over predicted requests.
    abs_log_error: f64,
    /// Sums of the predicted p50 and p90 (ms) over predicted requests, so the dashboard can
    /// set what was predicted beside what happened.
    predicted_p50_sum: f64,
    predicted_p90_sum: f64,
    errors: u32,
    /// Requests both the model and the online statistics predicted (the shadow evaluation),
    /// their errors of ln latency and how many landed at or under each one's p90.
    shadowed: u32,
    model_error: f64,
    online_error: f64,
    model_covered: u32,
    online_covered: u32,
}

/// The model's and the online statistics' p50 and p90 (ms) for one request, both known: what
/// the shadow evaluation compares, whichever of them answered.
#[derive(Debug, Clone, Copy)]
pub struct Shadow {
    /// The model's p50 and p90.
    pub model: [f64; 2],
    /// The online statistics' p50 and p90.
    pub online: [f64; 2],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            total: 0,
            predicted: 0,
            covered: 0,
            abs_log_error: 0.0,
            predicted_p50_sum: 0.0,
            predicted_p90_sum: 0.0,
            errors: 0,
            shadowed: 0,
            model_error: 0.0,
            online_error: 0.0,
            model_covered: 0,
            online_covered: 0,
        }
    }
}

/// The statistics of one route.
struct RouteState {
    current: Window,
    previous: Window,
    window_start: Instant,
    ewma_mean: f64,
    ewma_var: f64,
    samples: u64,
    /// When the current second of outlier learning began, and how many outliers it learned.
    outlier_second: Instant,
    outliers_learned: u32,
    /// The last snapshot, when it was taken, and samples recorded since: reused while it is
    /// younger than [`MEMO_AGE`] and fewer than [`MEMO_SAMPLES`] requests have finished, so a
    /// busy route computes its quantiles a few hundred times a second instead of three times
    /// per request.
    memo: Option<(Instant, RouteSnapshot)>,
    since_memo: u32,
}

/// How long a snapshot may be reused.
const MEMO_AGE: Duration = Duration::from_millis(1);
/// How many finished requests a reused snapshot may miss.
const MEMO_SAMPLES: u32 = 16;

impl RouteState {
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // A long idle gap empties both windows: old latencies say little about now.
            self.previous = if elapsed >= 2 * WINDOW {
                Window::default()
            } else {
                self.current
            };
            self.current = Window::default();
            self.window_start = now;
        }
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.current.total + self.previous.total;
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = q * f64::from(total);
        let mut seen = 0.0;
        for i in 0..BUCKETS {
            let n = f64::from(self.current.counts[i] + self.previous.counts[i]);
            if n > 0.0 && seen + n >= rank {
                // Interpolate geometrically inside the bucket.
                let lower = if i == 0 {
                    BASE_MS / GROWTH
                } else {
                    bucket_upper(i - 1)
                };
                let frac = ((rank - seen) / n).clamp(0.0, 1.0);
                return Some(lower * (bucket_upper(i) / lower).powf(frac));
            }
            seen += n;
        }
        Some(bucket_upper(BUCKETS - 1))
    }
}

/// A route's statistics as seen by the predictor, the scorer and the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSnapshot {
    /// Median latency (ms), 0 when unknown.
    pub p50_ms: f64,
    /// 90th percentile latency (ms), 0 when unknown.
    pub p90_ms: f64,
    /// 95th percentile latency (ms), 0 when unknown.
    pub p95_ms: f64,
    /// 99th percentile latency (ms), 0 when unknown.
    pub p99_ms: f64,
    /// EWMA of ln(latency ms).
    pub ewma_log_mean: f64,
    /// EWMA standard deviation of ln(latency ms).
    pub ewma_log_sd: f64,
    /// Samples ever seen.
    pub samples: u64,
    /// Requests in the windows.
    pub window_requests: u32,
    /// Requests in the windows that had a prediction.
    pub predicted: u32,
    /// Share of those at or under their predicted p90 (the calibration).
    pub coverage: f64,
    /// Mean |ln actual - ln predicted p50| in the windows.
    pub mae_log: f64,
    /// Mean predicted p50 (ms) of the requests in the windows, 0 when none was predicted.
    pub predicted_p50_ms: f64,
    /// Mean predicted p90 (ms) of the requests in the windows, 0 when none was predicted.
    pub predicted_p90_ms: f64,
    /// Server errors in the windows.
    pub errors: u32,
    /// Requests in the windows both the model and the online statistics predicted.
    pub shadowed: u32,
    /// Of them: the model's mean |ln actual - ln p50|, 0 when none.
    pub model_mae_log: f64,
    /// The online statistics' on the same requests.
    pub online_mae_log: f64,
    /// The share at or under the model's p90.
    pub model_coverage: f64,
    /// The share at or under the online p90.
    pub online_coverage: f64,
}

/// Statistics for one route.
pub struct RouteStats {
    state: Mutex<RouteState>,
    /// Requests in flight on this route.
    pub in_flight: AtomicU32,
    /// Requests finished, ever (the sampler turns it into a rate).
    pub finished: AtomicU64,
    /// Requests per second, recent (f32 bits, written by the sampler).
    rate_bits: AtomicU32,
    last_finished: AtomicU64,
    /// Latencies past this (ms) are the ones whose learning is capped per second.
    target_ms: f64,
}

impl RouteStats {
    fn new(now: Instant, target_ms: f64) -> Self {
        Self {
            state: Mutex::new(RouteState {
                current: Window::default(),
                previous: Window::default(),
                window_start: now,
                ewma_mean: 0.0,
                ewma_var: 0.0,
                samples: 0,
                outlier_second: now,
                outliers_learned: 0,
                memo: None,
                since_memo: 0,
            }),
            in_flight: AtomicU32::new(0),
            finished: AtomicU64::new(0),
            rate_bits: AtomicU32::new(0),
            last_finished: AtomicU64::new(0),
            target_ms,
        }
    }

    /// Recent requests per second on this route.
    pub fn rate(&self) -> f32 {
        f32::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Records one finished request.
    pub fn record(
        &self,
        latency_ms: f64,
        predicted: Option<(f64, f64)>,
        shadow: Option<Shadow>,
        server_error: bool,
        now: Instant,
    ) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        let latency_ms = latency_ms.max(0.001);
        let log = latency_ms.ln();
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.rotate(now);
        let w = &mut s.current;
        w.counts[bucket_of(latency_ms)] += 1;
        w.total += 1;
        if server_error {
            w.errors += 1;
        }
        if let Some((p50, p90)) = predicted.filter(|(p50, p90)| *p50 > 0.0 && *p90 > 0.0) {
            w.predicted += 1;
            if latency_ms <= p90 {
                w.covered += 1;
            }
            w.abs_log_error += (log - p50.ln()).abs();
            w.predicted_p50_sum += p50;
            w.predicted_p90_sum += p90;
        }
        if let Some(Shadow { model, online }) =
            shadow.filter(|s| s.model[0] > 0.0 && s.online[0] > 0.0)
        {
            w.shadowed += 1;
            w.model_error += (log - model[0].ln()).abs();
            w.online_error += (log - online[0].ln()).abs();
            w.model_covered += u32::from(latency_ms <= model[1]);
            w.online_covered += u32::from(latency_ms <= online[1]);
        }
        if s.samples == 0 {
            s.ewma_mean = log;
            s.ewma_var = 0.25;
        } else {
            // Winsorize at 3 sd, and learn from outliers ten times more slowly, and from at
            // most a few a second of those past the target: a stall's victims must not become
            // "normal" within a second, yet a lasting new level is absorbed after a few hundred
            // of them, and a burst within the target is learned as the load it is.
            let sd = s.ewma_var.sqrt().max(0.05);
            let outlier = (log - s.ewma_mean).abs() > 3.0 * sd;
            let learn = if outlier && latency_ms > self.target_ms {
                if now.saturating_duration_since(s.outlier_second) >= Duration::from_secs(1) {
                    s.outlier_second = now;
                    s.outliers_learned = 0;
                }
                s.outliers_learned += 1;
                s.outliers_learned <= OUTLIERS_PER_SECOND
            } else {
                true
            };
            if learn {
                let alpha = if outlier {
                    EWMA_ALPHA / 10.0
                } else {
                    EWMA_ALPHA
                };
                let x = log.clamp(s.ewma_mean - 3.0 * sd, s.ewma_mean + 3.0 * sd);
                let diff = x - s.ewma_mean;
                s.ewma_mean += alpha * diff;
                s.ewma_var = (1.0 - alpha) * (s.ewma_var + alpha * diff * diff);
            }
        }
        s.samples += 1;
        s.since_memo = s.since_memo.saturating_add(1);
    }

    /// The route's current statistics.
    pub fn snapshot(&self, now: Instant) -> RouteSnapshot {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((taken, snap)) = s.memo
            && now.saturating_duration_since(taken) < MEMO_AGE
            && s.since_memo < MEMO_SAMPLES
        {
            return snap;
        }
        s.rotate(now);
        let snap = s.compute();
        s.memo = Some((now, snap));
        s.since_memo = 0;
        snap
    }
}

impl RouteState {
    fn compute(&self) -> RouteSnapshot {
        let s = self;
        let sd = s.ewma_var.sqrt();
        let from_ewma = |z: f64| {
            if s.samples == 0 {
                0.0
            } else {
                (s.ewma_mean + z * sd).exp()
            }
        };
        let predicted = s.current.predicted + s.previous.predicted;
        let covered = s.current.covered + s.previous.covered;
        let mean = |sum: f64| {
            if predicted == 0 {
                0.0
            } else {
                sum / f64::from(predicted)
            }
        };
        let shadowed = s.current.shadowed + s.previous.shadowed;
        let per_shadowed = |sum: f64| {
            if shadowed == 0 {
                0.0
            } else {
                sum / f64::from(shadowed)
            }
        };
        RouteSnapshot {
            p50_ms: s.quantile(0.5).unwrap_or_else(|| from_ewma(0.0)),
            p90_ms: s.quantile(0.9).unwrap_or_else(|| from_ewma(1.2816)),
            p95_ms: s.quantile(0.95).unwrap_or_else(|| from_ewma(1.6449)),
            p99_ms: s.quantile(0.99).unwrap_or_else(|| from_ewma(2.3263)),
            ewma_log_mean: s.ewma_mean,
            ewma_log_sd: sd,
            samples: s.samples,
            window_requests: s.current.total + s.previous.total,
            predicted,
            coverage: if predicted == 0 {
                0.0
            } else {
                f64::from(covered) / f64::from(predicted)
            },
            mae_log: if predicted == 0 {
                0.0
            } else {
                (s.current.abs_log_error + s.previous.abs_log_error) / f64::from(predicted)
            },
            predicted_p50_ms: mean(s.current.predicted_p50_sum + s.previous.predicted_p50_sum),
            predicted_p90_ms: mean(s.current.predicted_p90_sum + s.previous.predicted_p90_sum),
            errors: s.current.errors + s.previous.errors,
            shadowed,
            model_mae_log: per_shadowed(s.current.model_error + s.previous.model_error),
            online_mae_log: per_shadowed(s.current.online_error + s.previous.online_error),
            model_coverage: per_shadowed(f64::from(
                s.current.model_covered + s.previous.model_covered,
            )),
            online_coverage: per_shadowed(f64::from(
                s.current.online_covered + s.previous.online_covered,
            )),
        }
    }
}

/// Statistics for every route, plus server-wide counters.
pub struct Stats {
    /// Per route, indexed like [`contract::ROUTES`].
    pub routes: Vec<RouteStats>,
    /// Requests in flight, all routes.
    pub in_flight: AtomicU32,
    total_rate_bits: AtomicU32,
}

impl Default for Stats {
    fn default() -> Self {
        Self::with_target(DEFAULT_TARGET_MS)
    }
}

impl Stats {
    /// Statistics for a server whose latency target is `target_ms`.
    pub fn with_target(target_ms: f64) -> Self {
        let now = Instant::now();
        Self {
            routes: (0..ROUTE_COUNT)
                .map(|_| RouteStats::new(now, target_ms))
                .collect(),
            in_flight: AtomicU32::new(0),
            total_rate_bits: AtomicU32::new(0),
        }
    }

    /// The statistics of one route (index 0, "other", for anything unknown).
    pub fn route(&self, index: usize) -> &RouteStats {
        self.routes.get(index).unwrap_or(&self.routes[0])
    }

    /// Recent requests per second, all routes.
    pub fn total_rate(&self) -> f32 {
        f32::from_bits(self.total_rate_bits.load(Ordering::Relaxed))
    }

    /// Called once per `elapsed`: turns finished-request counters into smoothed rates.
    pub fn sample_rates(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut total = 0.0_f64;
        for r in &self.routes {
            let now = r.finished.load(Ordering::Relaxed);
            let before = r.last_finished.swap(now, Ordering::Relaxed);
            let instant = (now.saturating_sub(before)) as f64 / secs;
            let old = f64::from(r.rate());
            let smoothed = 0.5 * old + 0.5 * instant;
            r.rate_bits
                .store((smoothed as f32).to_bits(), Ordering::Relaxed);
            total += smoothed;
        }
        self.total_rate_bits
            .store((total as f32).to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route's statistics after these requests (latency, prediction) finished at one instant.
    fn recorded(
        requests: impl IntoIterator<Item = (f64, Option<(f64, f64)>)>,
    ) -> (RouteStats, Instant) {
        let stats = RouteStats::new(Instant::now(), DEFAULT_TARGET_MS);
        let now = Instant::now();
        for (latency, predicted) in requests {
            stats.record(latency, predicted, None, false, now);
        }
        (stats, now)
    }

    #[test]
    fn quantiles_track_the_distribution() {
        // 0.01 .. 10 ms uniform.
        let (stats, now) = recorded((1..=1000).map(|i| (f64::from(i) / 100.0, None)));
        let snap = stats.snapshot(now);
        assert!((snap.p50_ms - 5.0).abs() < 0.7, "p50 {}", snap.p50_ms);
        assert!((snap.p90_ms - 9.0).abs() < 1.2, "p90 {}", snap.p90_ms);
        assert!((snap.p95_ms - 9.5).abs() < 1.2, "p95 {}", snap.p95_ms);
    }

    #[test]
    fn snapshot_reports_the_mean_prediction_beside_the_actual_quantiles() {
        let (stats, now) = recorded((0..40).map(|i| {
            let predicted = if i % 2 == 0 { (4.0, 8.0) } else { (6.0, 12.0) };
            (5.0, Some(predicted))
        }));
        stats.record(5.0, None, None, false, now);
        let snap = stats.snapshot(now);
        assert!((snap.predicted_p50_ms - 5.0).abs() < 1e-9);
        assert!((snap.predicted_p90_ms - 10.0).abs() < 1e-9);
    }

    #[test]
    fn coverage_counts_latencies_inside_the_band() {
        let (stats, now) =
            recorded((0..100).map(|i| (if i < 70 { 5.0 } else { 50.0 }, Some((5.0, 10.0)))));
        let snap = stats.snapshot(now);
        assert_eq!(snap.predicted, 100);
        assert!((snap.coverage - 0.7).abs() < 1e-9);
    }

    #[test]
    fn one_outlier_barely_moves_the_baseline() {
        let (stats, now) = recorded((0..200).map(|_| (10.0, None)));
        let before = stats.snapshot(now).ewma_log_mean;
        stats.record(10_000.0, None, None, false, now);
        let after = stats.snapshot(now).ewma_log_mean;
        assert!((after - before).abs() < 0.05, "{before} -> {after}");
    }

    #[test]
    fn a_burst_stays_anomalous_but_a_lasting_level_is_learned() {
        let stats = RouteStats::new(Instant::now(), DEFAULT_TARGET_MS);
        let start = Instant::now();
        for _ in 0..200 {
            stats.record(2.0, None, None, false, start);
        }
        for _ in 0..30 {
            stats.record(200.0, None, None, false, start);
        }
        let snap = stats.snapshot(start);
        let z = (200.0_f64.ln() - snap.ewma_log_mean) / snap.ewma_log_sd.max(0.25);
        assert!(
            z > 3.0,
            "30 spikes later, a spike is still far out: z = {z}"
        );
        // The new level lasts: 150 requests a second for 40 s.
        let mut now = start;
        for _ in 0..6000 {
            now += Duration::from_micros(6_667);
            stats.record(200.0, None, None, false, now);
        }
        let snap = stats.snapshot(now);
        assert!(
            (snap.ewma_log_mean - 200.0_f64.ln()).abs() < 0.5,
            "a lasting level becomes the baseline: mean {}",
            snap.ewma_log_mean.exp()
        );
    }

    /// A route calm at 4-6 ms for six seconds, then 300 requests finishing within 100 ms with
    /// the latencies `flood` gives; the z-score of `probe_ms` against the route afterwards.
    fn z_after_a_flood(flood: impl Fn(f64) -> f64, probe_ms: f64) -> f64 {
        let stats = RouteStats::new(Instant::now(), DEFAULT_TARGET_MS);
        let mut now = Instant::now();
        for i in 0..600 {
            now += Duration::from_millis(10);
            let jitter = if i % 2 == 0 { 4.0 } else { 6.0 };
            stats.record(jitter, None, None, false, now);
        }
        for i in 0..300 {
            stats.record(flood(f64::from(i)), None, None, false, now);
            if i % 3 == 0 {
                now += Duration::from_millis(1);
            }
        }
        let snap = stats.snapshot(now);
        (probe_ms.ln() - snap.ewma_log_mean) / snap.ewma_log_sd.max(0.25)
    }

    #[test]
    fn the_requests_a_stall_held_stay_anomalous_when_they_finish_together() {
        // 300 requests held by a 6 s stall.
        let z = z_after_a_flood(|i| 6_000.0 - i, 5_700.0);
        assert!(z > 3.0, "the last of them is still far out: z = {z}");
    }

    #[test]
    fn a_burst_within_the_target_is_learned_as_load() {
        // 300 requests of a burst queue for up to 60 ms (the target is 100).
        let z = z_after_a_flood(|i| 20.0 + i / 7.5, 60.0);
        assert!(
            z < 3.0,
            "the burst's slowest is ordinary for this load: z = {z}"
        );
    }
}
