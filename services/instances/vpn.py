"""WireGuard, without I/O: keys, addresses inside the tunnel, and the configuration files of
the gateway and of a client (docs/vpn.md).

Addressing: a recovery environment's tunnel uses ``vpn_subnet`` (10.77.0.0/24): the gateway
has the first host address, peers the following ones, each unique within the environment.
A client routes the tunnel subnet and the recovery network through the gateway, which masks
the clients' traffic behind its own address in the recovery network.

Keys are never logged; a private key appears only in the gateway's own configuration
(written by the gateway itself on aws, or to a 0600 file on the local host).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from shared.api.instances import check_public_key

# Keys of a wg-quick file that `wg setconf` does not know (wg-quick(8) "CONFIGURATION").
WG_QUICK_ONLY = frozenset({"address", "dns", "mtu", "table", "preup", "postup", "predown",
                           "postdown", "saveconfig"})
# The gateway reads its private key from here (aws: written on the gateway at first boot).
GATEWAY_KEY_PATH = "/etc/wireguard/wg0.key"


class AddressesExhausted(Exception):
    pass


def generate_private_key() -> str:
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    """What ``wg pubkey`` prints for this private key."""
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key, validate=True))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def gateway_address(subnet: IPv4Network) -> IPv4Address:
    return next(subnet.hosts())


def allocate(subnet: IPv4Network, taken: Iterable[str]) -> IPv4Address:
    """The lowest host address after the gateway's that no peer holds."""
    used = {IPv4Address(a) for a in taken} | {gateway_address(subnet)}
    for address in subnet.hosts():
        if address not in used:
            return address
    raise AddressesExhausted(f"every address of {subnet} is taken")


def host_index(subnet: IPv4Network, address: str) -> int:
    """A peer's position in the subnet (10.77.0.7 in 10.77.0.0/24 is 7): short and unique,
    used to name its tag on the aws gateway."""
    return int(IPv4Address(address)) - int(subnet.network_address)


@dataclass(frozen=True)
class Peer:
    public_key: str
    address: str  # inside the tunnel, one host


@dataclass(frozen=True)
class ServerConfig:
    subnet: IPv4Network
    listen_port: int
    peers: Sequence[Peer] = ()
    # Written into the file when the file itself is the secret store (local gateway); None:
    # the gateway loads GATEWAY_KEY_PATH after the interface comes up (aws gateway).
    private_key: str | None = None
    # Networks the gateway forwards clients into, masked behind its own address.
    forward_to: Sequence[IPv4Network] = ()


def server_conf(config: ServerConfig) -> str:
    """The gateway's wg-quick file (``/etc/wireguard/wg0.conf``)."""
    lines = ["# ReClo VPN gateway of one recovery environment. Written by ReClo.",
             "[Interface]",
             f"Address = {gateway_address(config.subnet)}/{config.subnet.prefixlen}",
             f"ListenPort = {config.listen_port}"]
    if config.private_key is not None:
        lines.append(f"PrivateKey = {config.private_key}")
    else:
        lines.append(f"PostUp = wg set %i private-key {GATEWAY_KEY_PATH}")
    if config.forward_to:
        # Masquerade: recovered machines answer the gateway's own address, so the recovery
        # network needs no route back to the tunnel and no source/destination exception.
        rule = f"POSTROUTING -s {config.subnet} ! -o %i -j MASQUERADE"
        lines += ["PostUp = sysctl -q -w net.ipv4.ip_forward=1",
                  f"PostUp = iptables -t nat -A {rule}",
                  f"PostDown = iptables -t nat -D {rule}"]
    for peer in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {check_public_key(peer.public_key)}",
                  f"AllowedIPs = {IPv4Address(peer.address)}/32"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ClientConfig:
    address: str
    subnet: IPv4Network
    gateway_public_key: str
    endpoint: str
    routed: Sequence[IPv4Network]
    keepalive_seconds: int
    label: str


def client_conf(config: ClientConfig) -> str:
    """A client's wg-quick file, without its private key (the client adds it: the key
    never leaves the client)."""
    allowed = ", ".join(str(n) for n in dict.fromkeys([*config.routed, config.subnet]))
    lines = [f"# ReClo VPN: {config.label}",
             "# Add your private key to [Interface] as \"PrivateKey = ...\"; the Recovery",
             "# Manager does this for you. ReClo never sees it.",
             "[Interface]",
             f"Address = {IPv4Address(config.address)}/32",
             "",
             "[Peer]",
             f"PublicKey = {check_public_key(config.gateway_public_key)}",
             f"Endpoint = {config.endpoint}",
             f"AllowedIPs = {allowed}"]
    if config.keepalive_seconds:
        lines.append(f"PersistentKeepalive = {config.keepalive_seconds}")
    return "\n".join(lines) + "\n"


def setconf_text(conf: str) -> str:
    """A wg-quick file as ``wg setconf`` takes it: without wg-quick's own keys (what
    ``wg-quick strip`` prints)."""
    kept = []
    for line in conf.splitlines():
        bare = line.split("#", 1)[0].strip()
        if not bare:
            continue
        key = bare.split("=", 1)[0].strip().lower()
        if "=" in bare and key in WG_QUICK_ONLY:
            continue
        kept.append(bare)
    return "\n".join(kept) + "\n"
