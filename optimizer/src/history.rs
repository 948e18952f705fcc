//! The optimizer's history: a sample every 10 seconds (rates, latency per route, allocation,
//! confidence, anomalies, cache), kept for `metrics.retention_hours`, and what happened between
//! two samples that a single reading would miss.
//!
//! Written once a second by the housekeeping tick, read by `/api/ml-metrics` and dashboard
//! polls: std mutexes, held for a push or a copy.

use crate::actions::Recent;
use crate::admission::PriorityStats;
use serde::Serialize;
use std::sync::Mutex;

/// One point of the metrics history (every 10 s).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix ms.
    pub ts_ms: i64,
    /// Requests per second.
    pub request_rate: f32,
    /// Adaptive concurrency limit.
    pub limit: u32,
    /// Requests holding permits.
    pub in_flight: u32,
    /// Per-priority allocation and use.
    pub priorities: Vec<PriorityStats>,
    /// Mean confidence over routes with traffic (0-1).
    pub confidence: f64,
    /// Anomalous share of requests.
    pub anomaly_rate: f64,
    /// Auto-healing in force.
    pub healing: bool,
    /// Highest anomalous share seen at any second since the previous sample: an incident
    /// shorter than the 10-second sampling interval still shows.
    pub anomaly_peak: f64,
    /// Auto-healing was in force at any second since the previous sample.
    pub healed: bool,
    /// Cache hits / (hits + misses + refreshes) since the previous sample.
    pub cache_hit_rate: f64,
    /// Cache counters since start, so rates over any span can be derived from two samples.
    /// Served by the time series (`/api/ml-metrics/series`), not by `/api/ml-metrics`.
    #[serde(skip)]
    pub cache_totals: CacheTotals,
    /// Rate and latency of each route that had requests in the statistics windows. Served by
    /// the time series, not by `/api/ml-metrics`, which keeps that answer small.
    #[serde(skip)]
    pub routes: Vec<RouteSample>,
}

/// Cache counters since start, summed over the cached routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTotals {
    /// Answers served from cache.
    pub hits: u64,
    /// Hits, misses and refreshes.
    pub lookups: u64,
    /// Entries refreshed before they expired.
    pub refreshes: u64,
}

/// One route's numbers in a history sample. Kept compact (an index and `f32`s, 28 bytes)
/// because a day of history holds up to 8,640 samples of up to every route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSample {
    /// Index into `contract::routes::ROUTES`.
    pub route: u16,
    /// Requests per second, recent.
    pub rate: f32,
    /// Actual median latency over the statistics windows (ms).
    pub p50_ms: f32,
    /// Actual 90th percentile (ms).
    pub p90_ms: f32,
    /// Actual 95th percentile (ms).
    pub p95_ms: f32,
    /// Mean predicted p50 of the same requests (ms), 0 when none was predicted.
    pub predicted_p50_ms: f32,
    /// Mean predicted p90 of the same requests (ms), 0 when none was predicted.
    pub predicted_p90_ms: f32,
}

/// What happened between two history samples that a single reading would miss.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peak {
    pub(crate) anomaly_rate: f64,
    pub(crate) healing: bool,
}

/// The stored samples and the peak since the newest of them.
pub(crate) struct History {
    pub(crate) samples: Recent<Sample>,
    since_sample: Mutex<Peak>,
}

impl History {
    /// At most `len` samples.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            samples: Recent::new(len),
            since_sample: Mutex::new(Peak::default()),
        }
    }

    /// Folds this second's anomalous share and healing state into the peak since the last
    /// stored sample, and returns it; `take` starts a new one (a sample is being stored).
    pub(crate) fn peak(&self, anomaly_rate: f64, healing: bool, take: bool) -> Peak {
        let mut peak = self
            .since_sample
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peak.anomaly_rate = peak.anomaly_rate.max(anomaly_rate);
        peak.healing |= healing;
        let seen = *peak;
        if take {
            *peak = Peak::default();
        }
        seen
    }

    /// The cache counters of the newest stored sample (zero before the first).
    pub(crate) fn newest_cache_totals(&self) -> CacheTotals {
        self.samples
            .last()
            .map(|s| s.cache_totals)
            .unwrap_or_default()
    }
}
