//! The predictive response cache for catalogue reads (product list, detail, search).
//!
//! - `quick_cache` (S3-FIFO, sharded) holds whole response bodies, bounded by bytes.
//! - One fill per key: concurrent misses of one key wait for the first to finish
//!   (`get_value_or_guard_async`), so a hot key that expires costs one database query, not a
//!   stampede.
//! - Refresh ahead (XFetch, Vattani et al. 2015): a hit recomputes early with probability
//!   growing as expiry nears, scaled by how long the entry took to compute (the predicted
//!   recompute time), so hot keys are refreshed before they expire and nobody waits.
//! - TTLs adapt to request rate: hot routes keep entries longer (more hits per fill); cold ones
//!   expire quickly.
//! - Invalidation: a product change removes its detail entry and bumps a generation that every
//!   list and search key includes; other instances hear of it through PostgreSQL NOTIFY.
//! - Only public catalogue responses are cached: never anything that depends on the caller.

use axum::body::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cached response body.
#[derive(Debug)]
pub struct Entry {
    /// JSON body.
    pub body: Bytes,
    /// When it stops being served.
    pub expires: Instant,
    /// How long computing it took (XFetch's delta).
    pub compute: Duration,
}

impl Entry {
    /// An entry computed since `started`, fresh for `ttl` from now.
    pub fn computed(body: Bytes, started: Instant, ttl: Duration) -> Arc<Self> {
        let done = Instant::now();
        Arc::new(Self {
            body,
            expires: done + ttl,
            compute: done - started,
        })
    }
}

/// Weighs entries by their size in bytes.
#[derive(Clone)]
pub struct ByBytes;

impl Weighter<String, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &String, value: &Arc<Entry>) -> u64 {
        (key.len() + value.body.len() + 96) as u64
    }
}

/// The single-filler guard of a missing key.
pub type Guard<'a> = quick_cache::sync::PlaceholderGuard<
    'a,
    String,
    Arc<Entry>,
    ByBytes,
    quick_cache::DefaultHashBuilder,
    quick_cache::sync::DefaultLifecycle<String, Arc<Entry>>,
>;

/// Which catalogue route a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /api/products`
    List,
    /// `GET /api/products/{id}`
    Detail,
    /// `GET /api/search`
    Search,
}

impl Kind {
    /// Every cached kind.
    pub const ALL: [Self; 3] = [Self::List, Self::Detail, Self::Search];

    /// The label of the route this kind caches (from the route policy).
    pub fn route(self) -> String {
        crate::policy::cached_as(self).label()
    }
}

/// What the cache did for one request: the request log's `cache` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Caching is switched off.
    Off,
    /// Not a cacheable request.
    Bypass,
    /// Answered from a fresh entry.
    Hit,
    /// Computed (a first fill, or after expiry).
    Miss,
    /// Recomputed ahead of expiry by refresh-ahead.
    Refresh,
}

impl CacheOutcome {
    /// The log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Bypass => "bypass",
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Refresh => "refresh",
        }
    }
}

/// Per-kind hit and miss counters.
#[derive(Default)]
pub struct KindCounters {
    /// Served from cache.
    pub hits: AtomicU64,
    /// Computed (first fill or after expiry).
    pub misses: AtomicU64,
    /// Recomputed early by refresh-ahead.
    pub refreshes: AtomicU64,
}

/// The cache.
pub struct ResponseCache {
    cache: Cache<String, Arc<Entry>, ByBytes>,
    generation: AtomicU64,
    /// Counters per kind: list, detail, search.
    pub counters: [KindCounters; 3],
    /// Entries dropped by invalidation.
    pub invalidations: AtomicU64,
    min_ttl: Duration,
    max_ttl: Duration,
}

fn detail_key(id: i64) -> String {
    format!("d:{id}")
}

/// XFetch's β: above 1 refreshes earlier, below later.
const XFETCH_BETA: f64 = 1.0;

impl ResponseCache {
    /// A cache holding at most `max_bytes` of responses.
    pub fn new(max_bytes: u64) -> Self {
        let estimated_items =
            usize::try_from((max_bytes / 4096).clamp(64, 1_000_000)).unwrap_or(64);
        Self {
            cache: Cache::with_weighter(estimated_items, max_bytes, ByBytes),
            generation: AtomicU64::new(0),
            counters: Default::default(),
            invalidations: AtomicU64::new(0),
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(30),
        }
    }

    /// The cache key for a request, or `None` when it should not be cached.
    pub fn key(&self, kind: Kind, path: &str, query: Option<&str>) -> Option<String> {
        match kind {
            // Details are keyed by the parsed id, so `/api/products/007` and `/api/products/7`
            // share one entry and invalidating product 7 finds it. Unparseable ids are not
            // cached (the handler answers 400).
            Kind::Detail => {
                let id: i64 = path.rsplit('/').next()?.parse().ok()?;
                Some(detail_key(id))
            }
            Kind::List | Kind::Search => {
                let generation = self.generation.load(Ordering::Relaxed);
                Some(format!("l:{generation}:{path}?{}", query.unwrap_or("")))
            }
        }
    }

