/* The Image view's "What if" panel: the same weights with one documented change for the image
 * on screen (models/whatif.py): a threshold (halting, or an exit's confidence) and a cap (units
 * per block, layers per token), a bias on the gate decision (gated models), one unit removed.
 * The controls come from the model's `whatif` (GET /api/models: the trained values, the units,
 * and `about`: what each setting is, in the model's words, which labels the controls); a control
 * at its trained value sends nothing, so "reset to trained" is the plain request again.
 *
 * state.whatif = {threshold, cap, gate_bias, lesion}: null each where it is the trained value
 * (lesion: one unit's name). In the link: threshold=, cap=, bias=, lesion=. */
import { $, debounce, el, fill, fmt, pct } from '../core/dom.js';
import { MODEL_BY_ID, state } from '../core/state.js';

const THRESHOLD_MIN = 0.3;
const BIAS_RANGE = 4;
const SLIDER_DELAY_MS = 150;

export const trainedWhatif = () => ({ threshold: null, cap: null, gate_bias: null, lesion: null });

/** What model `id` lets change ({threshold, cap, units, downsampling} / {gate_bias, units, ...}), or null. */
export const knobsOf = (id) => { const m = MODEL_BY_ID.get(id); return (m && m.whatif) || null; };
const has = (k, key) => !!k && k[key] !== undefined && k[key] !== null;
/** What setting `key` of knobs `k` is, in the model's words: {label, description} (GET /api/models' whatif.about). */
const about = (k, key) => (k && k.about && k.about[key]) || { label: key, description: '' };
const capitalized = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** The request's `whatif` for `w`: only the values that differ from the trained ones; null: none. */
export function whatifBody(w = state.whatif) {
  if (!w) return null;
  const body = {};
  if (w.threshold !== null) body.threshold = w.threshold;
  if (w.cap !== null) body.cap = w.cap;
  if (w.gate_bias !== null) body.gate_bias = w.gate_bias;
  if (w.lesion) body.lesion = [w.lesion];
  return Object.keys(body).length ? body : null;
}

/** "threshold 0.80, units per block, at most 2, without block1.unit1" for an answer's echoed `whatif`
 * (the cap named as model `id` names it). */
export function describeWhatif(w, id = state.model.image) {
  if (!w) return '';
  const parts = [];
  if (w.threshold !== null && w.threshold !== undefined) parts.push(`threshold ${fmt(w.threshold, 2)}`);
  if (w.cap !== null && w.cap !== undefined) parts.push(`${about(knobsOf(id), 'cap').label} ${w.cap}`);
  if (w.gate_bias !== null && w.gate_bias !== undefined) parts.push(`gate bias ${w.gate_bias > 0 ? '+' : ''}${fmt(w.gate_bias, 2)}`);
  for (const unit of w.lesion || []) parts.push(`without ${unit}`);
  return parts.join(', ');
}

const near = (a, b) => Math.abs(a - b) < 1e-9;
const tidy = (v) => Math.round(v * 1e6) / 1e6; // a slider's 0.30000000000000004 -> 0.3

/** The what-if of the link `q` for model `id`: each value kept only where it applies to the model. */
export function readWhatif(q, id) {
  const w = trainedWhatif();
  const k = knobsOf(id);
  if (!k) return w;
  const threshold = parseFloat(q.get('threshold'));
  if (has(k, 'threshold') && Number.isFinite(threshold) && threshold > 0 && threshold <= 1 && !near(threshold, k.threshold)) w.threshold = threshold;
  const cap = Number(q.get('cap'));
  if (has(k, 'cap') && Number.isInteger(cap) && cap >= 1 && cap < k.cap) w.cap = cap;
  const bias = parseFloat(q.get('bias'));
  if (has(k, 'gate_bias') && Number.isFinite(bias) && !near(bias, k.gate_bias)) w.gate_bias = bias;
  if ((k.units || []).includes(q.get('lesion'))) w.lesion = q.get('lesion');
  return w;
}

export function writeWhatif(q, w) {
  if (!w) return;
  if (w.threshold !== null) q.set('threshold', String(w.threshold));
  if (w.cap !== null) q.set('cap', String(w.cap));
  if (w.gate_bias !== null) q.set('bias', String(w.gate_bias));
  if (w.lesion) q.set('lesion', w.lesion);
}

// ------------------------------------------------------------------ the controls
/** Put model `id`'s knobs and state.whatif into the controls; the panel is hidden for a model
 * that has none (an RNN, a plugin's family, an imported model the server cannot change). */
