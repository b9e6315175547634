"""What the agent remembers between runs, in `state.json` of its state folder.

Only what the repository and the server cannot say: the backup sessions this agent opened
and has not closed (a process killed in the middle of a backup cannot tell the server;
the next successful backup does, once it has reused what the killed one uploaded), and
when the last scheduled attempt failed (so `run` retries later, not in a tight loop, even
across restarts). Losing the file costs nothing but those two conveniences.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

STATE_NAME = "state.json"


@dataclass
class AgentState:
    open_sessions: list[str] = field(default_factory=list)
    last_failure_at: datetime | None = None  # UTC
    last_failure: str | None = None


class StateFile:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / STATE_NAME

    def load(self) -> AgentState:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            failed = doc.get("last_failure_at")
            return AgentState(
                open_sessions=[str(s) for s in doc.get("open_sessions", [])],
                last_failure_at=datetime.fromisoformat(failed) if failed else None,
                last_failure=doc.get("last_failure"),
            )
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError, TypeError, AttributeError):
            return AgentState()  # a damaged state file is only a lost convenience

    def save(self, state: AgentState) -> None:
        doc = {
            "open_sessions": state.open_sessions,
            "last_failure_at": state.last_failure_at.isoformat() if state.last_failure_at else None,
            "last_failure": state.last_failure,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{STATE_NAME}.{uuid.uuid4().hex}.tmp")
        temp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(temp, self.path)

    def change(self, **values) -> AgentState:
        state = self.load()
        for key, value in values.items():
            setattr(state, key, value)
        self.save(state)
        return state
