"""Image assembly reads a disk's chunks pack by pack, in order, and still stops at a damaged
chunk naming its pack and offset, after writing and reporting every chunk before it."""

from __future__ import annotations

import hashlib
import os

import pytest

from services.recovery.assembly import Damaged, assemble, plan_disk
from services.recovery.keys import INDEX_FILE, CannotOpen, open_repository
from shared.format import FULL, Archiver, LocalFolderStore, Repository, ScryptParams, Source
from shared.format.constants import MiB
from shared.format.diskindex import DiskIndex
from shared.format.index import IndexedPack
from shared.format.pack import BlobType, PackEntry
from shared.format.diskindex import remove as remove_index
from shared.format.repository import pack_key
from shared.format.store import ObjectStore
from shared.format.snapshot import IMAGE

PASSPHRASE = "assembly reads"
SIZE = 24 * MiB


class CountingStore(LocalFolderStore):
    # Reads as the service reads its bucket: large ranges (store.py, read_budget).
    read_budget = ObjectStore.read_budget

    def __init__(self, root):
        super().__init__(root)
        self.pack_gets = 0

    async def get(self, key, offset=None, length=None):
        if key.startswith("data/"):
            self.pack_gets += 1
        return await super().get(key, offset, length)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
async def backed_up(tmp_path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
        for i in range(0, SIZE, 3 * MiB):  # data with holes between
            f.seek(i)
            f.write(os.urandom(2 * MiB))
    store = CountingStore(tmp_path / "repo")
    repo = await Repository.init(store, PASSPHRASE, kdf=ScryptParams(n=2**14, r=8, p=1), pack_size=8 * MiB)
    result = await Archiver(repo).backup([Source(str(disk), IMAGE)], kind=FULL)
    return store, repo, result.snapshot_id, disk


async def test_a_disk_is_assembled_in_a_few_requests_per_pack(backed_up, tmp_path):
    store, repo, snapshot_id, disk = backed_up
    plan = await plan_disk(repo, snapshot_id)
    reported = []

    async def report(done, sync):
        reported.append(done)

    store.pack_gets = 0
    out = tmp_path / "out.raw"
    await assemble(repo, plan, out, start=0, ahead=4, report=report)
    assert digest(out) == digest(disk)
    assert reported == list(range(1, len(plan.chunks) + 1))
    packs = {repo.index.lookup(blob_id).pack_id for _, _, blob_id in plan.chunks}
    assert len(plan.chunks) > 2 * len(packs)
    assert store.pack_gets <= 2 * len(packs)  # ranges of neighbours, not one GET per chunk


async def test_a_resumed_assembly_starts_at_its_checkpoint(backed_up, tmp_path):
    store, repo, snapshot_id, disk = backed_up
    plan = await plan_disk(repo, snapshot_id)
    out = tmp_path / "out.raw"
    half = len(plan.chunks) // 2

    async def nothing(done, sync):
        pass

    await assemble(repo, plan, out, start=0, ahead=4, report=nothing)
    with open(out, "r+b") as f:  # the second half was never written
        f.truncate(plan.chunks[half][0])
    reported = []

    async def report(done, sync):
        reported.append(done)

    await assemble(repo, plan, out, start=half, ahead=4, report=report)
    assert reported[0] == half + 1 and reported[-1] == len(plan.chunks)
    assert digest(out) == digest(disk)


async def test_a_corrupt_chunk_stops_the_assembly_after_the_chunks_before_it(backed_up, tmp_path):
    store, repo, snapshot_id, disk = backed_up
    plan = await plan_disk(repo, snapshot_id)
    bad = len(plan.chunks) // 2
    loc = repo.index.lookup(plan.chunks[bad][2])
    with open(store.root / pack_key(loc.pack_id), "r+b") as f:
        f.seek(loc.offset + 50)
        byte = f.read(1)
        f.seek(loc.offset + 50)
        f.write(bytes([byte[0] ^ 0xFF]))
    reported = []

    async def report(done, sync):
        reported.append(done)

    with pytest.raises(Damaged) as e:
        await assemble(repo, plan, tmp_path / "out.raw", start=0, ahead=4, report=report)
    assert loc.pack_id in str(e.value) and f"disk offset {plan.chunks[bad][0]}" in str(e.value)
    assert reported == list(range(1, bad + 1))


async def test_a_missing_pack_names_the_pack(backed_up, tmp_path):
    store, repo, snapshot_id, disk = backed_up
    plan = await plan_disk(repo, snapshot_id)
    loc = repo.index.lookup(plan.chunks[-1][2])
    await store.delete(pack_key(loc.pack_id))

    async def nothing(done, sync):
        pass

    with pytest.raises(Damaged) as e:
        await assemble(repo, plan, tmp_path / "out.raw", start=0, ahead=4, report=nothing)
    assert loc.pack_id in str(e.value) and "missing" in str(e.value)


async def test_the_index_of_the_backup_read_lies_on_the_scratch_disk(backed_up, tmp_path):
    """A worker's memory must not grow with the customer's repository: the index of the
    backup it reads is an SQLite file in the task's folder, started over on every open,
    released on close. A damaged repository still fails with its reason and leaves the
    index closed behind it."""
    store, repo, snapshot_id, disk = backed_up
    index_at = tmp_path / "task" / INDEX_FILE
    index_at.parent.mkdir()
    stale = IndexedPack("f" * 64, 4096, [PackEntry(BlobType.DATA, b"\x07" * 32, 0, 100, 100)])
    for attempt in range(2):  # the second open finds the first one's file: started over
        opened = await open_repository(store, passphrase=PASSPHRASE, kms_unwrap=None, index_at=index_at)
        try:
            assert isinstance(opened.index, DiskIndex) and opened.index.path == index_at
            assert dict(opened.index.items()) == dict(repo.index.items())
            opened.index.add_file("left by this run", [stale])  # not there for the next
            out = tmp_path / f"out{attempt}.raw"
            await assemble(opened, await plan_disk(opened, snapshot_id), out, start=0, ahead=4,
                           report=_ignore)
            assert digest(out) == digest(disk)
        finally:
            opened.close()
    DiskIndex(index_at).close()  # released: another open takes it at once (no IndexBusy)
    remove_index(index_at)
    assert list(index_at.parent.iterdir()) == []

    index_key = [k async for k in store.list("index/")][0]
    path = store.root / index_key
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    with pytest.raises(CannotOpen, match="damaged"):
        await open_repository(store, passphrase=PASSPHRASE, kms_unwrap=None, index_at=index_at)
    DiskIndex(index_at).close()  # closed by the failed open


async def _ignore(done, sync) -> None:
    pass
