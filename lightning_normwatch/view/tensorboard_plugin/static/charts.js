// Small SVG charts of the selected tensor: a figure over steps with its thresholds, and its histogram.
import {fmt, num} from './api.js';

const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function extent(values) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi === lo) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = 0.06 * (hi - lo);
  return [lo - pad, hi + pad];
}

/** A figure over steps: the line, dashed threshold lines, the selected step; a click picks a step. */
export function lineChart(name, fig, selectedStep, onStep, xRange, width = 440, height = 96) {
  const steps = fig.steps;
  const values = fig.values.map(num);
  const lines = Object.entries(fig.thresholds).map(([k, v]) => [k, num(v)]);
  const m = {l: 44, r: 8, t: 16, b: 16};
  const [x0, x1] = xRange || [steps[0] ?? 0, steps[steps.length - 1] ?? 1];
  const [y0, y1] = extent([...values, ...lines.map(([, v]) => v)]);
  const X = (s) => m.l + ((s - x0) / (x1 - x0 || 1)) * (width - m.l - m.r);
  const Y = (v) => height - m.b - ((v - y0) / (y1 - y0)) * (height - m.t - m.b);
  const svg = el('svg', {width, height, class: 'chart', role: 'img', 'aria-label': name});
  svg.append(el('text', {x: m.l, y: 11, class: 'charttitle'}, name));
  svg.append(el('text', {x: m.l - 4, y: m.t + 4, class: 'tick', 'text-anchor': 'end'}, fmt(y1)));
  svg.append(el('text', {x: m.l - 4, y: height - m.b, class: 'tick', 'text-anchor': 'end'}, fmt(y0)));
  svg.append(el('text', {x: m.l, y: height - 3, class: 'tick'}, `${x0}`));
  svg.append(el('text', {x: width - m.r, y: height - 3, class: 'tick', 'text-anchor': 'end'}, `${x1}`));
  svg.append(el('rect', {x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b, class: 'frame'}));
  for (const [k, v] of lines) {
    if (!Number.isFinite(v)) continue;
    svg.append(el('line', {x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), class: 'threshold'}));
    svg.append(el('text', {x: width - m.r - 2, y: Y(v) - 2, class: 'tick thr', 'text-anchor': 'end'},
      `threshold${k === 'low' ? ' (low)' : ''} ${fmt(v)}`));
  }
  let d = '';
  let pen = false;
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) return void (pen = false);
    d += `${pen ? 'L' : 'M'}${X(steps[i]).toFixed(1)},${Y(v).toFixed(1)}`;
    pen = true;
  });
  svg.append(el('path', {d, class: 'series'}));
  values.forEach((v, i) => {
    if (Number.isNaN(v)) svg.append(el('circle', {cx: X(steps[i]), cy: m.t + 2, r: 2.5, class: 'nan'}));
  });
  if (selectedStep !== null && selectedStep >= x0 && selectedStep <= x1) {
    svg.append(el('line', {x1: X(selectedStep), x2: X(selectedStep), y1: m.t, y2: height - m.b, class: 'cursor'}));
  }
  svg.addEventListener('click', (event) => {
    const rect = svg.getBoundingClientRect();
    const s = x0 + ((event.clientX - rect.left - m.l) / (width - m.l - m.r)) * (x1 - x0);
    let best = 0;
    steps.forEach((st, i) => (Math.abs(st - s) < Math.abs(steps[best] - s) ? (best = i) : 0));
    if (steps.length) onStep(steps[best]);
  });
  return svg;
}

function pdf(x, mean, std) {
  return Math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * Math.sqrt(2 * Math.PI));
}

/** The histogram at the selected step (bars), the reference window (outline) and both fitted normals. */
export function histogramChart(h, width = 440, height = 170) {
  const edges = h.edges.map(num);
  const dens = h.density.map(num);
  const ref = h.reference ? h.reference.density.map(num) : null;
  const m = {l: 44, r: 8, t: 8, b: 18};
  const [lo, hi] = [edges[0], edges[edges.length - 1]];
  const normals = [[h.normal, 'normal'], [h.reference && h.reference.normal, 'normal ref']].filter(
    ([n]) => n && num(n.std) > 0);
  const xs = Array.from({length: 121}, (_, i) => lo + ((hi - lo) * i) / 120);
  const curves = normals.map(([n]) => xs.map((x) => pdf(x, num(n.mean), num(n.std))));
  const top = Math.max(...dens, ...(ref || []), 1e-12);
  const ymax = Math.min(Math.max(top, ...curves.flat().filter(Number.isFinite)), top * 3) * 1.05;
  const X = (v) => m.l + ((v - lo) / (hi - lo || 1)) * (width - m.l - m.r);
  const Y = (v) => height - m.b - (Math.min(v, ymax) / ymax) * (height - m.t - m.b);
  const svg = el('svg', {width, height, class: 'chart hist', role: 'img', 'aria-label': 'histogram'});
  svg.append(el('rect', {x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b, class: 'frame'}));
  dens.forEach((d, i) => {
    if (!(d > 0)) return;
    svg.append(el('rect', {x: X(edges[i]), y: Y(d), width: Math.max(X(edges[i + 1]) - X(edges[i]) - 0.5, 0.5),
      height: height - m.b - Y(d), class: 'bar'}));
  });
  if (ref) {
    let d = `M${X(edges[0])},${Y(0)}`;
    ref.forEach((v, i) => (d += `L${X(edges[i])},${Y(v)}L${X(edges[i + 1])},${Y(v)}`));
    svg.append(el('path', {d: d + `L${X(hi)},${Y(0)}`, class: 'refline'}));
  }
  curves.forEach((c, k) => {
    const d = c.map((v, i) => `${i ? 'L' : 'M'}${X(xs[i]).toFixed(1)},${Y(v).toFixed(1)}`).join('');
    svg.append(el('path', {d, class: normals[k][1]}));
  });
  svg.append(el('text', {x: m.l, y: height - 4, class: 'tick'}, fmt(lo)));
  svg.append(el('text', {x: width - m.r, y: height - 4, class: 'tick', 'text-anchor': 'end'}, fmt(hi)));
  svg.append(el('text', {x: m.l - 4, y: m.t + 8, class: 'tick', 'text-anchor': 'end'}, fmt(ymax)));
  return svg;
}
