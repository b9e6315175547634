"""Reading many blobs at once, pack by pack: the read path of restore and image assembly.

Reading blob by blob costs one request per blob (~1 MiB); from an object store that is a
round trip each, and the request count, not the bandwidth, sets the pace. The reader

1. plans: looks every wanted blob up in the index and groups them into byte ranges of
   their packs, merging neighbours when the gap between them is at most ``max_gap`` bytes
   (fetching a few unwanted bytes is cheaper than another request), up to ``max_range``
   bytes per range;
2. fetches those ranges ahead, at most ``concurrency`` requests at once and at most
   ``memory`` bytes fetched but not yet handed over (a range larger than that is still
   fetched, alone), and hands out each blob's sealed bytes in plan order.

Two ways to ask: ``plan_by_pack`` then ``read`` (a restore: every wanted blob once, grouped
by pack whatever order they were asked in, handed out pack by pack) and ``read_in_order``
(image assembly: every position in the order given, so the caller can checkpoint "the
first N are done"; planned by pack within windows of the list). A restore takes the
ranges of a plan whole (``read_ranges``) and opens their blobs in its worker threads: one
step of the event loop per range instead of one per blob.

Nothing is decrypted here: the caller opens each blob with ``pack.open_blob``. A missing
pack or a failed request does not stop the stream: each blob it held comes out with the
error (MissingBlob, MissingPack, a StoreError) in place of its bytes, so the caller can
name the file it damages. A blob cut short (a truncated pack) comes out short, and
``open_blob`` reports it as corrupt with its pack and offset.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from .constants import MiB
from .errors import FormatError, MissingBlob, MissingPack, ObjectNotFound
from .crypto import MasterKey
from .index import BlobLocation
from .pack import open_blob
from .repository import Repository, pack_key

# Unwanted bytes worth fetching to save a request: at ~100 MiB/s and ~10-30 ms a request,
# 1 MiB costs about what a request does.
MAX_GAP = 1 * MiB
# One request fetches at most max_range (a few per pack), and the reader holds at most
# memory bytes fetched but not yet handed over, which is most of a restore's memory above
# the interpreter's: both from the store's read_budget (store.py), large ranges for a
# remote store, whose requests cost latency, small ones for local files. Four in flight.
CONCURRENCY = 4
# read_in_order: stored bytes planned together (two windows may be held at once).
WINDOW = 32 * MiB


@dataclass(frozen=True, slots=True)
class Blob:
    """One wanted blob as handed out: ``sealed`` is its stored bytes, or ``error`` why
    they could not be read (exactly one of the two is set)."""

    position: int  # in_order: its index in the list given; by_pack: its first index
    id: bytes
    location: BlobLocation | None
    sealed: bytes | None
    error: FormatError | None

    def open(self, key: MasterKey, dictionaries=None) -> bytes:
        """The verified plaintext (``pack.open_blob``), or the FormatError why there is none.
        A dictionary not loaded yet raises DictionaryNeeded (``Dictionaries.in_thread``)."""
        if self.error is not None:
            raise self.error
        assert self.location is not None and self.sealed is not None
        return open_blob(key, self.location.entry(self.id), self.sealed,
                         pack_id=self.location.pack_id, dictionaries=dictionaries)


@dataclass
class PackRange:
    pack_id: str
    start: int
    end: int  # exclusive
    # (position, blob id, location) of each blob inside, in offset order
    blobs: list[tuple[int, bytes, BlobLocation]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Plan:
    ranges: list[PackRange]
    missing: list[tuple[int, bytes]]  # (position, blob id) of blobs no index knows

    def missing_blobs(self) -> list[Blob]:
        return [Blob(position, blob_id, None, None, MissingBlob(blob_id.hex())) for position, blob_id in self.missing]


@dataclass(frozen=True, eq=False, slots=True)
class Fetched:
    """One planned range as read: its bytes, or the error why they could not be read."""

    range: PackRange
    data: bytes | memoryview | None  # a view: of a buffer its reader reuses (blocking_fetch)
    error: FormatError | None

    def blobs(self, start: int = 0, stop: int | None = None, *, copy: bool = True) -> Iterator[Blob]:
        """The range's blobs [start:stop]. copy=False hands out views of the range's
        bytes (no copy, but each keeps the whole range alive)."""
        data = self.data if copy or self.data is None else memoryview(self.data)
        for position, blob_id, location in self.range.blobs[start:stop]:
            if data is None:
                yield Blob(position, blob_id, location, None, self.error)
            else:
                begin = location.offset - self.range.start
                sealed = data[begin:begin + location.length]
                if copy and isinstance(sealed, memoryview):
                    sealed = bytes(sealed)
                yield Blob(position, blob_id, location, sealed, None)


class _Fill:
    """One window of read_in_order being read: what has arrived so far."""

    def __init__(self) -> None:
        self.found: dict[bytes, Blob] = {}
        self.arrived = asyncio.Event()
        self.done = False
        self.error: Exception | None = None
        self.task: asyncio.Future = None  # type: ignore[assignment]

    async def wait(self) -> None:
        if self.error is not None:
            raise self.error
        if self.done:
            raise AssertionError("a planned blob never arrived")
        await self.arrived.wait()
        self.arrived.clear()


class PackReader:
    def __init__(self, repo: Repository, *, max_gap: int = MAX_GAP, max_range: int | None = None,
                 concurrency: int = CONCURRENCY, memory: int | None = None) -> None:
        budget_range, budget_memory = repo.store.read_budget
        max_range = budget_range if max_range is None else max_range
        memory = budget_memory if memory is None else memory
        if concurrency < 1 or memory < 1 or max_range < 1 or max_gap < 0:
            raise ValueError("concurrency, memory and max_range must be positive, max_gap not negative")
        self.repo = repo
        self.max_gap = max_gap
        self.max_range = max_range
        self.concurrency = concurrency
        self.memory = memory
        self.requests = 0  # ranged GETs made, for tests and benchmarks
        self.bytes_fetched = 0
        self._count_lock = threading.Lock()  # blocking_fetch counts from worker threads too

    # --- planning ---------------------------------------------------------------------

    def plan_by_pack(self, blob_ids: Iterable[bytes]) -> Plan:
        """Each distinct blob once; packs in the order their first blob was asked for."""
        per_pack: dict[str, list[tuple[int, bytes, BlobLocation]]] = {}
        missing: list[tuple[int, bytes]] = []
        first: dict[bytes, int] = {}  # each blob at its first position
        for position, blob_id in enumerate(blob_ids):
            first.setdefault(blob_id, position)
        found = self.repo.index.lookup_many(first)
        for blob_id, position in first.items():
            location = found.get(blob_id)
            if location is None:
                missing.append((position, blob_id))
            else:
                per_pack.setdefault(location.pack_id, []).append((position, blob_id, location))
        ranges: list[PackRange] = []
        for pack_id, blobs in per_pack.items():
            blobs.sort(key=lambda b: b[2].offset)
            ranges.extend(self._merge(pack_id, blobs))
        return Plan(ranges, missing)

    def _fits(self, current: PackRange, location: BlobLocation) -> bool:
        start = min(current.start, location.offset)
        end = max(current.end, location.offset + location.length)
        # the new blob must sit right after (or among) what the range covers, with a small gap
        near = current.start - self.max_gap <= location.offset <= current.end + self.max_gap
        return near and end - start <= self.max_range

    def _merge(self, pack_id: str, blobs: list[tuple[int, bytes, BlobLocation]]) -> list[PackRange]:
        ranges: list[PackRange] = []
        for position, blob_id, location in blobs:
            if ranges and self._fits(ranges[-1], location):
                current = ranges[-1]
                current.end = max(current.end, location.offset + location.length)
                current.blobs.append((position, blob_id, location))
            else:
                ranges.append(PackRange(pack_id, location.offset, location.offset + location.length,
                                        [(position, blob_id, location)]))
        return ranges

    # --- reading ----------------------------------------------------------------------

    def read(self, plan: Plan) -> AsyncIterator[Blob]:
        """The plan's blobs, in plan order (blobs no index knows first, for by_pack).
        Close the iterator (``contextlib.aclosing``) if you stop early: that cancels the
        requests still running."""
        return self._stream(plan)

    async def _stream(self, plan: Plan) -> AsyncIterator[Blob]:
        for blob in plan.missing_blobs():
            yield blob
        async with aclosing(self.read_ranges(plan)) as ranges:
            async for fetched in ranges:
                for blob in fetched.blobs():
                    yield blob
                del fetched  # not kept while the next range is awaited

    async def read_ranges(self, plan: Plan) -> AsyncIterator[Fetched]:
        """The plan's ranges as read, in plan order, whole: for a caller that hands each
        one to a worker instead of taking its blobs one by one on the event loop (and its
        blobs no index knows, ``plan.missing``, are its own to report). The memory bound
        counts a range until the caller asks for the next one: what it keeps beyond that
        is its own to bound. Close the iterator if you stop early."""
        pending = deque(plan.ranges)
        running: deque[tuple[PackRange, asyncio.Task]] = deque()
        held = 0  # bytes of the ranges running or handed out but not yet passed on
        try:
            while pending or running:
                # Start requests while there is room; the head one always starts, so a
                # range larger than the budget is read alone rather than never.
                while pending and len(running) < self.concurrency and (
                        not running or held + pending[0].length <= self.memory):
                    r = pending.popleft()
                    held += r.length
                    running.append((r, asyncio.ensure_future(self._fetch(r))))
                r, task = running.popleft()
                try:
                    fetched = Fetched(r, await task, None)
                except FormatError as e:
                    fetched = Fetched(r, None, e)
                yield fetched
                held -= r.length
                del fetched  # not kept alive while the next range is awaited
        finally:
            for _, task in running:
                task.cancel()
            if running:
                await asyncio.gather(*(t for _, t in running), return_exceptions=True)

    async def read_in_order(self, blob_ids: Sequence[bytes], *, window: int = WINDOW) -> AsyncIterator[Blob]:
        """Every position of ``blob_ids`` in the order given (``position`` is its index).

        A backup's parallel workers interleave a file's or a disk's chunks inside a pack,
        so neighbours in the list are not always neighbours in the pack: the list is read
        in windows of about ``window`` stored bytes, each planned by pack. A blob is handed
        out as soon as it and every position before it have arrived (so progress shows
        while a window is read), and the next window is read once this one has arrived:
        at most two windows are held."""
        # In a thread: a whole disk's chunks are looked up (millions, on disk for the
        # recovery worker), which would stall the event loop for seconds.
        windows = await asyncio.to_thread(self._windows, blob_ids, window)
        fills: list[_Fill] = []
        try:
            for i, positions in enumerate(windows):
                if i == 0:
                    fills.append(self._start_fill(positions))
                fill = fills[i]
                for position, blob_id in positions:
                    while blob_id not in fill.found:
                        await fill.wait()
                    if fill.done and len(fills) == i + 1 and i + 1 < len(windows):
                        fills.append(self._start_fill(windows[i + 1]))
                    b = fill.found[blob_id]
                    yield Blob(position, blob_id, b.location, b.sealed, b.error)
                if len(fills) == i + 1 and i + 1 < len(windows):
                    fills.append(self._start_fill(windows[i + 1]))
                fills[i] = None  # type: ignore[call-overload]  # let the window's bytes go
        finally:
            tasks = [f.task for f in fills if f is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_fill(self, positions: list[tuple[int, bytes]]) -> _Fill:
        fill = _Fill()
        fill.task = asyncio.ensure_future(self._fill(fill, positions))
        return fill

    async def _fill(self, fill: _Fill, positions: list[tuple[int, bytes]]) -> None:
        try:
            plan = self.plan_by_pack(blob_id for _, blob_id in positions)
            async with aclosing(self._stream(plan)) as blobs:
                async for b in blobs:
                    fill.found[b.id] = b
                    fill.arrived.set()
        except Exception as e:  # the reader's own failure (not a blob's): the consumer raises it
            fill.error = e
        finally:
            fill.done = True
            fill.arrived.set()

    def _windows(self, blob_ids: Sequence[bytes], window: int) -> list[list[tuple[int, bytes]]]:
        windows: list[list[tuple[int, bytes]]] = []
        current: list[tuple[int, bytes]] = []
        size = 0
        found = self.repo.index.lookup_many(blob_ids)
        for position, blob_id in enumerate(blob_ids):
            location = found.get(blob_id)
            current.append((position, blob_id))
            size += location.length if location is not None else 0
            if size >= window:
                windows.append(current)
                current, size = [], 0
        if current:
            windows.append(current)
        return windows

    async def _fetch(self, r: PackRange) -> bytes:
        with self._count_lock:
            self.requests += 1
        try:
            data = await self.repo.store.get(pack_key(r.pack_id), r.start, r.length)
        except ObjectNotFound:
            raise MissingPack(r.pack_id) from None
        with self._count_lock:
            self.bytes_fetched += len(data)
        return data

    def blocking_fetch(self) -> Callable[..., Fetched] | None:
        """For a store whose reads are cheap enough to make in the thread that needs them
        (``ObjectStore.blocking_get``: a local folder): a blocking read of one planned
        range, ``fetch(r, into=None)``, which a worker thread calls instead of awaiting
        read_ranges. Saves two hand-offs per range (to a reading thread and back to the
        event loop), each a wait for the GIL. ``into``: a buffer the caller reuses for
        its ranges, which the data may then be a view of. The caller bounds how many
        ranges it holds. None for other stores."""
        get = self.repo.store.blocking_get()
        if get is None:
            return None

        def fetch(r: PackRange, into: bytearray | None = None) -> Fetched:
            with self._count_lock:
                self.requests += 1
            try:  # as _fetch: a missing pack is every blob's error, anything else the caller's
                data = get(pack_key(r.pack_id), r.start, r.length, into)
            except ObjectNotFound:
                return Fetched(r, None, MissingPack(r.pack_id))
            except FormatError as e:
                return Fetched(r, None, e)
            with self._count_lock:
                self.bytes_fetched += len(data)
            return Fetched(r, data, None)

        return fetch
