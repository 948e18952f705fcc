//! The optimizer middleware: classify, featurize, predict, admit, cache, handle, score, learn,
//! respond with headers, in that order (`docs/optimizer.md`).
//!
//! Per-request work is bounded and small: a few atomics, two short uncontended mutexes (the
//! route's statistics), a fixed-size feature array, and a `try_send` to the log writer. Nothing
//! here scans history or waits on disk.

use super::admission::Permit;
use super::admission::Priority;
use super::anomaly::{self, ANOMALY_SCORE, Outcome};
use super::cache::{CacheOutcome, Entry, Kind};
use super::policy::{self, Policy};
use super::predictor::{Prediction, Source};
use super::queries::{QUERIES, QueryExec};
use super::stats::Shadow;
use super::telemetry::Pending;
use super::{Alert, Optimizer, unix_ms};
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use contract::FeatureVector;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Confidence of the prediction, 0-100.
pub const CONFIDENCE: HeaderName = HeaderName::from_static("x-ml-prediction-confidence");
/// What the optimizer did: `none`, `cache`, `cache-refresh`, `shed`, `throttle`.
pub const APPLIED: HeaderName = HeaderName::from_static("x-optimization-applied");
/// Anomaly score 0-1.
pub const ANOMALY: HeaderName = HeaderName::from_static("x-anomaly-score");
/// Why a flagged response scored anomalous (`crate::anomaly::explain`): sent to the admin
/// token, or to everyone with `optimization.explain_public`.
pub const ANOMALY_REASON: HeaderName = HeaderName::from_static("x-anomaly-reason");
/// `onnx`, `online` (with `; stale=<reason>` when the model could not answer) or `off`.
pub const SOURCE: HeaderName = HeaderName::from_static("x-ml-source");
/// Predicted median latency (ms).
pub const PREDICTED: HeaderName = HeaderName::from_static("x-ml-predicted-latency-ms");
/// A client may lower its own priority; raising it needs the admin token.
pub const PRIORITY: HeaderName = HeaderName::from_static("x-priority");

/// What the pipeline needs of the application it runs in, and no more: the optimizer depends
/// on no part of the server. The server implements it over its connection pool and accounts;
/// the middleware benchmark over fixed answers.
pub trait Host: Clone + Send + Sync + 'static {
    /// The database pool now (waiting requests and idle connections are features).
    fn pool(&self) -> PoolStatus;
    /// Whether these headers carry the admin token, which may raise a request's priority.
    fn is_admin(&self, headers: &HeaderMap) -> bool;
}

/// The database pool as the features see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Requests waiting for a connection.
    pub waiting: usize,
    /// Idle connections.
    pub available: usize,
}

/// The middleware's state: the optimizer and the application it serves.
#[derive(Clone)]
pub struct Pipeline<H> {
    optimizer: Arc<Optimizer>,
    host: H,
}

impl<H: Host> Pipeline<H> {
    /// The pipeline of `optimizer` in front of `host`'s handlers.
    pub fn new(optimizer: Arc<Optimizer>, host: H) -> Self {
        Self { optimizer, host }
    }
}

/// The body of every shed answer (the shop's error shape, `{"error": {"code", "message"}}`).
const SHED_BODY: &str = r#"{"error":{"code":"overloaded","message":"the server is shedding low-priority load; retry shortly"}}"#;
/// The body when a cacheable answer could not be buffered.
const INTERNAL_BODY: &str = r#"{"error":{"code":"internal","message":"internal server error"}}"#;

fn error_json(status: StatusCode, body: &'static str) -> Response {
    let mut response = json_response(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = status;
    response
}

/// Counts a request as in flight until dropped.
struct InFlight<'a> {
    route: &'a std::sync::atomic::AtomicU32,
    all: &'a std::sync::atomic::AtomicU32,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.route.fetch_sub(1, Ordering::Relaxed);
        self.all.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted request being served, counted by the healer from the moment it was admitted
/// (its wait for admission is load, not a fault), until it ends however it ends.
struct Serving<'a> {
    healer: &'a crate::healer::Healer,
    ticket: Option<crate::arrivals::Ticket>,
}

