// One incident: its fields, the metric around it, the timeline, comments and the controls
// people own (status, severity, assignee), which need an operator key.

import { api } from '../api.js';
import { timeChart, toSeconds } from '../charts.js';
import {
  $, debounce, errorBanner, formatNumber, html, on, render, severityBadge, showError, statusBadge, statusLabel, time,
} from '../dom.js';
import { can } from '../session.js';

const HOUR_MS = 3600 * 1000;
const SEVERITIES = ['CRITICAL', 'HIGH', 'MEDIUM', 'LOW'];
const MOVES = {
  OPEN: [['IN_PROGRESS', 'Start work'], ['CLOSED', 'Close']],
  IN_PROGRESS: [['CLOSED', 'Close']],
  CLOSED: [['OPEN', 'Reopen']],
};

export function mount(view, { params: [id] }) {
  let destroyed = false;
  let incident = null;
  let departments = new Map();
  let chart = null;
  const mayWork = can('operator');

  render(
    view,
    html`<div class="page-head">
        <div>
          <a class="small" href="#/incidents">← Incidents</a>
          <h1 class="incident-title" id="incident-title">Incident</h1>
          <div class="sub muted" id="incident-message"></div>
        </div>
      </div>
      <div id="incident-error"></div>
      ${mayWork ? html`<section class="card" id="incident-actions" hidden>
        <div class="actions-bar">
          <div><div class="field-label">Status</div><div class="group" id="status-moves"></div></div>
          <label>Severity <select name="severity" id="severity-select">
            ${SEVERITIES.map((severity) => html`<option value="${severity}">${severity}</option>`)}</select></label>
          <form class="group" id="assignee-form">
            <label>Assignee <input name="assignee" maxlength="200" placeholder="Unassigned" autocomplete="off"></label>
            <button class="btn" type="submit">Assign</button>
            <button class="btn" type="button" id="unassign">Unassign</button>
          </form>
        </div>
      </section>` : ''}
      <div class="columns gap-top">
        <div class="stack">
          <section class="card"><div class="card-head"><h2>Metric</h2><span class="muted small" id="chart-caption"></span></div>
            <div class="chart" id="incident-chart"></div></section>
          <section class="card"><h2>Timeline</h2><ol class="timeline" id="timeline"><li class="muted">Loading…</li></ol></section>
        </div>
        <div class="stack">
          <section class="card"><h2>Details</h2><dl class="kv" id="incident-fields"></dl></section>
          <section class="card"><h2>Comments</h2>
            <ul class="comments" id="comments"></ul>
            ${mayWork ? html`<form id="comment-form" class="stack">
              <textarea name="body" rows="3" maxlength="10000" required placeholder="Add a comment…"></textarea>
              <div class="row"><span class="spacer"></span><button class="btn btn-primary" type="submit">Add comment</button></div>
            </form>` : ''}
          </section>
        </div>
      </div>`,
  );

  async function load() {
    try {
      const [record, events, comments] = await Promise.all([
        api(`/api/incidents/${encodeURIComponent(id)}`),
        api(`/api/incidents/${encodeURIComponent(id)}/events`, { query: { limit: 1000 } }),
        api(`/api/incidents/${encodeURIComponent(id)}/comments`, { query: { limit: 1000 } }),
      ]);
      if (destroyed) return;
      const previous = incident;
      incident = record.data;
      render($('#incident-error', view), '');
      renderHeader();
      renderFields();
      renderTimeline(events.data);
      renderComments(comments.data);
      if (!previous || previous.last_violation_at !== incident.last_violation_at
          || previous.resolved_at !== incident.resolved_at) {
        await loadChart();
      }
    } catch (error) {
      if (!destroyed) render($('#incident-error', view), errorBanner(error));
    }
  }

  async function loadDepartments() {
    try {
      const { data } = await api('/api/departments', { query: { limit: 1000 } });
      departments = new Map(data.map((department) => [department.id, department.name]));
      if (incident && !destroyed) renderFields();
    } catch (error) {
      showError(error); // the department's id is shown instead of its name
    }
  }

  function renderHeader() {
    render(
      $('#incident-title', view),
      html`<span>${incident.rule_name} on ${incident.service_id}</span>
        ${severityBadge(incident.severity)} <span id="incident-status">${statusBadge(incident.status)}</span>
        ${incident.resolved_at ? html`<span class="badge st-closed">resolved</span>` : html`<span class="badge sev-high">firing</span>`}`,
    );
    $('#incident-message', view).textContent = incident.message;
    if (mayWork) renderActions();
  }

  function renderActions() {
    $('#incident-actions', view).hidden = false;
    render(
      $('#status-moves', view),
      MOVES[incident.status].map(
        ([status, label]) => html`<button type="button" class="btn ${status === 'CLOSED' ? '' : 'btn-primary'}" data-status="${status}">${label}</button>`,
      ),
    );
    $('#severity-select', view).value = incident.severity;
    const assignee = $('#assignee-form', view).assignee;
    if (document.activeElement !== assignee) assignee.value = incident.assignee ?? '';
    $('#unassign', view).disabled = !incident.assignee;
  }

  function renderFields() {
    const i = incident;
    const department = i.department_id ? departments.get(i.department_id) ?? i.department_id : null;
    const rows = [
      ['Service', html`<a class="mono" href="#/incidents?service_id=${encodeURIComponent(i.service_id)}">${i.service_id}</a>`],
      ['Metric', html`<span class="mono">${i.metric_type}</span>`],
      ['Rule', html`<a href="#/rules/${i.rule_id}">${i.rule_name}</a>`],
      ['Condition', html`<span class="condition">${i.operator} ${formatNumber(i.threshold)}</span>`],
      ['Opening value', formatNumber(i.value)],
      ['Peak', formatNumber(i.peak_value)],
      ['Last value', formatNumber(i.last_value)],
      ['Violations', String(i.violation_count)],
      ['Opened', time(i.opened_at)],
      ['Last violation', time(i.last_violation_at)],
      ['Resolved', time(i.resolved_at, 'still firing')],
      ['Work started', time(i.in_progress_at)],
      ['Closed', time(i.closed_at)],
      ['Assignee', i.assignee ?? html`<span class="muted">nobody</span>`],
      ['Department', department ?? html`<span class="muted">none</span>`],
      ['Source', i.source],
      ['Auto-resolve', i.auto_resolve ? 'yes' : 'no'],
      ['Series', html`<span class="mono">${i.series_key}</span>`],
      ...Object.entries(i.labels).map(([name, value]) => [`Label ${name}`, value]),
      ['Id', html`<span class="mono small">${i.id}</span>`],
    ];
    render($('#incident-fields', view), rows.map(([label, value]) => html`<dt>${label}</dt><dd>${value}</dd>`));
  }

  function renderTimeline(events) {
    render(
      $('#timeline', view),
      events.length === 0 ? html`<li class="muted">No events.</li>` : events.map(timelineEntry),
    );
  }

  function renderComments(comments) {
    render(
      $('#comments', view),
      comments.length === 0
        ? html`<li class="muted small">No comments yet.</li>`
        : comments.map(
            (comment) => html`<li class="comment" data-comment="${comment.id}">
              <div class="comment-head"><strong>${comment.author}</strong>${time(comment.created_at)}
                <span class="spacer"></span>${mayWork ? html`<button type="button" class="btn-link small" data-delete-comment="${comment.id}">Delete</button>` : ''}</div>
              <div class="comment-body">${comment.body}</div>
            </li>`,
          ),
    );
  }

  async function loadChart() {
    const i = incident;
    const now = Date.now();
    const start = Date.parse(i.opened_at) - HOUR_MS;
    const end = Math.min(Date.parse(i.resolved_at ?? new Date(now).toISOString()) + HOUR_MS, now);
    const bucket = end - start <= 6 * HOUR_MS ? '1m' : end - start <= 72 * HOUR_MS ? '5m' : '1h';
    const caption = $('#chart-caption', view);
    try {
      const { data } = await api('/api/metrics/chart', {
        query: {
          service_id: i.service_id,
          metric_type: i.metric_type,
          from: new Date(start).toISOString(),
          to: new Date(end).toISOString(),
          bucket,
        },
      });
      if (destroyed) return;
      caption.textContent = `${i.metric_type} per ${bucket}, ${i.operator} ${formatNumber(i.threshold)} is a violation`;
      const series = [
        data.map((b) => toSeconds(b.bucket_start)),
        data.map((b) => b.avg),
        data.map((b) => b.max),
      ];
      const update = {
        threshold: i.threshold,
        spans: [{ from: toSeconds(i.opened_at), to: i.resolved_at ? toSeconds(i.resolved_at) : now / 1000 }],
        xRange: [start / 1000, end / 1000],
      };
      if (chart) chart.setData(series, update);
      else {
        chart = timeChart($('#incident-chart', view), {
          series: [
            { label: 'average', stroke: '#2563eb', fill: '#2563eb12' },
            { label: 'max', stroke: '#94a3b8', width: 1, dash: [4, 3] },
          ],
          height: 260,
          data: series,
          ...update,
        });
      }
    } catch (error) {
      if (!destroyed) caption.textContent = `Chart unavailable: ${error.message}`;
    }
  }

  async function patch(body) {
    await api(`/api/incidents/${encodeURIComponent(id)}`, { method: 'PATCH', body });
    await load();
  }

  if (mayWork) {
    on($('#status-moves', view), 'click', '[data-status]', async (event, button) => {
      await patch({ status: button.dataset.status });
    });
    on($('#severity-select', view), 'change', async (event) => {
      try {
        await patch({ severity: event.target.value });
      } finally {
        if (incident) event.target.value = incident.severity;
      }
    });
    on($('#assignee-form', view), 'submit', async (event) => {
      event.preventDefault();
      const value = event.target.assignee.value.trim();
      await patch({ assignee: value || null });
    });
    on($('#unassign', view), 'click', () => patch({ assignee: null }));
    on($('#comment-form', view), 'submit', async (event) => {
      event.preventDefault();
      const form = event.target;
      await api(`/api/incidents/${encodeURIComponent(id)}/comments`, { method: 'POST', body: { body: form.body.value } });
      form.reset();
      await load();
    });
    on($('#comments', view), 'click', '[data-delete-comment]', async (event, button) => {
      if (!window.confirm('Delete this comment?')) return;
      await api(`/api/incidents/${encodeURIComponent(id)}/comments/${button.dataset.deleteComment}`, { method: 'DELETE' });
      await load();
    });
  }

  loadDepartments();
  load();
  const reload = debounce(load, 200);

  return {
    onEvent(type, data) {
      if ((type === 'incident' && data.id === id) || type === 'hello') reload();
    },
    destroy() {
      destroyed = true;
      reload.cancel();
      chart?.destroy();
    },
  };
}

