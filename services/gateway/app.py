"""Composition root of the gateway: upstream URLs, the token cache, the HTTP client."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiohttp

from services.gateway import api, portal
from services.gateway.domain import UPSTREAMS, TokenCache
from shared.api.auth import Introspection
from shared.bus import Bus
from shared.events import Envelope, TokenEnded, payload_of, utcnow
from shared.http.identity import Identity, sign
from shared.http.problems import Problem, unauthorized
from shared.logs import get_logger
from shared.runtime import ServiceRuntime
from shared.settings import Settings

log = get_logger(__name__)

GATEWAY = Identity(kind="service", service="gateway")


class Gateway:
    def __init__(self, settings: Settings, key: bytes,
                 urls: dict[str, str] | None = None) -> None:
        self.key = key
        self.max_body = settings.gateway.max_body_bytes
        self.max_object_body = settings.gateway.max_object_bytes
        self.timeout = aiohttp.ClientTimeout(total=None,
                                             sock_connect=5,
                                             sock_read=settings.gateway.upstream_timeout_seconds)
        self.urls = urls or {name: settings.url_for(name).rstrip("/") for name in UPSTREAMS}
        self.tokens = TokenCache(settings.gateway.token_cache_seconds)
        self._http: aiohttp.ClientSession | None = None
        self._openapi: dict[str, Any] | None = None
        self._checks: dict[str, tuple[int, asyncio.Future[Identity]]] = {}  # key -> (ticket, check)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            # One pool of kept-alive connections per upstream for all callers, and no
            # cookie jar: a cookie one caller's answer set must never ride along with
            # another caller's request (and the jar costs time on every request).
            self._http = aiohttp.ClientSession(
                timeout=self.timeout, auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def call(self, service: str, method: str, path: str, json: Any = None):
        """A signed call of the gateway's own to a service's internal API."""
        headers = sign(GATEWAY, method, path, self.key)
        return await self.http.request(method, self.urls[service] + path, json=json,
                                       headers=headers)

    async def check_token(self, token: str) -> Identity:
        """Who ``token`` belongs to, asking auth once however many requests carrying it
        arrive meanwhile (every connection of a client misses the cache together when its
        entry runs out), and caching the answer."""
        key = self.tokens.key(token)
        ticket = self.tokens.ticket()
        running = self._checks.get(key)
        # A check that began before a logout or revocation may answer as things were then:
        # join only one that began since the last forget.
        if running is not None and running[0] == ticket:
            check = running[1]
        else:
            check = asyncio.ensure_future(self._check_and_cache(token, ticket))
            self._checks[key] = (ticket, check)
            check.add_done_callback(lambda done: self._check_done(key, done))
        # Shielded: one caller hanging up must not cancel the others' answer.
        return await asyncio.shield(check)

    async def _check_and_cache(self, token: str, ticket: int) -> Identity:
        identity, expires_at = await self.introspect(token)
        not_after = None
        if expires_at is not None:
            not_after = self.tokens.clock() + (expires_at - utcnow()).total_seconds()
        self.tokens.put(token, identity, not_after=not_after, ticket=ticket)
        return identity

    def _check_done(self, key: str, check: asyncio.Future) -> None:
        running = self._checks.get(key)
        if running is not None and running[1] is check:
            del self._checks[key]
        if not check.cancelled():
            check.exception()  # retrieved here too, in case every caller hung up

    async def introspect(self, token: str) -> tuple[Identity, datetime | None]:
        try:
            async with await self.call("auth", "POST", "/internal/introspect",
                                       {"token": token[:256]}) as response:
                body = await response.json(content_type=None)
                if response.status in (401, 422):
                    raise unauthorized(body.get("detail") or "the token is not valid")
                if response.status != 200:
                    raise Problem(503, "Service unavailable", "cannot check the token now")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raise Problem(503, "Service unavailable", "cannot check the token now",
                          headers={"Retry-After": "5"}) from None
        found = Introspection.model_validate(body)
        identity = Identity(kind=found.kind, user_id=found.user_id, username=found.username,
                            token_id=found.token_id, host=found.host)
        return identity, found.expires_at

    async def openapi(self) -> dict[str, Any]:
        """One document for the whole surface, merged from every service's own routes."""
        if self._openapi is not None:
            return self._openapi
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": "ReClo API", "version": "1"},
            "paths": {},
            "components": {
                "schemas": {"Problem": PROBLEM_SCHEMA},
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }
        complete = True
        for service in UPSTREAMS:
            try:
                async with await self.call(service, "GET", "/internal/openapi") as response:
                    response.raise_for_status()
                    fragment = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                complete = False
                continue
            doc["paths"].update(fragment["paths"])
            doc["components"]["schemas"].update(fragment["schemas"])
        doc["paths"] = dict(sorted(doc["paths"].items()))
        if complete:
            self._openapi = doc
        return doc


PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}


def build(settings: Settings, bus: Bus, key: bytes,
          urls: dict[str, str] | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(
        name="gateway", settings=settings, bus=bus, key=key, verify_callers=False,
        max_body_bytes=settings.gateway.max_body_bytes,
    )
    runtime.context = gateway = Gateway(settings, key, urls)

    async def on_token_ended(envelope: Envelope) -> None:
        gateway.tokens.forget_token_id(payload_of(envelope).token_id)

    async def follow_ended_tokens(_app) -> None:
        """A logout or revocation through any replica reaches this one's cache at once (a
        queue of this process's own on the bus; subscribed at start-up, so a failure to
        subscribe fails the start)."""
        await bus.subscribe_transient([TokenEnded.routing_key()], on_token_ended)

    runtime.app.on_startup.append(follow_ended_tokens)
    # The portal's own routes first: a few /api/v1 paths are answered by the gateway.
    portal.install(runtime)
    runtime.app.router.add_route("*", "/api/v1/{tail:.*}", api.proxy)
    runtime.app.on_cleanup.append(lambda _app: runtime.context.close())
    return runtime
