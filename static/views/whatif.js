/* What-if view: several image models over their test sets, with one change at a time and no
 * retraining (GET /api/studies/sweep and /lesion: cached background jobs on the server, polled
 * here). The sweep draws accuracy against FLOPs as the halting threshold, the cap on units or
 * the gate bias moves, the trained settings as stars and the reference model as a diamond; the lesion
 * study the accuracy without each unit, with k random units removed, per class, and a table.
 *
 * In the link: wmodels=a,b (the models ticked), wlimit=N (the first N test images) and
 * wrun=sweep,lesion (the studies asked for: a reload asks again, and the server's cache answers). */
import { $, el, fill, pct } from '../core/dom.js';
import { jobPoller } from '../core/api.js';
import { plot, purge, purgeAll, resizePlots } from '../core/plots.js';
import { bindExports, downloadCsv, downloadJson, safeName } from '../core/export.js';
import { familyLabel, hasTestSet, modelsOfKind } from '../core/cards.js';
import { MODEL_BY_ID, results, state, syncUrl } from '../core/state.js';
import { lesionRows, renderLesionTable } from '../parts/lesion-table.js';

const STUDIES = ['sweep', 'lesion'];
const LIMITS = [500, 1000, 2000, 1000000];
const DEFAULT_LIMIT = 1000;
// The bundled Fashion-MNIST ResNet-32s (three adaptive ones and their reference), when they are loaded.
const BUNDLED = ['fmnist_sact_resnet32', 'fmnist_act_resnet32', 'fmnist_aig_resnet32', 'fmnist_resnet32'];
const MAX_MODELS = 6; // the server's limit per study

const jobs = { sweep: jobPoller(), lesion: jobPoller() };
const LABELS = { sweep: 'Sweep', lesion: 'Lesion study' };

/** A model the studies take: an image model the server can change (`whatif`) with a test set. */
const eligible = (m) => !!m && m.kind === 'image' && !!m.whatif && hasTestSet(m);
const eligibleModels = () => modelsOfKind('image').filter(eligible);

/** The bundled Fashion-MNIST models when they are loaded; else the first model of each family. */
function defaultModels() {
  const list = eligibleModels();
  const bundled = BUNDLED.filter((id) => eligible(MODEL_BY_ID.get(id)));
  if (bundled.length) return bundled;
  const families = new Set();
  return list.filter((m) => !families.has(m.family) && families.add(m.family)).slice(0, 4).map((m) => m.id);
}
const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** What a study's answer is for: the models ticked now and the limit. */
const keyNow = () => `${state.whatifModels.join(',')}@${state.whatifLimit}`;
const isCurrent = (kind) => !!results.whatif[kind] && results.whatif[kind].key === keyNow();

// ------------------------------------------------------------------ the controls
function renderChecks() {
  const list = eligibleModels();
  $('whatif-models').replaceChildren(...list.map((m) => el('label', { title: `${familyLabel(m)}, ${m.dataset}` },
    el('input', { type: 'checkbox', value: m.id, checked: state.whatifModels.includes(m.id), onchange: onCheck }),
    ` ${m.id} `, el('span', { class: 'muted small', text: `(${familyLabel(m)})` }))));
  if (!list.length) $('whatif-models').append(el('span', { class: 'muted', text: 'no image model with a test set that the server can change is loaded' }));
}

function onCheck() {
  state.whatifModels = [...$('whatif-models').querySelectorAll('input:checked')].map((i) => i.value);
  selectionChanged();
}

/** New models or limit: what is shown stays, said to be for the earlier selection, until asked again. */
function selectionChanged() {
  syncUrl();
  for (const kind of STUDIES) {
    jobs[kind].cancel();
    $(`whatif-${kind}-status`).hidden = true;
  }
  render();
  updateButtons();
}

function updateButtons() {
  const n = state.whatifModels.length;
  for (const kind of STUDIES) {
    const button = $(`whatif-run-${kind}`);
    button.disabled = n === 0 || n > MAX_MODELS;
    button.title = n === 0 ? 'tick one or more models' : n > MAX_MODELS ? `at most ${MAX_MODELS} models at once` : `${LABELS[kind]} of ${n} model${n === 1 ? '' : 's'} over ${limitText(state.whatifLimit)}`;
  }
}

const limitText = (limit) => (limit >= 1000000 ? 'all their test images' : `the first ${limit} test images`);

