/* The tabs, showing a view, and the display settings the views share.
 *
 * A view is an object { name, title, kind, settings, images, init, activate, render, restyle,
 * writeUrl, selectModel? } registered in static/app.js; this module only talks to views
 * through that interface. */
import { $, el } from './dom.js';
import { resizePlots } from './plots.js';
import { state, syncUrl, viewNamed, views } from './state.js';

/** Show view `name` (the first view if there is none of that name); `run`: let it fetch. */
export function showView(name, { run = true } = {}) {
  const current = viewNamed(name) || views[0];
  state.view = current.name;
  for (const v of views) {
    $(`view-${v.name}`).hidden = v !== current;
    const tab = $(`tab-${v.name}`);
    tab.setAttribute('aria-selected', v === current ? 'true' : 'false');
    tab.tabIndex = v === current ? 0 : -1;
  }
  showSettings();
  syncUrl();
  if (run) current.activate(state);
  resizePlots($(`view-${current.name}`));
}

/** The display settings the view on screen uses. The test set's object box is offered only while
 * an answer on screen has one (view.hasBox()): most models' images have none. */
export function showSettings() {
  const current = viewNamed(state.view) || views[0];
  const wanted = (current.settings || []).filter((name) => name !== 'box' || (current.hasBox && current.hasBox()));
  $('settings').hidden = !wanted.length;
  document.querySelectorAll('#settings [data-setting]').forEach((label) => { label.hidden = !wanted.includes(label.dataset.setting); });
}

/** Open model `id` in view `name` (its picker set to it), and show that view. */
export function openModelIn(name, id) {
  const target = viewNamed(name);
  if (target && target.selectModel) target.selectModel(id);
  showView(name);
}

/** The views that can open a model of this kind on its own (those with a model picker). */
export const viewsFor = (m) => views.filter((v) => v.kind === m.kind && v.selectModel);

/** One tab per registered view, in the registered order; arrow keys move between them. */
export function buildTabs() {
  const bar = document.querySelector('.tabs');
  bar.replaceChildren(...views.map((v) => el('button', {
    type: 'button', role: 'tab', id: `tab-${v.name}`, 'data-view': v.name, 'aria-controls': `view-${v.name}`,
    onclick: () => showView(v.name),
    onkeydown: (e) => {
      const i = views.indexOf(v);
      let next = null;
      if (e.key === 'ArrowRight') next = views[(i + 1) % views.length];
      if (e.key === 'ArrowLeft') next = views[(i + views.length - 1) % views.length];
      if (next) { e.preventDefault(); showView(next.name); $(`tab-${next.name}`).focus(); }
    },
  }, v.title)));
}

// ------------------------------------------------------------------ shared display settings
const restyleAll = (change) => { for (const v of views) if (v.restyle) v.restyle(change); };
// Settings that change the input of a request (not only its drawing): the view on screen asks again.
const rerunCurrent = () => { const v = viewNamed(state.view); if (v) v.activate(state); };

/** Put the state's settings into the controls, and wire the controls. */
export function bindSettings() {
  $('colormap').value = state.colormap;
  $('opacity').value = String(state.opacity);
  $('opacity-value').textContent = state.opacity.toFixed(2);
  $('map-measure').value = state.map;
  $('resolution').value = state.resolution;
  $('invert').checked = state.invert;
  $('show-box').checked = state.box;

  $('opacity').addEventListener('input', (e) => {
    state.opacity = Number(e.target.value);
    $('opacity-value').textContent = state.opacity.toFixed(2);
    restyleAll({ opacity: state.opacity });
    syncUrl();
  });
  $('colormap').addEventListener('change', (e) => {
    state.colormap = e.target.value;
    restyleAll({ colormap: state.colormap });
    syncUrl();
  });
  $('map-measure').addEventListener('change', (e) => {
    state.map = e.target.value;
    restyleAll({ map: state.map });
    syncUrl();
  });
  $('show-box').addEventListener('change', (e) => {
    state.box = e.target.checked;
    syncUrl();
    restyleAll({ box: state.box });
  });
  $('resolution').addEventListener('change', (e) => {
    state.resolution = e.target.value;
    syncUrl();
    rerunCurrent();
  });
  $('invert').addEventListener('change', (e) => {
    state.invert = e.target.checked;
    syncUrl();
    rerunCurrent();
  });
}
