"""A running service: its database, outbox relay, event dispatcher and HTTP server.

Each service's ``app.py`` builds one with what it alone has (tables, routes, handlers, its
context object); ``reclo up`` starts them all in one process, ``reclo serve X`` one alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import MetaData

from shared.bus import Bus, create_bus
from shared.db import Database
from shared.events import Event
from shared.http.app import create_app
from shared.http.loop import run as run_loop
from shared.http.routes import Routes
from shared.inbox import Dispatcher, EventHandler
from shared.logs import bind, configure_logging, get_logger
from shared.migrations import upgrade
from shared.outbox import Outbox
from shared.settings import Settings

log = get_logger(__name__)

BackgroundTask = Callable[[], Awaitable[None]]


def make_bus(settings: Settings) -> Bus:
    url = settings.bus_url.get_secret_value() if settings.bus_url else None
    return create_bus(url, prefetch=settings.bus.prefetch, retry_delays=settings.bus.retry_delays,
                      exchange=settings.bus.exchange)


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def serve_alone(name: str, build: Callable[[Settings, Bus, bytes], ServiceRuntime]) -> int:
    """``python -m services.<name> [--migrate]``: one service alone, from its own package,
    as ``reclo serve <name>`` runs it."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> int:
        bus = make_bus(settings)
        runtime = build(settings, bus, internal_key(settings))
        if "--migrate" in sys.argv[1:]:
            await runtime.migrate()
        await bus.connect()
        try:
            await runtime.start()
            await wait_for_signal()
        finally:
            with contextlib.suppress(Exception):
                await bus.close()  # stop taking events before the database closes
            await runtime.stop()
        return 0

    return run_loop(run())


def internal_key(settings: Settings) -> bytes:
    """The gateway↔services signing key: from RECLO_INTERNAL_KEY, else a random key kept in
    the data dir (so every process of one machine agrees), created on first use."""
    if settings.internal_key is not None:
        return settings.internal_key.get_secret_value().encode()
    path = Path(settings.data_dir) / "internal.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class ServiceRuntime:
    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        bus: Bus,
        key: bytes,
        routes: Sequence[Routes] = (),
        handlers: Mapping[type[Event], EventHandler] | None = None,
        metadata: MetaData | None = None,
        migrations: Path | None = None,
        verify_callers: bool = True,
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        self.name = name
        self.settings = settings
        self.bus = bus
        self.key = key
        self.migrations = migrations
        self.context: Any = None
        self.background: list[BackgroundTask] = []
        self.db: Database | None = None
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        if metadata is not None:
            self.db = Database(settings.database_url_for(name))
            self.outbox = Outbox(metadata.tables["outbox"], self.db, bus,
                                 poll_seconds=settings.bus.outbox_poll_seconds)
            self.dispatcher = Dispatcher(
                service_name=name, runtime=self, db=self.db, bus=bus, outbox=self.outbox,
                inbox=metadata.tables["inbox"], handlers=handlers or {},
                queue_prefix=settings.bus.queue_prefix,
            )
        self.app = create_app(
            service=name, routes=routes, internal_key=key if verify_callers else None,
            readiness=self.readiness, max_body_bytes=max_body_bytes, context=self,
        )
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.port: int | None = None

    async def readiness(self) -> dict[str, bool]:
        checks = {"bus": await self.bus.ping()}
        if self.db is not None:
            checks["database"] = await self.db.ping()
        return checks

    async def migrate(self) -> None:
        if self.db is not None and self.migrations is not None:
            await upgrade(self.db, self.migrations)
            log.info("migrated", service=self.name)

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Start consuming, relaying and serving; returns the port it listens on."""
        bind(service=self.name)
        if self.dispatcher is not None:
            await self.dispatcher.start()
        if self.outbox is not None:
            self.outbox.start()
        for task in self.background:
            self._tasks.append(asyncio.create_task(task(), name=f"{self.name}:{task.__name__}"))
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host or self.settings.section(self.name).host,
            self.settings.port_for(self.name) if port is None else port,
            reuse_address=True,
        )
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("service started", service=self.name, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()  # first: a handler may start background work
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.outbox is not None:
            await self.outbox.stop()
        if self.db is not None:
            await self.db.dispose()
