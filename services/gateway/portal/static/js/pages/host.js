// One server and its backups; an image backup can be recovered from here.

import { all, get, seg } from '../api.js';
import { bytes, count, h, time, when } from '../dom.js';
import { heading, table } from '../ui.js';
import { drillCell, stateBadge } from './dashboard.js';

export const title = 'Backups';

const STATUS_WORDS = {
  complete: 'Complete', uploading: 'In progress', failed: 'Failed', forgotten: 'Removed by retention',
};

// "What changed": how much this backup had to read and send, from its stats.
export function changes(backup) {
  const stats = backup.stats;
  if (!stats) return backup.failure_reason ? `Failed: ${backup.failure_reason}` : '—';
  const parts = [];
  if (backup.is_image) parts.push(`${bytes(stats.bytes)} disk`);
  else parts.push(`${count(stats.files, 'file', 'files')} in ${count(stats.dirs, 'folder', 'folders')}, ${bytes(stats.bytes)}`);
  parts.push(`${bytes(stats.new_bytes)} new`);
  if (stats.warnings) parts.push(count(stats.warnings, 'warning', 'warnings'));
  return parts.join(' · ');
}

export function recoverable(backup) {
  return backup.status === 'complete' && backup.is_image;
}

export async function render(main, { id }) {
  const [host, backups, drills] = await Promise.all([get(`/hosts/${seg(id)}`),
    all(`/backups?host=${seg(id)}`, 400),
    get(`/drills?host=${seg(id)}&limit=5`).then((page) => page.items, () => [])]);
  const drill = drills.find((d) => ['passed', 'failed', 'skipped'].includes(d.state));
  main.append(heading(`Backups of ${host.name}`));
  main.append(h('dl', { class: 'facts' },
    h('dt', {}, 'State'), h('dd', {}, stateBadge(host.state)),
    h('dt', {}, 'Last backup'), h('dd', {}, time(host.last_backup_at)),
    h('dt', {}, 'Next backup'), h('dd', {}, time(host.next_backup_due)),
    h('dt', {}, 'Storage used'), h('dd', {}, bytes(host.storage_bytes)),
    h('dt', {}, 'Last drill'), h('dd', { id: 'last-drill' }, drillCell(drill))));
  main.append(table(`Backups of ${host.name}`,
    ['Date', 'Kind', 'Status', 'Size', 'What changed', 'Contents', ''],
    backups.map((backup) => [
      time(backup.completed_at || backup.started_at),
      backup.kind === 'full' ? 'Full' : 'Incremental',
      STATUS_WORDS[backup.status] || backup.status,
      bytes(backup.size_bytes),
      changes(backup),
      backup.is_image ? 'Disk image' : 'Files',
      recoverable(backup)
        ? h('a', { class: 'button', href: `/app/recover/${encodeURIComponent(backup.id)}`,
          'aria-label': `Recover the backup of ${when(backup.completed_at || backup.started_at)}` }, 'Recover')
        : (backup.status === 'complete' ? h('span', { class: 'muted' }, 'restore with the agent') : ''),
    ]), { empty: 'No backups of this server yet.' }));
  main.append(h('p', {}, h('a', { href: '/app/' }, '← All servers')));
  return null;
}
