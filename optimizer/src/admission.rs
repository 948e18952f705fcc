//! Priority admission: an adaptive concurrency limit shared out by priority, with the lowest
//! priority shed first.
//!
//! The limit adapts like Netflix's Gradient2: a short-term average of service time is compared
//! with a slow long-term one; when requests slow down (queueing inside the server or the
//! database) the limit shrinks, when they are fast it grows by about √limit. Each priority may
//! fill only its share of the limit (critical 100%, high 90%, normal 60%, low 30%; so high gets
//! 1.5× and low 0.5× of normal), so as load rises low priority hits its ceiling
//! first. A request over its ceiling waits only as long as its latency budget allows (the
//! target latency minus its predicted latency; checkout waits longest), then is shed with 503.
//!
//! Counters are atomics (lock-free on the hot path); the limit's averages sit behind a
//! `std::sync::Mutex` held for a few arithmetic operations per finished request.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Request priority, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Checkout: never shed while anything else can be.
    Critical = 0,
    /// Cart, orders and accounts.
    High = 1,
    /// Catalogue reads and everything else.
    Normal = 2,
    /// Analytics and the stress test.
    Low = 3,
}

impl Priority {
    /// All priorities, most important first.
    pub const ALL: [Self; 4] = [Self::Critical, Self::High, Self::Normal, Self::Low];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// Parses an `x-priority` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "critical" => Some(Self::Critical),
            "high" => Some(Self::High),
            "normal" => Some(Self::Normal),
            "low" => Some(Self::Low),
            _ => None,
        }
    }

    /// Share of the concurrency limit this priority may fill.
    pub fn share(self) -> f64 {
        match self {
            Self::Critical => 1.0,
            Self::High => 0.9,
            Self::Normal => 0.6,
            Self::Low => 0.3,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters for one priority.
#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    queued: AtomicU64,
    shed: AtomicU64,
    in_use: AtomicU32,
    waiting: AtomicU32,
}

/// A priority's counters, for metrics.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityStats {
    /// Priority name.
    pub priority: Priority,
    /// Permits this priority may hold now.
    pub permits: u32,
    /// Permits it holds now.
    pub in_use: u32,
    /// Requests waiting now.
    pub waiting: u32,
    /// Admitted, ever.
    pub admitted: u64,
    /// Had to wait, ever.
    pub queued: u64,
    /// Shed with 503, ever.
    pub shed: u64,
}

struct Gradient {
    short_ms: f64,
    long_ms: f64,
    limit: f64,
    samples: u32,
    last_update: Instant,
    /// Short-term average service time of critical requests (checkout: one route, so its
    /// service time does not move with the mix of routes).
    important_ms: f64,
    /// Their mean service time in each of the last [`GUARD_MEMORY`] windows of at least a
    /// second and [`GUARD_SECOND_MIN`] requests; the smallest is their unloaded time (as BBR
    /// keeps the smallest round trip of a window as the path's).
    important_means: std::collections::VecDeque<f64>,
    /// The window being summed: its start, total and count.
    important_second: (Instant, f64, u32),
    important_samples: u32,
    /// When the last critical request finished: without any for a second, nothing is left to
    /// protect and the guard lets go.
    important_at: Instant,
}

/// The low-priority guard: while checkout runs more than this many times slower than unloaded
/// (its smallest mean of the last [`GUARD_MEMORY`] windows), low priority's share shrinks (by
/// [`GUARD_CUT`] every tenth of a second, down to [`GUARD_FLOOR`] of itself, at least one
/// permit); below [`GUARD_CLEAR`] times it grows back by [`GUARD_STEP`] a tick (one second from
/// the floor to the whole share). Analytics cost the database and the cores what
/// checkout needs: under overload they are the first thing to give up, before checkout slows.
const GUARD_SLOWER: f64 = 2.0;
const GUARD_CLEAR: f64 = 1.5;
const GUARD_CUT: f64 = 0.7;
const GUARD_STEP: f64 = 0.1;
const GUARD_FLOOR: f64 = 0.05;
/// Important requests seen before their unloaded time is trusted.
const GUARD_WARMUP: u32 = 50;
/// Windows whose means the unloaded time is the smallest of: an overload longer than this many
/// windows (seconds, at ten checkouts a second or more) becomes the new normal, and the guard
/// lets go.
const GUARD_MEMORY: usize = 30;
/// Checkouts a window needs before it closes (and at least a second).
const GUARD_SECOND_MIN: u32 = 10;

