/* Text view: a byte model that ponders per input step, on the text typed: each character coloured by how
 * long the network pondered on it, the per-character chart with the surprisal, the mean per
 * character class, and the model's held-out corpus statistics (a polled server job). A model
 * whose trace says which layers computed each byte (Trace.token_layers: the answer's `layers`)
 * also gets the character x layer heatmap, a clicked character's column in words, and the corpus
 * panel's class x layer rates. */
import { $, debounce, el, fill, fmt, pct, stat, unshownNote } from '../core/dom.js';
import { api, jobPoller } from '../core/api.js';
import { colorAt, gradientCss, inkFor, plotlyScale, rgbCss } from '../core/colors.js';
import { plot, purge, recolored } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, fillPicker, hasTestSet, renderCardSummary } from '../core/cards.js';
import { MODEL_BY_ID, SETTING_DEFAULTS, results, state, syncUrl } from '../core/state.js';

const TEXT_URL_LIMIT = 500;
const TEXT_DEBOUNCE_MS = 300;
const MEASURES = ['auto', 'steps', 'ponder'];

let textToken = 0;
let textAbort = null;
let selectedChar = null; // the character whose column of layers is shown (an index into the answer's chars), or null
let selectedText = null; // the text it was chosen in: an answer for another text (the text edited) drops the selection;
                         // another model's answer for the same text keeps it
const corpusJob = jobPoller();

async function runText() {
  const id = state.model.text;
  const text = state.text;
  if (!id) return;
  if (!text) { results.text = null; render(); return; }
  if (textAbort) textAbort.abort();
  textAbort = new AbortController();
  const token = ++textToken;
  $('text-output').classList.add('busy');
  try {
    const response = await api('POST', `/api/models/${encodeURIComponent(id)}/text`, { body: { text }, channel: 'text', label: `Running ${id}`, signal: textAbort.signal });
    if (token !== textToken) return;
    results.text = { model: id, text, ...response };
    render();
  } catch (err) {
    if (err.name !== 'AbortError' && token === textToken) { results.text = null; render(); }
  } finally {
    if (token === textToken) $('text-output').classList.remove('busy');
  }
}
const runTextSoon = debounce(runText, TEXT_DEBOUNCE_MS);

const visibleChar = (c) => (c === ' ' ? '␣' : c === '\n' ? '↵' : c === '\t' ? '⇥' : c);
function charTitle(t, c, i) {
  const code = c.char.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
  const bytes = c.bytes > 1 ? `\n(${c.bytes} UTF-8 bytes: N and N+R are the mean over them, bits their sum)` : '';
  const label = (t.classes && t.classes[c.class] && t.classes[c.class].label) || c.class || '';
  return `#${i} '${visibleChar(c.char)}' (U+${code}), ${label}\nsteps N = ${c.steps}\nponder N+R = ${fmt(c.ponder, 3)}\nbits = ${c.bits === null || c.bits === undefined ? '– (first character)' : fmt(c.bits, 2)}${bytes}`;
}
// The quantity the characters are coloured by: the user's choice, or what the server found varying.
const textMeasure = (t) => (state.measure === 'auto' ? (t.measure || 'ponder') : state.measure);

/** Draw an answer of POST /api/models/{id}/text (the last one by default). */
function render(t = results.text) {
  const out = $('text-output');
  if (selectedChar !== null && (!t || t.text !== selectedText)) clearSelection();
  if (!t || !t.chars) {
    out.replaceChildren(el('span', { class: 'muted', text: state.text ? '' : 'Type above: each character is coloured by how long the network pondered on it.' }));
    $('text-stats').replaceChildren();
    $('text-legend').replaceChildren();
    $('text-classes').replaceChildren();
    purge($('text-chart'));
    renderLayers(null);
    return;
  }
  const key = textMeasure(t);
  const values = t.chars.map((c) => c[key]);
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi > lo ? hi - lo : 0;
  const frag = document.createDocumentFragment();
  const colors = t.chars.map((c) => colorAt(state.colormap, span ? (c[key] - lo) / span : 0.5));
  const selected = hasLayers(t) ? selectedChar : null; // a column is shown for models with layer rows only
  t.chars.forEach((c, i) => {
    const rgb = colors[i];
    const node = el('span', { class: c.char === '\n' ? 'ch newline' : 'ch', title: charTitle(t, c, i), 'data-i': i, 'data-steps': c.steps, 'data-ponder': c.ponder });
    node.style.backgroundColor = rgbCss(rgb);
    node.style.color = inkFor(rgb);
    node.textContent = c.char === '\n' ? '↵\n' : c.char;
    if (i === selected) node.classList.add('selected');
    frag.append(node);
  });
  out.replaceChildren(frag);
  const unit = key === 'ponder' ? 'ponder cost N+R' : 'steps N';
  const digits = key === 'ponder' ? 3 : 0;
  fill($('text-legend'), el('span', { text: `${unit}: ${fmt(lo, digits)}` }), el('span', { class: 'ramp', style: `background:${gradientCss(state.colormap)}` }), el('span', { text: fmt(hi, digits) }),
    span ? null : el('span', { text: '(all characters equal)' }));
  $('text-stats').replaceChildren(
    stat('chars', String(t.chars.length)),
    stat('mean N', fmt(t.mean_steps, 3)),
    stat('mean N+R', fmt(t.mean_ponder, 3)),
    stat('bits/char', fmt(t.bits_per_char, 3)),
    stat('time', `${fmt(t.time_ms, 1)} ms`),
    ...[unshownNote(t)].filter(Boolean),
  );
  $('text-classes').replaceChildren(...Object.entries(t.classes || {}).map(([name, c]) => el('span', {
    class: `class-chip${name === 'space' || name === 'punctuation' ? ' boundary' : ''}`, 'data-class': name,
    title: `${c.count} character(s) of class ${c.label} in this text`,
  }, el('b', { text: c.label }), ` N ${fmt(c.steps, 2)} · N+R ${fmt(c.ponder, 2)} `, el('span', { class: 'muted', text: `(${c.count})` }))));
  plot($('text-chart'), textFigure(t, key, colors), `text-${safeName(t.model)}`);
  renderLayers(t);
}

