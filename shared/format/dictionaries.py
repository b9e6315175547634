"""Compression dictionaries (docs/format.md §3): zstd dictionaries trained on a file's own
chunks, so that the small fixed chunks of a database or a disk compress nearly as well
as whole megabytes would.

A dictionary is an object of its own, `dicts/<sha256 of the object>`, sealed like an
index file; a blob compressed with one names it (encoding ZSTD_DICT). Dictionaries are
never deleted: a chunk deduplicated into another file, or kept by a later backup, may
still need the one it was compressed with, and garbage collection cannot read blobs to
find out. A file keeps its dictionary from one incremental to the next (its node names
it); a full trains a new one, so a dictionary follows its file's content week by week.

Blobs are opened in worker threads, and the store is asynchronous. A reader's thread
never waits for a dictionary: `Dictionaries.get` raises DictionaryNeeded, and the caller
loads it on the event loop and opens the blob again (`Dictionaries.in_thread`). Waiting
would deadlock once every thread of the default executor waited for a fetch that needs
one of them (stores read files in threads). Only the backup's own worker pools, which the
store never uses, wait for the loop (`get_from_worker`, `add_from_worker`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import concurrent.futures
import functools
import os
import threading

import zstandard

from .chunker import is_zero
from .constants import (
    DICTIONARIES_KEPT,
    DICTIONARIES_PREFIX,
    DICTIONARY_MAX_RATIO,
    DICTIONARY_SAMPLES,
    DICTIONARY_SIZE,
    DICTIONARY_TRAINING,
    MAX_DICTIONARY_SIZE,
    ZSTD_LEVEL,
)
from .crypto import AAD_DICTIONARY
from .dictionary import Dictionary
from .errors import FormatError, MissingDictionary, ObjectNotFound, StoreError

_FETCH_ATTEMPTS = 3


class DictionaryNeeded(Exception):
    """A blob names a dictionary that is not loaded: load it on the event loop and open
    the blob again. Not a FormatError: nothing is known to be wrong with the blob."""

    def __init__(self, dictionary_id: bytes):
        super().__init__(f"compression dictionary {dictionary_id.hex()} is not loaded")
        self.id = dictionary_id


def dictionary_key(dictionary_id: bytes) -> str:
    return DICTIONARIES_PREFIX + dictionary_id.hex()


class Dictionaries:
    """A repository's dictionaries: stored once, loaded when first needed, the last
    DICTIONARIES_KEPT kept (more while pinned: a caller that loaded some for a piece of
    work keeps them until the work is done, so retrying it always gets further). Safe to
    use from any thread."""

    def __init__(self, repo) -> None:
        self.repo = repo
        self._kept: collections.OrderedDict[bytes, Dictionary] = collections.OrderedDict()
        self._pinned: collections.Counter[bytes] = collections.Counter()
        self._lock = threading.Lock()
        self._loading: dict[bytes, asyncio.Future] = {}  # on the loop: one fetch per id
        self._failed: dict[bytes, FormatError] = {}  # why a dictionary could not be loaded
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # made by Repository.open or init, on the loop
            self._loop = asyncio.get_running_loop()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that the backup's workers store and fetch dictionaries through."""
        self._loop = loop

    async def add(self, data: bytes) -> Dictionary:
        """Store a new dictionary (a new object, even if an equal one exists)."""
        self._loop = asyncio.get_running_loop()
        object_id = await self.repo._put_object(DICTIONARIES_PREFIX, data, AAD_DICTIONARY)
        dictionary = Dictionary(bytes.fromhex(object_id), data)
        self._keep(dictionary)
        return dictionary

    async def load(self, dictionary_id: bytes) -> Dictionary:
        self._loop = asyncio.get_running_loop()
        with self._lock:
            found = self._kept.get(dictionary_id)
        if found is not None:
            return found
        future = self._loading.get(dictionary_id)
        if future is None:
            future = self._loading[dictionary_id] = asyncio.ensure_future(self._fetch(dictionary_id))
            future.add_done_callback(lambda _: self._loading.pop(dictionary_id, None))
        return await asyncio.shield(future)

    async def _fetch(self, dictionary_id: bytes) -> Dictionary:
        key = dictionary_key(dictionary_id)
        try:
            try:
                data = await self._get(key)
            except ObjectNotFound:
                raise MissingDictionary(dictionary_id, key) from None
            if len(data) > MAX_DICTIONARY_SIZE:
                raise FormatError(f"compression dictionary {dictionary_id.hex()} is {len(data)} bytes, "
                                  f"more than {MAX_DICTIONARY_SIZE}")
            dictionary = Dictionary(dictionary_id, data)
        except FormatError as e:
            self._failed[dictionary_id] = e  # every blob that needs it is reported with this
            raise
        self._keep(dictionary)
        return dictionary

    async def _get(self, key: str) -> bytes:
        """The opened object; a store error is tried again twice before it counts, since
        every blob that needs the dictionary is then reported damaged."""
        attempt = 1
        while True:
            try:
                return await self.repo._get_object(key, AAD_DICTIONARY)  # checks the name, then opens
            except ObjectNotFound:
                raise
            except StoreError:
                if attempt == _FETCH_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)
                attempt += 1

    def _keep(self, dictionary: Dictionary) -> None:
        with self._lock:
            self._kept[dictionary.id] = dictionary
            self._kept.move_to_end(dictionary.id)
            unpinned = [i for i in self._kept if not self._pinned[i]]
            for old in unpinned[: max(0, len(self._kept) - DICTIONARIES_KEPT)]:
                del self._kept[old]

    def pin(self, dictionary_ids) -> None:
        with self._lock:
            self._pinned.update(dictionary_ids)

    def unpin(self, dictionary_ids) -> None:
        with self._lock:
            self._pinned.subtract(dictionary_ids)
            self._pinned += collections.Counter()  # drops counts at zero

    async def load_pinned(self, dictionary_id: bytes) -> None:
        """Load a dictionary a blob needs and pin it (unpin() when the blob is done); if it
        can't be loaded, get() raises why from now on."""
        self.pin([dictionary_id])
        await self.load_or_note(dictionary_id)

    async def in_thread(self, fn, *args, executor=None):
        """fn(*args) in a thread; each time it needs a dictionary that is not loaded, load
        it here and run fn again. fn must be safe to run again (it opens, never writes)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args)
        pinned: list[bytes] = []
        try:
            while True:
                try:
                    return await loop.run_in_executor(executor, call)
                except DictionaryNeeded as need:
                    if need.id in pinned:  # pinned and loaded: get() can't say it isn't
                        raise AssertionError(f"dictionary {need.id.hex()} needed again") from None
                    pinned.append(need.id)
                    await self.load_pinned(need.id)
        finally:
            self.unpin(pinned)

    async def load_or_note(self, dictionary_id: bytes) -> None:
        """Load a dictionary a blob needs; if it can't be, get() raises why from now on."""
        try:
            await self.load(dictionary_id)
        except FormatError:
            pass  # noted in _failed

    # --- from any thread ---

    def get(self, dictionary_id: bytes) -> Dictionary:
        """The dictionary if it is loaded; else DictionaryNeeded (or why it can't be loaded)."""
        with self._lock:
            found = self._kept.get(dictionary_id)
            if found is not None:
                self._kept.move_to_end(dictionary_id)
                return found
            failed = self._failed.get(dictionary_id)
        if failed is not None:
            # One object for every blob that needs it: raised afresh, or its traceback
            # would grow with every raise and keep each blob's frames (and bytes) alive.
            raise failed.with_traceback(None)
        raise DictionaryNeeded(dictionary_id)

    # --- from the backup's worker threads (never from the default executor, see above) ---

    # stop: set when the backup is being stopped; the loop may then be waiting for this
    # very thread to end, so the worker gives up instead of waiting for the loop.

    def get_from_worker(self, dictionary_id: bytes, stop: threading.Event) -> Dictionary:
        try:
            return self.get(dictionary_id)
        except DictionaryNeeded:
            return self._on_loop(self.load(dictionary_id), stop)

    def add_from_worker(self, data: bytes, stop: threading.Event) -> Dictionary:
        return self._on_loop(self.add(data), stop)

    def _on_loop(self, coroutine, stop: threading.Event):
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is not None:
            coroutine.close()
            raise RuntimeError("dictionaries are fetched from worker threads of a running event loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    raise FormatError("the backup is stopping") from None


def read_samples(fd: int, size: int, chunk_size: int, count: int = DICTIONARY_SAMPLES) -> list[bytes]:
    """Up to `count` chunks spread evenly over the file (all-zero ones left out): what a
    dictionary for it is trained on."""
    chunks = -(-size // chunk_size)
    step = max(1, chunks // count)
    samples = []
    for i in range(0, chunks, step):
        data = os.pread(fd, chunk_size, i * chunk_size)
        if data and not is_zero(data):
            samples.append(data)
        if len(samples) == count:
            break
    return samples


def train(samples: list[bytes]) -> bytes | None:
    """A dictionary for data like the samples, or None where one would not pay: too few
    samples for zstd to train on, or data that does not compress (encrypted, media)."""
    try:
        trained = zstandard.train_dictionary(DICTIONARY_SIZE, samples, level=ZSTD_LEVEL, **DICTIONARY_TRAINING)
    except zstandard.ZstdError:
        return None  # too few or too small samples
    data = trained.as_bytes()
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=trained)
    packed = sum(len(compressor.compress(s)) for s in samples)
    if packed > DICTIONARY_MAX_RATIO * sum(map(len, samples)):
        return None
    return data
