"""The repository: where each object lives, and the rules for writing them.

Layout under the store's root (docs/format.md has the byte formats)::

    config                  sealed JSON: repository id, chunker parameters (written last at init)
    keys/<sha256>           key slots (plain JSON holding the wrapped master key)
    data/<2 hex>/<pack id>  packs (pack id = sha256 of the pack)
    index/<sha256>          sealed index files
    snapshots/<sha256>      sealed snapshots

Objects are named by the SHA-256 of their stored bytes, so a name can be checked against
its content, and every put creates a new key (the store is append-only).

Write order: packs, then the index files that describe them, then the snapshot that
references them. Each step starts only after the previous one is stored, so any
snapshot that exists is complete, and an index entry never points at a pack that was not
yet stored. A backup writes an index file after every pack it uploads: killed at any
moment, it leaves behind only packs whose index file was not written (at most the packs
in flight); the next backup loads the index and does not upload the rest again.
`recover_unindexed_packs` indexes even those from their own headers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable, Iterable, Iterator, Sequence, TypeVar

from . import compression
from .chunker import ChunkerParams, FileChunker, FixedChunking, ImageChunker
from .constants import (
    CONFIG_KEY,
    DATA_PREFIX,
    FORMAT_VERSION,
    IMAGE_CHUNK_SIZE,
    INDEX_PREFIX,
    KEYS_PREFIX,
    PACK_MAX_BLOBS,
    PACK_TARGET_SIZE,
    PACK_TRAILER_SIZE,
    SNAPSHOTS_PREFIX,
    UPLOADS_IN_FLIGHT,
)
from .crypto import (
    AAD_CONFIG,
    AAD_INDEX,
    AAD_SNAPSHOT,
    KmsUnwrap,
    KmsWrap,
    MasterKey,
    ScryptParams,
    encode_key_slot,
    new_kms_slot,
    new_passphrase_slot,
    open_kms_slot,
    open_passphrase_slot,
)
from .kdf import decode_key_slot
from .errors import (
    CorruptObject,
    DecryptionFailed,
    FormatError,
    KeyUnavailable,
    MissingBlob,
    MissingPack,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    WrongPassphrase,
)
from .diskindex import DiskIndex, IndexBusy, in_use
from .diskindex import remove as remove_index_files
from .index import BlobLocation, Index, IndexedPack, KeptPack, decode_index, encode_index
from .indexcache import IndexCache
from .pack import (
    MAX_OBJECT_SIZE,
    BlobType,
    PackWriter,
    SealedPack,
    header_length_from_trailer,
    open_blob,
    open_header,
)
from .dictionaries import Dictionaries
from .dictionary import DictionaryEncoder
from .snapshot import Node, Snapshot, Tree
from .store import ObjectStore

T = TypeVar("T")

# How many small objects (index files, snapshots, pack headers) are fetched at once.
_FETCH_CONCURRENCY = 8


def pack_key(pack_id: str) -> str:
    # Two hex digits of fan-out keep folders small on a local disk; S3 ignores it.
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def index_key(index_id: str) -> str:
    return INDEX_PREFIX + index_id


def snapshot_key(snapshot_id: str) -> str:
    return SNAPSHOTS_PREFIX + snapshot_id


def key_slot_key(slot_id: str) -> str:
    return KEYS_PREFIX + slot_id


def _object_id(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _utc_now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    created: str
    chunker: ChunkerParams
    image_chunk_size: int = IMAGE_CHUNK_SIZE
    # Fixed chunks sized by the file's size, for image sources and files rewritten in
    # place. None in repositories made before it existed: there image sources keep
    # image_chunk_size and every file of a folder is cut by FastCDC, as they always were.
    fixed_chunks: FixedChunking | None = None
    # Whether writers may compress with dictionaries (§3). False in repositories made
    # before them, so that the versions that made them can still read everything.
    dictionaries: bool = False

    @classmethod
    def new(cls) -> RepositoryConfig:
        # seed in [1, 2**63): pyfastcdc treats 0 as "no seed" and needs seed << 1 to fit 64 bits
        return cls(uuid.uuid4().hex, _utc_now_text(), ChunkerParams(seed=secrets.randbits(63) | 1),
                   fixed_chunks=FixedChunking(), dictionaries=True)

    def encode(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "id": self.id,
            "created": self.created,
            "chunker": self.chunker.to_json(),
            "image_chunk_size": self.image_chunk_size,
            "chunk_id": "blake3-keyed-256",
            "cipher": "aes-256-gcm",
            "compression": "zstd",
        }
        if self.fixed_chunks is not None:
            doc["fixed_chunks"] = self.fixed_chunks.to_json()
        if self.dictionaries:
            doc["dictionaries"] = True
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepositoryConfig:
        try:
            doc = json.loads(data)
            if doc.get("version") != FORMAT_VERSION:
                raise FormatError(f"unsupported repository version {doc.get('version')!r}")
            if (doc["chunk_id"], doc["cipher"], doc["compression"]) != ("blake3-keyed-256", "aes-256-gcm", "zstd"):
                raise FormatError("unknown algorithms in config")
            fixed = doc.get("fixed_chunks")
            return cls(
                str(doc["id"]),
                str(doc["created"]),
                ChunkerParams.from_json(doc["chunker"]),
                int(doc["image_chunk_size"]),
                FixedChunking.from_json(fixed) if fixed is not None else None,
                doc.get("dictionaries") is True,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"config does not parse: {e!r}") from None


class Repository:
    """An opened repository. Use init() or open(), not the constructor."""

    def __init__(
        self,
        store: ObjectStore,
        key: MasterKey,
        config: RepositoryConfig,
        *,
        pack_size: int = PACK_TARGET_SIZE,
        uploads_in_flight: int = UPLOADS_IN_FLIGHT,
        index_cache: IndexCache | None = None,
    ):
        self.store = store
        # Index files read before, kept decoded on this machine (the agent's state).
        self.index_cache = index_cache
        self.key = key
        self.config = config
        self.pack_size = pack_size
        self.uploads_in_flight = uploads_in_flight
        self.index: Index | DiskIndex = Index()
        # Why the index is in memory although the caller asked for it on disk (a run
        # cannot write the folder, another process has it, the disk filled up): the
        # caller says so; the run goes on.
        self.index_in_memory_because: str | None = None
        # Packs that index files name but the store no longer holds (deleted by retention's
        # garbage collection, docs/format.md §12): their entries are not trusted.
        self.gone_packs: set[str] = set()
        self.file_chunker = FileChunker(config.chunker)
        if config.fixed_chunks is not None:
            self.image_chunker = ImageChunker(config.fixed_chunks)
            # Files of a folder that are rewritten in place (databases, VM disks)
            self.in_place_chunker: ImageChunker | None = self.image_chunker
        else:
            self.image_chunker = ImageChunker(config.image_chunk_size)
            self.in_place_chunker = None
        self._loaded_index_files: set[str] = set()
        self.dictionaries = Dictionaries(self)

    # --- creating and opening ---------------------------------------------------------

    @classmethod
    async def init(
        cls,
        store: ObjectStore,
        passphrase: str,
        *,
        kdf: ScryptParams = ScryptParams(),
        kms: tuple[str, KmsWrap] | None = None,
        **options,
    ) -> Repository:
        if await store.exists(CONFIG_KEY):
            raise RepositoryExists("a repository already exists in this store")
        repo = cls(store, MasterKey.generate(), RepositoryConfig.new(), **options)
        await repo.add_passphrase_slot(passphrase, kdf)
        if kms is not None:
            await repo.add_kms_slot(*kms)
        # config last: a store with a config has its key slots
        await store.put(CONFIG_KEY, await asyncio.to_thread(repo._seal_object, repo.config.encode(), AAD_CONFIG))
        return repo

    @classmethod
    async def open(
        cls,
        store: ObjectStore,
        passphrase: str | None = None,
        *,
        kms_unwrap: KmsUnwrap | None = None,
        load_index: bool = True,
        **options,
    ) -> Repository:
        """Open with the passphrase, or (passphrase None) with a KMS slot via kms_unwrap."""
        try:
            sealed_config = await store.get(CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotFound("no repository in this store (no config object)") from None
        slots = []
        async for k in store.list(KEYS_PREFIX):
            try:
                slots.append(decode_key_slot(await store.get(k)))
            except FormatError:
                continue  # a damaged or future-version slot must not lock out the others
        key = await _open_any_slot(slots, passphrase, kms_unwrap)
        try:
            plain = compression.decode(key.open(sealed_config, AAD_CONFIG), MAX_OBJECT_SIZE)
        except DecryptionFailed:
            raise CorruptObject(CONFIG_KEY, "does not open with the key from the key slot") from None
        repo = cls(store, key, RepositoryConfig.decode(plain), **options)
        if load_index:
            await repo.load_index()
        return repo

    async def add_passphrase_slot(self, passphrase: str, kdf: ScryptParams = ScryptParams()) -> str:
        slot = await asyncio.to_thread(new_passphrase_slot, self.key, passphrase, kdf)
        return await self._put_key_slot(slot)

    async def add_kms_slot(self, kms_key_id: str, wrap: KmsWrap) -> str:
        slot = await asyncio.to_thread(new_kms_slot, self.key, kms_key_id, wrap)
        return await self._put_key_slot(slot)

    async def _put_key_slot(self, slot: dict) -> str:
        slot["created"] = _utc_now_text()
        data = encode_key_slot(slot)
        slot_id = hashlib.sha256(data).hexdigest()
        await self.store.put(key_slot_key(slot_id), data)
        return slot_id

    # --- sealed objects ---------------------------------------------------------------

    def _seal_object(self, plain: bytes, aad: bytes) -> bytes:
        return self.key.seal(compression.encode(plain), aad)

    def _open_object(self, key: str, sealed: bytes, aad: bytes, check_name: bool = True) -> bytes:
        if check_name and hashlib.sha256(sealed).hexdigest() != _object_id(key):
            raise CorruptObject(key, "content does not match its name (sha256)")
        try:
            return compression.decode(self.key.open(sealed, aad), MAX_OBJECT_SIZE)
        except (DecryptionFailed, FormatError) as e:
            raise CorruptObject(key, str(e)) from None

    async def _put_object(self, prefix: str, plain: bytes, aad: bytes) -> str:
        sealed = await asyncio.to_thread(self._seal_object, plain, aad)
        object_id = hashlib.sha256(sealed).hexdigest()
        await self.store.put(prefix + object_id, sealed)
        return object_id

    async def _get_object(self, key: str, aad: bytes) -> bytes:
        sealed = await self.store.get(key)
        return await asyncio.to_thread(self._open_object, key, sealed, aad)

    # --- index ------------------------------------------------------------------------

    def use_index_cache(self, cache: IndexCache) -> None:
        """Keep the index files read on this machine and the index itself on its disk
        (the agent: bounded memory however large the repository). Before load_index."""
        self.index_cache = cache
        self._index_on_disk(cache.open_index)

    def keep_index_in(self, path: str | os.PathLike) -> None:
        """Keep the index in SQLite at ``path`` instead of memory, started empty: a server
        reading one backup of a repository of any size, with no cache between runs.
        Before load_index; close() lets go of it, and the file may then be deleted."""

        def fresh() -> DiskIndex:
            # What a run before this one left is deleted, not emptied row by row; one
            # still in use (or that cannot be looked at) is left alone, and the open
            # below fails into an index in memory (_index_on_disk).
            if not in_use(path):
                remove_index_files(path)
            return DiskIndex(path)

        self._index_on_disk(fresh)

    def _index_on_disk(self, open_index: Callable[[], DiskIndex]) -> None:
        try:
            self.index = open_index()
        except IndexBusy:
            self.index_in_memory_because = "another process has the index on disk open"
        except (OSError, sqlite3.Error) as e:
            # A folder this run cannot write, a full disk: the index on disk only bounds
            # memory, so this run keeps it there rather than failing.
            self.index_in_memory_because = f"the index on disk cannot be used: {e}"

    def _index_to_memory(self, error: sqlite3.OperationalError) -> None:
        """The index on disk failed while loading (a disk that filled up): start over in
        memory."""
        self.close()
        self.index = Index()
        self._loaded_index_files.clear()
        self.gone_packs.clear()
        self.index_in_memory_because = f"the index on disk failed: {error}"

    def close(self) -> None:
        """Let go of what the index keeps open on disk (nothing for one in memory)."""
        if isinstance(self.index, DiskIndex):
            self.index.close()

    async def load_index(self, *, strict: bool = True) -> list[FormatError]:
        """Read index files not read yet. Strict: raise on a bad one; else return the problems.

        Entries of packs the store no longer holds are left out (and their packs noted in
        ``gone_packs``): garbage collection deletes packs but cannot rewrite the sealed
        index, and a chunk stored again in a newer pack must be found there. A pack lost
        by accident still shows: the chunks only it held are in no index, which restore and
        check report with the file named.

        An index on disk that fails during the first load (SQLite's errors: a disk that
        filled up) is dropped and the index loaded again in memory, as if it could not
        have been opened; later, its failure is the caller's (a backup has added to it)."""
        first = not self._loaded_index_files
        try:
            return await self._load_index_files(strict)
        except sqlite3.OperationalError as e:  # full, I/O error, read-only: not a bug of ours
            if not first or not isinstance(self.index, DiskIndex):
                raise
            # In a thread: closing waits for an add still running in another one.
            await asyncio.to_thread(self._index_to_memory, e)
        return await self._load_index_files(strict)

    async def _load_index_files(self, strict: bool) -> list[FormatError]:
        listed = [k async for k in self.store.list(INDEX_PREFIX)]
        present: set[str] | None = None
        if self.index_cache is not None and not self._loaded_index_files:
            listed_ids = {_object_id(k) for k in listed}
            # Kept index files the repository no longer has (collected) go too.
            await asyncio.to_thread(self.index_cache.keep_only, listed_ids)
            if isinstance(self.index, DiskIndex):
                present = set(await self.list_packs())
                files, gone = await asyncio.to_thread(self.index.settle, listed_ids, present)
                self._loaded_index_files.update(files)
                self.gone_packs.update(gone)
        keys = [k for k in listed if _object_id(k) not in self._loaded_index_files]
        if present is None:
            present = set(await self.list_packs()) if keys else set()
        problems: list[FormatError] = []

        async def load(key: str) -> None:
            index_id = _object_id(key)
            packs: list[IndexedPack] | list[KeptPack] | None = None
            if self.index_cache is not None:
                packs = await asyncio.to_thread(self.index_cache.get, index_id)
            if packs is None:
                try:
                    packs = decode_index(await self._get_object(key, AAD_INDEX))
                except FormatError as e:
                    if strict:
                        raise
                    problems.append(e if isinstance(e, CorruptObject) else CorruptObject(key, str(e)))
                    return
                if self.index_cache is not None:
                    await asyncio.to_thread(self.index_cache.put, index_id, packs)
            await self._add_index_file(index_id, packs, present)

        await _bounded_gather([load(k) for k in keys], _FETCH_CONCURRENCY)
        return problems

    async def _add_index_file(self, index_id: str, packs: list[IndexedPack] | list[KeptPack],
                              present: set[str] | None) -> None:
        """An index file's entries into the index, but those of packs not ``present``."""
        live = [p for p in packs if present is None or p.id in present]
        gone = [p.id for p in packs if present is not None and p.id not in present]
        self.gone_packs.update(gone)
        # In a thread: the disk index writes, and the memory one may add many entries.
        await asyncio.to_thread(self.index.add_file, index_id, live, gone)
        self._loaded_index_files.add(index_id)

    async def write_index(self, packs: list[IndexedPack]) -> str:
        """Store an index file for packs just stored, and add them to the index."""
        index_id = await self._put_object(INDEX_PREFIX, encode_index(packs), AAD_INDEX)
        if self.index_cache is not None:  # the next run need not download its own
            await asyncio.to_thread(self.index_cache.put, index_id, packs)
        await self._add_index_file(index_id, packs, None)
        return index_id

    async def read_pack_header(self, pack_id: str) -> IndexedPack:
        """A pack's entries from its own header (two ranged reads: trailer, header)."""
        key = pack_key(pack_id)
        try:
            size = await self.store.size(key)
            trailer = await self.store.get(key, max(0, size - PACK_TRAILER_SIZE))
            length = header_length_from_trailer(trailer, pack_id, size)
            offset = size - PACK_TRAILER_SIZE - length
            sealed = await self.store.get(key, offset, length)
        except ObjectNotFound:
            raise MissingPack(pack_id) from None
        entries = await asyncio.to_thread(open_header, self.key, sealed, pack_id=pack_id, header_offset=offset)
        return IndexedPack(pack_id, size, entries)

    async def list_packs(self) -> list[str]:
        return [_object_id(k) async for k in self.store.list(DATA_PREFIX)]

    async def recover_unindexed_packs(self) -> tuple[list[str], list[FormatError]]:
        """Index packs that were stored but never indexed (a backup killed between the two).

        Lists every pack, so it costs a listing of data/; run it after an interrupted
        backup, not before every one. Returns (recovered pack ids, unreadable packs).
        """
        await self.load_index()
        candidates = [p for p in await self.list_packs() if not self.index.has_pack(p)]
        recovered: list[IndexedPack] = []
        problems: list[FormatError] = []

        async def one(pack_id: str) -> None:
            try:
                recovered.append(await self.read_pack_header(pack_id))
            except FormatError as e:
                problems.append(e)

        await _bounded_gather([one(p) for p in candidates], _FETCH_CONCURRENCY)
        if recovered:
            await self.write_index(recovered)
        return [p.id for p in recovered], problems

    # --- blobs ------------------------------------------------------------------------

    async def fetch_sealed(self, blob_id: bytes) -> tuple[BlobLocation, bytes]:
        """A blob's sealed bytes and where they came from (MissingBlob, MissingPack);
        pack.open_blob turns them into verified plaintext."""
        loc = self.index.lookup(blob_id)
        if loc is None:
            raise MissingBlob(blob_id.hex())
        try:
            return loc, await self.store.get(pack_key(loc.pack_id), loc.offset, loc.length)
        except ObjectNotFound:
            raise MissingPack(loc.pack_id) from None

    async def read_blob(self, blob_id: bytes) -> bytes:
        """A blob's plaintext, verified against its id (CorruptBlob, MissingPack, MissingBlob)."""
        loc, sealed = await self.fetch_sealed(blob_id)
        return await self.dictionaries.in_thread(functools.partial(
            open_blob, self.key, loc.entry(blob_id), sealed, pack_id=loc.pack_id, dictionaries=self.dictionaries))

    async def load_tree(self, tree_id: bytes) -> Tree:
        loc = self.index.lookup(tree_id)
        if loc is not None and loc.type is not BlobType.TREE:
            raise FormatError(f"blob {tree_id.hex()} is not a tree")
        return Tree.decode(await self.read_blob(tree_id))

    def saver(self) -> BlobSaver:
        return BlobSaver(self)

    # --- snapshots --------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> str:
        """Store a snapshot. Call only after the saver that wrote its blobs was flushed."""
        return await self._put_object(SNAPSHOTS_PREFIX, snapshot.encode(), AAD_SNAPSHOT)

    async def load_snapshot(self, snapshot_id: str) -> Snapshot:
        try:
            return Snapshot.decode(await self._get_object(snapshot_key(snapshot_id), AAD_SNAPSHOT))
        except ObjectNotFound:
            raise SnapshotNotFound(f"no snapshot {snapshot_id}") from None

    async def list_snapshots(self) -> list[tuple[str, Snapshot]]:
        """Every snapshot, oldest first."""
        ids = [_object_id(k) async for k in self.store.list(SNAPSHOTS_PREFIX)]
        found: list[tuple[str, Snapshot]] = []

        async def one(snapshot_id: str) -> None:
            found.append((snapshot_id, await self.load_snapshot(snapshot_id)))

        await _bounded_gather([one(i) for i in ids], _FETCH_CONCURRENCY)
        found.sort(key=lambda item: (item[1].time, item[0]))
        return found

    async def find_snapshot(self, ref: str) -> str:
        """A snapshot id from a unique prefix of it, or "latest"."""
        ids = [_object_id(k) async for k in self.store.list(SNAPSHOTS_PREFIX)]
        if ref == "latest":
            snapshots = await self.list_snapshots()
            if not snapshots:
                raise SnapshotNotFound("the repository has no snapshots")
            return snapshots[-1][0]
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) != 1:
            raise SnapshotNotFound(f"{len(matches)} snapshots match {ref!r}")
        return matches[0]


