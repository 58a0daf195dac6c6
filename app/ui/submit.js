// Sending recordings: files or folders dropped or chosen (each uploaded with its own progress, retried on
// failure), or https:// / s3:// links pasted one per line (one batch). The options apply to what is sent
// next; the server's validation errors are shown next to the field they concern.

import { api, upload, fieldErrors, ApiError } from './api.js';
import { h, replace, bytes, announce, uid } from './dom.js';

const PARALLEL_UPLOADS = 3;
// inside a dropped folder, only these are taken (a folder of calls often holds notes and spreadsheets too);
// files picked or dropped one by one are always sent, and the server says if one is not audio
const MEDIA_EXT = new Set(['wav', 'flac', 'mp3', 'm4a', 'mp4', 'aac', 'ogg', 'oga', 'opus', 'webm', 'wma', 'amr',
  'aif', 'aiff', 'caf', 'mka', 'mkv', 'mov', 'avi', '3gp', 'spx', 'ac3', 'au', 'm4b']);
const LANGUAGES = [['en', 'English'], ['zh', 'Chinese'], ['yue', 'Cantonese'], ['ja', 'Japanese'], ['ko', 'Korean'],
  ['de', 'German'], ['fr', 'French'], ['es', 'Spanish'], ['it', 'Italian'], ['pt', 'Portuguese'], ['ru', 'Russian'],
  ['ar', 'Arabic'], ['hi', 'Hindi'], ['nl', 'Dutch'], ['pl', 'Polish'], ['tr', 'Turkish'], ['vi', 'Vietnamese']];
const FORMATS = ['json', 'srt', 'vtt', 'txt'];

// ---- state that outlives the view: uploads go on while the person reads a transcript ------------------------

const queue = []; // {key, file, name, size, state: waiting|uploading|done|failed, loaded, job, error, idem, opts}
const subscribers = new Set();
let engines = null; // GET /v1/engines, once per page load
let onJobCreated = () => {};

export function onCreated(fn) { onJobCreated = fn; }

function changed(item) { for (const fn of subscribers) fn(item); }

function pump() {
  let running = queue.filter((i) => i.state === 'uploading').length;
  for (const item of queue) {
    if (running >= PARALLEL_UPLOADS) break;
    if (item.state !== 'waiting') continue;
    running += 1;
    start(item);
  }
}

function formFor(item) {
  const form = new FormData();
  form.append('file', item.file, item.name);
  form.append('options', JSON.stringify(item.opts.options));
  if (item.opts.webhook_url) form.append('webhook_url', item.opts.webhook_url);
  if (item.opts.hotwordsFile) form.append('hotwords_file', item.opts.hotwordsFile, item.opts.hotwordsFile.name);
  return form;
}

function start(item) {
  item.state = 'uploading';
  item.loaded = 0;
  item.error = null;
  changed(item);
  const req = upload(formFor(item), {
    idempotencyKey: item.idem, // a retry after a lost answer finds the job the first try made
    onProgress: (loaded) => { item.loaded = loaded; changed(item); },
  });
  item.abort = req.abort;
  req.done.then((job) => {
    item.state = 'done';
    item.job = job;
    item.loaded = item.size;
    onJobCreated(job);
  }, (err) => {
    item.state = 'failed';
    item.error = err;
  }).finally(() => {
    item.abort = null;
    changed(item);
    const left = queue.filter((i) => i.state === 'waiting' || i.state === 'uploading').length;
    if (!left) {
      const failed = queue.filter((i) => i.state === 'failed').length;
      announce(failed ? `Uploads finished; ${failed} failed` : 'All uploads finished');
    }
    pump();
  });
}

function enqueue(files, opts) {
  for (const { file, name } of files) {
    queue.push({ key: uid(), file, name, size: file.size, state: 'waiting', loaded: 0, job: null, error: null, idem: uid(), opts });
  }
  changed(null);
  pump();
}

// ---- files and folders from a drop or a picker -----------------------------------------------------------

