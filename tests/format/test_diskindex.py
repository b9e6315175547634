"""The index on the agent's disk (shared/format/diskindex.py): the same answers as the
in-memory index, started over when the repository lost what it relies on, built again when
damaged, and never wrong for a process whose view of the packs is out of date."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from shared.format import FULL, Archiver, FormatError, Repository
from shared.format.constants import DATA_PREFIX
from shared.format.diskindex import DiskIndex
from shared.format.index import IndexedPack, KeptPack
from shared.format.indexcache import IndexCache
from shared.format.pack import BlobType, PackEntry

from .conftest import PASSPHRASE, TEST_PACK_SIZE


def entries(n: int, seed: int) -> list[PackEntry]:
    rng = random.Random(seed)
    return [PackEntry(BlobType(i % 2), rng.randbytes(32), i * 4096, 4000 + i, 8000 + i)
            for i in range(n)]


def as_kept(pack: IndexedPack) -> KeptPack:
    from array import array

    return KeptPack(pack.id, pack.size, b"".join(e.id for e in pack.entries),
                    array("Q", (int(e.type) << 40 | e.offset for e in pack.entries)),
                    array("Q", (e.length << 32 | e.raw_length for e in pack.entries)))


def test_answers_as_the_entries_say_whichever_form_they_came_in(tmp_path):
    index = DiskIndex(tmp_path / "index.sqlite")
    full = IndexedPack("a" * 64, 10_000_000, entries(500, 1))
    kept = IndexedPack("b" * 64, 20_000_000, entries(300, 2))
    index.add_file("f1", [full])
    index.add_file("f2", [as_kept(kept)], gone=["c" * 64])
    for pack in (full, kept):
        for e in pack.entries:
            loc = index.lookup(e.id)
            assert loc is not None and e.id in index
            assert (loc.pack_id, loc.type, loc.offset, loc.length, loc.raw_length) == \
                (pack.id, e.type, e.offset, e.length, e.raw_length)
    assert index.lookup(b"\0" * 32) is None and b"\0" * 32 not in index
    assert len(index) == 800
    assert index.packs() == {"a" * 64: 10_000_000, "b" * 64: 20_000_000}
    assert index.has_pack("a" * 64) and not index.has_pack("c" * 64)
    assert index.files() == {"f1", "f2"} and index.gone() == {"c" * 64}
    index.close()
    again = DiskIndex(tmp_path / "index.sqlite")  # what the next run finds
    assert again.files() == {"f1", "f2"} and len(again) == 800
    assert again.lookup(kept.entries[7].id).pack_id == "b" * 64


@pytest.mark.parametrize("on_disk", [True, False])
def test_many_ids_looked_up_at_once_answer_as_lookups_do(tmp_path, on_disk):
    from shared.format.index import Index

    index = DiskIndex(tmp_path / "index.sqlite") if on_disk else Index()
    a, b = IndexedPack("a" * 64, 1, entries(700, 4)), IndexedPack("b" * 64, 1, entries(600, 5))
    index.add_file("f1", [a])
    index.add_file("f2", [as_kept(b)])
    unknown = [bytes([i]) * 32 for i in range(50)]
    # more ids than one query takes, repeated ids, unknown ones among them
    asked = [e.id for e in a.entries] + unknown + [e.id for e in b.entries] + [a.entries[0].id]
    found = index.lookup_many(asked)
    assert found == {blob_id: index.lookup(blob_id) for blob_id in asked if blob_id in index}
    assert len(found) == 1300 and not found.keys() & set(unknown)
    assert index.lookup_many([]) == {}
    assert index.contains_many(asked) == {blob_id for blob_id in asked if blob_id in index} == set(found)
    assert index.contains_many([]) == set() and index.contains_many(unknown) == set()


def test_a_blob_stored_twice_stays_where_it_was_first_seen(tmp_path):
    index = DiskIndex(tmp_path / "index.sqlite")
    first = IndexedPack("a" * 64, 1, entries(10, 3))
    second = IndexedPack("b" * 64, 1, entries(10, 3))  # the same ids
    index.add_file("f1", [first])
    index.add_file("f2", [second])
    assert {index.lookup(e.id).pack_id for e in second.entries} == {"a" * 64}


def test_settle_starts_over_when_the_repository_lost_something(tmp_path):
    index = DiskIndex(tmp_path / "index.sqlite")
    index.add_file("f1", [IndexedPack("a" * 64, 1, entries(5, 4))])
    index.add_file("f2", [IndexedPack("b" * 64, 1, entries(5, 5))], gone=["c" * 64])
    kept = index.settle({"f1", "f2", "f3"}, {"a" * 64, "b" * 64})  # more is fine
    assert kept == ({"f1", "f2"}, {"c" * 64}) and len(index) == 10
    nothing = (set(), set())
    assert index.settle({"f1"}, {"a" * 64, "b" * 64}) == nothing  # an index file was collected
    assert len(index) == 0 and index.files() == set() and index.packs() == {}

    index.add_file("f1", [IndexedPack("a" * 64, 1, entries(5, 4))])
    assert index.settle({"f1"}, set()) == nothing and len(index) == 0  # its pack was collected
    index.add_file("f2", [], gone=["c" * 64])
    # a pack thought gone is there after all
    assert index.settle({"f2"}, {"c" * 64}) == nothing and index.gone() == set()


def test_a_damaged_or_foreign_database_is_built_again(tmp_path):
    path = tmp_path / "index.sqlite"
    path.write_bytes(os.urandom(8192))
    index = DiskIndex(path)
    index.add_file("f1", [IndexedPack("a" * 64, 1, entries(3, 6))])
    assert len(index) == 3
    index.close()

    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")  # a later layout
    db.commit()
    db.close()
    rebuilt = DiskIndex(path)
    assert len(rebuilt) == 0 and rebuilt.files() == set()


def test_an_out_of_range_location_is_refused_not_stored(tmp_path):
    index = DiskIndex(tmp_path / "index.sqlite")
    bad = IndexedPack("a" * 64, 1, [PackEntry(BlobType.DATA, b"x" * 32, 0, 1 << 31, 10)])
    with pytest.raises(FormatError, match="out of range"):
        index.add_file("f1", [bad])
    with pytest.raises(FormatError, match="out of range"):
        index.add_file("f1", [as_kept(bad)])
    assert len(index) == 0 and index.files() == set()  # nothing half-added


def test_pack_numbers_are_never_reused(tmp_path):
    """Numbers outlive a clear, so a number read before it can never name another pack."""
    index = DiskIndex(tmp_path / "index.sqlite")
    first = IndexedPack("a" * 64, 1, entries(3, 7))
    index.add_file("f1", [first])
    old_number = index._pack_numbers["a" * 64]
    index.clear()
    index.add_file("f2", [IndexedPack("c" * 64, 3, entries(3, 9))])
    assert index._pack_numbers["c" * 64] > old_number
    assert index.lookup(first.entries[0].id) is None
    assert {loc.pack_id for _, loc in index.items()} == {"c" * 64}


def test_threads_look_up_while_another_adds(tmp_path):
    index = DiskIndex(tmp_path / "index.sqlite")
    base = IndexedPack("a" * 64, 1, entries(2000, 10))
    index.add_file("f0", [base])
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for e in base.entries:
                assert index.lookup(e.id).pack_id == "a" * 64
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(20):
        index.add_file(f"f{i + 1}", [IndexedPack(f"{i:064x}", 1, entries(100, 100 + i))])
    for t in threads:
        t.join()
    assert errors == [] and len(index) == 4000


async def test_a_backup_through_the_disk_index_matches_the_repository(store, tmp_path):
    """A backup adds what it stores as it goes; the index a fresh open builds from the
    repository (in memory) agrees with the one on disk entry for entry, and a pack the
    store lost takes its entries out of the next run's disk index."""
    cache = IndexCache(tmp_path / "cache")
    repo = await Repository.init(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    repo.use_index_cache(cache)
    rng = random.Random(11)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 200 * 1024)))
    await Archiver(repo, host="h").backup([str(src)], kind=FULL)
    repo.close()

    plain = await Repository.open(store, PASSPHRASE)
    on_disk = await Repository.open(store, PASSPHRASE, load_index=False)
    on_disk.use_index_cache(cache)
    await on_disk.load_index()
    assert isinstance(on_disk.index, DiskIndex)
    assert dict(on_disk.index.items()) == dict(plain.index.items())
    assert len(on_disk.index) > 30

    lost = sorted([k async for k in store.list(DATA_PREFIX)])[0]
    os.unlink(Path(store.root) / lost)
    on_disk.close()
    after = await Repository.open(store, PASSPHRASE, load_index=False)
    after.use_index_cache(cache)
    await after.load_index()
    lost_id = lost.rsplit("/", 1)[-1]
    assert after.gone_packs == {lost_id} and not after.index.has_pack(lost_id)
    assert all(loc.pack_id != lost_id for _, loc in after.index.items())
    again = await Repository.open(store, PASSPHRASE)
    assert dict(after.index.items()) == dict(again.index.items())


