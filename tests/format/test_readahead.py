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


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_fadvise
async def test_the_files_held_open_ahead_are_bounded_whatever_the_workers(repo, tmp_path, monkeypatch):
    """Each worker opens its batch's files before reading them: with many workers that
    must not approach the process's limit of descriptors (the files past it were
    skipped with a warning). At most _OPEN_AHEAD are held; the rest are opened when read."""
    from shared.format import FULL, Archiver

    src = tmp_path / "src"
    for d in range(24):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(64):
            (src / f"d{d:02}" / f"f{i:02}.txt").write_text(f"{d} {i}\n")
    baseline = _open_descriptors()
    most = [0]
    real = readahead.will_need

    def slow_will_need(fd, *args):  # a cold disk: the batches overlap
        most[0] = max(most[0], _open_descriptors())
        time.sleep(0.002)
        real(fd, *args)

    monkeypatch.setattr(readahead, "will_need", slow_will_need)
    result = await Archiver(repo, workers=16).backup([str(src)], kind=FULL)
    assert result.warnings == [] and result.stats.files == 24 * 64
    # Two batches' worth (128) and what the backup holds besides (packs, the index): about
    # 130 measured; without the bound, about 900 here (16 batches of 64 at once).
    assert most[0] - baseline <= 200


async def test_a_file_that_cannot_be_opened_ahead_for_lack_of_descriptors_is_read_all_the_same(
        repo, tmp_path, monkeypatch):
    import errno

    from shared.format import FULL, Archiver
    from shared.format import archiver as archiver_module

    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}.txt").write_text(f"file {i}\n")
    real_open = archiver_module._open_for_reading
    refused: list[str] = []

    def open_for_reading(path, follow):
        if path not in refused:  # the first open of each file: the one ahead of reading
            refused.append(path)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, follow)

    monkeypatch.setattr(archiver_module, "_open_for_reading", open_for_reading)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    assert result.warnings == [] and result.stats.files == 10 and len(refused) == 10
