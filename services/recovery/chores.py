"""Short background tasks a worker starts and does not wait for (work after a commit, a
sweep): kept referenced until they end (the event loop holds only weak references to
tasks), and a failure logged with what makes up for it, never lost in silence."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from shared.logs import get_logger

log = get_logger(__name__)


class Chores:
    def __init__(self, on_failure: str) -> None:
        self.on_failure = on_failure  # the log line: what failed and what makes up for it
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def running(self) -> list[asyncio.Task]:
        return list(self._tasks)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning(self.on_failure, error=str(error) or type(error).__name__)
