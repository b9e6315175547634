"""Starting ReClo's services inside a test, the two ways they run for real:

- ``embedded``: SQLite files in a temporary folder and the in-process bus (``reclo up``);
- ``mariadb``: one database per service on the real MariaDB and the real RabbitMQ, under
  names unique to the test, removed afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import aiohttp

from services.embedded import Stack
from shared.settings import AuthSettings, BusSettings, Settings
from tests import infra

MODES = ("embedded", "mariadb")
# Cheap Argon2 for tests that register many users; one test keeps the real cost.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
TEST_RETRY_DELAYS = (0.05, 0.2)


def settings_for(mode: str, tmp_path: Path, unique: str, **overrides) -> Settings:
    values: dict = {
        "data_dir": tmp_path / "data",
        "bus": BusSettings(retry_delays=TEST_RETRY_DELAYS, outbox_poll_seconds=0.2,
                           queue_prefix=f"t{unique}", exchange=f"t{unique}.events"),
        "auth": AuthSettings(**FAST_ARGON2),
    }
    if mode == "mariadb":
        values.update(database_url=infra.mariadb_url(), database_prefix=f"t{unique}_",
                      bus_url=infra.rabbitmq_url())
    elif mode != "embedded":
        raise ValueError(mode)
    values.update(overrides)
    return Settings(**values)


async def delete_queues(settings: Settings, services: Sequence[str]) -> None:
    if settings.bus_url is None:
        return
    connection = await aio_pika.connect(settings.bus_url.get_secret_value())
    try:
        channel = await connection.channel()
        for service in services:
            queue = f"{settings.bus.queue_prefix}.{service}"
            names = [queue, f"{queue}.dead"] + [
                f"{queue}.retry.{max(1, round(d * 1000))}ms" for d in settings.bus.retry_delays]
            for name in names:
                await channel.queue_delete(name, if_unused=False, if_empty=False)
        if settings.bus.exchange != "reclo.events":
            await channel.exchange_delete(settings.bus.exchange)
    finally:
        await connection.close()


@asynccontextmanager
async def running_stack(settings: Settings, names: Sequence[str] | None = None
                        ) -> AsyncIterator[tuple[Stack, str]]:
    """The services started as ``reclo up`` starts them; yields the stack and gateway URL."""
    stack = Stack(settings, names)
    await stack.migrate()
    try:
        await stack.start(gateway_port=0, embedded=True)
        yield stack, f"http://127.0.0.1:{stack.gateway_port}"
    finally:
        await stack.stop()
        for runtime in stack.runtimes.values():
            if runtime.db is not None and not runtime.db.is_sqlite:
                await runtime.db.drop_database()
        await delete_queues(settings, list(stack.runtimes))


class Api:
    """A thin client of /api/v1 for tests: returns (status, json-or-text)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.token: str | None = None

    async def call(self, method: str, path: str, *, json=None, data=None, token=None,
                   headers=None):
        headers = dict(headers or {})
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, json=json, data=data,
                                        headers=headers) as response:
            body = await response.read()
            kind = response.headers.get("Content-Type", "")
            if "json" in kind and body:
                import json as _json

                return response.status, _json.loads(body), kind
            return response.status, body.decode(errors="replace"), kind

    async def register_and_login(self, username: str, password: str = "correct horse battery"):
        status, body, _ = await self.call("POST", "/api/v1/auth/register",
                                          json={"username": username, "password": password})
        assert status == 201, body
        status, body, _ = await self.call("POST", "/api/v1/auth/login",
                                          json={"username": username, "password": password})
        assert status == 200, body
        self.token = body["token"]
        return body
