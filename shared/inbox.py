"""The inbox and the event dispatcher of a service.

Each handled event's id is recorded in the service's ``inbox`` table in the same transaction
as the handler's effect, so a redelivered event has no second effect. Handlers are plain
async functions listed in each service's ``handlers.py`` (``EVENT_HANDLERS``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus import Bus
from shared.db import Database, UTCDateTime
from shared.events import Envelope, Event, MalformedMessage, payload_of, utcnow
from shared.logs import bound, get_logger
from shared.outbox import Outbox

log = get_logger(__name__)


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("handled_at", UTCDateTime, nullable=False),
    )


@dataclass
class Context:
    """What a handler gets besides its event: the transaction, the envelope it came in, a
    way to emit follow-up events (same transaction, same correlation), and the service."""

    session: AsyncSession
    envelope: Envelope
    outbox: Outbox
    runtime: Any

    @property
    def service(self) -> Any:
        """The service's own context object (built in its ``app.py``)."""
        return self.runtime.context

    async def emit(self, event: Event) -> Envelope:
        return await self.outbox.add(self.session, event, causation=self.envelope)


EventHandler = Callable[[Context, Any], Awaitable[None]]


class Dispatcher:
    """Consumes a service's queue and runs each event's handler exactly once."""

    def __init__(
        self,
        *,
        service_name: str,
        runtime: Any,
        db: Database,
        bus: Bus,
        outbox: Outbox,
        inbox: Table,
        handlers: Mapping[type[Event], EventHandler],
        queue_prefix: str = "reclo",
    ) -> None:
        self.queue = f"{queue_prefix}.{service_name}"
        self.service_name = service_name
        self.runtime = runtime
        self.db = db
        self.bus = bus
        self.outbox = outbox
        self.inbox = inbox
        self.handlers = {cls.type_name(): (cls, fn) for cls, fn in handlers.items()}

    async def start(self) -> None:
        if not self.handlers:
            return
        patterns = sorted({cls.routing_key() for cls, _ in self.handlers.values()})
        await self.bus.subscribe(self.queue, patterns, self.handle)

    async def handle(self, envelope: Envelope) -> None:
        entry = self.handlers.get(envelope.type)
        if entry is None:
            raise MalformedMessage(f"{self.service_name} has no handler for {envelope.type}")
        _, fn = entry
        payload = payload_of(envelope)
        with bound(service=self.service_name, correlation_id=str(envelope.correlation_id),
                   event_id=str(envelope.id), event_type=envelope.type):
            async with self.db.transaction() as session:
                seen = await session.scalar(
                    select(self.inbox.c.event_id).where(
                        self.inbox.c.event_id == str(envelope.id)
                    )
                )
                if seen is not None:
                    log.info("event already handled, skipped")
                    return
                # Two concurrent deliveries of one event: the second insert fails on the
                # primary key, its transaction rolls back, and the retry finds it handled.
                await session.execute(
                    self.inbox.insert().values(
                        event_id=str(envelope.id), event_type=envelope.type,
                        handled_at=utcnow(),
                    )
                )
                await fn(Context(session, envelope, self.outbox, self.runtime), payload)
            log.info("event handled")
