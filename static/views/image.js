/* Image view: one model on one image (an upload or a test sample): the ponder map over the
 * image, one map per block, ConvNet-AIG's gates, the prediction and the FLOPs. With no image in
 * the link, the first screen shows the model's first test sample. */
import { $, el, fill, fmt, mean2d, minMax, shortHash, stat } from '../core/dom.js';
import { api } from '../core/api.js';
import { plotlyScale } from '../core/colors.js';
import { plot, purge, purgeAll, restyleHeatmaps } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, fillPicker, hasTestSet, renderCardSummary } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl } from '../core/state.js';
import { imageOnlyFigure, mapFigure, mapUnit, renderFlops, renderPrediction } from '../parts/image-parts.js';
import { bindDropAndPaste, bindFileInput, cancelUpload } from '../parts/image-input.js';

export const SAMPLE_COUNT = 24;
const HINT = 'Upload, drop or paste an image, or click a test sample.';
const NO_SAMPLES_HINT = 'No test samples to show here (see the note under Test samples): upload, drop or paste an image to analyse it.';

let imageToken = 0;
let samplesToken = 0;
let firstScreen = false; // the link named no view and no image: show the first test sample
let hint = HINT; // what the result panel says while it shows nothing

const preferred = () => defaultModel('image', null, { prefer: hasTestSet });

function requestBody() {
  const body = { resolution: state.resolution };
  if (state.image.hash) body.image = state.image.hash;
  else body.sample = state.image.sample;
  if (state.invert) body.invert = true;
  return body;
}
function resultMatches() {
  const r = results.imageRequest;
  return r && r.model === state.model.image && JSON.stringify(r.body) === JSON.stringify(requestBody());
}

async function runImage() {
  const id = state.model.image;
  // A test sample of a model without a test set: nothing to ask (the grid says why).
  if (!id || !state.image || (state.image.sample !== undefined && !hasTestSet(MODEL_BY_ID.get(id)))) {
    imageToken++;
    results.image = null;
    results.imageRequest = null;
    renderEmpty();
    return;
  }
  const token = ++imageToken;
  const body = requestBody();
  $('image-result').classList.add('busy');
  try {
    const response = await api('POST', `/api/models/${encodeURIComponent(id)}/image`, { body, channel: 'image', label: `Running ${id}` });
    if (token !== imageToken) return;
    results.image = response;
    results.imageRequest = { model: id, body };
    render(response);
  } catch (err) {
    if (token === imageToken) {
      // Never leave an old answer on screen under a new request's settings.
      results.image = null;
      results.imageRequest = null;
      renderEmpty('The request failed: the message is in the red box above.');
    }
  } finally {
    if (token === imageToken) $('image-result').classList.remove('busy');
  }
}

function renderEmpty(message) {
  $('image-empty').textContent = message || hint;
  $('image-empty').hidden = false;
  $('image-result').hidden = true;
  $('prediction').replaceChildren();
  $('flops').replaceChildren();
  $('image-source').textContent = '';
}

function describeSource(input) {
  if (!input) return '';
  if (input.sample !== null && input.sample !== undefined) {
    const cls = input.label_class || (input.label !== null && input.label !== undefined ? `label ${input.label}` : '');
    return `test sample #${input.sample}${cls ? ` (${cls})` : ''}`;
  }
  if (input.hash) return `upload ${shortHash(input.hash)}…${state.image && state.image.name ? ` (${state.image.name})` : ''}`;
  return '';
}

