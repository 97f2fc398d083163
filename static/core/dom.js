/* DOM and formatting helpers: no state, no requests. */

export const $ = (id) => document.getElementById(id);

/** el('tag', {class, text, onclick, attr...}, ...children): null/undefined/false children and
 * attributes are skipped; `on*` attributes become event listeners. */
export function el(tag, attrs = {}, ...children) {
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

/** replaceChildren that skips null/undefined/false (replaceChildren would print "null"). */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** One "label value" entry of a stats line. */
/** A note for signals a model reports that no view draws (answer.unshown_signals), or nothing. */
export function unshownNote(answer) {
  const keys = (answer && answer.unshown_signals) || [];
  return keys.length ? el('span', { class: 'muted small unshown', text: `This model also reports ${keys.join(', ')}, not drawn here (see the answer's JSON).` }) : null;
}

export function stat(label, value, title) {
  return el('span', { class: 'stat', title }, `${label} `, el('b', { text: value }));
}

const missing = (v) => v === null || v === undefined || Number.isNaN(v);
export const fmt = (v, digits = 3) => (missing(v) ? '–' : Number(v).toFixed(digits));
export const pct = (v, digits = 1) => (missing(v) ? '–' : `${(100 * v).toFixed(digits)}%`);
export function flopsText(v) {
  if (v === null || v === undefined) return '–';
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} GFLOPs`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)} MFLOPs`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} kFLOPs`;
  return `${v} FLOPs`;
}
export const shortHash = (h) => (h ? h.slice(0, 10) : '');

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
