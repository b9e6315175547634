// The portal's entry: a small router over /app/... paths (History API), the account area
// and sign-out. Each page module renders into <main> and may return a function that stops
// what it started (a live progress stream) when the reader leaves.

import { api, session, whenSignedOut } from './api.js';
import { append, clear, h } from './dom.js';
import * as auth from './pages/auth.js';
import * as dashboard from './pages/dashboard.js';
import * as downloads from './pages/downloads.js';
import * as host from './pages/host.js';
import * as instances from './pages/instances.js';
import * as keys from './pages/keys.js';
import * as notifications from './pages/notifications.js';
import * as recover from './pages/recover.js';
import * as recoveries from './pages/recoveries.js';
import * as recovery from './pages/recovery.js';
import { notify } from './ui.js';

const ROUTES = [
  { path: '/app/signin', page: auth.signIn, open: true, guest: true },
  { path: '/app/signup', page: auth.signUp, open: true, guest: true },
  { path: '/app/', page: dashboard },
  { path: '/app/hosts/:id', page: host },
  { path: '/app/recover/:backup', page: recover },
  { path: '/app/recoveries', page: recoveries },
  { path: '/app/recoveries/:id', page: recovery },
  { path: '/app/instances', page: instances },
  { path: '/app/keys', page: keys },
  { path: '/app/notifications', page: notifications },
  { path: '/app/downloads', page: downloads, open: true },
];

function match(pathname) {
  const parts = pathname.replace(/\/+$/, '').split('/');
  for (const route of ROUTES) {
    const want = route.path.replace(/\/+$/, '').split('/');
    if (want.length !== parts.length) continue;
    const params = {};
    let ok = true;
    want.forEach((w, i) => {
      if (w.startsWith(':')) params[w.slice(1)] = decodeURIComponent(parts[i]);
      else if (w !== parts[i]) ok = false;
    });
    if (ok) return { route, params };
  }
  return null;
}

let leave = null;

export async function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  await show();
}

async function show() {
  if (typeof leave === 'function') leave();
  leave = null;
  const main = document.getElementById('main');
  const found = match(location.pathname);
  if (!found) {
    clear(main);
    append(main, [h('h1', { tabindex: -1 }, 'Page not found'),
      h('p', {}, h('a', { href: '/app/' }, 'Go to the dashboard'))]);
    focusHeading(main);
    return;
  }
  if (!found.route.open && !session.token) {
    const next = location.pathname + location.search;
    history.replaceState(null, '', `/app/signin?next=${encodeURIComponent(next)}`);
    return show();
  }
  if (found.route.guest && session.token) {
    history.replaceState(null, '', '/app/');
    return show();
  }
  drawChrome();
  clear(main);
  main.setAttribute('aria-busy', 'true');
  const page = found.route.page;
  document.title = `${page.title} — ReClo`;
  try {
    leave = await page.render(main, found.params, { navigate });
  } catch (error) {
    clear(main);
    append(main, [h('h1', { tabindex: -1 }, page.title),
      h('p', { class: 'error', role: 'alert' }, error.message || 'Something went wrong.')]);
  } finally {
    main.removeAttribute('aria-busy');
  }
  focusHeading(main);
}

// After each screen change, the heading gets the focus: a screen reader announces the new
// page and the keyboard starts from its top.
function focusHeading(main) {
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

function drawChrome() {
  const nav = document.getElementById('nav');
  const account = document.getElementById('account');
  clear(account);
  nav.hidden = !session.token;
  for (const a of nav.querySelectorAll('a')) {
    const here = a.getAttribute('href') === location.pathname
      || (a.getAttribute('href') !== '/app/' && location.pathname.startsWith(a.getAttribute('href')));
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (session.token) {
    const user = session.user || {};
    append(account, [
      h('span', { class: 'who' }, user.username || ''),
      h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'),
    ]);
  } else {
    append(account, [h('a', { href: '/app/signin' }, 'Sign in'), ' ',
      h('a', { href: '/app/signup' }, 'Sign up')]);
  }
}

async function signOut() {
  try {
    await api('POST', '/auth/logout');
  } catch {
    // Signed out here either way; the token expires on its own.
  }
  session.clear();
  notify('You are signed out.');
  await navigate('/app/signin');
}

whenSignedOut(() => {
  notify('Your session has ended. Please sign in again.');
  navigate(`/app/signin?next=${encodeURIComponent(location.pathname)}`, { replace: true });
});

document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest('a');
  if (!a || a.hasAttribute('download') || a.target) return;
  const href = a.getAttribute('href');
  if (!href || !href.startsWith('/app')) return;
  event.preventDefault();
  notify('');
  navigate(href);
});

window.addEventListener('popstate', show);
show();
