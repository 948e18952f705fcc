//! Adaptive read distribution over the PostgreSQL primary and its streaming read replicas.
//!
//! The application holds one connection pool per target and asks the [`Balancer`] which one a
//! read may use. The choice is the power of two random choices: two eligible targets drawn at
//! random, the cheaper one taken. A target's cost is a peak-sensitive EWMA of the time its reads
//! took (a slow read raises it at once, fast reads lower it with a 2 s time constant, and it
//! decays towards zero while nothing is observed, so a target once slow is tried again), times
//! the reads in flight on it plus one, plus the read's own predicted time for each read already
//! waiting there: an expensive read goes where the spare capacity is, a cheap one where reads
//! come back fastest. The primary's cost is divided by `database.primary_read_weight`.
//! `database.read_balance = "round-robin"` takes the eligible targets in turn instead: the
//! baseline the adaptive choice is measured against (`make scaling`).
//!
//! A replica is eligible only when it is known (a probe answered), not banned, not lagging past
//! `database.max_replica_lag_ms`, and has replayed the WAL position the read needs: the caller's
//! own last write (read-your-writes). The primary is always eligible, so a read never waits for
//! a replica. A read from a replica that has not replayed the newest catalogue change the
//! response cache was invalidated for ([`Balancer::changed_at`]) may show the row as it was
//! before, which is fine for one answer but not for the cache: such an answer is marked
//! ([`mark_behind_changes`]) and the cache does not keep it, so no fill after an invalidation
//! stores a row older than the change.
//!
//! Failures ban a replica for a back-off (1 s, doubling to `database.replica_ban_max_ms`); the
//! application's probes bring it back once the ban is over. Bans, returns and lag are optimizer
//! actions. Nothing here touches the database: the application feeds in what its probes saw.

use crate::actions::{Action, Actions};
use serde::Serialize;
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A WAL position (`pg_lsn`), as a number.
pub type Lsn = u64;

/// Reads `X/Y` (PostgreSQL's text form of a `pg_lsn`) as a number.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.trim().split_once('/')?;
    let valid = |s: &str| !s.is_empty() && s.len() <= 8;
    if !valid(high) || !valid(low) {
        return None;
    }
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// A WAL position in PostgreSQL's text form.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

tokio::task_local! {
    /// Whether the current request read from a replica behind the newest catalogue change.
    static BEHIND_CHANGES: Cell<bool>;
}

/// Marks the current request's answer as read from a replica that had not replayed the newest
/// catalogue change: the response cache must not keep it. Outside a request, nothing.
pub fn mark_behind_changes() {
    let _ = BEHIND_CHANGES.try_with(|behind| behind.set(true));
}

/// Runs `request` and says whether it was marked ([`mark_behind_changes`]).
pub(crate) async fn watch_behind<F: Future>(request: F) -> (F::Output, bool) {
    BEHIND_CHANGES
        .scope(Cell::new(false), async move {
            let out = request.await;
            (out, BEHIND_CHANGES.with(Cell::get))
        })
        .await
}

/// The response header (and request header) with the primary's WAL position after a client's
/// write: sent back, it keeps the client's reads on targets that have replayed the write.
pub const WRITE_LSN_HEADER: &str = "x-write-lsn";
/// The cookie that carries the same for browsers.
pub const WRITE_LSN_COOKIE: &str = "write_lsn";
/// How long the cookie lives (s). Past a few seconds a position says nothing more: a replica
/// that is further behind leaves rotation (`database.max_replica_lag_ms`).
pub const WRITE_LSN_COOKIE_SECS: u32 = 10;

/// Whether the request carries a write position (header or cookie). Its reads must see that
/// write, which a cached answer cannot promise: the write may have been made through another
/// instance whose invalidation has not arrived here yet. So they bypass the cache; the cookie
/// lasts [`WRITE_LSN_COOKIE_SECS`].
pub fn carries_write_position(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(WRITE_LSN_HEADER)
        || headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .any(|value| {
                value
                    .as_bytes()
                    .windows(WRITE_LSN_COOKIE.len() + 1)
                    .any(|w| {
                        w[..WRITE_LSN_COOKIE.len()] == *WRITE_LSN_COOKIE.as_bytes()
                            && w[WRITE_LSN_COOKIE.len()] == b'='
                    })
            })
}

