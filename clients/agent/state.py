"""What the agent remembers between runs, in `state.json` of its state folder.

Only what the repository and the server cannot say: the backup sessions this agent opened
and has not closed (a process killed in the middle of a backup cannot tell the server;
the next successful backup does, once it has reused what the killed one uploaded), and
when the last scheduled attempt failed (so `run` retries later, not in a tight loop, even
across restarts). Losing the file costs nothing but those two conveniences.

Two agent processes may run at once (a manual backup while the daemon runs one): every
change is made under a lock on `state.json.lock`, and each run holds a lock on
`sessions/<id>.lock` while its session is open, so that another run never closes a
session whose run is alive (only a dead run's lock is free).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from shared.format import filelock

STATE_NAME = "state.json"
SESSIONS = "sessions"
# A change holds the state's lock for a few milliseconds; past this wait the holder is
# stuck (a frozen process) and the change is made without it.
_CHANGE_WAIT_SECONDS = 5.0


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
        def assign(state: AgentState) -> None:
            for key, value in values.items():
                setattr(state, key, value)

        return self.update(assign)

    def update(self, change: Callable[[AgentState], None]) -> AgentState:
        """Load, change and save under the state's lock: another process's change made
        meanwhile is never lost."""
        with self._locked():
            state = self.load()
            change(state)
            self.save(state)
            return state

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _CHANGE_WAIT_SECONDS
        while True:
            try:
                owner = filelock.hold_exclusively(self.path.with_name(f"{STATE_NAME}.lock"))
                break
            except filelock.LockHeld:
                if time.monotonic() > deadline:
                    owner = None
                    break
                time.sleep(0.01)
            except OSError:  # a state folder we cannot lock in: as before, unlocked
                owner = None
                break
        try:
            yield
        finally:
            if owner is not None:
                owner.close()

    # --- backup sessions ----------------------------------------------------------------

    def hold_session(self, backup_id: str) -> BinaryIO:
        """This run's claim on its session, until the returned file is closed (or the
        process dies): while it is held, no other run closes the session."""
        folder = self.path.parent / SESSIONS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{backup_id}.lock"
        while True:
            owner = filelock.hold_exclusively(path)
            # Another run's sweep may have deleted the file between its opening and its
            # locking: a lock on a deleted file claims nothing, so take a new one.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(owner.fileno()).st_ino:
                    return owner
            owner.close()

    def session_is_live(self, backup_id: str) -> bool:
        return filelock.is_held(self.path.parent / SESSIONS / f"{backup_id}.lock")

    def note_session(self, backup_id: str) -> None:
        self.update(lambda state: state.open_sessions.append(backup_id))

    def forget_sessions(self, backup_ids: Iterable[str]) -> None:
        gone = set(backup_ids)
        self.update(lambda state: setattr(state, "open_sessions",
                                          [s for s in state.open_sessions if s not in gone]))
        self.sweep_session_locks()

    def sweep_session_locks(self) -> None:
        """Delete the locks of sessions no longer noted whose runs are over."""
        noted = set(self.load().open_sessions)
        with contextlib.suppress(OSError):
            for path in (self.path.parent / SESSIONS).glob("*.lock"):
                if path.stem not in noted and not filelock.is_held(path):
                    with contextlib.suppress(OSError):
                        path.unlink()
