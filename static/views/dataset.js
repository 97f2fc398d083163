/* Dataset view: an image model over its whole test set (a background job on the server, polled):
 * FLOPs and accuracy per class, histograms, ConvNet-AIG's execution rates, and the test images
 * with the least and the most computation (a click opens one in the Image view). */
import { $, el, fill, flopsText, fmt, pct, stat } from '../core/dom.js';
import { jobPoller } from '../core/api.js';
import { plotlyScale } from '../core/colors.js';
import { plot, purge, restyleHeatmaps } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, fillPicker, hasTestSet, renderCardSummary } from '../core/cards.js';
import { results, state, syncUrl, viewNamed } from '../core/state.js';
import { showView } from '../core/nav.js';
import { SAMPLE_COUNT } from './image.js';

const job = jobPoller();
// The Image view's model when it has a test set (the picker offers only those).
const fallback = () => defaultModel('image', state.model.image, { keep: hasTestSet });

async function runDataset() {
  const id = state.model.dataset;
  job.cancel(); // A shown, B picked, A picked again: B's answer (still on its way) is dropped
  if (!id) return;
  if (results.dataset && results.dataset.model === id) { $('dataset-status').hidden = true; render(); return; }
  $('dataset-status').hidden = false;
  try {
    const outcome = await job.run(`/api/models/${encodeURIComponent(id)}/dataset`, {
      channel: 'dataset',
      label: `Dataset statistics for ${id}`,
      keepPolling: () => state.view === 'dataset',
      onStatus: (status) => {
        $('dataset-progress').value = Number(status.progress) || 0;
        $('dataset-progress').textContent = pct(status.progress, 0);
        $('dataset-message').textContent = `${status.status}: ${status.message || ''} (${pct(status.progress, 0)})`;
      },
    });
    if (!outcome || outcome.failed) return;
    results.dataset = { model: id, ...outcome.result };
    $('dataset-status').hidden = true;
    render();
  } catch (_) { // the message is in the banner
    $('dataset-status').hidden = true;
  }
}

function histogramTrace(h, name, color) {
  const centres = [], widths = [];
  for (let i = 0; i < h.counts.length; i++) {
    centres.push((h.edges[i] + h.edges[i + 1]) / 2);
    widths.push(h.edges[i + 1] - h.edges[i]);
  }
  return { type: 'bar', x: centres, y: h.counts, width: widths, name, marker: { color, line: { color: '#fff', width: 0.5 } }, hovertemplate: `${name} %{x:.3f}: %{y} images<extra></extra>` };
}

function weightedMean(perClass, key) {
  let s = 0, n = 0;
  for (const c of perClass) if (c[key] !== null && c[key] !== undefined) { s += c[key] * c.count; n += c.count; }
  return n ? s / n : null;
}

/** Plot into `div` when `data` is given; otherwise hide and purge it. */
function optionalPlot(div, data, layout, name) {
  div.hidden = !data;
  if (data) plot(div, data, layout, name);
  else purge(div);
}

