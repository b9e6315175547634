"""Backing up folders and disk images into a snapshot.

A backup walks each folder source depth first, directory by directory, and turns it
into tree blobs; files are read, chunked, hashed, compressed and sealed in worker threads
(all of that releases the GIL) while the event loop uploads finished packs. The walk goes
on while a directory's files are still being read (a directory's node is finished by a
task once they are done), and a big file's chunks are hashed, compressed and sealed on
every core, so neither a directory nor a file ever leaves a core idle. Image sources
(a raw image file, a VHD(X) file, a block device) become one `image` entry cut into
fixed, aligned chunks; so do the files of a folder that are rewritten in place
(databases, VM disks: DEFAULT_IN_PLACE_PATTERNS), where the repository records fixed
chunking.

- full: every file is read and hashed again; only chunks the repository lacks are stored,
  so a weekly full costs little more upload than an incremental.
- incremental: a file whose size, mtime, ctime and inode equal those recorded in the
  parent snapshot keeps the parent's chunk list and is not read. With a tree cache (the
  agent keeps one, treecache.py), a folder none of whose entries changed keeps its
  parent's tree without the parent's tree being read at all.

Nothing about one file stops the backup: a special file (fifo, socket, device) inside a
folder is skipped, a file that vanishes or cannot be read is left out, a file that
changes while read is stored as read; each is reported in the result's warnings.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fnmatch
import json
import os
import socket
import stat
import threading
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterator, Sequence

from .errors import FormatError, SourceNotFound
from .progress import Meter, ProgressCallback
from .memory import return_big_buffers_to_the_system
from .chunker import ImageChunker, Piece
from .constants import DICTIONARY_MAX_CHUNK, DICTIONARY_MIN_FILE
from .dictionaries import read_samples, train
from .dictionary import DictionaryEncoder
from .in_place import DEFAULT_IN_PLACE_MIN_SIZE, DEFAULT_IN_PLACE_PATTERNS
from .inplace_helper import HELPERS, InPlaceHelpers
from .pack import BlobType
from . import readahead
from .repository import BlobSaver, Repository
from .treecache import FOLDER_TOTALS, FolderRecord, TreeCache, folder_signature, signature
from .snapshot import (
    DIR,
    FILE,
    FULL,
    IMAGE,
    INCREMENTAL,
    SYMLINK,
    ChunkRef,
    Node,
    Snapshot,
    SnapshotStats,
    SourceInfo,
    Tree,
    append_ref,
)

FOLDER = "folder"
# Changes whenever what a tree cache records, or what a tree's nodes hold, changes: caches
# of other versions are not used.
TREE_CACHE_VERSION = "tree-cache-2"

# Files at least this large are hashed, compressed and sealed on every core (a few chunks
# at a time), not only on the thread that reads them: otherwise the last big file of a
# backup runs alone on one core.
_FAN_OUT_MIN_SIZE = 8 * 1024 * 1024
# Files up to this size are read in batches, one worker task for several of them: for a
# tiny file the hand-off to a worker and back costs more than reading it, and with one
# task per file the workers sat idle most of the time on a tree of small files.
_SMALL_FILE_SIZE = 256 * 1024
_SMALL_BATCH_FILES = 64
_SMALL_BATCH_BYTES = 1024 * 1024
# Small files a backup holds open at once to ask the kernel for them ahead of reading
# (_Run._opened_ahead): two batches' worth, whatever the number of workers, far below
# the usual limit of 1024 descriptors; past it a file is opened when it is read.
_OPEN_AHEAD = 2 * _SMALL_BATCH_FILES
# How many subfolders may be walked beside the walk at once (_Run._subfolder). Each walk
# holds the listing and old tree of every folder on its path, so what the walk holds at
# once is up to (1 + _WALKS_ASIDE) * depth of them, plus _LookAhead.MOST looked at ahead
# (before walking aside: 3 * depth). Fewer walks aside, or fewer looks ahead, left deep
# trees waiting for one read at a time (docs/BENCHMARKS.md, "The walk against a slow store").
_WALKS_ASIDE = 8
# A big file's pieces go to the chunk pool in batches of this many bytes, or of this many
# pieces when most are stored already or holes, which weigh nothing.
_BATCH_BYTES = 1024 * 1024
_BATCH_PIECES = 1024


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)  # don't touch atime (allowed for the file's owner or root)
_O_BINARY = getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class Source:
    path: str
    kind: str = FOLDER  # FOLDER | IMAGE


@dataclass
class BackupResult:
    snapshot_id: str
    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)

    @property
    def stats(self) -> SnapshotStats:
        return self.snapshot.stats


def excluded(patterns: Sequence[str], rel_path: str, name: str) -> bool:
    """Glob patterns: without '/', matched against the entry's name; with '/', against its
    path relative to the source root ('*' also matches '/')."""
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(rel_path, pattern.strip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def folder_sizes(root: str, excludes: Sequence[str], stop: threading.Event) -> Iterator[tuple[int, int]]:
    """The regular files (not excluded) under root, counted folder by folder: (files,
    bytes) of each, until stop is set. scandir's entries know their type without a system
    call, so only regular files are stat'ed."""
    pending = [(root, "")]
    while pending and not stop.is_set():
        dirpath, rel_dir = pending.pop()
        files, nbytes = 0, 0
        try:
            with os.scandir(dirpath) as it:
                for entry in it:
                    if stop.is_set():  # a folder can be huge
                        return
                    name = entry.name
                    if excludes and excluded(excludes, rel_dir + name, name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append((entry.path, rel_dir + name + "/"))
                        elif entry.is_file(follow_symlinks=False):
                            files += 1
                            nbytes += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
        yield files, nbytes


def warm_up(roots: Sequence[str], excludes: Sequence[str], stop: threading.Event) -> int:
    """Look at every file under roots once, so that the kernel has their folders and
    inodes in memory when the walk comes: run it in a thread while the repository's key
    is derived (scrypt lets go of the interpreter for ~0.2 s), and stop it then. An
    incremental that keeps its parent's totals has no progress scanner to do this, and
    its walk met every inode cold. Returns the files looked at."""
    return sum(files for root in roots for files, _ in folder_sizes(root, excludes, stop))


def _node_from_stat(name: str, node_type: str, st: os.stat_result) -> Node:
    return Node(
        name=name,
        type=node_type,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        dev=st.st_dev,
        size=st.st_size if node_type == FILE else 0,
    )


def _source_names(sources: Sequence[Source]) -> list[str]:
    names: list[str] = []
    for s in sources:
        base = os.path.basename(os.path.normpath(s.path)).replace(":", "") or "root"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


class Archiver:
    def __init__(
        self,
        repo: Repository,
        *,
        host: str | None = None,
        tags: Sequence[str] = (),
        excludes: Sequence[str] = (),
        progress: ProgressCallback | None = None,
        progress_interval: float = 0.25,
        workers: int | None = None,
        adopt_unindexed: bool = True,
        in_place: Sequence[str] = DEFAULT_IN_PLACE_PATTERNS,
        in_place_min_size: int = DEFAULT_IN_PLACE_MIN_SIZE,
        tree_cache: TreeCache | None = None,
        inplace_helpers: int = HELPERS,
    ):
        self.repo = repo
        self.host = host or socket.gethostname()
        self.tags = list(tags)
        self.excludes = list(excludes)
        self.progress_callback = progress
        self.progress_interval = progress_interval
        self.workers = workers or os.cpu_count() or 2
        # Before backing up, index packs a killed backup stored but never indexed, so not
        # even they are uploaded again. Costs one listing of data/ (1000 packs per request
        # on S3, i.e. ~32 GiB of repository per request).
        self.adopt_unindexed = adopt_unindexed
        self.in_place = [p.lower() for p in in_place]
        self.in_place_min_size = in_place_min_size
        # Written by every backup; the caller commits it once the snapshot counts.
        self.tree_cache = tree_cache
        # Processes an incremental finds the changes of files rewritten in place in; 0: none.
        self.inplace_helpers = inplace_helpers

    def tree_settings(self) -> str:
        """What, besides the files, decides a folder's tree: a tree cache made under other
        settings is not used."""
        return json.dumps([TREE_CACHE_VERSION, self.repo.config.encode().decode(),
                           sorted(self.excludes), sorted(self.in_place), self.in_place_min_size])

    def rewritten_in_place(self, name: str, size: int) -> bool:
        if size < self.in_place_min_size:
            return False
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, p) for p in self.in_place)

    async def backup(
        self, sources: Sequence[Source | str], *, kind: str = INCREMENTAL, parent: str | None = None
    ) -> BackupResult:
        """Back up the sources. An incremental without a usable parent becomes a full.

        parent: the snapshot to compare with; by default the latest one of this host with
        the same source paths.
        """
        if kind not in (FULL, INCREMENTAL):
            raise ValueError(f"kind must be {FULL!r} or {INCREMENTAL!r}")
        srcs = [Source(s) if isinstance(s, str) else s for s in sources]
        # one spelling per source, so the parent of /srv/data/ is found as /srv/data
        srcs = [Source(os.path.abspath(s.path), s.kind) for s in srcs]
        if not srcs:
            raise ValueError("nothing to back up")
        for s in srcs:
            if not os.path.exists(s.path):
                raise SourceNotFound(s.path)
        return_big_buffers_to_the_system()
        run = _Run(self, srcs, kind, parent)
        return await run.execute()


