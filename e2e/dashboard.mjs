// End-to-end check of the dashboard in headless Chromium against a running Tracely.
//
//   TRACELY_URL=http://127.0.0.1:8080 TRACELY_KEY=trk_… TRACELY_ARTIFACTS=/tmp/shots node e2e/dashboard.mjs
//
// It sets up a department, an in-app channel, a rule and a few services over REST, then drives
// the pages a person would use, saving a screenshot of each in TRACELY_ARTIFACTS, and finally
// looks at them with a viewer key. It works on an empty system and also on one that already has
// data: its service ids carry a per-run suffix. Any browser console error, 5xx answer or error
// toast fails it. Exits 0 on success; on failure it prints the step, the page URL and saves
// failure.png.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE_URL = (process.env.TRACELY_URL ?? '').replace(/\/+$/, '');
const KEY = process.env.TRACELY_KEY ?? '';
const ARTIFACTS = process.env.TRACELY_ARTIFACTS ?? '';
const STEP_TIMEOUT_MS = 15_000;

if (!BASE_URL || !KEY || !ARTIFACTS) {
  console.error('Set TRACELY_URL, TRACELY_KEY (an admin key) and TRACELY_ARTIFACTS (a directory for screenshots).');
  process.exit(2);
}

const RUN = Date.now().toString(36).slice(-5);
const CHECKOUT = `checkout-${RUN}`;
// Services with a little history so the overview has lines to draw: [id, name, metric, base, swing].
const SERVICES = [
  [CHECKOUT, 'Checkout', 'LATENCY_MS', 140, 40],
  [`payments-${RUN}`, 'Payments', 'LATENCY_MS', 85, 25],
  [`payments-${RUN}`, 'Payments', 'ERROR_RATE', 0.6, 0.4],
  [`search-${RUN}`, 'Search', 'LATENCY_MS', 210, 60],
  [`streaming-${RUN}`, 'Streaming', 'BUFFER_RATIO', 2.5, 1.5],
];
const HISTORY_MINUTES = 45;
const HISTORY_STEP_SECONDS = 20;

// ---------------------------------------------------------------- REST helpers

