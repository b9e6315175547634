"""One compression dictionary, loaded: its decompressors and its encoders. Light on purpose
(zstd and nothing else): the in-place helper process compresses with it
(inplace_helper.py). Storing, loading and training them: dictionaries.py."""

from __future__ import annotations

import threading

import zstandard

from .constants import DICTIONARY_ID_SIZE, ZSTD_LEVEL
from .errors import FormatError

_ZSTD_DICTIONARY_MAGIC = bytes.fromhex("37a430ec")  # zstd's format, little endian 0xEC30A437


class Dictionary:
    """One loaded dictionary. Decompressors are per thread (zstd contexts are not
    thread-safe); they go when the dictionary goes."""

    def __init__(self, dictionary_id: bytes, data: bytes):
        if len(dictionary_id) != DICTIONARY_ID_SIZE:
            raise FormatError("a dictionary id is 32 bytes")
        if data[:4] != _ZSTD_DICTIONARY_MAGIC:
            raise FormatError(f"dictionary {dictionary_id.hex()} is not a zstd dictionary")
        self.id = dictionary_id
        self.data = data
        try:
            self._zdict = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        except zstandard.ZstdError as e:
            raise FormatError(f"dictionary {dictionary_id.hex()} does not load: {e}") from None
        self._local = threading.local()

    def decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            try:
                d = self._local.d = zstandard.ZstdDecompressor(dict_data=self._zdict)
            except zstandard.ZstdError as e:
                raise FormatError(f"dictionary {self.id.hex()} does not load: {e}") from None
        return d

    def encoder(self, chunk_size: int) -> DictionaryEncoder:
        return DictionaryEncoder(self, chunk_size)


# zstd copies a dictionary's match tables (512 KiB at level 3) into its context for every
# chunk it is told is above 16 KiB, but uses them in place when the size is not given:
# ~12 % less CPU at 32 KiB, 2-7 % at 64 KiB, for the same or a smaller output (the
# benchmark's database and disk image, docs/BENCHMARKS.md); from 256 KiB on the copy is
# paid off and searching two tables costs more.
_ATTACH_UP_TO = 64 * 1024
_ZSTD_MAGIC = bytes.fromhex("28b52ffd")


class DictionaryEncoder:
    """Compresses the chunks of one file with a dictionary, on any thread. zstd's
    parameters are chosen for the file's chunk size and the dictionary's size."""

    def __init__(self, dictionary: Dictionary, chunk_size: int):
        self.id = dictionary.id
        self.dictionary = dictionary
        self._attach = chunk_size <= _ATTACH_UP_TO
        self._params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, source_size=chunk_size, dict_size=len(dictionary.data),
            write_content_size=1, write_dict_id=0)  # the blob names its dictionary itself
        self._zdict = zstandard.ZstdCompressionDict(dictionary.data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        self._zdict.precompute_compress(compression_params=self._params)  # once, shared by the threads
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(compression_params=self._params, dict_data=self._zdict)
        if self._attach:
            stream = c.compressobj(size=-1)  # size not given: the tables are used in place
            framed = _with_content_size(stream.compress(data) + stream.flush(), len(data))
            if framed is not None:
                return framed
        return c.compress(data)


def _with_content_size(frame: bytes, size: int) -> bytes | None:
    """The frame with its header rewritten to announce its content size, as every blob's
    frame does (compression.py): single-segment, the form zstd itself writes when told
    the size (matches reach back into the content and the dictionary, never further).
    None if the header is not the one
    zstd writes without a size (descriptor 0: no size, no checksum, no dictionary id; one
    window byte), or the size needs more than the 2-byte field, which this does not write."""
    if frame[:5] != _ZSTD_MAGIC + b"\0" or len(frame) < 6 or size >= 256 + 65536:
        return None
    if size < 256:
        header = bytes((0x20, size))
    else:  # the 2-byte field counts from 256
        header = bytes((0x60,)) + (size - 256).to_bytes(2, "little")
    return _ZSTD_MAGIC + header + frame[6:]
