// Overview: a tile per service with live metric charts, incident counts, the most triggered
// rules, pipeline health and the latest incidents.

import { api } from '../api.js';
import { timeChart, toSeconds, PALETTE } from '../charts.js';
import {
  $, debounce, errorBanner, formatNumber, formatSeconds, html, raw, render, severityBadge, statusBadge, time,
} from '../dom.js';
import * as live from '../live.js';

const HOUR = 3600;
const RECENT_INCIDENTS = 6;
// Tiles come most troubled first; only the first ones get charts and live points, which keeps
// them to one /api/metrics/charts request (50 services at most) and a modest stream.
const CHARTED_TILES = 48;
const REFRESH_EVENTS = new Set(['incident', 'rules', 'service', 'hello']);
// Incident changes that move no count, tile or top rule. `updated` does change values in the
// latest incidents, which may wait for the next refresh.
const QUIET_INCIDENT_KINDS = new Set(['updated', 'commented', 'comment_deleted', 'assigned']);
const STATUS_TEXT = { ok: 'OK', warning: 'Warning', violated: 'Violated' };

export function mount(view) {
  render(
    view,
    html`<div class="page-head">
        <div><h1>Overview</h1><div class="sub muted small">Service quality, live</div></div>
      </div>
      <div id="overview-error"></div>
      <div class="summary" id="summary">
        ${statCard('open', 'Open')}${statCard('progress', 'In progress')}
        ${statCard('closed', 'Closed')}${statCard('firing', 'Firing now')}
      </div>
      <div class="overview-grid">
        <section>
          <div class="card-head"><h2>Services</h2><span class="muted small" id="service-count"></span></div>
          <div class="tiles" id="tiles"></div>
        </section>
        <aside class="side">
          <section class="card" id="recent"><h2>Latest incidents</h2><div class="muted">Loading…</div></section>
          <section class="card" id="health"><h2>Pipeline health</h2><div class="muted">Loading…</div></section>
          <section class="card" id="top-rules"><h2>Most triggered rules</h2><div class="muted">Loading…</div></section>
        </aside>
      </div>`,
  );

  const tiles = new Map(); // service id -> tile
  const unknownSeries = new Set(); // points seen for series no tile shows, each refetched for once
  const chartNote = document.createElement('div');
  chartNote.className = 'tiles-note muted small';
  chartNote.textContent = `Charts are shown for the ${CHARTED_TILES} most troubled services.`;
  let chartsStale = false; // events may have been missed: reload every chart with the next refresh
  let destroyed = false;

  async function refresh() {
    const [overview, recent] = await Promise.allSettled([
      api('/api/overview'),
      api('/api/incidents', { query: { limit: RECENT_INCIDENTS } }),
    ]);
    if (destroyed) return;
    if (overview.status === 'fulfilled') {
      render($('#overview-error', view), '');
      const data = overview.value.data;
      renderSummary(view, data.incidents);
      syncTiles(data.services);
      renderTopRules(view, data.top_rules);
      if (data.pipeline) renderHealth(view, data.pipeline);
      const shown = data.services.length;
      render(
        $('#service-count', view),
        shown < data.services_total ? `the ${shown} most troubled of ${data.services_total}` : `${shown} service${shown === 1 ? '' : 's'}`,
      );
    } else {
      render($('#overview-error', view), errorBanner(overview.reason, 'The overview could not be loaded'));
    }
    if (recent.status === 'fulfilled') renderRecent(view, recent.value.data);
    else render($('#recent', view), html`<h2>Latest incidents</h2>${errorBanner(recent.reason)}`);
  }

  const scheduleRefresh = debounce(refresh, 200);

  function syncTiles(services) {
    const container = $('#tiles', view);
    const seen = new Set();
    const toLoad = new Set(); // services with charts that have no history yet
    services.forEach((service, index) => {
      seen.add(service.id);
      let tile = tiles.get(service.id);
      if (!tile) {
        tile = createTile(service.id);
        tiles.set(service.id, tile);
      }
      if (index === CHARTED_TILES) container.append(chartNote);
      if (updateTile(tile, service, index < CHARTED_TILES) || (chartsStale && tile.charts.size)) toLoad.add(tile.id);
      container.append(tile.element);
    });
    for (const [id, tile] of tiles) {
      if (!seen.has(id)) {
        tile.charts.forEach((metric) => metric.chart.destroy());
        tile.element.remove();
        tiles.delete(id);
      }
    }
    if (services.length <= CHARTED_TILES) chartNote.remove();
    if (services.length === 0) {
      render(container, html`<div class="card empty">No services yet. They appear with their first metric sample.</div>`);
    } else {
      container.querySelector('.empty')?.remove();
    }
    chartsStale = false;
    live.watchServices(services.slice(0, CHARTED_TILES).map((s) => s.id));
    if (toLoad.size) loadCharts([...toLoad]);
  }

  function createTile(id) {
    const element = document.createElement('article');
    element.className = 'card tile';
    element.dataset.service = id;
    element.innerHTML = html`<div class="tile-head">
        <div><a class="tile-name" href="#/incidents?service_id=${encodeURIComponent(id)}"></a>
          <div class="tile-id muted mono"></div></div>
        <span class="tile-status"></span>
      </div>
      <div class="tile-counts"></div>
      <div class="tile-metrics"></div>
      <div class="tile-metric-names muted small mono" hidden></div>
      <div class="tile-empty muted small" hidden>No samples archived yet</div>`.toString();
    return { id, element, charted: false, charts: new Map() };
  }

  /** Brings a tile up to date; true when it gained charts that need their history. */
  function updateTile(tile, service, charted) {
    const { element } = tile;
    element.classList.remove('status-ok', 'status-warning', 'status-violated');
    element.classList.add(`status-${service.status}`);
    $('.tile-name', element).textContent = service.display_name || service.id;
    $('.tile-id', element).textContent = service.display_name ? service.id : '';
    render(
      $('.tile-status', element),
      html`<span class="pill pill-${service.status}">${STATUS_TEXT[service.status] ?? service.status}</span>`,
    );
    render(
      $('.tile-counts', element),
      html`<span><strong>${service.firing}</strong> firing</span><span><strong>${service.open}</strong> open</span>`,
    );
    tile.charted = charted;
    const metricsElement = $('.tile-metrics', element);
    const wanted = new Set(charted ? service.metric_types : []);
    for (const [metricType, metric] of tile.charts) {
      if (!wanted.has(metricType)) {
        metric.chart.destroy();
        metric.element.remove();
        tile.charts.delete(metricType);
      }
    }
    let added = false;
    if (charted) {
      service.metric_types.forEach((metricType, index) => {
        if (tile.charts.has(metricType)) return;
        const metric = createMetricChart(metricType, PALETTE[index % PALETTE.length]);
        tile.charts.set(metricType, metric);
        metricsElement.append(metric.element);
        added = true;
      });
    }
    const names = $('.tile-metric-names', element);
    names.textContent = service.metric_types.join(' · ');
    names.hidden = charted || service.metric_types.length === 0;
    $('.tile-empty', element).hidden = service.metric_types.length > 0;
    return added;
  }

  function createMetricChart(metricType, color) {
    const element = document.createElement('div');
    element.className = 'metric';
    element.dataset.metric = metricType;
    element.innerHTML = html`<div class="metric-head"><span>${metricType}</span><span class="metric-value"></span></div>
      <div class="spark"></div>`.toString();
    const chart = timeChart($('.spark', element), {
      series: [{ label: metricType, stroke: color, fill: `${color}14` }],
      height: 90,
      compact: true,
    });
    return { metricType, element, chart, times: [], values: [] };
  }

  /** The last hour of every metric of these services, in one request. */
  async function loadCharts(serviceIds) {
    const now = Date.now();
    try {
      const { data } = await api('/api/metrics/charts', {
        query: {
          service_ids: serviceIds.join(','),
          from: new Date(now - HOUR * 1000).toISOString(),
          to: new Date(now).toISOString(),
          bucket: '1m',
        },
      });
      if (destroyed) return;
      const buckets = new Map(data.map((series) => [`${series.service_id}/${series.metric_type}`, series.buckets]));
      for (const id of serviceIds) {
        tiles.get(id)?.charts.forEach((metric) => setHistory(metric, buckets.get(`${id}/${metric.metricType}`) ?? []));
      }
    } catch (error) {
      if (destroyed) return;
      for (const id of serviceIds) {
        tiles.get(id)?.charts.forEach((metric) => {
          $('.metric-value', metric.element).textContent = `chart unavailable: ${error.message}`;
        });
      }
    }
  }

  /** Keeps the streamed points that arrived meanwhile and are newer than the last bucket. */
  function setHistory(metric, buckets) {
    const coveredUntil = buckets.length ? toSeconds(buckets[buckets.length - 1].bucket_start) + 60 : -Infinity;
    const newer = metric.times.findIndex((t) => t >= coveredUntil);
    const keep = newer === -1 ? 0 : metric.times.length - newer;
    metric.times = [...buckets.map((bucket) => toSeconds(bucket.bucket_start)), ...metric.times.slice(metric.times.length - keep)];
    metric.values = [...buckets.map((bucket) => bucket.avg), ...metric.values.slice(metric.values.length - keep)];
    drawMetric(metric);
  }

  function drawMetric(metric) {
    const now = Date.now() / 1000;
    const start = now - HOUR;
    let drop = 0;
    while (drop < metric.times.length && metric.times[drop] < start) drop += 1;
    if (drop) {
      metric.times.splice(0, drop);
      metric.values.splice(0, drop);
    }
    metric.chart.setData([metric.times, metric.values], { xRange: [start, now] });
    const last = metric.values[metric.values.length - 1];
    $('.metric-value', metric.element).textContent = last == null ? '' : formatNumber(last);
  }

  /** Per-second aggregates go in at their own time, so out-of-order points still sort. */
  function addPoints(points) {
    const touched = new Set();
    let unknown = false;
    for (const point of points) {
      const tile = tiles.get(point.service_id);
      if (tile && !tile.charted) continue; // dropped from the charted tiles; the stream follows
      const metric = tile?.charts.get(point.metric_type);
      if (!metric) {
        const key = `${point.service_id}/${point.metric_type}`;
        unknown ||= !unknownSeries.has(key);
        unknownSeries.add(key);
        continue;
      }
      const t = toSeconds(point.t);
      let index = metric.times.length;
      while (index > 0 && metric.times[index - 1] > t) index -= 1;
      if (index > 0 && metric.times[index - 1] === t) metric.values[index - 1] = point.avg;
      else {
        metric.times.splice(index, 0, t);
        metric.values.splice(index, 0, point.avg);
      }
      touched.add(metric);
    }
    touched.forEach(drawMetric);
    if (unknown) scheduleRefresh(); // a metric the tiles do not show yet
  }

  refresh();

  return {
    onEvent(type, data, info) {
      if (type === 'points') addPoints(data.points ?? []);
      else if (type === 'health') renderHealth(view, data);
      else if (REFRESH_EVENTS.has(type) && !(type === 'incident' && QUIET_INCIDENT_KINDS.has(data.kind))) {
        if (type === 'hello' && info.resumed) chartsStale = true;
        scheduleRefresh();
      }
    },
    destroy() {
      destroyed = true;
      scheduleRefresh.cancel();
      tiles.forEach((tile) => tile.charts.forEach((metric) => metric.chart.destroy()));
    },
  };
}

