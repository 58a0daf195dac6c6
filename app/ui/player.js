// The recording beside the transcript. See sw.js: the <audio> element's src is /ui/audio/<id>, which the
// service worker serves from the authenticated API with the element's own Range requests. Where no service
// worker can run (a plain-http address other than localhost), the recording is fetched with the bearer header
// into a Blob instead: the whole file, once.

import { api, auth, ApiError } from './api.js';

let registration = null;

function scriptURL() {
  // the page's CSP requires Trusted Types: the worker's URL goes through the one policy it allows
  const url = '/ui/sw.js';
  if (!window.trustedTypes) return url;
  if (!scriptURL.policy) {
    scriptURL.policy = window.trustedTypes.createPolicy('asrq-sw', {
      createScriptURL: (u) => { if (u !== url) throw new TypeError('unexpected script URL'); return u; },
    });
  }
  return scriptURL.policy.createScriptURL(url);
}

/** Answers the worker's "which key?" with this tab's key. Installed once, at start. */
export function listenForKeyRequests() {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.addEventListener('message', (e) => {
    if (e.data && e.data.type === 'asrq-key?' && e.ports[0]) e.ports[0].postMessage({ key: auth.key });
  });
  navigator.serviceWorker.startMessages();
}

/** True once a service worker controls this page (registered on first use; claims the page at once). */
export async function workerReady(timeoutMs = 8000) {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return false;
  if (navigator.serviceWorker.controller) return true;
  try {
    registration = registration || await navigator.serviceWorker.register(scriptURL(), { scope: '/ui/' });
  } catch {
    return false;
  }
  if (navigator.serviceWorker.controller) return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(!!navigator.serviceWorker.controller), timeoutMs);
    navigator.serviceWorker.addEventListener('controllerchange', () => { clearTimeout(timer); resolve(true); }, { once: true });
  });
}

/**
 * Point ``audio`` at the job's recording. Resolves to {mode: 'stream' | 'blob'} or throws ApiError
 * (404: the source was a URI; 410: removed by retention or delete) before the element is touched.
 */
export async function attachAudio(audio, jobId, onStatus) {
  // one byte first: a missing or removed recording is told in words, not as a silent broken player
  await api(`/v1/jobs/${jobId}/audio`, { headers: { Range: 'bytes=0-0' }, raw: true });
  if (await workerReady()) {
    audio.src = `/ui/audio/${jobId}`;
    return { mode: 'stream' };
  }
  onStatus && onStatus('Loading the recording…');
  const resp = await api(`/v1/jobs/${jobId}/audio`, { raw: true });
  const blob = await resp.blob();
  audio.src = URL.createObjectURL(blob);
  onStatus && onStatus('');
  return { mode: 'blob', release: () => URL.revokeObjectURL(audio.src) };
}

export { ApiError };
