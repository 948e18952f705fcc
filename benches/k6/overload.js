// Overload and recovery, with arrival rates (an open model: requests keep coming whether or not
// the server keeps up). Three phases, each with two request kinds:
//   baseline  (~20 s) at BASE_RATE     checkouts + analytics
//   overload  (~30 s) at RATE          same mix, RATE defaults to 2 x CAPACITY
//   recovery  (~20 s) at BASE_RATE     same mix
// Checkouts are critical: a registered user adds a product to the cart, then checks out with an
// Idempotency-Key. Analytics (admin) are low priority: an overloaded server may shed them with
// 503 + Retry-After, and should keep checkouts fast and successful.
//
// Reported per phase (tags phase and kind on every request): checkout success rate (201) and
// p99, analytics 503 share and the latency of those 503s, requests per second, dropped
// iterations (no free virtual user: the server fell behind by more than MAX_VUS requests);
// plus the time to recover, from per-second buckets of the recovery phase (tag sec): the second
// from which on analytics are no longer shed (at most the baseline's shed share + 5 points),
// from which on their p95 stays settled, and from which on it stays within 2x of the
// baseline's; and both per-second series, to judge by eye. The cost of analytics grows with the orders they cover: with
// ANALYTICS_WINDOW=30d they get slower as runs add orders, and the baseline itself may shed.
//
// Thresholds (exit 99 when crossed) are the goal of priority admission: checkouts keep
// succeeding (MIN_CHECKOUT_SUCCESS) and fast (CHECKOUT_P99_MS) in every phase.
//
//   k6 run benches/k6/overload.js          (or: make loadtest SCRIPTS=overload.js)
//
// Environment:
//   BASE_URL, ADMIN_TOKEN (required), SUMMARY_DIR as in the other scripts
//   CAPACITY          requests per second the server is expected to sustain (default 400)
//   RATE              requests per second in the overload phase (default 2 x CAPACITY)
//   BASE_RATE         requests per second in baseline and recovery (default CAPACITY / 4)
//   CHECKOUT_SHARE    share of requests that belong to checkouts (default 0.5); a checkout
//                     iteration makes two requests (add to cart, checkout)
//   PHASE_SECONDS     length of every phase; or BASELINE_SECONDS (20), OVERLOAD_SECONDS (30),
//                     RECOVERY_SECONDS (20)
//   MAX_VUS           most virtual users per scenario (default 150); iterations that find none
//                     free are dropped and counted in dropped_iterations
//   USERS             accounts registered in setup (default 300; register allows 600/min)
//   STOCK_PRODUCTS    products stocked up for checkouts (default 200)
//   REQ_TIMEOUT       per-request timeout (default 10s)
//   ANALYTICS_WINDOW  setup: setup places SETUP_ORDERS orders and every analytics request
//                     covers exactly those, so an analytics request costs the same in every
//                     phase and "back to normal" compares like with like (default);
//                     run: this run's orders (from = setup time): they grow through the run,
//                     so recovery's analytics read many times the orders baseline's did;
//                     30d: the API's default window, the last 30 days
//   SETUP_ORDERS      orders placed in setup for ANALYTICS_WINDOW=setup (default 500)
//   ANALYTICS_QUERY   more query parameters for /api/analytics, e.g. 'top=5'
//   MIN_CHECKOUT_SUCCESS  threshold on the checkout success rate in every phase (default 0.99)
//   CHECKOUT_P99_MS   threshold on checkout p99 in every phase (default 1000)
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  ADMIN_TOKEN, BASE_URL, TREND_STATS, envInt, envNumber, isShed, jsonHeaders, raiseStock, registerUsers,
  secondsStr, summaryHandler,
} from './common.js';

