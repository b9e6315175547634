"""The order in which a backup's walk gets to things: what it starts early, and that the
snapshot does not depend on it."""

from __future__ import annotations

import os
import threading

from shared.format import FULL, INCREMENTAL, Archiver, Restorer
from shared.format import archiver as archiver_module
from shared.format.constants import MiB
from shared.format.treecache import TreeCache

from .conftest import content_digest


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
    cache = TreeCache(tmp_path / "tree-cache.sqlite")
    archiver = Archiver(repo, tree_cache=cache)
    full = await archiver.backup([str(src)], kind=FULL)
    cache.commit(full.snapshot_id, [])
    (src / "a-shares" / "slow" / "note.txt").write_text("a longer note")
    os.truncate(src / "z-vm" / "disk.bin", 9 * MiB - 4096)  # changed: read again
    waits = _slow_folder_until(monkeypatch, "slow", "disk.bin")
    result = await archiver.backup([str(src)], kind=INCREMENTAL)
    assert waits == [True]
    assert result.snapshot.parent == full.snapshot_id
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a-shares" / "slow" / "note.txt").read_text() == "a longer note"
    assert content_digest(tmp_path / "out" / "src" / "z-vm" / "disk.bin") == content_digest(src / "z-vm" / "disk.bin")
