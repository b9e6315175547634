"""The S3 adapter: one bucket under one key prefix, through aiobotocore.

Append-only writes use S3's conditional PUT (`If-None-Match: *`, honoured by S3 since 2024
and by moto): a PUT of an existing key fails with 412 instead of overwriting, atomically on
the server, so two writers racing for one key store exactly one object. Presigned PUT URLs
sign that header and `Content-Length`: the agent must send both exactly as given, so it can
neither overwrite an object nor store a body of another size than the service approved.
(moto does not check signatures at all; on real S3 a changed header is a 403
SignatureDoesNotMatch.)

Requests use Signature Version 4 and path-style addressing (`endpoint/bucket/key`), which
every S3-compatible endpoint accepts (moto, MinIO) and which needs no DNS per bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from shared.api.backup import PresignedUrl
from shared.format.errors import ObjectExists, ObjectNotFound, StoreError
from shared.format.store import Bytes, check_key
from shared.objectstore.base import BATCH, BucketStore, ObjectInfo

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# 412: the key exists; 409: another conditional write of the key is in progress.
_EXISTS = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Connection:
    """The aiobotocore clients one root store and all its scoped views share.

    Opened on first use (so building a service does no I/O), closed by `close()`.
    `presign_endpoint` is where the agents reach S3 when that differs from where the
    service does (a signature covers the host name).
    """

    def __init__(self, *, bucket: str, endpoint: str | None, region: str,
                 create_bucket: bool = False, presign_endpoint: str | None = None) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.presign_endpoint = presign_endpoint or endpoint
        self.region = region
        self.create_bucket = create_bucket
        self._stack: AsyncExitStack | None = None
        self._client = None
        self._presigner = None
        self._lock = asyncio.Lock()

    def _config(self) -> AioConfig:
        return AioConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                         retries={"max_attempts": 3, "mode": "standard"})

    async def client(self):
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    await self._open()
        return self._client

    async def presigner(self):
        await self.client()
        return self._presigner

    async def _open(self) -> None:
        session = get_session()
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(session.create_client(
                "s3", endpoint_url=self.endpoint, region_name=self.region, config=self._config()))
            presigner = client
            if self.presign_endpoint != self.endpoint:
                presigner = await stack.enter_async_context(session.create_client(
                    "s3", endpoint_url=self.presign_endpoint, region_name=self.region,
                    config=self._config()))
            await self._ensure_bucket(client)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._client, self._presigner = stack, client, presigner

    async def _ensure_bucket(self, client) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _code(e) not in _NOT_FOUND and _status(e) != 404:
                raise
        if not self.create_bucket:
            raise StoreError(f"bucket {self.bucket} does not exist")
        options = {}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit location
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await client.create_bucket(Bucket=self.bucket, **options)
        except ClientError as e:
            if _code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client, self._presigner = self._stack, None, None, None
            await stack.aclose()


class S3Store(BucketStore):
    def __init__(self, connection: S3Connection, prefix: str = "") -> None:
        self.connection = connection
        self.bucket = connection.bucket
        self.prefix = prefix

    def scoped(self, prefix: str) -> S3Store:
        return S3Store(self.connection, self.prefix + prefix)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # --- the format's port ---

    async def put(self, key: str, data: Bytes) -> None:
        full = self._key(key)
        body = bytes(data)
        client = await self.connection.client()
        try:
            await client.put_object(Bucket=self.bucket, Key=full, Body=body,
                                    ContentLength=len(body), IfNoneMatch="*")
        except ClientError as e:
            if _code(e) in _EXISTS or _status(e) in (409, 412):
                raise ObjectExists(key) from None
            raise

    async def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        if (offset is not None and offset < 0) or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        full = self._key(key)
        client = await self.connection.client()
        if length == 0:
            await self.size(key)  # a zero-length read still needs the object
            return b""
        options = {}
        if offset or length is not None:
            start = offset or 0
            options["Range"] = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
        try:
            response = await client.get_object(Bucket=self.bucket, Key=full, **options)
            async with response["Body"] as body:
                return await body.read()
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            if _code(e) == "InvalidRange" or _status(e) == 416:
                return b""  # the range starts at or past the end
            raise

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
            return True
        except ObjectNotFound:
            return False

    async def size(self, key: str) -> int:
        full = self._key(key)
        client = await self.connection.client()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as e:
            if _code(e) in _NOT_FOUND or _status(e) == 404:
                raise ObjectNotFound(key) from None
            raise
        return int(head["ContentLength"])

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for info in self.scan(prefix):
            yield info.key

    async def delete(self, key: str) -> None:
        client = await self.connection.client()
        await client.delete_object(Bucket=self.bucket, Key=self._key(key))

    # --- what the service needs besides ---

    async def presign_put(self, key: str, size: int, ttl: int) -> PresignedUrl:
        presigner = await self.connection.presigner()
        url = await presigner.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._key(key), "ContentLength": size,
                    "IfNoneMatch": "*"},
            ExpiresIn=ttl,
        )
        return PresignedUrl(key=key, url=url, method="PUT",
                            headers={"Content-Length": str(size), "If-None-Match": "*"},
                            expires_at=_expiry(ttl))

    async def presign_get(self, key: str, ttl: int) -> PresignedUrl:
        presigner = await self.connection.presigner()
        url = await presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=ttl)
        return PresignedUrl(key=key, url=url, method="GET", expires_at=_expiry(ttl))

    async def scan(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        client = await self.connection.client()
        options = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                   "PaginationConfig": {"PageSize": BATCH}}
        if start_after:
            options["StartAfter"] = self.prefix + start_after
        cut = len(self.prefix)
        async for page in client.get_paginator("list_objects_v2").paginate(**options):
            for item in page.get("Contents", ()):
                yield ObjectInfo(item["Key"][cut:], int(item["Size"]), _utc(item["LastModified"]))

    async def list_page(self, prefix: str, start_after: str | None, limit: int) -> list[ObjectInfo]:
        client = await self.connection.client()
        options = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": limit}
        if start_after:
            options["StartAfter"] = self.prefix + start_after
        page = await client.list_objects_v2(**options)
        cut = len(self.prefix)
        return [ObjectInfo(item["Key"][cut:], int(item["Size"]), _utc(item["LastModified"]))
                for item in page.get("Contents", ())]

    async def children(self, prefix: str = "") -> list[str]:
        client = await self.connection.client()
        full = self.prefix + prefix
        names = []
        async for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                names.append(common["Prefix"][len(full):].rstrip("/"))
        return names

    async def delete_many(self, keys: Iterable[str]) -> None:
        client = await self.connection.client()
        batch: list[str] = []

        async def flush() -> None:
            if not batch:
                return
            result = await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True})
            errors = result.get("Errors") or []
            if errors:
                raise StoreError(f"{len(errors)} object(s) could not be deleted, e.g. "
                                 f"{errors[0].get('Key')}: {errors[0].get('Code')}")
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) >= BATCH:
                await flush()
        await flush()

    async def close(self) -> None:
        await self.connection.close()


def _expiry(ttl: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=ttl)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
