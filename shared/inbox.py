"""The inbox and the event dispatcher of a service.

Each handled event's id is recorded in the service's ``inbox`` table in the same transaction
as the handler's effect, so a redelivered event has no second effect. Handlers are plain
async functions listed in each service's ``handlers.py`` (``EVENT_HANDLERS``).

Deliveries that arrive together share one transaction (group commit): a commit costs a disk
sync, so one transaction per event caps a consumer at the disk's syncs per second. A batch is
all or nothing: if any of its handlers fails, or the commit does, the whole transaction is
rolled back and each of its events is handled again alone, in its own transaction as before,
so one event's failure never costs the others a retry and only the failing one takes the
retry path. That a handler may run, be rolled back and run again was already true (a commit
can fail, a process can die before the acknowledgement); see docs/events.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus import Bus
from shared.db import Database, UTCDateTime
from shared.events import Envelope, Event, MalformedMessage, payload_of, utcnow
from shared.logs import bound, get_logger
from shared.outbox import Outbox

log = get_logger(__name__)

# Most events handled in one transaction. Batches are only ever what is already waiting
# (at most the bus's prefetch), so a quiet consumer still handles each event at once.
BATCH_LIMIT = 100


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


@dataclass
class _Delivery:
    """One delivery waiting for its batch; ``done`` tells the bus how it went."""

    envelope: Envelope
    handler: EventHandler
    payload: Event
    done: asyncio.Future = field(repr=False)

    @property
    def event_id(self) -> str:
        return str(self.envelope.id)


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
        batch_limit: int = BATCH_LIMIT,
    ) -> None:
        self.queue = f"{queue_prefix}.{service_name}"
        self.service_name = service_name
        self.runtime = runtime
        self.db = db
        self.bus = bus
        self.outbox = outbox
        self.inbox = inbox
        self.handlers = {cls.type_name(): (cls, fn) for cls, fn in handlers.items()}
        self.batch_limit = max(1, batch_limit)
        self._waiting: deque[_Delivery] = deque()
        self._drainer: asyncio.Task | None = None

    async def start(self) -> None:
        if not self.handlers:
            return
        patterns = sorted({cls.routing_key() for cls, _ in self.handlers.values()})
        await self.bus.subscribe(self.queue, patterns, self.handle)

    async def stop(self) -> None:
        """Stop handling, before the service's database goes: a batch under way rolls back
        and its deliveries, never acknowledged, come again (after a restart, or to a
        replica). Closing the bus alone stops only the consumers waiting on the batch."""
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer

    async def handle(self, envelope: Envelope) -> None:
        """Handle one delivery; returns once its effect committed (or it was a duplicate),
        raises if its handler failed. Concurrent calls are batched."""
        entry = self.handlers.get(envelope.type)
        if entry is None:
            raise MalformedMessage(f"{self.service_name} has no handler for {envelope.type}")
        _, fn = entry
        payload = payload_of(envelope)  # a malformed payload fails here, never in a batch
        delivery = _Delivery(envelope, fn, payload, asyncio.get_running_loop().create_future())
        if self.batch_limit == 1:
            # No batching: each delivery in its own transaction, concurrently.
            await self._run_alone(delivery)
            return
        self._waiting.append(delivery)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"inbox:{self.queue}")
        await delivery.done

    async def _drain(self) -> None:
        """Handle what is waiting, batch after batch: while one batch commits, the next
        deliveries gather for the one after it."""
        batch: list[_Delivery] = []
        try:
            while self._waiting:
                batch = self._take_batch()
                if len(batch) == 1:
                    await self._handle_alone(batch[0])
                elif batch:
                    await self._handle_batch(batch)
        finally:
            # Only when cancelled (the loop is closing): nobody is left waiting forever.
            for delivery in [*batch, *self._waiting]:
                if not delivery.done.done():
                    delivery.done.cancel()

    def _take_batch(self) -> list[_Delivery]:
        """Up to ``batch_limit`` waiting deliveries, one per event id: a second delivery of
        an event in the batch waits for the next one, which finds it already handled."""
        batch: list[_Delivery] = []
        ids: set[str] = set()
        later: list[_Delivery] = []
        while self._waiting and len(batch) < self.batch_limit:
            delivery = self._waiting.popleft()
            if delivery.done.done():
                continue  # its consumer was cancelled (the bus is closing)
            if delivery.event_id in ids:
                later.append(delivery)
            else:
                ids.add(delivery.event_id)
                batch.append(delivery)
        self._waiting.extendleft(reversed(later))
        return batch

    async def _handle_batch(self, batch: list[_Delivery]) -> None:
        try:
            async with self.db.transaction() as session:
                seen = set((await session.scalars(
                    select(self.inbox.c.event_id).where(
                        self.inbox.c.event_id.in_([d.event_id for d in batch]))
                )).all())
                fresh = [d for d in batch if d.event_id not in seen]
                if fresh:
                    # Taken first, so that a replica handling one of these events at the same
                    # time waits here (or fails here) before any handler runs.
                    now = utcnow()
                    await session.execute(self.inbox.insert(), [
                        {"event_id": d.event_id, "event_type": d.envelope.type, "handled_at": now}
                        for d in fresh])
                for delivery in fresh:
                    with self._bound(delivery):
                        await delivery.handler(
                            Context(session, delivery.envelope, self.outbox, self.runtime),
                            delivery.payload)
        except Exception as exc:
            log.info("event batch rolled back, handling its events one by one",
                     service=self.service_name, events=len(batch), error=str(exc)[:200])
            for delivery in batch:
                await self._handle_alone(delivery)
            return
        for delivery in batch:
            with self._bound(delivery):
                log.info("event already handled, skipped" if delivery.event_id in seen
                         else "event handled")
            _settle(delivery)

    async def _handle_alone(self, delivery: _Delivery) -> None:
        try:
            await self._run_alone(delivery)
        except Exception as exc:
            _settle(delivery, exc)
        else:
            _settle(delivery)

    async def _run_alone(self, delivery: _Delivery) -> None:
        """One event in its own transaction (a batch of one, or a batch's retry)."""
        with self._bound(delivery):
            async with self.db.transaction() as session:
                seen = await session.scalar(
                    select(self.inbox.c.event_id).where(
                        self.inbox.c.event_id == delivery.event_id)
                )
                if seen is not None:
                    log.info("event already handled, skipped")
                    return
                # Two concurrent deliveries of one event: the second insert fails on the
                # primary key, its transaction rolls back, and the retry finds it handled.
                await session.execute(
                    self.inbox.insert().values(
                        event_id=delivery.event_id, event_type=delivery.envelope.type,
                        handled_at=utcnow(),
                    )
                )
                await delivery.handler(
                    Context(session, delivery.envelope, self.outbox, self.runtime),
                    delivery.payload)
            log.info("event handled")

    def _bound(self, delivery: _Delivery):
        envelope = delivery.envelope
        return bound(service=self.service_name, correlation_id=str(envelope.correlation_id),
                     event_id=str(envelope.id), event_type=envelope.type)


def _settle(delivery: _Delivery, error: BaseException | None = None) -> None:
    if delivery.done.done():
        return  # nobody waits any more (the bus cancelled its consumer)
    if error is None:
        delivery.done.set_result(None)
    else:
        delivery.done.set_exception(error)
