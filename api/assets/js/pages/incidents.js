// Incidents: a filtered, searchable, paginated table; rows open the incident.

import { api } from '../api.js';
import {
  $, debounce, errorBanner, formatNumber, html, on, pagination, render, replaceQuery, severityBadge, statusBadge, time,
} from '../dom.js';
import { navigate } from '../router.js';

const PAGE_SIZE = 25;
const FILTERS = ['status', 'severity', 'service_id', 'source', 'search'];
// Incident changes the table does not show (it has no assignee or comments).
const QUIET_INCIDENT_KINDS = new Set(['assigned', 'commented', 'comment_deleted']);

export function mount(view, { query }) {
  const state = readState(query);
  let destroyed = false;
  let loadToken = 0;

  render(
    view,
    html`<div class="page-head"><div><h1>Incidents</h1><div class="sub muted small" id="incident-total"></div></div></div>
      <section class="card">
        <form class="filters" id="incident-filters">
          <label>Search <input type="search" name="search" placeholder="Message, service or rule" autocomplete="off"></label>
          <label>Status ${select('status', ['', 'OPEN', 'IN_PROGRESS', 'CLOSED'], { '': 'Any', IN_PROGRESS: 'In progress', OPEN: 'Open', CLOSED: 'Closed' })}</label>
          <label>Severity ${select('severity', ['', 'CRITICAL', 'HIGH', 'MEDIUM', 'LOW'], { '': 'Any' })}</label>
          <label>Service <select name="service_id"><option value="">Any</option></select></label>
          <label>Source ${select('source', ['', 'live', 'backfill'], { '': 'Any', live: 'Live', backfill: 'Backfill' })}</label>
          <button type="button" class="btn btn-small" id="clear-filters">Clear</button>
        </form>
        <div id="incident-error"></div>
        <div class="table-wrap"><table>
          <thead><tr><th>Opened</th><th>Severity</th><th>Status</th><th>Service</th><th>Rule</th><th>Message</th>
            <th class="num">Peak</th><th>Source</th><th>Resolved</th></tr></thead>
          <tbody id="incident-rows"><tr><td colspan="9" class="empty">Loading…</td></tr></tbody>
        </table></div>
        <div id="incident-pager"></div>
      </section>`,
  );
  const form = $('#incident-filters', view);
  writeForm(form, state);

  async function load() {
    const token = ++loadToken;
    replaceQuery('/incidents', { ...pick(state, FILTERS), offset: state.offset || '' });
    try {
      const page = await api('/api/incidents', {
        query: {
          status: state.status,
          severity: state.severity,
          service_id: state.service_id,
          source: state.source,
          search: state.search,
          limit: PAGE_SIZE,
          offset: state.offset,
        },
      });
      if (destroyed || token !== loadToken) return;
      render($('#incident-error', view), '');
      renderRows(page.data);
      render($('#incident-pager', view), pagination(page.meta, 'incidents'));
      render($('#incident-total', view), `${page.meta.total} matching`);
    } catch (error) {
      if (destroyed || token !== loadToken) return;
      render($('#incident-error', view), errorBanner(error));
    }
  }

  function renderRows(incidents) {
    render(
      $('#incident-rows', view),
      incidents.length === 0
        ? html`<tr><td colspan="9" class="empty">No incidents match.</td></tr>`
        : incidents.map(
            (incident) => html`<tr class="clickable" data-id="${incident.id}">
              <td class="nowrap">${time(incident.opened_at)}</td>
              <td>${severityBadge(incident.severity)}</td>
              <td>${statusBadge(incident.status)}</td>
              <td class="mono">${incident.service_id}</td>
              <td>${incident.rule_name}</td>
              <td class="message"><a href="#/incidents/${incident.id}">${incident.message}</a></td>
              <td class="num">${formatNumber(incident.peak_value)}</td>
              <td>${incident.source === 'backfill' ? html`<span class="badge src-backfill">backfill</span>` : html`<span class="muted">live</span>`}</td>
              <td class="nowrap">${incident.resolved_at ? time(incident.resolved_at) : html`<span class="badge sev-high">firing</span>`}</td>
            </tr>`,
          ),
    );
  }

  async function loadServices() {
    try {
      const { data } = await api('/api/services', { query: { limit: 1000 } });
      if (destroyed) return;
      const selectElement = form.service_id;
      const ids = data.map((service) => service.id);
      if (state.service_id && !ids.includes(state.service_id)) ids.unshift(state.service_id);
      render(
        selectElement,
        html`<option value="">Any</option>${ids.map((id) => html`<option value="${id}">${id}</option>`)}`,
      );
      selectElement.value = state.service_id;
    } catch (error) {
      render($('#incident-error', view), errorBanner(error));
    }
  }

  const searchLater = debounce(() => {
    state.search = form.search.value.trim();
    state.offset = 0;
    load();
  }, 300);

  form.addEventListener('input', (event) => {
    if (event.target.name === 'search') searchLater();
  });
  form.addEventListener('change', (event) => {
    if (event.target.name === 'search') return;
    Object.assign(state, readForm(form));
    state.offset = 0;
    load();
  });
  form.addEventListener('submit', (event) => event.preventDefault());
  on($('#clear-filters', view), 'click', () => {
    Object.assign(state, readState(new URLSearchParams()));
    writeForm(form, state);
    load();
  });
  on($('#incident-pager', view), 'click', '[data-page]', (event, button) => {
    state.offset = Math.max(0, state.offset + (button.dataset.page === 'next' ? PAGE_SIZE : -PAGE_SIZE));
    load();
  });
  $('#incident-rows', view).addEventListener('click', (event) => {
    const row = event.target.closest('tr[data-id]');
    if (row && !event.target.closest('a')) navigate(`/incidents/${row.dataset.id}`);
  });

  loadServices();
  load();
  const reload = debounce(load, 200);

  return {
    onEvent(type, data) {
      if ((type === 'incident' && !QUIET_INCIDENT_KINDS.has(data.kind)) || type === 'hello') reload();
    },
    update(nextQuery) {
      Object.assign(state, readState(nextQuery));
      writeForm(form, state);
      load();
    },
    destroy() {
      destroyed = true;
      reload.cancel();
      searchLater.cancel();
    },
  };
}

function select(name, values, labels = {}) {
  return html`<select name="${name}">${values.map((value) => html`<option value="${value}">${labels[value] ?? value}</option>`)}</select>`;
}

function readState(query) {
  const state = Object.fromEntries(FILTERS.map((name) => [name, query.get(name) ?? '']));
  state.offset = Math.max(0, Number.parseInt(query.get('offset') ?? '0', 10) || 0);
  return state;
}

function readForm(form) {
  return Object.fromEntries(FILTERS.map((name) => [name, form[name].value.trim()]));
}

function writeForm(form, state) {
  for (const name of FILTERS) {
    if (name === 'service_id' && state.service_id && ![...form.service_id.options].some((o) => o.value === state.service_id)) {
      form.service_id.append(new Option(state.service_id, state.service_id));
    }
    form[name].value = state[name];
  }
}

function pick(object, keys) {
  return Object.fromEntries(keys.map((key) => [key, object[key]]));
}
