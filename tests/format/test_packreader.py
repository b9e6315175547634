"""Reading blobs pack by pack: few requests, bounded memory, every failure per blob."""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import aclosing
from pathlib import Path

import pytest

from shared.format import FULL, Archiver, LocalFolderStore, Restorer, RestoreIncomplete
from shared.format.constants import MiB
from shared.format.errors import CorruptBlob, MissingBlob, MissingPack
from shared.format.pack import BlobType, open_blob
from shared.format.packreader import PackReader
from shared.format.repository import pack_key

from .conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE, describe


class GetCountingStore(LocalFolderStore):
    """A real local store that counts ranged reads of packs and the bytes they return."""

    def __init__(self, root):
        super().__init__(root)
        self.pack_gets = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def get(self, key, offset=None, length=None):
        if not key.startswith("data/"):
            return await super().get(key, offset, length)
        self.pack_gets += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().get(key, offset, length)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def counted(tmp_path):
    from shared.format import Repository

    store = GetCountingStore(tmp_path / "repo")
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    return store, repo


async def data_blobs(repo, n: int, size: int = 64 * 1024) -> list[tuple[bytes, bytes]]:
    saver = repo.saver()
    blobs = []
    for _ in range(n):
        data = os.urandom(size)
        blob_id, _ = await saver.save_async(BlobType.DATA, data)
        blobs.append((blob_id, data))
    await saver.flush()
    return blobs


async def read_all(reader: PackReader, plan) -> list:
    async with aclosing(reader.read(plan)) as stream:
        return [b async for b in stream]


async def test_blobs_of_a_pack_come_in_one_request_and_open_to_their_data(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 60)  # 3.75 MiB: two packs of 2 MiB
    reader = PackReader(repo, max_range=4 * MiB)  # a whole test pack fits one range
    wanted = [blob_id for blob_id, _ in reversed(blobs)]  # the order asked does not matter
    got = await read_all(reader, reader.plan_by_pack(wanted + wanted[:5]))  # nor repeats
    assert sorted(b.id for b in got) == sorted(wanted)
    assert store.pack_gets == len(repo.index.packs()) == 2
    plain = dict(blobs)
    for b in got:
        assert b.error is None
        assert open_blob(repo.key, b.location.entry(b.id), b.sealed, pack_id=b.location.pack_id) == plain[b.id]


async def test_gaps_larger_than_allowed_split_a_pack_into_ranges(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 20)
    reader = PackReader(repo, max_gap=0)
    every_other = [blob_id for blob_id, _ in blobs[::2]]
    got = await read_all(reader, reader.plan_by_pack(every_other))
    assert len(got) == 10 and store.pack_gets == 10
    store.pack_gets = 0
    merged = PackReader(repo, max_gap=64 * 1024 + 100)  # one skipped blob plus its seal
    await read_all(merged, merged.plan_by_pack(every_other))
    assert store.pack_gets == 1


async def test_ranges_are_capped_and_requests_and_memory_are_bounded(counted):
    store, repo = counted
    await data_blobs(repo, 64)  # 4 MiB in two packs
    reader = PackReader(repo, max_range=256 * 1024, concurrency=3, memory=400 * 1024)
    plan = reader.plan_by_pack(blob_id for blob_id, _ in repo.index.items())
    assert all(r.length <= 256 * 1024 for r in plan.ranges)
    got = await read_all(reader, plan)
    assert len(got) == 64 and store.pack_gets == len(plan.ranges) > 8
    assert store.most_in_flight == 2  # 400 KiB holds two ranges of three 64 KiB blobs, not three


async def test_a_range_larger_than_the_memory_budget_is_still_read(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 8)
    reader = PackReader(repo, memory=1)
    got = await read_all(reader, reader.plan_by_pack(b for b, _ in blobs))
    assert len(got) == 8 and all(b.error is None for b in got)


