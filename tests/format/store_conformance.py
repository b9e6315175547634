"""The ObjectStore conformance suite: every adapter must pass it.

Use it by subclassing in the adapter's test module and providing a `store` fixture that
yields an empty store (function scope)::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, ...):
            return MyStore(...)

The class name does not start with "Test", so pytest collects it only through subclasses.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from shared.format.errors import InvalidKey, ObjectExists, ObjectNotFound, StoreError
from shared.format.store import ObjectStore


async def _keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted([k async for k in store.list(prefix)])


class StoreConformance:
    async def test_put_then_get_returns_the_bytes(self, store: ObjectStore):
        await store.put("data/ab/ab01", b"hello pack")
        assert await store.get("data/ab/ab01") == b"hello pack"
        assert await store.exists("data/ab/ab01")
        assert await store.size("data/ab/ab01") == 10

    async def test_accepts_bytearray_and_memoryview(self, store: ObjectStore):
        await store.put("a/one", bytearray(b"12345"))
        await store.put("a/two", memoryview(b"67890"))
        assert await store.get("a/one") == b"12345"
        assert await store.get("a/two") == b"67890"

    async def test_empty_and_large_objects(self, store: ObjectStore):
        big = os.urandom(6 * 1024 * 1024 + 7)  # above S3's 5 MiB multipart minimum
        await store.put("config", b"")
        await store.put("data/00/big", big)
        assert await store.get("config") == b""
        assert await store.size("config") == 0
        assert await store.get("data/00/big") == big

    async def test_put_refuses_to_overwrite(self, store: ObjectStore):
        await store.put("snapshots/s1", b"first")
        with pytest.raises(ObjectExists):
            await store.put("snapshots/s1", b"second")
        assert await store.get("snapshots/s1") == b"first"

    async def test_concurrent_puts_of_one_key_store_exactly_one(self, store: ObjectStore):
        results = await asyncio.gather(
            *(store.put("index/race", bytes([i]) * 1000) for i in range(8)), return_exceptions=True
        )
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        assert all(isinstance(r, ObjectExists) for r in results if r is not None)
        assert await store.get("index/race") == bytes([winners[0]]) * 1000

    async def test_ranges(self, store: ObjectStore):
        await store.put("data/r/range", bytes(range(256)))
        assert await store.get("data/r/range", 10, 5) == bytes(range(10, 15))
        assert await store.get("data/r/range", 250) == bytes(range(250, 256))
        assert await store.get("data/r/range", 0, 3) == b"\x00\x01\x02"
        assert await store.get("data/r/range", length=2) == b"\x00\x01"
        assert await store.get("data/r/range", 254, 100) == b"\xfe\xff"  # cut at the end
        assert await store.get("data/r/range", 256, 10) == b""
        assert await store.get("data/r/range", 255, 0) == b""

    async def test_missing_key(self, store: ObjectStore):
        with pytest.raises(ObjectNotFound):
            await store.get("data/no/such")
        with pytest.raises(ObjectNotFound):
            await store.get("data/no/such", 0, 10)
        with pytest.raises(ObjectNotFound):
            await store.size("data/no/such")
        assert not await store.exists("data/no/such")

    async def test_a_prefix_of_keys_is_not_an_object(self, store: ObjectStore):
        await store.put("data/ab/x", b"1")
        assert not await store.exists("data/ab")
        with pytest.raises(ObjectNotFound):
            await store.get("data/ab")

    async def test_list_by_prefix(self, store: ObjectStore):
        keys = ["config", "keys/k1", "data/ab/ab1", "data/ab/ab2", "data/cd/cd1", "index/i1", "snapshots/s1"]
        for k in keys:
            await store.put(k, k.encode())
        assert await _keys(store) == sorted(keys)
        assert await _keys(store, "data/") == ["data/ab/ab1", "data/ab/ab2", "data/cd/cd1"]
        assert await _keys(store, "data/ab") == ["data/ab/ab1", "data/ab/ab2"]
        assert await _keys(store, "data/ab/ab2") == ["data/ab/ab2"]
        assert await _keys(store, "dat") == ["data/ab/ab1", "data/ab/ab2", "data/cd/cd1"]  # a string prefix
        assert await _keys(store, "snapshots/") == ["snapshots/s1"]
        assert await _keys(store, "nothing/") == []

    async def test_delete(self, store: ObjectStore):
        await store.put("index/gone", b"x")
        await store.delete("index/gone")
        assert not await store.exists("index/gone")
        assert await _keys(store, "index/") == []
        await store.delete("index/gone")  # deleting a missing key is not an error
        await store.put("index/gone", b"again")  # and the key can be written anew
        assert await store.get("index/gone") == b"again"

    @pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/", "back\\slash", "nul\0"])
    async def test_refuses_keys_that_could_escape(self, store: ObjectStore, key: str):
        with pytest.raises((InvalidKey, StoreError)):
            await store.put(key, b"x")
