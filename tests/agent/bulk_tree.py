"""A large source tree made quickly and reproducibly from a seed: about 1 GiB of what a
file server holds, for tests that need a backup long enough to be interrupted.

- one large file of incompressible bytes (a database dump, a video);
- compressible files (hex text: zstd halves them, so they take the compressed path);
- a sparse file, mostly holes, with data islands (a preallocated VM disk);
- many small incompressible files in folders (documents), each its own chunk.

Bytes come from BLAKE3 in extendable-output mode keyed by the seed: the same seed gives
the same tree, and it is several times faster than `random.randbytes` here.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import blake3

MiB = 1024 * 1024
BLOCK = 16 * MiB


@dataclass(frozen=True)
class BulkShape:
    large: int = 512 * MiB
    compressible: tuple[int, int] = (16, 8 * MiB)  # files, size of each
    sparse: int = 256 * MiB
    sparse_islands: tuple[int, int] = (8, 4 * MiB)  # islands, size of each
    small: tuple[int, int, int] = (2000, 1024, 96 * 1024)  # files, smallest, largest


class _Stream:
    """Deterministic pseudo-random bytes: successive reads of one keyed BLAKE3 output."""

    def __init__(self, seed: int, name: str) -> None:
        self._hasher = blake3.blake3(name.encode(), key=hashlib.sha256(str(seed).encode()).digest())
        self._pos = 0

    def read(self, n: int) -> bytes:
        data = self._hasher.digest(n, seek=self._pos)
        self._pos += n
        return data


def _write_stream(path: Path, stream: _Stream, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(stream.read(n))
            left -= n


@dataclass(frozen=True)
class BulkTree:
    logical: int  # bytes of the files, holes included
    payload: int  # about what a backup stores: data without holes, text at half its size


def make_bulk_tree(root: Path, seed: int, shape: BulkShape = BulkShape()) -> BulkTree:
    """Fill `root` with files shaped by `shape`, their bytes drawn from `seed`."""
    root.mkdir(parents=True)
    rng = random.Random(seed)
    total = 0

    _write_stream(root / "large.bin", _Stream(seed, "large"), shape.large)
    total += shape.large

    text = root / "logs"
    text.mkdir()
    count, size = shape.compressible
    hexed = _Stream(seed, "text")
    for i in range(count):
        (text / f"log-{i:03}.txt").write_bytes(hexed.read(size // 2).hex().encode())
        total += size

    islands, island = shape.sparse_islands
    spaced = _Stream(seed, "sparse")
    with open(root / "disk.img", "wb") as f:
        f.truncate(shape.sparse)
        slot = shape.sparse // islands
        for i in range(islands):
            # aligned to 64 KiB inside its slot, so islands never touch
            f.seek(i * slot + rng.randrange(0, slot - island, 64 * 1024))
            f.write(spaced.read(island))
    total += shape.sparse

    count, smallest, largest = shape.small
    docs = _Stream(seed, "small")
    for i in range(count):
        folder = root / "docs" / f"dept-{i % 40:02}" / f"{i // 400}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(smallest, largest)
        (folder / f"doc {i:05}.bin").write_bytes(docs.read(size))
        total += size
    holes = shape.sparse - islands * island
    text_bytes = shape.compressible[0] * shape.compressible[1]
    return BulkTree(total, total - holes - text_bytes // 2)


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file, by path relative to root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as f:
                while data := f.read(BLOCK):
                    h.update(data)
            out[str(path.relative_to(root))] = h.hexdigest()
    return out
