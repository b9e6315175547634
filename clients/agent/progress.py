"""How a command tells its progress: a progress bar on a terminal, JSON lines for programs
(`--json`), and nothing but the result when it runs unattended (not a TTY).

Three reporters, one interface: `progress(Progress)` while a backup or a restore runs, `warning(text)`
for a file that was skipped or changed, `result(doc)` once at the end. JSON lines are one
object per line with a `type` (`progress`, `warning`, `result`, `error`), so a monitoring
script can follow a backup with a plain line reader.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from shared.format import Progress

# JSON progress lines at most this often: a line a second is plenty for a dashboard and
# keeps a day-long backup's log small.
JSON_PROGRESS_INTERVAL = 1.0


class Reporter:
    """Quiet: only the result (one line) and warnings (stderr)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.activity = "backup"  # what the progress is of: the bar's label

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def progress(self, p: Progress) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        print(f"warning: {text}", file=self.err, flush=True)

    def result(self, doc: dict[str, Any], text: str) -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str, code: int) -> None:
        print(f"reclo-agent: {text}", file=self.err, flush=True)


class JsonReporter(Reporter):
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        super().__init__(out, err)
        self._last = 0.0
        self._started = time.monotonic()

    def _emit(self, doc: dict[str, Any]) -> None:
        self.out.write(json.dumps(doc, default=str) + "\n")
        self.out.flush()

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last < JSON_PROGRESS_INTERVAL and not (p.totals_final and p.bytes_done >= p.bytes_total):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        rate = p.bytes_done / elapsed
        eta = (p.bytes_total - p.bytes_done) / rate if p.totals_final and rate > 0 else None
        self._emit({"type": "progress", "files_done": p.files_done, "files_total": p.files_total,
                    "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "totals_final": p.totals_final,
                    "bytes_per_second": round(rate), "eta_seconds": None if eta is None else round(eta, 1)})

    def status(self, text: str) -> None:
        self._emit({"type": "status", "message": text})

    def warning(self, text: str) -> None:
        self._emit({"type": "warning", "message": text})

    def result(self, doc: dict[str, Any], text: str) -> None:
        self._emit({"type": "result", **doc})

    def error(self, text: str, code: int) -> None:
        self._emit({"type": "error", "message": text, "exit_code": code})


class TerminalReporter(Reporter):
    """A rich progress bar: files, bytes, rate, ETA; warnings printed above it."""

    def __init__(self) -> None:
        from rich.console import Console  # only a terminal needs rich

        super().__init__()
        self.console = Console(stderr=True)
        self._bar = None
        self._task = None

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _ensure(self):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as Bar,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self._bar is None:
            self._bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[files]}"),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.activity, total=None, files="")
        return self._bar

    def progress(self, p: Progress) -> None:
        bar = self._ensure()
        total = p.bytes_total if p.totals_final else None
        counting = "" if p.totals_final else " (counting)"
        bar.update(self._task, completed=p.bytes_done, total=total,
                   files=f"{p.files_done}/{p.files_total} files{counting}")

    def status(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def warning(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

    def result(self, doc: dict[str, Any], text: str) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        print(text, flush=True)

    def error(self, text: str, code: int) -> None:
        self.__exit__()
        self.console.print(f"[red]reclo-agent:[/red] {text}", highlight=False)


def reporter_for(json_lines: bool) -> Reporter:
    if json_lines:
        return JsonReporter()
    if sys.stderr.isatty():
        return TerminalReporter()
    return Reporter()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
