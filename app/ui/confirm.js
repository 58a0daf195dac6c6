// A confirmation in a modal <dialog> (focus kept inside, Escape cancels), instead of window.confirm.

import { h } from './dom.js';

export function confirmDialog(question, detail, action) {
  return new Promise((resolve) => {
    const yes = h('button.danger', { type: 'button', value: 'yes' }, action);
    const no = h('button', { type: 'button', value: 'no' }, 'Keep it');
    const dialog = h('dialog.confirm', { 'aria-labelledby': 'confirm-q', 'aria-describedby': 'confirm-d' },
      h('h2', { id: 'confirm-q' }, question),
      h('p', { id: 'confirm-d' }, detail),
      h('div.buttons', {}, no, yes));
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    yes.addEventListener('click', () => done(true));
    no.addEventListener('click', () => done(false));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
    no.focus(); // the safe answer first
  });
}