async def test_in_order_plan_keeps_the_order_and_every_position(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 40)
    ids = [b for b, _ in blobs]
    asked = ids[:10] + ids[:3] + [b"\x01" * 32] + ids[10:]
    reader = PackReader(repo)
    async with aclosing(reader.read_in_order(asked, window=1 * MiB)) as stream:
        got = [b async for b in stream]
    assert [b.position for b in got] == list(range(len(asked)))
    assert [b.id for b in got] == asked
    assert isinstance(got[13].error, MissingBlob)
    assert all(b.error is None for i, b in enumerate(got) if i != 13)
    assert store.pack_gets <= 6  # a few ranges per 1 MiB window, not one request per blob


async def test_a_missing_pack_is_an_error_for_each_of_its_blobs_and_only_them(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 60)
    gone = repo.index.lookup(blobs[0][0]).pack_id
    await store.delete(pack_key(gone))
    reader = PackReader(repo)
    got = await read_all(reader, reader.plan_by_pack(b for b, _ in blobs))
    for b in got:
        if b.location.pack_id == gone:
            assert isinstance(b.error, MissingPack) and b.error.pack_id == gone
        else:
            assert b.error is None


async def test_a_truncated_pack_gives_short_blobs_that_open_as_corrupt(counted):
    store, repo = counted
    blobs = await data_blobs(repo, 10)
    pack_id = repo.index.lookup(blobs[-1][0]).pack_id
    path = store.root / pack_key(pack_id)
    loc = repo.index.lookup(blobs[-1][0])
    with open(path, "r+b") as f:
        f.truncate(loc.offset + 10)
    reader = PackReader(repo)
    got = {b.id: b for b in await read_all(reader, reader.plan_by_pack(b for b, _ in blobs))}
    last = got[blobs[-1][0]]
    with pytest.raises(CorruptBlob) as e:
        open_blob(repo.key, last.location.entry(last.id), last.sealed, pack_id=pack_id)
    assert pack_id in str(e.value)


async def test_a_restore_reads_each_pack_in_a_few_requests_not_per_chunk(counted, tmp_path):
    store, repo = counted
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(30):  # small files: many chunks share a pack
        (src / f"f{i}.bin").write_bytes(os.urandom(100_000))
    (src / "sub" / "big.bin").write_bytes(os.urandom(5 * MiB))
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    data_chunks = sum(1 for _, loc in repo.index.items() if loc.type is BlobType.DATA)
    store.pack_gets = 0
    restorer = Restorer(repo)
    await restorer.restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)
    data_requests = restorer.reader.requests
    packs = {loc.pack_id for _, loc in repo.index.items() if loc.type is BlobType.DATA}
    assert data_requests <= 2 * len(packs) < data_chunks  # whole packs in <= 2 ranges, not per chunk


async def store_and_repo(reads: str, tmp_path):
    """A plain folder store, which the restore's threads read themselves, or one that counts
    its reads in get(), which they then go through."""
    from shared.format import Repository

    store = (LocalFolderStore if reads == "in the workers" else GetCountingStore)(tmp_path / "repo")
    assert (store.blocking_get() is not None) == (reads == "in the workers")
    return store, await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)


