// One job: its state (live until it ends), the error of a failed one, and for a finished one the transcript
// beside the recording. A click on a word or a segment's time seeks there and plays; the word being spoken
// is highlighted; search finds text (Chinese too: spaces between characters do not matter); downloads give
// the server's own bytes of each format; webhook deliveries are listed with every try.

import { api, ApiError } from './api.js';
import { h, replace, clock, duration, when, stateBadge, TERMINAL, announce } from './dom.js';
import { attachAudio } from './player.js';
import { confirmDialog } from './confirm.js';

const POLL_MS = 1500;
const HOOKS_POLL_MS = 3000;
const CJK = /[\u2e80-\u2fdf\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff00-\uffef]/;
const WORDCHAR = /[\p{L}\p{N}]/u;
const TAG_LABEL = { emotion: 'Emotion', event: 'Event', language: 'Language' };

// ---- search: text normalized (NFKC, lower case, spaces next to CJK dropped) with a map back ---------------

export function normalize(text) {
  let out = '';
  const start = []; // out unit -> offset of its source character in text (UTF-16 units)
  const end = []; // out unit -> offset just past that character
  const chars = Array.from(text);
  let unit = 0;
  for (let i = 0; i < chars.length; i += 1) {
    const c = chars[i];
    if (/\s/u.test(c)) {
      const prev = chars[i - 1] || '';
      const next = chars[i + 1] || '';
      if (!(CJK.test(prev) || CJK.test(next) || out.endsWith(' ') || !out)) {
        out += ' ';
        start.push(unit);
        end.push(unit + c.length);
      }
      unit += c.length;
      continue;
    }
    const n = c.normalize('NFKC').toLowerCase();
    for (let k = 0; k < n.length; k += 1) { start.push(unit); end.push(unit + c.length); }
    out += n;
    unit += c.length;
  }
  return { out, start, end };
}

function rangeIn(el, from, to) {
  // offsets in el's text -> a DOM Range over its text nodes
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let pos = 0;
  let started = false;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const len = node.data.length;
    if (!started && from <= pos + len) { range.setStart(node, from - pos); started = true; }
    if (started && to <= pos + len) { range.setEnd(node, to - pos); return range; }
    pos += len;
  }
  return started ? range : null;
}

// ---- a segment's text with its words as clickable spans ---------------------------------------------------

function findWord(text, word, from) {
  const boundary = WORDCHAR.test(word[0]) && !CJK.test(word[0]);
  for (let at = text.indexOf(word, from); at >= 0 && at - from <= 64; at = text.indexOf(word, at + 1)) {
    if (!boundary) return at;
    const before = text[at - 1];
    const after = text[at + word.length];
    if ((!before || !WORDCHAR.test(before)) && (!after || !WORDCHAR.test(after))) return at;
  }
  return -1;
}

function segmentText(seg, firstWord, lang) {
  const p = h('p.text', { lang: lang || null });
  const text = seg.text || '';
  const words = seg.words || [];
  if (!text) {
    words.forEach((w, k) => { if (k) p.append(' '); p.append(h('span.w', { dataset: { i: firstWord + k } }, w.word.trim())); });
    return p;
  }
  let pos = 0;
  words.forEach((w, k) => {
    const word = (w.word || '').trim();
    if (!word) return;
    const at = findWord(text, word, pos);
    if (at < 0) return; // rewritten (ITN, punctuation): the words around it stay clickable
    if (at > pos) p.append(text.slice(pos, at));
    p.append(h('span.w', { dataset: { i: firstWord + k } }, word));
    pos = at + word.length;
  });
  if (pos < text.length) p.append(text.slice(pos));
  return p;
}

function tags(seg, docLang) {
  const out = [];
  if (seg.language && seg.language !== docLang) out.push(['language', seg.language]);
  if (seg.emotion) out.push(['emotion', seg.emotion]);
  if (seg.event) out.push(['event', seg.event]);
  if (!out.length) return null;
  return h('span.tags', {}, out.map(([k, v]) => h(`span.tag.t-${k}`, { title: TAG_LABEL[k] }, `${TAG_LABEL[k]}: ${v}`)));
}

// ---- the view ---------------------------------------------------------------------------------------------

