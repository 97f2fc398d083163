/* Pieces the image views (Image, Compare) share: a ponder map over its input image as a
 * Plotly figure, the top-k prediction list, and the FLOPs meter. */
import { el, fill, flopsText, fmt, pct } from '../core/dom.js';
import { plotlyScale } from '../core/colors.js';
import { state } from '../core/state.js';

export const mapUnit = (measure) => (measure === 'units' ? 'units executed N' : 'ponder cost N+R');

/** A ponder map drawn over the input image: the image is a layout image under a heatmap whose
 * cells cover the input pixels (a block's coarser grid covers several pixels each). */
export function mapFigure({ z, image, width, height, zmin, zmax, title, unit, box, showscale = true, compact = false }) {
  const rows = z.length, cols = rows ? z[0].length : 0;
  const cw = width / Math.max(1, cols), ch = height / Math.max(1, rows);
  const trace = {
    type: 'heatmap', z, x0: cw / 2, dx: cw, y0: ch / 2, dy: ch, zmin, zmax,
    zauto: false,
    colorscale: plotlyScale(state.colormap),
    opacity: state.opacity,
    showscale,
    colorbar: { title: { text: unit, side: 'right' }, thickness: 12, len: 0.9 },
    hovertemplate: `x %{x:.0f}, y %{y:.0f}<br>${unit}: %{z:.3f}<extra></extra>`,
  };
  const shapes = [];
  if (box && state.box) {
    const [y0, x0, y1, x1] = box;
    shapes.push({ type: 'rect', xref: 'x', yref: 'y', x0, y0, x1, y1, line: { color: '#ff3b30', width: 2 }, fillcolor: 'rgba(0,0,0,0)' });
  }
  const layout = {
    title: { text: title, font: { size: compact ? 11 : 14 }, x: 0, xref: 'paper', xanchor: 'left', y: 1, yref: 'paper', yanchor: 'bottom', pad: { b: 6 } },
    margin: compact ? { l: 28, r: 8, t: 52, b: 24 } : { l: 36, r: 10, t: 60, b: 30 },
    xaxis: { range: [0, width], showgrid: false, zeroline: false, constrain: 'domain', ticks: 'outside' },
    yaxis: { range: [height, 0], showgrid: false, zeroline: false, scaleanchor: 'x', constrain: 'domain', ticks: 'outside' },
    images: image ? [{ source: image, xref: 'x', yref: 'y', x: 0, y: 0, sizex: width, sizey: height, xanchor: 'left', yanchor: 'top', sizing: 'stretch', layer: 'below' }] : [],
    shapes,
  };
  return { data: z ? [trace] : [], layout };
}

/** The input image alone (dense and ConvNet-AIG models have no spatial map). */
export function imageOnlyFigure({ image, width, height, title, box }) {
  const fig = mapFigure({ z: [[0]], image, width, height, zmin: 0, zmax: 1, title, unit: '', box });
  fig.data = [];
  return fig;
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
