// Boots the dashboard: takes a key from the URL, asks for one when needed, learns its role,
// routes between pages and keeps the live stream, its indicator and the unread badge going.

import { forgetKey, getKey, onUnauthorized, setKey } from './js/api.js';
import { $, $$, errorBanner, html, on, render, showError, toast } from './js/dom.js';
import * as live from './js/live.js';
import { currentRoute, match, navigate } from './js/router.js';
import { forgetMe, loadMe, whoAmI } from './js/session.js';
import { refreshUnread } from './js/unread.js';
import * as overview from './js/pages/overview.js';
import * as incidents from './js/pages/incidents.js';
import * as incident from './js/pages/incident.js';
import * as rules from './js/pages/rules.js';
import * as ruleForm from './js/pages/rule-form.js';
import * as notifications from './js/pages/notifications.js';
import * as departments from './js/pages/departments.js';
import * as search from './js/pages/search.js';

const ROUTES = [
  { pattern: /^\/$/, page: overview, nav: 'overview', title: 'Overview' },
  { pattern: /^\/incidents$/, page: incidents, nav: 'incidents', title: 'Incidents' },
  { pattern: /^\/incidents\/([^/]+)$/, page: incident, nav: 'incidents', title: 'Incident' },
  { pattern: /^\/rules$/, page: rules, nav: 'rules', title: 'Rules' },
  { pattern: /^\/rules\/new$/, page: ruleForm, nav: 'rules', title: 'New rule' },
  { pattern: /^\/rules\/([^/]+)$/, page: ruleForm, nav: 'rules', title: 'Edit rule' },
  { pattern: /^\/notifications$/, page: notifications, nav: 'notifications', title: 'Notifications' },
  { pattern: /^\/departments$/, page: departments, nav: 'departments', title: 'Departments & services' },
  { pattern: /^\/search$/, page: search, nav: null, title: 'Search' },
];

const notFound = {
  mount(view) {
    render(
      view,
      html`<section class="card not-found"><h1>Page not found</h1>
        <p class="muted">Nothing is at this address. <a href="#/">Back to the overview</a></p></section>`,
    );
  },
};
const NOT_FOUND = { page: notFound, nav: null, title: 'Not found' };

const view = $('#view');
let mounted = null; // { route, params, controller }

/** `/?key=…` or `/#key=…` (the link `tracely dev` prints) stores the key and drops it from the URL. */
function takeKeyFromUrl() {
  const fromQuery = new URLSearchParams(location.search).get('key');
  const fromHash = location.hash.startsWith('#key=')
    ? new URLSearchParams(location.hash.slice(1)).get('key')
    : null;
  const key = fromQuery || fromHash;
  if (!key) return;
  setKey(key);
  const hash = fromHash ? '' : location.hash;
  history.replaceState(null, '', `${location.pathname}${hash}`);
}

function showShell(me) {
  $('#nav').hidden = !me;
  $('#tools').hidden = !me;
  if (!me) return;
  const whoami = $('#whoami');
  $('.whoami-name', whoami).textContent = me.name;
  $('.role-badge', whoami).textContent = me.role;
  whoami.title = `Signed in with the key “${me.name}” (${me.role})`;
}

function unmount() {
  mounted?.controller?.destroy?.();
  mounted = null;
}

function showLogin(message) {
  unmount();
  live.stop();
  forgetMe();
  showShell(null);
  document.title = 'Sign in · Tracely';
  render(
    view,
    html`<section class="login card">
      <h1>Sign in to Tracely</h1>
      <p class="muted">Paste an API key. It is kept in this browser only; <code>tracely dev</code> prints one,
        and <code>tracely apikey create --role viewer</code> makes more.</p>
      ${message ? html`<div class="banner banner-error" role="alert">${message}</div>` : ''}
      <form id="login-form" class="stack">
        <label>API key <input name="key" type="password" required autocomplete="off" spellcheck="false" placeholder="trk_…"></label>
        <button class="btn btn-primary" type="submit">Sign in</button>
      </form>
    </section>`,
  );
  const form = $('#login-form');
  form.key.focus();
  on(form, 'submit', async (event) => {
    event.preventDefault();
    setKey(form.key.value);
    let me;
    try {
      me = await loadMe();
    } catch (error) {
      // a 401 has already brought the form back with the API's message
      if (error.status !== 401) {
        forgetKey();
        showLogin(error.message);
      }
      return;
    }
    start(me);
  });
}

