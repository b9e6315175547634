// Agent keys: one per server; shown once when minted, revocable.

import { all, del, post, seg } from '../api.js';
import { clear, field, h, showFieldErrors, time } from '../dom.js';
import { busy, confirmDialog, errorBox, heading, notify, showRefusal, table } from '../ui.js';

export const title = 'Agent keys';
const HOST_MAX = 255;

export async function render(main) {
  const box = errorBox();
  const minted = h('div', { class: 'minted', 'aria-live': 'polite' });
  const list = h('section', { 'aria-labelledby': 'keys-list' });
  const form = h('form', { novalidate: true, class: 'card' },
    h('h2', {}, 'Mint a key'),
    field({ label: 'Server name', name: 'host', help: 'The name of the server this key will back up, e.g. fileserver-01.',
      attrs: { maxlength: HOST_MAX, autocomplete: 'off', spellcheck: 'false' } }),
    h('button', { type: 'submit' }, 'Mint the key'));

  async function refresh() {
    const keys = await all('/agent-keys');
    clear(list);
    list.append(h('h2', { id: 'keys-list' }, 'Your keys'), table('Agent keys',
      ['Server', 'Created', 'State', ''],
      keys.map((key) => [
        key.host,
        time(key.created_at),
        key.revoked_at ? h('span', {}, 'Revoked ', time(key.revoked_at)) : 'Active',
        key.revoked_at ? '' : h('button', { type: 'button', class: 'danger small',
          'aria-label': `Revoke the key for ${key.host}`, onclick: (event) => revoke(event.currentTarget, key) }, 'Revoke'),
      ]), { empty: 'No keys yet.' }));
  }

  async function revoke(button, key) {
    const sure = await confirmDialog({ title: `Revoke the key for ${key.host}?`,
      text: 'The agent using it stops backing up within seconds, until it gets a new key.',
      confirm: 'Revoke', danger: true });
    if (!sure) return;
    await busy(button, async () => {
      try {
        await del(`/agent-keys/${seg(key.id)}`);
        notify(`The key for ${key.host} is revoked.`);
        await refresh();
      } catch (error) {
        box.show(error);
      }
    });
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    box.show(null);
    clear(minted);
    const host = form.elements.host.value.trim();
    if (!host) {
      showFieldErrors(form, [{ location: ['host'], message: 'Enter the server name.' }]);
      form.elements.host.focus();
      return;
    }
    showFieldErrors(form, []);
    await busy(form.querySelector('button'), async () => {
      try {
        const key = await post('/agent-keys', { host });
        showOnce(minted, key);
        form.reset();
        await refresh();
      } catch (error) {
        showRefusal(box, form, error);
      }
    });
  });

  main.append(heading('Agent keys'),
    h('p', {}, 'An agent key lets the ReClo agent on one server upload its backups. It can do nothing else: it cannot read other servers, recover, or sign in here.'),
    box, form, minted, list);
  await refresh();
  return null;
}

function showOnce(where, key) {
  const output = h('output', { class: 'secret', id: 'minted-key' }, key.key);
  const copy = h('button', { type: 'button', class: 'secondary small', onclick: async () => {
    try {
      await navigator.clipboard.writeText(key.key);
      notify('The key is copied.');
    } catch {
      notify('Select the key and copy it by hand.');
    }
  } }, 'Copy');
  where.append(h('section', { class: 'card highlight' },
    h('h2', {}, `Key for ${key.host}`),
    h('p', {}, 'Copy it now: it is shown only once. Put it in the agent\'s configuration on that server (see Downloads).'),
    h('p', {}, output, ' ', copy)));
  output.focus();
}
