//! Auto-healing: the evidence of an incident per second, and when to act on it.
//!
//! Evidence is what the served requests say about the server's own work and its database: the
//! finished ones that scored anomalous, and the admitted ones still being served longer than
//! the latency target after their admission ([`crate::arrivals`]), which show a stall while it
//! lasts rather than when it ends (a wait for admission is load, not a fault, and is not
//! counted). Shed
//! requests are not evidence by themselves: shedding while the served requests are healthy is
//! overload, which admission handles, not an incident. While the evidence is over the
//! threshold, a shed request scores as part of the incident ([`Healer::in_incident`]), so
//! shedding hides nothing from the client or the dashboard, and a flood of shed requests with
//! no served one finishing leaves the incident open (such a second is not judged) until served
//! requests are healthy again.
//!
//! The [`Healer`] acts only when the evidence share stays above a threshold for a minimum
//! duration, and undoes its actions after a healthy spell. The request path only adds to
//! atomic counters; the once-a-second tick takes the bucket under a std mutex that nothing
//! else holds.

use crate::anomaly::ANOMALY_SCORE;
use crate::arrivals::{Arrivals, Ticket};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Tracks the evidence of an incident per second and decides when to act.
pub struct Healer {
    requests: AtomicU64,
    anomalous: AtomicU64,
    shed: AtomicU64,
    arrivals: Arrivals,
    /// A request served longer than this (ms) since its admission is evidence.
    target_ms: i64,
    state: Mutex<HealerState>,
    active: AtomicBool,
    /// The last judged window was over the threshold.
    evidence: AtomicBool,
    threshold: f64,
    min_duration: u64,
    recovery: u64,
}

/// One second's evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Served requests that finished.
    pub served: u64,
    /// Of them, scored anomalous.
    pub anomalous: u64,
    /// Requests shed.
    pub shed: u64,
    /// Admitted requests being served longer than the latency target when the second closed.
    pub stuck: u64,
}

struct HealerState {
    /// Past seconds, newest last; bounded.
    seconds: VecDeque<Second>,
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
        /// Evidence share over the window.
        rate: f64,
        /// The window's evidence, summed.
        window: Second,
    },
    /// Undo the healing.
    Undo {
        /// Evidence share over the window.
        rate: f64,
    },
}

/// Seconds of per-second buckets kept.
const HISTORY_SECONDS: usize = 120;
/// Seconds averaged to judge the evidence.
const JUDGE_WINDOW: usize = 3;
/// Fewer served and stuck requests than this in the window: not judged.
const MIN_JUDGED: u64 = 10;
/// Stuck requests that, holding at least half the permits, make a shed request part of an
/// incident on their own.
const MIN_STUCK_HOLDERS: u64 = 4;

impl Healer {
    /// A healer acting after `min_duration` s above `threshold`, undoing after `recovery` s
    /// below; requests served longer than `target_ms` are evidence.
    pub fn new(threshold: f64, min_duration: u64, recovery: u64, target_ms: u64) -> Self {
        Self {
            requests: AtomicU64::new(0),
            anomalous: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            arrivals: Arrivals::default(),
            target_ms: i64::try_from(target_ms).unwrap_or(i64::MAX).max(1),
            state: Mutex::new(HealerState {
                seconds: VecDeque::new(),
                bad_streak: 0,
                good_streak: 0,
            }),
            active: AtomicBool::new(false),
            evidence: AtomicBool::new(false),
            threshold,
            min_duration: min_duration.max(1),
            recovery: recovery.max(1),
        }
    }

    /// Counts a request admitted at `now_ms` as being served (hot path: one compare-and-swap).
    pub fn arrive(&self, now_ms: i64) -> Ticket {
        self.arrivals.arrive(now_ms)
    }

    /// The request of `ticket` is no longer in flight.
    pub fn leave(&self, ticket: Ticket) {
        self.arrivals.leave(ticket);
    }

