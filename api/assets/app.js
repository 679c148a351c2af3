// Boots the dashboard: takes a key from the URL, asks for one when needed, routes between
// pages and keeps the live stream, its indicator and the unread badge going.

import { api, forgetKey, getKey, onUnauthorized, setKey } from './js/api.js';
import { $, $$, html, on, render, showError, toast } from './js/dom.js';
import * as live from './js/live.js';
import { currentRoute, match, navigate } from './js/router.js';
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

function showShell(signedIn) {
  $('#nav').hidden = !signedIn;
  $('#tools').hidden = !signedIn;
}

function unmount() {
  mounted?.controller?.destroy?.();
  mounted = null;
}

function showLogin(message) {
  unmount();
  live.stop();
  showShell(false);
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
    try {
      await api('/api/notifications/unread-count');
    } catch (error) {
      // a 401 has already brought the form back with the API's message
      if (error.status !== 401) {
        forgetKey();
        showLogin(error.message);
      }
      return;
    }
    start();
  });
}

function route() {
  if (!getKey()) {
    showLogin();
    return;
  }
  const { path, query } = currentRoute();
  const found = match(ROUTES, path);
  if (!found) {
    navigate('/');
    return;
  }
  const { route: next, params } = found;
  $$('#nav a').forEach((link) => link.classList.toggle('active', link.dataset.nav === next.nav));
  document.title = `${next.title} · Tracely`;
  const samePage = mounted && mounted.route === next && mounted.params.join('/') === params.join('/');
  if (samePage && mounted.controller?.update) {
    mounted.controller.update(query);
    return;
  }
  unmount();
  live.watchServices([]);
  view.replaceChildren();
  window.scrollTo(0, 0);
  mounted = { route: next, params, controller: next.page.mount(view, { params, query }) };
}

function start() {
  showShell(true);
  live.start();
  refreshUnread();
  route();
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
  if (location.hash.startsWith('#key=')) takeKeyFromUrl();
  if (getKey()) route();
});

window.addEventListener('unhandledrejection', (event) => showError(event.reason));

takeKeyFromUrl();
if (getKey()) start();
else showLogin();
