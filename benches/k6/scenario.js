// One scenario of the evaluation suite (scripts/evaluate.sh, `make evaluate`): open-model
// arrivals (requests arrive at a rate, whether or not the server keeps up) over a shopping mix,
// with one background retrain forced after the warm-up.
//
// Environment:
//   ARRIVAL      steady | bursty (RATE, with 3 x RATE bursts of 5 s every 15 s) | monday (from
//                RATE/4 up to 1.5 x RATE over the run) (default steady)
//   RATE         requests per second (default 150)
//   MIX          browse | search | cart (shop.js MIXES; default browse)
//   MIX_LATER    the mix after half the run (default: MIX; set it for a shifting mix)
//   DURATION     how long, warm-up included (default 180s)
//   WARMUP       seconds before the forced retrain (default 60; 0: no retrain)
//   SEED         random seed of the run (default 1): what each virtual user asks for, in order
//   ADMIN_TOKEN  admin bearer token (required: the retrain is an admin endpoint)
//   PRODUCTS, ZIPF_S, USERS, ...: as for shop.js
// The retrain's verdict goes to SUMMARY_DIR/scenario-retrain.json.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { ADMIN_TOKEN, BASE_URL, SUMMARY_DIR, envInt, envNumber, jsonHeaders, parseSeconds } from './common.js';
import { MIXES, setup as shopSetup, step } from './shop.js';

const ARRIVAL = __ENV.ARRIVAL || 'steady';
const RATE = envNumber('RATE', 150, 1);
const MIX = __ENV.MIX || 'browse';
const MIX_LATER = __ENV.MIX_LATER || MIX;
const DURATION = __ENV.DURATION || '180s';
const SECONDS = parseSeconds(DURATION, 'DURATION');
const WARMUP = envInt('WARMUP', 60, 0);
// k6 1.x has no seeded Math.random (options.randomSeed is gone), so each virtual user gets its
// own xorshift32 generator (Marsaglia's shifts 13, 17, 5), seeded from SEED and its number: a run
// asks for the same things in the same order each time (when the server answers still varies).
const SEED = envInt('SEED', 1);
function xorshift32(seed) {
  let x = (seed >>> 0) || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}
Math.random = xorshift32(SEED * 100003 + __VU * 7919 + 1);
if (!MIXES[MIX] || !MIXES[MIX_LATER]) throw new Error(`MIX and MIX_LATER must be one of ${Object.keys(MIXES)}`);
if (!ADMIN_TOKEN) throw new Error('ADMIN_TOKEN is required (the retrain is an admin endpoint)');

function arrivals() {
  const base = { exec: 'shopping', timeUnit: '1s', preAllocatedVUs: 50, maxVUs: 400, gracefulStop: '10s' };
  if (ARRIVAL === 'steady') {
    return { ...base, executor: 'constant-arrival-rate', rate: RATE, duration: DURATION };
  }
  const stages = [];
  if (ARRIVAL === 'bursty') {
    for (let t = 0; t < SECONDS; t += 15) {
      stages.push({ target: RATE, duration: '9s' }, { target: 3 * RATE, duration: '1s' },
        { target: 3 * RATE, duration: '4s' }, { target: RATE, duration: '1s' });
    }
  } else if (ARRIVAL === 'monday') {
    stages.push({ target: 1.5 * RATE, duration: DURATION });
  } else {
    throw new Error(`ARRIVAL must be steady, bursty or monday, got '${ARRIVAL}'`);
  }
  const start = ARRIVAL === 'monday' ? Math.max(1, Math.round(RATE / 4)) : RATE;
  return { ...base, executor: 'ramping-arrival-rate', startRate: start, stages };
}

const scenarios = { shop: arrivals() };
if (WARMUP > 0) {
  scenarios.retrain = {
    executor: 'per-vu-iterations', vus: 1, iterations: 1, exec: 'retrain',
    startTime: `${WARMUP}s`, maxDuration: `${Math.max(60, SECONDS - WARMUP)}s`,
  };
}

export const options = {
  scenarios,
  setupTimeout: '180s',
  // Judged by the evaluation, not here: an overload or incident scenario sheds on purpose.
  thresholds: { checks: ['rate>=0'] },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
};

export function setup() {
  return shopSetup();
}

export function shopping(data) {
  const elapsed = (Date.now() - exec.scenario.startTime) / 1000;
  step(data, MIXES[elapsed < SECONDS / 2 ? MIX : MIX_LATER]);
}

export function retrain() {
  const res = http.post(`${BASE_URL}/api/ml-metrics/retrain`, '{}', {
    headers: jsonHeaders(ADMIN_TOKEN), timeout: '300s', tags: { name: 'POST /api/ml-metrics/retrain' },
  });
  check(res, { 'retrain: 200': (r) => r.status === 200 });
  console.log(`retrain: ${res.status} ${res.body}`);
}

export function handleSummary(data) {
  return { [`${SUMMARY_DIR}/scenario.json`]: JSON.stringify(data, null, 1) };
}
