// Traffic for training data: the shop mix of shop.js, plus bursts of /api/stress-test calls that
// are the labelled anomalies the anomaly model must find (the trainer labels a request anomalous
// when its route is GET /api/stress-test). Bursts also slow the shop traffic around them.
//
//   scripts/capture.sh            (or: make capture) starts a server and runs this
//
// Environment (besides shop.js's VUS, THINK_MS, ...):
//   ADMIN_TOKEN        admin bearer token (required: the stress test is an admin endpoint)
//   DURATION           how long (default 120s)
//   BURST_EVERY_S      mean seconds between bursts (default 4)
//   BURST_SIZE         concurrent stress-test calls per burst (default 6)
//   COMPLEXITY_MAX     largest complexity of a stress-test call (default 150; the smallest is 20)
import http from 'k6/http';
import { check, sleep } from 'k6';
import { ADMIN_TOKEN, BASE_URL, envInt, envNumber, parseSeconds } from './common.js';
import shop, { setup as shopSetup } from './shop.js';

const DURATION = __ENV.DURATION || '120s';
parseSeconds(DURATION, 'DURATION');
const VUS = envInt('VUS', 10);
const BURST_EVERY_S = envNumber('BURST_EVERY_S', 4, 1);
const BURST_SIZE = envInt('BURST_SIZE', 6);
const COMPLEXITY_MAX = envInt('COMPLEXITY_MAX', 150, 20);
if (!ADMIN_TOKEN) throw new Error('ADMIN_TOKEN is required (the stress test is an admin endpoint)');

export const options = {
  scenarios: {
    shop: { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'shopping', gracefulStop: '10s' },
    stress: { executor: 'constant-vus', vus: 1, duration: DURATION, exec: 'bursts', gracefulStop: '30s' },
  },
  setupTimeout: '180s',
  thresholds: { checks: ['rate>0.95'] },
};

export function setup() {
  return shopSetup();
}

export function shopping(data) {
  shop(data);
}

// Waits an exponential time with mean BURST_EVERY_S, then fires one burst at once.
export function bursts() {
  sleep(Math.min(4 * BURST_EVERY_S, -Math.log(1 - Math.random()) * BURST_EVERY_S));
  const requests = [];
  for (let i = 0; i < BURST_SIZE; i++) {
    const complexity = 20 + Math.floor(Math.random() * (COMPLEXITY_MAX - 19));
    requests.push(['GET', `${BASE_URL}/api/stress-test?complexity=${complexity}`, null, {
      // The stress test is low priority, and admission would shed most of a burst before it
      // ran; the admin token may raise it, so the anomalies are served and logged.
      headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'x-priority': 'normal' },
      tags: { name: 'GET /api/stress-test' },
      timeout: '60s',
    }]);
  }
  for (const res of http.batch(requests)) {
    check(res, { 'stress: 200 or shed': (r) => r.status === 200 || r.status === 503 });
  }
}