impl<'a> Serving<'a> {
    fn start(healer: &'a crate::healer::Healer, admitted_ms: i64) -> Self {
        Self {
            healer,
            ticket: Some(healer.arrive(admitted_ms)),
        }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.healer.leave(ticket);
        }
    }
}

/// The anomaly score of a request shed while the served requests show an incident: flagged,
/// as the requests the incident hurt are (`crate::healer`).
pub const SHED_IN_INCIDENT: f32 = 0.96;

/// Longest path (with query) kept in a log record; longer ones are cut, so a flood of huge
/// URLs cannot balloon the log channel.
const MAX_LOGGED_PATH: usize = 512;

/// Largest response body the cache will buffer.
const MAX_CACHED_BODY: usize = 4 * 1024 * 1024;

/// What the optimizer did with a request: the `x-optimization-applied` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The handler ran as usual.
    None,
    /// Answered from the cache.
    Cache,
    /// Recomputed ahead of expiry, and the cache refreshed.
    CacheRefresh,
    /// Shed by admission: 503 with `Retry-After`.
    Shed,
    /// Shed because auto-healing throttles the route.
    Throttle,
}

impl Applied {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Cache => "cache",
            Self::CacheRefresh => "cache-refresh",
            Self::Shed => "shed",
            Self::Throttle => "throttle",
        }
    }

    fn is_shed(self) -> bool {
        matches!(self, Self::Shed | Self::Throttle)
    }
}

impl From<CacheOutcome> for Applied {
    fn from(outcome: CacheOutcome) -> Self {
        match outcome {
            CacheOutcome::Hit => Self::Cache,
            CacheOutcome::Refresh => Self::CacheRefresh,
            CacheOutcome::Off | CacheOutcome::Bypass | CacheOutcome::Miss => Self::None,
        }
    }
}

/// What the handler (or the cache in its place) answered.
struct Served {
    response: Response,
    queries: Vec<QueryExec>,
    cache: CacheOutcome,
}

fn policy_of(request: &Request) -> &'static Policy {
    match request.extensions().get::<MatchedPath>() {
        Some(path) => policy::of(request.method().as_str(), path.as_str()),
        None => &policy::OTHER,
    }
}

/// Reads an unsigned number parameter from a query string without allocating.
fn query_number(query: Option<&str>, name: &str) -> f32 {
    let Some(query) = query else { return 0.0 };
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == name
        {
            return v.parse::<u32>().map_or(0.0, |n| n as f32);
        }
    }
    0.0
}

fn features<H: Host>(
    state: &Pipeline<H>,
    route: usize,
    priority: Priority,
    request: &Request,
    route_in_flight: u32,
    cached: bool,
    (now, now_ms): (Instant, i64),
) -> FeatureVector {
    let opt = &state.optimizer;
    let stats = opt.stats.route(route);
    let snap = stats.snapshot(now);
    let pool = state.host.pool();
    let query = request.uri().query();
    let hour = now_ms.max(0) / 3_600_000 % 24;
    let body_bytes = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    [
        route as f32,
        f32::from(priority as u8),
        opt.stats.in_flight.load(Ordering::Relaxed) as f32,
        route_in_flight as f32,
        snap.ewma_log_mean as f32,
        snap.p90_ms as f32,
        opt.stats.total_rate(),
        stats.rate(),
        pool.waiting as f32,
        pool.available as f32,
        hour as f32,
        query_number(query, "limit"),
        query_number(query, "page"),
        query_number(query, "complexity"),
        body_bytes as f32,
        f32::from(u8::from(
            request
                .headers()
                .contains_key(axum::http::header::AUTHORIZATION),
        )),
        f32::from(u8::from(cached)),
    ]
}

