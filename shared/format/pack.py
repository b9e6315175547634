"""Packs: the immutable objects that hold the encrypted blobs.

A pack is written once and never changed:

    blob 0 | blob 1 | ... | blob n-1 | sealed header | trailer (8 bytes)

- each blob is ``nonce | AES-GCM(encoding byte + maybe-compressed plaintext) | tag``,
  sealed with associated data naming its type and id;
- the header lists the blobs (type, id, offset, length, raw length) in fixed 49-byte
  entries, and is itself sealed (so the bucket does not learn blob sizes or ids);
- the trailer is the sealed header's length (u32 little endian) and the magic ``RPK1``.

The pack id is the SHA-256 of the whole pack: a reader can check a downloaded pack
before opening anything, and the id is the same checksum S3 can verify on upload.

Blobs are read one at a time, by the offset and length the index gives; the header is
needed only to rebuild an index or to check a pack against it. This module works on
bytes only; the repository moves them to and from the object store.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from . import compression
from .constants import CHUNK_ID_SIZE, PACK_HEADER_ENTRY_SIZE, PACK_MAGIC, PACK_TRAILER_SIZE
from .crypto import AAD_PACK_HEADER, MasterKey, blob_aad
from .errors import BlobWithoutDictionary, CorruptBlob, DecryptionFailed, FormatError, MissingDictionary

_ENTRY = struct.Struct("<B32sQII")
assert _ENTRY.size == PACK_HEADER_ENTRY_SIZE
_TRAILER = struct.Struct("<I4s")
assert _TRAILER.size == PACK_TRAILER_SIZE

# Objects (index, snapshot, pack header) are bounded only to stop a corrupt length from
# allocating without limit.
MAX_OBJECT_SIZE = 1 << 32


class BlobType(IntEnum):
    DATA = 0  # a chunk of a file or image
    TREE = 1  # a directory listing (snapshot.Tree as JSON)

    @property
    def label(self) -> str:
        return "data" if self is BlobType.DATA else "tree"

    @classmethod
    def from_label(cls, label: str) -> BlobType:
        try:
            return {"data": cls.DATA, "tree": cls.TREE}[label]
        except KeyError:
            raise FormatError(f"unknown blob type {label!r}") from None


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: BlobType
    id: bytes
    offset: int
    length: int  # stored (sealed) length
    raw_length: int  # plaintext length before compression


def seal_blob(key: MasterKey, blob_type: BlobType, blob_id: bytes, data: bytes, dictionary=None) -> bytes:
    """dictionary: the DictionaryEncoder of the blob's file, if it has one."""
    return key.seal(compression.encode(data, dictionary), blob_aad(blob_type.label, blob_id))


def open_blob(
    key: MasterKey, entry: PackEntry, sealed: bytes, *, pack_id: str, dictionaries=None
) -> bytes:
    """Decrypt, decompress and verify one blob; any failure is a CorruptBlob naming its place.
    dictionaries: the repository's (Dictionaries), for blobs compressed with one; a
    dictionary it has not loaded raises DictionaryNeeded (Dictionaries.in_thread)."""

    def corrupt(reason: str) -> CorruptBlob:
        return CorruptBlob(pack_id, entry.offset, reason, entry.id.hex())

    if len(sealed) != entry.length:
        raise corrupt(f"got {len(sealed)} bytes, expected {entry.length}")
    try:
        plain = key.open(sealed, blob_aad(entry.type.label, entry.id))
        # only data blobs may name a dictionary (format.md §3)
        data = compression.decode(plain, entry.raw_length, dictionaries if entry.type is BlobType.DATA else None)
    except DecryptionFailed:
        raise corrupt("authentication failed") from None
    except MissingDictionary as e:
        raise BlobWithoutDictionary(pack_id, entry.offset, entry.id.hex(), e) from None
    except FormatError as e:
        raise corrupt(str(e)) from None
    if len(data) != entry.raw_length:
        raise corrupt(f"plaintext is {len(data)} bytes, expected {entry.raw_length}")
    if key.chunk_id(data) != entry.id:
        raise corrupt("content does not match its id")
    return data


