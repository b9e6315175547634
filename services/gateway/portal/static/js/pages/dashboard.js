// The dashboard: every protected server with how its backups stand.

import { all } from '../api.js';
import { bytes, h, time } from '../dom.js';
import { heading, table } from '../ui.js';

export const STATE_WORDS = {
  ok: 'OK',
  overdue: 'Overdue',
  failing: 'Failing',
  never: 'No backup yet',
};

// The state in words and in colour (never colour alone).
export function stateBadge(state) {
  return h('span', { class: `badge state-${STATE_WORDS[state] ? state : 'unknown'}` },
    STATE_WORDS[state] || String(state));
}

export const title = 'Dashboard';

const DRILL_WORDS = { passed: 'Passed', failed: 'Failed', skipped: 'Skipped' };

// Each host's newest finished recovery drill (the API lists them newest first). The
// dashboard still shows if the drills cannot be read: their column says "—" then.
async function lastDrills() {
  let drills = [];
  try {
    drills = await all('/drills', 400);
  } catch {
    return new Map();
  }
  const last = new Map();
  for (const drill of drills) {
    if (DRILL_WORDS[drill.state] && !last.has(drill.host_id)) last.set(drill.host_id, drill);
  }
  return last;
}

export function drillCell(drill) {
  if (!drill) return '—';
  return h('span', {},
    h('span', { class: `badge drill-${drill.state}`, title: drill.reason || '' }, DRILL_WORDS[drill.state]),
    ' ', time(drill.finished_at || drill.created_at),
    drill.reason ? h('span', { class: 'help drill-reason' }, h('br'), drill.reason) : null);
}

export async function render(main) {
  main.append(heading('Dashboard'));
  const [hosts, drills] = await Promise.all([all('/hosts'), lastDrills()]);
  if (!hosts.length) {
    main.append(h('section', { class: 'card' },
      h('h2', {}, 'No servers yet'),
      h('p', {}, 'To protect a server: mint an agent key for it, then install the agent on it with that key.'),
      h('p', {}, h('a', { href: '/app/keys' }, 'Mint an agent key'), ' · ',
        h('a', { href: '/app/downloads' }, 'Install the agent'))));
    return null;
  }
  const failing = hosts.filter((host) => host.state === 'failing' || host.state === 'overdue');
  main.append(h('p', { class: 'summary' },
    failing.length
      ? `${failing.length} of ${hosts.length} servers need attention.`
      : (hosts.length === 1 ? 'The server is backed up as scheduled.'
        : `All ${hosts.length} servers are backed up as scheduled.`)));
  main.append(table('Protected servers',
    ['Server', 'State', 'Last backup', 'Next backup', 'Storage used', 'Backups', 'Last drill'],
    hosts.map((host) => [
      h('a', { href: `/app/hosts/${encodeURIComponent(host.id)}` }, host.name),
      stateBadge(host.state),
      time(host.last_backup_at),
      time(host.next_backup_due),
      bytes(host.storage_bytes),
      String(host.backups ?? '—'),
      drillCell(drills.get(host.id)),
    ])));
  return null;
}