/// Whether requests other than this one are in flight: then its model runs are shared with
/// theirs (one ONNX Runtime call per batch instead of per request); alone, a request runs its
/// row directly.
fn others_in_flight(opt: &Optimizer) -> bool {
    opt.stats.in_flight.load(Ordering::Relaxed) > 1
}

/// The priority a request runs at: the route's default, lowered (never raised) by `x-priority`
/// unless the admin token is present.
fn priority_of<H: Host>(state: &Pipeline<H>, policy: &Policy, request: &Request) -> Priority {
    let mut default = policy.priority;
    // Checkout is critical only for someone who could be signed in: an anonymous flood of
    // checkout requests must not take the permits reserved for real buyers.
    if default == Priority::Critical
        && !request
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION)
    {
        default = Priority::Normal;
    }
    let Some(asked) = request
        .headers()
        .get(PRIORITY)
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::parse)
    else {
        return default;
    };
    if asked >= default {
        return asked;
    }
    if state.host.is_admin(request.headers()) {
        asked
    } else {
        default
    }
}

/// How long a request may wait for a permit: what is left of the target after its predicted
/// latency, generous for checkout, a tenth of the target at least for low priority.
fn budget(
    target: Duration,
    threshold: f32,
    priority: Priority,
    prediction: &Prediction,
) -> Duration {
    let confident = prediction.is_known() && prediction.confidence >= threshold;
    let left = target.saturating_sub(Duration::from_secs_f32(prediction.p50_ms.max(0.0) / 1000.0));
    match priority {
        Priority::Critical => (target * 10).max(Duration::from_secs(2)),
        Priority::High => target * 2,
        Priority::Normal => {
            if confident {
                left
            } else {
                target / 2
            }
        }
        // Low priority rides out a short burst (a tenth of the target) but never queues for
        // long: a sustained overload sheds it within that time.
        Priority::Low => {
            if confident {
                (left / 4).max(target / 10)
            } else {
                target / 10
            }
        }
    }
}

/// Formats a non-negative number with two decimals; zero (the common case for the anomaly
/// score) needs no allocation.
fn two_decimals(value: f32) -> HeaderValue {
    if value <= 0.0 || !value.is_finite() {
        return HeaderValue::from_static("0.00");
    }
    HeaderValue::from_str(&format!("{value:.2}"))
        .unwrap_or_else(|_| HeaderValue::from_static("0.00"))
}