async def _open_any_slot(slots: list[dict], passphrase: str | None, kms_unwrap: KmsUnwrap | None) -> MasterKey:
    if passphrase is not None:
        candidates = [s for s in slots if s["kind"] == "passphrase"]
        if not candidates:
            raise KeyUnavailable("the repository has no passphrase key slot")
        damaged: FormatError | None = None
        wrong = False
        for slot in candidates:
            try:
                return await asyncio.to_thread(open_passphrase_slot, slot, passphrase)
            except WrongPassphrase:
                wrong = True
            except FormatError as e:  # a damaged slot must not lock out the others
                damaged = damaged or e
        if damaged is not None and not wrong:
            raise damaged  # every passphrase slot is damaged: that, not the passphrase, is wrong
        raise WrongPassphrase()
    if kms_unwrap is not None:
        errors = []
        for slot in (s for s in slots if s["kind"] == "kms"):
            try:
                return await asyncio.to_thread(open_kms_slot, slot, kms_unwrap)
            except Exception as e:  # the caller's KMS client may raise anything
                errors.append(f"{slot.get('kms_key_id')}: {e}")
        raise KeyUnavailable("no kms key slot could be opened" + (": " + "; ".join(errors) if errors else ""))
    raise KeyUnavailable("neither a passphrase nor a KMS unwrap function was given")