const EVENT_CLASSES = {
  CREATED: 'ev-created',
  RESOLVED: 'ev-resolved',
  STATUS_CHANGED: 'ev-status',
  NOTIFIED: 'ev-notified',
  NOTIFICATION_FAILED: 'ev-failed',
  NOTIFICATION_SUPPRESSED: 'ev-suppressed',
};

const EVENT_TITLES = {
  CREATED: 'Opened',
  RESOLVED: 'Resolved',
  STATUS_CHANGED: 'Status changed',
  SEVERITY_CHANGED: 'Severity changed',
  ASSIGNED: 'Assignee changed',
  COMMENTED: 'Commented',
  COMMENT_DELETED: 'Comment deleted',
  NOTIFIED: 'Notified',
  NOTIFICATION_FAILED: 'Notification failed',
  NOTIFICATION_SUPPRESSED: 'Notification suppressed',
};

function describeEvent(event) {
  const data = event.data ?? {};
  switch (event.kind) {
    case 'CREATED':
      return data.value == null ? '' : `${formatNumber(data.value)} ${data.operator ?? ''} ${formatNumber(data.threshold)}`;
    case 'RESOLVED':
      return data.value == null ? '' : `back at ${formatNumber(data.value)}`;
    case 'STATUS_CHANGED':
      return `${statusLabel(data.from ?? '?')} → ${statusLabel(data.to ?? '?')}`;
    case 'SEVERITY_CHANGED':
      return `${data.from ?? '?'} → ${data.to ?? '?'}`;
    case 'ASSIGNED':
      return data.to ? `to ${data.to}` : 'unassigned';
    case 'NOTIFIED':
    case 'NOTIFICATION_FAILED':
    case 'NOTIFICATION_SUPPRESSED':
      return [data.summary, data.status_code && `HTTP ${data.status_code}`, data.error].filter(Boolean).join(' · ');
    default:
      return '';
  }
}

function timelineEntry(event) {
  return html`<li class="${EVENT_CLASSES[event.kind] ?? ''}" data-kind="${event.kind}">
    <div><span class="ev-kind">${EVENT_TITLES[event.kind] ?? event.kind}</span> <span>${describeEvent(event)}</span></div>
    <div class="ev-meta">${time(event.at)} · ${event.actor}</div>
  </li>`;
}
