// Small SVG charts drawn here rather than by a library: line charts over time and bar charts by category,
// each with a text summary for screen readers and its data as a table.

import { el, fmtDate, t } from './qilu.js';

const NS = 'http://www.w3.org/2000/svg';
// Colour-blind-safe and dark enough for text contrast on white.
export const PALETTE = ['#b2182b', '#2166ac', '#1b7837', '#7b3294', '#8c510a', '#01665e'];
let counter = 0;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : document.createTextNode(child));
  }
  return node;
}

function niceTicks(low, high, count = 5) {
  if (low === high) {
    low -= 1;
    high += 1;
  }
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const first = Math.floor(low / step) * step;
  const ticks = [];
  for (let v = first; v <= high + step * 0.001; v += step) ticks.push(Number(v.toFixed(6)));
  if (ticks[ticks.length - 1] < high) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function formatNumber(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function dataTable(caption, headers, rows) {
  return el('details', { class: 'chart-data' },
    el('summary', {}, t('action.show_table')),
    el('table', {},
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c, i) => (i === 0 ? el('th', { scope: 'row' }, c)
        : el('td', {}, c))))))));
}

/**
 * A line chart of values over time.
 * series: [{label, points: [{t: Date, v: number}]}]; band: {low, high, label} (the normal range, shaded).
 */
