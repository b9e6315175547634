"""A raw disk into a stream-optimized VMDK: what EC2 VM Import reads, written on every core.

The layout (VMware's "Virtual Disk Format 5.0", stream-optimized sparse extent), in order:

    sector 0      the sparse extent header: compressed grains, markers, gdOffset "at the end"
    sector 1..    the embedded descriptor (createType "streamOptimized")
    OVERHEAD      grains, each a grain marker (its LBA, its compressed size) and its
                  zlib stream, padded to a sector; all-zero grains are not written at all
                  after every 512 grains of the disk: a GT marker and that grain table
    then          a GD marker and the grain directory
    then          a footer marker and a copy of the header, now with the GD's offset
    last          the end-of-stream marker

A reader that reads sequentially (EC2) meets each grain before the table pointing to it;
one that seeks (qemu-img) reads the footer, 3 sectors from the end, first.

Speed: ``qemu-img`` deflates every grain at zlib's default level on one core (about 20
MiB/s here, 5 min for a 10 GiB disk). Here, grains are deflated by a thread pool (zlib and
``pread`` release the GIL), at level 1, and a grain whose sample does not compress (media,
archives: most of a business's bytes) is stored in deflate's uncompressed blocks, which
costs a copy instead of a search. The holes of the sparse raw file are never read.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains: what VMware and qemu write, and EC2 expects
GRAIN = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512  # so one grain table covers 32 MiB and fills 4 sectors
GT_SECTORS = GTES_PER_GT * 4 // SECTOR
DESCRIPTOR_SECTORS = 20  # room for the descriptor, as qemu reserves
# Header and descriptor padded to a whole grain, so grains start grain-aligned.
OVERHEAD_SECTORS = GRAIN_SECTORS
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF  # the header's gdOffset: "read the footer"
MAX_IMAGE_SECTORS = 0xFFFF_FFFF  # grain table entries are 32-bit sector numbers

MAGIC = 0x564D444B  # "KDMV" on disk
VERSION = 3  # the stream-optimized version of the sparse extent
FLAG_NEWLINE_TEST = 1 << 0  # the header carries the \n, ' ', \r\n bytes to detect mangling
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1

MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

# One task of the pool: 16 grains (1 MiB) read with one pread; a GT's 512 grains are a
# whole number of them, so a task never spans two grain tables.
GRAINS_PER_TASK = 16
# Tasks in flight: enough to keep both cores busy while the writer waits on the oldest,
# few enough that memory stays at a few MiB whatever the disk's size.
WINDOW = 8
WORKERS = 2
# Level 1: deflate's fastest; the text on a disk still shrinks to a fifth or so, and higher
# levels cost several times the CPU for a few % more.
LEVEL = 1
# A grain is stored, not compressed, when this much of its start compresses to more than
# INCOMPRESSIBLE of itself. Deflating random bytes is deflate's slowest case (~20 MiB/s
# here), so trying the sample (~50 µs, mostly zlib's setup) is a small price: text shrinks
# to about a quarter even in 2 KiB, random bytes not at all.
SAMPLE = 2048
INCOMPRESSIBLE = 0.9

_HEADER = struct.Struct("<IIIQQQQIQQQB4sH")  # the 79 meaningful bytes of the 512
_GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size; the data follows at once
_META_MARKER = struct.Struct("<QII")  # sectors of metadata that follow, 0, type
_ZERO_GRAIN = bytes(GRAIN)
_ZERO_SECTOR = bytes(SECTOR)


class VmdkError(Exception):
    """The raw disk cannot be turned into a VMDK; the message says why, in plain words."""


class Cancelled(Exception):
    """The caller set ``stop``: nothing is left behind."""


@dataclass(frozen=True)
class Written:
    virtual_bytes: int
    image_bytes: int
    grains: int  # grains written (not all-zero)
    stored_grains: int  # of them, written uncompressed (deflate's stored blocks)


def _sectors(n: int) -> int:
    return -(-n // SECTOR)


def _pad(blob: bytes) -> bytes:
    return blob + bytes(-len(blob) % SECTOR)


def header(capacity_sectors: int, gd_offset: int) -> bytes:
    fields = _HEADER.pack(
        MAGIC, VERSION, FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity_sectors, GRAIN_SECTORS, 1, DESCRIPTOR_SECTORS, GTES_PER_GT,
        0,  # no redundant grain directory in a stream-optimized extent
        gd_offset, OVERHEAD_SECTORS,
        0,  # closed cleanly
        b"\n \r\n", COMPRESS_DEFLATE)
    return fields + bytes(SECTOR - len(fields))


def geometry(capacity_sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors) of an IDE disk: 16 heads, 63 sectors a track, cylinders
    capped at 16383, as virtual BIOSes and qemu have it."""
    heads, track = 16, 63
    return min(capacity_sectors // (heads * track), 16383), heads, track


def descriptor(capacity_sectors: int, extent_name: str) -> bytes:
    cylinders, heads, track = geometry(capacity_sectors)
    text = "\n".join((
        "# Disk DescriptorFile",
        "version=1",
        f"CID={secrets.randbits(32):08x}",
        "parentCID=ffffffff",
        'createType="streamOptimized"',
        "",
        "# Extent description",
        f'RW {capacity_sectors} SPARSE "{extent_name}"',
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        # Hardware version 4 and an IDE adapter: what every importer (EC2 among them)
        # accepts; the importer picks the real controller itself.
        'ddb.virtualHWVersion = "4"',
        f'ddb.geometry.cylinders = "{cylinders}"',
        f'ddb.geometry.heads = "{heads}"',
        f'ddb.geometry.sectors = "{track}"',
        'ddb.adapterType = "ide"',
        'ddb.toolsVersion = "2147483647"',
        "")).encode("ascii")
    if len(text) > DESCRIPTOR_SECTORS * SECTOR:
        raise VmdkError("the VMDK descriptor does not fit its sectors")  # a name too long
    return text + bytes(DESCRIPTOR_SECTORS * SECTOR - len(text))


def _meta_marker(sectors: int, kind: int) -> bytes:
    marker = _META_MARKER.pack(sectors, 0, kind)
    return marker + bytes(SECTOR - len(marker))


# --- which grains hold data --------------------------------------------------------------


def data_runs(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(first grain, grain count) of the file's data, in order, in runs of at most
    GRAINS_PER_TASK grains aligned to GRAINS_PER_TASK, from SEEK_DATA/SEEK_HOLE: holes
    are never read. A filesystem that cannot tell holes gives the whole file."""
    last = -1  # the last grain handed out, so runs never overlap
    for start, end in _data_extents(fd, size):
        first = max(start // GRAIN, last + 1)
        stop = -(-end // GRAIN)  # grains [first, stop)
        while first < stop:
            task_end = min(stop, (first // GRAINS_PER_TASK + 1) * GRAINS_PER_TASK)
            yield first, task_end - first
            last, first = task_end - 1, task_end


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after offset
                return
            yield offset, size  # no hole support: everything is data
            return
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as e:
            raise VmdkError(f"cannot read the raw disk's layout: {e.strerror}") from None
        yield start, end
        offset = end


# --- one task of the pool: grains read and deflated --------------------------------------


@dataclass
class _Packed:
    first_grain: int
    grains: list[tuple[int, int]]  # (grain, its marker's sector within blob)
    blob: bytes  # markers and data, sector-aligned, in grain order
    stored: int
    read_bytes: int


def _deflate(grain: bytes) -> tuple[bytes, bool]:
    """The grain's zlib stream, and whether it was stored rather than compressed."""
    if len(zlib.compress(grain[:SAMPLE], LEVEL)) > SAMPLE * INCOMPRESSIBLE:
        return zlib.compress(grain, 0), True
    packed = zlib.compress(grain, LEVEL)
    if len(packed) >= GRAIN:  # the sample misled: storing is smaller
        return zlib.compress(grain, 0), True
    return packed, False


def _pack(fd: int, size: int, first: int, count: int) -> _Packed:
    offset = first * GRAIN
    length = min(count * GRAIN, size - offset)
    try:
        data = os.pread(fd, length, offset)
    except OSError as e:
        raise VmdkError(f"cannot read the raw disk at byte {offset}: {e.strerror}") from None
    if len(data) != length:
        raise VmdkError(f"the raw disk ended at byte {offset + len(data)}, before its size "
                        f"({size} bytes): it changed while being converted")
    pieces: list[bytes] = []
    grains: list[tuple[int, int]] = []
    sector = stored = 0
    for i in range(count):
        grain = data[i * GRAIN:(i + 1) * GRAIN]
        if len(grain) < GRAIN:  # the disk's end: a grain always inflates to its full size
            grain += bytes(GRAIN - len(grain))
        if grain == _ZERO_GRAIN:
            continue
        packed, was_stored = _deflate(grain)
        stored += was_stored
        piece = _pad(_GRAIN_MARKER.pack((first + i) * GRAIN_SECTORS, len(packed)) + packed)
        grains.append((first + i, sector))
        pieces.append(piece)
        sector += len(piece) // SECTOR
    return _Packed(first, grains, b"".join(pieces), stored, length)


# --- the writer ----------------------------------------------------------------------------


class _Tables:
    """The grain tables and directory, filled as grains are written, each table written
    once the stream has passed its 32 MiB of the disk."""

    def __init__(self, grain_count: int) -> None:
        self.table_count = -(-grain_count // GTES_PER_GT)
        self.directory = [0] * self.table_count
        self.current: list[int] = [0] * GTES_PER_GT
        self.next_table = 0  # the first table not yet written

    def written_before(self, table: int, out: _Output) -> None:
        """Writes every table before ``table`` (empty ones too: readers need no holes in
        the directory)."""
        while self.next_table < min(table, self.table_count):
            out.write(_meta_marker(GT_SECTORS, MARKER_GT))
            self.directory[self.next_table] = out.sector
            out.write(struct.pack(f"<{GTES_PER_GT}I", *self.current))
            self.current = [0] * GTES_PER_GT
            self.next_table += 1


class _Output:
    def __init__(self, file) -> None:
        self.file = file
        self.sector = 0

    def write(self, blob: bytes) -> None:
        try:
            self.file.write(blob)
        except OSError as e:  # a full scratch disk, most likely
            raise VmdkError(f"cannot write the VMDK: {e.strerror}") from None
        self.sector += len(blob) // SECTOR
        if self.sector > MAX_IMAGE_SECTORS:
            raise VmdkError("the VMDK would pass 2 TiB, which its tables cannot address; "
                            "choose the VHD format")


def write_stream_optimized(source: Path, dest: Path,
                           progress: Callable[[int, int], None] | None = None,
                           stop: threading.Event | None = None,
                           workers: int = WORKERS) -> Written:
    """``source`` (a raw disk, sparse or not) into ``dest``, a stream-optimized VMDK of
    the same virtual size (rounded up to a sector), synced to disk before returning.
    ``progress(done, total)`` counts the bytes of data read. Setting ``stop`` ends it with
    Cancelled. A failure removes ``dest``."""
    try:
        if not stat.S_ISREG(os.stat(source).st_mode):
            raise VmdkError(f"the raw disk {source.name} is not a file")
        fd = os.open(source, os.O_RDONLY)
    except OSError as e:
        raise VmdkError(f"cannot open the raw disk {source.name}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise VmdkError(f"the raw disk {source.name} is empty")
        try:
            try:
                with open(dest, "wb") as f:
                    written = _write(fd, size, f, dest.name, progress, stop, workers)
                    f.flush()
                    os.fsync(f.fileno())  # the task moves on and the raw disk is deleted
            except OSError as e:
                raise VmdkError(f"cannot write the VMDK {dest.name}: {e.strerror}") from None
            return written
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def _write(fd: int, size: int, f, name: str, progress, stop, workers: int) -> Written:
    capacity = _sectors(size)
    grain_count = -(-capacity // GRAIN_SECTORS)
    runs = list(data_runs(fd, size))
    total = sum(min(count * GRAIN, size - first * GRAIN) for first, count in runs)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    out = _Output(f)
    out.write(header(capacity, GD_AT_END))
    out.write(descriptor(capacity, name))
    out.write(bytes((OVERHEAD_SECTORS - out.sector) * SECTOR))
    tables = _Tables(grain_count)
    done = grains = stored = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="vmdk") as pool:
        pending: deque[Future[_Packed]] = deque()
        upcoming = iter(runs)
        try:
            while True:
                while len(pending) < WINDOW and (run := next(upcoming, None)) is not None:
                    pending.append(pool.submit(_pack, fd, size, *run))
                if not pending:
                    break
                if stop is not None and stop.is_set():
                    raise Cancelled()
                packed = pending.popleft().result()
                table = packed.first_grain // GTES_PER_GT
                tables.written_before(table, out)
                for grain, sector in packed.grains:
                    tables.current[grain % GTES_PER_GT] = out.sector + sector
                out.write(packed.blob)
                done += packed.read_bytes
                grains += len(packed.grains)
                stored += packed.stored
                if progress is not None:
                    progress(done, total)
        finally:
            for future in pending:
                future.cancel()
    tables.written_before(tables.table_count, out)

    directory_sectors = _sectors(tables.table_count * 4)
    out.write(_meta_marker(directory_sectors, MARKER_GD))
    gd_offset = out.sector
    out.write(_pad(struct.pack(f"<{tables.table_count}I", *tables.directory)))
    out.write(_meta_marker(1, MARKER_FOOTER))
    out.write(header(capacity, gd_offset))
    out.write(_ZERO_SECTOR)  # end of stream: a marker of all zeros
    return Written(capacity * SECTOR, out.sector * SECTOR, grains, stored)
