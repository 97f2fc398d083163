/* Dataset view: an image model over its whole test set (a background job on the server, polled):
 * FLOPs and accuracy per class, histograms, ConvNet-AIG's execution rates, and the test images
 * with the least and the most computation (a click opens one in the Image view). */
import { $, el, fill, flopsText, fmt, pct, stat } from '../core/dom.js';
import { jobPoller } from '../core/api.js';
import { plot, purge, recolored } from '../core/plots.js';
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

// The result's figures (ponderscope.figures.dataset_figures, drawn by the server) -> their plots.
const CHARTS = { class: 'dataset-class-chart', ponder: 'dataset-ponder-chart', flops_histogram: 'dataset-flops-hist',
  ponder_histogram: 'dataset-ponder-hist', layers_histogram: 'dataset-layers-hist', class_layer: 'dataset-class-layer' };

/** Each of the result's figures in its plot (the execution rates in the colour scale chosen);
 * a plot whose figure this model has not (e.g. gate rates of a SACT model) is hidden. */
function drawCharts(d = results.dataset) {
  const figures = d.figures || {};
  for (const [name, id] of Object.entries(CHARTS)) {
    const div = $(id);
    const fig = figures[name];
    div.hidden = !fig;
    if (fig) plot(div, name === 'class_layer' ? recolored(fig, state.colormap) : fig, `${id.replace('-chart', '')}-${safeName(d.model)}`);
    else purge(div);
  }
}

/** Draw a finished job's result {model, per_class, histograms, least, most, figures, ...}. */
function render(d = results.dataset) {
  if (!d || d.model !== state.model.dataset) return;
  $('dataset-result').hidden = false;
  fill($('dataset-stats'),
    stat('test images', String(d.examples)),
    stat('accuracy', pct(d.accuracy, 2)),
    stat('mean FLOPs', pct(d.flops_ratio), 'of the dense network'),
    d.dense_flops ? stat('dense', flopsText(d.dense_flops)) : null,
    d.mean_ponder !== null && d.mean_ponder !== undefined ? stat('mean ponder', fmt(d.mean_ponder, 3), 'ponder cost N+R per image, over the test set') : null,
  );
  drawCharts(d);

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
    const d = results.dataset;
    if ('colormap' in change && d && d.model === state.model.dataset) drawCharts(d);
  },

  selectModel,
};
