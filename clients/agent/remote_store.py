"""The agent's object store: the repository in the ReClo bucket, reached only through the
backup service's REST API (shared/api/backup.py) and the URLs it presigns.

- `list` pages through `GET /api/v1/repository/objects`; `exists` and `size` ask it for
  the one key (a listing, not a HEAD: a URL presigned for GET is not valid for HEAD on S3).
- `get` fetches a download URL (`POST /api/v1/repository/download-urls`), cached until
  shortly before it expires, and GETs it, with a `Range` header for part of an object.
- `put` needs an open backup session (`start_backup`): it asks the session for an upload
  URL (`POST /api/v1/backups/{id}/upload-urls`) and PUTs the bytes with the headers the URL
  was signed with. A key the repository has comes back as `existing`: ObjectExists, as
  the port says. A new repository is therefore created inside the first backup session
  (Repository.init, then the backup).
- `delete` refuses: the agent can add to its repository, never destroy (append-only);
  old backups go through the service's retention (`forget`).

Requests for URLs made in the same event-loop turn (a restore fetching many packs, several
uploads finishing together) go to the service as one request. Relative URLs (the embedded
mode's local store) resolve against the server URL; absolute ones go to S3 directly, with
no bearer token (the URL is the credential). Imports only client-safe code.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from shared.api.backup import (
    KEY_PATTERN,
    MAX_KEYS_PER_REQUEST,
    Backup,
    BackupCommit,
    BackupStart,
    DownloadUrls,
    ObjectSpec,
    PresignedUrl,
    UploadUrls,
)
from shared.format.errors import InvalidKey, ObjectExists, ObjectNotFound, StoreError
from shared.format.store import Bytes, ObjectStore, check_key

from .retrying import RETRY_DELAYS, retried

_KEY = re.compile(KEY_PATTERN)
# A cached download URL is used only while it has at least this long to live: enough for
# a pack to download, so a URL never expires mid-transfer.
URL_MARGIN_SECONDS = 120
# Presigned transfers may be slow (a 32 MiB pack over a thin uplink), API calls are not.
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)

K = TypeVar("K")
R = TypeVar("R")


class ApiError(StoreError):
    """The service refused a request; `problem` is its problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        super().__init__(f"HTTP {status}: {problem.get('detail') or problem.get('title') or 'error'}")


