"""The gateway's /api/v1 as the Recovery Manager calls it: the session token in an
Authorization header, answers as JSON, refusals as :class:`ApiError` in the server's own
words, and an unreachable server as :class:`Unreachable`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from clients.recovery.exits import ApiError, NotSignedIn, RecoverError, Unreachable

# API calls answer in well under a minute; a silent server for that long is gone.
API_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
# Lists are read whole, page by page, up to this many items (a catalogue, not an export).
MAX_ITEMS = 10_000
PAGE = 200


def seg(value: str) -> str:
    """An id as one path segment: it can never change the path's shape."""
    return quote(str(value), safe="")


def problem_message(status: int, body: Any) -> tuple[str, list]:
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or f"the server answered {status}"
        errors = body.get("errors") if isinstance(body.get("errors"), list) else []
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('location', [])[1:]) or 'request'}: {e.get('message')}"
            for e in errors if isinstance(e, dict))
        return (f"{detail} ({fields})" if fields else str(detail)), errors
    return f"the server answered {status}", []


class Api:
    def __init__(self, server: str, token: str | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Api:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=API_TIMEOUT)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Api(...)`"
        return self._session

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def url(self, path: str) -> str:
        return f"{self.server}/api/v1{path}"

    async def call(self, method: str, path: str, *, json_body: Any = None,
                   params: dict[str, str] | None = None) -> Any:
        """The JSON the server answered (None for no body). An answer that breaks off is
        Unreachable; one that is not JSON (a proxy's login page, a wrong --server) is an
        error that says so, never a Python exception further on."""
        async with self.open(method, path, json_body=json_body, params=params) as response:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise Unreachable(f"the answer from {self.server} broke off: "
                                  f"{exc.__class__.__name__} {exc}".strip()) from None
            if response.status == 204 or not raw:
                return None
            try:
                if "json" not in response.headers.get("Content-Type", ""):
                    raise ValueError("not JSON")
                return json.loads(raw)
            except ValueError:
                raise RecoverError(
                    f"{self.server} answered {response.status} with "
                    f"{response.headers.get('Content-Type') or 'no content type'}, not ReClo's "
                    "JSON: is --server the ReClo gateway?") from None

    @contextlib.asynccontextmanager
    async def open(self, method: str, path: str, *, json_body: Any = None,
                   params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                   timeout: aiohttp.ClientTimeout | None = None,
                   ok: tuple[int, ...] = ()) -> AsyncIterator[aiohttp.ClientResponse]:
        """The open response of a successful request (or one whose status is in ``ok``)."""
        try:
            response = await self.session.request(
                method, self.url(path), json=json_body, params=params,
                headers=self.headers(headers), timeout=timeout or API_TIMEOUT,
                allow_redirects=True)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.server}: {exc.__class__.__name__} {exc}".strip()) from None
        async with response:
            if response.status >= 400 and response.status not in ok:
                await raise_for(response)
            yield response

    async def all(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        items: list[Any] = []
        query = {**(params or {}), "limit": str(PAGE)}
        while True:
            page = await self.call("GET", path, params=query)
            items.extend(page["items"])
            if not page.get("next_cursor") or len(items) >= MAX_ITEMS:
                return items
            query["cursor"] = page["next_cursor"]


async def raise_for(response: aiohttp.ClientResponse) -> None:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    message, errors = problem_message(response.status, body)
    if response.status == 401:
        raise NotSignedIn(f"{message}: sign in again with `reclo-recover login`")
    raise ApiError(response.status, message, errors)
