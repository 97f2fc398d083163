/* Compare view: two or more image models on the same image, their maps on one colour scale
 * (the same zmin and zmax), so equal colours mean equal computation. Each panel draws its
 * model's answer's map figure (the server's); the page sets the shared range, from the answers'
 * own ranges (ponder.min/max, units_min/max). */
import { $, el, fmt, shortHash, stat } from '../core/dom.js';
import { api, busyEnd, busyStart, errorMessage, errors, showError } from '../core/api.js';
import { showSettings } from '../core/nav.js';
import { plot, purgeAll } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { familyLabel, modelsOfKind, summaryChips } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl } from '../core/state.js';
import { mapFigure, mapUnit, renderFlops, renderPrediction } from '../parts/image-parts.js';
import { bindFileInput } from '../parts/image-input.js';

let compareToken = 0;

/** Two models by default: the Image view's model and another of its data set if there is one. */
function defaultCompare() {
  const img = modelsOfKind('image');
  const first = MODEL_BY_ID.get(state.model.image);
  const same = img.filter((m) => first && m.dataset === first.dataset && m.id !== first.id);
  const ids = [first, ...same, ...img.filter((m) => !first || m.id !== first.id)].filter(Boolean).map((m) => m.id);
  return ids.filter((id, i) => ids.indexOf(id) === i).slice(0, 2);
}

function renderChecks() {
  const box = $('compare-models');
  const list = modelsOfKind('image');
  box.replaceChildren(...list.map((m) => el('label', { title: `${familyLabel(m)}, ${m.dataset}` },
    el('input', { type: 'checkbox', value: m.id, checked: state.model.compare.includes(m.id), onchange: onCheck }),
    ` ${m.id} `, el('span', { class: 'muted small', text: `(${familyLabel(m)}, ${m.dataset})` }))));
  if (!list.length) box.append(el('span', { class: 'muted', text: 'no image models loaded' }));
}
function onCheck() {
  state.model.compare = [...$('compare-models').querySelectorAll('input:checked')].map((i) => i.value);
  syncUrl();
  runCompare();
}

/** The request's image: a test sample means an index into each model's own test set; when the
 * models come from different data sets, the first model's sample is uploaded so that all see
 * the same pixels. */
async function imageBodyFor(models) {
  if (state.image.hash) return { image: state.image.hash };
  const datasets = new Set(models.map((id) => (MODEL_BY_ID.get(id) || {}).dataset));
  if (datasets.size <= 1) return { sample: state.image.sample };
  const first = models[0];
  const id = busyStart('Fetching sample');
  let blob;
  try {
    const response = await fetch(`/api/models/${encodeURIComponent(first)}/samples/${state.image.sample}.png`);
    if (!response.ok) {
      let payload = null;
      try { payload = await response.json(); } catch (_) { /* not JSON */ }
      const error = new Error(`GET sample ${state.image.sample} of ${first} failed (${response.status}): ${errorMessage(response.status, payload)}`);
      showError('compare', error.message);
      throw error;
    }
    blob = await response.blob();
  } finally {
    busyEnd(id);
  }
  const form = new FormData();
  form.append('file', blob, `sample-${state.image.sample}.png`);
  const stored = await api('POST', '/api/images', { form, channel: 'compare', label: 'Uploading sample' });
  return { image: stored.hash };
}

async function runCompare() {
  const ids = state.model.compare.filter((id) => MODEL_BY_ID.has(id));
  const empty = $('compare-empty');
  const grid = $('compare-grid');
  if (ids.length < 2 || !state.image) {
    // A request still in flight is for a selection that no longer stands: drop its answer,
    // and clear the panels drawn for an earlier selection (no old answer under new settings).
    compareToken++;
    grid.classList.remove('busy');
    results.compare = null;
    render(null);
    empty.hidden = false;
    empty.textContent = !state.image
      ? 'Pick an image first: upload one here or in the Image view, or click a test sample there.'
      : 'Tick two or more models to compare.';
    return;
  }
  empty.hidden = true;
  const token = ++compareToken;
  grid.classList.add('busy');
  $('compare-source').textContent = state.image.hash ? `upload ${shortHash(state.image.hash)}…` : `test sample #${state.image.sample}`;
  try {
    const body = { ...(await imageBodyFor(ids)), resolution: state.resolution };
    if (state.invert) body.invert = true;
    const settled = await Promise.allSettled(ids.map((id) => api('POST', `/api/models/${encodeURIComponent(id)}/image`, { body, channel: `compare-${id}`, label: `Running ${id}` })));
    if (token !== compareToken) return;
    results.compare = {
      request: body,
      entries: ids.map((id, i) => ({ model: id, response: settled[i].status === 'fulfilled' ? settled[i].value : null, error: settled[i].status === 'rejected' ? settled[i].reason.message : null })),
    };
    render(results.compare);
  } catch (err) {
    if (token === compareToken) {
      if (!errors.has('compare')) showError('compare', err.message);
      results.compare = null;
      render(null);
    }
  } finally {
    if (token === compareToken) grid.classList.remove('busy');
  }
}

