// The unread-notifications badge in the navigation bar.

import { api } from './api.js';
import { $, debounce, showError } from './dom.js';

async function load() {
  try {
    const { data } = await api('/api/notifications/unread-count');
    const badge = $('#unread-badge');
    badge.textContent = data.unread > 99 ? '99+' : String(data.unread);
    badge.dataset.count = String(data.unread);
    badge.hidden = data.unread === 0;
  } catch (error) {
    showError(error);
  }
}

export const refreshUnread = debounce(load, 150);
