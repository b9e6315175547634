"""Cutting files and disk images into chunks.

Two chunkers, both streaming from a file descriptor (memory stays bounded by a few chunks
whatever the file's size) and both turning all-zero chunks into *holes* that are
recorded by length and never stored:

- FileChunker: content-defined chunks (FastCDC 2020, via pyfastcdc, whose inner loop runs
  without the GIL). A cut depends only on the bytes since the previous cut, so an
  insertion near the start of a file moves the cuts around it and leaves the rest alone.
  Sparse files are read extent by extent (SEEK_DATA/SEEK_HOLE): a multi-GiB file that is
  mostly hole costs only its data.
- ImageChunker: fixed-size chunks aligned to multiples of the chunk size, for disk images
  and block devices, where a filesystem rewrites blocks in place. Unallocated ranges of a
  sparse image file are skipped without reading.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pyfastcdc import FastCDC

from .constants import (
    CDC_AVG_SIZE,
    CDC_MAX_SIZE,
    CDC_MIN_SIZE,
    CDC_NORMALIZATION,
    FIXED_CHUNK_MAX,
    FIXED_CHUNK_MIN,
    FIXED_CHUNKS_PER_FILE,
    IMAGE_CHUNK_SIZE,
    SPARSE_HOLE_MIN,
)
from .errors import FormatError


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of a file: its bytes, or None when it is all zeros (a hole) or when it is
    a chunk already in the repository, given by its id (inplace_helper.py)."""

    offset: int
    length: int
    data: bytes | None
    id: bytes | None = None  # a stored chunk's id, its bytes not kept

    @property
    def is_hole(self) -> bool:
        return self.data is None and self.id is None


_ZEROS = bytes(max(CDC_MAX_SIZE, IMAGE_CHUNK_SIZE))


def is_zero(data: bytes) -> bool:
    n = len(data)
    if n == 0 or data[0] or data[-1]:  # nearly all real data stops here, for free
        return False
    if n <= len(_ZEROS):
        return data == _ZEROS[:n]  # a memcmp
    return data.count(0) == n


_SPARSE_AWARE = hasattr(os, "SEEK_DATA")  # not on Windows: there every byte is read
_HAS_PREAD = hasattr(os, "pread")  # not on Windows either
_HAS_PREADV = hasattr(os, "preadv")


def _next_data(fd: int, pos: int, size: int) -> int:
    """Offset of the first byte at or after pos that is not in a hole (size if none)."""
    if not _SPARSE_AWARE:
        return pos
    try:
        return os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data after pos
            return size
        return pos  # SEEK_DATA unsupported here (some filesystems, pipes): all data


def _next_hole(fd: int, pos: int, size: int) -> int:
    if not _SPARSE_AWARE:
        return size
    try:
        return min(os.lseek(fd, pos, os.SEEK_HOLE), size)
    except OSError:
        return size


