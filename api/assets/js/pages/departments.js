// Departments (with their notification channels) and services (display name, owning department).
// Changing any of them needs an admin key; others see them read-only.

import { api } from '../api.js';
import { $, errorBanner, html, on, render, time, toast } from '../dom.js';
import { can } from '../session.js';

const SEVERITIES = ['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'];

export function mount(view) {
  let destroyed = false;
  let departments = [];
  // Channels are fetched when a department is opened, not one request per department up front.
  const opened = new Set();
  const mayEdit = can('admin');

  render(
    view,
    html`<div class="page-head"><div><h1>Departments &amp; services</h1>
        <div class="sub muted small">Who owns what, and where their notifications go</div></div></div>
      <div id="departments-error"></div>
      <div class="columns-even">
        <div class="stack">
          ${mayEdit ? html`<section class="card">
            <h2>New department</h2>
            <form id="department-create" class="row">
              <input name="name" required maxlength="100" placeholder="Name" aria-label="Department name">
              <input name="description" maxlength="2000" placeholder="Description (optional)" aria-label="Description" class="spacer">
              <button class="btn btn-primary" type="submit">Add department</button>
            </form>
          </section>` : ''}
          <div id="department-list"><p class="muted">Loading…</p></div>
        </div>
        <section class="card">
          <div class="card-head"><h2>Services</h2><span class="muted small" id="service-total"></span></div>
          <div class="table-wrap"><table>
            <thead><tr><th>Service</th><th>Display name</th><th>Department</th>${mayEdit ? html`<th></th>` : ''}</tr></thead>
            <tbody id="service-rows"><tr><td colspan="4" class="empty">Loading…</td></tr></tbody>
          </table></div>
        </section>
      </div>`,
  );

  async function load() {
    try {
      const [departmentList, services] = await Promise.all([
        api('/api/departments', { query: { limit: 1000 } }),
        api('/api/services', { query: { limit: 1000 } }),
      ]);
      if (destroyed) return;
      departments = departmentList.data;
      render($('#departments-error', view), '');
      renderDepartments();
      renderServices(services.data, services.meta.total);
    } catch (error) {
      if (!destroyed) render($('#departments-error', view), errorBanner(error));
    }
  }

  function renderDepartments() {
    const known = new Set(departments.map((d) => d.id));
    [...opened].filter((id) => !known.has(id)).forEach((id) => opened.delete(id));
    render(
      $('#department-list', view),
      departments.length === 0
        ? html`<section class="card empty">No departments yet.</section>`
        : departments.map((department) => departmentCard(department, opened.has(department.id), mayEdit)),
    );
    opened.forEach(loadChannels);
  }

  async function loadChannels(id) {
    const slot = () => $(`[data-department="${id}"] .channel-list`, view);
    try {
      const { data } = await api(`/api/departments/${id}/channels`, { query: { limit: 1000 } });
      if (destroyed || !slot()) return;
      render(slot(), channelTable(data, mayEdit));
    } catch (error) {
      if (!destroyed && slot()) render(slot(), errorBanner(error));
    }
  }

  function departmentName(id) {
    return departments.find((d) => d.id === id)?.name ?? id;
  }

  function departmentOptions(selected) {
    return html`<option value="">None</option>${departments.map(
      (d) => html`<option value="${d.id}" ${d.id === selected ? html`selected` : ''}>${d.name}</option>`,
    )}`;
  }

  function renderServices(services, total) {
    render($('#service-total', view), `${total} service${total === 1 ? '' : 's'}`);
    render(
      $('#service-rows', view),
      services.length === 0
        ? html`<tr><td colspan="4" class="empty">No services yet. They appear with their first metric sample.</td></tr>`
        : services.map((service) => (mayEdit ? serviceRow(service) : serviceRowReadOnly(service))),
    );
  }

  function serviceRow(service) {
    return html`<tr data-service="${service.id}">
      <td><div class="mono nowrap">${service.id}</div><div class="muted small nowrap">seen ${time(service.first_seen_at)}</div></td>
      <td><input name="display_name" maxlength="200" value="${service.display_name ?? ''}" placeholder="${service.id}" aria-label="Display name of ${service.id}"></td>
      <td><select name="department_id" aria-label="Department of ${service.id}">${departmentOptions(service.department_id)}</select></td>
      <td><button type="button" class="btn btn-small" data-save-service>Save</button></td>
    </tr>`;
  }

  function serviceRowReadOnly(service) {
    return html`<tr data-service="${service.id}">
      <td><div class="mono nowrap">${service.id}</div><div class="muted small nowrap">seen ${time(service.first_seen_at)}</div></td>
      <td>${service.display_name ?? html`<span class="muted">—</span>`}</td>
      <td>${service.department_id ? departmentName(service.department_id) : html`<span class="muted">none</span>`}</td>
    </tr>`;
  }

  const list = $('#department-list', view);

  // `toggle` does not bubble: listen in the capture phase.
  list.addEventListener('toggle', (event) => {
    const details = event.target;
    if (!details.matches?.('details.channels')) return;
    const id = details.closest('[data-department]').dataset.department;
    if (details.open && !opened.has(id)) {
      opened.add(id);
      loadChannels(id);
    } else if (!details.open) {
      opened.delete(id);
    }
  }, true);

  if (mayEdit) {
    on($('#department-create', view), 'submit', async (event) => {
      event.preventDefault();
      const form = event.target;
      const body = { name: form.name.value.trim() };
      if (form.description.value.trim()) body.description = form.description.value.trim();
      await api('/api/departments', { method: 'POST', body });
      form.reset();
      toast(`Department “${body.name}” created.`, 'info');
      await load();
    });

    list.addEventListener('click', (event) => {
      const toggle = event.target.closest('[data-edit-department]');
      if (!toggle) return;
      const card = toggle.closest('[data-department]');
      $('.department-edit', card).hidden = !$('.department-edit', card).hidden;
    });

    on(list, 'submit', '.department-edit', async (event, form) => {
      event.preventDefault();
      const id = form.closest('[data-department]').dataset.department;
      await api(`/api/departments/${id}`, {
        method: 'PUT',
        body: { name: form.name.value.trim(), description: form.description.value.trim() },
      });
      toast('Department saved.', 'info');
      await load();
    });

    on(list, 'click', '[data-delete-department]', async (event, button) => {
      const card = button.closest('[data-department]');
      const name = $('.department-name', card).textContent;
      if (!window.confirm(`Delete the department “${name}” and its channels?`)) return;
      await api(`/api/departments/${card.dataset.department}`, { method: 'DELETE' });
      toast(`Department “${name}” deleted.`, 'info');
      await load();
    });

    list.addEventListener('change', (event) => {
      if (event.target.name !== 'type') return;
      const form = event.target.form;
      form.url.hidden = form.type.value === 'in_app';
      form.secret.hidden = form.type.value !== 'webhook';
    });

    on(list, 'submit', '.channel-form', async (event, form) => {
      event.preventDefault();
      const id = form.closest('[data-department]').dataset.department;
      const body = { type: form.type.value, min_severity: form.min_severity.value };
      if (form.name.value.trim()) body.name = form.name.value.trim();
      if (body.type !== 'in_app') body.url = form.url.value.trim();
      if (body.type === 'webhook') body.secret = form.secret.value;
      await api(`/api/departments/${id}/channels`, { method: 'POST', body });
      toast('Channel added.', 'info');
      form.reset();
      form.url.hidden = true;
      form.secret.hidden = true;
      await loadChannels(id);
    });

    on(list, 'click', '[data-delete-channel]', async (event, button) => {
      const id = button.closest('[data-department]').dataset.department;
      if (!window.confirm('Delete this channel?')) return;
      await api(`/api/departments/${id}/channels/${button.dataset.deleteChannel}`, { method: 'DELETE' });
      await loadChannels(id);
    });

    on($('#service-rows', view), 'click', '[data-save-service]', async (event, button) => {
      const row = button.closest('[data-service]');
      const displayName = $('[name="display_name"]', row).value.trim();
      const { data } = await api(`/api/services/${encodeURIComponent(row.dataset.service)}`, {
        method: 'PATCH',
        body: { display_name: displayName || null, department_id: $('[name="department_id"]', row).value || null },
      });
      toast(`Service ${data.id} saved.`, 'info');
    });
  }

  load();

  return {
    destroy() {
      destroyed = true;
    },
  };
}