export function jobView(root, id) {
  let stopped = false;
  let timer = 0;
  let job = null;
  let release = null;
  let raf = 0;
  const cleanups = [];

  const title = h('h1.filename', {}, 'Loading…');
  const badge = h('span');
  const meta = h('dl.meta');
  const actions = h('div.job-actions');
  const live = h('div.live', { 'aria-live': 'polite' });
  const errorBox = h('div.error-box', { hidden: true, role: 'alert' });
  const body = h('div.jobbody');
  const hooks = h('section.webhooks', { 'aria-labelledby': 'hooks-h' });
  const opts = h('section.options-used', { 'aria-labelledby': 'opts-h' });
  replace(root,
    h('nav.crumbs', { 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, '\u2190 All recordings')),
    h('header.jobhead', {}, h('div.titleline', {}, title, badge), actions, meta, live),
    errorBox, body, hooks, opts);

  const showHeader = () => {
    document.title = `${job.filename} — asrq`;
    title.textContent = job.filename;
    title.title = job.filename;
    replace(badge, stateBadge(job.state));
    const t = job.timings || {};
    const o = job.options || {};
    const rows = [
      ['Audio', duration(job.duration_s)],
      ['Language', job.language || o.language || '–'],
      ['Engine', `${o.engine || '–'}${o.model ? ` · ${o.model}` : ''}`],
      ['Submitted', when(t.created_at)],
      ['Finished', when(t.finished_at)],
      ['Waited', t.queued_s != null ? duration(t.queued_s) : '–'],
      ['Took', t.processing_s != null ? duration(t.processing_s) : '–'],
      ['Source', job.source_uri.startsWith('upload:') ? 'uploaded file' : job.source_uri],
      ['Job ID', job.id],
    ];
    if (job.batch_id) rows.push(['Batch', h('a', { href: `#/?batch=${job.batch_id}` }, job.batch_id)]);
    replace(meta, rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
    const p = job.progress || {};
    live.textContent = TERMINAL.has(job.state) ? ''
      : job.state === 'TRANSCRIBING' && p.chunks_total ? `Transcribing: ${p.chunks_done} of ${p.chunks_total} chunks done`
        : `${job.state.charAt(0)}${job.state.slice(1).toLowerCase()}…`;
    errorBox.hidden = !job.error || job.state === 'CANCELLED';
    if (!errorBox.hidden) replace(errorBox, h('h2', {}, 'This job failed'), h('p.errtext', {}, job.error));
    const running = !TERMINAL.has(job.state);
    if (actions.dataset.running === String(running)) return; // the buttons (and a focus on one) stay as they are
    actions.dataset.running = String(running);
    replace(actions,
      running ? h('button', { type: 'button', id: 'cancel-job', onclick: cancel }, 'Cancel job') : null,
      !running ? h('button.danger', { type: 'button', id: 'delete-job', onclick: del }, 'Delete') : null);
    replace(opts, h('h2', { id: 'opts-h' }, 'Options'), h('dl.meta', {},
      [['Priority', o.priority], ['Formats', (o.formats || []).join(', ')], ['Hotwords', (o.hotwords || []).join(', ') || '–'],
        ['Punctuation model', o.punc_model || '–'], ['Numbers as digits (ITN)', o.itn == null ? 'default' : o.itn ? 'on' : 'off']]
        .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v ?? '–')))));
  };

  const cancel = async () => {
    try {
      job = await api(`/v1/jobs/${id}`, { method: 'DELETE' });
      announce(`Job ${job.state.toLowerCase()}`); // CANCELLED, or how it ended if it ended first
      clearTimeout(timer);
      showHeader();
      settle();
    } catch (err) { if (err.status !== 401) live.textContent = err.message; }
  };
  const del = async () => {
    const ok = await confirmDialog(`Delete the transcript and recording of \u201c${job.filename}\u201d?`,
      'They are removed from storage for good; the job stays listed with its state.', 'Delete');
    if (!ok) return;
    try {
      job = await api(`/v1/jobs/${id}`, { method: 'DELETE' });
      announce('Transcript and recording deleted');
      showHeader();
      replace(actions); // nothing left to delete
      gone('The transcript and recording of this job were deleted.');
    } catch (err) { if (err.status !== 401) live.textContent = err.message; }
  };
  const gone = (text) => {
    stopAudio();
    replace(body, h('p.note', {}, text));
  };
  const stopAudio = () => {
    cancelAnimationFrame(raf);
    const a = body.querySelector('audio');
    if (a) { a.pause(); a.removeAttribute('src'); a.load(); }
    if (release) { release(); release = null; }
  };

  let hooksTimer = 0;
  const loadWebhooks = async () => {
    hooksTimer = 0;
    if (!job.webhook_url) {
      replace(hooks, h('h2', { id: 'hooks-h' }, 'Webhook deliveries'), h('p.note', {}, 'No webhook was set for this job.'));
      return;
    }
    let out;
    try {
      out = await api(`/v1/jobs/${id}/webhooks`);
    } catch (err) {
      if (err.status !== 401) replace(hooks, h('h2', { id: 'hooks-h' }, 'Webhook deliveries'), h('p.form-error', {}, err.message));
      return;
    }
    if (stopped) return;
    // a delivery still pending is followed until it is delivered or given up
    if (out.webhooks.some((d) => d.state === 'pending') && TERMINAL.has(job.state)) hooksTimer = setTimeout(loadWebhooks, HOOKS_POLL_MS);
    replace(hooks, h('h2', { id: 'hooks-h' }, 'Webhook deliveries'), h('p', {}, 'To ', h('code', {}, job.webhook_url)));
    {
      if (!out.webhooks.length) { hooks.append(h('p.note', {}, 'None yet: one is made when the job ends.')); return; }
      hooks.append(h('div.table-wrap', {}, h('table.hooks', {},
        h('thead', {}, h('tr', {}, ['Event', 'State', 'Try', 'At', 'Answer', 'Took'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, out.webhooks.flatMap((d) => (d.tries.length ? d.tries : [null]).map((t, k) => h('tr', {},
          h('td', {}, k ? '' : d.event), h('td', {}, k ? '' : h(`span.badge.w-${d.state}`, {}, d.state)),
          h('td', {}, t ? String(t.try) : '–'), h('td', {}, t ? when(t.at) : (d.next_attempt_at ? `due ${when(d.next_attempt_at)}` : '–')),
          h('td', {}, t ? (t.status_code ? `HTTP ${t.status_code}` : '') + (t.error ? ` ${t.error}` : '') : '–'),
          h('td', {}, t && t.duration_ms != null ? `${t.duration_ms} ms` : '–'))))))));
    }
  };

  const download = async (fmt, button) => {
    button.disabled = true;
    try {
      const resp = await api(`/v1/jobs/${id}/transcript`, { query: { format: fmt }, raw: true });
      const blob = await resp.blob(); // the server's bytes, as they are
      const url = URL.createObjectURL(blob);
      const base = job.filename.replace(/\.[^.]+$/, '') || 'transcript';
      const a = h('a', { href: url, download: `${base}.${fmt}`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      if (err.status !== 401) live.textContent = `Download failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  };

  const copy = async (button) => {
    try {
      const text = await (await api(`/v1/jobs/${id}/transcript`, { query: { format: 'txt' }, raw: true })).text();
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
      else {
        const ta = h('textarea.visually-hidden', { readonly: true });
        ta.value = text;
        document.body.append(ta);
        ta.select();
        document.execCommand('copy');
        ta.remove();
      }
      button.textContent = 'Copied';
      announce('Transcript copied');
      setTimeout(() => { button.textContent = 'Copy text'; }, 2000);
    } catch (err) {
      live.textContent = `Could not copy: ${err.message}`;
    }
  };

  // ---- the transcript and its player
  const showTranscript = async () => {
    let doc;
    try {
      doc = await api(`/v1/jobs/${id}/transcript`, { query: { format: 'json' } });
    } catch (err) {
      if (err.status === 410) gone('The transcript of this job was deleted.');
      else if (err.status !== 401) replace(body, h('p.form-error', {}, `The transcript could not be read: ${err.message}`));
      return;
    }
    if (stopped) return;
    const docLang = doc.language || job.language || '';
    const words = []; // every word of the recording, in time order, with its span
    const segs = doc.segments || [];
    const transcript = h('div.transcript', { id: 'transcript', lang: docLang || null, 'aria-label': 'Transcript' });
    segs.forEach((seg, n) => {
      const first = words.length;
      for (const w of seg.words || []) words.push({ start: w.start, end: w.end, seg: n, el: null });
      const ts = h('button.ts', { type: 'button', dataset: { t: seg.start }, 'aria-label': `Play from ${clock(seg.start)}` }, clock(seg.start));
      transcript.append(h('div.seg', { dataset: { n } }, h('div.segmeta', {}, ts, tags(seg, docLang)),
        segmentText(seg, first, seg.language && seg.language !== docLang ? seg.language : null)));
    });
    for (const span of transcript.querySelectorAll('.w')) words[Number(span.dataset.i)].el = span;
    if (!segs.length) transcript.append(h('p.note', {}, 'No speech was found in this recording.'));

    const audio = h('audio', { controls: true, preload: 'metadata', id: 'player', 'aria-label': `Recording of ${job.filename}` });
    const audioNote = h('p.note.audio-note', { 'aria-live': 'polite' });
    const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
    const search = h('input', { type: 'search', id: 'search', placeholder: 'Find in the transcript', autocomplete: 'off', spellcheck: 'false' });
    const count = h('span.count', { id: 'search-count', 'aria-live': 'polite' });
    const prev = h('button.small', { type: 'button', 'aria-label': 'Previous match' }, '\u2191');
    const next = h('button.small', { type: 'button', 'aria-label': 'Next match' }, '\u2193');
    const dl = ['json', 'srt', 'vtt', 'txt'].map((f) => {
      const b = h('button.small', { type: 'button', dataset: { format: f }, 'aria-label': `Download ${f.toUpperCase()}` }, f.toUpperCase());
      b.addEventListener('click', () => download(f, b));
      return b;
    });
    const copyBtn = h('button.small', { type: 'button', id: 'copy' }, 'Copy text');
    copyBtn.addEventListener('click', () => copy(copyBtn));

    const side = h('aside.side', { 'aria-label': 'Player and tools' },
      h('div.player', {}, audio, audioNote,
        h('label.check', {}, follow, 'Follow the audio')),
      h('div.search', { role: 'search' },
        h('label', { for: 'search' }, 'Search'), h('div.searchline', {}, search, prev, next), count),
      h('div.downloads', {}, h('span.label', {}, 'Download'), dl, copyBtn));
    replace(body, h('div.jobgrid', {}, side, transcript));

    // the recording: uploads are kept (ASRQ_SOURCE_RETENTION_DAYS); a link's audio was never stored
    if (!job.source_uri.startsWith('upload:')) {
      audio.hidden = true;
      audioNote.textContent = `This recording came from a link (${job.source_uri}); only uploaded recordings are kept to play back here. The times in the transcript are those of that recording.`;
    } else {
      attachAudio(audio, id, (s) => { audioNote.textContent = s; }).then((r) => { release = r.release || null; }, (err) => {
        audio.hidden = true;
        audioNote.textContent = err.status === 410
          ? 'The recording is no longer stored: uploads are kept for a limited time after the job ends. The transcript stays.'
          : err.status === 401 ? '' : `The recording cannot be played: ${err.message}`;
      });
    }

    // click a word or a time: seek there and play
    const seek = (t) => {
      audio.currentTime = Math.max(0, t);
      if (audio.paused) audio.play().catch(() => {});
    };
    transcript.addEventListener('click', (e) => {
      const w = e.target.closest('.w');
      if (w) { seek(words[Number(w.dataset.i)].start); return; }
      const ts = e.target.closest('.ts');
      if (ts) seek(Number(ts.dataset.t));
    });

    // the spoken word, highlighted while it plays
    let now = -1;
    let userScrolled = 0;
    const scrolled = () => { userScrolled = performance.now(); };
    for (const ev of ['wheel', 'touchmove', 'keydown']) window.addEventListener(ev, scrolled, { passive: true });
    cleanups.push(() => { for (const ev of ['wheel', 'touchmove', 'keydown']) window.removeEventListener(ev, scrolled); });
    const at = (t) => {
      let lo = 0;
      let hi = words.length - 1;
      let found = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (words[mid].start <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
      }
      return found >= 0 && t <= words[found].end + 0.3 ? found : -1;
    };
    const mark = () => {
      const i = at(audio.currentTime);
      if (i === now) return;
      if (now >= 0 && words[now].el) words[now].el.classList.remove('now');
      for (const el of transcript.querySelectorAll('.seg.cur')) el.classList.remove('cur');
      now = i;
      if (i < 0) return;
      const segEl = transcript.children[words[i].seg];
      if (segEl) segEl.classList.add('cur');
      const el = words[i].el;
      if (!el) return;
      el.classList.add('now');
      if (follow.checked && performance.now() - userScrolled > 3000) {
        const r = el.getBoundingClientRect();
        if (r.top < 0 || r.bottom > window.innerHeight) el.scrollIntoView({ block: 'center', behavior: 'smooth' });
      }
    };
    const loop = () => { mark(); raf = audio.paused ? 0 : requestAnimationFrame(loop); };
    audio.addEventListener('play', () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(loop); });
    audio.addEventListener('seeked', mark);
    audio.addEventListener('pause', mark);

    // search
    const texts = [...transcript.querySelectorAll('.seg .text')].map((p) => ({ p, ...normalize(p.textContent) }));
    let hits = [];
    let cur = -1;
    const hl = window.CSS && CSS.highlights && window.Highlight;
    const showHit = (k) => {
      if (!hits.length) return;
      cur = (k + hits.length) % hits.length;
      count.textContent = `${cur + 1} of ${hits.length}`;
      const { p, range } = hits[cur];
      if (hl) CSS.highlights.set('asrq-hit-current', new Highlight(range));
      for (const el of transcript.querySelectorAll('.seg.hit-current')) el.classList.remove('hit-current');
      p.parentElement.classList.add('hit-current');
      p.parentElement.scrollIntoView({ block: 'center' });
    };
    const runSearch = () => {
      const q = normalize(search.value.trim()).out.trim();
      hits = [];
      cur = -1;
      for (const el of transcript.querySelectorAll('.seg.has-hit, .seg.hit-current')) el.classList.remove('has-hit', 'hit-current');
      if (hl) { CSS.highlights.delete('asrq-hit'); CSS.highlights.delete('asrq-hit-current'); }
      if (!q) { count.textContent = ''; return; }
      for (const t of texts) {
        for (let i = t.out.indexOf(q); i >= 0; i = t.out.indexOf(q, i + q.length)) {
          const range = rangeIn(t.p, t.start[i], t.end[i + q.length - 1]);
          if (range) hits.push({ p: t.p, range });
          t.p.parentElement.classList.add('has-hit');
        }
      }
      if (hl && hits.length) CSS.highlights.set('asrq-hit', new Highlight(...hits.map((x) => x.range)));
      if (!hits.length) { count.textContent = 'No match'; return; }
      showHit(0);
    };
    search.addEventListener('input', runSearch);
    search.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); showHit(cur + (e.shiftKey ? -1 : 1)); }
    });
    prev.addEventListener('click', () => showHit(cur - 1));
    next.addEventListener('click', () => showHit(cur + 1));
    cleanups.push(() => { if (hl) { CSS.highlights.delete('asrq-hit'); CSS.highlights.delete('asrq-hit-current'); } });
  };

  const settle = () => {
    if (job.state === 'COMPLETED') showTranscript();
    else if (job.state === 'FAILED') replace(body, h('p.note', {}, 'There is no transcript: the job failed (see above).'));
    else if (job.state === 'CANCELLED') replace(body, h('p.note', {}, 'There is no transcript: the job was cancelled.'));
    loadWebhooks();
  };

  const poll = async () => {
    timer = 0;
    if (stopped || TERMINAL.has(job.state)) return;
    try {
      const out = await api('/v1/jobs/status', { method: 'POST', json: { ids: [id] } });
      const s = out.jobs[0];
      if (s && s.state !== job.state) {
        job = TERMINAL.has(s.state) ? await api(`/v1/jobs/${id}`) : { ...job, state: s.state, progress: s.progress };
        showHeader();
        if (TERMINAL.has(job.state)) { announce(`Job ${job.state.toLowerCase()}`); settle(); return; }
      } else if (s && JSON.stringify(s.progress) !== JSON.stringify(job.progress)) {
        job = { ...job, progress: s.progress };
        showHeader();
      }
    } catch { /* next poll */ }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };

  (async () => {
    try {
      job = await api(`/v1/jobs/${id}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        title.textContent = 'Job not found';
        replace(body, h('p', {}, 'No job with this id belongs to your team. ', h('a', { href: '#/' }, 'Back to your recordings')));
      } else if (err.status !== 401) title.textContent = `Could not load the job: ${err.message}`;
      return;
    }
    if (stopped) return;
    showHeader();
    if (TERMINAL.has(job.state)) settle();
    else {
      replace(body, h('p.note', {}, 'The transcript appears here when the job is done.'));
      loadWebhooks();
      timer = setTimeout(poll, POLL_MS);
    }
  })();

  return {
    dispose() {
      stopped = true;
      clearTimeout(timer);
      clearTimeout(hooksTimer);
      stopAudio();
      for (const fn of cleanups) fn();
      document.title = 'asrq';
    },
  };
}
