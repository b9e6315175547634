"""Telling the kernel which file data a backup is about to read.

A worker thread reads one file at a time, and a small file is too small for the
kernel's own readahead to overlap anything: on a cold page cache (the nightly backup)
each file costs a wait for the disk. So a worker opens all the files of a batch of small
files first and asks for each one's data (POSIX_FADV_WILLNEED, which starts the reads and
returns), then reads them one by one, by which time most are in memory; a medium-sized
file is asked for whole when it is opened. Measured on the benchmark's tree of 8,256
small and medium files, cold: the time spent waiting for the disk went from 0.9-1.0 s
to about 0.5 s, and the backup of those files from 5.6-6.2 s to 4.7-5.5 s
(docs/BENCHMARKS.md, "Small files, index lookups and copies").

Where posix_fadvise does not exist (Windows, macOS) this does nothing.
"""

from __future__ import annotations

import os

AVAILABLE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_WILLNEED")


def will_need(fd: int) -> None:
    """Start reading the whole file behind fd into the page cache. Best effort: the read
    that follows meets any error itself."""
    if AVAILABLE:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
