// The ML dashboard: polls /api/ml-metrics, /api/ml-metrics/series and /api/ml-metrics/log
// every two seconds and draws plain SVG charts. No library, no build step.
//
// Every chart's <svg data-chart> gets `data-points` (values drawn) and `data-max` (largest
// value drawn) so that tests, and curious people, can check what is on screen. Data is only
// ever written with textContent or SVG attributes, never parsed as HTML.
'use strict';

const POLL_MS = 2000;
const SVG = 'http://www.w3.org/2000/svg';
const PALETTE = ['#2563eb', '#d97706', '#059669', '#7c3aed', '#db2777', '#0891b2', '#65a30d', '#9ca3af'];
const PRIORITIES = ['critical', 'high', 'normal', 'low'];

// The route the latency chart shows: the busiest until the operator picks one.
let chosenRoute = null;
let routePicked = false;
let polls = 0;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

function pct(v) {
  return v === null || v === undefined ? '–' : (v * 100).toFixed(0) + '%';
}

// A time-series line chart.
// spec: { series: [{name, color, dash, values: [number|null]}], times: [ms],
//         yMax, yFormat, markers: [{t, y, color, label}], events: [{t, color, label}],
//         bands: [{from, to}], rules: [{y, color, label}] }
function lineChart(svg, spec) {
  // Draw at the size the chart is shown, so text stays at its CSS size on any screen.
  const H = Number(svg.dataset.height || 220);
  const W = Math.max(300, Math.round(svg.getBoundingClientRect().width || 800));
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  // Legend first: it may take more than one row.
  const legend = [];
  let lx = 48, ly = 12;
  for (const s of spec.series) {
    const width = 22 + s.name.length * 6.2;
    if (lx + width > W - 10 && lx > 48) { lx = 48; ly += 14; }
    legend.push({ s, x: lx, y: ly });
    lx += width;
  }
  const m = { l: 48, r: 10, t: ly + 12, b: 22 };
  const times = spec.times;
  let drawn = 0, max = 0;
  for (const s of spec.series) for (const v of s.values) if (v !== null && v !== undefined) { drawn++; max = Math.max(max, v); }
  for (const mk of spec.markers || []) { drawn++; max = Math.max(max, mk.y); }
  drawn += (spec.events || []).length;
  svg.setAttribute('data-points', String(drawn));
  svg.setAttribute('data-max', String(max));
  if (times.length === 0 || drawn === 0) {
    el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, svg).textContent = 'no data yet';
    return;
  }
  const t0 = Math.min(times[0], ...(spec.markers || []).map((k) => k.t), ...(spec.events || []).map((k) => k.t));
  // At least a minute wide, so that the time labels differ while the history is short.
  const t1 = Math.max(times[times.length - 1], t0 + 60000);
  const yMax = spec.yMax || niceMax(Math.max(max, ...(spec.rules || []).map((r) => r.y)));
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const y = (v) => H - m.b - (Math.min(v, yMax) / yMax) * (H - m.t - m.b);
  const yFormat = spec.yFormat || fmt;
  for (const band of spec.bands || []) {
    el('rect', { x: x(band.from), y: m.t, width: Math.max(2, x(band.to) - x(band.from)), height: H - m.t - m.b, fill: '#fee2e2' }, svg);
  }
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    el('line', { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: 'axis' }, svg);
    el('text', { x: m.l - 4, y: y(v) + 4, 'text-anchor': 'end' }, svg).textContent = yFormat(v);
  }
  const ticks = W < 500 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
    el('text', { x: x(t), y: H - 6, 'text-anchor': anchor }, svg).textContent = clock(t);
  }
  for (const rule of spec.rules || []) {
    el('line', { x1: m.l, x2: W - m.r, y1: y(rule.y), y2: y(rule.y), stroke: rule.color, 'stroke-dasharray': '2 3' }, svg);
    el('text', { x: W - m.r, y: y(rule.y) - 3, 'text-anchor': 'end' }, svg).textContent = rule.label;
  }
  for (const s of spec.series) {
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? 'L' : 'M') + x(times[i]).toFixed(1) + ' ' + y(v).toFixed(1);
      pen = true;
    });
    if (!d) continue;
    const path = el('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2, 'data-series': s.name }, svg);
    if (s.dash) path.setAttribute('stroke-dasharray', '6 4');
    // A lone value has no line to draw: show it as a dot.
    const lone = s.values.filter((v) => v !== null && v !== undefined).length === 1;
    if (lone) {
      const i = s.values.findIndex((v) => v !== null && v !== undefined);
      el('circle', { cx: x(times[i]), cy: y(s.values[i]), r: 3, fill: s.color }, svg);
    }
  }
  for (const ev of spec.events || []) {
    const line = el('line', { x1: x(ev.t), x2: x(ev.t), y1: m.t, y2: H - m.b, stroke: ev.color, 'stroke-width': 2, 'data-event': ev.label }, svg);
    el('title', {}, line).textContent = ev.label;
    el('text', { x: x(ev.t) + 3, y: m.t + 10, fill: ev.color }, svg).textContent = ev.short || ev.label;
  }
  for (const mk of spec.markers || []) {
    const dot = el('circle', { cx: x(mk.t), cy: y(mk.y), r: 4, fill: mk.color, 'data-marker': 'alert' }, svg);
    el('title', {}, dot).textContent = mk.label;
  }
  for (const { s, x: at, y: row } of legend) {
    el('rect', { x: at, y: row - 6, width: 10, height: 4, fill: s.color }, svg);
    el('text', { x: at + 14, y: row, class: 'legend' }, svg).textContent = s.name;
  }
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const k of [1, 2, 2.5, 5, 10]) if (v <= k * p) return k * p;
  return 10 * p;
}

