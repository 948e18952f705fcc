// Helpers shared by the k6 scripts in this folder; a module, not a test of its own.
//
// Everything here is local: no remote imports (k6's textSummary lives on jslib.k6.io, which
// this project cannot reach), so the end-of-test text summary is our own, shorter one.

/** `__ENV[name]` as a number, or `fallback` when unset, empty or not a finite number >= min. */
export function envNumber(name, fallback, min = 0) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min) {
    throw new Error(`${name} must be a number >= ${min}, got '${raw}'`);
  }
  return value;
}

/** `__ENV[name]` as a positive integer, or `fallback`. */
export function envInt(name, fallback, min = 1) {
  return Math.floor(envNumber(name, fallback, min));
}

/** The server under test, without a trailing slash. */
export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:3000').replace(/\/+$/, '');

/** Admin bearer token (admin endpoints), or '' when not given. */
export const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';

/** Where handleSummary writes `<script>.json`. */
export const SUMMARY_DIR = (__ENV.SUMMARY_DIR || 'target/k6').replace(/\/+$/, '');

/** Trend statistics kept for the summary (k6's default has no p(99)). */
export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];

/** A k6 duration string for `seconds` (at least one second). */
export function secondsStr(seconds) {
  return `${Math.max(1, Math.round(seconds))}s`;
}

/** Parses a k6-style duration ("90s", "2m", "1m30s", "500ms", or plain seconds) into seconds. */
export function parseSeconds(text, name = 'duration') {
  const s = String(text).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let consumed = 0;
  let m;
  while ((m = re.exec(s)) !== null) {
    const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    total += Number(m[1]) * unit;
    consumed += m[0].length;
  }
  if (consumed !== s.length || consumed === 0) {
    throw new Error(`${name} must look like 60s, 2m or 1m30s, got '${text}'`);
  }
  return total;
}

/** JSON headers, plus a bearer token when given. */
export function jsonHeaders(token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/** A load-shedding answer: 503 with a Retry-After header. */
export function isShed(res) {
  return res.status === 503 && res.headers['Retry-After'] !== undefined;
}

/** `x-optimization-applied` says the answer came from a cache. */
export function isCacheHit(res) {
  const v = (res.headers['X-Optimization-Applied'] || '').toLowerCase();
  return v === 'cache' || v === 'cache-refresh';
}

/**
 * Registers `count` users with unique e-mails (tag `run` keeps runs apart), `batchSize` at
 * a time, on the server at `baseUrl`. Returns their tokens; throws when fewer than `minimum`
 * succeeded.
 */
export function registerUsers(http, runId, count, minimum, batchSize = 10, baseUrl = BASE_URL) {
  const tokens = [];
  const failures = {};
  for (let start = 0; start < count; start += batchSize) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + batchSize); i++) {
      batch.push({
        method: 'POST',
        url: `${baseUrl}/api/auth/register`,
        body: JSON.stringify({
          email: `k6-${runId}-${i}@loadtest.example`,
          password: `k6-pass-${runId}-${i}`,
        }),
        params: { headers: jsonHeaders(), tags: { name: 'POST /api/auth/register', kind: 'setup' } },
      });
    }
    for (const res of http.batch(batch)) {
      if (res.status === 201) {
        tokens.push(res.json('token'));
      } else {
        failures[res.status] = (failures[res.status] || 0) + 1;
      }
    }
  }
  if (tokens.length < minimum) {
    throw new Error(`registered ${tokens.length} of ${count} users (failures by status: ${JSON.stringify(failures)})`);
  }
  if (tokens.length < count) {
    console.warn(`registered ${tokens.length} of ${count} users (failures by status: ${JSON.stringify(failures)})`);
  }
  return tokens;
}

/**
 * Sets the stock of each product in `ids` to `stock` (admin), `batchSize` at a time.
 * Returns the ids that were updated.
 */
export function raiseStock(http, ids, stock, batchSize = 20) {
  if (!ADMIN_TOKEN) {
    console.warn('ADMIN_TOKEN not set: stock not raised, checkouts may fail with out_of_stock');
    return [];
  }
  const ok = [];
  const failures = {};
  for (let start = 0; start < ids.length; start += batchSize) {
    const chunk = ids.slice(start, start + batchSize);
    const responses = http.batch(
      chunk.map((id) => ({
        method: 'PATCH',
        url: `${BASE_URL}/api/products/${id}`,
        body: JSON.stringify({ stock }),
        params: { headers: jsonHeaders(ADMIN_TOKEN), tags: { name: 'PATCH /api/products/{id}', kind: 'setup' } },
      })),
    );
    responses.forEach((res, i) => {
      if (res.status === 200) ok.push(chunk[i]);
      else failures[res.status] = (failures[res.status] || 0) + 1;
    });
  }
  if (ok.length < ids.length) {
    console.warn(`raised stock of ${ok.length} of ${ids.length} products (failures by status: ${JSON.stringify(failures)})`);
  }
  return ok;
}

// ---------------------------------------------------------------------------
// End-of-test summary: JSON file plus a short text summary on stdout.
// ---------------------------------------------------------------------------

