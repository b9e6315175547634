// A recovery's live progress: the state, per-state and total progress, elapsed time, the
// status message and, on failure, the reason in plain words. Updated in place from the
// gateway's event stream (or by polling), never by reloading the page.

import { get, post, seg } from '../api.js';
import { append, bytes, clear, duration, h, time, when } from '../dom.js';
import { watch } from '../live.js';
import { busy, confirmDialog, errorBox, heading, notify } from '../ui.js';

export const title = 'Recovery';

export const STATES = ['pending', 'downloading', 'importing', 'finishing', 'complete'];
export const STATE_WORDS = {
  pending: 'Waiting for a worker',
  downloading: 'Reading the backup and building the disk',
  importing: 'Importing the disk',
  finishing: 'Starting the machine',
  complete: 'Complete',
  failed: 'Failed',
};
const FINAL = new Set(['complete', 'failed']);

// Applies one event to what the page knows; events older than the last snapshot are
// dropped so a late progress event cannot move the bars backwards.
export function merge(recovery, type, data) {
  if (type === 'snapshot') return { ...data };
  if (FINAL.has(recovery.state)) return recovery;
  if (Date.parse(data.occurred_at) < Date.parse(recovery.updated_at)) return recovery;
  const next = { ...recovery, updated_at: data.occurred_at || recovery.updated_at };
  if (type === 'RecoveryProgressed') {
    Object.assign(next, { state: data.state, total_progress: data.total_progress,
      state_progress: data.state_progress, message: data.message ?? next.message });
  } else if (type === 'RecoveryFailed') {
    Object.assign(next, { state: 'failed', failure_reason: data.reason, finished_at: data.occurred_at });
  } else if (type === 'RecoveryCompleted') {
    Object.assign(next, { state: 'complete', total_progress: 100, state_progress: 100,
      instance_id: data.instance_id ?? next.instance_id, finished_at: data.occurred_at });
  }
  return next;
}

function bar(id, label) {
  const progress = h('progress', { id, max: 100, value: 0 });
  const text = h('span', { class: 'percent', 'aria-hidden': 'true' }, '0 %');
  return { el: h('div', { class: 'bar' }, h('label', { for: id }, label), progress, text), progress, text,
    set(value, caption) {
      progress.value = value;
      progress.setAttribute('aria-valuetext', `${value} percent`);
      text.textContent = `${value} %`;
      if (caption) progress.previousSibling.textContent = caption;
    } };
}