export function lineChart({ title, unit, series, band, summary, width = 640, height = 240 }) {
  const id = `chart-${++counter}`;
  const margin = { top: 24, right: 16, bottom: 32, left: 44 };
  const all = series.flatMap((s) => s.points);
  const times = all.map((p) => p.t.getTime());
  const values = all.map((p) => p.v).concat(band ? [band.low, band.high].filter((v) => v !== undefined) : []);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const yTicks = niceTicks(Math.min(...values), Math.max(...values));
  const y0 = yTicks[0];
  const y1 = yTicks[yTicks.length - 1];
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const x = (time) => margin.left + (t1 === t0 ? plotW / 2 : ((time - t0) / (t1 - t0)) * plotW);
  const y = (v) => margin.top + plotH - ((v - y0) / (y1 - y0)) * plotH;

  const grid = yTicks.map((v) => svg('g', { class: 'tick' },
    svg('line', { x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v), stroke: '#d0d4da' }),
    svg('text', { x: margin.left - 6, y: y(v) + 4, 'text-anchor': 'end', fill: '#333' }, formatNumber(v))));
  const xCount = Math.min(width < 480 ? 3 : 5, new Set(times).size);
  const xTicks = xCount <= 1 ? [t0] : Array.from({ length: xCount }, (_, i) => t0 + ((t1 - t0) * i) / (xCount - 1));
  // The first and last labels hang inwards so they stay inside the picture.
  const xLabels = xTicks.map((time, i) => svg('text', {
    x: x(time), y: height - 10, fill: '#333',
    'text-anchor': xTicks.length > 1 && i === 0 ? 'start' : xTicks.length > 1 && i === xTicks.length - 1 ? 'end'
      : 'middle',
  }, fmtDate(new Date(time))));
  const shaded = band && band.low !== undefined && band.high !== undefined
    ? svg('rect', { x: margin.left, width: plotW, y: y(Math.min(band.high, y1)),
      height: Math.max(0, y(Math.max(band.low, y0)) - y(Math.min(band.high, y1))), fill: '#e3f1e6' },
    svg('title', {}, band.label || ''))
    : null;
  const lines = series.map((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const points = [...s.points].sort((a, b) => a.t - b.t);
    const d = points.map((p, j) => `${j ? 'L' : 'M'}${x(p.t.getTime()).toFixed(1)},${y(p.v).toFixed(1)}`).join('');
    return svg('g', { class: 'series', 'data-series': s.label },
      svg('path', { d, fill: 'none', stroke: colour, 'stroke-width': 2 }),
      points.map((p) => svg('circle', { cx: x(p.t.getTime()).toFixed(1), cy: y(p.v).toFixed(1), r: 3.5, fill: colour,
        class: 'point' }, svg('title', {}, `${s.label} ${fmtDate(p.t)}: ${formatNumber(p.v)} ${unit}`))));
  });
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}`,
    class: 'chart', preserveAspectRatio: 'xMidYMid meet' },
  svg('title', { id: titleId }, title), svg('desc', { id: descId }, summary || ''),
  shaded, grid, xLabels,
  svg('text', { x: 4, y: 12, fill: '#333', class: 'unit' }, unit),
  lines);
  const legend = el('ul', { class: 'legend' }, series.map((s, i) => el('li', {},
    el('span', { class: `swatch swatch-${i % PALETTE.length}`, 'aria-hidden': 'true' }), s.label)),
  band ? el('li', {}, el('span', { class: 'swatch swatch-band', 'aria-hidden': 'true' }), band.label) : null);
  // One row per date, a column per series.
  const byDate = new Map();
  series.forEach((s, i) => s.points.forEach((p) => {
    const key = p.t.getTime();
    if (!byDate.has(key)) byDate.set(key, Array(series.length).fill(''));
    byDate.get(key)[i] = formatNumber(p.v);
  }));
  const rows = [...byDate.entries()].sort((a, b) => a[0] - b[0]).map(([time, cells]) => [fmtDate(new Date(time)),
    ...cells]);
  return el('figure', { class: 'chart-figure', 'data-points': String(all.length) },
    chart, el('figcaption', {}, el('p', { class: 'chart-summary' }, summary || ''), legend),
    dataTable(title, ['', ...series.map((s) => `${s.label} (${unit})`)], rows));
}

/** Vertical bars by category, several series side by side: [{label, values: {category: n}}]. */
export function barChart({ title, unit, categories, series, summary, width = 640, height = 240 }) {
  const id = `chart-${++counter}`;
  const margin = { top: 24, right: 12, bottom: 48, left: 44 };
  const values = series.flatMap((s) => categories.map((c) => s.values[c] || 0));
  const yTicks = niceTicks(0, Math.max(5, ...values)); // counts: whole-number steps
  const y1 = yTicks[yTicks.length - 1];
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const group = plotW / Math.max(1, categories.length);
  const bar = (group * 0.8) / Math.max(1, series.length);
  const y = (v) => margin.top + plotH - (v / y1) * plotH;
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}`,
    class: 'chart' },
  svg('title', { id: titleId }, title), svg('desc', { id: descId }, summary || ''),
  yTicks.map((v) => svg('g', {},
    svg('line', { x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v), stroke: '#d0d4da' }),
    svg('text', { x: margin.left - 6, y: y(v) + 4, 'text-anchor': 'end', fill: '#333' }, formatNumber(v)))),
  categories.map((c, ci) => svg('text', { x: margin.left + group * ci + group / 2, y: height - 28,
    'text-anchor': 'middle', fill: '#333' }, c)),
  series.map((s, si) => svg('g', { class: 'series', 'data-series': s.label }, categories.map((c, ci) => {
    const v = s.values[c] || 0;
    return svg('rect', { x: margin.left + group * ci + group * 0.1 + bar * si, y: y(v), width: bar - 1,
      height: Math.max(0, margin.top + plotH - y(v)), fill: PALETTE[si % PALETTE.length], class: 'bar' },
    svg('title', {}, `${s.label} ${c}: ${formatNumber(v)} ${unit}`));
  }))),
  svg('text', { x: 4, y: 12, fill: '#333' }, unit));
  const legend = el('ul', { class: 'legend' }, series.map((s, i) => el('li', {},
    el('span', { class: `swatch swatch-${i % PALETTE.length}`, 'aria-hidden': 'true' }), s.label)));
  const rows = categories.map((c) => [c, ...series.map((s) => formatNumber(s.values[c] || 0))]);
  return el('figure', { class: 'chart-figure' }, chart,
    el('figcaption', {}, el('p', { class: 'chart-summary' }, summary || ''), legend),
    dataTable(title, ['', ...series.map((s) => s.label)], rows));
}
