"""Composition root of the scheduler: its jobs from the settings (checked here, so a bad
cron expression stops the service at start), its database, outbox and loop."""

from __future__ import annotations

from pathlib import Path

from services.scheduler import api, handlers, tables
from services.scheduler.domain import jobs_from
from services.scheduler.ticker import Clock, Ticker
from shared.bus import Bus
from shared.events import utcnow
from shared.runtime import ServiceRuntime
from shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings, bus: Bus, key: bytes, *, clock: Clock = utcnow) -> ServiceRuntime:
    jobs, off = jobs_from(settings.scheduler.jobs)  # raises InvalidSchedule naming the job
    runtime = ServiceRuntime(
        name="scheduler",
        settings=settings,
        bus=bus,
        key=key,
        routes=[api.routes],
        handlers=handlers.EVENT_HANDLERS,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
    )
    assert runtime.db is not None and runtime.outbox is not None
    runtime.context = Ticker(db=runtime.db, outbox=runtime.outbox, jobs=jobs, off=off,
                             clock=clock,
                             max_sleep_seconds=settings.scheduler.max_sleep_seconds)
    runtime.background.append(runtime.context.run)
    return runtime