function statCard(kind, label) {
  return html`<div class="card stat stat-${kind}">
    <div class="stat-value" data-stat="${kind}">–</div><div class="stat-label">${label}</div>
  </div>`;
}

function renderSummary(view, counts) {
  const values = { open: counts.open, progress: counts.in_progress, closed: counts.closed, firing: counts.firing };
  for (const [kind, value] of Object.entries(values)) {
    $(`[data-stat="${kind}"]`, view).textContent = String(value);
  }
}

function renderRecent(view, incidents) {
  render(
    $('#recent', view),
    html`<div class="card-head"><h2>Latest incidents</h2><a class="small" href="#/incidents">All incidents</a></div>
      ${incidents.length === 0
        ? html`<div class="muted">No incidents yet.</div>`
        : html`<ul class="list">${incidents.map(
            (incident) => html`<li>
              <div class="list-row">${severityBadge(incident.severity)}
                <a class="grow" href="#/incidents/${incident.id}" data-incident="${incident.id}" title="${incident.message}">${incident.rule_name}</a>
                ${statusBadge(incident.status)}</div>
              <div class="muted small"><span class="mono">${incident.service_id}</span> · ${time(incident.opened_at)}
                · ${incident.resolved_at ? 'resolved' : 'firing'}</div>
            </li>`,
          )}</ul>`}`,
  );
}

