"""The agent's RemoteStore keeps the format's ObjectStore promises over the REST API:
append-only puts, ranged gets, listing by prefix, no delete; URLs fetched in batches and
reused until shortly before they expire."""

from __future__ import annotations

import asyncio
import os

import pytest

from clients.agent.remote_store import RemoteStore
from shared.api.backup import BackupStart, SourceSpec
from shared.format.errors import InvalidKey, ObjectExists, ObjectNotFound, StoreError

PACK = "data/ab/ab" + "1" * 62
INDEX = "index/" + "2" * 64


class CountingStore(RemoteStore):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    async def api(self, method, path, **kwargs):
        self.calls.append(path)
        return await super().api(method, path, **kwargs)


@pytest.fixture
async def store(world):
    user = await world.user("olga")
    store = CountingStore(world.base, await world.agent_key(user, "host"))
    world.stores.append(store)
    await store.start_backup(BackupStart(kind="full", sources=[SourceSpec(path="/", type="folder")]))
    return store


async def test_put_get_ranges_and_listing(store):
    data = bytes(range(256))
    await store.put(PACK, memoryview(data))
    await store.put("config", bytearray(b""))
    assert await store.get(PACK) == data
    assert await store.get(PACK, 10, 5) == data[10:15]
    assert await store.get(PACK, 250) == data[250:]
    assert await store.get(PACK, length=2) == data[:2]
    assert await store.get(PACK, 254, 100) == data[254:]
    assert await store.get(PACK, 256, 10) == b""
    assert await store.get(PACK, 255, 0) == b""
    assert await store.get("config") == b"" and await store.size("config") == 0
    assert await store.size(PACK) == 256 and await store.exists(PACK)
    assert sorted([k async for k in store.list()]) == ["config", PACK]
    assert [k async for k in store.list("data/ab/")] == [PACK]
    assert [k async for k in store.list("dat")] == [PACK]
    assert [k async for k in store.list("index/")] == []


async def test_missing_keys_and_refusals(store):
    with pytest.raises(ObjectNotFound):
        await store.get(INDEX)
    with pytest.raises(ObjectNotFound):
        await store.get(INDEX, 0, 0)
    with pytest.raises(ObjectNotFound):
        await store.size(INDEX)
    assert not await store.exists(INDEX)
    await store.put(INDEX, b"index")
    with pytest.raises(ObjectExists):
        await store.put(INDEX, b"other")
    assert await store.get(INDEX) == b"index"
    with pytest.raises(StoreError):
        await store.delete(INDEX)
    for key in ("../config", "data/ab/x", "", "catalog/x.json"):
        with pytest.raises(InvalidKey):
            await store.put(key, b"x")


async def test_a_put_needs_a_session(world, store):
    idle = RemoteStore(world.base, store.agent_key)
    world.stores.append(idle)
    with pytest.raises(StoreError, match="no backup session"):
        await idle.put(INDEX, b"x")


async def test_concurrent_puts_of_one_key_store_exactly_one(store):
    results = await asyncio.gather(*(store.put(PACK, bytes([i]) * 100) for i in range(6)),
                                   return_exceptions=True)
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ObjectExists) for r in results if r is not None)
    assert await store.get(PACK) == bytes([winners[0]]) * 100


async def test_urls_are_batched_and_cached(store):
    keys = [f"index/{os.urandom(32).hex()}" for _ in range(20)]
    await asyncio.gather(*(store.put(k, k.encode()) for k in keys))
    assert store.calls.count(f"/api/v1/backups/{store.backup_id}/upload-urls") == 1
    store.calls.clear()
    assert await asyncio.gather(*(store.get(k) for k in keys)) == [k.encode() for k in keys]
    assert store.calls == ["/api/v1/repository/download-urls"]
    await asyncio.gather(*(store.get(k, 1, 3) for k in keys))  # the cached URLs serve again
    assert store.calls == ["/api/v1/repository/download-urls"]


async def test_a_refused_cached_url_is_replaced(store, mode):
    await store.put(INDEX, b"index")
    assert await store.get(INDEX) == b"index"
    url, usable = store._download_urls[INDEX]
    broken = url.model_copy(update={"url": url.url.replace("signature=", "signature=0")})
    store._download_urls[INDEX] = (broken, usable)
    store.calls.clear()
    assert await store.get(INDEX) == b"index"
    if mode == "embedded":  # the local store checks signatures (moto doesn't)
        assert store.calls == ["/api/v1/repository/download-urls"]
