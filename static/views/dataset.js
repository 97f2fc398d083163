/* Dataset view: an image model over its whole test set (a background job on the server, polled)
 * or over the images of a `ponderscope analyze` result of its weights (the model's `analyses`,
 * chosen in "Statistics over"): FLOPs and accuracy per class, histograms, gated models' execution
 * rates, where the images of a model with exits leave (overall and per class), and the images
 * with the least and the most computation (a click opens a test image in the Image view). */
import { $, el, fill, flopsText, fmt, pct, stat } from '../core/dom.js';
import { jobPoller } from '../core/api.js';
import { plot, purge, recolored } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, fillPicker, hasTestSet, modelsOfKind, renderCardSummary } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl, viewNamed } from '../core/state.js';
import { showView } from '../core/nav.js';
import { SAMPLE_COUNT } from './image.js';

const job = jobPoller();
const analysesOf = (m) => (m && m.analyses) || [];
// A model this view can show: one with a test set, or with a `ponderscope analyze` result.
const showable = (m) => hasTestSet(m) || analysesOf(m).length > 0;
// The Image view's model when it can be shown here (the picker offers only those).
const fallback = () => defaultModel('image', state.model.image, { keep: showable });

// ------------------------------------------------------------------ what the statistics are over
/** Model `id`'s data sources, [{value, label}]: '' its test set, else an analysis's name. */
function sourcesOf(id) {
  const m = MODEL_BY_ID.get(id);
  const list = hasTestSet(m) ? [{ value: '', label: `test set (${m.dataset || '?'})` }] : [];
  for (const a of analysesOf(m)) list.push({ value: a.name, label: `${a.name}: ${a.data}, ${a.examples} images` });
  return list;
}

/** `wanted` when model `id` has that source; else its test set, else its first analysis ('' when
 * it has neither: the server then says why there is nothing to show). */
function defaultSource(id, wanted = null) {
  const list = sourcesOf(id);
  if (wanted !== null && list.some((s) => s.value === wanted)) return wanted;
  return list.length ? list[0].value : '';
}

/** The "Statistics over" picker for model `id` (shown when it has analyses), at state.datasetSource. */
function fillSources(id) {
  const list = sourcesOf(id);
  $('dataset-source').replaceChildren(...list.map((s) => el('option', { value: s.value, title: s.label, selected: s.value === state.datasetSource }, s.label)));
  $('dataset-source').value = state.datasetSource;
  $('dataset-source-picker').hidden = !analysesOf(MODEL_BY_ID.get(id)).length;
}

/** Whether `d` is the answer for the model and source picked now. */
const isCurrent = (d) => !!d && d.model === state.model.dataset && d.analysis === (state.datasetSource || null);

/** "ponderscope analyze over DATA: N images, P processes on DEVICES, S s (command: ...)". */
function sourceLine(source) {
  const processes = Number(source.world_size) || 1;
  return [
    `${source.computed_by || 'ponderscope analyze'} over ${source.data || '?'}: ${source.images ?? '?'} images, `
      + `${processes} process${processes === 1 ? '' : 'es'} on ${(source.devices || []).join(', ') || '?'}`
      + `${source.seconds !== undefined && source.seconds !== null ? `, ${fmt(source.seconds, 1)} s` : ''}`,
    source.command ? ' (command: ' : null,
    source.command ? el('code', { text: source.command }) : null,
    source.command ? ')' : null,
  ];
}

async function runDataset() {
  const id = state.model.dataset;
  const source = state.datasetSource || null;
  job.cancel(); // A shown, B picked, A picked again: B's answer (still on its way) is dropped
  if (!id) return;
  if (isCurrent(results.dataset)) { $('dataset-status').hidden = true; render(); return; }
  $('dataset-status').hidden = false;
  const query = source ? `?source=${encodeURIComponent(source)}` : '';
  try {
    const outcome = await job.run(`/api/models/${encodeURIComponent(id)}/dataset${query}`, {
      channel: 'dataset',
      label: `Dataset statistics for ${id}${source ? ` (${source})` : ''}`,
      keepPolling: () => state.view === 'dataset',
      onStatus: (status) => {
        $('dataset-progress').value = Number(status.progress) || 0;
        $('dataset-progress').textContent = pct(status.progress, 0);
        $('dataset-message').textContent = `${status.status}: ${status.message || ''} (${pct(status.progress, 0)})`;
      },
    });
    if (!outcome || outcome.failed) return;
    // `analysis`: the analysis's name, null for the test set (the result's own `source` says
    // how an analysis was computed)
    results.dataset = { ...outcome.result, model: id, analysis: source };
    $('dataset-status').hidden = true;
    render();
  } catch (_) { // the message is in the banner
    $('dataset-status').hidden = true;
  }
}

// The result's figures (ponderscope.figures.dataset_figures, drawn by the server) -> their plots.
const CHARTS = { class: 'dataset-class-chart', ponder: 'dataset-ponder-chart', flops_histogram: 'dataset-flops-hist',
  ponder_histogram: 'dataset-ponder-hist', layers_histogram: 'dataset-layers-hist', class_layer: 'dataset-class-layer',
  exits: 'dataset-exits', class_exit: 'dataset-class-exit' };
// The figures whose colours are the colour scale chosen (rates per class, as heatmaps).
const RECOLORED = new Set(['class_layer', 'class_exit']);

/** Each of the result's figures in its plot (the execution rates in the colour scale chosen);
 * a plot whose figure this model has not (e.g. gate rates of a model without gates) is hidden. */