fn set_headers(headers: &mut HeaderMap, prediction: &Prediction, applied: Applied, score: f32) {
    let confidence = (prediction.confidence.clamp(0.0, 1.0) * 100.0).round() as u32;
    headers.insert(CONFIDENCE, HeaderValue::from(confidence));
    headers.insert(APPLIED, HeaderValue::from_static(applied.as_str()));
    headers.insert(ANOMALY, two_decimals(score.min(1.0)));
    headers.insert(SOURCE, HeaderValue::from_static(prediction.header()));
    headers.insert(PREDICTED, two_decimals(prediction.p50_ms));
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Runs the handler with a statement collector around it.
async fn run_tracked(next: Next, request: Request, cache: CacheOutcome) -> Served {
    QUERIES
        .scope(RefCell::new(Vec::new()), async move {
            let response = next.run(request).await;
            let queries = QUERIES.with(|q| q.take());
            Served {
                response,
                queries,
                cache,
            }
        })
        .await
}

/// Runs the handler and buffers a successful body for the cache.
async fn run_for_cache(
    next: Next,
    request: Request,
    cache: CacheOutcome,
) -> (Served, Option<Bytes>) {
    let (mut served, behind) =
        crate::balance::watch_behind(run_tracked(next, request, cache)).await;
    // Only a plain 200 is kept, and never one its handler marked `no-store` (something only
    // this caller may see), nor one read from a replica behind the newest catalogue change.
    let no_store = served
        .response
        .headers()
        .get(axum::http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("no-store"));
    if served.response.status() != StatusCode::OK || no_store || behind {
        return (served, None);
    }
    let (parts, body) = std::mem::take(&mut served.response).into_parts();
    match to_bytes(body, MAX_CACHED_BODY).await {
        Ok(bytes) => {
            served.response = Response::from_parts(parts, Body::from(bytes.clone()));
            (served, Some(bytes))
        }
        Err(_) => {
            served.response = error_json(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_BODY);
            (served, None)
        }
    }
}

/// The middleware.
pub async fn optimize<H: Host>(
    State(state): State<Pipeline<H>>,
    mut request: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let opt: Arc<Optimizer> = state.optimizer.clone();
    let settings = &opt.settings;
    if !settings.any() {
        // Everything off: the handler runs untouched; only the headers are added.
        let mut response = next.run(request).await;
        set_headers(
            response.headers_mut(),
            &Prediction::NONE,
            Applied::None,
            0.0,
        );
        return response;
    }

    // The clock is read once on arrival (a clock read costs ~40 ns here): the features, the
    // cache check and the log record use this time, the statistics arrival + latency.
    let arrived_ms = unix_ms();

    // 1. Classify.
    let policy = policy_of(&request);
    let route = policy.feature;
    let path = request.uri().path_and_query().map_or("", |p| p.as_str());
    let mut cut = path.len().min(MAX_LOGGED_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    let path = path[..cut].to_owned();
    let priority = priority_of(&state, policy, &request);
    // Kept for `x-anomaly-reason`, which only the admin sees (checked only when flagged).
    let authorization = request.headers().get(AUTHORIZATION).cloned();
    let route_stats = opt.stats.route(route);
    let route_in_flight = route_stats.in_flight.fetch_add(1, Ordering::Relaxed);
    opt.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    // Decrements both counters however the request ends, including a client hanging up or
    // the request timeout dropping this future.
    let _in_flight = InFlight {
        route: &route_stats.in_flight,
        all: &opt.stats.in_flight,
    };
    // The cache key, once: whether it is fresh is a feature, and step 5 serves from it. A read
    // that must see the client's own write never comes from the cache.
    let cache_slot = policy
        .cache
        .filter(|_| settings.caching && !crate::balance::carries_write_position(request.headers()))
        .map(|kind| {
            let key = opt
                .cache
                .key(kind, request.uri().path(), request.uri().query());
            (kind, key)
        });
    let cached = cache_slot
        .as_ref()
        .and_then(|(_, key)| key.as_deref())
        .is_some_and(|key| opt.cache.is_fresh(key, arrived));
    // 2. Features. 3. Predict.
    let features = features(
        &state,
        route,
        priority,
        &request,
        route_in_flight,
        cached,
        (arrived, arrived_ms),
    );
    let prediction = if settings.prediction {
        opt.predictor
            .predict(route, &features, others_in_flight(&opt))
            .await
    } else {
        Prediction::NONE
    };

    // Where a read goes among replicas depends on its predicted cost (only asked for then).
    if prediction.is_known() && opt.balancer.has_replicas() {
        request
            .extensions_mut()
            .insert(crate::balance::Predicted(prediction.p50_ms));
    }

    let mut queue = Duration::ZERO;
    // Auto-healing throttles some routes (the stress test) outright while an incident lasts.
    let throttled = settings.anomaly && policy.throttled_while_healing && opt.healer.is_active();

    // 4. Admit: a permit (none when priorities are off), or why the request is shed.
    let admitted: Result<Option<Permit<'_>>, Applied> = if throttled {
        Err(Applied::Throttle)
    } else if settings.priority && !policy.exempt_from_admission {
        let waited = Instant::now();
        let admitted = opt
            .admission
            .admit(
                priority,
                budget(
                    settings.target,
                    settings.prediction_threshold,
                    priority,
                    &prediction,
                ),
            )
            .await;
        queue = waited.elapsed();
        admitted.map(Some).map_err(|_| Applied::Shed)
    } else {
        Ok(None)
    };

    let not_cached = if settings.caching {
        CacheOutcome::Bypass
    } else {
        CacheOutcome::Off
    };
    let (applied, served) = match admitted {
        Err(shed) => {
            let mut response = error_json(StatusCode::SERVICE_UNAVAILABLE, SHED_BODY);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(1_u32));
            let served = Served {
                response,
                queries: Vec::new(),
                cache: not_cached,
            };
            (shed, served)
        }
        Ok(_permit) => {
            let admitted_ms = arrived_ms + i64::try_from(queue.as_millis()).unwrap_or(0);
            let _serving = settings
                .anomaly
                .then(|| Serving::start(&opt.healer, admitted_ms));
            // 5. Cache. 6. Handle.
            let served = match cache_slot {
                Some((kind, key)) => {
                    serve_cached(&opt, route, kind, key, request, next, &prediction).await
                }
                None => run_tracked(next, request, not_cached).await,
            };
            (Applied::from(served.cache), served)
        }
    };
    let Served {
        mut response,
        queries,
        cache,
    } = served;
    let shed = applied.is_shed();

    // 7. Score. 8. Learn.
    let latency = arrived.elapsed();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let finished_ms = arrived_ms + i64::try_from(latency.as_millis()).unwrap_or(0);
    let status = response.status().as_u16();
    let queue_ms = queue.as_secs_f64() * 1000.0;
    let outcome = Outcome {
        latency_ms,
        queue_ms,
        status,
        shed,
    };
    let score = if !settings.anomaly {
        0.0
    } else if shed {
        // Shed during an incident: part of it (the served requests say so, or stalled requests
        // hold most of the permits); else overload, which admission is handling.
        if opt
            .healer
            .in_incident_at(finished_ms, opt.admission.in_flight())
        {
            SHED_IN_INCIDENT
        } else {
            0.0
        }
    } else {
        opt.scorer
            .score(route, &features, &outcome, others_in_flight(&opt))
            .await
    };
    let mut reason = None;
    if settings.anomaly {
        opt.healer.observe(score, shed);
        if score >= ANOMALY_SCORE {
            // Internal state: for the admin, or for everyone when the operator says so.
            let explained = settings.explain_public
                || authorization.as_ref().is_some_and(|value| {
                    let mut headers = HeaderMap::with_capacity(1);
                    headers.insert(AUTHORIZATION, value.clone());
                    state.host.is_admin(&headers)
                });
            // Alerts are of served requests only: during an incident thousands shed a second
            // would push every served anomaly out of the bounded list.
            if explained || !shed {
                let why =
                    anomaly::explain(&route_stats.snapshot(Instant::now()), &features, &outcome);
                if !shed {
                    opt.alert(Alert {
                        ts_ms: finished_ms,
                        route: contract::routes::route_label(route),
                        latency_ms,
                        status,
                        score,
                        reason: why.clone(),
                    });
                }
                if explained {
                    reason = Some(why);
                }
            }
        }
    }
    let predicted = prediction
        .is_known()
        .then(|| (f64::from(prediction.p50_ms), f64::from(prediction.p90_ms)));
    if !shed {
        let [model, online] = [prediction.model_ms, prediction.online_ms]
            .map(|[p50, p90]| [f64::from(p50), f64::from(p90)]);
        let shadow = Shadow { model, online };
        route_stats.record(
            latency_ms,
            predicted,
            Some(shadow),
            status >= 500,
            arrived + latency,
        );
        opt.models.observe(&prediction, latency_ms);
    }
    let db: Duration = queries.iter().map(|q| q.duration).sum();
    opt.telemetry.send(Pending {
        ts_ms: arrived_ms,
        route,
        path,
        priority,
        features,
        prediction,
        status,
        latency_ms: latency_ms as f32,
        db_ms: (db.as_secs_f64() * 1000.0) as f32,
        queue_ms: queue_ms as f32,
        cache,
        shed,
        anomaly_score: score,
        queries,
    });

    // 9. Respond.
    set_headers(response.headers_mut(), &prediction, applied, score);
    if let Some(value) = reason.and_then(|r| HeaderValue::from_str(&r).ok()) {
        response.headers_mut().insert(ANOMALY_REASON, value);
    }
    response
}

