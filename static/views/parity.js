/* Parity view: Graves' parity task on a vector the user edits (0, +1, −1 per entry): the answer,
 * the steps N and ponder N+R, and every vector tried against the test-set curve. The chart is the
 * last answer's figure (the server's: the curve, this vector as "current"), its "your vectors"
 * points gathered from every answer of this model so far (each answer's own point). */
import { $, debounce, el, fmt, stat } from '../core/dom.js';
import { api } from '../core/api.js';
import { plot } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { defaultModel, fillPicker, renderCardSummary } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl } from '../core/state.js';

let parityToken = 0;
const points = new WeakMap(); // history entry -> its answer's "your vectors" trace (one point)
const POINTS = 'your vectors';
const vectorText = (vector) => vector.map((v) => (v > 0 ? '+' : v < 0 ? '-' : '0')).join('');

function parityBits() {
  const m = MODEL_BY_ID.get(state.model.parity);
  const task = (m && (m.task || (m.card && m.card.task))) || {};
  return Number(task.bits) || 16;
}
function randomVector(bits) {
  // As in the paper's generator: k ~ U{1..bits} random positions set to +1 or -1.
  const k = 1 + Math.floor(Math.random() * bits);
  const order = [...Array(bits).keys()].sort(() => Math.random() - 0.5);
  const v = Array(bits).fill(0);
  for (const i of order.slice(0, k)) v[i] = Math.random() < 0.5 ? -1 : 1;
  return v;
}
function ensureVector() {
  const bits = parityBits();
  if (!state.vector || state.vector.length !== bits) state.vector = randomVector(bits);
}

function renderVector() {
  if (!state.model.parity) return;
  ensureVector();
  $('parity-vector').replaceChildren(...state.vector.map((v, i) => el('button', {
    type: 'button', id: `parity-cell-${i}`, 'data-v': v, 'aria-label': `entry ${i}: ${v}`,
    onclick: () => { state.vector[i] = v === 0 ? 1 : v === 1 ? -1 : 0; renderVector(); syncUrl(); runParitySoon(); },
  }, v > 0 ? '+1' : v < 0 ? '−1' : '0')));
}

async function runParity() {
  const id = state.model.parity;
  if (!id) return;
  ensureVector();
  const vector = state.vector.slice();
  const token = ++parityToken;
  try {
    const response = await api('POST', `/api/models/${encodeURIComponent(id)}/parity`, { body: { vector }, channel: 'parity', label: `Running ${id}` });
    if (token !== parityToken) return;
    results.parity = { model: id, vector, ...response };
    const { figures, curve, vector: sent, ...numbers } = response; // the card's curve is drawn in the figure, not kept per entry
    const entry = { model: id, vector: vectorText(sent), ...numbers };
    points.set(entry, figures.parity.data.find((trace) => trace.name === POINTS));
    results.parityHistory.push(entry);
    if (results.parityHistory.length > 500) results.parityHistory.shift();
    render();
  } catch (_) { /* banner */ }
}
const runParitySoon = debounce(runParity, 150);

/** Draw an answer of POST /api/models/{id}/parity (the last one by default) and the history. */
function render(p = results.parity) {
  if (!p) return;
  const ones = p.ones;
  const expected = ones % 2 ? 'odd' : 'even';
  const right = expected === p.answer;
  $('parity-result').replaceChildren(
    el('span', { class: `verdict ${right ? 'right' : 'wrong'}`, text: `${p.answer} ${right ? '✓' : '✗'}` }),
    stat('probability', fmt(p.probability, 3), 'probability of the answer given'),
    stat('expected', `${expected} (${ones} × +1)`),
    stat('steps N', String(p.steps)),
    stat('ponder N+R', fmt(p.ponder, 3)),
    stat('nonzero entries', String(p.nonzero)),
  );
  const fig = p.figures.parity;
  const mine = results.parityHistory.filter((h) => h.model === p.model).map((h) => points.get(h)).filter(Boolean);
  const gather = (key) => mine.flatMap((trace) => trace[key] || []);
  const data = fig.data.map((trace) => (trace.name === POINTS ? { ...trace, x: gather('x'), y: gather('y'), text: gather('text') } : trace));
  plot($('parity-chart'), { data, layout: fig.layout }, `parity-${safeName(p.model)}`);
  // What only some families report: p(n) over steps (a halting distribution), and signals not drawn here
  $('parity-halting').hidden = !p.figures.halting;
  if (p.figures.halting) plot($('parity-halting'), p.figures.halting, `parity-halting-${safeName(p.model)}`);
  const unshown = p.unshown_signals || [];
  $('parity-unshown').hidden = !unshown.length;
  $('parity-unshown').textContent = unshown.length ? `This model also reports ${unshown.join(', ')}, which this view does not draw (GET the answer as JSON to see it).` : '';
}

function exportParity(format) {
  const p = results.parity;
  if (!p) return false;
  const name = `parity-${safeName(p.model)}`;
  const history = results.parityHistory.filter((h) => h.model === p.model);
  if (format === 'json') return downloadJson(name, { model: p.model, current: p, history });
  return downloadCsv(name, ['vector', 'nonzero', 'plus_ones', 'expected', 'answer', 'probability', 'steps', 'ponder'],
    history.map((h) => { const ones = [...h.vector].filter((c) => c === '+').length; return [h.vector, h.nonzero, ones, ones % 2 ? 'odd' : 'even', h.answer, h.probability, h.steps, h.ponder]; }));
}

function selectModel(id) {
  state.model.parity = id;
  $('parity-model').value = id;
  renderCardSummary('parity-card', id);
}

export const view = {
  name: 'parity',
  title: 'Parity',
  kind: 'parity',
  settings: [],

  init(s, q) {
    results.parity = null;
    results.parityHistory = [];
    s.model.parity = defaultModel('parity', q.get('pmodel'));
    s.vector = q.get('vec') ? [...q.get('vec')].map((c) => (c === '+' ? 1 : c === '-' ? -1 : 0)) : null; // entries -1/0/1
    fillPicker($('parity-model'), 'parity', s.model.parity);
    renderCardSummary('parity-card', s.model.parity);
    $('parity-random').addEventListener('click', () => { state.vector = randomVector(parityBits()); renderVector(); syncUrl(); runParity(); });
    $('parity-clear').addEventListener('click', () => { state.vector = Array(parityBits()).fill(0); renderVector(); syncUrl(); runParity(); });
    $('parity-model').addEventListener('change', (e) => {
      selectModel(e.target.value);
      renderVector();
      syncUrl();
      runParity();
    });
    bindExports('parity', exportParity);
  },

  writeUrl(q, s) {
    if (s.model.parity && (s.view === 'parity' || s.model.parity !== defaultModel('parity', null))) q.set('pmodel', s.model.parity);
    if (s.vector) q.set('vec', vectorText(s.vector));
  },

  activate() {
    renderVector();
    if (!results.parity) runParity();
  },

  render,

  restyle() {}, // nothing here follows the display settings
};
