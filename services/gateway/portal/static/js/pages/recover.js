// Recover: the backup (chosen on the server's page, changeable here) → where to → confirm.

import { all, get, post, seg } from '../api.js';
import { bytes, clear, field, h, showFieldErrors, uid, when } from '../dom.js';
import { busy, errorBox, heading, showRefusal } from '../ui.js';
import { recoverable } from './host.js';

export const title = 'Recover';

// Common EC2 sizes for a recovered server; "" lets the service choose its default.
export const INSTANCE_TYPES = [
  ['', 'Let ReClo choose (a general-purpose size)'],
  ['t3.medium', 't3.medium — 2 vCPU, 4 GiB'],
  ['t3.large', 't3.large — 2 vCPU, 8 GiB'],
  ['m6i.large', 'm6i.large — 2 vCPU, 8 GiB'],
  ['m6i.xlarge', 'm6i.xlarge — 4 vCPU, 16 GiB'],
  ['m6i.2xlarge', 'm6i.2xlarge — 8 vCPU, 32 GiB'],
  ['r6i.xlarge', 'r6i.xlarge — 4 vCPU, 32 GiB'],
];
export const FORMATS = [
  ['raw', 'Raw (.img) — any hypervisor, dd to a disk; largest'],
  ['vhd', 'VHD — Hyper-V, Azure'],
  ['vmdk', 'VMDK — VMware, VirtualBox'],
];
const PASSPHRASE_MAX = 1024;

function radios(legend, name, options, value) {
  return h('fieldset', {},
    h('legend', {}, legend),
    options.map(([v, text, help]) => {
      const id = uid(name);
      return h('div', { class: 'radio' },
        h('input', { type: 'radio', id, name, value: v, checked: v === value }),
        h('label', { for: id }, text),
        help ? h('p', { class: 'help' }, help) : null);
    }));
}

function backupLabel(backup) {
  return `${when(backup.completed_at || backup.started_at)} — ${backup.kind}, ${bytes(backup.size_bytes)}`;
}

export async function render(main, { backup: backupId }, { navigate }) {
  const chosen = await get(`/backups/${seg(backupId)}`);
  const siblings = (await all(`/backups?host=${seg(chosen.host_id)}`, 400)).filter(recoverable);
  if (!siblings.some((b) => b.id === chosen.id)) siblings.unshift(chosen);

  const box = errorBox();
  const backupSelect = h('select', { id: 'recover-backup', name: 'backup_id' },
    siblings.map((b) => h('option', { value: b.id, selected: b.id === chosen.id }, backupLabel(b))));
  const typeSelect = h('select', { id: 'recover-type', name: 'instance_type' },
    INSTANCE_TYPES.map(([v, text]) => h('option', { value: v }, text)));
  const awsOptions = h('div', { class: 'indent', id: 'aws-options' },
    h('label', { for: 'recover-type' }, 'Instance type'), typeSelect);
  const localOptions = h('div', { class: 'indent', id: 'local-options' },
    radios('Disk format', 'format', FORMATS, 'raw'));

  const form = h('form', { novalidate: true, class: 'card' },
    h('h2', {}, '1. The backup'),
    h('div', { class: 'field' }, h('label', { for: 'recover-backup' }, `Backup of ${chosen.host}`), backupSelect),
    h('h2', {}, '2. Where to'),
    radios('Target', 'target', [
      ['aws', 'A running machine in AWS', 'ReClo imports the disk into EC2 and starts it; you reach it through a VPN.'],
      ['local', 'A disk image to download', 'For your own hypervisor or to inspect the disk.'],
    ], 'aws'),
    awsOptions, localOptions,
    h('h2', {}, '3. Passphrase'),
    field({ label: 'Backup passphrase (only if asked)', name: 'passphrase', type: 'password',
      help: 'Needed only when server-side recovery was not enabled for this server. It is used for this recovery and never stored.',
      attrs: { autocomplete: 'off', maxlength: PASSPHRASE_MAX } }),
    h('button', { type: 'submit' }, 'Review'));

  const syncTarget = () => {
    const target = form.elements.target.value;
    awsOptions.hidden = target !== 'aws';
    localOptions.hidden = target !== 'local';
  };
  form.addEventListener('change', syncTarget);
  syncTarget();

  const review = h('section', { class: 'card highlight', hidden: true, 'aria-labelledby': 'review-title' });

  function request() {
    const target = form.elements.target.value;
    const body = { backup_id: form.elements.backup_id.value, target };
    if (target === 'aws' && typeSelect.value) body.instance_type = typeSelect.value;
    if (target === 'local') body.format = form.elements.format.value;
    if (form.elements.passphrase.value) body.passphrase = form.elements.passphrase.value;
    return body;
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    box.show(null);
    const body = request();
    if ((body.passphrase || '').length > PASSPHRASE_MAX) {
      showFieldErrors(form, [{ location: ['passphrase'], message: `At most ${PASSPHRASE_MAX} characters.` }]);
      return;
    }
    showFieldErrors(form, []);
    const backup = siblings.find((b) => b.id === body.backup_id) || chosen;
    const where = body.target === 'aws'
      ? `a new machine in AWS (${body.instance_type || 'default size'})`
      : `a ${body.format.toUpperCase()} disk image to download`;
    clear(review);
    const start = h('button', { type: 'button' }, 'Start the recovery');
    const back = h('button', { type: 'button', class: 'secondary' }, 'Change something');
    review.append(
      h('h2', { id: 'review-title', tabindex: -1 }, 'Confirm'),
      h('p', {}, `Recover ${chosen.host} from the backup of ${when(backup.completed_at || backup.started_at)} as ${where}.`),
      body.target === 'aws' ? h('p', { class: 'help' }, 'The machine runs in AWS until you stop or terminate it on the Instances page.') : null,
      h('div', { class: 'actions' }, back, start));
    back.addEventListener('click', () => {
      review.hidden = true;
      form.hidden = false;
      form.querySelector('button[type=submit]').focus();
    });
    start.addEventListener('click', () => busy(start, async () => {
      try {
        const recovery = await post('/recoveries', body);
        await navigate(`/app/recoveries/${encodeURIComponent(recovery.id)}`);
      } catch (error) {
        review.hidden = true;
        form.hidden = false;
        showRefusal(box, form, error);
        box.scrollIntoView({ block: 'nearest' });
      }
    }));
    form.hidden = true;
    review.hidden = false;
    review.querySelector('h2').focus();
  });

  main.append(heading(`Recover ${chosen.host}`), box, form, review,
    h('p', {}, h('a', { href: `/app/hosts/${encodeURIComponent(chosen.host_id)}` }, `← Backups of ${chosen.host}`)));
  return null;
}
