"""The gateway's portal routes over plain HTTP: what it serves and with which headers,
the live progress stream, download links and the server-made VPN configuration, each
refusing callers who do not own what they ask for."""

import asyncio
import base64
import json
import re
import time

import pytest

from services.gateway.portal import HUB, links, static
from shared.events import RecoveryCompleted, RecoveryProgressed, envelope_for
from shared.http.identity import Identity
from tests.harness import MODES, Api, running_stack, settings_for
from tests.recovery_client.support import PASSPHRASE, image_backup, known_to_recovery
from tests.support import eventually

JS = sorted((static.STATIC / "js").rglob("*.js"))


async def test_pages_and_files_carry_a_strict_policy(api):
    for path, kind in [("/app/", "text/html"), ("/app/hosts/abc", "text/html"),
                       ("/app/recoveries/x/y", "text/html"), ("/assets/app.css", "text/css"),
                       ("/assets/js/main.js", "text/javascript"),
                       ("/assets/js/pages/recovery.js", "text/javascript")]:
        async with api.session.get(api.base + path) as response:
            assert response.status == 200, path
            assert response.headers["Content-Type"].startswith(kind), path
            assert response.headers["Content-Security-Policy"] == static.CSP
            assert "default-src 'self'" in static.CSP and "'unsafe-inline'" not in static.CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
    async with api.session.get(api.base + "/", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/app/"


@pytest.mark.parametrize("path", ["/assets/../app.py", "/assets/%2e%2e/static.py",
                                  "/assets/js/../../static.py", "/assets/nothing.js",
                                  "/assets/", "/assets/js/%2Fetc%2Fpasswd", "/app.py"])
async def test_only_the_portal_files_are_served(api, path):
    status, body, kind = await api.call("GET", path)
    assert status == 404, (path, body)
    assert kind.startswith("application/problem+json")


def test_no_inline_script_and_no_markup_made_from_strings():
    html = static.INDEX.read_text()
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == ['<script type="module" src="/assets/js/main.js">']
    assert not re.search(r"\son[a-z]+=|\sstyle=", html)
    assert len(JS) >= 10
    for path in JS:
        code = re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.MULTILINE)  # not comments
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       "eval(", "new Function", "setAttribute('on", "javascript:"):
            assert unsafe not in code, (path.name, unsafe)


def test_download_links_are_bound_to_a_caller_a_path_and_a_minute():
    key = b"k" * 32
    alice = Identity(kind="user", user_id="u1", username="alice", token_id="t1")
    path = "/api/v1/recoveries/abc123/image"
    token, expires = links.make_link(key, alice, path, now=1000)
    assert expires == 1000 + links.LINK_TTL_SECONDS
    identity, linked = links.read_link(key, token, now=1030)
    assert (identity.user_id, identity.kind, linked) == ("u1", "user", path)
    with pytest.raises(links.BadLink, match="expired"):
        links.read_link(key, token, now=expires + 1)
    with pytest.raises(links.BadLink):
        links.read_link(b"x" * 32, token, now=1030)  # another deployment's key
    body, mac = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["c"]["user_id"] = "u2"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(links.BadLink):
        links.read_link(key, f"{forged_body}.{mac}", now=1030)
    for bad in ("", ".", "abc", token + "x", "a.b.c"):
        with pytest.raises(links.BadLink):
            links.read_link(key, bad, now=1030)
    for other in ("/api/v1/recoveries/abc/cancel", "/api/v1/instances/abc/vpn-peers",
                  "/api/v1/recoveries/../auth/me/image"):
        with pytest.raises(ValueError):
            links.make_link(key, alice, other)


async def _owner_with_recovery(stack, api, tmp_path, unique):
    """A user with a complete local recovery (made by the agent and the services)."""
    username = f"owner-{unique}"
    session = await api.register_and_login(username)
    api.user_id = session["user"]["id"]
    await image_backup(tmp_path, stack.base_url, username)
    _, page, _ = await api.call("GET", "/api/v1/backups")
    backup_id = page["items"][0]["id"]
    await known_to_recovery(stack, backup_id)
    return username, backup_id


async def _start(api, backup_id, **extra):
    status, recovery, _ = await api.call("POST", "/api/v1/recoveries", json={
        "backup_id": backup_id, "target": "local", "passphrase": PASSPHRASE, **extra})
    assert status == 201, recovery
    return recovery


async def _complete(api, recovery_id):
    async def done():
        _, recovery, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}")
        return recovery if recovery["state"] in ("complete", "failed") else None
    recovery = await eventually(done, timeout=60, interval=0.2)
    assert recovery["state"] == "complete", recovery
    return recovery


async def read_events(session, url, token, limit_seconds=60.0):
    """Every (event, data) of one stream, until the gateway ends it."""
    events = []
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-store"
        kind, data = None, []
        async with asyncio.timeout(limit_seconds):
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        events.append((kind, json.loads("".join(data))))
                    kind, data = None, []
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
    return events


@pytest.fixture(params=MODES)
async def any_stack(request, tmp_path, unique):
    """The stack on SQLite with the in-process bus, and on MariaDB with RabbitMQ (where the
    gateway's transient queue is a real exclusive, auto-deleted queue)."""
    async with running_stack(settings_for(request.param, tmp_path, unique)) as (stack, base):
        stack.base_url = base
        yield stack


