"""Index files an agent has read before, kept decoded on its own disk.

Opening a repository reads every index file. Index files never change (each is named by
the hash of its sealed content), so one read once can be kept: the next run neither
downloads it again (for a repository on the server, one request per pack's index file)
nor decrypts and parses its JSON, the slowest part of loading a million entries. What is
kept is the index file's entries in a binary form that loads with a few C-level array
operations per pack.

A kept file is checked against its own digest when read; a damaged or foreign one is
ignored (and replaced), so the worst a bad disk does is a download. Entries of packs that
are gone are left out by the caller as for a downloaded index file.

Layout of ``<index id>.bin``: ``MAGIC``, then per pack: ``<H`` length of the pack id, the
id (ASCII), ``<QI`` pack size and entry count, the blob ids (32 bytes each), then two
little-endian uint64 arrays: ``(type << 40) | offset`` and ``(length << 32) | raw_length``;
and last a 32-byte BLAKE2b digest of everything before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import sys
from array import array
from pathlib import Path

from .constants import CHUNK_ID_SIZE
from .diskindex import FILE_NAME, DiskIndex
from .index import IndexedPack, KeptPack

MAGIC = b"RECLO-INDEX-CACHE-1\n"
_DIGEST = 32
_PACK_HEAD = struct.Struct("<QI")
_U32 = (1 << 32) - 1
_U40 = (1 << 40) - 1


class IndexCache:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def open_index(self) -> DiskIndex:
        """The index kept on disk beside these files (diskindex.py)."""
        return DiskIndex(self.folder / FILE_NAME)

    def get(self, index_id: str) -> list[KeptPack] | None:
        try:
            data = (self.folder / f"{index_id}.bin").read_bytes()
        except OSError:
            return None
        try:
            return _decode(data)
        except (ValueError, struct.error, UnicodeDecodeError):
            return None  # damaged: read from the repository again, and kept anew

    def keep_only(self, index_ids: set[str]) -> None:
        """Forget kept index files not among ``index_ids`` (deleted from the repository)."""
        for path in self.folder.glob("*.bin"):
            if path.stem not in index_ids:
                with contextlib.suppress(OSError):
                    path.unlink()

    def put(self, index_id: str, packs: list[IndexedPack]) -> None:
        """Keep an index file just read (best effort: a full disk only costs a download)."""
        path = self.folder / f"{index_id}.bin"
        partial = path.with_name(path.name + ".partial")
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(_encode(packs))
            os.replace(partial, path)


class ReadOnlyIndexCache(IndexCache):
    """Another run's kept index files, read and never written: a restore takes what the
    backups downloaded before without touching their folder (clients/agent/restore_index.py)."""

    def open_index(self) -> DiskIndex:
        raise TypeError("a read-only index cache has no index of its own")

    def keep_only(self, index_ids: set[str]) -> None:
        pass

    def put(self, index_id: str, packs: list[IndexedPack]) -> None:
        pass


def _encode(packs: list[IndexedPack]) -> bytes:
    out = [MAGIC]
    for pack in packs:
        name = pack.id.encode("ascii")
        out.append(struct.pack("<H", len(name)) + name)
        out.append(_PACK_HEAD.pack(pack.size, len(pack.entries)))
        out.append(b"".join(e.id for e in pack.entries))
        high = array("Q", (int(e.type) << 40 | e.offset for e in pack.entries))
        low = array("Q", (e.length << 32 | e.raw_length for e in pack.entries))
        if sys.byteorder != "little":
            high.byteswap()
            low.byteswap()
        out += [high.tobytes(), low.tobytes()]
    body = b"".join(out)
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def _decode(data: bytes) -> list[KeptPack]:
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if not body.startswith(MAGIC) or hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise ValueError("not a kept index file, or damaged")
    view = memoryview(body)
    pos = len(MAGIC)
    packs = []
    while pos < len(body):
        (name_len,) = struct.unpack_from("<H", body, pos)
        pos += 2
        pack_id = bytes(view[pos:pos + name_len]).decode("ascii")
        pos += name_len
        size, count = _PACK_HEAD.unpack_from(body, pos)
        pos += _PACK_HEAD.size
        ids = bytes(view[pos:pos + count * CHUNK_ID_SIZE])
        pos += count * CHUNK_ID_SIZE
        high, low = array("Q"), array("Q")
        high.frombytes(view[pos:pos + count * 8])
        pos += count * 8
        low.frombytes(view[pos:pos + count * 8])
        pos += count * 8
        if len(ids) != count * CHUNK_ID_SIZE or len(low) != count:
            raise ValueError("truncated")
        if sys.byteorder != "little":
            high.byteswap()
            low.byteswap()
        packs.append(KeptPack(pack_id, size, ids, high, low))
    return packs
