// A realistic shopping mix over a catalogue of >= 10,000 products, with constant virtual users:
//   ~70% product detail views (Zipf-skewed: a few products get most views),
//   ~10% list pages (sometimes by category), ~10% searches, ~7% add to cart, ~3% checkout.
// Each virtual user has its own registered account; the products that go into carts get a
// large stock first (admin), so checkouts do not fail for stock.
//
//   k6 run benches/k6/shop.js             (or: make loadtest SCRIPTS=shop.js)
//
// Environment:
//   BASE_URL        server under test (default http://127.0.0.1:3000)
//   ADMIN_TOKEN     admin bearer token, to raise stock (without it checkouts may run out)
//   VUS             constant virtual users (default 50)
//   DURATION        how long (default 60s)
//   USERS           accounts to register (default max(50, VUS); one per virtual user)
//   PRODUCTS        catalogue size the Zipf ranks span (default 10005: 10,000 generated + the 5 fixed products)
//   ID_SOURCE       list: ids from GET /api/products, most popular first, so the most viewed
//                   products are the most popular ones (default; at most 10,000 ids, the
//                   deepest page the API serves); range: ids 1..PRODUCTS
//   ZIPF_S          Zipf exponent of detail views (default 1.1)
//   CART_PRODUCTS   how many of the most viewed products go into carts (default 300)
//   THINK_MS        mean think time between iterations in ms (default 0: as fast as possible)
//   P95_MS          threshold on p95 of all requests (default 500)
//   SUMMARY_DIR     where shop.json goes (default target/k6; must exist: k6 does not create
//                   folders, scripts/loadtest.sh does)
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  ADMIN_TOKEN, BASE_URL, TREND_STATS, envInt, envNumber, isCacheHit, isShed, jsonHeaders, parseSeconds,
  raiseStock, registerUsers, summaryHandler,
} from './common.js';

const VUS = envInt('VUS', 50);
const DURATION = __ENV.DURATION || '60s';
parseSeconds(DURATION, 'DURATION'); // fail early on a malformed value
const USERS = envInt('USERS', Math.max(50, VUS));
const PRODUCTS = envInt('PRODUCTS', 10005);
const ID_SOURCE = __ENV.ID_SOURCE || 'list';
const ZIPF_S = envNumber('ZIPF_S', 1.1, 0);
const CART_PRODUCTS = Math.min(envInt('CART_PRODUCTS', 300), PRODUCTS);
const THINK_MS = envNumber('THINK_MS', 0);
const P95_MS = envNumber('P95_MS', 500, 1);
const STOCK = 1000000;
const MAX_LIST_IDS = 10000; // page * limit <= 10,000
if (ID_SOURCE !== 'list' && ID_SOURCE !== 'range') throw new Error(`ID_SOURCE must be list or range, got '${ID_SOURCE}'`);

const CATEGORIES = ['electronics', 'books', 'home', 'fashion', 'sports', 'toys', 'garden', 'beauty'];
const WORDS = ['laptop', 'headphones', 'lamp', 'novel', 'jacket', 'puzzle', 'serum', 'tent', 'wireless', 'premium'];
const PHRASES = ['wireless headphones', 'premium laptop', 'desk lamp', 'rain jacket', 'camping tent', 'face serum'];

// Zipf(s) over ranks 1..n as a cumulative distribution, computed once per VU in init code.
function zipfCdf(n, s) {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) {
    sum += 1 / Math.pow(k, s);
    cdf[k - 1] = sum;
  }
  for (let i = 0; i < n; i++) cdf[i] /= sum;
  cdf[n - 1] = 1;
  return cdf;
}

// A rank in 1..cdf.length by binary search for the first cumulative weight >= u.
function sampleRank(cdf) {
  const u = Math.random();
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cdf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return lo + 1;
}

const VIEW_CDF = zipfCdf(PRODUCTS, ZIPF_S);
const CART_CDF = zipfCdf(CART_PRODUCTS, ZIPF_S);