/** Draw an answer of POST /api/models/{id}/image (the last one by default). */
function render(r = results.image) {
  if (!r) { renderEmpty(); return; }
  const model = results.imageRequest.model;
  const input = r.input || {};
  $('image-empty').hidden = true;
  $('image-result').hidden = false;
  $('image-source').textContent = `Showing ${describeSource(input)}`;
  $('result-title').textContent = r.ponder ? 'Ponder map' : r.gates ? 'Gate decisions' : 'Input (dense model)';
  const stats = [
    stat('input', `${input.width}×${input.height}`, 'the image as the network saw it'),
    stat('resolution', input.resolution || state.resolution),
    stat('source', describeSource(input)),
    stat('time', `${fmt(r.time_ms, 1)} ms`, 'server time for this request'),
  ];
  if (r.ponder) stats.push(stat('mean map', fmt(mean2d(r.ponder.total), 3), 'mean ponder cost N+R over positions, summed over blocks'));
  if (typeof r.execution === 'string') stats.push(stat('execution', r.execution, r.execution === 'masked' ? 'masked: skipped work is computed and multiplied by zero (as in the official code); FLOPs are counted from the masks' : 'how skipped work is handled'));
  fill($('image-stats'), stats);
  renderPrediction($('prediction'), r.prediction, input.label);
  renderFlops($('flops'), r.flops, r.time_ms);

  // the main map
  const note = $('no-ponder');
  if (r.ponder) {
    note.hidden = true;
    const z = state.map === 'units' ? r.ponder.units_total : r.ponder.total;
    let [zmin, zmax] = minMax(z);
    if (state.map !== 'units' && Number.isFinite(r.ponder.min) && Number.isFinite(r.ponder.max)) { zmin = r.ponder.min; zmax = r.ponder.max; }
    if (zmax <= zmin) zmax = zmin + 1e-6;
    const fig = mapFigure({ z, image: input.image, width: input.width, height: input.height, zmin, zmax,
      title: `${model}: ${mapUnit(state.map)}, summed over ${r.ponder.blocks.length} blocks`, unit: mapUnit(state.map), box: input.box });
    plot($('heatmap'), fig.data, fig.layout, `ponder-map-${safeName(model)}`);
  } else {
    const fig = imageOnlyFigure({ image: input.image, width: input.width, height: input.height, title: `${model}: input`, box: input.box });
    plot($('heatmap'), fig.data, fig.layout, `input-${safeName(model)}`);
    note.hidden = false;
    note.textContent = r.gates
      ? 'ConvNet-AIG decides per image, not per position: each gate runs or skips a whole residual block. See the gate chart below.'
      : 'This model is dense: every unit runs at every position, so there is no ponder map.';
  }
  renderGates(r.gates, model);
  renderBlocks(r, model);
}

function renderGates(g, model) {
  const div = $('gates-chart');
  div.hidden = !g;
  if (!g) { purge(div); return; }
  const idx = g.probability.map((_, i) => i);
  const executed = idx.filter((i) => g.executed[i]);
  const skipped = idx.filter((i) => !g.executed[i]);
  const n = g.executed.filter(Boolean).length;
  plot(div, [
    { type: 'bar', name: 'executed', x: executed.map((i) => g.layers[i]), y: executed.map((i) => g.probability[i]), marker: { color: '#1f5fbf' }, hovertemplate: '%{x}: p(run) = %{y:.3f}<extra>executed</extra>' },
    { type: 'bar', name: 'skipped', x: skipped.map((i) => g.layers[i]), y: skipped.map((i) => g.probability[i]), marker: { color: '#c7ccd4', line: { color: '#8a929e', width: 1 } }, hovertemplate: '%{x}: p(run) = %{y:.3f}<extra>skipped</extra>' },
  ], {
    title: { text: `Gate probability per layer: ${n} of ${g.layers.length} gated blocks executed` },
    barmode: 'overlay',
    xaxis: { categoryorder: 'array', categoryarray: g.layers, tickangle: -45, title: { text: 'gated residual block' } },
    yaxis: { range: [0, 1], title: { text: 'p(run)' } },
    shapes: [{ type: 'line', xref: 'paper', x0: 0, x1: 1, y0: 0.5, y1: 0.5, line: { dash: 'dot', color: '#5b6470', width: 1 } }],
    legend: { orientation: 'h', y: 1.12, x: 1, xanchor: 'right' },
    margin: { l: 50, r: 20, t: 50, b: 80 },
  }, `gates-${safeName(model)}`);
}

