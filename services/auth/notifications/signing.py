"""The signature of a webhook: ``X-Reclo-Signature: t=<unix time>,v1=<hex>``, where the hex
is HMAC-SHA256, keyed by the user's signing secret, over ``<t>.`` followed by the exact body
bytes. The time is inside the MAC so a captured request can't be replayed later than the
receiver's tolerance. During a secret's rotation grace period the header carries one
``v1=`` per valid secret; a receiver accepts the message if any of them verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as random
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
# 32 random bytes: 256 bits, the HMAC-SHA256 key size; base64url keeps them header-safe.
SECRET_BYTES = 32
# How old a signed request may be when it arrives, for verify(); receivers choose their own.
DEFAULT_TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return SECRET_PREFIX + random.token_urlsafe(SECRET_BYTES)


def mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], body: bytes, timestamp: int) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={mac(s, timestamp, body)}" for s in secrets)])


def verify(secret: str, body: bytes, header: str, now: float,
           tolerance: float = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """What a receiver does (docs/notifications.md shows the same in a few lines)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
