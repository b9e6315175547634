"""Restoring a snapshot, or a part of it, into a folder.

Safety first: a snapshot is data from storage we do not control, so it may have been
crafted. The restorer

- refuses names that are empty, `.` or `..`, or contain `/` or NUL (on Windows also `\\`,
  `:`, a reserved device name such as `CON` or `NUL.txt`, or a trailing dot or space, which
  Windows would strip), and a name that appears twice in one directory (UnsafePath; the
  whole restore stops);
- never writes through a symlink (or, on Windows, a junction): not one it restored itself,
  not one already in the target (see "Two ways to touch the disk" below). Link targets are
  restored as they were recorded (they may point anywhere; nothing is written through
  them);
- verifies every chunk (authenticated decryption, then its id recomputed from the
  plaintext). A missing or corrupt chunk does not stop the restore: the file is restored
  with a hole where the chunk belongs, and RestoreIncomplete at the end names each
  damaged file and why.

Reading (issue 8): the tree is walked first, creating directories and symlinks and
collecting the files, in batches of a few hundred files. A batch's chunks are read pack
by pack (``packreader``: coalesced byte ranges, a few requests in flight, bounded memory);
the ranges go to two worker threads whole, in groups of up to 64 chunks or 1 MiB, and
each chunk is decrypted once and written to every place that needs it; a file is finished
(cut to its size if it ends in a hole, metadata applied) when its last chunk is in. From
an object store that is a few requests per pack instead of one per chunk; on the event
loop, one step per range instead of one per chunk. From a local folder each worker reads
the ranges it opens itself (``PackReader.blocking_fetch``): a read there takes less than
handing it to a reading thread and the result back through the loop.

Holes are not written: data chunks are written at their offsets (skipping all-zero 4 KiB
blocks inside them) and the file is cut to its size, so sparse files and images come back
sparse (on Windows the skipped blocks read back as zeros, but the file is not marked
sparse). Metadata (owner when running as root, mode, mtime) is applied to a directory
after its contents, so restoring into it does not change its mtime and a read-only
directory can still be filled.

Two ways to touch the disk:

- ``_AtFs`` (Linux, the BSDs, macOS): everything is created relative to an open
  descriptor of its parent directory (`*at` calls); directories are opened with
  O_NOFOLLOW, files created with O_EXCL|O_NOFOLLOW, metadata applied through the open
  descriptor. No path is ever resolved twice, so even a process swapping directories for
  links during the restore cannot redirect a write.
- ``_PathFs`` (Windows, and wherever ``os.supports_dir_fd`` lacks what ``_AtFs`` needs):
  full paths, but every directory's identity (device, inode/file index) is recorded
  when it is created or found to be a real directory (lstat: not a symlink, not a
  junction or other reparse point), and checked again with lstat before anything is
  created in it; files are created with O_EXCL (which fails on any existing name,
  link or not) after an existing non-directory entry is removed; mode and mtime are set
  by path after checking with lstat that the path is still the file created. This
  refuses links in the snapshot and in the target; it narrows, but cannot close, the
  window in which a concurrent local attacker could swap a directory between the check
  and the create (Windows has no `*at` calls in Python).

``Restorer(repo, portable=True)`` or ``restorer.PORTABLE_DEFAULT = True`` forces ``_PathFs``
(the tests run every restore test both ways on Linux).
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from .dictionaries import DictionaryNeeded
from .errors import FormatError, PathNotFound, RestoreIncomplete, UnsafePath
from .memory import return_big_buffers_to_the_system
from .pack import BlobType
from .progress import Meter, ProgressCallback
from .packreader import Blob, Fetched, PackRange, PackReader, Plan
from .repository import Repository
from .snapshot import DIR, FILE, IMAGE, SYMLINK, Node, Tree
from .sparse import data_runs, pwrite_all, skip

# Threads opening and writing chunks. Two, on two cores or more: the work is bound by
# the GIL, and each thread more only adds hand-offs of it (a 1 GiB restore here: 2 took
# 5.7-7.3 s, 4 took 7.4-8.0 s, with twice the context switches; docs/BENCHMARKS.md).
WORKERS = 2
# A batch ends at whichever comes first. Files of a batch may be open at once, and the
# directories finished in it stay open until it ends: both are bounded well below the
# usual limit of 1024 descriptors.
BATCH_FILES = 512
BATCH_DIRS = 256
BATCH_CHUNKS = 32768
# Groups of subdirectory listings being read at once.
_TREES_AHEAD = 8
# Listings of a directory's subdirectories read ahead of its walk, by their size before
# decoding; decoded they take several times that. Reading all of them at once held a
# million files' listings in memory (~780 MiB for 1,000 folders of 1,000 files).
TREES_AHEAD_BYTES = 4 * 1024 * 1024
# Listings of up to this many entries are kept once walked, the last this many of them:
# without it, 100,000 empty folders were 100,000 reads of the same listing, one by one.
_SMALL_LISTING_NODES = 16
_SMALL_LISTINGS = 256

_WINDOWS_NAMES = os.name == "nt"
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                     *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10)),
                     "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}


def check_name(name: str, where: str, *, windows: bool = _WINDOWS_NAMES) -> None:
    """A name that can only ever mean one entry inside its directory."""
    if name in ("", ".", ".."):
        raise UnsafePath(f"{where}/{name}", "empty, '.' or '..' as a name")
    if "/" in name or "\0" in name or (os.sep != "/" and os.sep in name):
        raise UnsafePath(f"{where}/{name}", "a name must not contain a path separator or NUL")
    if windows:
        if "\\" in name or ":" in name:  # a separator, or a drive or stream ("C:x", "a:b")
            raise UnsafePath(f"{where}/{name}", "a name must not contain '\\' or ':' on Windows")
        if name[-1] in ". ":  # Windows strips them: "..." would be the directory itself
            raise UnsafePath(f"{where}/{name}", "a name must not end in a dot or space on Windows")
        if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
            raise UnsafePath(f"{where}/{name}", "a reserved device name on Windows")


def at_calls_available() -> bool:
    """Whether this platform offers every `*at` call the descriptor-relative path needs."""
    needed = {os.open, os.mkdir, os.unlink, os.symlink, os.utime}
    return (needed <= os.supports_dir_fd and os.utime in os.supports_fd and hasattr(os, "fchmod")
            and hasattr(os, "pwrite") and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY"))


# Which way a Restorer touches the disk unless told: the descriptor-relative one where it
# is available. A module switch so that tests can run every restore test on both ways.
PORTABLE_DEFAULT = not at_calls_available()


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    damaged: list[tuple[str, Exception]] = field(default_factory=list)


class Restorer:
    def __init__(self, repo: Repository, *, workers: int = WORKERS, restore_owner: bool | None = None,
                 portable: bool | None = None, reader: PackReader | None = None,
                 progress: ProgressCallback | None = None, progress_interval: float = 0.25):
        self.repo = repo
        self.workers = workers
        self.progress_callback = progress
        self.progress_interval = progress_interval
        # chown needs root; as anyone else the files simply belong to whoever restores.
        self.restore_owner = (hasattr(os, "geteuid") and os.geteuid() == 0) if restore_owner is None else restore_owner
        self.portable = PORTABLE_DEFAULT if portable is None else portable
        self.reader = reader or PackReader(repo)

    async def restore(self, snapshot_id: str, target: str | os.PathLike, *, path: str | None = None) -> RestoreResult:
        """Restore the snapshot (or the entry at `path` inside it, e.g. "data/sub/file")
        into target. Raises RestoreIncomplete, after restoring all it could, if any file
        has damaged parts; UnsafePath (and stops) on a name that could escape."""
        snapshot = await self.repo.load_snapshot(snapshot_id)
        root = await self.repo.load_tree(snapshot.tree)
        nodes = root.nodes
        if path:
            nodes = [await self._find(root.nodes, path)]
        os.makedirs(target, exist_ok=True)
        return_big_buffers_to_the_system()  # chunk buffers back to the OS (memory.py)
        fs: _Fs = _PathFs() if self.portable else _AtFs()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="reclo-restore")
        meter = Meter(self.progress_callback, self.progress_interval)
        if not path and (snapshot.stats.files or snapshot.stats.images):
            # The whole snapshot: its totals are known before the first file.
            meter.add_total(snapshot.stats.files + snapshot.stats.images, snapshot.stats.bytes)
            meter.totals_known()
        run = _Run(self, fs, pool, meter)
        top = fs.open_root(os.fspath(target))
        ticker = meter.start()
        try:
            await run.walk(top, nodes, "")
            meter.totals_known()  # a part of a snapshot: its totals grew as it was walked
            await run.finish()
        finally:
            if ticker is not None:
                ticker.cancel()
            await run.abandon()
            fs.close_dir(top)
            pool.shutdown(wait=True)
            await asyncio.gather(*([ticker] if ticker else []), return_exceptions=True)  # its cancel
        meter.report()
        if run.result.damaged:
            raise RestoreIncomplete(run.result.damaged)
        return run.result

    async def _find(self, nodes: list[Node], path: str) -> Node:
        parts = [p for p in path.strip("/").split("/") if p]
        node = None
        for i, part in enumerate(parts):
            check_name(part, "/".join(parts[:i]))
            node = next((n for n in nodes if n.name == part), None)
            if node is None:
                raise PathNotFound(path)
            if i < len(parts) - 1:
                if node.type != DIR or node.subtree is None:
                    raise PathNotFound(path)
                nodes = (await self.repo.load_tree(node.subtree)).nodes
        if node is None:
            raise PathNotFound(path)
        return node


# --- the two ways to touch the disk -----------------------------------------------------

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


class _Fs:
    """Directory handles, file handles, and what the restorer does with them."""

    def open_root(self, target: str): ...
    def make_dir(self, parent, name: str, path: str): ...
    def close_dir(self, handle) -> None: ...
    def dir_metadata(self, handle, node: Node, owner: bool) -> None: ...
    def symlink(self, parent, node: Node, owner: bool) -> None: ...
    def create_file(self, parent, name: str): ...
    def write(self, handle, buffers: list[memoryview], offset: int) -> None:
        """The buffers one after the other, from offset."""
    def finish_file(self, handle, node: Node, owner: bool, cut: bool = True) -> None:
        """Metadata; cut: the file is not yet node.size long (a trailing hole)."""
    def close_file(self, handle) -> None: ...


class _AtFs(_Fs):
    _DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | _O_CLOEXEC
    _NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | _O_CLOEXEC

    def open_root(self, target: str) -> int:
        return os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)

    def make_dir(self, parent: int, name: str, path: str) -> int:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass  # restoring into an existing tree: reuse the directory (never a symlink, below)
        try:
            return os.open(name, self._DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise UnsafePath(path, f"exists and is not a directory, or is a symlink ({e.strerror})") from None

    def close_dir(self, handle: int) -> None:
        os.close(handle)

    def dir_metadata(self, handle: int, node: Node, owner: bool) -> None:
        _fd_metadata(handle, node, owner)

    def symlink(self, parent: int, node: Node, owner: bool) -> None:
        _unlink_at(parent, node.name)
        os.symlink(node.target, node.name, dir_fd=parent)  # type: ignore[arg-type]
        if owner:
            os.chown(node.name, node.uid, node.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(node.name, ns=(_atime(node), node.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def create_file(self, parent: int, name: str) -> int:
        try:  # the usual case, an empty target: one system call
            return os.open(name, self._NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:  # O_EXCL|O_NOFOLLOW: whatever is there, link or not, goes
            _unlink_at(parent, name)
            return os.open(name, self._NEW_FILE_FLAGS, 0o600, dir_fd=parent)

    def write(self, handle: int, buffers: list[memoryview], offset: int) -> None:
        pwrite_all(handle, buffers, offset)

    def finish_file(self, handle: int, node: Node, owner: bool, cut: bool = True) -> None:
        if cut:
            os.ftruncate(handle, node.size)  # the trailing hole
        _fd_metadata(handle, node, owner)

    def close_file(self, handle: int) -> None:
        os.close(handle)


def _fd_metadata(fd: int, node: Node, owner: bool) -> None:
    if owner:
        os.fchown(fd, node.uid, node.gid)  # before chmod: chown clears setuid/setgid
    os.fchmod(fd, node.mode)
    os.utime(fd, ns=(_atime(node), node.mtime_ns))


def _unlink_at(dir_fd: int, name: str) -> None:
    """Make room for a new file or link. unlink never follows a symlink: it removes it."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class _PathDir:
    path: str
    identity: tuple[int, int]  # (st_dev, st_ino) when it was made or found


