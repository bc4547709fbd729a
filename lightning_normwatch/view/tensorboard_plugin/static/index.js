// The NormWatch tab: diagnosis, depth x step heatmap (one or two runs), the selected tensor.
// Plain ES module loaded by TensorBoard's plugin iframe (no build step, no network beyond this server).
import {fmt, get} from './api.js';
import {histogramChart, lineChart} from './charts.js';
import {ROW, drawHeatmap, legend} from './heatmap.js';

const state = {runs: [], run: '', compare: '', figure: 'scale', summaries: {}, maps: [], selected: null};
const $ = (id) => document.getElementById(id);

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

export async function render() {
  const css = node('link');
  css.rel = 'stylesheet';
  css.href = './static/style.css';
  document.head.appendChild(css);
  document.body.innerHTML = await (await fetch('./static/page.html')).text();
  const listing = await get('runs');
  state.runs = (listing.runs || []).map((r) => r.run);
  if (!state.runs.length) {
    $('diagnosis').textContent = listing.error || 'No run with NormWatch data in this log directory.';
    return;
  }
  state.run = state.runs[0];
  for (const run of state.runs) {
    $('run').add(new Option(run, run));
    $('compare').add(new Option(run, run));
  }
  $('run').onchange = () => ((state.run = $('run').value), refresh());
  $('compare').onchange = () => ((state.compare = $('compare').value), refresh());
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => drawMaps());
  window.addEventListener('resize', () => drawMaps());
  await refresh();
}

async function refresh() {
  const runs = [state.run, state.compare].filter((r, i, all) => r && all.indexOf(r) === i);
  if (state.figure === 'scale') get('heatmap', heatmapQuery(state.run, true)); // always logged: fetch it meanwhile
  const summaries = await Promise.all(runs.map((r) => get('run', {run: r})));
  state.summaries = Object.fromEntries(runs.map((r, i) => [r, summaries[i]]));
  const main = state.summaries[state.run];
  if (main.error) return void ($('diagnosis').textContent = main.error);
  const ids = main.figures.map((f) => f.id);
  if (!ids.includes(state.figure)) state.figure = ids[0];
  showFigures(main.figures);
  showDiagnosis(runs);
  await drawMaps();
  const first = main.alerts.find((a) => a.severity !== 'info');
  if (!state.selected || !state.summaries[state.selected.run]) {
    const t = first ? first.module : main.tensors[main.tensors.length - 1].name;
    await select(state.run, t, first ? first.step : main.last_step);
  } else {
    await select(state.selected.run, state.selected.tensor, state.selected.step);
  }
}

function showFigures(figures) {
  const host = $('figures');
  host.textContent = '';
  for (const f of figures) {
    const b = node('button', f.id === state.figure ? 'active' : '', f.id.replace('_', ' '));
    b.title = f.label;
    b.setAttribute('role', 'tab');
    b.onclick = async () => {
      state.figure = f.id;
      showFigures(figures);
      await drawMaps();
    };
    host.appendChild(b);
  }
}

function alertItem(run, a, followers) {
  const item = node('div', `alert ${a.severity}`);
  const head = node('div', 'alerthead');
  head.append(node('span', `badge ${a.severity}`, a.severity), node('b', '', a.kind), ' in ',
    node('code', '', a.type ? `${a.module} (${a.type})` : a.module), node('span', 'step', `step ${a.step}`));
  item.append(head, node('div', 'message', a.message));
  if (a.hint) item.append(node('div', 'hint', a.hint));
  item.onclick = (event) => {
    event.stopPropagation();
    selectAlert(run, a);
  };
  if (followers && followers.length) {
    const more = node('details', 'followers');
    const names = [...new Set(followers.map((f) => f.module))];
    more.append(node('summary', '', `and ${names.length} tensor${names.length > 1 ? 's' : ''} after it ` +
      `(${followers.length} alert${followers.length > 1 ? 's' : ''})`));
    for (const f of followers) more.append(alertItem(run, f, null));
    more.onclick = (event) => event.stopPropagation();
    item.append(more);
  }
  return item;
}

function showDiagnosis(runs) {
  const host = $('diagnosis');
  host.textContent = '';
  const notes = $('notes');
  notes.textContent = '';
  for (const run of runs) {
    const s = state.summaries[run];
    if (runs.length > 1) host.append(node('h3', 'runname', run));
    if (s.error) {
      host.append(node('p', 'error', s.error));
      continue;
    }
    const roots = s.alerts.filter((a) => a.severity !== 'info');
    const info = s.alerts.filter((a) => a.severity === 'info');
    if (!roots.length) host.append(node('p', 'ok', `No warning or error up to step ${s.last_step}.`));
    for (const a of roots) host.append(alertItem(run, a, a.followers));
    if (info.length) {
      const box = node('details', 'info');
      box.append(node('summary', '', `${info.length} information alert${info.length > 1 ? 's' : ''} (not faults)`));
      for (const a of info) box.append(alertItem(run, a, a.followers));
      host.append(box);
    }
    for (const line of s.not_measured) notes.append(node('li', '', (runs.length > 1 ? `${run}: ` : '') + line));
  }
}

async function selectAlert(run, a) {
  const s = state.summaries[run];
  if (s.figures.some((f) => f.id === a.figure) && state.figure !== a.figure) {
    state.figure = a.figure;
    showFigures(state.summaries[state.run].figures);
    await drawMaps();
  }
  await select(run, a.module, a.step);
}

/** Rows drawn first: more than a 1,200 px high pane shows. */
const FIRST_ROWS = Math.ceil(1200 / ROW);

