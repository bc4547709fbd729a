// Depth x step heatmap on a canvas: one row per tensor (execution order), one column per step bin.
import {fmt, num} from './api.js';

export const ROW = 16; // px per tensor row: labels stay legible at any depth (the pane scrolls)

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [146, 197, 222], [240, 240, 240], [244, 165, 130], [178, 24, 43]];
const DIVERGING_DARK = [[67, 147, 195], [45, 80, 115], [72, 72, 72], [120, 55, 48], [214, 96, 77]];

function ramp(stops, t) {
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
}

export function dark() {
  return window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
}

const NAN = [221, 0, 255];

/** Cells with no value show this hatch (drawn under the transparent cells of the image). */
function hatch(ctx) {
  const tile = document.createElement('canvas');
  tile.width = tile.height = 6;
  const t = tile.getContext('2d');
  t.fillStyle = dark() ? '#2b2c30' : '#f1f3f4';
  t.fillRect(0, 0, 6, 6);
  t.strokeStyle = dark() ? '#55585e' : '#bdc1c6';
  t.beginPath();
  t.moveTo(0, 6);
  t.lineTo(6, 0);
  t.stroke();
  return ctx.createPattern(tile, 'repeat');
}

/** The colour [r, g, b] of a value (the shown unit: log10 for "log" figures); null for no value. */
export function colour(map, raw) {
  const v = num(raw);
  if (v === null) return null;
  if (Number.isNaN(v) || (!Number.isFinite(v) && map.scale !== 'log')) return NAN;
  let x = v;
  if (map.scale === 'log') x = v > 0 ? Math.log10(v) : -Infinity;
  const [lo, hi] = map.range;
  const t = (x - lo) / (hi - lo || 1);
  return ramp(map.scale === 'diverging' ? (dark() ? DIVERGING_DARK : DIVERGING) : VIRIDIS, t);
}

/** A colour bar as a CSS gradient and its two end labels. */
export function legend(map) {
  const stops = map.scale === 'diverging' ? (dark() ? DIVERGING_DARK : DIVERGING) : VIRIDIS;
  const css = stops.map((c, i) => `rgb(${c}) ${(100 * i) / (stops.length - 1)}%`).join(',');
  const unit = map.scale === 'log' ? '10^' : '';
  return {gradient: `linear-gradient(to right, ${css})`, lo: unit + map.range[0], hi: unit + map.range[1]};
}

/** The cells as an image of one pixel per cell (fast to build and to scale for thousands of cells). */
function cellImage(map, cols) {
  const image = new ImageData(cols, Math.max(map.rows.length, 1));
  map.values.forEach((row, k) => { // values of the rows from map.first (the rest are drawn when they arrive)
    const r = k + map.first;
    row.forEach((v, c) => {
      const rgb = colour(map, v);
      if (!rgb) return; // transparent: the hatch shows
      const at = 4 * (r * cols + c);
      image.data[at] = rgb[0];
      image.data[at + 1] = rgb[1];
      image.data[at + 2] = rgb[2];
      image.data[at + 3] = 255;
    });
  });
  const canvas = document.createElement('canvas');
  canvas.width = cols;
  canvas.height = Math.max(map.rows.length, 1);
  canvas.getContext('2d').putImageData(image, 0, 0);
  return canvas;
}

/**
 * Draw one run's heatmap into `host`. `on.hover(text|null, event)`, `on.select(tensor, step)`.
 * Returns {select(tensor, step)} to show the selection.
 */
