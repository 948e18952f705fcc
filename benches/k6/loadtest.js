// The baseline load test: ramp to 50 then 100 virtual users browsing the product list, and check
// status, the ML headers and latency. k6 exits non-zero when a threshold fails.
//
//   k6 run benches/k6/loadtest.js                      (or: make loadtest)
//
// Environment:
//   BASE_URL        server under test (default http://127.0.0.1:3000)
//   DURATION_SCALE  multiplies every stage's length, e.g. 0.1 for a 12 s smoke run (default 1)
//   SUMMARY_DIR     where the JSON summary goes (default target/k6; must exist, k6 does not
//                   create folders; scripts/loadtest.sh does)
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, TREND_STATS, envNumber, secondsStr, summaryHandler } from './common.js';

const SCALE = envNumber('DURATION_SCALE', 1, 0.001);

export const options = {
  stages: [
    { duration: secondsStr(30 * SCALE), target: 50 },
    { duration: secondsStr(60 * SCALE), target: 100 },
    { duration: secondsStr(30 * SCALE), target: 0 },
  ],
  thresholds: {
    checks: ['rate>0.99'],
    http_req_duration: ['p(95)<200'],
    http_req_failed: ['rate<0.01'],
  },
  summaryTrendStats: TREND_STATS,
};

export default function () {
  const res = http.get(`${BASE_URL}/api/products`);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'has ML headers': (r) => r.headers['X-Ml-Prediction-Confidence'] !== undefined,
    'response time < 200ms': (r) => r.timings.duration < 200,
  });
  sleep(1);
}

export const handleSummary = summaryHandler('loadtest');
