"""The upload bandwidth limit: a token bucket, and two ways of spending from it.

A business's uplink is shared with its working day, so the administrator caps what the
agent may send (bytes per second). The bucket holds at most one second of traffic, so
after an idle spell the agent may burst for about a second and then keeps to the rate.

- To the server: `PacedSession` wraps the HTTP session the remote store uploads with, and
  feeds each PUT body in small pieces as tokens arrive (with its Content-Length, so S3
  sees an ordinary upload): the link itself sees the limited rate, not bursts of a pack.
- To a folder (a NAS mount): `ThrottledStore` wraps the object store port and waits for
  an object's tokens before writing it, which keeps the average rate over each pack.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

from shared.format.store import Bytes, ForwardingStore, ObjectStore

# Pieces of a paced upload: small enough that the rate is smooth at 1 MiB/s, large enough
# that the per-piece overhead does not matter at 1 GiB/s.
PIECE = 64 * 1024


class TokenBucket:
    def __init__(self, rate: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else rate)  # one second's worth
        self.tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()  # waiters are served in turn, so no upload starves

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def take(self, n: int) -> None:
        """Wait until n bytes may be sent (in pieces of at most the capacity)."""
        async with self._lock:
            while n > 0:
                piece = min(n, self.capacity)
                self._refill()
                if self.tokens < piece:
                    await asyncio.sleep((piece - self.tokens) / self.rate)
                    self._refill()
                self.tokens -= piece
                n -= piece


class ThrottledStore(ForwardingStore):
    """An ObjectStore whose puts keep to a TokenBucket; every other call passes through."""

    def __init__(self, inner: ObjectStore, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    async def put(self, key: str, data: Bytes, **options) -> None:
        await self.bucket.take(len(data))
        await self.inner.put(key, data, **options)

    def blocking_get(self):
        return self.inner.blocking_get()  # reads are not paced



class PacedSession:
    """An aiohttp ClientSession whose PUT bodies are sent at the bucket's rate; every
    other request and attribute is the wrapped session's."""

    def __init__(self, session: Any, bucket: TokenBucket) -> None:
        self._session = session
        self.bucket = bucket

    def put(self, url, *, data=None, headers=None, **options):
        if isinstance(data, (bytes, bytearray, memoryview)):
            headers = dict(headers or {})
            if not any(k.lower() == "content-length" for k in headers):
                headers["Content-Length"] = str(len(data))  # a plain upload, not chunked
            data = self._paced(memoryview(data))
        return self._session.put(url, data=data, headers=headers, **options)

    async def _paced(self, view: memoryview) -> AsyncIterator[bytes]:
        for start in range(0, len(view), PIECE):
            piece = view[start:start + PIECE]
            await self.bucket.take(len(piece))
            yield bytes(piece)

    def __getattr__(self, name: str):
        return getattr(self._session, name)
