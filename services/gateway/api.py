"""The gateway's routes: the proxy for /api/v1/* and the merged OpenAPI document."""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp import web

from services.gateway.domain import (
    API_PREFIX,
    NOT_FORWARDED,
    bearer_token,
    body_limit,
    owner_of,
    revoked_agent_key,
)
from shared.http.identity import Identity, sign
from shared.http.keys import REQUEST_ID, RUNTIME
from shared.http.problems import Problem, not_found, unauthorized
from shared.logs import get_logger

log = get_logger(__name__)

OPENAPI_PATH = API_PREFIX + "openapi.json"
# Upstream answers up to this size are buffered rather than streamed.
BUFFERED_BODY_BYTES = 256 * 1024
LOGOUT_PATH = API_PREFIX + "auth/logout"


async def proxy(request: web.Request) -> web.StreamResponse:
    gateway = request.app[RUNTIME].context
    if request.path == OPENAPI_PATH and request.method == "GET":
        return web.json_response(await gateway.openapi())
    service = owner_of(request.path)
    if service is None:
        raise not_found(f"no route {request.path}")
    identity = await authenticate(gateway, request)
    response = await forward(gateway, request, service, identity)
    if response.status < 300:
        # This gateway forgets an ended token at once; other replicas within the cache bound.
        if request.path == LOGOUT_PATH and request.method == "POST":
            gateway.tokens.forget(bearer_token(request.headers.get("Authorization")) or "")
        elif request.method == "DELETE" and (key_id := revoked_agent_key(request.path)):
            gateway.tokens.forget_token_id(key_id)
    return response


async def authenticate(gateway, request: web.Request) -> Identity:
    client_ip = request.remote
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        return Identity(kind="anonymous", client_ip=client_ip)
    if not token:
        raise unauthorized("the Authorization header must be `Bearer <token>`")
    cached = gateway.tokens.get(token)
    if cached is None:
        cached = await gateway.check_token(token)
    return _from_address(cached, client_ip)


@functools.lru_cache(maxsize=10_000)
def _from_address(identity: Identity, client_ip: str | None) -> Identity:
    # The same callers come from the same addresses: copy once, not per request.
    return identity.model_copy(update={"client_ip": client_ip})


async def forward(gateway, request: web.Request, service: str, identity: Identity, *,
                  path_qs: str | None = None,
                  default_headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Streams the request to ``service`` and its answer back. ``path_qs`` sends it to
    another path (a portal download link); ``default_headers`` are added to the answer
    where the service did not set them."""
    path_qs = path_qs or request.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
    headers["X-Request-ID"] = request[REQUEST_ID]
    headers.update(sign(identity, request.method, path_qs, gateway.key))
    body = request.content if request.body_exists else None
    limit = body_limit(request.path, gateway.max_body, gateway.max_object_body)
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "Body too large", "the request body exceeds the limit")
    try:
        upstream = await gateway.http.request(
            request.method, gateway.urls[service] + path_qs, headers=headers,
            data=_limited(body, limit) if body is not None else None,
            allow_redirects=False,
        )
    except BodyTooLarge:
        raise Problem(413, "Body too large", "the request body exceeds the limit") from None
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        log.warning("upstream unreachable", upstream=service, error=str(exc))
        raise Problem(503, "Service unavailable",
                      f"the {service} service is not reachable; try again shortly",
                      headers={"Retry-After": "5"}) from None
    async with upstream:
        # Small answers (nearly all: JSON) are read whole and sent in one write; bodies
        # of unknown or large size are streamed through.
        small = (upstream.content_length is not None
                 and upstream.content_length <= BUFFERED_BODY_BYTES
                 and request.method != "HEAD")
        response = (web.Response(status=upstream.status, reason=upstream.reason) if small
                    else web.StreamResponse(status=upstream.status, reason=upstream.reason))
        for name, value in upstream.headers.items():
            if name.lower() not in NOT_FORWARDED and name.lower() != "x-request-id":
                response.headers.add(name, value)
        for name, value in (default_headers or {}).items():
            response.headers.setdefault(name, value)
        # Set before prepare(): the middleware's header would come too late for a stream.
        response.headers["X-Request-ID"] = request[REQUEST_ID]
        if small:
            body = await upstream.read()
            if body:
                response.body = body
            return response
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up (a download stopped to be resumed later): nothing failed
        return response


class BodyTooLarge(Exception):
    pass


async def _limited(stream, limit: int):
    seen = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        yield chunk