@dataclass
class _PathFile:
    path: str
    fd: int
    lock: threading.Lock = field(default_factory=threading.Lock)  # lseek + write is two calls
    identity: tuple[int, int] = (0, 0)


def _is_link(st: os.stat_result) -> bool:
    # a junction is not S_ISLNK on Windows, but it is a reparse point
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & stat.FILE_ATTRIBUTE_REPARSE_POINT)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class _PathFs(_Fs):
    _NEW_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                       | _O_CLOEXEC | _O_BINARY)

    def open_root(self, target: str) -> _PathDir:
        path = os.path.abspath(target)
        st = os.stat(path)  # the target itself may be reached through a link: the user chose it
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(path)
        return _PathDir(path, _identity(st))

    def _checked(self, parent: _PathDir) -> str:
        """The parent's path, after checking it is still the directory we made or found."""
        try:
            st = os.lstat(parent.path)
        except OSError as e:
            raise UnsafePath(parent.path, f"the directory went away during the restore ({e.strerror})") from None
        if _is_link(st) or not stat.S_ISDIR(st.st_mode) or _identity(st) != parent.identity:
            raise UnsafePath(parent.path, "the directory was replaced during the restore")
        return parent.path

    def make_dir(self, parent: _PathDir, name: str, path: str) -> _PathDir:
        full = os.path.join(self._checked(parent), name)
        try:
            os.mkdir(full, 0o700)
        except FileExistsError:
            pass  # restoring into an existing tree: reuse the directory (never a link, below)
        st = os.lstat(full)
        if _is_link(st) or not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(path, "exists and is not a directory, or is a symlink or junction")
        return _PathDir(full, _identity(st))

    def close_dir(self, handle: _PathDir) -> None:
        pass

    def dir_metadata(self, handle: _PathDir, node: Node, owner: bool) -> None:
        self._checked(handle)
        _path_metadata(handle.path, node, owner)

    def symlink(self, parent: _PathDir, node: Node, owner: bool) -> None:
        full = os.path.join(self._checked(parent), node.name)
        self._make_room(full)
        os.symlink(node.target, full)  # type: ignore[arg-type]
        if owner and hasattr(os, "chown") and os.chown in os.supports_follow_symlinks:
            os.chown(full, node.uid, node.gid, follow_symlinks=False)
        if os.utime in os.supports_follow_symlinks:
            os.utime(full, ns=(_atime(node), node.mtime_ns), follow_symlinks=False)

    @staticmethod
    def _make_room(full: str) -> None:
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):  # a directory, or a junction to one: leave it alone
            raise IsADirectoryError(f"a directory is in the way: {full}")
        try:
            os.unlink(full)  # a file or a link: removes the link itself, never its target
        except PermissionError:
            # Windows refuses to delete a read-only file; clear the flag, but never on a
            # link (chmod would follow it to its target)
            if _is_link(st) or not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_IWRITE:
                raise
            os.chmod(full, st.st_mode | stat.S_IWRITE)
            os.unlink(full)

    def create_file(self, parent: _PathDir, name: str) -> _PathFile:
        full = os.path.join(self._checked(parent), name)
        self._make_room(full)
        fd = os.open(full, self._NEW_FILE_FLAGS, 0o600)  # O_EXCL: fails on anything in the way
        return _PathFile(full, fd, identity=_identity(os.fstat(fd)))

    def write(self, handle: _PathFile, buffers: list[memoryview], offset: int) -> None:
        with handle.lock:  # no pwrite on Windows
            os.lseek(handle.fd, offset, os.SEEK_SET)
            while buffers:
                buffers = skip(buffers, os.write(handle.fd, buffers[0]))

    def finish_file(self, handle: _PathFile, node: Node, owner: bool, cut: bool = True) -> None:
        if cut:
            os.ftruncate(handle.fd, node.size)  # the trailing hole
        self.close_file(handle)
        st = os.lstat(handle.path)
        if _is_link(st) or _identity(st) != handle.identity:
            raise UnsafePath(handle.path, "the file was replaced during the restore")
        _path_metadata(handle.path, node, owner)

    def close_file(self, handle: _PathFile) -> None:
        if handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1


