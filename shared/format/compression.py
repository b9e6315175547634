"""Compression of blob and object plaintexts.

Every plaintext that gets sealed starts with one *encoding* byte that says how the rest
is stored: RAW (as is), ZSTD (one zstd frame that records its content size) or ZSTD_DICT
(the 32-byte id of a dictionary, then a frame compressed with it; dictionaries.py). zstd
is tried on everything; its output is kept only where it saves at least
COMPRESSION_MIN_SAVING. Already compressed data (media, archives, encrypted files) fails
that test quickly, because zstd itself detects incompressible blocks.
"""

from __future__ import annotations

import threading

import zstandard

from .constants import COMPRESSION_MIN_SAVING, DICTIONARY_ID_SIZE, ZSTD_LEVEL
from .errors import FormatError

RAW = 0
ZSTD = 1
ZSTD_DICT = 2

_local = threading.local()  # zstd contexts are not thread-safe; one per thread


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes, dictionary=None) -> bytes:
    """The plaintext to seal: encoding byte followed by the (maybe compressed) data.
    dictionary: a DictionaryEncoder for this data's file, or None."""
    if len(data) >= 64:  # below that, a zstd frame header eats any saving
        if dictionary is None:
            head, packed = bytes((ZSTD,)), _compressor().compress(data)
        else:
            head, packed = bytes((ZSTD_DICT,)) + dictionary.id, dictionary.compress(data)
        if len(head) + len(packed) <= len(data) * (1 - COMPRESSION_MIN_SAVING):
            return head + packed
    return bytes((RAW,)) + data


def decode(plaintext: bytes, max_size: int, dictionaries=None) -> bytes:
    """Inverse of encode. max_size bounds the output (a hostile frame can't balloon).
    dictionaries: where ZSTD_DICT finds its dictionary (a Dictionaries); objects have none."""
    if not plaintext:
        raise FormatError("empty plaintext has no encoding byte")
    encoding = plaintext[0]
    body = memoryview(plaintext)[1:]
    if encoding == RAW:
        return bytes(body)
    if encoding == ZSTD:
        return _unzstd(_decompressor(), body, max_size)
    if encoding == ZSTD_DICT:
        if dictionaries is None:
            raise FormatError("compressed with a dictionary, which this kind of object never is")
        if len(body) < DICTIONARY_ID_SIZE:
            raise FormatError("dictionary id cut short")
        dictionary = dictionaries.get(bytes(body[:DICTIONARY_ID_SIZE]))
        return _unzstd(dictionary.decompressor(), body[DICTIONARY_ID_SIZE:], max_size)
    raise FormatError(f"unknown encoding byte {encoding}")


def _unzstd(decompressor: zstandard.ZstdDecompressor, frame: memoryview, max_size: int) -> bytes:
    try:
        announced = zstandard.frame_content_size(frame)
        if announced < 0 or announced > max_size:
            raise FormatError(f"zstd frame announces {announced} bytes, more than {max_size} expected")
        out = decompressor.decompress(frame, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise FormatError(f"zstd frame does not decode: {e}") from None
    if len(out) > max_size:
        raise FormatError("zstd frame larger than announced")
    return out