async def test_live_stream_is_the_owners_alone(any_stack, http, tmp_path, unique):
    stack = any_stack
    api = Api(http, stack.base_url)
    username, backup_id = await _owner_with_recovery(stack, api, tmp_path, unique)
    owner_token = api.token
    recovery = await _start(api, backup_id)
    url = f"{api.base}/api/v1/recoveries/{recovery['id']}/events"

    # While it runs: a progress event of another user for the same id never reaches the
    # owner's stream, the recovery's own events do, and its end closes the stream.
    reading = asyncio.create_task(read_events(api.session, url, owner_token))
    hub = stack.runtimes["gateway"].app[HUB]
    await eventually(lambda: hub.watching() == 1, timeout=10)
    await stack.bus.publish(envelope_for(RecoveryProgressed(
        recovery_id=recovery["id"], user_id="someone-else", state="importing",
        total_progress=99, state_progress=99, message="FOREIGN")))
    events = await reading
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "snapshot" and events[0][1]["id"] == recovery["id"]
    assert events[0][1]["state"] != "complete", "the recovery ended before the stream opened"
    assert "RecoveryProgressed" in kinds and kinds[-1] == "RecoveryCompleted", kinds
    assert all(data.get("message") != "FOREIGN" for _, data in events)
    assert all(data["user_id"] == api.user_id for kind, data in events if kind != "snapshot")
    progressed = [data for kind, data in events if kind == "RecoveryProgressed"]
    assert all(d["recovery_id"] == recovery["id"] and "occurred_at" in d for d in progressed)
    assert await eventually(lambda: hub.watching() == 0, timeout=5)

    # A finished recovery: its snapshot, then the end.
    events = await read_events(api.session, url, owner_token, limit_seconds=10)
    assert [kind for kind, _ in events] == ["snapshot"] and events[0][1]["state"] == "complete"

    # Nobody else may watch it; the id never shapes another path.
    await api.register_and_login(f"other-{unique}")
    for token, status in [(api.token, 404), ("", 401), (None, 401)]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with api.session.get(url, headers=headers) as response:
            assert response.status == status
            assert response.headers["Content-Type"].startswith("application/problem+json")
    for bad in ("a%3Fb", "a%2Fb", "x" * 65, "%00"):
        status, _, _ = await api.call("GET", f"/api/v1/recoveries/{bad}/events")
        assert status == 404, bad
    _, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "somewhere"})
    async with api.session.get(url, headers={"Authorization": f"Bearer {key['key']}"}) as response:
        assert response.status == 403


async def test_image_links_and_server_made_vpn_configs(stack, api, tmp_path, unique):
    username, backup_id = await _owner_with_recovery(stack, api, tmp_path, unique)
    owner_token = api.token
    recovery = await _complete(api, (await _start(api, backup_id))["id"])
    link_path = f"/api/v1/portal/recoveries/{recovery['id']}/image-link"

    status, link, _ = await api.call("POST", link_path)
    assert status == 200 and link["url"].startswith("/downloads/")
    assert link["expires_at"] <= time.time() + links.LINK_TTL_SECONDS + 1
    # No Authorization header: the link is the credential. Range works through it.
    async with api.session.get(api.base + link["url"], headers={"Range": "bytes=0-9"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"].endswith(f"/{recovery['image_bytes']}")
        assert "attachment" in response.headers["Content-Disposition"]
        assert len(await response.read()) == 10
    async with api.session.get(api.base + link["url"]) as response:
        assert response.status == 200
        assert response.content_length == recovery["image_bytes"]
    tampered = link["url"][:-1] + ("0" if link["url"][-1] != "0" else "1")
    status, problem, _ = await api.call("GET", tampered, token="")
    assert status == 403 and "not valid" in problem["detail"]
    gateway = stack.runtimes["gateway"].context
    owner = Identity(kind="user", user_id=api.user_id, username=username)
    old, _ = links.make_link(gateway.key, owner, f"/api/v1/recoveries/{recovery['id']}/image",
                             now=time.time() - 3600)
    status, problem, _ = await api.call("GET", f"/downloads/{old}", token="")
    assert status == 403 and "expired" in problem["detail"]

    # A recovery that failed has no image to link to.
    failed = await _start(api, backup_id, passphrase="not the passphrase")

    async def ended():
        _, found, _ = await api.call("GET", f"/api/v1/recoveries/{failed['id']}")
        return found["state"] == "failed"
    await eventually(ended, timeout=60, interval=0.2)
    status, problem, _ = await api.call(
        "POST", f"/api/v1/portal/recoveries/{failed['id']}/image-link")
    assert status == 409 and problem["detail"] == "this recovery has no image to download"

    # The server-made VPN configuration: a key pair for this answer only, never cached.
    _, instances, _ = await api.call("GET", "/api/v1/instances")
    instance = instances["items"][0]
    vpn_path = f"/api/v1/portal/instances/{instance['id']}/vpn-config"
    async with api.session.post(api.base + vpn_path,
                                headers={"Authorization": f"Bearer {owner_token}"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        assert re.fullmatch(r'attachment; filename="rc-[A-Za-z0-9]{1,12}\.conf"',
                            response.headers["Content-Disposition"])
        conf = await response.text()
    keys = [line for line in conf.splitlines() if line.startswith("PrivateKey = ")]
    assert len(keys) == 1 and len(base64.b64decode(keys[0].split(" = ")[1])) == 32
    assert "[Peer]" in conf

    # Another user gets neither.
    await api.register_and_login(f"thief-{unique}")
    for path in (link_path, vpn_path):
        status, problem, _ = await api.call("POST", path)
        assert status == 404, (path, problem)
    status, _, _ = await api.call("POST", link_path, token="")
    assert status == 401
