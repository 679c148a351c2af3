// The REST client: the stored API key, JSON requests and the API's error envelope.

const KEY_STORAGE = 'tracely.api_key';
const unauthorizedListeners = new Set();

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** Per-field problems of a 422, as `[{field, message}]`. */
  get fieldErrors() {
    return Array.isArray(this.details) ? this.details.filter((d) => d && d.field) : [];
  }
}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE);
}

export function setKey(key) {
  localStorage.setItem(KEY_STORAGE, key.trim());
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
}

export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

function reportUnauthorized(error) {
  forgetKey();
  unauthorizedListeners.forEach((listener) => listener(error));
}

function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function buildUrl(path, query) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value === '' || value == null) continue;
    url.searchParams.set(name, value);
  }
  return url;
}

async function errorFrom(response) {
  let envelope = null;
  try {
    envelope = (await response.json())?.error;
  } catch {
    // not the API's envelope (a proxy, say): fall back to the status line
  }
  return new ApiError(
    response.status,
    envelope?.code ?? `http_${response.status}`,
    envelope?.message ?? `${response.status} ${response.statusText || 'request failed'}`,
    envelope?.details ?? null,
  );
}

/** Sends a request to the API; resolves to the parsed body (null for 204), rejects with ApiError. */
export async function api(path, { method = 'GET', query, body, signal } = {}) {
  const headers = { Accept: 'application/json', ...authHeaders() };
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(buildUrl(path, query), init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', `Cannot reach Tracely: ${error.message}`, null);
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) reportUnauthorized(error);
    throw error;
  }
  if (response.status === 204) return null;
  return response.json();
}

/** Opens the server-sent event stream; the caller reads the body. */
export async function openStream(services, signal) {
  const query = services.length ? { services: services.join(',') } : {};
  const response = await fetch(buildUrl('/api/stream', query), {
    headers: { Accept: 'text/event-stream', ...authHeaders() },
    signal,
    cache: 'no-store',
  });
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) reportUnauthorized(error);
    throw error;
  }
  return response;
}