/// The predicted time of the request, which the middleware leaves in the request's extensions
/// when there are replicas to choose from (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Predicted(pub f32);

/// How a read's target is chosen among the eligible ones (`database.read_balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The power of two choices on cost (the default).
    #[default]
    Adaptive,
    /// Each in turn, whatever their latency or load: the baseline the adaptive choice is
    /// measured against.
    RoundRobin,
}

/// The balancer's knobs (from `[database]`).
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// A label per replica, in the order of the application's pools (e.g. `127.0.0.1:54330`).
    pub replicas: Vec<String>,
    /// A replica further behind than this leaves rotation until it catches up.
    pub max_lag: Duration,
    /// The primary's share of reads relative to one replica: its cost is divided by this; 0
    /// keeps reads off it while any replica is eligible.
    pub primary_weight: f64,
    /// Longest ban after repeated failures.
    pub max_ban: Duration,
    /// Adaptive or round robin.
    pub strategy: Strategy,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            replicas: Vec::new(),
            max_lag: Duration::from_millis(1_000),
            primary_weight: 1.0,
            max_ban: Duration::from_secs(5),
            strategy: Strategy::Adaptive,
        }
    }
}

/// First ban; each failure in a row doubles it, up to [`BalanceConfig::max_ban`].
const FIRST_BAN: Duration = Duration::from_secs(1);
/// Time constant of the latency EWMA (ns).
const TAU_NS: f64 = 2e9;
/// Cost of a target nothing was observed on yet (ns): cheap, so new targets get tried.
const DEFAULT_RTT_NS: f64 = 1e6;
/// How long the primary's WAL positions are remembered, for measuring replicas' lag.
const POSITION_HISTORY: Duration = Duration::from_secs(120);

/// Peak-sensitive EWMA of a target's read times.
#[derive(Debug)]
struct PeakEwma {
    cost_ns: f64,
    at: Instant,
}

impl PeakEwma {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.cost_ns * (-elapsed / TAU_NS).exp()
    }

    /// A read took `rtt_ns`: a slower one than the estimate replaces it (the peak), a faster
    /// one moves it by how long ago the estimate was made.
    fn observe(&mut self, rtt_ns: f64, now: Instant) {
        self.cost_ns = if rtt_ns > self.cost_ns {
            rtt_ns
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let w = (-elapsed / TAU_NS).exp();
            self.cost_ns * w + rtt_ns * (1.0 - w)
        };
        self.at = now;
    }
}

/// Why a replica is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    /// Takes reads.
    Serving,
    /// No probe answered yet.
    Unknown,
    /// Failed; waiting out its ban.
    Banned,
    /// Behind the primary by more than `database.max_replica_lag_ms`.
    Lagging,
}

struct Target {
    label: String,
    primary: bool,
    ewma: Mutex<PeakEwma>,
    in_flight: AtomicU32,
    reads: AtomicU64,
    failures: AtomicU64,
    bans: AtomicU64,
    /// Consecutive failures, for the back-off.
    strikes: AtomicU32,
    /// Ms since the balancer started until which it is banned; 0: not banned.
    banned_until_ms: AtomicU64,
    banned: AtomicBool,
    known: AtomicBool,
    lagging: AtomicBool,
    replay_lsn: AtomicU64,
    lag_ms: AtomicU64,
}

impl Target {
    fn new(label: String, primary: bool, now: Instant) -> Self {
        Self {
            label,
            primary,
            ewma: Mutex::new(PeakEwma {
                cost_ns: DEFAULT_RTT_NS,
                at: now,
            }),
            in_flight: AtomicU32::new(0),
            reads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            banned_until_ms: AtomicU64::new(0),
            banned: AtomicBool::new(false),
            known: AtomicBool::new(primary),
            lagging: AtomicBool::new(false),
            replay_lsn: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
        }
    }

