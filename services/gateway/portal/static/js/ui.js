// Small pieces every page uses: the status line, error boxes, the confirmation dialog.

import { ApiError } from './api.js';
import { append, clear, h, showFieldErrors } from './dom.js';

// The polite live region under the header: announced by screen readers, seen by everyone.
export function notify(text) {
  document.getElementById('notice').textContent = text;
}

// An element that shows an error in words when given one (role=alert: read out at once).
export function errorBox() {
  const box = h('div', { class: 'error', role: 'alert', hidden: true });
  box.show = (error) => {
    clear(box);
    if (!error) { box.hidden = true; return; }
    const lines = Array.isArray(error) ? error : [error.message || String(error)];
    append(box, lines.map((line) => h('p', {}, line)));
    box.hidden = false;
  };
  return box;
}

// A refusal shown where it belongs: field errors beside their fields (the box then only
// points at them, rather than saying it twice), anything else in the box.
export function showRefusal(box, form, error) {
  if (!(error instanceof ApiError)) {
    box.show(error);  // the form's own checks marked their fields already
  } else {
    const unplaced = showFieldErrors(form, error.errors);
    if (error.errors.length && !unplaced.length) box.show(new Error('Please correct the marked fields.'));
    else box.show(unplaced.length ? [error.message, ...unplaced] : error);
  }
  const invalid = form.querySelector('[aria-invalid=true]');
  if (invalid) invalid.focus();
}

// Runs `work` with the button disabled, so a double click does not start two recoveries.
export async function busy(button, work) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = label;
  }
}

// A modal <dialog>: it traps the focus, Escape cancels, and the focus returns to the
// button that opened it. Resolves true only on the confirming button.
export function confirmDialog({ title, text, confirm = 'Confirm', danger = false }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'dialog-title' },
      h('h2', { id: 'dialog-title' }, title),
      h('p', {}, text),
      h('div', { class: 'actions' },
        h('button', { type: 'button', value: 'no', class: 'secondary' }, 'Cancel'),
        h('button', { type: 'button', value: 'yes', class: danger ? 'danger' : '' }, confirm)));
    const finish = (answer) => {
      dialog.close();
      dialog.remove();
      if (opener && typeof opener.focus === 'function') opener.focus();
      resolve(answer);
    };
    dialog.addEventListener('cancel', (event) => { event.preventDefault(); finish(false); });
    for (const button of dialog.querySelectorAll('button')) {
      button.addEventListener('click', () => finish(button.value === 'yes'));
    }
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector('button.secondary').focus();
  });
}

// Hands a file made in the page (a VPN config) to the browser as a download.
export function saveText(filename, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function heading(text) {
  return h('h1', { tabindex: -1 }, text);
}

export function table(caption, headers, rows, { empty = 'Nothing yet.' } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: 0 },
    h('table', {},
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, headers.map((text) => h('th', { scope: 'col' }, text)))),
      h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((cell, i) =>
        (i === 0 ? h('th', { scope: 'row' }, cell) : h('td', { 'data-label': headers[i] }, cell))))))));
}
