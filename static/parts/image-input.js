/* The input image of the image views: uploads from a file picker, drag and drop anywhere in a
 * view that takes images, and paste. A stored upload becomes `state.image`, and the view on
 * screen is activated again (it asks for the new image). */
import { $ } from '../core/dom.js';
import { api } from '../core/api.js';
import { state, syncUrl, viewNamed } from '../core/state.js';

let uploadToken = 0;
const takesImages = () => { const v = viewNamed(state.view); return !!(v && v.images); };

/** A later choice (a test sample clicked) wins over an upload still on its way. */
export function cancelUpload() {
  uploadToken++;
}

async function uploadFile(file) {
  if (!file) return;
  const token = ++uploadToken;
  const form = new FormData();
  form.append('file', file, file.name || 'pasted.png');
  try {
    const stored = await api('POST', '/api/images', { form, channel: 'upload', label: 'Uploading' });
    if (token !== uploadToken) return; // a newer upload or a sample click came after this one
    state.image = { hash: stored.hash, name: file.name || null };
    syncUrl();
    viewNamed(state.view).activate(state);
  } catch (_) { /* shown in the banner */ }
}

/** A file <input> whose chosen file is uploaded. */
export function bindFileInput(input) {
  input.addEventListener('change', (e) => { uploadFile(e.target.files[0]); e.target.value = ''; });
}

/** The drop zone (Enter or Space opens #file-input), drops anywhere else, and paste. */
export function bindDropAndPaste(zone) {
  ['dragenter', 'dragover'].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add('dragging'); }));
  ['dragleave', 'dragend'].forEach((t) => zone.addEventListener(t, () => zone.classList.remove('dragging')));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    e.stopPropagation();
    zone.classList.remove('dragging');
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file-input').click(); } });
  // A file dropped anywhere else in a view that takes images is taken too, never opened by the browser.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    if (!takesImages()) return;
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  document.addEventListener('paste', (e) => {
    if (!takesImages()) return;
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === 'file' && item.type.startsWith('image/')) {
        e.preventDefault();
        uploadFile(item.getAsFile());
        return;
      }
    }
  });
}
