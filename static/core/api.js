/* The API client: fetch JSON with the server's error text, the error banner (one entry per
 * channel), the busy indicator, and one polling helper for the server's background jobs. */
import { $, el } from './dom.js';

// ------------------------------------------------------------------ error banner
export const errors = new Map(); // channel -> message
export function showError(channel, message) {
  errors.set(channel, message);
  renderErrors();
}
export function clearError(channel) {
  if (errors.delete(channel)) renderErrors();
}
function renderErrors() {
  $('error-list').replaceChildren(...[...errors.values()].map((m) => el('li', { text: m })));
  $('error').hidden = errors.size === 0;
}
$('error-close').addEventListener('click', () => { errors.clear(); renderErrors(); });

// ------------------------------------------------------------------ busy indicator
const inFlight = new Map();
let flightId = 0;
export function busyStart(label) {
  const id = ++flightId;
  inFlight.set(id, label);
  renderBusy();
  return id;
}
export function busyEnd(id) {
  inFlight.delete(id);
  renderBusy();
}
function renderBusy() {
  $('loading').hidden = inFlight.size === 0;
  const labels = [...new Set(inFlight.values())];
  $('loading-text').textContent = labels.length ? `${labels.join(', ')}…` : '';
  document.body.setAttribute('aria-busy', inFlight.size ? 'true' : 'false');
}

// ------------------------------------------------------------------ requests
/** The server's `detail` as one line (FastAPI validation errors are a list). */
export function errorMessage(status, payload, fallback) {
  let detail = payload && payload.detail !== undefined ? payload.detail : null;
  if (Array.isArray(detail)) { // [{loc, msg, type}]
    detail = detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((p) => p !== 'body').join('.')}${d.loc && d.loc.length ? ': ' : ''}${d.msg}` : JSON.stringify(d))).join('; ');
  } else if (detail && typeof detail === 'object') {
    detail = JSON.stringify(detail);
  }
  return detail || fallback || `HTTP ${status}`;
}

/** fetch JSON; throws an Error whose message is the server's `detail` (with .status, .detail).
 * `channel` names the error-banner entry that this request sets on failure and clears on
 * success; `quiet(error)` true: the caller says it where it belongs, not in the banner. */
export async function api(method, path, { body, form, channel, label, signal, quiet } = {}) {
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
    return withSharedArrays(payload);
  } catch (err) {
    if (err.name !== 'AbortError' && channel) {
      if (quiet && quiet(err)) clearError(channel);
      else showError(channel, err.message);
    }
    throw err;
  } finally {
    busyEnd(id);
  }
}

/** An answer's figures carry the arrays that are also its numbers as {"$ref": "ponder.total"}
 * (sent once: server/references.py): put the answer's own array in each such place. */
export function withSharedArrays(payload) {
  if (!payload || typeof payload !== 'object' || !payload.figures) return payload;
  const lookup = (path) => path.split('.').reduce((value, key) => (value == null ? value : value[key]), payload);
  const resolve = (node) => {
    if (Array.isArray(node)) return node.map(resolve);
    if (!node || typeof node !== 'object') return node;
    if (typeof node.$ref === 'string' && Object.keys(node).length === 1) return lookup(node.$ref);
    return Object.fromEntries(Object.entries(node).map(([key, value]) => [key, resolve(value)]));
  };
  payload.figures = resolve(payload.figures);
  return payload;
}

/** One background job at a time (e.g. a view's dataset statistics): `run(path, ...)` asks
 * `path` (answers {status: running|done|error, progress, message, result}) again every
 * `interval` ms while the job runs, and resolves to:
 *   {result}  the job is done;
 *   {failed}  the job failed (its message is in the banner under `channel`);
 *   null      the answer is no longer wanted: a later run() or cancel(), or keepPolling() said
 *             stop (e.g. the view was left; activating it again asks again).
 * It throws (the message is in the banner) only when the request itself fails and is still
 * wanted. `onStatus(status)` sees every answer that is still wanted. */
export function jobPoller() {
  let ticket = 0;
  let timer = null;
  let wake = null;
  function cancel() {
    ticket++;
    clearTimeout(timer);
    if (wake) { wake(); wake = null; }
  }
  async function run(path, { channel, label, interval = 1000, onStatus = () => {}, keepPolling = () => true }) {
    cancel();
    const mine = ticket;
    for (;;) {
      let status;
      try {
        status = await api('GET', path, { channel, label });
      } catch (err) {
        if (mine !== ticket) return null;
        throw err;
      }
      if (mine !== ticket) return null;
      onStatus(status);
      if (status.status === 'error') {
        showError(channel, `${label} failed: ${status.message}`);
        return { failed: status.message };
      }
      if (status.status !== 'running') return { result: status.result };
      if (!keepPolling()) return null;
      await new Promise((resolve) => { wake = resolve; timer = setTimeout(resolve, interval); });
      if (mine !== ticket) return null; // cancelled while waiting (a later run owns `wake` now)
      wake = null;
    }
  }
  return { run, cancel };
}
