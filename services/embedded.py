"""Running services: all in one process (``reclo up``) or one alone (``reclo serve``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from services.registry import builders
from shared.logs import get_logger
from shared.runtime import ServiceRuntime, internal_key, make_bus
from shared.settings import Settings

log = get_logger(__name__)


class Stack:
    """A set of services sharing one bus connection in this process."""

    def __init__(self, settings: Settings, names: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.bus = make_bus(settings)
        self.key = internal_key(settings)
        available = builders()
        self.runtimes: dict[str, ServiceRuntime] = {
            name: available[name](settings, self.bus, self.key)
            for name in (names or list(available))
        }

    async def migrate(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.migrate()

    async def start(self, *, gateway_port: int | None = None, embedded: bool = True,
                    host: str | None = None) -> None:
        """Embedded: services on free loopback ports, the gateway told where they are."""
        await self.bus.connect()
        for name, runtime in self.runtimes.items():
            if name == "gateway":
                continue
            port = 0 if embedded else None
            await runtime.start(host="127.0.0.1" if embedded else host, port=port)
        gateway = self.runtimes.get("gateway")
        if gateway is not None:
            if embedded:
                gateway.context.urls.update(
                    {name: f"http://127.0.0.1:{rt.port}" for name, rt in self.runtimes.items()
                     if name != "gateway"})
            await gateway.start(host=host, port=gateway_port)

    @property
    def gateway_port(self) -> int | None:
        gateway = self.runtimes.get("gateway")
        return gateway.port if gateway else None

    async def stop(self) -> None:
        # Stop taking events first: a handler must not outlive its service's database.
        # One interrupted mid-transaction rolls back and is redelivered (unacknowledged).
        with contextlib.suppress(Exception):
            await self.bus.close()
        for runtime in reversed(list(self.runtimes.values())):
            with contextlib.suppress(Exception):
                await runtime.stop()
