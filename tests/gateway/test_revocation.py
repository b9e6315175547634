"""Ending a token through the gateway takes effect at once, however long the gateway
trusts its cache of token checks; a token ended behind the gateway's back only within
that bound."""

import asyncio

import aiohttp
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from services.auth.tables import TokenRow
from services.gateway.app import build as build_gateway
from shared.settings import GatewaySettings
from tests.harness import MODES, Api, running_stack, settings_for
from tests.support import eventually

# Far longer than the test: only an invalidation can make a cached token fail.
LONG_CACHE = GatewaySettings(token_cache_seconds=3600)


async def test_logout_and_key_revocation_are_immediate_despite_the_cache(tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique, gateway=LONG_CACHE)
    async with running_stack(settings, ["gateway", "auth"]) as (_stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        await api.register_and_login("ivan")
        user_token = api.token
        status, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "nas-01"})
        assert status == 201
        other_status, other_key, _ = await api.call("POST", "/api/v1/agent-keys",
                                                    json={"host": "nas-02"})
        assert other_status == 201
        # Both keys and the session are now in the gateway's cache.
        for token in (key["key"], other_key["key"], user_token):
            assert (await api.call("GET", "/api/v1/auth/me", token=token))[0] == 200

        assert (await api.call("DELETE", f"/api/v1/agent-keys/{key['id']}"))[0] == 204
        status, problem, kind = await api.call("GET", "/api/v1/auth/me", token=key["key"])
        assert status == 401 and problem["detail"] == "the token was revoked"
        assert kind.startswith("application/problem+json")
        # The other key is untouched.
        assert (await api.call("GET", "/api/v1/auth/me", token=other_key["key"]))[0] == 200

        assert (await api.call("POST", "/api/v1/auth/logout"))[0] == 204
        status, problem, _ = await api.call("GET", "/api/v1/auth/me", token=user_token)
        assert status == 401 and problem["detail"] == "the token was logout"


async def test_a_token_ended_behind_the_gateways_back_lasts_only_the_cache_bound(
        tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique,
                            gateway=GatewaySettings(token_cache_seconds=0))
    async with running_stack(settings, ["gateway", "auth"]) as (stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        await api.register_and_login("judy")
        assert (await api.call("GET", "/api/v1/auth/me"))[0] == 200
        # As another gateway replica's logout would: the row changes, this cache is not told.
        async with stack.runtimes["auth"].db.transaction() as session:
            await session.execute(update(TokenRow).values(active=False,
                                                          deactivated_reason="logout"))
        status, problem, _ = await api.call("GET", "/api/v1/auth/me")
        assert status == 401 and problem["detail"] == "the token was logout"


def _introspections() -> float:
    return REGISTRY.get_sample_value("reclo_http_requests_total", {
        "service": "auth", "method": "POST", "route": "/internal/introspect",
        "status": "200"}) or 0.0


async def test_concurrent_requests_with_one_token_ask_auth_once(tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique, gateway=LONG_CACHE)
    async with running_stack(settings, ["gateway", "auth"]) as (_stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        await api.register_and_login("kate")
        before = _introspections()
        answers = await asyncio.gather(*(api.call("GET", "/api/v1/auth/me")
                                         for _ in range(20)))
        assert [status for status, _, _ in answers] == [200] * 20
        assert _introspections() - before == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_logout_through_one_replica_reaches_the_others_cache_at_once(mode, tmp_path, unique):
    """Two gateway replicas on one bus (on MariaDB + RabbitMQ: two real queues of their
    own): the token cached by the second stops working there as soon as it is logged out
    through the first, not when the second's hour-long cache entry runs out."""
    settings = settings_for(mode, tmp_path, unique, gateway=LONG_CACHE)
    async with running_stack(settings, ["gateway", "auth"]) as (stack, base), \
            aiohttp.ClientSession() as http:
        first = stack.runtimes["gateway"]
        second = build_gateway(settings, stack.bus, stack.key, urls=dict(first.context.urls))
        await second.start(host="127.0.0.1", port=0)
        try:
            api = Api(http, base)
            other = Api(http, f"http://127.0.0.1:{second.port}")
            await api.register_and_login("lena")
            other.token = api.token
            status, key, _ = await api.call("POST", "/api/v1/agent-keys", json={"host": "nas-03"})
            assert status == 201
            for token in (api.token, key["key"]):  # cached by the second replica
                assert (await other.call("GET", "/api/v1/auth/me", token=token))[0] == 200

            assert (await api.call("DELETE", f"/api/v1/agent-keys/{key['id']}"))[0] == 204
            assert (await api.call("POST", "/api/v1/auth/logout"))[0] == 204

            async def refused(token):
                status, problem, _ = await other.call("GET", "/api/v1/auth/me", token=token)
                return problem if status == 401 else None

            assert (await eventually(lambda: refused(key["key"])))["detail"] == "the token was revoked"
            assert (await eventually(lambda: refused(other.token)))["detail"] == "the token was logout"
        finally:
            await second.stop()
