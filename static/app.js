/* ponderscope front end: plain JavaScript, no build step. Plotly is served locally.
 *
 * One `state` object holds everything a link must reproduce (view, models, image, settings,
 * text, parity vector); `syncUrl()` writes it into the query string with history.replaceState,
 * and `readUrl()` restores it on load. Each view has a run*() that asks the server and a
 * render*() that draws the last answer, so settings that need no new request (opacity, colour
 * map, N vs N+R) only redraw.
 */
(() => {
  'use strict';

  // ------------------------------------------------------------------ data and constants
  const MODELS = JSON.parse(document.getElementById('models-data').textContent || '[]');
  const MODEL_BY_ID = new Map(MODELS.map((m) => [m.id, m]));
  const VIEWS = ['image', 'compare', 'dataset', 'text', 'parity', 'models'];
  const VIEW_KIND = { image: 'image', compare: 'image', dataset: 'image', text: 'text', parity: 'parity' };
  const FAMILY_LABEL = { dense: 'dense ResNet', act: 'ACT ResNet', sact: 'SACT ResNet', aig: 'ConvNet-AIG', rnn: 'ACT RNN' };
  const FAMILY_ORDER = { sact: 0, act: 1, aig: 2, rnn: 3, dense: 4 };
  const SAMPLE_COUNT = 24;
  const TEXT_URL_LIMIT = 500;
  const TEXT_DEBOUNCE_MS = 300;

  // Colour scales as explicit arrays (low -> high), so the plots and the coloured text spans use
  // the very same colours (and Inferno, which plotly.js does not name, works like the others).
  const COLORSCALES = {
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

  const state = {
    view: 'image',
    model: { image: null, compare: [], dataset: null, text: null, parity: null },
    image: null, // {hash, name?} or {sample}
    resolution: 'train',
    colormap: 'Viridis',
    opacity: 0.6,
    map: 'ponder', // image maps: 'ponder' (N+R) or 'units' (N)
    invert: false,
    box: true,
    measure: 'auto', // text: 'auto' (what varies in the text shown), 'steps' (N) or 'ponder' (N+R)
    text: '',
    vector: null, // parity: array of -1/0/1
    samplesOffset: 0,
  };
  // The last answers, for redraws and exports.
  const results = { image: null, imageRequest: null, compare: null, dataset: null, text: null, corpus: null, parity: null, parityHistory: [] };
  const tokens = { image: 0, compare: 0, dataset: 0, text: 0, parity: 0, samples: 0, upload: 0, corpus: 0 };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toFixed(digits));
  const pct = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v) ? '–' : `${(100 * v).toFixed(digits)}%`);
  function flopsText(v) {
    if (v === null || v === undefined) return '–';
    if (v >= 1e9) return `${(v / 1e9).toFixed(2)} GFLOPs`;
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)} MFLOPs`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)} kFLOPs`;
    return `${v} FLOPs`;
  }
  const shortHash = (h) => (h ? h.slice(0, 10) : '');

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  /** replaceChildren that skips null/undefined/false (replaceChildren would print "null"). */
  function fill(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }

  function stat(label, value, title) {
    return el('span', { class: 'stat', title }, `${label} `, el('b', { text: value }));
  }

  // ------------------------------------------------------------------ colour maps
  function scaleStops(name) {
    const raw = COLORSCALES[name] || COLORSCALES.Viridis;
    if (Array.isArray(raw[0])) return raw.map(([t, c]) => [t, c]);
    return raw.map((c, i) => [i / (raw.length - 1), c]);
  }
  const plotlyScale = (name) => scaleStops(name);

  function hexToRgb(hex) {
    const h = hex.replace('#', '');
    return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
  }
  function colorAt(name, t) {
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
  const rgbCss = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  // Relative luminance decides black or white text on a coloured background (WCAG formula).
  function inkFor(rgb) {
    const lin = rgb.map((v) => { const c = v / 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
    const L = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
    return L > 0.22 ? '#111' : '#fff';
  }
  function gradientCss(name) {
    return `linear-gradient(to right, ${scaleStops(name).map(([t, c]) => `${c} ${(100 * t).toFixed(1)}%`).join(', ')})`;
  }

  // ------------------------------------------------------------------ errors and loading
  const errors = new Map(); // channel -> message
  function showError(channel, message) {
    errors.set(channel, message);
    renderErrors();
  }
  function clearError(channel) {
    if (errors.delete(channel)) renderErrors();
  }
  function renderErrors() {
    const list = $('error-list');
    list.replaceChildren(...[...errors.values()].map((m) => el('li', { text: m })));
    $('error').hidden = errors.size === 0;
  }
  $('error-close').addEventListener('click', () => { errors.clear(); renderErrors(); });

  const inFlight = new Map();
  let flightId = 0;
  function busyStart(label) {
    const id = ++flightId;
    inFlight.set(id, label);
    renderBusy();
    return id;
  }
  function busyEnd(id) {
    inFlight.delete(id);
    renderBusy();
  }
  function renderBusy() {
    const box = $('loading');
    box.hidden = inFlight.size === 0;
    const labels = [...new Set(inFlight.values())];
    $('loading-text').textContent = labels.length ? `${labels.join(', ')}…` : '';
    document.body.setAttribute('aria-busy', inFlight.size ? 'true' : 'false');
  }

  function errorMessage(status, payload, fallback) {
    let detail = payload && payload.detail !== undefined ? payload.detail : null;
    if (Array.isArray(detail)) { // FastAPI validation errors: [{loc, msg, type}]
      detail = detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((p) => p !== 'body').join('.')}${d.loc && d.loc.length ? ': ' : ''}${d.msg}` : JSON.stringify(d))).join('; ');
    } else if (detail && typeof detail === 'object') {
      detail = JSON.stringify(detail);
    }
    return detail || fallback || `HTTP ${status}`;
  }

  /** fetch JSON; throws an Error whose message is the server's `detail`. `channel` names the
   * error-banner entry that this request sets on failure and clears on success. */
  async function api(method, path, { body, form, channel, label, signal } = {}) {
    const opts = { method, headers: { Accept: 'application/json' }, signal };
    if (form) opts.body = form;
    else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers['Content-Type'] = 'application/json'; }
    const id = busyStart(label || 'Loading');
    try {
      let response;
      try {
        response = await fetch(path, opts);
      } catch (err) {
        if (err.name === 'AbortError') throw err;
        throw new Error(`${method} ${path}: the server did not answer (${err.message})`);
      }
      let payload = null;
      const text = await response.text();
      try { payload = text ? JSON.parse(text) : null; } catch (_) { payload = null; }
      if (!response.ok) {
        const message = errorMessage(response.status, payload, text.slice(0, 300));
        const error = new Error(`${method} ${path} failed (${response.status}): ${message}`);
        error.status = response.status;
        error.detail = message;
        throw error;
      }
      if (channel) clearError(channel);
      return payload;
    } catch (err) {
      if (err.name !== 'AbortError' && channel) showError(channel, err.message);
      throw err;
    } finally {
      busyEnd(id);
    }
  }

  // ------------------------------------------------------------------ downloads
  function download(filename, content, type) {
    const blob = content instanceof Blob ? content : new Blob([content], { type });
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 4000);
  }
  function csvCell(v) {
    if (v === null || v === undefined) return '';
    const s = typeof v === 'number' ? (Number.isInteger(v) ? String(v) : String(+v.toPrecision(7))) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }
  function toCsv(header, rows) {
    return [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
  }
  const safeName = (s) => String(s || 'none').replace(/[^A-Za-z0-9._-]+/g, '_');
  function downloadJson(name, obj) { download(`ponderscope-${name}.json`, JSON.stringify(obj, null, 2), 'application/json'); }
  function downloadCsv(name, header, rows) { download(`ponderscope-${name}.csv`, toCsv(header, rows), 'text/csv'); }
  function nothingToExport(view) { showError(`export-${view}`, `Nothing to export yet in the ${view} view: run something first.`); }

  // ------------------------------------------------------------------ Plotly helpers
  // Nothing leaves the machine: plotly.js 4's "Share chart" (upload to Plotly Cloud) is removed.
  const REMOVED_BUTTONS = ['sendChartToCloud', 'lasso2d', 'select2d'];
  const COMPACT_REMOVED = [...REMOVED_BUTTONS, 'zoomIn2d', 'zoomOut2d', 'autoScale2d', 'pan2d', 'toggleSpikelines', 'hoverClosestCartesian', 'hoverCompareCartesian'];
  function plotConfig(filename, compact = false) {
    const icon = (window.Plotly && Plotly.Icons && (Plotly.Icons.disk || Plotly.Icons.camera)) || undefined;
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
        click: (gd) => Plotly.downloadImage(gd, { format: 'svg', filename }),
      }],
    };
  }
  // Plotly's `responsive` follows window resizes only; a plot whose container changes width
  // (a scroll bar appears, a grid re-flows) is resized here.
  const resized = new Set();
  const resizeObserver = window.ResizeObserver ? new ResizeObserver((entries) => {
    for (const entry of entries) resized.add(entry.target);
    requestAnimationFrame(() => {
      for (const gd of resized) if (gd.isConnected && gd._fullLayout && gd.offsetWidth) Plotly.Plots.resize(gd);
      resized.clear();
    });
  }) : null;

  function plot(div, data, layout, filename, { compact = false } = {}) {
    if (resizeObserver && !div.dataset.observed) { resizeObserver.observe(div); div.dataset.observed = '1'; }
    const base = { margin: { l: 50, r: 20, t: 60, b: 40 }, paper_bgcolor: '#fff', plot_bgcolor: '#fff', font: { size: 12, color: '#1b1f24' } };
    const full = { ...base, ...layout };
    // Titles sit left-aligned, clear of the mode bar at the top right.
    if (full.title && full.title.x === undefined) {
      full.title = { font: { size: 14 }, x: 0.01, xref: 'container', xanchor: 'left', y: 1, yref: 'container', yanchor: 'top', pad: { t: 28 }, ...full.title };
      full.margin = { ...full.margin, t: Math.max(full.margin.t || 0, 70) };
    }
    return Plotly.react(div, data, full, plotConfig(filename || div.id, compact));
  }
  function purge(div) {
    if (window.Plotly && div && div.data) Plotly.purge(div);
  }
  function resizePlots(root) {
    if (!window.Plotly) return;
    root.querySelectorAll('.js-plotly-plot').forEach((gd) => { try { Plotly.Plots.resize(gd); } catch (_) { /* hidden */ } });
  }

  function minMax(rows) {
    let lo = Infinity, hi = -Infinity;
    for (const row of rows) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!Number.isFinite(lo)) return [0, 1];
    return [lo, hi];
  }

  /** A ponder map drawn over the input image: the image is a layout image under a heatmap
   * whose cells cover the input pixels (a block's coarser grid covers several pixels each). */
  function mapFigure({ z, image, width, height, zmin, zmax, title, unit, box, showscale = true, compact = false }) {
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

  function imageOnlyFigure({ image, width, height, title, box }) {
    const fig = mapFigure({ z: [[0]], image, width, height, zmin: 0, zmax: 1, title, unit: '', box });
    fig.data = [];
    return fig;
  }

  // ------------------------------------------------------------------ model cards
  const testMetrics = (m) => (m && m.metrics ? (m.metrics.test || m.metrics) : {}) || {};
  function familyLabel(m) {
    if (m.family === 'rnn') { // act_lstm -> "ACT LSTM"; lstm (the baseline) -> "plain LSTM (no ACT)"
      const name = String(m.name || '');
      const cell = name.replace(/^act_/, '').toUpperCase() || 'RNN';
      return name.startsWith('act_') ? `ACT ${cell}` : `plain ${cell} (no ACT)`;
    }
    if (m.family === 'dense') return 'dense ResNet (no halting)';
    return FAMILY_LABEL[m.family] || m.family || 'model';
  }
  function taskLabel(m) {
    const task = m.task || (m.card && m.card.task) || {};
    const name = typeof task === 'string' ? task : task.name;
    if (name === 'parity') return `parity (${task.bits} bits)`;
    if (name === 'bytes-lm') return 'next-byte prediction';
    if (name === 'classify') return `classify (${(m.classes || []).length || '?'} classes)`;
    return name || '?';
  }
  function summaryChips(m) {
    if (!m) return [el('span', { class: 'muted', text: 'no model' })];
    const t = testMetrics(m);
    const chips = [
      el('span', { class: 'chip family', title: `family: ${m.family}; architecture: ${m.name}` }, familyLabel(m), ' ', el('b', { text: m.name })),
      el('span', { class: 'chip', title: 'dataset the model was trained and evaluated on' }, 'dataset ', el('b', { text: m.dataset || '?' })),
      el('span', { class: 'chip', title: 'task' }, 'task ', el('b', { text: taskLabel(m) })),
    ];
    if (m.source) chips.push(el('span', { class: 'chip imported', title: `imported from ${m.source.format}: ${(m.source.files || []).join(', ')}` }, 'imported from ', el('b', { text: `${m.source.format} ${sourceFile(m.source)}` })));
    if (m.preprocess && m.preprocess.input_size) chips.push(el('span', { class: 'chip', title: 'training input size (H×W) and channels' }, 'input ', el('b', { text: `${m.preprocess.input_size.join('×')}×${m.preprocess.channels}` })));
    if (t.accuracy !== undefined) chips.push(el('span', { class: 'chip', title: `test accuracy${t.examples ? ` on ${t.examples} examples` : ''}` }, 'accuracy ', el('b', { text: pct(t.accuracy, 2) })));
    if (t.bits_per_byte !== undefined) chips.push(el('span', { class: 'chip', title: 'held-out bits per byte' }, 'bits/byte ', el('b', { text: fmt(t.bits_per_byte, 3) })));
    if (t.flops_ratio !== undefined) chips.push(el('span', { class: 'chip', title: 'mean FLOPs executed / dense FLOPs on the test set' }, 'FLOPs ', el('b', { text: pct(t.flops_ratio) })));
    if (t.mean_ponder !== undefined) chips.push(el('span', { class: 'chip', title: 'mean ponder cost N+R (summed over blocks for ResNets)' }, 'ponder ', el('b', { text: fmt(t.mean_ponder, 2) })));
    if (t.mean_steps !== undefined) chips.push(el('span', { class: 'chip', title: 'mean steps N' }, 'steps N ', el('b', { text: fmt(t.mean_steps, 2) })));
    if (!Object.keys(t).length) chips.push(el('span', { class: 'chip muted', text: 'no metrics in card' }));
    if (m.device) chips.push(el('span', { class: 'chip muted', title: `device the server runs it on; checkpoint folder ${m.path || '?'}` }, `on ${m.device}`));
    return chips;
  }
  function sourceFile(source) {
    const first = (source.files || [])[0] || '';
    return first.split('/').pop();
  }
  function renderCardSummary(target, id) {
    $(target).replaceChildren(...summaryChips(MODEL_BY_ID.get(id)));
  }

  function modelsOfKind(kind) {
    return MODELS.filter((m) => m.kind === kind).sort((a, b) => (FAMILY_ORDER[a.family] ?? 9) - (FAMILY_ORDER[b.family] ?? 9) || a.name.localeCompare(b.name));
  }
  function fillPicker(select, kind, selected, keep = () => true) {
    const list = modelsOfKind(kind).filter(keep);
    select.replaceChildren(...list.map((m) => el('option', { value: m.id, selected: m.id === selected }, `${m.id} — ${familyLabel(m)}, ${m.dataset}`)));
    if (!list.length) {
      select.append(el('option', { value: '', text: `no ${kind} models loaded` }));
      select.disabled = true;
    }
    if (selected) select.value = selected;
  }
  function defaultModel(kind, current) {
    if (current && MODEL_BY_ID.has(current) && MODEL_BY_ID.get(current).kind === kind) return current;
    const list = modelsOfKind(kind);
    return list.length ? list[0].id : null;
  }

  // ------------------------------------------------------------------ URL state
  function readUrl() {
    const q = new URLSearchParams(location.search);
    if (VIEWS.includes(q.get('view'))) state.view = q.get('view');
    state.model.image = q.get('model');
    state.model.compare = (q.get('compare') || '').split(',').filter((id) => MODEL_BY_ID.has(id));
    state.model.dataset = q.get('dmodel');
    state.model.text = q.get('tmodel');
    state.model.parity = q.get('pmodel');
    if (q.get('image')) state.image = { hash: q.get('image') };
    else if (q.get('sample') !== null && /^\d+$/.test(q.get('sample'))) state.image = { sample: Number(q.get('sample')) };
    if (['train', 'native'].includes(q.get('res'))) state.resolution = q.get('res');
    if (COLORSCALES[q.get('cmap')]) state.colormap = q.get('cmap');
    const opacity = parseFloat(q.get('opacity'));
    if (Number.isFinite(opacity)) state.opacity = Math.min(1, Math.max(0, opacity));
    if (['ponder', 'units'].includes(q.get('map'))) state.map = q.get('map');
    state.invert = q.get('invert') === '1';
    if (q.get('box') === '0') state.box = false;
    if (['auto', 'steps', 'ponder'].includes(q.get('measure'))) state.measure = q.get('measure');
    if (q.get('text') !== null) state.text = q.get('text');
    if (q.get('vec')) state.vector = [...q.get('vec')].map((c) => (c === '+' ? 1 : c === '-' ? -1 : 0));
  }

  function syncUrl() {
    const q = new URLSearchParams();
    q.set('view', state.view);
    if (state.model.image) q.set('model', state.model.image);
    if (state.model.compare.length) q.set('compare', state.model.compare.join(','));
    if (state.model.dataset) q.set('dmodel', state.model.dataset);
    if (state.model.text) q.set('tmodel', state.model.text);
    if (state.model.parity) q.set('pmodel', state.model.parity);
    if (state.image && state.image.hash) q.set('image', state.image.hash);
    else if (state.image && state.image.sample !== undefined) q.set('sample', String(state.image.sample));
    q.set('res', state.resolution);
    q.set('cmap', state.colormap);
    q.set('opacity', String(state.opacity));
    q.set('map', state.map);
    if (state.invert) q.set('invert', '1');
    if (!state.box) q.set('box', '0');
    q.set('measure', state.measure);
    if (state.text && state.text.length <= TEXT_URL_LIMIT) q.set('text', state.text);
    if (state.vector) q.set('vec', state.vector.map((v) => (v > 0 ? '+' : v < 0 ? '-' : '0')).join(''));
    const url = `${location.pathname}?${q.toString()}${location.hash}`;
    history.replaceState(null, '', url);
  }

  // ------------------------------------------------------------------ views
  function showView(view, { run = true } = {}) {
    if (!VIEWS.includes(view)) view = 'image';
    state.view = view;
    for (const v of VIEWS) {
      const section = $(`view-${v}`);
      section.hidden = v !== view;
      const tab = $(`tab-${v}`);
      tab.setAttribute('aria-selected', v === view ? 'true' : 'false');
      tab.tabIndex = v === view ? 0 : -1;
    }
    const settingsShown = ['image', 'compare', 'text'].includes(view);
    $('settings').hidden = !settingsShown;
    document.querySelectorAll('#settings [data-views]').forEach((label) => {
      label.hidden = !label.dataset.views.split(' ').includes(view);
    });
    syncUrl();
    if (run) activate(view);
    resizePlots($(`view-${view}`));
  }

  function activate(view) {
    if (view === 'image') { loadSamples(); if (state.image && !resultMatches()) runImage(); }
    else if (view === 'compare') { renderCompareChecks(); runCompare(); }
    else if (view === 'dataset') runDataset();
    else if (view === 'text') { if (!results.text || results.text.text !== state.text || results.text.model !== state.model.text) runText(); runCorpus(); }
    else if (view === 'parity') { renderParityVector(); if (!results.parity) runParity(); }
    else if (view === 'models') renderModelCards();
  }

  document.querySelectorAll('.tabs [role=tab]').forEach((tab) => {
    tab.addEventListener('click', () => showView(tab.dataset.view));
    tab.addEventListener('keydown', (e) => {
      const i = VIEWS.indexOf(tab.dataset.view);
      let next = null;
      if (e.key === 'ArrowRight') next = VIEWS[(i + 1) % VIEWS.length];
      if (e.key === 'ArrowLeft') next = VIEWS[(i + VIEWS.length - 1) % VIEWS.length];
      if (next) { e.preventDefault(); showView(next); $(`tab-${next}`).focus(); }
    });
  });

  // ================================================================== Image view
  function requestBody() {
    const body = { resolution: state.resolution };
    if (state.image.hash) body.image = state.image.hash;
    else body.sample = state.image.sample;
    if (state.invert) body.invert = true;
    return body;
  }
  function resultMatches() {
    const r = results.imageRequest;
    return r && r.model === state.model.image && JSON.stringify(r.body) === JSON.stringify(requestBody());
  }

  async function runImage() {
    const id = state.model.image;
    if (!id || !state.image) { renderImageEmpty(); return; }
    const token = ++tokens.image;
    const body = requestBody();
    $('image-result').classList.add('busy');
    try {
      const response = await api('POST', `/api/models/${encodeURIComponent(id)}/image`, { body, channel: 'image', label: `Running ${id}` });
      if (token !== tokens.image) return;
      results.image = response;
      results.imageRequest = { model: id, body };
      renderImage();
    } catch (err) {
      if (token === tokens.image) {
        // Never leave an old answer on screen under a new request's settings.
        results.image = null;
        results.imageRequest = null;
        renderImageEmpty('The request failed: the message is in the red box above.');
      }
    } finally {
      if (token === tokens.image) $('image-result').classList.remove('busy');
    }
  }

  function renderImageEmpty(message) {
    $('image-empty').textContent = message || 'Upload, drop or paste an image, or click a test sample.';
    $('image-empty').hidden = false;
    $('image-result').hidden = true;
    $('prediction').replaceChildren();
    $('flops').replaceChildren();
    $('image-source').textContent = '';
  }

  function describeSource(input) {
    if (!input) return '';
    if (input.sample !== null && input.sample !== undefined) {
      const cls = input.label_class || (input.label !== null && input.label !== undefined ? `label ${input.label}` : '');
      return `test sample #${input.sample}${cls ? ` (${cls})` : ''}`;
    }
    if (input.hash) return `upload ${shortHash(input.hash)}…${state.image && state.image.name ? ` (${state.image.name})` : ''}`;
    return '';
  }

  function mapUnit(measure) {
    return measure === 'units' ? 'units executed N' : 'ponder cost N+R';
  }

  function renderImage() {
    const r = results.image;
    if (!r) { renderImageEmpty(); return; }
    const input = r.input || {};
    $('image-empty').hidden = true;
    $('image-result').hidden = false;
    $('image-source').textContent = `Showing ${describeSource(input)}`;
    $('result-title').textContent = r.ponder ? 'Ponder map' : r.gates ? 'Gate decisions' : 'Input (dense model)';

    // stats line
    const stats = [
      stat('input', `${input.width}×${input.height}`, 'the image as the network saw it'),
      stat('resolution', input.resolution || state.resolution),
      stat('source', describeSource(input)),
      stat('time', `${fmt(r.time_ms, 1)} ms`, 'server time for this request'),
    ];
    if (r.ponder) stats.push(stat('mean map', fmt(mean2d(r.ponder.total), 3), 'mean ponder cost N+R over positions, summed over blocks'));
    if (typeof r.execution === 'string') stats.push(stat('execution', r.execution, r.execution === 'masked' ? 'masked: skipped work is computed and multiplied by zero (as in the official code); FLOPs are counted from the masks' : 'how skipped work is handled'));
    fill($('image-stats'), stats);

    renderPrediction($('prediction'), r.prediction, input.label);
    renderFlops($('flops'), r.flops, r.time_ms);

    // main map
    const heat = $('heatmap');
    const note = $('no-ponder');
    if (r.ponder) {
      note.hidden = true;
      const z = state.map === 'units' ? r.ponder.units_total : r.ponder.total;
      let [zmin, zmax] = minMax(z);
      if (state.map !== 'units' && Number.isFinite(r.ponder.min) && Number.isFinite(r.ponder.max)) { zmin = r.ponder.min; zmax = r.ponder.max; }
      if (zmax <= zmin) zmax = zmin + 1e-6;
      const fig = mapFigure({ z, image: input.image, width: input.width, height: input.height, zmin, zmax,
        title: `${results.imageRequest.model}: ${state.map === 'units' ? 'units executed N' : 'ponder cost N+R'}, summed over ${r.ponder.blocks.length} blocks`,
        unit: mapUnit(state.map), box: input.box });
      plot(heat, fig.data, fig.layout, `ponder-map-${safeName(results.imageRequest.model)}`);
    } else {
      const fig = imageOnlyFigure({ image: input.image, width: input.width, height: input.height, title: `${results.imageRequest.model}: input`, box: input.box });
      plot(heat, fig.data, fig.layout, `input-${safeName(results.imageRequest.model)}`);
      note.hidden = false;
      note.textContent = r.gates
        ? 'ConvNet-AIG decides per image, not per position: each gate runs or skips a whole residual block. See the gate chart below.'
        : 'This model is dense: every unit runs at every position, so there is no ponder map.';
    }

    // gates
    const gates = $('gates-chart');
    if (r.gates) {
      gates.hidden = false;
      const g = r.gates;
      const idx = g.probability.map((_, i) => i);
      const executed = idx.filter((i) => g.executed[i]);
      const skipped = idx.filter((i) => !g.executed[i]);
      const n = g.executed.filter(Boolean).length;
      plot(gates, [
        { type: 'bar', name: 'executed', x: executed.map((i) => g.layers[i]), y: executed.map((i) => g.probability[i]), marker: { color: '#1f5fbf' }, hovertemplate: '%{x}: p(run) = %{y:.3f}<extra>executed</extra>' },
        { type: 'bar', name: 'skipped', x: skipped.map((i) => g.layers[i]), y: skipped.map((i) => g.probability[i]), marker: { color: '#c7ccd4', line: { color: '#8a929e', width: 1 } }, hovertemplate: '%{x}: p(run) = %{y:.3f}<extra>skipped</extra>' },
      ], {
        title: { text: `Gate probability per layer: ${n} of ${g.layers.length} gated blocks executed` },
        barmode: 'overlay',
        xaxis: { categoryorder: 'array', categoryarray: g.layers, tickangle: -45, title: { text: 'gated residual block' } },
        yaxis: { range: [0, 1], title: { text: 'p(run)' } },
        shapes: [{ type: 'line', xref: 'paper', x0: 0, x1: 1, y0: 0.5, y1: 0.5, line: { dash: 'dot', color: '#5b6470', width: 1 } }],
        legend: { orientation: 'h', y: 1.12, x: 1, xanchor: 'right' },
        margin: { l: 50, r: 20, t: 50, b: 80 },
      }, `gates-${safeName(results.imageRequest.model)}`);
    } else {
      gates.hidden = true;
      purge(gates);
    }

    // small multiples: one map per block, one shared scale across blocks
    const multiples = $('block-maps');
    multiples.querySelectorAll('.js-plotly-plot').forEach((d) => Plotly.purge(d));
    multiples.replaceChildren();
    $('blocks-title').hidden = !r.ponder;
    if (r.ponder) {
      const key = state.map === 'units' ? 'units' : 'ponder_cost';
      let lo = Infinity, hi = -Infinity;
      for (const b of r.ponder.blocks) { const [a, c] = minMax(b[key]); lo = Math.min(lo, a); hi = Math.max(hi, c); }
      if (!(hi > lo)) hi = lo + 1e-6;
      const divs = r.ponder.blocks.map((b, i) => el('div', { id: `block-map-${i}`, class: 'plot', 'aria-label': `block ${b.index + 1} map` }));
      multiples.append(...divs);
      r.ponder.blocks.forEach((b, i) => {
        const div = divs[i];
        const fig = mapFigure({
          z: b[key], image: input.image, width: input.width, height: input.height, zmin: lo, zmax: hi,
          title: `block ${b.index + 1} (${b.width}×${b.height}): N+R ${fmt(b.mean_ponder, 2)}, N ${fmt(b.mean_units, 2)}/${b.n_units}`,
          unit: mapUnit(state.map), box: input.box, showscale: i === r.ponder.blocks.length - 1, compact: true,
        });
        plot(div, fig.data, fig.layout, `block-${b.index}-${safeName(results.imageRequest.model)}`, { compact: true });
      });
    }
  }

  function mean2d(z) {
    let s = 0, n = 0;
    for (const row of z) for (const v of row) { s += v; n++; }
    return n ? s / n : NaN;
  }

  function renderPrediction(list, prediction, label) {
    list.replaceChildren(...(prediction || []).map((p) => el('li', { class: label !== null && label !== undefined && p.index === label ? 'truth' : null },
      el('span', { class: 'name', text: p.class }),
      el('span', { class: 'prob', text: pct(p.probability, 1) }),
      el('span', { class: 'bar', 'aria-hidden': 'true' }, el('span', { style: `width:${(100 * p.probability).toFixed(1)}%` })))));
  }

  function renderFlops(target, flops, time) {
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

  // ---- samples
  async function loadSamples() {
    const id = state.model.image;
    const grid = $('samples');
    // Taken before the early returns: model A shown, B picked, A picked again returns early
    // below, and B's list (still loading) must not land over A's.
    const token = ++tokens.samples;
    if (!id) { grid.replaceChildren(); return; }
    const model = MODEL_BY_ID.get(id);
    $('samples-more').hidden = !!(model && model.test_set === false);
    if (model && model.test_set === false) {
      grid.dataset.key = '';
      $('samples-note').textContent = '';
      grid.replaceChildren(el('p', { class: 'empty', text: `No test set comes with ${id} (${model.dataset}, imported): upload an image to analyse it.` }));
      return;
    }
    const key = `${id}@${state.samplesOffset}`;
    if (grid.dataset.key === key) { markSelectedSample(); return; }
    try {
      const list = await api('GET', `/api/models/${encodeURIComponent(id)}/samples?count=${SAMPLE_COUNT}&offset=${state.samplesOffset}`, { channel: 'samples', label: 'Loading samples' });
      if (token !== tokens.samples) return;
      grid.dataset.key = key;
      $('samples-note').textContent = model ? `(${model.dataset}, #${state.samplesOffset}–${state.samplesOffset + list.length - 1})` : '';
      grid.replaceChildren(...list.map((s) => el('button', {
        type: 'button', class: 'thumb', 'data-index': s.index, title: `#${s.index}: ${s.class}`, 'aria-pressed': 'false',
        'aria-label': `test sample ${s.index}, ${s.class}`,
        onclick: () => { tokens.upload++; state.image = { sample: s.index }; syncUrl(); markSelectedSample(); runImage(); },
      }, el('img', { src: s.image, alt: '' }), el('span', { class: 'caption', text: s.class }))));
      markSelectedSample();
    } catch (err) {
      // 503: the test set is not installed on the server. Not a failure of the page: say what
      // installs it where the samples would be; uploads still work.
      if (err.status === 503 && token === tokens.samples) {
        clearError('samples');
        grid.dataset.key = '';
        $('samples-more').hidden = true;
        grid.replaceChildren(el('p', { class: 'empty notice', text: err.detail }));
      }  // anything else is shown in the banner
    }
  }
  function markSelectedSample() {
    const sel = state.image && state.image.sample !== undefined ? String(state.image.sample) : null;
    $('samples').querySelectorAll('.thumb').forEach((b) => b.setAttribute('aria-pressed', b.dataset.index === sel ? 'true' : 'false'));
  }
  $('samples-more').addEventListener('click', () => { state.samplesOffset += SAMPLE_COUNT; loadSamples(); });

  // ---- uploads: file picker, drag and drop, paste
  async function uploadFile(file) {
    if (!file) return;
    const token = ++tokens.upload;
    const form = new FormData();
    form.append('file', file, file.name || 'pasted.png');
    try {
      const stored = await api('POST', '/api/images', { form, channel: 'upload', label: 'Uploading' });
      if (token !== tokens.upload) return; // a newer upload or a sample click came after this one
      state.image = { hash: stored.hash, name: file.name || null };
      syncUrl();
      markSelectedSample();
      if (state.view === 'compare') runCompare(); else runImage();
    } catch (_) { /* shown in the banner */ }
  }
  $('file-input').addEventListener('change', (e) => { uploadFile(e.target.files[0]); e.target.value = ''; });
  $('compare-file-input').addEventListener('change', (e) => { uploadFile(e.target.files[0]); e.target.value = ''; });

  const drop = $('drop-zone');
  ['dragenter', 'dragover'].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add('dragging'); }));
  ['dragleave', 'dragend'].forEach((t) => drop.addEventListener(t, () => drop.classList.remove('dragging')));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('dragging');
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file-input').click(); } });
  // A file dropped anywhere else in the Image or Compare view is taken too, never opened by the browser.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    if (!['image', 'compare'].includes(state.view)) return;
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  document.addEventListener('paste', (e) => {
    if (!['image', 'compare'].includes(state.view)) return;
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === 'file' && item.type.startsWith('image/')) {
        e.preventDefault();
        uploadFile(item.getAsFile());
        return;
      }
    }
  });

  // ---- image view export
  function imageExport(format) {
    const r = results.image;
    if (!r) { nothingToExport('image'); return; }
    const model = results.imageRequest.model;
    const name = `image-${safeName(model)}`;
    if (format === 'json') { downloadJson(name, { model, request: results.imageRequest.body, response: r }); return; }
    if (r.ponder) {
      // One row per input pixel: the totals and every block's value at that pixel (nearest cell).
      const H = r.ponder.total.length, W = H ? r.ponder.total[0].length : 0;
      const header = ['y', 'x', 'ponder_total', 'units_total'];
      r.ponder.blocks.forEach((b) => header.push(`block${b.index}_ponder`, `block${b.index}_units`));
      const rows = [];
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < W; x++) {
          const row = [y, x, r.ponder.total[y][x], r.ponder.units_total ? r.ponder.units_total[y][x] : null];
          for (const b of r.ponder.blocks) {
            const by = Math.min(b.ponder_cost.length - 1, Math.floor((y * b.ponder_cost.length) / H));
            const bx = Math.min(b.ponder_cost[0].length - 1, Math.floor((x * b.ponder_cost[0].length) / W));
            row.push(b.ponder_cost[by][bx], b.units ? b.units[by][bx] : null);
          }
          rows.push(row);
        }
      }
      downloadCsv(name, header, rows);
    } else if (r.gates) {
      downloadCsv(name, ['layer', 'probability', 'executed'], r.gates.layers.map((l, i) => [l, r.gates.probability[i], r.gates.executed[i] ? 1 : 0]));
    } else {
      downloadCsv(name, ['rank', 'index', 'class', 'probability'], r.prediction.map((p, i) => [i + 1, p.index, p.class, p.probability]));
    }
  }
  $('image-json').addEventListener('click', () => imageExport('json'));
  $('image-csv').addEventListener('click', () => imageExport('csv'));

  // ---- image model picker
  $('image-model').addEventListener('change', (e) => {
    state.model.image = e.target.value;
    state.samplesOffset = 0;
    renderCardSummary('image-card', state.model.image);
    syncUrl();
    loadSamples();
    runImage();
  });

  // ================================================================== shared settings
  function restyleMaps(update) {
    if (!window.Plotly) return;
    const divs = [$('heatmap'), ...$('block-maps').querySelectorAll('.js-plotly-plot'), ...$('compare-grid').querySelectorAll('.map-plot')];
    for (const gd of divs) {
      if (gd && gd.data && gd.data.length && gd.data[0].type === 'heatmap') Plotly.restyle(gd, update, [0]);
    }
  }
  $('opacity').addEventListener('input', (e) => {
    state.opacity = Number(e.target.value);
    $('opacity-value').textContent = state.opacity.toFixed(2);
    restyleMaps({ opacity: state.opacity });
    syncUrl();
  });
  $('colormap').addEventListener('change', (e) => {
    state.colormap = e.target.value;
    restyleMaps({ colorscale: [plotlyScale(state.colormap)] });
    const layerDiv = $('dataset-class-layer');
    if (layerDiv.data && layerDiv.data.length) Plotly.restyle(layerDiv, { colorscale: [plotlyScale(state.colormap)] }, [0]);
    renderText();
    syncUrl();
  });
  $('map-measure').addEventListener('change', (e) => {
    state.map = e.target.value;
    if (results.image) renderImage();
    if (results.compare) renderCompare();
    syncUrl();
  });
  $('resolution').addEventListener('change', (e) => {
    state.resolution = e.target.value;
    syncUrl();
    if (state.view === 'compare') runCompare(); else runImage();
  });
  $('invert').addEventListener('change', (e) => {
    state.invert = e.target.checked;
    syncUrl();
    if (state.view === 'compare') runCompare(); else runImage();
  });
  $('show-box').addEventListener('change', (e) => {
    state.box = e.target.checked;
    syncUrl();
    if (results.image) renderImage();
    if (results.compare) renderCompare();
  });

  // ================================================================== Compare view
  function renderCompareChecks() {
    const box = $('compare-models');
    const list = modelsOfKind('image');
    box.replaceChildren(...list.map((m) => el('label', { title: `${familyLabel(m)}, ${m.dataset}` },
      el('input', { type: 'checkbox', value: m.id, checked: state.model.compare.includes(m.id), onchange: onCompareCheck }),
      ` ${m.id} `, el('span', { class: 'muted small', text: `(${familyLabel(m)}, ${m.dataset})` }))));
    if (!list.length) box.append(el('span', { class: 'muted', text: 'no image models loaded' }));
  }
  function onCompareCheck() {
    state.model.compare = [...$('compare-models').querySelectorAll('input:checked')].map((i) => i.value);
    syncUrl();
    runCompare();
  }

  async function imageBodyFor(models) {
    // A test sample means an index into each model's own test set; when the models come from
    // different datasets, the first model's sample is uploaded so that all see the same pixels.
    if (state.image.hash) return { image: state.image.hash };
    const datasets = new Set(models.map((id) => (MODEL_BY_ID.get(id) || {}).dataset));
    if (datasets.size <= 1) return { sample: state.image.sample };
    const first = models[0];
    const id = busyStart('Fetching sample');
    let blob;
    try {
      const response = await fetch(`/api/models/${encodeURIComponent(first)}/samples/${state.image.sample}.png`);
      if (!response.ok) {
        let payload = null;
        try { payload = await response.json(); } catch (_) { /* not JSON */ }
        const error = new Error(`GET sample ${state.image.sample} of ${first} failed (${response.status}): ${errorMessage(response.status, payload)}`);
        showError('compare', error.message);
        throw error;
      }
      blob = await response.blob();
    } finally {
      busyEnd(id);
    }
    const form = new FormData();
    form.append('file', blob, `sample-${state.image.sample}.png`);
    const stored = await api('POST', '/api/images', { form, channel: 'compare', label: 'Uploading sample' });
    return { image: stored.hash };
  }

  async function runCompare() {
    const ids = state.model.compare.filter((id) => MODEL_BY_ID.has(id));
    const empty = $('compare-empty');
    if (ids.length < 2 || !state.image) {
      // A request still in flight is for a selection that no longer stands: drop its answer,
      // and clear the panels drawn for an earlier selection (no old answer under new settings).
      tokens.compare++;
      $('compare-grid').classList.remove('busy');
      results.compare = null;
      renderCompare();
      empty.hidden = false;
      empty.textContent = !state.image
        ? 'Pick an image first: upload one here or in the Image view, or click a test sample there.'
        : 'Tick two or more models to compare.';
      return;
    }
    empty.hidden = true;
    const token = ++tokens.compare;
    $('compare-grid').classList.add('busy');
    $('compare-source').textContent = state.image.hash ? `upload ${shortHash(state.image.hash)}…` : `test sample #${state.image.sample}`;
    try {
      const imageBody = await imageBodyFor(ids);
      const body = { ...imageBody, resolution: state.resolution };
      if (state.invert) body.invert = true;
      const settled = await Promise.allSettled(ids.map((id) => api('POST', `/api/models/${encodeURIComponent(id)}/image`, { body, channel: `compare-${id}`, label: `Running ${id}` })));
      if (token !== tokens.compare) return;
      results.compare = {
        request: body,
        entries: ids.map((id, i) => ({ model: id, response: settled[i].status === 'fulfilled' ? settled[i].value : null, error: settled[i].status === 'rejected' ? settled[i].reason.message : null })),
      };
      renderCompare();
    } catch (err) {
      if (token === tokens.compare) {
        if (!errors.has('compare')) showError('compare', err.message);
        results.compare = null;
        renderCompare();
      }
    } finally {
      if (token === tokens.compare) $('compare-grid').classList.remove('busy');
    }
  }

  function sharedScale(entries) {
    let lo = Infinity, hi = -Infinity;
    for (const e of entries) {
      const p = e.response && e.response.ponder;
      if (!p) continue;
      const [a, b] = minMax(state.map === 'units' ? p.units_total : p.total);
      lo = Math.min(lo, a); hi = Math.max(hi, b);
    }
    if (!Number.isFinite(lo)) return null;
    if (!(hi > lo)) hi = lo + 1e-6;
    return [lo, hi];
  }

  function renderCompare() {
    const c = results.compare;
    const grid = $('compare-grid');
    grid.querySelectorAll('.js-plotly-plot').forEach((d) => Plotly.purge(d));
    grid.replaceChildren();
    if (!c) return;
    const scale = sharedScale(c.entries);
    c.scale = scale;
    // Build every panel before plotting: Plotly sizes a plot from its container at draw
    // time, and the grid's columns change as panels are added.
    const pending = [];
    c.entries.forEach((entry, i) => {
      const m = MODEL_BY_ID.get(entry.model);
      const panel = el('article', { class: 'panel', 'data-model': entry.model });
      grid.append(panel);
      panel.append(el('h3', { text: entry.model }), el('div', { class: 'card-summary' }, summaryChips(m)));
      if (!entry.response) { panel.append(el('p', { class: 'note', text: entry.error || 'failed' })); return; }
      const r = entry.response;
      const div = el('div', { id: `compare-plot-${i}`, class: 'plot map-plot' });
      const stats = el('div', { class: 'stats' });
      const pred = el('ol', { class: 'prediction' });
      const flops = el('div', { class: 'flops' });
      panel.append(stats, div, pred, flops);
      const input = r.input || {};
      let fig;
      if (r.ponder && scale) {
        fig = mapFigure({ z: state.map === 'units' ? r.ponder.units_total : r.ponder.total, image: input.image, width: input.width, height: input.height,
          zmin: scale[0], zmax: scale[1], title: `${state.map === 'units' ? 'units executed N' : 'ponder cost N+R'} (shared scale)`, unit: mapUnit(state.map), box: input.box });
        stats.append(stat('mean N+R', fmt(mean2d(r.ponder.total), 3)), stat('mean N', r.ponder.units_total ? fmt(mean2d(r.ponder.units_total), 3) : '–'));
      } else {
        fig = imageOnlyFigure({ image: input.image, width: input.width, height: input.height, title: r.gates ? 'no spatial map (per-image gates)' : 'dense: no ponder map', box: input.box });
        if (r.gates) stats.append(stat('gated blocks run', `${r.gates.executed.filter(Boolean).length}/${r.gates.executed.length}`));
      }
      stats.append(stat('time', `${fmt(r.time_ms, 1)} ms`));
      renderPrediction(pred, (r.prediction || []).slice(0, 3), input.label);
      renderFlops(flops, r.flops);
      pending.push([div, fig, `compare-${safeName(entry.model)}`]);
    });
    for (const [div, fig, name] of pending) plot(div, fig.data, fig.layout, name);
  }

  function compareExport(format) {
    const c = results.compare;
    if (!c) { nothingToExport('compare'); return; }
    const name = `compare-${c.entries.map((e) => safeName(e.model)).join('+')}`;
    if (format === 'json') { downloadJson(name, { request: c.request, shared_scale: c.scale, map: state.map, models: c.entries }); return; }
    downloadCsv(name, ['model', 'name', 'family', 'dataset', 'top1_class', 'top1_probability', 'flops_executed', 'flops_dense', 'flops_ratio', 'mean_ponder', 'min_ponder', 'max_ponder', 'mean_units', 'time_ms', 'error'],
      c.entries.map((e) => {
        const m = MODEL_BY_ID.get(e.model) || {};
        const r = e.response;
        if (!r) return [e.model, m.name, m.family, m.dataset, null, null, null, null, null, null, null, null, null, null, e.error];
        const top = (r.prediction || [])[0] || {};
        const p = r.ponder;
        const [lo, hi] = p ? minMax(p.total) : [null, null];
        return [e.model, m.name, m.family, m.dataset, top.class, top.probability, r.flops && r.flops.executed, r.flops && r.flops.dense, r.flops && r.flops.ratio,
          p ? mean2d(p.total) : null, lo, hi, p && p.units_total ? mean2d(p.units_total) : null, r.time_ms, null];
      }));
  }
  $('compare-json').addEventListener('click', () => compareExport('json'));
  $('compare-csv').addEventListener('click', () => compareExport('csv'));

  // ================================================================== Dataset view
  let datasetTimer = null;
  async function runDataset() {
    clearTimeout(datasetTimer);
    const id = state.model.dataset;
    // Taken before the cached return: A shown, B picked, A picked again must drop B's answer.
    const token = ++tokens.dataset;
    if (!id) return;
    if (results.dataset && results.dataset.model === id) { $('dataset-status').hidden = true; renderDataset(); return; }
    $('dataset-status').hidden = false;
    try {
      const status = await api('GET', `/api/models/${encodeURIComponent(id)}/dataset`, { channel: 'dataset', label: `Dataset statistics for ${id}` });
      if (token !== tokens.dataset) return;
      $('dataset-progress').value = Number(status.progress) || 0;
      $('dataset-progress').textContent = pct(status.progress, 0);
      $('dataset-message').textContent = `${status.status}: ${status.message || ''} (${pct(status.progress, 0)})`;
      if (status.status === 'running') {
        if (state.view === 'dataset') datasetTimer = setTimeout(() => { if (token === tokens.dataset) runDataset(); }, 1000);
        return;
      }
      if (status.status === 'error') {
        showError('dataset', `Dataset statistics for ${id} failed: ${status.message}`);
        return;
      }
      results.dataset = { model: id, ...status.result };
      $('dataset-status').hidden = true;
      renderDataset();
    } catch (_) {
      if (token === tokens.dataset) $('dataset-status').hidden = true;
    }
  }

  function histogramTrace(h, name, color) {
    const centres = [], widths = [];
    for (let i = 0; i < h.counts.length; i++) {
      centres.push((h.edges[i] + h.edges[i + 1]) / 2);
      widths.push(h.edges[i + 1] - h.edges[i]);
    }
    return { type: 'bar', x: centres, y: h.counts, width: widths, name, marker: { color, line: { color: '#fff', width: 0.5 } }, hovertemplate: `${name} %{x:.3f}: %{y} images<extra></extra>` };
  }

  function renderDataset() {
    const d = results.dataset;
    if (!d || d.model !== state.model.dataset) return;
    $('dataset-result').hidden = false;
    fill($('dataset-stats'), 
      stat('test images', String(d.examples)),
      stat('accuracy', pct(d.accuracy, 2)),
      stat('mean FLOPs', pct(d.flops_ratio), 'of the dense network'),
      d.dense_flops ? stat('dense', flopsText(d.dense_flops)) : null,
      d.ponder_histogram ? stat('mean ponder', fmt(weightedMean(d.per_class, 'mean_ponder'), 3)) : null,
    );
    const classes = d.per_class.map((c) => c.class);
    const tag = safeName(d.model);
    plot($('dataset-class-chart'), [
      { type: 'bar', name: 'mean FLOPs / dense', x: classes, y: d.per_class.map((c) => c.mean_flops_ratio), marker: { color: '#e0892b' }, hovertemplate: '%{x}: %{y:.1%} of dense FLOPs<extra></extra>' },
      { type: 'scatter', mode: 'markers+lines', name: 'accuracy', x: classes, y: d.per_class.map((c) => c.accuracy), yaxis: 'y2', marker: { color: '#1f5fbf', size: 8 }, line: { dash: 'dot' }, hovertemplate: '%{x}: accuracy %{y:.1%}<extra></extra>' },
    ], {
      title: { text: `${d.model}: mean FLOPs and accuracy per class` },
      yaxis: { title: { text: 'FLOPs executed / dense' }, tickformat: '.0%', rangemode: 'tozero' },
      yaxis2: { title: { text: 'accuracy' }, overlaying: 'y', side: 'right', tickformat: '.0%', range: [0, 1.05], dtick: 0.2, showgrid: false },
      legend: { orientation: 'h', y: -0.25 },
      margin: { l: 60, r: 60, t: 40, b: 90 },
    }, `dataset-class-${tag}`);

    const ponderDiv = $('dataset-ponder-chart');
    const hasPonder = d.per_class.some((c) => c.mean_ponder !== null && c.mean_ponder !== undefined);
    ponderDiv.hidden = !hasPonder;
    if (hasPonder) {
      plot(ponderDiv, [{ type: 'bar', x: classes, y: d.per_class.map((c) => c.mean_ponder), marker: { color: '#3b528b' }, hovertemplate: '%{x}: mean ponder %{y:.3f}<extra></extra>' }],
        { title: { text: 'Mean ponder cost N+R per class (summed over blocks)' }, yaxis: { title: { text: 'ponder cost N+R' } }, margin: { l: 60, r: 20, t: 40, b: 90 } }, `dataset-ponder-${tag}`);
    } else purge(ponderDiv);

    plot($('dataset-flops-hist'), [histogramTrace(d.flops_histogram, 'FLOPs ratio', '#e0892b')],
      { title: { text: 'FLOPs executed / dense, per image' }, xaxis: { title: { text: 'FLOPs ratio' }, tickformat: '.0%' }, yaxis: { title: { text: 'images' } }, bargap: 0 }, `dataset-flops-hist-${tag}`);

    const ph = $('dataset-ponder-hist');
    ph.hidden = !d.ponder_histogram;
    if (d.ponder_histogram) {
      plot(ph, [histogramTrace(d.ponder_histogram, 'ponder', '#3b528b')],
        { title: { text: 'Ponder cost per image (mean over positions, summed over blocks)' }, xaxis: { title: { text: 'ponder cost N+R' } }, yaxis: { title: { text: 'images' } }, bargap: 0 }, `dataset-ponder-hist-${tag}`);
    } else purge(ph);

    const lh = $('dataset-layers-hist');
    lh.hidden = !d.executed_layers_histogram;
    if (d.executed_layers_histogram) {
      const h = d.executed_layers_histogram;
      plot(lh, [{ type: 'bar', x: h.counts.map((_, k) => h.edges[k]), y: h.counts, marker: { color: '#1f5fbf' }, hovertemplate: '%{x} layers: %{y} images<extra></extra>' }],
        { title: { text: 'Executed gated layers per image' }, xaxis: { title: { text: 'layers executed' }, dtick: 1 }, yaxis: { title: { text: 'images' } } }, `dataset-layers-hist-${tag}`);
    } else purge(lh);

    const cl = $('dataset-class-layer');
    cl.hidden = !d.class_layer_rates;
    if (d.class_layer_rates) {
      const layers = d.layers || d.class_layer_rates[0].map((_, i) => `layer ${i}`);
      plot(cl, [{ type: 'heatmap', z: d.class_layer_rates, x: layers, y: classes, zmin: 0, zmax: 1, colorscale: plotlyScale(state.colormap),
        colorbar: { title: { text: 'execution rate', side: 'right' }, tickformat: '.0%' }, hovertemplate: '%{y}, %{x}: runs %{z:.1%}<extra></extra>' }],
      { title: { text: 'Execution rate per class and gated layer (ConvNet-AIG)' }, xaxis: { tickangle: -45 }, yaxis: { autorange: 'reversed' }, margin: { l: 100, r: 20, t: 40, b: 80 } }, `dataset-class-layer-${tag}`);
    } else purge(cl);

    const thumbs = (list) => list.map((e) => el('button', {
      type: 'button', class: 'thumb', 'data-index': e.index,
      title: `#${e.index} ${e.class}: FLOPs ${pct(e.flops_ratio)}${e.ponder !== null && e.ponder !== undefined ? `, ponder ${fmt(e.ponder, 2)}` : ''}. Click to open in the Image view.`,
      onclick: () => openSample(d.model, e.index),
    }, el('img', { src: e.image, alt: `test image ${e.index}, ${e.class}` }),
    el('span', { class: 'caption', text: e.ponder !== null && e.ponder !== undefined ? `${e.class} · ${fmt(e.ponder, 2)}` : `${e.class} · ${pct(e.flops_ratio, 0)}` })));
    $('dataset-least').replaceChildren(...thumbs(d.least || []));
    $('dataset-most').replaceChildren(...thumbs(d.most || []));
  }

  function weightedMean(perClass, key) {
    let s = 0, n = 0;
    for (const c of perClass) if (c[key] !== null && c[key] !== undefined) { s += c[key] * c.count; n += c.count; }
    return n ? s / n : null;
  }

  function openSample(modelId, index) {
    state.model.image = modelId;
    $('image-model').value = modelId;
    renderCardSummary('image-card', modelId);
    state.image = { sample: index };
    state.samplesOffset = Math.floor(index / SAMPLE_COUNT) * SAMPLE_COUNT;
    showView('image', { run: false });
    loadSamples();
    runImage();
  }

  $('dataset-model').addEventListener('change', (e) => {
    state.model.dataset = e.target.value;
    renderCardSummary('dataset-card', state.model.dataset);
    $('dataset-result').hidden = true;
    syncUrl();
    runDataset();
  });

  function datasetExport(format) {
    const d = results.dataset;
    if (!d) { nothingToExport('dataset'); return; }
    const name = `dataset-${safeName(d.model)}`;
    if (format === 'json') { downloadJson(name, d); return; }
    downloadCsv(name, ['class', 'count', 'accuracy', 'mean_flops_ratio', 'mean_ponder', ...(d.layers ? d.layers.map((l) => `rate_${l}`) : [])],
      d.per_class.map((c, i) => [c.class, c.count, c.accuracy, c.mean_flops_ratio, c.mean_ponder, ...(d.class_layer_rates ? d.class_layer_rates[i] : [])]));
  }
  $('dataset-json').addEventListener('click', () => datasetExport('json'));
  $('dataset-csv').addEventListener('click', () => datasetExport('csv'));

  // ================================================================== Text view
  let textAbort = null;
  async function runText() {
    const id = state.model.text;
    const text = state.text;
    if (!id) return;
    if (!text) { results.text = null; renderText(); return; }
    if (textAbort) textAbort.abort();
    textAbort = new AbortController();
    const token = ++tokens.text;
    $('text-output').classList.add('busy');
    try {
      const response = await api('POST', `/api/models/${encodeURIComponent(id)}/text`, { body: { text }, channel: 'text', label: `Running ${id}`, signal: textAbort.signal });
      if (token !== tokens.text) return;
      results.text = { model: id, text, ...response };
      renderText();
    } catch (err) {
      if (err.name !== 'AbortError' && token === tokens.text) { results.text = null; renderText(); }
    } finally {
      if (token === tokens.text) $('text-output').classList.remove('busy');
    }
  }
  const runTextSoon = debounce(runText, TEXT_DEBOUNCE_MS);

  const visibleChar = (c) => (c === ' ' ? '␣' : c === '\n' ? '↵' : c === '\t' ? '⇥' : c);
  function charTitle(c, i) {
    const code = c.char.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
    const bytes = c.bytes > 1 ? `\n(${c.bytes} UTF-8 bytes: N and N+R are the mean over them, bits their sum)` : '';
    const label = (results.text && results.text.classes && results.text.classes[c.class] && results.text.classes[c.class].label) || c.class || '';
    return `#${i} '${visibleChar(c.char)}' (U+${code}), ${label}\nsteps N = ${c.steps}\nponder N+R = ${fmt(c.ponder, 3)}\nbits = ${c.bits === null || c.bits === undefined ? '– (first character)' : fmt(c.bits, 2)}${bytes}`;
  }
  // The quantity the characters are coloured by: the user's choice, or what the server found varying.
  const textMeasure = (t) => (state.measure === 'auto' ? (t.measure || 'ponder') : state.measure);

  function renderText() {
    const out = $('text-output');
    const t = results.text;
    if (!t || !t.chars) {
      out.replaceChildren(el('span', { class: 'muted', text: state.text ? '' : 'Type above: each character is coloured by how long the network pondered on it.' }));
      $('text-stats').replaceChildren();
      $('text-legend').replaceChildren();
      $('text-classes').replaceChildren();
      purge($('text-chart'));
      return;
    }
    const key = textMeasure(t);
    const values = t.chars.map((c) => c[key]);
    const lo = Math.min(...values), hi = Math.max(...values);
    const span = hi > lo ? hi - lo : 0;
    const frag = document.createDocumentFragment();
    t.chars.forEach((c, i) => {
      const rgb = colorAt(state.colormap, span ? (c[key] - lo) / span : 0.5);
      const node = el('span', { class: c.char === '\n' ? 'ch newline' : 'ch', title: charTitle(c, i), 'data-i': i, 'data-steps': c.steps, 'data-ponder': c.ponder });
      node.style.backgroundColor = rgbCss(rgb);
      node.style.color = inkFor(rgb);
      node.textContent = c.char === '\n' ? '↵\n' : c.char;
      frag.append(node);
    });
    out.replaceChildren(frag);
    const unit = key === 'ponder' ? 'ponder cost N+R' : 'steps N';
    fill($('text-legend'), el('span', { text: `${unit}: ${fmt(lo, key === 'ponder' ? 3 : 0)}` }), el('span', { class: 'ramp', style: `background:${gradientCss(state.colormap)}` }), el('span', { text: fmt(hi, key === 'ponder' ? 3 : 0) }),
      span ? null : el('span', { text: '(all characters equal)' }));
    $('text-stats').replaceChildren(
      stat('chars', String(t.chars.length)),
      stat('mean N', fmt(t.mean_steps, 3)),
      stat('mean N+R', fmt(t.mean_ponder, 3)),
      stat('bits/char', fmt(t.bits_per_char, 3)),
      stat('time', `${fmt(t.time_ms, 1)} ms`),
    );
    $('text-classes').replaceChildren(...Object.entries(t.classes || {}).map(([name, c]) => el('span', {
      class: `class-chip${name === 'space' || name === 'punctuation' ? ' boundary' : ''}`, 'data-class': name,
      title: `${c.count} character(s) of class ${c.label} in this text`,
    }, el('b', { text: c.label }), ` N ${fmt(c.steps, 2)} · N+R ${fmt(c.ponder, 2)} `, el('span', { class: 'muted', text: `(${c.count})` }))));
    renderTextChart(t, key);
  }

  // ---- corpus panel: the model's held-out statistics per character class (cached by the server)
  let corpusTimer = null;
  async function runCorpus() {
    clearTimeout(corpusTimer);
    const id = state.model.text;
    const token = ++tokens.corpus;
    if (!id) return;
    if (results.corpus && results.corpus.model === id) { renderCorpus(); return; }
    if (results.corpus) { results.corpus = null; renderCorpus(); } // not the previous model's numbers meanwhile
    try {
      const status = await api('GET', `/api/models/${encodeURIComponent(id)}/dataset`, { channel: 'corpus', label: `Held-out statistics for ${id}` });
      if (token !== tokens.corpus) return;
      if (status.status === 'running') {
        $('corpus-source').textContent = `measuring: ${status.message || ''}`;
        if (state.view === 'text') corpusTimer = setTimeout(() => { if (token === tokens.corpus) runCorpus(); }, 1000);
        return;
      }
      if (status.status === 'error') { showError('corpus', `Held-out statistics for ${id} failed: ${status.message}`); return; }
      results.corpus = { model: id, ...status.result };
      renderCorpus();
    } catch (_) { /* shown in the banner */ }
  }
  function renderCorpus() {
    const c = results.corpus;
    if (!c || !c.per_char_class) { purge($('corpus-chart')); $('corpus-stats').replaceChildren(); $('corpus-source').textContent = ''; return; }
    const names = Object.keys(c.per_char_class);
    const labels = names.map((n) => (c.class_labels && c.class_labels[n]) || n);
    const get = (key) => names.map((n) => c.per_char_class[n][key]);
    const hover = (what) => `%{x}: ${what} %{y:.3f} ± %{error_y.array:.3f}<br>%{customdata} bytes<extra></extra>`;
    plot($('corpus-chart'), [
      { type: 'bar', name: 'steps N', x: labels, y: get('steps'), error_y: { type: 'data', array: get('steps_std'), visible: true }, customdata: get('count'),
        marker: { color: '#2f6fdf' }, hovertemplate: hover('N') },
      { type: 'bar', name: 'ponder cost N+R', x: labels, y: get('ponder'), error_y: { type: 'data', array: get('ponder_std'), visible: true }, customdata: get('count'),
        marker: { color: '#e0a030' }, hovertemplate: hover('N+R') },
    ], {
      title: { text: `${c.model}: mean N and N+R by the class of the byte read` },
      barmode: 'group', yaxis: { title: { text: 'steps N / ponder N+R' }, rangemode: 'tozero' },
      legend: { orientation: 'h', y: 1.12, x: 1, xanchor: 'right' }, margin: { l: 60, r: 20, t: 60, b: 40 },
    }, `corpus-${safeName(c.model)}`);
    $('corpus-stats').replaceChildren(
      stat('bytes', String(c.bytes)),
      stat('bits/byte', fmt(c.bits_per_byte, 3)),
      stat('mean N', fmt(c.mean_steps, 3)),
      c.steps_off_mode_fraction !== null && c.steps_off_mode_fraction !== undefined ? stat('N ≠ its mode', pct(c.steps_off_mode_fraction, 1), `N differs from its most common value (${c.steps_mode}) on this share of bytes`) : null,
      c.steps_at_cap_fraction !== null && c.steps_at_cap_fraction !== undefined ? stat('N at cap', pct(c.steps_at_cap_fraction, 1), `N = M = ${c.max_steps} on this share of bytes`) : null,
      c.corr_ponder_surprisal !== null && c.corr_ponder_surprisal !== undefined ? stat('corr(N+R, bits)', fmt(c.corr_ponder_surprisal, 3), 'Pearson correlation over held-out bytes between the ponder while reading a byte and the loss of predicting the next one (the chart above pairs a character with its own surprisal)') : null,
      c.corr_steps_surprisal !== null && c.corr_steps_surprisal !== undefined ? stat('corr(N, bits)', fmt(c.corr_steps_surprisal, 3), 'the same for the step count N') : null,
    );
    $('corpus-source').textContent = `From ${c.source}.`;
  }

  function renderTextChart(t, key) {
    const n = t.chars.length;
    const x = t.chars.map((_, i) => i);
    const labels = t.chars.map((c) => visibleChar(c.char));
    const every = Math.max(1, Math.ceil(n / 120));
    const tickvals = x.filter((i) => i % every === 0);
    const other = key === 'ponder' ? 'steps' : 'ponder';
    const name = { steps: 'steps N', ponder: 'ponder cost N+R' };
    const values = t.chars.map((c) => c[key]);
    const lo = Math.min(...values), hi = Math.max(...values);
    plot($('text-chart'), [
      { type: 'bar', name: name[key], x, y: values, customdata: labels, marker: { color: values.map((v) => rgbCss(colorAt(state.colormap, hi > lo ? (v - lo) / (hi - lo) : 0.5))), line: { color: '#444', width: 0.3 } },
        hovertemplate: `'%{customdata}' #%{x}: ${name[key]} %{y:.3f}<extra></extra>` },
      { type: 'scatter', mode: 'lines', name: name[other], x, y: t.chars.map((c) => c[other]), line: { color: '#1b1f24', width: 1, dash: 'dot' }, customdata: labels,
        hovertemplate: `'%{customdata}' #%{x}: ${name[other]} %{y:.3f}<extra></extra>` },
      { type: 'scatter', mode: 'lines+markers', name: 'surprisal (bits)', x, y: t.chars.map((c) => c.bits), yaxis: 'y2', line: { color: '#c0392b', width: 1.2 }, marker: { size: 4 }, customdata: labels,
        connectgaps: false, hovertemplate: `'%{customdata}' #%{x}: %{y:.2f} bits<extra></extra>` },
    ], {
      title: { text: `Ponder per character (${name[key]} as bars) and surprisal` },
      xaxis: { tickmode: 'array', tickvals, ticktext: tickvals.map((i) => labels[i]), tickangle: 0, range: [-0.5, n - 0.5], title: { text: 'character' } },
      yaxis: { title: { text: 'steps N / ponder N+R' }, rangemode: 'tozero' },
      yaxis2: { title: { text: 'bits' }, overlaying: 'y', side: 'right', rangemode: 'tozero', showgrid: false },
      legend: { orientation: 'h', y: 1.14, x: 1, xanchor: 'right' },
      bargap: 0.1,
      margin: { l: 60, r: 60, t: 60, b: 50 },
    }, `text-${safeName(t.model)}`);
  }

  $('text-input').addEventListener('input', (e) => {
    state.text = e.target.value;
    syncUrl();
    if (!state.text) { if (textAbort) textAbort.abort(); tokens.text++; results.text = null; renderText(); return; }
    runTextSoon();
  });
  $('ponder-measure').addEventListener('change', (e) => { state.measure = e.target.value; renderText(); syncUrl(); });
  $('text-model').addEventListener('change', (e) => {
    state.model.text = e.target.value;
    renderCardSummary('text-card', state.model.text);
    syncUrl();
    runText();
    runCorpus();
  });
  function textExport(format) {
    const t = results.text;
    if (!t) { nothingToExport('text'); return; }
    const name = `text-${safeName(t.model)}`;
    if (format === 'json') { downloadJson(name, t); return; }
    downloadCsv(name, ['index', 'char', 'codepoint', 'steps', 'ponder', 'bits'], t.chars.map((c, i) => [i, c.char, c.char.codePointAt(0), c.steps, c.ponder, c.bits]));
  }
  $('text-json').addEventListener('click', () => textExport('json'));
  $('text-csv').addEventListener('click', () => textExport('csv'));

  // ================================================================== Parity view
  function parityBits() {
    const m = MODEL_BY_ID.get(state.model.parity);
    const task = (m && (m.task || (m.card && m.card.task))) || {};
    return Number(task.bits) || 16;
  }
  function randomVector(bits) {
    // As in the paper's generator: k ~ U{1..bits} random positions set to +1 or -1.
    const k = 1 + Math.floor(Math.random() * bits);
    const order = [...Array(bits).keys()].sort(() => Math.random() - 0.5);
    const v = Array(bits).fill(0);
    for (const i of order.slice(0, k)) v[i] = Math.random() < 0.5 ? -1 : 1;
    return v;
  }
  function ensureVector() {
    const bits = parityBits();
    if (!state.vector || state.vector.length !== bits) state.vector = randomVector(bits);
  }
  function renderParityVector() {
    if (!state.model.parity) return;
    ensureVector();
    const box = $('parity-vector');
    box.replaceChildren(...state.vector.map((v, i) => el('button', {
      type: 'button', id: `parity-cell-${i}`, 'data-v': v, 'aria-label': `entry ${i}: ${v}`,
      onclick: () => { state.vector[i] = v === 0 ? 1 : v === 1 ? -1 : 0; renderParityVector(); syncUrl(); runParitySoon(); },
    }, v > 0 ? '+1' : v < 0 ? '−1' : '0')));
  }
  async function runParity() {
    const id = state.model.parity;
    if (!id) return;
    ensureVector();
    const vector = state.vector.slice();
    const token = ++tokens.parity;
    try {
      const response = await api('POST', `/api/models/${encodeURIComponent(id)}/parity`, { body: { vector }, channel: 'parity', label: `Running ${id}` });
      if (token !== tokens.parity) return;
      results.parity = { model: id, vector, ...response };
      results.parityHistory.push({ model: id, vector: vector.map((v) => (v > 0 ? '+' : v < 0 ? '-' : '0')).join(''), ...response });
      if (results.parityHistory.length > 500) results.parityHistory.shift();
      renderParity();
    } catch (_) { /* banner */ }
  }
  const runParitySoon = debounce(runParity, 150);

  function renderParity() {
    const p = results.parity;
    if (!p) return;
    const ones = p.vector.filter((v) => v === 1).length;
    const expected = ones % 2 ? 'odd' : 'even';
    const right = expected === p.answer;
    $('parity-result').replaceChildren(
      el('span', { class: `verdict ${right ? 'right' : 'wrong'}`, text: `${p.answer} ${right ? '✓' : '✗'}` }),
      stat('probability', fmt(p.probability, 3), 'probability of the answer given'),
      stat('expected', `${expected} (${ones} × +1)`),
      stat('steps N', String(p.steps)),
      stat('ponder N+R', fmt(p.ponder, 3)),
      stat('nonzero entries', String(p.nonzero)),
    );
    const m = MODEL_BY_ID.get(p.model);
    const curve = testMetrics(m).ponder_by_nonzero;
    const data = [];
    if (curve) {
      const ks = Object.keys(curve).map(Number).sort((a, b) => a - b);
      data.push({ type: 'scatter', mode: 'lines', name: 'test-set mean ponder', x: ks, y: ks.map((k) => curve[String(k)]), line: { color: '#8a929e' } });
    }
    const hist = results.parityHistory.filter((h) => h.model === p.model);
    data.push({ type: 'scatter', mode: 'markers', name: 'your vectors', x: hist.map((h) => h.nonzero), y: hist.map((h) => h.ponder), text: hist.map((h) => `${h.vector}: ${h.answer}, N=${h.steps}`), marker: { color: '#1f5fbf', size: 7, opacity: 0.6 }, hovertemplate: '%{text}<br>nonzero %{x}, ponder %{y:.3f}<extra></extra>' });
    data.push({ type: 'scatter', mode: 'markers', name: 'current', x: [p.nonzero], y: [p.ponder], marker: { color: '#e0892b', size: 14, symbol: 'star' }, hovertemplate: 'current: nonzero %{x}, ponder %{y:.3f}<extra></extra>' });
    plot($('parity-chart'), data, {
      title: { text: 'Ponder cost N+R against the number of nonzero entries (Graves 2016, fig. 4)' },
      xaxis: { title: { text: 'nonzero entries' }, range: [-0.5, parityBits() + 0.5], dtick: Math.max(1, Math.ceil(parityBits() / 16)) },
      yaxis: { title: { text: 'ponder cost N+R' }, rangemode: 'tozero' },
      legend: { orientation: 'h', y: -0.2 },
    }, `parity-${safeName(p.model)}`);
  }

  $('parity-random').addEventListener('click', () => { state.vector = randomVector(parityBits()); renderParityVector(); syncUrl(); runParity(); });
  $('parity-clear').addEventListener('click', () => { state.vector = Array(parityBits()).fill(0); renderParityVector(); syncUrl(); runParity(); });
  $('parity-model').addEventListener('change', (e) => {
    state.model.parity = e.target.value;
    renderCardSummary('parity-card', state.model.parity);
    renderParityVector();
    syncUrl();
    runParity();
  });
  function parityExport(format) {
    const p = results.parity;
    if (!p) { nothingToExport('parity'); return; }
    const name = `parity-${safeName(p.model)}`;
    const history = results.parityHistory.filter((h) => h.model === p.model);
    if (format === 'json') { downloadJson(name, { model: p.model, current: p, history }); return; }
    downloadCsv(name, ['vector', 'nonzero', 'plus_ones', 'expected', 'answer', 'probability', 'steps', 'ponder'],
      history.map((h) => { const ones = [...h.vector].filter((c) => c === '+').length; return [h.vector, h.nonzero, ones, ones % 2 ? 'odd' : 'even', h.answer, h.probability, h.steps, h.ponder]; }));
  }
  $('parity-json').addEventListener('click', () => parityExport('json'));
  $('parity-csv').addEventListener('click', () => parityExport('csv'));

  // ================================================================== Models view
  function flatMetrics(t) {
    const rows = [];
    for (const [k, v] of Object.entries(t || {})) {
      if (typeof v === 'number') rows.push([k, Math.abs(v) >= 1e5 ? flopsText(v).replace(' FLOPs', '') : (Number.isInteger(v) ? String(v) : v.toFixed(4))]);
      else if (typeof v === 'string') rows.push([k, v]);
    }
    return rows;
  }
  function renderModelCards() {
    const box = $('model-cards');
    if (box.childElementCount) return;
    if (!MODELS.length) { box.append(el('p', { class: 'empty', text: 'No models loaded: start the server with a checkpoint directory.' })); return; }
    box.replaceChildren(...MODELS.map((m) => {
      const card = m.card || {};
      const rows = [
        ['id', m.id], ['family', familyLabel(m)], ['kind', m.kind], ['dataset', m.dataset], ['task', taskLabel(m)],
        ['architecture', card.model ? `${card.model} ${JSON.stringify(card.model_kwargs || {}).replace(/,/g, ', ')}` : null],
        ['note', card.note],
        ['imported from', m.source ? `${m.source.format}: ${(m.source.files || []).join(', ')}` : null],
        ['source sha256', m.source && m.source.sha256 ? Object.entries(m.source.sha256).map(([f, h]) => `${f} ${h}`).join('; ') : null],
        ['import command', card.import_command],
        ['classes', Array.isArray(m.classes) ? m.classes.join(', ') : null],
        ['input', m.preprocess ? `${(m.preprocess.input_size || []).join('×')} × ${m.preprocess.channels} channel(s)` : null],
        ['trained', card.training_time_s !== undefined ? `${card.training_time_s} s on ${card.trained_on || '?'}` : null],
        ['seed', card.seed], ['torch', card.torch_version], ['served on', m.device],
      ].filter(([, v]) => v !== null && v !== undefined && v !== '');
      const metrics = flatMetrics(testMetrics(m));
      const open = VIEWS.filter((v) => VIEW_KIND[v] === m.kind && v !== 'compare');
      return el('article', { 'data-model': m.id },
        el('h3', { text: m.id }),
        el('div', { class: 'card-summary' }, summaryChips(m)),
        el('table', {}, el('tbody', {}, rows.map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: String(v) }))))),
        metrics.length ? el('h4', { text: 'Test metrics' }) : null,
        metrics.length ? el('table', {}, el('tbody', {}, metrics.map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: v }))))) : null,
        el('div', { class: 'actions' }, open.map((v) => el('button', { type: 'button', onclick: () => openModelIn(v, m.id) }, `Open in ${v}`))),
        el('details', {}, el('summary', { text: 'card.json' }), el('pre', { text: JSON.stringify(card, null, 2) })));
    }));
  }
  function openModelIn(view, id) {
    state.model[view] = id;
    const picker = $(`${view}-model`);
    if (picker) picker.value = id;
    renderCardSummary(`${view}-card`, id);
    if (view === 'image') state.samplesOffset = 0;
    showView(view);
  }
  function modelsExport(format) {
    if (format === 'json') { downloadJson('models', MODELS); return; }
    downloadCsv('models', ['id', 'name', 'family', 'kind', 'dataset', 'task', 'accuracy', 'flops_ratio', 'mean_ponder', 'mean_steps', 'bits_per_byte', 'device'],
      MODELS.map((m) => { const t = testMetrics(m); return [m.id, m.name, m.family, m.kind, m.dataset, taskLabel(m), t.accuracy, t.flops_ratio, t.mean_ponder, t.mean_steps, t.bits_per_byte, m.device]; }));
  }
  $('models-json').addEventListener('click', () => modelsExport('json'));
  $('models-csv').addEventListener('click', () => modelsExport('csv'));

  // ================================================================== start
  function init() {
    if (!window.Plotly) showError('plotly', 'plotly.js did not load (/static/vendor/plotly.min.js): charts cannot be drawn.');
    readUrl();
    state.model.image = defaultModel('image', state.model.image);
    state.model.dataset = defaultModel('image', state.model.dataset || state.model.image);
    state.model.text = defaultModel('text', state.model.text);
    state.model.parity = defaultModel('parity', state.model.parity);
    if (!state.model.compare.length) {
      const img = modelsOfKind('image');
      const first = MODEL_BY_ID.get(state.model.image);
      const same = img.filter((m) => first && m.dataset === first.dataset && m.id !== first.id);
      state.model.compare = [first, ...same, ...img.filter((m) => !first || m.id !== first.id)].filter(Boolean).map((m) => m.id).filter((id, i, a) => a.indexOf(id) === i).slice(0, 2);
    }
    fillPicker($('image-model'), 'image', state.model.image);
    // The dataset view needs a test set: imported models (the authors' checkpoints) come without.
    fillPicker($('dataset-model'), 'image', state.model.dataset, (m) => m.test_set !== false);
    fillPicker($('text-model'), 'text', state.model.text);
    fillPicker($('parity-model'), 'parity', state.model.parity);
    renderCardSummary('image-card', state.model.image);
    renderCardSummary('dataset-card', state.model.dataset);
    renderCardSummary('text-card', state.model.text);
    renderCardSummary('parity-card', state.model.parity);
    $('colormap').value = state.colormap;
    $('opacity').value = String(state.opacity);
    $('opacity-value').textContent = state.opacity.toFixed(2);
    $('map-measure').value = state.map;
    $('resolution').value = state.resolution;
    $('invert').checked = state.invert;
    $('show-box').checked = state.box;
    $('ponder-measure').value = state.measure;
    $('text-input').value = state.text;
    if (state.image && state.image.sample !== undefined) state.samplesOffset = Math.floor(state.image.sample / SAMPLE_COUNT) * SAMPLE_COUNT;
    renderText();
    showView(state.view);
  }

  // For tests and the console: the live state and the last answers.
  window.ponderscope = { state, results, colorAt, syncUrl };
  init();
})();