    fn state(&self) -> TargetState {
        if self.banned.load(Relaxed) {
            TargetState::Banned
        } else if !self.known.load(Relaxed) {
            TargetState::Unknown
        } else if self.lagging.load(Relaxed) {
            TargetState::Lagging
        } else {
            TargetState::Serving
        }
    }

    fn cost(&self, predicted_ns: f64, now: Instant) -> f64 {
        let pending = f64::from(self.in_flight.load(Relaxed));
        let rtt = self
            .ewma
            .lock()
            .map_or(DEFAULT_RTT_NS, |ewma| ewma.decayed(now));
        rtt * (pending + 1.0) + predicted_ns * pending
    }
}

/// The read targets (index 0 is the primary) and what is known of each.
pub struct Balancer {
    targets: Vec<Target>,
    config: BalanceConfig,
    epoch: Instant,
    /// The primary's WAL position over time, from the application's probes.
    positions: Mutex<VecDeque<(Instant, Lsn)>>,
    /// The newest catalogue change the cache was invalidated for.
    floor: AtomicU64,
    /// Reads chosen so far, for round robin.
    turn: AtomicU64,
    actions: Arc<Actions>,
}

/// Index of the primary among the targets.
pub const PRIMARY: usize = 0;

impl Balancer {
    /// A balancer over the primary and `config.replicas`, recording its actions in `actions`.
    pub fn new(config: BalanceConfig, actions: Arc<Actions>) -> Self {
        let now = Instant::now();
        let mut targets = vec![Target::new("primary".into(), true, now)];
        targets.extend(
            config
                .replicas
                .iter()
                .map(|label| Target::new(label.clone(), false, now)),
        );
        Self {
            targets,
            config,
            epoch: now,
            positions: Mutex::new(VecDeque::new()),
            floor: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            actions,
        }
    }

    /// Whether there is anything to choose between.
    pub fn has_replicas(&self) -> bool {
        self.targets.len() > 1
    }

    /// The newest catalogue change the cache was invalidated for.
    pub fn floor(&self) -> Lsn {
        self.floor.load(Relaxed)
    }

    /// A catalogue change committed at `lsn` (this instance's, or one heard of by `NOTIFY`).
    pub fn changed_at(&self, lsn: Lsn) {
        self.floor.fetch_max(lsn, Relaxed);
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn eligible(&self, index: usize, need: Lsn) -> bool {
        let t = &self.targets[index];
        t.primary
            || (t.state() == TargetState::Serving && t.replay_lsn.load(Relaxed) >= need.max(1))
    }

    /// The target a read that must see `need` (0: anything) should use, `predicted_ms` its
    /// predicted time when known. Counts the read as in flight there until the returned
    /// [`Read`] is dropped.
    pub fn choose(&self, need: Lsn, predicted_ms: Option<f32>) -> Read<'_> {
        let mut eligible = [0_usize; 16];
        let mut n = 0;
        for index in 0..self.targets.len().min(eligible.len()) {
            let skip_primary = index == PRIMARY && self.config.primary_weight <= 0.0;
            if !skip_primary && self.eligible(index, need) {
                eligible[n] = index;
                n += 1;
            }
        }
        let index = match n {
            0 => PRIMARY,
            1 => eligible[0],
            _ if self.config.strategy == Strategy::RoundRobin => {
                let turn = self.turn.fetch_add(1, Relaxed);
                eligible[usize::try_from(turn % n as u64).unwrap_or(0)]
            }
            _ => {
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let now = Instant::now();
                let predicted_ns = f64::from(predicted_ms.unwrap_or(0.0)) * 1e6;
                let cost = |i: usize| {
                    let c = self.targets[i].cost(predicted_ns, now);
                    if i == PRIMARY {
                        c / self.config.primary_weight
                    } else {
                        c
                    }
                };
                let (a, b) = (eligible[a], eligible[b]);
                if cost(a) <= cost(b) { a } else { b }
            }
        };
        self.start(index)
    }