function chart(name) {
  return document.querySelector(`svg[data-chart="${name}"]`);
}

function routeValue(point, route, key) {
  const r = point.routes.find((x) => x.route === route);
  return r ? r[key] : null;
}

function drawSeries(series, metrics) {
  const pts = series.points;
  const times = pts.map((p) => p.tsMs);
  // Routes by their latest rate, busiest first; the rest are summed as "other routes".
  const totals = new Map();
  for (const p of pts) for (const r of p.routes) totals.set(r.route, (totals.get(r.route) || 0) + r.rate);
  const routes = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
  const shown = routes.slice(0, 6);
  const rateSeries = shown.map((route, i) => ({
    name: route, color: PALETTE[i], values: pts.map((p) => routeValue(p, route, 'rate') || 0),
  }));
  if (routes.length > shown.length) {
    rateSeries.push({
      name: 'other routes', color: PALETTE[7],
      values: pts.map((p) => p.routes.filter((r) => !shown.includes(r.route)).reduce((a, r) => a + r.rate, 0)),
    });
  }
  lineChart(chart('rate'), { times, series: rateSeries });

  const select = document.getElementById('route');
  if (!routePicked || !routes.includes(chosenRoute)) chosenRoute = routes[0] || null;
  const options = [...select.options].map((o) => o.value).join('\n');
  if (options !== routes.join('\n')) {
    select.replaceChildren(...routes.map((r) => new Option(r, r)));
  }
  if (chosenRoute) select.value = chosenRoute;
  const lat = (key) => pts.map((p) => routeValue(p, chosenRoute, key));
  lineChart(chart('latency'), {
    times,
    series: [
      { name: 'actual p50', color: PALETTE[0], values: lat('p50Ms') },
      { name: 'predicted p50', color: PALETTE[0], dash: true, values: lat('predictedP50Ms') },
      { name: 'actual p90', color: PALETTE[1], values: lat('p90Ms') },
      { name: 'predicted p90', color: PALETTE[1], dash: true, values: lat('predictedP90Ms') },
      { name: 'actual p95', color: '#dc2626', values: lat('p95Ms') },
    ],
  });

  const threshold = metrics && metrics.features ? metrics.features.predictionThreshold : null;
  lineChart(chart('confidence'), {
    times, yMax: 1, yFormat: pct,
    series: [{ name: 'confidence', color: PALETTE[2], values: pts.map((p) => p.confidence) }],
    rules: threshold ? [{ y: threshold, color: '#6b7280', label: 'acts above ' + pct(threshold) }] : [],
  });

  lineChart(chart('cache'), {
    times, yMax: 1, yFormat: pct,
    series: [{ name: 'hit rate', color: PALETTE[3], values: pts.map((p) => p.cacheHitRate) }],
  });

  const bands = [];
  pts.forEach((p, i) => {
    if (p.healing) bands.push({ from: i > 0 ? pts[i - 1].tsMs : p.tsMs - series.bucketSecs * 1000, to: p.tsMs });
  });
  const anomalyThreshold = metrics && metrics.anomaly ? metrics.anomaly.threshold : null;
  lineChart(chart('anomaly'), {
    times, yMax: 1, yFormat: pct, bands,
    series: [{ name: 'anomalous share', color: '#dc2626', values: pts.map((p) => p.anomalyRate) }],
    markers: series.alerts.map((a) => ({
      t: a.tsMs, y: a.score, color: '#7c3aed',
      label: `${clock(a.tsMs)} ${a.route}: ${fmt(a.latencyMs)} ms, status ${a.status}, score ${a.score.toFixed(2)}: ${a.reason}`,
    })),
    rules: anomalyThreshold ? [{ y: anomalyThreshold, color: '#6b7280', label: 'heals above ' + pct(anomalyThreshold) }] : [],
  });

  const events = series.actions.map((a) => ({
    t: a.tsMs, color: a.action === 'heal' ? '#dc2626' : '#059669',
    label: `${clock(a.tsMs)} ${a.action}: ${a.reason}`, short: a.action,
  }));
  // Counts per second: points cover different spans (the live one only seconds).
  const perSec = (key) => pts.map((p) => (p.secs > 0 ? p[key] / p.secs : null));
  lineChart(chart('actions'), {
    times, events,
    series: [
      { name: 'served from cache/s', color: PALETTE[3], values: perSec('cacheHits') },
      { name: 'refreshed early/s', color: PALETTE[5], values: perSec('cacheRefreshes') },
      { name: 'shed (503)/s', color: '#dc2626', values: perSec('shed') },
    ],
  });
  // The newest alerts with why each scored as it did.
  const alertList = document.getElementById('alert-list');
  const newest = series.alerts.slice(-10).reverse();
  alertList.replaceChildren(...newest.map((a) => {
    const li = document.createElement('li');
    li.textContent = `${clock(a.tsMs)} ${a.route} scored ${a.score.toFixed(2)}: ${a.reason}`;
    return li;
  }));
  if (newest.length === 0) {
    const li = document.createElement('li');
    li.textContent = 'No anomalous request in this window.';
    alertList.replaceChildren(li);
  }

  const list = document.getElementById('action-list');
  const recent = series.actions.slice(-20).reverse();
  list.replaceChildren(...recent.map((a) => {
    const li = document.createElement('li');
    li.textContent = `${clock(a.tsMs)} ${a.action} (anomalous share ${pct(a.anomalyRate)}): ${a.reason}`;
    return li;
  }));
  if (recent.length === 0) {
    const li = document.createElement('li');
    li.textContent = 'No heal or undo in this window.';
    list.replaceChildren(li);
  }

  for (const name of PRIORITIES) {
    const pick = (key) => pts.map((p) => {
      const q = p.priorities.find((x) => x.priority === name);
      return q ? q[key] : null;
    });
    lineChart(chart('priority-' + name), {
      times,
      series: [
        { name: 'permits', color: PALETTE[0], values: pick('permits') },
        { name: 'in use', color: PALETTE[2], values: pick('inUse') },
        { name: 'waiting', color: PALETTE[1], values: pick('waiting') },
        { name: 'shed/s', color: '#dc2626', values: pick('shedPerSec') },
      ],
    });
  }
}

