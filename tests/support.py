"""Small helpers the test tiers share."""

from __future__ import annotations

import asyncio
import inspect
import time


async def eventually(condition, timeout: float = 10.0, interval: float = 0.02):
    """Wait until ``condition()`` (sync or async) is true; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
