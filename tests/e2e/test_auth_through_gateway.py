"""Accounts, sessions and agent keys end to end through the gateway, in the embedded mode
and on MariaDB + RabbitMQ."""

import asyncio

import aiohttp
from sqlalchemy import select

from services.auth.tables import TokenRow
from shared.events import TokensExpiryDue, envelope_for, utcnow
from shared.http.identity import Identity, sign
from tests.support import eventually

PASSWORD = "correct horse battery"


async def test_register_login_me_logout(api):
    session = await api.register_and_login("alice")
    assert session["token"].startswith("rcs_")
    assert session["user"]["username"] == "alice"
    status, me, _ = await api.call("GET", "/api/v1/auth/me")
    assert status == 200
    assert me == {"id": session["user"]["id"], "username": "alice", "kind": "user", "host": None}
    status, _, _ = await api.call("POST", "/api/v1/auth/logout")
    assert status == 204
    status, problem, kind = await api.call("GET", "/api/v1/auth/me")
    assert status == 401
    assert kind.startswith("application/problem+json")
    assert problem["detail"] == "the token was logout"


async def test_wrong_password_and_unknown_user_are_401_alike(api):
    await api.register_and_login("bob")
    wrong = await api.call("POST", "/api/v1/auth/login",
                           json={"username": "bob", "password": "not the password"})
    unknown = await api.call("POST", "/api/v1/auth/login",
                             json={"username": "nobody", "password": "not the password"})
    assert wrong[0] == unknown[0] == 401
    assert wrong[1]["detail"] == unknown[1]["detail"] == "the username or the password is wrong"


async def test_usernames_are_case_insensitive_and_unique(api):
    await api.register_and_login("Carol")
    status, problem, _ = await api.call("POST", "/api/v1/auth/register",
                                        json={"username": "carol", "password": PASSWORD})
    assert status == 409
    status, body, _ = await api.call("POST", "/api/v1/auth/login",
                                     json={"username": "CAROL", "password": PASSWORD})
    assert status == 200 and body["user"]["username"] == "Carol"


async def test_expired_token_is_refused(mode, tmp_path, unique):
    from tests.harness import Api, running_stack, settings_for
    from shared.settings import AuthSettings

    settings = settings_for(mode, tmp_path, unique,
                            auth=AuthSettings(session_ttl_seconds=1, argon2_time_cost=1,
                                              argon2_memory_kib=1024, argon2_parallelism=1))
    async with running_stack(settings) as (stack, base), aiohttp.ClientSession() as http:
        api = Api(http, base)
        await api.register_and_login("dave")
        assert (await api.call("GET", "/api/v1/auth/me"))[0] == 200
        await asyncio.sleep(1.2)
        status, problem, _ = await api.call("GET", "/api/v1/auth/me")
        assert status == 401
        assert problem["detail"] == "the token expired"

        # The daily job (TokensExpiryDue, normally from the scheduler) deactivates it.
        await stack.bus.publish(envelope_for(TokensExpiryDue(scheduled_for=utcnow())))
        auth = stack.runtimes["auth"]

        async def deactivated():
            async with auth.db.sessions() as session:
                rows = (await session.scalars(select(TokenRow))).all()
            return rows and all(not r.active and r.deactivated_reason == "expired" for r in rows)

        await eventually(deactivated)


async def test_agent_keys_mint_use_and_revoke(api, stack):
    await api.register_and_login("erin")
    status, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "fileserver-01"})
    assert status == 201
    assert key["key"].startswith("rca_") and key["host"] == "fileserver-01"

    status, me, _ = await api.call("GET", "/api/v1/auth/me", token=key["key"])
    assert status == 200 and me["kind"] == "agent" and me["host"] == "fileserver-01"

    # An agent key can't do what only a user may.
    status, problem, _ = await api.call("GET", "/api/v1/agent-keys", token=key["key"])
    assert status == 403
    status, _, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "x"},
                                  token=key["key"])
    assert status == 403

    status, page, _ = await api.call("GET", "/api/v1/agent-keys")
    assert status == 200
    assert [k["id"] for k in page["items"]] == [key["id"]]
    assert "key" not in page["items"][0]

    status, _, _ = await api.call("DELETE", f"/api/v1/agent-keys/{key['id']}")
    assert status == 204
    # Revocation is honoured within the gateway's cache bound.
    bound = stack.settings.gateway.token_cache_seconds
    await asyncio.sleep(bound + 0.1)
    status, problem, _ = await api.call("GET", "/api/v1/auth/me", token=key["key"])
    assert status == 401 and problem["detail"] == "the token was revoked"
    status, page, _ = await api.call("GET", "/api/v1/agent-keys")
    assert page["items"][0]["revoked_at"] is not None
    # Revoking twice, or someone else's key: 404.
    assert (await api.call("DELETE", f"/api/v1/agent-keys/{key['id']}"))[0] == 404


