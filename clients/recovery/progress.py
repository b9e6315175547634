"""Showing a recovery's progress: rich bars through the states on a terminal, or one JSON
object per line for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

STATES = ("pending", "downloading", "importing", "finishing", "complete")
STATE_WORDS = {
    "pending": "waiting for a worker",
    "downloading": "reading the backup, building the disk",
    "importing": "importing the disk",
    "finishing": "starting the machine",
    "complete": "complete",
    "failed": "failed",
}
# The fields a JSON line carries: what a script needs to act, nothing that changes shape.
JSON_FIELDS = ("id", "state", "total_progress", "state_progress", "message", "failure_reason",
               "target", "format", "image_url", "image_bytes", "image_sha256", "instance_id",
               "updated_at")


def json_line(recovery: dict[str, Any]) -> str:
    return json.dumps({k: recovery.get(k) for k in JSON_FIELDS}, separators=(",", ":"))


class JsonLines:
    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self._last: str | None = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, recovery: dict[str, Any]) -> None:
        line = json_line(recovery)
        if line != self._last:
            print(line, file=self.out, flush=True)
            self._last = line


class Bars:
    """Two bars, the whole task and the current state, and the service's status message."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), console=self.console)
        self.total = self.progress.add_task("overall", total=100)
        self.stage = self.progress.add_task("pending", total=100)
        self._state: str | None = None
        self._step = 1  # a failure keeps the number of the step it happened in
        self._message = ""

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, recovery: dict[str, Any]) -> None:
        state = recovery.get("state", "")
        if state != self._state:
            if self._state is not None and self._state != "failed":
                # The step that ended: done, unless the recovery failed in it.
                mark = "[red]✗[/]" if state == "failed" else "[green]✓[/]"
                self.progress.console.print(
                    f"{mark} {escape(STATE_WORDS.get(self._state, self._state))}")
            if state in STATES:
                self._step = STATES.index(state) + 1
            self._state = state
        self.progress.update(self.total, completed=recovery.get("total_progress", 0),
                             description=f"overall (step {self._step} of {len(STATES)})")
        self.progress.update(self.stage, completed=recovery.get("state_progress", 0),
                             description=escape(STATE_WORDS.get(state, state)))
        message = recovery.get("message") or ""
        if message and message != self._message:
            self.progress.console.print(f"  {message}", markup=False, highlight=False)
            self._message = message