def _path_metadata(path: str, node: Node, owner: bool) -> None:
    if owner and hasattr(os, "chown"):
        os.chown(path, node.uid, node.gid)  # before chmod: chown clears setuid/setgid
    # mtime before mode: a read-only file's times may not be settable afterwards (Windows)
    os.utime(path, ns=(_atime(node), node.mtime_ns))
    os.chmod(path, node.mode)  # on Windows only the read-only flag


def _atime(node: Node) -> int:
    return node.atime_ns if node.atime_ns is not None else node.mtime_ns


# --- one restore ----------------------------------------------------------------------


class _File:
    """One restored file in a batch; its chunks arrive in any order, from worker threads."""

    def __init__(self, run: _Run, parent, node: Node, path: str, chunks: int):
        self.run = run
        self.parent = parent
        self.node = node
        self.path = path
        self.remaining = chunks
        self.handle = None
        self.done = False
        self.errors: list[Exception] = []
        self.failed = False  # the file itself could not be written: stop feeding it
        self.end = 0  # the file's size so far: where its last byte written ends
        self.written = 0  # bytes of chunks handed to it, written or not (progress)
        self.lock = threading.Lock()

    def put(self, offset: int, chunks: list[bytes], error: Exception | None = None) -> None:
        """Consecutive chunks from offset, or (chunks empty) why the chunk at offset is
        missing; finishes the file after the last."""
        fs = self.run.fs
        with self.lock:
            if error is not None:
                self.errors.append(error)
            try:
                if self.handle is None and not self.failed:
                    self.handle = fs.create_file(self.parent, self.node.name)
            except OSError as e:
                self.errors.append(_without_frames(e))
                self.failed = True
            handle = None if self.failed else self.handle
        end = 0
        try:
            if chunks and handle is not None:
                end = _write_sparse(fs, handle, chunks, offset)
        except OSError as e:
            with self.lock:
                self.errors.append(_without_frames(e))
                self.failed = True
        handed = sum(map(len, chunks))
        with self.lock:
            self.end = max(self.end, end)
            self.written += handed
            self.remaining -= len(chunks) or 1
            finished = self.remaining <= 0
            if finished:
                self._finish()
        # Its holes count as done with its last chunk: progress is logical, as a backup's.
        self.run.meter.advance(files=int(finished), nbytes=handed + (self.node.size - self.written if finished else 0))

    def _finish(self) -> None:
        fs = self.run.fs
        try:
            if self.handle is None and not self.failed:  # no chunks at all
                self.handle = fs.create_file(self.parent, self.node.name)
            if not self.failed:
                fs.finish_file(self.handle, self.node, self.run.r.restore_owner, cut=self.end != self.node.size)
        except OSError as e:
            self.errors.append(_without_frames(e))
            self.failed = True
        finally:
            self.close()
            self.done = True

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.run.fs.close_file(self.handle)
            except OSError:
                pass
            self.handle = None


