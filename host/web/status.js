// The status view: polls GET /v1/status every 2 s while shown.

import { apiFetch, readError, describeError } from './api.js';
import { h, svg, clear, byId } from './dom.js';

const POLL_MS = 2000;
let els = null;
let timer = null;
let running = false;
let onModel = () => {};

export function initStatus({ modelName } = {}) {
  els = {
    body: byId('status-body'),
    message: byId('status-message'),
    updated: byId('status-updated'),
  };
  if (modelName) onModel = modelName;
}

export function startStatus() {
  if (running) return;
  running = true;
  poll();
}

export function stopStatus() {
  running = false;
  if (timer) clearTimeout(timer);
  timer = null;
}

async function poll() {
  if (!running) return;
  try {
    const response = await apiFetch('/v1/status');
    if (!running) return;
    if (response.ok) {
      const data = await response.json();
      render(data);
      els.message.textContent = '';
      els.message.dataset.kind = '';
      els.updated.textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every 2 s`;
    } else {
      const err = await readError(response);
      els.message.textContent = describeError(err);
      els.message.dataset.kind = 'error';
    }
  } catch (e) {
    if (running) {
      els.message.textContent = `Could not read the status: ${e.message}`;
      els.message.dataset.kind = 'error';
    }
  }
  if (running) timer = setTimeout(poll, POLL_MS);
}

// ---- numbers -----------------------------------------------------------

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function quantile(values, q) {
  const xs = values.filter((v) => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b);
  if (!xs.length) return null;
  const pos = (xs.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo);
}

function fmt(v, digits = 0, unit = '') {
  if (v === null || v === undefined) return '—';
  return `${Number(v).toFixed(digits)}${unit}`;
}

function formatUptime(s) {
  if (s === null) return '—';
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = Math.floor(s % 60);
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${mm} min`;
  if (mm) return `${mm} min ${ss} s`;
  return `${ss} s`;
}

// ---- rendering ---------------------------------------------------------

function stat(label, value, testid) {
  return h('div', { class: 'stat' }, h('dt', { text: label }), h('dd', { dataset: testid ? { testid } : {}, text: String(value) }));
}

function render(data) {
  const queue = data.queue && typeof data.queue === 'object' ? data.queue : {};
  const queued = Array.isArray(queue.queued) ? queue.queued.map((v) => num(v) ?? 0) : [];
  const depth = queued.reduce((a, b) => a + b, 0);
  const recent = data.recent && typeof data.recent === 'object' ? data.recent : {};
  const ttft = Array.isArray(recent.ttft_ms) ? recent.ttft_ms : [];
  const tps = Array.isArray(recent.tokens_per_second) ? recent.tokens_per_second : [];
  const requests = Array.isArray(recent.requests) ? recent.requests : [];
  if (typeof data.model === 'string') onModel(data.model);

  clear(els.body);

  const server = h(
    'section',
    { class: 'status-card', 'aria-labelledby': 'st-server' },
    h('h2', { id: 'st-server', text: 'Model and server' }),
    h(
      'dl',
      { class: 'stats' },
      stat('Model', data.model ?? '—', 'status-model'),
      stat('Context', num(data.context) ?? '—', 'status-context'),
      stat('Parallel', num(data.parallel) ?? '—', 'status-parallel'),
      stat('Threads', num(data.threads) ?? '—', 'status-threads'),
      stat('Uptime', formatUptime(num(data.uptime_s)), 'status-uptime'),
    ),
  );

  const classes = ['interactive', 'plugin', 'background'];
  const q = h(
    'section',
    { class: 'status-card', 'aria-labelledby': 'st-queue', dataset: { testid: 'status-queue' } },
    h('h2', { id: 'st-queue', text: 'Queue' }),
    h(
      'dl',
      { class: 'stats' },
      stat('Queued', depth, 'status-queue-depth'),
      ...classes.map((c, i) => stat(`· ${c}`, queued[i] ?? 0, `status-queued-${c}`)),
      stat('In flight', num(queue.in_flight) ?? 0, 'status-in-flight'),
      stat('Completed', num(queue.completed) ?? 0, 'status-completed'),
      stat('Refused (queue full)', num(queue.rejected_full) ?? 0, 'status-refused'),
      stat('Expired', num(queue.expired) ?? 0, 'status-expired'),
      stat('Abandoned', num(queue.abandoned) ?? 0, 'status-abandoned'),
    ),
  );

  const perf = h(
    'section',
    { class: 'status-card', 'aria-labelledby': 'st-perf' },
    h('h2', { id: 'st-perf', text: 'Recent generations' }),
    h(
      'dl',
      { class: 'stats' },
      stat('Median time to first token', fmt(quantile(ttft, 0.5), 0, ' ms'), 'status-ttft'),
      stat('Median tokens/s', fmt(quantile(tps, 0.5), 1), 'status-tps'),
      stat('Generations counted', Math.max(ttft.length, tps.length), null),
    ),
  );

  const chart = latencyCard(requests);
  const calls = pluginCallsCard(Array.isArray(data.plugin_calls) ? data.plugin_calls : []);

  els.body.append(server, q, perf, chart, calls);
}

function latencyCard(requests) {
  const values = requests.map((r) => num(r && r.elapsed_ms)).filter((v) => v !== null);
  const p50 = quantile(values, 0.5);
  const p95 = quantile(values, 0.95);
  const max = values.length ? Math.max(...values) : null;
  const summary = values.length
    ? `${values.length} recent requests: p50 ${fmt(p50, 0, ' ms')}, p95 ${fmt(p95, 0, ' ms')}, max ${fmt(max, 0, ' ms')}`
    : 'No requests recorded yet.';
  const card = h('section', { class: 'status-card status-wide', 'aria-labelledby': 'st-latency' }, h('h2', { id: 'st-latency', text: 'Request latency' }));
  card.append(latencyChart(values, summary));
  card.append(h('p', { class: 'chart-summary', dataset: { testid: 'latency-summary' }, text: summary }));
  if (requests.length) {
    const last = requests[requests.length - 1];
    if (last && typeof last.route === 'string') {
      card.append(
        h('p', { class: 'hint', text: `Latest: ${last.route} → ${last.status ?? '?'} in ${fmt(num(last.elapsed_ms), 0, ' ms')}` }),
      );
    }
  }
  return card;
}

function latencyChart(values, summary) {
  const W = 640;
  const H = 200;
  const pad = { l: 56, r: 12, t: 12, b: 28 };
  const iw = W - pad.l - pad.r;
  const ih = H - pad.t - pad.b;
  const max = values.length ? Math.max(...values, 1) : 1;
  const yMax = niceCeil(max);
  const chart = svg('svg', {
    class: 'latency-chart',
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-labelledby': 'latency-title',
    'aria-label': `Latency of recent requests. ${summary}`,
    dataset: { testid: 'latency-chart' },
    preserveAspectRatio: 'xMidYMid meet',
  });
  chart.append(svg('title', { id: 'latency-title', text: `Latency of recent requests (ms, oldest to newest). ${summary}` }));
  // Grid lines and y labels.
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + ih - ih * f;
    chart.append(svg('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
    chart.append(svg('text', { class: 'axis-label', x: pad.l - 6, y: y + 4, 'text-anchor': 'end', text: `${Math.round(yMax * f)} ms` }));
  }
  chart.append(svg('line', { class: 'axis', x1: pad.l, x2: pad.l, y1: pad.t, y2: pad.t + ih }));
  chart.append(svg('line', { class: 'axis', x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
  chart.append(svg('text', { class: 'axis-label', x: pad.l, y: H - 8, 'text-anchor': 'start', text: 'oldest' }));
  chart.append(svg('text', { class: 'axis-label', x: W - pad.r, y: H - 8, 'text-anchor': 'end', text: 'newest' }));
  chart.append(svg('text', { class: 'axis-label', x: pad.l + iw / 2, y: H - 8, 'text-anchor': 'middle', text: `${values.length} requests` }));
  if (values.length) {
    const step = values.length > 1 ? iw / (values.length - 1) : 0;
    const pts = values.map((v, i) => {
      const x = values.length > 1 ? pad.l + i * step : pad.l + iw / 2;
      const y = pad.t + ih - (v / yMax) * ih;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    chart.append(svg('polyline', { class: 'line', points: pts.join(' '), fill: 'none' }));
    if (values.length <= 60) {
      pts.forEach((p) => {
        const [cx, cy] = p.split(',');
        chart.append(svg('circle', { class: 'dot', cx, cy, r: 2.5 }));
      });
    }
  }
  return chart;
}

function niceCeil(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function pluginCallsCard(calls) {
  const card = h('section', { class: 'status-card status-wide', 'aria-labelledby': 'st-calls' }, h('h2', { id: 'st-calls', text: 'Plugin calls' }));
  const outcomes = ['ok', 'error', 'timeout', 'trap'];
  const byNs = new Map();
  for (const c of calls) {
    if (!c || typeof c.namespace !== 'string') continue;
    const outcome = typeof c.outcome === 'string' ? c.outcome : 'error';
    if (!outcomes.includes(outcome)) outcomes.push(outcome);
    const row = byNs.get(c.namespace) ?? {};
    row[outcome] = (row[outcome] ?? 0) + (num(c.count) ?? 0);
    byNs.set(c.namespace, row);
  }
  if (!byNs.size) {
    card.append(h('p', { class: 'hint', dataset: { testid: 'plugin-calls-empty' }, text: 'No plugin calls yet.' }));
    return card;
  }
  const table = h('table', { class: 'calls-table', dataset: { testid: 'plugin-calls' } });
  table.append(h('caption', { class: 'visually-hidden', text: 'Plugin calls by namespace and outcome' }));
  const headRow = h('tr', {}, h('th', { scope: 'col', text: 'Plugin' }), ...outcomes.map((o) => h('th', { scope: 'col', text: o })), h('th', { scope: 'col', text: 'failures' }));
  table.append(h('thead', {}, headRow));
  const tbody = h('tbody');
  for (const [ns, row] of [...byNs.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const failures = outcomes.filter((o) => o !== 'ok').reduce((a, o) => a + (row[o] ?? 0), 0);
    tbody.append(
      h(
        'tr',
        { dataset: { namespace: ns } },
        h('th', { scope: 'row', text: ns }),
        ...outcomes.map((o) => h('td', { class: row[o] && o !== 'ok' ? 'bad' : null, text: String(row[o] ?? 0) })),
        h('td', { class: failures ? 'bad' : null, text: String(failures) }),
      ),
    );
  }
  table.append(tbody);
  card.append(table);
  return card;
}
