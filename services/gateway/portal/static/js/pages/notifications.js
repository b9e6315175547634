// Notification settings: where ReClo tells the user about failures and finished work (a
// signed webhook and/or e-mail), which events, the webhook's signing secret (shown once),
// and how recent messages fared (docs/notifications.md).

import { all, api, get, post } from '../api.js';
import { clear, field, h, showFieldErrors, time, uid } from '../dom.js';
import { busy, confirmDialog, errorBox, heading, notify, showRefusal, table } from '../ui.js';

export const title = 'Notifications';

// shared/api/notifications.py EventKind, in words.
export const EVENT_WORDS = {
  BackupFailed: 'A backup failed',
  BackupOverdue: 'A backup is overdue',
  RecoveryFailed: 'A recovery failed',
  RecoveryCompleted: 'A recovery completed',
  InstanceReady: 'A recovered machine is ready',
  DrillFailed: 'A recovery drill failed',
};
const DELIVERY_WORDS = { pending: 'Waiting', sending: 'Sending', delivered: 'Delivered', failed: 'Failed' };
const WEBHOOK_URL_MAX = 2048;
const EMAIL_MAX = 254;

function showSecret(where, secret, rotatedUntil) {
  clear(where);
  if (!secret) return;
  const output = h('output', { class: 'secret', id: 'webhook-secret' }, secret);
  where.append(h('section', { class: 'card highlight' },
    h('h2', {}, 'Webhook signing secret'),
    h('p', {}, 'Copy it now: it is shown only once. Your receiver checks each message\'s X-Reclo-Signature header with it.'),
    rotatedUntil ? h('p', {}, 'The previous secret keeps signing until ', time(rotatedUntil), ', so your receiver can switch without losing messages.') : null,
    h('p', {}, output)));
  output.focus();
}

export async function render(main) {
  const box = errorBox();
  const secretBox = h('div', { 'aria-live': 'polite' });
  const hint = h('p', { class: 'help', id: 'secret-hint' });
  const rotate = h('button', { type: 'button', class: 'secondary', id: 'rotate-secret' }, 'Rotate the signing secret');
  const deliveries = h('section', { 'aria-labelledby': 'deliveries-title' });

  const everything = uid('events-all');
  const some = uid('events-some');
  const kinds = h('div', { class: 'indent', id: 'event-kinds' },
    Object.entries(EVENT_WORDS).map(([kind, words]) => {
      const id = uid(kind);
      return h('div', { class: 'radio' },
        h('input', { type: 'checkbox', id, name: 'events', value: kind }),
        h('label', { for: id }, words));
    }));
  const form = h('form', { novalidate: true, class: 'card' },
    field({ label: 'Webhook URL', name: 'webhook_url', type: 'url',
      help: 'An http(s) address that receives a signed JSON POST for each event. Leave it empty for none.',
      attrs: { maxlength: WEBHOOK_URL_MAX, autocomplete: 'off', spellcheck: 'false', placeholder: 'https://' } }),
    field({ label: 'E-mail address', name: 'email', type: 'email',
      help: 'Receives a plain-text e-mail for each event. Leave it empty for none.',
      attrs: { maxlength: EMAIL_MAX, autocomplete: 'email' } }),
    h('fieldset', {},
      h('legend', {}, 'What to send'),
      h('div', { class: 'radio' },
        h('input', { type: 'radio', id: everything, name: 'scope', value: 'all' }),
        h('label', { for: everything }, 'Everything, including kinds of events added later')),
      h('div', { class: 'radio' },
        h('input', { type: 'radio', id: some, name: 'scope', value: 'some' }),
        h('label', { for: some }, 'Only these:')),
      kinds),
    h('button', { type: 'submit' }, 'Save'));

  const syncScope = () => {
    const only = form.elements.scope.value === 'some';
    for (const input of kinds.querySelectorAll('input')) input.disabled = !only;
  };
  form.addEventListener('change', syncScope);

  function fill(settings) {
    form.elements.webhook_url.value = settings.webhook_url || '';
    form.elements.email.value = settings.email || '';
    form.elements.scope.value = settings.all_events ? 'all' : 'some';
    for (const input of kinds.querySelectorAll('input')) input.checked = settings.events.includes(input.value);
    syncScope();
    hint.textContent = settings.webhook_secret_hint
      ? `The webhook's signing secret ends in …${settings.webhook_secret_hint.replace(/^…+/, '')}.` : '';
    rotate.hidden = !settings.webhook_url;
  }

  async function refreshDeliveries() {
    const items = await all('/notifications/deliveries', 50);
    clear(deliveries);
    deliveries.append(h('h2', { id: 'deliveries-title' }, 'Recent messages'), table('Recent messages',
      ['When', 'Event', 'To', 'State', 'Attempts', 'Last error'],
      items.map((d) => [
        time(d.created_at),
        EVENT_WORDS[d.event_type] || d.event_type,
        `${d.channel === 'email' ? 'E-mail' : 'Webhook'}: ${d.target}`,
        h('span', { class: `badge delivery-${d.state}` }, DELIVERY_WORDS[d.state] || d.state),
        String(d.attempts),
        d.last_error || '—',
      ]), { empty: 'No messages sent yet.' }));
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    box.show(null);
    clear(secretBox);
    const webhook = form.elements.webhook_url.value.trim();
    const email = form.elements.email.value.trim();
    const only = form.elements.scope.value === 'some';
    const chosen = [...kinds.querySelectorAll('input:checked')].map((input) => input.value);
    if (only && !chosen.length) {
      box.show(new Error('Choose at least one kind of event, or "Everything".'));
      return;
    }
    showFieldErrors(form, []);
    await busy(form.querySelector('button[type=submit]'), async () => {
      try {
        const saved = await api('PUT', '/notifications/settings', { body: {
          webhook_url: webhook || null, email: email || null, events: only ? chosen : null } });
        fill(saved);
        showSecret(secretBox, saved.webhook_secret, null);
        notify('The notification settings are saved.');
      } catch (error) {
        showRefusal(box, form, error);
      }
    });
  });

  rotate.addEventListener('click', async () => {
    const sure = await confirmDialog({ title: 'Rotate the signing secret?',
      text: 'A new secret signs every webhook from now on; the old one also signs them for a grace period, so your receiver can switch without losing messages.',
      confirm: 'Rotate' });
    if (!sure) return;
    await busy(rotate, async () => {
      try {
        const saved = await post('/notifications/settings/rotate-secret');
        fill(saved);
        showSecret(secretBox, saved.webhook_secret, saved.previous_secret_valid_until);
      } catch (error) {
        box.show(error);
      }
    });
  });

  main.append(heading('Notifications'),
    h('p', {}, 'ReClo can tell you when a backup fails or is overdue, when a recovery ends, when a recovered machine is ready and when a recovery drill fails.'),
    box, form, h('div', { class: 'actions' }, rotate), hint, secretBox, deliveries);
  fill(await get('/notifications/settings'));
  await refreshDeliveries();
  return null;
}