// ------------------------------------------------------------------ layers per character
const hasLayers = (t) => !!(t && t.chars && t.layers && t.layer_names && t.figures && t.figures.layers);

/** The character x layer heatmap (ponderscope.figures.text_layers_dict) of an answer with layer
 * rows, the selected character's column in words, or nothing (the panel hidden). */
function renderLayers(t) {
  const panel = $('text-layers-panel');
  const chart = $('text-layers-chart');
  $('text-output').classList.toggle('has-layers', hasLayers(t));
  if (!hasLayers(t)) {
    panel.hidden = true;
    purge(chart);
    $('text-layer-detail').replaceChildren();
    $('text-layers-stats').replaceChildren();
    return;
  }
  if (selectedChar !== null && selectedChar >= t.chars.length) clearSelection();
  panel.hidden = false;
  const run = t.layers.map((row) => row.reduce((a, v) => a + v, 0));
  $('text-layers-stats').replaceChildren(
    stat('layers', String(t.layer_names.length)),
    stat('mean run per char', fmt(run.reduce((a, v) => a + v, 0) / run.length, 2), 'the layers that computed a character, averaged over the characters'),
  );
  Promise.resolve(plot(chart, layersFigure(t), `layers-${safeName(t.model)}`)).then(() => {
    if (!chart.on) return;
    chart.removeAllListeners('plotly_click');
    chart.on('plotly_click', (event) => {
      const point = event && event.points && event.points[0];
      const index = point ? Number(/^#(\d+)/.exec(String(point.x))?.[1]) : NaN;
      if (Number.isInteger(index)) selectChar(index);
    });
  });
  renderLayerDetail(t);
}

/** The server's figure with the colour scale in force and the selected character's column outlined. */
function layersFigure(t) {
  const fig = t.figures.layers;
  const [ran, ...rest] = fig.data;
  const data = state.colormap === SETTING_DEFAULTS.colormap ? fig.data : [{ ...ran, colorscale: plotlyScale(state.colormap) }, ...rest];
  if (selectedChar === null) return { data, layout: fig.layout };
  const column = { type: 'rect', xref: 'x', yref: 'paper', x0: selectedChar - 0.5, x1: selectedChar + 0.5, y0: 0, y1: 1,
    line: { color: '#ff3b30', width: 2 }, fillcolor: 'rgba(0,0,0,0)', name: 'selected character' };
  return { data, layout: { ...fig.layout, shapes: [...(fig.layout.shapes || []), column] } };
}

/** Show character `index`'s column: its span outlined, its column on the heatmap, its layers in words. */
function selectChar(index) {
  const t = results.text;
  if (!hasLayers(t) || index < 0 || index >= t.chars.length) return;
  selectedChar = index;
  selectedText = t.text;
  $('text-output').querySelectorAll('.ch.selected').forEach((node) => node.classList.remove('selected'));
  const span = $('text-output').querySelector(`.ch[data-i="${index}"]`);
  if (span) span.classList.add('selected');
  plot($('text-layers-chart'), layersFigure(t), `layers-${safeName(t.model)}`);
  renderLayerDetail(t);
}

function clearSelection() {
  selectedChar = null;
  selectedText = null;
}

function renderLayerDetail(t) {
  const out = $('text-layer-detail');
  if (selectedChar === null) {
    out.replaceChildren(el('span', { class: 'muted', text: 'Click a character (in the text or a column) to see which layers computed it.' }));
    return;
  }
  const i = selectedChar;
  const c = t.chars[i];
  const row = t.layers[i];
  const weights = t.layer_weights ? t.layer_weights[i] : null;
  const bytes = c.bytes > 1 ? ` (${c.bytes} UTF-8 bytes: the mean over them)` : '';
  fill(out,
    el('b', { text: `#${i} '${visibleChar(c.char)}'` }),
    el('span', { class: 'layers-run', text: `${row.filter((v) => v > 0).length} of ${row.length} layers ran${bytes}:` }),
    t.layer_names.map((name, l) => {
      const v = row[l];
      const what = v === 0 ? 'did not run' : v === 1 ? 'ran' : `ran on ${pct(v, 0)} of its bytes`;
      const weight = weights && v > 0 ? `, weight ${fmt(weights[l], 3)}` : '';
      return el('span', { class: `layer-cell ${v > 0 ? 'ran' : 'skipped'}`, 'data-layer': l, text: `${name}: ${what}${weight}` });
    }));
}

const TEXT_UNITS = { steps: 'steps N', ponder: 'ponder cost N+R' };

/** The server's per-character figure (ponderscope.figures.text_figure), drawn for the answer's own
 * measure in the default colour scale. Another measure `key` swaps the bars and the dotted line
 * (y from the answer's chars, labels swapped); another scale colours the bars as the characters
 * above (`colors`, [r, g, b] each). */
function textFigure(t, key, colors) {
  const fig = t.figures.text;
  if (key === t.measure && state.colormap === SETTING_DEFAULTS.colormap) return fig;
  const other = key === 'ponder' ? 'steps' : 'ponder';
  const swap = (text) => (key === t.measure || typeof text !== 'string' ? text
    : text.replace(/steps N|ponder cost N\+R/g, (unit) => (unit === TEXT_UNITS.steps ? TEXT_UNITS.ponder : TEXT_UNITS.steps)));
  const [bars, line, ...rest] = fig.data;
  return {
    data: [
      { ...bars, name: swap(bars.name), hovertemplate: swap(bars.hovertemplate), y: t.chars.map((c) => c[key]), marker: { ...bars.marker, color: colors.map(rgbCss) } },
      { ...line, name: swap(line.name), hovertemplate: swap(line.hovertemplate), y: t.chars.map((c) => c[other]) },
      ...rest,
    ],
    layout: { ...fig.layout, title: { ...fig.layout.title, text: swap(fig.layout.title.text) } },
  };
}

// ------------------------------------------------------------------ corpus panel
// The model's held-out statistics per character class (a job the server runs once and caches).
async function runCorpus() {
  const id = state.model.text;
  corpusJob.cancel();
  if (!id) return;
  if (results.corpus && results.corpus.model === id) { renderCorpus(); return; }
  const model = MODEL_BY_ID.get(id);
  if (!hasTestSet(model)) { // nothing to measure: said once, where the statistics would be (no request, no retry)
    results.corpus = { model: id, missing: `No held-out statistics for ${id}: ${model.no_test_set || 'the server has none for it'}.` };
    renderCorpus();
    return;
  }
  if (results.corpus) { results.corpus = null; renderCorpus(); } // not the previous model's numbers meanwhile
  try {
    const outcome = await corpusJob.run(`/api/models/${encodeURIComponent(id)}/dataset`, {
      channel: 'corpus',
      label: `Held-out statistics for ${id}`,
      keepPolling: () => state.view === 'text',
      onStatus: (status) => { if (status.status === 'running') $('corpus-source').textContent = `measuring: ${status.message || ''}`; },
    });
    if (!outcome) return;
    // a failed job is said once (here and in the banner); another model and back, or a reload, asks again
    results.corpus = outcome.failed ? { model: id, missing: `No held-out statistics for ${id}: ${outcome.failed}` } : { model: id, ...outcome.result };
    renderCorpus();
  } catch (_) { /* shown in the banner */ }
}

function renderCorpus(c = results.corpus) {
  const layers = $('corpus-layers-chart');
  if (!c || !c.per_char_class || !c.figures || !c.figures.corpus_layers) {
    purge(layers);
    layers.hidden = true;
  }
  if (!c || !c.per_char_class) {
    purge($('corpus-chart'));
    $('corpus-stats').replaceChildren();
    $('corpus-source').textContent = (c && c.missing) || '';
    return;
  }
  plot($('corpus-chart'), c.figures.corpus, `corpus-${safeName(c.model)}`);
  if (c.figures.corpus_layers) { // models whose trace has token_layers: class x layer, the share of the bytes each layer computed
    layers.hidden = false;
    plot(layers, recolored(c.figures.corpus_layers, state.colormap), `corpus-layers-${safeName(c.model)}`);
  }
  const given = (v) => v !== null && v !== undefined;
  fill($('corpus-stats'),
    stat('bytes', String(c.bytes)),
    stat('bits/byte', fmt(c.bits_per_byte, 3)),
    stat('mean N', fmt(c.mean_steps, 3)),
    given(c.steps_off_mode_fraction) ? stat('N ≠ its mode', pct(c.steps_off_mode_fraction, 1), `N differs from its most common value (${c.steps_mode}) on this share of bytes`) : null,
    given(c.steps_at_cap_fraction) ? stat('N at cap', pct(c.steps_at_cap_fraction, 1), `N = M = ${c.max_steps} on this share of bytes`) : null,
    given(c.corr_ponder_surprisal) ? stat('corr(N+R, bits)', fmt(c.corr_ponder_surprisal, 3), 'Pearson correlation over held-out bytes between the ponder while reading a byte and the loss of predicting the next one (the chart above pairs a character with its own surprisal)') : null,
    given(c.corr_steps_surprisal) ? stat('corr(N, bits)', fmt(c.corr_steps_surprisal, 3), 'the same for the step count N') : null,
    given(c.layer_rates) ? stat('layers per byte', fmt(c.layer_rates.reduce((a, v) => a + v, 0), 2), `of ${c.layer_rates.length}: the layers that computed a held-out byte, on average`) : null,
  );
  $('corpus-source').textContent = `From ${c.source}.`;
}

// ------------------------------------------------------------------ the view
function exportText(format) {
  const t = results.text;
  if (!t) return false;
  const name = `text-${safeName(t.model)}`;
  if (format === 'json') return downloadJson(name, t);
  const names = hasLayers(t) ? t.layer_names : [];
  const weights = names.length && t.layer_weights ? names : [];
  return downloadCsv(name, ['index', 'char', 'codepoint', 'steps', 'ponder', 'bits', ...names.map((n) => `ran: ${n}`), ...weights.map((n) => `weight: ${n}`)],
    t.chars.map((c, i) => [i, c.char, c.char.codePointAt(0), c.steps, c.ponder, c.bits,
      ...(names.length ? t.layers[i] : []), ...(weights.length ? t.layer_weights[i] : [])]));
}

function selectModel(id) {
  state.model.text = id;
  $('text-model').value = id;
  renderCardSummary('text-card', id);
}

export const view = {
  name: 'text',
  title: 'Text',
  kind: 'text',
  settings: ['colormap'],

  init(s, q) {
    results.text = null;
    results.corpus = null;
    s.model.text = defaultModel('text', q.get('tmodel'));
    s.measure = MEASURES.includes(q.get('measure')) ? q.get('measure') : 'auto'; // 'steps' (N), 'ponder' (N+R) or what varies
    s.text = q.get('text') || '';
    fillPicker($('text-model'), 'text', s.model.text);
    renderCardSummary('text-card', s.model.text);
    $('ponder-measure').value = s.measure;
    $('text-input').value = s.text;
    render();
    $('text-input').addEventListener('input', (e) => {
      state.text = e.target.value;
      syncUrl();
      if (selectedChar !== null) { clearSelection(); render(); } // the character at that index may be another one now
      if (!state.text) { if (textAbort) textAbort.abort(); textToken++; results.text = null; render(); return; }
      runTextSoon();
    });
    $('ponder-measure').addEventListener('change', (e) => { state.measure = e.target.value; render(); syncUrl(); });
    $('text-output').addEventListener('click', (e) => { // a character's column of layers (models with layer rows)
      const span = e.target.closest('.ch');
      if (span) selectChar(Number(span.dataset.i));
    });
    $('text-model').addEventListener('change', (e) => {
      selectModel(e.target.value);
      syncUrl();
      runText();
      runCorpus();
    });
    bindExports('text', exportText);
  },

  writeUrl(q, s) {
    if (s.model.text && (s.view === 'text' || s.model.text !== defaultModel('text', null))) q.set('tmodel', s.model.text);
    if (s.measure !== 'auto') q.set('measure', s.measure);
    if (s.text && s.text.length <= TEXT_URL_LIMIT) q.set('text', s.text);
  },

  activate() {
    const t = results.text;
    if (!t || t.text !== state.text || t.model !== state.model.text) runText();
    runCorpus();
  },

  render,

  restyle(change) {
    if ('colormap' in change) { render(); renderCorpus(); }
  },

  selectModel,
};
