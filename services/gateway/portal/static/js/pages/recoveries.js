// Every recovery the user started, newest first, each linking to its progress page.

import { all } from '../api.js';
import { h, time } from '../dom.js';
import { heading, table } from '../ui.js';
import { STATE_WORDS } from './recovery.js';

export const title = 'Recoveries';

export async function render(main) {
  main.append(heading('Recoveries'));
  // The API lists oldest first; the latest matters most here.
  const recoveries = (await all('/recoveries', 400)).reverse();
  main.append(table('Recoveries', ['Server', 'Target', 'State', 'Progress', 'Started'],
    recoveries.map((r) => [
      h('a', { href: `/app/recoveries/${encodeURIComponent(r.id)}` }, r.host),
      r.target === 'aws' ? `AWS${r.instance_type ? ` (${r.instance_type})` : ''}` : `Local ${String(r.format).toUpperCase()}`,
      h('span', { class: `badge recovery-${r.state}` }, STATE_WORDS[r.state] || r.state),
      `${r.total_progress} %`,
      time(r.created_at),
    ]), { empty: 'No recoveries yet. Start one from a server\'s backups on the dashboard.' }));
  return null;
}
