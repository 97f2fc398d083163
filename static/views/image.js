/* Image view: one model on one image (an upload or a test sample): the ponder map over the
 * image, one map per block (each named as the model names it), a gated model's gates, a model's
 * exits (each exit's confidence, the threshold, the exit taken), the prediction and the FLOPs.
 * With no image in the link, the first screen shows the model's first test sample. */
import { $, el, fill, fmt, shortHash, stat, unshownNote } from '../core/dom.js';
import { api } from '../core/api.js';
import { showSettings } from '../core/nav.js';
import { plot, purge } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, familyLabel, fillPicker, hasTestSet, renderCardSummary } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl } from '../core/state.js';
import { mapFigure, renderFlops, renderPrediction } from '../parts/image-parts.js';
import { bindDropAndPaste, bindFileInput, cancelUpload } from '../parts/image-input.js';
import { bindWhatifPanel, readWhatif, renderWhatifOutcome, showWhatifPanel, trainedWhatif, whatifBody, writeWhatif } from '../parts/whatif-panel.js';

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
  const whatif = whatifBody();
  if (whatif) body.whatif = whatif;
  return body;
}
/** What names the trained answer for a request: the model and the body without its what-if. */
function trainedKey(model, body) {
  const { whatif, ...plain } = body;
  return JSON.stringify([model, plain]);
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
  // Under a what-if, the trained answer for the same image is shown beside it: asked for too
  // unless it is the one on hand (the page showed it before the control moved).
  const { whatif, ...plain } = body;
  const key = trainedKey(id, body);
  const known = results.imageTrained && results.imageTrained.key === key;
  const url = `/api/models/${encodeURIComponent(id)}/image`;
  $('image-result').classList.add('busy');
  try {
    const [response, trained] = await Promise.all([
      api('POST', url, { body, channel: 'image', label: `Running ${id}` }),
      whatif && !known ? api('POST', url, { body: plain, channel: 'image', label: `Running ${id} as trained` }) : null,
    ]);
    if (token !== imageToken) return;
    if (!whatif || trained) results.imageTrained = { key, answer: whatif ? trained : response };
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
  showSettings();
  $('image-empty').textContent = message || hint;
  $('image-empty').hidden = false;
  $('image-result').hidden = true;
  $('prediction').replaceChildren();
  $('flops').replaceChildren();
  $('image-source').textContent = '';
  renderWhatifOutcome(null);
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
  showSettings(); // the box control, when this answer has a box
  if (!r) { renderEmpty(); return; }
  const model = results.imageRequest.model;
  const input = r.input || {};
  $('image-empty').hidden = true;
  $('image-result').hidden = false;
  fill($('image-source'), `Showing ${describeSource(input)}`, input.resolution_note ? el('div', { class: 'note', id: 'resolution-note', text: `* ${input.resolution_note}.` }) : null, unshownNote(r));
  $('result-title').textContent = r.ponder ? 'Ponder map' : r.gates ? 'Gate decisions' : r.exits ? 'Exits' : 'Input';
  const stats = [
    stat('input', `${input.width}×${input.height}`, 'the image as the network saw it'),
    stat('resolution', `${input.resolution || state.resolution}${input.resolution_note ? ' *' : ''}`, input.resolution_note || 'the resolution the model ran at'),
    stat('source', describeSource(input)),
    stat('time', `${fmt(r.time_ms, 1)} ms`, 'server time for this request'),
  ];
  if (r.ponder) stats.push(stat('mean N+R', fmt(r.ponder.mean, 3), "the image's ponder cost: each map's mean N+R over its positions, summed over the maps"));
  if (r.exits) stats.push(stat('exit', `${r.exits.names[r.exits.taken]} (${r.exits.taken + 1} of ${r.exits.names.length})`, 'the exit this image left at'));
  if (typeof r.execution === 'string') stats.push(stat('execution', r.execution, r.execution === 'masked' ? 'masked: skipped work is computed and multiplied by zero (as in the official code); FLOPs are counted from the masks' : 'how skipped work is handled'));
  fill($('image-stats'), stats);
  renderPrediction($('prediction'), r.prediction, input.label);
  renderFlops($('flops'), r.flops, r.time_ms);
  const trained = results.imageTrained;
  renderWhatifOutcome(r, trained && trained.key === trainedKey(model, results.imageRequest.body) ? trained.answer : null);

  const note = $('no-ponder');
  note.hidden = !!r.ponder;
  if (!r.ponder) note.textContent = noMapNote(MODEL_BY_ID.get(model), r);
  const gates = $('gates-chart');
  gates.hidden = !r.figures.gates;
  if (r.figures.gates) plot(gates, r.figures.gates, `gates-${safeName(model)}`);
  else purge(gates);
  const exits = $('exits-chart');
  exits.hidden = !r.figures.exits;
  if (r.figures.exits) plot(exits, r.figures.exits, `exits-${safeName(model)}`);
  else purge(exits);
  drawMaps(r, model);
}

/** Why there is no ponder map: the model's family as it was registered (its label and description),
 * else what its answer holds. */
function noMapNote(m, r) {
  if (m && m.family_description) return `${familyLabel(m)}: this model ${m.family_description}.`;
  return r.gates
    ? 'This model decides per layer, not per position: see the gate chart below.'
    : 'This model reports no per-position decisions (its trace has no blocks), so there is no ponder map.';
}

/** The server's map figures ("map"; "blocks": one map per block on one scale) under the display settings. */
function drawMaps(r = results.image, model = results.imageRequest.model) {
  plot($('heatmap'), mapFigure(r, 'map'), `${r.ponder ? 'ponder-map' : 'input'}-${safeName(model)}`);
  const blocks = $('block-maps');
  blocks.hidden = !r.figures.blocks;
  $('blocks-title').hidden = blocks.hidden;
  if (r.figures.blocks) plot(blocks, mapFigure(r, 'blocks'), `blocks-${safeName(model)}`);
  else purge(blocks);
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
    noSamples(`No test set comes with ${id}: ${model.no_test_set || 'the server has none for it'}; upload an image to analyse it.`);
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
  if (r.ponder) return exportPixels(name, model, results.imageRequest.body);
  if (r.gates) return downloadCsv(name, ['layer', 'probability', 'executed'], r.gates.layers.map((l, i) => [l, r.gates.probability[i], r.gates.executed[i] ? 1 : 0]));
  if (r.exits) return downloadCsv(name, ['exit', 'confidence', 'taken', 'threshold'], r.exits.names.map((n, i) => [n, r.exits.confidence[i], i === r.exits.taken ? 1 : 0, r.exits.threshold]));
  return downloadCsv(name, ['rank', 'index', 'class', 'probability'], r.prediction.map((p, i) => [i + 1, p.index, p.class, p.probability]));
}

/** The maps at full resolution, one row per input pixel: the totals as the server computes them
 * on the input's pixels (asked for now: the answer on screen has them on the finest block's
 * grid), and every block's value at that pixel (its nearest cell, as Trace.ponder_map resizes). */
async function exportPixels(name, model, body) {
  let r;
  try {
    r = await api('POST', `/api/models/${encodeURIComponent(model)}/image`,
      { body: { ...body, maps: 'input', include: ['numbers'] }, channel: 'export-image', label: 'Maps at full resolution' });
  } catch (_) { return; } // the message is in the banner
  const p = r.ponder;
  const H = p.total.length, W = H ? p.total[0].length : 0;
  const header = ['y', 'x', 'ponder_total', 'units_total'];
  p.blocks.forEach((b) => header.push(`block${b.index}_ponder`, `block${b.index}_units`));
  const rows = [];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const row = [y, x, p.total[y][x], p.units_total[y][x]];
      for (const b of p.blocks) {
        const by = Math.min(b.grid.height - 1, Math.floor((y * b.grid.height) / H)); // nearest, as Trace.ponder_map resizes
        const bx = Math.min(b.grid.width - 1, Math.floor((x * b.grid.width) / W));
        row.push(b.ponder_cost[by][bx], b.units[by][bx]);
      }
      rows.push(row);
    }
  }
  downloadCsv(name, header, rows);
}

