// Rules: the list, with enable/disable toggles and thresholds edited in place (with an admin
// key; others see them read-only).

import { api } from '../api.js';
import { $, debounce, errorBanner, formatNumber, html, on, render, severityBadge, toast } from '../dom.js';
import { can } from '../session.js';
import { conditionParts } from './rule-form.js';

export function mount(view) {
  let destroyed = false;
  let departments = new Map();
  let pendingRender = null;
  const mayEdit = can('admin');

  render(
    view,
    html`<div class="page-head">
        <div><h1>Rules</h1><div class="sub muted small" id="rule-total"></div></div>
        ${mayEdit ? html`<div class="page-actions"><a class="btn btn-primary" href="#/rules/new">New rule</a></div>` : ''}
      </div>
      <div id="rules-error"></div>
      <section class="card">
        <div class="table-wrap"><table>
          <thead><tr><th>Enabled</th><th>Name</th><th>Condition</th><th>Service</th>
            <th>Severity</th><th>Department</th><th class="num">Incidents</th><th></th></tr></thead>
          <tbody id="rule-rows"><tr><td colspan="8" class="empty">Loading…</td></tr></tbody>
        </table></div>
      </section>`,
  );
  const tbody = $('#rule-rows', view);

  async function load() {
    try {
      const [rules, departmentList] = await Promise.all([
        api('/api/rules', { query: { limit: 1000, sort_by: 'name', sort_dir: 'asc' } }),
        api('/api/departments', { query: { limit: 1000 } }),
      ]);
      if (destroyed) return;
      departments = new Map(departmentList.data.map((d) => [d.id, d.name]));
      render($('#rules-error', view), '');
      render($('#rule-total', view), `${rules.meta.total} rule${rules.meta.total === 1 ? '' : 's'}`);
      // Re-rendering under a threshold being typed would lose the edit; wait for it to finish.
      if (tbody.contains(document.activeElement) && document.activeElement.matches('[data-threshold]')) {
        pendingRender = rules.data;
      } else {
        renderRows(rules.data);
      }
    } catch (error) {
      if (!destroyed) render($('#rules-error', view), errorBanner(error));
    }
  }

  function renderRows(rules) {
    pendingRender = null;
    render(
      tbody,
      rules.length === 0
        ? html`<tr><td colspan="8" class="empty">No rules yet.${mayEdit ? html` <a href="#/rules/new">Create one</a>.` : ''}</td></tr>`
        : rules.map((rule) => ruleRow(rule, departments, mayEdit)),
    );
  }

  async function patchRule(id, body) {
    const { data } = await api(`/api/rules/${id}`, { method: 'PATCH', body });
    return data;
  }

  on(tbody, 'change', '[data-enable]', async (event, input) => {
    const row = input.closest('tr');
    try {
      const rule = await patchRule(row.dataset.rule, { enabled: input.checked });
      toast(`${rule.name} ${rule.enabled ? 'enabled' : 'disabled'}.`, 'info');
    } catch (error) {
      input.checked = !input.checked;
      throw error;
    }
  });

  on(tbody, 'change', '[data-threshold]', async (event, input) => {
    const row = input.closest('tr');
    const value = Number(input.value);
    if (input.value.trim() === '' || !Number.isFinite(value)) {
      input.classList.add('invalid');
      throw new Error('The threshold must be a number.');
    }
    input.classList.remove('invalid');
    const rule = await patchRule(row.dataset.rule, { threshold: value });
    input.value = rule.threshold;
    input.classList.remove('saved-flash');
    void input.offsetWidth; // restart the animation
    input.classList.add('saved-flash');
    toast(`Threshold of ${rule.name} set to ${formatNumber(rule.threshold)}.`, 'info');
  });

  tbody.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && event.target.matches('[data-threshold]')) event.target.blur();
  });
  tbody.addEventListener('focusout', () => {
    if (pendingRender) setTimeout(() => pendingRender && !tbody.contains(document.activeElement) && renderRows(pendingRender));
  });

  load();
  const reload = debounce(load, 200);

  return {
    onEvent(type, data) {
      // Of incident changes, only an opening moves a rule's trigger count.
      if (type === 'rules' || type === 'hello' || (type === 'incident' && data.kind === 'opened')) reload();
    },
    destroy() {
      destroyed = true;
      reload.cancel();
    },
  };
}

function ruleRow(rule, departments, mayEdit) {
  const condition = conditionParts(rule);
  const department = rule.department_id ? departments.get(rule.department_id) ?? rule.department_id : null;
  let threshold = '';
  if (rule.kind === 'threshold') {
    threshold = mayEdit
      ? html`<input class="inline-number" type="number" step="any" data-threshold value="${rule.threshold}"
          aria-label="Threshold" title="Edit and press Enter to save">`
      : html`<span class="condition">${formatNumber(rule.threshold)}</span>`;
  }
  const toggleTitle = mayEdit
    ? (rule.enabled ? 'Enabled: click to disable' : 'Disabled: click to enable')
    : (rule.enabled ? 'Enabled' : 'Disabled');
  return html`<tr data-rule="${rule.id}">
    <td><label class="toggle" title="${toggleTitle}">
      <input type="checkbox" data-enable ${rule.enabled ? html`checked` : ''} ${mayEdit ? '' : html`disabled`} aria-label="Enabled"><span></span></label></td>
    <td><a href="#/rules/${rule.id}">${rule.name}</a></td>
    <td class="nowrap"><span class="condition">${condition.before}</span>
      ${threshold}
      <span class="condition muted">${condition.after}</span></td>
    <td class="mono">${rule.service_id ?? html`<span class="muted">all</span>`}</td>
    <td>${severityBadge(rule.severity)}</td>
    <td>${department ?? html`<span class="muted">none</span>`}</td>
    <td class="num">${rule.trigger_count}</td>
    <td class="nowrap"><a class="btn btn-small" href="#/rules/${rule.id}">${mayEdit ? 'Edit' : 'View'}</a></td>
  </tr>`;
}
