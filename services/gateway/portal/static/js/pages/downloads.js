// How to install the agent (Backup Manager) on a server and the Recovery Manager on a
// laptop: the exact commands of docs/agent.md and docs/recovery-manager.md, with this
// server's address filled in.

import { h } from '../dom.js';
import { heading } from '../ui.js';

export const title = 'Downloads';

// The wheel built from this release (`pip wheel --no-deps .` in a checkout).
const WHEEL = 'reclo-0.1.0-py3-none-any.whl';

function commands(label, lines) {
  return [h('p', {}, label), h('pre', { tabindex: 0, 'aria-label': label }, h('code', {}, lines.join('\n')))];
}

export async function render(main) {
  const server = location.origin;
  const windowsPython = '& "$env:ProgramFiles\\ReClo\\agent\\Scripts\\python.exe"';
  main.append(heading('Downloads'),
    h('p', {}, 'The agent runs on each server you protect and uploads its backups by itself: one full backup a week, incrementals in between. The Recovery Manager (reclo-recover) does from a terminal what the Recover and Instances pages do.'),
    h('p', {}, `You need Python 3.11 or newer and the ReClo package (${WHEEL}) on the server. During set-up the agent asks for your ReClo password and mints its own agent key; then it asks for a new repository passphrase. Keep that passphrase somewhere safe: without it (or server-side recovery) backups cannot be opened.`),
    h('section', { class: 'card', 'aria-labelledby': 'dl-linux' },
      h('h2', { id: 'dl-linux' }, 'Agent on Linux'),
      ...commands('As root:', [
        'useradd --system --home-dir /var/lib/reclo-agent --shell /usr/sbin/nologin reclo',
        'python3 -m venv /opt/reclo',
        `/opt/reclo/bin/pip install ${WHEEL}`,
        'install -d -o reclo -g reclo -m 0700 /etc/reclo',
        '',
        `/opt/reclo/bin/reclo-agent register --server ${server} --username YOUR-NAME`,
        '/opt/reclo/bin/reclo-agent init',
        'editor /etc/reclo/agent.toml          # [[sources]] and [schedule]',
        '',
        'install -m 0644 clients/agent/packaging/reclo-agent.service /etc/systemd/system/',
        'systemctl daemon-reload',
        'systemctl enable --now reclo-agent',
        'journalctl -u reclo-agent -f -o cat',
      ])),
    h('section', { class: 'card', 'aria-labelledby': 'dl-windows' },
      h('h2', { id: 'dl-windows' }, 'Agent on Windows Server'),
      ...commands('In PowerShell run as Administrator:', [
        `.\\clients\\agent\\packaging\\install-windows.ps1 -Wheel .\\${WHEEL}`,
        `${windowsPython} -m clients.agent register --server ${server} --username YOUR-NAME`,
        `${windowsPython} -m clients.agent init`,
        'notepad "$env:ProgramData\\ReClo\\agent.toml"',
        'Start-Service ReCloAgent',
        'Get-Content "$env:ProgramData\\ReClo\\logs\\agent.log" -Wait',
      ])),
    h('section', { class: 'card', 'aria-labelledby': 'dl-recover' },
      h('h2', { id: 'dl-recover' }, 'Recovery Manager'),
      ...commands('On any computer with Python 3.11 or newer:', [
        `pip install ${WHEEL}`,
        `reclo-recover login --server ${server} --username YOUR-NAME`,
        'reclo-recover backups',
        'reclo-recover start BACKUP-ID --target local --wait',
      ]),
      h('p', {}, 'To reach a recovered machine through its VPN, install WireGuard: ',
        h('code', {}, 'apt install wireguard-tools'), ' on Linux, WireGuard for Windows on Windows.')));
  return null;
}
