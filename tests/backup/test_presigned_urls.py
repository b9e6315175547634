"""The local object store's presigned URLs (the embedded mode's S3), served by the backup
service through the gateway: signed, expiring, one method, one key, one size, once."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from shared.settings import BackupSettings
from tests.harness import Api, settings_for

PROBLEM = "application/problem+json"


@pytest.fixture
def mode():
    # The local store belongs to the embedded mode (S3 checks its own signatures); the
    # database plays no part in these routes.
    return "embedded"


@pytest.fixture
def settings(mode, tmp_path, unique):
    return settings_for(mode, tmp_path, unique, backup=BackupSettings(store="local"))


@pytest.fixture
async def session(world):
    """An agent with an open backup session: (its Api, the session id)."""
    user = await world.user("uma")
    agent = Api(world.http, world.base)
    agent.token = await world.agent_key(user, "host")
    status, body, _ = await agent.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": "/data", "type": "folder"}]})
    assert status == 201
    return agent, body["id"]


async def upload_url(agent, session_id, key, size):
    status, body, _ = await agent.call("POST", f"/api/v1/backups/{session_id}/upload-urls",
                                       json={"objects": [{"key": key, "size": size}]})
    assert status == 200, body
    [url] = body["urls"]
    assert url["url"].startswith("/api/v1/objects/") and url["method"] == "PUT"
    return url["url"]


def tamper(url: str, **changes) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in changes.items() if v is not None})
    for k, v in changes.items():
        if v is None:
            query.pop(k)
    return f"{parts.path}?{urlencode(query)}"


async def send(world, method, url, data=None, headers=None):
    async with world.http.request(method, world.base + url, data=data, headers=headers or {}) as response:
        body = await response.read()
        return response.status, body, response.headers.get("Content-Type", "")


PACK = "data/5a/5a" + "0" * 62


async def test_a_put_url_stores_its_key_once_with_its_size(world, session):
    agent, sid = session
    body = os.urandom(3 * 1024 * 1024 + 11)
    url = await upload_url(agent, sid, PACK, len(body))
    status, _, _ = await send(world, "PUT", url, body)
    assert status == 204
    status, problem, kind = await send(world, "PUT", url, body)
    assert status == 409 and kind.startswith(PROBLEM)
    status, urls, _ = await agent.call("POST", "/api/v1/repository/download-urls", json={"keys": [PACK]})
    get = urls["urls"][0]["url"]
    status, data, _ = await send(world, "GET", get)
    assert status == 200 and data == body
    status, data, _ = await send(world, "GET", get, headers={"Range": "bytes=10-19"})
    assert status == 206 and data == body[10:20]
    status, data, _ = await send(world, "GET", get, headers={"Range": f"bytes={len(body) - 5}-"})
    assert status == 206 and data == body[-5:]
    status, data, _ = await send(world, "GET", get, headers={"Range": "bytes=-3"})
    assert status == 206 and data == body[-3:]
    status, _, _ = await send(world, "GET", get, headers={"Range": f"bytes={len(body)}-"})
    assert status == 416


@pytest.mark.parametrize("size", [0, 99, 101])
async def test_a_body_of_another_size_is_refused_and_not_stored(world, session, size):
    agent, sid = session
    url = await upload_url(agent, sid, PACK, 100)
    status, problem, kind = await send(world, "PUT", url, b"x" * size)
    assert status == 400 and kind.startswith(PROBLEM), problem
    store = world.backup.store
    assert [k async for k in store.list()] == []  # not even a temporary file is listed
    status, _, _ = await send(world, "PUT", url, b"x" * 100)  # the URL still works with the right body
    assert status == 204


async def test_tampered_urls_are_refused(world, session):
    agent, sid = session
    url = await upload_url(agent, sid, PACK, 4)
    other_key = url.replace("/5a/5a", "/5b/5b")
    status, urls, _ = await agent.call("POST", "/api/v1/repository/download-urls", json={"keys": ["config"]})
    cases = {
        "another key": other_key,
        "another host's prefix": url.replace(url.split("/")[5], "0" * 32, 1),
        "a later expiry": tamper(url, expires=int(time.time()) + 10 * 3600),
        "another size": tamper(url, size=5),
        "a forged signature": tamper(url, signature="0" * 64),
        "no signature": tamper(url, signature=None),
        "no expiry": tamper(url, expires=None),
        "another bucket": url.replace("/reclo-client-backups/", "/other-bucket/"),
    }
    for what, bad in cases.items():
        status, problem, kind = await send(world, "PUT", bad, b"abcd")
        assert status == 403 and kind.startswith(PROBLEM), (what, problem)
    # A PUT URL is not a GET URL and the other way round.
    assert (await send(world, "GET", url))[0] == 403
    assert not world.backup.store.root.joinpath("data", "5b").exists()
    status, _, _ = await send(world, "PUT", url, b"abcd")
    assert status == 204  # the genuine URL was never spent by the attempts


async def test_expired_urls_are_refused(world, session):
    agent, sid = session
    url = await upload_url(agent, sid, PACK, 4)
    assert (await send(world, "PUT", url, b"abcd"))[0] == 204
    store = world.backup.store
    full_key = url.split("?")[0].split(f"/{store.bucket}/", 1)[1]
    past = int(time.time()) - 1
    for method, size in (("GET", None), ("PUT", 4)):
        expired = store.signer.url(method, store.bucket, full_key, past, size)
        status, problem, kind = await send(world, method, expired, b"abcd" if size else None)
        assert status == 403 and kind.startswith(PROBLEM)
        assert b"expired" in problem
    fresh = store.signer.url("GET", store.bucket, full_key, past + 60)
    assert (await send(world, "GET", fresh))[0] == 200
    missing = store.signer.url("GET", store.bucket, full_key.replace("5a0", "5a1"), past + 60)
    assert (await send(world, "GET", missing))[0] == 404
