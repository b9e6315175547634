"""The gateway's proxy against a real upstream on loopback: answers pass through intact
whether buffered or streamed, and nothing of one caller's answer leaks into the next
caller's request."""

import os
import socket

import aiohttp
import pytest
from aiohttp import web

from services.gateway.api import BUFFERED_BODY_BYTES
from services.gateway.app import build
from shared.http.identity import verify
from shared.runtime import make_bus
from shared.settings import Settings

KEY = b"k" * 32
SMALL = b'{"hello": "world"}'
LARGE = os.urandom(BUFFERED_BODY_BYTES + 12345)


@pytest.fixture
async def upstream():
    """A stand-in backup service: checks the gateway's signature like a service does and
    records what reached it."""
    seen: list[dict] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        identity = verify(request.headers, request.method, request.path_qs, KEY)
        seen.append({"path": request.path, "cookie": request.headers.get("Cookie"),
                     "kind": identity.kind})
        name = request.match_info["name"]
        if name == "small":
            response = web.Response(body=SMALL, content_type="application/vnd.test+json",
                                    headers={"X-Upstream": "yes"})
            response.set_cookie("session", "of-the-first-caller")
            return response
        if name == "large":
            return web.Response(body=LARGE, content_type="application/octet-stream")
        if name == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        if name == "empty":
            return web.Response(status=204)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/api/v1/backups/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    # A host name, not an address: an HTTP cookie jar keeps cookies only for names.
    yield f"http://localhost:{port}", seen
    await runner.cleanup()


@pytest.fixture
async def gateway(upstream, tmp_path):
    url, _seen = upstream
    settings = Settings(data_dir=tmp_path)
    bus = make_bus(settings)
    await bus.connect()
    runtime = build(settings, bus, KEY, urls={"backup": url})
    port = await runtime.start(host="127.0.0.1", port=0)
    yield f"http://127.0.0.1:{port}"
    await runtime.stop()
    await bus.close()


async def test_small_large_chunked_and_empty_answers_pass_through(gateway, upstream):
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway + "/api/v1/backups/small") as response:
            assert response.status == 200
            assert await response.read() == SMALL
            assert response.headers["Content-Type"] == "application/vnd.test+json"
            assert response.headers["X-Upstream"] == "yes"
            assert response.headers["Content-Length"] == str(len(SMALL))
            assert len(response.headers["X-Request-ID"]) == 32
        async with http.get(gateway + "/api/v1/backups/large") as response:
            assert response.status == 200
            assert await response.read() == LARGE
        async with http.get(gateway + "/api/v1/backups/chunked") as response:
            assert await response.read() == b"one,two,three"
        async with http.head(gateway + "/api/v1/backups/small") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(SMALL))
            assert await response.read() == b""
        async with http.delete(gateway + "/api/v1/backups/empty") as response:
            assert response.status == 204
            assert await response.read() == b""
        async with http.get(gateway + "/api/v1/backups/missing") as response:
            assert response.status == 404


async def test_a_cookie_an_upstream_sets_never_reaches_another_callers_request(gateway,
                                                                             upstream):
    _url, seen = upstream
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as first, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as second:
        async with first.get(gateway + "/api/v1/backups/small") as response:
            assert response.cookies["session"].value == "of-the-first-caller"
        async with second.get(gateway + "/api/v1/backups/small") as response:
            assert response.status == 200
    assert [s["cookie"] for s in seen] == [None, None]
    assert all(s["kind"] == "anonymous" for s in seen)


async def test_an_unreachable_upstream_is_a_503_problem(tmp_path):
    settings = Settings(data_dir=tmp_path)
    bus = make_bus(settings)
    await bus.connect()
    runtime = build(settings, bus, KEY, urls={"backup": f"http://127.0.0.1:{unused_port()}"})
    gateway_port = await runtime.start(host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{gateway_port}/api/v1/backups/x") as response:
            assert response.status == 503
            assert response.headers["Content-Type"].startswith("application/problem+json")
            assert (await response.json())["title"] == "Service unavailable"
    finally:
        await runtime.stop()
        await bus.close()


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then closed, so it was free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
