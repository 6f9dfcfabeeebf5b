// snapbank's web view: loads the bank's state from /api/*, then follows /api/stream (Server-Sent
// Events) and redraws. No libraries, no network access beyond the controller that serves it.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
/** Above this many branches the graph becomes a matrix of channels. */
const GRAPH_LIMIT = 12;
/** Redraw at most this often (ms), however fast snapshots arrive. */
const RENDER_EVERY = 250;

const S = {
  bank: null,        // /api/bank
  overview: null,    // /api/overview
  history: [],       // summaries, newest first (/api/history and the stream)
  latest: null,      // the latest complete snapshot, in full (for the graph)
  selected: null,    // id shown in the detail panel
  streamed: 0,       // snapshot events received from the stream
  renderTimer: null,
};

const $ = (id) => document.getElementById(id);

/** An HTML element with attributes and children (strings become text). */
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

/** An SVG element with attributes and children. */
function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(key, value === true ? '' : value);
  }
}

const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
const ms = (n) => (n === null || n === undefined ? '–' : (n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0)) + ' ms');
const rate = (n) => (n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US') + '/s');
function clock(t) {
  if (!t) return '–';
  const d = new Date(t);
  return d.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

async function getJSON(url) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

/** The compact form of a full snapshot object (what /api/history serves). */
function summarize(report) {
  return {
    snapshot_id: report.snapshot_id,
    initiator: report.initiator,
    verdict: report.verdict,
    elapsed_ms: report.elapsed_ms,
    total: report.total,
    balances: report.branches.map((b) => (b.balance === undefined ? null : b.balance)),
    view: report.view,
  };
}

const complete = (report) => report && report.branches.every((b) => b.balance !== undefined);

/** Snapshot summaries `a` and `b` merged by id, newest first, at most the number kept. */
function merge(a, b) {
  const byId = new Map();
  for (const entry of [...b, ...a]) byId.set(entry.snapshot_id, entry);
  const keep = (S.overview && S.overview.keep) || 100;
  return [...byId.values()].sort((x, y) => y.snapshot_id - x.snapshot_id).slice(0, keep);
}

/** Fetches the whole state; merged with what the stream has delivered meanwhile, so a
 * snapshot reported between the two is not lost. */
async function load() {
  const [bank, overview, history, latest] = await Promise.all([
    getJSON('/api/bank'), getJSON('/api/overview'), getJSON('/api/history'),
    getJSON('/api/snapshots?limit=5'),
  ]);
  S.bank = S.bank || bank;
  S.overview = S.overview || overview;
  S.history = merge(history, S.history);
  const candidate = latest.find(complete);
  if (candidate && (!S.latest || candidate.snapshot_id > S.latest.snapshot_id)) S.latest = candidate;
  render();
}

/** Follows the live stream; (re)loads the whole state each time the stream (re)opens, so
 * nothing between the load and the stream is missed. */
function connect() {
  const stream = new EventSource('/api/stream');
  stream.onopen = () => {
    setConn('live', 'live');
    load().catch(showError);
  };
  stream.onerror = () => setConn('down', 'reconnecting…');
  stream.addEventListener('status', (event) => {
    const status = JSON.parse(event.data);
    S.overview = status.overview;
    S.bank = status.bank;
    scheduleRender();
  });
  stream.addEventListener('snapshot', (event) => {
    const report = JSON.parse(event.data);
    S.history = merge([summarize(report)], S.history);
    if (complete(report) && (!S.latest || report.snapshot_id > S.latest.snapshot_id)) S.latest = report;
    S.streamed += 1;
    document.body.dataset.streamEvents = S.streamed;
    scheduleRender();
  });
  stream.addEventListener('resync', () => load().catch(showError));
  // Too many viewers: the server closed this, the oldest, stream for a newer one. Reconnecting
  // would only close another viewer's, so stop following and say so.
  stream.addEventListener('evicted', () => {
    stream.close();
    setConn('down', 'closed for a newer viewer (too many open); reload to follow again');
  });
}

function setConn(cls, text) {
  const conn = $('conn');
  conn.className = 'conn ' + cls;
  conn.textContent = text;
}

function showError(err) {
  setConn('down', String(err.message || err));
}

function scheduleRender() {
  if (S.renderTimer) return;
  S.renderTimer = setTimeout(() => { S.renderTimer = null; render(); }, RENDER_EVERY);
}

function render() {
  if (!S.bank || !S.overview) return;
  renderHeader();
  renderOverview();
  renderGraph();
  renderCharts();
  renderHistory();
}

function renderHeader() {
  const bank = S.bank;
  $('bank-total').textContent = fmt(bank.expected_total);
  $('bank-members').textContent = bank.branches.length;
  const links = $('links');
  links.replaceChildren();
  links.append(`${bank.branches_up}/${bank.branches.length} links up `);
  if (bank.branches.length <= 16) {
    for (const b of bank.branches) {
      links.append(h('span', { class: 'dot ' + b.link, title: `${b.name} ${b.addr}: ${b.link}${b.link_reason ? ' (' + b.link_reason + ')' : ''}` }));
    }
  }
}

function card(label, value, attrs, small) {
  return h('div', Object.assign({ class: 'card' }, attrs || {}),
    h('div', { class: 'label' }, label),
    h('div', { class: 'value' + (small ? ' small' : '') }, value));
}

function renderOverview() {
  const o = S.overview;
  const latestOk = o.latest_ok
    ? h('span', {}, h('b', {}, '#' + o.latest_ok.snapshot_id), ` at ${clock(o.latest_ok.view.started_at_ms)}, ${ms(o.latest_ok.elapsed_ms)}, total ${fmt(o.latest_ok.total)}`)
    : 'none yet';
  const latestFailed = o.latest_failed
    ? h('span', {}, h('b', {}, '#' + o.latest_failed.snapshot_id + ' ' + o.latest_failed.verdict),
      ` at ${clock(o.latest_failed.view.started_at_ms)}: `,
      h('span', { class: 'reason' }, o.latest_failed.view.reason || ''))
    : 'none';
  const cp = o.checkpoints;
  const checkpoints = !cp ? null
    : cp.latest_id === null ? `none written yet${cp.failed ? `, ${fmt(cp.failed)} failed` : ''}`
      : h('span', {}, h('b', {}, '#' + cp.latest_id),
        ` ${((Date.now() - cp.latest_unix_ms) / 1000).toFixed(1)} s ago, ${fmt(cp.written)} written, ${fmt(cp.kept)} kept`
        + (cp.failed ? `, ${fmt(cp.failed)} failed` : ''));
  const rb = o.rollbacks;
  const latestRb = rb && rb.recent.length ? rb.recent[rb.recent.length - 1] : null;
  const rollbacks = !latestRb ? null
    : h('span', {}, h('b', {}, fmt(rb.total)),
      ` (epoch ${rb.epoch}); latest at ${clock(latestRb.at_ms)}: ${rollbackCause(latestRb)}, `
      + `rolled back to #${latestRb.checkpoint} in ${ms(latestRb.took_ms)}`
      + (latestRb.undone === null ? '' : `, at least ${fmt(latestRb.undone)} transfers undone`));
  $('overview').replaceChildren(
    card('started', fmt(o.started), { id: 'count-started' }),
    card('in progress', fmt(o.in_progress), { id: 'count-in-progress' }),
    card('ok', fmt(o.ok), { id: 'count-ok' }),
    card('incomplete', fmt(o.incomplete), { id: 'count-incomplete' }),
    card('inconsistent', fmt(o.inconsistent), { id: 'count-inconsistent' }),
    card('mismatch', fmt(o.mismatch), { id: 'count-mismatch' }),
    card('transfers per second', rate(o.transfers_per_second), { id: 'rate' }),
    card('latest ok', latestOk, { id: 'latest-ok', class: 'card wide' }, true),
    card('latest failed', latestFailed, { id: 'latest-failed', class: 'card wide' }, true),
    ...(checkpoints ? [card('checkpoints', checkpoints, { id: 'checkpoints', class: 'card wide' }, true)] : []),
    ...(rollbacks ? [card('rollbacks', rollbacks, { id: 'rollbacks', class: 'card wide' }, true)] : []),
  );
}

/** Money in transit per channel of a full report: map "from->to" to amount. */
function channelAmounts(report) {
  const amounts = new Map();
  for (const b of report.branches) {
    for (const c of b.channels || []) amounts.set(`${c.from}->${b.name}`, c.amount);
  }
  return amounts;
}

function renderGraph() {
  const graph = $('graph');
  const report = S.latest;
  const names = S.bank.branches.map((b) => b.name);
  if (!report) {
    $('graph-caption').textContent = 'waiting for the first complete snapshot';
    graph.replaceChildren();
    return;
  }
  const inTransit = report.view ? report.view.in_transit : null;
  $('graph-caption').textContent = `in snapshot #${report.snapshot_id}: balances, and money in transit on each channel (${fmt(inTransit)} in all)`;
  const amounts = channelAmounts(report);
  const balances = new Map(report.branches.map((b) => [b.name, b.balance]));
  const links = new Map(S.bank.branches.map((b) => [b.name, b.link]));
  graph.replaceChildren(names.length <= GRAPH_LIMIT
    ? drawGraph(names, balances, amounts, links)
    : drawMatrix(names, balances, amounts));
}

/** Branches on a circle; each directed channel a curved arrow, labelled when money is on it. */
function drawGraph(names, balances, amounts, links) {
  const width = 560, height = 460, cx = width / 2, cy = height / 2;
  const radius = Math.min(cx, cy) - 60, nodeR = 34;
  const pos = names.map((_, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    return [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)];
  });
  const root = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'branches and channels' },
    s('defs', {},
      s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#b9c0cc' })),
      s('marker', { id: 'arrow-hot', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 5, markerHeight: 5, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#d9480f' }))));
  const labels = [];
  names.forEach((from, i) => names.forEach((to, j) => {
    if (i === j) return;
    const amount = amounts.get(`${from}->${to}`) || 0;
    const [x1, y1] = pos[i], [x2, y2] = pos[j];
    const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy);
    const ux = dx / len, uy = dy / len;
    // Bend to the right of the direction of travel, so a -> b and b -> a are apart.
    const bend = 22, mx = (x1 + x2) / 2 - uy * bend, my = (y1 + y2) / 2 + ux * bend;
    const sx = x1 + ux * nodeR - uy * 8, sy = y1 + uy * nodeR + ux * 8;
    const ex = x2 - ux * (nodeR + 2) - uy * 8, ey = y2 - uy * (nodeR + 2) + ux * 8;
    const hot = amount > 0;
    root.append(s('path', {
      class: 'chan' + (hot ? ' hot' : ''), d: `M${sx},${sy} Q${mx},${my} ${ex},${ey}`,
      'marker-end': hot ? 'url(#arrow-hot)' : 'url(#arrow)', 'data-from': from, 'data-to': to, 'data-amount': amount,
    }, s('title', {}, `${from} → ${to}: ${amount} in transit`)));
    // On the curve: a quadratic Bezier's midpoint is a quarter of each end plus half the bend.
    const lx = 0.25 * sx + 0.5 * mx + 0.25 * ex, ly = 0.25 * sy + 0.5 * my + 0.25 * ey;
    if (hot) labels.push(s('text', { class: 'chan-label', x: lx, y: ly, 'text-anchor': 'middle', 'dominant-baseline': 'middle', stroke: '#fff', 'stroke-width': 3, 'paint-order': 'stroke' }, fmt(amount)));
  }));
  labels.forEach((label) => root.append(label));
  names.forEach((name, i) => {
    const [x, y] = pos[i];
    root.append(s('g', { class: 'node' + (links.get(name) === 'down' ? ' down' : ''), 'data-branch': name },
      s('circle', { cx: x, cy: y, r: nodeR }),
      s('text', { x, y: y - 6, 'text-anchor': 'middle', 'font-size': 12, fill: '#6b7385' }, name),
      s('text', { x, y: y + 12, 'text-anchor': 'middle', 'font-size': 15, 'font-weight': 700, class: 'balance' }, fmt(balances.get(name)))));
  });
  return root;
}

/** Many branches: one row per sender and one column per receiver, darker with more money in
 * transit; each branch's balance as a bar beside its row. */
function drawMatrix(names, balances, amounts) {
  const n = names.length, cell = Math.max(6, Math.min(14, Math.floor(620 / n)));
  const left = 70, top = 60, barW = 90;
  const width = left + n * cell + 16 + barW + 60, height = top + n * cell + 20;
  let max = 0;
  amounts.forEach((a) => { max = Math.max(max, a); });
  const maxBalance = Math.max(1, ...names.map((name) => balances.get(name) || 0));
  const root = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'channel matrix' },
    s('text', { x: left, y: 14, 'font-size': 11, fill: '#6b7385' }, 'receiver →'),
    s('text', { x: 4, y: top - 6, 'font-size': 11, fill: '#6b7385' }, 'sender ↓'),
    s('text', { x: left + n * cell + 16, y: top - 6, 'font-size': 11, fill: '#6b7385' }, 'balance'));
  const labelEvery = Math.ceil(10 / cell);
  names.forEach((name, i) => {
    if (i % labelEvery === 0) {
      root.append(s('text', { x: left - 4, y: top + i * cell + cell * 0.8, 'text-anchor': 'end', 'font-size': Math.min(11, cell + 2) }, name));
      root.append(s('text', { x: left + i * cell + cell * 0.8, y: top - 4, 'font-size': Math.min(11, cell + 2), transform: `rotate(-60 ${left + i * cell + cell * 0.8} ${top - 4})` }, name));
    }
    const balance = balances.get(name) || 0;
    root.append(s('rect', { x: left + n * cell + 16, y: top + i * cell + 1, width: (barW * balance) / maxBalance, height: cell - 2, fill: '#2f5fd0', opacity: 0.7 },
      s('title', {}, `${name}: ${balance}`)));
  });
  names.forEach((from, i) => names.forEach((to, j) => {
    if (i === j) return;
    const amount = amounts.get(`${from}->${to}`) || 0;
    const shade = amount > 0 ? 0.25 + (0.75 * amount) / max : 0;
    root.append(s('rect', {
      class: 'cell' + (amount > 0 ? ' hot' : ''), x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1,
      fill: amount > 0 ? `rgba(217,72,15,${shade.toFixed(2)})` : '#eef0f4', 'data-from': from, 'data-to': to, 'data-amount': amount,
    }, s('title', {}, `${from} → ${to}: ${amount} in transit`)));
  }));
  return root;
}