export async function render(main, { id }) {
  let recovery = null;
  const box = errorBox();
  const heading1 = heading('Recovery');
  const steps = h('ol', { class: 'steps', 'aria-label': 'Stages' },
    STATES.map((state) => h('li', { 'data-state': state }, STATE_WORDS[state])));
  const total = bar('total-progress', 'Overall');
  const current = bar('state-progress', 'This stage');
  const stateText = h('p', { class: 'state', id: 'recovery-state' });
  const message = h('p', { class: 'message', id: 'recovery-message' });
  const elapsed = h('span', { id: 'recovery-elapsed' }, '0:00');
  const mode = h('span', { class: 'muted', id: 'recovery-mode' }, 'Connecting…');
  // Announced by screen readers: stage changes and the end, not every percent.
  const announce = h('p', { class: 'visually-hidden', 'aria-live': 'polite', id: 'recovery-announce' });
  const failure = h('div', { class: 'error', role: 'alert', id: 'recovery-failure', hidden: true });
  const outcome = h('div', { id: 'recovery-outcome' });
  const cancel = h('button', { type: 'button', class: 'danger', id: 'recovery-cancel' }, 'Cancel the recovery');
  const facts = h('dl', { class: 'facts' });

  main.append(heading1, box,
    h('section', { class: 'card', 'aria-labelledby': 'progress-title' },
      h('h2', { id: 'progress-title', class: 'visually-hidden' }, 'Progress'),
      stateText, steps, total.el, current.el, message,
      h('p', {}, 'Elapsed: ', elapsed, ' · ', mode), announce),
    failure, outcome, facts, h('div', { class: 'actions' }, cancel),
    h('p', {}, h('a', { href: '/app/recoveries' }, '← All recoveries')));

  let lastAnnounced = '';
  function draw() {
    if (!recovery) return;
    heading1.textContent = `Recovery of ${recovery.host}`;
    stateText.textContent = STATE_WORDS[recovery.state] || recovery.state;
    stateText.dataset.state = recovery.state;
    const at = STATES.indexOf(recovery.state);
    for (const li of steps.children) {
      const i = STATES.indexOf(li.dataset.state);
      li.className = recovery.state === 'failed' ? '' : (i < at ? 'done' : (i === at ? 'current' : ''));
      if (i === at) li.setAttribute('aria-current', 'step'); else li.removeAttribute('aria-current');
    }
    total.set(recovery.total_progress ?? 0);
    current.set(recovery.state_progress ?? 0,
      FINAL.has(recovery.state) ? 'This stage' : `This stage (${recovery.state})`);
    // After a failure the last status message is stale; the reason below says it all.
    message.textContent = recovery.state === 'failed' ? '' : (recovery.message || '');
    cancel.hidden = FINAL.has(recovery.state);
    failure.hidden = recovery.state !== 'failed';
    clear(failure);
    if (recovery.state === 'failed') {
      failure.append(h('h2', {}, 'The recovery failed'),
        h('p', {}, recovery.failure_reason || 'No reason was given.'),
        h('p', {}, h('a', { href: `/app/recover/${encodeURIComponent(recovery.backup_id)}` }, 'Try again')));
    }
    drawFacts();
    drawOutcome();
    const said = `${STATE_WORDS[recovery.state] || recovery.state}`;
    if (said !== lastAnnounced) {
      announce.textContent = recovery.state === 'failed'
        ? `The recovery failed: ${recovery.failure_reason || ''}` : `Recovery: ${said}.`;
      lastAnnounced = said;
    }
    tick();
  }

  function drawFacts() {
    clear(facts);
    const target = recovery.target === 'aws'
      ? `AWS${recovery.instance_type ? ` (${recovery.instance_type})` : ''}`
      : `Local ${String(recovery.format || '').toUpperCase()} image`;
    append(facts, [
      h('dt', {}, 'Server'), h('dd', {}, recovery.host),
      h('dt', {}, 'Target'), h('dd', {}, target),
      h('dt', {}, 'Started'), h('dd', {}, time(recovery.created_at)),
      recovery.disk_bytes ? [h('dt', {}, 'Disk'), h('dd', {}, bytes(recovery.disk_bytes))] : null,
      recovery.finished_at ? [h('dt', {}, 'Finished'), h('dd', {}, time(recovery.finished_at))] : null]);
  }

  let drawnOutcome = '';
  function drawOutcome() {
    const key = `${recovery.state}:${recovery.image_url}:${recovery.instance_id}`;
    if (key === drawnOutcome) return;
    drawnOutcome = key;
    clear(outcome);
    if (recovery.state !== 'complete') return;
    if (recovery.target === 'local') {
      const download = h('button', { type: 'button', id: 'download-image' }, 'Download the image');
      download.addEventListener('click', () => busy(download, () => downloadImage(recovery, box)));
      outcome.append(h('section', { class: 'card highlight' },
        h('h2', {}, 'The disk image is ready'),
        h('p', {}, `${String(recovery.format).toUpperCase()} image${recovery.image_bytes ? `, ${bytes(recovery.image_bytes)}` : ''}.`
          + (recovery.image_sha256 ? ' Its SHA-256 is below, to check the file after download.' : '')),
        recovery.image_sha256 ? h('p', {}, h('code', { class: 'hash' }, recovery.image_sha256)) : null,
        download));
    } else {
      outcome.append(h('section', { class: 'card highlight' },
        h('h2', {}, 'The machine is starting'),
        h('p', {}, 'Reach it through the VPN: download its VPN configuration on the Instances page.'),
        h('p', {}, h('a', { class: 'button', href: '/app/instances' }, 'Go to Instances'))));
    }
  }

  function tick() {
    if (!recovery) return;
    const start = Date.parse(recovery.created_at);
    const end = recovery.finished_at ? Date.parse(recovery.finished_at) : Date.now();
    if (!Number.isNaN(start)) elapsed.textContent = duration((end - start) / 1000);
  }

  cancel.addEventListener('click', async () => {
    const sure = await confirmDialog({ title: 'Cancel this recovery?',
      text: 'The work done so far is discarded; you can start again later.', confirm: 'Cancel the recovery', danger: true });
    if (!sure) return;
    await busy(cancel, async () => {
      try {
        recovery = merge(recovery, 'snapshot', await post(`/recoveries/${seg(id)}/cancel`));
        notify('The recovery is cancelled.');
        draw();
      } catch (error) {
        box.show(error);
      }
    });
  });

  const timer = setInterval(tick, 1000);
  const stop = watch(id, {
    onEvent(type, data) {
      recovery = recovery ? merge(recovery, type, data) : (type === 'snapshot' ? data : null);
      draw();
      // The end events are short: the full record has the image's size and hash.
      if (type === 'RecoveryCompleted' || type === 'RecoveryFailed') {
        get(`/recoveries/${seg(id)}`).then((full) => { recovery = full; draw(); }).catch(() => {});
      }
    },
    onMode(how) {
      mode.textContent = how === 'live' ? 'Live' : 'Updating every 2 seconds';
      mode.dataset.mode = how;
    },
  });
  return () => { clearInterval(timer); stop(); };
}

// The image may be many GiB: the gateway gives a short-lived link and the browser's own
// download manager fetches it (resumable), rather than this page holding it in memory.
export async function downloadImage(recovery, box) {
  try {
    const link = await post(`/portal/recoveries/${seg(recovery.id)}/image-link`);
    const a = h('a', { href: link.url, download: '', hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    notify(`The download of the image started (${when(new Date().toISOString())}).`);
  } catch (error) {
    box.show(error);
  }
}