export function drawHeatmap(host, map, width, on) {
  host.textContent = '';
  host.className = 'map';
  const title = document.createElement('div');
  title.className = 'maptitle';
  title.textContent = map.run;
  title.title = map.run;
  const body = document.createElement('div');
  body.className = 'mapbody';
  const labels = document.createElement('div');
  labels.className = 'labels';
  const marked = new Set(map.marks.filter((m) => m[2] !== 'info').map((m) => m[0]));
  map.rows.forEach((label, i) => {
    const el = document.createElement('div');
    el.className = 'label' + (marked.has(i) ? ' alerted' : '');
    el.textContent = (marked.has(i) ? '! ' : '') + label;
    el.title = label;
    el.dataset.row = i;
    el.onclick = () => on.select(map.tensors[i], map.steps[map.steps.length - 1]);
    labels.appendChild(el);
  });
  const canvas = document.createElement('canvas');
  const cols = Math.max(map.steps.length, 1);
  host.append(labels); // measured: the cells take the rest of the width
  const room = host.clientWidth ? host.clientWidth - labels.offsetWidth - 8 : width;
  const w = Math.max(60, Math.floor(Math.min(room, cols * 24))); // cells need not be whole pixels: the image is scaled
  const cw = w / cols;
  const h = ROW * map.rows.length;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  const axis = document.createElement('div');
  axis.className = 'axis';
  axis.style.width = `${w}px`;
  const ticks = Math.max(2, Math.min(6, Math.floor(w / 90)));
  for (let k = 0; k < ticks; k++) {
    const step = map.steps[Math.round((k * (cols - 1)) / (ticks - 1))];
    axis.append(Object.assign(document.createElement('span'), {textContent: k ? `${step}` : `step ${step}`}));
  }
  const right = document.createElement('div');
  right.className = 'cells';
  right.append(axis, canvas);
  body.append(labels, right);
  host.textContent = '';
  host.append(title, body);

  const ctx = canvas.getContext('2d');
  const cellsImage = cellImage(map, cols);
  let selected = null;
  function paint() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = hatch(ctx);
    ctx.fillRect(0, 0, w, h);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = getComputedStyle(document.body).backgroundColor;
    for (let r = 0; r < map.rows.length; r++) {  // one pixel per cell, scaled up; a 1 px gap between rows
      ctx.drawImage(cellsImage, 0, r, cols, 1, 0, r * ROW, w, ROW - 1);
      ctx.fillRect(0, r * ROW + ROW - 1, w, 1);
    }
    ctx.lineWidth = cw >= 8 ? 2 : 1; // an outline, thin enough to leave the cell's colour visible
    for (const [r, c, severity] of map.marks) {
      if (severity === 'info') continue;
      ctx.strokeStyle = severity === 'error' ? '#ff1744' : '#ff6d00';
      const inset = ctx.lineWidth / 2;
      ctx.strokeRect(c * cw + inset, r * ROW + inset, Math.max(cw - 2 * inset, 1), ROW - 1 - 2 * inset);
    }
    if (selected) {
      ctx.strokeStyle = dark() ? '#fff' : '#000';
      ctx.lineWidth = 1.5;
      ctx.strokeRect(0.75, selected.row * ROW + 0.25, w - 1.5, ROW - 0.5);
      if (selected.col >= 0) ctx.strokeRect(selected.col * cw + 0.75, 0.75, Math.max(cw - 1.5, 1), h - 1.5);
    }
  }
  paint();

  function cell(event) {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - rect.left) / cw);
    const r = Math.floor((event.clientY - rect.top) / ROW);
    return r >= 0 && r < map.rows.length && c >= 0 && c < cols ? {r, c} : null;
  }
  canvas.addEventListener('mousemove', (event) => {
    const at = cell(event);
    if (!at) return on.hover(null, event);
    const row = map.values[at.r - map.first];
    if (!row) return on.hover(`${map.rows[at.r]} · loading`, event);
    const v = row[at.c];
    const alert = map.marks.some((m) => m[0] === at.r && m[1] === at.c) ? ' · alert' : '';
    const value = v === null ? 'not logged' : `${map.name} = ${fmt(v)}`;
    on.hover(`${map.rows[at.r]} · step ${map.steps[at.c]} · ${value}${alert}`, event);
  });
  canvas.addEventListener('mouseleave', (event) => on.hover(null, event));
  canvas.addEventListener('click', (event) => {
    const at = cell(event);
    if (at) on.select(map.tensors[at.r], map.steps[at.c]);
  });
  return {
    select(tensor, step) {
      const row = map.tensors.indexOf(tensor);
      labels.querySelectorAll('.label.selected').forEach((el) => el.classList.remove('selected'));
      if (row < 0) {
        selected = null;
      } else {
        labels.children[row].classList.add('selected');
        let col = map.steps.findIndex((s) => s >= step);
        if (col < 0) col = cols - 1;
        selected = {row, col};
      }
      paint();
      return row >= 0 ? row * ROW : null;
    },
  };
}
