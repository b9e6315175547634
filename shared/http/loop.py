"""The event loop the servers run on: uvloop's where it is installed (a server-only
dependency for Linux and macOS), asyncio's own elsewhere (Windows, or without it).

Measured on the gateway's hot path (docs/BENCHMARKS.md): ~10-15 % less CPU per proxied
request than on the standard loop, and a lower p99.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
