"""Retrying what a flaky network breaks, as a wrapper around the object store port.

A backup over a small office's uplink runs for hours; one dropped connection or one 503
from a gateway being redeployed must not throw that work away. Each call is tried again
a few times with growing pauses; what still fails after that fails the backup, and the
next run resumes it (nothing that arrived is uploaded again).

Objects are named by the hash of their content, so a `put` retried after a lost answer
that finds the key already there (ObjectExists) did arrive: that is success, not an error.
"""

from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

import aiohttp

from shared.format.errors import InvalidKey, ObjectExists, ObjectNotFound, StoreError
from shared.format.store import Bytes, ForwardingStore, ObjectStore

# Pauses between attempts (seconds): about a minute in all, long enough to ride out a
# router restart or a rolling deployment, short enough that a dead link fails the run soon.
RETRY_DELAYS = (1.0, 5.0, 20.0, 40.0)
_TRANSIENT_STATUS = re.compile(r"HTTP (429|5\d\d)\b")


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (ObjectExists, ObjectNotFound, InvalidKey)):
        return False
    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
                          ConnectionError)):
        return True
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return isinstance(error, StoreError) and bool(_TRANSIENT_STATUS.search(str(error)))


async def retried(call, delays: tuple[float, ...] = RETRY_DELAYS):
    """``await call(attempt)``, tried again after each pause in ``delays`` while what it
    raises is transient."""
    for attempt in range(len(delays) + 1):
        try:
            return await call(attempt)
        except Exception as e:
            if attempt == len(delays) or not is_transient(e):
                raise
            await asyncio.sleep(delays[attempt])
    raise AssertionError("unreachable")


class RetryingStore(ForwardingStore):
    def __init__(self, inner: ObjectStore, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        super().__init__(inner)
        self.delays = delays

    async def _retry(self, call):
        return await retried(call, self.delays)

    async def put(self, key: str, data: Bytes, **options) -> None:
        async def once(attempt: int) -> None:
            try:
                await self.inner.put(key, data, **options)
            except ObjectExists:
                if attempt == 0:
                    raise
                # an earlier attempt stored it and only its answer was lost

        await self._retry(once)

    async def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        return await self._retry(lambda _: self.inner.get(key, offset, length))

    async def exists(self, key: str) -> bool:
        return await self._retry(lambda _: self.inner.exists(key))

    async def size(self, key: str) -> int:
        return await self._retry(lambda _: self.inner.size(key))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        # A listing cut off half-way starts again: collect it whole, then hand it out.
        async def once(_: int) -> list[str]:
            return [k async for k in self.inner.list(prefix)]

        for key in await self._retry(once):
            yield key
