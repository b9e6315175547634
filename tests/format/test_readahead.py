"""The backup tells the kernel which files it is about to read (readahead.py)."""

from __future__ import annotations

import os
import time

import pytest

from shared.format import INCREMENTAL
from shared.format import readahead
from shared.format.constants import KiB, MiB

from .conftest import full_with_tree_cache
from .pagecache import cached as _cached, drop_from_cache as _drop_from_cache, needs_fadvise

@needs_fadvise
def test_a_file_asked_for_is_read_into_memory_before_anyone_reads_it(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(2 * MiB))
    _drop_from_cache(path)
    if _cached(path):
        pytest.fail(f"could not drop {path} from the page cache: this test needs a disk-backed folder")
    fd = os.open(path, os.O_RDONLY)
    try:
        readahead.will_need(fd)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 10
    while not _cached(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _cached(path)


def _tree(src) -> None:
    (src / "docs").mkdir(parents=True)
    for i in range(10):
        (src / "docs" / f"small-{i}.txt").write_text(f"small file {i}\n" * 100)
    (src / "docs" / "medium.bin").write_bytes(os.urandom(600 * KiB))  # its own task: asked for whole
    (src / "vm").mkdir()
    (src / "vm" / "big.bin").write_bytes(os.urandom(9 * MiB))  # read end to end: left to the kernel


@needs_fadvise
async def test_the_backup_asks_for_the_files_it_reads_and_only_those(repo, tmp_path, monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(readahead, "will_need", lambda fd: asked.append(os.readlink(f"/proc/self/fd/{fd}")))
    src = tmp_path / "src"
    _tree(src)
    archiver, full = await full_with_tree_cache(repo, tmp_path, src)
    rel = sorted(os.path.relpath(p, src) for p in asked)
    assert rel == sorted([f"docs/small-{i}.txt" for i in range(10)] + ["docs/medium.bin"])

    asked.clear()
    (src / "docs" / "small-3.txt").write_text("changed\n")
    (src / "docs" / "new.txt").write_text("new\n")
    result = await archiver.backup([str(src)], kind=INCREMENTAL)
    assert result.snapshot.parent == full.snapshot_id
    # the unchanged files are taken from the parent unread, so nobody asks for them
    assert sorted(os.path.relpath(p, src) for p in asked) == ["docs/new.txt", "docs/small-3.txt"]
