// The live stream: GET /api/stream read with fetch (EventSource cannot send the key), parsed as
// server-sent events, dispatched to subscribers, reopened with backoff.

import { openStream } from './api.js';

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 15000;
// The server sends a keep-alive comment every 15 s; silence for longer means a dead connection.
const SILENCE_LIMIT_MS = 45000;
const MAX_SERVICES = 100;

const subscribers = new Set();
const stateListeners = new Set();
let services = [];
let controller = null;
let retryDelay = FIRST_RETRY_MS;
let retryTimer = null;
let silenceTimer = null;
let running = false;
let failedSinceLastHello = false;
let greetedOnThisConnection = false;

/**
 * Registers fn(type, data, info) for every event. For `hello`, info.resumed says whether events
 * may have been missed since the page last heard.
 */
export function subscribe(fn) {
  subscribers.add(fn);
}

/** Registers fn(state, detail) for connection changes: connecting, live, reconnecting, stopped. */
export function onStateChange(fn) {
  stateListeners.add(fn);
}

/** Sets the services whose metric points to stream; reopens the stream when the set changes. */
export function watchServices(ids) {
  const next = [...new Set(ids)].sort().slice(0, MAX_SERVICES);
  if (next.join(',') === services.join(',')) return;
  services = next;
  if (running) restart();
}

export function start() {
  if (running) return;
  running = true;
  retryDelay = FIRST_RETRY_MS;
  connect();
}

export function stop() {
  running = false;
  clearTimeout(retryTimer);
  clearTimeout(silenceTimer);
  controller?.abort();
  controller = null;
  setState('stopped');
}

function restart() {
  clearTimeout(retryTimer);
  controller?.abort();
  retryDelay = FIRST_RETRY_MS;
  connect();
}

function setState(state, detail = {}) {
  stateListeners.forEach((fn) => fn(state, detail));
}

async function connect() {
  const attempt = new AbortController();
  controller = attempt;
  greetedOnThisConnection = false;
  setState(failedSinceLastHello ? 'reconnecting' : 'connecting');
  try {
    const response = await openStream(services, attempt.signal);
    await readEvents(response.body, attempt);
    throw new Error('the stream ended');
  } catch (error) {
    clearTimeout(silenceTimer);
    if (attempt.signal.aborted && controller !== attempt) return; // replaced by a newer connection
    if (!running) return;
    if (error?.status === 401) {
      stop();
      return;
    }
    failedSinceLastHello = true;
    scheduleRetry(error);
  }
}

function scheduleRetry(error) {
  const delay = retryDelay;
  retryDelay = Math.min(retryDelay * 2, MAX_RETRY_MS);
  setState('reconnecting', { delay, reason: error?.message });
  retryTimer = setTimeout(connect, delay);
}

function armSilenceTimer(attempt) {
  clearTimeout(silenceTimer);
  silenceTimer = setTimeout(() => attempt.abort(), SILENCE_LIMIT_MS);
}

async function readEvents(body, attempt) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = { type: 'message', data: [] };
  armSilenceTimer(attempt);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    armSilenceTimer(attempt);
    buffer += value;
    const lines = buffer.split('\n');
    buffer = lines.pop();
    for (const rawLine of lines) {
      const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
      if (line === '') {
        if (event.data.length) dispatch(event.type, event.data.join('\n'));
        event = { type: 'message', data: [] };
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        const text = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event.type = text;
        else if (field === 'data') event.data.push(text);
      }
    }
  }
}

function dispatch(type, text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    return; // every documented event carries JSON; anything else is not for us
  }
  const info = {};
  if (type === 'hello') {
    // A hello after a failure, or a second one on a connection, means events may have been missed.
    info.resumed = failedSinceLastHello || greetedOnThisConnection;
    greetedOnThisConnection = true;
    failedSinceLastHello = false;
    retryDelay = FIRST_RETRY_MS;
    setState('live');
  }
  subscribers.forEach((fn) => fn(type, data, info));
}