const BUILTIN_SHOWN = ['http_reqs', 'http_req_duration', 'http_req_failed', 'iterations', 'dropped_iterations', 'checks'];
const BUILTIN = new Set([
  ...BUILTIN_SHOWN, 'http_req_blocked', 'http_req_connecting', 'http_req_tls_handshaking', 'http_req_sending',
  'http_req_waiting', 'http_req_receiving', 'iteration_duration', 'data_received', 'data_sent', 'vus', 'vus_max',
  'group_duration', 'setup_data',
]);
// Thresholds that only exist to make k6 report a tagged sub-metric.
const TRIVIAL = /^(rate|count|max|min|avg|med|p\(\d+(\.\d+)?\))>=0$/;

function num(v, digits = 2) {
  if (v === undefined || v === null || Number.isNaN(v)) return '-';
  return Number(v).toFixed(digits);
}

function pct(v) {
  return v === undefined ? '-' : `${(100 * v).toFixed(2)}%`;
}

function describe(metric) {
  const v = metric.values;
  switch (metric.type) {
    case 'trend': {
      if (!v.count && !v.max) return 'no samples';
      const unit = metric.contains === 'time' ? ' ms' : '';
      return `avg ${num(v.avg)}  med ${num(v.med)}  p95 ${num(v['p(95)'])}  p99 ${num(v['p(99)'])}  max ${num(v.max)}${unit}  (n=${v.count ?? '-'})`;
    }
    case 'rate':
      return `${pct(v.rate)}  (${v.passes} of ${v.passes + v.fails})`;
    case 'counter':
      return `${v.count}  (${num(v.rate)}/s)`;
    case 'gauge':
      return `${v.value}  (min ${v.min}, max ${v.max})`;
    default:
      return JSON.stringify(v);
  }
}

function collectChecks(group, out) {
  for (const c of group.checks || []) out.push(c);
  for (const g of group.groups || []) collectChecks(g, out);
  return out;
}

// A sub-metric that saw no samples (k6 still lists those that have a threshold).
function isEmpty(metric) {
  const v = metric.values;
  if (metric.type === 'rate') return v.passes + v.fails === 0;
  if (metric.type === 'trend') return !v.count && !v.max;
  if (metric.type === 'counter') return !v.count;
  return false;
}

/**
 * The text summary: headline numbers, checks, custom metrics, thresholds, derived values.
 * Metrics whose name matches `hide` are left out (they stay in the JSON).
 */
export function textSummary(name, data, derived, hide) {
  const lines = [];
  const seconds = (data.state && data.state.testRunDurationMs) / 1000;
  const m = data.metrics;
  lines.push('');
  lines.push(`=== ${name}: ${num(seconds, 1)} s against ${BASE_URL} ===`);
  for (const key of BUILTIN_SHOWN) {
    if (m[key]) lines.push(`  ${key.padEnd(34)} ${describe(m[key])}`);
  }
  const checks = collectChecks(data.root_group || {}, []);
  if (checks.length) {
    lines.push('  checks:');
    for (const c of checks) {
      const total = c.passes + c.fails;
      const mark = c.fails === 0 ? 'ok  ' : 'FAIL';
      lines.push(`    ${mark} ${c.name.padEnd(40)} ${pct(total ? c.passes / total : 0)}  (${c.passes} of ${total})`);
    }
  }
  const shown = (k) => !(hide && hide.test(k)) && !(k.includes('{') && isEmpty(m[k]));
  // Custom metrics, then tagged sub-metrics of built-in ones (http_reqs{phase:...}).
  const custom = Object.keys(m).filter((k) => !BUILTIN.has(k.split('{')[0]) && shown(k)).sort();
  const tagged = Object.keys(m).filter((k) => k.includes('{') && BUILTIN.has(k.split('{')[0]) && shown(k)).sort();
  if (custom.length + tagged.length) {
    lines.push('  metrics:');
    for (const key of [...custom, ...tagged]) lines.push(`    ${key.padEnd(48)} ${describe(m[key])}`);
  }
  const thresholds = [];
  for (const key of Object.keys(m).sort()) {
    for (const [expr, t] of Object.entries(m[key].thresholds || {})) {
      if (!TRIVIAL.test(expr.replace(/\s+/g, '')) || !t.ok) thresholds.push(`    ${t.ok ? 'ok  ' : 'FAIL'} ${key}: ${expr}`);
    }
  }
  if (thresholds.length) {
    lines.push('  thresholds:');
    lines.push(...thresholds);
  }
  if (derived && Object.keys(derived).length) {
    lines.push('  derived:');
    for (const [k, v] of Object.entries(derived)) lines.push(`    ${k.padEnd(34)} ${typeof v === 'number' ? num(v) : v}`);
  }
  lines.push('');
  return lines.join('\n');
}

/**
 * A handleSummary for script `name`: writes `${SUMMARY_DIR}/${name}.json` (k6's summary data
 * plus `derived`, from `derive(data)` when given) and prints the text summary.
 * `opts.hide`: a RegExp of metric names to leave out of the text summary.
 */
export function summaryHandler(name, opts, derive) {
  if (typeof opts === 'function') {
    derive = opts;
    opts = {};
  }
  const hide = (opts && opts.hide) || null;
  return function handleSummary(data) {
    let derived = {};
    if (derive) {
      try {
        derived = derive(data) || {};
      } catch (err) {
        derived = { error: String(err) };
      }
    }
    const path = `${SUMMARY_DIR}/${name}.json`;
    const json = JSON.stringify({ script: name, baseUrl: BASE_URL, derived, ...data }, null, 2);
    return {
      stdout: `${textSummary(name, data, derived, hide)}  summary: ${path}\n\n`,
      [path]: json,
    };
  };
}
