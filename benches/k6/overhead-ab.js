// Optimizer overhead side by side: several servers (one per configuration) loaded at the same
// time in one run, each by its own closed-loop group of VUs on the uncached database route
// GET /api/cart (a session lookup and a cart query per request). Run one after another, as
// overhead.js is, the servers meet different phases of a shared machine (here throughput moved
// by ±25% between identical runs); side by side they share them, so the ratio of their
// throughputs is the cost of what differs between them.
//
//   SHOP_CONFIGS="off=benches/k6/configs/off.toml onnx=benches/k6/configs/onnx-no-drift.toml" \
//     scripts/loadtest.sh overhead-ab.js
//
// Environment: TARGETS (name=url,...; scripts/loadtest.sh sets it from SHOP_CONFIGS; the first
// is the baseline), VUS per target (default 16), DURATION (default 60s), SUMMARY_DIR.
import http from 'k6/http';
import { check } from 'k6';
import { TREND_STATS, envInt, jsonHeaders, registerUsers, summaryHandler } from './common.js';

const VUS = envInt('VUS', 16);
const DURATION = __ENV.DURATION || '60s';

/** [[name, url], ...] from TARGETS. */
function parseTargets(text) {
  if (!text) throw new Error('TARGETS must name the servers, e.g. off=http://127.0.0.1:3401,onnx=http://127.0.0.1:3402');
  return text.split(',').map((entry) => {
    const at = entry.indexOf('=');
    const name = entry.slice(0, at);
    if (at < 1 || !/^[a-z0-9-]+$/.test(name)) throw new Error(`TARGETS entries look like name=url, got '${entry}'`);
    return [name, entry.slice(at + 1).replace(/\/+$/, '')];
  });
}

const TARGETS = parseTargets(__ENV.TARGETS);

const scenarios = {};
const thresholds = {};
for (const [name, url] of TARGETS) {
  scenarios[name] = {
    executor: 'constant-vus',
    vus: VUS,
    duration: DURATION,
    exec: 'cart',
    env: { TARGET_NAME: name, TARGET_URL: url },
    tags: { target: name },
  };
  // Per-target sub-metrics in the summary; errors fail the run.
  thresholds[`http_reqs{target:${name}}`] = ['count>=0'];
  thresholds[`http_req_duration{target:${name}}`] = ['med>=0'];
  thresholds[`http_req_failed{target:${name}}`] = ['rate<0.01'];
}

export const options = { scenarios, thresholds, summaryTrendStats: TREND_STATS };

export function setup() {
  // Each server registers its own users, so each pays the same password hashing.
  const tokens = {};
  for (const [name, url] of TARGETS) {
    tokens[name] = registerUsers(http, `ab${Date.now()}-${name}`, VUS, VUS, 10, url);
  }
  return { tokens };
}

export function cart(data) {
  const tokens = data.tokens[__ENV.TARGET_NAME];
  const token = tokens[(__VU - 1) % tokens.length];
  const res = http.get(`${__ENV.TARGET_URL}/api/cart`, { headers: jsonHeaders(token) });
  check(res, { 'status is 200': (r) => r.status === 200 });
}

function derive(data) {
  const derived = {};
  const count = (name) => data.metrics[`http_reqs{target:${name}}`].values.count;
  const base = count(TARGETS[0][0]);
  for (const [name] of TARGETS) {
    derived[`${name} requests`] = String(count(name));
    derived[`${name} / ${TARGETS[0][0]}`] = base ? `${((100 * count(name)) / base).toFixed(1)}%` : '-';
  }
  return derived;
}

export const handleSummary = summaryHandler('overhead-ab', derive);