async function rest(method, route, body) {
  const response = await fetch(`${BASE_URL}${route}`, {
    method,
    headers: {
      Authorization: `Bearer ${KEY}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const payload = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(`${method} ${route} answered ${response.status}: ${payload?.error?.message ?? text}`);
  }
  return payload;
}

/** Polls check() until it returns something truthy, for at most a step's timeout. */
async function until(what, check) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${STEP_TIMEOUT_MS / 1000} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const iso = (ms) => new Date(ms).toISOString();

function history(now) {
  const samples = [];
  const first = now - HISTORY_MINUTES * 60_000;
  const last = now - 2 * 60_000; // leaves room for the violation, which must come after
  SERVICES.forEach(([serviceId, , metricType, base, swing], series) => {
    for (let t = first, i = 0; t <= last; t += HISTORY_STEP_SECONDS * 1000, i += 1) {
      const wave = Math.sin(i / 9 + series) * 0.6 + Math.sin(i / 2.3 + series * 2) * 0.4;
      samples.push({
        service_id: serviceId,
        metric_type: metricType,
        value: Number((base + swing * wave).toFixed(3)),
        recorded_at: iso(t),
        id: `e2e-${serviceId}-${metricType}-${i}`,
      });
    }
  });
  return samples.sort((a, b) => a.recorded_at.localeCompare(b.recorded_at));
}

// ---------------------------------------------------------------- the run

const consoleErrors = [];
const serverErrors = [];
const errorToasts = [];
let browser;
let page;
let stepNumber = 0;

async function step(name, body) {
  stepNumber += 1;
  const started = Date.now();
  try {
    await body();
    // Handlers report their failures (a JS exception included) as error toasts, not on the console.
    if (errorToasts.length) throw new Error(`error toasts appeared:\n  ${errorToasts.join('\n  ')}`);
  } catch (error) {
    error.step = `${stepNumber}. ${name}`;
    throw error;
  }
  console.log(`ok ${stepNumber} - ${name} (${Date.now() - started} ms)`);
}

/** A browser context whose pages report console errors, page errors, 5xx answers and error toasts. */
async function watchedContext(label) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  await context.exposeFunction('__reportErrorToast', (text) => errorToasts.push(`${label}: ${text}`));
  await context.addInitScript(() => {
    const watch = () => {
      new MutationObserver((records) => {
        for (const record of records) {
          for (const node of record.addedNodes) {
            if (node.nodeType === Node.ELEMENT_NODE && node.matches('.toast-error')) {
              window.__reportErrorToast(node.firstChild?.textContent ?? node.textContent);
            }
          }
        }
      }).observe(document.body, { childList: true, subtree: true });
    };
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', watch);
    else watch();
  });
  const contextPage = await context.newPage();
  contextPage.setDefaultTimeout(STEP_TIMEOUT_MS);
  contextPage.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(`${label} console: ${message.text()} (${message.location().url ?? ''})`);
  });
  contextPage.on('pageerror', (error) => consoleErrors.push(`${label} page error: ${error.message}`));
  contextPage.on('response', (response) => {
    if (response.status() >= 500) serverErrors.push(`${label}: HTTP ${response.status()} from ${response.request().method()} ${response.url()}`);
  });
  return contextPage;
}

async function waitForCount(selector, expected) {
  await page.waitForFunction(
    ([sel, count]) => {
      const badge = document.querySelector(sel);
      const shown = badge && !badge.hidden ? Number(badge.dataset.count) : 0;
      return shown === count;
    },
    [selector, expected],
  );
}

async function main() {
  page = await watchedContext('admin');
  // Screenshots are for people (the README uses them): no passing toasts, no hover effects.
  // Error toasts were reported as they appeared, so dismissing them hides nothing.
  const shot = async (name) => {
    await page.locator('.toast-close').evaluateAll((buttons) => buttons.forEach((button) => button.click()));
    await page.mouse.move(0, 767);
    await page.screenshot({ path: path.join(ARTIFACTS, name) });
  };
  const state = {};

  await step('set up a department, an in-app channel, a rule and services over REST', async () => {
    const department = await rest('POST', '/api/departments', {
      name: `Checkout team ${RUN}`,
      description: 'Owns checkout latency (created by the dashboard e2e test)',
    });
    state.department = department.data;
    await rest('POST', `/api/departments/${state.department.id}/channels`, { type: 'in_app', name: 'Inbox' });
    const rule = await rest('POST', '/api/rules', {
      name: `Checkout latency ${RUN}`,
      metric_type: 'LATENCY_MS',
      service_id: CHECKOUT,
      operator: '>',
      threshold: 500,
      severity: 'HIGH',
      department_id: state.department.id,
    });
    state.rule = rule.data;
    const now = Date.now();
    await rest('POST', '/api/metrics', history(now));
    for (const [serviceId, displayName] of new Map(SERVICES.map(([id, name]) => [id, name]))) {
      await until(`service ${serviceId} to be registered`, async () => {
        const services = await rest('GET', `/api/services?limit=1000`);
        return services.data.some((service) => service.id === serviceId);
      });
      await rest('PATCH', `/api/services/${serviceId}`, {
        display_name: displayName,
        department_id: serviceId === CHECKOUT ? state.department.id : null,
      });
    }
    // The charts read per-minute rollups, which the archive consumer writes shortly after.
    for (const [serviceId, , metricType] of SERVICES) {
      await until(`chart data of ${serviceId} ${metricType}`, async () => {
        const query = new URLSearchParams({
          service_id: serviceId,
          metric_type: metricType,
          from: iso(now - 3_600_000),
          to: iso(now),
          bucket: '1m',
        });
        const chart = await rest('GET', `/api/metrics/chart?${query}`);
        return chart.data.length >= HISTORY_MINUTES - 3;
      });
    }
  });

  await step('open the dashboard with ?key= and see the services', async () => {
    await page.goto(`${BASE_URL}/?key=${encodeURIComponent(KEY)}`);
    const url = new URL(page.url());
    if (url.search.includes('key=') || url.hash.includes('key=') || page.url().includes(KEY)) {
      throw new Error(`the key is still in the URL: ${page.url()}`);
    }
    await page.locator(`.tile.status-ok[data-service="${CHECKOUT}"]`).waitFor();
    for (const [serviceId, , metricType] of SERVICES) {
      await page.waitForFunction(
        ([id, metric]) => document.querySelector(`.tile[data-service="${id}"] .metric[data-metric="${metric}"] .metric-value`)?.textContent,
        [serviceId, metricType],
      );
    }
    // The ingest rate needs two of the server's measurements, 5 s apart; health events bring it.
    await page.waitForFunction(() => /\d/.test(document.querySelector('#health [data-figure="ingest"]')?.textContent ?? ''));
    await page.locator('#live-indicator[data-state="live"]').waitFor();
    await page.locator('#whoami .role-badge', { hasText: 'admin' }).waitFor();
    await shot('overview.png');
  });

  await step('a violation turns the tile red and lists the incident without a reload', async () => {
    await page.evaluate(() => {
      window.__marker = 1;
    });
    const now = Date.now();
    // Spread over more than the allowed lateness (30 s), so a windowed rule's backtest sees a
    // complete window whatever the wall clock does next.
    const violation = [32, 24, 16, 8, 0].map((secondsAgo) => ({
      service_id: CHECKOUT,
      metric_type: 'LATENCY_MS',
      value: 900,
      recorded_at: iso(now - secondsAgo * 1000),
      id: `e2e-${CHECKOUT}-violation-${secondsAgo}`,
    }));
    await rest('POST', '/api/metrics', violation);
    await page.locator(`.tile.status-violated[data-service="${CHECKOUT}"]`).waitFor();
    const incidents = await until('the incident in the API', async () => {
      const list = await rest('GET', `/api/incidents?service_id=${CHECKOUT}`);
      return list.data.length ? list.data : null;
    });
    state.incident = incidents[0];
    await page.locator(`#recent a[data-incident="${state.incident.id}"]`).waitFor();
    const marker = await page.evaluate(() => window.__marker);
    if (marker !== 1) throw new Error('the page reloaded or navigated while waiting for live updates');
    await shot('overview-violated.png');

    // A rule change reaches the overview through the stream, without a reload.
    const changed = Date.now();
    await rest('PATCH', `/api/rules/${state.rule.id}`, { enabled: false });
    await page.locator('#top-rules [data-rule-disabled]').waitFor();
    console.log(`# the disabled rule showed on the overview ${Date.now() - changed} ms after the change`);
    await rest('PATCH', `/api/rules/${state.rule.id}`, { enabled: true });
    await page.locator('#top-rules [data-rule-disabled]').waitFor({ state: 'detached' });
    if ((await page.evaluate(() => window.__marker)) !== 1) throw new Error('the page reloaded');
  });

  await step('open the incident, comment on it and start work', async () => {
    await page.locator(`#recent a[data-incident="${state.incident.id}"]`).click();
    await page.waitForURL(`**/#/incidents/${state.incident.id}`);
    await page.locator('#incident-title', { hasText: state.rule.name }).waitFor();
    await page.locator('#incident-chart canvas').first().waitFor();
    await page.locator('#timeline [data-kind="CREATED"]').waitFor();
    await page.locator('#timeline [data-kind="NOTIFIED"]').first().waitFor();
    await shot('incident.png');

    const comment = `Looking into it (${RUN})`;
    await page.locator('#comment-form textarea').fill(comment);
    await page.locator('#comment-form button[type="submit"]').click();
    await page.locator('#comments .comment-body', { hasText: comment }).waitFor();

    await page.locator('#status-moves [data-status="IN_PROGRESS"]').click();
    await page.locator('#incident-status', { hasText: 'In progress' }).waitFor();
    await page.locator('#timeline [data-kind="STATUS_CHANGED"]', { hasText: 'In progress' }).waitFor();
  });

  await step('create a rule through the form after a backtest preview', async () => {
    await page.locator('a[data-nav="rules"]').click();
    await page.locator(`#rule-rows tr[data-rule="${state.rule.id}"]`).waitFor();
    await page.locator('a[href="#/rules/new"]').first().click();
    const form = page.locator('#rule-form[data-ready]');
    await form.waitFor();
    const name = `Checkout average latency ${RUN}`;
    await form.locator('[name="metric_type"]').fill('LATENCY_MS');
    await form.locator('[name="service_id"]').fill(CHECKOUT);
    await form.locator('[name="aggregation"]').selectOption('avg');
    await form.locator('[name="window"]').fill('1m');
    await form.locator('[name="operator"]').selectOption('>');
    await form.locator('[name="threshold"]').fill('300');
    await form.locator('[name="severity"]').selectOption('MEDIUM');
    await form.locator('[name="name"]').fill(name);
    await page.locator('#backtest-period').selectOption('1h');
    await page.locator('#run-backtest').click();
    await page.locator('#backtest-chart canvas').first().waitFor();
    await page.waitForFunction(() => Number(document.querySelector('#backtest-count')?.textContent) >= 1);
    await page.locator('#backtest-incidents tbody tr').first().waitFor();
    await shot('rules.png');
    await page.locator('#save-rule').click();
    await page.waitForURL('**/#/rules');
    await page.locator('#rule-rows tr', { hasText: name }).waitFor();
  });

  await step('read the notification and see the unread count drop', async () => {
    // Opening the incident and starting work each notify the department's inbox.
    await until('both notifications of the incident', async () => {
      const list = await rest('GET', `/api/notifications?incident_id=${state.incident.id}`);
      return list.meta.total >= 2;
    });
    await page.locator('a[data-nav="notifications"]').click();
    const item = page.locator(`#inbox li.unread[data-incident="${state.incident.id}"]`).first();
    await item.waitFor();
    const unread = (await rest('GET', '/api/notifications/unread-count')).data.unread;
    await waitForCount('#unread-badge', unread);
    await item.locator('[data-mark="read"]').click();
    await waitForCount('#unread-badge', unread - 1);
    await page.locator(`#inbox li.read[data-incident="${state.incident.id}"]`).first().waitFor();
    await shot('notifications.png');
  });

  await step('visit incidents, departments and services, and search', async () => {
    await page.locator('a[data-nav="incidents"]').click();
    await page.locator(`#incident-rows tr[data-id="${state.incident.id}"]`).waitFor();
    await shot('incidents.png');

    await page.locator('a[data-nav="departments"]').click();
    const department = page.locator(`[data-department="${state.department.id}"]`);
    await department.waitFor();
    await page.locator(`#service-rows tr[data-service="${CHECKOUT}"]`).waitFor();
    // Channels load when a department is opened.
    await department.locator('summary').click();
    await department.locator('tr[data-channel]', { hasText: 'Inbox' }).waitFor();
    await shot('departments.png');

    await page.locator('#header-search input').fill(CHECKOUT);
    await page.locator('#header-search input').press('Enter');
    await page.waitForURL('**/#/search?q=*');
    await page.locator(`#hits [data-incident="${state.incident.id}"]`).waitFor();
    await page.locator('#search-engine').waitFor();
    await shot('search.png');
  });

  await step('a mangled link shows the not-found page', async () => {
    await page.evaluate(() => {
      location.hash = '#/incidents/%E0%A4%A';
    });
    await page.locator('.not-found').waitFor();
  });

  await step('on a phone-sized screen nothing scrolls sideways and search stays reachable', async () => {
    await page.setViewportSize({ width: 360, height: 740 });
    try {
      await page.locator('a[data-nav="departments"]').click();
      await page.locator(`#service-rows tr[data-service="${CHECKOUT}"]`).waitFor();
      const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      if (widths[0] > widths[1]) throw new Error(`the page is ${widths[0]} px wide in a ${widths[1]} px window`);
      await page.locator('#tools .search-link').click();
      await page.locator('#search-form input[name="q"]').waitFor();
    } finally {
      await page.setViewportSize({ width: 1366, height: 768 });
    }
  });

  await step('a viewer key sees the pages without the controls it may not use', async () => {
    const created = await rest('POST', '/api/keys', { name: `e2e viewer ${RUN}`, role: 'viewer' });
    const viewer = await watchedContext('viewer');
    try {
      await viewer.goto(`${BASE_URL}/?key=${encodeURIComponent(created.data.key)}`);
      await viewer.locator('#whoami .role-badge', { hasText: 'viewer' }).waitFor();
      await viewer.waitForFunction(
        (id) => document.querySelector(`.tile[data-service="${id}"] .metric .metric-value`)?.textContent,
        CHECKOUT,
      );

      await viewer.evaluate((id) => {
        location.hash = `#/incidents/${id}`;
      }, state.incident.id);
      await viewer.locator('#incident-title', { hasText: state.rule.name }).waitFor();
      await viewer.locator('#comments .comment-body', { hasText: RUN }).waitFor();
      for (const control of ['#incident-actions', '#status-moves', '#severity-select', '#comment-form', '[data-delete-comment]']) {
        if (await viewer.locator(control).count()) throw new Error(`a viewer sees ${control} on the incident page`);
      }
      await viewer.locator('.toast-close').evaluateAll((buttons) => buttons.forEach((button) => button.click()));
      await viewer.mouse.move(0, 767);
      await viewer.screenshot({ path: path.join(ARTIFACTS, 'viewer.png') });

      await viewer.locator('a[data-nav="rules"]').click();
      await viewer.locator(`#rule-rows tr[data-rule="${state.rule.id}"]`).waitFor();
      if (await viewer.locator('a[href="#/rules/new"]').count()) throw new Error('a viewer sees “New rule”');
      if (await viewer.locator('#rule-rows [data-threshold]').count()) throw new Error('a viewer can edit thresholds');
    } catch (error) {
      await viewer.screenshot({ path: path.join(ARTIFACTS, 'failure-viewer.png'), fullPage: true }).catch(() => {});
      throw error;
    } finally {
      await viewer.context().close();
      await rest('DELETE', `/api/keys/${created.data.id}`);
    }
  });

  if (consoleErrors.length || serverErrors.length || errorToasts.length) {
    const problems = [...consoleErrors, ...serverErrors, ...errorToasts].map((line) => `  ${line}`).join('\n');
    throw Object.assign(new Error(`the browser saw errors:\n${problems}`), { step: 'no console errors, 5xx or error toasts' });
  }
}

await mkdir(ARTIFACTS, { recursive: true });
browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let exitCode = 0;
try {
  await main();
  console.log(`dashboard e2e passed; screenshots in ${ARTIFACTS}`);
} catch (error) {
  exitCode = 1;
  console.error(`FAILED at step ${error.step ?? '(setup)'}: ${error.message}`);
  if (page) {
    console.error(`page URL: ${page.url()}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
  }
  if (consoleErrors.length) console.error(`browser errors so far:\n  ${consoleErrors.join('\n  ')}`);
  if (errorToasts.length) console.error(`error toasts so far:\n  ${errorToasts.join('\n  ')}`);
} finally {
  await browser.close();
}
process.exit(exitCode);
