// The page's service worker: it lets the <audio> element play a job's recording from the authenticated,
// Range-honouring GET /v1/jobs/{id}/audio without the key ever being part of a URL.
//
// The player's source is the same-origin path /ui/audio/<job id>. The media element fetches it in byte
// ranges as it plays and seeks; this worker answers each of those requests by asking the tab that made it
// for its key (kept in that tab's sessionStorage; nothing is stored here) and forwarding the request, with
// its Range header, to the API as a bearer request. The API's 206 / 416 answer goes back as it is, so an
// hour-long recording streams and seeks like any media file, and only the ranges played are downloaded.
// Every other request of the page goes to the network untouched.

const AUDIO = /^\/ui\/audio\/([0-9a-fA-F-]{36})$/;
const ASK_TIMEOUT_MS = 5000;

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || event.request.method !== 'GET') return;
  const m = AUDIO.exec(url.pathname);
  if (m) event.respondWith(audio(event, m[1]));
});

function ask(client) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), ASK_TIMEOUT_MS);
    channel.port1.onmessage = (e) => {
      clearTimeout(timer);
      resolve(e.data && typeof e.data.key === 'string' ? e.data.key : null);
    };
    client.postMessage({ type: 'asrq-key?' }, [channel.port2]);
  });
}

async function keyFor(event) {
  // the tab that holds the player; its key is the one that may read this job
  const own = event.clientId ? await self.clients.get(event.clientId) : null;
  if (own) return ask(own);
  for (const client of await self.clients.matchAll({ type: 'window' })) {
    const key = await ask(client);
    if (key) return key;
  }
  return null;
}

async function audio(event, jobId) {
  const key = await keyFor(event);
  if (!key) return new Response('sign in to play this recording', { status: 401, headers: { 'Content-Type': 'text/plain' } });
  const headers = new Headers({ Authorization: `Bearer ${key}` });
  const range = event.request.headers.get('Range');
  if (range) headers.set('Range', range);
  return fetch(`/v1/jobs/${jobId}/audio`, {
    headers, cache: 'no-store', credentials: 'omit', mode: 'same-origin', signal: event.request.signal,
  });
}
