"""What of a file is in the kernel's page cache, for the tests of reading ahead."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import pytest

from shared.format import readahead

needs_fadvise = pytest.mark.skipif(not readahead.AVAILABLE or not sys.platform.startswith("linux"),
                                   reason="posix_fadvise and mincore, as this test uses them, are Linux's")


def cached(path) -> bool:
    """Whether every page of the file is in the page cache."""
    return cached_pages(path) == -(-os.path.getsize(path) // mmap.PAGESIZE)


def cached_pages(path) -> int:
    """How many of the file's pages are in the page cache, asked with mincore(2) over a
    mapping that is never touched (a read would itself start the kernel's readahead)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vector.raw)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def drop_from_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
