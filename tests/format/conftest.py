"""Fixtures and helpers for the format tests: real folders, real files, no mocks."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from shared.format import FULL, Archiver, LocalFolderStore, Repository, ScryptParams
from shared.format.constants import MiB
from shared.format.treecache import TreeCache

# The slow default scrypt (0.5 s, 128 MiB) is for customers, not for every test.
FAST_KDF = ScryptParams(n=2**14, r=8, p=1)
PASSPHRASE = "correct horse battery staple"
# Small packs so that a few MiB of test data spread over several of them.
TEST_PACK_SIZE = 2 * MiB


@pytest.fixture
def store(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "repo")


@pytest.fixture
async def repo(store: LocalFolderStore) -> Repository:
    return await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)


async def reopen(store, **options) -> Repository:
    """A fresh Repository on the same store, as a new process would open it."""
    return await Repository.open(store, PASSPHRASE, pack_size=TEST_PACK_SIZE, **options)


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the non-zero 64 KiB blocks of a file and their offsets.

    Equal for two files of equal size exactly when their bytes are equal, whatever their
    holes, and fast on huge sparse files (holes are skipped, not read).
    """
    block = 64 * 1024
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h.update(str(size).encode())
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            start = data_at - data_at % block
            f.seek(start)
            while start < hole_at:
                chunk = f.read(block)
                if not chunk:
                    break
                if chunk.count(0) != len(chunk):
                    h.update(start.to_bytes(8, "little"))
                    h.update(chunk)
                start += len(chunk)
            pos = max(hole_at, start)
    return h.hexdigest()


def describe(root: str | os.PathLike) -> dict[str, tuple]:
    """Everything a restore must reproduce, per relative path (bytes names, no ctime/atime)."""
    root_b = os.fsencode(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(full, root_b))
            st = os.lstat(full)
            common = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full), st.st_mtime_ns, st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", *common, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", *common, st.st_size, st.st_mtime_ns, content_digest(full))
    return out


def flip_byte(path: str | os.PathLike, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


class CountingStore(LocalFolderStore):
    """A real local store that counts what is put, and can be 'killed' after N pack puts."""

    def __init__(self, root, *, die_after_pack_puts: int | None = None):
        super().__init__(root)
        self.die_after = die_after_pack_puts
        self.dead = False
        self.pack_attempts = 0
        self.pack_puts = 0
        self.pack_bytes = 0
        self.puts: list[str] = []

    async def put(self, key, data):
        if self.dead:
            raise ConnectionError("backup process was killed")
        if key.startswith("data/"):
            if self.die_after is not None and self.pack_attempts >= self.die_after:
                self.dead = True
                raise ConnectionError("backup process was killed")
            self.pack_attempts += 1
        await super().put(key, data)
        self.puts.append(key)
        if key.startswith("data/"):
            self.pack_puts += 1
            self.pack_bytes += len(data)


async def full_with_tree_cache(repo: Repository, tmp_path: Path, src: Path):
    """An archiver with a tree cache, and its full backup of src, which the cache now
    describes: the next incremental starts from it."""
    cache = TreeCache(tmp_path / "tree-cache.sqlite")
    archiver = Archiver(repo, tree_cache=cache)
    full = await archiver.backup([str(src)], kind=FULL)
    cache.commit(full.snapshot_id, [])
    return archiver, full
