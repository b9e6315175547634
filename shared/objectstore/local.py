"""The local object store of the embedded mode: the format's `LocalFolderStore` under
`<data dir>/objects/<bucket>/<prefix>`, plus presigned URLs served by the backup service
(`signing.py`) and a streaming put for the bodies those URLs bring in.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.api.backup import PresignedUrl
from shared.format.errors import ObjectExists
from shared.format.store import _TEMP_PREFIX, LocalFolderStore, _fsync_dir, check_key
from shared.objectstore.base import BATCH, BucketStore, ObjectInfo
from shared.objectstore.signing import UrlSigner

# Bodies arriving in small network chunks are written to disk in pieces of this size, so a
# 32 MiB pack costs a few dozen writes (and thread hops), not thousands.
WRITE_BUFFER = 1024 * 1024


class SizeMismatch(Exception):
    def __init__(self, expected: int, received: int) -> None:
        self.expected = expected
        self.received = received
        more = "more than" if received > expected else f"{received} bytes, not"
        super().__init__(f"the body has {more} the {expected} bytes the URL was signed for")


class LocalBucketStore(LocalFolderStore, BucketStore):
    def __init__(self, objects_root: str | os.PathLike, bucket: str, signer: UrlSigner,
                 prefix: str = "") -> None:
        self.objects_root = Path(objects_root)
        self.bucket = bucket
        self.prefix = prefix
        self.signer = signer
        folder = self.objects_root / bucket
        if prefix:
            folder = folder.joinpath(*check_key(prefix.rstrip("/")).split("/"))
        super().__init__(folder)

    def scoped(self, prefix: str) -> LocalBucketStore:
        return LocalBucketStore(self.objects_root, self.bucket, self.signer, self.prefix + prefix)

    # --- presigned URLs ---

    async def presign_put(self, key: str, size: int, ttl: int) -> PresignedUrl:
        expires = _expiry(ttl)
        url = self.signer.url("PUT", self.bucket, self.prefix + check_key(key),
                              int(expires.timestamp()), size)
        return PresignedUrl(key=key, url=url, method="PUT", expires_at=expires)

    async def presign_get(self, key: str, ttl: int) -> PresignedUrl:
        expires = _expiry(ttl)
        url = self.signer.url("GET", self.bucket, self.prefix + check_key(key),
                              int(expires.timestamp()))
        return PresignedUrl(key=key, url=url, method="GET", expires_at=expires)

    # --- a body streamed in by a presigned PUT ---

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], size: int) -> None:
        """Store exactly `size` bytes from `chunks` under `key`, never overwriting.

        The body goes to a temporary file beside the target (so memory stays flat whatever
        the size), then is hard-linked into place like `LocalFolderStore.put` does."""
        path = self._path(key)
        if await asyncio.to_thread(path.exists):
            raise ObjectExists(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        temp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        f = await asyncio.to_thread(open, temp, "xb")
        try:
            received = 0
            buffer = bytearray()
            async for chunk in chunks:
                received += len(chunk)
                if received > size:
                    raise SizeMismatch(size, received)
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    await asyncio.to_thread(f.write, buffer)
                    buffer = bytearray()
            if received != size:
                raise SizeMismatch(size, received)
            await asyncio.to_thread(_finish, f, buffer)
            try:
                await asyncio.to_thread(os.link, temp, path)
            except FileExistsError:
                raise ObjectExists(key) from None
            await asyncio.to_thread(_fsync_dir, path.parent)
        finally:
            f.close()
            temp.unlink(missing_ok=True)

    def open_for_reading(self, key: str):
        """The object's file, opened (FileNotFoundError if missing), and its size."""
        f = open(self._path(key), "rb")
        return f, os.fstat(f.fileno()).st_size

    # --- listing in key order ---

    async def scan(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        walk = self._walk("", prefix, start_after)
        while True:
            page = await asyncio.to_thread(_take, walk, BATCH)
            for info in page:
                yield info
            if len(page) < BATCH:
                return

    def _walk(self, folder: str, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """Keys under `folder` in ascending order: entries sorted with folders as `name/`
        are exactly the order of the keys beneath them. Skips folders outside the prefix
        and folders wholly at or before start_after."""
        try:
            with os.scandir(self.root.joinpath(*folder.rstrip("/").split("/")) if folder else self.root) as it:
                entries = []
                for entry in it:
                    if entry.name.startswith(_TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((entry.name + "/", entry))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append((entry.name, entry))
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda item: item[0])
        for name, entry in entries:
            key = folder + name
            if name.endswith("/"):
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after and key < start_after and not start_after.startswith(key):
                    continue
                yield from self._walk(key, prefix, start_after)
            elif key.startswith(prefix) and (start_after is None or key > start_after):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def children(self, prefix: str = "") -> list[str]:
        folder = self.root.joinpath(*check_key(prefix.rstrip("/")).split("/")) if prefix else self.root

        def names() -> list[str]:
            try:
                return sorted(e.name for e in os.scandir(folder)
                              if e.is_dir(follow_symlinks=False) and not e.name.startswith(_TEMP_PREFIX))
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await asyncio.to_thread(names)


def _finish(f, buffer: bytes) -> None:
    if buffer:
        f.write(buffer)
    f.flush()
    os.fsync(f.fileno())


def _take(walk: Iterator[ObjectInfo], n: int) -> list[ObjectInfo]:
    page = []
    for info in walk:
        page.append(info)
        if len(page) >= n:
            break
    return page


def _expiry(ttl: int) -> datetime:
    # Whole seconds: the URL carries the expiry as a unix time.
    return (datetime.now(UTC) + timedelta(seconds=ttl)).replace(microsecond=0)
