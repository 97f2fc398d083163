/* Colour scales as explicit arrays (low -> high), so the plots and the coloured text spans use
 * the very same colours (and Inferno, which plotly.js does not name, works like the others). */

export const COLORSCALES = {
  Viridis: ['#440154', '#48186a', '#472d7b', '#424086', '#3b528b', '#33638d', '#2c728e', '#26828e', '#21918c',
    '#1fa088', '#28ae80', '#3fbc73', '#5ec962', '#84d44b', '#addc30', '#d8e219', '#fde725'],
  Cividis: ['#00204c', '#002a66', '#00346e', '#273f6c', '#3c4a6b', '#4c556b', '#5b5f6d', '#686a70', '#757575',
    '#838178', '#928c78', '#a19876', '#b0a572', '#c0b16d', '#d1bf66', '#e1cc5c', '#f3db4f', '#ffe945'],
  Inferno: ['#000004', '#160b39', '#420a68', '#6a176e', '#932667', '#bc3754', '#dd513a', '#f37819', '#fca50a', '#f6d746', '#fcffa4'],
  Hot: [[0, '#000000'], [0.3, '#e60000'], [0.6, '#ffd200'], [1, '#ffffff']],
  YlOrRd: ['#ffffcc', '#ffeda0', '#fed976', '#feb24c', '#fd8d3c', '#fc4e2a', '#e31a1c', '#bd0026', '#800026'],
  Blues: ['#f7fbff', '#deebf7', '#c6dbef', '#9ecae1', '#6baed6', '#4292c6', '#2171b5', '#08519c', '#08306b'],
  Greys: ['#000000', '#ffffff'],
  Jet: [[0, '#000083'], [0.125, '#003caa'], [0.375, '#05ffff'], [0.625, '#ffff00'], [0.875, '#fa0000'], [1, '#800000']],
};

function scaleStops(name) {
  const raw = COLORSCALES[name] || COLORSCALES.Viridis;
  if (Array.isArray(raw[0])) return raw.map(([t, c]) => [t, c]);
  return raw.map((c, i) => [i / (raw.length - 1), c]);
}
/** The scale as Plotly's [[t, colour], ...]. */
export const plotlyScale = (name) => scaleStops(name);

function hexToRgb(hex) {
  const h = hex.replace('#', '');
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
}
/** [r, g, b] of scale `name` at t in [0, 1]. */
export function colorAt(name, t) {
  const stops = scaleStops(name);
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  for (let i = 1; i < stops.length; i++) {
    if (x <= stops[i][0]) {
      const [t0, c0] = stops[i - 1];
      const [t1, c1] = stops[i];
      const f = t1 > t0 ? (x - t0) / (t1 - t0) : 0;
      const a = hexToRgb(c0), b = hexToRgb(c1);
      return a.map((v, k) => Math.round(v + f * (b[k] - v)));
    }
  }
  return hexToRgb(stops[stops.length - 1][1]);
}
export const rgbCss = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
/** Black or white text on a coloured background, by relative luminance (WCAG formula). */
export function inkFor(rgb) {
  const lin = rgb.map((v) => { const c = v / 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
  const L = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  return L > 0.22 ? '#111' : '#fff';
}
export function gradientCss(name) {
  return `linear-gradient(to right, ${scaleStops(name).map(([t, c]) => `${c} ${(100 * t).toFixed(1)}%`).join(', ')})`;
}
