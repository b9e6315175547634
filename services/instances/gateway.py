"""The aws recovery environment's WireGuard gateway: its cloud-init user data, and reading
its public key back from its console (docs/vpn.md "The aws gateway").

No secret travels in user data (DESIGN.md §6): the gateway makes its own key pair at first
boot and prints only the public key to its serial console, which the service reads with
GetConsoleOutput. Its peers are the instance's own ``reclo:peer:<n>`` tags, which the
service sets and the gateway reads every SYNC_SECONDS from the instance metadata service:
neither side needs credentials for the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from ipaddress import IPv4Network

from services.instances.vpn import GATEWAY_KEY_PATH, ServerConfig, server_conf
from shared.api.instances import InvalidKey, check_public_key

# The line the gateway prints to its console; the service looks for the last one.
KEY_MARKER = "RECLO-WG-PUBLIC-KEY"
# How often the gateway makes its peers match its tags: a new peer waits at most this long.
SYNC_SECONDS = 15
# The tag a peer is published under on the gateway (instance metadata allows ':' in keys).
PEER_TAG_PREFIX = "reclo:peer:"
# EC2 user data is limited to 16 KiB before base64.
USER_DATA_LIMIT = 16 * 1024

SYNC_SCRIPT = f"""#!/bin/sh
# Makes wg0's peers exactly the {PEER_TAG_PREFIX}* tags of this instance, read from the
# instance metadata service (no credentials needed). A failed read changes nothing.
set -eu
imds=http://169.254.169.254/latest
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/api/token")
tag() {{ curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/tags/instance/$1"; }}
keys=$(tag "")
wanted=" "
for key in $keys; do
  case "$key" in
    {PEER_TAG_PREFIX}*)
      value=$(tag "$key")
      public=${{value%% *}}
      address=${{value#* }}
      wg set wg0 peer "$public" allowed-ips "$address"
      wanted="$wanted$public "
      ;;
  esac
done
for public in $(wg show wg0 peers); do
  case "$wanted" in
    *" $public "*) ;;
    *) wg set wg0 peer "$public" remove ;;
  esac
done
"""

ANNOUNCE_SCRIPT = f"""#!/bin/sh
# Prints the gateway's public key where GetConsoleOutput reads it (never the private key).
set -eu
echo "{KEY_MARKER} $(wg pubkey < {GATEWAY_KEY_PATH})" > /dev/console
"""

KEYGEN_SCRIPT = f"""#!/bin/sh
# The gateway's key pair is made here, at first boot, and never leaves this machine.
set -eu
umask 077
[ -s {GATEWAY_KEY_PATH} ] || wg genkey > {GATEWAY_KEY_PATH}
"""

UNITS = {
    "reclo-wg-keygen.service": """[Unit]
Description=ReClo: make the WireGuard key pair of this gateway
Before=wg-quick@wg0.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/reclo-wg-keygen

[Install]
WantedBy=multi-user.target
""",
    "reclo-wg-announce.service": """[Unit]
Description=ReClo: print this gateway's WireGuard public key to the console
After=wg-quick@wg0.service
Requires=wg-quick@wg0.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/reclo-wg-announce

[Install]
WantedBy=multi-user.target
""",
    "reclo-wg-sync.service": """[Unit]
Description=ReClo: make the WireGuard peers match this instance's tags
After=wg-quick@wg0.service
Requires=wg-quick@wg0.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/reclo-wg-sync
""",
    "reclo-wg-sync.timer": f"""[Unit]
Description=ReClo: sync WireGuard peers every {SYNC_SECONDS} s

[Timer]
OnBootSec=10s
OnUnitActiveSec={SYNC_SECONDS}s
AccuracySec=1s

[Install]
WantedBy=timers.target
""",
}


def user_data(subnet: IPv4Network, listen_port: int,
              forward_to: Sequence[IPv4Network]) -> str:
    """The gateway's ``#cloud-config``. JSON is YAML too, and needs no YAML writer here."""
    wg0 = server_conf(ServerConfig(subnet=subnet, listen_port=listen_port,
                                   forward_to=forward_to))
    files = [
        {"path": "/etc/wireguard/wg0.conf", "permissions": "0600", "content": wg0},
        {"path": "/usr/local/sbin/reclo-wg-keygen", "permissions": "0755",
         "content": KEYGEN_SCRIPT},
        {"path": "/usr/local/sbin/reclo-wg-announce", "permissions": "0755",
         "content": ANNOUNCE_SCRIPT},
        {"path": "/usr/local/sbin/reclo-wg-sync", "permissions": "0755",
         "content": SYNC_SCRIPT},
        *({"path": f"/etc/systemd/system/{name}", "permissions": "0644", "content": text}
          for name, text in UNITS.items()),
    ]
    config = {
        "package_update": True,
        "packages": ["wireguard-tools", "iptables", "curl"],
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "reclo-wg-keygen.service"],
            ["systemctl", "enable", "--now", "wg-quick@wg0.service"],
            ["systemctl", "enable", "--now", "reclo-wg-announce.service"],
            ["systemctl", "enable", "--now", "reclo-wg-sync.timer"],
        ],
    }
    text = "#cloud-config\n" + json.dumps(config, indent=1) + "\n"
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError("the gateway's user data exceeds EC2's 16 KiB")
    return text


_KEY_LINE = re.compile(re.escape(KEY_MARKER) + r"\s+(\S+)")


def key_from_console(output: str) -> str | None:
    """The gateway's public key from its console output, or None while it hasn't printed
    it (still booting) or printed something that isn't a key."""
    for candidate in reversed(_KEY_LINE.findall(output or "")):
        try:
            return check_public_key(candidate)
        except InvalidKey:
            continue
    return None


def peer_tags(peers: Sequence[tuple[int, str, str]]) -> dict[str, str]:
    """Tag key -> value for each peer (index in the subnet, public key, address)."""
    return {f"{PEER_TAG_PREFIX}{index}": f"{check_public_key(key)} {address}/32"
            for index, key, address in peers}