// ------------------------------------------------------------------ the view
function selectModel(id) {
  if (id !== state.model.image) state.whatif = trainedWhatif(); // another model: other units, other knobs
  state.model.image = id;
  state.samplesOffset = 0;
  $('image-model').value = id;
  renderCardSummary('image-card', id);
  showWhatifPanel(id);
}

/** A what-if control moved: the image again under the new settings (when it is not on screen). */
function rerunWhatif() {
  syncUrl();
  if (state.view === 'image' && state.image && !resultMatches()) runImage();
}

export const view = {
  name: 'image',
  title: 'Image',
  kind: 'image',
  images: true,
  settings: ['colormap', 'opacity', 'map', 'resolution', 'invert', 'box'],
  hasBox: () => Boolean(results.image && results.image.input && results.image.input.box),

  init(s, q) {
    results.image = null;
    results.imageRequest = null;
    results.imageTrained = null;
    s.model.image = defaultModel('image', q.get('model'), { prefer: hasTestSet });
    s.whatif = readWhatif(q, s.model.image);
    s.samplesOffset = s.image && s.image.sample !== undefined ? Math.floor(s.image.sample / SAMPLE_COUNT) * SAMPLE_COUNT : 0;
    firstScreen = !q.has('view') && !s.image;
    fillPicker($('image-model'), 'image', s.model.image);
    renderCardSummary('image-card', s.model.image);
    showWhatifPanel(s.model.image);
    bindWhatifPanel(rerunWhatif);
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
    writeWhatif(q, s.whatif);
  },

  activate() {
    loadSamples();
    if (state.image && !resultMatches()) runImage();
  },

  render,

  // Every display setting here restyles the maps from the answer on hand (no request).
  restyle() {
    if (results.image) drawMaps();
  },

  selectModel,
};