/// A response served from a cache entry.
fn hit(entry: &Entry) -> Served {
    Served {
        response: json_response(entry.body.clone()),
        queries: Vec::new(),
        cache: CacheOutcome::Hit,
    }
}

/// Serves a cacheable read: hit, early refresh (XFetch), or a single-flight fill.
async fn serve_cached(
    opt: &Arc<Optimizer>,
    route: usize,
    kind: Kind,
    key: Option<String>,
    request: Request,
    next: Next,
    prediction: &Prediction,
) -> Served {
    let cache = &opt.cache;
    let counters = cache.counters(kind);
    let Some(key) = key else {
        return run_tracked(next, request, CacheOutcome::Bypass).await;
    };
    let now = Instant::now();
    let ttl = cache.ttl_for_rate(opt.stats.route(route).rate());
    // Refresh-ahead acts on predictions only when they are trusted; otherwise entries simply
    // expire and are refilled once.
    let trust = prediction.source == Source::Off
        || prediction.confidence >= opt.settings.prediction_threshold;

    match cache.lookup(&key, now) {
        Some((entry, refresh)) if !(refresh && trust) => {
            counters.hits.fetch_add(1, Ordering::Relaxed);
            return hit(&entry);
        }
        Some(_) => {
            // This request won the XFetch draw: recompute now, everyone else keeps hitting.
            counters.refreshes.fetch_add(1, Ordering::Relaxed);
            let generation = cache.generation();
            let started = Instant::now();
            let (served, body) = run_for_cache(next, request, CacheOutcome::Refresh).await;
            // A product changed while this refresh ran: its result may predate the change.
            if let Some(body) = body.filter(|_| cache.generation() == generation) {
                cache.replace(key, Entry::computed(body, started, ttl));
            }
            return served;
        }
        None => cache.remove_expired(&key, now),
    }

    match cache.fill_or_wait(&key).await {
        Ok(entry) if Instant::now() < entry.expires => {
            // Another request filled it while this one waited: one database query for all.
            counters.hits.fetch_add(1, Ordering::Relaxed);
            hit(&entry)
        }
        Ok(_) => {
            // Expired between lookup and now; compute directly rather than loop.
            counters.misses.fetch_add(1, Ordering::Relaxed);
            run_for_cache(next, request, CacheOutcome::Miss).await.0
        }
        Err(guard) => {
            counters.misses.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let (served, body) = run_for_cache(next, request, CacheOutcome::Miss).await;
            if let Some(body) = body {
                let _ = guard.insert(Entry::computed(body, started, ttl));
            }
            // A failed fill drops the guard: the next waiter becomes the filler.
            served
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_priority() {
        let target = Duration::from_millis(100);
        let known = Prediction {
            p50_ms: 20.0,
            p90_ms: 40.0,
            confidence: 0.9,
            source: Source::Online,
            ..Prediction::NONE
        };
        let unsure = Prediction {
            confidence: 0.1,
            ..known
        };
        assert!(budget(target, 0.7, Priority::Critical, &known) >= Duration::from_secs(1));
        assert_eq!(
            budget(target, 0.7, Priority::Normal, &known),
            Duration::from_millis(80)
        );
        assert_eq!(
            budget(target, 0.7, Priority::Low, &known),
            Duration::from_millis(20)
        );
        assert_eq!(
            budget(target, 0.7, Priority::Low, &unsure),
            Duration::from_millis(10)
        );
        let slow = Prediction {
            p50_ms: 400.0,
            ..known
        };
        assert_eq!(
            budget(target, 0.7, Priority::Low, &slow),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn query_numbers_are_read_without_fuss() {
        assert!((query_number(Some("page=3&limit=20"), "limit") - 20.0).abs() < f32::EPSILON);
        assert!(query_number(Some("limit=abc"), "limit").abs() < f32::EPSILON);
        assert!(query_number(None, "page").abs() < f32::EPSILON);
    }
}
