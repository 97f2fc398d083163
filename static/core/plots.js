/* Plotly (a classic script, window.Plotly, served from /static/vendor/) behind a few helpers:
 * one config for every plot (local export buttons only), resizing, purging, restyling. */

// Nothing leaves the machine: plotly.js 4's "Share chart" (upload to Plotly Cloud) is removed.
const REMOVED_BUTTONS = ['sendChartToCloud', 'lasso2d', 'select2d'];
const COMPACT_REMOVED = [...REMOVED_BUTTONS, 'zoomIn2d', 'zoomOut2d', 'autoScale2d', 'pan2d', 'toggleSpikelines', 'hoverClosestCartesian', 'hoverCompareCartesian'];

const Plotly = () => window.Plotly;

function plotConfig(filename, compact = false) {
  const P = Plotly();
  const icon = (P && P.Icons && (P.Icons.disk || P.Icons.camera)) || undefined;
  return {
    displaylogo: false,
    responsive: true,
    toImageButtonOptions: { format: 'png', filename, scale: 2 },
    showSendToCloud: false,
    modeBarButtonsToRemove: compact ? COMPACT_REMOVED : REMOVED_BUTTONS,
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

/** Draw (or redraw in place) `data` with `layout` in `div`; `filename` names its exports. */
export function plot(div, data, layout, filename, { compact = false } = {}) {
  if (resizeObserver && !div.dataset.observed) { resizeObserver.observe(div); div.dataset.observed = '1'; }
  const base = { margin: { l: 50, r: 20, t: 60, b: 40 }, paper_bgcolor: '#fff', plot_bgcolor: '#fff', font: { size: 12, color: '#1b1f24' } };
  const full = { ...base, ...layout };
  // Titles sit left-aligned, clear of the mode bar at the top right.
  if (full.title && full.title.x === undefined) {
    full.title = { font: { size: 14 }, x: 0.01, xref: 'container', xanchor: 'left', y: 1, yref: 'container', yanchor: 'top', pad: { t: 28 }, ...full.title };
    full.margin = { ...full.margin, t: Math.max(full.margin.t || 0, 70) };
  }
  return Plotly().react(div, data, full, plotConfig(filename || div.id, compact));
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

/** Plotly.restyle(update) on the first trace of each div whose first trace is a heatmap. */
export function restyleHeatmaps(divs, update) {
  if (!Plotly()) return;
  for (const gd of divs) {
    if (gd && gd.data && gd.data.length && gd.data[0].type === 'heatmap') Plotly().restyle(gd, update, [0]);
  }
}
