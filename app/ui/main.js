// asrq's web page: sign in, send recordings, watch jobs, read a transcript beside its audio, usage.
// Plain ES modules served by the API at /ui/; routes live in the URL's hash (#/, #/job/<id>, #/usage).

import { api, auth, ApiError } from './api.js';
import { h, replace, announce } from './dom.js';
import { listenForKeyRequests } from './player.js';
import { homeView } from './home.js';
import { jobView } from './job.js';
import { usageView } from './usage.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const signout = document.getElementById('signout');
let current = null; // {dispose()} of the view on screen
let refusedReason = '';
let verifying = false; // a key being tried on the sign-in form: its 401 is that form's to tell

listenForKeyRequests();

auth.onRefused((reason) => {
  if (!auth.key || verifying) return;
  auth.clear();
  refusedReason = `Your key is no longer accepted (${reason}). Sign in again.`;
  route();
});

signout.addEventListener('click', () => {
  auth.clear();
  sessionStorage.removeItem('asrq.tenant');
  refusedReason = '';
  route();
});

function setNav(path) {
  for (const a of document.querySelectorAll('nav.main a')) {
    const here = a.getAttribute('href') === '#' + path || (path.startsWith('/job/') && a.getAttribute('href') === '#/');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

function showSignedIn() {
  const tenant = sessionStorage.getItem('asrq.tenant');
  who.textContent = tenant ? `Team: ${tenant}` : '';
  signout.hidden = false;
  document.body.classList.add('signed-in');
}

function signInView(root) {
  document.body.classList.remove('signed-in');
  who.textContent = '';
  signout.hidden = true;
  const input = h('input', {
    id: 'key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    'aria-describedby': 'key-hint key-error',
  });
  const error = h('p.field-error', { id: 'key-error', role: 'alert' });
  const button = h('button.primary', { type: 'submit' }, 'Sign in');
  // the input has no name: even a form submitted without this script puts nothing in a URL
  const form = h('form.signin', { novalidate: true, 'aria-labelledby': 'signin-h' },
    h('h1', { id: 'signin-h' }, 'Sign in'),
    h('p', {}, 'Enter your team\u2019s API key to send recordings and read their transcripts.'),
    h('div.field', {},
      h('label', { for: 'key' }, 'API key'),
      input,
      h('p.hint', { id: 'key-hint' }, 'Kept in this browser tab only, until you close it or sign out.'),
      error),
    button);
  if (refusedReason) error.textContent = refusedReason;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = 'Enter your API key.';
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    button.disabled = true;
    error.textContent = '';
    auth.set(key);
    verifying = true;
    try {
      const today = new Date().toISOString().slice(0, 10);
      const u = await api('/v1/usage', { query: { from: today, to: today } });
      verifying = false;
      sessionStorage.setItem('asrq.tenant', u.tenant);
      refusedReason = '';
      input.value = '';
      announce(`Signed in as ${u.tenant}`);
      route();
    } catch (err) {
      verifying = false;
      auth.clear();
      input.setAttribute('aria-invalid', 'true');
      error.textContent = err instanceof ApiError && err.status === 401
        ? `That key was not accepted (${err.message}). Check it and try again.`
        : `Could not reach the service: ${err.message}`;
      input.select();
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(root, form);
  input.focus();
  return { dispose() {} };
}

function notFound(root) {
  replace(root, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to your recordings')));
  return { dispose() {} };
}

function route() {
  const hash = location.hash || '#/';
  if (!hash.startsWith('#/') && current) return; // an in-page anchor: not a route
  const [path, qs] = (hash.startsWith('#/') ? hash : '#/').slice(1).split('?');
  if (current) current.dispose();
  current = null;
  window.scrollTo(0, 0);
  if (!auth.key) {
    current = signInView(main);
    firstRoute = false;
    return;
  }
  showSignedIn();
  setNav(path);
  const params = new URLSearchParams(qs || '');
  let m;
  if (path === '/' || path === '') current = homeView(main, params);
  else if ((m = /^\/job\/([0-9a-fA-F-]{36})$/.exec(path))) current = jobView(main, m[1]);
  else if (path === '/usage') current = usageView(main, params);
  else current = notFound(main);
  // after a navigation inside the page, the keyboard and screen readers start at the new content
  if (!firstRoute) main.focus({ preventScroll: true });
  firstRoute = false;
}
let firstRoute = true;

document.querySelector('a.skip').addEventListener('click', (e) => { e.preventDefault(); main.focus(); });
window.addEventListener('hashchange', route);
route();