async def _bounded_gather(coros: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """All of coros, at most ``limit`` at a time; on the first failure the others are
    cancelled and waited for, so none of them goes on behind the caller's back."""
    gate = asyncio.Semaphore(limit)

    async def run(c: Awaitable[T]) -> T:
        try:
            async with gate:
                return await c
        finally:
            close = getattr(c, "close", None)
            if close is not None:
                close()  # one cancelled before its turn was never started: no warning

    tasks = [asyncio.ensure_future(run(c)) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@dataclass
class SaverStats:
    new_blobs: dict[BlobType, int] = field(default_factory=lambda: {BlobType.DATA: 0, BlobType.TREE: 0})
    new_bytes: dict[BlobType, int] = field(default_factory=lambda: {BlobType.DATA: 0, BlobType.TREE: 0})
    packs: int = 0
    stored_bytes: int = 0  # bytes of the packs uploaded


class SaverStopped(Exception):
    """A save after BlobSaver.stop()."""


class BlobSaver:
    """Blobs in, packs out: deduplicates, seals, packs and uploads, with backpressure.

    save() runs in worker threads (it does CPU work and may block while uploads catch
    up); everything else runs on the event loop. Data and tree blobs go to separate
    packs, so a later metadata cache can fetch trees without data. One saver per
    repository at a time.
    """

    def __init__(self, repo: Repository):
        self.repo = repo
        self.stats = SaverStats()
        self._loop = asyncio.get_running_loop()
        repo.dictionaries.bind(self._loop)  # workers store and fetch dictionaries through it
        self._lock = threading.Lock()
        self._open = {t: PackWriter() for t in BlobType}
        self._pending: set[bytes] = set()  # in an open pack, or uploaded but not yet indexed
        self._indexed = 0  # packs moved from _pending to the index so far
        self._slots = threading.Semaphore(repo.uploads_in_flight)
        self._uploads: set[concurrent.futures.Future] = set()
        self._error: BaseException | None = None

    # --- worker threads ---

    def save(self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None,
             dictionary: DictionaryEncoder | None = None) -> tuple[bytes, bool]:
        """Store a blob unless the repository has it. Returns (id, whether it was new).
        dictionary: its file's, to compress it with (only where config.dictionaries)."""
        self._raise_if_failed()
        key = self.repo.key
        if blob_id is None:
            blob_id = key.chunk_id(data)
        # The index is asked outside the lock (on disk, a lookup takes microseconds that
        # the other workers would wait through); a pack indexed meanwhile moves its blobs
        # from _pending to the index, which the generation tells, and then it is asked again.
        generation = self._indexed
        if blob_id in self.repo.index:
            return blob_id, False
        return blob_id, self._store(blob_type, data, blob_id, dictionary, generation)

    def save_data_many(self, chunks: Sequence[tuple[bytes, bytes, DictionaryEncoder | None]]) -> None:
        """save() of many data blobs, each (data, id, dictionary), the index asked about all
        of them in one query (on disk each lookup alone is a query, and a hand-off of the
        GIL and the index's lock)."""
        for (data, blob_id, dictionary), generation in self._not_indexed(chunks, lambda chunk: chunk[1]):
            self._store(BlobType.DATA, data, blob_id, dictionary, generation)

    def save_encoded_many(self, blobs: Sequence[tuple[bytes, bytes, int]]) -> None:
        """Data blobs compressed elsewhere (an in-place helper), each (id, what
        compression.encode made of it, its length): stored unless the repository has them,
        the index asked about all at once."""
        for (blob_id, plaintext, raw_length), generation in self._not_indexed(blobs, lambda blob: blob[0]):
            if self._reserve(blob_id, generation):
                self._pack(BlobType.DATA, blob_id, plaintext, raw_length)

    def _not_indexed(self, items: Sequence[T], blob_id_of: Callable[[T], bytes]) -> Iterator[tuple[T, int]]:
        """The items whose blob the index lacks, asked in one query, each with the index's
        generation then (see save); raises once the saver has failed."""
        if not items:
            return
        self._raise_if_failed()
        generation = self._indexed
        present = self.repo.index.contains_many([blob_id_of(item) for item in items])
        for item in items:
            if blob_id_of(item) not in present:
                self._raise_if_failed()
                yield item, generation

    def _store(self, blob_type: BlobType, data: bytes, blob_id: bytes, dictionary: DictionaryEncoder | None,
               generation: int) -> bool:
        """Seal and pack a blob the index lacked at generation, unless it is pending or a
        pack indexed since holds it."""
        if not self._reserve(blob_id, generation):
            return False
        try:
            plaintext = compression.encode(data, dictionary)  # the costly part, outside the lock
        except BaseException:
            with self._lock:
                self._pending.discard(blob_id)
            raise
        self._pack(blob_type, blob_id, plaintext, len(data))
        return True

    def _reserve(self, blob_id: bytes, generation: int) -> bool:
        """Whether this thread stores the blob: not pending, nor in a pack indexed since."""
        with self._lock:
            if blob_id in self._pending or (generation != self._indexed and blob_id in self.repo.index):
                return False
            self._pending.add(blob_id)
            return True

    def _pack(self, blob_type: BlobType, blob_id: bytes, plaintext: bytes, raw_length: int) -> None:
        """A reserved blob sealed into the open pack, which goes out once full."""
        key = self.repo.key
        full = None
        with self._lock:
            writer = self._open[blob_type]
            try:  # encrypted straight into the pack (AES-GCM releases the GIL; ~8 GB/s here)
                writer.seal(key, blob_type, blob_id, plaintext, raw_length)
            except BaseException:
                self._pending.discard(blob_id)
                raise
            self.stats.new_blobs[blob_type] += 1
            self.stats.new_bytes[blob_type] += raw_length
            if writer.size >= self.repo.pack_size or len(writer) >= PACK_MAX_BLOBS:
                full = writer
                self._open[blob_type] = PackWriter()
        if full is not None:
            self._ship(full.finish(key))

    def reuse_tree(self, tree_id: bytes, nodes: list[Node]) -> None:
        """A tree the backup references again without saving it (an unchanged directory
        keeps its parent's tree): nothing to store. A saver that tracks what a backup
        references hears of it here, as it hears of saved trees in save()."""

    def in_flight(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Those of blob_ids saved by this saver whose pack is not indexed yet; its
        _on_indexed comes later for each of them."""
        with self._lock:
            return {b for b in blob_ids if b in self._pending}

    def _on_indexed(self, pack_id: str) -> None:
        """A pack this saver stored is in the index (under the saver's lock). For savers
        that track what a backup references."""

    def _ship(self, pack: SealedPack) -> None:
        self._slots.acquire()  # backpressure: wait while enough packs are uploading
        try:
            self._raise_if_failed()
            future = asyncio.run_coroutine_threadsafe(self._upload(pack), self._loop)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._uploads.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._uploads.discard(future)

    def stop(self) -> None:
        """The backup is abandoned: every save from now on raises, so the threads still
        reading files end at their next chunk, and those waiting for an upload slot wake
        up to raise too (each passes the slot on). Uploads under way go on (abort)."""
        if self._error is None:
            self._error = SaverStopped("the backup was stopped")
        self._slots.release()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # --- event loop ---

    async def _upload(self, pack: SealedPack, release_slot: bool = True) -> None:
        try:
            await self.repo.store.put(pack_key(pack.id), pack.data)
            indexed = IndexedPack(pack.id, pack.size, pack.entries)
            await self.repo.write_index([indexed])  # adds it to the index
            with self._lock:
                self._pending.difference_update(e.id for e in pack.entries)
                self._indexed += 1
                self._on_indexed(pack.id)
                self.stats.packs += 1
                self.stats.stored_bytes += pack.size
        except BaseException as e:
            if self._error is None:
                self._error = e
            raise
        finally:
            if release_slot:
                self._slots.release()

    async def save_async(self, blob_type: BlobType, data: bytes, executor=None) -> tuple[bytes, bool]:
        """save() from the event loop (it may block, so it runs in a thread)."""
        return await self._loop.run_in_executor(executor, self.save, blob_type, data, None)

    def save_tree(self, nodes: list[Node]) -> tuple[bytes, bool]:
        """Store a directory's tree (encoded here, in the worker thread)."""
        return self.save(BlobType.TREE, Tree(nodes).encode())

    async def save_tree_async(self, nodes: list[Node]) -> tuple[bytes, bool]:
        return await self._loop.run_in_executor(None, self.save_tree, nodes)

    async def flush(self) -> None:
        """Upload the open packs and wait until every pack and its index file is stored."""
        self._raise_if_failed()
        with self._lock:
            writers = [w for w in self._open.values() if len(w)]
            self._open = {t: PackWriter() for t in BlobType}
        for writer in writers:
            pack = await asyncio.to_thread(writer.finish, self.repo.key)
            await self._upload(pack, release_slot=False)
        await self._wait_uploads()
        self._raise_if_failed()

    async def abort(self) -> None:
        """After a failure: let uploads already under way finish (their blobs get indexed;
        their own failures are not raised). A cancel meanwhile (a second Ctrl-C) stops the
        wait, and the uploads with it, and is raised: it used to be swallowed, which turned
        the caller's cancel into the first failure."""
        await self._wait_uploads()

    async def _wait_uploads(self) -> None:
        while True:
            with self._lock:
                uploads = list(self._uploads)
            if not uploads:
                return
            await asyncio.gather(*(asyncio.wrap_future(f) for f in uploads), return_exceptions=True)
