"""The log of `reclo-agent run`: one JSON object per line, for journald, a log shipper or
`jq`. Each line has `time` (UTC, ISO 8601), `level`, `event` (a stable dotted name such
as `backup.completed`) and the event's own fields; nothing else is ever printed.

On Linux it goes to stdout (journald keeps it). A Windows service has no stdout, so
there it goes to a file (`log_file`), which is rotated once it reaches MAX_FILE_BYTES
(one previous file, `.1`, is kept).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

# About a year of daily backups' lines; two of these files are kept.
MAX_FILE_BYTES = 10 * 1024 * 1024


class JsonLog:
    def __init__(self, stream: TextIO | None = None, path: Path | None = None) -> None:
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        self.stream = self._file or stream or sys.stdout
        self._lock = threading.Lock()

    def _rotate_if_full(self) -> None:
        if self._file is None or self.path is None or self._file.tell() < MAX_FILE_BYTES:
            return
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self.stream = open(self.path, "a", encoding="utf-8")

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        doc = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level,
               "event": event, **fields}
        line = json.dumps(doc, default=str, ensure_ascii=False)
        with self._lock:
            self._rotate_if_full()
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