def test_one_process_at_a_time_and_the_other_keeps_its_index_in_memory(tmp_path):
    import subprocess
    import sys

    from shared.format.diskindex import IndexBusy

    path = tmp_path / "index.sqlite"
    held = DiskIndex(path)
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from shared.format.diskindex import DiskIndex, IndexBusy\n"
         "try:\n    DiskIndex(sys.argv[1])\nexcept IndexBusy:\n    sys.exit(3)", str(path)],
        cwd=Path(__file__).resolve().parents[2])
    assert other.returncode == 3
    held.close()
    DiskIndex(path).close()  # free again
    assert issubclass(IndexBusy, Exception)


async def test_a_busy_disk_index_leaves_the_repository_with_one_in_memory(store, tmp_path):
    from shared.format.index import Index

    cache = IndexCache(tmp_path / "cache")
    repo = await Repository.init(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    repo.use_index_cache(cache)
    assert isinstance(repo.index, DiskIndex)
    second = await Repository.open(store, PASSPHRASE, load_index=False)
    second.use_index_cache(IndexCache(tmp_path / "cache"))  # flock: per open file, so per process too
    assert isinstance(second.index, Index)
    repo.close()


def test_damage_inside_the_database_is_found_at_open_and_built_again(tmp_path):
    path = tmp_path / "index.sqlite"
    index = DiskIndex(path)
    for i in range(30):
        index.add_file(f"f{i}", [IndexedPack(f"{i:064x}", 1, entries(200, 200 + i))])
    index.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 40_000
    data[20_000:36_000] = os.urandom(16_000)  # pages in the middle, header intact
    path.write_bytes(bytes(data))
    again = DiskIndex(path)
    assert len(again) == 0 and again.files() == set()  # started over, not failing forever


async def test_a_disk_that_fills_up_while_the_index_loads_leaves_it_in_memory(store, tmp_path):
    """A restore or a recovery opens a fresh index on disk; when its disk fills up while
    the repository's index files go in (SQLite's own "database or disk is full", here
    from a page limit), the index is loaded again in memory, complete, with the packs
    that are gone, the file let go of, and the reason kept for the caller to tell."""
    from shared.format.diskindex import in_use
    from shared.format.index import Index

    repo = await Repository.init(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    for day in range(5):  # an index file or more per backup
        for i in range(80):
            (src / f"f{day}-{i}").write_bytes(rng.randbytes(rng.randrange(100, 3000)))
        await Archiver(repo, host="h").backup([str(src)], kind=FULL)
    lost = sorted([k async for k in store.list(DATA_PREFIX)])[0]
    os.unlink(Path(store.root) / lost)  # collected by retention: its entries left out
    plain = await Repository.open(store, PASSPHRASE)
    assert plain.gone_packs == {lost.rsplit("/", 1)[-1]} and len(plain._loaded_index_files) > 3

    path = tmp_path / "restore" / "index.sqlite"
    opened = await Repository.open(store, PASSPHRASE, load_index=False)
    opened.keep_index_in(path)
    assert isinstance(opened.index, DiskIndex) and in_use(path)
    pages = opened.index._db.execute("PRAGMA page_count").fetchone()[0]
    opened.index._db.execute(f"PRAGMA max_page_count={pages + 3}")  # a few index files fit
    loaded_into_disk = []
    add_file = opened.index.add_file

    def counting_add_file(*args):
        add_file(*args)
        loaded_into_disk.append(args[0])

    opened.index.add_file = counting_add_file
    await opened.load_index()
    assert loaded_into_disk  # it failed part-way, not at once
    assert isinstance(opened.index, Index) and not in_use(path)
    assert "full" in opened.index_in_memory_because
    assert dict(opened.index.items()) == dict(plain.index.items()) and len(plain.index) > 300
    assert opened.gone_packs == plain.gone_packs
    assert opened._loaded_index_files == plain._loaded_index_files


async def test_an_index_on_disk_that_cannot_be_made_leaves_the_reason(store, tmp_path):
    from shared.format.index import Index

    repo = await Repository.init(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    repo.keep_index_in(blocker / "index.sqlite")
    assert isinstance(repo.index, Index) and "cannot be used" in repo.index_in_memory_because
    repo.use_index_cache(IndexCache(blocker / "cache"))
    assert isinstance(repo.index, Index)


async def test_a_failure_in_a_bounded_gather_stops_the_others():
    """load_index reads index files a few at a time; when one fails, the others must not
    go on adding to an index the caller is about to replace."""
    import asyncio

    from shared.format.repository import _bounded_gather

    started, finished = [], []

    async def one(i: int) -> int:
        started.append(i)
        if i == 2:
            raise RuntimeError("the third fails")
        await asyncio.sleep(0.05)
        finished.append(i)
        return i

    with pytest.raises(RuntimeError):
        await _bounded_gather([one(i) for i in range(10)], 4)
    await asyncio.sleep(0.1)  # time enough for anything left running to finish
    assert finished == [] and len(started) < 10  # cancelled, the rest never started
    assert await _bounded_gather([one(i) for i in (5, 6)], 4) == [5, 6]