const CAPACITY = envNumber('CAPACITY', 400, 1);
const RATE = envNumber('RATE', 2 * CAPACITY, 1);
const BASE_RATE = envNumber('BASE_RATE', CAPACITY / 4, 1);
const CHECKOUT_SHARE = envNumber('CHECKOUT_SHARE', 0.5, 0);
if (CHECKOUT_SHARE > 1) throw new Error('CHECKOUT_SHARE must be between 0 and 1');
const PHASE = envNumber('PHASE_SECONDS', 0, 0);
const SECONDS = {
  baseline: Math.max(1, Math.round(envNumber('BASELINE_SECONDS', PHASE || 20, 1))),
  overload: Math.max(1, Math.round(envNumber('OVERLOAD_SECONDS', PHASE || 30, 1))),
  recovery: Math.max(1, Math.round(envNumber('RECOVERY_SECONDS', PHASE || 20, 1))),
};
const MAX_VUS = envInt('MAX_VUS', 150);
const USERS = envInt('USERS', 300);
const STOCK_PRODUCTS = envInt('STOCK_PRODUCTS', 200);
const REQ_TIMEOUT = __ENV.REQ_TIMEOUT || '10s';
const MIN_CHECKOUT_SUCCESS = envNumber('MIN_CHECKOUT_SUCCESS', 0.99, 0);
const CHECKOUT_P99_MS = envNumber('CHECKOUT_P99_MS', 1000, 1);
const ANALYTICS_WINDOW = __ENV.ANALYTICS_WINDOW || 'setup';
if (!['setup', 'run', '30d'].includes(ANALYTICS_WINDOW)) throw new Error(`ANALYTICS_WINDOW must be setup, run or 30d, got '${ANALYTICS_WINDOW}'`);
const SETUP_ORDERS = envInt('SETUP_ORDERS', 500);
const ANALYTICS_QUERY = (__ENV.ANALYTICS_QUERY || '').replace(/^\?/, '');
const PHASES = ['baseline', 'overload', 'recovery'];
const STOCK = 1000000;

const checkoutSuccess = new Rate('checkout_success');
const checkoutDuration = new Trend('checkout_duration', true);
const checkoutFail = new Counter('checkout_fail');
const analyticsShed = new Rate('analytics_shed');
const analyticsDuration = new Trend('analytics_duration', true);
const analyticsShedDuration = new Trend('analytics_shed_duration', true);
const recoveryShed = new Rate('recovery_analytics_shed');
const recoveryDuration = new Trend('recovery_analytics_duration', true);

// Iterations per second for one kind in one phase, from requests per second.
function rates(requestsPerSecond) {
  return {
    checkout: Math.round((requestsPerSecond * CHECKOUT_SHARE) / 2),
    analytics: Math.round(requestsPerSecond * (1 - CHECKOUT_SHARE)),
  };
}

const PHASE_RATES = { baseline: rates(BASE_RATE), overload: rates(RATE), recovery: rates(BASE_RATE) };

function buildScenarios() {
  const scenarios = {};
  let start = 0;
  for (const phase of PHASES) {
    for (const kind of ['checkout', 'analytics']) {
      const rate = PHASE_RATES[phase][kind];
      if (rate < 1) continue;
      scenarios[`${phase}_${kind}`] = {
        executor: 'constant-arrival-rate',
        exec: kind === 'checkout' ? 'checkoutFlow' : 'analytics',
        rate,
        timeUnit: '1s',
        duration: secondsStr(SECONDS[phase]),
        startTime: `${start}s`,
        preAllocatedVUs: Math.min(MAX_VUS, Math.max(2, Math.ceil(rate / 10))),
        maxVUs: MAX_VUS,
        gracefulStop: '5s',
        tags: { phase, kind },
      };
    }
    start += SECONDS[phase];
  }
  return scenarios;
}

