/* The What-if view's lesion table: per unit (by its place in the network, input to output), each
 * model's test accuracy with that unit removed and the change from the intact model, the units
 * that downsample marked, and a gated model's execution rate per block beside its column. */
import { el, fmt, pct } from '../core/dom.js';

// A drop of at least this many points of accuracy is marked as hurting.
const HURTS_POINTS = 2;

const points = (after, before) => 100 * (after - before);

/** Fill <table> `table` from lesion results {model id: ponderscope.lesion study}. */
export function renderLesionTable(table, studies) {
  const ids = Object.keys(studies);
  const rows = Math.max(0, ...ids.map((id) => studies[id].single.length));
  const gated = (id) => Array.isArray(studies[id].layer_execution_rate) && studies[id].layer_execution_rate.length > 0;

  const head = el('tr', {}, el('th', { scope: 'col', text: '#' }),
    ...ids.flatMap((id) => [
      el('th', { scope: 'col', colspan: gated(id) ? '3' : '2', class: 'model' }, id),
    ]));
  const sub = el('tr', { class: 'sub' }, el('th', {}),
    ...ids.flatMap((id) => [
      el('th', { scope: 'col', text: 'unit' }),
      el('th', { scope: 'col', text: 'accuracy without it' }),
      gated(id) ? el('th', { scope: 'col', text: 'runs for', title: 'the share of the test images on which the gate runs this block (intact model)' }) : null,
    ]));
  const intact = el('tr', { class: 'intact' }, el('th', { scope: 'row', text: 'intact' }),
    ...ids.flatMap((id) => [
      el('td', { class: 'muted', text: '—' }),
      el('td', { text: pct(studies[id].trained.accuracy, 2) }),
      gated(id) ? el('td', {}) : null,
    ]));
  const body = [];
  for (let i = 0; i < rows; i++) {
    body.push(el('tr', {}, el('th', { scope: 'row', text: String(i + 1) }),
      ...ids.flatMap((id) => {
        const study = studies[id];
        const unit = study.single[i];
        if (!unit) return [el('td', {}), el('td', {}), gated(id) ? el('td', {}) : null];
        const change = points(unit.accuracy, study.trained.accuracy);
        return [
          el('td', { class: unit.downsampling ? 'unit downsampling' : 'unit', title: unit.downsampling ? 'downsampling unit: keeps its projection shortcut, loses its residual branch' : null },
            unit.name, unit.downsampling ? ' ↓' : null),
          el('td', { class: change <= -HURTS_POINTS ? 'hurts' : null, 'data-model': id, 'data-unit': unit.name, 'data-accuracy': String(unit.accuracy) },
            pct(unit.accuracy, 2), ' ', el('span', { class: 'muted small', text: `(${change >= 0 ? '+' : '−'}${fmt(Math.abs(change), 1)})` })),
          gated(id) ? el('td', { text: pct(study.layer_execution_rate[i], 0) }) : null,
        ];
      })));
  }
  table.replaceChildren(el('thead', {}, head, sub), el('tbody', {}, intact, ...body));
}

/** The lesion table's numbers as CSV rows: model, unit, downsampling, accuracy, flops_ratio, execution rate. */
export function lesionRows(studies) {
  const rows = [];
  for (const [id, study] of Object.entries(studies)) {
    rows.push(['lesion', id, 'intact', '', '', study.trained.accuracy, study.trained.flops_ratio, '']);
    study.single.forEach((u, i) => rows.push(['lesion', id, u.name, '', u.downsampling ? 1 : 0, u.accuracy, u.flops_ratio,
      study.layer_execution_rate ? study.layer_execution_rate[i] : '']));
    for (const p of study.random || []) rows.push(['random', id, `k=${p.k}`, p.k, '', p.mean, '', '']);
  }
  return rows;
}