/** [zmin, zmax] over the maps of the answers that have one: the lowest of their minima and the
 * highest of their maxima, as the server sent them; null when no answer has a map. */
function sharedScale(entries) {
  const [low, high] = state.map === 'units' ? ['units_min', 'units_max'] : ['min', 'max'];
  const maps = entries.map((e) => e.response && e.response.ponder).filter(Boolean);
  if (!maps.length) return null;
  const lo = Math.min(...maps.map((p) => p[low]));
  const hi = Math.max(...maps.map((p) => p[high]));
  return [lo, hi > lo ? hi : lo + 1e-6];
}

/** Each panel's map: the answer's own figure, on the shared scale. */
function drawMaps(c = results.compare) {
  const scale = sharedScale(c.entries);
  c.scale = scale;
  c.entries.forEach((entry, i) => {
    const r = entry.response;
    const div = $(`compare-plot-${i}`);
    if (!r || !div) return;
    const title = r.ponder ? `${mapUnit(state.map)} (shared scale)` : r.gates ? 'no spatial map (per-layer gates)' : 'no ponder map';
    plot(div, mapFigure(r, 'map', { range: r.ponder ? scale : null, title }), `compare-${safeName(entry.model)}`);
  });
}

/** Draw {request, entries: [{model, response, error}]} (the last comparison by default). */
function render(c = results.compare) {
  showSettings(); // the box control, when an answer here has a box
  const grid = $('compare-grid');
  purgeAll(grid);
  grid.replaceChildren();
  if (!c) return;
  // Build every panel before plotting: Plotly sizes a plot from its container at draw
  // time, and the grid's columns change as panels are added.
  c.entries.forEach((entry, i) => {
    const panel = el('article', { class: 'panel', 'data-model': entry.model });
    grid.append(panel);
    panel.append(el('h3', { text: entry.model }), el('div', { class: 'card-summary' }, summaryChips(MODEL_BY_ID.get(entry.model))));
    if (!entry.response) { panel.append(el('p', { class: 'note', text: entry.error || 'failed' })); return; }
    const r = entry.response;
    const stats = el('div', { class: 'stats' });
    const pred = el('ol', { class: 'prediction' });
    const flops = el('div', { class: 'flops' });
    panel.append(stats, el('div', { id: `compare-plot-${i}`, class: 'plot map-plot' }), pred, flops);
    if (r.ponder) stats.append(stat('mean N+R', fmt(r.ponder.mean, 3)), stat('mean N', fmt(r.ponder.mean_units, 3)));
    else if (r.gates) stats.append(stat('gated blocks run', `${r.gates.executed.filter(Boolean).length}/${r.gates.executed.length}`));
    stats.append(stat('time', `${fmt(r.time_ms, 1)} ms`));
    renderPrediction(pred, (r.prediction || []).slice(0, 3), (r.input || {}).label);
    renderFlops(flops, r.flops);
  });
  drawMaps(c);
}

function exportCompare(format) {
  const c = results.compare;
  if (!c) return false;
  const name = `compare-${c.entries.map((e) => safeName(e.model)).join('+')}`;
  if (format === 'json') return downloadJson(name, { request: c.request, shared_scale: c.scale, map: state.map, models: c.entries });
  return downloadCsv(name, ['model', 'name', 'family', 'dataset', 'top1_class', 'top1_probability', 'flops_executed', 'flops_dense', 'flops_ratio', 'mean_ponder', 'min_ponder', 'max_ponder', 'mean_units', 'time_ms', 'error'],
    c.entries.map((e) => {
      const m = MODEL_BY_ID.get(e.model) || {};
      const r = e.response;
      if (!r) return [e.model, m.name, m.family, m.dataset, null, null, null, null, null, null, null, null, null, null, e.error];
      const top = (r.prediction || [])[0] || {};
      const p = r.ponder;
      return [e.model, m.name, m.family, m.dataset, top.class, top.probability, r.flops && r.flops.executed, r.flops && r.flops.dense, r.flops && r.flops.ratio,
        p ? p.mean : null, p ? p.min : null, p ? p.max : null, p ? p.mean_units : null, r.time_ms, null];
    }));
}

export const view = {
  name: 'compare',
  title: 'Compare',
  kind: 'image',
  images: true,
  settings: ['colormap', 'opacity', 'map', 'resolution', 'invert', 'box'],
  hasBox: () => Boolean(results.compare && results.compare.entries.some((e) => e.response && e.response.input && e.response.input.box)),

  // After the Image view's init: the default pair starts from its model.
  init(s, q) {
    results.compare = null;
    s.model.compare = (q.get('compare') || '').split(',').filter((id) => MODEL_BY_ID.has(id));
    if (!s.model.compare.length) s.model.compare = defaultCompare();
    bindFileInput($('compare-file-input'));
    bindExports('compare', exportCompare);
  },

  writeUrl(q, s) {
    const list = s.model.compare.join(',');
    if (list && (s.view === 'compare' || list !== defaultCompare().join(','))) q.set('compare', list);
  },

  activate() {
    renderChecks();
    runCompare();
  },

  render,

  // Every display setting here restyles the maps from the answers on hand (no request).
  restyle() {
    if (results.compare) drawMaps();
  },
};
