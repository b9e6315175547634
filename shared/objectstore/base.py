"""What the backup service needs from a bucket beyond the format's `ObjectStore` port.

The format's port (`shared.format.store.ObjectStore`) is what a repository reads and writes.
The service also hands out presigned URLs, lists pages with sizes (the agent's listing
route), walks keys in order with their times (garbage collection), deletes in batches and
finds the folders of the bucket (rebuilding the catalogue). A `BucketStore` is one
bucket under one key prefix; `scoped(prefix)` narrows it further (one host's repository)
over the same connection.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.api.backup import PresignedUrl
from shared.format.store import ObjectStore

# One DeleteObjects call takes at most this many keys (an S3 limit); listings come in
# pages of this size too.
BATCH = 1000


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    modified: datetime  # UTC


class BucketStore(ObjectStore):
    """An `ObjectStore` over (bucket, prefix) that can also presign and list in pages."""

    bucket: str
    prefix: str

    @abstractmethod
    def scoped(self, prefix: str) -> BucketStore:
        """The same bucket under `self.prefix + prefix` (prefix ends with '/')."""

    @abstractmethod
    async def presign_put(self, key: str, size: int, ttl: int) -> PresignedUrl:
        """A URL to create `key` once, with a body of exactly `size` bytes."""

    @abstractmethod
    async def presign_get(self, key: str, ttl: int) -> PresignedUrl:
        """A URL to read `key` (whole or, with a Range header, in part)."""

    @abstractmethod
    def scan(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Objects whose key starts with prefix, in ascending key order, after start_after."""

    @abstractmethod
    async def children(self, prefix: str = "") -> list[str]:
        """The immediate 'folders' under prefix: names of the next key segment."""

    async def list_page(self, prefix: str, start_after: str | None, limit: int) -> list[ObjectInfo]:
        page: list[ObjectInfo] = []
        async for info in self.scan(prefix, start_after):
            page.append(info)
            if len(page) >= limit:
                break
        return page

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def close(self) -> None:
        """Release connections (the root store owns them; scoped views share them)."""