function drawCharts(d = results.dataset) {
  const figures = d.figures || {};
  for (const [name, id] of Object.entries(CHARTS)) {
    const div = $(id);
    const fig = figures[name];
    div.hidden = !fig;
    if (fig) plot(div, RECOLORED.has(name) ? recolored(fig, state.colormap) : fig, `${id.replace('-chart', '')}-${safeName(d.model)}`);
    else purge(div);
  }
}

/** Draw a finished job's result {model, analysis, per_class, histograms, least, most, figures,
 * source?, ...}. */
function render(d = results.dataset) {
  if (!isCurrent(d)) return;
  const analysed = d.analysis !== null;
  $('dataset-result').hidden = false;
  const line = $('dataset-source-line');
  line.hidden = !analysed;
  if (analysed) fill(line, sourceLine(d.source || {}));
  else line.replaceChildren();
  fill($('dataset-stats'),
    stat(analysed ? 'images' : 'test images', String(d.examples)),
    stat('accuracy', pct(d.accuracy, 2)),
    stat('mean FLOPs', pct(d.flops_ratio), 'of the dense network'),
    d.dense_flops ? stat('dense FLOPs', flopsText(d.dense_flops), 'Trace.dense_flops: the network with nothing skipped') : null,
    d.mean_ponder !== null && d.mean_ponder !== undefined ? stat('mean ponder', fmt(d.mean_ponder, 3), `ponder cost N+R per image, over ${analysed ? 'these images' : 'the test set'}`) : null,
    d.exit_rates ? stat('leaving at each exit', d.exit_rates.map((r) => pct(r, 0)).join(' / '), `the share of the images leaving at ${(d.exits || []).join(', ')}`) : null,
  );
  drawCharts(d);

  // An analysis's images are not the test set's: they are shown, not opened in the Image view.
  const about = (e) => `#${e.index} ${e.class}: FLOPs ${pct(e.flops_ratio)}${e.ponder !== null && e.ponder !== undefined ? `, ponder ${fmt(e.ponder, 2)}` : ''}`;
  const thumbs = (list) => list.map((e) => el(analysed ? 'div' : 'button', {
    type: analysed ? null : 'button', class: analysed ? 'thumb static' : 'thumb', 'data-index': e.index,
    title: analysed ? `${about(e)} (image ${e.index} of ${d.analysis})` : `${about(e)}. Click to open in the Image view.`,
    onclick: analysed ? null : () => openSample(d.model, e.index),
  }, el('img', { src: e.image, alt: `${analysed ? 'image' : 'test image'} ${e.index}, ${e.class}` }),
  el('span', { class: 'caption', text: e.ponder !== null && e.ponder !== undefined ? `${e.class} · ${fmt(e.ponder, 2)}` : `${e.class} · ${pct(e.flops_ratio, 0)}` })));
  $('dataset-least').replaceChildren(...thumbs(d.least || []));
  $('dataset-most').replaceChildren(...thumbs(d.most || []));
  $('dataset-click-note').hidden = analysed;
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
  const name = `dataset-${safeName(d.model)}${d.analysis ? `-${safeName(d.analysis)}` : ''}`;
  if (format === 'json') return downloadJson(name, d);
  return downloadCsv(name, ['class', 'count', 'accuracy', 'flops_ratio', 'mean_ponder', ...(d.layers ? d.layers.map((l) => `rate_${l}`) : []),
    ...(d.exits ? d.exits.map((e) => `exit_${e}`) : [])],
  d.per_class.map((c, i) => [c.class, c.count, c.accuracy, c.flops_ratio, c.mean_ponder, ...(d.class_layer_execution_rate ? d.class_layer_execution_rate[i] : []),
    ...(d.class_exit_rates ? d.class_exit_rates[i] : [])]));
}

/** The image models this view leaves out, each with the server's reason (said once, under the picker). */
function renderLeftOut() {
  const out = modelsOfKind('image').filter((m) => !showable(m));
  const note = $('dataset-left-out');
  note.hidden = !out.length;
  note.textContent = out.length ? `Not listed: ${out.map((m) => `${m.id} (${m.no_test_set || 'no test set here'})`).join('; ')}.` : '';
}

/** Show model `id` (its statistics over its default source: the test set, else its first analysis). */
function selectModel(id, source = null) {
  state.model.dataset = id;
  state.datasetSource = defaultSource(id, source);
  $('dataset-model').value = id || '';
  renderCardSummary('dataset-card', id);
  fillSources(id);
}

export const view = {
  name: 'dataset',
  title: 'Dataset',
  kind: 'image',
  settings: [],

  // After the Image view's init: by default, its model.
  init(s, q) {
    results.dataset = null;
    // The dataset view needs a test set or an analysis: imported models (the authors'
    // checkpoints) come without a test set.
    fillPicker($('dataset-model'), 'image', null, showable);
    renderLeftOut();
    selectModel(defaultModel('image', q.get('dmodel') || s.model.image, { keep: showable }), q.get('source'));
    const changed = () => {
      $('dataset-result').hidden = true;
      syncUrl();
      runDataset();
    };
    $('dataset-model').addEventListener('change', (e) => { selectModel(e.target.value); changed(); });
    $('dataset-source').addEventListener('change', (e) => { state.datasetSource = e.target.value; changed(); });
    bindExports('dataset', exportDataset);
  },

  writeUrl(q, s) {
    if (s.model.dataset && (s.view === 'dataset' || s.model.dataset !== fallback())) q.set('dmodel', s.model.dataset);
    if (s.datasetSource && (s.view === 'dataset' || s.datasetSource !== defaultSource(s.model.dataset))) q.set('source', s.datasetSource);
  },

  activate() {
    runDataset();
  },

  render,

  restyle(change) {
    const d = results.dataset;
    if ('colormap' in change && isCurrent(d)) drawCharts(d);
  },

  selectModel,
};