@dataclass(frozen=True)
class SealedPack:
    id: str
    data: bytearray
    entries: list[PackEntry]

    @property
    def size(self) -> int:
        return len(self.data)


class PackWriter:
    """Gathers sealed blobs into one pack. Not thread-safe: the caller serialises add()."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        return len(self._buf)

    def __len__(self) -> int:
        return len(self.entries)

    def seal(self, key: MasterKey, blob_type: BlobType, blob_id: bytes, plaintext: bytes, raw_length: int) -> None:
        """Append a blob: what seal_blob would give, encrypted straight into the pack
        (MasterKey.seal_into). plaintext: compression.encode's output for the blob."""
        if len(blob_id) != CHUNK_ID_SIZE:
            raise ValueError("blob ids are 32 bytes")
        offset = len(self._buf)
        length = key.seal_into(plaintext, blob_aad(blob_type.label, blob_id), self._buf)
        self.entries.append(PackEntry(blob_type, blob_id, offset, length, raw_length))

    def finish(self, key: MasterKey) -> SealedPack:
        header = b"".join(_ENTRY.pack(e.type, e.id, e.offset, e.length, e.raw_length) for e in self.entries)
        sealed_header = key.seal(compression.encode(header), AAD_PACK_HEADER)
        buf = self._buf
        buf += sealed_header
        buf += _TRAILER.pack(len(sealed_header), PACK_MAGIC)
        self._buf = bytearray()
        return SealedPack(hashlib.sha256(buf).hexdigest(), buf, self.entries)


def header_length_from_trailer(trailer: bytes, pack_id: str, pack_size: int) -> int:
    if len(trailer) != PACK_TRAILER_SIZE:
        raise CorruptBlob(pack_id, pack_size, "pack is shorter than its trailer")
    length, magic = _TRAILER.unpack(trailer)
    if magic != PACK_MAGIC:
        raise CorruptBlob(pack_id, pack_size - PACK_TRAILER_SIZE, f"bad pack magic {magic!r}")
    if length + PACK_TRAILER_SIZE > pack_size:
        raise CorruptBlob(pack_id, pack_size - PACK_TRAILER_SIZE, "header length exceeds the pack")
    return length


def open_header(key: MasterKey, sealed_header: bytes, *, pack_id: str, header_offset: int) -> list[PackEntry]:
    try:
        header = compression.decode(key.open(sealed_header, AAD_PACK_HEADER), MAX_OBJECT_SIZE)
    except (DecryptionFailed, FormatError) as e:
        raise CorruptBlob(pack_id, header_offset, f"pack header: {e}") from None
    if len(header) % _ENTRY.size:
        raise CorruptBlob(pack_id, header_offset, "pack header length is not a whole number of entries")
    entries = []
    for t, blob_id, offset, length, raw_length in _ENTRY.iter_unpack(header):
        if t not in (BlobType.DATA, BlobType.TREE):
            raise CorruptBlob(pack_id, header_offset, f"unknown blob type {t} in header")
        if offset + length > header_offset:
            raise CorruptBlob(pack_id, header_offset, f"entry at {offset} runs into the header")
        entries.append(PackEntry(BlobType(t), blob_id, offset, length, raw_length))
    return entries


def read_pack(key: MasterKey, data: bytes, pack_id: str) -> list[PackEntry]:
    """The header of a whole downloaded pack, after checking the pack's hash."""
    if hashlib.sha256(data).hexdigest() != pack_id:
        raise CorruptBlob(pack_id, 0, "pack content does not match its id (sha256)")
    header_length = header_length_from_trailer(bytes(data[-PACK_TRAILER_SIZE:]), pack_id, len(data))
    header_offset = len(data) - PACK_TRAILER_SIZE - header_length
    return open_header(key, bytes(data[header_offset:-PACK_TRAILER_SIZE]), pack_id=pack_id, header_offset=header_offset)