function ext(name) {
  const i = name.lastIndexOf('.');
  return i > 0 ? name.slice(i + 1).toLowerCase() : '';
}

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, out, inFolder) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, name: file.name, inFolder });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (let batch = await readEntries(reader); batch.length; batch = await readEntries(reader)) {
      for (const e of batch) await walk(e, out, true);
    }
  }
}

/** DataTransfer -> [{file, name, inFolder}]; entries are taken during the drop event, read afterwards. */
function dropped(dt) {
  const entries = [...(dt.items || [])].filter((i) => i.kind === 'file')
    .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)).filter(Boolean);
  const files = [...dt.files];
  return (async () => {
    if (!entries.length) return files.map((file) => ({ file, name: file.name, inFolder: false }));
    const out = [];
    for (const e of entries) await walk(e, out, false);
    return out;
  })();
}

function keepRecordings(list) {
  const kept = list.filter((f) => !f.inFolder || (!f.name.startsWith('.') && MEDIA_EXT.has(ext(f.name))));
  return { kept, skipped: list.length - kept.length };
}

// ---- the options form ----------------------------------------------------------------------------------

function field(name, label, control, hint) {
  control.id = `opt-${name}`;
  const err = h('p.field-error', { id: `err-${name}`, 'aria-live': 'polite' });
  const describedBy = [hint ? `hint-${name}` : null, `err-${name}`].filter(Boolean).join(' ');
  control.setAttribute('aria-describedby', describedBy);
  // a message about what was sent goes once the person changes it
  const fixed = () => { err.textContent = ''; control.removeAttribute('aria-invalid'); };
  control.addEventListener('input', fixed);
  control.addEventListener('change', fixed);
  return h(`div.field.f-${name}`, { dataset: { field: name } },
    h('label', { for: control.id }, label), control,
    hint ? h('p.hint', { id: `hint-${name}` }, hint) : null, err);
}

