"""Assembling a disk image from a backup: the snapshot's image entry, chunk by chunk, into a
sparse raw file in the scratch folder.

Every chunk is read through the format's reader (``packreader.PackReader`` then
``pack.open_blob``: authenticated decryption, length and keyed-id check), so a damaged
backup stops the assembly with the pack and offset at fault instead of becoming a disk
with garbage in it (unlike a file restore, a half-right disk is worse than none). Holes
are never written, and all-zero 4 KiB blocks inside chunks are skipped, so the file is as
sparse as the disk was.

Chunks are read a window at a time (``PackReader.read_in_order``): the window's chunks
grouped by pack and fetched as a few coalesced byte ranges per pack instead of one request
per chunk. They are decrypted several at once and written in the disk's order; the caller
is told after each one. Because they are written in order, "the first N chunks are on
disk" is a checkpoint a resumed task can start from (after ``sync``).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from shared.format import FormatError, Repository
from shared.format.packreader import Blob, PackReader
from shared.format.snapshot import IMAGE, Node
from shared.format.sparse import data_runs, pwrite_all


class NoImage(Exception):
    pass


class Damaged(Exception):
    """A chunk is missing or does not verify; the message names the pack and offset."""


@dataclass(frozen=True)
class DiskPlan:
    name: str
    disk_bytes: int  # the disk's size as a machine sees it
    data_bytes: int  # bytes in stored chunks (not holes): what the assembly writes
    chunks: tuple[tuple[int, int, bytes], ...]  # (offset, length, chunk id) of stored chunks


async def plan_disk(repo: Repository, snapshot_id: str) -> DiskPlan:
    """The first image entry of the snapshot (the boot disk), as chunks to fetch."""
    snapshot = await repo.load_snapshot(snapshot_id)
    root = await repo.load_tree(snapshot.tree)
    image = next((n for n in root.nodes if n.type == IMAGE), None)
    if image is None:
        raise NoImage(snapshot_id)
    return _plan(image)


def _plan(node: Node) -> DiskPlan:
    chunks = []
    offset = 0
    for ref in node.content or ():
        if ref.id is not None:
            chunks.append((offset, ref.length, ref.id))
        offset += ref.length
    if offset != node.size:
        raise Damaged(f"the image entry {node.name!r} lists {offset} bytes of content for a "
                      f"disk of {node.size} bytes")
    return DiskPlan(node.name, node.size, sum(length for _, length, _ in chunks), tuple(chunks))


Report = Callable[[int, Callable[[], Awaitable[None]]], Awaitable[None]]


async def assemble(repo: Repository, plan: DiskPlan, path: Path, *, start: int,
                   ahead: int, report: Report) -> None:
    """Write chunks ``start`` … of ``plan`` into ``path`` (created when start is 0, else
    continued). After each chunk, ``report(chunks done, sync)``: awaiting ``sync`` makes
    everything written so far durable, for a checkpoint. ``ahead``: requests in flight,
    and chunks being decrypted, at once."""
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    flags |= (os.O_CREAT | os.O_TRUNC) if start == 0 else 0
    fd = await asyncio.to_thread(os.open, path, flags, 0o600)

    async def sync() -> None:
        await asyncio.to_thread(os.fdatasync, fd)

    loop = asyncio.get_running_loop()
    chunks = plan.chunks
    reader = PackReader(repo, concurrency=ahead)
    opening: deque[asyncio.Future] = deque()  # chunks being decrypted, in disk order
    done = start

    async def write_oldest() -> None:
        nonlocal done
        data = await opening.popleft()
        await loop.run_in_executor(None, _write_sparse, fd, data, chunks[done][0])
        done += 1
        await report(done, sync)

    try:
        await asyncio.to_thread(os.ftruncate, fd, plan.disk_bytes)
        wanted = [blob_id for _, _, blob_id in chunks[start:]]
        async with aclosing(reader.read_in_order(wanted)) as blobs:
            async for blob in blobs:
                opening.append(asyncio.ensure_future(
                    repo.dictionaries.in_thread(_open_chunk, repo, chunks[start + blob.position], blob)))
                if len(opening) >= ahead:
                    await write_oldest()
        while opening:
            await write_oldest()
        await sync()
    finally:
        for future in opening:
            future.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        os.close(fd)


def _open_chunk(repo: Repository, chunk: tuple[int, int, bytes], blob: Blob) -> bytes:
    """In a worker thread: the chunk's verified plaintext, or Damaged naming where it is."""
    offset, length, _ = chunk
    try:
        data = blob.open(repo.key, repo.dictionaries)
    except FormatError as e:  # MissingBlob, MissingPack, CorruptBlob, a store error
        raise Damaged(f"{e} (the chunk at disk offset {offset})") from None
    if len(data) != length:
        raise Damaged(f"the chunk at disk offset {offset} is {len(data)} bytes, the snapshot "
                      f"says {length}")
    return data


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write all but the zero blocks (the file was extended with ftruncate, so they read
    back as zeros). Resuming over a chunk written before writes the same bytes again."""
    view = memoryview(data)
    for start, end in data_runs(data):
        pwrite_all(fd, [view[start:end]], offset + start)