class _Batcher(Generic[K, R]):
    """Gathers the keys asked for within one event-loop turn into one call of `fetch`
    (at most `limit` keys each), and hands each caller its own result."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, R]]], limit: int) -> None:
        self._fetch = fetch
        self._limit = limit
        self._pending: dict[K, list[asyncio.Future]] = {}
        self._scheduled = False

    async def get(self, key: K) -> R:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        for start in range(0, len(keys), self._limit):
            chunk = keys[start:start + self._limit]
            asyncio.ensure_future(self._run(chunk, {k: pending[k] for k in chunk}))

    async def _run(self, keys: list[K], waiters: dict[K, list[asyncio.Future]]) -> None:
        try:
            results = await self._fetch(keys)
        except BaseException as e:  # every caller learns why
            for futures in waiters.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(e)
            return
        for key, futures in waiters.items():
            for f in futures:
                if not f.done():
                    f.set_result(results[key])


_EXISTS = object()  # the upload batcher's answer for a key the repository has


class RemoteStore(ObjectStore):
    def __init__(self, server_url: str, agent_key: str, *, backup_id: str | None = None,
                 http: aiohttp.ClientSession | None = None) -> None:
        self.server_url = server_url.rstrip("/") + "/"
        self.agent_key = agent_key
        self.backup_id = backup_id
        self._http = http
        self._own_http = http is None
        self._download_urls: dict[str, tuple[PresignedUrl, float]] = {}
        self._downloads: _Batcher[str, PresignedUrl | None] = _Batcher(
            self._fetch_download_urls, MAX_KEYS_PER_REQUEST)
        self._uploads: _Batcher[tuple[str, int], Any] = _Batcher(
            self._fetch_upload_urls, MAX_KEYS_PER_REQUEST)
        # Index key -> pack ids it describes, declared with its upload URL (see put()).
        self._declared: dict[str, list[str]] = {}

    # --- plumbing ---------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TRANSFER_TIMEOUT)
        return self._http

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> RemoteStore:
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    async def api(self, method: str, path: str, *, body: Any = None,
                  params: dict[str, str] | None = None) -> Any:
        """One call of the REST API with the agent key; ApiError with the problem if refused."""
        async with self.http.request(
                method, self.server_url + path.lstrip("/"), json=body, params=params,
                headers={"Authorization": f"Bearer {self.agent_key}"}) as response:
            raw = await response.read()
            if response.status >= 400:
                try:
                    problem = json.loads(raw)
                except ValueError:
                    problem = {"title": response.reason or "error"}
                raise ApiError(response.status, problem if isinstance(problem, dict) else {})
            return json.loads(raw) if raw else None

    def _resolve(self, url: str) -> URL:
        # encoded=True: a presigned URL is sent exactly as signed, never re-quoted.
        return URL(urljoin(self.server_url, url), encoded=True)

    @staticmethod
    def _check(key: str) -> str:
        check_key(key)
        if not _KEY.fullmatch(key):
            raise InvalidKey(key, "not a repository key")
        return key

    # --- the backup session -----------------------------------------------------------

    async def start_backup(self, start: BackupStart) -> Backup:
        """Open a backup session; puts go to it until commit or fail. Tried again on a
        lost connection or a 5xx when the agent chose the id (the server then answers a
        repeat with the same session), once otherwise."""
        async def once(attempt: int) -> Any:
            return await self.api("POST", "/api/v1/backups", body=start.model_dump(mode="json"))

        answer = await retried(once, RETRY_DELAYS if start.id else ())
        backup = Backup.model_validate(answer)
        self.backup_id = backup.id
        return backup

    async def commit(self, commit: BackupCommit) -> Backup:
        """Tried again like the store's calls: the server answers a repeated commit of the
        same snapshot with the backup, so a lost answer costs nothing."""
        async def once(attempt: int) -> Any:
            return await self.api("POST", f"/api/v1/backups/{self._session()}/commit",
                                  body=commit.model_dump(mode="json"))

        return Backup.model_validate(await retried(once))

    async def fail(self, reason: str) -> Backup:
        return Backup.model_validate(await self.api(
            "POST", f"/api/v1/backups/{self._session()}/fail", body={"reason": reason[:2000] or "failed"}))

    def _session(self) -> str:
        if self.backup_id is None:
            raise StoreError("no backup session is open: start_backup() first")
        return self.backup_id

    # --- reading ----------------------------------------------------------------------

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for key, _ in self.list_with_sizes(prefix):
            yield key

    async def list_with_sizes(self, prefix: str = "", page_size: int = MAX_KEYS_PER_REQUEST
                              ) -> AsyncIterator[tuple[str, int]]:
        cursor: str | None = None
        while True:
            params = {"prefix": prefix, "limit": str(page_size)}
            if cursor:
                params["cursor"] = cursor
            page = await self.api("GET", "/api/v1/repository/objects", params=params)
            for item in page["items"]:
                yield item["key"], item["size"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def size(self, key: str) -> int:
        self._check(key)
        async for found, size in self.list_with_sizes(key, page_size=1):
            if found == key:  # keys sort before every longer key they prefix
                return size
            break
        raise ObjectNotFound(key)

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
            return True
        except ObjectNotFound:
            return False

    async def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        self._check(key)
        if (offset is not None and offset < 0) or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            await self.size(key)  # an empty read still needs the object
            return b""
        headers = {}
        start = offset or 0
        ranged = bool(start) or length is not None
        if ranged:
            headers["Range"] = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
        for attempt in range(2):
            url = await self._download_url(key, fresh=attempt > 0)
            async with self.http.get(self._resolve(url.url), headers=headers) as response:
                if response.status == 206 or (response.status == 200 and not ranged):
                    return await response.read()
                if response.status == 200:  # the server ignored the range
                    data = await response.read()
                    return data[start:] if length is None else data[start:start + length]
                if response.status == 416:
                    return b""  # the range starts at or past the end
                if response.status == 404:
                    self._download_urls.pop(key, None)
                    raise ObjectNotFound(key)
                if response.status == 403 and attempt == 0:
                    continue  # expired or revoked: once more with a fresh URL
                raise StoreError(f"GET {key}: HTTP {response.status} {response.reason}")
        raise AssertionError("unreachable")

    async def _download_url(self, key: str, fresh: bool = False) -> PresignedUrl:
        cached = self._download_urls.get(key)
        if cached is not None and not fresh and cached[1] > time.monotonic():
            return cached[0]
        url = await self._downloads.get(key)
        if url is None:
            raise ObjectNotFound(key)
        return url

    async def _fetch_download_urls(self, keys: list[str]) -> dict[str, PresignedUrl | None]:
        found = DownloadUrls.model_validate(await self.api(
            "POST", "/api/v1/repository/download-urls", body={"keys": keys}))
        result: dict[str, PresignedUrl | None] = dict.fromkeys(keys)
        for url in found.urls:
            result[url.key] = url
            self._download_urls[url.key] = (url, self._usable_until(url))
        return result

    @staticmethod
    def _usable_until(url: PresignedUrl) -> float:
        lifetime = url.expires_at.timestamp() - time.time()
        return time.monotonic() + lifetime - URL_MARGIN_SECONDS

    # --- writing ----------------------------------------------------------------------

    async def put(self, key: str, data: Bytes, *, packs: Sequence[str] | None = None) -> None:
        """Store a new object. `packs`: for an index file, the packs it describes (lets the
        service's garbage collection delete it once they are all gone)."""
        self._check(key)
        if packs is not None:
            self._declared[key] = list(packs)
        try:
            url = await self._uploads.get((key, len(data)))
        finally:
            self._declared.pop(key, None)
        if url is _EXISTS:
            raise ObjectExists(key)
        async with self.http.put(self._resolve(url.url), data=bytes(data), headers=url.headers) as response:
            if 200 <= response.status < 300:
                return
            if response.status in (409, 412):  # another writer stored the key first
                raise ObjectExists(key)
            detail = (await response.text())[:300]
            raise StoreError(f"PUT {key}: HTTP {response.status} {response.reason}: {detail}")

    async def _fetch_upload_urls(self, items: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
        by_key: dict[str, int] = {}
        for key, size in items:
            if by_key.setdefault(key, size) != size:  # one key put twice with two sizes
                raise StoreError(f"{key} is being stored twice with different sizes")
        objects = [ObjectSpec(key=k, size=s, packs=self._declared.get(k)) for k, s in by_key.items()]
        answer = UploadUrls.model_validate(await self.api(
            "POST", f"/api/v1/backups/{self._session()}/upload-urls",
            body={"objects": [o.model_dump(mode="json", exclude_none=True) for o in objects]}))
        urls = {u.key: u for u in answer.urls}
        existing = set(answer.existing)
        return {(k, s): _EXISTS if k in existing else urls[k] for k, s in items}

    async def delete(self, key: str) -> None:
        raise StoreError("an agent cannot delete: the repository is append-only; old backups "
                         "are removed by the service's retention (forget)")
