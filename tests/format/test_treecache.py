"""The tree cache (shared/format/treecache.py): an incremental of a quiet tree keeps each
unchanged folder's tree without reading the parent's trees or comparing files, and
whatever changed is still found and restored exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.format import FULL, INCREMENTAL, Archiver, Restorer, archiver as archiver_module
from shared.format.constants import DATA_PREFIX
from shared.format.repository import Repository
from shared.format.snapshot import Tree
from shared.format.treecache import TreeCache

from .conftest import describe, reopen


def make_tree(src: Path) -> None:
    for top in ("a", "b"):
        for sub in ("x", "y"):
            (src / top / sub).mkdir(parents=True)
            for i in range(3):
                (src / top / sub / f"f{i}.txt").write_text(f"{top}/{sub}/{i}")
    (src / "empty").mkdir()
    (src / "top.txt").write_text("top")
    os.symlink("a/x/f0.txt", src / "link")


class Counting:
    """Counts the trees a backup reads from the repository and the trees it encodes."""

    def __init__(self, monkeypatch) -> None:
        self.loaded: list[bytes] = []
        self.encoded = 0
        real_load, real_encode = Repository.load_tree, Tree.encode

        async def load_tree(repo, tree_id):
            self.loaded.append(tree_id)
            return await real_load(repo, tree_id)

        def encode(tree):
            self.encoded += 1
            return real_encode(tree)

        monkeypatch.setattr(Repository, "load_tree", load_tree)
        monkeypatch.setattr(Tree, "encode", encode)

    def reset(self) -> None:
        self.loaded.clear()
        self.encoded = 0


async def backup(repo, src: Path, cache: TreeCache | None, kind=INCREMENTAL, **options):
    result = await Archiver(repo, host="h", tree_cache=cache, **options).backup([str(src)], kind=kind)
    if cache is not None:
        # Every indexed pack: a superset of what the snapshot references (the agent lists
        # exactly those, clients/agent/packrefs.py).
        cache.commit(result.snapshot_id, sorted(repo.index.packs()))
    return result


async def restored_equals(repo, result, src: Path, out: Path) -> None:
    await Restorer(repo).restore(result.snapshot_id, out)
    assert describe(out / src.name) == describe(src)


@pytest.fixture
def cache(tmp_path: Path) -> TreeCache:
    return TreeCache(tmp_path / "state" / "trees.sqlite")


async def test_an_unchanged_incremental_reads_no_tree_and_no_file(repo, tmp_path, cache, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    full = await backup(repo, src, cache, kind=FULL)
    counting = Counting(monkeypatch)

    quiet = await backup(repo, src, cache)
    assert quiet.snapshot.kind == INCREMENTAL and quiet.snapshot.tree == full.snapshot.tree
    assert counting.loaded == [full.snapshot.tree]  # the parent's root only, to find the source
    assert counting.encoded == 1  # the snapshot's root only
    assert quiet.snapshot.stats.bytes_read == 0
    for field in ("files", "dirs", "symlinks", "bytes", "chunks", "hole_bytes"):
        assert getattr(quiet.snapshot.stats, field) == getattr(full.snapshot.stats, field), field
    await restored_equals(repo, quiet, src, tmp_path / "out")


async def test_changes_are_found_and_only_their_path_is_rebuilt(repo, tmp_path, cache, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    full = await backup(repo, src, cache, kind=FULL)
    counting = Counting(monkeypatch)

    (src / "a" / "y" / "f1.txt").write_text("changed in place")  # a/y's own entry changed
    (src / "b" / "x" / "new.txt").write_text("added")  # b/x gained an entry
    os.unlink(src / "b" / "y" / "f2.txt")
    changed = await backup(repo, src, cache)
    # root, src, a, a/y, b, b/x, b/y: new trees; a/x, empty: kept
    assert counting.encoded == 7
    # The parent's root, then the old trees of the folders whose files must be compared
    # (a/y, b/x, b/y) or whose subfolders changed (src, a, b) — never a/x's or empty's.
    assert len(counting.loaded) == 7
    assert changed.snapshot.stats.bytes_read == len("changed in place") + len("added")
    await restored_equals(repo, changed, src, tmp_path / "out1")

    counting.reset()
    again = await backup(repo, src, cache)  # the cache now describes `changed`
    assert again.snapshot.tree == changed.snapshot.tree and counting.encoded == 1
    assert changed.snapshot.tree != full.snapshot.tree


async def test_the_last_progress_report_totals_what_was_backed_up_not_the_parents_guess(repo, tmp_path, cache):
    src = tmp_path / "src"
    make_tree(src)
    await backup(repo, src, cache, kind=FULL)
    for i in range(5):
        (src / "b" / "x" / f"new{i}.txt").write_text("added" * i)
    os.unlink(src / "a" / "y" / "f2.txt")
    updates = []
    grown = await backup(repo, src, cache, progress=updates.append, progress_interval=0.01)
    # (the incremental starts from the parent's 13 files, as its first reports show)
    last = updates[-1]
    assert last.totals_final and last.files_done == last.files_total == grown.stats.files == 12 + 1 + 5 - 1
    assert last.bytes_done == last.bytes_total == grown.stats.bytes


async def test_a_folder_that_warned_is_looked_at_again(repo, tmp_path, cache, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    os.mkfifo(src / "b" / "x" / "pipe")
    full = await backup(repo, src, cache, kind=FULL)
    assert [w for w in full.warnings if "pipe" in w and "special file" in w]
    counting = Counting(monkeypatch)

    quiet = await backup(repo, src, cache)
    assert [w for w in quiet.warnings if "pipe" in w and "special file" in w]
    assert quiet.snapshot.tree == full.snapshot.tree
    assert quiet.snapshot.stats.bytes_read == 0  # its files compared, not read
    # b/x and the folders above it (b, src) were not recorded: their old trees were read
    # to compare (after the parent's root); a and its subfolders were kept unseen
    assert len(counting.loaded) == 4


async def test_a_cache_of_other_settings_or_of_another_snapshot_is_not_used(
        repo, tmp_path, cache, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    await backup(repo, src, cache, kind=FULL)
    counting = Counting(monkeypatch)
    every_tree = 1 + 8  # the parent's root, then src, a, a/x, a/y, b, b/x, b/y, empty

    # Other in-place patterns could cut the same files differently: not used.
    other = await backup(repo, src, cache, in_place=["*.txt"], in_place_min_size=1)
    assert len(counting.loaded) == every_tree
    await restored_equals(repo, other, src, tmp_path / "out1")

    # A backup the cache never heard of becomes the parent: the cache describes its
    # grandparent, whose packs retention may already have deleted. Not used either.
    (src / "b" / "y" / "f0.txt").write_text("changed while nobody cached")
    await backup(repo, src, None, in_place=["*.txt"], in_place_min_size=1)
    counting.reset()
    after = await backup(repo, src, cache, in_place=["*.txt"], in_place_min_size=1)
    assert len(counting.loaded) == every_tree
    await restored_equals(repo, after, src, tmp_path / "out2")


async def test_a_damaged_cache_is_replaced_and_a_failed_backup_keeps_the_current_one(repo, tmp_path, cache):
    src = tmp_path / "src"
    make_tree(src)
    await backup(repo, src, cache, kind=FULL)
    cache.path.write_bytes(b"not a database at all" * 100)
    (src / "a" / "x" / "f1.txt").write_text("changed")
    result = await backup(repo, src, cache)
    await restored_equals(repo, result, src, tmp_path / "out")

    current = cache.path.read_bytes()
    assert cache.begin(parent=result.snapshot_id, settings=Archiver(repo).tree_settings())
    cache.close()  # what a failed backup does
    assert cache.path.read_bytes() == current
    assert not cache.path.with_name(cache.path.name + ".new").exists()


async def test_a_file_that_failed_once_is_in_the_next_backup(repo, tmp_path, cache, monkeypatch):
    """The folder that warned is not recorded, and neither are the folders above it: its
    parent's remembered subtree would otherwise bring back the tree without the file."""
    src = tmp_path / "src"
    make_tree(src)
    await backup(repo, src, cache, kind=FULL)
    (src / "a" / "x" / "late.txt").write_text("locked by another program at first")
    real_open = archiver_module._open_for_reading

    def locked(path, follow):
        if path.endswith("late.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, follow)

    monkeypatch.setattr(archiver_module, "_open_for_reading", locked)
    failed = await backup(repo, src, cache)
    assert [w for w in failed.warnings if "late.txt" in w]
    monkeypatch.setattr(archiver_module, "_open_for_reading", real_open)

    for run in range(2):  # the file is found, and stays found once the cache records it
        later = await backup(repo, src, cache)
        assert later.warnings == []
        await restored_equals(repo, later, src, tmp_path / f"out{run}")


async def test_a_lost_pack_sets_the_cache_aside_and_what_it_held_is_stored_again(
        repo, store, tmp_path, cache):
    src = tmp_path / "src"
    make_tree(src)
    (src / "b" / "x" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # its own packs
    await backup(repo, src, cache, kind=FULL)
    big = {loc.pack_id for _, loc in repo.index.items() if loc.raw_length > 512 * 1024}
    lost = [k async for k in store.list(DATA_PREFIX) if k.rsplit("/", 1)[-1] in big][0]
    await store.delete(lost)  # a disk error, a careless hand

    reopened = await reopen(store)
    after = await backup(reopened, src, cache)
    assert after.snapshot.stats.bytes_read >= 3 * 1024 * 1024  # read again, not kept unseen
    await restored_equals(reopened, after, src, tmp_path / "out")


async def test_folders_named_in_no_encoding_are_cached_like_any(repo, tmp_path, cache, monkeypatch):
    src = tmp_path / "src"
    make_tree(src)
    odd = os.path.join(os.fsencode(src), b"caf\xe9")  # Latin-1, not UTF-8
    os.mkdir(odd)
    with open(os.path.join(odd, b"menu.txt"), "wb") as f:
        f.write(b"soup")
    full = await backup(repo, src, cache, kind=FULL)
    counting = Counting(monkeypatch)
    quiet = await backup(repo, src, cache)
    assert quiet.snapshot.tree == full.snapshot.tree and counting.encoded == 1
    await restored_equals(repo, quiet, src, tmp_path / "out")


async def test_a_cache_damaged_inside_is_set_aside_midway(repo, tmp_path, cache):
    src = tmp_path / "src"
    for i in range(300):  # enough folders for the cache to span many pages
        (src / f"d{i:03}").mkdir(parents=True)
        (src / f"d{i:03}" / "f.txt").write_text(str(i))
    await backup(repo, src, cache, kind=FULL)
    data = bytearray(cache.path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    for at in range(4 * page, len(data), page):  # keep the schema and meta pages
        data[at:at + page] = os.urandom(page)
    cache.path.write_bytes(bytes(data))
    (src / "d150" / "f.txt").write_text("changed")
    result = await backup(repo, src, cache)
    await restored_equals(repo, result, src, tmp_path / "out")
    again = await backup(repo, src, cache)  # the replaced cache is whole again
    assert again.snapshot.tree == result.snapshot.tree
