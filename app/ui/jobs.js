// The jobs table: newest first, filtered by state, age, file name and batch, loaded a page at a time
// (GET /v1/jobs?cursor=) and kept live by one POST /v1/jobs/status per poll for every unfinished row,
// whatever their number. Only the rows in view are in the DOM, so thousands of rows scroll smoothly.

import { api, fieldErrors, ApiError } from './api.js';
import { h, replace, duration, when, stateBadge, TERMINAL, announce } from './dom.js';
import { confirmDialog } from './confirm.js';

const PAGE = 500;
const ROW_H = 56; // px; must match .jobs .row in app.css
const OVERSCAN = 8;
const POLL_MS = 2000;
const STATUS_MAX_IDS = 10000; // the server's cap per call (ASRQ_MAX_BATCH_JOBS)
const STATES = ['QUEUED', 'PREPARING', 'TRANSCRIBING', 'FINALIZING', 'COMPLETED', 'FAILED', 'CANCELLED'];
const SINCE = [['', 'Any time'], ['1h', 'Last hour'], ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days']];
const SINCE_S = { '1h': 3600, '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };

// the loaded rows outlive the view: back from a job page, the table is where it was
const store = { rows: [], byId: new Map(), cursor: null, filters: null, loaded: false, deleted: new Set() };

function sinceISO(code) {
  return SINCE_S[code] ? new Date(Date.now() - SINCE_S[code] * 1000).toISOString() : null;
}

function wildcard(pattern) {
  const esc = pattern.toLowerCase().replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(esc);
}

function matches(job, f) {
  if (f.state && job.state !== f.state) return false;
  if (f.batch && job.batch_id !== f.batch) return false;
  if (f.filename && !wildcard(f.filename).test(job.filename.toLowerCase())) return false;
  if (f.since && new Date(job.timings.created_at) < new Date(sinceISO(f.since))) return false;
  return true;
}

function sameFilters(a, b) {
  return a && b && ['state', 'since', 'filename', 'batch'].every((k) => (a[k] || '') === (b[k] || ''));
}

function put(job) {
  const old = store.byId.get(job.id);
  if (old) Object.assign(old, job);
  else {
    store.byId.set(job.id, job);
    store.rows.push(job);
  }
}

/** A job this page just created: on top of the table, if the filters let it in. */
export function addJob(job) {
  if (store.byId.has(job.id) || !store.filters || !matches(job, store.filters)) return;
  store.byId.set(job.id, job);
  store.rows.unshift(job);
  for (const fn of store.listeners || []) fn();
}

function progressText(job) {
  const p = job.progress || {};
  if (job.state === 'TRANSCRIBING' && p.chunks_total) return `${p.chunks_done}/${p.chunks_total} chunks`;
  return '';
}

function rowEl() {
  const el = h('div.row', { role: 'row' },
    h('div.cell.c-file', { role: 'cell' }, h('a.fname', { href: '#' }), h('span.sub')),
    h('div.cell.c-state', { role: 'cell' }, h('span.badge'), h('progress', { max: 1, value: 0, hidden: true }), h('span.sub.ptext')),
    h('div.cell.c-dur', { role: 'cell' }),
    h('div.cell.c-sub', { role: 'cell' }),
    h('div.cell.c-fin', { role: 'cell' }),
    h('div.cell.c-act', { role: 'cell' },
      h('button.small', { type: 'button', dataset: { act: 'cancel' } }, 'Cancel'),
      h('button.small.danger', { type: 'button', dataset: { act: 'delete' } }, 'Delete')));
  return el;
}

function fill(el, job, index) {
  el.dataset.id = job.id;
  el.setAttribute('aria-rowindex', String(index + 2));
  el.style.transform = `translateY(${index * ROW_H}px)`;
  const [file, state, dur, sub, fin, act] = el.children;
  const a = file.firstChild;
  a.textContent = job.filename;
  a.href = `#/job/${job.id}`;
  a.title = job.filename;
  const deleted = store.deleted.has(job.id);
  file.lastChild.textContent = deleted ? 'deleted' : (job.error || (job.source_uri.startsWith('upload:') ? '' : job.source_uri));
  file.lastChild.title = file.lastChild.textContent;
  file.lastChild.classList.toggle('err', !!job.error && !deleted);
  const badge = state.children[0];
  badge.textContent = job.state;
  badge.className = `badge s-${job.state.toLowerCase()}`;
  const bar = state.children[1];
  const p = job.progress || {};
  const running = !TERMINAL.has(job.state);
  bar.hidden = !(running && p.chunks_total);
  if (!bar.hidden) { bar.max = p.chunks_total; bar.value = p.chunks_done; bar.setAttribute('aria-label', `${job.filename}: ${p.chunks_done} of ${p.chunks_total} chunks`); }
  state.children[2].textContent = progressText(job);
  dur.textContent = duration(job.duration_s ?? (p.audio_s ?? null));
  sub.textContent = when(job.timings && job.timings.created_at, true);
  fin.textContent = when(job.finished_at || (job.timings && job.timings.finished_at), true);
  const [cancel, del] = act.children;
  cancel.hidden = !running;
  cancel.setAttribute('aria-label', `Cancel ${job.filename}`);
  del.hidden = running || deleted;
  del.setAttribute('aria-label', `Delete the transcript and audio of ${job.filename}`);
}

export function jobsPanel(params, setParams) {
  const filters = {
    state: params.get('state') || '', since: params.get('since') || '',
    filename: params.get('filename') || '', batch: params.get('batch') || '',
  };
  const root = h('section.jobs-panel', { 'aria-labelledby': 'jobs-h' });
  const summary = h('p.summary', { 'aria-live': 'polite' });
  const error = h('p.form-error', { role: 'alert' });

  // ---- filters
  const stateSel = h('select', { id: 'f-state' }, h('option', { value: '' }, 'Any state'), STATES.map((s) => h('option', { value: s }, s)));
  const sinceSel = h('select', { id: 'f-since' }, SINCE.map(([v, l]) => h('option', { value: v }, l)));
  const nameIn = h('input', { id: 'f-filename', type: 'search', placeholder: 'call* or part of a name', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'err-filename' });
  const batchIn = h('input', { id: 'f-batch', type: 'search', placeholder: 'batch id', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'err-batch' });
  stateSel.value = filters.state; sinceSel.value = filters.since; nameIn.value = filters.filename; batchIn.value = filters.batch;
  const ferr = (name) => h('p.field-error', { id: `err-${name}` });
  const filterForm = h('form.filters', { role: 'search', 'aria-label': 'Filter jobs', novalidate: true },
    h('div.field', {}, h('label', { for: 'f-state' }, 'State'), stateSel, ferr('state')),
    h('div.field', {}, h('label', { for: 'f-since' }, 'Submitted'), sinceSel, ferr('since')),
    h('div.field', {}, h('label', { for: 'f-filename' }, 'File name'), nameIn, ferr('filename')),
    h('div.field', {}, h('label', { for: 'f-batch' }, 'Batch'), batchIn, ferr('batch')),
    h('div.field.buttons', {}, h('button', { type: 'submit' }, 'Apply'), h('button.quiet', { type: 'button', onclick: () => { stateSel.value = ''; sinceSel.value = ''; nameIn.value = ''; batchIn.value = ''; apply(); } }, 'Clear')));

  // ---- the table
  const head = h('div.row.head', { role: 'row', 'aria-rowindex': '1' },
    ['File', 'State', 'Audio', 'Submitted', 'Finished', 'Actions'].map((t, i) => h(`div.cell.${['c-file', 'c-state', 'c-dur', 'c-sub', 'c-fin', 'c-act'][i]}`, { role: 'columnheader' }, t)));
  const spacer = h('div.spacer');
  const body = h('div.viewport', { role: 'rowgroup' }, spacer);
  const table = h('div.jobs', { role: 'table', 'aria-label': 'Jobs', id: 'jobs-table' }, h('div.thead', { role: 'rowgroup' }, head), body);
  const more = h('button', { type: 'button', id: 'load-more' }, 'Load more');
  const refresh = h('button.small', { type: 'button', 'aria-label': 'Refresh the table' }, 'Refresh');
  const empty = h('p.empty', {}, 'No jobs here yet. Send a recording above, or change the filters.');

  const rendered = new Map(); // job id -> row element
  let frame = 0;
  const render = () => {
    frame = 0;
    const n = store.rows.length;
    spacer.style.height = `${n * ROW_H}px`;
    body.style.height = `${Math.max(1, Math.min(n, 12)) * ROW_H}px`;
    table.setAttribute('aria-rowcount', String(n + 1));
    empty.hidden = n > 0 || !store.loaded;
    const top = body.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + body.clientHeight) / ROW_H) + OVERSCAN);
    const want = new Set();
    for (let i = first; i < last; i += 1) want.add(store.rows[i].id);
    for (const [id, el] of rendered) {
      // a row holding the keyboard focus stays, so tabbing through the table never loses its place
      if (!want.has(id) && !el.contains(document.activeElement)) { el.remove(); rendered.delete(id); }
    }
    const inOrder = [];
    for (let i = first; i < last; i += 1) {
      const job = store.rows[i];
      let el = rendered.get(job.id);
      if (!el) { el = rowEl(); rendered.set(job.id, el); body.append(el); }
      fill(el, job, i);
      inOrder.push(el);
    }
    // the DOM in the rows' order, so tabbing and reading follow the table (not while a row holds the focus)
    const now = [...body.children].filter((c) => c !== spacer && want.has(c.dataset.id));
    if (now.some((el, k) => el !== inOrder[k]) && !body.contains(document.activeElement)) body.append(...inOrder);
    const counts = {};
    for (const j of store.rows) counts[j.state] = (counts[j.state] || 0) + 1;
    const parts = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s.toLowerCase()}`);
    summary.textContent = n ? `${n} job${n > 1 ? 's' : ''} shown${store.cursor ? ' (more to load)' : ''}: ${parts.join(', ')}` : '';
    more.hidden = !store.cursor;
  };
  const schedule = () => { if (!frame) frame = requestAnimationFrame(render); };
  body.addEventListener('scroll', schedule, { passive: true });
  window.addEventListener('resize', schedule);

  const showQueryError = (err) => {
    for (const { field, msg } of fieldErrors(err.detail ?? err.message)) {
      const slot = field && root.querySelector(`#err-${field}`);
      if (slot) {
        slot.textContent = msg;
        root.querySelector(`#f-${field}`)?.setAttribute('aria-invalid', 'true');
      } else error.textContent = msg;
    }
  };

  let loading = false;
  const load = async (reset) => {
    if (loading || (!reset && !store.cursor)) return;
    loading = true;
    more.disabled = true;
    error.textContent = '';
    for (const el of root.querySelectorAll('.filters .field-error')) el.textContent = '';
    for (const el of root.querySelectorAll('.filters [aria-invalid]')) el.removeAttribute('aria-invalid');
    try {
      const page = await api('/v1/jobs', {
        query: {
          limit: PAGE, cursor: reset ? null : store.cursor, state: filters.state || null,
          since: sinceISO(filters.since), filename: filters.filename || null, batch: filters.batch || null,
        },
      });
      if (reset) { store.rows = []; store.byId = new Map(); body.scrollTop = 0; }
      for (const job of page.jobs) put(job);
      store.cursor = page.next_cursor;
      store.loaded = true;
      store.filters = { ...filters };
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) showQueryError(err);
    } finally {
      loading = false;
      more.disabled = false;
      schedule();
    }
  };

  const apply = () => {
    filters.state = stateSel.value; filters.since = sinceSel.value;
    filters.filename = nameIn.value.trim(); filters.batch = batchIn.value.trim();
    setParams(filters);
    load(true);
  };
  filterForm.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  stateSel.addEventListener('change', apply);
  sinceSel.addEventListener('change', apply);
  more.addEventListener('click', () => load(false));
  refresh.addEventListener('click', () => load(true));

  // ---- cancel and delete
  body.addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-act]');
    if (!b) return;
    const job = store.byId.get(b.closest('.row').dataset.id);
    if (!job) return;
    try {
      if (b.dataset.act === 'cancel') {
        b.disabled = true;
        put(await api(`/v1/jobs/${job.id}`, { method: 'DELETE' }));
        announce(`${job.filename} cancelled`);
      } else {
        const ok = await confirmDialog(`Delete the transcript and recording of \u201c${job.filename}\u201d?`,
          'They are removed from storage for good; the job stays listed with its state.', 'Delete');
        if (!ok) return;
        put(await api(`/v1/jobs/${job.id}`, { method: 'DELETE' }));
        store.deleted.add(job.id);
        announce(`${job.filename} deleted`);
      }
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) error.textContent = `${job.filename}: ${err.message}`;
    } finally {
      b.disabled = false;
      schedule();
    }
  });

  // ---- live: one status call per poll for all unfinished rows
  let timer = 0;
  let stopped = false;
  const poll = async () => {
    timer = 0;
    if (stopped) return;
    const open = store.rows.filter((j) => !TERMINAL.has(j.state)).map((j) => j.id);
    if (open.length && !document.hidden) {
      try {
        for (let i = 0; i < open.length; i += STATUS_MAX_IDS) {
          const out = await api('/v1/jobs/status', { method: 'POST', json: { ids: open.slice(i, i + STATUS_MAX_IDS) } });
          for (const s of out.jobs) {
            const job = store.byId.get(s.id);
            if (!job) continue;
            const ended = !TERMINAL.has(job.state) && TERMINAL.has(s.state);
            Object.assign(job, { state: s.state, error: s.error, progress: s.progress, finished_at: s.finished_at });
            if (s.progress && s.progress.audio_s != null) job.duration_s = s.progress.audio_s;
            if (ended) announce(`${job.filename}: ${s.state.toLowerCase()}`);
          }
        }
        schedule();
      } catch { /* the next poll tries again */ }
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };

  store.listeners = [schedule];
  root.append(
    h('div.headline', {}, h('h2', { id: 'jobs-h' }, 'Jobs'), refresh),
    filterForm, summary, error, table, empty, h('p.more', {}, more));

  if (!store.loaded || !sameFilters(store.filters, filters)) load(true);
  else schedule();
  poll();
  return {
    el: root,
    showBatch(batch) { batchIn.value = batch; stateSel.value = ''; sinceSel.value = ''; nameIn.value = ''; apply(); },
    reload() { load(true); },
    dispose() {
      stopped = true;
      clearTimeout(timer);
      store.listeners = [];
      window.removeEventListener('resize', schedule);
    },
  };
}
