"""The agent's index cache (shared/format/indexcache.py): index files read once are not
downloaded or parsed again, give exactly the index the repository's own files give, and
a damaged kept file costs only a download."""

from __future__ import annotations

import os
import random
from pathlib import Path

from shared.format import FULL, Archiver, Repository
from shared.format.constants import DATA_PREFIX, INDEX_PREFIX, MiB
from shared.format.diskindex import DiskIndex
from shared.format.indexcache import IndexCache
from shared.format.store import ForwardingStore

from .conftest import PASSPHRASE, TEST_PACK_SIZE


class CountingStore(ForwardingStore):
    """Counts the index files fetched."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.index_gets = 0

    async def get(self, key, offset=None, length=None):
        if key.startswith(INDEX_PREFIX):
            self.index_gets += 1
        return await super().get(key, offset, length)


def everything(repo: Repository) -> dict:
    return {blob_id: location for blob_id, location in repo.index.items()}


_opened: list[Repository] = []


async def open_with(store, cache: IndexCache | None) -> Repository:
    """As the agent opens it, in a new process (the one before has ended: its disk index
    is closed): with a cache, the index lives on disk (diskindex.py)."""
    while _opened:
        _opened.pop().close()
    repo = await Repository.open(store, PASSPHRASE, pack_size=TEST_PACK_SIZE, load_index=False)
    if cache is not None:
        repo.use_index_cache(cache)
        assert isinstance(repo.index, DiskIndex)
        _opened.append(repo)
    await repo.load_index()
    return repo


async def backed_up(repo: Repository, tmp_path: Path) -> None:
    rng = random.Random(7)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):  # ~5 MiB of incompressible files: a few packs, several index files
        (src / f"f{i}.bin").write_bytes(rng.randbytes(rng.randrange(1, 256 * 1024)))
    await Archiver(repo, host="h").backup([str(src)], kind=FULL)


async def test_kept_index_files_give_the_same_index_without_a_download(repo, store, tmp_path):
    await backed_up(repo, tmp_path)
    plain = everything(await open_with(store, None))
    index_files = len([k async for k in store.list(INDEX_PREFIX)])
    assert len(plain) > 40 and index_files > 1

    cache = IndexCache(tmp_path / "cache")
    counting = CountingStore(store)
    first = await open_with(counting, cache)
    assert counting.index_gets == index_files and everything(first) == plain
    assert len(list((tmp_path / "cache").glob("*.bin"))) == index_files

    counting.index_gets = 0
    second = await open_with(counting, cache)
    assert counting.index_gets == 0 and everything(second) == plain
    assert second.index.packs() == first.index.packs()

    collected = sorted([k async for k in store.list(INDEX_PREFIX)])[0]
    await store.delete(collected)  # what the service's garbage collection does
    await open_with(store, cache)
    kept = {p.stem for p in (tmp_path / "cache").glob("*.bin")}
    assert len(kept) == index_files - 1 and collected.rsplit("/", 1)[-1] not in kept


async def test_a_backup_keeps_the_index_files_it_writes(store, tmp_path):
    cache = IndexCache(tmp_path / "cache")
    repo = await Repository.init(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    repo.use_index_cache(cache)
    await backed_up(repo, tmp_path)
    repo.close()
    counting = CountingStore(store)
    again = await open_with(counting, cache)
    assert counting.index_gets == 0
    assert everything(again) == everything(await open_with(store, None))


async def test_a_damaged_kept_file_is_read_again_and_replaced(repo, store, tmp_path):
    await backed_up(repo, tmp_path)
    cache = IndexCache(tmp_path / "cache")
    await open_with(store, cache)
    kept = sorted((tmp_path / "cache").glob("*.bin"))
    data = bytearray(kept[0].read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in an entry
    kept[0].write_bytes(bytes(data))
    kept[1].write_bytes(kept[1].read_bytes()[:100])  # cut short
    # The index on disk holds them already: without it, they are read to build it again.
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / "cache" / name).unlink(missing_ok=True)

    counting = CountingStore(store)
    repaired = await open_with(counting, cache)
    assert counting.index_gets == 2
    assert everything(repaired) == everything(await open_with(store, None))
    counting.index_gets = 0
    await open_with(counting, cache)
    assert counting.index_gets == 0  # replaced by good ones


async def test_packs_gone_from_the_store_are_left_out_of_a_kept_index_too(repo, store, tmp_path):
    await backed_up(repo, tmp_path)
    cache = IndexCache(tmp_path / "cache")
    await open_with(store, cache)
    gone = sorted([k async for k in store.list(DATA_PREFIX)])[0]
    os.unlink(Path(store.root) / gone)  # what retention's garbage collection does

    plain = await open_with(store, None)
    cached = await open_with(store, cache)
    assert everything(cached) == everything(plain)
    assert cached.gone_packs == plain.gone_packs and len(cached.gone_packs) == 1
    assert not any(loc.pack_id in cached.gone_packs for loc in everything(cached).values())


def test_nothing_big_is_kept_for_nothing(tmp_path):
    """A kept file is a few dozen bytes per entry (49 and the digest), not JSON's ~110."""
    from shared.format.index import IndexedPack
    from shared.format.pack import BlobType, PackEntry

    entries = [PackEntry(BlobType.DATA, os.urandom(32), i * 1000, 900, MiB) for i in range(1000)]
    IndexCache(tmp_path).put("x", [IndexedPack("p" * 64, 10**6, entries)])
    size = (tmp_path / "x.bin").stat().st_size
    assert 48_000 < size < 49_500
    kept = IndexCache(tmp_path).get("x")
    assert kept is not None and kept[0].ids == b"".join(e.id for e in entries)
