// Notifications: the in-app inbox, with read state (changed with an operator key).

import { api } from '../api.js';
import {
  $, debounce, errorBanner, html, on, pagination, render, replaceQuery, severityBadge, showError, time, toast,
} from '../dom.js';
import { can } from '../session.js';
import { refreshUnread } from '../unread.js';

const PAGE_SIZE = 50;

export function mount(view, { query }) {
  let destroyed = false;
  let departments = new Map();
  const mayMark = can('operator');
  const state = { unreadOnly: query.get('read') === 'false', offset: Number.parseInt(query.get('offset') ?? '0', 10) || 0 };

  render(
    view,
    html`<div class="page-head">
        <div><h1>Notifications</h1><div class="sub muted small" id="notification-total"></div></div>
        <div class="page-actions">
          <label class="check"><input type="checkbox" id="unread-only"> Unread only</label>
          ${mayMark ? html`<button type="button" class="btn" id="read-all">Mark all read</button>` : ''}
        </div>
      </div>
      <div id="notifications-error"></div>
      <section class="card">
        <ul class="list inbox" id="inbox"><li class="muted">Loading…</li></ul>
        <div id="notification-pager"></div>
      </section>`,
  );
  $('#unread-only', view).checked = state.unreadOnly;

  async function load() {
    replaceQuery('/notifications', { read: state.unreadOnly ? 'false' : '', offset: state.offset || '' });
    try {
      const page = await api('/api/notifications', {
        query: { limit: PAGE_SIZE, offset: state.offset, read: state.unreadOnly ? 'false' : '' },
      });
      if (destroyed) return;
      render($('#notifications-error', view), '');
      render($('#notification-total', view), `${page.meta.total} ${state.unreadOnly ? 'unread' : 'in all'}`);
      renderItems(page.data);
      render($('#notification-pager', view), pagination(page.meta, 'notifications'));
    } catch (error) {
      if (!destroyed) render($('#notifications-error', view), errorBanner(error));
    }
  }

  function renderItems(items) {
    render(
      $('#inbox', view),
      items.length === 0
        ? html`<li class="empty">${state.unreadOnly ? 'Nothing unread.' : 'No notifications yet. A department needs an in-app channel to receive them.'}</li>`
        : items.map(
            (n) => html`<li class="${n.read_at ? 'read' : 'unread'}" data-notification="${n.id}" data-incident="${n.incident_id ?? ''}">
              <span class="dot" title="${n.read_at ? 'Read' : 'Unread'}"></span>
              <div class="n-main">
                <div class="row">${severityBadge(n.severity)}<span class="n-title">${n.title}</span></div>
                <div class="n-body">${n.body}</div>
                <div class="n-meta">${time(n.created_at)}
                  <span>${n.kind}</span>
                  ${n.department_id ? html`<span>${departments.get(n.department_id) ?? n.department_id}</span>` : ''}
                  ${n.incident_id ? html`<a href="#/incidents/${n.incident_id}">Open incident</a>` : ''}
                </div>
              </div>
              ${mayMark ? html`<button type="button" class="btn btn-small" data-mark="${n.read_at ? 'unread' : 'read'}">
                ${n.read_at ? 'Mark unread' : 'Mark read'}</button>` : ''}
            </li>`,
          ),
    );
  }

  async function loadDepartments() {
    try {
      const { data } = await api('/api/departments', { query: { limit: 1000 } });
      departments = new Map(data.map((d) => [d.id, d.name]));
    } catch (error) {
      showError(error); // departments' ids are shown instead of their names
    }
  }

  if (mayMark) {
    on($('#inbox', view), 'click', '[data-mark]', async (event, button) => {
      const id = button.closest('[data-notification]').dataset.notification;
      await api(`/api/notifications/${id}/${button.dataset.mark}`, { method: 'POST' });
      refreshUnread();
      await load();
    });
    on($('#read-all', view), 'click', async () => {
      const { data } = await api('/api/notifications/read-all', { method: 'POST' });
      toast(`${data.updated} notification${data.updated === 1 ? '' : 's'} marked read.`, 'info');
      refreshUnread();
      await load();
    });
  }
  $('#unread-only', view).addEventListener('change', (event) => {
    state.unreadOnly = event.target.checked;
    state.offset = 0;
    load();
  });
  on($('#notification-pager', view), 'click', '[data-page]', async (event, button) => {
    state.offset = Math.max(0, state.offset + (button.dataset.page === 'next' ? PAGE_SIZE : -PAGE_SIZE));
    await load();
  });

  loadDepartments().then(load);
  const reload = debounce(load, 200);

  return {
    onEvent(type) {
      if (type === 'notification' || type === 'hello') reload();
    },
    destroy() {
      destroyed = true;
      reload.cancel();
    },
  };
}
