"""Keeping a backup's resident memory close to what it actually holds.

glibc serves allocations above its mmap threshold with mmap, and gives them back to the
system on free. By default the threshold rises (up to 32 MiB) each time such a block is
freed, so after the first chunks of a backup every later chunk buffer (1 MiB chunks,
compressed and sealed copies, read buffers) comes from the heap of one of the threads'
arenas, where freed space is rarely returned: measured on the 1 GiB benchmark data set,
peak RSS 168 MiB with the default, 108 MiB with the threshold fixed at 128 KiB, at no
measurable cost in speed (a page fault per 4 KiB of a big buffer either way).
"""

from __future__ import annotations

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
# glibc's initial value; setting it at all stops the dynamic raise.
MMAP_THRESHOLD = 128 * 1024

_done = False


def return_big_buffers_to_the_system() -> bool:
    """Fix glibc's mmap threshold for this process (once). False where it does not apply
    (not Linux, another C library)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The C library this process already has loaded: find_library would run ldconfig
        # in a subprocess (~50 ms of every backup and restore).
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others have no mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return _done
