/* Models view: every loaded model's card (what it is, where it came from, its test metrics),
 * with buttons that open it in the views that show its kind. */
import { $, el, flopsText } from '../core/dom.js';
import { bindExports, downloadCsv, downloadJson } from '../core/export.js';
import { executionText, familyLabel, summaryChips, taskLabel, testMetrics } from '../core/cards.js';
import { MODELS } from '../core/state.js';
import { openModelIn, viewsFor } from '../core/nav.js';

function flatMetrics(t) {
  const rows = [];
  for (const [k, v] of Object.entries(t || {})) {
    if (typeof v === 'number') rows.push([k, Math.abs(v) >= 1e5 ? flopsText(v).replace(' FLOPs', '') : (Number.isInteger(v) ? String(v) : v.toFixed(4))]);
    else if (typeof v === 'string') rows.push([k, v]);
  }
  return rows;
}

const table = (rows) => el('table', {}, el('tbody', {}, rows.map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: String(v) })))));

function card(m) {
  const c = m.card || {};
  const rows = [
    ['id', m.id], ['family', familyLabel(m)], ['kind', m.kind], ['dataset', m.dataset], ['task', taskLabel(m)],
    ['architecture', c.model ? `${c.model} ${JSON.stringify(c.model_kwargs || {}).replace(/,/g, ', ')}` : null],
    ['note', c.note],
    ['imported from', m.source ? `${m.source.format}: ${(m.source.files || []).join(', ')}` : null],
    ['source sha256', m.source && m.source.sha256 ? Object.entries(m.source.sha256).map(([f, h]) => `${f} ${h}`).join('; ') : null],
    ['import command', c.import_command],
    ['classes', Array.isArray(m.classes) ? m.classes.join(', ') : null],
    ['input', m.preprocess ? `${(m.preprocess.input_size || []).join('×')} × ${m.preprocess.channels} channel(s)` : null],
    ['trained', c.training_time_s !== undefined ? `${c.training_time_s} s on ${c.trained_on || '?'}` : null],
    ['seed', c.seed], ['torch', c.torch_version], ['served on', m.device], ['execution', executionText(m)],
  ].filter(([, v]) => v !== null && v !== undefined && v !== '');
  const metrics = flatMetrics(testMetrics(m));
  return el('article', { 'data-model': m.id },
    el('h3', { text: m.id }),
    el('div', { class: 'card-summary' }, summaryChips(m)),
    table(rows),
    metrics.length ? el('h4', { text: 'Test metrics' }) : null,
    metrics.length ? table(metrics) : null,
    el('div', { class: 'actions' }, viewsFor(m).map((v) => el('button', { type: 'button', onclick: () => openModelIn(v.name, m.id) }, `Open in ${v.name}`))),
    el('details', {}, el('summary', { text: 'card.json' }), el('pre', { text: JSON.stringify(c, null, 2) })));
}

/** Draw the cards (once: they are the page's own data, not an answer). */
function render(models = MODELS) {
  const box = $('model-cards');
  if (box.childElementCount) return;
  if (!models.length) { box.append(el('p', { class: 'empty', text: 'No models loaded: start the server with a checkpoint directory.' })); return; }
  box.replaceChildren(...models.map(card));
}

function exportModels(format) {
  if (format === 'json') return downloadJson('models', MODELS);
  return downloadCsv('models', ['id', 'name', 'family', 'kind', 'dataset', 'task', 'accuracy', 'flops_ratio', 'mean_ponder', 'mean_steps', 'bits_per_byte', 'device'],
    MODELS.map((m) => { const t = testMetrics(m); return [m.id, m.name, m.family, m.kind, m.dataset, taskLabel(m), t.accuracy, t.flops_ratio, t.mean_ponder, t.mean_steps, t.bits_per_byte, m.device]; }));
}

export const view = {
  name: 'models',
  title: 'Models',
  kind: null,
  settings: [],

  init() {
    bindExports('models', exportModels);
  },

  writeUrl() {},

  activate() {
    render();
  },

  render,

  restyle() {},
};
