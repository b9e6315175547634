"""The log of `reclo-agent run`: one JSON object per line, for journald, a log shipper or
`jq`. Each line has `time` (UTC, ISO 8601), `level`, `event` (a stable dotted name such
as `backup.completed`) and the event's own fields; nothing else is ever printed."""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO


class JsonLog:
    def __init__(self, stream: TextIO | None = None, path: Path | None = None) -> None:
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        self.stream = self._file or stream or sys.stdout
        self._lock = threading.Lock()

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        doc = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level,
               "event": event, **fields}
        line = json.dumps(doc, default=str, ensure_ascii=False)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