/// The admission controller.
pub struct Admission {
    limit: AtomicU32,
    in_flight: AtomicU32,
    counters: [Counters; 4],
    wake: [Notify; 4],
    /// Extra factor on the low-priority share, lowered by auto-healing (thousandths).
    low_factor_milli: AtomicU32,
    /// Extra factor on the low-priority share, lowered by the guard (thousandths).
    low_guard_milli: AtomicU32,
    gradient: Mutex<Gradient>,
    min_limit: u32,
    max_limit: u32,
    /// Database connections (the pool size).
    db_slots: u32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed;

/// How often a waiter re-checks for a permit even without a wake-up.
const RECHECK: Duration = Duration::from_millis(5);

/// Decrements a waiting counter when dropped.
struct WaitingGuard<'a>(&'a AtomicU32);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A held concurrency permit; released (and the limit updated) when dropped.
pub struct Permit<'a> {
    admission: &'a Admission,
    priority: Priority,
    started: Instant,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission
            .release(self.priority, self.started.elapsed());
    }
}

impl Admission {
    /// A controller whose limit moves between `min_limit` and `max_limit`, starting halfway.
    pub fn new(min_limit: u32, max_limit: u32) -> Self {
        let start = (min_limit + max_limit) / 4;
        let start = start.clamp(min_limit, max_limit);
        Self {
            limit: AtomicU32::new(start),
            in_flight: AtomicU32::new(0),
            counters: Default::default(),
            wake: Default::default(),
            low_factor_milli: AtomicU32::new(1000),
            low_guard_milli: AtomicU32::new(1000),
            gradient: Mutex::new(Gradient {
                short_ms: 0.0,
                long_ms: 0.0,
                limit: f64::from(start),
                samples: 0,
                last_update: Instant::now(),
                important_ms: 0.0,
                important_means: std::collections::VecDeque::with_capacity(GUARD_MEMORY + 1),
                important_second: (Instant::now(), 0.0, 0),
                important_samples: 0,
                important_at: Instant::now(),
            }),
            min_limit,
            max_limit,
            db_slots: u32::MAX,
        }
    }