/** Small multiples: one map per block, one shared scale across blocks. */
function renderBlocks(r, model) {
  const multiples = $('block-maps');
  purgeAll(multiples);
  multiples.replaceChildren();
  $('blocks-title').hidden = !r.ponder;
  if (!r.ponder) return;
  const input = r.input || {};
  const key = state.map === 'units' ? 'units' : 'ponder_cost';
  let lo = Infinity, hi = -Infinity;
  for (const b of r.ponder.blocks) { const [a, c] = minMax(b[key]); lo = Math.min(lo, a); hi = Math.max(hi, c); }
  if (!(hi > lo)) hi = lo + 1e-6;
  const divs = r.ponder.blocks.map((b, i) => el('div', { id: `block-map-${i}`, class: 'plot', 'aria-label': `block ${b.index + 1} map` }));
  multiples.append(...divs);
  r.ponder.blocks.forEach((b, i) => {
    const fig = mapFigure({
      z: b[key], image: input.image, width: input.width, height: input.height, zmin: lo, zmax: hi,
      title: `block ${b.index + 1} (${b.width}×${b.height}): N+R ${fmt(b.mean_ponder, 2)}, N ${fmt(b.mean_units, 2)}/${b.n_units}`,
      unit: mapUnit(state.map), box: input.box, showscale: i === r.ponder.blocks.length - 1, compact: true,
    });
    plot(divs[i], fig.data, fig.layout, `block-${b.index}-${safeName(model)}`, { compact: true });
  });
}

// ------------------------------------------------------------------ test samples
function chooseSample(index) {
  cancelUpload();
  state.image = { sample: index };
  syncUrl();
  markSelectedSample();
  runImage();
}

/** The grid says, where the samples would be, why there are none; so does the result panel. */
function noSamples(text, className = 'empty') {
  const grid = $('samples');
  grid.dataset.key = '';
  $('samples-note').textContent = '';
  $('samples-more').hidden = true;
  grid.replaceChildren(el('p', { class: className, text }));
  firstScreen = false;
  hint = NO_SAMPLES_HINT;
  if (!results.image) renderEmpty();
}

async function loadSamples() {
  const id = state.model.image;
  const grid = $('samples');
  // Taken before the early returns: model A shown, B picked, A picked again returns early
  // below, and B's list (still loading) must not land over A's.
  const token = ++samplesToken;
  if (!id) { grid.replaceChildren(); return; }
  const model = MODEL_BY_ID.get(id);
  if (!hasTestSet(model)) {
    noSamples(`No test set comes with ${id} (${model.dataset}, imported): upload an image to analyse it.`);
    return;
  }
  $('samples-more').hidden = false;
  hint = HINT;
  const key = `${id}@${state.samplesOffset}`;
  if (grid.dataset.key === key) { markSelectedSample(); return; }
  if (firstScreen && !state.image && !results.image) renderEmpty(`Loading the first test sample of ${id}…`);
  try {
    // 503: the test set is not installed on the server. Not a failure of the page: the grid
    // says what installs it; uploads still work.
    const list = await api('GET', `/api/models/${encodeURIComponent(id)}/samples?count=${SAMPLE_COUNT}&offset=${state.samplesOffset}`,
      { channel: 'samples', label: 'Loading samples', quiet: (err) => err.status === 503 });
    if (token !== samplesToken) return;
    grid.dataset.key = key;
    $('samples-note').textContent = `(${model.dataset}, #${state.samplesOffset}–${state.samplesOffset + list.length - 1})`;
    grid.replaceChildren(...list.map((s) => el('button', {
      type: 'button', class: 'thumb', 'data-index': s.index, title: `#${s.index}: ${s.class}`, 'aria-pressed': 'false',
      'aria-label': `test sample ${s.index}, ${s.class}`, onclick: () => chooseSample(s.index),
    }, el('img', { src: s.image, alt: '' }), el('span', { class: 'caption', text: s.class }))));
    markSelectedSample();
    if (firstScreen) {
      firstScreen = false;
      if (!state.image && list.length) chooseSample(list[0].index);
    }
  } catch (err) {
    if (token !== samplesToken) return;
    if (err.status === 503) noSamples(err.detail, 'empty notice');
    else if (firstScreen) { firstScreen = false; renderEmpty(); } // the message is in the banner
  }
}

