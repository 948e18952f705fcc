// Optimizer overhead end to end: closed-loop load on an uncached database route
// (GET /api/cart: a session lookup and a cart query per request). Run it once against a server
// with every optimizer feature on and once with them off (SHOP_CONFIG pointing at a TOML file
// that switches them off), then compare http_reqs/s. Figures: docs/benchmarks.md.
//
// Environment: BASE_URL, VUS (default 50), DURATION (default 30s), SUMMARY_DIR.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, TREND_STATS, envInt, jsonHeaders, registerUsers, summaryHandler } from './common.js';

const VUS = envInt('VUS', 50);

export const options = {
  vus: VUS,
  duration: __ENV.DURATION || '30s',
  thresholds: { http_req_failed: ['rate<0.01'] },
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  return { tokens: registerUsers(http, `overhead${Date.now()}`, VUS, VUS) };
}

export default function (data) {
  const token = data.tokens[(__VU - 1) % data.tokens.length];
  const res = http.get(`${BASE_URL}/api/cart`, { headers: jsonHeaders(token) });
  check(res, { 'status is 200': (r) => r.status === 200 });
}

export const handleSummary = summaryHandler('overhead', options);