function cell(row, text, numeric) {
  const td = document.createElement('td');
  td.textContent = text;
  if (numeric) td.className = 'num';
  row.appendChild(td);
  return td;
}

function drawMetrics(m) {
  const source = document.getElementById('model-source');
  source.textContent = m.model.source;
  source.className = m.model.source;
  document.getElementById('model-reason').textContent = m.model.reason;
  // How the models answered: predictions and scores since the server started (every model it
  // loaded); runtime calls (a shared run counts once) and kept answers (a cell of its thresholds
  // seen before) since the loaded model came in; latency model + anomaly model.
  const onnx = m.model.onnx;
  const kept = (onnx.memo || []).map((x) => (x.hits === undefined ? 'off' : String(x.hits)));
  const calls = onnx.runtimeCalls || [];
  document.getElementById('model-answers').textContent = onnx.version == null
    ? 'no model loaded'
    : `version ${onnx.version}: runtime calls ${calls.join(' + ')}, kept answers `
      + `${kept.join(' + ')} since it loaded; ${onnx.predictions} predictions, `
      + `${onnx.scores} scores since the server started`;
  document.getElementById('uptime').textContent = `${m.uptimeSecs} s`;
  document.getElementById('limit').textContent = String(m.concurrencyLimit);
  const log = m.requestLog;
  document.getElementById('request-log').textContent =
    `${log.written} records written, ${log.dropped} dropped, ${log.lost} lost to the disk` +
    (log.failingSinceMs ? ` (cannot write since ${clock(log.failingSinceMs)}: ${log.error})` : '');

  const accuracy = document.querySelector('#accuracy tbody');
  accuracy.replaceChildren(...m.routes.map((r) => {
    const tr = document.createElement('tr');
    cell(tr, r.route);
    cell(tr, String(r.requests), true);
    cell(tr, r.predictedInWindow > 0 ? pct(r.coverage) : '–', true);
    cell(tr, r.predictedInWindow > 0 ? fmt(r.maeLog) : '–', true);
    // The shadow evaluation: the model and the online statistics on the same requests,
    // whichever of them answered.
    cell(tr, r.shadow ? fmt(r.shadow.modelMaeLog) : '–', true);
    cell(tr, r.shadow ? fmt(r.shadow.onlineMaeLog) : '–', true);
    cell(tr, String(r.errorsInWindow), true);
    return tr;
  }));

  const queries = [...(m.queries || [])].sort((a, b) => b.p95Ms - a.p95Ms).slice(0, 15);
  const qbody = document.querySelector('#queries tbody');
  qbody.replaceChildren(...queries.map((q) => {
    const tr = document.createElement('tr');
    const code = document.createElement('code');
    code.textContent = q.statement;
    cell(tr, '').appendChild(code);
    cell(tr, String(q.calls), true);
    cell(tr, fmt(q.meanMs), true);
    cell(tr, fmt(q.p95Ms), true);
    cell(tr, fmt(q.totalMs), true);
    cell(tr, String(q.rows), true);
    return tr;
  }));

  drawSuggestions(m);
  drawLoad(m);
}

