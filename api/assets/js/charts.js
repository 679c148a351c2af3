// Time-series charts on uPlot (loaded globally from /assets/vendor), with an optional threshold
// line and shaded time spans (incidents).

import { formatNumber } from './dom.js';

const { uPlot } = window;

export const PALETTE = ['#2563eb', '#0d9488', '#7c3aed', '#db2777', '#ea580c', '#65a30d', '#0891b2', '#9333ea'];

const AXIS_COLOR = '#6b7280';
const GRID_COLOR = '#e9ecf2';
const THRESHOLD_COLOR = '#dc2626';
const SPAN_FILL = 'rgba(220, 38, 38, 0.10)';
const SPAN_EDGE = 'rgba(220, 38, 38, 0.45)';

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const day = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

/** Tick labels on one line: the time of day, with the date only when the chart spans days. */
function timeTicks(u, ticks, axisIndex, space, increment) {
  const span = u.scales.x.max - u.scales.x.min;
  return ticks.map((t) => {
    const date = new Date(t * 1000);
    if (increment >= 86400) return day.format(date);
    return span > 86400 ? `${day.format(date)} ${clock.format(date)}` : clock.format(date);
  });
}

function paddedRange(low, high, threshold, fromZero) {
  let lo = low;
  let hi = high;
  if (threshold != null) {
    lo = lo == null ? threshold : Math.min(lo, threshold);
    hi = hi == null ? threshold : Math.max(hi, threshold);
  }
  if (lo == null || hi == null) return [0, 1];
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
  return [fromZero && lo >= 0 ? 0 : lo - pad, hi + pad];
}

function drawSpans(u, spans) {
  const { ctx, bbox } = u;
  const left = bbox.left;
  const right = bbox.left + bbox.width;
  ctx.save();
  for (const span of spans) {
    const x0 = Math.max(left, u.valToPos(span.from, 'x', true));
    const x1 = Math.min(right, u.valToPos(span.to, 'x', true));
    if (!(x1 > x0 - 1)) continue;
    const width = Math.max(x1 - x0, 2 * uPlot.pxRatio);
    ctx.fillStyle = SPAN_FILL;
    ctx.fillRect(x0, bbox.top, width, bbox.height);
    ctx.fillStyle = SPAN_EDGE;
    ctx.fillRect(x0, bbox.top, uPlot.pxRatio, bbox.height);
  }
  ctx.restore();
}

function drawThreshold(u, threshold) {
  const { ctx, bbox } = u;
  const y = Math.round(u.valToPos(threshold, 'y', true));
  if (y < bbox.top || y > bbox.top + bbox.height) return;
  const ratio = uPlot.pxRatio;
  ctx.save();
  ctx.strokeStyle = THRESHOLD_COLOR;
  ctx.lineWidth = 1.5 * ratio;
  ctx.setLineDash([6 * ratio, 4 * ratio]);
  ctx.beginPath();
  ctx.moveTo(bbox.left, y);
  ctx.lineTo(bbox.left + bbox.width, y);
  ctx.stroke();
  ctx.fillStyle = THRESHOLD_COLOR;
  ctx.font = `${11 * ratio}px system-ui, sans-serif`;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'bottom';
  ctx.fillText(`threshold ${formatNumber(threshold)}`, bbox.left + bbox.width - 4 * ratio, y - 3 * ratio);
  ctx.restore();
}

function axis(compact) {
  return {
    stroke: AXIS_COLOR,
    font: `${compact ? 10 : 11}px system-ui, sans-serif`,
    grid: { stroke: GRID_COLOR, width: 1 },
    ticks: { show: false },
  };
}

/**
 * A time chart in `container`. `series` are {label, stroke, width?, dash?, fill?}; data is
 * [times in seconds, values per series...]. Options: threshold, spans [{from, to}] in seconds,
 * xRange [min, max] in seconds, compact (small, no legend), height.
 */
export function timeChart(container, { series, height = 240, compact = false, ...options }) {
  const state = {
    threshold: options.threshold ?? null,
    spans: options.spans ?? [],
    xRange: options.xRange ?? null,
  };
  const chart = new uPlot(
    {
      width: Math.max(container.clientWidth, 120),
      height,
      legend: { show: !compact },
      cursor: { y: false, points: { size: compact ? 5 : 7 }, drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: (u, min, max) => state.xRange ?? [min, max] },
        // Full charts keep zero in sight; the small ones use their height for the variation.
        y: { range: (u, min, max) => paddedRange(min, max, state.threshold, !compact) },
      },
      axes: [
        { ...axis(compact), size: compact ? 22 : 30, space: compact ? 50 : 70, values: timeTicks },
        {
          ...axis(compact),
          size: compact ? 38 : 52,
          space: compact ? 20 : 30,
          values: (u, ticks) => ticks.map((tick) => formatNumber(tick, 1)),
        },
      ],
      series: [
        { value: (u, v) => (v == null ? '—' : new Date(v * 1000).toLocaleString()) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          width: s.width ?? (compact ? 1.25 : 1.5),
          dash: s.dash,
          fill: s.fill,
          spanGaps: true,
          points: { show: false },
          value: (u, v) => (v == null ? '—' : formatNumber(v)),
        })),
      ],
      hooks: {
        drawClear: [(u) => drawSpans(u, state.spans)],
        draw: [(u) => state.threshold != null && drawThreshold(u, state.threshold)],
      },
    },
    options.data ?? [[], ...series.map(() => [])],
    container,
  );
  const resize = new ResizeObserver(() => {
    const width = container.clientWidth;
    if (width > 0 && width !== chart.width) chart.setSize({ width, height });
  });
  resize.observe(container);
  return {
    setData(data, update = {}) {
      Object.assign(state, update);
      chart.setData(data);
    },
    destroy() {
      resize.disconnect();
      chart.destroy();
    },
  };
}

/** Aligns several [times, values] series on one time axis. */
export function alignSeries(list) {
  if (list.length === 0) return [[]];
  if (list.length === 1) return [list[0][0], list[0][1]];
  return uPlot.join(list);
}

export const toSeconds = (iso) => Date.parse(iso) / 1000;