const cacheHits = new Counter('cache_hits');
const cacheHitRate = new Rate('cache_hit_rate');
const shedRate = new Rate('shed_rate');
const checkoutSuccess = new Rate('checkout_success');
const TREND_NAMES = {
  detail: 'dur_product_detail',
  list: 'dur_product_list',
  search: 'dur_search',
  cart_add: 'dur_cart_add',
  checkout: 'dur_checkout',
};
const durations = Object.fromEntries(Object.entries(TREND_NAMES).map(([k, name]) => [k, new Trend(name, true)]));

export const options = {
  scenarios: {
    shop: {
      executor: 'constant-vus',
      vus: VUS,
      duration: DURATION,
      gracefulStop: '10s',
    },
  },
  setupTimeout: '180s',
  thresholds: {
    checks: ['rate>0.99'],
    checkout_success: ['rate>0.95'],
    http_req_duration: [`p(95)<${P95_MS}`],
    // Reported, not judged: setup's own requests, left out of the throughput.
    'http_reqs{kind:setup}': ['count>=0'],
  },
  summaryTrendStats: TREND_STATS,
};

function fetchIds(limit) {
  const ids = [];
  const pageSize = 100;
  const pages = Math.ceil(Math.min(limit, MAX_LIST_IDS) / pageSize);
  for (let page = 1; page <= pages; page++) {
    const res = http.get(`${BASE_URL}/api/products?page=${page}&limit=${pageSize}`, {
      tags: { name: 'GET /api/products', kind: 'setup' },
    });
    if (res.status !== 200) throw new Error(`GET /api/products page ${page}: status ${res.status}`);
    const body = res.json();
    for (const p of body.products) ids.push(p.id);
    if (!body.hasMore) break;
  }
  return ids;
}

export function setup() {
  const runId = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  let ids;
  if (ID_SOURCE === 'list') {
    ids = fetchIds(PRODUCTS);
    if (ids.length === 0) throw new Error('the catalogue is empty: seed it (server seed --products 10000)');
  } else {
    ids = Array.from({ length: PRODUCTS }, (_, i) => i + 1);
  }
  if (ids.length < Math.min(PRODUCTS, MAX_LIST_IDS)) {
    console.warn(`only ${ids.length} products listed; expected ${PRODUCTS} (seed with --products 10000)`);
  }
  // The most viewed products are the ones shoppers put in carts.
  const cartIds = raiseStock(http, ids.slice(0, CART_PRODUCTS), STOCK);
  const tokens = registerUsers(http, runId, USERS, Math.ceil(USERS / 2));
  console.log(`setup: ${ids.length} product ids (${ID_SOURCE}), ${cartIds.length} stocked for carts, ${tokens.length} users`);
  return { runId, ids, cartIds: cartIds.length ? cartIds : ids.slice(0, CART_PRODUCTS), tokens };
}

// Per virtual user: items we put in our (own) cart since the last checkout.
let cartItems = 0;
let warnings = 0;

function note(what, res) {
  if (warnings < 3) {
    warnings++;
    console.warn(`VU ${exec.vu.idInTest}: ${what}: status ${res.status} ${String(res.body || res.error).slice(0, 200)}`);
  }
}

function read(kind, url, name) {
  const res = http.get(url, { tags: { name, endpoint: kind } });
  durations[kind].add(res.timings.duration);
  const shed = isShed(res);
  shedRate.add(shed);
  if (res.status === 200) {
    const hit = isCacheHit(res);
    cacheHitRate.add(hit, { endpoint: kind });
    if (hit) cacheHits.add(1, { endpoint: kind });
  }
  const ok = check(res, { [`${kind}: 200 (or shed)`]: (r) => r.status === 200 || shed });
  if (!ok) note(kind, res);
  return res;
}

function addToCart(data, token) {
  const rank = sampleRank(CART_CDF);
  const productId = data.cartIds[(rank - 1) % data.cartIds.length];
  const res = http.post(
    `${BASE_URL}/api/cart`,
    JSON.stringify({ productId, quantity: 1 + Math.floor(Math.random() * 2) }),
    { headers: jsonHeaders(token), tags: { name: 'POST /api/cart', endpoint: 'cart_add' } },
  );
  durations.cart_add.add(res.timings.duration);
  shedRate.add(isShed(res));
  const ok = check(res, { 'cart_add: 200': (r) => r.status === 200 });
  if (ok) cartItems++;
  else note('cart add', res);
  return ok;
}

