"""An incremental's files rewritten in place, cut, hashed and compressed in a helper process
(shared/format/inplace_helper.py): the same snapshot as in the backup's own process, and
what happens when the helper fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from shared.format import FULL, INCREMENTAL, Archiver, Checker, LocalFolderStore, Repository, Restorer
from shared.format import inplace_helper
from shared.format.chunker import FixedChunking, ImageChunker
from shared.format.constants import KiB, MiB
from shared.format.treecache import TreeCache

from .conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE, content_digest
from .test_in_place import _database, _node, _rewrite_blocks

pytestmark = pytest.mark.skipif(not inplace_helper.AVAILABLE, reason="no SCM_RIGHTS here (Windows)")


class Started:
    """Every helper process the backups start, to look at them afterwards (a wrapper of
    the real class: the processes are real)."""

    def __init__(self, monkeypatch):
        self.helpers: list = []
        original = inplace_helper._Helper.__init__

        def started(helper, *args):
            original(helper, *args)
            self.helpers.append(helper)

        monkeypatch.setattr(inplace_helper._Helper, "__init__", started)


def _server(root: Path) -> Path:
    src = root / "server"
    (src / "db").mkdir(parents=True)
    (src / "vm").mkdir()
    (src / "docs").mkdir()
    _database(src / "db" / "erp.db", 24 * MiB, seed=3)
    with open(src / "vm" / "disk.img", "wb") as f:  # data, a hole, data
        f.write(os.urandom(4 * MiB))
        f.seek(12 * MiB)
        f.write(os.urandom(4 * MiB))
    (src / "docs" / "a.txt").write_text("the walk has something else to do\n" * 100)
    return src


def _change(src: Path) -> None:
    _rewrite_blocks(src / "db" / "erp.db", [0, 3 * MiB + 20 * KiB, 9 * MiB, 23 * MiB + 12 * KiB])
    _rewrite_blocks(src / "vm" / "disk.img", [2 * MiB, 13 * MiB])
    with open(src / "vm" / "disk.img", "r+b") as f:  # a block of the hole gets data
        f.seek(8 * MiB)
        f.write(os.urandom(64 * KiB))


async def _incremental(store_root: Path, cache: Path, src: Path, **options):
    repo = await Repository.open(LocalFolderStore(store_root), PASSPHRASE, pack_size=TEST_PACK_SIZE)
    tree_cache = TreeCache(cache)
    result = await Archiver(repo, host="h", tree_cache=tree_cache, **options).backup([str(src)])
    tree_cache.commit(result.snapshot_id, sorted(repo.index.packs()))
    return repo, result


async def _full_then_copies(tmp_path: Path, src: Path, copies: int) -> list[tuple[Path, Path]]:
    """A full backup with its tree cache, then `copies` copies of repository and cache, so
    that incrementals can start from the same state (the same keys, the same parent)."""
    store = LocalFolderStore(tmp_path / "repo")
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    cache = TreeCache(tmp_path / "trees.sqlite")
    full = await Archiver(repo, host="h", tree_cache=cache).backup([str(src)], kind=FULL)
    cache.commit(full.snapshot_id, sorted(repo.index.packs()))
    repo.close()
    states = []
    for i in range(copies):
        shutil.copytree(tmp_path / "repo", tmp_path / f"repo{i}")
        shutil.copy(tmp_path / "trees.sqlite", tmp_path / f"trees{i}.sqlite")
        states.append((tmp_path / f"repo{i}", tmp_path / f"trees{i}.sqlite"))
    return states


async def test_a_helper_finds_the_changes_and_the_snapshot_is_the_one_made_in_process(tmp_path, monkeypatch):
    src = _server(tmp_path / "data")
    states = await _full_then_copies(tmp_path, src, 2)
    _change(src)
    started = Started(monkeypatch)

    here_repo, here = await _incremental(*states[0], src, inplace_helpers=0)
    assert started.helpers == []
    repo, helped = await _incremental(*states[1], src, inplace_helpers=1)
    assert len(started.helpers) == 1  # one helper, for both files in turn
    assert all(h.process.returncode is not None for h in started.helpers)  # none left running

    assert helped.snapshot.kind == INCREMENTAL
    for path in (("server", "db", "erp.db"), ("server", "vm", "disk.img")):
        content = (await _node(repo, helped, *path)).content
        assert content == (await _node(here_repo, here, *path)).content
        # The same blobs, compressed alike (the database's with its dictionary): the same
        # sealed lengths. (The snapshots' own trees may differ by a folder's atime.)
        ids = [ref.id for ref in content if ref.id is not None]
        assert [repo.index.lookup(i).length for i in ids] == [here_repo.index.lookup(i).length for i in ids]
    assert (helped.stats.new_chunks, helped.stats.new_bytes) == (here.stats.new_chunks, here.stats.new_bytes)
    assert helped.stats.new_chunks <= 4 + 3 + 1 + 2  # the rewritten blocks' chunks, the doc, the trees
    assert helped.stats.bytes_read == here.stats.bytes_read  # the helper's reads are counted

    await Restorer(repo).restore(helped.snapshot_id, tmp_path / "out")
    for name in ("db/erp.db", "vm/disk.img", "docs/a.txt"):
        assert content_digest(tmp_path / "out" / "server" / name) == content_digest(src / name)
    check = await Checker(repo).check(read_data=True)
    assert check.ok, [str(p) for p in check.problems]


async def _made_in_process(tmp_path: Path):
    """The data after a day's changes, a state to back it up from again, and the
    incremental made without a helper (what a helper's must equal)."""
    src = _server(tmp_path / "data")
    states = await _full_then_copies(tmp_path, src, 2)
    _change(src)
    here_repo, here = await _incremental(*states[0], src, inplace_helpers=0)
    return src, states[1], here_repo, here


async def test_a_helper_killed_half_way_leaves_the_rest_of_the_file_to_the_backup(tmp_path, monkeypatch, caplog):
    src, state, here_repo, here = await _made_in_process(tmp_path)
    started = Started(monkeypatch)
    frames = inplace_helper._Helper.frames

    def killed_after_the_first_frame(helper, chunk):
        for n, frame in enumerate(frames(helper, chunk)):
            yield frame
            if n == 0:
                helper.process.kill()
                helper.process.wait()

    monkeypatch.setattr(inplace_helper._Helper, "frames", killed_after_the_first_frame)
    repo, helped = await _incremental(*state, src, inplace_helpers=1)
    assert len(started.helpers) == 1  # killed during the first file, and not started again
    assert "in-place helper lost" in caplog.text
    for path in (("server", "db", "erp.db"), ("server", "vm", "disk.img")):
        assert (await _node(repo, helped, *path)).content == (await _node(here_repo, here, *path)).content
    assert helped.warnings == []
    await Restorer(repo).restore(helped.snapshot_id, tmp_path / "out")
    assert content_digest(tmp_path / "out" / "server" / "db" / "erp.db") == content_digest(src / "db" / "erp.db")


async def test_the_helpers_read_error_is_the_files_read_error(tmp_path):
    path = tmp_path / "erp.db"
    _database(path, 2 * MiB, seed=4)
    helpers = inplace_helper.InPlaceHelpers(os.urandom(32), limit=1)
    chunker = ImageChunker(FixedChunking())
    try:
        fd = os.open(path, os.O_WRONLY)  # the helper gets it and cannot read it
        with open(fd, "wb", buffering=0) as f, pytest.raises(OSError) as failed:
            list(helpers.pieces(f, 2 * MiB, chunker, frozenset({b"x" * 32}), None, lambda blobs: None))
        assert failed.value.errno is not None and failed.value.errno > 0
        # The helper said so and lives on; a file it can read goes through it.
        with open(path, "rb", buffering=0) as f:
            saved = []
            pieces = list(helpers.pieces(f, 2 * MiB, chunker, frozenset({b"x" * 32}), None, saved.extend))
        assert helpers.started == 1 and helpers.usable
        assert [p.offset for p in pieces] == list(range(0, 2 * MiB, 32 * KiB))
        assert {p.id for p in pieces} == {blob_id for blob_id, _, _ in saved}  # every chunk new here
        assert all(length == 32 * KiB for _, _, length in saved)
    finally:
        helpers.close()


async def test_a_full_backup_starts_no_helper(repo, tmp_path, monkeypatch):
    src = _server(tmp_path / "data")
    started = Started(monkeypatch)
    await Archiver(repo, tree_cache=TreeCache(tmp_path / "trees.sqlite")).backup([str(src)], kind=FULL)
    assert started.helpers == []


async def test_a_helper_that_errs_is_stopped_before_the_backup_reads_the_file_itself(tmp_path, monkeypatch):
    # The helper reads the same open file: it must be gone before the backup reads on
    # (and both read without moving the file's position, chunker._read_into).
    src, state, here_repo, here = await _made_in_process(tmp_path)
    started = Started(monkeypatch)
    frames = inplace_helper._Helper.frames
    alive_at_fallback = []

    def garbled_after_the_first_frame(helper, chunk):
        for n, frame in enumerate(frames(helper, chunk)):
            if n == 1:
                raise inplace_helper.HelperLost("a garbled frame")  # the helper itself runs on
            yield frame

    chunker_pieces = ImageChunker.pieces

    def pieces(chunker, f, size, on_read=None, start=0):
        if start:
            alive_at_fallback.extend(h.process.poll() is None for h in started.helpers)
        return chunker_pieces(chunker, f, size, on_read, start)

    monkeypatch.setattr(inplace_helper._Helper, "frames", garbled_after_the_first_frame)
    monkeypatch.setattr(ImageChunker, "pieces", pieces)
    repo, helped = await _incremental(*state, src, inplace_helpers=1)
    assert alive_at_fallback == [False]
    for path in (("server", "db", "erp.db"), ("server", "vm", "disk.img")):
        assert (await _node(repo, helped, *path)).content == (await _node(here_repo, here, *path)).content


async def test_a_backup_cancelled_while_a_helper_works_ends_and_leaves_no_helper(tmp_path, monkeypatch):
    src = _server(tmp_path / "data")
    _database(src / "db" / "second.db", 24 * MiB, seed=5)  # two files want the one helper
    states = await _full_then_copies(tmp_path, src, 1)
    _change(src)
    _rewrite_blocks(src / "db" / "second.db", [MiB])
    started = Started(monkeypatch)
    frames = inplace_helper._Helper.frames
    first_frame = threading.Event()

    def slow(helper, chunk):
        for frame in frames(helper, chunk):
            first_frame.set()
            yield frame
            time.sleep(0.1)

    monkeypatch.setattr(inplace_helper._Helper, "frames", slow)
    backup = asyncio.ensure_future(_incremental(*states[0], src, inplace_helpers=1, workers=2))
    while not first_frame.is_set():
        await asyncio.sleep(0.01)
    backup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(backup, 30)
    assert len(started.helpers) == 1
    assert all(h.process.returncode is not None for h in started.helpers)


async def test_a_frame_with_a_bad_record_is_read_again_whole_from_its_start(tmp_path, monkeypatch, caplog):
    # Its good records before the bad one were not handed on: the backup starts where
    # the last whole frame ended, not after them.
    src, state, here_repo, here = await _made_in_process(tmp_path)
    frames = inplace_helper._Helper.frames

    def a_bad_last_record_in_the_second_frame(helper, chunk):
        for n, (read, records) in enumerate(frames(helper, chunk)):
            if n == 1:
                offset, length, _, _, _ = records[-1]
                records = [*records[:-1], (offset, length, inplace_helper._KNOWN, b"\xff" * 32, b"")]
            yield read, records

    monkeypatch.setattr(inplace_helper._Helper, "frames", a_bad_last_record_in_the_second_frame)
    repo, helped = await _incremental(*state, src, inplace_helpers=1)
    assert "in-place helper lost" in caplog.text
    for path in (("server", "db", "erp.db"), ("server", "vm", "disk.img")):
        assert (await _node(repo, helped, *path)).content == (await _node(here_repo, here, *path)).content
    assert helped.warnings == []