function options(root) {
  const engine = h('select', {}, h('option', { value: '' }, 'Deployment default'));
  const model = h('select', {}, h('option', { value: '' }, 'Default for the engine'));
  const language = h('input', { type: 'text', list: 'languages', placeholder: 'detect', autocomplete: 'off', spellcheck: 'false', size: 8 });
  const langList = h('datalist', { id: 'languages' }, LANGUAGES.map(([c, n]) => h('option', { value: c }, n)));
  const hotwords = h('textarea', { rows: 3, placeholder: 'one per line', spellcheck: 'false' });
  const hotwordsFile = h('input', { type: 'file', accept: '.txt,text/plain' });
  const formats = h('fieldset.formats', { id: 'opt-formats', 'aria-describedby': 'hint-formats err-formats' },
    h('legend', {}, 'Formats'),
    FORMATS.map((f) => h('label.check', {},
      h('input', { type: 'checkbox', name: 'format', value: f, checked: true, disabled: f === 'json' }), f.toUpperCase())),
    h('p.hint', { id: 'hint-formats' }, 'JSON is always kept: this page reads it.'),
    h('p.field-error', { id: 'err-formats', 'aria-live': 'polite' }));
  const priority = h('select', {}, ['normal', 'high', 'low'].map((p) => h('option', { value: p }, p)));
  const punc = h('input', { type: 'text', list: 'punc-models', placeholder: 'default', autocomplete: 'off', spellcheck: 'false' });
  const puncList = h('datalist', { id: 'punc-models' }, h('option', { value: 'none' }, 'no punctuation model'));
  const itn = h('select', {}, h('option', { value: '' }, 'Default (on for Chinese)'), h('option', { value: 'true' }, 'On'), h('option', { value: 'false' }, 'Off'));
  const webhook = h('input', { type: 'url', placeholder: 'https://…', autocomplete: 'off', spellcheck: 'false' });

  const fillModels = () => {
    const e = engine.value || (engines && engines.default_engine);
    const info = engines && engines.engines.find((x) => x.name === e);
    const dflt = !engine.value && engines && engines.default_model ? ` (${engines.default_model})` : '';
    replace(model, h('option', { value: '' }, `Default for the engine${dflt}`),
      (info ? info.models : []).map((m) => h('option', { value: m }, m)));
  };
  engine.addEventListener('change', fillModels);
  const loadEngines = async () => {
    try {
      engines = engines || await api('/v1/engines');
    } catch {
      return; // the form still works with the deployment's defaults
    }
    replace(engine, h('option', { value: '' }, `Deployment default (${engines.default_engine})`),
      engines.engines.map((e) => h('option', { value: e.name }, e.models.length ? e.name : `${e.name} (no model installed)`)));
    fillModels();
  };
  loadEngines();

  const box = h('details.options', {},
    h('summary', {}, 'Options'),
    h('div.grid', {},
      field('engine', 'Engine', engine),
      field('model', 'Model', model),
      field('language', 'Language', language, 'A code such as en or zh; empty: detected.'),
      field('priority', 'Priority', priority),
      field('punc_model', 'Punctuation model', punc, 'Empty: the deployment\u2019s default; none: off.'),
      field('itn', 'Numbers as digits (ITN)', itn),
      field('hotwords', 'Hotwords', hotwords, 'Names and terms to favour, one per line.'),
      field('hotwords_file', 'Hotwords file', hotwordsFile, 'A UTF-8 text file, one per line.'),
      formats,
      field('webhook_url', 'Webhook URL', webhook, 'Called once when each job ends.')),
    langList, puncList);
  root.append(box);

  const read = () => {
    const opts = { priority: priority.value };
    if (engine.value) opts.engine = engine.value;
    if (model.value) opts.model = model.value;
    if (language.value.trim()) opts.language = language.value.trim();
    const words = hotwords.value.split('\n').map((w) => w.trim()).filter(Boolean);
    if (words.length) opts.hotwords = words;
    opts.formats = [...formats.querySelectorAll('input:checked')].map((i) => i.value);
    if (punc.value.trim()) opts.punc_model = punc.value.trim();
    if (itn.value) opts.itn = itn.value === 'true';
    return { options: opts, webhook_url: webhook.value.trim() || null, hotwordsFile: hotwordsFile.files[0] || null };
  };
  return { read, box };
}

// ---- errors next to fields -----------------------------------------------------------------------------

