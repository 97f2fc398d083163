/* Plotly (a classic script, window.Plotly, served from /static/vendor/) behind a few helpers:
 * one config for every plot (local export buttons only), drawing a figure, recolouring one,
 * resizing, purging. The figures themselves come from the server (answers' `figures`). */
import { plotlyScale } from './colors.js';

// Nothing leaves the machine: plotly.js 4's "Share chart" (upload to Plotly Cloud) is removed.
const REMOVED_BUTTONS = ['sendChartToCloud', 'lasso2d', 'select2d'];

const Plotly = () => window.Plotly;

function plotConfig(filename) {
  const P = Plotly();
  const icon = (P && P.Icons && (P.Icons.disk || P.Icons.camera)) || undefined;
  return {
    displaylogo: false,
    responsive: true,
    toImageButtonOptions: { format: 'png', filename, scale: 2 },
    showSendToCloud: false,
    modeBarButtonsToRemove: REMOVED_BUTTONS,
    modeBarButtonsToAdd: [{
      name: 'SVG',
      title: 'Download plot as SVG',
      icon,
      click: (gd) => Plotly().downloadImage(gd, { format: 'svg', filename }),
    }],
  };
}

// Plotly's `responsive` follows window resizes only; a plot whose container changes width
// (a scroll bar appears, a grid re-flows) is resized here.
const resized = new Set();
const resizeObserver = window.ResizeObserver ? new ResizeObserver((entries) => {
  for (const entry of entries) resized.add(entry.target);
  requestAnimationFrame(() => {
    for (const gd of resized) if (gd.isConnected && gd._fullLayout && gd.offsetWidth) Plotly().Plots.resize(gd);
    resized.clear();
  });
}) : null;

/** Draw (or redraw in place) a figure {data, layout} in `div`: the server's figures (ponderscope.figures,
 * the notebook's code) as they come, or as a view restyled them; `filename` names its exports.
 * Plotly.react only redraws what changed: a restyled copy that keeps the answer's arrays is cheap.
 * Plotly writes into what it draws (trace uids, axis ranges): it gets copies, the answer stays as sent. */
export function plot(div, fig, filename) {
  if (resizeObserver && !div.dataset.observed) { resizeObserver.observe(div); div.dataset.observed = '1'; }
  return Plotly().react(div, fig.data.map((t) => ({ ...t })), structuredClone(fig.layout), plotConfig(filename || div.id));
}

/** `fig` with the colour scale `colormap` on its heatmaps (or on the colour axis they share), and
 * `opacity` on them when given; the data arrays are the figure's own, not copied. */
export function recolored(fig, colormap, opacity) {
  const colorscale = plotlyScale(colormap);
  const data = fig.data.map((t) => (t.type !== 'heatmap' ? t
    : { ...t, ...(t.coloraxis ? {} : { colorscale }), ...(opacity === undefined ? {} : { opacity }) }));
  const axis = fig.layout.coloraxis;
  return { data, layout: axis ? { ...fig.layout, coloraxis: { ...axis, colorscale } } : fig.layout };
}

export function purge(div) {
  if (Plotly() && div && div.data) Plotly().purge(div);
}

/** Purge every plot inside `root` (before its contents are replaced). */
export function purgeAll(root) {
  if (!Plotly()) return;
  root.querySelectorAll('.js-plotly-plot').forEach((d) => Plotly().purge(d));
}

export function resizePlots(root) {
  if (!Plotly() || !root) return;
  root.querySelectorAll('.js-plotly-plot').forEach((gd) => { try { Plotly().Plots.resize(gd); } catch (_) { /* hidden */ } });
}
