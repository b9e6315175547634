"""Composition root of the instances service: its settings, database, compute providers
(aws and local), routes, handlers and the reconcile sweep, wired into a runtime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.instances import api, environments, handlers, lifecycle, tables
from services.instances.aws import Ec2Provider
from services.instances.compute import ComputeProvider
from services.instances.local import LocalProvider
from shared.bus import Bus
from shared.logs import get_logger
from shared.runtime import ServiceRuntime
from shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"

log = get_logger(__name__)


class Instances:
    """What the instances service's routes, handlers and sweep share."""

    def __init__(self, settings: Settings, runtime: ServiceRuntime) -> None:
        self.settings = settings.instances
        self.db = runtime.db
        self.outbox = runtime.outbox
        # Both providers are always there: each ImportCompleted names the one it is for.
        self.providers: dict[str, ComputeProvider] = {
            "aws": Ec2Provider(settings.instances, settings.instances.region or settings.s3_region),
            "local": LocalProvider(settings.instances, settings.data_dir),
        }

    async def reconcile_forever(self) -> None:
        """Machines on their way up and gateways being made, looked at every poll_seconds.
        Stopping the service stops the local machines and closes the cloud clients."""
        live_due, live_from = time.monotonic() + lifecycle.LIVE_WATCH_SECONDS, ""
        try:
            while True:
                # Sleep first: nothing launched by this process is due yet at its start.
                await asyncio.sleep(self.settings.poll_seconds)
                try:
                    await lifecycle.watch_pending(self)
                    await environments.watch_provisioning(self)
                    if time.monotonic() >= live_due:
                        live_from = await lifecycle.watch_live(self, live_from)
                        if not live_from:  # all of them looked at: again in a while
                            live_due = time.monotonic() + lifecycle.LIVE_WATCH_SECONDS
                except Exception as exc:  # the database away, say: try again next round
                    log.warning("reconcile sweep failed", error=str(exc) or type(exc).__name__)
        finally:
            for provider in self.providers.values():
                await provider.close()


def build(settings: Settings, bus: Bus, key: bytes) -> ServiceRuntime:
    runtime = ServiceRuntime(
        name="instances",
        settings=settings,
        bus=bus,
        key=key,
        routes=[api.routes],
        handlers=handlers.EVENT_HANDLERS,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
    )
    runtime.context = Instances(settings, runtime)
    runtime.background.append(runtime.context.reconcile_forever)
    return runtime
