// Creating and editing a rule, with a backtest preview of what it would have caught. Nothing is
// saved until "Save". Saving needs an admin key and previewing an operator key; a viewer sees
// the rule read-only.

import { api } from '../api.js';
import { alignSeries, PALETTE, timeChart, toSeconds } from '../charts.js';
import {
  $, $$, errorBanner, formatNumber, html, on, render, severityBadge, time, toast,
} from '../dom.js';
import { navigate } from '../router.js';
import { can } from '../session.js';

const AGGREGATIONS = ['last', 'avg', 'min', 'max', 'sum', 'count', 'p50', 'p90', 'p95', 'p99', 'rate'];
const OPERATORS = ['>', '>=', '<', '<=', '==', '!='];
const SEVERITIES = ['CRITICAL', 'HIGH', 'MEDIUM', 'LOW'];
const COMMON_METRICS = ['LATENCY_MS', 'ERROR_RATE', 'PACKET_LOSS', 'BUFFER_RATIO'];
const PERIODS = [['1h', 'Last hour', 1], ['6h', 'Last 6 hours', 6], ['24h', 'Last 24 hours', 24], ['7d', 'Last 7 days', 168]];
// Fields a saved rule keeps for good (RulePatch refuses them).
const FIXED_FIELDS = ['kind', 'metric_type', 'service_id', 'labels'];

/**
 * A rule's condition in words, split around its threshold: `avg(LATENCY_MS) over 1m >` and
 * `for 2m`. Absent rules have no threshold, so all of it is `before`.
 */
export function conditionParts(rule) {
  if (rule.kind === 'absent') return { before: `no ${rule.metric_type} for ${rule.window}`, after: '' };
  const windowed = rule.window !== '0';
  const subject = rule.aggregation === 'last' && !windowed ? rule.metric_type : `${rule.aggregation}(${rule.metric_type})`;
  return {
    before: `${subject}${windowed ? ` over ${rule.window}` : ''} ${rule.operator}`,
    after: rule.for !== '0' ? `for ${rule.for}` : '',
  };
}

