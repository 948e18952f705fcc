// Checkout load through a crash (scripts/crash.sh kills PostgreSQL or the server under it and
// starts it again). Each virtual user is a shopper who adds a product to the cart and checks out with
// its own Idempotency-Key, as a careful client does: a 503 is retried after its Retry-After with
// the same key (a 409 idempotency_key_in_progress too), so an order is placed at most once
// however the outage cut it. Every order the server acknowledged with 201 is printed as
// `ACK <id>` for the script to look up after the restart; statuses are counted.
//
//   scripts/crash.sh   (make crash), which passes:
//   VUS         shoppers (default 20)
//   DURATION    how long they shop (default 60s)
//   BASE_URL, ADMIN_TOKEN (required: stock is an admin endpoint), SUMMARY_DIR as elsewhere
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  ADMIN_TOKEN, BASE_URL, envInt, jsonHeaders, parseSeconds, raiseStock, registerUsers, secondsStr, summaryHandler,
} from './common.js';

const VUS = envInt('VUS', 20);
const SECONDS = parseSeconds(__ENV.DURATION || '60s', 'DURATION');
// A shopper gives up on one checkout after this many tries (an outage lasts seconds).
const MAX_TRIES = 60;

const acked = new Counter('crash_orders_acknowledged');
const serverErrors = new Counter('crash_status_500');
const unavailable = new Counter('crash_status_503');
const withoutRetryAfter = new Counter('crash_503_without_retry_after');
const transportErrors = new Counter('crash_transport_errors');
const abandoned = new Counter('crash_checkouts_abandoned');
// A checkout of a cart just filled that answered cart_empty: an order placed by an earlier try
// that the key did not replay.
const cartEmpty = new Counter('crash_cart_empty_on_retry');

export const options = {
  scenarios: {
    shoppers: { executor: 'constant-vus', vus: VUS, duration: secondsStr(SECONDS), gracefulStop: '90s' },
  },
  setupTimeout: '120s',
};

export function setup() {
  if (!ADMIN_TOKEN) throw new Error('ADMIN_TOKEN is required (stock is an admin endpoint)');
  const res = http.get(`${BASE_URL}/api/products?limit=20`);
  if (res.status !== 200) throw new Error(`GET /api/products: status ${res.status}`);
  const productIds = raiseStock(http, res.json('products').map((p) => p.id), 1000000);
  if (productIds.length === 0) throw new Error('could not stock any product');
  const tokens = registerUsers(http, `${Date.now()}-${Math.floor(Math.random() * 1e6)}`, VUS, VUS);
  return { tokens, productIds };
}

/** Counts a response; true when it says "come back" (503, or the key still in progress). */
function again(res) {
  if (res.status === 0) {
    transportErrors.add(1);
    return true;
  }
  if (res.status >= 500 && res.status !== 503) serverErrors.add(1);
  if (res.status === 503) {
    unavailable.add(1);
    if (res.headers['Retry-After'] === undefined) withoutRetryAfter.add(1);
    return true;
  }
  return res.status === 409 && String(res.body).includes('idempotency_key_in_progress');
}

/** Sends `request` until it is not told to come back, or MAX_TRIES; the last response. */
function persist(request) {
  let res;
  for (let i = 0; i < MAX_TRIES; i++) {
    res = request();
    if (!again(res)) return res;
    sleep(1);
  }
  return res;
}

export default function (data) {
  const token = data.tokens[(__VU - 1) % data.tokens.length];
  const product = data.productIds[Math.floor(Math.random() * data.productIds.length)];
  const headers = jsonHeaders(token);
  const cart = persist(() => http.post(`${BASE_URL}/api/cart`, JSON.stringify({ productId: product, quantity: 1 }), { headers, timeout: '20s' }));
  if (cart.status !== 200 && cart.status !== 201) return;
  const key = `crash-${__VU}-${__ITER}-${Date.now()}`;
  const body = JSON.stringify({
    paymentMethod: 'credit_card',
    shippingAddress: { street: '1 Crash Lane', city: 'Bangkok', country: 'Thailand' },
  });
  const res = persist(() => http.post(`${BASE_URL}/api/checkout`, body, {
    headers: { ...headers, 'Idempotency-Key': key }, timeout: '20s',
  }));
  if (res.status === 201) {
    acked.add(1);
    console.log(`ACK ${res.json('id')}`);
  } else if (res.status === 422 && String(res.body).includes('cart_empty')) {
    cartEmpty.add(1);
  } else if (again(res)) {
    abandoned.add(1);
  }
}

export const handleSummary = summaryHandler('crash');
