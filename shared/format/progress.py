"""How far a backup or a restore is: counted from any thread, reported from the event loop."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace
from typing import Callable


@dataclass
class Progress:
    """Where a backup or a restore is; totals may grow until totals_final."""

    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    totals_final: bool = False


ProgressCallback = Callable[[Progress], None]


class Meter:
    """A Progress that worker threads advance and a task reports every interval: the
    threads take a lock for a moment, never wait for the callback (a terminal, a pipe)."""

    def __init__(self, callback: ProgressCallback | None, interval: float):
        self.callback = callback
        self.interval = interval
        self.progress = Progress()
        self._lock = threading.Lock()

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.progress.files_done += files
            self.progress.bytes_done += nbytes

    def add_total(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.progress.files_total += files
            self.progress.bytes_total += nbytes

    def totals_known(self) -> None:
        with self._lock:
            self.progress.totals_final = True

    def totals_are_done(self) -> None:
        """At the end: what was done is the total (the totals before were estimates)."""
        with self._lock:
            p = self.progress
            p.files_total, p.bytes_total, p.totals_final = p.files_done, p.bytes_done, True

    def report(self) -> None:
        """Calls the callback with a copy. A callback that fails (a closed terminal or
        pipe) is not called again: it stops the reports, never the work."""
        callback = self.callback
        if callback is None:
            return
        with self._lock:
            snapshot = replace(self.progress)
        try:
            callback(snapshot)
        except Exception:
            self.callback = None

    def start(self) -> asyncio.Task | None:
        """The task that reports every interval (None without a callback); cancel it at
        the end."""
        return asyncio.create_task(self._tick()) if self.callback is not None else None

    async def _tick(self) -> None:
        while self.callback is not None:
            await asyncio.sleep(self.interval)
            self.report()