function markStale(kind) {
  const shown = results.whatif[kind];
  const line = $(`whatif-${kind}-for`);
  if (!shown) return;
  const stale = shown.key !== keyNow();
  line.classList.toggle('stale', stale);
  fill(line, `${stale ? 'Shown for an earlier choice: ' : ''}${shown.models.join(', ')} over ${limitText(shown.limit)}`,
    shown.answer.results ? ` (${examplesOf(shown.answer)} images)` : '', stale ? `. Press ${LABELS[kind]} to ask for the models ticked above.` : '.');
}

/** The number of test images a study used (the first model's: each is capped at its test set). */
function examplesOf(answer) {
  const first = Object.values(answer.results || {})[0];
  if (!first) return '?';
  if (Array.isArray(first)) return first.length ? first[0].examples : '?';
  return first.trained ? first.trained.examples : '?';
}

// ------------------------------------------------------------------ running a study
/** Ask for study `kind` of the models ticked (the server answers from its cache or starts a job). */
async function runStudy(kind) {
  const models = [...state.whatifModels];
  const limit = state.whatifLimit;
  const key = keyNow();
  if (!models.length) return;
  if (!state.whatifRun.includes(kind)) { state.whatifRun = STUDIES.filter((k) => k === kind || state.whatifRun.includes(k)); syncUrl(); }
  if (isCurrent(kind)) { render(); return; }
  const status = $(`whatif-${kind}-status`);
  status.hidden = false;
  $(`whatif-${kind}-empty`).hidden = true;
  $(`whatif-${kind}-progress`).value = 0;
  $(`whatif-${kind}-message`).textContent = 'asking the server…';
  const query = new URLSearchParams(models.map((m) => ['models', m]));
  query.set('limit', String(limit));
  let last = null;
  try {
    const outcome = await jobs[kind].run(`/api/studies/${kind}?${query}`, {
      channel: `whatif-${kind}`,
      label: `${LABELS[kind]} of ${models.join(', ')}`,
      keepPolling: () => state.view === 'whatif', // left: the job goes on on the server; coming back asks again
      onStatus: (s) => { last = s; showProgress(kind, s); },
    });
    if (!outcome || outcome.failed || !last || !last.figures) return;
    results.whatif[kind] = { key, models, limit, answer: last };
    status.hidden = true;
    render();
  } catch (_) { // the message is in the banner
    status.hidden = true;
  }
}

/** The job's progress: overall, and per model (status and what it is measuring now). */
function showProgress(kind, s) {
  $(`whatif-${kind}-progress`).value = Number(s.progress) || 0;
  const parts = Object.entries(s.models || {}).map(([id, m]) => `${id}: ${m.status === 'done' ? 'done' : `${pct(m.progress, 0)}${m.message ? ` (${m.message})` : ''}`}`);
  $(`whatif-${kind}-message`).textContent = `${s.status} ${pct(s.progress, 0)} · ${parts.join(' · ')}`;
}

// ------------------------------------------------------------------ drawing
function render() {
  for (const kind of STUDIES) {
    const shown = results.whatif[kind];
    $(`whatif-${kind}-result`).hidden = !shown;
    $(`whatif-${kind}-empty`).hidden = !!shown || !$(`whatif-${kind}-status`).hidden;
    if (!shown) continue;
    markStale(kind);
    if (kind === 'sweep') drawSweep(shown);
    else drawLesion(shown);
  }
}

function drawSweep(shown) {
  const { answer } = shown;
  plot($('whatif-sweep-chart'), answer.figures.sweep, `sweep-${safeName(shown.models.join('-'))}`);
  // The trained point against the card: the same test metric over the same images.
  const checks = Object.entries(answer.results).map(([id, points]) => {
    const trained = points.find((p) => p.trained);
    const metrics = (MODEL_BY_ID.get(id) || {}).metrics || {};
    const [name, card] = Object.entries(metrics).find(([, m]) => m && typeof m === 'object' && trained && m.examples === trained.examples) || [];
    if (!trained) return null;
    const same = card && Math.abs(card.accuracy - trained.accuracy) < 1e-6 && Math.abs(card.flops_ratio - trained.flops_ratio) < 1e-6;
    const title = card ? `card metrics.${name} over ${card.examples} images: accuracy ${pct(card.accuracy, 2)}, FLOPs ${pct(card.flops_ratio)}`
      : `the card has no metrics over these ${trained.examples} images (metrics.slice: the first 500; metrics.test: all)`;
    return el('span', { class: `stat trained-check${same ? ' same' : ''}`, title, 'data-model': id },
      `${id} trained: `, el('b', { text: `${pct(trained.accuracy, 2)} at ${pct(trained.flops_ratio)} FLOPs` }),
      card ? ` ${same ? '= card' : '≠ card'} metrics.${name}` : ' (no card metrics over these images)');
  });
  const ref = answer.reference;
  fill($('whatif-sweep-check'), checks, ref ? el('span', { class: 'stat' }, `${ref.label} (reference, 100% of the FLOPs): `, el('b', { text: pct(ref.accuracy, 2) })) : null);
}