class _Trees:
    """Directory listings, read ahead of the walk: a directory's subdirectory listings
    in groups within a budget (_Lookahead), each group one pack reader plan (usually one
    request), a few groups at a time."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.reader = PackReader(repo)
        self.gate = asyncio.Semaphore(_TREES_AHEAD)
        self.ahead: dict[bytes, asyncio.Future] = {}
        self.groups: set[asyncio.Task] = set()
        # Small listings walked lately, by id: folders with the same content share one
        # (every empty folder the same), and a listing read ahead is handed out once.
        self.small: OrderedDict[bytes, Tree] = OrderedDict()

    def lookahead(self, nodes: list[Node]) -> _Lookahead:
        """Start reading the listings of these nodes' subdirectories ahead of the walk."""
        return _Lookahead(self, [n.subtree for n in nodes if n.type == DIR and n.subtree is not None])

    def prefetch(self, tree_ids: Iterable[bytes]) -> None:
        ids = {tree_id for tree_id in tree_ids if tree_id not in self.ahead and tree_id not in self.small}
        if not ids:
            return
        loop = asyncio.get_running_loop()
        futures = {tree_id: loop.create_future() for tree_id in ids}
        self.ahead.update(futures)
        task = asyncio.ensure_future(self._read_group(futures))
        self.groups.add(task)
        task.add_done_callback(self.groups.discard)

    async def _read_group(self, futures: dict[bytes, asyncio.Future]) -> None:
        try:
            await self._read_into(futures)
        except Exception as e:  # e.g. the store failed: whoever waits for a listing learns why
            for future in futures.values():
                if not future.done():
                    future.set_exception(e)
        finally:  # cancelled: nobody waits for ever
            for future in futures.values():
                if not future.done():
                    future.cancel()

    async def _read_into(self, futures: dict[bytes, asyncio.Future]) -> None:
        async with self.gate:
            plan = self.reader.plan_by_pack(futures)
            fetch = self.reader.blocking_fetch()
            if fetch is not None:  # a local folder: read and open them all in one thread
                for tree_id, tree in await asyncio.to_thread(self._read_and_open, fetch, plan):
                    _resolve_listing(futures[tree_id], tree)
                return
            async with aclosing(self.reader.read(plan)) as blobs:
                async for blob in blobs:
                    try:
                        tree = await asyncio.to_thread(self._open, blob)
                    except FormatError as e:
                        tree = e
                    _resolve_listing(futures[blob.id], tree)

    def _read_and_open(self, fetch: Callable[[PackRange], Fetched], plan: Plan) -> list[tuple[bytes, Tree | FormatError]]:
        """Each listing of a plan, or why it could not be read; one range held at a time."""
        opened: list[tuple[bytes, Tree | FormatError]] = []

        def open_all(blobs: Iterable[Blob]) -> None:
            for blob in blobs:
                try:
                    opened.append((blob.id, self._open(blob)))
                except FormatError as e:  # kept in the report: without the frames holding the range
                    opened.append((blob.id, _without_frames(e)))

        open_all(plan.missing_blobs())
        for r in plan.ranges:
            open_all(fetch(r).blobs(copy=False))
        return opened

    def _open(self, blob: Blob) -> Tree:
        if blob.error is None and blob.location.type is not BlobType.TREE:  # type: ignore[union-attr]
            raise FormatError(f"blob {blob.id.hex()} is not a tree")
        return Tree.decode(blob.open(self.repo.key, self.repo.dictionaries))

    async def load(self, tree_id: bytes) -> Tree:
        tree = self.small.get(tree_id)
        if tree is not None:
            self.small.move_to_end(tree_id)
            return tree
        future = self.ahead.pop(tree_id, None)
        if future is None or future.cancelled():
            tree = await self.repo.load_tree(tree_id)
        else:
            tree = await future
        if len(tree.nodes) <= _SMALL_LISTING_NODES:
            self.small[tree_id] = tree
            if len(self.small) > _SMALL_LISTINGS:
                self.small.popitem(last=False)
        return tree

    async def cancel(self) -> None:
        groups = list(self.groups)
        for task in groups:
            task.cancel()
        await asyncio.gather(*groups, return_exceptions=True)
        for future in self.ahead.values():
            if future.done() and not future.cancelled():
                future.exception()  # read, so that an unused failure is not logged as lost
        self.ahead.clear()