async def test_one_user_cannot_touch_anothers_keys(api, stack):
    await api.register_and_login("frank")
    _, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "db-01"})
    frank = api.token
    await api.register_and_login("grace")
    status, page, _ = await api.call("GET", "/api/v1/agent-keys")
    assert status == 200 and page["items"] == []
    assert (await api.call("DELETE", f"/api/v1/agent-keys/{key['id']}"))[0] == 404
    # Frank's key still works.
    assert (await api.call("GET", "/api/v1/auth/me", token=key["key"]))[0] == 200
    assert (await api.call("GET", "/api/v1/auth/me", token=frank))[0] == 200


async def test_agent_keys_paginate(api):
    await api.register_and_login("heidi")
    minted = []
    for i in range(5):
        _, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": f"h{i}"})
        minted.append(key["id"])
    seen, cursor = [], None
    while True:
        path = "/api/v1/agent-keys?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await api.call("GET", path)
        assert status == 200 and len(page["items"]) <= 2
        seen += [k["id"] for k in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert sorted(seen) == sorted(minted) and len(seen) == 5
    status, problem, _ = await api.call("GET", "/api/v1/agent-keys?cursor=garbage!")
    assert status == 400


async def test_services_refuse_requests_not_signed_by_the_gateway(api, stack):
    await api.register_and_login("ivan")
    auth = f"http://127.0.0.1:{stack.runtimes['auth'].port}"
    forged = Identity(kind="user", user_id="someone", username="someone")
    async with aiohttp.ClientSession() as http:
        # No signature at all, even with a valid bearer token.
        async with http.get(auth + "/api/v1/auth/me",
                            headers={"Authorization": f"Bearer {api.token}"}) as r:
            assert r.status == 401
            assert (await r.json(content_type=None))["detail"] == \
                "request is not signed by the gateway"
        # Signed with the wrong key.
        headers = sign(forged, "GET", "/api/v1/auth/me", b"not the internal key")
        async with http.get(auth + "/api/v1/auth/me", headers=headers) as r:
            assert r.status == 401
        # Signed right but too old (a replay).
        headers = sign(forged, "GET", "/api/v1/auth/me", stack.key, now=0)
        async with http.get(auth + "/api/v1/auth/me", headers=headers) as r:
            assert r.status == 401
            assert (await r.json(content_type=None))["detail"] == "signature expired"
        # Signed for another path.
        headers = sign(forged, "GET", "/api/v1/agent-keys", stack.key)
        async with http.get(auth + "/api/v1/auth/me", headers=headers) as r:
            assert r.status == 401
        # The gateway's own internal endpoints are not reachable through it.
        async with http.post(api.base + "/internal/introspect", json={"token": api.token}) as r:
            assert r.status == 404


async def test_openapi_document_covers_the_surface(api):
    status, doc, _ = await api.call("GET", "/api/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/logout",
                 "/api/v1/auth/me", "/api/v1/agent-keys", "/api/v1/agent-keys/{key_id}"):
        assert path in doc["paths"], path
    assert not any(p.startswith("/internal") for p in doc["paths"])
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    ref = login["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert "429" in login["responses"]


async def test_proxied_answers_carry_the_request_id(api):
    async with api.session.get(api.base + "/api/v1/auth/me",
                               headers={"X-Request-ID": "trace-me-123"}) as response:
        assert response.status == 401
        assert response.headers["X-Request-ID"] == "trace-me-123"
    async with api.session.post(api.base + "/api/v1/auth/register",
                                json={"username": "rid", "password": PASSWORD}) as response:
        assert response.status == 201
        assert len(response.headers["X-Request-ID"]) == 32