const thresholds = {
  dropped_iterations: ['count>=0'],
};
for (const phase of PHASES) {
  if (PHASE_RATES[phase].checkout >= 1) {
    thresholds[`checkout_success{phase:${phase}}`] = [`rate>=${MIN_CHECKOUT_SUCCESS}`];
    thresholds[`checkout_duration{phase:${phase}}`] = [`p(99)<${CHECKOUT_P99_MS}`];
  }
  thresholds[`http_reqs{phase:${phase}}`] = ['count>=0'];
  // dropped_iterations carries the scenario's name but not its tags.
  for (const kind of ['checkout', 'analytics']) thresholds[`dropped_iterations{scenario:${phase}_${kind}}`] = ['count>=0'];
  thresholds[`analytics_shed{phase:${phase}}`] = ['rate>=0'];
  thresholds[`analytics_duration{phase:${phase}}`] = ['max>=0'];
  thresholds[`analytics_shed_duration{phase:${phase}}`] = ['max>=0'];
}
for (const reason of ['cart', 'timeout', 'stock', 'empty', 'shed', 'other']) {
  thresholds[`checkout_fail{reason:${reason}}`] = ['count>=0'];
}
for (let sec = 0; sec < SECONDS.recovery; sec++) {
  thresholds[`recovery_analytics_shed{sec:${sec}}`] = ['rate>=0'];
  thresholds[`recovery_analytics_duration{sec:${sec}}`] = ['max>=0'];
}

export const options = {
  scenarios: buildScenarios(),
  setupTimeout: '180s',
  thresholds,
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  if (!ADMIN_TOKEN) throw new Error('ADMIN_TOKEN is required (analytics and stock are admin endpoints)');
  const runId = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  const ids = [];
  for (let page = 1; ids.length < STOCK_PRODUCTS && page <= 100; page++) {
    const res = http.get(`${BASE_URL}/api/products?page=${page}&limit=100`, { tags: { name: 'GET /api/products', kind: 'setup' } });
    if (res.status !== 200) throw new Error(`GET /api/products page ${page}: status ${res.status}`);
    const body = res.json();
    for (const p of body.products) ids.push(p.id);
    if (!body.hasMore) break;
  }
  const productIds = raiseStock(http, ids.slice(0, STOCK_PRODUCTS), STOCK);
  if (productIds.length === 0) throw new Error('could not stock any product for checkouts');
  const tokens = registerUsers(http, runId, USERS, Math.ceil(USERS / 2));
  const plan = PHASES.map((p) => `${p} ${SECONDS[p]}s: ${PHASE_RATES[p].checkout} checkouts/s + ${PHASE_RATES[p].analytics} analytics/s`);
  console.log(`setup: ${productIds.length} products stocked, ${tokens.length} users; ${plan.join('; ')}`);
  const query = [];
  const setupStart = new Date().toISOString();
  if (ANALYTICS_WINDOW === 'setup') {
    // Orders for the analytics to read, spread over the users; then the window closes.
    for (let i = 0; i < SETUP_ORDERS; i++) {
      const headers = jsonHeaders(tokens[i % tokens.length]);
      const productId = productIds[i % productIds.length];
      const add = http.post(`${BASE_URL}/api/cart`, JSON.stringify({ productId, quantity: 1 }), { headers, tags: { kind: 'setup' } });
      if (add.status !== 200) throw new Error(`setup order ${i}: cart add: status ${add.status}`);
      const order = http.post(`${BASE_URL}/api/checkout`, JSON.stringify({
        paymentMethod: 'credit_card',
        shippingAddress: { street: '1 Setup Way', city: 'Benchville', country: 'NL' },
      }), { headers, tags: { kind: 'setup' } });
      if (order.status !== 201) throw new Error(`setup order ${i}: checkout: status ${order.status}`);
    }
    query.push(`from=${encodeURIComponent(setupStart)}`, `to=${encodeURIComponent(new Date().toISOString())}`);
  }
  if (ANALYTICS_WINDOW === 'run') query.push(`from=${encodeURIComponent(setupStart)}`);
  if (ANALYTICS_QUERY) query.push(ANALYTICS_QUERY);
  const analyticsUrl = `${BASE_URL}/api/analytics${query.length ? `?${query.join('&')}` : ''}`;
  const probe = http.get(analyticsUrl, { headers: jsonHeaders(ADMIN_TOKEN), tags: { name: 'GET /api/analytics', kind: 'setup' } });
  if (probe.status !== 200) throw new Error(`GET ${analyticsUrl}: status ${probe.status} ${String(probe.body).slice(0, 200)}`);
  return { runId, tokens, productIds, analyticsUrl };
}

