/* Pieces the image views (Image, Compare) share: an answer's map figures as the display settings
 * show them, the top-k prediction list, and the FLOPs meter. */
import { el, fill, flopsText, fmt, pct } from '../core/dom.js';
import { recolored } from '../core/plots.js';
import { state } from '../core/state.js';

// The unit each map measure is labelled with (as ponderscope.figures.MEASURES).
export const MAP_UNITS = { ponder: 'ponder cost N+R', units: 'units executed N' };
export const mapUnit = (measure) => MAP_UNITS[measure] || MAP_UNITS.ponder;
const relabel = (s) => (typeof s === 'string' ? s.split(MAP_UNITS.ponder).join(MAP_UNITS.units) : s);

/** The units executed N instead of the ponder cost N+R, from the answer: ponder.units_total on
 * its range units_min..units_max ("map"), each block's `units` on their shared colour axis
 * ("blocks", which plotly.js then scales to them: the server sends no range over the blocks). */
function unitsFigure(r, name, { data, layout }) {
  const p = r.ponder;
  let block = 0;
  data = data.map((t) => {
    if (t.type !== 'heatmap') return t;
    const z = name === 'map' ? p.units_total : p.blocks[block++].units;
    const colorbar = t.colorbar && { ...t.colorbar, title: { ...t.colorbar.title, text: relabel(t.colorbar.title && t.colorbar.title.text) } };
    const range = t.coloraxis ? {} : { zmin: p.units_min, zmax: p.units_max > p.units_min ? p.units_max : p.units_min + 1e-6 };
    return { ...t, z, ...range, colorbar, hovertemplate: relabel(t.hovertemplate) };
  });
  layout = { ...layout, title: { ...layout.title, text: relabel(layout.title && layout.title.text) } };
  if (layout.coloraxis) {
    const axis = { ...layout.coloraxis };
    delete axis.cmin;
    delete axis.cmax;
    const bar = axis.colorbar || {};
    layout.coloraxis = { ...axis, cauto: true, colorbar: { ...bar, title: { ...bar.title, text: relabel(bar.title && bar.title.text) } } };
  }
  return { data, layout };
}

/** Figure `name` of image answer `r` ("map": the ponder map over the input, or the input alone;
 * "blocks": every block's map) as the display settings show it: the server's figure, with the
 * measure's maps (state.map), the test set's box or none, the colour scale and the opacity.
 * `range` [zmin, zmax] puts the map on another colour range (Compare: one over all models). */
export function mapFigure(r, name, { range, title } = {}) {
  let fig = r.figures[name];
  if (state.map === 'units' && r.ponder) fig = unitsFigure(r, name, fig);
  let { data, layout } = fig;
  if (range) data = data.map((t) => (t.type === 'heatmap' ? { ...t, zmin: range[0], zmax: range[1] } : t));
  if (title) layout = { ...layout, title: { ...layout.title, text: title } };
  if (!state.box) layout = { ...layout, shapes: [] }; // the only shapes on a map are the test set's box
  return recolored({ data, layout }, state.colormap, state.opacity);
}

/** The top-k classes as an <ol> with probability bars; the true class (`label`) marked. */
export function renderPrediction(list, prediction, label) {
  list.replaceChildren(...(prediction || []).map((p) => el('li', { class: label !== null && label !== undefined && p.index === label ? 'truth' : null },
    el('span', { class: 'name', text: p.class }),
    el('span', { class: 'prob', text: pct(p.probability, 1) }),
    el('span', { class: 'bar', 'aria-hidden': 'true' }, el('span', { style: `width:${(100 * p.probability).toFixed(1)}%` })))));
}

/** FLOPs executed against the dense network, as text and a meter. */
export function renderFlops(target, flops, time) {
  if (!flops) { target.replaceChildren(); return; }
  fill(target,
    el('div', {}, 'executed ', el('b', { text: flopsText(flops.executed) })),
    el('div', {}, 'dense ', el('b', { text: flopsText(flops.dense) })),
    el('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '1', 'aria-valuenow': String(flops.ratio), 'aria-label': 'FLOPs executed over dense' },
      el('span', { style: `width:${Math.min(100, 100 * flops.ratio).toFixed(1)}%` })),
    el('div', {}, el('b', { text: pct(flops.ratio) }), ' of the dense network'),
    time !== undefined ? el('div', { class: 'muted small' }, `request ${fmt(time, 1)} ms`) : null,
  );
}
