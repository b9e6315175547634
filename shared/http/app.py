"""The aiohttp application every service is built on: request ids, one log line per
request, problem+json for every error, the gateway's signature checked on every route but
the operational ones, and ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from shared.http.identity import BadSignature, Identity, verify
from shared.http.keys import IDENTITY, REQUEST_ID, RUNTIME
from shared.http.problems import Problem, problem_response
from shared.http.routes import Routes, openapi_fragment
from shared.logs import bound, get_logger

log = get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

REQUESTS = Counter("reclo_http_requests_total", "HTTP requests handled",
                   ["service", "method", "route", "status"])
LATENCY = Histogram("reclo_http_request_seconds", "HTTP request duration",
                    ["service", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

Readiness = Callable[[], Awaitable[dict[str, bool]]]


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def _clean_request_id(value: str | None) -> str:
    # Keep a caller's id only when it is short and printable: it lands in every log line.
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return uuid.uuid4().hex


def _http_problem(exc: web.HTTPException) -> Problem:
    if exc.status == 413:
        return Problem(413, "Body too large", "the request body exceeds the limit")
    if exc.status == 405:
        return Problem(405, "Method not allowed", f"allowed: {exc.headers.get('Allow', '')}")
    return Problem(exc.status, exc.reason, exc.text if exc.text and
                   not exc.text.startswith(f"{exc.status}:") else None)


def create_app(
    *,
    service: str,
    routes: Sequence[Routes] = (),
    internal_key: bytes | None,
    readiness: Readiness,
    max_body_bytes: int = 1024 * 1024,
    context: Any = None,
    middlewares: Sequence[Any] = (),
) -> web.Application:
    """``internal_key=None`` only for the gateway, which authenticates callers itself."""

    @web.middleware
    async def observe(request: web.Request, handler) -> web.StreamResponse:
        request_id = _clean_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        started = time.perf_counter()
        status = 500
        with bound(service=service, request_id=request_id):
            try:
                response = await _as_problem(request, handler, request_id)
                status = response.status
                response.headers[REQUEST_ID_HEADER] = request_id
                return response
            finally:
                elapsed = time.perf_counter() - started
                route = _route_label(request)
                REQUESTS.labels(service, request.method, route, str(status)).inc()
                LATENCY.labels(service, route).observe(elapsed)
                if request.path not in OPS_PATHS:
                    log.info("request", method=request.method, path=request.path,
                             status=status, ms=round(elapsed * 1000, 2))

    @web.middleware
    async def authenticate(request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPS_PATHS or internal_key is None:
            return await handler(request)
        try:
            identity = verify(request.headers, request.method, request.path_qs, internal_key)
        except BadSignature as exc:
            raise Problem(401, "Unauthorized", str(exc)) from None
        request[IDENTITY] = identity
        with bound(user_id=identity.user_id, caller=identity.kind):
            return await handler(request)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    async def readyz(_request: web.Request) -> web.Response:
        checks = await readiness()
        ok = all(checks.values())
        return web.json_response({"status": "ok" if ok else "unavailable", "checks": checks},
                                 status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application(
        middlewares=[observe, authenticate, *middlewares], client_max_size=max_body_bytes
    )
    app[RUNTIME] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    fragment = openapi_fragment(routes)

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(fragment)

    app.router.add_get("/internal/openapi", openapi)
    for group in routes:
        group.add_to(app)
    return app


async def _as_problem(request: web.Request, handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, instance=request.path, request_id=request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_http_problem(exc), instance=request.path,
                                request_id=request_id)
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return problem_response(Problem(500, "Internal error",
                                        "the server failed; the request id identifies it"),
                                instance=request.path, request_id=request_id)


def identity_of(request: web.Request) -> Identity:
    return request.get(IDENTITY) or Identity()