function checkout(data, token) {
  if (cartItems === 0 && !addToCart(data, token)) {
    checkoutSuccess.add(false);
    return;
  }
  const headers = jsonHeaders(token);
  headers['Idempotency-Key'] = `shop-${data.runId}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const res = http.post(
    `${BASE_URL}/api/checkout`,
    JSON.stringify({
      paymentMethod: 'credit_card',
      shippingAddress: { street: '1 Load Test Way', city: 'Benchville', country: 'NL' },
    }),
    { headers, tags: { name: 'POST /api/checkout', endpoint: 'checkout' } },
  );
  durations.checkout.add(res.timings.duration);
  shedRate.add(isShed(res));
  const ok = check(res, { 'checkout: 201': (r) => r.status === 201 });
  checkoutSuccess.add(ok);
  if (ok || res.status === 422) {
    cartItems = 0;
  } else {
    note('checkout', res);
    if (res.status === 409) {
      // Out of stock: empty the cart so the next checkout starts clean.
      http.del(`${BASE_URL}/api/cart`, null, { headers: jsonHeaders(token), tags: { name: 'DELETE /api/cart', endpoint: 'cart_clear' } });
      cartItems = 0;
    }
  }
}

// Cumulative shares of detail views, list pages, searches and cart adds; the rest checks out.
export const MIXES = {
  browse: [0.7, 0.8, 0.9, 0.97],
  search: [0.3, 0.4, 0.9, 0.97],
  cart: [0.4, 0.5, 0.6, 0.9],
};

// One shopper's step, drawn from `mix` (see MIXES).
export function step(data, mix = MIXES.browse) {
  const token = data.tokens[(exec.vu.idInTest - 1) % data.tokens.length];
  const r = Math.random();
  if (r < mix[0]) {
    const id = data.ids[(sampleRank(VIEW_CDF) - 1) % data.ids.length];
    read('detail', `${BASE_URL}/api/products/${id}`, 'GET /api/products/{id}');
  } else if (r < mix[1]) {
    // Shoppers mostly stay on the first pages.
    const page = 1 + Math.min(49, Math.floor(-Math.log(1 - Math.random()) * 2));
    const category = Math.random() < 0.5 ? `&category=${CATEGORIES[Math.floor(Math.random() * CATEGORIES.length)]}` : '';
    read('list', `${BASE_URL}/api/products?page=${page}&limit=20${category}`, 'GET /api/products');
  } else if (r < mix[2]) {
    const q = Math.random() < 0.8 ? WORDS[Math.floor(Math.random() * WORDS.length)] : PHRASES[Math.floor(Math.random() * PHRASES.length)];
    read('search', `${BASE_URL}/api/search?q=${encodeURIComponent(q)}`, 'GET /api/search');
  } else if (r < mix[3]) {
    addToCart(data, token);
  } else {
    checkout(data, token);
  }
}

export default function (data) {
  step(data);
  if (THINK_MS > 0) sleep((-Math.log(1 - Math.random()) * THINK_MS) / 1000);
}

export const handleSummary = summaryHandler('shop', (data) => {
  const m = data.metrics;
  const seconds = data.state.testRunDurationMs / 1000;
  const derived = {};
  const setupReqs = m['http_reqs{kind:setup}'] ? m['http_reqs{kind:setup}'].values.count : 0;
  if (m.http_reqs) derived.requests_per_second = (m.http_reqs.values.count - setupReqs) / parseSeconds(DURATION);
  let total = 0;
  const counts = {};
  for (const [kind, name] of Object.entries(TREND_NAMES)) {
    const metric = m[name];
    counts[kind] = metric ? metric.values.count : 0;
    total += counts[kind];
  }
  for (const [kind, count] of Object.entries(counts)) {
    derived[`share_${kind}`] = total ? `${((100 * count) / total).toFixed(1)}%` : '-';
  }
  if (m.cache_hit_rate) derived.cache_hit_rate = `${(100 * m.cache_hit_rate.values.rate).toFixed(2)}%`;
  derived.duration_s = seconds;
  return derived;
});
