"""Which parts of a chunk to write so that a restored file or disk stays sparse.

Zero runs are looked for in aligned 4 KiB blocks, the block size of common filesystems:
a shorter run could not become a hole anyway. The caller writes into a file that reads
zeros wherever nothing is written (new, or extended with ftruncate), so a skipped block
comes back as zeros and takes no disk space. pwrite_all writes what is left, a run of
buffers at a time.
"""

from __future__ import annotations

import os

BLOCK = 4096
_ZERO_BLOCK = bytes(BLOCK)
# Every zero block holds this run. Most chunks hold none, which a search finds at C speed;
# a short needle is searched fastest (preparing a 4 KiB one cost more than scanning a
# 32 KiB chunk block by block).
_ZERO_RUN = bytes(256)


def data_runs(data: bytes) -> list[tuple[int, int]]:
    """[start, end) of each run of data between all-zero blocks, in order. (Data shorter
    than _ZERO_RUN is one run even if all zeros: writing it costs at most one block.)"""
    n = len(data)
    if _ZERO_RUN not in data:
        return [(0, n)] if n else []
    runs = []
    start = None
    for pos in range(0, n, BLOCK):
        if data[pos:pos + BLOCK] == _ZERO_BLOCK[:min(BLOCK, n - pos)]:
            if start is not None:
                runs.append((start, pos))
                start = None
        elif start is None:
            start = pos
    if start is not None:
        runs.append((start, n))
    return runs


_PWRITEV = hasattr(os, "pwritev")
_IOV_MAX = 1024  # buffers per vectored write: POSIX's usual IOV_MAX


def pwrite_all(fd: int, buffers: list[memoryview], offset: int) -> None:
    """The buffers one after the other from offset, in one system call where the
    platform has vectored writes (a run of chunks), short writes resumed."""
    while buffers:
        if len(buffers) == 1 or not _PWRITEV:
            n = os.pwrite(fd, buffers[0], offset)
        else:
            n = os.pwritev(fd, buffers[:_IOV_MAX], offset)
        offset += n
        buffers = skip(buffers, n)


def skip(buffers: list[memoryview], n: int) -> list[memoryview]:
    """What is left to write of buffers after n bytes were written."""
    i = 0
    while i < len(buffers) and n >= len(buffers[i]):
        n -= len(buffers[i])
        i += 1
    rest = buffers[i:]
    if n:
        rest[0] = rest[0][n:]
    return rest