let warnings = 0;
function note(what, res) {
  if (warnings < 3) {
    warnings++;
    console.warn(`VU ${exec.vu.idInTest}: ${what}: status ${res.status} ${String(res.body || res.error).slice(0, 200)}`);
  }
}

function failReason(res) {
  if (res.status === 0) return 'timeout';
  if (res.status === 409) return 'stock';
  if (res.status === 422) return 'empty';
  if (res.status === 503) return 'shed';
  return 'other';
}

// Critical: add one product to the cart, then check out. Each virtual user has its own account
// (while there are more accounts than virtual users; beyond that, accounts are shared and a
// concurrent checkout of the same account can empty the cart: reason "empty").
export function checkoutFlow(data) {
  const token = data.tokens[(exec.vu.idInTest - 1) % data.tokens.length];
  const headers = jsonHeaders(token);
  const productId = data.productIds[Math.floor(Math.random() * data.productIds.length)];
  const params = { headers, timeout: REQ_TIMEOUT, tags: { name: 'POST /api/cart' } };
  const add = http.post(`${BASE_URL}/api/cart`, JSON.stringify({ productId, quantity: 1 }), params);
  if (!check(add, { 'cart add: 200': (r) => r.status === 200 })) {
    checkoutSuccess.add(false);
    checkoutFail.add(1, { reason: 'cart' });
    note('cart add', add);
    return;
  }
  headers['Idempotency-Key'] = `overload-${data.runId}-${exec.scenario.name}-${exec.scenario.iterationInTest}`;
  const res = http.post(
    `${BASE_URL}/api/checkout`,
    JSON.stringify({
      paymentMethod: 'credit_card',
      shippingAddress: { street: '1 Load Test Way', city: 'Benchville', country: 'NL' },
    }),
    { headers, timeout: REQ_TIMEOUT, tags: { name: 'POST /api/checkout' } },
  );
  checkoutDuration.add(res.timings.duration);
  const ok = check(res, { 'checkout: 201': (r) => r.status === 201 });
  checkoutSuccess.add(ok);
  if (!ok) {
    checkoutFail.add(1, { reason: failReason(res) });
    note('checkout', res);
  }
}

// Low priority: the admin's analytics report. 200, or 503 + Retry-After when shed.
export function analytics(data) {
  const res = http.get(data.analyticsUrl, {
    headers: jsonHeaders(ADMIN_TOKEN),
    timeout: REQ_TIMEOUT,
    tags: { name: 'GET /api/analytics' },
  });
  const shed = isShed(res);
  analyticsShed.add(shed);
  analyticsDuration.add(res.timings.duration);
  if (shed) analyticsShedDuration.add(res.timings.duration);
  if (exec.scenario.name === 'recovery_analytics') {
    const sec = Math.floor((Date.now() - exec.scenario.startTime) / 1000);
    if (sec >= 0 && sec < SECONDS.recovery) {
      recoveryShed.add(shed, { sec: String(sec) });
      recoveryDuration.add(res.timings.duration, { sec: String(sec) });
    }
  }
  if (!check(res, { 'analytics: 200 or shed': (r) => r.status === 200 || shed })) note('analytics', res);
}

// First recovery second from which on `ok(sec)` holds for every later second with data.
function firstSettledSecond(ok, hasData) {
  let first = null;
  for (let sec = SECONDS.recovery - 1; sec >= 0; sec--) {
    if (!hasData(sec)) continue;
    if (ok(sec)) first = sec;
    else break;
  }
  return first;
}

