/* The page's state: the models the server loaded, the one `state` object a link must reproduce,
 * the last answers (`results`), the registered views, and the URL that holds the state.
 *
 * The shared keys (view, image or sample, display settings) are read and written here; each
 * view reads its own keys in its init(state, query) and writes them in writeUrl(query, state). */
import { COLORSCALES } from './colors.js';

export const MODELS = JSON.parse(document.getElementById('models-data').textContent || '[]');
export const MODEL_BY_ID = new Map(MODELS.map((m) => [m.id, m]));

// Display settings shared by the views, with the values a link need not carry.
export const SETTING_DEFAULTS = { resolution: 'train', colormap: 'Viridis', opacity: 0.6, map: 'ponder', invert: false, box: true };

export const state = {
  view: null, // a registered view's name
  model: {}, // view name -> model id (compare: a list of ids); filled by the views
  image: null, // the input of the image views: {hash, name?} (an upload) or {sample} (a test-set index)
  ...SETTING_DEFAULTS, // map: 'ponder' (N+R) or 'units' (N)
};

/** The last answers, for redraws and exports; each view keeps its own keys here. */
export const results = {};

// ------------------------------------------------------------------ the registered views
export const views = [];
export function registerViews(list) {
  views.push(...list);
}
export const viewNamed = (name) => views.find((v) => v.name === name) || null;

// ------------------------------------------------------------------ URL state
/** Read the shared keys of `q` into `state`. */
export function readUrl(q) {
  state.view = viewNamed(q.get('view')) ? q.get('view') : views[0].name;
  if (q.get('image')) state.image = { hash: q.get('image') };
  else if (q.get('sample') !== null && /^\d+$/.test(q.get('sample'))) state.image = { sample: Number(q.get('sample')) };
  if (['train', 'native'].includes(q.get('res'))) state.resolution = q.get('res');
  if (COLORSCALES[q.get('cmap')]) state.colormap = q.get('cmap');
  const opacity = parseFloat(q.get('opacity'));
  if (Number.isFinite(opacity)) state.opacity = Math.min(1, Math.max(0, opacity));
  if (['ponder', 'units'].includes(q.get('map'))) state.map = q.get('map');
  state.invert = q.get('invert') === '1';
  if (q.get('box') === '0') state.box = false;
}

/** The query string for the current state: the view, each view's own keys, the input image,
 * and the display settings that differ from their defaults. */
export function urlQuery() {
  const q = new URLSearchParams();
  q.set('view', state.view);
  for (const v of views) if (v.writeUrl) v.writeUrl(q, state);
  if (state.image && state.image.hash) q.set('image', state.image.hash);
  else if (state.image && state.image.sample !== undefined) q.set('sample', String(state.image.sample));
  const d = SETTING_DEFAULTS;
  if (state.resolution !== d.resolution) q.set('res', state.resolution);
  if (state.colormap !== d.colormap) q.set('cmap', state.colormap);
  if (state.opacity !== d.opacity) q.set('opacity', String(state.opacity));
  if (state.map !== d.map) q.set('map', state.map);
  if (state.invert) q.set('invert', '1');
  if (!state.box) q.set('box', '0');
  return q;
}

export function syncUrl() {
  history.replaceState(null, '', `${location.pathname}?${urlQuery().toString()}${location.hash}`);
}
