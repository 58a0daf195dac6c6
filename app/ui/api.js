// The HTTP API, same origin. The tenant's key lives in sessionStorage (this tab only, gone when it closes),
// goes out only as the Authorization header, and is never written to a URL, the console or the DOM.

const KEY = 'asrq.apiKey';
const listeners = new Set();

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
  /** fn(reason) runs when the server refuses the key (401): the page shows the sign-in again. */
  onRefused(fn) { listeners.add(fn); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === 'string' ? detail : detailText(detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export function authHeader() {
  return `Bearer ${auth.key || ''}`;
}

async function detailOf(resp) {
  try {
    const body = await resp.json();
    return body && 'detail' in body ? body.detail : body;
  } catch {
    return resp.statusText || `HTTP ${resp.status}`;
  }
}

function refused(detail) {
  for (const fn of listeners) fn(typeof detail === 'string' ? detail : 'the key was refused');
}

/**
 * api('/v1/jobs', {query: {limit: 100}}) -> parsed JSON; {json: body} sends JSON; {raw: true} returns the
 * Response (downloads). A non-2xx answer throws ApiError carrying the server's detail.
 */
export async function api(path, { method = 'GET', query, json, body, headers, signal, raw = false } = {}) {
  const h = new Headers(headers);
  h.set('Authorization', authHeader());
  if (json !== undefined) {
    h.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  const resp = await fetch(url, { method, headers: h, body, signal, cache: 'no-store', credentials: 'omit' });
  if (resp.status === 401) {
    const detail = await detailOf(resp);
    refused(detail);
    throw new ApiError(401, detail);
  }
  if (!resp.ok) throw new ApiError(resp.status, await detailOf(resp));
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

/** XMLHttpRequest upload with progress events (fetch has none for request bodies). */
export function upload(form, { idempotencyKey, onProgress }) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open('POST', '/v1/jobs');
    xhr.setRequestHeader('Authorization', authHeader());
    if (idempotencyKey) xhr.setRequestHeader('Idempotency-Key', idempotencyKey);
    xhr.responseType = 'json';
    xhr.upload.addEventListener('progress', (e) => onProgress && onProgress(e.loaded, e.lengthComputable ? e.total : 0));
    xhr.addEventListener('load', () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const detail = body && 'detail' in body ? body.detail : `HTTP ${xhr.status}`;
      if (xhr.status === 401) refused(detail);
      reject(new ApiError(xhr.status, detail));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'the upload was interrupted (network error)')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'the upload was stopped')));
    xhr.send(form);
  });
  return { done, abort: () => xhr.abort() };
}

// ---- the server's errors, next to the field they concern ---------------------------------------------------

// pydantic's wording of a refused pattern means little to a person: say what is expected instead
const EXPECTED = {
  language: 'Use a language code such as en, zh or pt-BR, or leave it empty to detect the language.',
  engine: 'Choose an installed engine.',
};

function friendly(field, msg) {
  return field in EXPECTED && /^String should match pattern/.test(msg) ? EXPECTED[field] : msg;
}

const FIELDS = ['webhook_url', 'hotwords_file', 'hotwords', 'punc_model', 'model', 'engine', 'language',
  'formats', 'priority', 'itn', 'source_uri', 'batch', 'since', 'filename', 'state', 'from', 'to', 'ids'];
const WHERE = new Set(['body', 'query', 'path', 'form', 'header']);

/** A detail (FastAPI's list of {loc, msg}, or one sentence) -> [{field, msg, index}]; field null: general. */
export function fieldErrors(detail) {
  if (Array.isArray(detail)) {
    return detail.map((e) => {
      const loc = (e.loc || []).filter((p) => !WHERE.has(p));
      const field = loc.find((p) => typeof p === 'string' && FIELDS.includes(p)) ?? null;
      const jobIdx = (e.loc || []).indexOf('jobs');
      return { field, msg: friendly(field, e.msg || String(e)), index: jobIdx >= 0 ? e.loc[jobIdx + 1] : null };
    });
  }
  let msg = String(detail ?? '');
  let index = null;
  const m = /^jobs\[(\d+)\]: ([\s\S]*)$/.exec(msg);
  if (m) { index = Number(m[1]); msg = m[2]; }
  // the first field a sentence names is the one it is about ("model 'x' is not installed for engine …")
  let best = null;
  for (const f of FIELDS) {
    const at = new RegExp(`\\b${f}\\b`).exec(msg);
    if (at && (best === null || at.index < best.at)) best = { field: f, at: at.index };
  }
  return [{ field: best ? best.field : null, msg, index }];
}

export function detailText(detail) {
  if (Array.isArray(detail)) return detail.map((e) => {
    const loc = (e.loc || []).filter((p) => !WHERE.has(p)).join('.');
    return loc ? `${loc}: ${e.msg}` : e.msg;
  }).join('; ');
  return String(detail ?? '');
}
