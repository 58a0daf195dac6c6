// Small DOM helpers. Every text that reaches the page goes through textContent or a Text node: nothing here
// ever parses a string as HTML (the page's Trusted Types policy would refuse it anyway).

/**
 * h('button.primary', {type: 'button', onclick: fn, 'aria-label': 'Play'}, 'text', childNode, [more])
 * Attributes are set with setAttribute (never 'style' or 'on…' strings); functions under on… keys become
 * listeners; strings and numbers among the children become Text nodes.
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = name === 'svg' || SVG_TAGS.has(name)
    ? document.createElementNS('http://www.w3.org/2000/svg', name)
    : document.createElement(name || 'div');
  if (classes.length) el.classList.add(...classes);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'indeterminate') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(['g', 'rect', 'line', 'text', 'title', 'path', 'polyline', 'circle']);

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

// ---- formatting --------------------------------------------------------------------------------------------

export function clock(s, withMs = false) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  const neg = s < 0;
  s = Math.abs(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  const ms = Math.round((s - Math.floor(s)) * 1000);
  const mm = String(m).padStart(h ? 2 : 1, '0');
  let out = (h ? `${h}:` : '') + `${mm}:${String(sec).padStart(2, '0')}`;
  if (withMs) out += '.' + String(Math.min(ms, 999)).padStart(3, '0');
  return (neg ? '-' : '') + out;
}

export function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const shortFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function when(iso, short = false) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (isNaN(d)) return '–';
  return (short ? shortFmt : dateFmt).format(d);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

export const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);

export function stateBadge(state) {
  return h(`span.badge.s-${String(state).toLowerCase()}`, { text: state });
}

/** A live region for short status messages a screen reader reads out. */
export function announce(text) {
  const el = document.getElementById('announcer');
  if (!el) return;
  el.textContent = '';
  // a change after the clear, so the same message twice is read twice
  requestAnimationFrame(() => { el.textContent = text; });
}

export function uid() {
  return crypto.randomUUID ? crypto.randomUUID()
    : 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (c) => {
      const r = (crypto.getRandomValues(new Uint8Array(1))[0] & 15);
      return (c === 'x' ? r : (r & 3) | 8).toString(16);
    });
}
