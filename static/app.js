/* ponderscope front end: plain JavaScript modules, no build step. Plotly is served locally
 * (/static/vendor/plotly.min.js, a classic script: window.Plotly).
 *
 * core/   state and URL state, API client, DOM helpers, error banner and busy indicator,
 *         downloads, Plotly helpers, model cards, tabs and shared settings
 * parts/  pieces shared by the image views (uploads, map figures)
 * views/  one module per tab, each exporting
 *           view = { name, title, kind, settings, images?, init(state, query), writeUrl(query, state),
 *                    activate(state), render(answer), restyle(change), selectModel?(id) }
 *
 * One `state` object holds everything a link must reproduce; syncUrl() writes it into the query
 * string (history.replaceState) and each view's init() reads its part back on load. A view's
 * activate() asks the server for what is missing, its render() draws an answer, and restyle()
 * follows a display setting without a new request.
 *
 * To add a view: write views/<name>.js, add it to VIEWS below, add its <section id="view-<name>">
 * to templates/index.html.
 */
import { colorAt } from './core/colors.js';
import { showError } from './core/api.js';
import { readUrl, registerViews, results, state, syncUrl, views } from './core/state.js';
import { bindSettings, buildTabs, showView } from './core/nav.js';
import { view as image } from './views/image.js';
import { view as compare } from './views/compare.js';
import { view as dataset } from './views/dataset.js';
import { view as whatif } from './views/whatif.js';
import { view as text } from './views/text.js';
import { view as parity } from './views/parity.js';
import { view as models } from './views/models.js';

// The tabs, in this order. Image comes first: it is the first screen, and Compare's and
// Dataset's default models start from its model.
const VIEWS = [image, compare, dataset, whatif, text, parity, models];

function init() {
  if (!window.Plotly) showError('plotly', 'plotly.js did not load (/static/vendor/plotly.min.js): charts cannot be drawn.');
  registerViews(VIEWS);
  buildTabs();
  const query = new URLSearchParams(location.search);
  readUrl(query);
  for (const v of views) v.init(state, query);
  bindSettings();
  showView(state.view);
}

// For tests and the console: the live state, the last answers, and the views.
window.ponderscope = { state, results, colorAt, syncUrl, views, showView };
init();
