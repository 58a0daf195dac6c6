// Usage per UTC day (GET /v1/usage): jobs, audio submitted and transcribed, engine seconds; a bar chart drawn
// as SVG here (no library), and the same numbers in a table for screen readers and for copying.

import { api, fieldErrors, ApiError } from './api.js';
import { h, replace, duration } from './dom.js';

const METRICS = {
  jobs: { label: 'Jobs', bars: [['jobs_submitted', 'submitted'], ['jobs_completed', 'completed']], fmt: (v) => String(v) },
  audio: { label: 'Audio (minutes)', bars: [['audio_submitted_s', 'submitted'], ['audio_transcribed_s', 'transcribed']], fmt: (v) => (v / 60).toFixed(1), scale: 1 / 60 },
  engine: { label: 'Engine time (minutes)', bars: [['engine_s', 'engine']], fmt: (v) => (v / 60).toFixed(2), scale: 1 / 60 },
};

function isoDay(d) { return d.toISOString().slice(0, 10); }

const ZERO = { jobs_submitted: 0, audio_submitted_s: 0, jobs_completed: 0, audio_transcribed_s: 0, engine_s: 0 };

/** The server lists only days that had usage: every day of the range, zeros where it had none. */
export function everyDay(from, to, days) {
  const have = new Map(days.map((d) => [d.day, d]));
  const out = [];
  const end = new Date(`${to}T00:00:00Z`);
  for (let d = new Date(`${from}T00:00:00Z`); d <= end && out.length < 3660; d = new Date(d.getTime() + 86400000)) {
    const day = isoDay(d);
    out.push(have.get(day) || { day, ...ZERO });
  }
  return out;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function chart(days, metric) {
  const m = METRICS[metric];
  const W = 720;
  const H = 240;
  const pad = { l: 48, r: 8, t: 12, b: 28 };
  const scale = m.scale || 1;
  const max = niceMax(Math.max(0, ...days.flatMap((d) => m.bars.map(([k]) => d[k] * scale))));
  const iw = W - pad.l - pad.r;
  const ih = H - pad.t - pad.b;
  const slot = iw / Math.max(1, days.length);
  const bw = Math.max(1, (slot * 0.8) / m.bars.length);
  const y = (v) => pad.t + ih - (v / max) * ih;
  const svg = h('svg.chart', {
    viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${m.label} per day, ${days[0]?.day || ''} to ${days[days.length - 1]?.day || ''}; the table below has the numbers`,
  });
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    svg.append(h('line.grid', { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v) }),
      h('text.axis', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, Number.isInteger(v) ? String(v) : v.toFixed(1)));
  }
  days.forEach((d, i) => {
    m.bars.forEach(([k, name], j) => {
      const v = d[k] * scale;
      const x = pad.l + i * slot + slot * 0.1 + j * bw;
      svg.append(h(`rect.bar.b${j}`, { x, y: y(v), width: bw, height: Math.max(0, pad.t + ih - y(v)) },
        h('title', {}, `${d.day} ${name}: ${m.fmt(d[k])}`)));
    });
  });
  const every = Math.max(1, Math.ceil(days.length / 6));
  days.forEach((d, i) => {
    if (i % every && i !== days.length - 1) return;
    svg.append(h('text.axis', { x: pad.l + i * slot + slot / 2, y: H - 8, 'text-anchor': 'middle' }, d.day.slice(5)));
  });
  const legend = h('p.legend', {}, m.bars.map(([, name], j) => h('span', {}, h(`span.swatch.b${j}`, { 'aria-hidden': 'true' }), name)));
  return h('figure.chartbox', {}, svg, legend);
}

export function usageView(root, params) {
  const end = new Date();
  const start = new Date(end.getTime() - 29 * 86400000);
  const from = h('input', { type: 'date', id: 'u-from', value: params.get('from') || isoDay(start), 'aria-describedby': 'err-from' });
  const to = h('input', { type: 'date', id: 'u-to', value: params.get('to') || isoDay(end), 'aria-describedby': 'err-to' });
  const metric = h('select', { id: 'u-metric' }, Object.entries(METRICS).map(([k, m]) => h('option', { value: k }, m.label)));
  const out = h('div.usage-out');
  const error = h('p.form-error', { role: 'alert' });
  const form = h('form.filters', { novalidate: true, 'aria-label': 'Days' },
    h('div.field', {}, h('label', { for: 'u-from' }, 'From'), from, h('p.field-error', { id: 'err-from' })),
    h('div.field', {}, h('label', { for: 'u-to' }, 'To'), to, h('p.field-error', { id: 'err-to' })),
    h('div.field', {}, h('label', { for: 'u-metric' }, 'Chart'), metric),
    h('div.field.buttons', {}, h('button', { type: 'submit' }, 'Show')));
  let data = null;
  let stopped = false;

  const draw = () => {
    if (!data) return;
    const t = data.total;
    replace(out,
      h('dl.totals', {},
        [['Jobs submitted', t.jobs_submitted], ['Jobs completed', t.jobs_completed],
          ['Audio submitted', duration(t.audio_submitted_s)], ['Audio transcribed', duration(t.audio_transcribed_s)],
          ['Engine time', duration(t.engine_s)]].map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
      chart(data.days, metric.value),
      h('div.table-wrap', {}, h('table.usage', {},
        h('caption', {}, `Per UTC day, ${data.from} to ${data.to}`),
        h('thead', {}, h('tr', {}, ['Day', 'Jobs submitted', 'Jobs completed', 'Audio submitted', 'Audio transcribed', 'Engine time']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, [...data.days].reverse().map((d) => h('tr', {},
          h('th', { scope: 'row' }, d.day), h('td', {}, d.jobs_submitted), h('td', {}, d.jobs_completed),
          h('td', {}, duration(d.audio_submitted_s)), h('td', {}, duration(d.audio_transcribed_s)), h('td', {}, duration(d.engine_s))))))));
  };

  const load = async () => {
    error.textContent = '';
    for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
    history.replaceState(null, '', `#/usage?from=${from.value}&to=${to.value}`);
    try {
      const u = await api('/v1/usage', { query: { from: from.value, to: to.value } });
      if (stopped) return;
      data = { ...u, days: everyDay(u.from, u.to, u.days) };
      draw();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      for (const { field, msg } of fieldErrors(err.detail ?? err.message)) {
        const slot = field && form.querySelector(`#err-${field}`);
        if (slot) slot.textContent = msg; else error.textContent = msg;
      }
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); load(); });
  metric.addEventListener('change', draw);
  replace(root, h('h1', {}, 'Usage'), h('p.hint', {}, 'Your team\u2019s usage per UTC day.'), form, error, out);
  load();
  return { dispose() { stopped = true; } };
}
