"""The backup service running for real, two ways (tests/harness.py):

- ``embedded``: SQLite, the in-process bus and the local object store, whose presigned URLs
  the backup service itself serves through the gateway;
- ``mariadb``: MariaDB, RabbitMQ and S3 (moto on loopback, tests/infra.py).

Only auth, backup and the gateway run: the scheduler would add ticks of its own.
"""

from __future__ import annotations

import aiohttp
import pytest

from clients.agent.remote_store import RemoteStore
from shared.settings import BackupSettings
from tests import infra
from tests.harness import MODES, Api, running_stack, settings_for

SERVICES = ["auth", "backup", "gateway"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def settings(mode, tmp_path, unique, monkeypatch):
    # Each test in its own key prefix (the bucket is shared on moto); no grace period, so
    # garbage collection is decided by references alone.
    backup = BackupSettings(key_prefix=f"t{unique}/", gc_grace_seconds=0)
    overrides = {"backup": backup}
    if mode == "mariadb":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        overrides["s3_endpoint"] = infra.s3_endpoint()
    return settings_for(mode, tmp_path, unique, **overrides)


@pytest.fixture
async def stack(settings):
    async with running_stack(settings, SERVICES) as (stack, base):
        stack.base_url = base
        try:
            yield stack
        finally:
            store = stack.runtimes["backup"].context.store
            await store.delete_many([k async for k in store.list()])


@pytest.fixture
async def world(stack):
    async with aiohttp.ClientSession() as http:
        world = World(stack, http)
        yield world
        for store in world.stores:
            await store.close()


class World:
    """Users and their agents, against one running stack."""

    def __init__(self, stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.base = stack.base_url
        self.stores: list[RemoteStore] = []

    @property
    def backup(self):
        """The backup service's own context (its database and bucket)."""
        return self.stack.runtimes["backup"].context

    async def user(self, name: str) -> Api:
        api = Api(self.http, self.base)
        session = await api.register_and_login(name)
        api.user_id = session["user"]["id"]
        return api

    async def agent_key(self, user: Api, host: str) -> str:
        status, body, _ = await user.call("POST", "/api/v1/agent-keys", json={"host": host})
        assert status == 201, body
        return body["key"]

    async def agent(self, user: Api, host: str) -> RemoteStore:
        store = RemoteStore(self.base, await self.agent_key(user, host))
        self.stores.append(store)
        return store
