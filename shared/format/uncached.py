"""Writing a new file past the page cache (O_DIRECT), for the folder store's packs.

A backup writes hundreds of MiB of packs that nothing reads soon after: through the page
cache each byte is copied into a fresh cache page (and evicts something the machine was
using). With O_DIRECT the disk takes the bytes from our buffer instead. On the benchmark's
VM the buffered writes of a full backup's 507 MiB of packs cost 0.9-1.7 s of kernel time,
the direct ones under 0.1 s (docs/BENCHMARKS.md, "Packs written past the page cache").

O_DIRECT wants the buffer, the file offset and the length aligned to the device's logical
block: each slice is copied into a page-aligned buffer kept per thread, the last one padded
with zeros and the file truncated to its true length afterwards. Where the platform or the
filesystem refuses (Windows, macOS, tmpfs, a block size above ALIGN), the file is written
the usual way.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterator

# A multiple of every common logical block size (512 B, 4 KiB).
ALIGN = 4096
# Bytes copied into the aligned buffer and written at once: a syscall per MiB.
SLICE = 1024 * 1024
# Below this a buffered write is as cheap and small objects are many (trees, indexes).
MIN_SIZE = 1024 * 1024

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def write_new_file(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Create path (it must not exist) holding data, flushed to the disk (fsync)."""
    view = memoryview(data).cast("B")
    if _O_DIRECT and len(view) >= MIN_SIZE and _write_direct(path, view):
        return
    fd = os.open(path, _CREATE, 0o666)
    try:
        _write_all(fd, view)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_direct(path: str | os.PathLike, view: memoryview) -> bool:
    """False, with no file left behind, where O_DIRECT is refused."""
    try:
        fd = os.open(path, _CREATE | _O_DIRECT, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # Linux creates the file before it finds that the filesystem refuses O_DIRECT;
        # O_EXCL said nothing was there, so what is there now is that empty file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    done = False
    try:
        with _aligned_buffer() as buffer:
            if not _write_slices(fd, view, buffer):
                return False
        if len(view) % ALIGN:
            os.ftruncate(fd, len(view))  # the zeros that padded the last block
        os.fsync(fd)
        done = True
        return True
    finally:
        os.close(fd)
        if not done:
            os.unlink(path)


def _write_slices(fd: int, view: memoryview, buffer: mmap.mmap) -> bool:
    """False if the first write is refused (the filesystem's block is above ALIGN)."""
    for at in range(0, len(view), SLICE):
        part = view[at:at + SLICE]
        buffer[:len(part)] = part
        padded = -(-len(part) // ALIGN) * ALIGN
        if padded > len(part):
            buffer[len(part):padded] = bytes(padded - len(part))
        try:
            _write_all(fd, memoryview(buffer)[:padded])
        except OSError as e:
            if e.errno != errno.EINVAL or at:
                raise
            return False
    return True


@contextlib.contextmanager
def _aligned_buffer() -> Iterator[mmap.mmap]:
    # mmap memory starts on a page boundary. Buffers are kept, so that their pages are
    # faulted in once, and shared by whichever threads write: as many exist as writes
    # ever ran at once (the uploads in flight), not one per thread that ever wrote.
    with _spare_lock:
        buffer = _spare.pop() if _spare else None
    if buffer is None:
        buffer = mmap.mmap(-1, SLICE)
    try:
        yield buffer
    finally:
        with _spare_lock:
            _spare.append(buffer)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]