def extents(fd: int, size: int, min_hole: int = SPARSE_HOLE_MIN) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) covering [0, size); holes shorter than min_hole count as data."""
    if size < min_hole:  # no hole that counts fits: not worth two lseeks (most files)
        if size > 0:
            yield 0, size, True
        return
    run_start = 0  # start of the data run being gathered (short holes included)
    pos = 0
    while pos < size:
        data_at = min(_next_data(fd, pos, size), size)  # [pos, data_at) is a hole
        if data_at - pos >= min_hole:
            if pos > run_start:
                yield run_start, pos, True
            yield pos, data_at, False
            run_start = data_at
        if data_at >= size:
            break
        hole_at = _next_hole(fd, data_at, size)
        pos = hole_at if hole_at > data_at else size
    if run_start < size:
        yield run_start, size, True


class _RangeReader:
    """A readinto() over [start, end) of a file, for pyfastcdc's stream mode."""

    def __init__(self, f: BinaryIO, start: int, end: int, on_read=None):
        self.f = f
        self.pos = start
        self.end = end
        self.on_read = on_read

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.end - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.pos)  # SEEK_DATA/SEEK_HOLE probes move the file position
        got = self.f.readinto(buf[:n]) or 0
        self.pos += got
        if self.on_read is not None and got:
            self.on_read(got)
        return got


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters; stored in the repository config so every client cuts alike."""

    min_size: int = CDC_MIN_SIZE
    avg_size: int = CDC_AVG_SIZE
    max_size: int = CDC_MAX_SIZE
    normalization: int = CDC_NORMALIZATION
    # Per-repository secret that permutes FastCDC's gear table, so chunk lengths cannot
    # be used to recognise a known file even by someone who sees them. In [0, 2**63).
    seed: int = 0

    def to_json(self) -> dict:
        return {
            "algorithm": "fastcdc-2020",
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "normalization": self.normalization,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, doc: dict) -> ChunkerParams:
        if doc.get("algorithm") != "fastcdc-2020":
            raise FormatError(f"unknown chunker {doc.get('algorithm')!r}")
        return cls(
            min_size=int(doc["min_size"]),
            avg_size=int(doc["avg_size"]),
            max_size=int(doc["max_size"]),
            normalization=int(doc["normalization"]),
            seed=int(doc["seed"]),
        )


class FileChunker:
    """Content-defined chunks of a regular file. One instance may serve many threads."""

    def __init__(self, params: ChunkerParams = ChunkerParams()):
        self.params = params
        if params.max_size > len(_ZEROS):
            raise FormatError("max chunk size larger than this reader supports")
        self._new_cdc()  # fail early on parameters pyfastcdc refuses

    def _new_cdc(self) -> FastCDC:
        # A FastCDC object must not be shared between threads; making one is cheap.
        p = self.params
        return FastCDC(
            p.avg_size, min_size=p.min_size, max_size=p.max_size, normalized_chunking=p.normalization, seed=p.seed
        )

    def pieces(self, f: BinaryIO, size: int, on_read=None) -> Iterator[Piece]:
        """Pieces of the first `size` bytes of an unbuffered binary file; fewer if it shrinks."""
        for start, end, is_data in extents(f.fileno(), size):
            if not is_data:
                yield Piece(start, end - start, None)
                continue
            if end - start <= self.params.max_size:
                # Most files: read at once and cut in memory. (pyfastcdc's stream mode
                # allocates a 2 * max_size buffer per stream, milliseconds per small file.)
                data = _read_full(f, end - start, start)
                if on_read is not None:
                    on_read(len(data))
                yield from self._cut(data, start)
                if len(data) < end - start:
                    return  # the file ended early
                continue
            reader = _RangeReader(f, start, end, on_read)
            for chunk in self._new_cdc().cut_stream(reader):
                data = bytes(chunk.data)  # the view is reused by the next chunk
                yield Piece(start + chunk.offset, chunk.length, None if is_zero(data) else data)
            if reader.pos < end:
                return  # the file ended early


    def _cut(self, data: bytes, start: int) -> Iterator[Piece]:
        if len(data) <= self.params.min_size:  # no cut point can exist: one chunk
            if data:
                yield Piece(start, len(data), None if is_zero(data) else data)
            return
        for chunk in self._new_cdc().cut_buf(data):
            piece = data if chunk.length == len(data) else bytes(chunk.data)
            yield Piece(start + chunk.offset, chunk.length, None if is_zero(piece) else piece)


@dataclass(frozen=True)
class FixedChunking:
    """How large the fixed chunks of a file of a given size are; stored in the repository
    config so every client cuts alike. The size is the smallest power of two that cuts
    the file into at most `per_file` chunks, within [min_size, max_size]: small chunks
    make scattered writes cheap, the cap keeps the chunk list of a huge disk bounded."""

    min_size: int = FIXED_CHUNK_MIN
    max_size: int = FIXED_CHUNK_MAX
    per_file: int = FIXED_CHUNKS_PER_FILE

    def __post_init__(self) -> None:
        for size in (self.min_size, self.max_size):
            if not 4096 <= size <= len(_ZEROS) or size & (size - 1):
                raise FormatError(f"fixed chunk size {size} must be a power of two from 4 KiB to {len(_ZEROS)}")
        if self.min_size > self.max_size or self.per_file < 1:
            raise FormatError(f"invalid fixed chunking {self.min_size}..{self.max_size}, {self.per_file} per file")

    def chunk_size(self, file_size: int) -> int:
        size = self.min_size
        while size < self.max_size and size * self.per_file < file_size:
            size *= 2
        return size

    def to_json(self) -> dict:
        return {"min_size": self.min_size, "max_size": self.max_size, "per_file": self.per_file}

    @classmethod
    def from_json(cls, doc: dict) -> FixedChunking:
        return cls(int(doc["min_size"]), int(doc["max_size"]), int(doc["per_file"]))


# Bytes read at once by ImageChunker (whole chunks of it).
_READ_BLOCK = 1024 * 1024


class ImageChunker:
    """Fixed, aligned chunks of a disk image, a block device, or a file rewritten in place."""

    def __init__(self, chunking: int | FixedChunking = IMAGE_CHUNK_SIZE):
        if isinstance(chunking, int):
            if not 4096 <= chunking <= len(_ZEROS) or chunking % 4096:
                raise FormatError(f"image chunk size {chunking} must be a multiple of 4 KiB up to {len(_ZEROS)}")
            chunking = _Constant(chunking)
        self.chunking = chunking

    def pieces(self, f: BinaryIO, size: int, on_read=None, start: int = 0) -> Iterator[Piece]:
        """start: a multiple of the chunk size (where an in-place helper stopped); the
        pieces from there are those of the whole file from there, a hole across start cut."""
        fd = f.fileno()
        chunk = self.chunking.chunk_size(size)
        if start % chunk:
            raise ValueError(f"start {start} is not a multiple of the chunk size {chunk}")
        # Whole chunks are read a block at a time and the holes looked up once per data
        # extent: a syscall or two per 32 KiB chunk was most of an incremental's reading.
        block = max(chunk, _READ_BLOCK - _READ_BLOCK % chunk)
        # Several chunks per block: read into one buffer kept for the whole file, as each
        # chunk is copied out of it anyway. A fresh 1 MiB buffer per block came from mmap
        # and cost 256 page faults and an munmap each (memory.py), 130,000 faults for the
        # benchmark's database and disk image. A block of one chunk is that chunk.
        reused = bytearray(block) if block > chunk else None
        pos = start
        data_end = 0  # [pos, data_end) is known to be allocated
        while pos < size:
            if pos >= data_end:
                data_at = _next_data(fd, pos, size)
                if data_at >= pos + min(chunk, size - pos):
                    # Whole chunks of unallocated space: skip them without reading.
                    hole_end = min(size, max(pos + chunk, data_at - data_at % chunk))
                    yield Piece(pos, hole_end - pos, None)
                    pos = hole_end
                    continue
                data_end = max(_next_hole(fd, data_at, size), pos + 1)
            # up to the end of the chunk where the allocated stretch ends
            limit = min(size, -(-data_end // chunk) * chunk)
            want = min(block, limit - pos)
            if reused is None:
                data = _read_full(f, want, pos)
                got = len(data)
            else:
                got = _read_into(f, memoryview(reused)[:want], pos)
                data = memoryview(reused)[:got]
            if on_read is not None and got:
                on_read(got)
            for at in range(0, got, chunk):
                piece = data if reused is None else bytes(data[at:at + chunk])
                yield Piece(pos + at, len(piece), None if is_zero(piece) else piece)
            pos += got
            if got < want:
                return  # the device or file ended early


@dataclass(frozen=True)
class _Constant:
    """One chunk size whatever the file's size (repositories made before fixed_chunks)."""

    size: int

    def chunk_size(self, file_size: int) -> int:
        return self.size