class _Run:
    """The state of one backup."""

    def __init__(self, archiver: Archiver, sources: list[Source], kind: str, parent: str | None):
        self.a = archiver
        self.repo = archiver.repo
        self.sources = sources
        self.names = _source_names(sources)
        self.kind = kind
        self.parent_id = parent
        self.warnings: list[str] = []
        self.stats = SnapshotStats()
        # totals grow while the scanner is still counting
        self.meter = Meter(archiver.progress_callback, archiver.progress_interval)
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._tasks: set[asyncio.Future] = set()
        self.looked_ahead = 0  # folders looked at ahead and not yet walked (_LookAhead)
        self._open_ahead = threading.Semaphore(_OPEN_AHEAD)  # files held open by _read_files
        self._walking: asyncio.Task | None = None  # the walk of the sources
        self._failure: BaseException | None = None  # the first failure of a task of the walk
        self.cache: TreeCache | None = archiver.tree_cache
        self.cache_usable = False  # the cache describes the parent: unchanged folders are kept
        self.source_name = ""  # the folder source being walked (the cache's key)
        self._warned_dirs: set[str] = set()  # folders not to record in the cache
        self.parent_snapshot: Snapshot | None = None
        self.parent_indexed = False
        self.helpers: InPlaceHelpers | None = None  # an incremental's (inplace_helper.py)

    # --- the whole run ---

    async def execute(self) -> BackupResult:
        started_at = datetime.now(timezone.utc)  # a snapshot is dated when it began reading
        started = time.monotonic()
        await self.repo.load_index()  # what other backups stored since we opened
        if self.a.adopt_unindexed:
            _, unreadable = await self.repo.recover_unindexed_packs()
            for problem in unreadable:
                self.warn("repository", f"unindexed pack left alone: {problem}")
        parent_root = await self._parent_root()
        if self.cache is not None:
            self.cache_usable = self.cache.begin(
                parent=self.parent_id if self.kind == INCREMENTAL else None,
                settings=self.a.tree_settings())
            packs = self.cache.parent_packs
            if packs is not None and not all(self.repo.index.has_pack(p) for p in packs):
                self.cache.set_aside()  # some of the parent's data is gone: look at everything
                self.cache_usable = False
            # Every pack the parent references is indexed, hence every chunk of its files:
            # a file found unchanged needs no lookup of each of its chunks (_reuse).
            self.parent_indexed = self.cache_usable and packs is not None
        self.pool = ThreadPoolExecutor(self.a.workers, thread_name_prefix="reclo-backup")
        # Pieces of big files; a separate pool, as file tasks wait for it (no deadlock).
        self.chunk_pool = ThreadPoolExecutor(self.a.workers, thread_name_prefix="reclo-chunks")
        self.file_slots = asyncio.Semaphore(self.a.workers * 2)
        self.walks_aside = _WALKS_ASIDE
        self.saver: BlobSaver = self.repo.saver()
        if self.kind == INCREMENTAL and self.parent_indexed and self.a.inplace_helpers > 0:
            self.helpers = InPlaceHelpers(self.repo.key.id_key, self.a.inplace_helpers)
        loop = asyncio.get_running_loop()
        if self.cache_usable and self.parent_snapshot is not None:
            # No second walk: the parent's totals are a good guess, final at the end.
            parent_stats = self.parent_snapshot.stats
            self.meter.add_total(parent_stats.files + parent_stats.images, parent_stats.bytes)
            scanner = loop.create_future()
            scanner.set_result(None)
        else:
            scanner = loop.run_in_executor(None, self._count_totals)
        ticker = self.meter.start()
        me = asyncio.current_task()
        cancels = me.cancelling() if me is not None else 0  # the caller's, before the walk
        try:
            self._walking = asyncio.ensure_future(self._walk_sources(parent_root))
            failure = None
            try:
                nodes = await self._walking
            except asyncio.CancelledError:
                if self._failure is None or me is None or me.cancelling() > cancels:
                    raise  # the caller's cancel stays a cancel
                failure = self._failure  # what stopped the walk (_forget)
            if failure is not None:
                raise failure  # outside the except: it keeps its own cause and context
            root_id, _ = await self.saver.save_tree_async(nodes)
            await self.saver.flush()  # packs, then their index files ...
        except BaseException:
            try:
                await self._abandon()
                await self.saver.abort()
            finally:
                if self.cache is not None:
                    self.cache.close()  # the current cache stays as it was
            raise
        finally:
            self._stop.set()
            if ticker is not None:
                ticker.cancel()
            await asyncio.gather(scanner, *([ticker] if ticker else []), return_exceptions=True)
            self.pool.shutdown(wait=True)
            self.chunk_pool.shutdown(wait=True)
            if self.helpers is not None:
                self.helpers.close()

        s = self.stats
        s.new_chunks = self.saver.stats.new_blobs[BlobType.DATA]
        s.new_bytes = self.saver.stats.new_bytes[BlobType.DATA] + self.saver.stats.new_bytes[BlobType.TREE]
        s.stored_bytes = self.saver.stats.stored_bytes
        s.warnings = len(self.warnings)
        s.duration_s = round(time.monotonic() - started, 3)
        snapshot = Snapshot(
            time=started_at,
            host=self.a.host,
            kind=self.kind,
            tree=root_id,
            sources=[SourceInfo(name, src.path, src.kind) for src, name in zip(self.sources, self.names)],
            parent=self.parent_id if self.kind == INCREMENTAL else None,
            tags=self.a.tags,
            stats=s,
        )
        snapshot_id = await self.repo.save_snapshot(snapshot)  # ... then the snapshot
        # What was backed up is the total: the parent's, which an incremental starts from,
        # or the scanner's, counted while files came and went, were estimates.
        self.meter.totals_are_done()
        self.meter.report()
        return BackupResult(snapshot_id, snapshot, self.warnings)

    async def _walk_sources(self, parent_root: Tree | None) -> list[Node]:
        """Each source's node, walked one source after another."""
        nodes = []
        for source, name in zip(self.sources, self.names):
            old = parent_root.find(name) if parent_root else None
            if source.kind == IMAGE:
                node = await self._image(source.path, name, old)
            else:
                self.source_name = name
                node = await self._folder(source.path, name, old)
            if node is not None:
                nodes.append(node)
        return nodes

    async def _parent_root(self) -> Tree | None:
        if self.kind != INCREMENTAL:
            self.parent_id = None
            return None
        if self.parent_id is None:
            paths = sorted((s.path, s.kind) for s in self.sources)
            for sid, snap in reversed(await self.repo.list_snapshots()):
                if snap.host == self.a.host and sorted((x.path, x.kind) for x in snap.sources) == paths:
                    self.parent_id = sid
                    break
        if self.parent_id is None:
            self.kind = FULL
            return None
        self.parent_snapshot = await self.repo.load_snapshot(self.parent_id)
        return await self.repo.load_tree(self.parent_snapshot.tree)

    async def _abandon(self) -> None:
        """After a failure or a cancel: the walks stop where they are (cancelled), the
        threads reading files at their next piece (_stop) and the saver takes nothing
        more; returns once none of this backup's tasks runs. A second cancel meanwhile
        leaves the threads ending by themselves, none of them waiting for the loop."""
        self._stop.set()
        self.saver.stop()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                if isinstance(task, asyncio.Task):
                    task.cancel()  # a walk, a look ahead, a folder's finish (not a thread's future)
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine) -> asyncio.Task:
        """A task of this backup's walk: _abandon cancels it. Its failure stops the walk
        at once and is what backup() raises (_forget); a failure after the first is
        dropped, not reported as never retrieved."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._failure is None and not self._stop.is_set():
            # Every folder awaits its entries, so the backup fails with this anyway, but
            # only once the folder above gets to it: stop the walk now, not after what
            # the other walks and reads would still do.
            self._failure = error
            if self._walking is not None:
                self._walking.cancel()

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}")
        # The folder the path is in (and the path, if a folder) is not recorded in the tree
        # cache, nor any folder above it (_DirDone.clean): the next backup looks at that
        # path again, and warns again if it must.
        self._warned_dirs.update((path, os.path.dirname(path)))

    # --- progress ---

    def _count_read(self, n: int) -> None:
        with self._stats_lock:
            self.stats.bytes_read += n

    def _count_totals(self) -> None:
        """Runs in a thread beside the backup, so a progress bar can show totals early."""
        for source in self.sources:
            if source.kind == IMAGE:
                try:
                    with open(source.path, "rb", buffering=0) as f:
                        size = f.seek(0, os.SEEK_END)
                except OSError:
                    size = 0
                self.meter.add_total(1, size)
                continue
            for files, nbytes in folder_sizes(source.path, self.a.excludes, self._stop):
                self.meter.add_total(files, nbytes)
            if self._stop.is_set():
                return
        self.meter.totals_known()

    # --- folders ---

    async def _folder(self, path: str, name: str, old: Node | None) -> Node | None:
        try:
            st = os.stat(path)  # a source given as a symlink means its target
        except OSError as e:
            raise SourceNotFound(path) from e
        if not stat.S_ISDIR(st.st_mode):
            raise FormatError(f"folder source {path!r} is not a directory (use an image source for files)")
        return (await (await self._dir(path, "", name, st, old))).node

    def _remembered(self, rel: str) -> FolderRecord | None:
        return self.cache.lookup(self.source_name, rel) if self.cache_usable else None  # type: ignore[union-attr]

    async def _dir(
        self, path: str, rel: str, name: str, st: os.stat_result, old: Node | None,
        remembered: FolderRecord | None | bool = True, looked: asyncio.Future[_Looked] | None = None,
    ) -> asyncio.Future[_DirDone]:
        """Walk a directory: start reading its files, walk its subdirectories, and return
        a task that finishes its node once all of them are done.

        The walk does not wait for a directory's files before going on to the next one,
        or the last big file of each directory would run alone on one core while the
        others idle. What is in flight stays bounded by file_slots (files being read),
        so at most that many directories wait for their files.

        ``remembered``: the tree cache's record of this folder (True: look it up).
        ``looked``: what _look found of it, if already started (_LookAhead)."""
        seen = await (looked or self._look(path, rel, old, remembered))
        remembered, kept, own = seen.remembered, seen.kept, seen.own
        if seen.unchanged:
            # Its own entries are as remembered: only its subfolders are walked (here, as
            # the walk goes, like any folder's).
            assert isinstance(remembered, FolderRecord) and own is not None
            records = [(n, est, self._remembered(_child_rel(rel, n))) for n, est in kept if stat.S_ISDIR(est.st_mode)]
            old_nodes: dict[str, Node] = {}
            if any(record is None for _, _, record in records):
                # not recorded (it warned): compared with its old tree
                old_tree = await self._old_tree(path, remembered.tree)
                old_nodes = {n.name: n for n in old_tree[1]} if old_tree else {}
            subfolders = [(n, est, None if record is not None else old_nodes.get(n), record)
                          for n, est, record in records]
            ahead = _LookAhead(self, path, rel, [(n, sub_old, record) for n, _, sub_old, record in subfolders])
            walked = []
            for entry_name, est, sub_old, record in subfolders:
                walked.append(await self._subfolder(os.path.join(path, entry_name), _child_rel(rel, entry_name),
                                                    entry_name, est, sub_old, record, ahead.next()))
            work = self._finish_remembered(path, rel, name, st, kept, own, remembered, walked)
        else:
            old_tree = seen.old_tree
            old_nodes = {n.name: n for n in old_tree[1]} if old_tree else {}
            pending = await self._start_entries(path, rel, kept, old_nodes)
            work = self._finish_dir(pending, path, rel, name, st, own, old_tree)
        return self._spawn(work)

    async def _subfolder(
        self, path: str, rel: str, name: str, st: os.stat_result, old: Node | None,
        remembered: FolderRecord | None | bool, looked: asyncio.Future[_Looked],
    ) -> asyncio.Future[_DirDone]:
        """Walk a subfolder (_dir): beside the walk, in a task of its own, while fewer
        than _WALKS_ASIDE of those run; otherwise here and now. A big file in a later
        folder (the VM disk after the users' shares) then starts reading while the walk
        is still busy with the many small folders before it, instead of after them."""
        if self.walks_aside <= 0:
            return await self._dir(path, rel, name, st, old, remembered, looked)
        self.walks_aside -= 1
        walking = True

        def walked(_=None) -> None:  # its walk is done; its files may still be read
            nonlocal walking
            if walking:
                walking = False
                self.walks_aside += 1

        async def aside() -> _DirDone:
            try:
                finishing = await self._dir(path, rel, name, st, old, remembered, looked)
            finally:
                walked()
            return await finishing

        task = self._spawn(aside())
        task.add_done_callback(walked)  # also if cancelled before it began
        return task

    async def _look(self, path: str, rel: str, old: Node | None,
                    remembered: FolderRecord | None | bool) -> _Looked:
        """What the walk must know of a folder before it walks it: its entries, and, if
        they are not as the tree cache remembers them, its tree in the parent snapshot
        (whose nodes its files are compared with). Both are reads from disk or the
        store, which _LookAhead starts for the next subfolders while the walk is busy in
        the current one."""
        if remembered is True:
            remembered = self._remembered(rel)
        try:
            entries = await asyncio.to_thread(_scan, path)
        except OSError as e:
            self.warn(path, f"cannot list directory: {e.strerror or e}")
            entries = []
        kept = entries
        if self.a.excludes:
            kept = [(n, est) for n, est in entries
                    if not excluded(self.a.excludes, _child_rel(rel, n), n)]
        own = folder_signature(kept) if self.cache is not None else None
        if isinstance(remembered, FolderRecord) and remembered.own == own:
            return _Looked(remembered, kept, own, unchanged=True)
        if old is not None and old.type == DIR:
            old_tree = await self._old_tree(path, old.subtree)
        elif isinstance(remembered, FolderRecord):  # a walk that skipped the parent's tree
            old_tree = await self._old_tree(path, remembered.tree)
        else:
            old_tree = None
        return _Looked(remembered or None, kept, own, old_tree=old_tree)

    async def _old_tree(self, path: str, tree_id: bytes | None) -> tuple[bytes, list[Node]] | None:
        """The parent snapshot's tree of this folder and its nodes."""
        if tree_id is None:
            return None
        try:
            nodes = (await self.repo.load_tree(tree_id)).nodes
        except FormatError as e:
            self.warn(path, f"parent snapshot's tree unreadable, reading everything: {e}")
            return None
        return tree_id, nodes

    async def _start_entries(self, path: str, rel: str, kept: list[tuple[str, os.stat_result]],
                             old_nodes: dict[str, Node], walked: dict[str, _DirDone] | None = None,
                             ) -> list[Node | _DirDone | asyncio.Future | None]:
        """Start each entry's node: files read (or kept from the parent), subfolders walked
        (or taken from ``walked``)."""
        pending: list[Node | _DirDone | asyncio.Future | _InBatch | None] = []
        ahead = _LookAhead(self, path, rel, [
            (n, old_nodes.get(n), True) for n, est in kept
            if stat.S_ISDIR(est.st_mode) and (walked is None or n not in walked)])
        batch = _SmallFiles()
        for entry_name, est in kept:
            child = os.path.join(path, entry_name)
            child_rel = _child_rel(rel, entry_name)
            mode = est.st_mode
            if walked is not None and entry_name in walked:
                pending.append(walked[entry_name])
            elif stat.S_ISDIR(mode):
                pending.append(await self._subfolder(child, child_rel, entry_name, est,
                                                     old_nodes.get(entry_name), True, ahead.next()))
            elif stat.S_ISREG(mode) and est.st_size <= _SMALL_FILE_SIZE:
                reused = self._reuse(entry_name, est, old_nodes.get(entry_name), FILE)
                if reused is not None:
                    pending.append(reused)
                    continue
                pending.append(batch.add(child, entry_name, est.st_size))
                if batch.full():
                    await self._read_batch(batch)
                    batch = _SmallFiles()
            elif stat.S_ISREG(mode):
                pending.append(await self._file(child, entry_name, est, old_nodes.get(entry_name)))
            elif stat.S_ISLNK(mode):
                pending.append(self._symlink(child, entry_name, est))
            else:
                self.warn(child, f"skipped special file ({_kind_of(mode)})")
        if batch.files:
            await self._read_batch(batch)
        return pending

    async def _finish_dir(
        self,
        pending: list[Node | _DirDone | asyncio.Future | _InBatch | None],
        path: str,
        rel: str,
        name: str,
        st: os.stat_result,
        own: bytes | None,
        old_tree: tuple[bytes, list[Node]] | None,
    ) -> _DirDone:
        nodes = []
        wholes = []  # (name, whole signature) of the subfolders
        clean = True  # nothing below warned
        for p in pending:
            if isinstance(p, _InBatch):
                done = await p.node()
            else:
                done = (await p) if isinstance(p, asyncio.Future) else p
            if isinstance(done, _DirDone):
                wholes.append((done.node.name, done.whole))
                clean = clean and done.clean
                done = done.node
            if done is not None:
                nodes.append(done)
        if old_tree is not None and nodes == old_tree[1]:
            # Nothing in it changed (the usual case in an incremental): the parent's tree
            # is this tree, so skip encoding and hashing it again. On a million unchanged
            # files this is most of what the walk would otherwise spend.
            tree_id = old_tree[0]
            # in a worker: a saver that tracks references looks up every chunk of the folder
            await asyncio.get_running_loop().run_in_executor(self.pool, self.saver.reuse_tree, tree_id, nodes)
        else:
            tree_id, _ = await self.saver.save_tree_async(nodes)
        whole = b""
        clean = clean and path not in self._warned_dirs
        if own is not None:
            whole = signature([own, *wholes])
            if clean:
                self.cache.record(self.source_name, rel,  # type: ignore[union-attr]
                                  FolderRecord(own, whole, tree_id, **_own_totals(nodes)))
        return self._dir_node(name, st, tree_id, whole, clean)

    async def _finish_remembered(
        self, path: str, rel: str, name: str, st: os.stat_result,
        kept: list[tuple[str, os.stat_result]], own: bytes, remembered: FolderRecord,
        walked: list[asyncio.Future[_DirDone]],
    ) -> _DirDone:
        """A folder whose own entries are as the tree cache remembers them: its files are
        neither read nor compared, only its subfolders are walked. If they are unchanged
        too, its tree is the remembered one; otherwise its files' nodes come from that
        tree, with the subfolders' new nodes."""
        done = [await f for f in walked]
        whole = signature([own, *((d.node.name, d.whole) for d in done)])
        if whole == remembered.whole and path not in self._warned_dirs:
            tree_id = remembered.tree
        else:
            old_tree = await self._old_tree(path, remembered.tree)
            if old_tree is None:  # unreadable: read this folder's files after all
                pending = await self._start_entries(path, rel, kept, {},
                                                    walked={d.node.name: d for d in done})
                return await self._finish_dir(pending, path, rel, name, st, own, None)
            new = {d.node.name: d.node for d in done}
            nodes = [new[n.name] if n.type == DIR else n for n in old_tree[1]]
            tree_id, _ = await self.saver.save_tree_async(nodes)
        with self._stats_lock:  # its files count as they did in the parent
            for field_name in FOLDER_TOTALS:
                setattr(self.stats, field_name,
                        getattr(self.stats, field_name) + getattr(remembered, field_name))
        self.meter.advance(files=remembered.files, nbytes=remembered.bytes)
        clean = path not in self._warned_dirs and all(d.clean for d in done)
        if clean:
            self.cache.record(self.source_name, rel,  # type: ignore[union-attr]
                              replace(remembered, own=own, whole=whole, tree=tree_id))
        return self._dir_node(name, st, tree_id, whole, clean)

    def _dir_node(self, name: str, st: os.stat_result, tree_id: bytes, whole: bytes,
                  clean: bool) -> _DirDone:
        with self._stats_lock:
            self.stats.dirs += 1
        node = _node_from_stat(name, DIR, st)
        node.subtree = tree_id
        return _DirDone(node, whole, clean)

    def _symlink(self, path: str, name: str, st: os.stat_result) -> Node | None:
        try:
            target = os.readlink(path)
        except OSError as e:
            self.warn(path, f"cannot read symlink: {e.strerror or e}")
            return None
        node = _node_from_stat(name, SYMLINK, st)
        node.target = target
        node.size = len(os.fsencode(target))
        with self._stats_lock:
            self.stats.symlinks += 1
        return node

    async def _file(self, path: str, name: str, st: os.stat_result, old: Node | None) -> Node | asyncio.Future:
        reused = self._reuse(name, st, old, FILE)
        if reused is not None:
            return reused
        await self.file_slots.acquire()  # bounds files in flight (and the memory they hold)
        return self._in_thread(self._read_file, path, name, FILE, old)

    async def _read_batch(self, batch: _SmallFiles) -> None:
        """Read a batch of small files in one worker task; one file slot, as the files are
        read one after another (what they hold in memory is one small file's)."""
        await self.file_slots.acquire()
        batch.future.set_result(self._in_thread(self._read_files, batch.files))

    def _in_thread(self, read, *args) -> asyncio.Future:
        """Reading in a worker thread, holding a file slot until it ends. What the walk
        awaits is a shield of it: a cancelled folder does not mark the read done while
        its thread still runs, and _abandon waits for the thread itself."""
        future = asyncio.get_running_loop().run_in_executor(self.pool, read, *args)
        self._tasks.add(future)
        future.add_done_callback(lambda f: (self.file_slots.release(), self._forget(f)))
        return asyncio.shield(future)

    def _read_files(self, files: list[tuple[str, str]]) -> list[Node | None]:
        """A batch of small files: all opened and asked for first, then read one by one
        (readahead.py)."""
        opened = [self._opened_ahead(path) for path, _ in files]
        chunks: list[tuple[bytes, bytes, DictionaryEncoder | None]] = []
        try:
            nodes = [self._read_file(path, name, FILE, opened=f, deferred=chunks)
                     for (path, name), f in zip(files, opened)]
        finally:
            for f in opened:
                if f is not None and not isinstance(f, OSError):
                    f.close()
                    self._open_ahead.release()
        self.saver.save_data_many(chunks)  # the whole batch's at once (_Deferred)
        return nodes

    def _opened_ahead(self, path: str):
        """A small file of a batch, opened and its data asked for; or why it could not be
        opened; or None: opened when it is read, as the backup holds _OPEN_AHEAD files
        open already, or the process may open no more."""
        if not self._open_ahead.acquire(blocking=False):
            return None
        try:
            f = _open_for_reading(path, follow=False)
        except OSError as e:
            self._open_ahead.release()
            return None if e.errno in (errno.EMFILE, errno.ENFILE) else e
        readahead.will_need(f.fileno())
        return f

    def _reuse(self, name: str, st: os.stat_result, old: Node | None, node_type: str) -> Node | None:
        """The parent's node, refreshed, if the file did not change since the parent."""
        if self.kind != INCREMENTAL or old is None or old.type != node_type or old.content is None:
            return None
        if (old.size, old.mtime_ns, old.ctime_ns, old.inode) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return None
        if not self.parent_indexed and any(r.id is not None and r.id not in self.repo.index for r in old.content):
            return None  # the parent references a chunk the index lacks: read the file again
        node = _node_from_stat(name, node_type, st)
        node.size = old.size
        node.content = old.content
        node.dictionary = old.dictionary
        self._count_file(node, read=False)
        return node

    def _count_file(self, node: Node, read: bool) -> None:
        with self._stats_lock:
            s = self.stats
            if node.type == IMAGE:
                s.images += 1
            else:
                s.files += 1
            s.bytes += node.size
            for r in node.content or ():
                if r.id is None:
                    s.hole_bytes += r.length
                else:
                    s.chunks += 1
        self.meter.advance(files=1, nbytes=0 if read else node.size)

    # --- reading (worker threads) ---

    def _read_file(self, path: str, name: str, node_type: str, old: Node | None = None,
                   opened=None, deferred: list | None = None) -> Node | None:
        """opened: the file, or why it could not be opened, if the caller opened it.
        deferred: where a small file's chunks go to be saved with its batch's (_Deferred)."""
        if self._stop.is_set():
            raise _Stopping(path)  # queued before the backup was abandoned
        try:
            if isinstance(opened, OSError):
                raise opened
            f = opened if opened is not None else _open_for_reading(path, follow=node_type == IMAGE)
        except FileNotFoundError:
            self.warn(path, "vanished before it could be read")
            return None
        except OSError as e:
            self.warn(path, f"cannot open: {e.strerror or e}")
            return None
        with f:
            before = os.fstat(f.fileno())
            if node_type == FILE and not stat.S_ISREG(before.st_mode):
                self.warn(path, "changed into something other than a file; skipped")
                return None
            if node_type == IMAGE:
                size = f.seek(0, os.SEEK_END)
                chunker = self.repo.image_chunker
            else:
                size = before.st_size
                if opened is None and size < _FAN_OUT_MIN_SIZE:
                    readahead.will_need(f.fileno())  # all of it at once, not a window at a time
                chunker = self.repo.file_chunker
                if self.repo.in_place_chunker is not None and self.a.rewritten_in_place(name, size):
                    chunker = self.repo.in_place_chunker
            dictionary = None if chunker is self.repo.file_chunker else self._dictionary(f, size, chunker, path, old)
            content: list[ChunkRef] = []
            total = 0
            known = frozenset()
            if self.parent_indexed and old is not None and old.type == node_type and old.content:
                known = frozenset(r.id for r in old.content if r.id is not None)
            if size >= _FAN_OUT_MIN_SIZE:
                sink: _Sink = _FannedOut(self, content, dictionary, known)
            elif deferred is not None and size <= _SMALL_FILE_SIZE:  # not one that grew since listed
                sink = _Deferred(self, content, dictionary, known, deferred)
            else:
                sink = _Inline(self, content, dictionary, known)
            pieces = chunker.pieces(f, size, on_read=self._count_read)
            if known and self.helpers is not None and chunker is not self.repo.file_chunker \
                    and size >= _FAN_OUT_MIN_SIZE:
                # Rewritten in place: a helper process finds and compresses the chunks that
                # changed, beside this process instead of in it (inplace_helper.py).
                pieces = self.helpers.pieces(f, size, chunker, known, dictionary, self.saver.save_encoded_many,
                                             on_read=self._count_read)
            try:
                for piece in pieces:
                    if self._stop.is_set():
                        raise _Stopping(path)
                    sink.add(piece)
                    total += piece.length
                    self.meter.advance(nbytes=piece.length)  # holes count as done: progress is logical
                sink.finish()
            except OSError as e:
                self.warn(path, f"read error, skipped: {e.strerror or e}")
                self.meter.advance(files=1, nbytes=size - total)
                return None
            finally:
                pieces.close()  # a helper given back, or stopped half-way (not left to the GC)
                sink.close()
            after = os.fstat(f.fileno())
        if node_type == FILE and (
            total != size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
        ):
            self.warn(path, "changed while it was read; stored as read")
        node = _node_from_stat(name, node_type, before)
        node.size = total
        node.content = content
        node.dictionary = None if dictionary is None else dictionary.id
        self._count_file(node, read=True)
        if total < size:
            self.meter.advance(nbytes=size - total)
        return node

    def _dictionary(self, f, size: int, chunker: ImageChunker, path: str, old: Node | None) -> DictionaryEncoder | None:
        """What to compress the fixed chunks of a file with: the dictionary of its last
        backup, or one trained on its own chunks; None where one would not pay (docs/format.md §3)."""
        chunk = chunker.chunking.chunk_size(size)
        if not self.repo.config.dictionaries or size < DICTIONARY_MIN_FILE or chunk > DICTIONARY_MAX_CHUNK:
            return None
        dictionaries = self.repo.dictionaries
        if old is not None and old.dictionary is not None:
            try:
                return dictionaries.get_from_worker(old.dictionary, self._stop).encoder(chunk)
            except FormatError as e:
                if self._stop.is_set():
                    raise _Stopping(path) from None  # not unusable: the backup is stopping
                self.warn(path, f"the dictionary of its last backup is unusable, training a new one: {e}")
        try:
            samples = read_samples(f.fileno(), size, chunk)
        except OSError:
            return None  # the read that follows meets the error too, and reports it
        if self._stop.is_set():
            raise _Stopping(path)
        trained = train(samples)
        return None if trained is None else dictionaries.add_from_worker(trained, self._stop).encoder(chunk)

    # --- images ---

    async def _image(self, path: str, name: str, old: Node | None) -> Node | None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise SourceNotFound(path) from e
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise FormatError(f"image source {path!r} is neither a file nor a block device")
        if stat.S_ISREG(st.st_mode):
            # A block device's mtime says nothing about its content: always read it.
            reused = self._reuse(name, st, old, IMAGE)
            if reused is not None:
                return reused
        await self.file_slots.acquire()
        return await self._in_thread(self._read_file, path, name, IMAGE, old)


class _Stopping(Exception):
    """Raised in a thread reading a file when the backup is abandoned (_Run._abandon)."""


class _Sink:
    """Where a file's pieces go. known: chunk ids the repository is known to hold (the
    parent's chunks of the file, when all its packs are indexed): a piece found among
    them is not looked up in the index, which for a database rewritten in a few places
    is nearly every piece."""

    def __init__(self, run: _Run, content: list[ChunkRef], dictionary: DictionaryEncoder | None,
                 known: frozenset[bytes]):
        self.saver = run.saver
        self.key = run.repo.key
        self.content = content
        self.dictionary = dictionary
        self.known = known

    def _ref(self, piece: Piece) -> ChunkRef:
        if piece.id is not None:  # stored already (inplace_helper.py)
            return ChunkRef(piece.id, piece.length)
        if piece.data is None:
            return ChunkRef(None, piece.length)
        blob_id = self.key.chunk_id(piece.data)
        if blob_id not in self.known:
            self.saver.save(BlobType.DATA, piece.data, blob_id, self.dictionary)
        return ChunkRef(blob_id, piece.length)


class _Inline(_Sink):
    """Pieces of a small file, saved by the thread that reads it."""

    def add(self, piece: Piece) -> None:
        ref = self._ref(piece)
        if ref.id is None:
            append_ref(self.content, ref)
        else:
            self.content.append(ref)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Deferred(_Sink):
    """Pieces of a file in a batch of small files: hashed as they are read, saved with the
    whole batch's once every file of it is read (_Run._read_files), so that the index is
    asked about them in one query instead of one each (on disk, a query is a hand-off of
    the GIL; 64 small files, 64 of them). A file that fails to read adds nothing."""

    def __init__(self, run: _Run, content: list[ChunkRef], dictionary: DictionaryEncoder | None,
                 known: frozenset[bytes], batch: list):
        super().__init__(run, content, dictionary, known)
        self.batch = batch
        self.mine: list[tuple[bytes, bytes, DictionaryEncoder | None]] = []

    def add(self, piece: Piece) -> None:
        if piece.id is not None:  # stored already (inplace_helper.py)
            self.content.append(ChunkRef(piece.id, piece.length))
            return
        if piece.data is None:
            append_ref(self.content, ChunkRef(None, piece.length))
            return
        blob_id = self.key.chunk_id(piece.data)
        if blob_id not in self.known:
            self.mine.append((piece.data, blob_id, self.dictionary))
        self.content.append(ChunkRef(blob_id, piece.length))

    def finish(self) -> None:
        self.batch.extend(self.mine)
        self.mine = []

    def close(self) -> None:
        self.mine = []


class _FannedOut(_Sink):
    """Pieces of a big file, saved on every core: the reading thread reads and cuts,
    batches of pieces are hashed, compressed and sealed in the chunk pool. At most a few
    batches are in flight (bounded memory); their refs are appended in file order."""

    def __init__(self, run: _Run, content: list[ChunkRef], dictionary: DictionaryEncoder | None,
                 known: frozenset[bytes]):
        super().__init__(run, content, dictionary, known)
        self.pool = run.chunk_pool
        self.limit = 2 * run.a.workers
        self.window: collections.deque[Future[list[ChunkRef]]] = collections.deque()
        self.batch: list[Piece] = []
        self.batch_bytes = 0

    def add(self, piece: Piece) -> None:
        self.batch.append(piece)
        if piece.data is not None:
            self.batch_bytes += piece.length
        if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_PIECES:
            self._submit()
            while len(self.window) > self.limit:
                self._collect()

    def finish(self) -> None:
        if self.batch:
            self._submit()
        while self.window:
            self._collect()

    def close(self) -> None:
        """After a failure: nothing may still be writing into content when we return."""
        for future in self.window:
            future.cancel()
        futures.wait(self.window)
        self.window.clear()

    def _submit(self) -> None:
        self.window.append(self.pool.submit(self._save, self.batch))
        self.batch, self.batch_bytes = [], 0

    def _collect(self) -> None:
        for ref in self.window.popleft().result():
            if ref.id is None:
                append_ref(self.content, ref)
            else:
                self.content.append(ref)

    def _save(self, batch: list[Piece]) -> list[ChunkRef]:
        """The batch's pieces hashed, then the index asked about all of them at once."""
        ids = [piece.id if piece.data is None else self.key.chunk_id(piece.data) for piece in batch]
        self.saver.save_data_many([(piece.data, blob_id, self.dictionary) for piece, blob_id in zip(batch, ids)
                                   if piece.data is not None and blob_id not in self.known])  # type: ignore[misc]
        return [ChunkRef(blob_id, piece.length) for piece, blob_id in zip(batch, ids)]


class _LookAhead:
    """Looks at a folder's next subfolders (_Run._look: their listings, and their old
    trees where needed) while the walk is in the current one. Listing is system calls
    (an lstat of every entry) and an old tree a read from the repository, each
    milliseconds on a cold disk or a remote store: one after another they were most of
    an incremental's walk, with the files to read waiting behind it."""

    AHEAD = 4  # subfolders of one folder
    # ... and of all folders being walked at once: what the looked-at folders hold (a
    # listing, an old tree) stays bounded however wide and deep the tree and however many
    # walks go on aside.
    MOST = 64

    def __init__(self, run: _Run, path: str, rel: str,
                 folders: list[tuple[str, Node | None, FolderRecord | None | bool]]) -> None:
        self._run = run
        self._path = path
        self._rel = rel
        self._folders = iter(folders)  # (name, its parent-snapshot node, its record)
        self._started: collections.deque[asyncio.Future[_Looked]] = collections.deque()

    def next(self) -> asyncio.Future[_Looked]:
        """What _look found of the next subfolder (in the order given)."""
        run = self._run
        while len(self._started) <= self.AHEAD and (not self._started or run.looked_ahead < self.MOST):
            folder = next(self._folders, None)
            if folder is None:
                break
            name, old, remembered = folder
            rel = _child_rel(self._rel, name)
            self._started.append(run._spawn(run._look(os.path.join(self._path, name), rel, old, remembered)))
            run.looked_ahead += 1
        run.looked_ahead -= 1
        return self._started.popleft()


@dataclass
class _Looked:
    """A folder as _Run._look found it: its record in the tree cache, its entries (as
    kept by the excludes) and their signature; if they are as recorded (unchanged),
    only its subfolders need walking, otherwise old_tree is its tree in the parent
    snapshot, if it has one, with that tree's nodes."""

    remembered: FolderRecord | None
    kept: list[tuple[str, os.stat_result]]
    own: bytes | None
    unchanged: bool = False
    old_tree: tuple[bytes, list[Node]] | None = None


class _SmallFiles:
    """Small files of one folder gathered for one worker task (_read_batch). Each file's
    place in the folder holds an _InBatch until the batch is started."""

    def __init__(self) -> None:
        self.files: list[tuple[str, str]] = []
        self.bytes = 0
        # The worker task's future, once the batch is full and started.
        self.future: asyncio.Future[asyncio.Future[list[Node | None]]] = \
            asyncio.get_running_loop().create_future()

    def add(self, path: str, name: str, size: int) -> _InBatch:
        self.files.append((path, name))
        self.bytes += size
        return _InBatch(self, len(self.files) - 1)

    def full(self) -> bool:
        return len(self.files) >= _SMALL_BATCH_FILES or self.bytes >= _SMALL_BATCH_BYTES


@dataclass
class _InBatch:
    """A file read as part of a batch: its node is the batch's result at ``index``."""

    owner: _SmallFiles
    index: int

    async def node(self) -> Node | None:
        return (await (await self.owner.future))[self.index]


@dataclass
class _DirDone:
    """A walked folder: its node, the signature of its whole subtree, and whether nothing
    in it warned (tree cache: only clean folders are recorded)."""

    node: Node
    whole: bytes
    clean: bool = True


def _own_totals(nodes: list[Node]) -> dict[str, int]:
    """A folder's own entries counted as the snapshot's statistics count them."""
    totals = dict.fromkeys(FOLDER_TOTALS, 0)
    for node in nodes:
        if node.type == SYMLINK:
            totals["symlinks"] += 1
        elif node.type == FILE:
            totals["files"] += 1
            totals["bytes"] += node.size
            for r in node.content or ():
                if r.id is None:
                    totals["hole_bytes"] += r.length
                else:
                    totals["chunks"] += 1
    return totals


def _child_rel(rel: str, name: str) -> str:
    """The path of an entry relative to its source's root ("" is the root)."""
    return f"{rel}/{name}" if rel else name


def _scan(path: str) -> list[tuple[str, os.stat_result]]:
    """A directory's entries with their lstat, sorted by name bytes (a stable tree order)."""
    out = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # vanished between listing and stat
    out.sort(key=lambda item: os.fsencode(item[0]))
    return out


def _open_for_reading(path: str, follow: bool):
    flags = os.O_RDONLY | _O_BINARY | getattr(os, "O_CLOEXEC", 0) | (0 if follow else _O_NOFOLLOW)
    try:
        fd = os.open(path, flags | _O_NOATIME)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EINVAL) or not _O_NOATIME:
            raise
        fd = os.open(path, flags)
    return os.fdopen(fd, "rb", buffering=0)


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "unknown type"
