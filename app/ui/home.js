// The home view: send recordings above, the live jobs table below.

import { h, replace } from './dom.js';
import { submitPanel, onCreated } from './submit.js';
import { jobsPanel, addJob } from './jobs.js';

export function homeView(root, params) {
  const setParams = (f) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    const s = q.toString();
    // the filters go into the address (shareable, kept on reload) without re-running the route
    history.replaceState(null, '', `#/${s ? `?${s}` : ''}`);
  };
  let jobs = null;
  const send = submitPanel((batchId) => { if (batchId) jobs.showBatch(batchId); else jobs.reload(); });
  jobs = jobsPanel(params, setParams);
  onCreated(addJob);
  replace(root, h('h1.visually-hidden', {}, 'Recordings'), send.el, jobs.el);
  return { dispose() { send.dispose(); jobs.dispose(); } };
}
