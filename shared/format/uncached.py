"""Writing a new file past the page cache (O_DIRECT), for the folder store's packs.

A backup writes hundreds of MiB of packs that nothing reads soon after: through the page
cache each byte is copied into a fresh cache page (and evicts something the machine was
using). With O_DIRECT the disk takes the bytes from our buffer instead. On the benchmark's
VM the buffered writes of a full backup's 507 MiB of packs cost 0.9-1.7 s of kernel time,
the direct ones under 0.1 s (docs/BENCHMARKS.md, "Packs past the page cache, the key
derived while the agent loads").

O_DIRECT wants the buffer, the file offset and the length aligned to the device's logical
block: each slice is copied into a page-aligned buffer (kept, and shared by the writes
that run at once), the last one padded with zeros and the file truncated to its true
length afterwards. Where the platform or the filesystem refuses (Windows, macOS, ramfs,
tmpfs before Linux 6.6, a block size above ALIGN), the file is written the usual way.

Only on the local disk filesystems of LOCAL_DISK_FILESYSTEMS (suits()): on a network
share each direct write would wait for the server, where the page cache lets the writes
stream; on a filesystem in memory there is no disk to go past.
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

# Filesystems on a local block device (Linux's names, as /proc/self/mounts gives them).
LOCAL_DISK_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "bcachefs", "nilfs2"})

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def suits(folder: str | os.PathLike) -> bool:
    """Whether files in folder (or in what of it exists) are worth writing past the page
    cache: O_DIRECT exists here and the folder is on a local disk filesystem."""
    if not _O_DIRECT:
        return False
    path = os.path.realpath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return filesystem_type(path) in LOCAL_DISK_FILESYSTEMS


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem path is on (the longest mount point above it), from
    /proc/self/mounts; None where that cannot be read."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    best, found = -1, None
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # a later mount over the same point hides earlier ones
            best, found = len(point), fields[2]
    return found


def _unescape(field: str) -> str:
    # /proc/self/mounts writes a space, tab, newline and backslash as octal escapes
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def write_new_file(path: str | os.PathLike, data: bytes | bytearray | memoryview, direct: bool = True) -> None:
    """Create path (it must not exist) holding data, flushed to the disk (fsync); past the
    page cache if direct and the data is large enough, where the filesystem takes it."""
    view = memoryview(data).cast("B")
    if direct and _O_DIRECT and len(view) >= MIN_SIZE and _write_direct(path, view):
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
    """False if a write is refused as unaligned (the device's block is above ALIGN; the
    padded last slice may be the first to show it): the caller writes the file again."""
    for at in range(0, len(view), SLICE):
        part = view[at:at + SLICE]
        buffer[:len(part)] = part
        padded = -(-len(part) // ALIGN) * ALIGN
        if padded > len(part):
            buffer[len(part):padded] = bytes(padded - len(part))
        try:
            _write_all(fd, memoryview(buffer)[:padded])
        except OSError as e:
            if e.errno != errno.EINVAL:
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
