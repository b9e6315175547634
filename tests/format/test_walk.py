"""The order in which a backup's walk gets to things: what it starts early, and that the
snapshot does not depend on it."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import pytest

from shared.format import FULL, INCREMENTAL, Archiver, Repository, Restorer
from shared.format import archiver as archiver_module
from shared.format.archiver import Source, warm_up
from shared.format.constants import MiB
from shared.format.snapshot import IMAGE
from shared.format.store import ForwardingStore

from .conftest import FAST_KDF, content_digest, full_with_tree_cache


def _slow_folder_until(monkeypatch, slow_name: str, big_name: str) -> list[bool]:
    """Listing the folder named slow_name waits until the file named big_name is opened
    for reading (at most 10 s). Returns where each such wait ends: True if the file was
    opened meanwhile."""
    opened = threading.Event()
    waits: list[bool] = []
    real_scan, real_open = archiver_module._scan, archiver_module._open_for_reading

    def scan(path):
        if os.path.basename(path) == slow_name:
            waits.append(opened.wait(10))
        return real_scan(path)

    def open_for_reading(path, follow):
        if os.path.basename(path) == big_name:
            opened.set()
        return real_open(path, follow)

    monkeypatch.setattr(archiver_module, "_scan", scan)
    monkeypatch.setattr(archiver_module, "_open_for_reading", open_for_reading)
    return waits


def _tree(src):
    (src / "a-shares" / "slow").mkdir(parents=True)
    (src / "a-shares" / "slow" / "note.txt").write_text("a note")
    for i in range(20):
        (src / "a-shares" / f"doc-{i:02}.txt").write_text(f"document {i}\n" * 50)
    (src / "z-vm").mkdir()
    (src / "z-vm" / "disk.bin").write_bytes(os.urandom(9 * MiB))


async def test_a_big_file_in_a_later_folder_is_read_while_an_earlier_folder_is_still_listed(
        repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _tree(src)
    waits = _slow_folder_until(monkeypatch, "slow", "disk.bin")
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    # The walk of a-shares stood still at "slow" until z-vm's disk was being read.
    assert waits == [True]
    assert result.warnings == []
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    for rel in ("z-vm/disk.bin", "a-shares/slow/note.txt", "a-shares/doc-07.txt"):
        assert content_digest(tmp_path / "out" / "src" / rel) == content_digest(src / rel)


async def test_the_tree_does_not_depend_on_what_the_walk_started_first(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _tree(src)
    first = await Archiver(repo).backup([str(src)], kind=FULL)
    _slow_folder_until(monkeypatch, "slow", "disk.bin")
    again = await Archiver(repo).backup([str(src)], kind=FULL)
    assert again.snapshot.tree == first.snapshot.tree


async def test_an_incremental_walks_ahead_with_a_tree_cache(repo, tmp_path, monkeypatch):
    """With the tree cache, an unchanged folder's subfolders are walked aside too, and
    the one changed file deep in a-shares is found."""
    src = tmp_path / "src"
    _tree(src)
    archiver, full = await full_with_tree_cache(repo, tmp_path, src)
    (src / "a-shares" / "slow" / "note.txt").write_text("a longer note")
    os.truncate(src / "z-vm" / "disk.bin", 9 * MiB - 4096)  # changed: read again
    waits = _slow_folder_until(monkeypatch, "slow", "disk.bin")
    result = await archiver.backup([str(src)], kind=INCREMENTAL)
    assert waits == [True]
    assert result.snapshot.parent == full.snapshot_id
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a-shares" / "slow" / "note.txt").read_text() == "a longer note"
    assert content_digest(tmp_path / "out" / "src" / "z-vm" / "disk.bin") == content_digest(src / "z-vm" / "disk.bin")


# --- stopping: a cancel or a failure stops the walks, and nothing of the backup runs on ---


def _backup_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _big_tree(src, image_mib: int) -> None:
    for i in range(30):
        (src / "a-shares" / f"user-{i:02}").mkdir(parents=True)
        (src / "a-shares" / f"user-{i:02}" / "notes.txt").write_text(f"notes {i}")
    (src / "z-vm").mkdir()
    with open(src / "z-vm" / "disk.img", "wb") as f:  # fixed chunks, read 1 MiB at a time
        for _ in range(image_mib):
            f.write(os.urandom(MiB))


async def test_a_cancelled_backup_stops_its_walks_and_reads_no_further(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _big_tree(src, 64)
    real_scan = archiver_module._scan
    monkeypatch.setattr(archiver_module, "_scan", lambda path: time.sleep(0.05) or real_scan(path))
    reading = threading.Event()
    read_after_cancel = []
    real_count = archiver_module._Run._count_read

    def count_read(self, n):
        reading.set()
        if cancelled.is_set():
            read_after_cancel.append(n)
        real_count(self, n)

    cancelled = threading.Event()
    monkeypatch.setattr(archiver_module._Run, "_count_read", count_read)
    backup = asyncio.ensure_future(Archiver(repo, workers=2).backup([str(src)], kind=FULL))
    assert await asyncio.to_thread(reading.wait, 30)  # the disk image is being read ...
    cancelled.set()
    backup.cancel()  # ... while the walk is still in the slow shares
    with pytest.raises(asyncio.CancelledError):
        await backup
    assert sum(read_after_cancel) <= 4 * MiB  # a block or so per reading thread, not the 64 MiB
    assert _backup_tasks() == []


class _SlowPacks(ForwardingStore):
    async def put(self, key, data, **options):
        if key.startswith("data/"):
            await asyncio.sleep(0.3)
        await self.inner.put(key, data, **options)


@pytest.mark.timeout(60)
async def test_a_second_cancel_while_the_first_is_handled_does_not_hang(store, tmp_path):
    """The threads reading files wait for upload slots; the first cancel's clean-up is cut
    short by the second, and the pools are shut down with threads still in them: they
    must end by themselves (the saver stopped), not wait for the loop."""
    src = tmp_path / "src"
    _big_tree(src, 48)
    repo = await Repository.init(_SlowPacks(store), "pw", kdf=FAST_KDF, pack_size=2 * MiB)
    repo.uploads_in_flight = 1
    backup = asyncio.ensure_future(Archiver(repo, workers=2).backup([str(src)], kind=FULL))
    await asyncio.sleep(0.5)
    backup.cancel()
    await asyncio.sleep(0.2)
    backup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await backup


async def test_a_folder_that_fails_fails_the_backup_and_leaves_no_task_behind(repo, tmp_path):
    """Walks aside and looks ahead are under way when a folder's old tree cannot be read:
    the backup fails with that error, and none of them goes on afterwards or fails
    unheard."""
    src = tmp_path / "src"
    for i in range(20):
        for j in range(6):
            (src / f"d{i:02}" / f"s{j}").mkdir(parents=True)
            (src / f"d{i:02}" / f"s{j}" / "f.txt").write_text(f"{i} {j}")
    full = await Archiver(repo).backup([str(src)], kind=FULL)
    for path in src.rglob("f.txt"):
        path.write_text(path.read_text() + " changed")  # every folder compared with its old tree
    unexpected = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: unexpected.append(context))
    real_load = repo.load_tree
    top = (await real_load(full.snapshot.tree)).nodes[0].subtree
    folders = (await real_load(top)).nodes
    slow_but_fine = {n.subtree for n in folders[:8]}
    failing_at_once = {n.subtree for n in folders[8:]}
    loads_after_failure = []

    async def load_tree(tree_id):
        if failed:
            loads_after_failure.append(tree_id)
        if tree_id in (full.snapshot.tree, top):
            return await real_load(tree_id)
        if tree_id in slow_but_fine:
            await asyncio.sleep(0.2)
            return await real_load(tree_id)
        if tree_id not in failing_at_once:
            await asyncio.sleep(0.05)
        raise ConnectionError("the store went away")  # not a FormatError: the backup fails

    failed = False
    repo.load_tree = load_tree
    with pytest.raises(ConnectionError):
        await Archiver(repo).backup([str(src)], kind=INCREMENTAL)
    failed = True
    assert _backup_tasks() == []
    await asyncio.sleep(0.7)  # what a task left running would do by now
    assert loads_after_failure == []
    gc.collect()
    await asyncio.sleep(0)
    assert unexpected == []  # no "exception was never retrieved"


async def test_what_the_walk_looks_at_ahead_stays_bounded(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    for i in range(6):
        for j in range(6):
            for k in range(4):
                (src / f"d{i}" / f"s{j}" / f"t{k}").mkdir(parents=True)
                (src / f"d{i}" / f"s{j}" / f"t{k}" / "f.txt").write_text(f"{i}{j}{k}")
    outstanding = []
    real_look = archiver_module._Run._look

    async def look(self, *args):
        outstanding.append(self.looked_ahead)
        await asyncio.sleep(0.002)  # a store with some latency: looks pile up if they can
        return await real_look(self, *args)

    monkeypatch.setattr(archiver_module._Run, "_look", look)
    await Archiver(repo).backup([str(src)], kind=FULL)
    assert len(outstanding) == 1 + 6 + 36 + 144
    assert max(outstanding) <= archiver_module._LookAhead.MOST
    assert max(outstanding) > archiver_module._LookAhead.AHEAD  # several folders look ahead at once


@pytest.mark.parametrize("kind", ["folder", "image"])
async def test_after_a_stop_the_loop_runs_while_the_reading_threads_end(repo, tmp_path, monkeypatch, kind):
    """A thread still reading when the backup is cancelled is waited for by the loop, not
    by blocking it: the agent's heartbeats and a second Stop go on meanwhile."""
    src = tmp_path / "src"
    (src / "z-vm").mkdir(parents=True)
    (src / "z-vm" / "disk.img").write_bytes(os.urandom(16 * MiB))
    source = str(src) if kind == "folder" else Source(str(src / "z-vm" / "disk.img"), IMAGE)
    loop = asyncio.get_running_loop()
    reading, cancelled, loop_ran = threading.Event(), threading.Event(), []

    def count_read(self, n):  # in the reading thread, after each block
        reading.set()
        if cancelled.wait(10) and not loop_ran:
            answered = threading.Event()
            loop.call_soon_threadsafe(answered.set)
            loop_ran.append(answered.wait(5))

    monkeypatch.setattr(archiver_module._Run, "_count_read", count_read)
    backup = asyncio.ensure_future(Archiver(repo, workers=2).backup([source], kind=FULL))
    assert await asyncio.to_thread(reading.wait, 30)
    backup.cancel()
    await asyncio.sleep(0)
    cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await backup
    assert loop_ran == [True]
    assert _backup_tasks() == []


