// How to install the agent (Backup Manager) on a server and the Recovery Manager on a
// laptop, with the exact commands (docs/agent.md, docs/recovery-manager.md).

import { h } from '../dom.js';
import { heading } from '../ui.js';

export const title = 'Downloads';

function commands(label, lines) {
  return [h('p', {}, label), h('pre', { tabindex: 0, 'aria-label': label }, h('code', {}, lines.join('\n')))];
}

export async function render(main) {
  const server = location.origin;
  main.append(heading('Downloads'),
    h('p', {}, 'The agent runs on each server you protect and uploads its backups by itself. The Recovery Manager (reclo-recover) does from a terminal everything the Recover and Instances pages do.'),
    h('section', { class: 'card', 'aria-labelledby': 'dl-linux' },
      h('h2', { id: 'dl-linux' }, 'Agent on Linux'),
      ...commands('As root, install it (Python 3.11 or newer):', [
        'python3 -m venv /opt/reclo',
        '/opt/reclo/bin/pip install reclo',
      ]),
      ...commands('Set it up with the agent key you minted for this server, then install the service:', [
        `/opt/reclo/bin/reclo-agent setup --server ${server} --key-file /root/reclo-agent.key`,
        '/opt/reclo/bin/reclo-agent install-service',
      ])),
    h('section', { class: 'card', 'aria-labelledby': 'dl-windows' },
      h('h2', { id: 'dl-windows' }, 'Agent on Windows Server'),
      ...commands('In PowerShell run as Administrator (Python 3.11 or newer installed for all users):', [
        'py -3 -m venv "C:\\Program Files\\ReClo"',
        '& "C:\\Program Files\\ReClo\\Scripts\\pip.exe" install reclo',
        `& "C:\\Program Files\\ReClo\\Scripts\\reclo-agent.exe" setup --server ${server} --key-file C:\\reclo-agent.key`,
        '& "C:\\Program Files\\ReClo\\Scripts\\reclo-agent.exe" install-service',
      ])),
    h('section', { class: 'card', 'aria-labelledby': 'dl-recover' },
      h('h2', { id: 'dl-recover' }, 'Recovery Manager'),
      ...commands('On any computer with Python 3.11 or newer:', [
        'pip install reclo',
        `reclo-recover login --server ${server} --username YOUR-NAME`,
        'reclo-recover backups',
      ])));
  return null;
}
