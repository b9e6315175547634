"""An exclusive lock on a file, held through an open file object: released when that
object is closed or its process ends in any way (SIGKILL and power loss included), so a
lock never outlives its holder. The agent's on-disk index (diskindex.py) and its backup
sessions (clients/agent/state.py) tell live holders from dead ones with it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO


class LockHeld(Exception):
    """Another process holds the lock."""


def hold_exclusively(path: str | os.PathLike) -> BinaryIO:
    """An open file holding an exclusive lock on ``path`` (created if missing) until it is
    closed; LockHeld if another process holds it, OSError if the file cannot be opened."""
    owner = open(path, "a+b")
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(owner.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner.close()
        raise LockHeld(f"{path} is held by another process") from None
    return owner


def is_held(path: str | os.PathLike) -> bool:
    """Whether a process holds the lock on ``path`` now. A missing file is not held;
    where it cannot be told (the file is another user's), it counts as held."""
    try:
        if not Path(path).exists():
            return False
        hold_exclusively(path).close()
    except (LockHeld, OSError):
        return True
    return False