@pytest.mark.parametrize("reads", ["in the workers", "through get"])
async def test_a_restore_from_a_store_that_fails_reads_names_every_file(reads, tmp_path):
    store, repo = await store_and_repo(reads, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(os.urandom(300_000))
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    for pack_id in {loc.pack_id for _, loc in repo.index.items() if loc.type is BlobType.DATA}:
        await store.delete(pack_key(pack_id))
    with pytest.raises(RestoreIncomplete) as e:
        await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert sorted(path for path, _ in e.value.damaged) == ["src/a.bin", "src/b.bin"]
    assert all(isinstance(error, MissingPack) for _, error in e.value.damaged)


async def test_a_local_folder_is_read_by_the_restore_workers_themselves(tmp_path, monkeypatch):
    """A plain folder store's packs are read in the worker threads that open them, not
    handed from a reading thread through the event loop; the reads are still counted."""
    from shared.format import Repository

    repo = await Repository.init(LocalFolderStore(tmp_path / "repo"), PASSPHRASE, kdf=FAST_KDF,
                                 pack_size=TEST_PACK_SIZE)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
    (src / "sub" / "big.bin").write_bytes(os.urandom(3 * MiB))
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    reads: list[tuple[str, str, bool]] = []  # (thread, pack, into the thread's own buffer)
    for reading in ("_pread_object", "_pread_into"):
        recorded_read(monkeypatch, tmp_path / "repo", reading, reads)
    streamed = []  # PackReader.read: the listings' path through get() and the loop
    plain_read = PackReader.read
    monkeypatch.setattr(PackReader, "read", lambda reader, plan: streamed.append(plan) or plain_read(reader, plan))
    restorer = Restorer(repo)
    await restorer.restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)
    in_workers = [(key, kept) for name, key, kept in reads if name.startswith("reclo-restore")]
    assert in_workers and restorer.reader.requests == len(in_workers)
    assert all(kept for _, kept in in_workers)  # into each worker's buffer, not fresh memory
    assert not streamed  # the listings too were read by the thread that opens them
    # elsewhere (a thread of the loop's executor): only directory listings (trees)
    tree_packs = {pack_key(loc.pack_id) for _, loc in repo.index.items() if loc.type is BlobType.TREE}
    assert {key for name, key, _ in reads if not name.startswith("reclo-restore")} <= tree_packs
    assert not tree_packs & {key for key, _ in in_workers}


async def test_a_workers_read_buffer_is_reused_only_once_nothing_looks_into_it(counted):
    from shared.format.progress import Meter
    from shared.format.restorer import _Run

    _, repo = counted
    restorer = Restorer(repo)
    run = _Run(restorer, None, None, Meter(None, 1.0))
    first = run._read_buffer(1000)
    assert len(first) == restorer.reader.max_range
    assert run._read_buffer(5000) is first  # nothing looks into it: the same memory again
    view = memoryview(first)[10:20]  # a blob of the last range, still held somewhere
    second = run._read_buffer(1000)
    assert second is not first and bytes(view) == bytes(10)
    view.release()
    assert run._read_buffer(restorer.reader.max_range + 1) is not second  # too small: a bigger one


async def test_a_file_that_cannot_be_written_is_reported_without_the_range_it_came_from(tmp_path, monkeypatch):
    """A write error (a full disk) is kept in the report without its traceback, whose
    frames would keep the worker's read buffer from being reused until the end."""
    import errno

    from shared.format import Repository, restorer as restorer_module

    repo = await Repository.init(LocalFolderStore(tmp_path / "repo"), PASSPHRASE, kdf=FAST_KDF,
                                 pack_size=TEST_PACK_SIZE)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(os.urandom(300_000))
    result = await Archiver(repo).backup([str(src)], kind=FULL)

    def full_disk(self, handle, buffers, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(restorer_module._AtFs, "write", full_disk)
    monkeypatch.setattr(restorer_module._PathFs, "write", full_disk)
    with pytest.raises(RestoreIncomplete) as e:
        await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert sorted(path for path, _ in e.value.damaged) == ["src/a.bin", "src/b.bin"]
    assert all(error.errno == errno.ENOSPC and error.__traceback__ is None for _, error in e.value.damaged)


def recorded_read(monkeypatch, root, reading: str, reads: list, fail_for: set[str] = frozenset()) -> None:
    """The folder store's low-level read ``reading`` (shared.format.store), recording
    (thread, pack key, whether into a kept buffer) for packs, failing for ``fail_for``."""
    import errno

    from shared.format import store as store_module

    plain = getattr(store_module, reading)

    def read(path, *args):
        key = Path(path).relative_to(root).as_posix()
        if key.startswith("data/"):
            reads.append((threading.current_thread().name, key, reading == "_pread_into"))
            if key in fail_for:
                raise OSError(errno.EIO, "Input/output error")
        return plain(path, *args)

    monkeypatch.setattr(store_module, reading, read)


async def test_a_disk_that_fails_under_the_workers_fails_the_restore_once(tmp_path, monkeypatch):
    """An I/O error reading a pack (not a missing pack) stops the restore with that error,
    as it does through get(); each worker that met it has its failure looked at, none is
    left to be logged as never retrieved."""
    import errno

    from shared.format import Repository

    repo = await Repository.init(LocalFolderStore(tmp_path / "repo"), PASSPHRASE, kdf=FAST_KDF,
                                 pack_size=TEST_PACK_SIZE)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}.bin").write_bytes(os.urandom(400_000))
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    data_packs = {pack_key(loc.pack_id) for _, loc in repo.index.items() if loc.type is BlobType.DATA}
    assert len(data_packs) >= 2
    for reading in ("_pread_object", "_pread_into"):
        recorded_read(monkeypatch, tmp_path / "repo", reading, [], fail_for=data_packs)
    loop = asyncio.get_running_loop()
    handed_out: list[asyncio.Future] = []  # what the restore gave its worker threads
    plain_run_in_executor = loop.run_in_executor

    def recording_run_in_executor(executor, fn, *args):
        future = plain_run_in_executor(executor, fn, *args)
        handed_out.append(future)
        return future

    monkeypatch.setattr(loop, "run_in_executor", recording_run_in_executor)
    with pytest.raises(OSError) as e:
        await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert e.value.errno == errno.EIO
    ended = [f for f in handed_out if f.done() and not f.cancelled()]
    unlooked = [f for f in ended if f._log_traceback]  # before this test looks at them
    assert len([f for f in ended if f.exception() is not None]) >= 2  # both workers met the disk
    assert not unlooked  # and the restore looked at each failure


