"""The portal routes' own calls to the services, made as the signed-in caller: the
service applies its usual rules (ownership included), exactly as for a proxied request."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from shared.http.identity import Identity, sign
from shared.http.problems import Problem
from shared.logs import get_logger

log = get_logger(__name__)


def unavailable(service: str) -> Problem:
    return Problem(503, "Service unavailable",
                   f"the {service} service is not reachable; try again shortly",
                   headers={"Retry-After": "5"})


def relayed(status: int, body: Any) -> Problem:
    """The service's own refusal, passed on with its words (never a traceback: services
    answer problem+json)."""
    if isinstance(body, dict):
        return Problem(status, str(body.get("title") or "Error"), body.get("detail"),
                       **({"errors": body["errors"]} if "errors" in body else {}))
    return Problem(status, "Error", None)


async def request_as(gateway, service: str, method: str, path: str, identity: Identity,
                     *, json: Any = None, headers: dict[str, str] | None = None):
    """An open upstream response (use ``async with``); 503 when the service is down."""
    signed = {**(headers or {}), **sign(identity, method, path, gateway.key)}
    try:
        return await gateway.http.request(method, gateway.urls[service] + path, json=json,
                                          headers=signed, allow_redirects=False)
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        log.warning("upstream unreachable", upstream=service, error=str(exc))
        raise unavailable(service) from None


async def fetch_json(gateway, service: str, method: str, path: str, identity: Identity,
                     *, json: Any = None) -> Any:
    """The service's JSON answer, or its refusal raised as the same problem."""
    async with await request_as(gateway, service, method, path, identity,
                                json=json) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        if response.status >= 400:
            raise relayed(response.status, body)
        return body
