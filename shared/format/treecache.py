"""The agent's memory of the folders of its last backup, so that an incremental of a huge,
quiet tree neither decodes the parent's trees nor compares its files one by one.

For every folder a backup stored, the cache keeps, in an SQLite file on the agent's disk
(it grows with the number of folders, not of files, and is read one row at a time):

- ``own``: a signature of the folder's own entries — name, type, permissions, owner, times,
  inode, device and (files) size of each: the fields its tree's nodes take from lstat;
- ``whole``: a signature of the whole subtree (``own`` and each subfolder's ``whole``);
- the id of the tree the backup stored for the folder, and the totals of its own entries
  (for the snapshot's statistics and the progress bar).

A cache belongs to one snapshot, and lists that snapshot's packs. The next backup uses it
only when that snapshot is its parent, all those packs are still indexed, and the settings
that shape a tree (chunking, excludes, in-place patterns, this cache's own version) are the
same. Then a folder whose ``whole`` is unchanged keeps its tree id; one whose ``own`` is
unchanged but a subfolder changed takes its entries from its old tree without comparing
them; any other folder is compared file by file, as without a cache. A folder whose backup
warned (a file unreadable, vanished, changed while read, a special file skipped) is not
recorded, and neither is any folder above it: its tree may lack what the next backup
finds, so the next backup looks at that whole path again (and warns again if it must).

Each backup writes a new cache beside the current one, which :meth:`TreeCache.commit` puts
in its place once the caller has made the snapshot count (saved it, and committed it to the
server); a backup that fails leaves the current one as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SIGNATURE_BYTES = 16
# Rows written per statement while a backup runs.
_WRITE_BATCH = 1000
_SCHEMA = """
CREATE TABLE folders (
    source BLOB NOT NULL, path BLOB NOT NULL,
    own BLOB NOT NULL, whole BLOB NOT NULL, tree BLOB NOT NULL,
    files INTEGER NOT NULL, symlinks INTEGER NOT NULL, bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL, hole_bytes INTEGER NOT NULL,
    PRIMARY KEY (source, path)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# A folder's own entries counted as the snapshot's statistics count them (same names).
FOLDER_TOTALS = ("files", "symlinks", "bytes", "chunks", "hole_bytes")


@dataclass(frozen=True)
class FolderRecord:
    own: bytes
    whole: bytes
    tree: bytes
    files: int = 0
    symlinks: int = 0
    bytes: int = 0
    chunks: int = 0
    hole_bytes: int = 0


# One entry's lstat as the signatures see it: type and permissions, owner, times, inode,
# device and size (files: their content's; symlinks: their target's length, which tells a
# new target apart where timestamps are coarse; folders: none).
_ENTRY = struct.Struct("<IIIqqQQQ")


def folder_signature(entries: list[tuple[str, os.stat_result]]) -> bytes:
    """The signature of a folder's own entries (name, lstat), in tree order: fixed-size
    records packed in C, then the names, one hash per folder."""
    pack, is_dir = _ENTRY.pack, stat.S_ISDIR
    h = hashlib.blake2b(digest_size=SIGNATURE_BYTES)
    h.update(b"".join([pack(s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_ctime_ns,
                            s.st_ino, s.st_dev, 0 if is_dir(s.st_mode) else s.st_size)
                       for _, s in entries]))
    h.update("\0".join([name for name, _ in entries]).encode("utf-8", "surrogateescape"))
    return h.digest()


def _key(name: str) -> bytes:
    """Names as the file system gave them: a folder whose name is not valid UTF-8 (a share
    mounted with another charset) is as much a key as any."""
    return os.fsencode(name)


def signature(parts: list) -> bytes:
    """A short digest of a folder's own signature and its subfolders' (name, signature)
    pairs, in tree order."""
    text = repr(parts).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(text, digest_size=SIGNATURE_BYTES).digest()


class TreeCache:
    """One cache file (``path``) and the new one a backup writes beside it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._new_path = self.path.with_name(self.path.name + ".new")
        self._old: sqlite3.Connection | None = None
        self._new: sqlite3.Connection | None = None
        self._rows: list[tuple] = []
        self.parent_packs: list[str] | None = None  # of the snapshot the cache describes

    # --- a backup's use ---------------------------------------------------------------

    def begin(self, *, parent: str | None, settings: str) -> bool:
        """Start a backup's new cache; returns whether the current one may be used, i.e.
        belongs to ``parent`` and was made with the same ``settings``."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._new_path)  # left by a backup that was killed
        self._new = sqlite3.connect(self._new_path, isolation_level=None)
        self._new.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self._new.execute("BEGIN")
        self._new.execute("INSERT INTO meta VALUES ('settings', ?)", (settings,))
        usable = False
        if parent is not None and self.path.is_file():
            old = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                meta = dict(old.execute("SELECT key, value FROM meta"))
                # Without the parent's packs, what the kept folders reference could not be
                # checked against the index, nor listed for retention.
                if (meta.get("snapshot") == parent and meta.get("settings") == settings
                        and meta.get("packs") is not None):
                    self._old, usable = old, True
                    self.parent_packs = json.loads(meta["packs"])
                else:
                    old.close()
            except sqlite3.DatabaseError:  # damaged: the backup goes on without it and replaces it
                old.close()
        return usable

    def set_aside(self) -> None:
        """Use the current cache no more in this backup (its parent's data is not all
        there); the backup goes on without it and its new cache replaces it."""
        if self._old is not None:
            self._old.close()
            self._old = None
        self.parent_packs = None

    @property
    def in_use(self) -> bool:
        return self._old is not None

    def lookup(self, source: str, path: str) -> FolderRecord | None:
        """The record of a folder, if the current cache is in use and has one. A cache
        found damaged here is set aside for the rest of the backup (what was taken from
        it so far was whole: SQLite checks each page it reads)."""
        if self._old is None:
            return None
        try:
            row = self._old.execute(
                "SELECT own, whole, tree, files, symlinks, bytes, chunks, hole_bytes FROM folders"
                " WHERE source = ? AND path = ?", (_key(source), _key(path))).fetchone()
        except sqlite3.DatabaseError:
            self._old.close()
            self._old = None
            return None
        return None if row is None else FolderRecord(*row)

    def record(self, source: str, path: str, folder: FolderRecord) -> None:
        self._rows.append((_key(source), _key(path), folder.own, folder.whole, folder.tree, folder.files,
                           folder.symlinks, folder.bytes, folder.chunks, folder.hole_bytes))
        if len(self._rows) >= _WRITE_BATCH:
            self._flush()

    def commit(self, snapshot_id: str, packs: Sequence[str]) -> None:
        """Make the new cache current: it describes ``snapshot_id``, which references
        ``packs`` (all of them, or more): the next backup uses the cache only if they are
        all still indexed, and adds them to its own for the folders it keeps unseen."""
        if self._new is None:
            raise RuntimeError("no backup wrote this cache")
        self._flush()
        self._new.execute("INSERT INTO meta VALUES ('snapshot', ?)", (snapshot_id,))
        self._new.execute("INSERT INTO meta VALUES ('packs', ?)", (json.dumps(sorted(packs)),))
        self._new.execute("COMMIT")
        self.close(keep_new=True)
        # Written without a journal (it is rebuilt if lost): on disk before it is current.
        fd = os.open(self._new_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._new_path, self.path)

    def close(self, *, keep_new: bool = False) -> None:
        """Let go of both files; without ``keep_new`` the unfinished new one is deleted."""
        for conn in (self._old, self._new):
            if conn is not None:
                conn.close()
        had_new = self._new is not None
        self._old = self._new = None
        self._rows.clear()
        if had_new and not keep_new:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._new_path)

    def _flush(self) -> None:
        if self._rows and self._new is not None:
            self._new.executemany("INSERT OR REPLACE INTO folders VALUES (?,?,?,?,?,?,?,?,?,?)",
                                  self._rows)
        self._rows.clear()
