"""The VPN configuration for a browser that cannot make WireGuard keys (no X25519 in its
WebCrypto): the gateway makes the key pair for this one download, asks the instances
service for a peer with the public key, as the caller, and returns the ``.conf`` with the
private key in it. Nothing is stored; the page says so plainly. Browsers that can make keys
never come here: they send only their public key to ``vpn-peers`` themselves."""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.api.instances import VpnPeerCreated, with_private_key

PEER_NAME = "portal (server-made key)"
# wg-quick and WireGuard for Windows name the tunnel after the file: Linux allows 15
# characters for an interface name, so "rc-" and 12 of the id, as reclo-recover does.
INTERFACE_MAX = 15


def key_pair() -> tuple[str, str]:
    """(private, public) as WireGuard writes them: base64 of 32 bytes each."""
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(serialization.Encoding.Raw,
                                        serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


def filename(instance_id: str) -> str:
    """A name WireGuard accepts as the tunnel's, safe in a Content-Disposition header."""
    return ("rc-" + re.sub(r"[^A-Za-z0-9]", "", instance_id))[:INTERFACE_MAX] + ".conf"


def complete_config(created: VpnPeerCreated, private_key: str) -> tuple[str, str]:
    """The ready ``.conf`` and the name to save it under."""
    return with_private_key(created.config, private_key), filename(created.peer.instance_id)