export function showWhatifPanel(id) {
  const k = knobsOf(id);
  $('whatif-panel').hidden = !k;
  if (!k) return;
  const w = state.whatif;
  for (const key of ['threshold', 'cap', 'gate_bias']) { // each control named and explained in the model's words
    if (!has(k, key)) continue;
    const { label, description } = about(k, key);
    const id = key === 'gate_bias' ? 'bias' : key;
    $(`wi-${id}-label`).textContent = capitalized(label);
    $(`wi-${id}-row`).title = description;
  }
  $('wi-threshold-row').hidden = !has(k, 'threshold');
  if (has(k, 'threshold')) {
    const input = $('wi-threshold');
    input.min = String(Math.min(THRESHOLD_MIN, k.threshold));
    input.max = '1';
    input.step = near(Math.round(k.threshold * 100) / 100, k.threshold) ? '0.01' : 'any';
    input.value = String(w.threshold ?? k.threshold);
    input.dataset.trained = String(k.threshold);
    $('wi-threshold-value').textContent = fmt(Number(input.value), 2);
  }
  $('wi-cap-row').hidden = !has(k, 'cap');
  if (has(k, 'cap')) {
    const options = [el('option', { value: '' }, `no cap (trained: up to ${k.cap})`)];
    for (let n = 1; n < k.cap; n++) options.push(el('option', { value: String(n) }, String(n)));
    $('wi-cap').replaceChildren(...options);
    $('wi-cap').value = w.cap === null ? '' : String(w.cap);
  }
  $('wi-bias-row').hidden = !has(k, 'gate_bias');
  if (has(k, 'gate_bias')) {
    const input = $('wi-bias');
    input.min = String(Math.min(-BIAS_RANGE, k.gate_bias));
    input.max = String(Math.max(BIAS_RANGE, k.gate_bias));
    input.value = String(w.gate_bias ?? k.gate_bias);
    input.dataset.trained = String(k.gate_bias);
    $('wi-bias-value').textContent = signed(Number(input.value));
  }
  const down = new Set(k.downsampling || []);
  $('wi-lesion').replaceChildren(el('option', { value: '' }, 'none (trained)'),
    ...(k.units || []).map((u) => el('option', { value: u }, down.has(u) ? `${u} (downsampling)` : u)));
  $('wi-lesion').value = w.lesion || '';
  markChanged();
}

const signed = (v) => `${v > 0 ? '+' : ''}${fmt(v, 2)}`;

/** The reset button is live only while something differs from the trained model. */
function markChanged() {
  $('wi-reset').disabled = !whatifBody();
}

/** Wire the controls: each change goes into state.whatif, then `rerun()` (sliders: once they
 * rest for SLIDER_DELAY_MS; selects and the reset button: at once). */
export function bindWhatifPanel(rerun) {
  const later = debounce(rerun, SLIDER_DELAY_MS);
  const slider = (input, output, key, show) => {
    const take = (now) => {
      const v = tidy(Number(input.value));
      output.textContent = show(v);
      state.whatif[key] = near(v, Number(input.dataset.trained)) ? null : v;
      markChanged();
      if (now) rerun(); else later();
    };
    input.addEventListener('input', () => take(false));
    input.addEventListener('change', () => take(false));
  };
  slider($('wi-threshold'), $('wi-threshold-value'), 'threshold', (v) => fmt(v, 2));
  slider($('wi-bias'), $('wi-bias-value'), 'gate_bias', signed);
  $('wi-cap').addEventListener('change', (e) => {
    state.whatif.cap = e.target.value === '' ? null : Number(e.target.value);
    markChanged();
    rerun();
  });
  $('wi-lesion').addEventListener('change', (e) => {
    state.whatif.lesion = e.target.value || null;
    markChanged();
    rerun();
  });
  $('wi-reset').addEventListener('click', () => {
    state.whatif = trainedWhatif();
    showWhatifPanel(state.model.image);
    rerun();
  });
}

// ------------------------------------------------------------------ what changed
const top = (r) => (r && r.prediction && r.prediction[0]) || null;
const gatesRun = (r) => (r && r.gates ? `${r.gates.executed.filter(Boolean).length} of ${r.gates.executed.length}` : null);
const exitTaken = (r) => (r && r.exits ? r.exits.names[r.exits.taken] : null);

/** The badge over the result ("what-if: threshold 0.80") and, beside the prediction, the trained
 * answer's numbers next to the what-if's; nothing of either while the trained model is shown. */
export function renderWhatifOutcome(r, trained) {
  const change = r && r.whatif ? describeWhatif(r.whatif, r.model) : '';
  const badge = $('whatif-badge');
  badge.hidden = !change;
  badge.textContent = change ? `what-if: ${change}` : '';
  const box = $('wi-compare');
  if (!change) {
    fill(box, el('p', { class: 'muted small', text: r ? 'Showing the trained model. Move a control to ask what if.' : '' }));
    return;
  }
  const t = trained || null;
  const row = (label, before, after, title) => el('tr', { title },
    el('th', { scope: 'row', text: label }), el('td', { text: before ?? '–' }), el('td', { class: before !== after ? 'changed' : null, text: after ?? '–' }));
  const predicted = (x) => (top(x) ? `${top(x).class} ${pct(top(x).probability, 1)}` : null);
  const rows = [
    row('prediction', predicted(t), predicted(r)),
    row('FLOPs', t && t.flops ? pct(t.flops.ratio) : null, r.flops ? pct(r.flops.ratio) : null, 'FLOPs executed over the dense network'),
  ];
  if (r.ponder || (t && t.ponder)) rows.push(row('mean N+R', t && t.ponder ? fmt(t.ponder.mean, 2) : null, r.ponder ? fmt(r.ponder.mean, 2) : null, 'ponder cost summed over blocks'));
  if (r.gates) rows.push(row('blocks run', gatesRun(t), gatesRun(r), 'gated blocks executed on this image'));
  if (r.exits) rows.push(row('exit', exitTaken(t), exitTaken(r), 'the exit this image left at'));
  fill(box, el('table', { class: 'whatif-compare', id: 'wi-compare-table' },
    el('thead', {}, el('tr', {}, el('th', {}), el('th', { scope: 'col', text: 'trained' }), el('th', { scope: 'col', text: 'what-if' }))),
    el('tbody', {}, rows)));
}