// Reads per second on each database target (the primary, each read replica), from the read
// counters of successive polls: the stored history does not hold them, so the chart covers
// the last ten minutes this page was open.
const loadSamples = [];
const TARGET_COLORS = ['#2563eb', '#16a34a', '#f59e0b', '#dc2626', '#7c3aed', '#0891b2'];

function drawLoad(m) {
  const targets = m.loadDistribution || [];
  const now = Date.now();
  loadSamples.push({ t: now, reads: Object.fromEntries(targets.map((x) => [x.target, x.reads])) });
  while (loadSamples.length > 2 && now - loadSamples[0].t > 600000) loadSamples.shift();
  const later = loadSamples.slice(1);
  const series = targets.map((x, i) => ({
    name: `${x.target} (${x.role})`,
    color: TARGET_COLORS[i % TARGET_COLORS.length],
    values: later.map((s, j) => {
      const before = loadSamples[j];
      const a = before.reads[x.target];
      const b = s.reads[x.target];
      if (a === undefined || b === undefined) return null;
      return Math.max(0, (b - a) / Math.max(0.001, (s.t - before.t) / 1000));
    }),
  }));
  lineChart(chart('load'), { times: later.map((s) => s.t), series });
  const body = document.querySelector('#targets tbody');
  body.replaceChildren(...targets.map((x) => {
    const tr = document.createElement('tr');
    cell(tr, x.target);
    cell(tr, x.role);
    cell(tr, x.state);
    cell(tr, pct(x.share), true);
    cell(tr, fmt(x.ewmaMs), true);
    cell(tr, String(x.inFlight), true);
    cell(tr, x.lagMs === null || x.lagMs === undefined ? '–' : String(x.lagMs), true);
    cell(tr, String(x.bans), true);
    return tr;
  }));
}