/** A small line chart of `series` ({name, color, points: [[t, v]]}) over time. */
function lineChart(title, series, format) {
  const width = 360, height = 150, left = 56, right = 8, top = 8, bottom = 20;
  const points = series.flatMap((line) => line.points);
  const box = h('div', { class: 'chart' }, h('div', { class: 'title' }, title));
  if (points.length === 0) {
    box.append(h('div', { class: 'dim' }, 'no data yet'));
    return box;
  }
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
  let v0 = Math.min(0, ...points.map((p) => p[1])), v1 = Math.max(...points.map((p) => p[1]));
  if (v1 === v0) v1 = v0 + 1;
  const x = (t) => left + ((t - t0) / (t1 - t0 || 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - v0) / (v1 - v0)) * (height - top - bottom);
  const root = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height },
    s('line', { x1: left, y1: top, x2: left, y2: height - bottom, stroke: '#dde1e8' }),
    s('line', { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, stroke: '#dde1e8' }),
    s('text', { x: left - 4, y: top + 9, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7385' }, format(v1)),
    s('text', { x: left - 4, y: height - bottom, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7385' }, format(v0)),
    s('text', { x: left, y: height - 5, 'font-size': 10, fill: '#6b7385' }, clock(t0)),
    s('text', { x: width - right, y: height - 5, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7385' }, clock(t1)));
  for (const line of series) {
    if (line.points.length === 0) continue;
    const d = line.points.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    root.append(s('path', { d, fill: 'none', stroke: line.color, 'stroke-width': series.length > 16 ? 1 : 1.6 }, s('title', {}, line.name)));
    if (line.points.length === 1) {
      const [p] = line.points;
      root.append(s('circle', { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: line.color }));
    }
  }
  box.append(root);
  if (series.length > 1 && series.length <= 8) {
    box.append(h('div', { class: 'legend' }, series.map((line) =>
      h('span', {}, h('span', { class: 'swatch', style: `background:${line.color}` }), line.name))));
  }
  return box;
}

function renderCharts() {
  const oldestFirst = S.history.slice().reverse();
  const at = (e) => e.view.started_at_ms;
  const pick = (f) => oldestFirst.filter((e) => f(e) !== null && f(e) !== undefined).map((e) => [at(e), f(e)]);
  $('charts-caption').textContent = `last ${oldestFirst.length} snapshots`;
  $('chart-duration').replaceChildren(lineChart('snapshot duration', [{ name: 'duration', color: '#2f5fd0', points: pick((e) => e.elapsed_ms) }], ms));
  $('chart-transit').replaceChildren(lineChart('money in transit', [{ name: 'in transit', color: '#d9480f', points: pick((e) => e.view.in_transit) }], fmt));
  $('chart-rate').replaceChildren(lineChart('transfers per second (snapshot counters)', [{ name: 'transfers/s', color: '#1f8a4c', points: pick((e) => e.view.transfers_per_second) }], rate));
  const names = S.bank.branches.map((b) => b.name);
  const balances = names.map((name, i) => ({
    name,
    color: `hsl(${Math.round((360 * i) / names.length)},65%,45%)`,
    points: pick((e) => (e.balances ? e.balances[i] : null)),
  }));
  $('chart-balances').replaceChildren(lineChart('balance of each branch', balances, fmt));
}

/** Per-branch times to record, short enough for a table cell. */
function recordTimes(entry, names) {
  const times = (entry.view.record_ms || []).map((t, i) => [names[i], t]).filter(([, t]) => t !== null);
  if (times.length === 0) return '–';
  if (times.length <= 6) return times.map(([name, t]) => `${name} ${ms(t)}`).join(' · ');
  const sorted = times.map(([, t]) => t).sort((a, b) => a - b);
  const slowest = times.reduce((a, b) => (b[1] > a[1] ? b : a));
  return `median ${ms(sorted[Math.floor(sorted.length / 2)])} · slowest ${slowest[0]} ${ms(slowest[1])}`;
}

/** What started a rollback, for the page. */
function rollbackCause(rb) {
  return rb.lost.length ? `${rb.lost.join(', ')} lost its state` : 'asked for by an operator';
}

/** A rollback as a row of the history: when, why, to which checkpoint, and what it cost. */
function rollbackRow(rb) {
  return h('tr', { class: 'rollback' },
    h('td', { class: 'num id' }, '↺'),
    h('td', { colspan: 2 }, `rollback to #${rb.checkpoint}, epoch ${rb.epoch}`),
    h('td', {}, clock(rb.at_ms)),
    h('td', { class: 'num' }, ms(rb.took_ms)),
    h('td', { colspan: 2 }, rollbackCause(rb)
      + (rb.undone === null ? '' : `; at least ${fmt(rb.undone)} transfers undone`)));
}

function renderHistory() {
  const names = S.bank.branches.map((b) => b.name);
  const o = S.overview;
  $('history-caption').textContent = `newest first; ${o.retained} kept of the last ${o.keep}; click one for its report`;
  const d = o.duration_ms, t = o.in_transit;
  $('summary').textContent = d
    ? `duration min / avg / max: ${ms(d.min)} / ${ms(d.avg)} / ${ms(d.max)}` + (t ? ` · money in transit min / avg / max: ${fmt(t.min)} / ${fmt(Math.round(t.avg))} / ${fmt(t.max)}` : '')
    : '';
  const rows = S.history.map((e) => h('tr', {
    'data-id': e.snapshot_id, class: e.snapshot_id === S.selected ? 'selected' : null,
    onclick: () => showDetail(e.snapshot_id),
  },
  h('td', { class: 'num id' }, e.snapshot_id),
  h('td', {}, e.initiator),
  h('td', { class: 'verdict ' + e.verdict, title: e.view.reason || '' }, e.verdict),
  h('td', {}, clock(e.view.started_at_ms)),
  h('td', { class: 'num' }, ms(e.elapsed_ms)),
  h('td', { class: 'times' }, recordTimes(e, names)),
  h('td', { class: 'num total' }, e.total === null ? 'unknown' : fmt(e.total))));
  // Rollbacks are events of the history too, in time order among the snapshots (newest
  // first); only those since the oldest snapshot shown (all of them before any snapshot).
  const rollbacks = (o.rollbacks ? o.rollbacks.recent : []).slice().reverse();
  const merged = [];
  let next = 0;
  S.history.forEach((e, i) => {
    while (next < rollbacks.length && rollbacks[next].at_ms >= e.view.started_at_ms) {
      merged.push(rollbackRow(rollbacks[next++]));
    }
    merged.push(rows[i]);
  });
  if (S.history.length === 0) merged.push(...rollbacks.map(rollbackRow));
  $('history').tBodies[0].replaceChildren(...merged);
}

async function showDetail(id) {
  S.selected = id;
  renderHistory();
  const panel = $('detail');
  panel.hidden = false;
  let report;
  try {
    report = await getJSON(`/api/snapshots/${id}`);
  } catch (err) {
    panel.replaceChildren(h('h2', {}, `Snapshot #${id}`), h('p', { class: 'reason' }, `${err.message}: no longer kept`));
    return;
  }
  const names = report.branches.map((b) => b.name);
  const close = h('button', { class: 'close', onclick: () => { panel.hidden = true; S.selected = null; renderHistory(); } }, 'close');
  const head = h('h2', {}, close, `Snapshot #${report.snapshot_id} `, h('span', { class: 'verdict ' + report.verdict }, report.verdict));
  const facts = h('p', {},
    `started at ${report.initiator}, ${clock(report.view.started_at_ms)}; every record in ${ms(report.elapsed_ms)}; `,
    `total ${report.total === null ? 'unknown' : fmt(report.total)} of ${fmt(report.expected_total)}; `,
    `money in transit ${fmt(report.view.in_transit)}`,
    report.view.reason ? h('div', { class: 'reason' }, report.view.reason) : null);
  const rows = report.branches.map((b, i) => h('tr', {},
    h('td', {}, b.name),
    b.missing !== undefined
      ? h('td', { class: 'reason', colspan: 4 }, 'no record: ' + b.missing)
      : [h('td', { class: 'num' }, fmt(b.balance)),
        h('td', { class: 'num' }, ms(report.view.record_ms ? report.view.record_ms[i] : null)),
        h('td', { class: 'num' }, `${fmt(b.transfers_sent)} / ${fmt(b.transfers_received)}`),
        h('td', {}, (b.channels || []).map((c, k) => h('span', { class: c.amount > 0 ? 'hot' : 'dim' }, (k ? ', ' : '') + `${c.from}→${b.name} ${fmt(c.amount)}`)))]));
  const table = h('table', {}, h('thead', {}, h('tr', {},
    h('th', {}, 'branch'), h('th', { class: 'num' }, 'balance'), h('th', { class: 'num' }, 'time to record'),
    h('th', { class: 'num' }, 'transfers sent / received at cut'), h('th', {}, 'money in transit on each incoming channel'))),
  h('tbody', {}, rows));
  const c = report.consistency;
  const consistency = c
    ? h('div', {},
      h('p', {}, `consistent-cut check: ${c.checked_channels} of ${names.length * (names.length - 1)} channels checked with counters` +
        (c.unchecked_channels.length ? `; by the sum only: ${c.unchecked_channels.map((u) => `${u.from}→${u.to}`).join(', ')}` : '') +
        (c.violations.length ? '' : '; no violation')),
      c.violations.length
        ? h('ul', {}, c.violations.map((v) => h('li', { class: 'reason' }, `${v.from}→${v.to} ${v.rule}: ${v.detail}`)))
        : null)
    : h('p', { class: 'dim' }, 'not checked: some branch has no record');
  panel.replaceChildren(head, facts, table, consistency);
}

connect();