class _Lookahead:
    """The subdirectory listings of one directory, read ahead of its walk in groups (one
    plan each, usually one request), never more than TREES_AHEAD_BYTES of them read or
    being read and not yet walked into. Another group is asked for once half of that is
    walked; a listing larger than the budget is read alone."""

    def __init__(self, trees: _Trees, tree_ids: list[bytes]):
        self.trees = trees
        self.ids = list(dict.fromkeys(tree_ids))  # in walk order; a listing shared by two folders once
        found = trees.repo.index.lookup_many(self.ids)
        # Not in the index: nothing to hold; reading it reports it missing.
        self.sizes = {tree_id: found[tree_id].raw_length if tree_id in found else 0 for tree_id in self.ids}
        self.asked = 0  # self.ids[:asked] are read or being read
        self.waiting: dict[bytes, int] = {}  # of those, not walked into yet: their sizes
        self.held = 0  # the sum of those sizes
        self._ask()

    def entering(self, tree_id: bytes) -> None:
        """The walk goes into this subdirectory: its listing no longer counts as ahead."""
        size = self.waiting.pop(tree_id, None)
        if size is not None:
            self.held -= size
            if self.held <= TREES_AHEAD_BYTES // 2:
                self._ask()

    def _ask(self) -> None:
        group: list[bytes] = []
        while self.asked < len(self.ids):
            tree_id = self.ids[self.asked]
            size = self.sizes[tree_id]
            if self.held and self.held + size > TREES_AHEAD_BYTES:
                break
            group.append(tree_id)
            self.waiting[tree_id] = size
            self.held += size
            self.asked += 1
        if group:
            self.trees.prefetch(group)