    /// Counts one finished request (hot path: relaxed atomic adds).
    pub fn observe(&self, score: f32, shed: bool) {
        if shed {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
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

    /// Whether an incident is under way: the last judged second's evidence was over the
    /// threshold (a shed request then scores as part of it). Not while healing merely waits
    /// out its recovery: the served requests are healthy by then.
    pub fn in_incident(&self) -> bool {
        self.evidence.load(Ordering::Relaxed)
    }

    /// [`Healer::in_incident`], or already now, before the second closes: the requests served
    /// past the target and the anomalous ones finished so far this second are over the
    /// threshold; or most of the `holders` (admitted requests holding a permit now) are stuck
    /// past the target. For shed requests only (it reads the arrival ring): a request shed
    /// because the permits are held by requests waiting on a stall is the stall's doing, even
    /// while fast answers (cache hits, routes the stall does not touch) keep the served share
    /// low; a request shed while the holders move is overload.
    pub fn in_incident_at(&self, now_ms: i64, holders: u32) -> bool {
        if self.in_incident() {
            return true;
        }
        let now = Second {
            served: self.requests.load(Ordering::Relaxed),
            anomalous: self.anomalous.load(Ordering::Relaxed),
            shed: 0,
            stuck: self.arrivals.older_than(now_ms, self.target_ms),
        };
        if now.stuck >= MIN_STUCK_HOLDERS && now.stuck * 2 >= u64::from(holders) {
            return true;
        }
        now.stuck > 0 && now.served + now.stuck >= MIN_JUDGED && share(&now) > self.threshold
    }

    /// Evidence share over the last few seconds.
    pub fn recent_rate(&self) -> f64 {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        window_rate(&state.seconds).0
    }

    /// Called once a second, with the admitted requests holding a permit now: closes the
    /// second and decides.
    pub fn tick(&self, holders: u32) -> Decision {
        self.tick_at(crate::unix_ms(), holders)
    }

    /// [`Healer::tick`] at `now_ms` (Unix ms).
    pub fn tick_at(&self, now_ms: i64, holders: u32) -> Decision {
        let second = Second {
            served: self.requests.swap(0, Ordering::Relaxed),
            anomalous: self.anomalous.swap(0, Ordering::Relaxed),
            shed: self.shed.swap(0, Ordering::Relaxed),
            stuck: self.arrivals.older_than(now_ms, self.target_ms),
        };
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.seconds.push_back(second);
        while state.seconds.len() > HISTORY_SECONDS {
            state.seconds.pop_front();
        }
        let (rate, window) = window_rate(&state.seconds);
        // A second in which requests were shed while most of the permits were held by requests
        // stuck past the target is bad on its own, however few were served: the stall is what
        // sheds (the rule `in_incident_at` applies to each shed request).
        let held = second.shed > 0
            && second.stuck >= MIN_STUCK_HOLDERS
            && second.stuck * 2 >= u64::from(holders);
        // Otherwise it needs some served traffic to be judged at all: an idle second, or one
        // in which every request was shed, is neither good nor bad, and leaves an incident as
        // it was. A busy second is judged alone (so a one-second spike is one bad second, not
        // three); a quiet one with the seconds before it.
        let newest = share(&second);
        let judged = if held {
            1.0
        } else if second.served + second.stuck >= MIN_JUDGED {
            newest
        } else if window.served + window.stuck >= MIN_JUDGED {
            rate
        } else {
            return Decision::Hold;
        };
        let bad = judged > self.threshold;
        self.evidence.store(bad, Ordering::Relaxed);
        if bad {
            state.bad_streak += 1;
            state.good_streak = 0;
        } else if judged < self.threshold / 2.0 {
            state.good_streak += 1;
            state.bad_streak = 0;
        }
        let active = self.is_active();
        if !active && state.bad_streak >= self.min_duration {
            self.active.store(true, Ordering::Relaxed);
            return Decision::Heal { rate, window };
        }
        if active && state.good_streak >= self.recovery {
            self.active.store(false, Ordering::Relaxed);
            return Decision::Undo { rate };
        }
        Decision::Hold
    }
}

/// The evidence share over the judged window, and the window's sums: anomalous and stuck
/// requests among the served and stuck ones.
fn window_rate(seconds: &VecDeque<Second>) -> (f64, Second) {
    let window = seconds
        .iter()
        .rev()
        .take(JUDGE_WINDOW)
        .fold(Second::default(), |acc, s| Second {
            served: acc.served + s.served,
            anomalous: acc.anomalous + s.anomalous,
            shed: acc.shed + s.shed,
            stuck: acc.stuck + s.stuck,
        });
    (share(&window), window)
}

/// Anomalous and stuck requests among the served and stuck ones (0 when there were none).
fn share(s: &Second) -> f64 {
    let judged = s.served + s.stuck;
    if judged == 0 {
        0.0
    } else {
        (s.anomalous + s.stuck) as f64 / judged as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_796_000_000_000;

    /// One second: `served` finished requests of which `anomalous` scored high, and `shed`.
    fn second(healer: &Healer, at: i64, served: u32, anomalous: u32, shed: u32) -> Decision {
        for i in 0..served {
            healer.observe(if i < anomalous { 0.99 } else { 0.1 }, false);
        }
        for _ in 0..shed {
            healer.observe(0.0, true);
        }
        healer.tick_at(T0 + at * 1_000, 32)
    }

    fn healer() -> Healer {
        Healer::new(0.2, 3, 10, 100)
    }

    #[test]
    fn a_single_spike_does_not_trigger_healing() {
        let healer = healer();
        assert_eq!(second(&healer, 0, 100, 90, 0), Decision::Hold);
        for t in 1..=10 {
            assert_eq!(second(&healer, t, 100, 0, 0), Decision::Hold);
        }
        assert!(!healer.is_active());
    }

    #[test]
    fn sustained_anomalies_heal_and_recovery_undoes() {
        let healer = healer();
        let decisions: Vec<Decision> = (0..3).map(|t| second(&healer, t, 100, 50, 0)).collect();
        assert!(
            matches!(decisions[2], Decision::Heal { .. }),
            "{decisions:?}"
        );
        assert!(healer.is_active() && healer.in_incident());
        assert_eq!(second(&healer, 3, 100, 0, 0), Decision::Hold);
        assert!(
            healer.is_active() && !healer.in_incident(),
            "healthy again, healing waits out its recovery"
        );
        let undo: Vec<Decision> = (4..18).map(|t| second(&healer, t, 100, 0, 0)).collect();
        assert!(
            undo.iter().any(|d| matches!(d, Decision::Undo { .. })),
            "{undo:?}"
        );
        assert!(!healer.is_active() && !healer.in_incident());
    }

    #[test]
    fn shedding_with_healthy_served_requests_is_overload_not_an_incident() {
        let healer = healer();
        for t in 0..30 {
            assert_eq!(second(&healer, t, 500, 2, 2_000), Decision::Hold);
        }
        assert!(!healer.in_incident());
        assert!(!healer.in_incident_at(T0 + 30_500, 32));
    }

    #[test]
    fn a_stall_is_an_incident_for_shed_requests_before_the_second_closes() {
        let healer = healer();
        for t in 0..5 {
            second(&healer, t, 100, 0, 0);
        }
        let _stalled: Vec<Ticket> = (0..20).map(|i| healer.arrive(T0 + 5_000 + i)).collect();
        assert!(
            !healer.in_incident_at(T0 + 5_050, 20),
            "not yet past the target"
        );
        assert!(healer.in_incident_at(T0 + 5_300, 20));
        assert!(!healer.in_incident(), "the second has not closed");
    }

    #[test]
    fn permits_held_by_stalled_requests_make_shedding_part_of_the_incident() {
        let healer = healer();
        for t in 0..5 {
            second(&healer, t, 100, 0, 0);
        }
        // Six of eight permits held by requests stuck in a stall, while cache hits keep the
        // served share healthy: what is shed now is the stall's doing.
        let _stalled: Vec<Ticket> = (0..6).map(|i| healer.arrive(T0 + 5_000 + i)).collect();
        for _ in 0..200 {
            healer.observe(0.1, false);
        }
        assert!(healer.in_incident_at(T0 + 5_300, 8));
        // The same six among forty busy permits: overload, not an incident.
        assert!(!healer.in_incident_at(T0 + 5_300, 40));
    }

    #[test]
    fn requests_stalled_past_the_target_are_evidence_before_they_finish() {
        let healer = healer();
        // Healthy seconds, then a stall: 40 requests arrive and never finish, while the few
        // that do finish (cached reads) are fast.
        for t in 0..5 {
            second(&healer, t, 100, 0, 0);
        }
        let stalled: Vec<Ticket> = (0..40)
            .map(|i| healer.arrive(T0 + 5_000 + i * 10))
            .collect();
        // Healing acts on the third bad second, before any stalled request has finished.
        let decisions: Vec<Decision> = (6..9).map(|t| second(&healer, t, 20, 0, 0)).collect();
        assert!(
            matches!(decisions[2], Decision::Heal { window, .. } if window.stuck >= 40),
            "{decisions:?}"
        );
        // A flood of shed requests keeps it open...
        for t in 9..30 {
            assert_eq!(second(&healer, t, 0, 0, 500), Decision::Hold);
        }
        assert!(healer.in_incident());
        // ...until the stall ends and served requests are healthy again.
        for ticket in stalled {
            healer.leave(ticket);
        }
        let after: Vec<Decision> = (30..45).map(|t| second(&healer, t, 100, 0, 0)).collect();
        assert!(
            after.iter().any(|d| matches!(d, Decision::Undo { .. })),
            "{after:?}"
        );
    }

    #[test]
    fn a_stall_holding_the_permits_while_the_rest_is_shed_heals_in_its_minimum_duration() {
        let healer = healer();
        for t in 0..5 {
            second(&healer, t, 100, 0, 0);
        }
        // Eight permits, all held by requests waiting on a lock; the other requests are shed
        // but for cache hits, which keep the served share under the threshold.
        let stalled: Vec<Ticket> = (0..8).map(|i| healer.arrive(T0 + 5_000 + i)).collect();
        let tick = |t: i64, holders: u32| {
            for _ in 0..40 {
                healer.observe(0.1, false);
            }
            for _ in 0..70 {
                healer.observe(0.0, true);
            }
            healer.tick_at(T0 + t * 1_000, holders)
        };
        let decisions: Vec<Decision> = (6..9).map(|t| tick(t, 8)).collect();
        assert!(
            matches!(decisions[2], Decision::Heal { .. }),
            "{decisions:?}"
        );
        for ticket in stalled {
            healer.leave(ticket);
        }
        let after: Vec<Decision> = (9..25).map(|t| second(&healer, t, 100, 0, 0)).collect();
        assert!(
            after.iter().any(|d| matches!(d, Decision::Undo { .. })),
            "{after:?}"
        );
    }

    #[test]
    fn a_few_slow_requests_among_many_busy_permits_while_shedding_are_overload() {
        let healer = healer();
        for t in 0..5 {
            second(&healer, t, 100, 0, 0);
        }
        // The same eight slow requests among forty busy permits.
        let _slow: Vec<Ticket> = (0..8).map(|i| healer.arrive(T0 + 5_000 + i)).collect();
        for t in 6..20 {
            for _ in 0..40 {
                healer.observe(0.1, false);
            }
            for _ in 0..70 {
                healer.observe(0.0, true);
            }
            assert_eq!(healer.tick_at(T0 + t * 1_000, 40), Decision::Hold);
        }
    }
}
