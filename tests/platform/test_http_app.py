"""The shared HTTP application on loopback: request ids, per-request log context and
metrics labels a caller cannot blow up."""

import aiohttp
from aiohttp import web
from botocore.exceptions import EndpointConnectionError
from prometheus_client import REGISTRY
from pydantic import BaseModel
from structlog.contextvars import get_contextvars

from shared.http.app import create_app
from shared.http.identity import Identity, sign
from shared.http.routes import ANYONE, Call, Routes

KEY = b"k" * 32
routes = Routes("test")


@routes.route("GET", "/api/v1/context", allow=ANYONE)
async def context(call: Call):
    """What the log lines of this request carry."""
    return {k: v for k, v in get_contextvars().items()
            if k in ("service", "request_id", "user_id", "caller")}


async def _ready() -> dict[str, bool]:
    return {}


async def _serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_each_request_logs_with_its_own_ids_and_odd_methods_share_one_label():
    app = create_app(service="httptest", routes=[routes], internal_key=KEY, readiness=_ready)
    app.router.add_route("*", "/anything", _ok)
    runner, base = await _serve(app)
    try:
        # One kept-alive connection: nothing of the first request may linger into the next.
        async with aiohttp.ClientSession() as http:
            who = Identity(kind="user", user_id="u1")
            headers = {**sign(who, "GET", "/api/v1/context", KEY), "X-Request-ID": "first"}
            async with http.get(base + "/api/v1/context", headers=headers) as response:
                assert await response.json() == {"service": "httptest", "request_id": "first",
                                                 "user_id": "u1", "caller": "user"}
            anonymous = sign(Identity(), "GET", "/api/v1/context", KEY)
            async with http.get(base + "/api/v1/context", headers=anonymous) as response:
                seen = await response.json()
                generated = response.headers["X-Request-ID"]
            assert seen == {"service": "httptest", "request_id": generated, "caller": "anonymous",
                            "user_id": None}
            assert len(generated) == 32 and int(generated, 16) >= 0
            # Methods HTTP parsers accept beyond the usual ones (WebDAV's) share one label.
            for method in ("PROPFIND", "MKCOL", "GET"):
                async with http.request(method, base + "/anything") as response:
                    assert response.status in (200, 401)
        labels = {s.labels["method"] for m in REGISTRY.collect()
                  if m.name == "reclo_http_requests" for s in m.samples
                  if s.labels.get("service") == "httptest"}
        assert labels == {"GET", "other"}
    finally:
        await runner.cleanup()


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_a_redirect_is_logged_and_counted_as_what_was_sent():
    app = create_app(service="redirecttest", internal_key=None, readiness=_ready)  # as the gateway
    app.router.add_get("/old", _moved)
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/old", allow_redirects=False,
                                headers={"X-Request-ID": "moved-1"}) as response:
                assert response.status == 302 and response.headers["Location"] == "/new"
                assert response.headers["X-Request-ID"] == "moved-1"
        statuses = {s.labels["status"] for m in REGISTRY.collect()
                    if m.name == "reclo_http_requests" for s in m.samples
                    if s.labels.get("service") == "redirecttest"}
        assert statuses == {"302"}  # not the 500 it was counted as before
    finally:
        await runner.cleanup()


async def _moved(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/new")


class _Named(BaseModel):
    name: str


@routes.route("POST", "/api/v1/named", allow=ANYONE, body=_Named)
async def named(call: Call):
    return {"name": call.body.name}


@routes.route("GET", "/api/v1/stored", allow=ANYONE)
async def stored(call: Call):
    # What aiobotocore raises when the object store does not answer at all.
    raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")


async def test_a_body_nested_past_the_parsers_depth_and_an_unreachable_store_are_problems():
    app = create_app(service="problemtest", routes=[routes], internal_key=KEY, readiness=_ready)
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            nested = b"[" * 200_000 + b"]" * 200_000  # 400 KB: under the body limit
            headers = sign(Identity(), "POST", "/api/v1/named", KEY)
            async with http.post(base + "/api/v1/named", data=nested,
                                 headers={**headers, "Content-Type": "application/json"}) as response:
                assert response.status == 400
                assert response.headers["Content-Type"] == "application/problem+json"
                assert (await response.json())["detail"] == "the body is not valid JSON"
            headers = sign(Identity(), "GET", "/api/v1/stored", KEY)
            async with http.get(base + "/api/v1/stored", headers=headers) as response:
                assert response.status == 503 and response.headers["Retry-After"] == "5"
                problem = await response.json()
                assert problem["title"] == "Service unavailable" and "try again" in problem["detail"]
    finally:
        await runner.cleanup()