    /// Counts a read on target `index` (for reads that must go to one target, such as a retry
    /// on the primary).
    pub fn start(&self, index: usize) -> Read<'_> {
        let target = &self.targets[index];
        target.in_flight.fetch_add(1, Relaxed);
        target.reads.fetch_add(1, Relaxed);
        Read {
            balancer: self,
            index,
            started: Instant::now(),
            failed: false,
        }
    }

    fn record(&self, action: &str, reason: String) {
        self.actions.record(Action {
            ts_ms: crate::unix_ms(),
            action: action.into(),
            reason,
            anomaly_rate: 0.0,
            details: serde_json::Map::new(),
        });
    }

    /// Target `index` failed (a refused connection, a dropped one, a cancelled statement):
    /// a replica is banned for a back-off. The primary is never banned: without it, nothing
    /// works, and its failures are the outage path's business.
    pub fn failed(&self, index: usize, why: &str) {
        let target = &self.targets[index];
        target.failures.fetch_add(1, Relaxed);
        if target.primary {
            return;
        }
        let strikes = target.strikes.fetch_add(1, Relaxed).min(8);
        let ban = FIRST_BAN
            .saturating_mul(1 << strikes)
            .min(self.config.max_ban);
        let until = self.now_ms(Instant::now()) + u64::try_from(ban.as_millis()).unwrap_or(0);
        target.banned_until_ms.fetch_max(until, Relaxed);
        if !target.banned.swap(true, Relaxed) {
            target.bans.fetch_add(1, Relaxed);
            self.record(
                "replica-banned",
                format!(
                    "{} failed ({why}); its reads go elsewhere for {} ms",
                    target.label,
                    ban.as_millis()
                ),
            );
        }
    }

    /// The primary's current WAL position, seen by a probe.
    pub fn primary_at(&self, lsn: Lsn) {
        let now = Instant::now();
        let Ok(mut positions) = self.positions.lock() else {
            return;
        };
        if positions.back().is_none_or(|&(_, last)| lsn > last) {
            positions.push_back((now, lsn));
        }
        while positions
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > POSITION_HISTORY)
            && positions.len() > 1
        {
            positions.pop_front();
        }
    }

    /// How far behind a replica that replayed `replay` is: the age of the oldest primary
    /// position it has not replayed (zero when it has them all).
    fn lag(&self, replay: Lsn, now: Instant) -> Duration {
        let Ok(positions) = self.positions.lock() else {
            return Duration::ZERO;
        };
        positions
            .iter()
            .find(|&&(_, lsn)| lsn > replay)
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at))
    }

    /// A probe of replica `index` answered: it has replayed the WAL up to `replay`. Ends its
    /// ban once the ban is over, and moves it in or out of rotation by its lag.
    pub fn probed(&self, index: usize, replay: Lsn) {
        let target = &self.targets[index];
        if target.primary {
            return;
        }
        let now = Instant::now();
        target.replay_lsn.fetch_max(replay, Relaxed);
        let lag = self.lag(replay, now);
        target
            .lag_ms
            .store(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX), Relaxed);
        if !target.known.swap(true, Relaxed) {
            self.record(
                "replica-serving",
                format!("{} answered its first probe", target.label),
            );
        }
        let lagging = lag > self.config.max_lag;
        if target.lagging.swap(lagging, Relaxed) != lagging {
            let reason = if lagging {
                format!(
                    "{} is {} ms behind the primary (limit {} ms): out of rotation",
                    target.label,
                    lag.as_millis(),
                    self.config.max_lag.as_millis()
                )
            } else {
                format!("{} caught up: back in rotation", target.label)
            };
            self.record(
                if lagging {
                    "replica-lagging"
                } else {
                    "replica-caught-up"
                },
                reason,
            );
        }
        if target.banned.load(Relaxed) && self.now_ms(now) >= target.banned_until_ms.load(Relaxed) {
            target.banned.store(false, Relaxed);
            target.strikes.store(0, Relaxed);
            self.record(
                "replica-returned",
                format!("{} answers again: back in rotation", target.label),
            );
        }
    }

    /// What is known of each target, for the snapshot.
    pub fn view(&self) -> Vec<TargetView> {
        let now = Instant::now();
        let total: u64 = self.targets.iter().map(|t| t.reads.load(Relaxed)).sum();
        self.targets
            .iter()
            .map(|t| {
                let reads = t.reads.load(Relaxed);
                TargetView {
                    target: t.label.clone(),
                    role: if t.primary { "primary" } else { "replica" },
                    state: t.state(),
                    reads,
                    share: if total == 0 {
                        0.0
                    } else {
                        reads as f64 / total as f64
                    },
                    ewma_ms: t.ewma.lock().map_or(0.0, |e| e.decayed(now) / 1e6),
                    in_flight: t.in_flight.load(Relaxed),
                    lag_ms: (!t.primary).then(|| t.lag_ms.load(Relaxed)),
                    failures: t.failures.load(Relaxed),
                    bans: t.bans.load(Relaxed),
                }
            })
            .collect()
    }
}

