// Sign in and sign up. Errors are the API's own words (a wrong password reads "the
// username or the password is wrong"), placed beside the field they concern.

import { post, session } from '../api.js';
import { field, h, showFieldErrors } from '../dom.js';
import { busy, errorBox, heading, notify, showRefusal } from '../ui.js';

// The API's bounds (shared/api/auth.py), so the form says it before the server does.
const USERNAME_MAX = 64;
const PASSWORD_MIN = 8;
const PASSWORD_MAX = 1024;

function credentialsForm({ submitLabel, newPassword }) {
  const form = h('form', { novalidate: true, class: 'card narrow' },
    field({ label: 'Username', name: 'username', attrs: {
      autocomplete: 'username', maxlength: USERNAME_MAX, autocapitalize: 'none', spellcheck: 'false' } }),
    field({ label: 'Password', name: 'password', type: 'password',
      help: newPassword ? `At least ${PASSWORD_MIN} characters; a long passphrase is best.` : '',
      attrs: { autocomplete: newPassword ? 'new-password' : 'current-password', maxlength: PASSWORD_MAX } }),
    newPassword ? field({ label: 'Repeat the password', name: 'repeat', type: 'password',
      attrs: { autocomplete: 'new-password', maxlength: PASSWORD_MAX } }) : null,
    h('button', { type: 'submit' }, submitLabel));
  return form;
}

// What the browser can tell before asking the server; the server checks everything again.
function localErrors(form, newPassword) {
  const errors = [];
  const username = form.elements.username.value;
  const password = form.elements.password.value;
  if (!username.trim()) errors.push({ location: ['username'], message: 'Enter your username.' });
  else if (username.length > USERNAME_MAX) errors.push({ location: ['username'], message: `At most ${USERNAME_MAX} characters.` });
  if (!password) errors.push({ location: ['password'], message: 'Enter your password.' });
  else if (password.length > PASSWORD_MAX) errors.push({ location: ['password'], message: `At most ${PASSWORD_MAX} characters.` });
  else if (newPassword && password.length < PASSWORD_MIN) errors.push({ location: ['password'], message: `At least ${PASSWORD_MIN} characters.` });
  if (newPassword && !errors.length && form.elements.repeat.value !== password) {
    errors.push({ location: ['repeat'], message: 'The two passwords differ.' });
  }
  return errors;
}

async function signInWith(username, password) {
  const result = await post('/auth/login', { username, password });
  session.save(result.token, result.user);
}

function afterSignIn(navigate) {
  const next = new URLSearchParams(location.search).get('next');
  // Only a path of this portal: never an address someone put in a link.
  const safe = next && next.startsWith('/app/') && !next.startsWith('//') ? next : '/app/';
  return navigate(safe, { replace: true });
}

function wire(form, box, submit) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    box.show(null);
    const button = form.querySelector('button[type=submit]');
    await busy(button, async () => {
      try {
        await submit();
      } catch (error) {
        showRefusal(box, form, error);
        if (!form.querySelector('[aria-invalid=true]')) form.elements.username.focus();
      }
    });
  });
}

export const signIn = {
  title: 'Sign in',
  async render(main, _params, { navigate }) {
    const box = errorBox();
    const form = credentialsForm({ submitLabel: 'Sign in', newPassword: false });
    wire(form, box, async () => {
      const errors = localErrors(form, false);
      showFieldErrors(form, errors);
      if (errors.length) throw new Error('Please fill in both fields.');
      await signInWith(form.elements.username.value, form.elements.password.value);
      notify('');
      await afterSignIn(navigate);
    });
    main.append(heading('Sign in'), box, form,
      h('p', {}, 'No account yet? ', h('a', { href: '/app/signup' }, 'Sign up')));
    return null;
  },
};

export const signUp = {
  title: 'Sign up',
  async render(main, _params, { navigate }) {
    const box = errorBox();
    const form = credentialsForm({ submitLabel: 'Create the account', newPassword: true });
    wire(form, box, async () => {
      const errors = localErrors(form, true);
      showFieldErrors(form, errors);
      if (errors.length) throw new Error('Please correct the marked fields.');
      const username = form.elements.username.value;
      const password = form.elements.password.value;
      await post('/auth/register', { username, password });
      await signInWith(username, password);
      notify('Your account is ready. Next: mint an agent key for each server to protect.');
      await navigate('/app/', { replace: true });
    });
    main.append(heading('Sign up'), box, form,
      h('p', {}, 'Already have an account? ', h('a', { href: '/app/signin' }, 'Sign in')));
    return null;
  },
};
