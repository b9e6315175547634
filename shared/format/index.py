"""The index: which pack holds a blob, and where in it.

A backup writes one small index file after each pack it uploads (so a killed backup
loses at most the packs whose index file had not been written yet); opening a
repository reads all index files and merges them. Each file is an encrypted object
holding JSON::

    {"version": 1,
     "packs": [{"id": "<pack sha256 hex>", "size": <pack bytes>,
                "blobs": [["<blob id hex>", "data"|"tree", offset, length, raw_length], ...]}]}

Callers use an index only through lookup / contains / add_file / packs / has_pack, so
where it lives is the index's business: Index keeps it in memory (the services, restore,
check), diskindex.DiskIndex on the agent's disk (backups of huge repositories).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from array import array
from typing import Iterable, Iterator, Sequence

from .constants import CHUNK_ID_SIZE, FORMAT_VERSION
from .errors import FormatError
from .pack import BlobType, PackEntry


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    type: BlobType
    offset: int
    length: int
    raw_length: int

    def entry(self, blob_id: bytes) -> PackEntry:
        return PackEntry(self.type, blob_id, self.offset, self.length, self.raw_length)


@dataclass(frozen=True)
class IndexedPack:
    id: str
    size: int
    entries: list[PackEntry]


@dataclass(frozen=True)
class KeptPack:
    """A pack's entries in compact form (the agent's index cache, indexcache.py): its
    blob ids side by side, their locations in two arrays."""

    id: str
    size: int
    ids: bytes
    high: array  # (type << 40) | offset
    low: array  # (length << 32) | raw_length


class Index:
    """In-memory map of blob id to location: ~160 bytes per blob (the id, one int holding
    the location, the dict's slot), e.g. 160 MB for a million blobs; a tuple of five ints
    took ~260."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, int] = {}  # id -> _pack_location(...)
        # Index files are added from several threads at once (Repository.load_index):
        # a pack's number must be taken by one at a time.
        self._adding = threading.Lock()
        self._pack_ids: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._pack_sizes: dict[str, int] = {}

    def _number_of(self, pack_id: str, size: int) -> int:
        """The pack's number in locations, given on first sight."""
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self._pack_ids)
            self._pack_ids.append(pack_id)
            self._pack_sizes[pack_id] = size
        return number

    def add_pack(self, pack: IndexedPack) -> None:
        number = self._number_of(pack.id, pack.size)
        for e in pack.entries:
            # A blob stored twice (two hosts racing) stays where it was first seen.
            self._blobs.setdefault(e.id, _pack_location(number, int(e.type), e.offset, e.length,
                                                        e.raw_length))

    def add_kept(self, pack_id: str, size: int, ids: bytes, high, low) -> None:
        """A pack from the agent's index cache (indexcache.py): ``ids`` side by side,
        ``high`` = (type << 40) | offset and ``low`` = (length << 32) | raw_length per
        blob. The same as add_pack without an object per entry."""
        base = self._number_of(pack_id, size) << 106
        step = CHUNK_ID_SIZE
        kept = dict(zip([ids[at:at + step] for at in range(0, len(ids), step)],
                        [base | h << 64 | lo for h, lo in zip(high, low)]))
        # A blob stored twice stays where it was first seen (as add_pack): rare, so the
        # merge is done wholesale in C and the few seen before are put back.
        seen = {blob_id: self._blobs[blob_id] for blob_id in kept.keys() & self._blobs.keys()}
        self._blobs.update(kept)
        self._blobs.update(seen)

    def add_file(self, index_id: str, packs: Sequence[IndexedPack | KeptPack],
                 gone: Iterable[str] = ()) -> None:
        """An index file's packs that the store holds (``gone``: those it no longer
        does, which the repository tracks itself for this index)."""
        with self._adding:
            for p in packs:
                if isinstance(p, KeptPack):
                    self.add_kept(p.id, p.size, p.ids, p.high, p.low)
                else:
                    self.add_pack(p)

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        found = self._blobs.get(blob_id)
        if found is None:
            return None
        number, t, offset, length, raw_length = _unpack_location(found)
        return BlobLocation(self._pack_ids[number], BlobType(t), offset, length, raw_length)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def contains_many(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Those of blob_ids that are indexed (on disk, many in one query)."""
        return {b for b in blob_ids if b in self}

    def lookup_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """The location of each of blob_ids that is indexed: many lookups in one call (on
        disk, each lookup alone is a query)."""
        return {b: location for b in blob_ids if (location := self.lookup(b)) is not None}

    def __len__(self) -> int:
        return len(self._blobs)

    def packs(self) -> dict[str, int]:
        """Every indexed pack id with its size in bytes."""
        return dict(self._pack_sizes)

    def has_pack(self, pack_id: str) -> bool:
        return pack_id in self._pack_numbers

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        for blob_id in self._blobs:
            yield blob_id, self.lookup(blob_id)  # type: ignore[misc]


# A location packed into one int (one object instead of a tuple and its items): from the
# low bits, raw length and length (32 bits each: blobs are at most a few MiB), offset in the
# pack (40 bits: packs are tens of MiB), blob type (2 bits), pack number (the rest).
_U32 = (1 << 32) - 1
_U40 = (1 << 40) - 1


def _pack_location(number: int, blob_type: int, offset: int, length: int, raw_length: int) -> int:
    if not (0 <= offset <= _U40 and 0 <= length <= _U32 and 0 <= raw_length <= _U32
            and 0 <= blob_type <= 3):
        raise FormatError(f"blob location out of range: offset {offset}, length {length}, "
                          f"raw length {raw_length}")
    return ((((number << 2 | blob_type) << 40 | offset) << 32 | length) << 32) | raw_length


def _unpack_location(packed: int) -> tuple[int, int, int, int, int]:
    raw_length = packed & _U32
    length = (packed >> 32) & _U32
    offset = (packed >> 64) & _U40
    blob_type = (packed >> 104) & 3
    number = packed >> 106
    return number, blob_type, offset, length, raw_length


def encode_index(packs: Iterable[IndexedPack]) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "packs": [
            {
                "id": p.id,
                "size": p.size,
                "blobs": [[e.id.hex(), e.type.label, e.offset, e.length, e.raw_length] for e in p.entries],
            }
            for p in packs
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_index(data: bytes) -> list[IndexedPack]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise FormatError(f"unsupported index version {doc.get('version') if isinstance(doc, dict) else doc!r}")
        packs = []
        for p in doc["packs"]:
            entries = []
            for blob_id, label, offset, length, raw_length in p["blobs"]:
                raw_id = bytes.fromhex(blob_id)
                if len(raw_id) != CHUNK_ID_SIZE:
                    raise FormatError(f"blob id {blob_id!r} is not {CHUNK_ID_SIZE} bytes")
                entries.append(PackEntry(BlobType.from_label(label), raw_id, int(offset), int(length), int(raw_length)))
            packs.append(IndexedPack(str(p["id"]), int(p["size"]), entries))
        return packs
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"index does not parse: {e}") from None