/// One read in flight on a target; records its time when dropped.
pub struct Read<'a> {
    balancer: &'a Balancer,
    index: usize,
    started: Instant,
    failed: bool,
}

impl Read<'_> {
    /// Which target: [`PRIMARY`] or a replica's position in the configuration plus one.
    pub fn target(&self) -> usize {
        self.index
    }

    /// Whether the target may not have replayed the newest catalogue change (a replica whose
    /// last known replay position is before it).
    pub fn behind_changes(&self) -> bool {
        let target = &self.balancer.targets[self.index];
        !target.primary && target.replay_lsn.load(Relaxed) < self.balancer.floor()
    }

    /// Starts the read's clock now: once it has its connection, so that opening one (a
    /// one-off cost) does not count as the target's read time; waiting for one shows as reads
    /// in flight.
    pub fn connected(&mut self) {
        self.started = Instant::now();
    }

    /// The read failed on its target ([`Balancer::failed`]); its time is not learned from.
    pub fn failed(&mut self, why: &str) {
        self.failed = true;
        self.balancer.failed(self.index, why);
    }
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        let target = &self.balancer.targets[self.index];
        target.in_flight.fetch_sub(1, Relaxed);
        if self.failed {
            return;
        }
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
        if let Ok(mut ewma) = target.ewma.lock() {
            ewma.observe(rtt, now);
        }
    }
}

