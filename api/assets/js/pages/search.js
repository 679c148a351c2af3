// Search: incident hits with highlighted matches, facets to narrow them, and the engine used.

import { api } from '../api.js';
import {
  $, debounce, errorBanner, html, on, pagination, raw, render, replaceQuery, severityBadge, statusBadge, statusLabel, time,
} from '../dom.js';

const PAGE_SIZE = 20;
const FACETS = [['status', 'Status'], ['severity', 'Severity'], ['service_id', 'Service']];
const ENGINES = { meilisearch: 'Meilisearch (typo-tolerant)', postgres: 'Postgres full-text search' };
// Incident changes that touch nothing a hit shows or matches on (values, the assignee).
const QUIET_INCIDENT_KINDS = new Set(['updated', 'assigned']);

export function mount(view, { query }) {
  let destroyed = false;
  let loadToken = 0;
  const state = readState(query);

  render(
    view,
    html`<div class="page-head"><div><h1>Search</h1><div class="sub muted small" id="search-summary"></div></div></div>
      <form class="card row" id="search-form" role="search">
        <input type="search" name="q" class="spacer" maxlength="200" autocomplete="off"
          placeholder='Words, "a phrase", or, -excluded' aria-label="Search incidents">
        <button class="btn btn-primary" type="submit">Search</button>
      </form>
      <div id="search-error"></div>
      <div class="search-layout gap-top">
        <aside class="card" id="facets"></aside>
        <section class="card"><ul class="hits" id="hits"></ul><div id="search-pager"></div></section>
      </div>`,
  );
  const form = $('#search-form', view);
  form.q.value = state.q;
  const headerInput = $('#header-search input');

  async function load() {
    const token = ++loadToken;
    replaceQuery('/search', { ...state, offset: state.offset || '' });
    headerInput.value = state.q;
    try {
      const page = await api('/api/search', {
        query: {
          q: state.q,
          status: state.status,
          severity: state.severity,
          service_id: state.service_id,
          limit: PAGE_SIZE,
          offset: state.offset,
        },
      });
      if (destroyed || token !== loadToken) return;
      render($('#search-error', view), '');
      render(
        $('#search-summary', view),
        html`${page.meta.total} incident${page.meta.total === 1 ? '' : 's'}${state.q ? html` for “${state.q}”` : ''}
          · answered by <span id="search-engine">${ENGINES[page.meta.engine] ?? page.meta.engine}</span>`,
      );
      renderFacets(page.meta.facets);
      renderHits(page.data);
      render($('#search-pager', view), pagination(page.meta, 'hits'));
    } catch (error) {
      if (!destroyed && token === loadToken) render($('#search-error', view), errorBanner(error));
    }
  }

  function renderFacets(facets) {
    render(
      $('#facets', view),
      FACETS.map(([name, label]) => {
        const counts = Object.entries(facets[name] ?? {}).sort((a, b) => b[1] - a[1]);
        return html`<div class="facet"><h3>${label}</h3>
          ${counts.length === 0 ? html`<div class="muted small">—</div>` : counts.map(
            ([value, count]) => html`<button type="button" class="${state[name] === value ? 'active' : ''}" data-facet="${name}" data-value="${value}">
              <span>${name === 'status' ? statusLabel(value) : value}</span><span class="muted">${count}</span></button>`,
          )}</div>`;
      }),
    );
  }

  function renderHits(hits) {
    render(
      $('#hits', view),
      hits.length === 0
        ? html`<li class="empty">No incidents match.</li>`
        : hits.map((hit) => {
            // Highlights are HTML from the API: its text is escaped and <mark> is the only markup.
            const title = hit.highlights.title ? raw(hit.highlights.title) : hit.title;
            const message = hit.highlights.message ? raw(hit.highlights.message) : hit.message;
            return html`<li class="hit" data-incident="${hit.id}">
              <a class="hit-title" href="#/incidents/${hit.id}">${title}</a>
              <div class="hit-text">${message}</div>
              ${hit.highlights.comments ? html`<div class="hit-text small">Comments: ${raw(hit.highlights.comments)}</div>` : ''}
              <div class="hit-meta">${severityBadge(hit.severity)}${statusBadge(hit.status)}
                <span class="mono">${hit.service_name}</span><span>opened ${time(hit.opened_at)}</span>
                ${hit.resolved_at ? html`<span>resolved ${time(hit.resolved_at)}</span>` : ''}</div>
            </li>`;
          }),
    );
  }

  const searchLater = debounce(() => {
    state.q = form.q.value.trim();
    state.offset = 0;
    load();
  }, 300);

  form.addEventListener('input', searchLater);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    searchLater.cancel();
    state.q = form.q.value.trim();
    state.offset = 0;
    load();
  });
  on($('#facets', view), 'click', '[data-facet]', async (event, button) => {
    const { facet, value } = button.dataset;
    state[facet] = state[facet] === value ? '' : value;
    state.offset = 0;
    await load();
  });
  on($('#search-pager', view), 'click', '[data-page]', async (event, button) => {
    state.offset = Math.max(0, state.offset + (button.dataset.page === 'next' ? PAGE_SIZE : -PAGE_SIZE));
    await load();
  });

  load();
  const reload = debounce(load, 300);

  return {
    onEvent(type, data) {
      if ((type === 'incident' && !QUIET_INCIDENT_KINDS.has(data.kind)) || type === 'hello') reload();
    },
    update(nextQuery) {
      Object.assign(state, readState(nextQuery));
      form.q.value = state.q;
      load();
    },
    destroy() {
      destroyed = true;
      reload.cancel();
      searchLater.cancel();
    },
  };
}

function readState(query) {
  return {
    q: query.get('q') ?? '',
    status: query.get('status') ?? '',
    severity: query.get('severity') ?? '',
    service_id: query.get('service_id') ?? '',
    offset: Number.parseInt(query.get('offset') ?? '0', 10) || 0,
  };
}