def test_only_a_wrapper_that_leaves_reads_alone_lets_workers_read_past_it(tmp_path):
    from clients.agent.retrying import RetryingStore
    from clients.agent.throttle import ThrottledStore, TokenBucket

    local = LocalFolderStore(tmp_path)
    assert local.blocking_get() is not None
    assert ThrottledStore(local, TokenBucket(1_000_000)).blocking_get() is not None  # paces puts only
    assert RetryingStore(local).blocking_get() is None  # its get() retries
    assert GetCountingStore(tmp_path).blocking_get() is None  # its get() counts


@pytest.mark.parametrize("reads", ["in the workers", "through get"])
async def test_a_corrupt_directory_listing_is_reported_and_its_siblings_restored(reads, tmp_path):
    store, repo = await store_and_repo(reads, tmp_path)
    src = tmp_path / "src"
    for d in ("one", "two", "three"):
        (src / d).mkdir(parents=True)
        (src / d / "f.txt").write_text(d)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    snap = await repo.load_snapshot(result.snapshot_id)
    top = (await repo.load_tree(snap.tree)).find("src")
    two = (await repo.load_tree(top.subtree)).find("two")
    loc = repo.index.lookup(two.subtree)
    with open(store.root / pack_key(loc.pack_id), "r+b") as f:
        f.seek(loc.offset + 20)
        byte = f.read(1)
        f.seek(loc.offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RestoreIncomplete) as e:
        await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert [path for path, _ in e.value.damaged] == ["src/two/"]
    assert isinstance(e.value.damaged[0][1], CorruptBlob) and loc.pack_id in str(e.value)
    for d in ("one", "three"):
        assert (tmp_path / "out" / "src" / d / "f.txt").read_text() == d


class GatedStore(LocalFolderStore):
    """A real local store whose pack reads after the first wait until the test opens the gate."""

    def __init__(self, root):
        super().__init__(root)
        self.gate = asyncio.Event()
        self.pack_gets = 0

    async def get(self, key, offset=None, length=None):
        if key.startswith("data/"):
            self.pack_gets += 1
            if self.pack_gets > 1:
                await self.gate.wait()
        return await super().get(key, offset, length)


