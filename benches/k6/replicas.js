// Catalogue reads over a primary and its read replicas (scripts/scaling.sh runs it).
//
// Scenario `reads`: catalogue reads at a constant arrival rate (RATE per second for DURATION):
// product pages, product details and searches, at random. Their latency is `read_duration`.
//
// Scenario `pairs` (WRITERS > 0): writers that each rename a product of their own as the admin,
// then at once read it back with the `x-write-lsn` the write answered with, as a client that
// honours read-your-writes does, and pause PAIR_PAUSE_MS. A read that shows an older name is a
// stale read (`stale_reads`); `pairs` counts the write-then-read pairs. As a control, each
// writer also reads the product once more without the position: `stale_without_position`
// counts those that showed the old name, which says the replica really was behind (were it
// zero, the run could not have caught a broken read-your-writes).
//
// Environment: BASE_URL, ADMIN_TOKEN, RATE (default 150), DURATION (20s), PRODUCTS (how many
// product ids setup() collects from the catalogue to read; default 1000), WRITERS (default 0),
// PAIR_PAUSE_MS (40), SUMMARY_DIR, SUMMARY_NAME (replicas).

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { ADMIN_TOKEN, BASE_URL, TREND_STATS, envInt, jsonHeaders, summaryHandler } from './common.js';

const RATE = envInt('RATE', 150);
const DURATION = __ENV.DURATION || '20s';
const PRODUCTS = envInt('PRODUCTS', 1000);
const WRITERS = envInt('WRITERS', 0, 0);
const PAIR_PAUSE_MS = envInt('PAIR_PAUSE_MS', 40, 0);
const WORDS = ['mouse', 'cable', 'laptop', 'phone', 'wireless', 'keyboard', 'monitor', 'lamp', 'chair', 'book'];

const readDuration = new Trend('read_duration', true);
const staleReads = new Counter('stale_reads');
const pairs = new Counter('pairs');
const failedReads = new Counter('failed_reads');
const staleWithoutPosition = new Counter('stale_without_position');
const failedWrites = new Counter('failed_writes');

const scenarios = {
  reads: {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: Math.max(10, Math.ceil(RATE / 10)),
    maxVUs: Math.max(50, RATE),
    exec: 'read',
  },
};
if (WRITERS > 0) {
  scenarios.pairs = {
    executor: 'constant-vus',
    vus: WRITERS,
    duration: DURATION,
    exec: 'writeThenRead',
  };
}

export const options = {
  scenarios,
  summaryTrendStats: TREND_STATS,
  thresholds: {
    // Every read answers: a replica's trouble must not reach a client.
    failed_reads: ['count==0'],
    failed_writes: ['count==0'],
    stale_reads: ['count==0'],
  },
};

function pick(n) {
  return 1 + Math.floor(Math.random() * n);
}

/** The ids of up to PRODUCTS listed products, from the catalogue itself (ids have gaps). */
export function setup() {
  const ids = [];
  for (let page = 1; ids.length < PRODUCTS && page <= 100; page++) {
    const res = http.get(`${BASE_URL}/api/products?limit=100&page=${page}`, { tags: { name: 'setup' } });
    if (res.status !== 200) break;
    const products = res.json('products');
    if (!products.length) break;
    for (const p of products) ids.push(p.id);
  }
  if (ids.length < Math.max(1, WRITERS)) throw new Error(`only ${ids.length} products listed`);
  return { ids: ids.slice(0, PRODUCTS) };
}

export function read(data) {
  const r = Math.random();
  let res;
  if (r < 0.4) {
    const id = data.ids[pick(data.ids.length) - 1];
    res = http.get(`${BASE_URL}/api/products/${id}`, { tags: { name: 'GET /api/products/{id}' } });
  } else if (r < 0.7) {
    res = http.get(`${BASE_URL}/api/products?page=${pick(20)}&limit=20`, { tags: { name: 'GET /api/products' } });
  } else {
    const q = WORDS[pick(WORDS.length) - 1];
    res = http.get(`${BASE_URL}/api/search?q=${q}&page=${pick(3)}`, { tags: { name: 'GET /api/search' } });
  }
  readDuration.add(res.timings.duration);
  if (!check(res, { 'read answered 200': (x) => x.status === 200 })) {
    failedReads.add(1);
  }
}

export function writeThenRead(data) {
  // Each writer renames a product of its own (among the last WRITERS ids), so no two race on one.
  const id = data.ids[data.ids.length - 1 - ((__VU - 1) % WRITERS)];
  const name = `Renamed ${__VU}-${__ITER}-${Date.now()}`;
  const write = http.patch(`${BASE_URL}/api/products/${id}`, JSON.stringify({ name }), {
    headers: jsonHeaders(ADMIN_TOKEN),
    tags: { name: 'PATCH /api/products/{id}' },
  });
  if (write.status !== 200) {
    failedWrites.add(1);
    return;
  }
  const lsn = write.headers['X-Write-Lsn'];
  const headers = lsn ? { 'x-write-lsn': lsn } : {};
  const back = http.get(`${BASE_URL}/api/products/${id}`, { headers, tags: { name: 'GET /api/products/{id} after a write' } });
  pairs.add(1);
  if (back.status !== 200 || back.json('name') !== name) {
    staleReads.add(1);
  }
  // An empty cookie jar: the VU's own holds the write_lsn cookie the write set.
  const control = http.get(`${BASE_URL}/api/products/${id}`, {
    jar: new http.CookieJar(),
    tags: { name: 'GET /api/products/{id} control' },
  });
  if (control.status === 200 && control.json('name') !== name) {
    staleWithoutPosition.add(1);
  }
  if (PAIR_PAUSE_MS > 0) sleep(PAIR_PAUSE_MS / 1000);
}

export const handleSummary = summaryHandler(__ENV.SUMMARY_NAME || 'replicas', (data) => {
  const m = data.metrics;
  const v = (key, stat) => (m[key] ? m[key].values[stat] : undefined);
  return {
    read_p50_ms: v('read_duration', 'med'),
    read_p99_ms: v('read_duration', 'p(99)'),
    reads: v('read_duration', 'count'),
    failed_reads: (v('failed_reads', 'count') || 0) + (v('failed_writes', 'count') || 0),
    pairs: v('pairs', 'count') || 0,
    stale_reads: v('stale_reads', 'count') || 0,
    stale_without_position: v('stale_without_position', 'count') || 0,
  };
});