function drawLesion(shown) {
  const { answer } = shown;
  const figures = answer.figures;
  const name = safeName(shown.models.join('-'));
  plot($('whatif-lesion-single'), figures.single, `lesion-single-${name}`);
  plot($('whatif-lesion-random'), figures.random, `lesion-random-${name}`);
  const box = $('whatif-lesion-classes');
  const ids = Object.keys(answer.results);
  const drawn = box.dataset.models === ids.join(',');
  if (!drawn) {
    purgeAll(box);
    box.replaceChildren(...ids.map((id, i) => el('div', { id: `whatif-lesion-class-${i}`, class: 'plot', 'data-model': id })));
    box.dataset.models = ids.join(',');
  }
  ids.forEach((id, i) => {
    const fig = figures[`classes:${id}`];
    const div = $(`whatif-lesion-class-${i}`);
    if (fig) plot(div, fig, `lesion-classes-${safeName(id)}`);
    else purge(div);
  });
  renderLesionTable($('whatif-lesion-table'), answer.results);
}

// ------------------------------------------------------------------ export
function exportStudies(format) {
  const sweep = results.whatif.sweep;
  const lesion = results.whatif.lesion;
  if (!sweep && !lesion) return false;
  const strip = (s) => s && { models: s.models, limit: s.limit, results: s.answer.results, reference: s.answer.reference || null };
  if (format === 'json') return downloadJson('whatif', { sweep: strip(sweep), lesion: strip(lesion) });
  const rows = [];
  if (sweep) {
    for (const [id, points] of Object.entries(sweep.answer.results)) {
      for (const p of points) rows.push(['sweep', id, p.trained ? 'trained' : p.parameter, p.setting, '', p.accuracy, p.flops_ratio, '']);
    }
    const ref = sweep.answer.reference;
    if (ref) rows.push(['sweep', ref.label, 'reference', '', '', ref.accuracy, ref.flops_ratio, '']);
  }
  if (lesion) rows.push(...lesionRows(lesion.answer.results));
  return downloadCsv('whatif', ['study', 'model', 'what', 'setting', 'downsampling', 'accuracy', 'flops_ratio', 'execution_rate'], rows);
}

// ------------------------------------------------------------------ the view
export const view = {
  name: 'whatif',
  title: 'What if',
  kind: 'image',
  settings: [],

  init(s, q) {
    results.whatif = { sweep: null, lesion: null };
    const asked = (q.get('wmodels') || '').split(',').filter((id) => eligible(MODEL_BY_ID.get(id)));
    s.whatifModels = q.has('wmodels') ? [...new Set(asked)] : defaultModels();
    const limit = Number(q.get('wlimit'));
    s.whatifLimit = LIMITS.includes(limit) ? limit : DEFAULT_LIMIT;
    s.whatifRun = STUDIES.filter((k) => (q.get('wrun') || '').split(',').includes(k));
    renderChecks();
    $('whatif-limit').value = String(s.whatifLimit);
    $('whatif-limit').addEventListener('change', (e) => { state.whatifLimit = Number(e.target.value); selectionChanged(); });
    for (const kind of STUDIES) $(`whatif-run-${kind}`).addEventListener('click', () => runStudy(kind));
    updateButtons();
    bindExports('whatif', exportStudies);
  },

  writeUrl(q, s) {
    if (s.view === 'whatif' || !sameList(s.whatifModels, defaultModels())) q.set('wmodels', s.whatifModels.join(','));
    if (s.whatifLimit !== DEFAULT_LIMIT) q.set('wlimit', String(s.whatifLimit));
    if (s.whatifRun.length) q.set('wrun', s.whatifRun.join(','));
  },

  // The studies asked for (in the link, or by the buttons): drawn, or asked again (cached).
  activate() {
    render();
    for (const kind of state.whatifRun) if (!isCurrent(kind)) runStudy(kind);
    resizePlots($('view-whatif'));
  },

  render,

  restyle() {},
};