function renderTopRules(view, topRules) {
  const most = Math.max(1, ...topRules.map((rule) => rule.count));
  render(
    $('#top-rules', view),
    html`<div class="card-head"><h2>Most triggered rules</h2><a class="small" href="#/rules">All rules</a></div>
      ${topRules.length === 0
        ? html`<div class="muted">No rule has fired yet.</div>`
        : html`<ul class="list">${topRules.map(
            (rule) => html`<li>
              <div class="list-row"><a class="grow" href="#/rules/${rule.rule_id}">${rule.name}</a>
                ${rule.enabled ? '' : html`<span class="badge" data-rule-disabled>disabled</span>`}
                <strong class="num">${rule.count}</strong></div>
              <div class="bar"><span style="width:${raw(Math.round((rule.count / most) * 100))}%"></span></div>
            </li>`,
          )}</ul>`}`,
  );
}

function renderHealth(view, pipeline) {
  const latency = pipeline.detection_latency ?? { count: null, p50_seconds: null, p99_seconds: null };
  render(
    $('#health', view),
    html`<div class="card-head"><h2>Pipeline health</h2><span class="muted small">${time(pipeline.at)}</span></div>
      <div class="health-figures">
        <div><strong data-figure="ingest">${pipeline.ingest_per_second == null ? '—' : formatNumber(pipeline.ingest_per_second, 1)}</strong><span>samples/s</span></div>
        <div><strong>${formatSeconds(latency.p50_seconds)}</strong><span>detect p50</span></div>
        <div><strong>${formatSeconds(latency.p99_seconds)}</strong><span>detect p99</span></div>
      </div>
      <div class="muted small">${latency.count == null
        ? 'Detection latency is unavailable right now'
        : `${latency.count} detection${latency.count === 1 ? '' : 's'} in the last ${Math.round(latency.window_seconds / 60)} min`}</div>
      <div class="table-wrap"><table class="small">
        <thead><tr><th>Consumer</th><th class="num">Lag</th><th class="num">Unacked</th></tr></thead>
        <tbody>${pipeline.consumers.map(
          (consumer) => html`<tr><td><span class="mono">${consumer.name}</span> <span class="muted small">${consumer.stream}</span></td>
            <td class="num">${consumer.pending}</td><td class="num">${consumer.ack_pending}</td></tr>`,
        )}</tbody>
      </table></div>`,
  );
}
