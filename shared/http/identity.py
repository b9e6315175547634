"""Who is calling, as the gateway vouches for it.

The gateway authenticates the bearer token, then passes the caller's identity to a service
in ``X-Reclo-Identity`` (base64url JSON) with ``X-Reclo-Signature: t=<unix>,v1=<hex>``: an
HMAC-SHA256 with the internal key over the time, method, path with query and the identity.
Services refuse any request whose signature is missing, wrong or older than the skew bound,
so reaching a service directly gains nothing without the key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

IDENTITY_HEADER = "X-Reclo-Identity"
SIGNATURE_HEADER = "X-Reclo-Signature"
# Gateway and services run on machines with synchronised clocks; this bounds the window in
# which a captured request could be replayed.
MAX_SKEW_SECONDS = 60

Kind = Literal["anonymous", "user", "agent", "service"]


class Identity(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind = "anonymous"
    user_id: str | None = None
    username: str | None = None
    token_id: str | None = None
    # Agent keys are bound to one host name.
    host: str | None = None
    # The client's address as the gateway saw it (rate limits, audit).
    client_ip: str | None = None
    # A service calling another internal endpoint (e.g. the gateway introspecting).
    service: str | None = None


class BadSignature(Exception):
    pass


def _mac(key: bytes, timestamp: int, method: str, path_qs: str, identity_b64: str) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path_qs}\n{identity_b64}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=4096)
def _encoded(identity: Identity) -> str:
    # The gateway signs the same few identities over and over (frozen, so hashable).
    encoded = base64.urlsafe_b64encode(identity.model_dump_json(exclude_none=True).encode())
    return encoded.decode().rstrip("=")


@functools.lru_cache(maxsize=4096)
def _decoded(identity_b64: str) -> Identity:
    # Only reached after the MAC matched, so only identities the gateway signed are cached.
    padded = identity_b64 + "=" * (-len(identity_b64) % 4)
    return Identity.model_validate_json(base64.urlsafe_b64decode(padded))


def sign(identity: Identity, method: str, path_qs: str, key: bytes,
         now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    identity_b64 = _encoded(identity)
    mac = _mac(key, timestamp, method, path_qs, identity_b64)
    return {IDENTITY_HEADER: identity_b64, SIGNATURE_HEADER: f"t={timestamp},v1={mac}"}


def verify(headers, method: str, path_qs: str, key: bytes, now: float | None = None) -> Identity:
    identity_b64 = headers.get(IDENTITY_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not identity_b64 or not signature:
        raise BadSignature("request is not signed by the gateway")
    try:
        parts = dict(item.split("=", 1) for item in signature.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        raise BadSignature("malformed signature header") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > MAX_SKEW_SECONDS:
        raise BadSignature("signature expired")
    expected = _mac(key, timestamp, method, path_qs, identity_b64)
    if not hmac.compare_digest(expected, given):
        raise BadSignature("signature does not match")
    try:
        return _decoded(identity_b64)
    except (ValueError, ValidationError):
        raise BadSignature("malformed identity") from None