async def test_in_order_hands_out_what_has_arrived_before_the_window_is_complete(tmp_path):
    from shared.format import Repository

    store = GatedStore(tmp_path / "repo")
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    blobs = await data_blobs(repo, 60)  # two packs: two ranges
    store.pack_gets = 0
    reader = PackReader(repo, concurrency=1)
    stream = reader.read_in_order([b for b, _ in blobs], window=64 * MiB)
    async with aclosing(stream):
        first = await asyncio.wait_for(anext(stream), timeout=60)  # while the second read waits
        assert first.position == 0 and first.error is None
        assert not store.gate.is_set()
        store.gate.set()
        rest = [b async for b in stream]
    assert [b.position for b in rest] == list(range(1, 60))


@pytest.mark.parametrize("reads", ["in the workers", "through get"])
async def test_listings_are_read_ahead_of_the_walk_within_a_budget(reads, tmp_path, monkeypatch):
    """A restore's memory must not grow with a folder's number of subfolders: their
    listings are read ahead in groups, never more than TREES_AHEAD_BYTES of them read and
    not yet walked into (one larger listing alone), and still in far fewer reads than one
    per folder. Before, every subfolder of a folder was read at once."""
    from shared.format import restorer as restorer_module

    store, repo = await store_and_repo(reads, tmp_path)
    src = tmp_path / "src"
    for d in range(120):
        folder = src / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(2 if d != 60 else 400):  # one listing larger than the budget
            (folder / f"file {f} with a longer name to fill the listing").write_text(f"{d}/{f}")
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    top = (await repo.load_tree((await repo.load_tree((await repo.load_snapshot(result.snapshot_id)).tree))
                                .find("src").subtree))
    sizes = {n.subtree: repo.index.lookup(n.subtree).raw_length for n in top.nodes}
    budget = 8 * max(size for name, size in zip((n.name for n in top.nodes), sizes.values()) if name != "d060")
    assert sizes[top.find("d060").subtree] > budget and len(sizes) == 120

    monkeypatch.setattr(restorer_module, "TREES_AHEAD_BYTES", budget)
    ahead: set[bytes] = set()
    most = 0
    groups = []
    prefetch, entering = restorer_module._Trees.prefetch, restorer_module._Lookahead.entering

    def counting_prefetch(self, tree_ids):
        nonlocal most
        tree_ids = list(tree_ids)
        ours = [t for t in tree_ids if t in sizes]  # src's subfolders (the root's is src)
        if ours:
            groups.append(len(ours))
            ahead.update(ours)
            if len(ahead) > 1:  # one listing alone may exceed the budget
                most = max(most, sum(sizes[t] for t in ahead))
        prefetch(self, tree_ids)

    def counting_entering(self, tree_id):
        ahead.discard(tree_id)
        entering(self, tree_id)

    read_alone = []
    load_tree = repo.load_tree

    async def counting_load_tree(tree_id):
        read_alone.append(tree_id)
        return await load_tree(tree_id)

    monkeypatch.setattr(restorer_module._Trees, "prefetch", counting_prefetch)
    monkeypatch.setattr(restorer_module._Lookahead, "entering", counting_entering)
    monkeypatch.setattr(repo, "load_tree", counting_load_tree)
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)
    assert sum(groups) == 120 and not set(read_alone) & sizes.keys()  # each read once, ahead
    assert 120 / 8 <= len(groups) < 60  # grouped, a budget's worth each
    assert 0 < most <= budget


async def test_folders_sharing_a_listing_read_it_once(tmp_path, monkeypatch):
    """Every empty folder has the same (empty) listing, stored once: restoring 300 of them
    reads it once, not once more per folder one after the other (from an object store,
    a request each)."""
    store, repo = await store_and_repo("through get", tmp_path)
    src = tmp_path / "src"
    for d in range(300):
        (src / f"empty {d:03d}").mkdir(parents=True)
    (src / "full").mkdir()
    (src / "full" / "file.txt").write_text("not empty")
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    read_alone = []
    load_tree = repo.load_tree

    async def counting_load_tree(tree_id):
        read_alone.append(tree_id)
        return await load_tree(tree_id)

    monkeypatch.setattr(repo, "load_tree", counting_load_tree)
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)
    assert len(read_alone) <= 2  # the root's and src's listings at most, never an empty one
