//! Auto-healing: the anomalous share of requests per second, and when to act on it.
//!
//! Scores go into one-second buckets; the [`Healer`] acts only when the anomalous share stays
//! above a threshold for a minimum duration, and undoes its actions after a healthy spell.
//! The request path only adds to two atomic counters; the once-a-second tick takes the
//! bucket under a std mutex that nothing else holds.

use crate::anomaly::ANOMALY_SCORE;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Tracks the anomalous share per second and decides when to act.
pub struct Healer {
    requests: AtomicU64,
    anomalous: AtomicU64,
    state: Mutex<HealerState>,
    active: AtomicBool,
    threshold: f64,
    min_duration: u64,
    recovery: u64,
}

struct HealerState {
    /// (requests, anomalous) per past second, newest last; bounded.
    seconds: VecDeque<(u64, u64)>,
    bad_streak: u64,
    good_streak: u64,
}

/// What the healer decided in one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Nothing changes.
    Hold,
    /// Start healing (tighten low priority, throttle the stress test).
    Heal {
        /// Anomalous share over the window.
        rate: f64,
    },
    /// Undo the healing.
    Undo {
        /// Anomalous share over the window.
        rate: f64,
    },
}

/// Seconds of per-second buckets kept.
const HISTORY_SECONDS: usize = 120;
/// Seconds averaged to judge the anomalous share.
const JUDGE_WINDOW: usize = 3;

impl Healer {
    /// A healer acting after `min_duration` s above `threshold`, undoing after `recovery` s below.
    pub fn new(threshold: f64, min_duration: u64, recovery: u64) -> Self {
        Self {
            requests: AtomicU64::new(0),
            anomalous: AtomicU64::new(0),
            state: Mutex::new(HealerState {
                seconds: VecDeque::new(),
                bad_streak: 0,
                good_streak: 0,
            }),
            active: AtomicBool::new(false),
            threshold,
            min_duration: min_duration.max(1),
            recovery: recovery.max(1),
        }
    }

    /// Counts one scored request (hot path: two relaxed atomic adds).
    pub fn observe(&self, score: f32) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if score >= ANOMALY_SCORE {
            self.anomalous.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Anomalous share above which an incident starts.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether healing actions are in force.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Anomalous share over the last few seconds.
    pub fn recent_rate(&self) -> f64 {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        window_rate(&state.seconds)
    }

    /// Called once a second by the sampler: closes the second and decides.
    pub fn tick(&self) -> Decision {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let anomalous = self.anomalous.swap(0, Ordering::Relaxed);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.seconds.push_back((requests, anomalous));
        while state.seconds.len() > HISTORY_SECONDS {
            state.seconds.pop_front();
        }
        let rate = window_rate(&state.seconds);
        // Need some traffic to judge at all; an idle second is neither good nor bad.
        let total: u64 = state
            .seconds
            .iter()
            .rev()
            .take(JUDGE_WINDOW)
            .map(|s| s.0)
            .sum();
        if total < 10 {
            return Decision::Hold;
        }
        if rate > self.threshold {
            state.bad_streak += 1;
            state.good_streak = 0;
        } else if rate < self.threshold / 2.0 {
            state.good_streak += 1;
            state.bad_streak = 0;
        }
        let active = self.is_active();
        if !active && state.bad_streak >= self.min_duration {
            self.active.store(true, Ordering::Relaxed);
            return Decision::Heal { rate };
        }
        if active && state.good_streak >= self.recovery {
            self.active.store(false, Ordering::Relaxed);
            return Decision::Undo { rate };
        }
        Decision::Hold
    }
}

fn window_rate(seconds: &VecDeque<(u64, u64)>) -> f64 {
    let (requests, anomalous) = seconds
        .iter()
        .rev()
        .take(JUDGE_WINDOW)
        .fold((0, 0), |acc, s| (acc.0 + s.0, acc.1 + s.1));
    if requests == 0 {
        0.0
    } else {
        anomalous as f64 / requests as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(healer: &Healer, requests: u32, anomalous: u32) -> Decision {
        for i in 0..requests {
            healer.observe(if i < anomalous { 0.99 } else { 0.1 });
        }
        healer.tick()
    }

    #[test]
    fn a_single_spike_does_not_trigger_healing() {
        let healer = Healer::new(0.2, 5, 10);
        assert_eq!(second(&healer, 100, 90), Decision::Hold);
        for _ in 0..10 {
            assert_eq!(second(&healer, 100, 0), Decision::Hold);
        }
        assert!(!healer.is_active());
    }

    #[test]
    fn sustained_anomalies_heal_and_recovery_undoes() {
        let healer = Healer::new(0.2, 5, 10);
        let decisions: Vec<Decision> = (0..5).map(|_| second(&healer, 100, 50)).collect();
        assert!(
            matches!(decisions[4], Decision::Heal { .. }),
            "{decisions:?}"
        );
        assert!(healer.is_active());
        let undo: Vec<Decision> = (0..15).map(|_| second(&healer, 100, 0)).collect();
        assert!(
            undo.iter().any(|d| matches!(d, Decision::Undo { .. })),
            "{undo:?}"
        );
        assert!(!healer.is_active());
    }
}