// Index suggestions from the index advisor's last pass (`indexAdvice` in /api/ml-metrics).
const SUGGESTION_COLUMNS = [
  ['createSql', 'index'],
  ['costBefore', 'cost before'],
  ['costAfter', 'cost after'],
  ['costReduction', 'reduction'],
  ['estSavingMs', 'saving ms (est.)'],
  ['verified', 'verified'],
  ['statement', 'statement'],
];

function drawSuggestions(m) {
  const advice = m.indexAdvice;
  const list = advice && Array.isArray(advice.suggestions) ? advice.suggestions : null;
  const note = document.getElementById('suggestions-note');
  const head = document.querySelector('#suggestions thead');
  const body = document.querySelector('#suggestions tbody');
  if (!list) {
    note.textContent = 'This server reports no index advice.';
    head.replaceChildren();
    body.replaceChildren();
    return;
  }
  const passes = advice.passes || 0;
  const hypopg = advice.hypopgAvailable === false ? ' HypoPG is missing: suggestions are unverified.' : '';
  note.textContent = list.length === 0
    ? `No suggestions: no slow statement has an index that halves its cost (${passes} passes).${hypopg}`
    : `${list.length} suggestion(s) after ${passes} passes.${hypopg}`;
  const tr = document.createElement('tr');
  for (const [, title] of SUGGESTION_COLUMNS) {
    const th = document.createElement('th');
    th.textContent = title;
    tr.appendChild(th);
  }
  head.replaceChildren(tr);
  body.replaceChildren(...list.map((s) => {
    const row = document.createElement('tr');
    for (const [key] of SUGGESTION_COLUMNS) {
      let v = s[key];
      if (key === 'costReduction' && typeof v === 'number') v = `${(100 * v).toFixed(1)}%`;
      else if (typeof v === 'number') v = v.toFixed(1);
      cell(row, v === null || v === undefined ? '' : String(v), typeof s[key] === 'number');
    }
    return row;
  }));
}

async function get(url, asText) {
  const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
  if (response.status === 401) {
    // The session ended (or the server restarted): back to the sign-in form.
    window.location.assign('/dashboard');
    throw new Error('signed out');
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return asText ? { text: await response.text(), file: response.headers.get('x-log-file') } : response.json();
}

async function poll() {
  const status = document.getElementById('status');
  const minutes = document.getElementById('window').value;
  try {
    const wantLog = polls % 3 === 0;
    const [metrics, series, log] = await Promise.all([
      get('/api/ml-metrics'),
      get(`/api/ml-metrics/series?minutes=${minutes}&points=240`),
      wantLog ? get('/api/ml-metrics/log?lines=200', true) : null,
    ]);
    drawMetrics(metrics);
    drawSeries(series, metrics);
    if (log) {
      document.getElementById('log').textContent = log.text || 'Nothing logged yet: the optimizer writes a line each time it heals or undoes.';
      document.getElementById('log-file').textContent = log.file || '';
    }
    const live = series.points[series.points.length - 1];
    status.textContent = `live · ${clock(Date.now())} · ${fmt(live ? live.requestRate : 0)} req/s · ${series.bucketSecs} s per point`;
    status.classList.remove('stale');
    polls++;
  } catch (err) {
    status.textContent = `not updating: ${err.message}`;
    status.classList.add('stale');
  }
}

function start() {
  document.getElementById('route').addEventListener('change', (e) => {
    chosenRoute = e.target.value;
    routePicked = true;
    poll();
  });
  document.getElementById('window').addEventListener('change', () => poll());
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener('DOMContentLoaded', start);
