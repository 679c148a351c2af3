// Small DOM helpers shared by every page: escaped HTML templates, times, numbers, toasts.

class SafeHtml {
  constructor(text) {
    this.text = text;
  }
  toString() {
    return this.text;
  }
}

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Marks text as already-safe HTML (only for markup built here or vetted by the API). */
export function raw(text) {
  return new SafeHtml(String(text));
}

function renderValue(value) {
  if (value == null || value === false) return '';
  if (value instanceof SafeHtml) return value.text;
  if (Array.isArray(value)) return value.map(renderValue).join('');
  return escapeHtml(value);
}

/** Tagged template: interpolated values are escaped unless wrapped with raw() or html``. */
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => {
    out += renderValue(value) + strings[i + 1];
  });
  return new SafeHtml(out);
}

export function render(element, content) {
  element.innerHTML = renderValue(content);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function $$(selector, root = document) {
  return [...root.querySelectorAll(selector)];
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});

/** A <time> in local time with the UTC RFC 3339 value as its tooltip. */
export function time(iso, empty = '—') {
  if (!iso) return html`<span class="muted">${empty}</span>`;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return html`${iso}`;
  const utc = date.toISOString().replace('.000Z', 'Z');
  return html`<time datetime="${utc}" title="${utc}">${timeFormat.format(date)}</time>`;
}

export function formatNumber(value, digits = 2) {
  if (value == null || Number.isNaN(value)) return '—';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 0.01)) return value.toExponential(2);
  return Number(value.toFixed(digits)).toLocaleString();
}

export function formatSeconds(seconds) {
  if (seconds == null) return '—';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${formatNumber(seconds, 1)} s`;
  return `${formatNumber(seconds / 60, 1)} min`;
}

export function severityBadge(severity) {
  if (!severity) return '';
  return html`<span class="badge sev-${severity.toLowerCase()}">${severity}</span>`;
}

const STATUS_LABELS = { OPEN: 'Open', IN_PROGRESS: 'In progress', CLOSED: 'Closed' };

export function statusBadge(status) {
  return html`<span class="badge st-${status.toLowerCase().replace('_', '-')}">${STATUS_LABELS[status] ?? status}</span>`;
}

export function statusLabel(status) {
  return STATUS_LABELS[status] ?? status;
}

/**
 * Runs fn once a burst of calls has been quiet for `ms`, but never later than `maxWait` after
 * the burst's first call, so a steady stream of calls still gets through. A run that returns a
 * promise is not overlapped: calls meanwhile make one more run once it settles.
 */
export function debounce(fn, ms, maxWait = Math.max(ms, 1000)) {
  let timer = null;
  let burstStart = 0;
  let lastArgs = [];
  let running = false;
  let again = false;

  async function run() {
    timer = null;
    burstStart = 0;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn(...lastArgs);
    } catch (error) {
      showError(error);
    } finally {
      running = false;
      if (again) {
        again = false;
        run();
      }
    }
  }

  const debounced = (...args) => {
    lastArgs = args;
    const now = Date.now();
    burstStart ||= now;
    clearTimeout(timer);
    timer = setTimeout(run, Math.max(0, Math.min(ms, burstStart + maxWait - now)));
  };
  debounced.cancel = () => {
    clearTimeout(timer);
    timer = null;
    burstStart = 0;
    again = false;
  };
  return debounced;
}

const MAX_TOASTS = 3;

export function toast(message, kind = 'error') {
  const container = $('#toasts');
  while (container.children.length >= MAX_TOASTS) container.firstElementChild.remove();
  const item = document.createElement('div');
  item.className = `toast toast-${kind}`;
  item.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  item.textContent = message;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => item.remove());
  item.append(close);
  container.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 4000);
}

export function showError(error) {
  if (error?.name === 'AbortError') return;
  if (error?.status === 401) return; // the sign-in form explains it
  toast(error?.message ?? String(error));
}

/**
 * Runs an async handler for a DOM event and reports its failure to the user, so no handler
 * leaves an unhandled rejection behind. Disables the triggering button meanwhile.
 */
export function on(element, type, selectorOrHandler, maybeHandler) {
  const selector = typeof selectorOrHandler === 'string' ? selectorOrHandler : null;
  const handler = selector ? maybeHandler : selectorOrHandler;
  element.addEventListener(type, async (event) => {
    const target = selector ? event.target.closest(selector) : element;
    if (!target || (selector && !element.contains(target))) return;
    const button = target.tagName === 'BUTTON' ? target : event.submitter ?? null;
    if (button) button.disabled = true;
    try {
      await handler(event, target);
    } catch (error) {
      showError(error);
    } finally {
      if (button) button.disabled = false;
    }
  });
}

/** A banner inside a page, for a failed load, optionally saying what failed. */
export function errorBanner(error, what = '') {
  const message = error?.message ?? String(error);
  return html`<div class="banner banner-error" role="alert">${what ? `${what}: ${message}` : message}</div>`;
}

export function pagination(meta, noun) {
  if (!meta || meta.total === 0) return '';
  const first = meta.offset + 1;
  const last = Math.min(meta.offset + meta.limit, meta.total);
  return html`<div class="pager">
    <span class="muted">${first}–${last} of ${meta.total} ${noun}</span>
    <button type="button" class="btn btn-small" data-page="prev" ${meta.offset === 0 ? html`disabled` : ''}>‹ Prev</button>
    <button type="button" class="btn btn-small" data-page="next" ${last >= meta.total ? html`disabled` : ''}>Next ›</button>
  </div>`;
}

/** Writes a page's own query string into the hash without triggering the router. */
export function replaceQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== '' && value != null) query.set(key, value);
  }
  const text = query.toString();
  history.replaceState(null, '', `#${path}${text ? `?${text}` : ''}`);
}
