"""Which service owns which part of /api/v1, and the short-lived cache of token checks."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from shared.http.identity import Identity

API_PREFIX = "/api/v1/"

# First path segment after /api/v1/ → the service that owns it (DESIGN.md §7).
OWNERS: dict[str, str] = {
    "auth": "auth",
    "agent-keys": "auth",
    "notifications": "auth",
    "hosts": "backup",
    "backups": "backup",
    "repository": "backup",
    # Presigned object URLs of the embedded mode's local object store (no bearer token:
    # the URL's own signature is the credential).
    "objects": "backup",
    "recoveries": "recovery",
    "drills": "recovery",
    "instances": "instances",
}
UPSTREAMS = tuple(dict.fromkeys(OWNERS.values()))

# Hop-by-hop headers (RFC 9110 §7.6.1) and ones the gateway sets itself never pass through.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
NOT_FORWARDED = HOP_BY_HOP | {"authorization", "cookie", "x-reclo-identity",
                              "x-reclo-signature", "x-forwarded-for"}


def owner_of(path: str) -> str | None:
    if not path.startswith(API_PREFIX):
        return None
    segment = path[len(API_PREFIX):].split("/", 1)[0]
    return OWNERS.get(segment)


# Segments whose bodies are backup objects (packs of tens of MiB), streamed through.
LARGE_BODY_SEGMENTS = frozenset({"objects"})


def body_limit(path: str, default: int, large: int) -> int:
    """Backup objects and a backup's commit (its pack list: 66 bytes a pack, ~2 MiB per
    TiB of snapshot) may be large; everything else is small JSON."""
    if not path.startswith(API_PREFIX):
        return default
    parts = path[len(API_PREFIX):].split("/")
    if parts[0] in LARGE_BODY_SEGMENTS:
        return large
    if len(parts) == 3 and parts[0] == "backups" and parts[2] == "commit":
        return large
    return default


def revoked_agent_key(path: str) -> str | None:
    """The key id of ``DELETE /api/v1/agent-keys/{id}``'s path, else None."""
    prefix = API_PREFIX + "agent-keys/"
    if not path.startswith(prefix):
        return None
    key_id = path[len(prefix):]
    return key_id if key_id and "/" not in key_id else None


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when absent, '' when malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


class TokenCache:
    """Introspection results, trusted for ``ttl`` seconds: a token revoked through another
    gateway replica keeps working here at most that long. Keyed by a hash so the cache holds
    no usable tokens; also findable by token id, so a revocation through this gateway (the
    agent key's id in the path) takes effect here at once."""

    def __init__(self, ttl: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._by_token_id: dict[str, str] = {}
        # Counts forgets: a check that began before one must not cache its answer (it may
        # describe the token as it was before a logout or revocation).
        self._forgets = 0

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> Identity | None:
        key = self.key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, identity = entry
        if expires <= self.clock():
            self._drop(key)
            return None
        return identity

    def ticket(self) -> int:
        """Taken before checking a token; ``put`` with it caches only if nothing was
        forgotten meanwhile."""
        return self._forgets

    def put(self, token: str, identity: Identity, not_after: float | None = None,
            ticket: int | None = None) -> None:
        if self.ttl <= 0 or (ticket is not None and ticket != self._forgets):
            return
        expires = self.clock() + self.ttl
        if not_after is not None:
            expires = min(expires, not_after)
        key = self.key(token)
        self._entries[key] = (expires, identity)
        self._entries.move_to_end(key)
        if identity.token_id is not None:
            self._by_token_id[identity.token_id] = key
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def forget(self, token: str) -> None:
        self._forgets += 1
        self._drop(self.key(token))

    def forget_token_id(self, token_id: str) -> None:
        self._forgets += 1
        key = self._by_token_id.get(token_id)
        if key is not None:
            self._drop(key)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[1].token_id is not None:
            if self._by_token_id.get(entry[1].token_id) == key:
                del self._by_token_id[entry[1].token_id]