export function mount(view, { params: [ruleId], query }) {
  const editing = Boolean(ruleId);
  let destroyed = false;
  let saved = null; // the rule as stored, when editing
  let departments = [];
  let preview = null;
  let knownServices = new Set();
  let metricsOf = null; // the service whose metrics the metric field suggests
  const maySave = can('admin');
  const mayPreview = can('operator');
  const title = maySave ? (editing ? 'Edit rule' : 'New rule') : (editing ? 'Rule' : 'Draft a rule');

  render(
    view,
    html`<div class="page-head">
        <div><a class="small" href="#/rules">← Rules</a><h1>${title}</h1></div>
      </div>
      ${maySave ? '' : html`<div class="banner banner-info small">Saving rules needs an admin key${
        mayPreview ? '; you can still preview what a rule would catch' : ''}.</div>`}
      <div id="rule-load-error"></div>
      <div class="columns-wide-right">
        <form class="card stack" id="rule-form" novalidate>
          <div id="rule-errors"></div>
          <fieldset class="form-section"><legend>What to watch</legend><div class="form-grid">
            <label>Kind <select name="kind">
              <option value="threshold">Threshold</option><option value="absent">Absent (no samples)</option></select>
              <span class="field-error" data-error-for="kind"></span></label>
            <label>Metric <input name="metric_type" list="metric-types" required placeholder="LATENCY_MS" autocomplete="off" spellcheck="false">
              <span class="field-error" data-error-for="metric_type"></span></label>
            <label class="wide">Service <input name="service_id" list="service-ids" placeholder="All services" autocomplete="off" spellcheck="false">
              <span class="field-error" data-error-for="service_id"></span></label>
            <label class="wide">Labels <span class="hint">one <code>name=value</code> per line; only series carrying all of them</span>
              <textarea name="labels" rows="2" spellcheck="false"></textarea>
              <span class="field-error" data-error-for="labels"></span></label>
          </div></fieldset>
          <fieldset class="form-section"><legend>Condition</legend><div class="form-grid">
            <label data-threshold-only>Aggregation <select name="aggregation">${AGGREGATIONS.map((a) => html`<option>${a}</option>`)}</select>
              <span class="field-error" data-error-for="aggregation"></span></label>
            <label>Window <input name="window" placeholder="0 (each sample)" autocomplete="off">
              <span class="hint" data-window-hint></span>
              <span class="field-error" data-error-for="window"></span></label>
            <label data-threshold-only>Operator <select name="operator">${OPERATORS.map((o) => html`<option>${o}</option>`)}</select>
              <span class="field-error" data-error-for="operator"></span></label>
            <label data-threshold-only>Threshold <input name="threshold" type="number" step="any" required>
              <span class="field-error" data-error-for="threshold"></span></label>
          </div></fieldset>
          <fieldset class="form-section" data-threshold-only><legend>Pending and clearing</legend><div class="form-grid">
            <label>Fire after <input name="for" placeholder="0 (at once)" autocomplete="off">
              <span class="hint">how long the condition must hold</span>
              <span class="field-error" data-error-for="for"></span></label>
            <label>Clear threshold <input name="clear_threshold" type="number" step="any" placeholder="the threshold">
              <span class="field-error" data-error-for="clear_threshold"></span></label>
            <label>Clear after <input name="clear_for" placeholder="0 (at once)" autocomplete="off">
              <span class="field-error" data-error-for="clear_for"></span></label>
            <label class="check"><input type="checkbox" name="auto_resolve"> Close the incident when it clears</label>
          </div></fieldset>
          <fieldset class="form-section"><legend>Routing</legend><div class="form-grid">
            <label>Severity <select name="severity">${SEVERITIES.map((s) => html`<option>${s}</option>`)}</select>
              <span class="field-error" data-error-for="severity"></span></label>
            <label>Department <select name="department_id"><option value="">None</option></select>
              <span class="field-error" data-error-for="department_id"></span></label>
            <div class="wide"><div class="field-label">Also notify</div><div class="row" id="extra-departments"></div>
              <span class="field-error" data-error-for="extra_department_ids"></span></div>
            <label class="wide">Name <input name="name" maxlength="200" placeholder="Derived from the condition" autocomplete="off">
              <span class="field-error" data-error-for="name"></span></label>
            <label class="check"><input type="checkbox" name="enabled" checked> Enabled</label>
          </div></fieldset>
          <div class="row">
            ${maySave ? html`<button class="btn btn-primary" type="submit" id="save-rule">Save</button>` : ''}
            <a class="btn" href="#/rules">${maySave ? 'Cancel' : 'Back to rules'}</a>
            <span class="spacer"></span>
            ${editing && maySave ? html`<button class="btn btn-danger" type="button" id="delete-rule">Delete</button>` : ''}
          </div>
          <datalist id="service-ids"></datalist><datalist id="metric-types"></datalist>
        </form>
        ${mayPreview ? html`<section class="card" id="backtest">
          <div class="card-head"><h2>Backtest preview</h2><span class="muted small">what this rule would have caught; nothing is saved</span></div>
          <div class="row">
            <select name="period" id="backtest-period" aria-label="Period">${PERIODS.map(([value, label]) => html`<option value="${value}">${label}</option>`)}</select>
            <button class="btn btn-primary" type="button" id="run-backtest">Preview</button>
            <span class="muted small" id="backtest-stale"></span>
          </div>
          <div id="backtest-result"><p class="muted">Press Preview to replay the chosen period through the rule as the form stands.</p></div>
        </section>` : ''}
      </div>`,
  );
  const form = $('#rule-form', view);

  function applyKind() {
    const absent = form.kind.value === 'absent';
    $$('[data-threshold-only]', form).forEach((element) => { element.hidden = absent; });
    $('[data-window-hint]', form).textContent = absent ? 'how long a silence must last, e.g. 5m' : 'sliding, e.g. 1m or 5m';
    form.window.placeholder = absent ? '5m' : '0 (each sample)';
  }

  function fill(rule) {
    form.kind.value = rule.kind;
    form.metric_type.value = rule.metric_type;
    form.service_id.value = rule.service_id ?? '';
    form.labels.value = Object.entries(rule.labels ?? {}).map(([k, v]) => `${k}=${v}`).join('\n');
    form.aggregation.value = rule.aggregation;
    form.window.value = rule.window === '0' ? '' : rule.window;
    form.operator.value = rule.operator ?? '>';
    form.threshold.value = rule.kind === 'threshold' ? rule.threshold : '';
    form.for.value = rule.for === '0' ? '' : rule.for;
    form.clear_threshold.value = rule.clear_threshold ?? '';
    form.clear_for.value = rule.clear_for === '0' ? '' : rule.clear_for;
    form.auto_resolve.checked = rule.auto_resolve;
    form.severity.value = rule.severity;
    form.department_id.value = rule.department_id ?? '';
    form.name.value = rule.name;
    form.enabled.checked = rule.enabled;
    renderExtraDepartments(rule.extra_department_ids);
    FIXED_FIELDS.forEach((field) => {
      form[field].disabled = true;
      form[field].title = 'Fixed once the rule exists';
    });
    applyKind();
  }

  function renderExtraDepartments(selected = []) {
    const chosen = new Set(selected);
    render(
      $('#extra-departments', view),
      departments.length === 0
        ? html`<span class="muted small">No departments</span>`
        : departments.map(
            (d) => html`<label class="check"><input type="checkbox" name="extra_department_ids" value="${d.id}" ${chosen.has(d.id) ? html`checked` : ''}> ${d.name}</label>`,
          ),
    );
  }

  function parseLabels(text) {
    const labels = {};
    for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const at = line.indexOf('=');
      if (at < 1) throw fieldProblem('labels', `"${line}" is not name=value`);
      labels[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    return labels;
  }

  function numberField(name) {
    const text = form[name].value.trim();
    if (text === '') return undefined;
    const value = Number(text);
    if (!Number.isFinite(value)) throw fieldProblem(name, 'must be a number');
    return value;
  }

  /** The form as a RuleBody, as `POST /api/rules` and backtests take it. */
  function ruleBody() {
    const threshold = form.kind.value === 'threshold';
    const body = {
      kind: form.kind.value,
      metric_type: form.metric_type.value.trim(),
      severity: form.severity.value,
      department_id: form.department_id.value || null,
      extra_department_ids: $$('[name="extra_department_ids"]:checked', form).map((input) => input.value),
      enabled: form.enabled.checked,
      auto_resolve: form.auto_resolve.checked,
    };
    const name = form.name.value.trim();
    if (name) body.name = name;
    const service = form.service_id.value.trim();
    if (service) body.service_id = service;
    const labels = parseLabels(form.labels.value);
    if (Object.keys(labels).length) body.labels = labels;
    const windowSpan = form.window.value.trim();
    if (windowSpan) body.window = windowSpan;
    if (threshold) {
      body.aggregation = form.aggregation.value;
      body.operator = form.operator.value;
      body.threshold = numberField('threshold');
      const clearThreshold = numberField('clear_threshold');
      if (clearThreshold !== undefined) body.clear_threshold = clearThreshold;
      for (const field of ['for', 'clear_for']) {
        const span = form[field].value.trim();
        if (span) body[field] = span;
      }
    }
    return body;
  }

  /** The form as a RulePatch: unchangeable fields dropped, emptied fields reset. */
  function rulePatch() {
    const body = ruleBody();
    FIXED_FIELDS.forEach((field) => delete body[field]);
    // An untouched name is left to the API, which may derive it from the condition.
    const name = form.name.value.trim();
    if (name === saved.name) delete body.name;
    else body.name = name || null;
    body.window = body.window ?? '0';
    if (saved.kind === 'threshold') {
      body.for = body.for ?? '0';
      body.clear_for = body.clear_for ?? '0';
      body.clear_threshold = body.clear_threshold ?? null;
    }
    return body;
  }

  function clearErrors() {
    render($('#rule-errors', view), '');
    $$('[data-error-for]', form).forEach((element) => { element.textContent = ''; });
    $$('.invalid', form).forEach((element) => element.classList.remove('invalid'));
  }

  /** Puts each field problem of a 422 next to its field; the rest go in the banner. */
  function showErrors(error) {
    clearErrors();
    const unplaced = [];
    for (const { field, message } of error.fieldErrors ?? []) {
      const name = field.replace(/^rule\./, '').split(/[.[]/)[0];
      const slot = $(`[data-error-for="${name}"]`, form);
      if (slot && !slot.closest('[hidden]')) {
        slot.textContent = message;
        form.elements[name]?.classList?.add('invalid');
      } else {
        unplaced.push(`${field}: ${message}`);
      }
    }
    render(
      $('#rule-errors', view),
      html`<div class="banner banner-error" role="alert">${error.message}
        ${unplaced.length ? html`<ul>${unplaced.map((text) => html`<li>${text}</li>`)}</ul>` : ''}</div>`,
    );
    const firstInvalid = $('.invalid', form);
    if (firstInvalid) firstInvalid.focus();
    else $('#rule-errors', view).scrollIntoView({ block: 'nearest' });
  }

  async function runBacktest() {
    clearErrors();
    const result = $('#backtest-result', view);
    const [, , hours] = PERIODS.find(([value]) => value === $('#backtest-period', view).value);
    const from = new Date(Date.now() - hours * 3600 * 1000).toISOString();
    let body;
    try {
      body = { from, to: 'now', rule: ruleBody() };
    } catch (problem) {
      showErrors(problem);
      return;
    }
    render(result, html`<p class="muted">Replaying…</p>`);
    try {
      const path = editing ? `/api/rules/${encodeURIComponent(ruleId)}/backtest` : '/api/rules/backtest';
      const { data } = await api(path, { method: 'POST', body });
      if (destroyed) return;
      preview?.chart?.destroy();
      preview = { chart: null };
      renderBacktest(data);
      $('#backtest-stale', view).textContent = '';
    } catch (error) {
      if (destroyed) return;
      render(result, errorBanner(error));
      if (error.status === 422) showErrors(error);
    }
  }

  function renderBacktest(backtest) {
    const { incidents, stats, warnings, rule } = backtest;
    const windowed = rule.kind === 'threshold' && rule.window !== '0';
    render(
      $('#backtest-result', view),
      html`<div class="backtest-summary">
          <span class="backtest-count" id="backtest-count">${incidents.length}</span>
          <span>would-be incident${incidents.length === 1 ? '' : 's'} from ${time(backtest.from)} to ${time(backtest.to)}</span>
        </div>
        <div class="muted small">${stats.samples.toLocaleString()} samples evaluated in ${stats.series_total} series
          ${stats.series_shown < stats.series_total ? `(${stats.series_shown} charted)` : ''}${stats.late ? ` · ${stats.late} late` : ''}
          ${stats.truncated ? ' · stopped early at the read limit' : ''}</div>
        ${warnings.length ? html`<div class="banner banner-warn small" id="backtest-warnings">
          ${warnings.map((warning) => html`<div>${warning}</div>`)}</div>` : ''}
        <div class="chart" id="backtest-chart"></div>
        ${windowed ? html`<p class="muted small">The chart shows raw samples; the rule judges ${rule.aggregation} over ${rule.window}.</p>` : ''}
        ${incidents.length ? html`<div class="table-wrap"><table class="small" id="backtest-incidents">
          <thead><tr><th>Opened</th><th>Resolved</th><th>Service</th><th>Severity</th><th class="num">Value</th><th class="num">Peak</th><th class="num">Violations</th></tr></thead>
          <tbody>${incidents.map((incident) => html`<tr>
            <td class="nowrap">${time(incident.opened_at)}</td><td class="nowrap">${time(incident.resolved_at, 'still firing')}</td>
            <td class="mono">${incident.service_id}</td><td>${severityBadge(incident.severity)}</td>
            <td class="num">${formatNumber(incident.value)}</td><td class="num">${formatNumber(incident.peak_value)}</td>
            <td class="num">${incident.violation_count}</td></tr>`)}</tbody></table></div>` : ''}`,
    );
    const end = toSeconds(backtest.to);
    const series = backtest.series.map((s) => [s.points.map(([ms]) => ms / 1000), s.points.map(([, value]) => value)]);
    if (series.length === 0) {
      render($('#backtest-chart', view), html`<p class="muted">No samples of this series in the period.</p>`);
      return;
    }
    preview.chart = timeChart($('#backtest-chart', view), {
      series: backtest.series.map((s, index) => ({
        label: s.series_key,
        stroke: PALETTE[index % PALETTE.length],
        width: 1.25,
      })),
      height: 260,
      data: alignSeries(series),
      threshold: rule.kind === 'threshold' ? rule.threshold : null,
      spans: incidents.map((incident) => ({
        from: toSeconds(incident.opened_at),
        to: incident.resolved_at ? toSeconds(incident.resolved_at) : end,
      })),
      xRange: [toSeconds(backtest.from), end],
    });
  }

  async function save() {
    clearErrors();
    let rule;
    try {
      rule = editing
        ? (await api(`/api/rules/${encodeURIComponent(ruleId)}`, { method: 'PATCH', body: rulePatch() })).data
        : (await api('/api/rules', { method: 'POST', body: ruleBody() })).data;
    } catch (error) {
      if (error.status === 422 || error.fieldErrors?.length) {
        showErrors(error);
        return;
      }
      throw error;
    }
    toast(`Rule “${rule.name}” saved.`, 'info');
    navigate('/rules');
  }

  async function loadChoices() {
    const [departmentList, services] = await Promise.allSettled([
      api('/api/departments', { query: { limit: 1000 } }),
      api('/api/services', { query: { limit: 1000 } }),
    ]);
    if (departmentList.status === 'rejected') throw departmentList.reason;
    departments = departmentList.value.data;
    const departmentSelect = form.department_id;
    const current = departmentSelect.value;
    render(
      departmentSelect,
      html`<option value="">None</option>${departments.map((d) => html`<option value="${d.id}">${d.name}</option>`)}`,
    );
    departmentSelect.value = current;
    renderExtraDepartments();
    if (services.status === 'fulfilled') {
      knownServices = new Set(services.value.data.map((s) => s.id));
      render($('#service-ids', view), services.value.data.map((s) => html`<option value="${s.id}">`));
    }
  }

  /** Suggests the chosen service's metrics, and the common ones, for the metric field. */
  async function suggestMetrics() {
    const service = form.service_id.value.trim();
    if (service === metricsOf) return;
    metricsOf = service;
    let seen = [];
    if (knownServices.has(service)) {
      try {
        const { data } = await api(`/api/services/${encodeURIComponent(service)}`);
        seen = data.metrics.map((metric) => metric.metric_type);
      } catch {
        // only suggestions: the field takes any metric
      }
    }
    if (destroyed || metricsOf !== service) return;
    render($('#metric-types', view), [...new Set([...seen, ...COMMON_METRICS])].map((m) => html`<option value="${m}">`));
  }

  /** Loads the choices (and the rule, when editing); the form is marked ready once filled. */
  async function start() {
    if (!editing) {
      form.service_id.value = query.get('service_id') ?? '';
      form.metric_type.value = query.get('metric_type') ?? '';
      form.severity.value = 'HIGH';
    }
    applyKind();
    try {
      await loadChoices();
      if (!editing) suggestMetrics();
      if (editing) {
        saved = (await api(`/api/rules/${encodeURIComponent(ruleId)}`)).data;
        if (destroyed) return;
        fill(saved);
      }
      if (!mayPreview) {
        [...form.elements].forEach((element) => { element.disabled = true; });
      }
      form.dataset.ready = 'true';
    } catch (error) {
      if (!destroyed) render($('#rule-load-error', view), errorBanner(error));
    }
  }

  form.kind.addEventListener('change', applyKind);
  form.service_id.addEventListener('change', suggestMetrics);
  form.addEventListener('input', () => {
    if (preview) $('#backtest-stale', view).textContent = 'The form changed since this preview.';
  });
  on(form, 'submit', async (event) => {
    event.preventDefault();
    if (maySave) await save();
  });
  if (mayPreview) on($('#run-backtest', view), 'click', runBacktest);
  if (editing && maySave) {
    on($('#delete-rule', view), 'click', async () => {
      if (!window.confirm(`Delete the rule “${saved?.name ?? ruleId}”? Its incidents stay.`)) return;
      await api(`/api/rules/${encodeURIComponent(ruleId)}`, { method: 'DELETE' });
      toast('Rule deleted.', 'info');
      navigate('/rules');
    });
  }

  start();

  return {
    destroy() {
      destroyed = true;
      preview?.chart?.destroy();
    },
  };
}

function fieldProblem(field, message) {
  const problem = new Error(`field \`${field}\`: ${message}`);
  problem.fieldErrors = [{ field, message }];
  return problem;
}