export const handleSummary = summaryHandler('overload', { hide: /\{sec:\d+\}$/ }, (data) => {
  const m = data.metrics;
  const v = (key, stat) => (m[key] ? m[key].values[stat] : undefined);
  const derived = {};
  for (const phase of PHASES) {
    const reqs = v(`http_reqs{phase:${phase}}`, 'count');
    derived[`${phase}_requests_per_s`] = reqs === undefined ? '-' : reqs / SECONDS[phase];
    const success = v(`checkout_success{phase:${phase}}`, 'rate');
    derived[`${phase}_checkout_success`] = success === undefined ? '-' : `${(100 * success).toFixed(2)}%`;
    derived[`${phase}_checkout_p99_ms`] = v(`checkout_duration{phase:${phase}}`, 'p(99)') ?? '-';
    const shed = v(`analytics_shed{phase:${phase}}`, 'rate');
    derived[`${phase}_analytics_shed`] = shed === undefined ? '-' : `${(100 * shed).toFixed(2)}%`;
    derived[`${phase}_analytics_p95_ms`] = v(`analytics_duration{phase:${phase}}`, 'p(95)') ?? '-';
    derived[`${phase}_analytics_503_p95_ms`] = v(`analytics_shed_duration{phase:${phase}}`, 'count') ? v(`analytics_shed_duration{phase:${phase}}`, 'p(95)') : '-';
  }
  const hasData = (sec) => {
    const r = m[`recovery_analytics_shed{sec:${sec}}`];
    return r && r.values.passes + r.values.fails > 0;
  };
  // Shedding: over from the second on which the shed share stays at most the baseline's plus
  // 5 points (at least 1%), as a heavy baseline may already shed some analytics.
  const baselineShed = v('analytics_shed{phase:baseline}', 'rate') || 0;
  const shedLimit = Math.max(0.01, baselineShed + 0.05);
  const shedOver = firstSettledSecond((sec) => v(`recovery_analytics_shed{sec:${sec}}`, 'rate') <= shedLimit, hasData);
  derived.time_to_recover_shed_s = shedOver === null ? `not within ${SECONDS.recovery} s` : shedOver;
  derived.recover_shed_limit = `${(100 * shedLimit).toFixed(1)}%`;
  const bySecond = (stat, f) => {
    const out = [];
    for (let sec = 0; sec < SECONDS.recovery; sec++) out.push(hasData(sec) ? f(v(`${stat}{sec:${sec}}`, stat.endsWith('shed') ? 'rate' : 'p(95)')) : '-');
    return out.join(' ');
  };
  derived.recovery_shed_by_second = bySecond('recovery_analytics_shed', (x) => `${Math.round(100 * x)}%`);
  derived.recovery_p95_ms_by_second = bySecond('recovery_analytics_duration', (x) => Math.round(x));
  // Latency: settled when a second's analytics p95 is within 1.5x (or 5 ms) of the steady
  // state, the median p95 of the recovery phase's last third. Not the baseline's: analytics
  // get slower as the run adds orders, so the baseline is not where recovery ends up.
  const p95s = [];
  for (let sec = Math.floor((2 * SECONDS.recovery) / 3); sec < SECONDS.recovery; sec++) {
    if (hasData(sec)) p95s.push(v(`recovery_analytics_duration{sec:${sec}}`, 'p(95)'));
  }
  if (p95s.length) {
    p95s.sort((a, b) => a - b);
    const steady = p95s[Math.floor(p95s.length / 2)];
    const limit = Math.max(1.5 * steady, steady + 5);
    const latencySettled = firstSettledSecond((sec) => v(`recovery_analytics_duration{sec:${sec}}`, 'p(95)') <= limit, hasData);
    derived.time_to_settle_latency_s = latencySettled === null ? `not within ${SECONDS.recovery} s` : latencySettled;
    derived.recovery_steady_analytics_p95_ms = steady;
  }
  // And when (if) it is back within 2x (or 5 ms) of the baseline's p95.
  const baselineP95 = v('analytics_duration{phase:baseline}', 'p(95)');
  if (baselineP95 !== undefined) {
    const limit = Math.max(2 * baselineP95, baselineP95 + 5);
    const back = firstSettledSecond((sec) => v(`recovery_analytics_duration{sec:${sec}}`, 'p(95)') <= limit, hasData);
    derived.time_to_baseline_latency_s = back === null ? `not within ${SECONDS.recovery} s` : back;
  }
  for (const phase of PHASES) {
    for (const kind of ['checkout', 'analytics']) {
      derived[`${phase}_${kind}_dropped`] = v(`dropped_iterations{scenario:${phase}_${kind}}`, 'count') ?? 0;
    }
  }
  return derived;
});
