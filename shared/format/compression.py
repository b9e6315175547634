"""Compression of blob and object plaintexts.

Every plaintext that gets sealed starts with one *encoding* byte that says how the rest
is stored: RAW (as is) or ZSTD (one zstd frame that records its content size). zstd is
tried on everything; its output is kept only where it saves at least
COMPRESSION_MIN_SAVING. Already compressed data (media, archives, encrypted files) fails
that test quickly, because zstd itself detects incompressible blocks.
"""

from __future__ import annotations

import threading

import zstandard

from .constants import COMPRESSION_MIN_SAVING, ZSTD_LEVEL
from .errors import FormatError

RAW = 0
ZSTD = 1

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


def encode(data: bytes) -> bytes:
    """The plaintext to seal: encoding byte followed by the (maybe compressed) data."""
    if len(data) >= 64:  # below that, a zstd frame header eats any saving
        packed = _compressor().compress(data)
        if len(packed) <= len(data) * (1 - COMPRESSION_MIN_SAVING):
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + data


def decode(plaintext: bytes, max_size: int) -> bytes:
    """Inverse of encode. max_size bounds the output (a hostile frame can't balloon)."""
    if not plaintext:
        raise FormatError("empty plaintext has no encoding byte")
    encoding = plaintext[0]
    body = memoryview(plaintext)[1:]
    if encoding == RAW:
        return bytes(body)
    if encoding == ZSTD:
        try:
            announced = zstandard.frame_content_size(body)
            if announced < 0 or announced > max_size:
                raise FormatError(f"zstd frame announces {announced} bytes, more than {max_size} expected")
            out = _decompressor().decompress(body, max_output_size=max_size)
        except zstandard.ZstdError as e:
            raise FormatError(f"zstd frame does not decode: {e}") from None
        if len(out) > max_size:
            raise FormatError("zstd frame larger than announced")
        return out
    raise FormatError(f"unknown encoding byte {encoding}")