def _read_full(f: BinaryIO, n: int, pos: int) -> bytes:
    # pread where there is one: a system call, not a seek and a read (each a hand-off of
    # the GIL, ~8,000 small files in the benchmark's full backup)
    fd = f.fileno() if _HAS_PREAD else -1
    if fd < 0:
        f.seek(pos)
    data = (os.pread(fd, n, pos) if fd >= 0 else f.read(n)) or b""
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n:  # short reads happen on block devices and network filesystems
        more = (os.pread(fd, n - got, pos + got) if fd >= 0 else f.read(n - got)) or b""
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_into(f: BinaryIO, view: memoryview, pos: int) -> int:
    """Fill view from pos as far as the file goes; the number of bytes read. With preadv
    the file position is neither used nor moved: an in-place helper process reads the
    same open file (inplace_helper.py), and a seek of one would move the other's reads."""
    fd = f.fileno() if _HAS_PREADV else -1
    if fd < 0:
        f.seek(pos)
    got = 0
    while got < len(view):  # short reads happen on block devices and network filesystems
        n = os.preadv(fd, [view[got:]], pos + got) if fd >= 0 else f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def device_size(f: BinaryIO) -> int:
    """Size of a regular file or a block device (whose st_size is 0)."""
    return f.seek(0, os.SEEK_END)
