/* Downloads: JSON and CSV files made in the page (nothing is uploaded), and the export buttons. */
import { $, el } from './dom.js';
import { showError } from './api.js';

export function download(filename, content, type) {
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
export function toCsv(header, rows) {
  return [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
}

/** A model id (or anything) made safe for a file name. */
export const safeName = (s) => String(s || 'none').replace(/[^A-Za-z0-9._-]+/g, '_');
export function downloadJson(name, obj) { download(`ponderscope-${name}.json`, JSON.stringify(obj, null, 2), 'application/json'); }
export function downloadCsv(name, header, rows) { download(`ponderscope-${name}.csv`, toCsv(header, rows), 'text/csv'); }

/** Wire a view's "Download JSON" / "Download CSV" buttons (#<view>-json, #<view>-csv) to
 * `exporter(format)`, which returns false when there is nothing to export yet. */
export function bindExports(view, exporter) {
  for (const format of ['json', 'csv']) {
    const button = $(`${view}-${format}`);
    if (!button) continue;
    button.addEventListener('click', () => {
      if (exporter(format) === false) showError(`export-${view}`, `Nothing to export yet in the ${view} view: run something first.`);
    });
  }
}
