"""Restoring a snapshot, or a part of it, into a folder.

Safety first: a snapshot is data from storage we do not control, so it may have been
crafted. The restorer

- refuses names that are empty, `.` or `..`, or contain `/` or NUL, and a name that
  appears twice in one directory (UnsafePath; the whole restore stops);
- creates everything relative to an open descriptor of its parent directory (`*at`
  calls), opens directories with O_NOFOLLOW and creates files with O_EXCL|O_NOFOLLOW, so
  it never writes through a symlink: not one it restored itself, not one already in the
  target. Link targets are restored as they were recorded (they may point anywhere;
  nothing is written through them);
- verifies every chunk (authenticated decryption, then its id recomputed from the
  plaintext). A missing or corrupt chunk does not stop the restore: the file is restored
  with a hole where the chunk belongs, and RestoreIncomplete at the end names each
  damaged file and why.

Holes are not written: data chunks are written at their offsets (skipping all-zero 4 KiB
blocks inside them) and the file is cut to its size, so sparse files and images come back
sparse. Metadata (owner when running as
root, mode, mtime) is applied to a directory after its contents, so restoring into it
does not change its mtime and a read-only directory can still be filled.

POSIX only for now (it relies on dir_fd support); Windows restore is a later step.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import FormatError, PathNotFound, RestoreIncomplete, UnsafePath
from .pack import open_blob
from .repository import Repository
from .snapshot import DIR, FILE, IMAGE, SYMLINK, Node

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)
# Chunks of one file fetched and decrypted while earlier ones are written: enough to
# hide a round trip to S3 behind the work on the chunks before it.
_CHUNKS_AHEAD = 4


def check_name(name: str, where: str) -> None:
    """A name that can only ever mean one entry inside its directory."""
    if name in ("", ".", ".."):
        raise UnsafePath(f"{where}/{name}", "empty, '.' or '..' as a name")
    if "/" in name or "\0" in name or (os.sep != "/" and os.sep in name):
        raise UnsafePath(f"{where}/{name}", "a name must not contain a path separator or NUL")


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    damaged: list[tuple[str, Exception]] = field(default_factory=list)


class Restorer:
    def __init__(self, repo: Repository, *, workers: int = 4, restore_owner: bool | None = None):
        self.repo = repo
        self.workers = workers
        # chown needs root; as anyone else the files simply belong to whoever restores.
        self.restore_owner = (hasattr(os, "geteuid") and os.geteuid() == 0) if restore_owner is None else restore_owner

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
        run = _Run(self, ThreadPoolExecutor(self.workers, thread_name_prefix="reclo-restore"))
        target_fd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            await run.nodes(target_fd, nodes, "")
        finally:
            os.close(target_fd)
            run.pool.shutdown(wait=True)
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


class _Run:
    def __init__(self, restorer: Restorer, pool: ThreadPoolExecutor):
        self.r = restorer
        self.repo = restorer.repo
        self.pool = pool
        self.result = RestoreResult()
        self.file_slots = asyncio.Semaphore(restorer.workers)

    def damaged(self, path: str, error: Exception) -> None:
        self.result.damaged.append((path, error))

    async def nodes(self, dir_fd: int, nodes: list[Node], where: str) -> None:
        seen: set[str] = set()
        for node in nodes:  # every name of this directory is checked before any is created
            check_name(node.name, where)
            if node.name in seen:
                raise UnsafePath(f"{where}/{node.name}", "the name appears twice in one directory")
            seen.add(node.name)

        files: list[asyncio.Task] = []
        try:
            for node in nodes:
                path = f"{where}/{node.name}" if where else node.name
                if node.type == DIR:
                    await self.directory(dir_fd, node, path)
                elif node.type == SYMLINK:
                    self.symlink(dir_fd, node, path)
                elif node.type in (FILE, IMAGE):
                    await self.file_slots.acquire()
                    task = asyncio.create_task(self.file(dir_fd, node, path))
                    task.add_done_callback(lambda _: self.file_slots.release())
                    files.append(task)
        finally:
            # The directory's descriptor must outlive its files' writes, even on failure.
            results = await asyncio.gather(*files, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def directory(self, dir_fd: int, node: Node, path: str) -> None:
        try:
            os.mkdir(node.name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass  # restoring into an existing tree: reuse the directory (never a symlink, below)
        try:
            fd = os.open(node.name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise UnsafePath(path, f"exists and is not a directory, or is a symlink ({e.strerror})") from None
        try:
            try:
                tree = await self.repo.load_tree(node.subtree)  # type: ignore[arg-type]
            except FormatError as e:
                self.damaged(path + "/", e)
            else:
                await self.nodes(fd, tree.nodes, path)
            try:
                self.apply_metadata(fd, node)
            except OSError as e:
                self.damaged(path + "/", e)
            self.result.dirs += 1
        finally:
            os.close(fd)

    def symlink(self, dir_fd: int, node: Node, path: str) -> None:
        try:
            _remove_existing(dir_fd, node.name)
            os.symlink(node.target, node.name, dir_fd=dir_fd)  # type: ignore[arg-type]
            if self.r.restore_owner:
                os.chown(node.name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(node.name, ns=(_atime(node), node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            self.damaged(path, e)
            return
        self.result.symlinks += 1

    async def file(self, dir_fd: int, node: Node, path: str) -> None:
        """Fetch the chunks ahead (async), and decrypt, verify and write each in a worker
        thread; the file is created with the first chunk and finished with the last, so a
        small file costs two thread hops."""
        loop = asyncio.get_running_loop()
        writer = _FileWriter(self, dir_fd, node)
        chunks = []
        offset = 0
        for ref in node.content or ():
            if ref.id is not None:
                chunks.append((offset, ref.length, ref.id))
            offset += ref.length
        window: deque[tuple[int, int, asyncio.Task]] = deque()
        try:
            if not chunks:
                await loop.run_in_executor(self.pool, writer.put, None, 0, 0, True)
            for i, (offset, length, blob_id) in enumerate(chunks):
                while len(window) < _CHUNKS_AHEAD and i + len(window) < len(chunks):
                    _, _, ahead_id = chunks[i + len(window)]
                    window.append((0, 0, asyncio.create_task(self.repo.fetch_sealed(ahead_id))))
                _, _, task = window.popleft()
                try:
                    fetched = await task
                except FormatError as e:  # MissingBlob, MissingPack: leave a hole, go on
                    fetched = e
                await loop.run_in_executor(
                    self.pool, writer.put, (blob_id, fetched), offset, length, i == len(chunks) - 1
                )
                if writer.failed:
                    break
        finally:
            for _, _, task in window:
                task.cancel()
            writer.close()
        if writer.errors:
            self.damaged(path, writer.errors[0])
        else:
            self.result.files += 1
            self.result.bytes += node.size

    def apply_metadata(self, fd: int, node: Node) -> None:
        if self.r.restore_owner:
            os.fchown(fd, node.uid, node.gid)  # before chmod: chown clears setuid/setgid
        os.fchmod(fd, node.mode)
        os.utime(fd, ns=(_atime(node), node.mtime_ns))


class _FileWriter:
    """One restored file, driven from worker threads: create, place chunks, finish."""

    def __init__(self, run: _Run, dir_fd: int, node: Node):
        self.run = run
        self.dir_fd = dir_fd
        self.node = node
        self.fd: int | None = None
        self.errors: list[Exception] = []
        self.failed = False  # the file itself could not be written: stop feeding it

    def put(self, chunk, offset: int, length: int, last: bool) -> None:
        try:
            if self.fd is None:
                _remove_existing(self.dir_fd, self.node.name)
                self.fd = os.open(self.node.name, _NEW_FILE_FLAGS, 0o600, dir_fd=self.dir_fd)
            if chunk is not None:
                self._place(chunk, offset, length)
            if last:
                os.ftruncate(self.fd, self.node.size)  # the trailing hole, if any
                self.run.apply_metadata(self.fd, self.node)
        except OSError as e:
            self.errors.append(e)
            self.failed = True

    def _place(self, chunk, offset: int, length: int) -> None:
        blob_id, fetched = chunk
        if isinstance(fetched, Exception):
            self.errors.append(fetched)
            return
        location, sealed = fetched
        try:
            data = open_blob(self.run.repo.key, location.entry(blob_id), sealed, pack_id=location.pack_id)
        except FormatError as e:  # CorruptBlob: leave a hole, go on
            self.errors.append(e)
            return
        if len(data) != length:
            self.errors.append(FormatError(f"chunk at offset {offset} is {len(data)} bytes, expected {length}"))
            return
        _write_sparse(self.fd, data, offset)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _atime(node: Node) -> int:
    return node.atime_ns if node.atime_ns is not None else node.mtime_ns


def _remove_existing(dir_fd: int, name: str) -> None:
    """Make room for a new file or link. unlink never follows a symlink: it removes it."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# Zero runs are looked for in 4 KiB blocks, the block size of common filesystems: a
# shorter run could not become a hole anyway.
_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write data at offset into a new file, skipping all-zero 4 KiB blocks.

    The file starts empty, so a skipped block reads back as zeros; it just takes no disk
    space: an image whose chunks are mostly free space is restored as sparse as it was.
    """
    view = memoryview(data)
    n = len(data)
    run_start = None
    for pos in range(0, n, _BLOCK):
        if data[pos : pos + _BLOCK] == _ZERO_BLOCK[: min(_BLOCK, n - pos)]:
            if run_start is not None:
                _pwrite_all(fd, view[run_start:pos], offset + run_start)
                run_start = None
        elif run_start is None:
            run_start = pos
    if run_start is not None:
        _pwrite_all(fd, view[run_start:], offset + run_start)
