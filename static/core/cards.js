/* Model cards as the page shows them: labels, the summary chips beside each model picker,
 * the pickers themselves, and which model a view shows by default. */
import { $, el, fmt, pct } from './dom.js';
import { MODELS, MODEL_BY_ID } from './state.js';

// Model families in the pickers' order (keys as the server's registry names them); others after.

export const testMetrics = (m) => (m && m.metrics ? (m.metrics.test || m.metrics) : {}) || {};
/** An image model whose test set the server can show (imported ones come without). */
export const hasTestSet = (m) => !!m && m.test_set !== false;

/** The family's name as the server's registry gives it (`family_label`), else its key. */
export function familyLabel(m) {
  return m.family_label || m.family || 'model';
}

export function taskLabel(m) {
  const task = m.task || (m.card && m.card.task) || {};
  const name = typeof task === 'string' ? task : task.name;
  if (name === 'parity') return `parity (${task.bits} bits)`;
  if (name === 'bytes-lm') return 'next-byte prediction';
  if (name === 'classify') return `classify (${(m.classes || []).length || '?'} classes)`;
  return name || '?';
}

/** The model's execution plan in a line (models/sparse.py: sparse, masked or tiles, the same numbers):
 * "auto: batch 1 → masked, batch 64 → sparse (measured; sparse 9.8 / masked 9.5 ms at batch 1, …)". */
export function executionText(m) {
  const e = m && m.execution;
  if (!e) return null;
  const plan = Object.entries(e.plan || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
  if (!plan.length) return `${e.mode}: ${e.default} always${e.note ? ` (${e.note})` : ''}`;
  const times = Object.entries(e.timings_ms || {}).sort((a, b) => Number(a[0]) - Number(b[0]))
    .map(([b, t]) => `${Object.entries(t).map(([path, ms]) => `${path} ${fmt(ms, 1)}`).join(' / ')} ms at batch ${b}`);
  const entries = plan.map(([b, x]) => `batch ${b} → ${x}`).join(', ');
  return `${e.mode}: ${entries} (${e.source}${e.device ? ` on ${e.device}` : ''}${times.length ? `; ${times.join(', ')}` : ''})`;
}

function sourceFile(source) {
  const first = (source.files || [])[0] || '';
  return first.split('/').pop();
}

export function summaryChips(m) {
  if (!m) return [el('span', { class: 'muted', text: 'no model' })];
  const t = testMetrics(m);
  const chip = (title, label, value) => el('span', { class: 'chip', title }, `${label} `, el('b', { text: value }));
  const chips = [
    el('span', { class: 'chip family', title: `family: ${m.family}; architecture: ${m.name}` }, familyLabel(m), ' ', el('b', { text: m.name })),
    chip('dataset the model was trained and evaluated on', 'dataset', m.dataset || '?'),
    chip('task', 'task', taskLabel(m)),
  ];
  if (m.source) chips.push(el('span', { class: 'chip imported', title: `imported from ${m.source.format}: ${(m.source.files || []).join(', ')}` }, 'imported from ', el('b', { text: `${m.source.format} ${sourceFile(m.source)}` })));
  if (m.preprocess && m.preprocess.input_size) chips.push(chip('training input size (H×W) and channels', 'input', `${m.preprocess.input_size.join('×')}×${m.preprocess.channels}`));
  if (t.accuracy !== undefined) chips.push(chip(`test accuracy${t.examples ? ` on ${t.examples} examples` : ''}`, 'accuracy', pct(t.accuracy, 2)));
  if (t.bits_per_byte !== undefined) chips.push(chip('held-out bits per byte', 'bits/byte', fmt(t.bits_per_byte, 3)));
  if (t.flops_ratio !== undefined) chips.push(chip('mean FLOPs executed / dense FLOPs on the test set', 'FLOPs', pct(t.flops_ratio)));
  if (t.mean_ponder !== undefined) chips.push(chip('mean ponder cost N+R per image (summed over its maps)', 'ponder', fmt(t.mean_ponder, 2)));
  if (t.mean_steps !== undefined) chips.push(chip('mean steps N', 'steps N', fmt(t.mean_steps, 2)));
  if (Array.isArray(t.exit_rates)) chips.push(chip('share of the test images leaving at each exit, input to output', 'exits', t.exit_rates.map((r) => pct(r, 0)).join(' / ')));
  if (!Object.keys(t).length) chips.push(el('span', { class: 'chip muted', text: 'no metrics in card' }));
  const execution = executionText(m);
  if (m.device) chips.push(el('span', { class: 'chip muted', title: `device the server runs it on; checkpoint folder ${m.path || '?'}${execution ? `; execution ${execution}` : ''}` }, `on ${m.device}`));
  return chips;
}

/** The chips of model `id` in the element #`target`. */
export function renderCardSummary(target, id) {
  $(target).replaceChildren(...summaryChips(MODEL_BY_ID.get(id)));
}

export function modelsOfKind(kind) {
  return MODELS.filter((m) => m.kind === kind).sort((a, b) => a.family_rank - b.family_rank || a.name.localeCompare(b.name));  // the registry's order
}

/** Fill a <select> with the models of `kind` that `keep` accepts, `selected` selected. */
export function fillPicker(select, kind, selected, keep = () => true) {
  const list = modelsOfKind(kind).filter(keep);
  select.replaceChildren(...list.map((m) => el('option', { value: m.id, selected: m.id === selected }, `${m.id} — ${familyLabel(m)}, ${m.dataset}`)));
  if (!list.length) {
    select.append(el('option', { value: '', text: `no ${kind} models loaded` }));
    select.disabled = true;
  }
  if (selected) select.value = selected;
}

/** `current` when it is a model of `kind` that `keep` accepts; else the first such model that
 * `prefer` accepts, else the first such model; null when there is none. */
export function defaultModel(kind, current, { keep = () => true, prefer = () => true } = {}) {
  const list = modelsOfKind(kind).filter(keep);
  if (current && list.some((m) => m.id === current)) return current;
  const best = list.find(prefer) || list[0];
  return best ? best.id : null;
}