function clearErrors(root) {
  for (const el of root.querySelectorAll('.field-error')) el.textContent = '';
  for (const el of root.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/** Show an ApiError's messages at their fields; returns the messages that belong to no field. */
function showErrors(root, err, generalField = null) {
  const general = [];
  let first = null;
  for (const { field: f, msg, index } of fieldErrors(err.detail ?? err.message)) {
    const name = f && root.querySelector(`#err-${f}`) ? f : generalField;
    const text = index !== null && index !== undefined && (!f || f === 'source_uri') ? `Line ${index + 1}: ${msg}` : msg;
    const slot = name && root.querySelector(`#err-${name}`);
    if (!slot) { general.push(text); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent} ${text}` : text;
    const control = root.querySelector(`#opt-${name}`);
    if (control) control.setAttribute('aria-invalid', 'true');
    first = first || control;
  }
  if (first) {
    const details = first.closest('details');
    if (details) details.open = true;
  }
  return general;
}

// ---- the view ------------------------------------------------------------------------------------------

function itemRow(item) {
  const pct = item.size ? Math.round((100 * item.loaded) / item.size) : 0;
  const bar = h('progress', { max: 100, value: item.state === 'done' ? 100 : pct, 'aria-label': `Upload of ${item.name}` });
  let status;
  if (item.state === 'waiting') status = 'waiting';
  else if (item.state === 'uploading') status = `${pct} %`;
  else if (item.state === 'done') status = h('a', { href: `#/job/${item.job.id}` }, item.job.state === 'QUEUED' ? 'queued' : item.job.state.toLowerCase());
  else status = 'failed';
  const actions = [];
  if (item.state === 'failed') {
    actions.push(h('button.small', { type: 'button', dataset: { act: 'retry', key: item.key }, 'aria-label': `Retry ${item.name}` }, 'Retry'));
  }
  if (item.state === 'uploading') {
    actions.push(h('button.small', { type: 'button', dataset: { act: 'stop', key: item.key }, 'aria-label': `Stop uploading ${item.name}` }, 'Stop'));
  }
  if (item.state !== 'uploading') {
    actions.push(h('button.small.quiet', { type: 'button', dataset: { act: 'remove', key: item.key }, 'aria-label': `Remove ${item.name} from this list` }, '\u2715'));
  }
  return h(`li.upload.u-${item.state}`, { dataset: { key: item.key } },
    h('span.name', { title: item.name }, item.name),
    h('span.size', {}, bytes(item.size)),
    bar,
    h('span.status', {}, status),
    h('span.actions', {}, actions),
    item.error ? h('p.upload-error', { role: 'alert' }, item.error.message) : null);
}

export function submitPanel(onBatch) {
  const root = h('section.send', { 'aria-labelledby': 'send-h' });
  const fileInput = h('input.visually-hidden', { type: 'file', multiple: true, id: 'file-input', tabindex: -1, 'aria-hidden': 'true' });
  const folderInput = h('input.visually-hidden', { type: 'file', multiple: true, webkitdirectory: true, id: 'folder-input', tabindex: -1, 'aria-hidden': 'true' });
  const note = h('p.note', { 'aria-live': 'polite' });
  const list = h('ul.uploads', { 'aria-label': 'Uploads' });
  const general = h('p.form-error', { role: 'alert' });
  const opts = options(h('div'));

  const add = (files) => {
    const { kept, skipped } = keepRecordings(files);
    note.textContent = skipped ? `${skipped} file${skipped > 1 ? 's' : ''} in the folder skipped: not recordings.` : '';
    if (!kept.length) return;
    clearErrors(root);
    general.textContent = '';
    enqueue(kept, opts.read());
    announce(`${kept.length} recording${kept.length > 1 ? 's' : ''} added to the uploads`);
  };

  fileInput.addEventListener('change', () => { add([...fileInput.files].map((file) => ({ file, name: file.name, inFolder: false }))); fileInput.value = ''; });
  folderInput.addEventListener('change', () => { add([...folderInput.files].map((file) => ({ file, name: file.name, inFolder: true }))); folderInput.value = ''; });

  const zone = h('div.dropzone', { id: 'dropzone' },
    h('p.big', {}, 'Drop recordings or a folder here'),
    h('p', {},
      h('button.primary', { type: 'button', onclick: () => fileInput.click() }, 'Choose files'), ' ',
      h('button', { type: 'button', onclick: () => folderInput.click() }, 'Choose a folder')),
    fileInput, folderInput);
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    dropped(e.dataTransfer).then(add, (err) => { note.textContent = `Could not read what was dropped: ${err.message}`; });
  });

  // links, one per line, as one batch
  const links = h('textarea', { rows: 5, spellcheck: 'false', placeholder: 'https://example.com/call-1.mp3\ns3://bucket/calls/call-2.wav' });
  const sendLinks = h('button.primary', { type: 'submit' }, 'Submit links');
  const batchNote = h('p.note', { 'aria-live': 'polite' });
  const linksForm = h('form.links', { novalidate: true }, field('source_uri', 'Links, one per line', links, 'https:// or s3:// addresses the service may read.'), sendLinks, batchNote);
  linksForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(root);
    general.textContent = '';
    batchNote.textContent = '';
    const lines = links.value.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    if (!lines.length) {
      root.querySelector('#err-source_uri').textContent = 'Paste at least one link.';
      links.setAttribute('aria-invalid', 'true');
      links.focus();
      return;
    }
    const o = opts.read();
    const common = { ...o.options };
    if (o.hotwordsFile) {
      const extra = (await o.hotwordsFile.text()).split(/\r?\n/).map((w) => w.trim()).filter(Boolean);
      common.hotwords = [...(common.hotwords || []), ...extra];
    }
    if (o.webhook_url) common.webhook_url = o.webhook_url;
    sendLinks.disabled = true;
    try {
      const out = await api('/v1/jobs/batch', { method: 'POST', json: { jobs: lines.map((source_uri) => ({ source_uri, ...common })) } });
      links.value = '';
      batchNote.textContent = '';
      batchNote.append(`${out.count} job${out.count > 1 ? 's' : ''} submitted as one batch. `,
        h('button.linkish', { type: 'button', onclick: () => onBatch(out.batch_id) }, 'Show this batch'));
      announce(`${out.count} jobs submitted`);
      onBatch(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      const left = showErrors(root, err, 'source_uri');
      if (left.length) general.textContent = left.join(' ');
    } finally {
      sendLinks.disabled = false;
    }
  });

  // two tabs: upload files, paste links
  const tabs = [['upload', 'Upload files', zone], ['links', 'Paste links', linksForm]];
  const tabButtons = tabs.map(([id, label]) => h('button', { type: 'button', role: 'tab', id: `tab-${id}`, 'aria-controls': `panel-${id}` }, label));
  const panels = tabs.map(([id, , body]) => h('div.panel', { role: 'tabpanel', id: `panel-${id}`, 'aria-labelledby': `tab-${id}` }, body));
  const select = (n, focus = false) => tabButtons.forEach((b, i) => {
    b.setAttribute('aria-selected', String(i === n));
    b.tabIndex = i === n ? 0 : -1;
    panels[i].hidden = i !== n;
    if (i === n && focus) b.focus();
  });
  tabButtons.forEach((b, i) => {
    b.addEventListener('click', () => select(i));
    b.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        e.preventDefault();
        select((i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length, true);
      }
    });
  });
  select(0);

  const clearDone = h('button.small.quiet', {
    type: 'button',
    onclick: () => {
      for (let i = queue.length - 1; i >= 0; i -= 1) if (queue[i].state === 'done') queue.splice(i, 1);
      changed(null);
    },
  }, 'Clear finished uploads');

  const render = () => {
    replace(list, queue.map(itemRow));
    list.hidden = !queue.length;
    clearDone.hidden = !queue.some((i) => i.state === 'done');
    // the field a failed upload's 422 names gets the message too
    for (const item of queue) {
      if (item.state === 'failed' && item.error && item.error.status === 422 && !item.shown) {
        item.shown = true;
        showErrors(root, item.error);
      }
    }
  };
  list.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (!b) return;
    const item = queue.find((i) => i.key === b.dataset.key);
    if (!item) return;
    if (b.dataset.act === 'retry') {
      clearErrors(root);
      general.textContent = '';
      if (item.error && item.error.status >= 400 && item.error.status < 500) {
        // refused as sent: the options as they are now (the person may have fixed the one refused), as a new request
        item.opts = opts.read();
        item.idem = uid();
      } // else a network error or a server error: the same request again, and its Idempotency-Key finds
      // the job if the first try made one
      item.state = 'waiting';
      item.error = null;
      item.shown = false;
      changed(item);
      pump();
    } else if (b.dataset.act === 'stop' && item.abort) {
      item.abort();
    } else if (b.dataset.act === 'remove') {
      queue.splice(queue.indexOf(item), 1);
      changed(null);
    }
  });

  // re-rendering the whole list at every progress event would be wasteful: one render per frame at most
  let pending = false;
  const sub = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  };
  subscribers.add(sub);
  render();

  root.append(
    h('h2', { id: 'send-h' }, 'Send recordings'),
    h('div.tabs', { role: 'tablist', 'aria-label': 'How to send' }, tabButtons),
    ...panels, opts.box, general, note, list, clearDone);
  return { el: root, dispose() { subscribers.delete(sub); } };
}