    /// The current adaptive limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the low-priority factor (1.0 normally; auto-healing lowers it).
    pub fn set_low_factor(&self, factor: f64) {
        self.low_factor_milli
            .store((factor.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
    }

    /// Permits `priority` may hold at the current limit.
    pub fn ceiling(&self, priority: Priority) -> u32 {
        let mut share = priority.share();
        let mut base = self.limit();
        if priority == Priority::Low {
            share *= f64::from(self.low_factor_milli.load(Ordering::Relaxed)) / 1000.0;
            share *= f64::from(self.low_guard_milli.load(Ordering::Relaxed)) / 1000.0;
            // Low priority (analytics, stress) is database-heavy: its share is also taken of
            // the connection pool, so it can never hold the connections checkout needs.
            base = base.min(self.db_slots);
        }
        let ceiling = (f64::from(base) * share).floor() as u32;
        ceiling.max(1)
    }

    /// Bounds low priority's share by the database pool size as well as by the limit.
    #[must_use]
    pub fn with_db_slots(mut self, slots: u32) -> Self {
        self.db_slots = slots.max(1);
        self
    }

    fn try_acquire(&self, priority: Priority) -> bool {
        // Never overtake a more important request that is already waiting: under overload the
        // next free permit goes to checkout before analytics, whatever the shares say.
        if Priority::ALL[..priority.index()]
            .iter()
            .any(|p| self.counters[p.index()].waiting.load(Ordering::Relaxed) > 0)
        {
            return false;
        }
        let ceiling = self.ceiling(priority);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= ceiling {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let c = &self.counters[priority.index()];
                    c.in_use.fetch_add(1, Ordering::Relaxed);
                    c.admitted.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Admits a request of `priority`, waiting at most `budget` for a permit.
    ///
    /// # Errors
    /// [`Shed`] when no permit came within the budget.
    pub async fn admit(&self, priority: Priority, budget: Duration) -> Result<Permit<'_>, Shed> {
        let permit = || Permit {
            admission: self,
            priority,
            started: Instant::now(),
        };
        if self.try_acquire(priority) {
            return Ok(permit());
        }
        let c = &self.counters[priority.index()];
        if budget.is_zero() {
            c.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Shed);
        }
        c.queued.fetch_add(1, Ordering::Relaxed);
        c.waiting.fetch_add(1, Ordering::Relaxed);
        // Decrements `waiting` however this future ends, including when the client goes away
        // and the future is dropped mid-wait.
        let _waiting = WaitingGuard(&c.waiting);
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            // Register for a wake-up before checking, so a release in between is not missed.
            let notified = self.wake[priority.index()].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_acquire(priority) {
                return Ok(permit());
            }
            // Also re-check every few milliseconds: a wake-up can be absorbed by a waiter that
            // is just timing out, and a growing limit wakes nobody.
            let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(recheck) => {
                    if tokio::time::Instant::now() >= deadline {
                        if self.try_acquire(priority) {
                            return Ok(permit());
                        }
                        c.shed.fetch_add(1, Ordering::Relaxed);
                        return Err(Shed);
                    }
                }
            }
        }
    }