/** Draw a finished job's result {model, per_class, histograms, least, most, ...}. */
function render(d = results.dataset) {
  if (!d || d.model !== state.model.dataset) return;
  $('dataset-result').hidden = false;
  fill($('dataset-stats'),
    stat('test images', String(d.examples)),
    stat('accuracy', pct(d.accuracy, 2)),
    stat('mean FLOPs', pct(d.flops_ratio), 'of the dense network'),
    d.dense_flops ? stat('dense', flopsText(d.dense_flops)) : null,
    d.ponder_histogram ? stat('mean ponder', fmt(weightedMean(d.per_class, 'mean_ponder'), 3)) : null,
  );
  const classes = d.per_class.map((c) => c.class);
  const tag = safeName(d.model);
  plot($('dataset-class-chart'), [
    { type: 'bar', name: 'mean FLOPs / dense', x: classes, y: d.per_class.map((c) => c.mean_flops_ratio), marker: { color: '#e0892b' }, hovertemplate: '%{x}: %{y:.1%} of dense FLOPs<extra></extra>' },
    { type: 'scatter', mode: 'markers+lines', name: 'accuracy', x: classes, y: d.per_class.map((c) => c.accuracy), yaxis: 'y2', marker: { color: '#1f5fbf', size: 8 }, line: { dash: 'dot' }, hovertemplate: '%{x}: accuracy %{y:.1%}<extra></extra>' },
  ], {
    title: { text: `${d.model}: mean FLOPs and accuracy per class` },
    yaxis: { title: { text: 'FLOPs executed / dense' }, tickformat: '.0%', rangemode: 'tozero' },
    yaxis2: { title: { text: 'accuracy' }, overlaying: 'y', side: 'right', tickformat: '.0%', range: [0, 1.05], dtick: 0.2, showgrid: false },
    legend: { orientation: 'h', y: -0.25 },
    margin: { l: 60, r: 60, t: 40, b: 90 },
  }, `dataset-class-${tag}`);

  const hasPonder = d.per_class.some((c) => c.mean_ponder !== null && c.mean_ponder !== undefined);
  optionalPlot($('dataset-ponder-chart'), hasPonder && [{ type: 'bar', x: classes, y: d.per_class.map((c) => c.mean_ponder), marker: { color: '#3b528b' }, hovertemplate: '%{x}: mean ponder %{y:.3f}<extra></extra>' }],
    { title: { text: 'Mean ponder cost N+R per class (summed over blocks)' }, yaxis: { title: { text: 'ponder cost N+R' } }, margin: { l: 60, r: 20, t: 40, b: 90 } }, `dataset-ponder-${tag}`);

  plot($('dataset-flops-hist'), [histogramTrace(d.flops_histogram, 'FLOPs ratio', '#e0892b')],
    { title: { text: 'FLOPs executed / dense, per image' }, xaxis: { title: { text: 'FLOPs ratio' }, tickformat: '.0%' }, yaxis: { title: { text: 'images' } }, bargap: 0 }, `dataset-flops-hist-${tag}`);

  optionalPlot($('dataset-ponder-hist'), d.ponder_histogram && [histogramTrace(d.ponder_histogram, 'ponder', '#3b528b')],
    { title: { text: 'Ponder cost per image (mean over positions, summed over blocks)' }, xaxis: { title: { text: 'ponder cost N+R' } }, yaxis: { title: { text: 'images' } }, bargap: 0 }, `dataset-ponder-hist-${tag}`);

  const h = d.executed_layers_histogram;
  optionalPlot($('dataset-layers-hist'), h && [{ type: 'bar', x: h.counts.map((_, k) => h.edges[k]), y: h.counts, marker: { color: '#1f5fbf' }, hovertemplate: '%{x} layers: %{y} images<extra></extra>' }],
    { title: { text: 'Executed gated layers per image' }, xaxis: { title: { text: 'layers executed' }, dtick: 1 }, yaxis: { title: { text: 'images' } } }, `dataset-layers-hist-${tag}`);

  const rates = d.class_layer_rates;
  const layers = rates && (d.layers || rates[0].map((_, i) => `layer ${i}`));
  optionalPlot($('dataset-class-layer'), rates && [{ type: 'heatmap', z: rates, x: layers, y: classes, zmin: 0, zmax: 1, colorscale: plotlyScale(state.colormap),
    colorbar: { title: { text: 'execution rate', side: 'right' }, tickformat: '.0%' }, hovertemplate: '%{y}, %{x}: runs %{z:.1%}<extra></extra>' }],
  { title: { text: 'Execution rate per class and gated layer (ConvNet-AIG)' }, xaxis: { tickangle: -45 }, yaxis: { autorange: 'reversed' }, margin: { l: 100, r: 20, t: 40, b: 80 } }, `dataset-class-layer-${tag}`);

  const thumbs = (list) => list.map((e) => el('button', {
    type: 'button', class: 'thumb', 'data-index': e.index,
    title: `#${e.index} ${e.class}: FLOPs ${pct(e.flops_ratio)}${e.ponder !== null && e.ponder !== undefined ? `, ponder ${fmt(e.ponder, 2)}` : ''}. Click to open in the Image view.`,
    onclick: () => openSample(d.model, e.index),
  }, el('img', { src: e.image, alt: `test image ${e.index}, ${e.class}` }),
  el('span', { class: 'caption', text: e.ponder !== null && e.ponder !== undefined ? `${e.class} · ${fmt(e.ponder, 2)}` : `${e.class} · ${pct(e.flops_ratio, 0)}` })));
  $('dataset-least').replaceChildren(...thumbs(d.least || []));
  $('dataset-most').replaceChildren(...thumbs(d.most || []));
}

/** Test image `index` of `modelId` in the Image view, the sample grid at its page. */
function openSample(modelId, index) {
  viewNamed('image').selectModel(modelId);
  state.image = { sample: index };
  state.samplesOffset = Math.floor(index / SAMPLE_COUNT) * SAMPLE_COUNT;
  showView('image');
}

function exportDataset(format) {
  const d = results.dataset;
  if (!d) return false;
  const name = `dataset-${safeName(d.model)}`;
  if (format === 'json') return downloadJson(name, d);
  return downloadCsv(name, ['class', 'count', 'accuracy', 'mean_flops_ratio', 'mean_ponder', ...(d.layers ? d.layers.map((l) => `rate_${l}`) : [])],
    d.per_class.map((c, i) => [c.class, c.count, c.accuracy, c.mean_flops_ratio, c.mean_ponder, ...(d.class_layer_rates ? d.class_layer_rates[i] : [])]));
}

function selectModel(id) {
  state.model.dataset = id;
  $('dataset-model').value = id;
  renderCardSummary('dataset-card', id);
}

export const view = {
  name: 'dataset',
  title: 'Dataset',
  kind: 'image',
  settings: [],

  // After the Image view's init: by default, its model.
  init(s, q) {
    results.dataset = null;
    s.model.dataset = defaultModel('image', q.get('dmodel') || s.model.image, { keep: hasTestSet });
    // The dataset view needs a test set: imported models (the authors' checkpoints) come without.
    fillPicker($('dataset-model'), 'image', s.model.dataset, hasTestSet);
    renderCardSummary('dataset-card', s.model.dataset);
    $('dataset-model').addEventListener('change', (e) => {
      selectModel(e.target.value);
      $('dataset-result').hidden = true;
      syncUrl();
      runDataset();
    });
    bindExports('dataset', exportDataset);
  },

  writeUrl(q, s) {
    if (s.model.dataset && (s.view === 'dataset' || s.model.dataset !== fallback())) q.set('dmodel', s.model.dataset);
  },

  activate() {
    runDataset();
  },

  render,

  restyle(change) {
    if ('colormap' in change) restyleHeatmaps([$('dataset-class-layer')], { colorscale: [plotlyScale(change.colormap)] });
  },

  selectModel,
};