/** The stored key could not be checked (the API is down, say): offer to try again. */
function showUnreachable(error) {
  unmount();
  showShell(null);
  document.title = 'Tracely';
  render(
    view,
    html`<section class="login card">
      <h1>Tracely is not answering</h1>
      ${errorBanner(error)}
      <div class="row"><button class="btn btn-primary" type="button" id="retry-start">Try again</button>
        <span class="spacer"></span><button class="btn" type="button" id="use-other-key">Use another key</button></div>
    </section>`,
  );
  on($('#retry-start'), 'click', resume);
  on($('#use-other-key'), 'click', () => {
    forgetKey();
    showLogin();
  });
}

function route() {
  if (!getKey()) {
    showLogin();
    return;
  }
  const { path, query } = currentRoute();
  const found = match(ROUTES, path);
  const next = found?.route ?? NOT_FOUND;
  const params = found?.params ?? [];
  $$('#nav a').forEach((link) => link.classList.toggle('active', link.dataset.nav === next.nav));
  document.title = `${next.title} · Tracely`;
  const samePage = mounted && mounted.route === next && mounted.params.join('/') === params.join('/');
  if (samePage && mounted.controller?.update) {
    mounted.controller.update(query);
    return;
  }
  // The live stream keeps the services it watches until a page asks for others.
  unmount();
  view.replaceChildren();
  window.scrollTo(0, 0);
  mounted = { route: next, params, controller: next.page.mount(view, { params, query }) };
}

function start(me) {
  unmount();
  showShell(me);
  live.start();
  refreshUnread();
  route();
}

/** Learns the stored key's role, then shows the pages. */
async function resume() {
  let me;
  try {
    me = await loadMe();
  } catch (error) {
    if (error.status !== 401) showUnreachable(error); // a 401 brings the sign-in form
    return;
  }
  start(me);
}

function showLiveState(state, detail) {
  const indicator = $('#live-indicator');
  indicator.dataset.state = state;
  const text = {
    live: 'live',
    connecting: 'connecting',
    reconnecting: detail.delay ? `reconnecting in ${Math.round(detail.delay / 1000)} s` : 'reconnecting',
    stopped: 'offline',
  }[state];
  $('.live-text', indicator).textContent = text;
  indicator.title = detail.reason ? `Live updates: ${detail.reason}` : 'Live updates';
}

live.onStateChange(showLiveState);
live.subscribe((type, data, info) => {
  if (type === 'notification' || type === 'hello') refreshUnread();
  mounted?.controller?.onEvent?.(type, data, info);
});

onUnauthorized((error) => showLogin(error.message));

$('#sign-out').addEventListener('click', () => {
  forgetKey();
  showLogin();
  toast('Signed out; the key was removed from this browser.', 'info');
});

$('#header-search').addEventListener('submit', (event) => {
  event.preventDefault();
  const q = event.target.q.value.trim();
  navigate(`/search${q ? `?q=${encodeURIComponent(q)}` : ''}`);
});

window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#key=')) {
    // Another key: its role may differ, and the stream must use it.
    takeKeyFromUrl();
    live.stop();
    resume();
  } else if (whoAmI()) {
    route(); // not before the key's role is known: start() routes then
  }
});

window.addEventListener('unhandledrejection', (event) => showError(event.reason));

takeKeyFromUrl();
if (getKey()) resume();
else showLogin();