/** Heatmap request of a run: the rows in view first (`part`), then every row. */
function heatmapQuery(run, part) {
  const query = {run, figure: state.figure};
  if (part) Object.assign(query, {first: 0, count: FIRST_ROWS});
  return query;
}

let drawing = 0;

/** The heatmaps of the shown runs: the rows in view as soon as they arrive, then all rows. */
async function drawMaps() {
  const token = ++drawing;
  const runs = Object.keys(state.summaries);
  const logged = (r) => state.summaries[r].figures && state.summaries[r].figures.some((f) => f.id === state.figure);
  const fetchAll = (part) => Promise.all(runs.map((r) =>
    logged(r) ? get('heatmap', heatmapQuery(r, part)) : {error: `${state.figure} not logged in ${r}`}));
  const first = await fetchAll(true);
  if (token !== drawing) return;
  showMaps(runs, first);
  window.__normwatchFirstPaint = window.__normwatchFirstPaint || performance.now();
  if (first.every((m) => m.error || m.complete)) return;
  const full = await fetchAll(false);
  if (token === drawing) showMaps(runs, full);
}

function showMaps(runs, fetched) {
  const host = $('maps');
  const width = Math.floor((host.clientWidth - 4) / runs.length) - 160; // used when the box is not laid out
  const scroll = host.scrollTop;
  const maps = fetched.map((m) => (m.error ? m : {...m})); // copies: the answers are cached
  host.textContent = '';
  state.maps = [];
  const ok = maps.filter((m) => !m.error);
  if (ok.length > 1) { // side by side: one colour scale for both
    const range = [Math.min(...ok.map((m) => m.range[0])), Math.max(...ok.map((m) => m.range[1]))];
    ok.forEach((m) => (m.range = range));
  }
  const main = maps[0];
  if (!main.error) {
    $('maplabel').textContent = `${main.label} · ${main.rows.length} tensors × ${main.steps.length} steps`;
    const lg = legend(main);
    $('legend').innerHTML = '';
    const bar = node('span', 'bar');
    bar.style.background = lg.gradient;
    $('legend').append(node('span', '', lg.lo), bar, node('span', '', lg.hi),
      node('span', 'mark', ''), node('span', '', 'alert'), node('span', 'nolog', ''), node('span', '', 'not logged'));
  }
  const boxes = maps.map(() => host.appendChild(node('div', 'map'))); // all laid out before any is measured
  maps.forEach((map, i) => {
    const box = boxes[i];
    if (map.error) return void box.append(node('p', 'error', map.error));
    state.maps[i] = {run: runs[i], view: drawHeatmap(box, map, Math.max(width, 160), {hover, select: (t, s) =>
      select(runs[i], t, s)})};
  });
  host.scrollTop = scroll;
  if (state.selected) markSelection();
}

function hover(text, event) {
  const tip = $('tooltip');
  if (!text) return void (tip.hidden = true);
  tip.hidden = false;
  tip.textContent = text;
  const pane = tip.parentElement.getBoundingClientRect();
  tip.style.left = `${Math.min(event.clientX - pane.left + 14, pane.width - 260)}px`;
  tip.style.top = `${event.clientY - pane.top + 14}px`;
}

function markSelection() {
  for (const m of state.maps) {
    if (!m) continue;
    const y = m.view.select(m.run === state.selected.run ? state.selected.tensor : null, state.selected.step);
    const pane = $('maps');
    if (y !== null && (y < pane.scrollTop || y > pane.scrollTop + pane.clientHeight - 40)) {
      pane.scrollTop = Math.max(y - pane.clientHeight / 3, 0);
    }
  }
}

let selecting = 0;

async function select(run, tensor, step) {
  state.selected = {run, tensor, step};
  markSelection();
  const token = ++selecting;
  const detail = await get('tensor', {run, tensor});
  const h = detail.histograms && !detail.error ? await get('histogram', {run, tensor, step}) : null;
  if (token !== selecting) return; // a later selection won
  if (detail.error) return void ($('charts').textContent = detail.error);
  const label = detail.type ? `${tensor} (${detail.type})` : tensor;
  $('selected-title').textContent = '';
  $('selected-title').append(node('code', '', label), node('span', 'sub', ` ${detail.role} · ${run}`));
  const hist = $('hist');
  hist.textContent = '';
  if (h) {
    if (h.error) hist.append(node('p', 'error', h.error));
    else {
      const ref = h.reference ? ` vs reference steps ${h.reference.steps[0]}–${h.reference.steps[1]}` : '';
      hist.append(node('div', 'histtitle', `histogram at step ${h.step} (${fmt(h.count)} values)${ref}`));
      hist.append(histogramChart(h));
      hist.append(node('div', 'histkey', 'bars: this step · outline: reference window · ' +
        'solid curve: normal with this step\'s mean and std · dashed: the reference\'s'));
    }
  } else hist.append(node('p', 'sub', 'no histogram logged for this tensor'));
  const alerts = $('tensor-alerts');
  alerts.textContent = '';
  alerts.append(node('h3', '', detail.alerts.length ? `Alerts of ${tensor}` : `No alert on ${tensor}`));
  for (const a of detail.alerts) alerts.append(alertItem(run, a, null));
  const charts = $('charts');
  charts.textContent = '';
  const order = ['std', 'std_log_ratio', 'mean', 'mean_shift', 'shape_psi', 'dead', 'zeros', 'saturated'];
  const names = Object.keys(detail.figures).sort((a, b) =>
    (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
  const all = names.flatMap((f) => detail.figures[f].steps);
  const xRange = [Math.min(...all), Math.max(...all)]; // one step axis for every chart of the tensor
  for (const f of names) charts.append(lineChart(f, detail.figures[f], step, (s) => select(run, tensor, s), xRange));
}