    /// The invalidation generation; it changes whenever any product changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Counters of a kind.
    pub fn counters(&self, kind: Kind) -> &KindCounters {
        &self.counters[kind as usize]
    }

    /// TTL for a route with this request rate (req/s): from 2 s when cold to 30 s when hot.
    pub fn ttl_for_rate(&self, rate: f32) -> Duration {
        let heat = 1.0 - (-f64::from(rate.max(0.0)) / 50.0).exp();
        self.min_ttl + (self.max_ttl - self.min_ttl).mul_f64(heat)
    }

    /// Looks up a fresh entry. Returns the entry and whether this request should recompute it
    /// early (XFetch).
    pub fn lookup(&self, key: &str, now: Instant) -> Option<(Arc<Entry>, bool)> {
        let entry = self.cache.get(key)?;
        if now >= entry.expires {
            return None;
        }
        // XFetch: refresh when now - δ·β·ln(U) ≥ expiry, with U uniform in (0, 1].
        let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        let early = entry.compute.mul_f64(-XFETCH_BETA * u.ln());
        Some((entry.clone(), now + early >= entry.expires))
    }

    /// Whether a fresh entry exists, without counting as a use (a model feature: the latency of
    /// a cacheable read depends mostly on this).
    pub fn is_fresh(&self, key: &str, now: Instant) -> bool {
        self.cache
            .peek(key)
            .is_some_and(|entry| now < entry.expires)
    }

    /// Waits for (or becomes) the single filler of `key`. `Ok(entry)`: someone else filled it
    /// while we waited. `Err(guard)`: we compute it and hand it to the guard.
    pub async fn fill_or_wait(&self, key: &str) -> Result<Arc<Entry>, Guard<'_>> {
        self.cache.get_value_or_guard_async(key).await
    }

    /// Drops an expired entry so the next lookup fills afresh.
    pub fn remove_expired(&self, key: &str, now: Instant) {
        self.cache.remove_if(key, |entry| now >= entry.expires);
    }

    /// Replaces an entry (used by an early refresh).
    pub fn replace(&self, key: String, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    /// Forgets everything about one product: its detail entry and every list and search.
    pub fn invalidate_product(&self, product_id: i64) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        if self.cache.remove(&detail_key(product_id)).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes held.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ttl: Duration, compute: Duration) -> Arc<Entry> {
        let now = Instant::now();
        Arc::new(Entry {
            body: Bytes::from_static(b"{}"),
            expires: now + ttl,
            compute,
        })
    }

    #[test]
    fn invalidation_changes_list_keys_and_drops_details() {
        let cache = ResponseCache::new(1 << 20);
        let before = cache.key(Kind::List, "/api/products", Some("page=1"));
        let detail = cache
            .key(Kind::Detail, "/api/products/007", None)
            .expect("key");
        assert_eq!(
            Some(detail.clone()),
            cache.key(Kind::Detail, "/api/products/7", None)
        );
        assert_eq!(cache.key(Kind::Detail, "/api/products/x", None), None);
        cache.replace(
            detail.clone(),
            entry(Duration::from_secs(10), Duration::ZERO),
        );
        cache.invalidate_product(7);
        assert_ne!(
            cache.key(Kind::List, "/api/products", Some("page=1")),
            before
        );
        assert!(cache.lookup(&detail, Instant::now()).is_none());
    }

    #[test]
    fn refresh_ahead_fires_near_expiry_only() {
        let cache = ResponseCache::new(1 << 20);
        cache.replace(
            "far".into(),
            entry(Duration::from_secs(30), Duration::from_millis(1)),
        );
        cache.replace(
            "near".into(),
            entry(Duration::from_millis(2), Duration::from_millis(50)),
        );
        let now = Instant::now();
        let far = (0..1000)
            .filter(|_| cache.lookup("far", now).is_some_and(|(_, r)| r))
            .count();
        let near = (0..1000)
            .filter(|_| cache.lookup("near", now).is_some_and(|(_, r)| r))
            .count();
        assert_eq!(far, 0);
        assert!(near > 900, "{near}");
    }

    #[test]
    fn hot_routes_keep_entries_longer() {
        let cache = ResponseCache::new(1 << 20);
        assert!(cache.ttl_for_rate(0.0) <= Duration::from_secs(2));
        assert!(cache.ttl_for_rate(500.0) > Duration::from_secs(25));
    }

    #[test]
    fn memory_is_bounded() {
        let cache = ResponseCache::new(64 * 1024);
        for i in 0..1000 {
            let now = Instant::now();
            let body = Bytes::from(vec![b'x'; 1024]);
            cache.replace(
                format!("k{i}"),
                Arc::new(Entry {
                    body,
                    expires: now + Duration::from_secs(60),
                    compute: Duration::ZERO,
                }),
            );
        }
        assert!(cache.weight() <= 64 * 1024, "{}", cache.weight());
    }
}