function markSelectedSample() {
  const sel = state.image && state.image.sample !== undefined ? String(state.image.sample) : null;
  $('samples').querySelectorAll('.thumb').forEach((b) => b.setAttribute('aria-pressed', b.dataset.index === sel ? 'true' : 'false'));
}

// ------------------------------------------------------------------ export
function exportImage(format) {
  const r = results.image;
  if (!r) return false;
  const model = results.imageRequest.model;
  const name = `image-${safeName(model)}`;
  if (format === 'json') return downloadJson(name, { model, request: results.imageRequest.body, response: r });
  if (r.ponder) {
    // One row per input pixel: the totals and every block's value at that pixel (nearest cell).
    const H = r.ponder.total.length, W = H ? r.ponder.total[0].length : 0;
    const header = ['y', 'x', 'ponder_total', 'units_total'];
    r.ponder.blocks.forEach((b) => header.push(`block${b.index}_ponder`, `block${b.index}_units`));
    const rows = [];
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const row = [y, x, r.ponder.total[y][x], r.ponder.units_total ? r.ponder.units_total[y][x] : null];
        for (const b of r.ponder.blocks) {
          const by = Math.min(b.ponder_cost.length - 1, Math.floor((y * b.ponder_cost.length) / H));
          const bx = Math.min(b.ponder_cost[0].length - 1, Math.floor((x * b.ponder_cost[0].length) / W));
          row.push(b.ponder_cost[by][bx], b.units ? b.units[by][bx] : null);
        }
        rows.push(row);
      }
    }
    return downloadCsv(name, header, rows);
  }
  if (r.gates) return downloadCsv(name, ['layer', 'probability', 'executed'], r.gates.layers.map((l, i) => [l, r.gates.probability[i], r.gates.executed[i] ? 1 : 0]));
  return downloadCsv(name, ['rank', 'index', 'class', 'probability'], r.prediction.map((p, i) => [i + 1, p.index, p.class, p.probability]));
}

// ------------------------------------------------------------------ the view
function selectModel(id) {
  state.model.image = id;
  state.samplesOffset = 0;
  $('image-model').value = id;
  renderCardSummary('image-card', id);
}

export const view = {
  name: 'image',
  title: 'Image',
  kind: 'image',
  images: true,
  settings: ['colormap', 'opacity', 'map', 'resolution', 'invert', 'box'],

  init(s, q) {
    results.image = null;
    results.imageRequest = null;
    s.model.image = defaultModel('image', q.get('model'), { prefer: hasTestSet });
    s.samplesOffset = s.image && s.image.sample !== undefined ? Math.floor(s.image.sample / SAMPLE_COUNT) * SAMPLE_COUNT : 0;
    firstScreen = !q.has('view') && !s.image;
    fillPicker($('image-model'), 'image', s.model.image);
    renderCardSummary('image-card', s.model.image);
    $('image-model').addEventListener('change', (e) => {
      selectModel(e.target.value);
      syncUrl();
      loadSamples();
      runImage();
    });
    $('samples-more').addEventListener('click', () => { state.samplesOffset += SAMPLE_COUNT; loadSamples(); });
    bindFileInput($('file-input'));
    bindDropAndPaste($('drop-zone'));
    bindExports('image', exportImage);
  },

  writeUrl(q, s) {
    if (s.model.image && (s.view === 'image' || s.model.image !== preferred())) q.set('model', s.model.image);
  },

  activate() {
    loadSamples();
    if (state.image && !resultMatches()) runImage();
  },

  render,

  restyle(change) {
    const maps = () => [$('heatmap'), ...$('block-maps').querySelectorAll('.js-plotly-plot')];
    if ('opacity' in change) restyleHeatmaps(maps(), { opacity: change.opacity });
    if ('colormap' in change) restyleHeatmaps(maps(), { colorscale: [plotlyScale(change.colormap)] });
    if (('map' in change || 'box' in change) && results.image) render();
  },

  selectModel,
};
