"""The aiohttp application every service is built on: request ids, one log line per
request, problem+json for every error, the gateway's signature checked on every route but
the operational ones, and ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from structlog.contextvars import bind_contextvars, reset_contextvars

from shared.http.identity import BadSignature, Identity, verify
from shared.http.keys import IDENTITY, REQUEST_ID, RUNTIME
from shared.http.problems import Problem, problem_response
from shared.http.routes import Routes, openapi_fragment
from shared.logs import get_logger
from shared.unreachable import UNREACHABLE

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
    # 32 random hex digits, like uuid4().hex but without building a UUID on every request.
    return os.urandom(16).hex()


STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Metrics:
    """The request counter and latency histogram of one service, with each label set's
    child looked up once: ``labels()`` costs more than the observation itself."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[str, Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in STANDARD_METHODS:
            method = "other"  # a caller's made-up methods must not grow the label sets
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = REQUESTS.labels(self.service, method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = LATENCY.labels(self.service, route)
        latency.observe(seconds)


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Once per process, when the first service starts: what exists then (modules, models,
    routes, settings) lives as long as the process, so the collector stops scanning it.
    A full collection over those ~150,000 objects stalled every request in flight for
    100-300 ms (the p99). Without a collect first: startup garbage is small and bounded,
    and a collect here would cost every start (tests start stacks often) that long."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


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

    metrics_of_service = _Metrics(service)

    @web.middleware
    async def observe(request: web.Request, handler) -> web.StreamResponse:
        request_id = _clean_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        started = time.perf_counter()
        status = 500
        # Bound for this request's log lines and reset after (tokens: cheaper than
        # bound_contextvars, which reads the whole context first).
        tokens = bind_contextvars(service=service, request_id=request_id)
        try:
            response = await _as_problem(request, handler, request_id)
            status = response.status
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:  # a redirect, raised for aiohttp to send as is
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics_of_service.observe(request.method, _route_label(request), status, elapsed)
            if request.path not in OPS_PATHS:
                log.info("request", method=request.method, path=request.path,
                         status=status, ms=round(elapsed * 1000, 2))
            reset_contextvars(**tokens)

    @web.middleware
    async def authenticate(request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPS_PATHS:
            return await handler(request)
        assert internal_key is not None
        try:
            identity = verify(request.headers, request.method, request.path_qs, internal_key)
        except BadSignature as exc:
            raise Problem(401, "Unauthorized", str(exc)) from None
        request[IDENTITY] = identity
        tokens = bind_contextvars(user_id=identity.user_id, caller=identity.kind)
        try:
            return await handler(request)
        finally:
            reset_contextvars(**tokens)

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

    # The gateway (no key) authenticates callers itself: no middleware layer for it.
    checks = [authenticate] if internal_key is not None else []
    app = web.Application(
        middlewares=[observe, *checks, *middlewares], client_max_size=max_body_bytes
    )
    app[RUNTIME] = context
    app.on_startup.append(_freeze_startup_objects)
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
    except UNREACHABLE as exc:
        # The object store did not answer (connection refused, reset, timed out): nothing
        # is wrong with the request, and trying again later is the remedy.
        log.warning("object store unreachable", method=request.method, path=request.path,
                    error=str(exc))
        return problem_response(Problem(503, "Service unavailable",
                                        "the storage is not reachable; try again shortly",
                                        headers={"Retry-After": "5"}),
                                instance=request.path, request_id=request_id)
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return problem_response(Problem(500, "Internal error",
                                        "the server failed; the request id identifies it"),
                                instance=request.path, request_id=request_id)


def identity_of(request: web.Request) -> Identity:
    return request.get(IDENTITY) or Identity()