    fn release(&self, priority: Priority, service: Duration) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.counters[priority.index()]
            .in_use
            .fetch_sub(1, Ordering::Relaxed);
        self.update_limit(priority, service);
        // Wake the most important waiter: ceilings shrink with priority, so if it cannot go,
        // no lower priority could either.
        for p in Priority::ALL {
            if self.counters[p.index()].waiting.load(Ordering::Relaxed) > 0 {
                self.wake[p.index()].notify_one();
                break;
            }
        }
    }

    fn update_limit(&self, priority: Priority, service: Duration) {
        let ms = service.as_secs_f64() * 1000.0;
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let Ok(mut g) = self.gradient.try_lock() else {
            return; // another thread is updating; one skipped sample changes nothing
        };
        if g.samples == 0 {
            g.short_ms = ms;
            g.long_ms = ms;
        }
        if priority == Priority::Critical {
            if g.important_samples == 0 {
                g.important_ms = ms;
            }
            g.important_samples = g.important_samples.saturating_add(1);
            g.important_at = Instant::now();
            g.important_ms += 0.1 * (ms - g.important_ms);
            let (started, sum, n) = &mut g.important_second;
            *sum += ms;
            *n += 1;
            if *n >= GUARD_SECOND_MIN && started.elapsed() >= Duration::from_secs(1) {
                let mean = *sum / f64::from(*n);
                g.important_second = (Instant::now(), 0.0, 0);
                g.important_means.push_back(mean);
                if g.important_means.len() > GUARD_MEMORY {
                    g.important_means.pop_front();
                }
            }
        }
        g.samples = g.samples.saturating_add(1);
        g.short_ms += 0.1 * (ms - g.short_ms);
        g.long_ms += 0.005 * (ms - g.long_ms);
        // Gradient2's drift guard: after a lasting slowdown the long average must not stay far
        // above the short one, or the limit would never come down.
        if g.long_ms > 2.0 * g.short_ms {
            g.long_ms *= 0.95;
        }
        if g.last_update.elapsed() < Duration::from_millis(100) {
            return;
        }
        g.last_update = Instant::now();
        let unloaded = g.important_means.iter().copied().reduce(f64::min);
        if let Some(unloaded) = unloaded.filter(|_| g.important_samples >= GUARD_WARMUP) {
            let idle = g.important_at.elapsed() > Duration::from_secs(1);
            let slower = if idle {
                0.0
            } else {
                g.important_ms / unloaded.max(1.0)
            };
            let guard = f64::from(self.low_guard_milli.load(Ordering::Relaxed)) / 1000.0;
            let guard = if slower > GUARD_SLOWER {
                (guard * GUARD_CUT).max(GUARD_FLOOR)
            } else if slower < GUARD_CLEAR {
                (guard + GUARD_STEP).min(1.0)
            } else {
                guard
            };
            self.low_guard_milli
                .store((guard * 1000.0).round() as u32, Ordering::Relaxed);
        }
        let tolerance = 1.5;
        let gradient = (tolerance * g.long_ms / g.short_ms.max(1e-3)).clamp(0.5, 1.0);
        let queue = g.limit.sqrt();
        let mut target = g.limit * gradient + queue;
        // Do not grow a limit the traffic is not even using.
        if f64::from(in_flight) < g.limit / 2.0 {
            target = target.min(g.limit);
        }
        g.limit = (0.8 * g.limit + 0.2 * target)
            .clamp(f64::from(self.min_limit), f64::from(self.max_limit));
        self.limit.store(g.limit.round() as u32, Ordering::Relaxed);
    }

    /// Per-priority counters.
    pub fn stats(&self) -> Vec<PriorityStats> {
        Priority::ALL
            .iter()
            .map(|&p| {
                let c = &self.counters[p.index()];
                PriorityStats {
                    priority: p,
                    permits: self.ceiling(p),
                    in_use: c.in_use.load(Ordering::Relaxed),
                    waiting: c.waiting.load(Ordering::Relaxed),
                    admitted: c.admitted.load(Ordering::Relaxed),
                    queued: c.queued.load(Ordering::Relaxed),
                    shed: c.shed.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Requests holding permits now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn low_priority_hits_its_ceiling_first() {
        let admission = Admission::new(10, 10);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                admission
                    .admit(Priority::Low, Duration::ZERO)
                    .await
                    .expect("low fits under 30%"),
            );
        }
        assert_eq!(
            admission.admit(Priority::Low, Duration::ZERO).await.err(),
            Some(Shed)
        );
        for _ in 0..6 {
            held.push(
                admission
                    .admit(Priority::High, Duration::ZERO)
                    .await
                    .expect("high fits under 90%"),
            );
        }
        assert_eq!(
            admission
                .admit(Priority::Normal, Duration::ZERO)
                .await
                .err(),
            Some(Shed)
        );
        held.push(
            admission
                .admit(Priority::Critical, Duration::ZERO)
                .await
                .expect("critical gets the rest"),
        );
        let stats = admission.stats();
        assert_eq!(stats[3].shed, 1);
        assert_eq!(stats[2].shed, 1);
        drop(held);
        assert_eq!(admission.in_flight(), 0);
    }

    /// Feeds a second of requests of `priority` that each took `ms`: ten ticks of the limit's
    /// clock with twenty requests each, the clock faked forward.
    fn second(admission: &Admission, priority: Priority, ms: u64) {
        for tick in 0..10 {
            for _ in 0..19 {
                admission.update_limit(priority, Duration::from_millis(ms));
            }
            if let Ok(mut g) = admission.gradient.lock() {
                g.last_update -= Duration::from_millis(200);
                if tick == 9 {
                    g.important_second.0 -= Duration::from_millis(1_100);
                }
            }
            admission.update_limit(priority, Duration::from_millis(ms));
        }
    }

    #[test]
    fn analytics_give_way_while_checkout_slows_down_and_come_back_after() {
        let admission = Admission::new(40, 40).with_db_slots(32);
        assert_eq!(
            admission.ceiling(Priority::Low),
            9,
            "30% of the 32 connections"
        );
        second(&admission, Priority::Critical, 5);
        assert_eq!(
            admission.ceiling(Priority::Low),
            9,
            "checkout at its usual speed"
        );
        // Checkout six times slower: within a second analytics are down to one permit.
        second(&admission, Priority::Critical, 30);
        assert_eq!(admission.ceiling(Priority::Low), 1);
        assert_eq!(
            admission.ceiling(Priority::Critical),
            40,
            "checkout keeps everything"
        );
        // Five seconds of it do not become the new normal: back at 5 ms the guard lets go
        // within two seconds.
        for _ in 0..5 {
            second(&admission, Priority::Critical, 30);
        }
        second(&admission, Priority::Critical, 5);
        second(&admission, Priority::Critical, 5);
        assert_eq!(admission.ceiling(Priority::Low), 9);
    }

    #[test]
    fn slow_cart_and_account_requests_do_not_trip_the_guard() {
        let admission = Admission::new(40, 40).with_db_slots(32);
        second(&admission, Priority::Critical, 5);
        // Other routes of other speeds come and go: only checkout's own slowdown counts.
        second(&admission, Priority::High, 60);
        second(&admission, Priority::Critical, 6);
        assert_eq!(admission.ceiling(Priority::Low), 9);
    }

    #[test]
    fn slow_analytics_alone_do_not_trip_the_guard() {
        let admission = Admission::new(40, 40).with_db_slots(32);
        second(&admission, Priority::Critical, 5);
        second(&admission, Priority::Low, 500);
        assert_eq!(admission.ceiling(Priority::Low), 9);
    }

    /// A checkout's permit, which must be free.
    async fn free(admission: &Admission) -> Permit<'_> {
        admission
            .admit(Priority::Critical, Duration::ZERO)
            .await
            .expect("a free permit")
    }

    /// Polls a checkout's admission once, so that it queues, and checks that it waits.
    async fn queue<T>(admission: &Admission, waiter: std::pin::Pin<&mut impl Future<Output = T>>) {
        assert!(futures::poll!(waiter).is_pending());
        assert_eq!(admission.stats()[0].waiting, 1);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_released_permit() {
        let admission = Admission::new(2, 2);
        let first = free(&admission).await;
        let second = free(&admission).await;
        let waiter = admission.admit(Priority::Critical, Duration::from_secs(5));
        tokio::pin!(waiter);
        // Waiting before the first permit is released.
        queue(&admission, waiter.as_mut()).await;
        drop(first);
        assert!(waiter.await.is_ok(), "the waiter gets the released permit");
        drop(second);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_stay_counted_and_no_one_overtakes_a_waiter() {
        let admission = Admission::new(1, 1);
        let held = free(&admission).await;
        {
            let waiting = admission.admit(Priority::Critical, Duration::from_secs(5));
            tokio::pin!(waiting);
            // Queued, then dropped below (a client hanging up).
            queue(&admission, waiting.as_mut()).await;
            let low = admission.admit(Priority::Low, Duration::ZERO).await;
            assert_eq!(
                low.err(),
                Some(Shed),
                "low may not overtake a waiting checkout"
            );
        }
        assert_eq!(admission.stats()[0].waiting, 0);
        drop(held);
        assert!(admission.admit(Priority::Low, Duration::ZERO).await.is_ok());
    }

    #[test]
    fn low_priority_never_takes_more_than_its_share_of_the_pool() {
        let admission = Admission::new(200, 200).with_db_slots(32);
        assert_eq!(admission.ceiling(Priority::Low), 9);
        assert_eq!(admission.ceiling(Priority::Normal), 120);
        assert_eq!(admission.ceiling(Priority::Critical), 200);
    }

    #[test]
    fn healing_tightens_low_priority() {
        let admission = Admission::new(100, 100);
        assert_eq!(admission.ceiling(Priority::Low), 30);
        admission.set_low_factor(0.25);
        assert_eq!(admission.ceiling(Priority::Low), 7);
        assert_eq!(admission.ceiling(Priority::Critical), 100);
    }
}
