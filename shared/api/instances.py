"""The instances service's REST models: recovered machines and their VPN peers.
Client-safe: the Recovery Manager uses these too.

A VPN peer is asked for with only a public key: the client (the Recovery Manager, or a
person with ``wg genkey | tee key | wg pubkey``) keeps its private key and never sends it.
The answer is a WireGuard ``.conf`` without a ``PrivateKey`` line; :func:`with_private_key`
puts the client's own key in before the file is used (docs/vpn.md).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import BaseModel, Field, field_validator

InstanceState = Literal["pending", "running", "stopped", "terminated", "failed"]
VpnState = Literal["provisioning", "ready", "failed", "retired"]

# A WireGuard key is 32 bytes, written as 44 characters of standard base64.
KEY_BYTES = 32
KEY_TEXT_LENGTH = 44
PEER_NAME_MAX = 64


class InvalidKey(ValueError):
    pass


def check_public_key(text: str) -> str:
    """The key as WireGuard writes it, or :class:`InvalidKey`. Refuses what is not base64
    of 32 bytes, and the few points of small order, with which no handshake can succeed
    (X25519 refuses to agree on the all-zero secret they produce)."""
    text = text.strip()
    if len(text) != KEY_TEXT_LENGTH:
        raise InvalidKey(f"a WireGuard key is {KEY_TEXT_LENGTH} characters of base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("a WireGuard key is base64") from None
    if len(raw) != KEY_BYTES:
        raise InvalidKey(f"a WireGuard key is {KEY_BYTES} bytes")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise InvalidKey("this is not a usable X25519 public key") from None
    return base64.b64encode(raw).decode()


def with_private_key(conf: str, private_key: str) -> str:
    """The ``.conf`` the service returned, with the client's own private key added to its
    ``[Interface]``, ready for ``wg-quick up`` or a WireGuard app."""
    lines = conf.splitlines()
    if any(line.strip().lower().startswith("privatekey") for line in lines):
        raise ValueError("the configuration already has a private key")
    try:
        at = next(i for i, line in enumerate(lines) if line.strip() == "[Interface]")
    except StopIteration:
        raise ValueError("the configuration has no [Interface] section") from None
    lines.insert(at + 1, f"PrivateKey = {private_key}")
    return "\n".join(lines) + "\n"


class Instance(BaseModel):
    id: str
    recovery_id: str
    # "aws" or "local" (a failed launch keeps the name it was asked for, whatever it was).
    provider: str
    state: InstanceState
    # Where the machine answers inside the recovery network (through the VPN); None until
    # it runs, and for local machines.
    address: str | None = None
    instance_type: str | None = None
    created_at: datetime
    ready_at: datetime | None = None
    stopped_at: datetime | None = None
    terminated_at: datetime | None = None
    failure_reason: str | None = None
    # The recovery environment's VPN: peers can be added once it is "ready".
    vpn_state: VpnState | None = None


class InstanceQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=512)
    recovery_id: str | None = Field(default=None, min_length=1, max_length=64)


class VpnPeerRequest(BaseModel):
    public_key: str = Field(description="the client's WireGuard public key (base64); "
                                        "the private key never leaves the client")
    name: str | None = Field(default=None, min_length=1, max_length=PEER_NAME_MAX,
                             description="a label, e.g. the laptop it is for")

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_public_key(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("the name must be printable text")
        return value


class VpnPeer(BaseModel):
    id: str
    instance_id: str
    name: str | None = None
    public_key: str
    # The peer's address inside the tunnel.
    address: str
    created_at: datetime


class VpnPeerCreated(BaseModel):
    peer: VpnPeer
    # A WireGuard .conf without PrivateKey: see with_private_key.
    config: str
    filename: str
