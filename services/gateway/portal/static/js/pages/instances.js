// Recovered machines: their state and address, start/stop/terminate (confirmed first),
// and the VPN configuration to reach them.

import { ApiError, all, post, problemOf, request, seg } from '../api.js';
import { clear, h, time } from '../dom.js';
import { busy, confirmDialog, errorBox, heading, notify, saveText, table } from '../ui.js';
import { generateKeyPair, withPrivateKey } from '../wireguard.js';

export const title = 'Instances';

const STATE_WORDS = {
  pending: 'Starting', running: 'Running', stopped: 'Stopped', terminated: 'Terminated', failed: 'Failed',
};
const ACTIONS = {
  start: { when: ['stopped'], label: 'Start', text: 'The machine boots again; AWS bills it while it runs.' },
  stop: { when: ['running'], label: 'Stop', text: 'The machine shuts down; its disk is kept and it can be started again. Stopped machines are removed after 14 days.' },
  terminate: { when: ['pending', 'running', 'stopped'], label: 'Terminate', danger: true,
    text: 'The machine and its disk are deleted for good. The backups are not affected.' },
};

// wg-quick and WireGuard for Windows name the tunnel after the file, and Linux allows 15
// characters: "rc-" and 12 of the id (the gateway and reclo-recover name it alike).
export function tunnelFile(instanceId) {
  return `${`rc-${String(instanceId).replace(/[^A-Za-z0-9]/g, '')}`.slice(0, 15)}.conf`;
}

export async function render(main) {
  const box = errorBox();
  const list = h('div', {});
  const browserKeys = (await generateKeyPair()) !== null;
  const how = browserKeys
    ? 'Your browser makes the VPN key pair itself: only the public key is sent to ReClo, and the private key goes straight into the file you save.'
    : 'Your browser cannot make WireGuard keys, so the ReClo server makes the key pair for this one download, puts the private key in the file and keeps no copy of it.';

  async function refresh() {
    const instances = await all('/instances', 400);
    clear(list);
    list.append(table('Instances', ['Machine', 'State', 'Address', 'VPN', 'Created', 'Actions'],
      instances.map((instance) => [
        h('span', {}, h('a', { href: `/app/recoveries/${encodeURIComponent(instance.recovery_id)}` },
          instance.provider === 'aws' ? `AWS ${instance.instance_type || ''}`.trim() : 'Local machine'),
        h('br'), h('code', { class: 'small' }, instance.id)),
        h('span', { class: `badge instance-${instance.state}` }, STATE_WORDS[instance.state] || instance.state,
          instance.failure_reason ? `: ${instance.failure_reason}` : ''),
        instance.address ? h('code', {}, instance.address) : '—',
        instance.vpn_state || '—',
        time(instance.created_at),
        actions(instance),
      ]), { empty: 'No recovered machines. A recovery to AWS makes one.' }));
  }

  function actions(instance) {
    const buttons = Object.entries(ACTIONS)
      .filter(([, action]) => action.when.includes(instance.state))
      .map(([name, action]) => h('button', { type: 'button', class: `small ${action.danger ? 'danger' : 'secondary'}`,
        'aria-label': `${action.label} ${instance.id}`,
        onclick: (event) => act(event.currentTarget, instance, name) }, action.label));
    if (instance.state === 'running' && instance.vpn_state === 'ready') {
      buttons.push(h('button', { type: 'button', class: 'small', 'aria-label': `Download the VPN configuration for ${instance.id}`,
        onclick: (event) => busy(event.currentTarget, () => vpnConfig(instance)) }, 'Download VPN config'));
    }
    return h('div', { class: 'actions' }, buttons);
  }

  async function act(button, instance, name) {
    const action = ACTIONS[name];
    const sure = await confirmDialog({ title: `${action.label} this machine?`, text: action.text,
      confirm: action.label, danger: Boolean(action.danger) });
    if (!sure) return;
    await busy(button, async () => {
      try {
        await post(`/instances/${seg(instance.id)}/${name}`);
        notify(`${action.label}: done.`);
        await refresh();
      } catch (error) {
        box.show(error);
      }
    });
  }

  async function vpnConfig(instance) {
    box.show(null);
    try {
      const keys = await generateKeyPair();
      if (keys) {
        const created = await post(`/instances/${seg(instance.id)}/vpn-peers`,
          { public_key: keys.publicKey, name: 'portal' });
        saveText(tunnelFile(instance.id), withPrivateKey(created.config, keys.privateKey));
        notify('The VPN configuration is saved. Its key was made in this browser.');
      } else {
        const response = await request('POST', `/portal/instances/${seg(instance.id)}/vpn-config`,
          { accept: 'text/plain' });
        if (!response.ok) throw new ApiError(response.status, await problemOf(response));
        const disposition = response.headers.get('Content-Disposition') || '';
        const name = (/filename="([^"]+)"/.exec(disposition) || [])[1] || tunnelFile(instance.id);
        saveText(name, await response.text());
        notify('The VPN configuration is saved. The server made its key for this download and kept no copy.');
      }
    } catch (error) {
      box.show(error);
    }
  }

  main.append(heading('Instances'), box,
    h('p', { class: 'help', id: 'vpn-key-origin' }, how),
    h('p', { class: 'help' }, 'Open the saved file with WireGuard (Windows, macOS, phones) or run: sudo wg-quick up ./the-file.conf'),
    list);
  await refresh();
  return null;
}