function departmentCard(department, open, mayEdit) {
  return html`<section class="card department" data-department="${department.id}">
    <div class="card-head">
      <div><h2 class="department-name">${department.name}</h2>
        ${department.description ? html`<div class="muted small">${department.description}</div>` : ''}</div>
      ${mayEdit ? html`<div class="row">
        <button type="button" class="btn btn-small" data-edit-department>Rename</button>
        <button type="button" class="btn btn-small btn-danger" data-delete-department>Delete</button>
      </div>` : ''}
    </div>
    ${mayEdit ? html`<form class="department-edit row" hidden>
      <input name="name" required maxlength="100" value="${department.name}" aria-label="Name">
      <input name="description" maxlength="2000" value="${department.description}" placeholder="Description" aria-label="Description" class="spacer">
      <button class="btn btn-primary btn-small" type="submit">Save</button>
    </form>` : ''}
    <details class="channels" ${open ? html`open` : ''}>
      <summary>Channels</summary>
      <div class="channel-list"><p class="muted small">Loading…</p></div>
      ${mayEdit ? html`<form class="channel-form">
        <label>Type <select name="type"><option value="in_app">In-app</option><option value="webhook">Webhook</option><option value="slack">Slack</option></select></label>
        <label>Name <input name="name" maxlength="100" placeholder="optional" autocomplete="off"></label>
        <input name="url" type="url" placeholder="https://…" aria-label="URL" hidden autocomplete="off">
        <input name="secret" type="password" minlength="16" placeholder="Signing secret (16+ chars)" aria-label="Secret" hidden autocomplete="new-password">
        <label>From severity <select name="min_severity">${SEVERITIES.map((s) => html`<option>${s}</option>`)}</select></label>
        <button class="btn btn-small" type="submit">Add channel</button>
      </form>` : ''}
    </details>
  </section>`;
}

function channelTable(channels, mayEdit) {
  if (channels.length === 0) return html`<p class="muted small">No channels: this department hears nothing.</p>`;
  return html`<div class="table-wrap"><table class="small">
    <thead><tr><th>Name</th><th>Type</th><th>Target</th><th>From</th>${mayEdit ? html`<th></th>` : ''}</tr></thead>
    <tbody>${channels.map(
      (channel) => html`<tr data-channel="${channel.id}">
        <td>${channel.name}${channel.enabled ? '' : html` <span class="badge tag">disabled</span>`}</td>
        <td>${channel.type.replace('_', '-')}</td>
        <td class="mono">${channel.url ?? html`<span class="muted">inbox</span>`}</td>
        <td>${channel.min_severity}</td>
        ${mayEdit ? html`<td><button type="button" class="btn-link" data-delete-channel="${channel.id}">Delete</button></td>` : ''}
      </tr>`,
    )}</tbody></table></div>`;
}
