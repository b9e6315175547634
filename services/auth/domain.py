"""Auth's rules, free of I/O: what a valid username is, how tokens look and expire, and
the login throttle."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import unicodedata
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import datetime, timedelta

SESSION_PREFIX = "rcs_"
AGENT_PREFIX = "rca_"
# 32 random bytes: 256 bits, beyond guessing; base64url keeps them header-safe.
TOKEN_BYTES = 32
USERNAME_MIN = 3
_USERNAME_PUNCTUATION = set("._-@+")
# Past this many tracked keys (a spray of made-up usernames), stale ones are swept.
THROTTLE_MAX_KEYS = 100_000


class InvalidUsername(ValueError):
    pass


def normalize_username(raw: str) -> tuple[str, str]:
    """The username as stored (NFC) and its case-insensitive key. Letters and digits of any
    script, and ``. _ - @ +``; no spaces or control characters."""
    name = unicodedata.normalize("NFC", raw)
    if len(name) < USERNAME_MIN:
        raise InvalidUsername(f"a username has at least {USERNAME_MIN} characters")
    for ch in name:
        if not (ch.isalnum() or ch in _USERNAME_PUNCTUATION):
            raise InvalidUsername(
                f"a username may hold letters, digits and . _ - @ + only, not {ch!r}")
    return name, name.casefold()


def normalize_password(raw: str) -> str:
    # The same password typed on two keyboards may arrive composed or decomposed.
    return unicodedata.normalize("NFC", raw)


def new_id() -> str:
    return secrets.token_hex(16)


def new_token(kind: str) -> str:
    prefix = SESSION_PREFIX if kind == "session" else AGENT_PREFIX
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    return token.startswith((SESSION_PREFIX, AGENT_PREFIX)) and len(token) < 100


def session_expiry(now: datetime, ttl_seconds: int) -> datetime:
    return now + timedelta(seconds=ttl_seconds)


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


class LoginThrottle:
    """Counts failed logins per username and per client address in a sliding window.
    Kept in memory: each auth replica throttles on its own (documented in docs/auth.md)."""

    def __init__(self, window_seconds: float, per_username: int, per_address: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self.limits = {"username": per_username, "address": per_address}
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        failures = self._failures[key]
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return deque()
        return failures

    def retry_after(self, username_key: str, address: str | None) -> int:
        """Seconds to wait before another attempt is allowed; 0 when allowed now."""
        wait = 0.0
        for kind, value in (("username", username_key), ("address", address)):
            if not value:
                continue
            failures = self._recent((kind, value))
            if len(failures) >= self.limits[kind]:
                oldest_that_counts = failures[len(failures) - self.limits[kind]]
                wait = max(wait, oldest_that_counts + self.window - self.clock())
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, username_key: str, address: str | None) -> None:
        if len(self._failures) > THROTTLE_MAX_KEYS:
            for key in list(self._failures):
                self._recent(key)
        now = self.clock()
        self._failures[("username", username_key)].append(now)
        if address:
            self._failures[("address", address)].append(now)

    def succeeded(self, username_key: str) -> None:
        self._failures.pop(("username", username_key), None)