/// One target as `/api/ml-metrics` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    /// `primary`, or the replica's host and port.
    pub target: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// Whether it takes reads, and if not why.
    pub state: TargetState,
    /// Reads sent to it since start.
    pub reads: u64,
    /// Its share of all reads since start.
    pub share: f64,
    /// The peak-sensitive EWMA of its read times (ms).
    pub ewma_ms: f64,
    /// Reads on it now.
    pub in_flight: u32,
    /// How far behind the primary (ms; replicas only).
    pub lag_ms: Option<u64>,
    /// Failed reads and probes.
    pub failures: u64,
    /// Times it was banned.
    pub bans: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer_with(replicas: usize, adjust: impl FnOnce(&mut BalanceConfig)) -> Balancer {
        let dir = std::env::temp_dir().join(format!("balance-{}", rand::random::<u64>()));
        let mut config = BalanceConfig {
            replicas: (1..=replicas).map(|i| format!("replica-{i}")).collect(),
            ..BalanceConfig::default()
        };
        adjust(&mut config);
        Balancer::new(config, Arc::new(Actions::new(dir.join("actions.log"))))
    }

    fn balancer(replicas: usize) -> Balancer {
        balancer_with(replicas, |_| {})
    }

    #[test]
    fn a_write_position_in_a_header_or_a_cookie_is_seen() {
        let with = |name: &str, value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
            carries_write_position(&headers)
        };
        assert!(with("x-write-lsn", "0/16B3748"));
        assert!(with("x-write-lsn", ""));
        assert!(with("cookie", "theme=dark; write_lsn=0/1"));
        assert!(!with("cookie", "theme=dark; my_write_lsn_pref"));
        assert!(!with("accept", "application/json"));
    }

    #[test]
    fn lsns_read_and_write_as_postgres_does() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B_3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(format_lsn(0x1_0000_00FF), "1/FF");
        for bad in ["", "16B3748", "0/", "/1", "g/1", "123456789/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_replica_serves_only_once_probed_and_only_what_it_replayed() {
        // Reads go to the replica whenever it may take them.
        let b = balancer_with(1, |c| c.primary_weight = 0.0);
        assert_eq!(b.choose(0, None).target(), PRIMARY, "unprobed");
        b.primary_at(100);
        b.probed(1, 100);
        assert_eq!(b.choose(0, None).target(), 1, "the replica takes reads");
        for _ in 0..50 {
            assert_eq!(
                b.choose(101, None).target(),
                PRIMARY,
                "a write it has not seen"
            );
        }
        // A change it has not seen: it may still answer, but says it is behind.
        b.changed_at(150);
        let read = b.choose(0, None);
        assert_eq!((read.target(), read.behind_changes()), (1, true));
        drop(read);
        b.primary_at(150);
        b.probed(1, 150);
        let read = b.choose(0, None);
        assert_eq!((read.target(), read.behind_changes()), (1, false));
        assert!(
            !b.choose(u64::MAX, None).behind_changes(),
            "the primary never is"
        );
    }

    #[test]
    fn reads_go_where_they_come_back_faster() {
        let b = balancer(1);
        b.primary_at(1);
        b.probed(1, 1);
        // The primary is slow: one read took 50 ms.
        {
            let read = b.start(PRIMARY);
            std::thread::sleep(Duration::from_millis(50));
            drop(read);
        }
        let replica = (0..100).filter(|_| b.choose(0, None).target() == 1).count();
        assert_eq!(replica, 100, "every read goes to the faster replica");
    }

    #[test]
    fn round_robin_takes_each_in_turn_whatever_its_speed() {
        let b = balancer_with(1, |c| c.strategy = Strategy::RoundRobin);
        b.primary_at(1);
        b.probed(1, 1);
        {
            let _slow = b.start(1);
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut seen = [0; 2];
        for _ in 0..100 {
            seen[b.choose(0, None).target()] += 1;
        }
        assert_eq!(seen, [50, 50]);
    }

    #[test]
    fn expensive_reads_avoid_a_busy_target() {
        let b = balancer(1);
        b.primary_at(1);
        b.probed(1, 1);
        // The replica is fast but busy with three reads; the primary idle.
        let busy: Vec<_> = (0..3).map(|_| b.start(1)).collect();
        assert_eq!(b.choose(0, Some(500.0)).target(), PRIMARY);
        drop(busy);
    }

    #[test]
    fn a_failed_replica_is_banned_until_a_probe_after_the_ban() {
        let b = balancer(1);
        b.primary_at(1);
        b.probed(1, 1);
        b.failed(1, "connection refused");
        assert_eq!(b.view()[1].state, TargetState::Banned);
        b.probed(1, 1);
        assert_eq!(b.view()[1].state, TargetState::Banned, "ban not over yet");
        for _ in 0..50 {
            assert_eq!(b.choose(0, None).target(), PRIMARY);
        }
        b.targets[1].banned_until_ms.store(0, Relaxed);
        b.probed(1, 1);
        assert_eq!(b.view()[1].state, TargetState::Serving);
        let actions: Vec<String> = b
            .actions
            .copy_where(|_| true)
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(
            actions,
            ["replica-serving", "replica-banned", "replica-returned"]
        );
    }

    #[test]
    fn a_replica_behind_by_more_than_the_limit_leaves_rotation() {
        let b = balancer(1);
        b.primary_at(10);
        b.probed(1, 10);
        assert_eq!(b.view()[1].state, TargetState::Serving);
        // The primary moved on 1.5 s ago; the replica did not follow.
        b.positions
            .lock()
            .expect("positions")
            .push_back((Instant::now() - Duration::from_millis(1_500), 20));
        b.probed(1, 10);
        let view = &b.view()[1];
        assert_eq!(view.state, TargetState::Lagging);
        assert!(view.lag_ms.expect("a replica's lag") >= 1_500);
        b.probed(1, 20);
        assert_eq!(b.view()[1].state, TargetState::Serving);
    }
}
