"""What the scheduler tests share: a clock they set by hand, replicas of the scheduler on one
database, and a reading of what reached the outbox."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika
from sqlalchemy import select

from shared.runtime import make_bus
from services.scheduler.app import build
from services.scheduler.tables import outbox
from shared.db import Database
from shared.runtime import ServiceRuntime
from shared.settings import Settings

KEY = b"scheduler tests' internal key, 32+ bytes long"

# Fake times are in the past on purpose: on RabbitMQ every queue bound to a tick's routing key
# gets it, including other tests' services; a handler that sweeps "older than scheduled_for"
# finds nothing that old.
def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class FakeClock:
    """The scheduler's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


def replica(settings: Settings, clock: FakeClock, bus=None) -> ServiceRuntime:
    """One scheduler process: its own bus connection and its own database engine."""
    return build(settings, bus or make_bus(settings), KEY, clock=clock)


async def emitted(settings: Settings) -> list[tuple[str, datetime, str]]:
    """Every tick in the scheduler's outbox, in order: (type, scheduled_for, event id)."""
    db = Database(settings.database_url_for("scheduler"))
    try:
        async with db.sessions() as session:
            rows = (await session.execute(select(outbox.c.envelope).order_by(outbox.c.seq))).all()
    finally:
        await db.dispose()
    ticks = []
    for row in rows:
        envelope = json.loads(row.envelope)
        ticks.append((envelope["type"],
                      datetime.fromisoformat(envelope["payload"]["scheduled_for"]),
                      envelope["id"]))
    return ticks


async def drop_scheduler_database(settings: Settings) -> None:
    db = Database(settings.database_url_for("scheduler"))
    await db.drop_database()


async def delete_queues(settings: Settings, queues: Sequence[str]) -> None:
    """Remove the test's queues and their retry and dead-letter companions."""
    if settings.bus_url is None:
        return
    connection = await aio_pika.connect(settings.bus_url.get_secret_value())
    try:
        channel = await connection.channel()
        for queue in queues:
            names = [queue, f"{queue}.dead", *(
                f"{queue}.retry.{max(1, round(d * 1000))}ms" for d in settings.bus.retry_delays)]
            for name in names:
                await channel.queue_delete(name, if_unused=False, if_empty=False)
    finally:
        await connection.close()