class _Run:
    def __init__(self, restorer: Restorer, fs: _Fs, pool: ThreadPoolExecutor, meter: Meter):
        self.r = restorer
        self.meter = meter
        self.count_totals = not meter.progress.totals_final  # add each file's as it is walked
        self.repo = restorer.repo
        self.fs = fs
        self.pool = pool
        self.result = RestoreResult()
        self.trees = _Trees(restorer.repo)
        # the batch being gathered
        self.files: list[_File] = []
        self.places: dict[bytes, list[tuple[_File, int, int]]] = {}  # chunk id -> (file, offset, length)
        self.chunks = 0
        self.finished_dirs: list[tuple[object, Node, str]] = []  # closed when the batch ends
        self.writing: asyncio.Future | None = None  # the batch being written
        self.buffers = threading.local()  # each worker's, for the ranges it reads (_read_buffer)

    def damaged(self, path: str, error: Exception) -> None:
        self.result.damaged.append((path, error))

    # --- walking the tree (event loop) ---

    async def walk(self, parent, nodes: list[Node], where: str) -> None:
        seen: set[str] = set()
        for node in nodes:  # every name of this directory is checked before any is created
            check_name(node.name, where)
            if node.name in seen:
                raise UnsafePath(f"{where}/{node.name}", "the name appears twice in one directory")
            seen.add(node.name)
        ahead = self.trees.lookahead(nodes)
        for node in nodes:
            path = f"{where}/{node.name}" if where else node.name
            if node.type == DIR:
                if node.subtree is not None:
                    ahead.entering(node.subtree)
                await self.directory(parent, node, path)
            elif node.type == SYMLINK:
                await self.symlink(parent, node, path)
            elif node.type in (FILE, IMAGE):
                await self.add_file(parent, node, path)

    async def directory(self, parent, node: Node, path: str) -> None:
        handle = await self._io(self.fs.make_dir, parent, node.name, path)
        try:
            try:
                tree = await self.trees.load(node.subtree)  # type: ignore[arg-type]
            except FormatError as e:
                self.damaged(path + "/", e)
            else:
                await self.walk(handle, tree.nodes, path)
        except BaseException:
            self.fs.close_dir(handle)
            raise
        # Its metadata waits for its files, which the batch may not have written yet.
        self.finished_dirs.append((handle, node, path))
        if len(self.finished_dirs) >= BATCH_DIRS:
            await self.flush()

    async def symlink(self, parent, node: Node, path: str) -> None:
        try:
            await self._io(self.fs.symlink, parent, node, self.r.restore_owner)
        except OSError as e:
            self.damaged(path, e)
            return
        self.result.symlinks += 1

    async def add_file(self, parent, node: Node, path: str) -> None:
        placed = []
        offset = 0
        for ref in node.content or ():
            if ref.id is not None:
                placed.append((ref.id, offset, ref.length))
            offset += ref.length
        file = _File(self, parent, node, path, len(placed))
        if self.count_totals:
            self.meter.add_total(1, node.size)
        self.files.append(file)
        for chunk_id, at, length in placed:
            self.places.setdefault(chunk_id, []).append((file, at, length))
        self.chunks += len(placed)
        if len(self.files) >= BATCH_FILES or self.chunks >= BATCH_CHUNKS:
            await self.flush()

    async def _io(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- writing a batch ---

    async def flush(self) -> None:
        """Hand the batch gathered so far to the writer and go on walking: the walk (tree
        listings, folders created) of the next batch overlaps the writing of this one.
        Batches are written one at a time and in order, so a folder's metadata, applied
        at the end of the batch it was finished in, comes after every file in it."""
        if self.writing is not None:
            await self.writing  # the previous batch first (and its failure, if any)
        files, places, dirs = self.files, self.places, self.finished_dirs
        self.files, self.places, self.chunks, self.finished_dirs = [], {}, 0, []
        self.writing = asyncio.ensure_future(self._write(files, places, dirs))

    async def finish(self) -> None:
        await self.flush()
        await self.writing

    async def _write(self, files: list[_File], places: dict, dirs: list[tuple[object, Node, str]]) -> None:
        """Read the batch's chunks pack by pack, write them, finish its files, then the
        metadata of the directories finished in it (deepest first)."""
        try:
            await self._write_files(files, places)
            for handle, node, path in dirs:
                try:
                    await self._io(self.fs.dir_metadata, handle, node, self.r.restore_owner)
                except OSError as e:
                    self.damaged(path + "/", e)
                self.result.dirs += 1
        finally:
            for handle, _, _ in dirs:
                self.fs.close_dir(handle)

    async def _write_files(self, files: list[_File], places: dict) -> None:
        loop = asyncio.get_running_loop()
        try:
            empty = [file for file in files if file.remaining == 0]
            if empty:
                await loop.run_in_executor(self.pool, _finish_all, empty)
            reader = self.r.reader
            in_flight: set[asyncio.Future] = set()
            limit = 2 * self.r.workers

            async def settle(done: set[asyncio.Future]) -> None:
                # Chunks that named a dictionary not loaded yet: load it, pinned until they
                # are placed (so they get further each time), and hand them out again.
                dictionaries = self.repo.dictionaries
                # Every failure looked at (a failing disk fails each worker reading it), the
                # first one raised.
                failures = [e for f in done if not f.cancelled() and (e := f.exception()) is not None]
                if failures:
                    raise failures[0]
                for f in done:
                    waiting = f.result()
                    if waiting:
                        needed: list[bytes] = []
                        try:
                            for dictionary_id in {need.id for _, need in waiting}:
                                needed.append(dictionary_id)
                                await dictionaries.load_pinned(dictionary_id)
                        except BaseException:
                            dictionaries.unpin(needed)
                            raise
                        again = loop.run_in_executor(self.pool, self._place_all, [b for b, _ in waiting], places)
                        again.add_done_callback(lambda _, ids=needed: dictionaries.unpin(ids))
                        in_flight.add(again)

            # Chunks go to the workers in groups of up to GROUP_CHUNKS or GROUP_BYTES, as
            # views of the ranges read (no copy): a hand-off per small chunk (a database's
            # 32 KiB ones), or a step of the event loop per chunk, cost more than opening it.
            # A group keeps its ranges alive until it is done. No group is handed out while
            # the ranges of those in flight exceed the reader's memory budget; with the
            # reader's own and a group being gathered, about 2-3 budgets at most.
            plan = reader.plan_by_pack(places)
            budget = reader.memory
            users: dict[Fetched, int] = {}  # range -> groups in flight that use it
            pinned = 0

            def submit(group: list[tuple[Fetched, int, int]]) -> None:
                nonlocal pinned
                fetched = {f for f, _, _ in group}
                for f in fetched:
                    if f not in users:
                        users[f] = 0
                        pinned += f.range.length
                    users[f] += 1
                future = loop.run_in_executor(self.pool, self._place_group, group, places)
                future.add_done_callback(lambda _: release(fetched))
                in_flight.add(future)

            def release(fetched: set[Fetched]) -> None:
                nonlocal pinned
                for f in fetched:
                    users[f] -= 1
                    if not users[f]:
                        del users[f]
                        pinned -= f.range.length

            async def wait_below(bound: int) -> None:
                nonlocal in_flight
                while in_flight and (len(in_flight) >= bound or pinned > budget):
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    await settle(done)

            if plan.missing:
                in_flight.add(loop.run_in_executor(self.pool, self._place_all, plan.missing_blobs(), places))
            group: list[tuple[Fetched, int, int]] = []
            count = size = 0
            fetch = reader.blocking_fetch()
            try:
                if fetch is not None:
                    # A local folder: each worker reads the range it opens, instead of a
                    # reading thread handing it to the loop and the loop to a worker.
                    # Ranges wait in the pool's queue unread, so at most one per running
                    # worker is held (plus the copies of blobs waiting for a dictionary),
                    # and no more at once than the reader's budget allows. Each worker
                    # keeps one buffer for them (max_range, or its largest range).
                    reads = max(1, min(limit, reader.memory // reader.max_range))
                    for r in plan.ranges:
                        in_flight.add(loop.run_in_executor(self.pool, self._read_and_place, fetch, r, places))
                        await wait_below(reads)
                else:
                    async with aclosing(reader.read_ranges(plan)) as ranges:
                        async for fetched in ranges:
                            start = 0
                            for i, (_, _, location) in enumerate(fetched.range.blobs):
                                count += 1
                                size += location.length
                                if count < GROUP_CHUNKS and size < GROUP_BYTES:
                                    continue
                                group.append((fetched, start, i + 1))
                                start = i + 1
                                submit(group)
                                group, count, size = [], 0, 0
                                await wait_below(limit)
                            if start < len(fetched.range.blobs):
                                group.append((fetched, start, len(fetched.range.blobs)))
                            del fetched
                    if group:
                        submit(group)
                await wait_below(1)
            finally:
                await _settled(in_flight)
        finally:
            for file in files:
                file.close()
        for file in files:
            if file.errors or not file.done:
                self.damaged(file.path, file.errors[0] if file.errors else FormatError("not restored"))
            else:
                self.result.files += 1
                self.result.bytes += file.node.size

    def _read_and_place(self, fetch: Callable[..., Fetched], r: PackRange,
                        places: dict) -> list[tuple[Blob, DictionaryNeeded]]:
        """_place_all for the blobs of a range this worker reads itself (a local folder),
        into the worker's own buffer."""
        return self._place_all(fetch(r, self._read_buffer(r.length)).blobs(copy=False), places)

    def _read_buffer(self, size: int) -> bytearray:
        """This worker thread's buffer for the ranges it reads: a fresh 2 MiB for every
        range cost a page fault per 4 KiB (~10 % of a restore). Reused only once nothing
        looks into it any more: what _place_all keeps (blobs waiting for a dictionary)
        is copied, and a bytearray that still has views cannot grow, which is checked."""
        buffer = getattr(self.buffers, "buffer", None)
        if buffer is not None and len(buffer) >= size:
            try:
                buffer.append(0)  # BufferError while a view of the last range is alive
            except BufferError:
                pass
            else:
                del buffer[-1]
                return buffer
        buffer = self.buffers.buffer = bytearray(max(size, self.r.reader.max_range))
        return buffer

    def _place_group(self, group: list[tuple[Fetched, int, int]], places: dict) -> list[tuple[Blob, DictionaryNeeded]]:
        """_place_all for the blobs [start:stop] of each range of a group (a worker thread)."""
        return self._place_all((b for f, start, stop in group for b in f.blobs(start, stop, copy=False)), places)

    def _place_all(self, blobs: Iterable[Blob], places: dict) -> list[tuple[Blob, DictionaryNeeded]]:
        """Place each blob; those that need a dictionary not loaded yet are left for the
        caller to load it and hand them out again (a worker never waits for the store).
        They keep a copy of their bytes, not the whole range they were read in."""
        waiting = []
        runs = _Runs()
        try:
            for blob in blobs:
                try:
                    self._place(blob, places[blob.id], runs)
                except DictionaryNeeded as need:
                    if isinstance(blob.sealed, memoryview):
                        blob = replace(blob, sealed=bytes(blob.sealed))
                    waiting.append((blob, _without_frames(need)))
        finally:
            runs.flush()
        return waiting

    def _place(self, blob: Blob, places: list[tuple[_File, int, int]], runs: _Runs) -> None:
        """In a worker thread: open the chunk once, write it wherever the batch needs it."""
        error: Exception | None = None
        data = None
        try:
            data = blob.open(self.repo.key, self.repo.dictionaries)
        except FormatError as e:  # missing or corrupt: leave a hole, go on
            error = _without_frames(e)
        for file, offset, length in places:
            if data is None:
                file.put(offset, [], error)
            elif len(data) != length:
                file.put(offset, [], FormatError(f"chunk at offset {offset} is {len(data)} bytes, expected {length}"))
            else:
                runs.add(file, offset, data)

    async def abandon(self) -> None:
        """After a failure (or at the end): nothing left open, nothing left running."""
        if self.writing is not None and not self.writing.done():
            self.writing.cancel()  # its own files and folders are closed as it stops
            await asyncio.gather(self.writing, return_exceptions=True)
        await self.trees.cancel()
        for file in self.files:
            file.close()
        for handle, _, _ in self.finished_dirs:
            self.fs.close_dir(handle)
        self.files, self.places, self.finished_dirs = [], {}, []


def _resolve_listing(future: asyncio.Future, outcome) -> None:
    """A directory listing read ahead, or the FormatError why it could not be."""
    if future.done():
        return
    if isinstance(outcome, FormatError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _without_frames(error: BaseException) -> BaseException:
    """An error to keep (in a file's errors, in the report): without its traceback and
    context, whose frames would keep alive the bytes of the whole range read."""
    error.__traceback__ = None
    error.__context__ = None
    return error


async def _settled(futures: set[asyncio.Future]) -> None:
    """Wait until every worker is done, even through a cancellation (it is raised after):
    a worker may still be writing into a file about to be closed, whose descriptor
    number the next file opened would get."""
    cancelled = False
    while futures:
        try:
            await asyncio.wait(futures)
            break
        except asyncio.CancelledError:
            cancelled = True
    for future in futures:
        if future.done() and not future.cancelled():
            future.exception()  # looked at: the restore raises its first failure, not each
    if cancelled:
        raise asyncio.CancelledError


def _finish_all(files: list[_File]) -> None:
    """Files without chunks: empty, or nothing but holes."""
    for file in files:
        file._finish()
        file.run.meter.advance(files=1, nbytes=file.node.size)


# Chunks handed to a worker at once: up to this many, or this many stored bytes.
GROUP_CHUNKS = 64
GROUP_BYTES = 1 << 20


class _Runs:
    """Chunks one worker opened, not written yet: consecutive chunks of a file go out in
    one write (a database's 32 KiB chunks leave a pack in runs of dozens), at most
    RUN_BYTES of them held."""

    def __init__(self) -> None:
        self.runs: dict[_File, tuple[int, int, list[bytes]]] = {}  # file -> (start, end, chunks)
        self.held = 0

    def add(self, file: _File, offset: int, data: bytes) -> None:
        run = self.runs.pop(file, None)  # out before it is written: never written twice
        if run is not None and run[1] == offset:
            run[2].append(data)
            self.runs[file] = (run[0], offset + len(data), run[2])
        else:
            self.runs[file] = (offset, offset + len(data), [data])
            if run is not None:
                self._write(file, run)
        self.held += len(data)
        if self.held >= RUN_BYTES:
            self.flush()

    def flush(self) -> None:
        runs, self.runs = self.runs, {}
        for file, run in runs.items():
            self._write(file, run)

    def _write(self, file: _File, run: tuple[int, int, list[bytes]]) -> None:
        start, end, chunks = run
        self.held -= end - start
        file.put(start, chunks)


# Opened chunks a worker holds to write them together.
RUN_BYTES = 1 << 20


def _write_sparse(fs: _Fs, handle, chunks: list[bytes], offset: int) -> int:
    """Write consecutive chunks from offset into a new file, all but their zero blocks
    (sparse.py), each stretch of data in one write; returns where the last byte written
    ends (0 if none was)."""
    stretch: list[memoryview] = []
    start = end = 0
    for data in chunks:
        view = memoryview(data)
        for a, b in data_runs(data):
            if stretch and offset + a != end:
                fs.write(handle, stretch, start)
                stretch = []
            if not stretch:
                start = offset + a
            stretch.append(view[a:b])
            end = offset + b
        offset += len(data)
    if stretch:
        fs.write(handle, stretch, start)
    return end
