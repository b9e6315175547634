// Building the page without ever parsing data as HTML: every string becomes a text node
// or an attribute value, so a host named "<script>" shows as those characters.

// Attributes whose value would be followed or run: only our own relative links go there.
const URL_ATTRIBUTES = new Set(['href', 'src', 'action', 'formaction']);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (URL_ATTRIBUTES.has(name)) {
      el.setAttribute(name, safeUrl(value));
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Same-origin paths and blob: URLs made by this page; anything else (javascript:,
// another site) becomes a harmless '#'.
export function safeUrl(value) {
  const text = String(value);
  if (text.startsWith('blob:')) return text;
  if (text.startsWith('/') && !text.startsWith('//')) return text;
  if (text.startsWith('#')) return text;
  return '#';
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

let unique = 0;
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}

// A labelled form field; `help` is tied to the input for screen readers.
export function field({ label, name, type = 'text', value = '', required = false,
                        help = '', attrs = {} }) {
  const id = uid(name);
  const helpId = help ? `${id}-help` : null;
  const errorId = `${id}-error`;
  const input = h('input', { id, name, type, required, 'aria-describedby':
    [helpId, errorId].filter(Boolean).join(' '), ...attrs });
  input.value = value;
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    input,
    help ? h('p', { id: helpId, class: 'help' }, help) : null,
    h('p', { id: errorId, class: 'field-error', hidden: true }));
}

export function select({ label, name, options, value = '', help = '' }) {
  const id = uid(name);
  const helpId = help ? `${id}-help` : null;
  const el = h('select', { id, name, 'aria-describedby': helpId },
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  return h('div', { class: 'field' },
    h('label', { for: id }, label), el,
    help ? h('p', { id: helpId, class: 'help' }, help) : null);
}

// Marks fields the API refused (422 `errors`) and returns the messages it could not place.
export function showFieldErrors(form, errors = []) {
  for (const p of form.querySelectorAll('.field-error')) { p.hidden = true; p.textContent = ''; }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  const unplaced = [];
  for (const error of errors) {
    const name = (error.location || []).slice(-1)[0];
    const input = name ? form.elements.namedItem(name) : null;
    const p = input && input.id ? document.getElementById(`${input.id}-error`) : null;
    if (p) {
      p.textContent = error.message;
      p.hidden = false;
      input.setAttribute('aria-invalid', 'true');
    } else {
      unplaced.push(error.message);
    }
  }
  return unplaced;
}

// --- how values read -------------------------------------------------------------------

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '—';
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

// A <time> element: readable text, machine-readable datetime.
export function time(iso) {
  if (!iso) return '—';
  return h('time', { datetime: iso }, when(iso));
}

export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  const two = (n) => String(n).padStart(2, '0');
  return hours ? `${hours}:${two(minutes)}:${two(rest)}` : `${minutes}:${two(rest)}`;
}

export function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}
