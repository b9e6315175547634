"""The index kept on the agent's disk, so a backup's memory does not grow with the repository.

The in-memory Index costs ~160 bytes per blob: 160 MB for a million, and a server with ten
million small files would need more than the machine has (restic's and kopia's best-known
failure). The agent instead keeps the entries of every index file it has read or written in
one SQLite database beside its index cache, with a page cache of ``CACHE_KIB``: a lookup is
one B-tree search (a few microseconds), and a backup that keeps unchanged folders from the
tree cache never looks anything up, so it need not load anything either.

The database is a cache of the repository's index files, never the truth:

- it records which index files its entries came from (``files``), and the packs those files
  name that the store no longer held when they were added (``gone``, left out as
  Repository.load_index leaves them out);
- ``settle`` compares that with the repository before a backup uses it, and starts it over
  when an index file it holds was deleted or a pack it points into is gone (retention's
  garbage collection), since a blob of a deleted pack may have been stored again elsewhere;
- a database that does not open, or has another layout, is deleted and built again from the
  kept index files.

One process at a time uses it: it holds an exclusive lock on ``index.sqlite.lock`` while
open, and a second agent process on the same repository (a manual backup while the daemon
runs one) gets ``IndexBusy`` and keeps its index in memory for that run, so one never
starts the database over under the other.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from itertools import repeat
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from . import filelock
from .constants import CHUNK_ID_SIZE
from .errors import FormatError
from .index import BlobLocation, IndexedPack, KeptPack
from .pack import BlobType

SCHEMA_VERSION = 1
CACHE_KIB = 8 * 1024  # SQLite's page cache: what bounds the index's memory
_U32 = (1 << 32) - 1
_U40 = (1 << 40) - 1
_MAX_LENGTH = (1 << 31) - 1  # (length << 32) | raw_length must fit SQLite's signed 64 bits

# The name an index on disk takes in the folder it is kept in (the agent's index cache, a
# restore's folder, a recovery task's scratch folder).
FILE_NAME = "index.sqlite"
_DATABASE_SUFFIXES = ("", "-wal", "-shm")  # the database and SQLite's files beside it

# What SQLite says of a file that is damaged or not a database (only then is it deleted).
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


class IndexBusy(Exception):
    """Another process has this index open."""


_SCHEMA = """
CREATE TABLE packs (number INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                    size INTEGER NOT NULL);
CREATE TABLE blobs (id BLOB PRIMARY KEY, pack INTEGER NOT NULL, high INTEGER NOT NULL,
                    low INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE files (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE gone (id TEXT PRIMARY KEY) WITHOUT ROWID;
"""


class DiskIndex:
    """Blob id -> location in SQLite; safe to use from several threads (one lock)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._owner = _lock_exclusively(Path(f"{self.path}.lock"))
        try:
            try:
                self._db = self._connect()
                damaged = self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok"
            except sqlite3.DatabaseError as e:
                if getattr(e, "sqlite_errorcode", None) not in _DAMAGED:
                    raise  # locked, disk full, unreadable: not a reason to throw it away
                damaged = True
            if damaged:  # it is only a cache: built again from the kept index files
                with contextlib.suppress(Exception):
                    self._db.close()
                self._delete_files()
                self._db = self._connect()
            self._pack_ids: dict[int, str] = {}
            self._pack_numbers: dict[str, int] = {}
            self._pack_sizes: dict[str, int] = {}
            self._read_packs()
        except BaseException:
            with contextlib.suppress(Exception):
                self._db.close()
            self._owner.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=60)
        try:
            # Only this process uses the file (the lock file): SQLite need not lock and
            # unlock it around every query (two fcntl calls per lookup, 72,000 in a full).
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a crash loses at most the last commits
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                if version != 0 or db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    db.close()
                    self._delete_files()  # another layout: built again
                    return self._connect()
                db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            db.close()
            raise
        return db

    def _delete_files(self) -> None:
        _unlink(self.path, _DATABASE_SUFFIXES)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._owner.close()  # and with it the lock

    def _read_packs(self) -> None:
        rows = self._db.execute("SELECT number, id, size FROM packs").fetchall()
        self._pack_ids = {number: pack_id for number, pack_id, _ in rows}
        self._pack_numbers = {pack_id: number for number, pack_id, _ in rows}
        self._pack_sizes = {pack_id: size for _, pack_id, size in rows}

    # --- what it holds ----------------------------------------------------------------

    def files(self) -> set[str]:
        """The index files whose entries are here."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM files")}

    def gone(self) -> set[str]:
        """Packs those index files name that the store did not hold."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM gone")}

    def settle(self, index_files: set[str], present_packs: set[str]) -> tuple[set[str], set[str]]:
        """Start over if the repository lost something these entries rely on: an index
        file (rewritten or collected) or a pack (collected). Returns what it then holds:
        its index files and the packs they name that are gone."""
        files, gone = self.files(), self.gone()
        if (not files <= index_files or not self._pack_numbers.keys() <= present_packs
                or gone & present_packs):
            self.clear()
            return set(), set()
        return files, gone

    def clear(self) -> None:
        with self._lock:
            self._db.executescript("BEGIN IMMEDIATE; DELETE FROM blobs; DELETE FROM packs;"
                                   " DELETE FROM files; DELETE FROM gone; COMMIT;")
            self._read_packs()

    # --- adding -----------------------------------------------------------------------

    def add_file(self, index_id: str, packs: Sequence[IndexedPack | KeptPack],
                 gone: Iterable[str] = ()) -> None:
        """An index file's packs the store holds, and those it no longer does, in one
        transaction with the file's name: all of a file is here or none of it."""
        with self._lock:
            db = self._db
            added: list[tuple[int, str, int]] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for pack in packs:
                    db.execute("INSERT OR IGNORE INTO packs (id, size) VALUES (?, ?)",
                               (pack.id, pack.size))
                    number, size = db.execute("SELECT number, size FROM packs WHERE id = ?",
                                              (pack.id,)).fetchone()
                    added.append((number, pack.id, size))
                    # A blob stored twice stays where it was first seen (as in Index).
                    db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                                   _rows(number, pack))
                db.executemany("INSERT OR IGNORE INTO gone VALUES (?)", ((p,) for p in gone))
                db.execute("INSERT OR IGNORE INTO files VALUES (?)", (index_id,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise
            for number, pack_id, size in added:
                self._pack_ids[number] = pack_id
                self._pack_numbers[pack_id] = number
                self._pack_sizes[pack_id] = size

    # --- reading ----------------------------------------------------------------------

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        with self._lock:
            row = self._db.execute("SELECT pack, high, low FROM blobs WHERE id = ?",
                                   (blob_id,)).fetchone()
        return None if row is None else self._location(*row)

    def _location(self, number: int, high: int, low: int) -> BlobLocation:
        # Only this process writes (the lock file), so every number is in _pack_ids.
        return BlobLocation(self._pack_ids[number], BlobType(high >> 40), high & _U40,
                            low >> 32, low & _U32)

    def __contains__(self, blob_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM blobs WHERE id = ?",
                                    (blob_id,)).fetchone() is not None

    def contains_many(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Those of blob_ids that are indexed, a few hundred per query (as lookup_many)."""
        ids = list(dict.fromkeys(blob_ids))
        found: set[bytes] = set()
        for at in range(0, len(ids), _IDS_PER_QUERY):
            batch = ids[at:at + _IDS_PER_QUERY]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id FROM blobs WHERE id IN ({','.join('?' * len(batch))})", batch).fetchall()
            found.update(row[0] for row in rows)
        return found

    def lookup_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """The location of each of blob_ids that is indexed, a few hundred per query: a
        tree of a big file names thousands of chunks, and a query each cost ~30 µs of
        Python and a hand-off of the GIL."""
        ids = list(dict.fromkeys(blob_ids))
        found: dict[bytes, BlobLocation] = {}
        for at in range(0, len(ids), _IDS_PER_QUERY):
            batch = ids[at:at + _IDS_PER_QUERY]
            with self._lock:  # taken per query: lookups of other threads go in between
                rows = self._db.execute(
                    f"SELECT id, pack, high, low FROM blobs WHERE id IN ({','.join('?' * len(batch))})",
                    batch).fetchall()
            found.update((blob_id, self._location(*row)) for blob_id, *row in rows)
        return found

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM blobs").fetchone()[0]

    def packs(self) -> dict[str, int]:
        """Every indexed pack id with its size in bytes."""
        return dict(self._pack_sizes)

    def has_pack(self, pack_id: str) -> bool:
        return pack_id in self._pack_numbers

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        with self._lock:
            rows = self._db.execute("SELECT id, pack, high, low FROM blobs").fetchall()
        for blob_id, number, high, low in rows:
            yield blob_id, self._location(number, high, low)


# Ids per query of lookup_many: well below SQLite's oldest limit of 999 parameters.
_IDS_PER_QUERY = 500


def _rows(number: int, pack: IndexedPack | KeptPack) -> Iterator[tuple[bytes, int, int, int]]:
    if isinstance(pack, KeptPack):
        ids, step = pack.ids, CHUNK_ID_SIZE
        if pack.low and max(pack.low) >> 32 > _MAX_LENGTH:
            raise FormatError(f"pack {pack.id}: a blob length out of range")
        return zip([ids[at:at + step] for at in range(0, len(ids), step)], repeat(number),
                   pack.high, pack.low)
    return (_row(number, e.id, int(e.type), e.offset, e.length, e.raw_length)
            for e in pack.entries)


def _row(number: int, blob_id: bytes, blob_type: int, offset: int, length: int,
         raw_length: int) -> tuple[bytes, int, int, int]:
    if not (0 <= offset <= _U40 and 0 <= length <= _MAX_LENGTH and 0 <= raw_length <= _U32):
        raise FormatError(f"blob location out of range: offset {offset}, length {length}, "
                          f"raw length {raw_length}")
    return blob_id, number, blob_type << 40 | offset, length << 32 | raw_length


def in_use(path: str | os.PathLike) -> bool:
    """Whether a process has the index at ``path`` open (holds its lock). Where that
    cannot be told (the lock file is another user's), it counts as in use."""
    return filelock.is_held(f"{os.fspath(path)}.lock")


def remove(path: str | os.PathLike) -> None:
    """Delete the files of a closed index at ``path``: the database, SQLite's own beside
    it and the lock file."""
    _unlink(path, (*_DATABASE_SUFFIXES, ".lock"))


def _unlink(path: str | os.PathLike, suffixes: Sequence[str]) -> None:
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{os.fspath(path)}{suffix}")


def _lock_exclusively(path: Path):
    """An open file holding an exclusive lock on ``path`` until closed; IndexBusy if
    another process holds it."""
    try:
        return filelock.hold_exclusively(path)
    except filelock.LockHeld as e:
        raise IndexBusy(str(e)) from None