async def test_a_failure_in_a_folder_walked_aside_stops_the_backup_at_once(repo, tmp_path, monkeypatch):
    """b/ fails while a/disk.img is being read: the backup fails with b's error, its own
    cause kept, without reading the rest of a/disk.img first (the folder above would
    only get to b later)."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    with open(src / "a" / "disk.img", "wb") as f:  # fixed chunks, read 1 MiB at a time
        for _ in range(64):
            f.write(os.urandom(MiB))
    reading, failed = threading.Event(), threading.Event()
    read_after_failure = []
    real_count, real_scan = archiver_module._Run._count_read, archiver_module._scan

    def count_read(self, n):
        reading.set()
        if failed.is_set():
            if not read_after_failure:
                self._stop.wait(10)  # the reading pauses until the backup is stopped, if it is
            read_after_failure.append(n)
        real_count(self, n)

    def scan(path):
        if os.path.basename(path) == "b":
            reading.wait(10)
            failed.set()
            try:
                raise KeyError("quota")
            except KeyError as e:
                raise ValueError("the tree cache's disk is full") from e  # not the listing's OSError
        return real_scan(path)

    monkeypatch.setattr(archiver_module._Run, "_count_read", count_read)
    monkeypatch.setattr(archiver_module, "_scan", scan)
    with pytest.raises(ValueError, match="disk is full") as raised:
        await Archiver(repo, workers=2).backup([str(src)], kind=FULL)
    assert isinstance(raised.value.__cause__, KeyError)
    assert sum(read_after_failure) <= 4 * MiB  # of 64: what the reading threads had in hand
    assert _backup_tasks() == []


async def test_a_cancel_while_the_saver_waits_for_its_uploads_is_raised(store):
    """BlobSaver.abort waits for the uploads under way; a cancel then stops the wait and
    is what the caller gets, not swallowed."""
    from shared.format.pack import BlobType

    release = asyncio.Event()

    class HeldPacks(ForwardingStore):
        async def put(self, key, data, **options):
            if key.startswith("data/"):
                await release.wait()
            await self.inner.put(key, data, **options)

    repo = await Repository.init(HeldPacks(store), "pw", kdf=FAST_KDF, pack_size=1 * MiB)
    saver = repo.saver()
    await saver.save_async(BlobType.DATA, os.urandom(2 * MiB))  # a full pack: its upload waits
    waiting = asyncio.ensure_future(saver.abort())
    await asyncio.sleep(0.2)
    assert not waiting.done()  # it does wait for the upload
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()


def test_the_warm_up_looks_at_every_file_not_excluded_and_stops_when_told(tmp_path):
    root = tmp_path / "src"
    for folder in ("a", "a/b", "c", "skip"):
        (root / folder).mkdir(parents=True)
    for name in ("a/1.txt", "a/b/2.txt", "a/b/3.tmp", "c/4.txt", "skip/5.txt", "6.txt"):
        (root / name).write_text(name)
    os.symlink("6.txt", root / "link")  # not a file: not counted
    assert warm_up([str(root)], [], threading.Event()) == 6
    assert warm_up([str(root)], ["*.tmp", "skip/"], threading.Event()) == 4
    assert warm_up([str(root), str(tmp_path / "gone")], [], threading.Event()) == 6  # a missing root is no error
    stopped = threading.Event()
    stopped.set()
    assert warm_up([str(root)], [], stopped) == 0
