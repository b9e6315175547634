"""Where a restore keeps the repository's index: a folder of its own under the agent's
state folder, removed when the restore ends.

Not the backups' index (index-cache/): a restore is often run by hand as root while the
daemon runs as its own user, and files root left there would turn the daemon's next
backups to an index in memory; a restore of hours would also hold that index's lock and
send the daemon's backups to memory meanwhile. A restore instead builds its own from the
index files the backups kept (read, never written: indexcache.ReadOnlyIndexCache) and
the repository's others (on a new machine, all of them) and keeps the memory it needs
bounded all the same (docs/agent.md, "What a backup does", step 1).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from shared.format.diskindex import FILE_NAME as INDEX_FILE, in_use

PREFIX = "restore-index-"


def make(state_dir: Path) -> Path | None:
    """The path of a new restore's index, in a folder of its own; None where the state
    folder cannot be written (the restore then keeps its index in memory). Folders of
    restores that ended without removing theirs (killed) are removed first."""
    sweep(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=PREFIX, dir=state_dir)) / INDEX_FILE
    except OSError:
        return None


def remove(index_at: Path | None) -> None:
    if index_at is not None:
        shutil.rmtree(index_at.parent, ignore_errors=True)


def sweep(state_dir: Path) -> None:
    """Remove the folders of restores no process runs any more (their index's lock is free)."""
    try:
        folders = [p for p in state_dir.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return
    for folder in folders:
        try:
            if not in_use(folder / INDEX_FILE):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # another user's, say: not this restore's to remove
